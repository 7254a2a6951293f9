//! No silent fail-open: an impossible `now` (milliseconds by mistake, a
//! negative time) is rejected with its own outcome and changes nothing, "no
//! rule applies" is told apart from "allowed with headroom", and an engine
//! that was never configured says so.

mod common;

use benefit_quota::{Decision, Engine, HandleRequest, Rejection, Request, Subject, FOREVER};
use common::*;

const MILLIS: i64 = MIDNIGHT * 1000;

fn rejected(d: &Decision, now: i64) {
    assert_eq!(
        d.rejection(),
        Some(Rejection::ImpossibleTime { now }),
        "{d:?}"
    );
    assert!(!d.is_allowed() && d.denial().is_none() && d.headroom().is_none());
}

#[test]
fn a_now_in_milliseconds_is_rejected_by_every_call_and_counts_nothing() {
    let e = Engine::new();
    let daily = Rule::all_devices(10).daily().create(&e);
    let s = Subject::device("d");
    assert!(e.try_consume(&s, PTS, units(3), MIDNIGHT).is_allowed());
    for now in [MILLIS, -1, i64::MIN, i64::MAX, FOREVER + 1] {
        rejected(&e.check(&s, now), now);
        rejected(&e.try_consume(&s, PTS, units(1), now), now);
        rejected(&e.record(&s, PTS, units(1), now), now);
        let mut out = Vec::new();
        let reqs = [Request {
            subject: s,
            benefit_type: PTS,
            amount: units(1),
        }];
        e.try_consume_many(&reqs, now, &mut out);
        assert_eq!(out.len(), 1);
        rejected(&out[0], now);
        let mut h = e.handle(&s);
        rejected(&h.try_consume(PTS, units(1), now), now);
        let mut out = Vec::new();
        e.try_consume_many_handles(
            &mut [HandleRequest {
                handle: &mut h,
                benefit_type: PTS,
                amount: units(1),
            }],
            now,
            &mut out,
        );
        rejected(&out[0], now);
        assert!(e.usage(&s, now).is_empty());
        assert_eq!(e.evict(now), 0);
    }
    assert_eq!(used(&e, &s, &daily, MIDNIGHT), units(3));
    // The platform's range itself is decided.
    assert!(e.check(&s, 0).is_allowed());
    assert!(e.check(&s, FOREVER).is_allowed());
}

#[test]
fn a_leased_handle_rejects_an_impossible_now_without_touching_its_lease() {
    let e = Engine::new();
    let daily = Rule::all_devices(100).daily().create(&e);
    let s = Subject::device("d");
    let mut h = e.handle(&s).with_lease(units(10));
    assert!(h.try_consume(PTS, units(1), MIDNIGHT).is_allowed());
    rejected(&h.try_consume(PTS, units(1), MILLIS), MILLIS);
    rejected(&h.check(MILLIS), MILLIS);
    assert!(h.try_consume(PTS, units(1), MIDNIGHT + 1).is_allowed());
    drop(h);
    assert_eq!(used(&e, &s, &daily, MIDNIGHT + 1), units(2));
    // An engine with no rule at all: a leased handle's lock-free path has
    // nothing to check but the time, and still rejects it.
    let empty = Engine::new();
    let mut h = empty.handle(&s).with_lease(units(10));
    assert!(h.try_consume(PTS, units(1), MIDNIGHT).is_unlimited());
    rejected(&h.try_consume(PTS, units(1), MILLIS), MILLIS);
}

#[test]
fn configuration_writes_at_an_impossible_now_are_refused_and_change_nothing() {
    let e = Engine::new();
    let id = Rule::all_devices(10).daily().create(&e);
    let err = e
        .apply_update_json(&id, r#"{"limit":20}"#, MILLIS)
        .unwrap_err();
    assert_eq!(err.code().as_u32(), 4000);
    assert!(
        err.msg().starts_with("invalid parameter `now`"),
        "{}",
        err.msg()
    );
    assert_eq!(e.get(&id).map(|r| r.limit()), Some(10));
    let err = e
        .import_json(
            r#"{"benefit_id":"77","entity_type":"enterprise_all_devices","benefit_type":"resource_point","active_mode":"absolute_time","started_at":0,"ended_at":253402300799,"limit":5,"status":"valid","trigger_unit":"never","trigger_time":1}"#,
            -5,
        )
        .unwrap_err();
    assert!(
        err.msg().starts_with("invalid parameter `now`"),
        "{}",
        err.msg()
    );
    assert!(e.get("77").is_none());
}

#[test]
fn unlimited_and_allowed_with_headroom_are_told_apart() {
    let e = Engine::new();
    Rule::all_devices(10).create(&e);
    let limited = e.try_consume(&Subject::device("d"), PTS, units(1), MIDNIGHT);
    assert!(limited.is_allowed() && !limited.is_unlimited());
    assert_eq!(limited.headroom().map(|h| h.remaining), Some(units(9)));
    let free = e.try_consume(&Subject::consumer("c"), PTS, units(1), MIDNIGHT);
    assert!(free.is_allowed() && free.is_unlimited());
    assert!(free.headroom().is_none());
}

#[test]
fn an_engine_says_whether_it_was_ever_configured() {
    let e = Engine::new();
    assert!(!e.is_configured());
    // Not configured: every call is allowed as unlimited, which a gateway
    // can refuse to trust.
    assert!(e.check(&Subject::device("d"), MIDNIGHT).is_unlimited());
    // A failed write configures nothing.
    assert!(e.create_json("{}").is_err());
    assert!(!e.is_configured());
    Rule::all_devices(10).create(&e);
    assert!(e.is_configured());
    let synced = Engine::new();
    synced
        .import_response_json(
            r#"{"code":0,"msg":"","data":{"has_more":false,"page_token":"","benefit_infos":[]}}"#,
            MIDNIGHT,
        )
        .unwrap();
    assert!(synced.is_configured());
}
