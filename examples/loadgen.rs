//! Whole-process load: N subjects, T threads, D seconds.
//!
//! Every device is under an all-devices cumulative rule and a daily rule, 1%
//! have a single-device rule (the bench workload). Each thread spends 1 point
//! for random devices; simulated time runs 1 hour per wall-clock second so
//! daily windows roll over during the run. Prints a progress line each second,
//! then throughput, allow/deny counts and memory per tracked counter (resident
//! memory added by warming every subject, minus the id bytes, per counter).
//!
//! With `--handles 1`, subjects are split between the threads (as
//! connections are between a gateway's workers) and each thread spends
//! through a `SubjectHandle` per subject, made after the warm-up; the memory
//! the handles add is printed per handle. `--lease N` makes them leased
//! handles taking N points of each rule ahead (`SubjectHandle::with_lease`),
//! released at the end.
//!
//! With `--redis URL` (feature `redis`), usage is shared through Redis
//! (`EngineBuilder::redis`): run several at once for a fleet; the round
//! trips per allowed call are printed. The simulated days start at the
//! same midnight every run and the counters stay in Redis, so give each
//! run (each fleet) a database of its own or flush it between runs.
//!
//! `cargo run --release --example loadgen -- --subjects 1000000 --threads 2 --seconds 5 [--handles 1 [--lease 4]]`
//! `cargo run --release --features redis --example loadgen -- --subjects 100000 --redis redis://127.0.0.1:6379/0`

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use benefit_quota::{Amount, BenefitType, Engine, Subject, SubjectHandle};

const MIDNIGHT: i64 = 1_741_708_800;

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// (resident, peak resident) in bytes, from /proc/self/status (0 elsewhere).
fn memory() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn rule(engine: &Engine, entity: Option<&str>, unit: &str, limit: u64) {
    let (t, id) = match entity {
        None => ("enterprise_all_devices", String::new()),
        Some(d) => ("single_device", format!(r#""entity_id":"{d}","#)),
    };
    let body = format!(
        r#"{{"entity_type":"{t}",{id}"benefit_info":{{"benefit_type":"resource_point","active_mode":"absolute_time","started_at":0,"ended_at":253402300799,"limit":{limit},"trigger_unit":"{unit}","trigger_time":1}}}}"#
    );
    if let Err(e) = engine.create_json(body) {
        eprintln!("create failed: {e}");
        std::process::exit(1);
    }
}

/// An engine whose usage is shared through Redis at `url`.
#[cfg(feature = "redis")]
fn open_redis(url: &str) -> Engine {
    Engine::builder().redis(url).open().unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(2)
    })
}

#[cfg(not(feature = "redis"))]
fn open_redis(_: &str) -> Engine {
    eprintln!("--redis needs the `redis` feature: cargo run --release --features redis --example loadgen -- --redis URL");
    std::process::exit(2)
}

fn main() {
    let subjects = arg("--subjects", 1_000_000).max(1) as usize;
    let threads = arg("--threads", 2).max(1) as usize;
    let seconds = arg("--seconds", 5).max(1);
    let use_handles = arg("--handles", 0) != 0;
    let lease = Amount::from_units(arg("--lease", 0));

    let keys: Vec<String> = (0..subjects).map(|i| format!("sn-{i:08}")).collect();
    let id_bytes: u64 = keys.iter().map(|k| k.len() as u64).sum();
    let redis_url = std::env::args().skip_while(|a| a != "--redis").nth(1);
    let engine = match &redis_url {
        None => Engine::new(),
        Some(url) => open_redis(url),
    };
    rule(&engine, None, "never", 1_000_000);
    rule(&engine, None, "day", 5);
    for k in keys.iter().step_by(100) {
        rule(&engine, Some(k), "never", 2_000_000);
    }
    let (rss0, _) = memory();
    for k in &keys {
        let _ = engine.try_consume(
            &Subject::device(k),
            BenefitType::ResourcePoint,
            Amount::from_units(1),
            MIDNIGHT - 1,
        );
    }
    let (rss1, _) = memory();
    let counters = engine.counter_count() as u64;
    println!(
        "warmed {subjects} subjects: {counters} counters, {:.1} bytes per counter beyond the id string",
        (rss1.saturating_sub(rss0).saturating_sub(id_bytes)) as f64 / counters as f64
    );

    // Per thread: its share of the subjects, as handles (empty without --handles).
    let mut handles: Vec<Vec<SubjectHandle<&Engine>>> = (0..threads).map(|_| Vec::new()).collect();
    let mut per_handle = 0.0;
    if use_handles {
        let (before, _) = memory();
        for (i, k) in keys.iter().enumerate() {
            let mut h = engine.handle(&Subject::device(k)).with_lease(lease);
            let _ = h.check(MIDNIGHT - 1);
            handles[i % threads].push(h);
        }
        let (after, _) = memory();
        per_handle = after.saturating_sub(before) as f64 / subjects as f64;
        println!("made {subjects} handles: {per_handle:.0} bytes per handle");
    }

    let allowed = AtomicU64::new(0);
    let denied = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let start = Instant::now();
    std::thread::scope(|s| {
        for (t, mut mine) in handles.into_iter().enumerate() {
            let (engine, keys, allowed, denied, stop) = (&engine, &keys, &allowed, &denied, &stop);
            s.spawn(move || {
                let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ (t as u64 + 1);
                let (mut a, mut d) = (0u64, 0u64);
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    for _ in 0..1024 {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let now = MIDNIGHT + (start.elapsed().as_millis() as i64 * 36 / 10);
                        let (pts, one) = (BenefitType::ResourcePoint, Amount::from_units(1));
                        let ok = if mine.is_empty() {
                            let k = &keys[(x % keys.len() as u64) as usize];
                            engine.try_consume(&Subject::device(k), pts, one, now)
                        } else {
                            let n = mine.len() as u64;
                            mine[(x % n) as usize].try_consume(pts, one, now)
                        }
                        .is_allowed();
                        if ok {
                            a += 1
                        } else {
                            d += 1
                        }
                        i += 1;
                    }
                    allowed.fetch_add(a, Ordering::Relaxed);
                    denied.fetch_add(d, Ordering::Relaxed);
                    (a, d) = (0, 0);
                }
                // A gateway gives leases back when its connections close.
                for h in &mut mine {
                    h.release();
                }
                i
            });
        }
        let mut last = 0u64;
        for sec in 1..=seconds {
            std::thread::sleep(Duration::from_secs(1));
            let total = allowed.load(Ordering::Relaxed) + denied.load(Ordering::Relaxed);
            println!(
                "[{sec:>3}s] {:>12} ops/s  allowed {:>12}  denied {:>12}",
                total - last,
                allowed.load(Ordering::Relaxed),
                denied.load(Ordering::Relaxed)
            );
            last = total;
        }
        stop.store(true, Ordering::Relaxed);
    });
    let elapsed = start.elapsed().as_secs_f64();
    let (a, d) = (
        allowed.load(Ordering::Relaxed),
        denied.load(Ordering::Relaxed),
    );
    let (rss, peak) = memory();
    let counters = engine.counter_count() as u64;
    println!("\n| metric | value |\n|---|---|");
    println!("| subjects / threads / seconds | {subjects} / {threads} / {seconds} |");
    println!(
        "| calls | {} |",
        if use_handles && lease.as_micros() != 0 {
            "through leased handles (subjects split between threads)"
        } else if use_handles {
            "through handles (subjects split between threads)"
        } else {
            "by subject (any thread, any subject)"
        }
    );
    println!("| throughput | {:.0} ops/s |", (a + d) as f64 / elapsed);
    println!("| allowed / denied | {a} / {d} |");
    if let Some(stats) = engine.ledger_stats() {
        println!(
            "| ledger commits (Redis round trips) | {} (1 per {:.0} allowed) |",
            stats.commits,
            a as f64 / stats.commits.max(1) as f64
        );
    }
    println!("| tracked counters | {counters} |");
    println!(
        "| memory per counter beyond the id string (after warm-up) | {:.1} bytes |",
        (rss1.saturating_sub(rss0).saturating_sub(id_bytes)) as f64 / counters as f64
    );
    if use_handles {
        println!("| memory per handle | {per_handle:.0} bytes |");
    }
    println!(
        "| resident / peak resident | {:.1} MiB / {:.1} MiB |",
        rss as f64 / 1048576.0,
        peak as f64 / 1048576.0
    );
}
