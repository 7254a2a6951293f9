//! A fleet: four gateway processes (the `fleet_child` example), two threads
//! each, share one Redis: 1,000 devices under a daily limit of 20 and an
//! organization pool of 2,000; the clock crosses a local midnight; demand is
//! several times the supply. For every counter window, what the fleet
//! admitted is at most the limit, and once demand passed three times the
//! supply, at least the limit less one largest request (3 points) per
//! instance.
#![cfg(all(feature = "redis", unix))]

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::redis::RedisServer;

const INSTANCES: u64 = 4;
const LARGEST_REQUEST: u64 = 3;

fn child_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let bin = dir.join("examples").join("fleet_child");
    assert!(
        bin.exists(),
        "{} is missing: run the tests with --features redis (cargo builds examples for `cargo test`)",
        bin.display()
    );
    bin
}

#[test]
fn four_instances_never_pass_a_limit_and_leave_little_unused() {
    let Some(server) = RedisServer::start("fleet") else {
        return;
    };
    let bin = child_binary();
    let zero = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        .to_string();
    let children: Vec<_> = (0..INSTANCES)
        .map(|i| {
            Command::new(&bin)
                .args([
                    "--url",
                    &server.url,
                    "--prefix",
                    "fleet",
                    "--clock-zero",
                    &zero,
                ])
                .args(["--seed", &(i + 1).to_string(), "--seconds", "3"])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    // (counter, day) → (asked, admitted), summed over the fleet
    let mut fleet: HashMap<(String, i64), (u64, u64)> = HashMap::new();
    for mut child in children {
        let out = child.stdout.take().unwrap();
        let lines: Vec<String> = BufReader::new(out).lines().map_while(Result::ok).collect();
        assert!(child.wait().unwrap().success());
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
