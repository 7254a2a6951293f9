//! The bad-input catalogue: one row per malformed create, update or list
//! request. Every row asserts the exact code, that the message names the
//! field, and that nothing observable changed.

mod common;

use benefit_quota::{ApiError, Engine, Subject, FOREVER};
use common::*;

enum Req {
    Create(String),
    Update(&'static str, Vec<u8>),
    Query(String),
    ListJson(String),
}

use Req::*;

fn create(info: &str) -> Req {
    Create(format!(
        r#"{{"entity_type":"single_device","entity_id":"x","benefit_info":{{{info}}}}}"#
    ))
}

/// A valid benefit_info with `field` replaced by `value` (raw JSON).
fn info_with(field: &str, value: &str) -> Req {
    let mut parts = vec![
        ("benefit_type", r#""resource_point""#.to_owned()),
        ("active_mode", r#""absolute_time""#.to_owned()),
        ("started_at", "0".to_owned()),
        ("ended_at", FOREVER.to_string()),
        ("limit", "10".to_owned()),
        ("trigger_unit", r#""day""#.to_owned()),
    ];
    match parts.iter_mut().find(|(k, _)| *k == field) {
        Some(p) => p.1 = value.to_owned(),
        None => parts.push((
            Box::leak(field.to_owned().into_boxed_str()),
            value.to_owned(),
        )),
    }
    create(
        &parts
            .iter()
            .map(|(k, v)| format!(r#""{k}":{v}"#))
            .collect::<Vec<_>>()
            .join(","),
    )
}

fn entity(entity_type: &str, entity_id: Option<&str>, benefit_type: &str) -> Req {
    let id = entity_id
        .map(|i| format!(r#""entity_id":{i},"#))
        .unwrap_or_default();
    Create(format!(
        r#"{{"entity_type":{entity_type},{id}"benefit_info":{{"benefit_type":{benefit_type},"active_mode":"absolute_time","started_at":0,"ended_at":1,"limit":1}}}}"#
    ))
}

fn update(body: &str) -> Req {
    Update("3", body.as_bytes().to_vec())
}

fn query(q: &str) -> Req {
    Query(format!(
        "entity_type=single_device&benefit_type=resource_point&{q}"
    ))
}

fn seeded() -> Engine {
    let e = Engine::new();
    Rule::all_devices(100).create(&e); // 1
    Rule::all_devices(10).daily().create(&e); // 2
    Rule::device("d", 50).create(&e); // 3
    let c = Rule::device("c", 5).create(&e); // 4
    e.apply_update_json(&c, r#"{"status":"cancel"}"#, MIDNIGHT)
        .unwrap();
    let _ = e.try_consume(&Subject::device("d"), PTS, units(3), MIDNIGHT);
    let _ = e.try_consume(&Subject::device("z"), PTS, units(2), MIDNIGHT);
    e
}

fn run(e: &Engine, req: &Req) -> Result<(), ApiError> {
    match req {
        Create(b) => e.create_json(b).map(drop),
        Update(id, b) => e.apply_update_json(id, b, MIDNIGHT).map(drop),
        Query(q) => e.list_query_string(q).map(drop),
        ListJson(b) => e.list_json(b).map(drop),
    }
}

fn catalogue() -> Vec<(&'static str, Req, u32, &'static str)> {
    let big = format!(r#"{{"limit":1,"pad":"{}"}}"#, "x".repeat(10 << 20));
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let long = "x".repeat(300);
    vec![
        // ---- create: numbers
        ("create limit float", info_with("limit", "1.5"), 4000, "benefit_info.limit"),
        ("create limit integral float", info_with("limit", "1.0"), 4000, "benefit_info.limit"),
        ("create limit exponent", info_with("limit", "1e3"), 4000, "benefit_info.limit"),
        ("create limit non-numeric string", info_with("limit", r#""abc""#), 4000, "benefit_info.limit"),
        ("create limit decimal string", info_with("limit", r#""1.5""#), 4000, "benefit_info.limit"),
        ("create limit string with spaces", info_with("limit", r#"" 10""#), 4000, "benefit_info.limit"),
        ("create limit plus sign", info_with("limit", r#""+10""#), 4000, "benefit_info.limit"),
        ("create limit negative", info_with("limit", "-1"), 4000, "benefit_info.limit"),
        ("create limit overflows i64", info_with("limit", "9223372036854775808"), 4000, "benefit_info.limit"),
        ("create limit overflowing string", info_with("limit", r#""9223372036854775808""#), 4000, "benefit_info.limit"),
        ("create limit huge literal", info_with("limit", "123456789012345678901234567890"), 4000, "benefit_info.limit"),
        ("create limit boolean", info_with("limit", "true"), 4000, "benefit_info.limit"),
        ("create limit array", info_with("limit", "[1]"), 4000, "benefit_info.limit"),
        ("create limit object", info_with("limit", r#"{"v":1}"#), 4000, "benefit_info.limit"),
        ("create limit missing", create(r#""benefit_type":"resource_point","active_mode":"absolute_time","started_at":0,"ended_at":1"#), 4000, "benefit_info.limit"),
        ("create started_at negative", info_with("started_at", "-5"), 4000, "benefit_info.started_at"),
        ("create started_at float", info_with("started_at", "5.5"), 4000, "benefit_info.started_at"),
        ("create ended_at past forever", info_with("ended_at", "253402300800"), 4000, "benefit_info.ended_at"),
        ("create ended_at before started_at", create(r#""benefit_type":"resource_point","active_mode":"absolute_time","started_at":100,"ended_at":99,"limit":1"#), 4000, "benefit_info.ended_at"),
        ("create ended_at missing", create(r#""benefit_type":"resource_point","active_mode":"absolute_time","started_at":0,"limit":1"#), 4000, "benefit_info.ended_at"),
        ("create trigger_time zero", info_with("trigger_time", "0"), 4000, "benefit_info.trigger_time"),
        ("create trigger_time negative string", info_with("trigger_time", r#""-1""#), 4000, "benefit_info.trigger_time"),
        ("create trigger_time too many days", info_with("trigger_time", "2932897"), 4000, "benefit_info.trigger_time"),
        ("create trigger_time i64 max", info_with("trigger_time", "9223372036854775807"), 4000, "benefit_info.trigger_time"),
        ("create trigger_time float", info_with("trigger_time", "1.5"), 4000, "benefit_info.trigger_time"),
        // ---- create: enums and strings
        ("create trigger_unit unknown", info_with("trigger_unit", r#""week""#), 4000, "benefit_info.trigger_unit"),
        ("create trigger_unit capitalised", info_with("trigger_unit", r#""Day""#), 4000, "benefit_info.trigger_unit"),
        ("create trigger_unit number", info_with("trigger_unit", "1"), 4000, "benefit_info.trigger_unit"),
        ("create status unknown", info_with("status", r#""FROZEN""#), 4000, "benefit_info.status"),
        ("create active_mode unknown", info_with("active_mode", r#""relative_time""#), 4000, "benefit_info.active_mode"),
        ("create active_mode empty", info_with("active_mode", r#""""#), 4000, "benefit_info.active_mode"),
        ("create benefit_type unknown", info_with("benefit_type", r#""points""#), 4000, "benefit_info.benefit_type"),
        ("create benefit_type null", info_with("benefit_type", "null"), 4000, "benefit_info.benefit_type"),
        ("create entity_type unknown", entity(r#""device""#, Some(r#""x""#), r#""resource_point""#), 4000, "entity_type"),
        ("create entity_type number", entity("3", Some(r#""x""#), r#""resource_point""#), 4000, "entity_type"),
        ("create entity_type null", entity("null", Some(r#""x""#), r#""resource_point""#), 4000, "entity_type"),
        ("create entity_id missing", entity(r#""single_device""#, None, r#""resource_point""#), 4000, "entity_id"),
        ("create entity_id empty", entity(r#""single_custom_consumer""#, Some(r#""""#), r#""resource_point""#), 4000, "entity_id"),
        ("create entity_id too long", entity(r#""coze_user_id""#, Some(&format!(r#""{long}""#)), r#""resource_point""#), 4000, "entity_id"),
        ("create entity_id number", entity(r#""single_device""#, Some("12345"), r#""resource_point""#), 4000, "entity_id"),
        ("create coze_role unknown", entity(r#""coze_role""#, Some(r#""Owner""#), r#""resource_point""#), 4000, "entity_id"),
        ("create enterprise voice", entity(r#""coze_workspace""#, Some(r#""w""#), r#""voice_unified_duration_system""#), 4000, "benefit_info.benefit_type"),
        ("create benefit_info missing", Create(r#"{"entity_type":"single_device","entity_id":"x"}"#.into()), 4000, "benefit_info"),
        ("create benefit_info array", Create(r#"{"entity_type":"single_device","entity_id":"x","benefit_info":[10,"resource_point"]}"#.into()), 4000, "benefit_info"),
        ("create benefit_info string", Create(r#"{"entity_type":"single_device","entity_id":"x","benefit_info":"{}"}"#.into()), 4000, "benefit_info"),
        ("create duplicate key", create(r#""limit":1,"limit":2,"benefit_type":"resource_point","active_mode":"absolute_time","started_at":0,"ended_at":1"#), 4000, "limit"),
        ("create second periodic all-devices rule (D5)", Create(Rule::all_devices(5).every(2, "hour").body()), 4000, "benefit_info.trigger_unit"),
        ("create second cumulative all-devices rule (D5)", Create(Rule::all_devices(5).body()), 4000, "benefit_info.trigger_unit"),
        // ---- create: bodies
        ("create empty body", Create(String::new()), 4000, "body"),
        ("create null body", Create("null".into()), 4000, "body"),
        ("create array body", Create("[]".into()), 4000, "body"),
        ("create truncated JSON", Create(r#"{"entity_type":"#.into()), 4000, "entity_type"),
        ("create trailing garbage", Create(format!("{} x", Rule::device("q", 1).body())), 4000, "body"),
        ("create deeply nested", Create(deep.clone()), 4000, "body"),
        ("create 10 MB body", Create(big.clone()), 4000, "body"),
        // ---- update
        ("update limit float", update(r#"{"limit":1.5}"#), 4000, "limit"),
        ("update limit string", update(r#"{"limit":"ten"}"#), 4000, "limit"),
        ("update limit negative", update(r#"{"limit":-3}"#), 4000, "limit"),
        ("update limit overflow", update(r#"{"limit":18446744073709551616}"#), 4000, "limit"),
        ("update started_at past forever", update(r#"{"started_at":253402300800}"#), 4000, "started_at"),
        ("update ended_at negative", update(r#"{"ended_at":-1}"#), 4000, "ended_at"),
        ("update ended_at before started_at", update(r#"{"started_at":50,"ended_at":49}"#), 4000, "ended_at"),
        ("update started_at past stored ended_at", update(&format!(r#"{{"started_at":{FOREVER},"ended_at":{}}}"#, FOREVER - 1)), 4000, "ended_at"),
        ("update status unknown", update(r#"{"status":"deleted"}"#), 4000, "status"),
        ("update status boolean", update(r#"{"status":false}"#), 4000, "status"),
        ("update trigger_unit unknown", update(r#"{"trigger_unit":"year"}"#), 4000, "trigger_unit"),
        ("update trigger_time zero", update(r#"{"trigger_unit":"hour","trigger_time":0}"#), 4000, "trigger_time"),
        ("update trigger_time exponent", update(r#"{"trigger_time":1e2}"#), 4000, "trigger_time"),
        ("update trigger_time huge", update(r#"{"trigger_unit":"minute","trigger_time":"4223372036854775807"}"#), 4000, "trigger_time"),
        ("update active_mode unknown", update(r#"{"active_mode":"x"}"#), 4000, "active_mode"),
        ("update benefit_id mismatch", update(r#"{"benefit_id":"4","limit":1}"#), 4000, "benefit_id"),
        ("update benefit_id number", update(r#"{"benefit_id":3}"#), 4000, "benefit_id"),
        ("update cancelled rule", Update("4", br#"{"status":"valid"}"#.to_vec()), 4000, "status"),
        ("update unknown id", Update("999", br#"{"limit":1}"#.to_vec()), 4200, "benefit_id"),
        ("update over-long id", Update(Box::leak(long.clone().into_boxed_str()), br#"{"limit":1}"#.to_vec()), 4200, "benefit_id"),
        ("update empty id", Update("", br#"{}"#.to_vec()), 4200, "benefit_id"),
        ("update array body", update("[1]"), 4000, "body"),
        ("update non-UTF-8 value", Update("3", b"{\"limit\":\xff}".to_vec()), 4000, "limit"),
        ("update non-UTF-8 body", Update("3", b"\xfe\xff{}".to_vec()), 4000, "body"),
        ("update non-UTF-8 string", Update("3", b"{\"status\":\"\xc3\x28\"}".to_vec()), 4000, "status"),
        ("update 10 MB body", Update("3", big.into_bytes()), 4000, "body"),
        ("update deeply nested", Update("3", deep.into_bytes()), 4000, "body"),
        ("update duplicate key", update(r#"{"limit":1,"limit":2}"#), 4000, "limit"),
        ("update cumulative into a second periodic all-devices rule (D5)", Update("1", br#"{"trigger_unit":"day"}"#.to_vec()), 4000, "trigger_unit"),
        // ---- list
        ("list without entity_type", Query("benefit_type=resource_point".into()), 4000, "entity_type"),
        ("list without benefit_type", Query("entity_type=single_device".into()), 4000, "benefit_type"),
        ("list unknown entity_type", Query("entity_type=all&benefit_type=resource_point".into()), 4000, "entity_type"),
        ("list unknown benefit_type", Query("entity_type=single_device&benefit_type=point".into()), 4000, "benefit_type"),
        ("list page_size 0", query("page_size=0"), 4000, "page_size"),
        ("list page_size 201", query("page_size=201"), 4000, "page_size"),
        ("list page_size negative", query("page_size=-1"), 4000, "page_size"),
        ("list page_size float", query("page_size=1.5"), 4000, "page_size"),
        ("list page_size text", query("page_size=ten"), 4000, "page_size"),
        ("list page_size overflow", query("page_size=99999999999999999999"), 4000, "page_size"),
        ("list duplicate page_size", query("page_size=1&page_size=2"), 4000, "page_size"),
        ("list unknown status", query("status=gone"), 4000, "status"),
        ("list forged page_token", query("page_token=abc"), 4000, "page_token"),
        ("list forged well-formed page_token", query("page_token=1.00000000deadbeef"), 4000, "page_token"),
        ("list over-long entity_id", query(&format!("entity_id={long}")), 4000, "entity_id"),
        ("list JSON page_size float", ListJson(r#"{"entity_type":"single_device","benefit_type":"resource_point","page_size":1.5}"#.into()), 4000, "page_size"),
        ("list JSON page_size boolean", ListJson(r#"{"entity_type":"single_device","benefit_type":"resource_point","page_size":true}"#.into()), 4000, "page_size"),
        ("list JSON array body", ListJson("[]".into()), 4000, "body"),
        ("list JSON entity_type number", ListJson(r#"{"entity_type":1,"benefit_type":"resource_point"}"#.into()), 4000, "entity_type"),
    ]
}

#[test]
fn every_bad_input_gets_its_code_names_its_field_and_changes_nothing() {
    let e = seeded();
    let subjects = [
        Subject::device("d"),
        Subject::device("z"),
        Subject::device("x"),
    ];
    let rows = catalogue();
    assert!(rows.len() >= 60, "{} rows", rows.len());
    let before = snapshot(&e, &subjects, MIDNIGHT);
    let mut failures = Vec::new();
    for (name, req, code, field) in &rows {
        let err = match run(&e, req) {
            Ok(()) => {
                failures.push(format!("{name}: accepted"));
                continue;
            }
            Err(err) => err,
        };
        if err.code().as_u32() != *code {
            failures.push(format!(
                "{name}: code {} ({})",
                err.code().as_u32(),
                err.msg()
            ));
        }
        if !err.msg().contains(&format!("`{field}`")) {
            failures.push(format!(
                "{name}: message {:?} does not name `{field}`",
                err.msg()
            ));
        }
        if err.msg().len() > 512 {
            failures.push(format!("{name}: message of {} bytes", err.msg().len()));
        }
        if snapshot(&e, &subjects, MIDNIGHT) != before {
            failures.push(format!("{name}: state changed"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} rows failed:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
}
