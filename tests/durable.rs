//! Usage kept in a ledger: restarts, crashes, grants, records, failures,
//! compaction, and the file ledger's bad files.

use std::sync::Arc;

use benefit_quota::ledger::{CounterKey, CounterOwner};
use benefit_quota::{
    Amount, BenefitType, DenyReason, Engine, LedgerFailure, MemoryLedger, Subject,
};

const PTS: BenefitType = BenefitType::ResourcePoint;
/// 2025-03-12 00:00:00 +08:00, a local midnight.
const T0: i64 = 1_741_708_800;

fn units(n: u64) -> Amount {
    Amount::from_units(n)
}

fn rule(limit: u64, unit: &str) -> String {
    format!(
        r#"{{"entity_type":"enterprise_all_devices","benefit_info":{{"benefit_type":"resource_point",
        "active_mode":"absolute_time","started_at":0,"ended_at":253402300799,"limit":{limit},"trigger_unit":"{unit}"}}}}"#
    )
}

/// An engine on `ledger`. A call waits for its grant up to a minute, not
/// the default two seconds: on a loaded machine the writer thread may not
/// run for a while, and a call that gave up would read as a refused grant.
fn open(ledger: &Arc<MemoryLedger>) -> Engine {
    Engine::builder()
        .ledger(Arc::clone(ledger))
        .grant_timeout(std::time::Duration::from_secs(60))
        .open()
        .unwrap()
}

/// A crash: the engine goes without giving anything back, and what the
/// ledger held at that instant is all the next life finds (its writer
/// thread, still running, commits into the old ledger only).
fn crash(engine: Engine, ledger: &mut Arc<MemoryLedger>) {
    let survived = Arc::new(ledger.fork());
    std::mem::forget(engine);
    *ledger = survived;
}

fn admitted(e: &Engine, dev: &str, n: usize, at: i64) -> usize {
    (0..n)
        .filter(|_| {
            e.try_consume(&Subject::device(dev), PTS, units(1), at)
                .is_allowed()
        })
        .count()
}

#[test]
fn a_clean_restart_keeps_rules_and_usage_exactly() {
    let ledger = Arc::new(MemoryLedger::new());
    let e = open(&ledger);
    e.create_json(rule(100, "never")).unwrap();
    e.create_json(rule(10, "day")).unwrap();
    assert_eq!(admitted(&e, "d", 7, T0), 7);
    assert!(e
        .record(&Subject::device("d"), PTS, units(2), T0)
        .is_allowed());
    drop(e);
    let e = open(&ledger);
    assert_eq!(e.rule_count(), 2);
    let usage = e.usage(&Subject::device("d"), T0);
    assert_eq!(usage[0].used, units(9));
    assert_eq!(usage[1].used, units(9));
    assert_eq!(usage[0].lifetime, units(9));
    assert_eq!(admitted(&e, "d", 5, T0), 1);
    // the next day the daily rule starts again, the cumulative one does not
    assert_eq!(admitted(&e, "d", 20, T0 + 86_400), 10);
    assert_eq!(
        e.usage(&Subject::device("d"), T0 + 86_400)[0].used,
        units(20)
    );
}

#[test]
fn a_rule_write_whose_commit_failed_is_durable_before_any_grant_under_it() {
    // A daily limit of 10, spent; the update to hourly fails to commit.
    // Grants under the hourly rule must not be durable without it: else a
    // restart reads the daily rule back, skips the hourly counter (another
    // generation) and admits the day's 10 again.
    let mut ledger = Arc::new(MemoryLedger::new());
    let e = open(&ledger);
    let id = e.create_json(rule(10, "day")).unwrap().benefit_id().clone();
    assert_eq!(admitted(&e, "d", 10, T0), 10);
    ledger.fail_next(1);
    e.apply_update_json(id.as_str(), r#"{"trigger_unit":"hour"}"#, T0)
        .unwrap();
    assert_eq!(admitted(&e, "d", 20, T0 + 60), 10);
    crash(e, &mut ledger);
    let e = open(&ledger);
    assert_eq!(e.get(id.as_str()).unwrap().reset().unit().as_str(), "hour");
    assert_eq!(admitted(&e, "d", 20, T0 + 120), 0);
    assert_eq!(e.usage(&Subject::device("d"), T0 + 120)[0].used, units(10));
}

/// A write undone after its commit failed (a limit raised, then lowered
/// back) is sent again: the ledger ends with the rule the engine enforces,
/// not with the held raise, which the writer commits later.
#[test]
fn a_rule_write_undone_after_its_commit_failed_leaves_the_ledger_with_the_last() {
    let mut ledger = Arc::new(MemoryLedger::new());
    let e = open(&ledger);
    let id = e
        .create_json(rule(10, "never"))
        .unwrap()
        .benefit_id()
        .clone();
    assert_eq!(admitted(&e, "d", 10, T0), 10);
    ledger.fail_next(1);
    e.apply_update_json(id.as_str(), r#"{"limit":20}"#, T0)
        .unwrap();
    e.apply_update_json(id.as_str(), r#"{"limit":10}"#, T0)
        .unwrap();
    e.flush().unwrap();
    crash(e, &mut ledger);
    let e = open(&ledger);
    assert_eq!(e.get(id.as_str()).unwrap().limit(), 10);
    assert_eq!(admitted(&e, "d", 10, T0), 0);
}

#[test]
fn a_ledgered_call_from_the_threads_copy_sees_every_configuration_write() {
    // Calls of a device no single rule names are decided with the thread's
    // copy of the all-scope rules once its entry is marked; a lower limit,
    // and then a single rule naming it, must be seen at once.
    let ledger = Arc::new(MemoryLedger::new());
    let e = open(&ledger);
    let id = e.create_json(rule(10, "day")).unwrap().benefit_id().clone();
    assert_eq!(admitted(&e, "d", 3, T0), 3); // the first call marks, the rest use the copy
    e.apply_update_json(id.as_str(), r#"{"limit":4}"#, T0)
        .unwrap();
    assert_eq!(admitted(&e, "d", 5, T0), 1);
    e.apply_update_json(id.as_str(), r#"{"limit":100}"#, T0)
        .unwrap();
    assert_eq!(admitted(&e, "d", 2, T0), 2);
    e.create_json(
        r#"{"entity_type":"single_device","entity_id":"d","benefit_info":{"benefit_type":"resource_point",
        "active_mode":"absolute_time","started_at":0,"ended_at":253402300799,"limit":7,"trigger_unit":"day"}}"#,
    )
    .unwrap();
    // The single rule replaces the all-devices one (D11), from zero.
    assert_eq!(admitted(&e, "d", 10, T0), 7);
    assert_eq!(admitted(&e, "other", 3, T0), 3);
    // A single rule that starts later keeps its device from being marked
    // alone now: when it starts, it must apply, with no write in between.
    e.create_json(format!(
        r#"{{"entity_type":"single_device","entity_id":"later","benefit_info":{{"benefit_type":"resource_point",
        "active_mode":"absolute_time","started_at":{},"ended_at":253402300799,"limit":2,"trigger_unit":"day"}}}}"#,
        T0 + 3_600
    ))
    .unwrap();
    assert_eq!(admitted(&e, "later", 5, T0), 5);
    assert_eq!(admitted(&e, "later", 5, T0 + 3_600), 2);
}

#[test]
fn a_crash_never_admits_more_than_the_limit_and_strands_at_most_a_grant() {
    let mut ledger = Arc::new(MemoryLedger::new());
    let max_grant = 16;
    let mut total = 0;
    let mut lives = 0;
    {
        let e = open(&ledger);
        e.create_json(rule(1_000, "never")).unwrap();
        drop(e);
    }
    let mut held_before = 0u64;
    for life in 0..30 {
        let e = Engine::builder()
            .ledger(Arc::clone(&ledger))
            .max_grant(units(max_grant))
            .grant_timeout(std::time::Duration::from_secs(60))
            .open()
            .unwrap();
        let got = admitted(&e, "d", 7 + life % 5, T0);
        total += got;
        lives += 1;
        // the engine counts every admission, and what earlier crashes stranded
        let used = e.usage(&Subject::device("d"), T0)[0].used;
        assert!(
            used >= units(total as u64),
            "life {life}: {used:?} < {total}"
        );
        crash(e, &mut ledger);
        // what the ledger holds covers every admission
        let key = CounterKey {
            benefit_id: benefit_quota::types::BenefitId::new("1").unwrap(),
            owner: CounterOwner::Device("d".into()),
        };
        let held = ledger.counter(&key).map_or(0, |r| r.used);
        assert!(
            held >= units(total as u64).as_micros(),
            "life {life}: {held} < {total}"
        );
        assert!(
            held <= units(total as u64 + lives * (max_grant * 3 / 2 + 1)).as_micros(),
            "life {life}: {held} strands more than 1.5 grants and a request per crash"
        );
        // And this life alone: what it added beyond its admissions.
        assert!(
            held - held_before <= units(got as u64 + max_grant * 3 / 2 + 1).as_micros(),
            "life {life}: {} beyond {got} admitted strands more than 1.5 grants and a request",
            held - held_before
        );
        held_before = held;
    }
    let e = open(&ledger);
    let rest = admitted(&e, "d", 2_000, T0);
    assert!(total + rest <= 1_000);
    assert!(total + rest >= 1_000 - (lives as usize) * (max_grant as usize * 3 / 2 + 1));
}

#[test]
fn the_last_units_are_granted_exactly_as_asked() {
    let mut ledger = Arc::new(MemoryLedger::new());
    let e = open(&ledger);
    e.create_json(rule(10, "never")).unwrap();
    // two devices, one limit each: every unit is reachable
    assert_eq!(admitted(&e, "a", 15, T0), 10);
    assert_eq!(admitted(&e, "b", 15, T0), 10);
    crash(e, &mut ledger);
    let e = open(&ledger);
    assert_eq!(admitted(&e, "a", 1, T0), 0);
}

#[test]
fn far_from_the_limit_one_durable_write_serves_many_calls() {
    let ledger = Arc::new(MemoryLedger::new());
    let e = open(&ledger);
    e.create_json(rule(10_000_000, "never")).unwrap();
    e.create_json(rule(1_000_000, "day")).unwrap();
    let before = e.ledger_stats().unwrap().commits;
    let n = 64_000;
    assert_eq!(admitted(&e, "d", n, T0), n);
    let commits = e.ledger_stats().unwrap().commits - before;
    assert!(commits * 32 <= n as u64, "{commits} commits for {n} calls");
}

#[test]
fn a_failing_ledger_denies_with_its_own_reason_and_then_recovers() {
    let ledger = Arc::new(MemoryLedger::new());
    let e = open(&ledger);
    e.create_json(rule(100, "never")).unwrap();
    ledger.fail_next(1);
    let d = e.try_consume(&Subject::device("d"), PTS, units(1), T0);
    assert_eq!(d.denial().unwrap().reason, DenyReason::LedgerUnavailable);
    assert!(e.ledger_stats().unwrap().errors >= 1);
    // nothing was admitted; the next call takes a grant
    assert!(e
        .try_consume(&Subject::device("d"), PTS, units(1), T0)
        .is_allowed());
    assert_eq!(e.usage(&Subject::device("d"), T0)[0].used, units(1));
    // checks never need a grant
    ledger.fail_next(5);
    assert!(e.check(&Subject::device("d"), T0).is_allowed());
}

#[test]
fn records_are_durable_after_a_flush_and_lift_the_ceiling() {
    let mut ledger = Arc::new(MemoryLedger::new());
    let e = open(&ledger);
    e.create_json(rule(100, "never")).unwrap();
    assert_eq!(admitted(&e, "d", 5, T0), 5);
    let d = e.record(&Subject::device("d"), PTS, units(90), T0);
    assert!(d.is_allowed());
    e.flush().unwrap();
    crash(e, &mut ledger);
    let e = open(&ledger);
    assert_eq!(e.usage(&Subject::device("d"), T0)[0].used, units(95));
    assert_eq!(admitted(&e, "d", 10, T0), 5);
}

/// A record past the counter cap books on the counters that exist, and that
/// booking reaches the ledger as any record does.
#[test]
fn a_record_past_the_counter_cap_is_durable_on_the_counters_that_exist() {
    let mut ledger = Arc::new(MemoryLedger::new());
    let open_capped = |l: &Arc<MemoryLedger>| {
        Engine::builder()
            .max_counters(1)
            .ledger(Arc::clone(l))
            .grant_timeout(std::time::Duration::from_secs(60))
            .open()
            .unwrap()
    };
    let e = open_capped(&ledger);
    e.create_json(rule(100, "never")).unwrap();
    assert_eq!(admitted(&e, "d", 5, T0), 5);
    e.create_json(rule(1000, "day")).unwrap();
    let d = e.record(&Subject::device("d"), PTS, units(90), T0);
    assert_eq!(
        d.denial().map(|x| x.reason),
        Some(DenyReason::CounterCapacity)
    );
    e.flush().unwrap();
    crash(e, &mut ledger);
    // The next life has no cap: only the ledger's usage limits it.
    let e = open(&ledger);
    let cum = e
        .usage(&Subject::device("d"), T0)
        .into_iter()
        .find(|u| u.limit == 100)
        .expect("the cumulative rule applies");
    assert_eq!(cum.used, units(95));
    assert_eq!(admitted(&e, "d", 10, T0), 5);
}

/// A ledger holding more counters than the engine's cap (the cap was
/// lowered between lives, or a kill -9 left grants that calls denied by
/// another rule had taken, on counters no call created) opens with every
/// counter kept: refusing to open would leave moving the file away, which
/// forgets all usage. New counters are refused until evict makes room.
#[test]
fn a_ledger_with_more_counters_than_the_cap_opens_and_forgets_nothing() {
    let mut ledger = Arc::new(MemoryLedger::new());
    let e = open(&ledger);
    e.create_json(rule(1, "never")).unwrap();
    for d in ["a", "b", "c"] {
        assert_eq!(admitted(&e, d, 2, T0), 1, "{d}");
    }
    e.flush().unwrap();
    crash(e, &mut ledger);
    let e = Engine::builder()
        .max_counters(2)
        .ledger(Arc::clone(&ledger))
        .grant_timeout(std::time::Duration::from_secs(60))
        .open()
        .expect("a ledger past the cap opens");
    for d in ["a", "b", "c"] {
        let denial = e.try_consume(&Subject::device(d), PTS, units(1), T0);
        assert_eq!(
            denial.denial().map(|x| x.reason),
            Some(DenyReason::Exhausted),
            "{d}"
        );
    }
    let new = e.try_consume(&Subject::device("n"), PTS, units(1), T0);
    assert_eq!(
        new.denial().map(|x| x.reason),
        Some(DenyReason::CounterCapacity)
    );
}

/// A ledger counted windows at one UTC offset: opened by an engine at
/// another, its usage would not count in that engine's windows (a daily
/// window at UTC+8 is not one at UTC), so the open is refused, naming both.
#[test]
fn a_ledger_opened_at_another_utc_offset_is_refused() {
    let mut ledger = Arc::new(MemoryLedger::new());
    let e = open(&ledger);
    e.create_json(rule(10, "day")).unwrap();
    assert_eq!(admitted(&e, "d", 20, T0), 10);
    e.flush().unwrap();
    crash(e, &mut ledger);
    let at = |offset: benefit_quota::UtcOffset| {
        Engine::builder()
            .utc_offset(offset)
            .ledger(Arc::clone(&ledger))
            .open()
    };
    let err = at(benefit_quota::UtcOffset::UTC).unwrap_err();
    assert_eq!(err.kind, benefit_quota::LedgerErrorKind::Mismatch, "{err}");
    assert!(
        err.detail.contains("UTC+08:00") && err.detail.contains("UTC+00:00"),
        "{err}"
    );
    // At its own offset it opens, its usage whole.
    let e = at(benefit_quota::UtcOffset::CHINA).unwrap();
    assert_eq!(admitted(&e, "d", 5, T0 + 3_600), 0);
}

/// D14 under a ledger: a debit that saturates a counter under a saturated
/// limit is allowed, as in memory, and only out of a grant: a restart finds
/// the counter saturated (the rule exhausted), not at its usage before.
#[test]
fn a_debit_that_saturates_the_counter_is_granted_first() {
    let mut ledger = Arc::new(MemoryLedger::new());
    let e = open(&ledger);
    e.create_json(rule(9_000_000_000_000_000_000, "never"))
        .unwrap();
    assert_eq!(admitted(&e, "d", 10, T0), 10);
    let big = Amount::from_micros(u64::MAX - 5);
    let d = e.try_consume(&Subject::device("d"), PTS, big, T0);
    assert!(d.is_allowed(), "{d:?}");
    let exhausted = |e: &Engine| {
        e.check(&Subject::device("d"), T0)
            .denial()
            .map(|x| x.reason)
    };
    assert_eq!(exhausted(&e), Some(DenyReason::Exhausted));
    e.flush().unwrap();
    crash(e, &mut ledger);
    let e = open(&ledger);
    assert_eq!(exhausted(&e), Some(DenyReason::Exhausted));
}

/// `SafeCapacity(n)` admits at most `n` per counter window without a grant,
/// however the ledger fails: here it fails, commits once (the records of
/// what it admitted), and fails again. A commit that succeeds says nothing
/// about the grants other instances hold, so it does not start a new `n`.
#[test]
fn safe_capacity_admits_at_most_its_amount_per_counter_window() {
    let ledger = Arc::new(MemoryLedger::new());
    let e = Engine::builder()
        .ledger(Arc::clone(&ledger))
        .grant_timeout(std::time::Duration::from_secs(60))
        .on_ledger_failure(LedgerFailure::SafeCapacity(units(3)))
        .open()
        .unwrap();
    e.create_json(rule(100, "never")).unwrap();
    ledger.fail_next(u32::MAX);
    assert_eq!(admitted(&e, "d", 10, T0), 3);
    ledger.fail_next(0);
    e.flush().unwrap();
    ledger.fail_next(u32::MAX);
    assert_eq!(admitted(&e, "d", 10, T0), 0);
    // Another counter has its own.
    assert_eq!(admitted(&e, "e", 10, T0), 3);
    ledger.fail_next(0);
    e.flush().unwrap();
}

/// With no room for a new counter, a call that a rule denies anyway gets
/// that rule's denial (D13/D17's ranking), as an engine without a ledger
/// gives it: not `counter_capacity`, which a gateway answers 503.
#[test]
fn no_room_for_a_counter_does_not_hide_a_quota_denial() {
    let ledger = Arc::new(MemoryLedger::new());
    let e = Engine::builder()
        .max_counters(1)
        .ledger(Arc::clone(&ledger))
        .grant_timeout(std::time::Duration::from_secs(60))
        .open()
        .unwrap();
    let twin = Engine::builder().max_counters(1).build();
    let consumers = r#"{"entity_type":"enterprise_all_custom_consumers","benefit_info":{"benefit_type":"resource_point",
        "active_mode":"absolute_time","started_at":0,"ended_at":253402300799,"limit":100,"trigger_unit":"never"}}"#;
    for engine in [&e, &twin] {
        engine.create_json(rule(1, "never")).unwrap();
        assert!(engine
            .try_consume(&Subject::device("d"), PTS, units(1), T0)
            .is_allowed());
        engine.create_json(consumers).unwrap();
    }
    // The device's rule is exhausted; the consumer's would need a counter.
    let s = Subject::device("d").with_consumer("c");
    let plain = twin.try_consume(&s, PTS, units(1), T0);
    assert_eq!(
        plain.denial().map(|d| d.reason),
        Some(DenyReason::Exhausted)
    );
    assert_eq!(e.try_consume(&s, PTS, units(1), T0), plain);
}

#[test]
fn evicted_counters_leave_the_ledger() {
    let ledger = Arc::new(MemoryLedger::new());
    let e = open(&ledger);
    e.create_json(rule(10, "day")).unwrap();
    assert_eq!(admitted(&e, "d", 3, T0), 3);
    e.flush().unwrap();
    let key = CounterKey {
        benefit_id: benefit_quota::types::BenefitId::new("1").unwrap(),
        owner: CounterOwner::Device("d".into()),
    };
    assert!(ledger.counter(&key).is_some());
    assert_eq!(e.evict(T0 + 86_400), 1);
    e.flush().unwrap();
    assert!(ledger.counter(&key).is_none());
}

#[test]
fn an_update_that_resets_usage_is_restored_as_reset() {
    let mut ledger = Arc::new(MemoryLedger::new());
    // Grants of one point: a crash strands at most 1.5 grants and a
    // request, so the reset counter (3 spent) reads under 8, the usage
    // before the reset.
    let small = |ledger: &Arc<MemoryLedger>| {
        Engine::builder()
            .ledger(Arc::clone(ledger))
            .grant_timeout(std::time::Duration::from_secs(60))
            .max_grant(units(1))
            .open()
            .unwrap()
    };
    let e = small(&ledger);
    e.create_json(rule(100, "day")).unwrap();
    assert_eq!(admitted(&e, "d", 8, T0), 8);
    // a new period starts usage from zero (D16)
    e.apply_update_json("1", r#"{"trigger_unit":"hour"}"#, T0 + 10)
        .unwrap();
    assert_eq!(admitted(&e, "d", 3, T0 + 20), 3);
    crash(e, &mut ledger);
    let e = small(&ledger);
    let used = e.usage(&Subject::device("d"), T0 + 30)[0].used;
    assert!(used >= units(3) && used < units(8), "{used:?}");
    assert_eq!(e.get("1").unwrap().reset().unit().as_str(), "hour");
}

#[test]
fn handles_and_batches_spend_out_of_grants_too() {
    let mut ledger = Arc::new(MemoryLedger::new());
    let e = open(&ledger);
    e.create_json(rule(10, "never")).unwrap();
    let mut h = e.handle(&Subject::device("d")).with_lease(units(5));
    let n = (0..20)
        .filter(|_| h.try_consume(PTS, units(1), T0).is_allowed())
        .count();
    assert_eq!(n, 10);
    drop(h);
    let reqs: Vec<_> = (0..5)
        .map(|_| benefit_quota::Request {
            subject: Subject::device("e"),
            benefit_type: PTS,
            amount: units(3),
        })
        .collect();
    let mut out = Vec::new();
    e.try_consume_many(&reqs, T0, &mut out);
    assert_eq!(out.iter().filter(|d| d.is_allowed()).count(), 3);
    // A batch of exact handles, four on one device: 3 + 3 + 3 of 10.
    let mut handles: Vec<_> = (0..4).map(|_| e.handle(&Subject::device("f"))).collect();
    let mut reqs: Vec<_> = handles
        .iter_mut()
        .map(|h| benefit_quota::HandleRequest {
            handle: h,
            benefit_type: PTS,
            amount: units(3),
        })
        .collect();
    out.clear();
    e.try_consume_many_handles(&mut reqs, T0, &mut out);
    assert_eq!(out.iter().filter(|d| d.is_allowed()).count(), 3);
    drop(reqs);
    drop(handles);
    crash(e, &mut ledger);
    let e = open(&ledger);
    assert_eq!(admitted(&e, "d", 1, T0), 0);
    assert_eq!(admitted(&e, "e", 5, T0), 1);
    assert_eq!(admitted(&e, "f", 5, T0), 1);
}

#[test]
fn concurrent_callers_share_grants_without_losing_or_passing_a_unit() {
    let mut ledger = Arc::new(MemoryLedger::new());
    let e = Engine::builder()
        .ledger(Arc::clone(&ledger))
        .max_grant(units(7))
        // eight threads on a loaded machine: a waiting call's grant may be
        // spent by the others many times over before it runs again, and
        // being denied as an outage is what this test rules out
        .grant_timeout(std::time::Duration::from_secs(60))
        .open()
        .unwrap();
    e.create_json(rule(500, "never")).unwrap();
    e.create_json(rule(300, "day")).unwrap();
    let devices = ["a", "b", "c"];
    let admitted: Vec<usize> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..8)
            .map(|t| {
                let e = &e;
                s.spawn(move || {
                    let mut n = [0usize; 3];
                    for i in 0..400 {
                        let k = (i + t) % 3;
                        let d = e.try_consume(&Subject::device(devices[k]), PTS, units(1), T0);
                        if let Some(den) = d.denial() {
                            assert_ne!(den.reason, DenyReason::LedgerUnavailable);
                        }
                        n[k] += usize::from(d.is_allowed());
                    }
                    n
                })
            })
            .collect();
        let per: Vec<[usize; 3]> = hs.into_iter().map(|h| h.join().unwrap()).collect();
        (0..3).map(|k| per.iter().map(|n| n[k]).sum()).collect()
    });
    // demand (about 1,067 a device) exceeds the daily 300: all of it, no more
    assert_eq!(admitted, vec![300, 300, 300]);
    e.flush().unwrap();
    crash(e, &mut ledger);
    let e = open(&ledger);
    for d in devices {
        assert_eq!(e.usage(&Subject::device(d), T0)[0].used, units(300), "{d}");
    }
}

#[test]
fn evicting_a_window_keeps_the_newer_window_granted_since() {
    let ledger = Arc::new(MemoryLedger::new());
    let e = open(&ledger);
    e.create_json(rule(100, "day")).unwrap(); // "1"
    e.create_json(rule(5, "never")).unwrap(); // "2", exhausted below
    assert_eq!(admitted(&e, "d", 5, T0), 5);
    // The next day the daily rule takes a grant in the new window, then the
    // cumulative rule denies: the daily counter stays in yesterday's window.
    let d = e.try_consume(&Subject::device("d"), PTS, units(1), T0 + 86_400);
    assert_eq!(d.denial().unwrap().benefit_id.as_str(), "2");
    let before = ledger.commits();
    e.evict(T0 + 86_400);
    // No give-back: the ledger keeps what the grant took. The queued forget
    // is committed by the writer, which outlives the engine forgotten here
    // (not a crash: the forget must reach this ledger).
    std::mem::forget(e);
    let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while ledger.commits() == before && std::time::Instant::now() < until {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert!(ledger.commits() > before, "the forget was never committed");
    let key = CounterKey {
        benefit_id: benefit_quota::types::BenefitId::new("1").unwrap(),
        owner: CounterOwner::Device("d".into()),
    };
    // The forget of yesterday's window left today's record, and its grant,
    // alone: a restart counts it.
    let rec = ledger.counter(&key).expect("today's record stays");
    assert_eq!(rec.window.start, T0 + 86_400);
    assert!(rec.used >= units(1).as_micros());
}

#[test]
fn a_refused_pool_does_not_strand_the_grant_of_another_rule() {
    let ledger = Arc::new(MemoryLedger::new());
    let member_rule = r#"{"benefit_id":"9","entity_type":"coze_organization","entity_id":"org","benefit_type":"resource_point",
        "active_mode":"absolute_time","started_at":0,"ended_at":253402300799,"limit":3,"trigger_unit":"never"}"#;
    let device_rule = r#"{"benefit_id":"8","entity_type":"enterprise_all_devices","benefit_type":"resource_point",
        "active_mode":"absolute_time","started_at":0,"ended_at":253402300799,"limit":100,"trigger_unit":"never"}"#;
    let engines: Vec<Engine> = (0..2)
        .map(|_| {
            let e = Engine::builder()
                .ledger(Arc::clone(&ledger))
                .max_grant(units(1))
                // a call waiting on a lost grant waits all of this, then
                // is denied; a grant that is not lost comes well before
                .grant_timeout(std::time::Duration::from_secs(20))
                .open()
                .unwrap();
            e.import_json(device_rule, T0).unwrap();
            e.import_json(member_rule, T0).unwrap();
            e
        })
        .collect();
    let m = benefit_quota::Member::user("u").in_organization("org");
    let both = Subject::device("d").with_member(m);
    // the first engine spends the pool
    let n = (0..5)
        .filter(|_| {
            engines[0]
                .try_consume(&both, PTS, units(1), T0)
                .is_allowed()
        })
        .count();
    assert_eq!(n, 3);
    // the second is refused by the pool, each call asking the device rule
    // for a new grant of one unit
    for _ in 0..3 {
        let d = engines[1].try_consume(&both, PTS, units(1), T0);
        assert_eq!(d.denial().unwrap().reason, DenyReason::Insufficient);
    }
    // Calls for the device alone spend its grants; calls with the member
    // need a new device grant while the pool is refused: that grant must
    // still come back, or the device's next call waits on it in vain.
    let dev = Subject::device("d");
    for _ in 0..5 {
        // A call that waited on a lost grant would give up after the grant
        // timeout and be denied (`ledger_unavailable`).
        let d = engines[1].try_consume(&dev, PTS, units(1), T0);
        assert!(d.is_allowed(), "{d:?}");
        let d = engines[1].try_consume(&both, PTS, units(1), T0);
        assert_eq!(d.denial().unwrap().reason, DenyReason::Insufficient);
    }
}
