//! Every interleaving (`loom`) of a configuration write racing with a call
//! through a handle: the version protocol of `src/handle/mod.rs` (RELIABILITY.md
//! §6). Built only with `--cfg benefit_quota_loom` (a name of the crate's own:
//! under the usual `--cfg loom`, tokio, a dev-dependency of the HTTP tests,
//! drops its networking and the crates built on it stop compiling):
//!
//! ```sh
//! RUSTFLAGS="--cfg benefit_quota_loom" CARGO_TARGET_DIR=target/loom cargo test --release -p benefit-quota-loom --test loom
//! ```
//!
//! Thread A raises (or lowers) the device's limit and then spends by subject;
//! thread B spends once through a handle resolved before the write. In every
//! serial order that keeps A's program order the outcome is fixed (both
//! granted after a raise from 1 to 2; exactly one granted after a lowering
//! from 2 to 1), so any other outcome means a handle decided with rules
//! older than a decision already made with the new ones on the same counter.
//! A third test puts the write and the call by subject on two threads, so a
//! call by subject can decide between the write and its version bump. Two
//! more race thread A with thread B spending from its thread's copy of the
//! all-devices rules (`src/cached.rs`), kept before the write, by subject
//! or through an exact handle (which decides with that copy too): the same
//! version protocol, without the handle's own rules; a sixth races that
//! copy with a write followed by another handle's spend on the same
//! counter, which only a version read under the shard lock orders.
//!
//! A seventh creates a single-device rule while the device is marked
//! alone (named by no single rule) and thread B spends from its copy.
//!
//! One more races a leased handle's lock-free spend with another
//! caller's `record`: the owner's stamp (`src/state/mod.rs`, `Stamps`) that
//! the lock-free path reads with one atomic load must make every spend that
//! starts after the record has returned take the locks and see it.
#![cfg(benefit_quota_loom)]

use std::sync::Arc;

use loom::sync::atomic::{AtomicBool, Ordering};

use benefit_quota::{Amount, BenefitType, Engine, HandleRequest, Subject, SubjectHandle};

const NOW: i64 = 1_000;
const DEVICE: &str = "sn-1";

/// A one-shard engine with one all-devices rule of `limit` points, its id,
/// and a handle on the device resolved at that configuration.
fn setup(limit: u64) -> (Arc<Engine>, String, SubjectHandle) {
    let e = Arc::new(Engine::builder().shards(1).rule_replicas(1).build());
    let body = format!(
        r#"{{"entity_type":"enterprise_all_devices","benefit_info":{{"benefit_type":"resource_point","active_mode":"absolute_time","started_at":0,"ended_at":253402300799,"limit":{limit},"trigger_unit":"never"}}}}"#
    );
    let id = match e.create_json(body) {
        Ok(info) => info.benefit_id().to_string(),
        Err(err) => panic!("{err}"),
    };
    let mut h = e.handle_owned(&Subject::device(DEVICE));
    assert!(h.check(NOW).is_allowed());
    (e, id, h)
}

/// Sets the rule's limit.
fn set_limit(e: &Engine, id: &str, limit: u64) {
    if let Err(err) = e.apply_update_json(id, format!(r#"{{"limit":{limit}}}"#), NOW) {
        panic!("{err}");
    }
}

/// Spends one point by subject; `Some(remaining points)` if granted.
fn spend_by_subject(e: &Engine) -> Option<u64> {
    let d = e.try_consume(
        &Subject::device(DEVICE),
        BenefitType::ResourcePoint,
        Amount::from_units(1),
        NOW,
    );
    d.headroom().map(|h| h.remaining.as_micros() / 1_000_000)
}

/// How thread B spends through its handle.
#[derive(Clone, Copy)]
enum Via {
    Single,
    Batch,
}

fn spend(e: &Engine, h: &mut SubjectHandle, via: Via) -> bool {
    let (ty, one) = (BenefitType::ResourcePoint, Amount::from_units(1));
    match via {
        Via::Single => h.try_consume(ty, one, NOW).is_allowed(),
        Via::Batch => {
            let mut out = Vec::new();
            let mut reqs = [HandleRequest {
                handle: h,
                benefit_type: ty,
                amount: one,
            }];
            e.try_consume_many_handles(&mut reqs, NOW, &mut out);
            assert_eq!(out.len(), 1, "one decision per request");
            out[0].is_allowed()
        }
    }
}

/// Runs the race; returns (A's spend granted, B's spend granted).
fn race(limit_before: u64, limit_after: u64, via: Via) -> (bool, bool) {
    let (e, id, mut h) = setup(limit_before);
    let a = {
        let e = Arc::clone(&e);
        loom::thread::spawn(move || {
            set_limit(&e, &id, limit_after);
            spend_by_subject(&e).is_some()
        })
    };
    let b = spend(&e, &mut h, via);
    let a = a.join().unwrap_or_else(|_| panic!("thread A panicked"));
    (a, b)
}

#[test]
fn a_raise_is_never_missed_by_a_handle() {
    for via in [Via::Single, Via::Batch] {
        loom::model(move || {
            // Serial orders: B,U,C / U,B,C / U,C,B: both granted, always.
            assert_eq!(race(1, 2, via), (true, true));
        });
    }
}

#[test]
fn a_lowering_is_never_missed_by_a_handle() {
    for via in [Via::Single, Via::Batch] {
        loom::model(move || {
            // Serial orders: B,U,C (B only) / U,B,C (B only) / U,C,B (C only).
            let (a, b) = race(2, 1, via);
            assert!(a != b, "granted: by subject {a}, through the handle {b}");
        });
    }
}

/// How thread B spends from its thread's copy of the all-devices rules.
#[derive(Clone, Copy, Debug)]
enum Kept {
    /// By subject.
    BySubject,
    /// Through an exact handle of the device, which decides with the
    /// thread's copy too once no single rule named the device.
    Handle,
}

/// Thread B's spend of one point, as `kept` says.
fn spend_kept(e: &Engine, h: &mut SubjectHandle, kept: Kept) -> bool {
    match kept {
        Kept::BySubject => spend_by_subject(e).is_some(),
        Kept::Handle => h
            .try_consume(BenefitType::ResourcePoint, Amount::from_units(1), NOW)
            .is_allowed(),
    }
}

/// Thread A sets the limit to `limit_after` and then raises a flag; thread B
/// reads the flag and spends one point as `kept` says, from its own copy of
/// the all-devices rules (`src/cached.rs`), kept by a spend of one point
/// made the same way before the write, which created the device's entry,
/// and a check through the handle (which, finding the entry not marked,
/// marks the device as named by no single rule; the handle's resolution
/// kept the copy; a spend by subject did both already). Returns (B saw the
/// flag, B's spend granted):
/// once B has seen the flag, the write is done, and B must decide under the
/// new limit.
fn race_kept_copy(limit_before: u64, limit_after: u64, kept: Kept) -> (bool, bool) {
    let (e, id, mut h) = setup(limit_before);
    assert!(spend_kept(&e, &mut h, kept));
    // Denied when that spend took the last point: it marks all the same.
    let _ = h.check(NOW);
    let written = Arc::new(AtomicBool::new(false));
    let a = {
        let (e, written) = (Arc::clone(&e), Arc::clone(&written));
        loom::thread::spawn(move || {
            set_limit(&e, &id, limit_after);
            written.store(true, Ordering::SeqCst);
        })
    };
    let seen = written.load(Ordering::SeqCst);
    let granted = spend_kept(&e, &mut h, kept);
    a.join().unwrap_or_else(|_| panic!("thread A panicked"));
    (seen, granted)
}

#[test]
fn a_raise_is_never_missed_by_a_kept_copy() {
    for kept in [Kept::BySubject, Kept::Handle] {
        loom::model(move || {
            // One point spent of 1: only the raise to 2 grants another.
            let (seen, granted) = race_kept_copy(1, 2, kept);
            assert!(
                !seen || granted,
                "{kept:?}: the raise was written, and missed"
            );
        });
    }
}

#[test]
fn a_lowering_is_never_missed_by_a_kept_copy() {
    for kept in [Kept::BySubject, Kept::Handle] {
        loom::model(move || {
            // One point spent of 2: the lowering to 1 leaves none.
            let (seen, granted) = race_kept_copy(2, 1, kept);
            assert!(
                !seen || !granted,
                "{kept:?}: the lowering was written, and missed"
            );
        });
    }
}

#[test]
fn a_kept_copy_never_decides_after_a_newer_decision_on_its_counter() {
    for kept in [Kept::BySubject, Kept::Handle] {
        loom::model(move || {
            // One point spent of 3 by thread B (which keeps its copy; the
            // device is marked alone). Thread A lowers the limit to 2 and
            // spends through another handle (which marks nothing); B
            // spends again. Every serial order grants at most one of the
            // two: B first leaves none for A, A first (or the lowering
            // first) none for B.
            let (e, id, mut h) = setup(3);
            let mut other = e.handle_owned(&Subject::device(DEVICE));
            assert!(spend_kept(&e, &mut h, kept));
            assert!(h.check(NOW).is_allowed());
            let a = {
                let e = Arc::clone(&e);
                loom::thread::spawn(move || {
                    set_limit(&e, &id, 2);
                    other
                        .try_consume(BenefitType::ResourcePoint, Amount::from_units(1), NOW)
                        .is_allowed()
                })
            };
            let b = spend_kept(&e, &mut h, kept);
            let a = a.join().unwrap_or_else(|_| panic!("thread A panicked"));
            assert!(
                !(a && b),
                "{kept:?}: both granted: B decided with the old limit after A's spend"
            );
        });
    }
}

#[test]
fn a_call_by_subject_never_sees_a_write_before_handles_do() {
    for via in [Via::Single, Via::Batch] {
        loom::model(move || {
            let (e, id, mut h) = setup(1);
            let writer = {
                let e = Arc::clone(&e);
                loom::thread::spawn(move || set_limit(&e, &id, 2))
            };
            let by_subject = {
                let e = Arc::clone(&e);
                loom::thread::spawn(move || spend_by_subject(&e))
            };
            let through_handle = spend(&e, &mut h, via);
            writer.join().unwrap_or_else(|_| panic!("writer panicked"));
            let c = by_subject
                .join()
                .unwrap_or_else(|_| panic!("thread C panicked"));
            // A call by subject that spent first under the raised limit
            // (1 left of 2) precedes the handle's spend, which must then see
            // the raise too and be granted.
            if c == Some(1) {
                assert!(
                    through_handle,
                    "the handle decided with the old limit after the new one was used"
                );
            }
        });
    }
}

#[test]
fn a_leased_spend_after_another_callers_record_sees_it() {
    loom::model(|| {
        let (e, _, h) = setup(3);
        let mut h = h.with_lease(Amount::from_units(1));
        // Under the locks: 1 spent, 1 more taken ahead (2 of 3 counted).
        assert!(h
            .try_consume(BenefitType::ResourcePoint, Amount::from_units(1), NOW)
            .is_allowed());
        let recorded = Arc::new(AtomicBool::new(false));
        let recorder = {
            let (e, recorded) = (Arc::clone(&e), Arc::clone(&recorded));
            loom::thread::spawn(move || {
                let d = e.record(
                    &Subject::device(DEVICE),
                    BenefitType::ResourcePoint,
                    Amount::from_units(5),
                    NOW,
                );
                assert!(!d.is_allowed()); // 6 of 3 really used
                recorded.store(true, Ordering::SeqCst);
            })
        };
        let after = recorded.load(Ordering::SeqCst);
        let spent = h
            .try_consume(BenefitType::ResourcePoint, Amount::from_units(1), NOW)
            .is_allowed();
        if after {
            // The record returned before this spend began: the rule is
            // exhausted (6 of 3), whatever the lease still holds.
            assert!(!spent, "a lease admitted past a record it should have seen");
        }
        recorder
            .join()
            .unwrap_or_else(|_| panic!("the recorder panicked"));
        drop(h);
        let used = e.usage(&Subject::device(DEVICE), NOW)[0].used;
        assert_eq!(used, Amount::from_units(if spent { 7 } else { 6 }));
    });
}

#[test]
fn a_single_rule_created_while_the_device_is_marked_alone_is_never_missed() {
    for kept in [Kept::BySubject, Kept::Handle] {
        loom::model(move || {
            // Thread B spent one point of 3 from its thread's copy, and the
            // device's entry is marked alone (no single rule names it).
            // Thread A creates a single-device rule of 0 points for it,
            // which replaces the all-devices rule (D11) and blocks it
            // (D13), then raises a flag. Once B has seen the flag, B's
            // spend must be decided under the new rule: denied. A mark
            // read without the version it was made at would let B decide
            // with the all-devices rule alone.
            let (e, _, mut h) = setup(3);
            assert!(spend_kept(&e, &mut h, kept));
            assert!(h.check(NOW).is_allowed());
            let written = Arc::new(AtomicBool::new(false));
            let a = {
                let (e, written) = (Arc::clone(&e), Arc::clone(&written));
                loom::thread::spawn(move || {
                    let body = format!(
                        r#"{{"entity_type":"single_device","entity_id":"{DEVICE}","benefit_info":{{"benefit_type":"resource_point","active_mode":"absolute_time","started_at":0,"ended_at":253402300799,"limit":0,"trigger_unit":"never"}}}}"#
                    );
                    if let Err(err) = e.create_json(body) {
                        panic!("{err}");
                    }
                    written.store(true, Ordering::SeqCst);
                })
            };
            let seen = written.load(Ordering::SeqCst);
            let granted = spend_kept(&e, &mut h, kept);
            a.join().unwrap_or_else(|_| panic!("thread A panicked"));
            assert!(
                !seen || !granted,
                "{kept:?}: the single rule was written, and missed"
            );
        });
    }
}
