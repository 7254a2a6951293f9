//! The durable engine (feature `durable`) beside the in-memory one, in one
//! run.
//!
//! Workload: the `quota` bench's rules, limits and key sets (every device
//! under an `enterprise_all_devices` cumulative rule and a daily rule, 1%
//! with a `single_device` rule; 1 point per call; devices visited in a
//! shuffled order), on an engine with a file ledger and on one without.
//! Unlike `quota`, the clock stays inside one local day: a new window needs
//! a new durable grant per counter, which a single-threaded loop over
//! 1,000,000 devices would pay one `fsync` at a time (concurrent callers
//! share one; see RELIABILITY.md). Every device is warmed before timing (a
//! grant held), as a running gateway's devices are.
//!
//! Rows: `durable_hot` (1,000 devices), `durable_cold` (1,000,000), each
//! with `memory_try_consume` and `durable_try_consume`. Then, outside
//! criterion: commits (each one durable write) per admitted request over
//! 2,000,000 steady-state calls, the time to open a file holding 1,000,000
//! live counters, and the file's size per counter. A table follows.
//!
//! Run: `cargo bench --features durable --bench durable` (two to three minutes).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use benefit_quota::ledger::{Change, CounterKey, CounterOwner, FileLedger, WindowId};
use benefit_quota::{Decision, Engine, Ledger, Subject};
use criterion::{Criterion, Throughput};

mod common;
use common::{
    median_ns, rule_body, shuffled, CUMULATIVE_LIMIT, DAILY_LIMIT, MIDNIGHT, ONE, PTS, SINGLE_LIMIT,
};

/// Inside the day that starts at `MIDNIGHT`, for any plausible call count.
#[inline]
fn now_at(i: usize) -> i64 {
    MIDNIGHT + 60 + (i >> 14) as i64
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("bq-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Creates the rules and warms every device once, from `threads` threads
/// (with a ledger, concurrent first grants share a commit).
fn setup(engine: &Engine, keys: &[String], threads: usize) {
    engine
        .create_json(rule_body("", "never", CUMULATIVE_LIMIT))
        .unwrap();
    engine
        .create_json(rule_body("", "day", DAILY_LIMIT))
        .unwrap();
    for k in keys.iter().step_by(100) {
        engine
            .create_json(rule_body(k, "never", SINGLE_LIMIT))
            .unwrap();
    }
    let chunk = keys.len().div_ceil(threads);
    std::thread::scope(|s| {
        for part in keys.chunks(chunk) {
            s.spawn(move || {
                for k in part {
                    let d = engine.try_consume(&Subject::device(k), PTS, ONE, MIDNIGHT + 1);
                    assert!(d.is_allowed());
                }
            });
        }
    });
}

struct Pair {
    memory: Engine,
    durable: Engine,
    keys: Vec<String>,
    order: Vec<u32>,
    dir: PathBuf,
}

fn pair(devices: usize) -> Pair {
    let keys: Vec<String> = (0..devices).map(|i| format!("sn-{i:08}")).collect();
    let dir = scratch(&format!("pair-{devices}"));
    let memory = Engine::builder().build();
    setup(&memory, &keys, 1);
    let durable = Engine::builder()
        .durable(dir.join("quota.db"))
        .open()
        .unwrap();
    setup(&durable, &keys, 128);
    Pair {
        memory,
        durable,
        order: shuffled(devices, 0x9E37_79B9_7F4A_7C15),
        keys,
        dir,
    }
}

#[inline(always)]
fn allowed(d: Decision) -> bool {
    std::hint::black_box(&d).is_allowed()
}

fn group(c: &mut Criterion, name: &str, p: &Pair) {
    let mut g = c.benchmark_group(name);
    g.throughput(Throughput::Elements(1));
    let n = p.order.len();
    for (label, engine) in [
        ("memory_try_consume", &p.memory),
        ("durable_try_consume", &p.durable),
    ] {
        let mut i = 0usize;
        let mut j = 0usize;
        g.bench_function(label, |b| {
            b.iter(|| {
                i += 1;
                j += 1;
                if j == n {
                    j = 0;
                }
                let key = p.keys[p.order[j] as usize].as_str();
                allowed(engine.try_consume(&Subject::device(key), PTS, ONE, now_at(i)))
            })
        });
    }
    g.finish();
}

/// Commits per admitted request over `calls` steady-state calls.
fn commits_per_request(p: &Pair, calls: usize) -> f64 {
    let before = p.durable.ledger_stats().unwrap().commits;
    let n = p.order.len();
    let mut admitted = 0u64;
    for i in 0..calls {
        let key = p.keys[p.order[i % n] as usize].as_str();
        admitted += u64::from(
            p.durable
                .try_consume(&Subject::device(key), PTS, ONE, now_at(i))
                .is_allowed(),
        );
    }
    let commits = p.durable.ledger_stats().unwrap().commits - before;
    commits as f64 / admitted.max(1) as f64
}

/// A file holding the rules and `devices` × 2 live counters, written
/// through the ledger directly (one commit), and the time to open an
/// engine on it (median of 3).
fn open_time(devices: usize) -> (Duration, u64, usize) {
    let dir = scratch("open");
    let path = dir.join("quota.db");
    let engine = Engine::builder().durable(&path).open().unwrap();
    let ids: Vec<String> = [
        rule_body("", "never", CUMULATIVE_LIMIT),
        rule_body("", "day", DAILY_LIMIT),
    ]
    .iter()
    .map(|b| engine.create_json(b).unwrap().benefit_id().to_string())
    .collect();
    drop(engine);
    let ledger = FileLedger::open(&path).unwrap();
    let day = WindowId {
        generation: 0,
        start: MIDNIGHT,
        end: MIDNIGHT + 86_400,
    };
    let cumulative = WindowId {
        generation: 0,
        start: i64::MIN,
        end: i64::MAX,
    };
    let mut changes = Vec::with_capacity(devices * 2);
    for i in 0..devices {
        for (id, window) in ids.iter().zip([cumulative, day]) {
            changes.push(Change::Grant {
                key: CounterKey {
                    benefit_id: benefit_quota::types::BenefitId::new(id).unwrap(),
                    owner: CounterOwner::Device(format!("sn-{i:08}")),
                },
                window,
                at_least: 7_000_000,
                amount: 7_000_000,
                limit: u64::MAX,
                ends_in: None,
            });
        }
    }
    ledger.commit(&changes).unwrap();
    drop(ledger);
    let size = std::fs::metadata(&path).unwrap().len();
    let mut times = Vec::new();
    let mut counters = 0;
    for _ in 0..3 {
        let t = Instant::now();
        let e = Engine::builder().durable(&path).open().unwrap();
        times.push(t.elapsed());
        counters = e.counter_count();
        // a restored counter decides at once
        assert!(!e
            .usage(&Subject::device("sn-00000000"), MIDNIGHT + 1)
            .is_empty());
        drop(e); // restored counters hold no unspent grant: the file stays as it was
    }
    times.sort();
    let _ = std::fs::remove_dir_all(&dir);
    (times[1], size, counters)
}

fn cleanup(p: Pair) {
    let dir = p.dir.clone();
    drop(p);
    let _ = std::fs::remove_dir_all(Path::new(&dir));
}

fn main() {
    let mut c = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    let bench = std::env::args().any(|a| a == "--bench");
    let hot = pair(1_000);
    group(&mut c, "durable_hot", &hot);
    let per_request = if bench {
        commits_per_request(&hot, 2_000_000)
    } else {
        f64::NAN
    };
    cleanup(hot);
    let cold = pair(if bench { 1_000_000 } else { 10_000 });
    group(&mut c, "durable_cold", &cold);
    // Idle sweeps over every counter of the cold engine: the first finds
    // them all spent from since the last one (it marks them), the second
    // finds them idle and gives every unspent grant back (in turns of 8,192).
    let sweeps = bench.then(|| {
        let t = std::time::Instant::now();
        let marked = cold.durable.give_back_idle().unwrap();
        let mark = t.elapsed();
        let t = std::time::Instant::now();
        let given = cold.durable.give_back_idle().unwrap();
        (mark, marked, t.elapsed(), given)
    });
    cleanup(cold);
    c.final_summary();
    if !bench {
        return;
    }
    let (open, size, counters) = open_time(1_000_000);
    let m = |g: &str, id: &str| median_ns(g, id).unwrap_or(f64::NAN);
    let share = |g: &str| m(g, "memory_try_consume") / m(g, "durable_try_consume");
    println!();
    println!("| measure | value | target |");
    println!("|---|---|---|");
    for g in ["durable_hot", "durable_cold"] {
        println!(
            "| {g}: memory / durable try_consume (ns/op) | {:.1} / {:.1} = {:.0}% | ≥ 50% |",
            m(g, "memory_try_consume"),
            m(g, "durable_try_consume"),
            100.0 * share(g)
        );
    }
    println!(
        "| commits per admitted request, steady state (hot) | 1/{:.0} | ≤ 1/32 |",
        1.0 / per_request
    );
    println!(
        "| open with {counters} live counters | {:.2} s | < 2 s |",
        open.as_secs_f64()
    );
    println!(
        "| file size per live counter | {:.0} B | |",
        size as f64 / counters.max(1) as f64
    );
    if let Some((mark, marked, give, given)) = sweeps {
        println!(
            "| idle sweep, every counter active ({marked} given back) | {:.0} ms | |",
            mark.as_secs_f64() * 1e3
        );
        println!(
            "| idle sweep, every counter idle ({given} given back, in turns of 8,192) | {:.0} ms | |",
            give.as_secs_f64() * 1e3
        );
    }
}
