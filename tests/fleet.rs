//! A fleet (and, below, the same fleet with one instance killed): four
//! gateway processes (the `fleet_child` example), two threads each, share
//! one Redis: 1,000 devices under a daily limit of 20 and an
//! organization pool of 2,000; each thread's clock crosses a local
//! midnight after a fixed number of calls; demand is several times the
//! supply. For every counter window, what the fleet admitted is at most
//! the limit, and once demand passed three times the supply, at least the
//! limit less one largest request (3 points) per instance. The load is
//! sized in calls, not in seconds, so a slow machine runs the same test
//! more slowly, and a fast one no less.
#![cfg(all(feature = "redis", unix))]

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::redis::RedisServer;

const INSTANCES: u64 = 4;

/// The tests of this file run one at a time: each loads the machine's
/// cores with four processes and a server.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
const LARGEST_REQUEST: u64 = 3;

/// Calls per thread of a `fleet_child` that runs to its end: its clock
/// crosses midnight after 5,000 of them (10 simulated seconds at 500 calls
/// a second), so the first day asks each device for about 64 points
/// across the fleet and the second for about 190 (a fifth of the calls go
/// to the pool, 2 points a call on average).
const CALLS: &str = "20000";

/// Starts the fleet: `INSTANCES` `fleet_child` processes on `server`'s
/// Redis under `prefix`, seeded from `seed` on, instance `i` making
/// `calls(i)` calls per thread (`"0"`: until killed) with `extra`
/// arguments, output piped.
fn start_fleet(
    server: &RedisServer,
    prefix: &str,
    seed: u64,
    calls: impl Fn(u64) -> &'static str,
    extra: &[&str],
) -> Vec<common::KillOnDrop> {
    let bin = common::example_binary("fleet_child", "redis");
    (0..INSTANCES)
        .map(|i| {
            Command::new(&bin)
                .args(["--url", &server.url, "--prefix", prefix])
                .args(["--seed", &(seed + i).to_string(), "--calls", calls(i)])
                .args(extra)
                .stdout(Stdio::piped())
                .spawn()
                .map(common::KillOnDrop)
                .unwrap()
        })
        .collect()
}

#[test]
fn four_instances_never_pass_a_limit_and_leave_little_unused() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some(server) = RedisServer::start("fleet") else {
        return;
    };
    let children = start_fleet(&server, "fleet", 1, |_| CALLS, &[]);
    // (counter, day) → (asked, admitted), summed over the fleet
    let mut fleet: HashMap<(String, i64), (u64, u64)> = HashMap::new();
    for mut child in children {
        let out = child.stdout.take().unwrap();
        let lines: Vec<String> = BufReader::new(out).lines().map_while(Result::ok).collect();
        assert!(common::wait_within(&mut child).success());
        assert_eq!(lines.last().map(String::as_str), Some("DONE"));
        for l in lines.iter().filter(|l| l.starts_with("T ")) {
            let f: Vec<&str> = l.split(' ').collect();
            let e = fleet
                .entry((f[1].to_owned(), f[2].parse().unwrap()))
                .or_default();
            e.0 += f[3].parse::<u64>().unwrap();
            e.1 += f[4].parse::<u64>().unwrap();
        }
    }
    let days: std::collections::BTreeSet<i64> = fleet
        .keys()
        .filter(|(c, _)| c != "org")
        .map(|(_, d)| *d)
        .collect();
    assert!(
        days.len() >= 2,
        "the clock never crossed a midnight: {days:?}"
    );
    let mut saturated = 0;
    for ((counter, day), (asked, admitted)) in &fleet {
        let limit = if counter == "org" { 2_000 } else { 20 };
        assert!(
            *admitted <= limit,
            "{counter} day {day}: {admitted} admitted, limit {limit}"
        );
        if *asked >= 3 * limit {
            saturated += 1;
            assert!(
                *admitted >= limit - INSTANCES * LARGEST_REQUEST,
                "{counter} day {day}: only {admitted} of {limit} admitted for {asked} asked"
            );
        }
    }
    let asked: u64 = fleet.values().map(|v| v.0).sum();
    let admitted: u64 = fleet.values().map(|v| v.1).sum();
    eprintln!("fleet: {asked} units asked, {admitted} admitted, {saturated} windows saturated");
    // the load must reach the limits for the test to prove anything
    assert!(
        saturated > 1_000,
        "only {saturated} counter windows saturated"
    );
    let org = fleet[&("org".to_owned(), 0)];
    assert!(
        org.0 >= 3 * 2_000,
        "the pool saw too little demand: {org:?}"
    );
}

#[test]
fn an_instance_killed_while_holding_grants_leaves_the_others_going() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some(server) = RedisServer::start("fleet-kill") else {
        return;
    };
    // Instance 0 runs until killed; the others run to their end.
    let calls = |i: u64| if i == 0 { "0" } else { CALLS };
    let children = start_fleet(&server, "kill", 11, calls, &["--print-admissions"]);
    let (tx, rx) = std::sync::mpsc::channel();
    let mut children: Vec<_> = children
        .into_iter()
        .enumerate()
        .map(|(i, mut c)| {
            let out = c.stdout.take().unwrap();
            let tx = tx.clone();
            let reader = std::thread::spawn(move || {
                let mut lines = Vec::new();
                for l in BufReader::new(out).lines().map_while(Result::ok) {
                    if i == 0 && l.starts_with("A ") {
                        let _ = tx.send(());
                    }
                    lines.push(l);
                }
                lines
            });
            (c, reader)
        })
        .collect();
    drop(tx);
    // Killed once it has admitted 300 requests, so it holds grants (it
    // takes them 10 points at a time) for counters the others go on
    // spending; a minute without an admission fails the test.
    for n in 0..300 {
        if rx.recv_timeout(std::time::Duration::from_secs(60)).is_err() {
            let _ = children[0].0.kill(); // it would run until killed
            panic!("instance 0 admitted only {n} requests");
        }
    }
    // SIGKILL, grants held.
    children[0].0.kill().unwrap();

    // (counter, day) → admitted, from every admission printed
    let mut admitted: HashMap<(String, i64), u64> = HashMap::new();
    for (i, (mut child, reader)) in children.drain(..).enumerate() {
        let ok = common::wait_within(&mut child).success();
        let lines = reader.join().unwrap();
        if i == 0 {
            assert!(!ok, "the killed instance exited cleanly");
        } else {
            assert!(
                ok && lines.last().map(String::as_str) == Some("DONE"),
                "instance {i} did not finish"
            );
        }
        for l in lines.iter().filter(|l| l.starts_with("A ")) {
            let f: Vec<&str> = l.split(' ').collect();
            *admitted
                .entry((f[1].to_owned(), f[2].parse().unwrap()))
                .or_default() += f[3].parse::<u64>().unwrap();
        }
    }
    for ((counter, day), n) in &admitted {
        let limit = if counter == "org" { 2_000 } else { 20 };
        assert!(
            *n <= limit,
            "{counter} day {day}: {n} admitted, limit {limit}"
        );
    }
    // The others went on past the kill: the pool (demand far past supply)
    // ends near its limit, short by at most a request per surviving
    // instance, what the killed one holds (1.5 grants of 10 + a request,
    // not reclaimed) and what it admitted without printing (2 threads × 3).
    let pool = admitted.get(&("org".to_owned(), 0)).copied().unwrap_or(0);
    let short = (INSTANCES - 1) * LARGEST_REQUEST + 15 + LARGEST_REQUEST + 2 * LARGEST_REQUEST;
    assert!(pool >= 2_000 - short, "the pool reached only {pool}");
    let last_day = admitted
        .keys()
        .filter(|(c, _)| c != "org")
        .map(|(_, d)| *d)
        .max()
        .unwrap();
    let after: u64 = admitted
        .iter()
        .filter(|((c, d), _)| c != "org" && *d == last_day)
        .map(|(_, n)| n)
        .sum();
    assert!(after > 1_000, "only {after} admitted on the last day");
}
