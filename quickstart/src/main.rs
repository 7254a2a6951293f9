//! The main job of benefit-quota, for a newcomer: the platform's own JSON
//! examples answered exactly as the platform would, then a device spending
//! against the rules they set.
//!
//! 1. an admin creates a rule: every device, 100 points a local day;
//! 2. the gateway mirrors a rule the platform already has, and applies the
//!    update page's own PUT body to it (the record before and after);
//! 3. a bad PUT is refused with code 4000 naming the field, changing nothing;
//! 4. a device spends 30 points at a time until it is denied: the denial
//!    names the rule and when it resets (the next local midnight);
//! 5. after midnight it spends again, and its usage is reported;
//! 6. the list endpoint answers as the platform does.
//!
//! Run: `cargo run --release -p quickstart`

use benefit_quota::wire::CreateData;
use benefit_quota::{Amount, BenefitType, Decision, Engine, Envelope, Subject, UtcOffset};

/// A create body as the create page shows it (F9).
const CREATE_BODY: &str = r#"{"entity_type":"enterprise_all_devices","benefit_info":{"benefit_type":"resource_point","active_mode":"absolute_time","started_at":1741708800,"ended_at":253402300799,"limit":100,"status":"valid","trigger_unit":"day","trigger_time":1}}"#;

/// A record as the platform's list endpoint returns it: device sn-0002 may
/// spend 50 points in total, and the rule is frozen.
const PLATFORM_RECORD: &str = r#"{"benefit_id":"12345***","entity_type":"single_device","entity_id":"sn-0002","benefit_type":"resource_point","active_mode":"absolute_time","started_at":1741536000,"ended_at":253402300799,"limit":50,"status":"frozen","trigger_unit":"never","trigger_time":1}"#;

/// The update page's own PUT body.
const PUT_BODY: &str = r#"{"benefit_id":"12345***","active_mode":"absolute_time","started_at":1741708800,"ended_at":1741708800,"limit":100,"status":"valid"}"#;

fn main() {
    let engine = Engine::new();
    let tz = UtcOffset::CHINA; // periods reset at local midnight, UTC+8 (D15)
    let now = 1_741_748_400; // 2025-03-12 11:00:00 +08:00

    println!("benefit-quota quickstart: the platform's JSON, answered as the platform would.\n");

    println!("1. An admin creates a rule: every device may spend 100 resource points a day.");
    println!("   POST /v1/commerce/benefit/limitations");
    println!("   request:  {CREATE_BODY}");
    let created = match engine.create_json(CREATE_BODY) {
        Ok(info) => {
            let id = info.benefit_id().to_string();
            let answer = Envelope::ok(CreateData { benefit_info: info }, "qs-1");
            println!("   response: {}", answer.to_json());
            id
        }
        Err(e) => fail(&format!("the create was refused: {e}")),
    };

    println!(
        "\n2. The gateway mirrors a rule the platform already has, then applies an update to it."
    );
    match engine.import_json(PLATFORM_RECORD, now) {
        Ok(before) => println!("   before:   {}", record_json(&before)),
        Err(e) => fail(&format!("the import failed: {e}")),
    }
    println!("   PUT /v1/commerce/benefit/limitations/12345***");
    println!("   request:  {PUT_BODY}");
    match engine.apply_update_json("12345***", PUT_BODY, now) {
        Ok(info) => println!("   response: {}", Envelope::ok(info, "qs-2").to_json()),
        Err(e) => fail(&format!("the update was refused: {e}")),
    }
    println!("   (limit 50 -> 100, frozen -> valid, and the window is now one second long)");

    println!("\n3. A bad update is refused, naming the field, and changes nothing.");
    let bad = r#"{"limit": -5, "trigger_unit": "day"}"#;
    println!("   PUT /v1/commerce/benefit/limitations/{created}");
    println!("   request:  {bad}");
    match engine.apply_update_json(&created, bad, now) {
        Ok(info) => fail(&format!("a bad update was accepted: {info:?}")),
        Err(e) if e.code().as_u32() == 4000 => {
            println!("   response: {}", Envelope::error(&e, "qs-3").to_json())
        }
        Err(e) => fail(&format!(
            "a bad update got code {}, not 4000",
            e.code().as_u32()
        )),
    }

    println!(
        "\n4. Device sn-0001 spends 30 points at a time, from {}:",
        tz.local(now)
    );
    let device = Subject::device("sn-0001");
    let thirty = Amount::from_units(30);
    let mut t = now;
    for call in 1.. {
        if call > 10 {
            fail("ten calls of 30 points were all allowed under a limit of 100");
        }
        let d = engine.try_consume(&device, BenefitType::ResourcePoint, thirty, t);
        match &d {
            Decision::Allowed(Some(h)) => println!(
                "   allowed: {} points left today under rule {} (resets {})",
                h.remaining,
                h.benefit_id,
                h.resets_at
                    .map_or("never".into(), |r| tz.local(r).to_string())
            ),
            Decision::Allowed(None) => fail("no rule applied to the device"),
            Decision::Denied(den) => {
                println!(
                    "   denied by rule {} ({}): {} points left, resets {}",
                    den.benefit_id,
                    den.reason,
                    den.remaining,
                    den.resets_at
                        .map_or("never".into(), |r| tz.local(r).to_string())
                );
                t = den.resets_at.unwrap_or(t);
                break;
            }
            other => fail(&format!("not decided: {other:?}")),
        }
        t += 60;
    }

    println!(
        "\n5. At {}, the next local midnight, the day starts again.",
        tz.local(t)
    );
    let d = engine.try_consume(&device, BenefitType::ResourcePoint, thirty, t);
    println!("   spend 30: allowed = {}", d.is_allowed());
    if !d.is_allowed() {
        fail("the new day did not start again");
    }
    for u in engine.usage(&device, t) {
        println!(
            "   rule {}: {} of {} used today ({} left); {} ever counted for this device (\"lifetime\", across days)",
            u.benefit_id, u.used, u.limit, u.remaining, u.lifetime
        );
    }

    println!("\n6. The list endpoint answers as the platform does.");
    let query = "entity_type=single_device&benefit_type=resource_point";
    println!("   GET /v1/commerce/benefit/limitations?{query}");
    match engine.list_query_string(query) {
        Ok(page) => println!("   response: {}", Envelope::ok(page, "qs-4").to_json()),
        Err(e) => fail(&format!("the list was refused: {e}")),
    }
}

/// Stops with an error status: the quickstart is also CI's check that the
/// main job works, so anything unexpected must fail it.
fn fail(why: &str) -> ! {
    eprintln!("quickstart failed: {why}");
    std::process::exit(1)
}

/// A record as one line of the platform's JSON.
fn record_json(info: &benefit_quota::BenefitInfo) -> String {
    serde_json::to_string(info).unwrap_or_default()
}
