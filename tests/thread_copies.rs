//! Calls by subject for a device or consumer that no single rule names are
//! decided with the calling thread's copy of its family's all-scope rules,
//! under the counters' shard lock only. These scenarios cross everything
//! such a copy must not outlive: an activation boundary, a new window, a
//! configuration write made on another thread, another engine or family on
//! the same thread, a single rule naming the entity later, an entity marked
//! again under a newer configuration by another thread.

mod common;

use benefit_quota::{BenefitType, Engine, Subject, FOREVER};
use common::*;

const PTS: BenefitType = BenefitType::ResourcePoint;

fn spend(e: &Engine, s: &Subject<'_>, now: i64) -> bool {
    e.try_consume(s, PTS, units(1), now).is_allowed()
}

/// Runs `f` on another thread, to its end.
fn on_another_thread(f: impl FnOnce() + Send) {
    std::thread::scope(|s| s.spawn(f).join().expect("the other thread"));
}

#[test]
fn an_all_devices_rule_stops_applying_after_its_last_second() {
    let e = Engine::new();
    Rule::all_devices(1)
        .active(MIDNIGHT, MIDNIGHT + 10)
        .create(&e);
    let d = Subject::device("d");
    assert!(spend(&e, &d, MIDNIGHT));
    assert!(!spend(&e, &d, MIDNIGHT + 5));
    assert!(!spend(&e, &d, MIDNIGHT + 10));
    // Past `ended_at`, nothing applies: allowed, unlimited.
    let after = e.try_consume(&d, PTS, units(1), MIDNIGHT + 11);
    assert!(after.is_allowed() && after.is_unlimited(), "{after:?}");
}

#[test]
fn an_all_devices_rule_starting_later_applies_from_its_first_second() {
    let e = Engine::new();
    Rule::all_devices(100).create(&e);
    Rule::all_devices(1)
        .daily()
        .active(MIDNIGHT + 10, FOREVER)
        .create(&e);
    let d = Subject::device("d");
    for now in MIDNIGHT..MIDNIGHT + 10 {
        assert!(spend(&e, &d, now), "at {now}");
    }
    assert!(spend(&e, &d, MIDNIGHT + 10));
    assert!(!spend(&e, &d, MIDNIGHT + 11));
}

#[test]
fn a_new_window_starts_from_zero() {
    let e = Engine::new();
    Rule::all_devices(1).daily().create(&e);
    let d = Subject::device("d");
    assert!(spend(&e, &d, MIDNIGHT - 2));
    assert!(!spend(&e, &d, MIDNIGHT - 1));
    assert!(spend(&e, &d, MIDNIGHT));
    assert!(!spend(&e, &d, MIDNIGHT + 1));
}

#[test]
fn a_write_on_another_thread_is_seen_by_the_next_call() {
    let e = Engine::new();
    let id = Rule::all_devices(100).create(&e);
    let d = Subject::device("d");
    assert!(spend(&e, &d, MIDNIGHT));
    on_another_thread(|| {
        e.apply_update_json(&id, r#"{"limit":1}"#, MIDNIGHT)
            .expect("the update");
    });
    assert!(!spend(&e, &d, MIDNIGHT));
    on_another_thread(|| {
        e.apply_update_json(&id, r#"{"status":"frozen","limit":100}"#, MIDNIGHT)
            .expect("the update");
    });
    assert!(!spend(&e, &d, MIDNIGHT), "frozen blocks (D12)");
}

#[test]
fn engines_on_one_thread_keep_their_own_rules() {
    // More engines than a thread keeps copies for, all at the same
    // configuration version, called in turn: each admits its own limit.
    let engines: Vec<(Engine, u64)> = (1..=6)
        .map(|limit| {
            let e = Engine::new();
            Rule::all_devices(limit).create(&e);
            (e, limit as u64)
        })
        .collect();
    let d = Subject::device("d");
    let mut admitted = vec![0u64; engines.len()];
    for round in 0..10 {
        for (i, (e, _)) in engines.iter().enumerate() {
            admitted[i] += u64::from(spend(e, &d, MIDNIGHT + round));
        }
    }
    let limits: Vec<u64> = engines.iter().map(|(_, l)| *l).collect();
    assert_eq!(admitted, limits);
}

#[test]
fn devices_and_consumers_keep_their_own_rules() {
    let e = Engine::new();
    Rule::all_devices(1).create(&e);
    Rule::all_consumers(3).create(&e);
    let (d, c) = (Subject::device("x"), Subject::consumer("x"));
    let mut admitted = (0, 0);
    for now in MIDNIGHT..MIDNIGHT + 5 {
        admitted.0 += u32::from(spend(&e, &d, now));
        admitted.1 += u32::from(spend(&e, &c, now));
    }
    assert_eq!(admitted, (1, 3));
}

#[test]
fn a_single_rule_naming_the_device_later_applies_from_the_next_call() {
    let e = Engine::new();
    Rule::all_devices(100).create(&e);
    let d = Subject::device("d");
    assert!(spend(&e, &d, MIDNIGHT));
    assert!(spend(&e, &d, MIDNIGHT));
    Rule::device("d", 1).create(&e);
    // The single rule's own counter starts at zero (D11): one more.
    assert!(spend(&e, &d, MIDNIGHT));
    assert!(!spend(&e, &d, MIDNIGHT));
    // Another device is still under the all-devices rule alone.
    assert!(spend(&e, &Subject::device("other"), MIDNIGHT));
}

#[test]
fn a_copy_older_than_the_entrys_mark_is_not_used() {
    // This thread keeps a copy at the first configuration. Another thread
    // writes, then spends by subject, which marks the device alone again
    // under the new configuration: the mark is current, this thread's
    // copy is not.
    let e = Engine::new();
    let id = Rule::all_devices(3).create(&e);
    let d = Subject::device("d");
    assert!(spend(&e, &d, MIDNIGHT));
    on_another_thread(|| {
        e.apply_update_json(&id, r#"{"limit":2}"#, MIDNIGHT)
            .expect("the update");
        assert!(spend(&e, &d, MIDNIGHT));
    });
    // Two spent of 2: denied, whatever the stale copy's 3 would say.
    assert!(!spend(&e, &d, MIDNIGHT));
}
