//! Helpers shared by the benches (each bench is its own crate and takes
//! this file in with `mod common;`).
#![allow(dead_code)]

use std::path::PathBuf;

use benefit_quota::{Amount, BenefitType};

/// The workload every bench shares (see BENCHMARKS.md): a local midnight
/// (2025-03-12 00:00:00 +08:00) the clocks run around, one point of
/// `resource_point` per call, and the limits of the three rules.
pub const MIDNIGHT: i64 = 1_741_708_800;
pub const PTS: BenefitType = BenefitType::ResourcePoint;
pub const ONE: Amount = Amount::from_units(1);
/// The all-devices cumulative rule's limit.
pub const CUMULATIVE_LIMIT: u64 = 1_000_000_000;
/// The all-devices daily rule's limit.
pub const DAILY_LIMIT: u64 = 100_000_000;
/// The limit of a device's own (`single_device`) cumulative rule.
pub const SINGLE_LIMIT: u64 = 2_000_000_000;

/// A create body: an `enterprise_all_devices` rule (`entity` empty) or a
/// `single_device` rule for device `entity`, of `limit` points per `unit`.
pub fn rule_body(entity: &str, unit: &str, limit: u64) -> String {
    let (t, id) = match entity {
        "" => ("enterprise_all_devices", String::new()),
        d => ("single_device", format!(r#""entity_id":"{d}","#)),
    };
    format!(
        r#"{{"entity_type":"{t}",{id}"benefit_info":{{"benefit_type":"resource_point","active_mode":"absolute_time","started_at":0,"ended_at":253402300799,"limit":{limit},"trigger_unit":"{unit}","trigger_time":1}}}}"#
    )
}

/// A pseudo-random permutation of `0..n` (xorshift-driven Fisher–Yates).
pub fn shuffled(n: usize, seed: u64) -> Vec<u32> {
    let mut v: Vec<u32> = (0..n as u32).collect();
    let mut x = seed | 1;
    for i in (1..n).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.swap(i, (x % (i as u64 + 1)) as usize);
    }
    v
}

/// Criterion's median for `group/id` in this run, in ns (read back from
/// `target/criterion/*/new/estimates.json`).
pub fn median_ns(group: &str, id: &str) -> Option<f64> {
    let dir =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| PathBuf::from("target"), PathBuf::from);
    let path = dir
        .join("criterion")
        .join(group)
        .join(id)
        .join("new")
        .join("estimates.json");
    let text = std::fs::read_to_string(path).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["median"]["point_estimate"].as_f64()
}
