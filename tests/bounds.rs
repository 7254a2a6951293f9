//! Resource bounds: capped counter count, eviction that changes no decision,
//! length-limited ids.

mod common;

use benefit_quota::{Decision, DenyReason, Engine, Subject};
use common::*;
use proptest::prelude::*;

#[test]
fn the_counter_cap_refuses_new_counters_and_changes_nothing() {
    let e = Engine::builder().max_counters(3).build();
    let cum = Rule::all_devices(100).create(&e);
    let daily = Rule::all_devices(10).daily().create(&e);
    let (a, b) = (Subject::device("a"), Subject::device("b"));
    assert!(e.try_consume(&a, PTS, units(1), MIDNIGHT).is_allowed());
    assert_eq!(e.counter_count(), 2);
    // b needs two new counters: 4 > 3.
    let before = snapshot(&e, &[a, b], MIDNIGHT);
    let d = e.try_consume(&b, PTS, units(1), MIDNIGHT);
    let den = d.denial().expect("denied");
    assert_eq!(
        (den.reason, den.benefit_id.as_str()),
        (DenyReason::CounterCapacity, cum.as_str())
    );
    let d = e.record(&b, PTS, units(1), MIDNIGHT);
    assert_eq!(
        d.denial().map(|x| x.reason),
        Some(DenyReason::CounterCapacity)
    );
    assert_eq!(snapshot(&e, &[a, b], MIDNIGHT), before);
    // A check needs no counter; a is unaffected.
    assert!(e.check(&b, MIDNIGHT).is_allowed());
    assert!(e.try_consume(&a, PTS, units(1), MIDNIGHT).is_allowed());
    // Cancelling the daily rule and evicting frees one counter: b's one cumulative counter fits.
    e.apply_update_json(&daily, r#"{"status":"cancel"}"#, MIDNIGHT)
        .unwrap();
    assert_eq!(e.evict(MIDNIGHT), 1);
    assert!(e.try_consume(&b, PTS, units(1), MIDNIGHT).is_allowed());
    assert_eq!(e.counter_count(), 2);
}

/// A `record` meters usage already spent: past the cap, the counters that
/// exist still take it (the rules they count for would otherwise under-count
/// it and admit it again), the missing ones are not created, and the call
/// reports the cap.
#[test]
fn a_record_past_the_counter_cap_books_on_the_counters_that_exist() {
    let e = Engine::builder().max_counters(2).build();
    let cum = Rule::all_devices(100).create(&e);
    let (a, b) = (Subject::device("a"), Subject::device("b"));
    assert!(e.try_consume(&a, PTS, units(1), MIDNIGHT).is_allowed());
    assert!(e.try_consume(&b, PTS, units(1), MIDNIGHT).is_allowed());
    // a now needs a daily counter too: 3 > 2.
    let daily = Rule::all_devices(10).daily().create(&e);
    let d = e.record(&a, PTS, units(5), MIDNIGHT);
    assert_eq!(
        d.denial().map(|x| (x.reason, x.benefit_id.as_str())),
        Some((DenyReason::CounterCapacity, daily.as_str()))
    );
    assert_eq!(used(&e, &a, &cum, MIDNIGHT), units(6));
    assert_eq!(used(&e, &a, &daily, MIDNIGHT), units(0));
    assert_eq!(e.counter_count(), 2);
    // The cumulative rule has 94 left for a, not 99: after 94 more, it is
    // exhausted.
    for _ in 0..94 {
        assert!(e.check(&a, MIDNIGHT).is_allowed());
        let d = e.record(&a, PTS, units(1), MIDNIGHT);
        assert_eq!(
            d.denial().map(|x| x.reason),
            Some(DenyReason::CounterCapacity)
        );
    }
    assert_eq!(used(&e, &a, &cum, MIDNIGHT), units(100));
    assert_eq!(
        e.check(&a, MIDNIGHT)
            .denial()
            .map(|x| (x.reason, x.benefit_id.as_str())),
        Some((DenyReason::Exhausted, cum.as_str()))
    );
}

#[test]
fn eviction_frees_exactly_the_counters_that_no_longer_matter() {
    let e = Engine::new();
    let cum = Rule::all_devices(100).create(&e);
    let daily = Rule::all_devices(10).daily().create(&e);
    let hourly = Rule::device("h", 10).every(1, "hour").create(&e);
    let s = Subject::device("d");
    let h = Subject::device("h");
    let _ = e.try_consume(&s, PTS, units(3), MIDNIGHT);
    let _ = e.try_consume(&h, PTS, units(3), MIDNIGHT);
    // d: all-devices cumulative + daily; h: all-devices cumulative + its own
    // hourly rule, which replaces the all-devices daily rule (D11).
    assert_eq!(e.counter_count(), 4);
    assert_eq!(e.evict(MIDNIGHT + 3599), 0);
    assert_eq!(e.evict(MIDNIGHT + 3600), 1); // h's hourly window ended
    assert_eq!(e.evict(MIDNIGHT + DAY), 1); // d's daily window ended; cumulative counters stay
    assert_eq!(used(&e, &s, &cum, MIDNIGHT + DAY), units(3));
    assert_eq!(used(&e, &s, &daily, MIDNIGHT + DAY), units(0));
    assert_eq!(used(&e, &h, &hourly, MIDNIGHT + DAY), units(0));
    // An update that resets usage (new window length) makes the counter evictable at once.
    let _ = e.try_consume(&s, PTS, units(1), MIDNIGHT + DAY);
    e.apply_update_json(&daily, r#"{"trigger_time":3}"#, MIDNIGHT + DAY)
        .unwrap();
    assert_eq!(e.evict(MIDNIGHT + DAY), 1);
    assert_eq!(e.counter_count(), 2);
}

const DEVICES: [&str; 3] = ["a", "b", "c"];

fn twin() -> Engine {
    let e = Engine::new();
    Rule::all_devices(40).create(&e);
    Rule::all_devices(9).daily().create(&e);
    Rule::device("b", 5).every(2, "hour").create(&e);
    Rule::new("coze_workspace", Some("w"), 30)
        .every(1, "day")
        .create(&e);
    e
}

fn subject(i: usize) -> Subject<'static> {
    device_maybe_in_workspace(&DEVICES, i, 2)
}

proptest! {
    #[test]
    fn eviction_changes_no_decision(
        ops in proptest::collection::vec((0usize..6, 0u64..4_000_000, 0i64..20_000, 0u8..10), 1..200)
    ) {
        let (kept, evicted) = (twin(), twin());
        let mut now = MIDNIGHT;
        for (subject_i, micros, step, kind) in ops {
            now += step;
            let s = subject(subject_i);
            let amount = benefit_quota::Amount::from_micros(micros);
            let (x, y): (Decision, Decision) = match kind {
                0..=5 => (kept.try_consume(&s, PTS, amount, now), evicted.try_consume(&s, PTS, amount, now)),
                6 | 7 => (kept.record(&s, PTS, amount, now), evicted.record(&s, PTS, amount, now)),
                8 => {
                    let body = format!(r#"{{"trigger_time":{}}}"#, 1 + micros % 3);
                    prop_assert_eq!(kept.apply_update_json("2", &body, now).is_ok(), evicted.apply_update_json("2", &body, now).is_ok());
                    (kept.check(&s, now), evicted.check(&s, now))
                }
                _ => {
                    evicted.evict(now);
                    (kept.check(&s, now), evicted.check(&s, now))
                }
            };
            prop_assert_eq!(x, y);
            for i in 0..6 {
                let used = |e: &Engine| e.usage(&subject(i), now).into_iter().map(|u| (u.benefit_id, u.used, u.window)).collect::<Vec<_>>();
                prop_assert_eq!(used(&kept), used(&evicted));
            }
        }
    }
}

#[test]
fn ids_are_length_limited_everywhere() {
    let e = Engine::new();
    let long = "x".repeat(257);
    assert_eq!(
        e.create_json(Rule::device(&long, 1).body())
            .unwrap_err()
            .code()
            .as_u32(),
        4000
    );
    let rec = format!(
        r#"{{"benefit_id":"{long}","entity_type":"single_device","entity_id":"d","benefit_type":"resource_point","active_mode":"absolute_time","started_at":0,"ended_at":1,"limit":1}}"#
    );
    let err = e.import_json(rec, 0).unwrap_err();
    assert!(err.msg().contains("`benefit_id`"), "{}", err.msg());
    assert_eq!(e.rule_count(), 0);
}
