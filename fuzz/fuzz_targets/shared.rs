//! Helpers shared by the fuzz targets: a seeded engine and the
//! round-trip property of stored records.
#![allow(dead_code)]

use benefit_quota::{BenefitInfo, Engine, Subject};

#[path = "../../tests/common/mod.rs"]
#[allow(dead_code, unused_imports)]
mod common;

pub use common::{snapshot, Rule, MIDNIGHT, PTS};

pub const IDS: [&str; 6] = ["1", "2", "3", "4", "5", "missing"];

pub fn subjects() -> [Subject<'static>; 3] {
    [
        Subject::device("d"),
        Subject::device("z"),
        Subject::consumer("c"),
    ]
}

/// A default engine with few shards: the shard count changes no decision,
/// and a fresh engine per input stays cheap.
pub fn small_engine() -> Engine {
    Engine::builder().shards(4).build()
}

/// An engine holding a few rules (one cancelled) with some usage.
pub fn seeded() -> Engine {
    let e = small_engine();
    Rule::all_devices(100).create(&e);
    Rule::all_devices(10).daily().create(&e);
    Rule::device("d", 50).every(3, "hour").create(&e);
    Rule::consumer("c", 5).create(&e);
    let cancelled = Rule::device("x", 5).create(&e);
    if e.apply_update_json(&cancelled, r#"{"status":"cancel"}"#, MIDNIGHT)
        .is_err()
    {
        panic!("seeding failed");
    }
    for s in subjects() {
        let _ = e.try_consume(&s, PTS, benefit_quota::Amount::from_units(2), MIDNIGHT);
    }
    e
}

/// A stored record re-serialises and re-parses to itself, and imports into
/// a fresh engine unchanged.
pub fn assert_round_trips(info: &BenefitInfo) {
    let text = serde_json::to_string(info).expect("serialise");
    let back: BenefitInfo = serde_json::from_str(&text).expect("re-parse");
    assert_eq!(&back, info);
    let mirror = small_engine();
    let imported = mirror.import_json(&text, MIDNIGHT).expect("import");
    assert_eq!(&imported, info);
}
