//! Full sync with the platform's listing (SEMANTICS.md S1–S4).

mod common;

use benefit_quota::{BenefitType, Engine, EntityType, Listing, Subject};
use common::*;
use serde_json::{json, Value};

const DEVICES: EntityType = EntityType::EnterpriseAllDevices;
const SINGLE: EntityType = EntityType::SingleDevice;
const POINTS: BenefitType = BenefitType::ResourcePoint;

fn record(id: &str, entity_type: &str, entity_id: Option<&str>, limit: i64, unit: &str) -> Value {
    let mut r = json!({"benefit_id": id, "entity_type": entity_type, "benefit_type": "resource_point",
        "active_mode": "absolute_time", "started_at": 0, "ended_at": 253402300799i64, "limit": limit,
        "status": "valid", "trigger_unit": unit, "trigger_time": 1});
    if let Some(e) = entity_id {
        r["entity_id"] = json!(e);
    }
    r
}

fn page(records: &[Value], next: Option<&str>) -> String {
    json!({"code": 0, "msg": "", "data": {"has_more": next.is_some(), "page_token": next.unwrap_or(""),
        "benefit_infos": records}, "detail": {"logid": "x"}})
    .to_string()
}

/// A complete listing of the all-devices and single-device point rules.
fn listing(all: &[Value], single: &[Value]) -> Listing {
    let mut l = Listing::new();
    assert_eq!(
        l.add_page_json(DEVICES, POINTS, page(all, None)).unwrap(),
        None
    );
    assert_eq!(
        l.add_page_json(SINGLE, POINTS, page(single, None)).unwrap(),
        None
    );
    l
}

fn ids(v: &[benefit_quota::BenefitId]) -> Vec<&str> {
    v.iter().map(|i| i.as_str()).collect()
}

#[test]
fn s2_a_sync_makes_the_covered_scopes_equal_to_the_listing_and_reports_it() {
    let e = Engine::new();
    let local = Rule::all_devices(5).daily().create(&e);
    let other_scope = Rule::all_consumers(7).create(&e);
    e.import_json(
        record("7002", "single_device", Some("d1"), 10, "never").to_string(),
        MIDNIGHT,
    )
    .unwrap();
    e.import_json(
        record("7003", "single_device", Some("d2"), 10, "never").to_string(),
        MIDNIGHT,
    )
    .unwrap();
    let l = listing(
        &[record("7001", "enterprise_all_devices", None, 1000, "day")],
        &[
            record("7002", "single_device", Some("d1"), 20, "never"),
            record("7004", "single_device", Some("d3"), 30, "never"),
        ],
    );
    let report = e.sync(&l, MIDNIGHT).unwrap();
    assert_eq!(ids(&report.created), ["7001", "7004"]);
    assert_eq!(ids(&report.updated), ["7002"]);
    assert!(report.unchanged.is_empty() && report.revived.is_empty());
    let mut withdrawn = ids(&report.withdrawn);
    withdrawn.sort_unstable();
    assert_eq!(withdrawn, [local.as_str(), "7003"]);
    // What applies now is the listing, and nothing outside its scopes moved.
    let d2 = Subject::device("d2");
    assert_eq!(e.get("7003").map(|r| r.status().as_str()), Some("cancel"));
    assert!(e.try_consume(&d2, PTS, units(500), MIDNIGHT).is_allowed());
    assert_eq!(
        e.get(&other_scope).map(|r| r.status().as_str()),
        Some("valid")
    );
    // Idempotent.
    let again = e.sync(&l, MIDNIGHT + 1).unwrap();
    assert!(again.is_unchanged(), "{again:?}");
    assert_eq!(again.unchanged.len(), 3);
}

#[test]
fn s2_counters_of_rules_that_stay_are_kept() {
    let e = Engine::new();
    let first = listing(
        &[record("7001", "enterprise_all_devices", None, 10, "day")],
        &[],
    );
    e.sync(&first, MIDNIGHT).unwrap();
    let d = Subject::device("d");
    assert!(e.try_consume(&d, PTS, units(6), MIDNIGHT + 10).is_allowed());
    let raised = listing(
        &[record("7001", "enterprise_all_devices", None, 12, "day")],
        &[],
    );
    assert_eq!(
        ids(&e.sync(&raised, MIDNIGHT + 20).unwrap().updated),
        ["7001"]
    );
    assert_eq!(used(&e, &d, "7001", MIDNIGHT + 30), units(6));
    assert!(e.try_consume(&d, PTS, units(6), MIDNIGHT + 30).is_allowed());
    assert!(!e.check(&d, MIDNIGHT + 30).is_allowed());
}

#[test]
fn s3_a_withdrawn_rule_listed_again_comes_back_with_its_counters() {
    let e = Engine::new();
    let with = listing(
        &[record("7001", "enterprise_all_devices", None, 10, "never")],
        &[],
    );
    let without = listing(&[], &[]);
    e.sync(&with, MIDNIGHT).unwrap();
    let d = Subject::device("d");
    assert!(e.try_consume(&d, PTS, units(9), MIDNIGHT).is_allowed());
    assert_eq!(
        ids(&e.sync(&without, MIDNIGHT).unwrap().withdrawn),
        ["7001"]
    );
    // Withdrawn: it no longer applies, and evict keeps its counter.
    assert!(e.try_consume(&d, PTS, units(50), MIDNIGHT).is_unlimited());
    assert_eq!(e.evict(MIDNIGHT + 2 * DAY), 0);
    let report = e.sync(&with, MIDNIGHT + 2 * DAY).unwrap();
    assert_eq!(ids(&report.revived), ["7001"]);
    // Back where it was: 9 of 10 spent, not from zero.
    assert_eq!(used(&e, &d, "7001", MIDNIGHT + 2 * DAY), units(9));
    assert!(!e
        .try_consume(&d, PTS, units(2), MIDNIGHT + 2 * DAY)
        .is_allowed());
}

#[test]
fn s3_a_rule_the_platform_cancelled_stays_cancelled() {
    let e = Engine::new();
    let mut cancelled = record("7001", "enterprise_all_devices", None, 10, "never");
    cancelled["status"] = json!("cancel");
    e.sync(&listing(&[cancelled], &[]), MIDNIGHT).unwrap();
    assert!(e.check(&Subject::device("d"), MIDNIGHT).is_unlimited());
    // Listed in force again, it stays cancelled and is reported; the rest
    // of the listing still applies (a whole listing refused for one record
    // would keep every later change from the engine).
    let revived = listing(
        &[record("7001", "enterprise_all_devices", None, 10, "never")],
        &[record("7002", "single_device", Some("d"), 3, "never")],
    );
    let report = e.sync(&revived, MIDNIGHT).unwrap();
    assert_eq!(ids(&report.kept_cancelled), ["7001"]);
    assert_eq!(ids(&report.created), ["7002"]);
    assert_eq!(
        e.get("7001").unwrap().status(),
        benefit_quota::Status::Cancel
    );
    assert!(e.check(&Subject::device("x"), MIDNIGHT).is_unlimited());
    assert!(!e.check(&Subject::device("d"), MIDNIGHT).is_unlimited());
    // The same for a rule cancelled here by an update.
    let e = Engine::new();
    let listed = listing(
        &[record("7001", "enterprise_all_devices", None, 10, "never")],
        &[],
    );
    e.sync(&listed, MIDNIGHT).unwrap();
    e.apply_update_json("7001", r#"{"status":"cancel"}"#, MIDNIGHT)
        .unwrap();
    let report = e.sync(&listed, MIDNIGHT).unwrap();
    assert_eq!(ids(&report.kept_cancelled), ["7001"]);
    assert!(report.is_unchanged());
    assert!(e.check(&Subject::device("d"), MIDNIGHT).is_unlimited());
}

#[test]
fn s1_an_incomplete_listing_changes_nothing() {
    let e = Engine::new();
    let local = Rule::all_devices(5).create(&e);
    let mut l = Listing::new();
    let next = l
        .add_page_json(
            DEVICES,
            POINTS,
            page(
                &[record("7001", "enterprise_all_devices", None, 9, "day")],
                Some("t2"),
            ),
        )
        .unwrap();
    assert_eq!(next.as_deref(), Some("t2"));
    assert!(!l.is_complete());
    let before = e.records();
    let err = e.sync(&l, MIDNIGHT).unwrap_err();
    assert_eq!(err.code().as_u32(), 4000);
    assert!(
        err.msg().starts_with("invalid parameter `has_more`"),
        "{}",
        err.msg()
    );
    assert_eq!(e.records(), before);
    // The second page completes it; then the sync goes through.
    assert_eq!(
        l.add_page_json(DEVICES, POINTS, page(&[], None)).unwrap(),
        None
    );
    let report = e.sync(&l, MIDNIGHT).unwrap();
    assert_eq!(
        (ids(&report.created), ids(&report.withdrawn)),
        (vec!["7001"], vec![local.as_str()])
    );
}

#[test]
fn s1_bad_pages_are_refused_naming_the_field_and_leave_the_listing_as_it_was() {
    let mut l = Listing::new();
    // A record of another scope.
    let err = l
        .add_page_json(
            DEVICES,
            POINTS,
            page(
                &[record("7002", "single_device", Some("d"), 1, "never")],
                None,
            ),
        )
        .unwrap_err();
    assert!(
        err.msg()
            .starts_with("invalid parameter `data.benefit_infos[0].entity_type`"),
        "{}",
        err.msg()
    );
    // An invalid record.
    let err = l
        .add_page_json(
            DEVICES,
            POINTS,
            page(
                &[record("7001", "enterprise_all_devices", None, -1, "day")],
                None,
            ),
        )
        .unwrap_err();
    assert!(
        err.msg()
            .starts_with("invalid parameter `data.benefit_infos[0].limit`"),
        "{}",
        err.msg()
    );
    // No has_more: not a list page.
    let err = l
        .add_page_json(DEVICES, POINTS, r#"{"benefit_infos":[]}"#)
        .unwrap_err();
    assert!(
        err.msg().starts_with("invalid parameter `has_more`"),
        "{}",
        err.msg()
    );
    // More pages announced without a token to ask for them.
    let err = l
        .add_page_json(
            DEVICES,
            POINTS,
            r#"{"has_more":true,"page_token":"","benefit_infos":[]}"#,
        )
        .unwrap_err();
    assert!(
        err.msg().starts_with("invalid parameter `page_token`"),
        "{}",
        err.msg()
    );
    // A page without its list (`null` or left out) is not an empty page:
    // synced as one, it would withdraw every rule of the scope.
    for body in [
        r#"{"code":0,"data":{"has_more":false,"page_token":""}}"#,
        r#"{"code":0,"data":{"has_more":false,"page_token":"","benefit_infos":null}}"#,
    ] {
        let err = l.add_page_json(DEVICES, POINTS, body).unwrap_err();
        assert!(
            err.msg()
                .starts_with("invalid parameter `data.benefit_infos`"),
            "{}",
            err.msg()
        );
    }
    // A record of the wrong type names its field; a record that is not an
    // object (serde would read an array's items by position) is refused.
    let mut float = record("7001", "enterprise_all_devices", None, 1, "day");
    float["limit"] = json!(1.5);
    let mut boolean = record("7001", "enterprise_all_devices", None, 1, "day");
    boolean["started_at"] = json!(true);
    for (rec, field) in [
        (float, "data.benefit_infos[1].limit"),
        (boolean, "data.benefit_infos[1].started_at"),
        (
            json!([
                "7001",
                "enterprise_all_devices",
                null,
                "resource_point",
                "absolute_time",
                0,
                253402300799i64,
                5,
                "valid",
                "never",
                1
            ]),
            "data.benefit_infos[1]",
        ),
    ] {
        let good = record("7000", "enterprise_all_devices", None, 1, "never");
        let err = l
            .add_page_json(DEVICES, POINTS, page(&[good, rec], None))
            .unwrap_err();
        assert!(
            err.msg()
                .starts_with(&format!("invalid parameter `{field}`")),
            "{field}: {}",
            err.msg()
        );
    }
    // A key given twice, in a record or in the envelope, is refused as in
    // a body (D2), naming it; a `Value` would have kept the last one.
    let good = record("7000", "enterprise_all_devices", None, 1, "never").to_string();
    let twice = good.replacen(r#""limit":1"#, r#""limit":1,"limit":500"#, 1);
    assert_ne!(twice, good);
    for (body, field) in [
        (
            format!(
                r#"{{"code":0,"data":{{"has_more":false,"page_token":"","benefit_infos":[{good},{twice}]}}}}"#
            ),
            "data.benefit_infos[1].limit",
        ),
        (
            format!(
                r#"{{"code":0,"code":0,"data":{{"has_more":false,"page_token":"","benefit_infos":[{good}]}}}}"#
            ),
            "code",
        ),
    ] {
        let err = l.add_page_json(DEVICES, POINTS, body).unwrap_err();
        assert!(
            err.msg()
                .starts_with(&format!("invalid parameter `{field}`")),
            "{field}: {}",
            err.msg()
        );
    }
    // The platform's own error is passed on, its code an integer or a
    // decimal string of one (D1).
    for code in ["4100", r#""4100""#] {
        let err = l
            .add_page_json(
                DEVICES,
                POINTS,
                format!(r#"{{"code":{code},"msg":"bad token","detail":{{"logid":"z"}}}}"#),
            )
            .unwrap_err();
        assert_eq!(err.code().as_u32(), 4100);
    }
    assert!(l.is_empty() && l.is_complete());
    // A page after the last one (this one's code a string).
    l.add_page_json(
        DEVICES,
        POINTS,
        page(&[], None).replacen(r#""code":0"#, r#""code":"0""#, 1),
    )
    .unwrap();
    let err = l
        .add_page_json(DEVICES, POINTS, page(&[], None))
        .unwrap_err();
    assert!(
        err.msg().starts_with("invalid parameter `data.has_more`"),
        "{}",
        err.msg()
    );
}

/// An update response (the seed's shape: no scope or reset fields) that
/// leaves out `status`, for a rule the last sync withdrew, keeps it
/// withdrawn: the next listing that has it again revives it (S3), as it
/// would have without the response in between.
#[test]
fn s3_an_update_response_without_status_keeps_a_withdrawn_rule_withdrawn() {
    let e = Engine::new();
    let r = record("7001", "enterprise_all_devices", None, 10, "day");
    e.sync(&listing(std::slice::from_ref(&r), &[]), MIDNIGHT)
        .unwrap();
    let report = e.sync(&listing(&[], &[]), MIDNIGHT).unwrap();
    assert_eq!(ids(&report.withdrawn), ["7001"]);
    let response = json!({"code": 0, "msg": "", "data": {"benefit_id": "7001",
        "benefit_type": "resource_point", "active_mode": "absolute_time",
        "started_at": 0, "ended_at": 253402300799i64, "limit": 20},
        "detail": {"logid": "x"}});
    let got = e
        .import_response_json(response.to_string(), MIDNIGHT)
        .unwrap();
    assert_eq!(got.len(), 1);
    let report = e.sync(&listing(&[r], &[]), MIDNIGHT).unwrap();
    assert_eq!(ids(&report.revived), ["7001"]);
    assert!(report.kept_cancelled.is_empty());
}

/// A record that two pages of one scope both list, as they were (the
/// platform's page boundary moved between them), is one rule; listed again
/// with other values, the sync refuses the listing, changing nothing.
#[test]
fn s1_a_record_listed_again_on_a_later_page_is_one_rule() {
    let e = Engine::new();
    let a = record("7001", "single_device", Some("d1"), 10, "never");
    let b = record("7002", "single_device", Some("d2"), 10, "never");
    let mut l = Listing::new();
    assert!(l
        .add_page_json(DEVICES, POINTS, page(&[], None))
        .unwrap()
        .is_none());
    let next = l
        .add_page_json(SINGLE, POINTS, page(std::slice::from_ref(&a), Some("p2")))
        .unwrap()
        .unwrap();
    assert_eq!(next, "p2");
    l.add_page_json(SINGLE, POINTS, page(&[a.clone(), b.clone()], None))
        .unwrap();
    let report = e.sync(&l, MIDNIGHT).unwrap();
    assert_eq!(ids(&report.created), ["7001", "7002"]);
    // Listed again with another limit: refused as a whole.
    let mut changed = a.clone();
    changed["limit"] = json!(11);
    let mut l = Listing::new();
    l.add_page_json(DEVICES, POINTS, page(&[], None)).unwrap();
    l.add_page_json(SINGLE, POINTS, page(&[a], Some("p2")))
        .unwrap();
    l.add_page_json(SINGLE, POINTS, page(&[changed, b], None))
        .unwrap();
    assert!(e.sync(&l, MIDNIGHT).is_err());
    assert_eq!(e.get("7001").unwrap().limit(), 10);
}

/// S4 under concurrency: while one thread syncs two listings in turn (each
/// changing a devices rule and a consumers rule together), another reads a
/// subject under both and must always find the two limits of one listing,
/// never one of each.
#[test]
fn s4_a_concurrent_reader_sees_a_whole_sync_or_none_of_it() {
    const CONSUMERS: EntityType = EntityType::EnterpriseAllCustomConsumers;
    let e = Engine::new();
    let listing_of = |limit: i64| {
        let mut l = Listing::new();
        l.add_page_json(
            DEVICES,
            POINTS,
            page(
                &[record(
                    "7001",
                    "enterprise_all_devices",
                    None,
                    limit,
                    "never",
                )],
                None,
            ),
        )
        .unwrap();
        l.add_page_json(
            CONSUMERS,
            POINTS,
            page(
                &[record(
                    "7003",
                    "enterprise_all_custom_consumers",
                    None,
                    limit,
                    "never",
                )],
                None,
            ),
        )
        .unwrap();
        l
    };
    let (five, nine) = (listing_of(5), listing_of(9));
    e.sync(&five, MIDNIGHT).unwrap();
    let subject = Subject::device("d1").with_consumer("c1");
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let done = AtomicBool::new(false);
    let reads = AtomicUsize::new(0);
    let seen = std::thread::scope(|s| {
        s.spawn(|| {
            let _done = SetOnDrop(&done);
            for i in 0..400 {
                let l = if i % 2 == 0 { &nine } else { &five };
                e.sync(l, MIDNIGHT).unwrap();
                // Two reads completed after this sync (the second began
                // after it ended) before the next: every state is read
                // whole at least once, and reads overlap the syncs.
                let after = reads.load(Ordering::SeqCst) + 2;
                let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
                while reads.load(Ordering::SeqCst) < after {
                    assert!(std::time::Instant::now() < until, "the reader stalled");
                    std::thread::yield_now();
                }
            }
        });
        let mut seen = std::collections::BTreeSet::new();
        loop {
            let finished = done.load(Ordering::Acquire);
            let limits: Vec<i64> = e
                .usage(&subject, MIDNIGHT)
                .iter()
                .map(|u| u.limit)
                .collect();
            reads.fetch_add(1, Ordering::SeqCst);
            assert!(limits == [5, 5] || limits == [9, 9], "{limits:?}");
            seen.insert(limits[0]);
            if finished {
                break seen;
            }
        }
    });
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), [5, 9]);
}

#[test]
fn s4_a_sync_is_all_or_nothing() {
    let e = Engine::new();
    e.sync(
        &listing(
            &[record("7001", "enterprise_all_devices", None, 10, "day")],
            &[],
        ),
        MIDNIGHT,
    )
    .unwrap();
    // Two daily all-devices rules break D5: nothing of the listing is applied,
    // not even its valid single-device rule.
    let bad = listing(
        &[
            record("7001", "enterprise_all_devices", None, 10, "day"),
            record("7005", "enterprise_all_devices", None, 20, "day"),
        ],
        &[record("7006", "single_device", Some("d"), 1, "never")],
    );
    let before = e.records();
    assert_eq!(e.sync(&bad, MIDNIGHT).unwrap_err().code().as_u32(), 4000);
    assert_eq!(e.records(), before);
    assert!(e.get("7006").is_none());
}
