//! Validation: every D4–D6 rule, each failure with the exact code, a message
//! naming the field, and an engine left exactly as it was.

mod common;

use benefit_quota::{ApiError, BenefitInfo, Engine, Subject, FOREVER};
use common::*;
use serde_json::{json, Value};

/// Subjects whose usage is part of every before/after snapshot.
fn subjects() -> [Subject<'static>; 2] {
    [Subject::device("d"), Subject::device("other")]
}

/// An engine with some rules and some usage on them.
fn engine() -> (Engine, String, String) {
    let e = Engine::new();
    let all = Rule::all_devices(100).daily().create(&e);
    let own = Rule::device("d", 50).create(&e);
    let _ = e.try_consume(&Subject::device("d"), PTS, units(3), MIDNIGHT);
    let _ = e.try_consume(&Subject::device("other"), PTS, units(4), MIDNIGHT);
    (e, all, own)
}

#[track_caller]
fn assert_rejects<T: std::fmt::Debug>(
    e: &Engine,
    code: u32,
    field: &str,
    f: impl FnOnce(&Engine) -> Result<T, ApiError>,
) {
    let before = snapshot(e, &subjects(), MIDNIGHT);
    let err = f(e).expect_err("expected an error");
    assert_eq!(err.code().as_u32(), code, "{}", err.msg());
    assert!(
        err.msg().contains(&format!("`{field}`")),
        "message {:?} does not name `{field}`",
        err.msg()
    );
    assert_eq!(
        snapshot(e, &subjects(), MIDNIGHT),
        before,
        "state changed after an error"
    );
}

fn base_create() -> Value {
    json!({
        "entity_type": "single_device",
        "entity_id": "x",
        "benefit_info": {
            "benefit_type": "resource_point", "active_mode": "absolute_time",
            "started_at": 0, "ended_at": FOREVER, "limit": 10
        }
    })
}

fn create_with(path: &[&str], value: Value) -> String {
    let mut v = base_create();
    let mut cur = &mut v;
    for p in &path[..path.len() - 1] {
        cur = &mut cur[*p];
    }
    let last = path[path.len() - 1];
    if value.is_null() {
        cur.as_object_mut().unwrap().remove(last);
    } else {
        cur[last] = value;
    }
    v.to_string()
}

fn info(path: &str, value: Value) -> String {
    create_with(&["benefit_info", path], value)
}

#[test]
fn d4_create_defaults_status_valid_and_trigger_never() {
    let e = Engine::new();
    let i: BenefitInfo = e.create_json(base_create().to_string()).unwrap();
    let v = serde_json::to_value(&i).unwrap();
    assert_eq!(
        (
            v["status"].as_str(),
            v["trigger_unit"].as_str(),
            v["trigger_time"].as_u64()
        ),
        (Some("valid"), Some("never"), Some(1))
    );
}

#[test]
fn d4_active_mode_must_be_absolute_time() {
    let (e, _, own) = engine();
    assert_rejects(&e, 4000, "benefit_info.active_mode", |e| {
        e.create_json(info("active_mode", json!("relative_time")))
    });
    assert_rejects(&e, 4000, "benefit_info.active_mode", |e| {
        e.create_json(info("active_mode", Value::Null))
    });
    assert_rejects(&e, 4000, "active_mode", |e| {
        e.apply_update_json(&own, r#"{"active_mode":"ABSOLUTE_TIME"}"#, MIDNIGHT)
    });
}

#[test]
fn d4_timestamps_are_ordered_and_in_range() {
    let (e, _, own) = engine();
    assert_rejects(&e, 4000, "benefit_info.started_at", |e| {
        e.create_json(info("started_at", json!(-1)))
    });
    assert_rejects(&e, 4000, "benefit_info.ended_at", |e| {
        e.create_json(info("ended_at", json!(FOREVER + 1)))
    });
    assert_rejects(&e, 4000, "benefit_info.ended_at", |e| {
        e.create_json(
            create_with(&["benefit_info", "started_at"], json!(10))
                .replace(&format!("\"ended_at\":{FOREVER}"), "\"ended_at\":9"),
        )
    });
    assert_rejects(&e, 4000, "benefit_info.started_at", |e| {
        e.create_json(info("started_at", Value::Null))
    });
    // The merged record is validated: moving only started_at past ended_at fails.
    e.apply_update_json(&own, r#"{"ended_at":1000}"#, MIDNIGHT)
        .unwrap();
    assert_rejects(&e, 4000, "ended_at", |e| {
        e.apply_update_json(&own, r#"{"started_at":1001}"#, MIDNIGHT)
    });
    // Equal bounds are allowed (the seed's own example).
    e.apply_update_json(&own, r#"{"started_at":1000}"#, MIDNIGHT)
        .unwrap();
}

#[test]
fn d4_limit_is_a_non_negative_64_bit_integer() {
    let (e, _, own) = engine();
    assert_rejects(&e, 4000, "benefit_info.limit", |e| {
        e.create_json(info("limit", json!(-1)))
    });
    assert_rejects(&e, 4000, "benefit_info.limit", |e| {
        e.create_json(info("limit", Value::Null))
    });
    assert_rejects(&e, 4000, "benefit_info.limit", |e| {
        e.create_json(info("limit", json!(9_223_372_036_854_775_808u64)))
    });
    assert_rejects(&e, 4000, "limit", |e| {
        e.apply_update_json(&own, r#"{"limit":"9223372036854775808"}"#, MIDNIGHT)
    });
    assert_rejects(&e, 4000, "limit", |e| {
        e.apply_update_json(&own, r#"{"limit":1.0}"#, MIDNIGHT)
    });
    assert_rejects(&e, 4000, "limit", |e| {
        e.apply_update_json(&own, r#"{"limit":true}"#, MIDNIGHT)
    });
    assert_rejects(&e, 4000, "limit", |e| {
        e.apply_update_json(&own, r#"{"limit":"1e3"}"#, MIDNIGHT)
    });
    let max = e
        .apply_update_json(&own, r#"{"limit":"9223372036854775807"}"#, MIDNIGHT)
        .unwrap();
    assert_eq!(max.limit(), i64::MAX);
}

#[test]
fn d4_enum_strings_must_be_known() {
    let (e, _, own) = engine();
    assert_rejects(&e, 4000, "entity_type", |e| {
        e.create_json(create_with(&["entity_type"], json!("all_devices")))
    });
    assert_rejects(&e, 4000, "entity_type", |e| {
        e.create_json(create_with(&["entity_type"], Value::Null))
    });
    assert_rejects(&e, 4000, "benefit_info.benefit_type", |e| {
        e.create_json(info("benefit_type", json!("points")))
    });
    assert_rejects(&e, 4000, "benefit_info.status", |e| {
        e.create_json(info("status", json!("Valid")))
    });
    assert_rejects(&e, 4000, "benefit_info.trigger_unit", |e| {
        e.create_json(info("trigger_unit", json!("week")))
    });
    assert_rejects(&e, 4000, "status", |e| {
        e.apply_update_json(&own, r#"{"status":"deleted"}"#, MIDNIGHT)
    });
    assert_rejects(&e, 4000, "trigger_unit", |e| {
        e.apply_update_json(&own, r#"{"trigger_unit":"month"}"#, MIDNIGHT)
    });
    assert_rejects(&e, 4000, "status", |e| {
        e.apply_update_json(&own, r#"{"status":1}"#, MIDNIGHT)
    });
}

#[test]
fn d4_trigger_time_bounds() {
    let (e, all, _) = engine();
    let with = |unit: &str, time: Value| {
        create_with(&["benefit_info", "trigger_unit"], json!(unit)).replace(
            "\"limit\":10",
            &format!("\"limit\":10,\"trigger_time\":{time}"),
        )
    };
    assert_rejects(&e, 4000, "benefit_info.trigger_time", |e| {
        e.create_json(with("day", json!(0)))
    });
    assert_rejects(&e, 4000, "benefit_info.trigger_time", |e| {
        e.create_json(with("minute", json!(-5)))
    });
    assert_rejects(&e, 4000, "benefit_info.trigger_time", |e| {
        e.create_json(with("day", json!(FOREVER / 86_400 + 1)))
    });
    assert_rejects(&e, 4000, "benefit_info.trigger_time", |e| {
        e.create_json(with("minute", json!(i64::MAX)))
    });
    assert!(e.create_json(with("day", json!(FOREVER / 86_400))).is_ok());
    assert_rejects(&e, 4000, "trigger_time", |e| {
        e.apply_update_json(&all, r#"{"trigger_time":0}"#, MIDNIGHT)
    });
}

#[test]
fn d4_never_stores_trigger_time_one_whatever_was_sent() {
    let e = Engine::new();
    for sent in [json!(0), json!(-3), json!(77), json!("9223372036854775807")] {
        let body = info("trigger_time", sent)
            .replace("\"limit\":10", "\"limit\":10,\"trigger_unit\":\"never\"");
        assert_eq!(e.create_json(body).unwrap().trigger_time(), 1);
    }
    let id = Rule::device("z", 1).create(&e);
    assert_eq!(
        e.apply_update_json(&id, r#"{"trigger_time":30}"#, 0)
            .unwrap()
            .trigger_time(),
        1
    );
}

#[test]
fn d4_entity_id_rules() {
    let (e, _, _) = engine();
    assert_rejects(&e, 4000, "entity_id", |e| {
        e.create_json(create_with(&["entity_id"], Value::Null))
    });
    assert_rejects(&e, 4000, "entity_id", |e| {
        e.create_json(create_with(&["entity_id"], json!("")))
    });
    assert_rejects(&e, 4000, "entity_id", |e| {
        e.create_json(create_with(&["entity_id"], json!("x".repeat(257))))
    });
    assert_rejects(&e, 4000, "entity_id", |e| {
        e.create_json(create_with(&["entity_id"], json!(42)))
    });
    assert!(e
        .create_json(create_with(&["entity_id"], json!("x".repeat(256))))
        .is_ok());
    // enterprise_all_*: ignored and stored as absent.
    let all = e
        .create_json(create_with(
            &["entity_type"],
            json!("enterprise_all_custom_consumers"),
        ))
        .unwrap();
    assert_eq!(all.entity_id(), None);
}

#[test]
fn d4_coze_role_ids_are_the_three_role_names() {
    let (e, _, _) = engine();
    let role = |id: &str| {
        create_with(&["entity_type"], json!("coze_role"))
            .replace("\"entity_id\":\"x\"", &format!("\"entity_id\":\"{id}\""))
    };
    assert_rejects(&e, 4000, "entity_id", |e| {
        e.create_json(role("EnterpriseOwner"))
    });
    assert_rejects(&e, 4000, "entity_id", |e| {
        e.create_json(role("enterprisemember"))
    });
    for r in ["EnterpriseGuest", "EnterpriseMember", "EnterpriseAdmin"] {
        assert!(e.create_json(role(r)).is_ok(), "{r}");
    }
}

#[test]
fn d4_enterprise_family_accepts_only_resource_point() {
    let (e, _, _) = engine();
    for t in ["coze_user_id", "coze_workspace", "coze_organization"] {
        let body = create_with(&["entity_type"], json!(t))
            .replace("resource_point", "voice_unified_duration_custom");
        assert_rejects(&e, 4000, "benefit_info.benefit_type", |e| {
            e.create_json(&body)
        });
    }
}

#[test]
fn d5_one_cumulative_and_one_periodic_rule_per_all_scope_and_type() {
    let (e, all_daily, _) = engine();
    // A second periodic all-devices point rule is refused, whatever its unit.
    let periodic = Rule::all_devices(5).every(2, "hour").body();
    assert_rejects(&e, 4000, "benefit_info.trigger_unit", |e| {
        e.create_json(&periodic)
    });
    // One cumulative is fine, a second is refused.
    let cum = Rule::all_devices(5).create(&e);
    assert_rejects(&e, 4000, "benefit_info.trigger_unit", |e| {
        e.create_json(Rule::all_devices(6).body())
    });
    // Other benefit types and the consumer family are separate slots.
    Rule::all_devices(5)
        .of("voice_unified_duration_system")
        .create(&e);
    Rule::all_consumers(5).create(&e);
    // Updating the cumulative one into a periodic one would make two periodic rules.
    assert_rejects(&e, 4000, "trigger_unit", |e| {
        e.apply_update_json(&cum, r#"{"trigger_unit":"day"}"#, MIDNIGHT)
    });
    // Once the periodic one is cancelled, the slot is free.
    e.apply_update_json(&all_daily, r#"{"status":"cancel"}"#, MIDNIGHT)
        .unwrap();
    e.apply_update_json(&cum, r#"{"trigger_unit":"day"}"#, MIDNIGHT)
        .unwrap();
    Rule::all_devices(6).create(&e);
}

#[test]
fn d5_applies_to_imports_too() {
    let (e, all_daily, _) = engine();
    let mut rec = serde_json::to_value(e.get(&all_daily).unwrap()).unwrap();
    rec["benefit_id"] = json!("platform-2");
    assert_rejects(&e, 4000, "trigger_unit", |e| {
        e.import_json(rec.to_string(), MIDNIGHT)
    });
    // Two periodic all-scope rules in one imported list are refused as a whole.
    let fresh = Engine::new();
    let mut a = rec.clone();
    a["benefit_id"] = json!("a");
    let list = json!({"benefit_infos": [a, rec], "has_more": false, "page_token": ""});
    let err = fresh.import_response_json(list.to_string(), 0).unwrap_err();
    assert!(err.msg().contains("`trigger_unit`"), "{}", err.msg());
    assert_eq!(fresh.rule_count(), 0);
}

#[test]
fn d6_cancel_is_terminal() {
    let (e, _, own) = engine();
    e.apply_update_json(&own, r#"{"status":"cancel"}"#, MIDNIGHT)
        .unwrap();
    assert_rejects(&e, 4000, "status", |e| {
        e.apply_update_json(&own, r#"{"status":"valid"}"#, MIDNIGHT)
    });
    assert_rejects(&e, 4000, "status", |e| {
        e.apply_update_json(&own, r#"{"limit":1}"#, MIDNIGHT)
    });
    let mut rec = serde_json::to_value(e.get(&own).unwrap()).unwrap();
    rec["status"] = json!("valid");
    assert_rejects(&e, 4000, "status", |e| {
        e.import_json(rec.to_string(), MIDNIGHT)
    });
    // The cancelled rule never applies again: "d" falls back to the all-devices rule.
    let ids: Vec<String> = e
        .usage(&Subject::device("d"), MIDNIGHT)
        .iter()
        .map(|u| u.benefit_id.to_string())
        .collect();
    assert!(!ids.contains(&own));
}

#[test]
fn d6_unknown_benefit_id_is_4200() {
    let (e, _, _) = engine();
    assert_rejects(&e, 4200, "benefit_id", |e| {
        e.apply_update_json("nope", r#"{"limit":1}"#, MIDNIGHT)
    });
    assert_rejects(&e, 4200, "benefit_id", |e| {
        e.apply_update_json("", "{}", MIDNIGHT)
    });
}

#[test]
fn import_cannot_change_a_rules_scope_or_type() {
    let (e, _, own) = engine();
    let rec = serde_json::to_value(e.get(&own).unwrap()).unwrap();
    for (field, value) in [
        ("entity_id", json!("someone-else")),
        ("benefit_type", json!("voice_unified_duration_custom")),
        ("entity_type", json!("single_custom_consumer")),
    ] {
        let mut r = rec.clone();
        r[field] = value;
        assert_rejects(&e, 4000, field, |e| e.import_json(r.to_string(), MIDNIGHT));
    }
    let mut r = rec.clone();
    r.as_object_mut().unwrap().remove("benefit_id");
    assert_rejects(&e, 4000, "benefit_id", |e| {
        e.import_json(r.to_string(), MIDNIGHT)
    });
}

#[test]
fn import_of_a_list_is_all_or_nothing_and_names_the_item() {
    let (e, _, _) = engine();
    let good = json!({"benefit_id": "p1", "entity_type": "single_device", "entity_id": "q", "benefit_type": "resource_point",
        "active_mode": "absolute_time", "started_at": 0, "ended_at": 10, "limit": 1});
    let mut bad = good.clone();
    bad["benefit_id"] = json!("p2");
    bad["limit"] = json!(-4);
    let resp = json!({"code": 0, "msg": "", "data": {"benefit_infos": [good, bad]}});
    assert_rejects(&e, 4000, "data.benefit_infos[1].limit", |e| {
        e.import_response_json(resp.to_string(), MIDNIGHT)
    });
    // An error the platform answered is passed on with its own code and
    // message (a code it does not list becomes 5000), importing nothing.
    let before = snapshot(&e, &subjects(), MIDNIGHT);
    let err_env = json!({"code": 4101, "msg": "no permission", "detail": {"logid": "z"}});
    let err = e
        .import_response_json(err_env.to_string(), MIDNIGHT)
        .unwrap_err();
    assert_eq!(err.code().as_u32(), 4101);
    assert_eq!(err.msg(), "the platform answered code 4101: no permission");
    let err_env = json!({"code": 700012006, "msg": "throttled"});
    let err = e
        .import_response_json(err_env.to_string(), MIDNIGHT)
        .unwrap_err();
    assert_eq!(err.code().as_u32(), 5000);
    assert!(err.msg().contains("700012006") && err.msg().contains("throttled"));
    assert_rejects(&e, 4000, "code", |e| {
        e.import_response_json(r#"{"code":"x","data":{}}"#, MIDNIGHT)
    });
    assert_eq!(snapshot(&e, &subjects(), MIDNIGHT), before);
}

#[test]
fn malformed_json_names_the_body_or_the_field() {
    let (e, _, own) = engine();
    assert_rejects(&e, 4000, "body", |e| e.create_json("{"));
    assert_rejects(&e, 4000, "body", |e| e.create_json("[]"));
    assert_rejects(&e, 4000, "body", |e| {
        e.apply_update_json(&own, "", MIDNIGHT)
    });
    assert_rejects(&e, 4000, "body", |e| {
        e.apply_update_json(&own, b"\xff\xfe{}".as_slice(), MIDNIGHT)
    });
    assert_rejects(&e, 4000, "benefit_info", |e| {
        e.create_json(r#"{"entity_type":"single_device","entity_id":"x"}"#)
    });
    assert_rejects(&e, 4000, "benefit_info", |e| {
        e.create_json(r#"{"entity_type":"single_device","entity_id":"x","benefit_info":7}"#)
    });
    assert_rejects(&e, 4000, "limit", |e| {
        e.apply_update_json(&own, r#"{"limit":1,"limit":2}"#, MIDNIGHT)
    });
}

#[test]
fn list_query_validation() {
    let (e, _, _) = engine();
    let base = "entity_type=single_device&benefit_type=resource_point";
    assert_rejects(&e, 4000, "entity_type", |e| {
        e.list_query_string("benefit_type=resource_point")
    });
    assert_rejects(&e, 4000, "benefit_type", |e| {
        e.list_query_string("entity_type=single_device")
    });
    assert_rejects(&e, 4000, "page_size", |e| {
        e.list_query_string(format!("{base}&page_size=0"))
    });
    assert_rejects(&e, 4000, "page_size", |e| {
        e.list_query_string(format!("{base}&page_size=201"))
    });
    assert_rejects(&e, 4000, "page_size", |e| {
        e.list_query_string(format!("{base}&page_size=ten"))
    });
    assert_rejects(&e, 4000, "status", |e| {
        e.list_query_string(format!("{base}&status=gone"))
    });
    assert_rejects(&e, 4000, "page_token", |e| {
        e.list_query_string(format!("{base}&page_token=1.0000000000000000"))
    });
    assert_rejects(&e, 4000, "page_token", |e| {
        e.list_query_string(format!("{base}&page_token=garbage"))
    });
    assert!(e.list_query_string(format!("{base}&page_size=200")).is_ok());
    assert!(e.list_query_string(format!("{base}&page_size=1")).is_ok());
}

#[test]
fn page_tokens_are_bound_to_their_query() {
    let e = Engine::new();
    for i in 0..3 {
        Rule::device(&format!("d{i}"), 1).create(&e);
    }
    let q = "entity_type=single_device&benefit_type=resource_point&page_size=1";
    let token = e.list_query_string(q).unwrap().page_token;
    assert!(!token.is_empty());
    assert!(e
        .list_query_string(format!("{q}&page_token={token}"))
        .is_ok());
    assert_rejects(&e, 4000, "page_token", |e| {
        e.list_query_string(format!("{q}&status=valid&page_token={token}"))
    });
    // Another engine did not issue it.
    assert_rejects(&Engine::new(), 4000, "page_token", |e| {
        e.list_query_string(format!("{q}&page_token={token}"))
    });
}

#[test]
fn f2_every_entity_type_is_accepted_with_a_fitting_entity_id() {
    let e = Engine::new();
    for (t, id) in [
        ("enterprise_all_devices", None),
        ("single_device", Some("sn-1")),
        ("enterprise_all_custom_consumers", None),
        ("single_custom_consumer", Some("c-1")),
        ("coze_user_id", Some("u-1")),
        ("coze_role", Some("EnterpriseMember")),
        ("coze_workspace", Some("ws-1")),
        ("coze_organization", Some("org-1")),
    ] {
        let info = e
            .create_json(Rule::new(t, id, 1).body())
            .unwrap_or_else(|err| panic!("{t}: {err}"));
        assert_eq!(info.entity_type().as_str(), t);
        assert_eq!(info.entity_id().map(|i| i.as_str()), id);
    }
}

#[test]
fn f3_benefit_types_points_and_voice_seconds() {
    let e = Engine::new();
    for bt in [
        "resource_point",
        "voice_unified_duration_system",
        "voice_unified_duration_custom",
    ] {
        let info = e.create_json(Rule::device("d", 1).of(bt).body()).unwrap();
        assert_eq!(info.benefit_type().as_str(), bt);
    }
}

#[test]
fn d5_is_checked_on_the_state_an_import_produces() {
    let rec = |id: &str, status: &str| {
        json!({"benefit_id": id, "entity_type": "enterprise_all_devices", "benefit_type": "resource_point",
            "active_mode": "absolute_time", "started_at": 0, "ended_at": FOREVER, "limit": 5,
            "status": status, "trigger_unit": "day", "trigger_time": 1})
    };
    for order in [["a", "b"], ["b", "a"]] {
        let e = Engine::new();
        e.import_json(rec("a", "valid").to_string(), MIDNIGHT)
            .unwrap();
        // The platform cancelled its daily rule "a" and created "b": a mirror
        // re-importing the list must accept it, in either order.
        let items: Vec<Value> = order
            .iter()
            .map(|id| {
                if *id == "a" {
                    rec("a", "cancel")
                } else {
                    rec("b", "valid")
                }
            })
            .collect();
        let list = json!({"benefit_infos": items});
        e.import_response_json(list.to_string(), MIDNIGHT).unwrap();
        assert_eq!(e.get("a").unwrap().status().as_str(), "cancel");
        assert_eq!(e.get("b").unwrap().status().as_str(), "valid");
        // A third daily rule still clashes with "b".
        let err = e
            .import_json(rec("c", "valid").to_string(), MIDNIGHT)
            .unwrap_err();
        assert!(
            err.msg().contains("`trigger_unit`") && err.msg().contains("(b)"),
            "{}",
            err.msg()
        );
    }
}
