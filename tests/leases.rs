//! Leased handles (`SubjectHandle::with_lease`, SEMANTICS.md L1–L8): a
//! leased handle that is its counters' only spender decides exactly as calls
//! by subject, and once released leaves exactly the same usage; shared with
//! other spenders, it never lets a limit be passed.

mod common;

use benefit_quota::{Amount, Decision, DenyReason, Engine, FrozenPolicy, Subject};
use common::*;
use proptest::prelude::*;

/// A device that is also a custom consumer: two counter owners, so both the
/// one-owner and the several-owner paths run.
const BOTH: Subject<'static> = Subject {
    device_id: Some("d"),
    custom_consumer_id: Some("c"),
    member: None,
};

#[derive(Debug, Clone)]
enum Step {
    Create {
        scope: u8,
        unit: u8,
        time: u8,
        limit: u16,
        voice: bool,
        start_hours: i16,
        len_hours: Option<u16>,
    },
    Update {
        target: u8,
        body: u8,
        value: u16,
    },
    /// 0 check, 1 try_consume, 2 record.
    Spend {
        kind: u8,
        voice: bool,
        micros: u32,
    },
    Advance(i32),
    Release,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        2 => (0u8..5, 0u8..4, 1u8..3, 0u16..40, prop::bool::weighted(0.2), -3i16..2,
              prop_oneof![Just(None), (1u16..30).prop_map(Some)])
            .prop_map(|(scope, unit, time, limit, voice, start_hours, len_hours)| Step::Create {
                scope, unit, time, limit, voice, start_hours, len_hours,
            }),
        2 => (any::<u8>(), 0u8..6, 0u16..40).prop_map(|(target, body, value)| Step::Update { target, body, value }),
        14 => (prop_oneof![1 => Just(0u8), 4 => Just(1u8), 1 => Just(2u8)], prop::bool::weighted(0.15),
               prop_oneof![1 => Just(0u32), 6 => 0u32..3_000_000, 1 => any::<u32>()])
            .prop_map(|(kind, voice, micros)| Step::Spend { kind, voice, micros }),
        3 => prop_oneof![
            4 => 0i32..120,
            2 => -90i32..0,
            2 => 0i32..7_200,
            1 => 0i32..(3 * 86_400),
        ].prop_map(Step::Advance),
        1 => Just(Step::Release),
    ]
}

fn create_rule(scope: u8, unit: u8, time: u8, limit: u16, voice: bool) -> Rule {
    let rule = match scope {
        0 => Rule::all_devices(limit.into()),
        1 => Rule::device("d", limit.into()),
        2 => Rule::all_consumers(limit.into()),
        3 => Rule::consumer("c", limit.into()),
        _ => Rule::device("other", limit.into()),
    };
    let unit = ["never", "minute", "hour", "day"][usize::from(unit % 4)];
    let rule = rule.every(time.into(), unit);
    if voice {
        rule.of("voice_unified_duration_system")
    } else {
        rule
    }
}

fn update_body(body: u8, value: u16) -> String {
    match body {
        0 => format!(r#"{{"limit":{value}}}"#),
        1 => r#"{"status":"frozen"}"#.into(),
        2 => r#"{"status":"valid"}"#.into(),
        3 => r#"{"status":"cancel"}"#.into(),
        4 => format!(
            r#"{{"trigger_unit":"{}","trigger_time":{}}}"#,
            ["never", "minute", "hour", "day"][usize::from(value % 4)],
            value % 3 + 1
        ),
        _ => format!(r#"{{"ended_at":{}}}"#, MIDNIGHT + i64::from(value) * 600),
    }
}

fn engine(suspend: bool) -> Engine {
    Engine::builder()
        .shards(4)
        .frozen_policy(if suspend {
            FrozenPolicy::Suspend
        } else {
            FrozenPolicy::Block
        })
        .build()
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: Some(Box::new(proptest::test_runner::FileFailurePersistence::WithSource("regressions"))),
        ..ProptestConfig::default()
    })]

    /// L2: the only spender's leased handle decides every step as calls by
    /// subject do on a twin engine, and after each release (and at the end)
    /// leaves the same usage and lifetime totals.
    #[test]
    fn a_sole_spenders_leased_handle_decides_as_calls_by_subject(
        lease_micros in prop_oneof![Just(1u64), 1u64..10_000_000, Just(1_000_000_000_000)],
        suspend in prop::bool::weighted(0.25),
        steps in proptest::collection::vec(step(), 20..120),
    ) {
        sole_spender(lease_micros, suspend, &steps)?;
    }

    /// The same in whole units (limits are whole units): leases are spent
    /// to exactly nothing, and rules to exactly their limit, through the
    /// leases.
    #[test]
    fn a_sole_spenders_leased_handle_decides_as_calls_by_subject_in_whole_units(
        lease_units in prop_oneof![1u64..4, Just(1_000_000)],
        suspend in prop::bool::weighted(0.25),
        steps in proptest::collection::vec(step().prop_map(in_whole_units), 20..120),
    ) {
        sole_spender(lease_units * 1_000_000, suspend, &steps)?;
    }
}

/// A spend of 0 to 3 whole units instead of any amount.
fn in_whole_units(s: Step) -> Step {
    match s {
        Step::Spend {
            kind,
            voice,
            micros,
        } => Step::Spend {
            kind,
            voice,
            micros: micros % 4 * 1_000_000,
        },
        other => other,
    }
}

/// The body of the L2 proptests.
fn sole_spender(lease_micros: u64, suspend: bool, steps: &[Step]) -> Result<(), TestCaseError> {
    let (exact, leased) = (engine(suspend), engine(suspend));
    let mut h = leased
        .handle(&BOTH)
        .with_lease(Amount::from_micros(lease_micros));
    let mut ids: Vec<String> = Vec::new();
    let mut now = MIDNIGHT - 60;
    for (i, s) in steps.iter().enumerate() {
        match *s {
            Step::Create {
                scope,
                unit,
                time,
                limit,
                voice,
                start_hours,
                len_hours,
            } => {
                let started = MIDNIGHT + i64::from(start_hours) * 3_600;
                let ended =
                    len_hours.map_or(benefit_quota::FOREVER, |l| started + i64::from(l) * 3_600);
                let rule = create_rule(scope, unit, time, limit, voice).active(started, ended);
                let (a, b) = (
                    exact.create_json(rule.body()),
                    leased.create_json(rule.body()),
                );
                prop_assert_eq!(&a, &b, "step {}", i);
                if let Ok(info) = a {
                    ids.push(info.benefit_id().to_string());
                }
            }
            Step::Update {
                target,
                body,
                value,
            } => {
                if ids.is_empty() {
                    continue;
                }
                let id = &ids[usize::from(target) % ids.len()];
                let body = update_body(body, value);
                let a = exact.apply_update_json(id, &body, now);
                let b = leased.apply_update_json(id, &body, now);
                prop_assert_eq!(a, b, "step {} {}", i, body);
            }
            Step::Spend {
                kind,
                voice,
                micros,
            } => {
                let ty = if voice { VOICE } else { PTS };
                let amount = Amount::from_micros(u64::from(micros));
                let (a, b) = match kind {
                    0 => (exact.check(&BOTH, now), h.check(now)),
                    1 => (
                        exact.try_consume(&BOTH, ty, amount, now),
                        h.try_consume(ty, amount, now),
                    ),
                    _ => (
                        exact.record(&BOTH, ty, amount, now),
                        h.record(ty, amount, now),
                    ),
                };
                prop_assert_eq!(a, b, "step {} {:?} at {}", i, s, now);
            }
            Step::Advance(by) => now += i64::from(by),
            Step::Release => {
                h.release();
                prop_assert_eq!(
                    exact.usage(&BOTH, now),
                    leased.usage(&BOTH, now),
                    "step {}",
                    i
                );
            }
        }
    }
    h.release();
    prop_assert_eq!(exact.usage(&BOTH, now), leased.usage(&BOTH, now));
    Ok(())
}

#[test]
fn a_lease_is_taken_under_the_lock_and_spent_without_it() {
    let e = Engine::new();
    let id = Rule::all_devices(100).daily().create(&e);
    let d = Subject::device("d");
    let mut h = e.handle(&d).with_lease(units(10));
    assert_eq!(h.lease(), units(10));
    assert!(h.try_consume(PTS, units(1), MIDNIGHT).is_allowed());
    // 1 spent + 10 leased, as every other spender sees it
    assert_eq!(used(&e, &d, &id, MIDNIGHT), units(11));
    for n in 2..=10 {
        let dec = h.try_consume(PTS, units(1), MIDNIGHT);
        assert_eq!(dec.headroom().map(|x| x.remaining), Some(units(100 - n)));
        // spent from the lease: the counter does not move
        assert_eq!(used(&e, &d, &id, MIDNIGHT), units(11));
    }
    h.release();
    assert_eq!(used(&e, &d, &id, MIDNIGHT), units(10));
    let report = &e.usage(&d, MIDNIGHT)[0];
    assert_eq!(report.lifetime, units(10));
}

#[test]
fn a_lease_spent_to_the_limit_leaves_the_rule_exhausted_for_every_call() {
    let e = Engine::new();
    let id = Rule::all_devices(5).daily().create(&e);
    let d = Subject::device("d");
    // More than the headroom: the grant takes all of it.
    let mut h = e.handle(&d).with_lease(units(100));
    assert!(h.try_consume(PTS, units(1), MIDNIGHT).is_allowed());
    for left in (0..4).rev() {
        let dec = h.try_consume(PTS, units(1), MIDNIGHT);
        assert_eq!(dec.headroom().map(|x| x.remaining), Some(units(left)));
    }
    // Spent to the limit from the lease: a check, and a spend of a type no
    // rule limits, are denied as calls by subject are (an exhausted rule
    // blocks its subject, D13), not answered from the empty lease.
    for dec in [
        h.check(MIDNIGHT),
        h.try_consume(VOICE, units(1), MIDNIGHT),
        e.check(&d, MIDNIGHT),
    ] {
        let denial = dec.denial().map(|x| (x.benefit_id.as_str(), x.reason));
        assert_eq!(denial, Some((id.as_str(), DenyReason::Exhausted)));
    }
    h.release();
    assert_eq!(used(&e, &d, &id, MIDNIGHT), units(5));
}

#[test]
fn other_spenders_see_the_unspent_lease_as_used_but_no_limit_is_passed() {
    let e = Engine::new();
    Rule::all_devices(10).create(&e);
    let d = Subject::device("d");
    let mut h = e.handle(&d).with_lease(units(4));
    assert!(h.try_consume(PTS, units(1), MIDNIGHT).is_allowed());
    // 1 spent + 4 leased: a call by subject finds 5 left, not 9
    let denied = e.try_consume(&d, PTS, units(6), MIDNIGHT);
    assert_eq!(
        denied.denial().map(|x| (x.reason, x.remaining)),
        Some((DenyReason::Insufficient, units(5)))
    );
    assert!(e.try_consume(&d, PTS, units(5), MIDNIGHT).is_allowed());
    // the handle spends its lease, then the exact path finds nothing left
    for _ in 0..4 {
        assert!(h.try_consume(PTS, units(1), MIDNIGHT).is_allowed());
    }
    let last = h.try_consume(PTS, units(1), MIDNIGHT);
    assert_eq!(last.denial().map(|x| x.reason), Some(DenyReason::Exhausted));
    h.release();
    assert_eq!(e.usage(&d, MIDNIGHT)[0].used, units(10));
}

#[test]
fn a_write_stops_lease_spending_at_the_next_call() {
    let e = Engine::new();
    let id = Rule::all_devices(100).create(&e);
    let d = Subject::device("d");
    let mut h = e.handle(&d).with_lease(units(50));
    assert!(h.try_consume(PTS, units(1), MIDNIGHT).is_allowed());
    e.apply_update_json(&id, r#"{"status":"frozen"}"#, MIDNIGHT)
        .unwrap();
    let dec = h.try_consume(PTS, units(1), MIDNIGHT);
    assert_eq!(dec.denial().map(|x| x.reason), Some(DenyReason::Frozen));
    // the lease went back when the call settled: only the spent point counts
    assert_eq!(used(&e, &d, &id, MIDNIGHT), units(1));
    e.apply_update_json(&id, r#"{"status":"valid","limit":2}"#, MIDNIGHT)
        .unwrap();
    assert!(h.try_consume(PTS, units(1), MIDNIGHT).is_allowed());
    let dec = h.try_consume(PTS, units(1), MIDNIGHT);
    assert_eq!(dec.denial().map(|x| x.reason), Some(DenyReason::Exhausted));
}

#[test]
fn a_lease_ends_with_its_window() {
    let e = Engine::new();
    let id = Rule::all_devices(5).daily().create(&e);
    let d = Subject::device("d");
    let mut h = e.handle(&d).with_lease(units(3));
    assert!(h.try_consume(PTS, units(1), MIDNIGHT - 1).is_allowed());
    let dec = h.try_consume(PTS, units(1), MIDNIGHT - 1);
    assert_eq!(dec.headroom().and_then(|x| x.resets_at), Some(MIDNIGHT));
    // the next day starts from zero: yesterday's unspent lease is not carried
    let dec = h.try_consume(PTS, units(1), MIDNIGHT);
    assert_eq!(dec.headroom().map(|x| x.remaining), Some(units(4)));
    assert_eq!(
        dec.headroom().and_then(|x| x.resets_at),
        Some(MIDNIGHT + DAY)
    );
    h.release();
    assert_eq!(used(&e, &d, &id, MIDNIGHT), units(1));
    // lifetime: the two points of yesterday and today's one, no lease
    assert_eq!(e.usage(&d, MIDNIGHT)[0].lifetime, units(3));
}

#[test]
fn a_dropped_handle_gives_its_lease_back() {
    let e = Engine::new();
    let id = Rule::all_devices(10).create(&e);
    let d = Subject::device("d");
    let mut h = e.handle(&d).with_lease(units(4));
    assert!(h.try_consume(PTS, units(1), MIDNIGHT).is_allowed());
    assert_eq!(used(&e, &d, &id, MIDNIGHT), units(5));
    drop(h);
    assert_eq!(used(&e, &d, &id, MIDNIGHT), units(1));
    assert_eq!(e.usage(&d, MIDNIGHT)[0].lifetime, units(1));
}

#[test]
fn leased_handles_in_a_batch_decide_one_by_one() {
    let e = Engine::new();
    Rule::all_devices(3).create(&e);
    let mut handles: Vec<_> = ["a", "b", "a"]
        .iter()
        .map(|d| e.handle(&Subject::device(d)).with_lease(units(2)))
        .collect();
    let mut reqs = point_requests(&mut handles, [1, 1, 1]);
    let mut out = Vec::new();
    e.try_consume_many_handles(&mut reqs, MIDNIGHT, &mut out);
    // "a" twice: its first handle took 1 + a lease of 2, the second finds 0
    let allowed: Vec<bool> = out.iter().map(Decision::is_allowed).collect();
    assert_eq!(allowed, [true, true, false]);
}

/// L4: however leased handles and calls by subject interleave on one
/// device's counters, no more is admitted than the limit, and once every
/// handle is released the counter holds exactly what was admitted.
#[test]
fn threads_with_leased_handles_never_pass_a_shared_limit() {
    const LIMIT: u64 = 20_000;
    let e = Engine::new();
    Rule::all_devices(LIMIT as i64).create(&e);
    Rule::all_devices(LIMIT as i64 / 2).daily().create(&e);
    let d = Subject::device("d");
    let admitted: u64 = std::thread::scope(|s| {
        let spenders: Vec<_> = (0..4u64)
            .map(|t| {
                let e = &e;
                s.spawn(move || {
                    let mut h = e
                        .handle(&d)
                        .with_lease(Amount::from_micros(1 + t * 7_000_000));
                    let mut n = 0;
                    for i in 0..10_000 {
                        let ok = if t == 3 && i % 2 == 0 {
                            e.try_consume(&d, PTS, units(1), MIDNIGHT + 5)
                        } else {
                            h.try_consume(PTS, units(1), MIDNIGHT + 5)
                        };
                        n += u64::from(ok.is_allowed());
                    }
                    h.release();
                    n
                })
            })
            .collect();
        spenders.into_iter().map(|j| j.join().unwrap()).sum()
    });
    assert!(admitted <= LIMIT / 2, "{admitted}");
    // 40,000 asked for, 10,000 allowed a day: everything was used
    assert_eq!(admitted, LIMIT / 2);
    for r in e.usage(&d, MIDNIGHT + 5) {
        assert_eq!(r.used, units(admitted), "{}", r.benefit_id);
    }
}

#[test]
fn a_lease_given_back_after_another_spender_rolled_the_window_leaves_the_new_one_alone() {
    let e = Engine::new();
    let id = Rule::all_devices(10).daily().create(&e);
    let d = Subject::device("d");
    let mut h = e.handle(&d).with_lease(units(5));
    assert!(h.try_consume(PTS, units(1), MIDNIGHT - 1).is_allowed());
    // a call by subject stamped in the next day rolls the counter over
    assert!(e.try_consume(&d, PTS, units(3), MIDNIGHT).is_allowed());
    h.release();
    // yesterday's unspent lease does not come off today's usage
    assert_eq!(used(&e, &d, &id, MIDNIGHT), units(3));
    assert_eq!(e.usage(&d, MIDNIGHT)[0].lifetime, units(4));
}

/// Found by the `ops` fuzzer: a grant added to a saturated lifetime total
/// could not be taken back exactly. Grants count in usage only; the
/// lifetime total gets what was spent, when the lease is settled.
#[test]
fn a_lease_on_a_saturated_lifetime_total_leaves_it_saturated() {
    let d = Subject::device("d");
    let (exact, leased) = (Engine::new(), Engine::new());
    for e in [&exact, &leased] {
        Rule::all_devices(i64::MAX).daily().create(e);
        let _ = e.record(&d, PTS, Amount::from_micros(u64::MAX), MIDNIGHT - 10);
    }
    let mut h = leased.handle(&d).with_lease(units(10));
    for now in [MIDNIGHT, MIDNIGHT + 1, MIDNIGHT + 2] {
        let a = exact.try_consume(&d, PTS, units(1), now);
        assert_eq!(a, h.try_consume(PTS, units(1), now));
    }
    h.release();
    let report = leased.usage(&d, MIDNIGHT + 2);
    assert_eq!(exact.usage(&d, MIDNIGHT + 2), report);
    assert_eq!(report[0].lifetime, Amount::from_micros(u64::MAX));
}
