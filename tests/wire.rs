//! Wire conformance: the platform's JSON examples, D1–D3, D7, D8.

mod common;

use benefit_quota::wire::{CreateData, Int64};
use benefit_quota::{
    Amount, ApiError, BenefitInfo, BenefitType, Engine, Envelope, ListData, Subject, UpdateBody,
};
use common::*;
use serde_json::{json, Value};

/// The seed page's request body, byte for byte.
const SEED_PUT_BODY: &str = include_str!("data/seed_put_body.json");

/// The seed page's response example, byte for byte.
const SEED_PUT_RESPONSE: &str = include_str!("data/seed_put_response.json");

/// A create body in the shape of the create page (F9), as the platform's own
/// examples send it: `entity_id` present even for an all-scope rule.
const CREATE_BODY: &str = include_str!("data/create_body.json");

fn seed_engine() -> Engine {
    let e = Engine::new();
    e.import_json(
        r#"{"benefit_id":"12345***","entity_type":"single_device","entity_id":"dev-1",
            "benefit_type":"resource_point","active_mode":"absolute_time",
            "started_at":1741536000,"ended_at":253402300799,"limit":50,"status":"frozen",
            "trigger_unit":"never","trigger_time":1}"#,
        MIDNIGHT,
    )
    .unwrap();
    e
}

#[test]
fn seed_put_body_applies_and_answers_like_the_seed_response() {
    let e = seed_engine();
    let info = e
        .apply_update_json("12345***", SEED_PUT_BODY, MIDNIGHT)
        .unwrap();
    let ours: Value = serde_json::from_str(&Envelope::ok(&info, "log").to_json()).unwrap();
    let seed: Value = serde_json::from_str(SEED_PUT_RESPONSE).unwrap();
    assert_eq!(ours["code"], seed["code"]);
    assert_eq!(ours["msg"], seed["msg"]);
    // Every field of the seed's data is ours, with the same value...
    let (ours_data, seed_data) = (
        ours["data"].as_object().unwrap(),
        seed["data"].as_object().unwrap(),
    );
    for (k, v) in seed_data {
        assert_eq!(ours_data.get(k), Some(v), "field {k}");
    }
    // ...and the rest is the full record (D3: update answers the flat record).
    let mut extra: Vec<&str> = ours_data
        .keys()
        .filter(|k| !seed_data.contains_key(*k))
        .map(|k| k.as_str())
        .collect();
    extra.sort_unstable();
    assert_eq!(
        extra,
        ["entity_id", "entity_type", "trigger_time", "trigger_unit"]
    );
    assert_eq!(ours["detail"], json!({"logid": "log"}));
}

#[test]
fn seed_put_response_is_rendered_in_the_platform_field_order() {
    let e = seed_engine();
    let info = e
        .apply_update_json("12345***", SEED_PUT_BODY, MIDNIGHT)
        .unwrap();
    assert_eq!(
        Envelope::ok(&info, "20241210152726467C48D89D6DB2****").to_json(),
        concat!(
            r#"{"code":0,"msg":"","data":{"benefit_id":"12345***","entity_type":"single_device","#,
            r#""entity_id":"dev-1","benefit_type":"resource_point","active_mode":"absolute_time","#,
            r#""started_at":1741708800,"ended_at":1741708800,"limit":100,"status":"valid","#,
            r#""trigger_unit":"never","trigger_time":1},"detail":{"logid":"20241210152726467C48D89D6DB2****"}}"#
        )
    );
}

#[test]
fn seed_put_body_deserialises_field_by_field() {
    let body: UpdateBody = serde_json::from_str(SEED_PUT_BODY).unwrap();
    assert_eq!(
        body,
        UpdateBody {
            benefit_id: Some("12345***".into()),
            active_mode: Some("absolute_time".into()),
            started_at: Some(Int64(1_741_708_800)),
            ended_at: Some(Int64(1_741_708_800)),
            limit: Some(Int64(100)),
            status: Some("valid".into()),
            trigger_unit: None,
            trigger_time: None,
        }
    );
}

#[test]
fn d3_create_answers_nested_benefit_info_and_drops_all_scope_entity_id() {
    let e = Engine::new();
    let info = e.create_json(CREATE_BODY).unwrap();
    let v: Value = serde_json::from_str(
        &Envelope::ok(
            CreateData {
                benefit_info: &info,
            },
            "l",
        )
        .to_json(),
    )
    .unwrap();
    assert_eq!(
        v,
        json!({
            "code": 0, "msg": "", "detail": {"logid": "l"},
            "data": {"benefit_info": {
                "benefit_id": "1", "entity_type": "enterprise_all_devices",
                "benefit_type": "resource_point", "active_mode": "absolute_time",
                "started_at": 1741708800, "ended_at": 253402300799u64, "limit": 100,
                "status": "valid", "trigger_unit": "day", "trigger_time": 1
            }}
        })
    );
}

#[test]
fn d1_integers_as_decimal_strings_are_accepted_and_output_as_integers() {
    let e = Engine::new();
    let body = CREATE_BODY
        .replace("1741708800", "\"1741708800\"")
        .replace("253402300799", "\"253402300799\"")
        .replace("\"limit\": 100", "\"limit\": \"100\"")
        .replace("\"trigger_time\": 1", "\"trigger_time\": \"1\"");
    let info = e.create_json(&body).unwrap();
    let v: Value = serde_json::to_value(&info).unwrap();
    assert_eq!(v["started_at"], json!(1_741_708_800));
    assert_eq!(v["ended_at"], json!(253_402_300_799u64));
    assert_eq!(v["limit"], json!(100));
    assert_eq!(v["trigger_time"], json!(1));
    assert_eq!(v["benefit_id"], json!("1"));
    let u = e.apply_update_json("1", r#"{"limit":"7"}"#, 0).unwrap();
    assert_eq!(serde_json::to_value(&u).unwrap()["limit"], json!(7));
}

#[test]
fn d2_absent_and_null_fields_keep_their_value_and_unknown_fields_are_ignored() {
    let e = seed_engine();
    let before = e.get("12345***").unwrap();
    let after = e
        .apply_update_json(
            "12345***",
            r#"{"limit":null,"status":null,"whatever":{"x":[1,2]},"trigger_unit":null}"#,
            0,
        )
        .unwrap();
    assert_eq!(after, before);
    let after = e
        .apply_update_json("12345***", r#"{"benefit_id":"12345***","limit":9}"#, 0)
        .unwrap();
    assert_eq!(after.limit(), 9);
    assert_eq!(after.status(), before.status());
}

#[test]
fn d2_benefit_id_in_body_must_match_the_path() {
    let e = seed_engine();
    let before = snapshot(&e, &[], 0);
    let err = e
        .apply_update_json("12345***", r#"{"benefit_id":"999","limit":1}"#, 0)
        .unwrap_err();
    assert_eq!(err.code().as_u32(), 4000);
    assert!(err.msg().contains("`benefit_id`"), "{}", err.msg());
    assert_eq!(snapshot(&e, &[], 0), before);
}

#[test]
fn d3_list_items_carry_benefit_id_and_empty_pages_are_canonical() {
    let e = Engine::new();
    let data = e
        .list_query_string("entity_type=single_device&benefit_type=resource_point")
        .unwrap();
    assert_eq!(
        serde_json::to_value(&data).unwrap(),
        json!({"has_more": false, "page_token": "", "benefit_infos": []})
    );
    let id = Rule::device("d", 5).create(&e);
    let data = e
        .list_query_string("entity_type=single_device&benefit_type=resource_point")
        .unwrap();
    let v = serde_json::to_value(&data).unwrap();
    assert_eq!(v["benefit_infos"][0]["benefit_id"], json!(id));
    assert_eq!(v["benefit_infos"][0]["entity_id"], json!("d"));
    assert_eq!(v["has_more"], json!(false));
}

#[test]
fn d7_import_keeps_platform_ids_from_a_whole_list_response() {
    let response = json!({
        "code": 0, "msg": "", "detail": {"logid": "x"},
        "data": {"has_more": false, "page_token": "", "benefit_infos": [
            {"benefit_id": "7480000000000000001", "entity_type": "enterprise_all_devices",
             "benefit_type": "resource_point", "active_mode": "absolute_time",
             "started_at": 0, "ended_at": 253402300799u64, "limit": 5000, "status": "valid",
             "trigger_unit": "never", "trigger_time": 1},
            {"benefit_id": "7480000000000000002", "entity_type": "enterprise_all_devices",
             "benefit_type": "resource_point", "active_mode": "absolute_time",
             "started_at": "0", "ended_at": "253402300799", "limit": "1000", "status": "valid",
             "trigger_unit": "day", "trigger_time": "1"}
        ]}
    });
    let e = Engine::new();
    let got = e
        .import_response_json(response.to_string(), MIDNIGHT)
        .unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(e.get("7480000000000000002").unwrap().limit(), 1000);
    // Re-importing the same list is idempotent; ids the engine generates do not collide.
    e.import_response_json(response.to_string(), MIDNIGHT)
        .unwrap();
    assert_eq!(e.rule_count(), 2);
    let created = Rule::device("d", 1).create(&e);
    assert_eq!(created, "1");
    // A list response round-trips: what we list, a mirror can import.
    let listed = e
        .list_query_string("entity_type=enterprise_all_devices&benefit_type=resource_point")
        .unwrap();
    let mirror = Engine::new();
    mirror
        .import_response_json(Envelope::ok(&listed, "y").to_json(), MIDNIGHT)
        .unwrap();
    assert_eq!(mirror.records(), e.records()[..2].to_vec());
}

#[test]
fn d7_import_accepts_create_and_update_responses() {
    let src = Engine::new();
    let info = src.create_json(CREATE_BODY).unwrap();
    let e = Engine::new();
    e.import_response_json(
        Envelope::ok(
            CreateData {
                benefit_info: &info,
            },
            "a",
        )
        .to_json(),
        0,
    )
    .unwrap();
    assert_eq!(e.records(), vec![info.clone()]);
    let updated = src.apply_update_json("1", r#"{"limit":3}"#, 0).unwrap();
    e.import_response_json(Envelope::ok(&updated, "b").to_json(), 0)
        .unwrap();
    assert_eq!(e.records(), vec![updated]);
}

#[test]
fn d7_import_of_the_seeds_update_response_keeps_what_it_leaves_out() {
    // The seed's update response shows the record without its scope or
    // reset fields: imported over the known rule, those keep its values
    // (a daily rule stays daily, so its counters are not reset).
    let e = Engine::new();
    let mut rec: Value = serde_json::from_str(
        &serde_json::to_string(&Engine::new().create_json(CREATE_BODY).unwrap()).unwrap(),
    )
    .unwrap();
    rec["benefit_id"] = json!("12345***");
    let before = e.import_json(rec.to_string(), 0).unwrap();
    let spent = e.try_consume(
        &Subject::device("dev"),
        BenefitType::ResourcePoint,
        Amount::from_units(7),
        1741708800,
    );
    assert!(spent.is_allowed());
    let after = e
        .import_response_json(SEED_PUT_RESPONSE, 1741708800)
        .unwrap();
    assert_eq!(after.len(), 1);
    let after = &after[0];
    assert_eq!(after.entity_type(), before.entity_type());
    assert_eq!(after.reset(), before.reset());
    assert_eq!(after.ended_at(), 1741708800);
    assert_eq!(after.limit(), 100);
    assert_eq!(e.records(), vec![after.clone()]);
    let usage = e.usage(&Subject::device("dev"), 1741708800);
    assert_eq!(usage[0].used, Amount::from_units(7));
    // An unknown rule cannot be read from it: its scope is missing.
    let err = Engine::new()
        .import_response_json(SEED_PUT_RESPONSE, 0)
        .unwrap_err();
    assert!(
        err.msg()
            .starts_with("invalid parameter `data.entity_type`"),
        "{}",
        err.msg()
    );
    // Nor may it change the known rule's benefit type.
    let voice = SEED_PUT_RESPONSE.replace("resource_point", "voice_unified_duration_system");
    let err = e.import_response_json(voice, 0).unwrap_err();
    assert!(
        err.msg()
            .starts_with("invalid parameter `data.benefit_type`"),
        "{}",
        err.msg()
    );
    assert_eq!(e.records(), vec![after.clone()]);
}

#[test]
fn d7_generated_ids_skip_imported_ones() {
    let e = Engine::new();
    let mut rec: Value = serde_json::from_str(
        &serde_json::to_string(&Engine::new().create_json(CREATE_BODY).unwrap()).unwrap(),
    )
    .unwrap();
    rec["benefit_id"] = json!("2");
    e.import_json(rec.to_string(), 0).unwrap();
    assert_eq!(Rule::device("a", 1).create(&e), "1");
    assert_eq!(Rule::device("b", 1).create(&e), "3");
}

#[test]
fn d8_pages_are_stable_while_rules_are_added_and_updated() {
    let e = Engine::new();
    let mut ids: Vec<String> = (0..5)
        .map(|i| Rule::device(&format!("d{i}"), i).create(&e))
        .collect();
    let q = "entity_type=single_device&benefit_type=resource_point&page_size=2";
    let p1 = e.list_query_string(q).unwrap();
    assert!(p1.has_more);
    // Rules are added and updated between pages.
    ids.push(Rule::device("late", 9).create(&e));
    e.apply_update_json(&ids[0], r#"{"limit":99}"#, 0).unwrap();
    e.apply_update_json(&ids[3], r#"{"status":"frozen"}"#, 0)
        .unwrap();
    let mut seen: Vec<String> = p1
        .benefit_infos
        .iter()
        .map(|i| i.benefit_id().to_string())
        .collect();
    let mut token = p1.page_token.clone();
    let mut pages = 0;
    while !token.is_empty() {
        pages += 1;
        assert!(pages < 1_000, "the page tokens never end");
        let page = e
            .list_query_string(format!("{q}&page_token={token}"))
            .unwrap();
        seen.extend(
            page.benefit_infos
                .iter()
                .map(|i| i.benefit_id().to_string()),
        );
        assert_eq!(page.has_more, !page.page_token.is_empty());
        token = page.page_token;
    }
    assert_eq!(seen, ids, "no item skipped or repeated, creation order");
}

#[test]
fn d8_a_rule_that_comes_to_match_a_status_filter_between_pages_is_not_skipped() {
    // a, b, x (frozen), c: `status=valid`, two a page, gives [a, b]; then x
    // becomes valid. It sits after b, so the next page has it.
    let e = Engine::new();
    let a = Rule::device("a", 1).create(&e);
    let b = Rule::device("b", 1).create(&e);
    let x = Rule::device("x", 1).status("frozen").create(&e);
    let c = Rule::device("c", 1).create(&e);
    let q = "entity_type=single_device&benefit_type=resource_point&status=valid&page_size=2";
    let p1 = e.list_query_string(q).unwrap();
    let ids = |p: &ListData| -> Vec<String> {
        p.benefit_infos
            .iter()
            .map(|i| i.benefit_id().to_string())
            .collect()
    };
    assert_eq!(ids(&p1), [a, b]);
    e.apply_update_json(&x, r#"{"status":"valid"}"#, 0).unwrap();
    let p2 = e
        .list_query_string(format!("{q}&page_token={}", p1.page_token))
        .unwrap();
    assert_eq!(ids(&p2), [x, c]);
    assert!(!p2.has_more);
}

#[test]
fn d8_without_a_status_filter_every_status_is_listed() {
    let e = Engine::new();
    let a = Rule::device("a", 1).create(&e);
    let b = Rule::device("b", 1).status("frozen").create(&e);
    let c = Rule::device("c", 1).create(&e);
    e.apply_update_json(&c, r#"{"status":"cancel"}"#, 0)
        .unwrap();
    let names = |q: &str| -> Vec<String> {
        e.list_query_string(q)
            .unwrap()
            .benefit_infos
            .iter()
            .map(|i| i.benefit_id().to_string())
            .collect()
    };
    let base = "entity_type=single_device&benefit_type=resource_point";
    assert_eq!(names(base), vec![a.clone(), b.clone(), c.clone()]);
    assert_eq!(names(&format!("{base}&status=frozen")), vec![b]);
    assert_eq!(names(&format!("{base}&status=cancel")), vec![c]);
    assert_eq!(names(&format!("{base}&entity_id=a")), vec![a]);
    assert!(
        names("entity_type=single_device&benefit_type=voice_unified_duration_custom").is_empty()
    );
}

#[test]
fn list_accepts_a_json_query_with_string_or_integer_page_size() {
    let e = Engine::new();
    for i in 0..3 {
        Rule::device(&format!("d{i}"), 1).create(&e);
    }
    let a = e
        .list_json(
            r#"{"entity_type":"single_device","benefit_type":"resource_point","page_size":2}"#,
        )
        .unwrap();
    let b = e
        .list_json(
            r#"{"entity_type":"single_device","benefit_type":"resource_point","page_size":"2"}"#,
        )
        .unwrap();
    assert_eq!(a.benefit_infos.len(), 2);
    assert_eq!(a.benefit_infos, b.benefit_infos);
}

#[test]
fn envelopes_render_errors_and_parse_back() {
    let err = ApiError::invalid("limit", "bad");
    let json = Envelope::error(&err, "id-1").to_json();
    assert_eq!(
        json,
        r#"{"code":4000,"msg":"invalid parameter `limit`: bad","detail":{"logid":"id-1"}}"#
    );
    let back: Envelope<Value> = serde_json::from_str(&json).unwrap();
    assert_eq!((back.code, back.data), (4000, None));
}

#[test]
fn records_round_trip_through_json() {
    let e = Engine::new();
    let info = e.create_json(CREATE_BODY).unwrap();
    let text = serde_json::to_string(&info).unwrap();
    let back: BenefitInfo = serde_json::from_str(&text).unwrap();
    assert_eq!(back, info);
    let list = ListData {
        has_more: false,
        page_token: String::new(),
        benefit_infos: vec![info],
    };
    let text = serde_json::to_string(&list).unwrap();
    let back: ListData = serde_json::from_str(&text).unwrap();
    assert_eq!(back, list);
}

#[test]
fn f13_error_codes_are_the_platforms() {
    use benefit_quota::ErrorCode::*;
    let codes: Vec<u32> = [
        InvalidParameter,
        BadToken,
        PermissionDenied,
        NotFound,
        Internal,
    ]
    .iter()
    .map(|c| c.as_u32())
    .collect();
    assert_eq!(codes, [4000, 4100, 4101, 4200, 5000]);
    // No numeric trap: a cast gives the platform's number, not an index.
    let err = ApiError::not_found("42");
    assert_eq!(err.code() as i64, 4200);
    assert_eq!(InvalidParameter as u32, 4000);
}

#[test]
fn f9_f10_f11_f14_endpoints_methods_paths_and_permissions() {
    use benefit_quota::wire::Endpoint::*;
    let table: Vec<(&str, &str, &str)> = [Create, List, Update]
        .iter()
        .map(|e| (e.method(), e.path(), e.permission()))
        .collect();
    assert_eq!(
        table,
        [
            (
                "POST",
                "/v1/commerce/benefit/limitations",
                "createBenefitLimitation"
            ),
            (
                "GET",
                "/v1/commerce/benefit/limitations",
                "listBenefitLimitation"
            ),
            (
                "PUT",
                "/v1/commerce/benefit/limitations/:benefit_id",
                "updateBenefitLimitation"
            ),
        ]
    );
}

#[test]
fn f10_page_size_defaults_to_20_and_allows_200() {
    let e = Engine::new();
    for i in 0..205 {
        Rule::device(&format!("d{i}"), 1).create(&e);
    }
    let q = "entity_type=single_device&benefit_type=resource_point";
    let first = e.list_query_string(q).unwrap();
    assert_eq!((first.benefit_infos.len(), first.has_more), (20, true));
    let big = e.list_query_string(format!("{q}&page_size=200")).unwrap();
    assert_eq!((big.benefit_infos.len(), big.has_more), (200, true));
    let rest = e
        .list_query_string(format!("{q}&page_size=200&page_token={}", big.page_token))
        .unwrap();
    assert_eq!(
        (
            rest.benefit_infos.len(),
            rest.has_more,
            rest.page_token.as_str()
        ),
        (5, false, "")
    );
}

/// The official Java SDK's create body for every custom consumer, as its
/// Jackson mapping writes it: its entity name (D18), `entity_id` left out,
/// the nested record's unset fields as `null`, no reset period.
const JAVA_SDK_CREATE_ALL_IDENTIFIERS: &str = r#"{"entity_type":"enterprise_all_identifiers","benefit_info":{"benefit_id":null,"benefit_type":"resource_point","active_mode":"absolute_time","started_at":1741536000,"ended_at":253402300799,"limit":1000,"status":null}}"#;

#[test]
fn d18_the_java_sdks_entity_names_are_read_and_the_docs_names_written() {
    let e = Engine::new();
    let all = e.create_json(JAVA_SDK_CREATE_ALL_IDENTIFIERS).unwrap();
    assert_eq!(
        all.entity_type().as_str(),
        "enterprise_all_custom_consumers"
    );
    assert_eq!(all.reset().unit().as_str(), "never"); // F8: cumulative
    let one = e
        .create_json(
            r#"{"entity_type":"single_identifier","entity_id":"consumer-7","benefit_info":{"benefit_id":null,"benefit_type":"resource_point","active_mode":"absolute_time","started_at":1741536000,"ended_at":253402300799,"limit":5,"status":null}}"#,
        )
        .unwrap();
    assert_eq!(one.entity_type().as_str(), "single_custom_consumer");
    let out: Value = serde_json::to_value(&one).unwrap();
    assert_eq!(out["entity_type"], "single_custom_consumer");
    // The list query takes either spelling, and lists the same rules.
    for spelling in [
        "enterprise_all_identifiers",
        "enterprise_all_custom_consumers",
    ] {
        let q = format!("entity_type={spelling}&benefit_type=resource_point");
        let page = e.list_query_string(q).unwrap();
        let ids: Vec<&str> = page
            .benefit_infos
            .iter()
            .map(|i| i.benefit_id().as_str())
            .collect();
        assert_eq!(ids, [all.benefit_id().as_str()], "{spelling}");
    }
    // So does an import of a record in the SDK's spelling.
    let imported = e
        .import_json(
            r#"{"benefit_id":"9001","entity_type":"single_identifier","entity_id":"consumer-8","benefit_type":"resource_point","active_mode":"absolute_time","started_at":0,"ended_at":253402300799,"limit":3,"status":"valid","trigger_unit":"never","trigger_time":1}"#,
            MIDNIGHT,
        )
        .unwrap();
    assert_eq!(imported.entity_type().as_str(), "single_custom_consumer");
    // And the rules decide for the consumers as any other.
    let c = benefit_quota::Subject::consumer("consumer-7");
    assert!(e.try_consume(&c, PTS, units(5), MIDNIGHT).is_allowed());
    assert!(!e.try_consume(&c, PTS, units(1), MIDNIGHT).is_allowed());
}

#[test]
fn d19_the_java_sdks_update_with_zeroed_primitives_changes_only_the_limit() {
    let e = Engine::new();
    let info = e.create_json(JAVA_SDK_CREATE_ALL_IDENTIFIERS).unwrap();
    let id = info.benefit_id().as_str();
    // The SDK's CrudExample: `.limit(2000)`, started_at and ended_at sent as 0.
    let updated = e
        .apply_update_json(
            id,
            r#"{"started_at":0,"ended_at":0,"limit":2000}"#,
            MIDNIGHT,
        )
        .unwrap();
    assert_eq!(updated.limit(), 2000);
    assert_eq!(
        (updated.started_at(), updated.ended_at()),
        (1741536000, 253402300799)
    );
    // Decimal strings too (D1).
    let updated = e
        .apply_update_json(
            id,
            r#"{"started_at":"0","ended_at":"0","limit":"2500"}"#,
            MIDNIGHT,
        )
        .unwrap();
    assert_eq!((updated.limit(), updated.ended_at()), (2500, 253402300799));
    // `limit: 0` stays a value: it blocks.
    let updated = e
        .apply_update_json(id, r#"{"started_at":0,"ended_at":0,"limit":0}"#, MIDNIGHT)
        .unwrap();
    assert_eq!((updated.limit(), updated.started_at()), (0, 1741536000));
    let c = benefit_quota::Subject::consumer("anyone");
    assert!(!e.check(&c, MIDNIGHT).is_allowed());
    // A lone `started_at: 0` beside a real `ended_at`, or without one, is a value.
    let updated = e
        .apply_update_json(id, r#"{"started_at":0,"ended_at":1900000000}"#, MIDNIGHT)
        .unwrap();
    assert_eq!((updated.started_at(), updated.ended_at()), (0, 1900000000));
    let updated = e
        .apply_update_json(id, r#"{"started_at":5}"#, MIDNIGHT)
        .unwrap();
    assert_eq!(updated.started_at(), 5);
    let updated = e
        .apply_update_json(id, r#"{"started_at":0}"#, MIDNIGHT)
        .unwrap();
    assert_eq!(updated.started_at(), 0);
    // A real `started_at` beside `ended_at: 0`: the start is a value, the
    // zeroed end is "not sent" (the end stays).
    let updated = e
        .apply_update_json(id, r#"{"started_at":1741708800,"ended_at":0}"#, MIDNIGHT)
        .unwrap();
    assert_eq!(
        (updated.started_at(), updated.ended_at()),
        (1741708800, 1900000000)
    );
}
