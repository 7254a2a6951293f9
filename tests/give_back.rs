//! Idle give-back: unspent grants of counters nobody spends from go back
//! to the ledger on a sweep (or its timer), never a unit that was spent,
//! and what a crash then strands is only what active counters held.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use benefit_quota::ledger::{CounterKey, CounterOwner};
use benefit_quota::types::BenefitId;
use benefit_quota::{Amount, BenefitType, Engine, MemoryLedger, Subject};

mod common;
use common::SetOnDrop;

const PTS: BenefitType = BenefitType::ResourcePoint;
const T0: i64 = 1_741_708_800;

fn rule(entity: &str, limit: u64) -> String {
    format!(
        r#"{{"entity_type":"{entity}","benefit_info":{{"benefit_type":"resource_point",
        "active_mode":"absolute_time","started_at":0,"ended_at":253402300799,"limit":{limit},"trigger_unit":"never"}}}}"#
    )
}

fn open(ledger: &Arc<MemoryLedger>, limit: u64) -> Engine {
    let e = Engine::builder()
        .ledger(Arc::clone(ledger))
        .max_grant(Amount::from_units(50))
        // not the default 2 s: a loaded machine may not run the writer
        // for a while, and a call that gave up would read as refused
        .grant_timeout(std::time::Duration::from_secs(60))
        .open()
        .unwrap();
    if e.rule_count() == 0 {
        e.create_json(rule("enterprise_all_devices", limit))
            .unwrap();
    }
    e
}

fn spend(e: &Engine, dev: &str, n: u64) -> u64 {
    (0..n)
        .filter(|_| {
            e.try_consume(&Subject::device(dev), PTS, Amount::from_units(1), T0)
                .is_allowed()
        })
        .count() as u64
}

/// What the ledger holds for a device's counter of rule "1", in units.
fn held(ledger: &MemoryLedger, dev: &str) -> u64 {
    let key = CounterKey {
        benefit_id: BenefitId::new("1").unwrap(),
        owner: CounterOwner::Device(dev.into()),
    };
    ledger.counter(&key).map_or(0, |r| r.used) / Amount::from_units(1).as_micros()
}

#[test]
fn idle_counters_give_their_grants_back_and_active_ones_keep_them() {
    let ledger = Arc::new(MemoryLedger::new());
    let e = open(&ledger, 1_000);
    assert_eq!(spend(&e, "a", 1) + spend(&e, "b", 1), 2);
    assert!(
        held(&ledger, "a") > 1 && held(&ledger, "b") > 1,
        "grants were taken"
    );
    // both spent since the last sweep: kept, and marked
    assert_eq!(e.give_back_idle().unwrap(), 0);
    assert_eq!(spend(&e, "a", 1), 1);
    // b spent nothing since: its unspent grant goes back, to the unit
    assert_eq!(e.give_back_idle().unwrap(), 1);
    assert_eq!(held(&ledger, "b"), 1);
    assert!(held(&ledger, "a") > 2);
    // a, idle from now on, goes back at the next sweep
    assert_eq!(e.give_back_idle().unwrap(), 1);
    assert_eq!(held(&ledger, "a"), 2);
    assert_eq!(e.give_back_idle().unwrap(), 0, "nothing left to give back");
    // spending again takes a new grant and counts on from what was spent
    assert_eq!(spend(&e, "b", 3), 3);
    assert_eq!(
        e.usage(&Subject::device("b"), T0)[0].used,
        Amount::from_units(4)
    );
}

#[test]
fn a_crash_after_an_idle_sweep_strands_nothing() {
    let ledger = Arc::new(MemoryLedger::new());
    let e = open(&ledger, 100);
    assert_eq!(spend(&e, "d", 7), 7);
    assert!(held(&ledger, "d") > 7);
    e.give_back_idle().unwrap();
    e.give_back_idle().unwrap();
    assert_eq!(held(&ledger, "d"), 7);
    std::mem::forget(e); // a crash: nothing given back at shutdown
    let e = open(&ledger, 100);
    assert_eq!(
        e.usage(&Subject::device("d"), T0)[0].used,
        Amount::from_units(7)
    );
    assert_eq!(
        spend(&e, "d", 200),
        93,
        "all of the limit is reachable again"
    );
}

#[test]
fn sweeps_racing_debits_never_give_back_a_spent_unit() {
    // Three threads spend from 64 devices picked at random (most of them
    // idle between two sweeps), a sweeper sweeps as fast as it can, and a
    // checker reads, device by device, what was admitted and then what the
    // ledger holds: every admitted unit is held at every moment, and once
    // demand passed the limits exactly the limits were admitted.
    //
    // The spenders work in rounds and, between two rounds, wait for three
    // sweeps to complete, so that at least two whole sweeps see every
    // counter idle: give-backs then happen whatever the scheduler does
    // (a run where the spenders finished before the sweeper was scheduled
    // would prove nothing), and during a round they race the debits. The
    // checker, too, completes a pass between two rounds.
    const DEVICES: usize = 64;
    const LIMIT: u64 = 40;
    const ROUND: usize = 600;
    let ledger = Arc::new(MemoryLedger::new());
    let e = Engine::builder()
        .ledger(Arc::clone(&ledger))
        .max_grant(Amount::from_units(8))
        .grant_timeout(std::time::Duration::from_secs(60))
        .open()
        .unwrap();
    e.create_json(rule("enterprise_all_devices", LIMIT))
        .unwrap();
    let admitted: Vec<AtomicUsize> = (0..DEVICES).map(|_| AtomicUsize::new(0)).collect();
    let done = AtomicBool::new(false);
    let sweeps = AtomicUsize::new(0);
    let given_back = AtomicUsize::new(0);
    let checks = AtomicUsize::new(0);
    let rounds = Barrier::new(3);
    // What went wrong, asserted once every thread has ended: a thread that
    // panicked would leave the spenders waiting for it at the barrier.
    let failures = Mutex::new(Vec::<String>::new());
    let fail = |what: String| {
        let mut failures = failures.lock().unwrap();
        if failures.len() < 10 {
            failures.push(what); // the first few say enough
        }
    };
    std::thread::scope(|s| {
        // The sweeper and the checker stop however this closure ends.
        let _done = SetOnDrop(&done);
        s.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                match e.give_back_idle() {
                    Ok(n) => given_back.fetch_add(n, Ordering::Relaxed),
                    Err(err) => {
                        fail(format!("a sweep failed: {err}"));
                        0
                    }
                };
                sweeps.fetch_add(1, Ordering::SeqCst);
            }
        });
        s.spawn(|| loop {
            let last = done.load(Ordering::SeqCst);
            for (d, n) in admitted.iter().enumerate() {
                let seen = n.load(Ordering::SeqCst) as u64;
                let held = held(&ledger, &format!("d{d}"));
                if held < seen {
                    fail(format!("d{d}: {seen} admitted, {held} held"));
                }
            }
            checks.fetch_add(1, Ordering::SeqCst);
            if last {
                break;
            }
        });
        let workers: Vec<_> = (0..3u64)
            .map(|t| {
                let (e, admitted, rounds, sweeps, checks, fail) =
                    (&e, &admitted, &rounds, &sweeps, &checks, &fail);
                s.spawn(move || {
                    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ (t + 1);
                    for i in 0..6_000 {
                        if i % ROUND == 0 && i > 0 {
                            if rounds.wait().is_leader() {
                                // one sweep may have started during the
                                // round: the two after it saw no debit
                                let from = sweeps.load(Ordering::SeqCst);
                                let checked = checks.load(Ordering::SeqCst);
                                let until = Instant::now() + Duration::from_secs(60);
                                while sweeps.load(Ordering::SeqCst) < from + 3
                                    || checks.load(Ordering::SeqCst) == checked
                                {
                                    if Instant::now() > until {
                                        fail("the sweeper or the checker stalled".into());
                                        break;
                                    }
                                    std::thread::yield_now();
                                }
                            }
                            rounds.wait();
                        }
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let d = (x % DEVICES as u64) as usize;
                        let dev = format!("d{d}");
                        // A panic is a failure like the others: this
                        // thread must reach every barrier its peers wait at.
                        let allowed =
                            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                e.try_consume(
                                    &Subject::device(&dev),
                                    PTS,
                                    Amount::from_units(1),
                                    T0,
                                )
                                .is_allowed()
                            }))
                            .unwrap_or_else(|_| {
                                fail(format!("try_consume for {dev} panicked"));
                                false
                            });
                        if allowed {
                            admitted[d].fetch_add(1, Ordering::SeqCst);
                        }
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
    });
    assert_eq!(failures.into_inner().unwrap(), Vec::<String>::new());
    assert!(
        sweeps.load(Ordering::Relaxed) > 10,
        "the sweeper barely ran"
    );
    assert!(
        given_back.load(Ordering::Relaxed) > 0,
        "no sweep gave anything back"
    );
    assert!(checks.load(Ordering::Relaxed) > 0);
    // demand was 18,000 for 64 devices × 40: every device reached its limit
    for (d, n) in admitted.iter().enumerate() {
        assert_eq!(n.load(Ordering::Relaxed) as u64, LIMIT, "d{d}");
    }
    // and after two more sweeps the ledger holds exactly what was admitted
    e.give_back_idle().unwrap();
    e.give_back_idle().unwrap();
    for d in 0..DEVICES {
        assert_eq!(held(&ledger, &format!("d{d}")), LIMIT, "d{d}");
    }
}

#[test]
fn the_timer_gives_idle_grants_back_and_does_not_keep_the_engine_alive() {
    let ledger = Arc::new(MemoryLedger::new());
    let e = Arc::new(open(&ledger, 1_000));
    let timer = Engine::give_back_every(&e, Duration::from_millis(10));
    assert_eq!(spend(&e, "d", 3), 3);
    let until = Instant::now() + Duration::from_secs(10);
    while held(&ledger, "d") != 3 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(held(&ledger, "d"), 3, "the idle grant came back");
    drop(timer);
    // A timer that does not fire for an hour holds the engine weakly:
    // dropping the last handle to the engine drops it (its shutdown gives
    // the grant back) while the timer still exists.
    let e = Arc::new(open(&ledger, 1_000));
    let timer = Engine::give_back_every(&e, Duration::from_secs(3_600));
    assert_eq!(spend(&e, "d", 2), 2);
    assert!(held(&ledger, "d") > 5, "a grant is held");
    drop(e);
    assert_eq!(held(&ledger, "d"), 5, "the engine was dropped and flushed");
    drop(timer); // stops at once, without waiting for its hour
}

#[test]
fn without_a_ledger_a_sweep_does_nothing() {
    let e = Engine::new();
    e.create_json(rule("enterprise_all_devices", 10)).unwrap();
    assert_eq!(spend(&e, "d", 1), 1);
    assert_eq!(e.give_back_idle().unwrap(), 0);
    assert_eq!(e.give_back_idle().unwrap(), 0);
}

#[test]
fn a_large_sweep_commits_in_turns_and_gives_everything_back() {
    // 20,000 idle counters: given back in turns (each a commit of at most
    // 8,192), so that grants asked for meanwhile wait for a turn, not for
    // the whole sweep.
    let ledger = Arc::new(MemoryLedger::new());
    let e = open(&ledger, 1_000);
    let devices = 20_000;
    for i in 0..devices {
        assert_eq!(spend(&e, &format!("d{i}"), 1), 1);
    }
    e.give_back_idle().unwrap();
    let before = ledger.commits();
    assert_eq!(e.give_back_idle().unwrap(), devices);
    assert!(
        ledger.commits() - before >= 3,
        "{} commits",
        ledger.commits() - before
    );
    for i in (0..devices).step_by(997) {
        assert_eq!(held(&ledger, &format!("d{i}")), 1);
    }
}

/// A sweep goes a few slots of a shard at a time, each step's give-backs
/// queued as a commit of its own: the first of them failing fails the
/// flush, whatever the later ones do (what it gave back stays counted as
/// used).
#[test]
fn a_flush_reports_a_failed_give_back_even_when_later_ones_commit() {
    let ledger = Arc::new(MemoryLedger::new());
    let e = Engine::builder()
        .shards(1)
        .ledger(Arc::clone(&ledger))
        .max_grant(Amount::from_units(50))
        .grant_timeout(Duration::from_secs(60))
        .open()
        .unwrap();
    e.create_json(rule("enterprise_all_devices", 1_000_000))
        .unwrap();
    // 2,000 devices in one shard: many steps, each with give-backs.
    let devices: Vec<String> = (0..2_000).map(|i| format!("d{i}")).collect();
    for d in &devices {
        assert_eq!(spend(&e, d, 1), 1);
    }
    ledger.fail_next(1);
    assert!(e.flush().is_err(), "the first give-back's commit failed");
    // Whatever was given back or not, no device holds less than it spent.
    for d in &devices {
        assert!(held(&ledger, d) >= 1, "{d}");
    }
}
