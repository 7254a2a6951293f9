//! One gateway of a fleet sharing its quotas through Redis, for the fleet
//! test (`tests/fleet.rs`), which runs four of them against one server.
//!
//! Rules (imported with the same ids by every instance, as each syncs them
//! from the platform): every device 20 points per local day (`7001`);
//! organization `org` a pool of 2,000 for good (`7002`). Two threads each
//! make `--calls` calls (0: until killed), spending 1 to 3 points at a time
//! for 1,000 devices and, one call in five, for 50 members of `org`.
//!
//! Each thread's clock is its progress, not the wall clock: it starts 10
//! simulated seconds before a local midnight and moves one second every
//! `--calls-per-second` calls (default 500), so a thread crosses midnight
//! after 5,000 calls however fast or slow the machine is, and the demand
//! each day sees is fixed by the call count. Threads and instances run at
//! their own pace: a call whose clock is behind a counter's window counts
//! in the newer window (D16). Unspent grants of counters idle for a sweep
//! go back every 200 ms ([`Engine::give_back_every`]), so sweeps race the
//! load.
//!
//! With `--print-admissions`, every admission is also printed as it is
//! decided: `A <counter> <day> <units>` (for a test that kills the process).
//!
//! At the end it prints, per counter window (the one the engine counted an
//! admission in, from the decision), what it asked for and what it was
//! admitted: `T <counter> <day> <asked units> <admitted units>`
//! (`<counter>`: a device id, or `org`), then `DONE`.
//!
//! `cargo run --release --features redis --example fleet_child -- --url redis://127.0.0.1:6379/0 --prefix t1 --seed 1 --calls 20000`

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use benefit_quota::ledger::RedisLedger;
use benefit_quota::{Amount, BenefitType, Engine, LedgerFailure, Member, Subject};

mod child;
use child::{arg, Rng};

/// 10 simulated seconds before 2025-03-12 00:00:00 +08:00.
const CLOCK_BASE: i64 = 1_741_708_800 - 10;

fn day(now: i64) -> i64 {
    (now + 8 * 3600).div_euclid(86_400)
}

/// (counter, day) → (asked, admitted)
type Tally = HashMap<(String, i64), (u64, u64)>;

fn main() {
    let url = arg("--url").expect("--url");
    let prefix = arg("--prefix").unwrap_or_else(|| "bq".into());
    let seed: u64 = arg("--seed").and_then(|v| v.parse().ok()).unwrap_or(1);
    let calls: u64 = arg("--calls")
        .and_then(|v| v.parse().ok())
        .expect("--calls");
    let per_second: u64 = arg("--calls-per-second")
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(500);
    let print = std::env::args().any(|a| a == "--print-admissions");
    let ledger = RedisLedger::new(&url, &prefix, Duration::from_secs(10)).expect("url");
    let engine = Engine::builder()
        .ledger(ledger)
        .max_grant(Amount::from_units(10))
        .on_ledger_failure(LedgerFailure::FailClosed)
        // a slow fsync on a loaded machine is not an outage
        .grant_timeout(Duration::from_secs(10))
        .open()
        .expect("open");
    engine
        .import_response_json(
            r#"{"code":0,"msg":"","data":{"has_more":false,"page_token":"","benefit_infos":[
            {"benefit_id":"7001","entity_type":"enterprise_all_devices","benefit_type":"resource_point","active_mode":"absolute_time","started_at":0,"ended_at":253402300799,"limit":20,"status":"valid","trigger_unit":"day","trigger_time":1},
            {"benefit_id":"7002","entity_type":"coze_organization","entity_id":"org","benefit_type":"resource_point","active_mode":"absolute_time","started_at":0,"ended_at":253402300799,"limit":2000,"status":"valid","trigger_unit":"never","trigger_time":1}]}}"#,
            CLOCK_BASE,
        )
        .expect("rules");
    let engine = Arc::new(engine);
    let _sweeps = Engine::give_back_every(&engine, Duration::from_millis(200));
    let threads: Vec<_> = (0..2u64)
        .map(|t| {
            let engine = Arc::clone(&engine);
            let load = Load {
                seed: seed * 2 + t + 1,
                calls,
                per_second,
                print,
            };
            std::thread::spawn(move || run(&engine, load))
        })
        .collect();
    let mut tally = Tally::new();
    for t in threads {
        for (k, (a, b)) in t.join().expect("thread") {
            let e = tally.entry(k).or_default();
            e.0 += a;
            e.1 += b;
        }
    }
    drop(engine); // gives unspent grants back
    let mut lines: Vec<String> = tally
        .into_iter()
        .map(|((c, d), (a, b))| format!("T {c} {d} {a} {b}"))
        .collect();
    lines.sort();
    println!("{}\nDONE", lines.join("\n"));
}

/// What one thread does: its random seed, how many calls it makes (0:
/// until killed), how many calls its clock takes to move a second, and
/// whether it prints each admission.
struct Load {
    seed: u64,
    calls: u64,
    per_second: u64,
    print: bool,
}

fn run(engine: &Engine, load: Load) -> Tally {
    use std::io::Write;
    let out = std::io::stdout();
    let pts = BenefitType::ResourcePoint;
    let mut rng = Rng(load.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut tally = Tally::new();
    let mut made = 0u64;
    while load.calls == 0 || made < load.calls {
        let t = CLOCK_BASE + (made / load.per_second) as i64;
        made += 1;
        let units = 1 + rng.below(3);
        let (counter, allowed) = if rng.below(5) == 0 {
            let user = format!("u{}", rng.below(50));
            let s = Subject::member(Member::user(&user).in_organization("org"));
            (
                "org".to_owned(),
                engine.try_consume(&s, pts, Amount::from_units(units), t),
            )
        } else {
            let dev = format!("d{}", rng.below(1000));
            let s = Subject::device(&dev);
            let d = engine.try_consume(&s, pts, Amount::from_units(units), t);
            (dev, d)
        };
        // The window the engine counted in: the daily rule's (named by the
        // decision, ending at its reset), which may be a newer one than
        // `t`'s when the other thread's call already moved the counter on.
        let resets = allowed.headroom().map_or_else(
            || allowed.denial().and_then(|d| d.resets_at),
            |h| h.resets_at,
        );
        let day = match (&*counter, resets) {
            ("org", _) => 0,
            (_, Some(end)) => day(end - 1),
            _ => day(t),
        };
        let e = tally.entry((counter.clone(), day)).or_default();
        e.0 += units;
        if allowed.is_allowed() {
            e.1 += units;
            if load.print {
                let _ = writeln!(out.lock(), "A {counter} {day} {units}");
            }
        }
    }
    tally
}
