//! Concurrency: no over-admission and no lost update, with 2–8 threads on
//! shared subjects, while rules are updated and windows roll over.
//!
//! These tests assert outcomes (counts and sums), never timings.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::Mutex;

use benefit_quota::{Amount, Decision, Engine, Member, Subject};
use common::*;

const THREADS: [usize; 3] = [2, 4, 8];

fn granted(decisions: &[Decision]) -> u64 {
    decisions.iter().filter(|d| d.is_allowed()).count() as u64
}

#[test]
fn one_device_is_granted_exactly_its_limit() {
    for threads in THREADS {
        let e = Engine::new();
        let id = Rule::device("d", 3_000).create(&e);
        let total: u64 = std::thread::scope(|s| {
            let hs: Vec<_> = (0..threads)
                .map(|_| {
                    s.spawn(|| {
                        let d: Vec<Decision> = (0..6_000 / threads)
                            .map(|_| e.try_consume(&Subject::device("d"), PTS, units(1), MIDNIGHT))
                            .collect();
                        granted(&d)
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(total, 3_000, "{threads} threads");
        assert_eq!(used(&e, &Subject::device("d"), &id, MIDNIGHT), units(3_000));
    }
}

#[test]
fn one_enterprise_pool_is_granted_exactly_its_limit() {
    for threads in THREADS {
        let e = Engine::new();
        let id = Rule::new("coze_workspace", Some("w"), 2_000).create(&e);
        let users: Vec<String> = (0..threads).map(|t| format!("u{t}")).collect();
        let total: u64 = std::thread::scope(|s| {
            let hs: Vec<_> = users
                .iter()
                .map(|u| {
                    let e = &e;
                    s.spawn(move || {
                        let m = Subject::member(Member {
                            coze_user_id: Some(u),
                            workspace_id: Some("w"),
                            ..Member::default()
                        });
                        let d: Vec<Decision> = (0..5_000 / threads)
                            .map(|_| e.try_consume(&m, PTS, units(1), MIDNIGHT))
                            .collect();
                        granted(&d)
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(total, 2_000, "{threads} threads");
        let m = Subject::member(Member {
            workspace_id: Some("w"),
            ..Member::default()
        });
        assert_eq!(used(&e, &m, &id, MIDNIGHT), units(2_000));
    }
}

#[test]
fn devices_and_a_shared_pool_together_never_over_admit() {
    for threads in THREADS {
        let e = Engine::new();
        let daily = Rule::all_devices(300).daily().create(&e);
        let pool = Rule::new("coze_organization", Some("o"), 1_000).create(&e);
        let devices: Vec<String> = (0..threads).map(|t| format!("dev{t}")).collect();
        let per_device: Vec<u64> = std::thread::scope(|s| {
            let hs: Vec<_> = devices
                .iter()
                .map(|d| {
                    let e = &e;
                    s.spawn(move || {
                        let subj = Subject::device(d).with_member(Member {
                            organization_id: Some("o"),
                            ..Member::default()
                        });
                        // Odd devices spend through a handle, even ones by subject.
                        let mut h = (d.ends_with(['1', '3', '5', '7'])).then(|| e.handle(&subj));
                        let got: Vec<Decision> = (0..1_200)
                            .map(|_| match h.as_mut() {
                                Some(h) => h.try_consume(PTS, units(1), MIDNIGHT),
                                None => e.try_consume(&subj, PTS, units(1), MIDNIGHT),
                            })
                            .collect();
                        granted(&got)
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let total: u64 = per_device.iter().sum();
        assert!(per_device.iter().all(|g| *g <= 300), "{per_device:?}");
        // Demand (1200 per device) exceeds both limits: the binding one is met exactly.
        assert_eq!(
            total,
            (300 * threads as u64).min(1_000),
            "{threads} threads"
        );
        let o = Subject::member(Member {
            organization_id: Some("o"),
            ..Member::default()
        });
        assert_eq!(used(&e, &o, &pool, MIDNIGHT), units(total));
        for (d, g) in devices.iter().zip(&per_device) {
            assert_eq!(used(&e, &Subject::device(d), &daily, MIDNIGHT), units(*g));
        }
    }
}

#[test]
fn batches_by_subject_from_several_threads_never_over_admit() {
    // Threads send batches over the same devices (several chunks each, so
    // chunks of different threads meet on shards, and a chunk that finds a
    // shard held stops and resolves the rest), with a single rule naming
    // some devices (its pool in another shard) and a shared organization
    // pool on some requests: every counter ends exactly at what it admitted,
    // and no limit is passed.
    for threads in THREADS {
        let e = Engine::new();
        let daily = Rule::all_devices(40).daily().create(&e);
        let single = Rule::device("dev3", 25).create(&e);
        let pool = Rule::new("coze_organization", Some("o"), 500).create(&e);
        let devices: Vec<String> = (0..20).map(|i| format!("dev{i}")).collect();
        let member = Member {
            organization_id: Some("o"),
            ..Member::default()
        };
        let per_thread: Vec<HashMap<String, u64>> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..threads)
                .map(|t| {
                    let (e, devices) = (&e, &devices);
                    s.spawn(move || {
                        let mut got: HashMap<String, u64> = HashMap::new();
                        for round in 0..12 {
                            // 150 requests: three chunks of 64 and a rest.
                            let picks: Vec<(usize, bool)> = (0..150)
                                .map(|i| ((i * 7 + t * 3 + round) % devices.len(), i % 5 == 0))
                                .collect();
                            let reqs: Vec<benefit_quota::Request<'_>> = picks
                                .iter()
                                .map(|&(d, with_pool)| benefit_quota::Request {
                                    subject: if with_pool {
                                        Subject::device(&devices[d]).with_member(member)
                                    } else {
                                        Subject::device(&devices[d])
                                    },
                                    benefit_type: PTS,
                                    amount: units(1),
                                })
                                .collect();
                            let mut out = Vec::new();
                            e.try_consume_many(&reqs, MIDNIGHT, &mut out);
                            assert_eq!(out.len(), reqs.len());
                            for (&(d, with_pool), dec) in picks.iter().zip(&out) {
                                if dec.is_allowed() {
                                    *got.entry(devices[d].clone()).or_default() += 1;
                                    if with_pool {
                                        *got.entry("pool".into()).or_default() += 1;
                                    }
                                }
                            }
                        }
                        got
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let total = |k: &str| {
            per_thread
                .iter()
                .map(|m| m.get(k).copied().unwrap_or(0))
                .sum::<u64>()
        };
        for d in &devices {
            let admitted = total(d);
            let (rule, limit) = if d == "dev3" {
                (&single, 25)
            } else {
                (&daily, 40)
            };
            assert!(
                admitted <= limit,
                "{d}: {admitted} > {limit} ({threads} threads)"
            );
            assert_eq!(
                used(&e, &Subject::device(d), rule, MIDNIGHT),
                units(admitted),
                "{d}"
            );
        }
        let o = Subject::member(member);
        assert!(total("pool") <= 500);
        assert_eq!(used(&e, &o, &pool, MIDNIGHT), units(total("pool")));
        // Demand (150 × 12 per thread over 20 devices) passes every device's
        // limit: each ends exactly at it.
        for d in &devices {
            let limit = if d == "dev3" { 25 } else { 40 };
            assert_eq!(total(d), limit, "{d} ({threads} threads)");
        }
    }
}

#[test]
fn record_under_contention_loses_nothing() {
    for threads in THREADS {
        let e = Engine::new();
        let dev = Rule::device("d", 10).create(&e);
        let pool = Rule::new("coze_user_id", Some("u"), 10).create(&e);
        let subj = Subject::device("d").with_member(Member {
            coze_user_id: Some("u"),
            ..Member::default()
        });
        let sums: Vec<u64> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..threads)
                .map(|t| {
                    let e = &e;
                    s.spawn(move || {
                        let mut sum = 0u64;
                        for i in 0..3_000u64 {
                            let micros = (i * 7_919 + t as u64 * 104_729) % 1_000_003;
                            let _ = e.record(&subj, PTS, Amount::from_micros(micros), MIDNIGHT);
                            sum += micros;
                        }
                        sum
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let total = Amount::from_micros(sums.iter().sum());
        for id in [&dev, &pool] {
            let report = e
                .usage(&subj, MIDNIGHT)
                .into_iter()
                .find(|u| u.benefit_id.as_str() == id.as_str())
                .unwrap();
            assert_eq!(
                (report.used, report.lifetime),
                (total, total),
                "{threads} threads, rule {id}"
            );
        }
    }
}

/// Counts an updater's writes, so consumers can wait for them; `usize::MAX`
/// once the updater failed.
struct Writes(AtomicUsize);

impl Writes {
    /// Waits until more than `seen` writes are done; panics if the updater
    /// failed, or after a minute with none (instead of spinning for good).
    fn after(&self, seen: usize) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let n = self.0.load(Ordering::Acquire);
            assert_ne!(n, usize::MAX, "the updater failed");
            if n > seen {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no write after {seen} in a minute"
            );
            std::thread::yield_now();
        }
    }

    /// Runs `half` twice: after the first write, and again after another
    /// write, so writes provably land while the consumer runs (on 2 cores the
    /// updater may otherwise not be scheduled before consumers finish).
    fn in_two_halves(&self, mut half: impl FnMut()) {
        self.after(0);
        let start = self.0.load(Ordering::Acquire);
        half();
        self.after(start);
        half();
    }
}

/// Applies `bodies` to rule `id` in turn, on a thread of its own, for as long
/// as `consumers` runs; returns what it returns and how many writes landed.
fn racing_updates<R>(
    e: &Engine,
    id: &str,
    bodies: &[&str],
    consumers: impl FnOnce(&Writes) -> R,
) -> (R, usize) {
    let stop = AtomicBool::new(false);
    let writes = Writes(AtomicUsize::new(0));
    std::thread::scope(|s| {
        let updater = s.spawn(|| {
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                if let Err(err) = e.apply_update_json(id, bodies[n % bodies.len()], MIDNIGHT) {
                    // Consumers waiting for a write fail instead of waiting.
                    writes.0.store(usize::MAX, Ordering::Release);
                    panic!("update {n} failed: {err:?}");
                }
                n += 1;
                writes.0.store(n, Ordering::Release);
                std::thread::yield_now();
            }
            n
        });
        let result = {
            let _stop = SetOnDrop(&stop);
            consumers(&writes)
        };
        (result, updater.join().unwrap())
    })
}

#[test]
fn updates_racing_with_consumers_lose_nothing_and_respect_the_highest_limit() {
    for threads in THREADS {
        let e = Engine::new();
        let id = Rule::device("d", 1_000).create(&e);
        let bodies = [
            r#"{"limit":400}"#,
            r#"{"status":"frozen"}"#,
            r#"{"limit":1500,"status":"valid"}"#,
            r#"{"ended_at":253402300000}"#,
            r#"{"limit":"700","ended_at":253402300799}"#,
        ];
        let (total, written) = racing_updates(&e, &id, &bodies, |writes| {
            std::thread::scope(|s| {
                let hs: Vec<_> = (0..threads)
                    .map(|_| {
                        s.spawn(|| {
                            let mut d: Vec<Decision> = Vec::new();
                            writes.in_two_halves(|| {
                                d.extend((0..2_000 / threads).map(|_| {
                                    e.try_consume(&Subject::device("d"), PTS, units(1), MIDNIGHT)
                                }))
                            });
                            granted(&d)
                        })
                    })
                    .collect();
                hs.into_iter().map(|h| h.join().unwrap()).sum::<u64>()
            })
        });
        assert!(written > 0);
        let used_now = used(&e, &Subject::device("d"), &id, MIDNIGHT);
        assert_eq!(
            used_now,
            units(total),
            "granted and counted differ ({threads} threads)"
        );
        assert!(
            total <= 1_500,
            "{total} granted, above every limit ever set"
        );
    }
}

/// A configuration write is seen whole or not at all (RELIABILITY §6): an
/// updater alternates a rule between 10 a day and 20 an hour, in one write
/// each, while readers ask by subject (`usage`, `check`) and through an
/// exact handle; every answer pairs the limit with its own period, never
/// one write's limit with the other's window.
#[test]
fn a_concurrent_reader_sees_an_update_whole_or_not_at_all() {
    for threads in THREADS {
        let e = Engine::new();
        let id = Rule::device("d", 10).daily().create(&e);
        let bodies = [
            r#"{"limit":20,"trigger_unit":"hour"}"#,
            r#"{"limit":10,"trigger_unit":"day"}"#,
        ];
        let whole = |limit: u64, resets_at: Option<i64>| match limit {
            10 => resets_at == Some(MIDNIGHT + 86_400),
            20 => resets_at == Some(MIDNIGHT + 3_600),
            _ => false,
        };
        let (reads, written) = racing_updates(&e, &id, &bodies, |writes| {
            std::thread::scope(|s| {
                let hs: Vec<_> = (0..threads)
                    .map(|_| {
                        s.spawn(|| {
                            let subj = Subject::device("d");
                            let mut h = e.handle(&subj);
                            let mut reads = 0u64;
                            writes.in_two_halves(|| {
                                for _ in 0..600 / threads {
                                    let u = &e.usage(&subj, MIDNIGHT)[0];
                                    let end = u.window.map(|w| w.end);
                                    assert!(whole(u.limit as u64, end), "usage {u:?}");
                                    for d in [e.check(&subj, MIDNIGHT), h.check(MIDNIGHT)] {
                                        let room = d.headroom().expect("allowed, limited");
                                        let limit = room.remaining.as_micros() / 1_000_000;
                                        assert!(whole(limit, room.resets_at), "{d:?}");
                                    }
                                    reads += 3;
                                }
                            });
                            reads
                        })
                    })
                    .collect();
                hs.into_iter().map(|h| h.join().unwrap()).sum::<u64>()
            })
        });
        assert!(written > 0 && reads > 0, "{written} writes, {reads} reads");
    }
}

/// Handles (single calls and batches) and calls by subject on one device,
/// while an updater keeps rewriting the rule (same limit, so every write only
/// bumps the engine's version and forces handles to resolve again): every
/// grant must see a distinct usage, i.e. the remaining amounts reported by
/// the grants are exactly `limit − 1, …, 0`, each once. A stale handle
/// deciding on its own would repeat or skip one.
#[test]
fn handles_and_calls_by_subject_are_linearizable_under_updates() {
    for threads in THREADS {
        let e = Engine::new();
        let id = Rule::device("d", 1_000).create(&e);
        let bodies = [r#"{"limit":1000}"#, r#"{"ended_at":253402300799}"#];
        let (mut remaining, _) = racing_updates(&e, &id, &bodies, |writes| {
            std::thread::scope(|s| {
                let hs: Vec<_> = (0..threads)
                    .map(|t| {
                        let e = &e;
                        s.spawn(move || {
                            let subj = Subject::device("d");
                            let mut mine: Vec<Amount> = Vec::new();
                            let mut h = e.handle(&subj);
                            let mut batch: Vec<_> = (0..4).map(|_| e.handle(&subj)).collect();
                            let mut out = Vec::new();
                            writes.in_two_halves(|| {
                                for _ in 0..1_000 / threads {
                                    out.clear();
                                    match t % 3 {
                                        0 => {
                                            out.push(e.try_consume(&subj, PTS, units(1), MIDNIGHT))
                                        }
                                        1 => out.push(h.try_consume(PTS, units(1), MIDNIGHT)),
                                        // a batch of four handles on the same device
                                        _ => {
                                            let mut reqs = point_requests(
                                                &mut batch[..],
                                                std::iter::repeat(1),
                                            );
                                            e.try_consume_many_handles(
                                                &mut reqs, MIDNIGHT, &mut out,
                                            );
                                        }
                                    }
                                    mine.extend(
                                        out.iter()
                                            .filter_map(|d| d.headroom())
                                            .map(|h| h.remaining),
                                    );
                                }
                            });
                            mine
                        })
                    })
                    .collect();
                hs.into_iter()
                    .flat_map(|h| h.join().unwrap())
                    .collect::<Vec<Amount>>()
            })
        });
        remaining.sort();
        let expected: Vec<Amount> = (0..1_000).map(units).collect();
        assert_eq!(remaining, expected, "{threads} threads");
    }
}

#[test]
fn windows_rolling_over_under_load_never_over_admit() {
    for threads in THREADS {
        let e = Engine::new();
        let daily = Rule::all_devices(50).daily().create(&e);
        let clock = AtomicI64::new(MIDNIGHT - 5);
        let done = AtomicBool::new(false);
        let calls = AtomicUsize::new(0);
        let per_window: Mutex<HashMap<Option<i64>, u64>> = Mutex::new(HashMap::new());
        std::thread::scope(|s| {
            s.spawn(|| {
                // Crosses three local midnights, a few seconds at a time; each
                // second only once the callers made 20 calls in it, so every
                // window is spent in whatever the scheduler does (a clock
                // left unscheduled, or run to its end before the callers
                // start, would test one window).
                let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
                while clock.load(Ordering::Relaxed) < MIDNIGHT + 2 * DAY + 5 {
                    let from = calls.load(Ordering::SeqCst);
                    while calls.load(Ordering::SeqCst) < from + 20
                        && std::time::Instant::now() < until
                    {
                        std::thread::yield_now();
                    }
                    let now = clock.load(Ordering::Relaxed);
                    let next = if (now - MIDNIGHT).rem_euclid(DAY) == 5 {
                        now + DAY - 10
                    } else {
                        now + 1
                    };
                    clock.store(next, Ordering::SeqCst);
                }
                done.store(true, Ordering::SeqCst);
            });
            let hs: Vec<_> = (0..threads)
                .map(|_| {
                    s.spawn(|| {
                        let mut mine: HashMap<Option<i64>, u64> = HashMap::new();
                        while !done.load(Ordering::SeqCst) {
                            let now = clock.load(Ordering::SeqCst);
                            if let Decision::Allowed(Some(h)) =
                                e.try_consume(&Subject::device("d"), PTS, units(1), now)
                            {
                                *mine.entry(h.resets_at).or_default() += 1;
                            }
                            calls.fetch_add(1, Ordering::SeqCst);
                        }
                        let mut all = per_window.lock().unwrap();
                        for (k, v) in mine {
                            *all.entry(k).or_default() += v;
                        }
                    })
                })
                .collect();
            for h in hs {
                h.join().unwrap();
            }
        });
        let per_window = per_window.into_inner().unwrap();
        assert!(per_window.values().all(|g| *g <= 50), "{per_window:?}");
        // the day before the first midnight and the three after it, each
        // asked for at least 100 points while it was the clock's day
        assert_eq!(per_window.len(), 4, "{per_window:?}");
        assert!(per_window.values().all(|g| *g == 50), "{per_window:?}");
        let total: u64 = per_window.values().sum();
        let lifetime = e
            .usage(&Subject::device("d"), clock.load(Ordering::Relaxed))
            .into_iter()
            .find(|u| u.benefit_id.as_str() == daily)
            .unwrap()
            .lifetime;
        assert_eq!(lifetime, units(total), "{threads} threads");
    }
}

#[test]
fn an_eviction_racing_with_calls_keeps_every_counter_that_matters() {
    // Each round races differently (a round is ~20 ms).
    for _ in 0..10 {
        eviction_racing_with_calls();
    }
}

/// Few shards, so an eviction's sweep lets calls in between its steps on
/// tables that grow (new devices) and change (spends) meanwhile.
fn eviction_racing_with_calls() {
    const OLD: usize = 6_000;
    const NEW: usize = 6_000;
    let e = Engine::builder().shards(2).build();
    let cum = Rule::all_devices(1_000_000).create(&e);
    let daily = Rule::all_devices(1_000).daily().create(&e);
    let old = |i: usize| format!("old-{i}");
    let new = |i: usize| format!("new-{i}");
    let yesterday = MIDNIGHT - 10;
    for i in 0..OLD {
        let d = e.try_consume(&Subject::device(&old(i)), PTS, units(2), yesterday);
        assert!(d.is_allowed());
    }
    let today = MIDNIGHT + 10;
    // Every third old device spends today too (its daily counter moves to
    // today's window, and is kept); the others' daily counters are
    // yesterday's, present throughout the sweep: it must remove them.
    let spends_today = |i: usize| i.is_multiple_of(3);
    let evicted = std::thread::scope(|s| {
        let sweep = s.spawn(|| e.evict(today));
        s.spawn(|| {
            for i in 0..NEW {
                let d = e.try_consume(&Subject::device(&new(i)), PTS, units(1), today);
                assert!(d.is_allowed());
            }
        });
        for i in (0..OLD).filter(|&i| spends_today(i)) {
            let d = e.try_consume(&Subject::device(&old(i)), PTS, units(1), today);
            assert!(d.is_allowed());
        }
        sweep.join().unwrap()
    });
    // A counter the sweep removed was yesterday's (a spend that rolled it
    // to today first kept it).
    let stale = (0..OLD).filter(|&i| !spends_today(i)).count();
    assert!(evicted >= stale && evicted <= OLD, "{evicted}");
    assert_eq!(e.counter_count(), 2 * NEW + 2 * OLD - stale);
    for i in 0..OLD {
        let id = old(i);
        let s = Subject::device(&id);
        let t = u64::from(spends_today(i));
        assert_eq!(used(&e, &s, &cum, today), units(2 + t), "{id}");
        assert_eq!(used(&e, &s, &daily, today), units(t), "{id}");
    }
    for i in 0..NEW {
        let id = new(i);
        let s = Subject::device(&id);
        assert_eq!(used(&e, &s, &cum, today), units(1), "{id}");
        assert_eq!(used(&e, &s, &daily, today), units(1), "{id}");
    }
}
