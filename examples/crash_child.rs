//! A gateway process on a durable engine, for the crash test
//! (`tests/crash.rs`), which kills it with SIGKILL at random moments and
//! starts it again on the same file.
//!
//! Rules (created by the first life, restored by the others): every device
//! 40 points per local day and 60 for good; organization `org` a pool of
//! 20,000 for good. Two threads spend for 24 devices (by subject, through
//! short-lived handles, and 1-point records; 10 devices each, 4 shared)
//! and 10 members of `org`. Each thread's own devices are named after the
//! seed's pair (`g<seed / 2>d<n>`): a device's lifetime limit is soon
//! spent, or stranded by crashes, so every second life brings fresh ones
//! whose counters the crashes hit too. The shared devices are `d20`..`d23`
//! in every life. The
//! clock runs at 10 simulated seconds per wall-clock second from
//! `--clock-zero` (unix milliseconds, shared by every life), starting 30
//! simulated seconds before a local midnight, so daily windows roll over
//! during the test.
//!
//! Every admission is printed once it is decided — `A <subject> <now>
//! <units>` — and every record `R <subject> <now> <units>`, one line each.
//! With `--ops N` the process runs N operations per thread and exits
//! cleanly (dropping the engine gives unspent grants back).
//!
//! `cargo run --release --features durable --example crash_child -- --path quota.db --clock-zero <ms> --seed 1 [--ops 500]`

use std::io::Write;
use std::sync::Arc;

use benefit_quota::{Amount, BenefitType, Engine, Member, Subject};

mod child;
use child::{arg, now, Rng};

/// 30 simulated seconds before 2025-03-12 00:00:00 +08:00.
const CLOCK_BASE: i64 = 1_741_708_800 - 30;

/// Devices both threads spend from, after the 20 each thread has half of.
const SHARED_DEVICES: u64 = 4;

fn main() {
    let path = arg("--path").expect("--path");
    let zero: i64 = arg("--clock-zero")
        .and_then(|v| v.parse().ok())
        .expect("--clock-zero");
    let seed: u64 = arg("--seed").and_then(|v| v.parse().ok()).unwrap_or(1);
    let ops: Option<u64> = arg("--ops").and_then(|v| v.parse().ok());
    let engine = Engine::builder()
        .durable(&path)
        .max_grant(Amount::from_units(8))
        .record_interval(std::time::Duration::from_millis(20))
        .open()
        .unwrap_or_else(|e| {
            eprintln!("{e}");
            std::process::exit(2)
        });
    // Imported with fixed ids, every life: an import of the same record
    // changes nothing, and a life killed between two of them leaves the
    // next one the whole set to finish.
    for (id, scope, limit, unit) in [
        ("r1", r#""entity_type":"enterprise_all_devices""#, 40, "day"),
        (
            "r2",
            r#""entity_type":"enterprise_all_devices""#,
            60,
            "never",
        ),
        (
            "r3",
            r#""entity_type":"coze_organization","entity_id":"org""#,
            20000,
            "never",
        ),
    ] {
        let record = format!(
            r#"{{"benefit_id":"{id}",{scope},"benefit_type":"resource_point","active_mode":"absolute_time","started_at":0,"ended_at":253402300799,"limit":{limit},"status":"valid","trigger_unit":"{unit}","trigger_time":1}}"#
        );
        engine.import_json(record, 0).expect("rule");
    }
    let engine = Arc::new(engine);
    println!("READY");
    let threads: Vec<_> = (0..2u64)
        .map(|t| {
            let engine = Arc::clone(&engine);
            std::thread::spawn(move || run(&engine, zero, seed, t, ops))
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    // A clean exit: the engine is dropped here, giving unspent grants back.
    drop(engine);
    println!("DONE");
}

/// One thread's load. Thread `lane` spends from `d0`..`d19` whose number is
/// `lane` modulo 2, and both threads from `d20`..`d23` and the
/// organization's pool: a call whose clock was read just before a midnight
/// lands in the new day's window once another thread has rolled its
/// counter over (D16), so only for a counter of its own can a thread print
/// the day the call was counted in (the test checks the shared devices'
/// daily counters by their totals only).
fn run(engine: &Engine, zero: i64, seed: u64, lane: u64, ops: Option<u64>) {
    let pts = BenefitType::ResourcePoint;
    let family = seed / 2;
    let mut rng = Rng((seed * 2 + lane + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let out = std::io::stdout();
    let mut done = 0;
    while ops.is_none_or(|n| done < n) {
        done += 1;
        let dice = rng.below(100);
        let units = 1 + rng.below(3);
        let amount = Amount::from_units(units);
        if dice < 15 {
            let user = format!("u{}", rng.below(10));
            let s = Subject::member(Member::user(&user).in_organization("org"));
            let t = now(CLOCK_BASE, zero);
            if engine.try_consume(&s, pts, amount, t).is_allowed() {
                let _ = writeln!(out.lock(), "A org {t} {units}");
            }
            continue;
        }
        let dev = if rng.below(5) == 0 {
            format!("d{}", 20 + rng.below(SHARED_DEVICES))
        } else {
            format!("g{family}d{}", rng.below(10) * 2 + lane)
        };
        let s = Subject::device(&dev);
        if dice < 25 {
            let t = now(CLOCK_BASE, zero);
            let _ = engine.record(&s, pts, Amount::from_units(1), t);
            let _ = writeln!(out.lock(), "R {dev} {t} 1");
        } else if dice < 40 {
            let mut h = engine.handle(&s);
            for _ in 0..3 {
                let t = now(CLOCK_BASE, zero);
                if h.try_consume(pts, amount, t).is_allowed() {
                    let _ = writeln!(out.lock(), "A {dev} {t} {units}");
                }
            }
        } else {
            let t = now(CLOCK_BASE, zero);
            if engine.try_consume(&s, pts, amount, t).is_allowed() {
                let _ = writeln!(out.lock(), "A {dev} {t} {units}");
            }
        }
    }
}
