//! The Redis ledger (feature `redis`) beside the in-memory engine and a
//! naive Redis limiter, in one run, against a throwaway `redis-server` on
//! loopback (started here; `BENEFIT_QUOTA_REDIS_URL` to use another).
//!
//! Workload: the `quota` bench's rules and key sets (every device under an
//! `enterprise_all_devices` cumulative rule and a daily rule; 1 point per
//! call; 1,000 devices visited in a shuffled order), the clock inside one
//! local day, every device warmed (a grant held) before timing.
//!
//! Rows (`fleet_hot`): `memory_try_consume` (no ledger), `redis_try_consume`
//! (one instance on the Redis ledger), `naive_incrby` (the limiter a
//! gateway author writes first: per request one round trip of `INCRBY`
//! on both counters' keys and `EXPIRE` on the daily one, and a second
//! round trip of `DECRBY` to give the debit back when either passed its
//! limit: exact too). Then, outside criterion, Redis round trips per
//! admitted request over 1,000,000 calls. A table follows.
//!
//! Run: `cargo bench --features redis --bench fleet` (about a minute; needs
//! `redis-server` on the PATH).

use std::time::Duration;

use benefit_quota::ledger::RedisLedger;
use benefit_quota::{Decision, Engine, Subject};
use criterion::{Criterion, Throughput};

#[allow(dead_code)]
#[path = "../tests/common/redis.rs"]
mod redis_server;

mod common;
use common::{median_ns, shuffled, CUMULATIVE_LIMIT, DAILY_LIMIT, MIDNIGHT, ONE, PTS};

const DEVICES: usize = 1_000;

#[inline]
fn now_at(i: usize) -> i64 {
    MIDNIGHT + 60 + (i >> 14) as i64
}

fn rules(engine: &Engine) {
    for (id, limit, unit) in [
        ("9001", CUMULATIVE_LIMIT, "never"),
        ("9002", DAILY_LIMIT, "day"),
    ] {
        engine
            .import_json(
                format!(
                    r#"{{"benefit_id":"{id}","entity_type":"enterprise_all_devices","benefit_type":"resource_point","active_mode":"absolute_time","started_at":0,"ended_at":253402300799,"limit":{limit},"trigger_unit":"{unit}"}}"#
                ),
                MIDNIGHT,
            )
            .unwrap();
    }
}

/// The naive limiter: exact, one round trip per request (two when it
/// gives a debit back).
struct Naive {
    con: redis::Connection,
}

impl Naive {
    fn try_consume(&mut self, device: &str, day_start: i64) -> bool {
        let total = format!("naive:t:{device}");
        let day = format!("naive:d:{device}:{day_start}");
        let (t, d): (u64, u64) = redis::pipe()
            .incr(&total, 1_000_000)
            .incr(&day, 1_000_000)
            .expire(&day, 2 * 86_400)
            .ignore()
            .query(&mut self.con)
            .unwrap();
        if t > CUMULATIVE_LIMIT * 1_000_000 || d > DAILY_LIMIT * 1_000_000 {
            let _: () = redis::pipe()
                .decr(&total, 1_000_000)
                .ignore()
                .decr(&day, 1_000_000)
                .ignore()
                .query(&mut self.con)
                .unwrap();
            return false;
        }
        true
    }
}

#[inline(always)]
fn allowed(d: Decision) -> bool {
    std::hint::black_box(&d).is_allowed()
}

fn main() {
    let server = match std::env::var("BENEFIT_QUOTA_REDIS_URL") {
        Ok(url) => (url, None),
        Err(_) => match redis_server::RedisServer::start("bench") {
            Some(s) => (s.url.clone(), Some(s)),
            None => return,
        },
    };
    let url = server.0.clone();
    let keys: Vec<String> = (0..DEVICES).map(|i| format!("sn-{i:08}")).collect();
    let order = shuffled(DEVICES, 0x9E37_79B9_7F4A_7C15);
    let memory = Engine::new();
    rules(&memory);
    let prefix = format!("bench{}", std::process::id());
    let ledger = RedisLedger::new(&url, &prefix, Duration::from_millis(500)).unwrap();
    let durable = Engine::builder().ledger(ledger).open().unwrap();
    rules(&durable);
    for k in &keys {
        assert!(memory
            .try_consume(&Subject::device(k), PTS, ONE, MIDNIGHT + 1)
            .is_allowed());
        assert!(durable
            .try_consume(&Subject::device(k), PTS, ONE, MIDNIGHT + 1)
            .is_allowed());
    }
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut naive = Naive {
        con: client.get_connection().unwrap(),
    };
    let mut c = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    let mut g = c.benchmark_group("fleet_hot");
    g.throughput(Throughput::Elements(1));
    for (label, engine) in [
        ("memory_try_consume", &memory),
        ("redis_try_consume", &durable),
    ] {
        let (mut i, mut j) = (0usize, 0usize);
        g.bench_function(label, |b| {
            b.iter(|| {
                i += 1;
                j = if j + 1 == DEVICES { 0 } else { j + 1 };
                let key = keys[order[j] as usize].as_str();
                allowed(engine.try_consume(&Subject::device(key), PTS, ONE, now_at(i)))
            })
        });
    }
    let mut j = 0usize;
    g.bench_function("naive_incrby", |b| {
        b.iter(|| {
            j = if j + 1 == DEVICES { 0 } else { j + 1 };
            naive.try_consume(&keys[order[j] as usize], MIDNIGHT)
        })
    });
    g.finish();
    c.final_summary();
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let before = durable.ledger_stats().unwrap().commits;
    let mut admitted = 0u64;
    for i in 0..1_000_000 {
        let key = keys[order[i % DEVICES] as usize].as_str();
        admitted += u64::from(
            durable
                .try_consume(&Subject::device(key), PTS, ONE, now_at(i))
                .is_allowed(),
        );
    }
    let trips = durable.ledger_stats().unwrap().commits - before;
    let m = |id: &str| median_ns("fleet_hot", id).unwrap_or(f64::NAN);
    println!();
    println!("| measure | value | target |");
    println!("|---|---|---|");
    println!(
        "| memory / redis `try_consume` (ns/op) | {:.1} / {:.1} = {:.0}% | ≥ 50% |",
        m("memory_try_consume"),
        m("redis_try_consume"),
        100.0 * m("memory_try_consume") / m("redis_try_consume")
    );
    println!(
        "| naive INCRBY limiter / redis `try_consume` (ns/op) | {:.0} / {:.1} = {:.0}x | ≥ 10x |",
        m("naive_incrby"),
        m("redis_try_consume"),
        m("naive_incrby") / m("redis_try_consume")
    );
    println!(
        "| Redis round trips per admitted request, steady state | {trips} / {admitted} = 1/{:.0} | ≤ 1/32 |",
        admitted as f64 / trips.max(1) as f64
    );
    drop(durable);
    drop(server);
}
