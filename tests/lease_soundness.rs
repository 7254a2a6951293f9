//! Leases under other callers (SEMANTICS.md L6–L8): each test is one way a
//! gateway mixes a leased handle with other calls, and each failed before
//! leases watched their owners' stamps, skipped shared pools and were given
//! back on drop. A leased call must never admit what the exact path would
//! deny; the only difference allowed is others' under-admission while a
//! lease is held.

mod common;

use benefit_quota::{Amount, DenyReason, Engine, Member, Subject};
use common::*;

/// Spends one point at a time through `h` until a call is denied; returns
/// how many were admitted (at most `cap`).
fn spend_ones<E: std::ops::Deref<Target = Engine>>(
    h: &mut benefit_quota::SubjectHandle<E>,
    now: i64,
    cap: u64,
) -> u64 {
    let mut admitted = 0;
    while admitted < cap && h.try_consume(PTS, units(1), now).is_allowed() {
        admitted += 1;
    }
    admitted
}

#[test]
fn another_callers_record_ends_the_lease() {
    let e = Engine::new();
    let daily = Rule::all_devices(100).daily().create(&e);
    let d = Subject::device("sn-1");
    let mut h = e.handle(&d).with_lease(units(10));
    assert!(h.try_consume(PTS, units(1), MIDNIGHT).is_allowed());
    // Post-paid usage booked by another path: the real usage is now 96.
    let _ = e.record(&d, PTS, units(95), MIDNIGHT + 1);
    // The handle admits exactly the 4 points the limit has left, no more.
    assert_eq!(spend_ones(&mut h, MIDNIGHT + 2, 50), 4);
    let denied = h.try_consume(PTS, units(1), MIDNIGHT + 2);
    assert_eq!(
        denied.denial().map(|x| x.reason),
        Some(DenyReason::Exhausted)
    );
    drop(h);
    assert_eq!(used(&e, &d, &daily, MIDNIGHT + 3), units(100));
}

#[test]
fn a_record_past_the_limit_denies_the_next_leased_call() {
    let e = Engine::new();
    Rule::all_devices(100).daily().create(&e);
    let d = Subject::device("sn-1");
    let mut h = e.handle(&d).with_lease(units(10));
    assert!(h.try_consume(PTS, units(1), MIDNIGHT).is_allowed());
    let _ = e.record(&d, PTS, units(120), MIDNIGHT + 1);
    let denied = h.try_consume(PTS, units(1), MIDNIGHT + 2);
    assert_eq!(
        denied.denial().map(|x| x.reason),
        Some(DenyReason::Exhausted)
    );
    assert!(!h.check(MIDNIGHT + 2).is_allowed());
}

#[test]
fn another_benefit_type_exhausted_elsewhere_blocks_the_leased_handle() {
    let e = Engine::new();
    Rule::all_devices(100).daily().create(&e);
    let voice = Rule::all_devices(60)
        .daily()
        .of("voice_unified_duration_system")
        .create(&e);
    let d = Subject::device("sn-1");
    let mut h = e.handle(&d).with_lease(units(10));
    assert!(h.try_consume(PTS, units(1), MIDNIGHT).is_allowed());
    // Another caller spends all the voice: the device is blocked (D13).
    assert!(e
        .try_consume(&d, VOICE, units(60), MIDNIGHT + 1)
        .is_allowed());
    let denied = h.try_consume(PTS, units(1), MIDNIGHT + 2);
    let denial = denied
        .denial()
        .expect("blocked by the exhausted voice rule");
    assert_eq!(denial.reason, DenyReason::Exhausted);
    assert_eq!(denial.benefit_id.as_str(), voice);
    assert!(!h.check(MIDNIGHT + 2).is_allowed());
}

#[test]
fn a_voice_rule_first_used_elsewhere_is_seen_by_the_leased_handle() {
    // The voice rule has no counter when the lease is granted (nothing spent
    // yet); the first voice debit, by another caller, creates it.
    let e = Engine::new();
    Rule::all_devices(100).daily().create(&e);
    Rule::device("sn-1", 60)
        .daily()
        .of("voice_unified_duration_system")
        .create(&e);
    let d = Subject::device("sn-1");
    let mut h = e.handle(&d).with_lease(units(10));
    assert!(h.try_consume(PTS, units(1), MIDNIGHT).is_allowed());
    assert!(e
        .try_consume(&d, VOICE, units(60), MIDNIGHT + 1)
        .is_allowed());
    assert!(!h.try_consume(PTS, units(1), MIDNIGHT + 2).is_allowed());
}

#[test]
fn a_shared_pool_is_never_leased_so_every_member_is_served() {
    let e = Engine::new();
    let pool = Rule::new("coze_organization", Some("org-1"), 100).create(&e);
    let users: Vec<String> = (0..20).map(|i| format!("user-{i}")).collect();
    let subjects: Vec<Subject<'_>> = users
        .iter()
        .map(|u| {
            Subject::member(Member {
                coze_user_id: Some(u),
                organization_id: Some("org-1"),
                ..Member::default()
            })
        })
        .collect();
    let mut handles: Vec<_> = subjects
        .iter()
        .map(|s| e.handle(s).with_lease(units(10)))
        .collect();
    for h in &mut handles {
        assert!(h.try_consume(PTS, units(1), MIDNIGHT).is_allowed());
    }
    // Nothing is held ahead: the pool reads exactly what was spent.
    assert_eq!(used(&e, &subjects[0], &pool, MIDNIGHT), units(20));
    // And the pool can be spent to its last unit by the members.
    let mut admitted = 20;
    for round in 0..200 {
        let h = &mut handles[round % 20];
        admitted += u64::from(h.try_consume(PTS, units(1), MIDNIGHT).is_allowed());
    }
    assert_eq!(admitted, 100);
}

#[test]
fn dropped_handles_give_their_leases_back() {
    let e = Engine::new();
    let cap = Rule::all_devices(100).create(&e); // cumulative: for good
    let d = Subject::device("sn-1");
    for _ in 0..10 {
        let mut h = e.handle(&d).with_lease(units(10));
        assert!(h.try_consume(PTS, units(1), MIDNIGHT).is_allowed());
        // the connection ends without an explicit release
    }
    assert_eq!(used(&e, &d, &cap, MIDNIGHT), units(10));
    assert!(e.try_consume(&d, PTS, units(90), MIDNIGHT).is_allowed());
    assert!(!e.check(&d, MIDNIGHT).is_allowed());
}

#[test]
fn lifetime_meters_exactly_what_was_spent_once_the_lease_is_settled() {
    let e = Engine::new();
    let daily = Rule::all_devices(100).daily().create(&e);
    let d = Subject::device("sn-1");
    let mut h = e.handle(&d).with_lease(units(10));
    for _ in 0..7 {
        assert!(h.try_consume(PTS, units(1), MIDNIGHT).is_allowed());
    }
    // While held, the unspent lease counts as used.
    assert_eq!(used(&e, &d, &daily, MIDNIGHT), units(1 + 10));
    let back = h.release();
    assert_eq!(back.given_back(PTS), units(4));
    let usage = e.usage(&d, MIDNIGHT);
    assert_eq!(usage[0].used, units(7));
    assert_eq!(usage[0].lifetime, units(7));
    // Dropping after more calls settles again.
    assert!(h.try_consume(PTS, units(2), MIDNIGHT).is_allowed());
    drop(h);
    let usage = e.usage(&d, MIDNIGHT);
    assert_eq!((usage[0].used, usage[0].lifetime), (units(9), units(9)));
}

#[test]
fn two_leased_handles_on_one_device_never_pass_the_limit_together() {
    let e = Engine::new();
    let daily = Rule::all_devices(25).daily().create(&e);
    let d = Subject::device("sn-1");
    let (mut a, mut b) = (
        e.handle(&d).with_lease(units(10)),
        e.handle(&d).with_lease(units(10)),
    );
    let mut admitted = 0;
    for i in 0..60 {
        let h = if i % 3 == 0 { &mut a } else { &mut b };
        admitted += u64::from(h.try_consume(PTS, units(1), MIDNIGHT).is_allowed());
        admitted += u64::from(e.try_consume(&d, PTS, units(1), MIDNIGHT).is_allowed());
    }
    drop((a, b));
    assert!(admitted <= 25, "{admitted}");
    assert_eq!(used(&e, &d, &daily, MIDNIGHT), units(admitted));
    // Once the leases are back, the rest of the limit is reachable.
    while e.try_consume(&d, PTS, units(1), MIDNIGHT).is_allowed() {
        admitted += 1;
    }
    assert_eq!(admitted, 25);
}

#[test]
fn evict_while_a_lease_watches_an_empty_entry_keeps_it_watched() {
    // The grant found the daily rule idle (nothing counted yet) and made
    // an empty entry only to watch; an eviction in between must not leave
    // the handle blind to what comes next.
    let e = Engine::new();
    Rule::all_devices(10).daily().create(&e);
    Rule::all_devices(60)
        .daily()
        .of("voice_unified_duration_system")
        .create(&e);
    let d = Subject::device("sn-1");
    let mut h = e.handle(&d).with_lease(units(5));
    assert!(h.check(MIDNIGHT).is_allowed());
    e.evict(MIDNIGHT);
    let _ = e.record(&d, PTS, units(10), MIDNIGHT);
    assert!(!e.check(&d, MIDNIGHT).is_allowed());
    assert_eq!(h.check(MIDNIGHT), e.check(&d, MIDNIGHT));
    // D13: exhausted in points, the device is blocked for voice too.
    let voice = h.try_consume(VOICE, units(1), MIDNIGHT);
    assert!(!voice.is_allowed(), "{voice:?}");
}

/// A call that leaves one rule with nothing to lease grants no lease of any
/// other: here the voice rule is spent to exactly its limit by the leased
/// call itself, and the points lease it would have taken is not left on a
/// counter that no stamp pins (evict would drop it, and the handle would
/// then give it back to a counter made since, which never held it).
#[test]
fn a_call_that_exhausts_one_rule_leaves_no_lease_on_the_others() {
    let e = Engine::new();
    let points = Rule::all_devices(100).daily().create(&e);
    Rule::all_devices(5)
        .daily()
        .of("voice_unified_duration_system")
        .create(&e);
    let d = Subject::device("sn-1");
    let at = MIDNIGHT - 60; // day D, a minute before its end
    assert!(e.try_consume(&d, PTS, units(50), at).is_allowed());
    let mut h = e.handle(&d).with_lease(units(10));
    assert!(h.try_consume(VOICE, units(5), at).is_allowed());
    // The next day's sweep frees day D's counters (a late request then
    // finds a fresh one: `Engine::evict`'s documented limit). From there,
    // day D must not admit more than its limit.
    e.evict(MIDNIGHT + 60);
    let late = e.try_consume(&d, PTS, units(40), at + 30);
    let mut admitted = 40 * u64::from(late.is_allowed());
    drop(h);
    assert_eq!(used(&e, &d, &points, at + 30), units(admitted));
    while admitted <= 100 && e.try_consume(&d, PTS, units(1), at + 40).is_allowed() {
        admitted += 1;
    }
    assert!(
        admitted <= 100,
        "day D admitted {admitted} points after the sweep"
    );
}

/// A leased handle that holds no lease (its call denied) does not keep
/// `evict` from its subject's ended windows, and goes on deciding exactly
/// once they are gone.
#[test]
fn a_handle_holding_no_lease_does_not_pin_its_counters() {
    let e = Engine::new();
    Rule::all_devices(10).daily().create(&e);
    let d = Subject::device("sn-1");
    let mut h = e.handle(&d).with_lease(units(5));
    assert!(h.try_consume(PTS, units(1), MIDNIGHT).is_allowed()); // 1 + a lease of 5
    let _ = e.record(&d, PTS, units(4), MIDNIGHT); // 10
                                                   // The lease is given back (5 used), and 6 do not fit.
    assert!(!h.try_consume(PTS, units(6), MIDNIGHT).is_allowed());
    assert_eq!(e.evict(MIDNIGHT + DAY), 1);
    assert_eq!(e.counter_count(), 0);
    // The handle goes on, in the new day, and leases again.
    assert!(h.try_consume(PTS, units(6), MIDNIGHT + DAY).is_allowed());
    assert!(h.try_consume(PTS, units(4), MIDNIGHT + DAY).is_allowed());
    assert!(!h.try_consume(PTS, units(1), MIDNIGHT + DAY).is_allowed());
    // A check on the next day gives the lease back and finds every rule
    // idle (yesterday's counter is not current): nothing is leased, so
    // nothing is pinned.
    let mut k = e.handle(&Subject::device("sn-3")).with_lease(units(5));
    assert!(k.try_consume(PTS, units(1), MIDNIGHT + DAY).is_allowed());
    assert!(k.check(MIDNIGHT + 2 * DAY).is_allowed());
    assert_eq!(e.evict(MIDNIGHT + 2 * DAY), 2); // sn-1's and sn-3's day
    assert!(k.check(MIDNIGHT + 2 * DAY).is_allowed());
    // While it holds a lease, its counters stay.
    let mut g = e.handle(&Subject::device("sn-2")).with_lease(units(5));
    assert!(g.try_consume(PTS, units(1), MIDNIGHT + DAY).is_allowed());
    assert_eq!(e.evict(MIDNIGHT + 2 * DAY), 0); // sn-2's stays
    drop(g);
    assert_eq!(e.evict(MIDNIGHT + 2 * DAY), 1);
    drop(k);
}

#[test]
fn evict_cannot_hand_a_lease_back_to_a_counter_that_never_held_it() {
    // Daily 10, lease 5: the handle spends 1 (the counter holds 6: the
    // point and the lease). The next day's eviction runs; a request
    // stamped in the first day comes late. However the counter is kept or
    // made again, the first day never admits more than 10 in all.
    let e = Engine::new();
    Rule::all_devices(10).daily().create(&e);
    let d = Subject::device("sn-1");
    let mut h = e.handle(&d).with_lease(units(5));
    let mut admitted = u64::from(h.try_consume(PTS, units(1), MIDNIGHT).is_allowed());
    e.evict(MIDNIGHT + DAY);
    let late = e.try_consume(&d, PTS, units(9), MIDNIGHT + 10);
    admitted += 9 * u64::from(late.is_allowed());
    drop(h); // settles the lease
    while admitted <= 10 && e.try_consume(&d, PTS, units(1), MIDNIGHT + 20).is_allowed() {
        admitted += 1;
    }
    assert!(admitted <= 10, "the first day admitted {admitted}");
}

/// D14: a counter saturated by another caller's `record` while a lease is
/// held on it stays saturated when the lease is given back (the lease is
/// not known to be in it; taking it off reopened the counter by the
/// lease, which a saturating limit admitted again); and a limit that
/// saturates is never leased (a lease could fill its counter to exactly
/// `u64::MAX`, which a settle could not tell from a saturated one).
#[test]
fn a_record_that_saturates_a_leased_counter_stays_saturated_after_the_settle() {
    let d = Subject::device("d");
    for limit in [100, i64::MAX] {
        let (exact, leased) = (Engine::new(), Engine::new());
        for e in [&exact, &leased] {
            Rule::all_devices(limit).create(e); // cumulative
        }
        // Same admitted usage on both: 1 point.
        assert!(exact.try_consume(&d, PTS, units(1), MIDNIGHT).is_allowed());
        let mut h = leased.handle(&d).with_lease(units(10));
        assert!(h.try_consume(PTS, units(1), MIDNIGHT).is_allowed());
        let held = if limit == i64::MAX { 0 } else { 10 };
        assert_eq!(
            leased.usage(&d, MIDNIGHT)[0].used,
            units(1 + held),
            "{limit}"
        );
        // Post-paid usage booked by another caller (by subject) saturates
        // both counters.
        let a = exact.record(&d, PTS, Amount::MAX, MIDNIGHT);
        let b = leased.record(&d, PTS, Amount::MAX, MIDNIGHT);
        assert_eq!(a, b, "{limit}");
        drop(h); // gives the lease back, if one is held
        assert_eq!(
            exact.usage(&d, MIDNIGHT),
            leased.usage(&d, MIDNIGHT),
            "{limit}"
        );
        assert_eq!(
            exact.try_consume(&d, PTS, units(10), MIDNIGHT).is_allowed(),
            leased
                .try_consume(&d, PTS, units(10), MIDNIGHT)
                .is_allowed(),
            "{limit}"
        );
    }
}

/// `release` says what it gave back: nothing for a lease whose window
/// another caller closed.
#[test]
fn release_reports_only_what_it_gave_back() {
    let e = Engine::new();
    let id = Rule::all_devices(10).daily().create(&e);
    let d = Subject::device("d");
    let mut h = e.handle(&d).with_lease(units(5));
    assert!(h.try_consume(PTS, units(1), MIDNIGHT - 1).is_allowed()); // day D: 1 + 5
    assert!(e.try_consume(&d, PTS, units(3), MIDNIGHT).is_allowed()); // rolls to day D+1
    let back = h.release();
    assert_eq!(used(&e, &d, &id, MIDNIGHT), units(3)); // nothing was subtracted
    assert_eq!(back.given_back(PTS), units(0));
}
