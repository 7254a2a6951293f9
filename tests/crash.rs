//! kill -9 never causes over-admission: a child process (the `crash_child`
//! example) spends on a durable engine and is killed with SIGKILL at random
//! moments, 20 times, restarted on the same file each time; then it runs
//! once more and exits cleanly.
//!
//! Across all lives, every counter admitted at most its limit; after the
//! last, the file's usage covers every admission the child reported and
//! exceeds it (beyond reported records) by at most what the crashes can
//! strand: per counter and crash, one and a half grants (`max_grant`, 8
//! units: the rest of one and the next, taken ahead) plus the requests in
//! flight.
#![cfg(all(feature = "durable", unix))]

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use benefit_quota::{Amount, Engine, Member, Subject};

const DAY_LIMIT: u64 = 40;
const LIFE_LIMIT: u64 = 60;
const POOL_LIMIT: u64 = 20_000;
/// Per counter and crash: 1.5 grants (12) + the largest request (3), plus
/// what two threads may have admitted or recorded and not yet printed (2 × 3).
const STRANDED_PER_CRASH: u64 = 12 + 3 + 6;
const CRASHES: u64 = 20;
/// Whether both of a child's threads spend from `device` (`d20`..`d23`;
/// each thread's own are `g<n>d<m>`, named after the life): then a call
/// whose clock was read before a midnight may be counted in the next day
/// (D16), and the day it printed says nothing about the window.
fn shared(device: &str) -> bool {
    device[1..].parse::<usize>().is_ok_and(|i| i >= 20)
}

fn day(now: i64) -> i64 {
    (now + 8 * 3600).div_euclid(86_400)
}

#[derive(Default)]
struct Tally {
    /// (device, day) → admitted units
    device_day: HashMap<(String, i64), u64>,
    device: HashMap<String, u64>,
    pool: u64,
    /// device → recorded units; (device, day) → recorded
    recorded: HashMap<String, u64>,
    recorded_day: HashMap<(String, i64), u64>,
    last_now: i64,
    lines: u64,
}

impl Tally {
    /// Every device a life admitted or recorded for.
    fn devices(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .device
            .keys()
            .chain(self.recorded.keys())
            .cloned()
            .collect();
        v.sort();
        v.dedup();
        v
    }

    fn line(&mut self, l: &str) {
        let f: Vec<&str> = l.split(' ').collect();
        let [kind, who, now, units] = f[..] else {
            return;
        };
        let (now, units): (i64, u64) = (now.parse().unwrap(), units.parse().unwrap());
        self.last_now = self.last_now.max(now);
        self.lines += 1;
        match (kind, who) {
            ("A", "org") => self.pool += units,
            ("A", d) => {
                if !shared(d) {
                    *self.device_day.entry((d.into(), day(now))).or_default() += units;
                }
                *self.device.entry(d.into()).or_default() += units;
            }
            ("R", d) => {
                *self.recorded.entry(d.into()).or_default() += units;
                if !shared(d) {
                    *self.recorded_day.entry((d.into(), day(now))).or_default() += units;
                }
            }
            _ => panic!("unexpected line {l:?}"),
        }
    }
}

/// Runs the child; reads its output on another thread (so a full pipe never
/// blocks it) until it ends.
/// A child's output so far: its lines, once it has ended, and how many
/// `A`/`R` lines it printed until now.
type Output = (std::thread::JoinHandle<Vec<String>>, Arc<AtomicU64>);

fn spawn(
    bin: &Path,
    path: &Path,
    zero: i64,
    seed: u64,
    ops: Option<u64>,
) -> (common::KillOnDrop, Output) {
    let mut cmd = Command::new(bin);
    cmd.args([
        "--path",
        path.to_str().unwrap(),
        "--clock-zero",
        &zero.to_string(),
        "--seed",
        &seed.to_string(),
    ]);
    if let Some(n) = ops {
        cmd.args(["--ops", &n.to_string()]);
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let seen = Arc::new(AtomicU64::new(0));
    let counted = Arc::clone(&seen);
    let reader = std::thread::spawn(move || {
        BufReader::new(out)
            .lines()
            .map_while(Result::ok)
            .inspect(|l| {
                if l.starts_with("A ") || l.starts_with("R ") {
                    counted.fetch_add(1, Ordering::Relaxed);
                }
            })
            .collect()
    });
    (common::KillOnDrop(child), (reader, seen))
}

fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn temp_file(name: &str) -> (PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("bq-crash-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    (dir.join("quota.db"), dir)
}

#[test]
fn sigkill_at_random_moments_never_over_admits() {
    let bin = common::example_binary("crash_child", "durable");
    let (path, dir) = temp_file("kill");
    let zero = wall_ms();
    let mut tally = Tally::default();
    let mut seed = 0x5EED_u64;
    let mut ready_lives = 0;
    for life in 0..CRASHES {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let (mut child, (reader, seen)) = spawn(&bin, &path, zero, life, None);
        // A life ends at a random moment, once it has also done some work:
        // a quarter of the lives are killed on the timer alone (some while
        // still opening the file), the others only after 400-1,000 lines
        // as well, so that a slow machine loads the ledger as much as a
        // fast one (a minute at most, in case a child stops printing).
        let timer = Duration::from_millis(100 + (seed >> 33) % 600);
        let lines = if (seed >> 20).is_multiple_of(4) {
            0
        } else {
            400 + (seed >> 40) % 600
        };
        let (start, cap) = (Instant::now(), Duration::from_secs(60));
        while start.elapsed() < timer || seen.load(Ordering::Relaxed) < lines {
            assert!(
                child.try_wait().unwrap().is_none(),
                "life {life} ended on its own"
            );
            assert!(
                start.elapsed() < cap,
                "life {life} stalled at {} lines",
                seen.load(Ordering::Relaxed)
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        child.kill().unwrap(); // SIGKILL
        let status = common::wait_within(&mut child);
        assert_eq!(status.signal(), Some(9), "life {life} was not killed");
        let lines = reader.join().unwrap();
        ready_lives += u64::from(lines.first().is_some_and(|l| l == "READY"));
        for l in lines
            .iter()
            .filter(|l| l.starts_with("A ") || l.starts_with("R "))
        {
            tally.line(l);
        }
    }
    // A last life that ends cleanly.
    let (mut child, (reader, _)) = spawn(&bin, &path, zero, 99, Some(300));
    assert!(common::wait_within(&mut child).success());
    let lines = reader.join().unwrap();
    assert_eq!(lines.last().map(String::as_str), Some("DONE"));
    for l in lines
        .iter()
        .filter(|l| l.starts_with("A ") || l.starts_with("R "))
    {
        tally.line(l);
    }
    assert!(
        ready_lives >= CRASHES / 2,
        "only {ready_lives} lives got past the open"
    );
    assert!(
        tally.lines > 1_000,
        "too little load: {} lines",
        tally.lines
    );
    assert!(
        day(tally.last_now) > day(super_base()),
        "the clock never crossed a midnight"
    );

    // Across all lives: never more than a limit.
    for ((d, dy), n) in &tally.device_day {
        assert!(*n <= DAY_LIMIT, "{d} admitted {n} on day {dy}");
    }
    for (d, n) in &tally.device {
        assert!(*n <= LIFE_LIMIT, "{d} admitted {n} in all");
    }
    assert!(tally.pool <= POOL_LIMIT, "the pool admitted {}", tally.pool);
    // The load reached the limits (the test would prove little otherwise).
    assert!(tally.pool >= POOL_LIMIT / 2, "pool only {}", tally.pool);
    assert!(
        tally.device.values().any(|n| *n >= LIFE_LIMIT - 20),
        "no device neared its cumulative limit"
    );
    // Later lives spent from devices of their own too, not only from the
    // pool and from devices the earlier crashes had used up.
    let families: std::collections::HashSet<&str> = tally
        .device
        .keys()
        .filter_map(|d| d.strip_prefix('g')?.split_once('d').map(|(f, _)| f))
        .collect();
    assert!(
        families.len() >= 5,
        "devices of only {} lives' pairs admitted",
        families.len()
    );

    // After the last life: usage covers every admission, and passes
    // admissions + records by at most the bound.
    let engine = Engine::builder().durable(&path).open().unwrap();
    let now = tally.last_now;
    let slack = Amount::from_units(CRASHES * STRANDED_PER_CRASH);
    for d in tally.devices() {
        let usage = engine.usage(&Subject::device(&d), now);
        let (daily, life) = (&usage[0], &usage[1]);
        let admitted_day = tally
            .device_day
            .get(&(d.clone(), day(now)))
            .copied()
            .unwrap_or(0);
        let recorded_day = tally
            .recorded_day
            .get(&(d.clone(), day(now)))
            .copied()
            .unwrap_or(0);
        if !shared(&d) {
            let what = format!("{d} today");
            covers(&what, daily.used, admitted_day, recorded_day, slack);
        }
        let admitted = tally.device.get(&d).copied().unwrap_or(0);
        let recorded = tally.recorded.get(&d).copied().unwrap_or(0);
        covers(&d, life.used, admitted, recorded, slack);
    }
    let pool = &engine.usage(
        &Subject::member(Member::user("u0").in_organization("org")),
        now,
    )[0];
    eprintln!("pool: admitted {} units, usage {:?}", tally.pool, pool.used);
    covers("the pool", pool.used, tally.pool, 0, slack);
    drop(engine);
    let _ = std::fs::remove_dir_all(dir);
}

/// A counter's usage after crashes: every admission the child reported is
/// counted, and at most `slack` beyond admissions and records.
fn covers(what: &str, used: Amount, admitted: u64, recorded: u64, slack: Amount) {
    assert!(
        used >= Amount::from_units(admitted),
        "{what}: {used:?} < {admitted}"
    );
    assert!(
        used.as_micros() <= Amount::from_units(admitted + recorded).as_micros() + slack.as_micros(),
        "{what}: {used:?} > {admitted} + {recorded} + bound"
    );
}

fn super_base() -> i64 {
    1_741_708_800 - 30
}

#[test]
fn a_clean_shutdown_loses_nothing() {
    let bin = common::example_binary("crash_child", "durable");
    let (path, dir) = temp_file("clean");
    let zero = wall_ms();
    let mut tally = Tally::default();
    for life in 0..3 {
        let (mut child, (reader, _)) = spawn(&bin, &path, zero, 7 + life, Some(200));
        assert!(common::wait_within(&mut child).success());
        for l in reader
            .join()
            .unwrap()
            .iter()
            .filter(|l| l.starts_with("A ") || l.starts_with("R "))
        {
            tally.line(l);
        }
    }
    let engine = Engine::builder().durable(&path).open().unwrap();
    for d in tally.devices() {
        let life = &engine.usage(&Subject::device(&d), tally.last_now)[1];
        let admitted = tally.device.get(&d).copied().unwrap_or(0);
        let recorded = tally.recorded.get(&d).copied().unwrap_or(0);
        assert_eq!(life.used, Amount::from_units(admitted + recorded), "{d}");
    }
    let pool = &engine.usage(
        &Subject::member(Member::user("u0").in_organization("org")),
        tally.last_now,
    )[0];
    assert_eq!(pool.used, Amount::from_units(tally.pool));
    drop(engine);
    let _ = std::fs::remove_dir_all(dir);
}
