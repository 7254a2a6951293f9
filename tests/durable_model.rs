//! Random sequences against a durable engine (on `MemoryLedger`) and a
//! plain model, with crashes (an engine dropped without its shutdown),
//! clean restarts and idle sweeps between the calls: no counter window
//! ever admits more than its limit across all lives; until the first
//! crash, every decision is the one an engine without a ledger makes (a
//! twin run beside it: the ledger changes no decision, only where usage
//! lives); and after a clean restart with no crash in the run, usage is
//! exactly what was admitted and recorded.

use std::collections::HashMap;
use std::sync::Arc;

use benefit_quota::{Amount, BenefitType, Engine, MemoryLedger, Subject};
use proptest::prelude::*;

const PTS: BenefitType = BenefitType::ResourcePoint;
const T0: i64 = 1_741_708_800; // a local midnight
const DAILY: u64 = 12;
const TOTAL: u64 = 30;
const DEVICES: [&str; 3] = ["a", "b", "c"];

#[derive(Debug, Clone)]
enum Op {
    Spend(usize, u64),
    Record(usize, u64),
    /// Hours forward.
    Advance(i64),
    Crash,
    Restart,
    Evict,
    /// An idle sweep (`give_back_idle`).
    Sweep,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0..3usize, 1..4u64).prop_map(|(d, n)| Op::Spend(d, n)),
        1 => (0..3usize, 1..3u64).prop_map(|(d, n)| Op::Record(d, n)),
        1 => (1..14i64).prop_map(Op::Advance),
        1 => Just(Op::Crash),
        1 => Just(Op::Restart),
        1 => Just(Op::Evict),
        2 => Just(Op::Sweep),
    ]
}

fn open(ledger: &Arc<MemoryLedger>, max_grant: u64) -> Engine {
    let e = Engine::builder()
        .ledger(Arc::clone(ledger))
        .max_grant(Amount::from_units(max_grant))
        // not the default 2 s: a loaded machine may not run the writer
        // for a while, and a call that gave up would read as refused
        .grant_timeout(std::time::Duration::from_secs(60))
        .open()
        .unwrap();
    if e.rule_count() == 0 {
        configure(&e);
    }
    e
}

/// The run's two rules, with ids 1 and 2 in this order.
fn configure(e: &Engine) {
    for (limit, unit) in [(DAILY, "day"), (TOTAL, "never")] {
        e.create_json(format!(
            r#"{{"entity_type":"enterprise_all_devices","benefit_info":{{"benefit_type":"resource_point",
            "active_mode":"absolute_time","started_at":0,"ended_at":253402300799,"limit":{limit},"trigger_unit":"{unit}"}}}}"#
        ))
        .unwrap();
    }
}

fn day(now: i64) -> i64 {
    (now + 8 * 3600).div_euclid(86_400)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        failure_persistence: Some(Box::new(proptest::test_runner::FileFailurePersistence::WithSource("regressions"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn no_window_admits_past_its_limit_across_crashes(
        ops in proptest::collection::vec(op(), 1..80),
        max_grant in 1..8u64,
    ) {
        let mut ledger = Arc::new(MemoryLedger::new());
        let mut engine = Some(open(&ledger, max_grant));
        let mut now = T0 + 60;
        // admitted (not recorded) units per (device, day) and per device
        let mut day_admitted: HashMap<(usize, i64), u64> = HashMap::new();
        let mut total_admitted: HashMap<usize, u64> = HashMap::new();
        let mut recorded: HashMap<usize, u64> = HashMap::new();
        let mut crashed = false;
        let twin = Engine::new();
        configure(&twin);
        for op in ops {
            let e = engine.as_ref().unwrap();
            match op {
                Op::Spend(d, n) => {
                    let dec = e.try_consume(&Subject::device(DEVICES[d]), PTS, Amount::from_units(n), now);
                    let plain = twin.try_consume(&Subject::device(DEVICES[d]), PTS, Amount::from_units(n), now);
                    if !crashed {
                        prop_assert_eq!(&dec, &plain, "{} spends {} at {}", DEVICES[d], n, now);
                    }
                    if dec.is_allowed() {
                        let day_used = day_admitted.entry((d, day(now))).or_default();
                        *day_used += n;
                        let total = total_admitted.entry(d).or_default();
                        *total += n;
                        prop_assert!(*day_used <= DAILY, "{} admitted {} on day {}", DEVICES[d], day_used, day(now));
                        prop_assert!(*total <= TOTAL, "{} admitted {} in all", DEVICES[d], total);
                    }
                }
                Op::Record(d, n) => {
                    let dec = e.record(&Subject::device(DEVICES[d]), PTS, Amount::from_units(n), now);
                    let plain = twin.record(&Subject::device(DEVICES[d]), PTS, Amount::from_units(n), now);
                    if !crashed {
                        prop_assert_eq!(&dec, &plain, "{} records {} at {}", DEVICES[d], n, now);
                    }
                    *recorded.entry(d).or_default() += n;
                }
                Op::Advance(h) => now += h * 3600,
                Op::Crash => {
                    // What the ledger holds at this instant is all the
                    // next life finds: a grant still on its way is lost.
                    let survived = Arc::new(ledger.fork());
                    std::mem::forget(engine.take());
                    ledger = survived;
                    engine = Some(open(&ledger, max_grant));
                    crashed = true;
                }
                Op::Restart => {
                    drop(engine.take());
                    engine = Some(open(&ledger, max_grant));
                }
                Op::Evict => {
                    e.evict(now);
                    twin.evict(now);
                }
                Op::Sweep => {
                    e.give_back_idle().unwrap();
                }
            }
        }
        if !crashed {
            let e = engine.take().unwrap();
            drop(e);
            let e = open(&ledger, max_grant);
            for (d, dev) in DEVICES.iter().enumerate() {
                let usage = e.usage(&Subject::device(dev), now);
                let total = total_admitted.get(&d).copied().unwrap_or(0)
                    + recorded.get(&d).copied().unwrap_or(0);
                prop_assert_eq!(usage[1].used, Amount::from_units(total), "{}", dev);
            }
        }
    }
}
