//! Enforcement semantics: every F16–F22 and D9–D17 as a named scenario with a
//! manual `now`. SEMANTICS.md points here.

mod common;

use benefit_quota::{
    Amount, BenefitType, Decision, DenyReason, Engine, FrozenPolicy, Member, Subject, UtcOffset,
    Window, FOREVER,
};
use common::*;

fn denial_of(d: &Decision) -> (String, DenyReason, Amount, Option<i64>) {
    let den = d
        .denial()
        .unwrap_or_else(|| panic!("expected a denial, got {d:?}"));
    (
        den.benefit_id.as_str().to_owned(),
        den.reason,
        den.remaining,
        den.resets_at,
    )
}

// ---------------------------------------------------------------- F16

#[test]
fn f16_subject_without_rules_is_unlimited_and_untracked() {
    let e = Engine::new();
    Rule::device("other", 1).create(&e);
    let s = Subject::device("free");
    for _ in 0..3 {
        let d = e.try_consume(&s, PTS, units(1_000_000), MIDNIGHT);
        assert_eq!(d, Decision::Allowed(None));
    }
    assert_eq!(
        e.record(&s, PTS, units(5), MIDNIGHT),
        Decision::Allowed(None)
    );
    assert!(e.usage(&s, MIDNIGHT).is_empty());
    assert_eq!(e.counter_count(), 0);
}

// ---------------------------------------------------------------- F17 / D11

#[test]
fn f17_single_device_rule_replaces_all_devices_rule() {
    let e = Engine::new();
    let all = Rule::all_devices(10).create(&e);
    let single = Rule::device("vip", 100).create(&e);
    let vip = Subject::device("vip");
    let plain = Subject::device("plain");
    assert!(e.try_consume(&vip, PTS, units(50), MIDNIGHT).is_allowed());
    assert!(!e.try_consume(&plain, PTS, units(50), MIDNIGHT).is_allowed());
    let applied: Vec<String> = e
        .usage(&vip, MIDNIGHT)
        .iter()
        .map(|u| u.benefit_id.to_string())
        .collect();
    assert_eq!(applied, vec![single]);
    let applied: Vec<String> = e
        .usage(&plain, MIDNIGHT)
        .iter()
        .map(|u| u.benefit_id.to_string())
        .collect();
    assert_eq!(applied, vec![all]);
}

#[test]
fn f17_single_consumer_rule_replaces_all_consumers_rule() {
    let e = Engine::new();
    Rule::all_consumers(1).create(&e);
    let single = Rule::consumer("c1", 3).create(&e);
    let c1 = Subject::consumer("c1");
    assert!(e.try_consume(&c1, PTS, units(3), MIDNIGHT).is_allowed());
    let (id, reason, _, _) = denial_of(&e.try_consume(&c1, PTS, units(1), MIDNIGHT));
    assert_eq!(
        (id.as_str(), reason),
        (single.as_str(), DenyReason::Exhausted)
    );
    assert!(!e
        .try_consume(&Subject::consumer("c2"), PTS, units(2), MIDNIGHT)
        .is_allowed());
}

#[test]
fn d11_precedence_is_per_slot() {
    // A single-device cumulative rule replaces only the all-devices cumulative
    // rule; the all-devices daily rule still applies.
    let e = Engine::new();
    let all_cum = Rule::all_devices(5).create(&e);
    let all_day = Rule::all_devices(3).daily().create(&e);
    let own_cum = Rule::device("d", 100).create(&e);
    let s = Subject::device("d");
    let mut ids: Vec<String> = e
        .usage(&s, MIDNIGHT)
        .iter()
        .map(|u| u.benefit_id.to_string())
        .collect();
    ids.sort();
    let mut want = vec![own_cum.clone(), all_day.clone()];
    want.sort();
    assert_eq!(ids, want);
    assert!(!ids.contains(&all_cum));
    assert!(e.try_consume(&s, PTS, units(3), MIDNIGHT).is_allowed());
    let (id, reason, _, resets) = denial_of(&e.try_consume(&s, PTS, units(1), MIDNIGHT + 10));
    assert_eq!(
        (id, reason, resets),
        (all_day, DenyReason::Exhausted, Some(MIDNIGHT + DAY))
    );
}

#[test]
fn d11_precedence_is_per_benefit_type() {
    // A single-device voice rule does not replace the all-devices point rule.
    let e = Engine::new();
    let all_pts = Rule::all_devices(2).create(&e);
    Rule::device("d", 100)
        .of("voice_unified_duration_system")
        .create(&e);
    let s = Subject::device("d");
    assert!(e.try_consume(&s, PTS, units(2), MIDNIGHT).is_allowed());
    let (id, reason, _, _) = denial_of(&e.try_consume(&s, PTS, units(1), MIDNIGHT));
    assert_eq!((id, reason), (all_pts, DenyReason::Exhausted));
}

#[test]
fn d11_rules_not_in_effect_replace_nothing() {
    let e = Engine::new();
    let all = Rule::all_devices(1).create(&e);
    Rule::device("d", 100).active(0, MIDNIGHT - 1).create(&e); // expired
    Rule::device("d", 100)
        .active(MIDNIGHT + DAY, FOREVER)
        .create(&e); // not started
    let cancelled = Rule::device("d", 100).create(&e);
    e.apply_update_json(&cancelled, r#"{"status":"cancel"}"#, MIDNIGHT)
        .unwrap();
    let s = Subject::device("d");
    assert!(e.try_consume(&s, PTS, units(1), MIDNIGHT).is_allowed());
    let (id, _, _, _) = denial_of(&e.try_consume(&s, PTS, units(1), MIDNIGHT));
    assert_eq!(id, all);
}

#[test]
fn d11_several_single_rules_of_one_slot_all_apply() {
    let e = Engine::new();
    Rule::device("d", 10).create(&e);
    let tight = Rule::device("d", 4).create(&e);
    let s = Subject::device("d");
    assert!(e.try_consume(&s, PTS, units(4), MIDNIGHT).is_allowed());
    let (id, reason, _, _) = denial_of(&e.try_consume(&s, PTS, units(1), MIDNIGHT));
    assert_eq!((id, reason), (tight, DenyReason::Exhausted));
}

#[test]
fn d11_a_single_rule_written_after_calls_replaces_from_the_next_call() {
    // Calls by subject remember that no single rule names a device or a
    // consumer; every configuration write must make them look again.
    for (all, single, s) in [
        (
            Rule::all_devices(2),
            Rule::device("x", 100),
            Subject::device("x"),
        ),
        (
            Rule::all_consumers(2),
            Rule::consumer("x", 100),
            Subject::consumer("x"),
        ),
    ] {
        let e = Engine::new();
        let all = all.create(&e);
        assert!(e.try_consume(&s, PTS, units(2), MIDNIGHT).is_allowed());
        let (id, _, _, _) = denial_of(&e.try_consume(&s, PTS, units(1), MIDNIGHT));
        assert_eq!(id, all);
        // Written after those calls: its own rule replaces the all-scope one.
        let own = single.create(&e);
        assert!(e.try_consume(&s, PTS, units(50), MIDNIGHT).is_allowed());
        assert_eq!(used(&e, &s, &own, MIDNIGHT), units(50));
        // Cancelled: the all-scope rule applies again, with its usage.
        e.apply_update_json(&own, r#"{"status":"cancel"}"#, MIDNIGHT)
            .unwrap();
        let (id, reason, _, _) = denial_of(&e.try_consume(&s, PTS, units(1), MIDNIGHT));
        assert_eq!((id, reason), (all.clone(), DenyReason::Exhausted));
        // One that starts tomorrow replaces it only from then on.
        let later = single.active(MIDNIGHT + DAY, FOREVER).create(&e);
        let (id, _, _, _) = denial_of(&e.try_consume(&s, PTS, units(1), MIDNIGHT + 1));
        assert_eq!(id, all);
        assert!(e
            .try_consume(&s, PTS, units(7), MIDNIGHT + DAY)
            .is_allowed());
        assert_eq!(used(&e, &s, &later, MIDNIGHT + DAY), units(7));
        // The consumer with the device's id (or the device with the
        // consumer's) is another entity: named by its own single rule, it
        // is decided by that rule, whatever the other one's entry records.
        let (other, other_all, other_single) = if s.device_id.is_some() {
            (
                Subject::consumer("x"),
                Rule::all_consumers(1),
                Rule::consumer("x", 100),
            )
        } else {
            (
                Subject::device("x"),
                Rule::all_devices(1),
                Rule::device("x", 100),
            )
        };
        other_all.create(&e);
        let other_own = other_single.create(&e);
        assert!(e
            .try_consume(&s, PTS, units(1), MIDNIGHT + DAY)
            .is_allowed());
        assert!(e
            .try_consume(&other, PTS, units(5), MIDNIGHT + DAY)
            .is_allowed());
        assert_eq!(used(&e, &other, &other_own, MIDNIGHT + DAY), units(5));
    }
}

// ---------------------------------------------------------------- F18

#[test]
fn f18_cumulative_and_daily_limits_apply_together() {
    let e = Engine::new();
    let total = Rule::all_devices(5000).create(&e);
    let daily = Rule::all_devices(1000).daily().create(&e);
    let s = Subject::device("d");
    // Day 0..4: 1000 each day, then blocked for the rest of each day.
    for day in 0..5 {
        let t = MIDNIGHT + day * DAY + 3600;
        assert!(
            e.try_consume(&s, PTS, units(1000), t).is_allowed(),
            "day {day}"
        );
        let (id, reason, rem, resets) = denial_of(&e.check(&s, t + 1));
        assert_eq!(
            id,
            if day < 4 {
                daily.clone()
            } else {
                total.clone()
            }
        );
        assert_eq!(reason, DenyReason::Exhausted);
        assert_eq!(rem, Amount::ZERO);
        assert_eq!(
            resets,
            if day < 4 {
                Some(MIDNIGHT + (day + 1) * DAY)
            } else {
                None
            }
        );
    }
    // Day 5: the daily window is fresh, but the cumulative cap is spent for good.
    let t = MIDNIGHT + 5 * DAY;
    let (id, reason, _, resets) = denial_of(&e.check(&s, t));
    assert_eq!((id, reason, resets), (total, DenyReason::Exhausted, None));
    assert_eq!(used(&e, &s, &daily, t), Amount::ZERO);
}

// ---------------------------------------------------------------- F19 / D10

#[test]
fn f19_expired_rule_no_longer_applies() {
    let e = Engine::new();
    Rule::device("d", 1)
        .active(MIDNIGHT, MIDNIGHT + 100)
        .create(&e);
    let s = Subject::device("d");
    assert!(e.try_consume(&s, PTS, units(1), MIDNIGHT).is_allowed());
    assert!(!e.check(&s, MIDNIGHT + 100).is_allowed());
    assert_eq!(e.check(&s, MIDNIGHT + 101), Decision::Allowed(None));
}

#[test]
fn f19_all_scope_rules_count_each_device_separately() {
    let e = Engine::new();
    let all = Rule::all_devices(2).create(&e);
    let (a, b) = (Subject::device("a"), Subject::device("b"));
    assert!(e.try_consume(&a, PTS, units(2), MIDNIGHT).is_allowed());
    assert!(!e.try_consume(&a, PTS, units(1), MIDNIGHT).is_allowed());
    assert!(e.try_consume(&b, PTS, units(2), MIDNIGHT).is_allowed());
    assert_eq!(used(&e, &a, &all, MIDNIGHT), units(2));
    assert_eq!(used(&e, &b, &all, MIDNIGHT), units(2));
}

#[test]
fn d10_activation_bounds_are_inclusive() {
    let e = Engine::new();
    Rule::device("d", 0)
        .active(MIDNIGHT, MIDNIGHT + 10)
        .create(&e);
    let s = Subject::device("d");
    assert!(e.check(&s, MIDNIGHT - 1).is_allowed());
    assert!(!e.check(&s, MIDNIGHT).is_allowed());
    assert!(!e.check(&s, MIDNIGHT + 10).is_allowed());
    assert!(e.check(&s, MIDNIGHT + 11).is_allowed());
}

#[test]
fn d10_forever_is_the_last_second_of_9999() {
    let e = Engine::new();
    Rule::device("d", 0).create(&e);
    let s = Subject::device("d");
    assert!(!e.check(&s, FOREVER).is_allowed());
    // The second after it is past every time the platform knows: rejected
    // (T1), not decided as "expired, so unlimited".
    assert_eq!(
        e.check(&s, FOREVER + 1).rejection(),
        Some(benefit_quota::Rejection::ImpossibleTime { now: FOREVER + 1 })
    );
}

#[test]
fn d10_seed_rule_with_equal_bounds_is_in_effect_for_one_second() {
    let e = Engine::new();
    Rule::device("d", 0).active(MIDNIGHT, MIDNIGHT).create(&e);
    let s = Subject::device("d");
    assert!(e.check(&s, MIDNIGHT - 1).is_allowed());
    assert!(!e.check(&s, MIDNIGHT).is_allowed());
    assert!(e.check(&s, MIDNIGHT + 1).is_allowed());
}

// ---------------------------------------------------------------- F20 (enterprise family)

fn enterprise_rule(
    e: &Engine,
    entity_type: &'static str,
    id: &str,
    limit: i64,
    unit: &'static str,
) -> String {
    Rule::new(entity_type, Some(id), limit)
        .every(1, unit)
        .create(e)
}

#[test]
fn f20_enterprise_rules_all_apply_and_share_one_pool() {
    let e = Engine::new();
    let ws = enterprise_rule(&e, "coze_workspace", "ws1", 10, "never");
    let user = enterprise_rule(&e, "coze_user_id", "u1", 100, "never");
    let alice = Subject::member(Member {
        coze_user_id: Some("u1"),
        workspace_id: Some("ws1"),
        ..Member::default()
    });
    let bob = Subject::member(Member {
        coze_user_id: Some("u2"),
        workspace_id: Some("ws1"),
        ..Member::default()
    });
    let carol = Subject::member(Member {
        coze_user_id: Some("u3"),
        workspace_id: Some("ws2"),
        ..Member::default()
    });
    assert_eq!(e.usage(&alice, MIDNIGHT).len(), 2);
    assert!(e.try_consume(&alice, PTS, units(6), MIDNIGHT).is_allowed());
    assert!(e.try_consume(&bob, PTS, units(4), MIDNIGHT).is_allowed());
    // The workspace pool is spent: every member of ws1 is blocked.
    for s in [&alice, &bob] {
        let (id, reason, _, _) = denial_of(&e.check(s, MIDNIGHT));
        assert_eq!((id, reason), (ws.clone(), DenyReason::Exhausted));
    }
    assert!(e.check(&carol, MIDNIGHT).is_allowed());
    assert_eq!(used(&e, &alice, &user, MIDNIGHT), units(6));
}

#[test]
fn f20_role_rules_match_the_members_role() {
    let e = Engine::new();
    let guests = enterprise_rule(&e, "coze_role", "EnterpriseGuest", 1, "never");
    let guest = Subject::member(Member {
        coze_role: Some("EnterpriseGuest"),
        ..Member::default()
    });
    let admin = Subject::member(Member {
        coze_role: Some("EnterpriseAdmin"),
        ..Member::default()
    });
    assert!(e.try_consume(&guest, PTS, units(1), MIDNIGHT).is_allowed());
    assert_eq!(denial_of(&e.check(&guest, MIDNIGHT)).0, guests);
    assert_eq!(e.check(&admin, MIDNIGHT), Decision::Allowed(None));
    let org = enterprise_rule(&e, "coze_organization", "org", 0, "never");
    let in_org = Subject::member(Member {
        organization_id: Some("org"),
        ..Member::default()
    });
    assert_eq!(denial_of(&e.check(&in_org, MIDNIGHT)).0, org);
}

#[test]
fn f20_enterprise_rules_ignore_activation_window() {
    let e = Engine::new();
    let r = Rule::new("coze_user_id", Some("u"), 0).active(MIDNIGHT, MIDNIGHT);
    r.create(&e);
    let s = Subject::member(Member {
        coze_user_id: Some("u"),
        ..Member::default()
    });
    assert!(!e.check(&s, 0).is_allowed());
    assert!(!e.check(&s, MIDNIGHT + 365 * DAY).is_allowed());
}

#[test]
fn f20_any_periodic_unit_means_a_calendar_month() {
    // 2024-02-10 12:00 +08:00; February 2024 has 29 days (leap year).
    let feb10 = 1_707_537_600;
    let feb1 = 1_706_716_800; // 2024-02-01 00:00 +08:00
    let mar1 = 1_709_222_400; // 2024-03-01 00:00 +08:00
    for unit in ["minute", "hour", "day"] {
        let e = Engine::new();
        let id = Rule::new("coze_workspace", Some("w"), 5)
            .every(3, unit)
            .create(&e);
        let s = Subject::member(Member {
            workspace_id: Some("w"),
            ..Member::default()
        });
        assert!(e.try_consume(&s, PTS, units(5), feb10).is_allowed());
        let (bid, reason, _, resets) = denial_of(&e.check(&s, mar1 - 1));
        assert_eq!(
            (bid.as_str(), reason, resets),
            (id.as_str(), DenyReason::Exhausted, Some(mar1)),
            "{unit}"
        );
        let report = &e.usage(&s, feb10)[0];
        assert_eq!(
            report.window,
            Some(Window {
                start: feb1,
                end: mar1
            })
        );
        assert!(e.check(&s, mar1).is_allowed(), "{unit}");
    }
}

#[test]
fn f20_calendar_months_handle_february_in_common_years_and_year_end() {
    let e = Engine::new();
    Rule::new("coze_user_id", Some("u"), 1).daily().create(&e);
    let s = Subject::member(Member {
        coze_user_id: Some("u"),
        ..Member::default()
    });
    let feb1_2023 = 1_675_180_800; // 2023-02-01 00:00 +08:00
    let mar1_2023 = feb1_2023 + 28 * DAY;
    assert!(e.try_consume(&s, PTS, units(1), feb1_2023).is_allowed());
    assert_eq!(denial_of(&e.check(&s, mar1_2023 - 1)).3, Some(mar1_2023));
    assert!(e.check(&s, mar1_2023).is_allowed());
    let dec31_2023 = 1_703_952_000; // 2023-12-31 00:00 +08:00
    let jan1_2024 = dec31_2023 + DAY;
    assert!(e.try_consume(&s, PTS, units(1), dec31_2023).is_allowed());
    assert_eq!(denial_of(&e.check(&s, dec31_2023)).3, Some(jan1_2024));
    assert!(e.check(&s, jan1_2024).is_allowed());
}

// ---------------------------------------------------------------- F21 / D14

#[test]
fn f21_usage_is_fractional() {
    let e = Engine::new();
    let id = Rule::device("d", 1).create(&e);
    let s = Subject::device("d");
    let bill: Amount = "0.16".parse().unwrap();
    for _ in 0..6 {
        assert!(e.try_consume(&s, PTS, bill, MIDNIGHT).is_allowed());
    }
    assert_eq!(used(&e, &s, &id, MIDNIGHT), "0.96".parse().unwrap());
    let (_, reason, rem, _) = denial_of(&e.try_consume(&s, PTS, bill, MIDNIGHT));
    assert_eq!(
        (reason, rem.to_string()),
        (DenyReason::Insufficient, "0.04".to_owned())
    );
    assert!(e
        .try_consume(&s, PTS, "0.04".parse().unwrap(), MIDNIGHT)
        .is_allowed());
    assert_eq!(denial_of(&e.check(&s, MIDNIGHT)).1, DenyReason::Exhausted);
}

#[test]
fn d14_limits_too_large_for_the_counters_saturate() {
    let e = Engine::new();
    let id = Rule::device("d", i64::MAX).create(&e);
    let s = Subject::device("d");
    let d = e.try_consume(&s, PTS, units(1_000_000_000), MIDNIGHT);
    assert_eq!(
        d.headroom().unwrap().remaining,
        Amount::from_micros(u64::MAX - 1_000_000_000_000_000)
    );
    // A debit whose sum passes the counter's range fits (the sum saturates
    // at the limit) and leaves nothing.
    let to_one_below = u64::MAX - 1 - 1_000_000_000_000_000;
    let _ = e.record(&s, PTS, Amount::from_micros(to_one_below), MIDNIGHT);
    let d = e.try_consume(&s, PTS, Amount::from_micros(2), MIDNIGHT);
    assert_eq!(d.headroom().unwrap().remaining, Amount::ZERO);
    // Post-paid usage saturates the counter at the top of its range: only then is it blocked.
    let _ = e.record(&s, PTS, Amount::MAX, MIDNIGHT);
    assert_eq!(used(&e, &s, &id, MIDNIGHT), Amount::MAX);
    assert_eq!(denial_of(&e.check(&s, MIDNIGHT)).1, DenyReason::Exhausted);
}

/// Found by the `ops` fuzzer (third session of 2026-11-26): when a debit
/// saturates two counters under limits too large for them, both have
/// nothing left after it, and the tie goes to the rule created first (D13),
/// whichever had less left before.
#[test]
fn d14_a_debit_that_saturates_two_rules_names_the_first_created() {
    for through_handle in [false, true] {
        let e = Engine::new();
        let day = Rule::all_devices(i64::MAX).daily().create(&e);
        Rule::all_devices(i64::MAX).create(&e);
        let s = Subject::device("d");
        let mut h = e.handle(&s);
        let mut spend = |amount: Amount, at: i64| {
            if through_handle {
                h.try_consume(PTS, amount, at)
            } else {
                e.try_consume(&s, PTS, amount, at)
            }
        };
        assert!(spend(units(5), MIDNIGHT - 10).is_allowed());
        // A new day: the cumulative rule has 5 points less left than the daily one.
        assert!(spend(units(1), MIDNIGHT).is_allowed());
        let d = spend(Amount::from_micros(u64::MAX - 75), MIDNIGHT);
        let h = d.headroom().unwrap();
        assert_eq!(
            (h.benefit_id.as_str(), h.remaining, h.resets_at),
            (day.as_str(), Amount::ZERO, Some(MIDNIGHT + DAY)),
            "through a handle: {through_handle}"
        );
    }
    // The same over two owners (a device that is also a consumer), which
    // the general path decides.
    let e = Engine::new();
    let devices = Rule::all_devices(i64::MAX).create(&e);
    Rule::all_consumers(i64::MAX).create(&e);
    assert!(e
        .try_consume(&Subject::consumer("c"), PTS, units(5), MIDNIGHT)
        .is_allowed());
    let both = Subject::device("d").with_consumer("c");
    assert!(e.try_consume(&both, PTS, units(1), MIDNIGHT).is_allowed());
    let d = e.try_consume(&both, PTS, Amount::from_micros(u64::MAX - 75), MIDNIGHT);
    let h = d.headroom().unwrap();
    assert_eq!(
        (h.benefit_id.as_str(), h.remaining),
        (devices.as_str(), Amount::ZERO)
    );
}

// ---------------------------------------------------------------- F22

#[test]
fn f22_either_daily_quota_blocks_the_device_for_the_day() {
    let e = Engine::new();
    Rule::all_devices(100).daily().create(&e);
    let voice = Rule::all_devices(60)
        .daily()
        .of("voice_unified_duration_system")
        .create(&e);
    let s = Subject::device("d");
    assert!(e
        .try_consume(&s, VOICE, units(60), MIDNIGHT + 10)
        .is_allowed());
    // Voice is spent: points are refused too, until the next local midnight.
    let d = e.try_consume(&s, PTS, units(1), MIDNIGHT + 20);
    assert_eq!(
        denial_of(&d),
        (
            voice,
            DenyReason::Exhausted,
            Amount::ZERO,
            Some(MIDNIGHT + DAY)
        )
    );
    assert!(e
        .try_consume(&s, PTS, units(1), MIDNIGHT + DAY)
        .is_allowed());
}

// ---------------------------------------------------------------- D9

#[test]
fn d9_every_family_the_subject_carries_must_pass() {
    let e = Engine::new();
    Rule::device("d", 10).create(&e);
    let c = Rule::consumer("c", 1).create(&e);
    let u = Rule::new("coze_user_id", Some("u"), 5).create(&e);
    let s = Subject::device("d").with_consumer("c").with_member(Member {
        coze_user_id: Some("u"),
        ..Member::default()
    });
    assert_eq!(e.usage(&s, MIDNIGHT).len(), 3);
    assert!(e.try_consume(&s, PTS, units(1), MIDNIGHT).is_allowed());
    let (id, reason, _, _) = denial_of(&e.try_consume(&s, PTS, units(1), MIDNIGHT));
    assert_eq!((id, reason), (c, DenyReason::Exhausted));
    // Without the consumer the subject passes; the user pool saw the debit.
    let s2 = Subject::device("d").with_member(Member {
        coze_user_id: Some("u"),
        ..Member::default()
    });
    assert!(e.try_consume(&s2, PTS, units(1), MIDNIGHT).is_allowed());
    assert_eq!(used(&e, &s2, &u, MIDNIGHT), units(2));
}

#[test]
fn d9_device_and_consumer_ids_are_separate_namespaces() {
    let e = Engine::new();
    Rule::all_devices(1).create(&e);
    Rule::all_consumers(1).create(&e);
    assert!(e
        .try_consume(&Subject::device("x"), PTS, units(1), MIDNIGHT)
        .is_allowed());
    assert!(e
        .try_consume(&Subject::consumer("x"), PTS, units(1), MIDNIGHT)
        .is_allowed());
}

// ---------------------------------------------------------------- D12

#[test]
fn d12_frozen_rule_blocks_by_default_and_keeps_usage() {
    let e = Engine::new();
    Rule::all_devices(100).create(&e);
    let own = Rule::device("d", 10).create(&e);
    let s = Subject::device("d");
    assert!(e.try_consume(&s, PTS, units(4), MIDNIGHT).is_allowed());
    e.apply_update_json(&own, r#"{"status":"frozen"}"#, MIDNIGHT)
        .unwrap();
    let d = e.try_consume(&s, PTS, units(1), MIDNIGHT);
    assert_eq!(
        denial_of(&d),
        (own.clone(), DenyReason::Frozen, units(6), None)
    );
    // Post-paid usage is still booked while frozen.
    let _ = e.record(&s, PTS, units(1), MIDNIGHT);
    e.apply_update_json(&own, r#"{"status":"valid"}"#, MIDNIGHT)
        .unwrap();
    assert_eq!(used(&e, &s, &own, MIDNIGHT), units(5));
    assert!(e.try_consume(&s, PTS, units(5), MIDNIGHT).is_allowed());
}

#[test]
fn d12_frozen_rule_still_replaces_the_all_scope_rule_under_block() {
    let e = Engine::new();
    Rule::all_devices(100).create(&e);
    let own = Rule::device("d", 10).status("frozen").create(&e);
    let s = Subject::device("d");
    let ids: Vec<String> = e
        .usage(&s, MIDNIGHT)
        .iter()
        .map(|u| u.benefit_id.to_string())
        .collect();
    assert_eq!(ids, vec![own]);
}

#[test]
fn d12_suspend_policy_treats_frozen_rules_as_not_in_effect() {
    let e = Engine::builder()
        .frozen_policy(FrozenPolicy::Suspend)
        .build();
    let all = Rule::all_devices(2).create(&e);
    Rule::device("d", 10).status("frozen").create(&e);
    let s = Subject::device("d");
    assert!(e.try_consume(&s, PTS, units(2), MIDNIGHT).is_allowed());
    assert_eq!(denial_of(&e.check(&s, MIDNIGHT)).0, all);
    let ws = Rule::new("coze_workspace", Some("w"), 0)
        .status("frozen")
        .create(&e);
    let m = Subject::member(Member {
        workspace_id: Some("w"),
        ..Member::default()
    });
    assert_eq!(e.check(&m, MIDNIGHT), Decision::Allowed(None));
    e.apply_update_json(&ws, r#"{"status":"valid"}"#, MIDNIGHT)
        .unwrap();
    assert!(!e.check(&m, MIDNIGHT).is_allowed());
}

// ---------------------------------------------------------------- D13

#[test]
fn d13_check_changes_nothing() {
    let e = Engine::new();
    Rule::all_devices(5).daily().create(&e);
    let s = Subject::device("d");
    for _ in 0..10 {
        assert!(e.check(&s, MIDNIGHT).is_allowed());
    }
    assert_eq!(e.counter_count(), 0);
    assert_eq!(e.usage(&s, MIDNIGHT)[0].used, Amount::ZERO);
}

#[test]
fn d13_try_consume_is_all_or_nothing_across_rules() {
    let e = Engine::new();
    let big = Rule::device("d", 10).create(&e);
    let small = Rule::device("d", 3).daily().create(&e);
    let s = Subject::device("d");
    assert!(e.try_consume(&s, PTS, units(2), MIDNIGHT).is_allowed());
    let (id, reason, rem, _) = denial_of(&e.try_consume(&s, PTS, units(2), MIDNIGHT));
    assert_eq!(
        (id, reason, rem),
        (small.clone(), DenyReason::Insufficient, units(1))
    );
    // Neither rule was debited by the refused request.
    assert_eq!(used(&e, &s, &big, MIDNIGHT), units(2));
    assert_eq!(used(&e, &s, &small, MIDNIGHT), units(2));
}

#[test]
fn d13_a_blocked_type_blocks_other_types_but_headroom_is_per_type() {
    let e = Engine::new();
    Rule::device("d", 10).create(&e);
    Rule::device("d", 1)
        .of("voice_unified_duration_custom")
        .create(&e);
    let s = Subject::device("d");
    // Asking for 5 points is fine while voice has room.
    let d = e.try_consume(&s, PTS, units(5), MIDNIGHT);
    assert_eq!(d.headroom().unwrap().remaining, units(5));
    assert_eq!(
        d.headroom().unwrap().benefit_type,
        BenefitType::ResourcePoint
    );
    let _ = e.record(
        &s,
        BenefitType::VoiceUnifiedDurationCustom,
        units(1),
        MIDNIGHT,
    );
    assert!(!e.try_consume(&s, PTS, units(1), MIDNIGHT).is_allowed());
}

/// A rule of another type applies (D13: it can block the subject), so a
/// spend of a type no rule counts names it, as `check` would, and is not
/// unlimited (T2), by every path: by subject (the general path, then the
/// thread's copy once the device is known), exact and leased handles,
/// batches, `record`.
#[test]
fn d13_a_spend_of_a_type_no_rule_counts_names_the_rule_of_another_type() {
    for all in [false, true] {
        let e = Engine::new();
        let id = if all {
            Rule::all_devices(10).daily().create(&e)
        } else {
            Rule::device("d", 10).daily().create(&e)
        };
        let s = Subject::device("d");
        let _ = e.record(&s, PTS, units(4), MIDNIGHT);
        let names = |d: &Decision, what: &str| {
            assert!(d.is_allowed(), "{what} (all-devices: {all}): {d:?}");
            assert!(!d.is_unlimited(), "{what} (all-devices: {all}): {d:?}");
            let h = d.headroom().unwrap();
            assert_eq!(
                (
                    h.benefit_id.as_str(),
                    h.benefit_type,
                    h.remaining,
                    h.resets_at
                ),
                (id.as_str(), PTS, units(6), Some(MIDNIGHT + DAY)),
                "{what} (all-devices: {all})"
            );
        };
        for round in 0..2 {
            names(
                &e.try_consume(&s, VOICE, units(1), MIDNIGHT + round),
                "try_consume",
            );
            names(&e.record(&s, VOICE, units(1), MIDNIGHT + round), "record");
        }
        let mut h = e.handle(&s);
        names(&h.try_consume(VOICE, units(1), MIDNIGHT), "exact handle");
        names(&h.record(VOICE, units(1), MIDNIGHT), "exact handle record");
        let mut l = e.handle(&s).with_lease(units(2));
        for _ in 0..2 {
            names(&l.try_consume(VOICE, units(1), MIDNIGHT), "leased handle");
            names(&l.record(VOICE, units(1), MIDNIGHT), "leased handle record");
        }
        drop(l);
        let reqs = [benefit_quota::Request {
            subject: s,
            benefit_type: VOICE,
            amount: units(1),
        }];
        let mut out = Vec::new();
        e.try_consume_many(&reqs, MIDNIGHT, &mut out);
        names(&out[0], "batch");
        let mut hs = [e.handle(&s)];
        let mut reqs: Vec<_> = hs
            .iter_mut()
            .map(|h| benefit_quota::HandleRequest {
                handle: h,
                benefit_type: VOICE,
                amount: units(1),
            })
            .collect();
        out.clear();
        e.try_consume_many_handles(&mut reqs, MIDNIGHT, &mut out);
        names(&out[0], "handle batch");
        // Nothing of voice was counted anywhere.
        assert_eq!(used(&e, &s, &id, MIDNIGHT), units(4));
    }
}

#[test]
fn d13_record_books_past_the_limit_and_reports_the_state_after() {
    let e = Engine::new();
    let id = Rule::device("d", 10).create(&e);
    let s = Subject::device("d");
    let d = e.record(&s, PTS, units(7), MIDNIGHT);
    assert_eq!(d.headroom().unwrap().remaining, units(3));
    let d = e.record(&s, PTS, units(7), MIDNIGHT);
    assert_eq!(
        denial_of(&d),
        (id.clone(), DenyReason::Exhausted, Amount::ZERO, None)
    );
    assert_eq!(used(&e, &s, &id, MIDNIGHT), units(14));
}

#[test]
fn d13_limit_zero_blocks_everything() {
    let e = Engine::new();
    Rule::device("d", 0).create(&e);
    let s = Subject::device("d");
    assert_eq!(
        denial_of(&e.try_consume(&s, PTS, Amount::ZERO, MIDNIGHT)).1,
        DenyReason::Exhausted
    );
}

// ---------------------------------------------------------------- D15

#[test]
fn d15_daily_windows_reset_at_local_midnight_utc8() {
    let e = Engine::new();
    Rule::all_devices(1)
        .daily()
        .active(MIDNIGHT + 13 * 3600, FOREVER)
        .create(&e);
    let s = Subject::device("d");
    // 23:59:59 local is still the same day; 00:00:00 is a new one.
    assert!(e
        .try_consume(&s, PTS, units(1), MIDNIGHT + 13 * 3600)
        .is_allowed());
    assert_eq!(
        denial_of(&e.check(&s, MIDNIGHT + DAY - 1)).3,
        Some(MIDNIGHT + DAY)
    );
    assert!(e.check(&s, MIDNIGHT + DAY).is_allowed());
}

#[test]
fn d15_offset_is_configurable() {
    let e = Engine::builder().utc_offset(UtcOffset::UTC).build();
    Rule::all_devices(1).daily().create(&e);
    let s = Subject::device("d");
    let utc_midnight = MIDNIGHT + 8 * 3600; // 2025-03-12 00:00 UTC
    assert!(e
        .try_consume(&s, PTS, units(1), utc_midnight - 1)
        .is_allowed());
    assert_eq!(
        denial_of(&e.check(&s, utc_midnight - 1)).3,
        Some(utc_midnight)
    );
    assert!(e.try_consume(&s, PTS, units(1), utc_midnight).is_allowed());
}

#[test]
fn d15_n_unit_windows_are_anchored_at_started_at() {
    let e = Engine::new();
    // Every 3 hours from 10:20 local, floored to 10:00.
    let start = MIDNIGHT + 10 * 3600 + 20 * 60;
    Rule::all_devices(1)
        .every(3, "hour")
        .active(start, FOREVER)
        .create(&e);
    let s = Subject::device("d");
    let t = MIDNIGHT + 14 * 3600; // in [13:00, 16:00)
    assert!(e.try_consume(&s, PTS, units(1), t).is_allowed());
    let report = &e.usage(&s, t)[0];
    assert_eq!(
        report.window,
        Some(Window {
            start: MIDNIGHT + 13 * 3600,
            end: MIDNIGHT + 16 * 3600
        })
    );
    assert!(!e.check(&s, MIDNIGHT + 16 * 3600 - 1).is_allowed());
    assert!(e.check(&s, MIDNIGHT + 16 * 3600).is_allowed());
}

#[test]
fn d15_minute_and_multi_day_windows() {
    let e = Engine::new();
    Rule::device("m", 1)
        .every(5, "minute")
        .active(MIDNIGHT + 90, FOREVER)
        .create(&e);
    Rule::device("w", 1)
        .every(7, "day")
        .active(MIDNIGHT, FOREVER)
        .create(&e);
    let (m, w) = (Subject::device("m"), Subject::device("w"));
    assert!(e
        .try_consume(&m, PTS, units(1), MIDNIGHT + 100)
        .is_allowed());
    assert_eq!(
        denial_of(&e.check(&m, MIDNIGHT + 100)).3,
        Some(MIDNIGHT + 360)
    );
    assert!(e
        .try_consume(&w, PTS, units(1), MIDNIGHT + 3 * DAY)
        .is_allowed());
    assert_eq!(
        denial_of(&e.check(&w, MIDNIGHT + 6 * DAY)).3,
        Some(MIDNIGHT + 7 * DAY)
    );
}

#[test]
fn d15_huge_periods_near_forever_do_not_overflow() {
    let e = Engine::new();
    let max_minutes = FOREVER / 60;
    Rule::device("d", 1)
        .every(max_minutes, "minute")
        .active(FOREVER, FOREVER)
        .create(&e);
    let s = Subject::device("d");
    assert!(e.try_consume(&s, PTS, units(1), FOREVER).is_allowed());
    let (_, _, _, resets) = denial_of(&e.check(&s, FOREVER));
    assert!(resets.unwrap() > FOREVER);
    // Times past either end are refused before any period arithmetic (T1).
    for now in [i64::MIN, -1, FOREVER + 1, i64::MAX] {
        assert!(e.check(&s, now).rejection().is_some(), "{now}");
        assert!(e.try_consume(&s, PTS, units(1), now).rejection().is_some());
    }
}

// ---------------------------------------------------------------- D16

#[test]
fn d16_update_mid_window_keeps_usage() {
    let e = Engine::new();
    let id = Rule::all_devices(10).daily().create(&e);
    let s = Subject::device("d");
    let _ = e.try_consume(&s, PTS, units(6), MIDNIGHT + 100);
    e.apply_update_json(
        &id,
        r#"{"limit":8,"ended_at":"253402300799"}"#,
        MIDNIGHT + 200,
    )
    .unwrap();
    assert_eq!(used(&e, &s, &id, MIDNIGHT + 300), units(6));
    assert_eq!(
        denial_of(&e.try_consume(&s, PTS, units(3), MIDNIGHT + 300)).2,
        units(2)
    );
}

#[test]
fn d16_lowering_the_limit_below_usage_blocks_until_the_next_reset() {
    let e = Engine::new();
    let id = Rule::all_devices(10).daily().create(&e);
    let s = Subject::device("d");
    let _ = e.try_consume(&s, PTS, units(6), MIDNIGHT + 100);
    e.apply_update_json(&id, r#"{"limit":4}"#, MIDNIGHT + 200)
        .unwrap();
    assert_eq!(
        denial_of(&e.check(&s, MIDNIGHT + 200)),
        (
            id.clone(),
            DenyReason::Exhausted,
            Amount::ZERO,
            Some(MIDNIGHT + DAY)
        )
    );
    assert!(e
        .try_consume(&s, PTS, units(4), MIDNIGHT + DAY)
        .is_allowed());
}

#[test]
fn d16_cumulative_usage_survives_every_update() {
    let e = Engine::new();
    let id = Rule::device("d", 10).create(&e);
    let s = Subject::device("d");
    let _ = e.try_consume(&s, PTS, units(7), MIDNIGHT);
    e.apply_update_json(
        &id,
        r#"{"started_at":5,"ended_at":253402300000,"limit":9,"trigger_time":4}"#,
        MIDNIGHT,
    )
    .unwrap();
    e.apply_update_json(&id, r#"{"status":"frozen"}"#, MIDNIGHT)
        .unwrap();
    e.apply_update_json(&id, r#"{"status":"valid"}"#, MIDNIGHT)
        .unwrap();
    assert_eq!(used(&e, &s, &id, MIDNIGHT + 400 * DAY), units(7));
}

#[test]
fn d16_changing_the_period_keeps_usage_only_if_the_window_is_unchanged() {
    let e = Engine::new();
    let id = Rule::all_devices(10)
        .daily()
        .active(MIDNIGHT, FOREVER)
        .create(&e);
    let s = Subject::device("d");
    let _ = e.try_consume(&s, PTS, units(6), MIDNIGHT + 3600);
    // 1 day → 24 hours anchored at the same midnight: same window, usage kept.
    e.apply_update_json(
        &id,
        r#"{"trigger_unit":"hour","trigger_time":24}"#,
        MIDNIGHT + 7200,
    )
    .unwrap();
    assert_eq!(used(&e, &s, &id, MIDNIGHT + 7200), units(6));
    // 24 hours → 2 days: the window containing now becomes [0 h, 48 h): usage restarts.
    e.apply_update_json(
        &id,
        r#"{"trigger_unit":"day","trigger_time":2}"#,
        MIDNIGHT + 7200,
    )
    .unwrap();
    assert_eq!(used(&e, &s, &id, MIDNIGHT + 7200), Amount::ZERO);
    assert_eq!(e.usage(&s, MIDNIGHT + 7200)[0].lifetime, units(6));
    let _ = e.try_consume(&s, PTS, units(1), MIDNIGHT + 7300);
    // Moving started_at by whole windows keeps the window: usage kept.
    e.apply_update_json(&id, r#"{"started_at":1741536000}"#, MIDNIGHT + 7400)
        .unwrap();
    assert_eq!(used(&e, &s, &id, MIDNIGHT + 7400), units(1));
    // Moving it by one day shifts the window: usage restarts.
    e.apply_update_json(&id, r#"{"started_at":1741622400}"#, MIDNIGHT + 7500)
        .unwrap();
    assert_eq!(used(&e, &s, &id, MIDNIGHT + 7500), Amount::ZERO);
}

#[test]
fn d16_a_reset_is_not_undone_by_changing_the_period_back() {
    let e = Engine::new();
    let id = Rule::all_devices(10).daily().create(&e);
    let s = Subject::device("d");
    assert!(e
        .try_consume(&s, PTS, units(6), MIDNIGHT + 100)
        .is_allowed());
    e.apply_update_json(&id, r#"{"trigger_time":2}"#, MIDNIGHT + 200)
        .unwrap();
    e.apply_update_json(&id, r#"{"trigger_time":1}"#, MIDNIGHT + 300)
        .unwrap();
    assert_eq!(used(&e, &s, &id, MIDNIGHT + 300), Amount::ZERO);
}

#[test]
fn d16_switching_between_never_and_periodic_starts_from_zero() {
    let e = Engine::new();
    let id = Rule::device("d", 10).create(&e);
    let s = Subject::device("d");
    let _ = e.try_consume(&s, PTS, units(6), MIDNIGHT);
    e.apply_update_json(&id, r#"{"trigger_unit":"day"}"#, MIDNIGHT)
        .unwrap();
    assert_eq!(used(&e, &s, &id, MIDNIGHT), Amount::ZERO);
    let _ = e.try_consume(&s, PTS, units(2), MIDNIGHT);
    e.apply_update_json(&id, r#"{"trigger_unit":"never"}"#, MIDNIGHT)
        .unwrap();
    assert_eq!(used(&e, &s, &id, MIDNIGHT), Amount::ZERO);
    assert_eq!(e.usage(&s, MIDNIGHT)[0].lifetime, units(8));
}

#[test]
fn d16_periodic_counters_start_at_zero_in_each_window_and_keep_a_lifetime_total() {
    let e = Engine::new();
    let id = Rule::all_devices(3).daily().create(&e);
    let s = Subject::device("d");
    for day in 0..4 {
        assert!(e
            .try_consume(&s, PTS, units(3), MIDNIGHT + day * DAY)
            .is_allowed());
    }
    let r = &e.usage(&s, MIDNIGHT + 3 * DAY)[0];
    assert_eq!(
        (r.benefit_id.as_str(), r.used, r.lifetime),
        (id.as_str(), units(3), units(12))
    );
}

#[test]
fn d16_a_late_request_cannot_reopen_a_rolled_over_window() {
    let e = Engine::new();
    Rule::all_devices(3).daily().create(&e);
    let s = Subject::device("d");
    assert!(e
        .try_consume(&s, PTS, units(3), MIDNIGHT + DAY)
        .is_allowed());
    // A request stamped one second before the new day arrives afterwards.
    assert!(!e
        .try_consume(&s, PTS, units(1), MIDNIGHT + DAY - 1)
        .is_allowed());
}

#[test]
fn d16_a_late_request_reports_the_newer_window() {
    let e = Engine::new();
    Rule::all_devices(5).daily().create(&e);
    let s = Subject::device("d");
    assert!(e
        .try_consume(&s, PTS, units(1), MIDNIGHT + DAY)
        .is_allowed());
    // Stamped in the day before, it counts (and resets) with the new day.
    let d = e.try_consume(&s, PTS, units(1), MIDNIGHT + DAY - 1);
    let h = d.headroom().unwrap();
    assert_eq!(
        (h.remaining, h.resets_at),
        (units(3), Some(MIDNIGHT + 2 * DAY))
    );
}

// ---------------------------------------------------------------- D17

#[test]
fn d17_denials_name_the_rule_reason_remaining_and_reset() {
    let e = Engine::new();
    let cum = Rule::device("d", 100).create(&e);
    let day = Rule::device("d", 10).daily().create(&e);
    let s = Subject::device("d");
    let _ = e.try_consume(&s, PTS, units(8), MIDNIGHT + 5);
    let d = e.try_consume(&s, PTS, units(5), MIDNIGHT + 6);
    assert_eq!(
        denial_of(&d),
        (
            day.clone(),
            DenyReason::Insufficient,
            units(2),
            Some(MIDNIGHT + DAY)
        )
    );
    let _ = e.record(&s, PTS, units(92), MIDNIGHT + 7);
    // Both exhausted: the cumulative cap (no reset) is the one that lasts.
    let d = e.check(&s, MIDNIGHT + 8);
    assert_eq!(
        denial_of(&d),
        (cum, DenyReason::Exhausted, Amount::ZERO, None)
    );
}

/// D17's ranking, step by step: frozen before any exhausted rule, then
/// the latest reset (the previous test), then exhausted before
/// insufficient at the same reset, then the rule created first.
#[test]
fn d17_the_denial_reported_is_the_one_that_lasts_longest() {
    let s = Subject::device("d").with_consumer("c");
    // Frozen beats a cumulative cap reached (which never resets either).
    let e = Engine::new();
    let cum = Rule::device("d", 100).create(&e);
    let frozen = Rule::device("d", 10).daily().status("frozen").create(&e);
    assert!(!e
        .record(&Subject::device("d"), PTS, units(100), MIDNIGHT + 5)
        .is_allowed());
    let d = e.check(&Subject::device("d"), MIDNIGHT + 6);
    // (the record was booked on the frozen rule too: nothing is left there)
    assert_eq!(
        denial_of(&d),
        (frozen, DenyReason::Frozen, Amount::ZERO, None)
    );
    assert_ne!(denial_of(&d).0, cum);
    // Same reset (local midnight): exhausted beats insufficient, though the
    // insufficient rule was created first.
    let e = Engine::new();
    let consumer = Rule::consumer("c", 20).daily().create(&e);
    let device = Rule::device("d", 10).daily().create(&e);
    assert!(e.try_consume(&s, PTS, units(10), MIDNIGHT + 5).is_allowed());
    assert!(e
        .try_consume(&Subject::consumer("c"), PTS, units(5), MIDNIGHT + 5)
        .is_allowed());
    let d = e.try_consume(&s, PTS, units(6), MIDNIGHT + 6);
    assert_eq!(
        denial_of(&d),
        (
            device.clone(),
            DenyReason::Exhausted,
            Amount::ZERO,
            Some(MIDNIGHT + DAY)
        )
    );
    // Both exhausted at the same reset: the rule created first.
    assert!(e
        .try_consume(&Subject::consumer("c"), PTS, units(5), MIDNIGHT + 7)
        .is_allowed());
    let d = e.check(&s, MIDNIGHT + 8);
    assert_eq!(
        denial_of(&d),
        (
            consumer,
            DenyReason::Exhausted,
            Amount::ZERO,
            Some(MIDNIGHT + DAY)
        )
    );
}

#[test]
fn d17_allowed_decisions_report_the_tightest_rule() {
    let e = Engine::new();
    Rule::device("d", 100).create(&e);
    let day = Rule::device("d", 10).daily().create(&e);
    let s = Subject::device("d");
    let d = e.try_consume(&s, PTS, units(4), MIDNIGHT + 5);
    let h = d.headroom().unwrap();
    assert_eq!(
        (h.benefit_id.as_str(), h.remaining, h.resets_at),
        (day.as_str(), units(6), Some(MIDNIGHT + DAY))
    );
}

#[test]
fn d17_a_device_under_all_devices_rules_hears_of_its_tightest_rule() {
    // One owner's counters (the usual device): the path most calls take.
    let e = Engine::new();
    let cum = Rule::all_devices(16).create(&e);
    let day = Rule::all_devices(10).daily().create(&e);
    let s = Subject::device("d");
    let tightest = |units_: u64, at: i64| {
        let d = e.try_consume(&s, PTS, units(units_), at);
        let h = d.headroom().unwrap();
        (h.benefit_id.to_string(), h.remaining, h.resets_at)
    };
    // 12 left in all, 6 today
    let day_ends = |n: i64| Some(MIDNIGHT + n * DAY);
    assert_eq!(
        tightest(4, MIDNIGHT + 5),
        (day.to_string(), units(6), day_ends(1))
    );
    // 10 left in all, 8 the next day
    assert_eq!(
        tightest(2, MIDNIGHT + DAY),
        (day.to_string(), units(8), day_ends(2))
    );
    assert_eq!(
        tightest(1, MIDNIGHT + 2 * DAY),
        (cum.to_string(), units(9), None)
    );
    // 8 left in all, 9 the day after
    assert_eq!(
        tightest(1, MIDNIGHT + 3 * DAY),
        (cum.to_string(), units(8), None)
    );
}
