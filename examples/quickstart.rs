//! The main job: replays the platform's JSON examples through the engine and
//! prints every envelope the platform would answer.
//!
//! 1. create a rule from a create body (F9): every device, 100 points a day;
//! 2. mirror a platform rule `12345***` and apply the seed page's PUT body to it;
//! 3. show how a bad PUT is answered (4000, field named, nothing changed);
//! 4. let a device consume 30 points at a time until it is denied, and show
//!    that the denial names the rule and resets at the next local midnight;
//! 5. show the device allowed again after midnight, its usage, and a list page.
//!
//! Run: `cargo run --release --example quickstart`

use benefit_quota::wire::CreateData;
use benefit_quota::{Amount, BenefitType, Decision, Engine, Envelope, Subject, UtcOffset};

const CREATE_BODY: &str = include_str!("../tests/data/create_body.json");

/// The record as the platform's list endpoint returns it (mirrored, D7).
const PLATFORM_RECORD: &str = r#"{"benefit_id":"12345***","entity_type":"single_device",
  "entity_id":"sn-0002","benefit_type":"resource_point","active_mode":"absolute_time",
  "started_at":1741536000,"ended_at":253402300799,"limit":50,"status":"frozen",
  "trigger_unit":"never","trigger_time":1}"#;

/// The seed page's PUT body, byte for byte.
const SEED_PUT_BODY: &str = include_str!("../tests/data/seed_put_body.json");

fn main() {
    let engine = Engine::new();
    let tz = UtcOffset::CHINA;
    let now = 1_741_748_400; // 2025-03-12 11:00:00 +08:00

    println!("== POST /v1/commerce/benefit/limitations");
    let created = match engine.create_json(CREATE_BODY) {
        Ok(info) => {
            let id = info.benefit_id().to_string();
            println!(
                "{}",
                Envelope::ok(CreateData { benefit_info: info }, "qs-1").to_json()
            );
            id
        }
        Err(e) => return println!("{}", Envelope::error(&e, "qs-1").to_json()),
    };

    println!("\n== PUT /v1/commerce/benefit/limitations/12345*** (the seed's example)");
    if let Err(e) = engine.import_json(PLATFORM_RECORD, now) {
        return println!("import failed: {e}");
    }
    match engine.apply_update_json("12345***", SEED_PUT_BODY, now) {
        Ok(info) => println!("{}", Envelope::ok(info, "qs-2").to_json()),
        Err(e) => println!("{}", Envelope::error(&e, "qs-2").to_json()),
    }

    println!("\n== PUT /v1/commerce/benefit/limitations/{created} with a bad body");
    let bad = r#"{"limit": -5, "trigger_unit": "day"}"#;
    match engine.apply_update_json(&created, bad, now) {
        Ok(info) => println!("{}", Envelope::ok(info, "qs-3").to_json()),
        Err(e) => println!("{}", Envelope::error(&e, "qs-3").to_json()),
    }

    println!(
        "\n== device sn-0001 spends 30 points at a time at {}",
        tz.local(now)
    );
    let device = Subject::device("sn-0001");
    let mut t = now;
    loop {
        let d = engine.try_consume(
            &device,
            BenefitType::ResourcePoint,
            Amount::from_units(30),
            t,
        );
        match &d {
            Decision::Allowed(Some(h)) => println!(
                "  allowed: {} points left on rule {} until {}",
                h.remaining,
                h.benefit_id,
                h.resets_at
                    .map_or("forever".into(), |r| tz.local(r).to_string())
            ),
            Decision::Allowed(None) => println!("  allowed: unlimited"),
            Decision::Denied(den) => {
                println!(
                    "  denied by rule {} ({}): {} points left, resets at {}",
                    den.benefit_id,
                    den.reason,
                    den.remaining,
                    den.resets_at
                        .map_or("never".into(), |r| tz.local(r).to_string())
                );
                t = den.resets_at.unwrap_or(t);
                break;
            }
            other => return println!("  not decided: {other:?}"),
        }
        t += 60;
    }

    println!("\n== at {} (the next local midnight)", tz.local(t));
    let d = engine.try_consume(
        &device,
        BenefitType::ResourcePoint,
        Amount::from_units(30),
        t,
    );
    println!("  try_consume 30 -> allowed: {}", d.is_allowed());
    for u in engine.usage(&device, t) {
        println!(
            "  usage of {}: used {} of {} ({} left), lifetime {}",
            u.benefit_id, u.used, u.limit, u.remaining, u.lifetime
        );
    }

    println!("\n== GET /v1/commerce/benefit/limitations?entity_type=single_device&benefit_type=resource_point");
    match engine.list_query_string("entity_type=single_device&benefit_type=resource_point") {
        Ok(page) => println!("{}", Envelope::ok(page, "qs-4").to_json()),
        Err(e) => println!("{}", Envelope::error(&e, "qs-4").to_json()),
    }
}
