//! Subject handles: calls through a long-lived handle decide exactly as the
//! same calls by subject, across configuration writes, activation boundaries,
//! window roll-overs and batches. (The model-based test also routes half its
//! operations through handles; these are the named scenarios.)

mod common;

use benefit_quota::{Decision, DenyReason, Engine, HandleRequest, Member, Subject};
use common::*;

/// Two engines fed the same writes: one is used by subject, the other
/// through a handle made once, before anything else happens.
struct Twin {
    by_subject: Engine,
    by_handle: std::sync::Arc<Engine>,
    handle: benefit_quota::SubjectHandle,
    subject: Subject<'static>,
}

impl Twin {
    fn new(subject: Subject<'static>) -> Twin {
        let by_handle = std::sync::Arc::new(Engine::new());
        let handle = by_handle.handle_owned(&subject);
        Twin {
            by_subject: Engine::new(),
            by_handle,
            handle,
            subject,
        }
    }

    fn create(&self, rule: Rule) -> String {
        let id = rule.create(&self.by_subject);
        assert_eq!(rule.create(&self.by_handle), id);
        id
    }

    fn update(&self, id: &str, body: &str, now: i64) {
        self.by_subject.apply_update_json(id, body, now).unwrap();
        self.by_handle.apply_update_json(id, body, now).unwrap();
    }

    /// Spends `n` units on both sides, then checks on both sides; returns
    /// the spend's decision (each pair asserted equal).
    fn spend(&mut self, n: u64, now: i64) -> Decision {
        let spent = self
            .by_subject
            .try_consume(&self.subject, PTS, units(n), now);
        let b = self.handle.try_consume(PTS, units(n), now);
        assert_eq!(spent, b, "try_consume at {now}");
        let a = self.by_subject.check(&self.subject, now);
        let b = self.handle.check(now);
        assert_eq!(a, b, "check at {now}");
        spent
    }
}

#[test]
fn a_handle_follows_configuration_writes() {
    let mut t = Twin::new(Subject::device("d"));
    // made before any rule: unlimited
    assert_eq!(t.spend(5, MIDNIGHT), Decision::Allowed(None));
    let daily = t.create(Rule::all_devices(10).daily());
    let d = t.spend(4, MIDNIGHT);
    assert_eq!(d.headroom().map(|h| h.remaining), Some(units(6)));
    let d = t.spend(7, MIDNIGHT);
    assert_eq!(d.denial().map(|d| d.reason), Some(DenyReason::Insufficient));
    t.update(&daily, r#"{"limit":4}"#, MIDNIGHT);
    let d = t.spend(1, MIDNIGHT);
    assert_eq!(d.denial().map(|d| d.reason), Some(DenyReason::Exhausted));
    t.update(&daily, r#"{"status":"frozen"}"#, MIDNIGHT);
    let d = t.spend(1, MIDNIGHT);
    assert_eq!(d.denial().map(|d| d.reason), Some(DenyReason::Frozen));
    t.update(
        &daily,
        r#"{"status":"valid","trigger_unit":"hour"}"#,
        MIDNIGHT,
    );
    let _ = t.spend(3, MIDNIGHT + 60); // a new window (D16): usage restarts
    t.create(Rule::device("d", 2)); // replaces nothing: cumulative slot
    let d = t.spend(2, MIDNIGHT + 60);
    assert_eq!(d.denial().map(|d| d.reason), Some(DenyReason::Insufficient));
    t.update(&daily, r#"{"status":"cancel"}"#, MIDNIGHT + 60);
    let _ = t.spend(2, MIDNIGHT + 60);
    assert_eq!(
        t.spend(1, MIDNIGHT + 60).denial().map(|d| d.reason),
        Some(DenyReason::Exhausted)
    );
}

#[test]
fn a_handle_follows_activation_boundaries_and_windows() {
    let mut t = Twin::new(Subject::device("d"));
    t.create(Rule::all_devices(100).daily());
    // a single-device daily rule active for one hour, an hour from now
    t.create(
        Rule::device("d", 3)
            .daily()
            .active(MIDNIGHT + 3_600, MIDNIGHT + 7_199),
    );
    for (dt, n) in [
        (0, 10),
        (3_599, 1),
        (3_600, 2), // the single rule replaces the all-devices one (D11)
        (3_700, 2), // insufficient under the single rule
        (7_199, 1),
        (7_200, 1),   // expired: back to the all-devices rule
        (DAY, 1),     // a new day
        (DAY - 1, 1), // a late request counts in the newer window
    ] {
        let _ = t.spend(n, MIDNIGHT + dt);
    }
}

#[test]
fn a_handle_counts_on_the_same_counters_as_calls_by_subject() {
    let e = Engine::new();
    let pool = Rule::new("coze_workspace", Some("ws"), 10).create(&e);
    Rule::all_devices(6).create(&e);
    let s = Subject::device("d").with_member(Member {
        workspace_id: Some("ws"),
        ..Member::default()
    });
    let mut h = e.handle(&s);
    assert_eq!(h.subject(), s);
    assert!(h.try_consume(PTS, units(3), MIDNIGHT).is_allowed());
    assert!(e.try_consume(&s, PTS, units(3), MIDNIGHT).is_allowed());
    // the device's cumulative cap (6) is reached, whichever path asks
    assert!(!h.check(MIDNIGHT).is_allowed());
    assert!(!e.check(&s, MIDNIGHT).is_allowed());
    assert_eq!(used(&e, &s, &pool, MIDNIGHT), units(6));
    // record goes past the limit through a handle too
    let d = h.record(PTS, units(5), MIDNIGHT);
    assert_eq!(d.denial().map(|d| d.reason), Some(DenyReason::Exhausted));
    assert_eq!(used(&e, &s, &pool, MIDNIGHT), units(11));
}

#[test]
fn a_batch_decides_a_handle_of_another_engine_with_that_engine() {
    // A handle carries its engine, so it cannot be used with another one;
    // a batch given another engine's handle decides it with the handle's
    // own, with or without a ledger (with one, a handle decides as a call
    // by subject, on its own engine).
    for ledgered in [false, true] {
        let engine = || {
            if ledgered {
                let ledger = std::sync::Arc::new(benefit_quota::MemoryLedger::new());
                Engine::builder()
                    .ledger(ledger)
                    .open()
                    .expect("a memory ledger opens")
            } else {
                Engine::new()
            }
        };
        let (a, b) = (engine(), engine());
        Rule::all_devices(1).create(&a);
        Rule::all_devices(3).create(&b);
        let mut ha = a.handle(&Subject::device("d"));
        let mut hb = b.handle(&Subject::device("d"));
        assert!(ha.try_consume(PTS, units(1), MIDNIGHT).is_allowed());
        let mut out = Vec::new();
        let mut reqs = vec![
            HandleRequest {
                handle: &mut ha,
                benefit_type: PTS,
                amount: units(1),
            },
            HandleRequest {
                handle: &mut hb,
                benefit_type: PTS,
                amount: units(2),
            },
        ];
        b.try_consume_many_handles(&mut reqs, MIDNIGHT, &mut out);
        // `ha` on `a`: its limit of 1 is spent; `hb` on `b`: 2 of 3.
        assert!(!out[0].is_allowed(), "ledgered: {ledgered}");
        assert_eq!(
            out[1].headroom().map(|h| h.remaining),
            Some(units(1)),
            "ledgered: {ledgered}"
        );
        assert_eq!(a.usage(&Subject::device("d"), MIDNIGHT)[0].used, units(1));
        assert_eq!(b.usage(&Subject::device("d"), MIDNIGHT)[0].used, units(2));
    }
}

#[test]
fn a_handle_batch_decides_as_single_calls_in_order() {
    let batched = Engine::new();
    let single = Engine::new();
    for e in [&batched, &single] {
        Rule::all_devices(5).daily().create(e);
        Rule::device("d1", 2).create(e);
    }
    let ids = ["d0", "d1", "d2", "d1", "d0", "d1"];
    let mut handles: Vec<_> = ids
        .iter()
        .map(|d| batched.handle(&Subject::device(d)))
        .collect();
    let amounts = [2, 1, 4, 1, 3, 1];
    let mut reqs = point_requests(&mut handles, amounts);
    let mut out = Vec::new();
    batched.try_consume_many_handles(&mut reqs, MIDNIGHT, &mut out);
    let expected: Vec<Decision> = ids
        .iter()
        .zip(amounts)
        .map(|(d, n)| single.try_consume(&Subject::device(d), PTS, units(n), MIDNIGHT))
        .collect();
    assert_eq!(out, expected);
    assert_eq!(
        out.iter().filter(|d| d.is_allowed()).count(),
        5,
        "only d1's third request passes its cap of 2"
    );
}

#[test]
fn a_handle_respects_the_counter_cap_and_survives_eviction() {
    let e = Engine::builder().max_counters(3).build();
    let cum = Rule::all_devices(100).create(&e);
    let daily = Rule::all_devices(10).daily().create(&e);
    let (mut a, mut b) = (
        e.handle(&Subject::device("a")),
        e.handle(&Subject::device("b")),
    );
    assert!(a.try_consume(PTS, units(1), MIDNIGHT).is_allowed());
    assert_eq!(e.counter_count(), 2);
    // b needs two new counters: 4 > 3; nothing changes.
    let d = b.try_consume(PTS, units(1), MIDNIGHT);
    let den = d.denial().expect("denied");
    assert_eq!(
        (den.reason, den.benefit_id.as_str()),
        (DenyReason::CounterCapacity, cum.as_str())
    );
    assert_eq!(e.counter_count(), 2);
    assert!(b.check(MIDNIGHT).is_allowed());
    // The next day, yesterday's daily counter of a is evicted; a's handle
    // keeps counting on the same owner, from a fresh daily counter.
    assert_eq!(e.evict(MIDNIGHT + DAY), 1);
    let d = a.try_consume(PTS, units(2), MIDNIGHT + DAY);
    assert!(d.is_allowed());
    assert_eq!(
        used(&e, &Subject::device("a"), &daily, MIDNIGHT + DAY),
        units(2)
    );
    assert_eq!(
        used(&e, &Subject::device("a"), &cum, MIDNIGHT + DAY),
        units(3)
    );
    // b's two counters still do not fit (2 + 2 > 3).
    assert!(!b.try_consume(PTS, units(1), MIDNIGHT + DAY).is_allowed());
}

#[test]
fn a_handle_rolls_its_windows_as_calls_by_subject_do_back_and_forth() {
    // A device's 2-minute rule and cumulative rule, and its consumer's
    // hourly rule (a second counter owner): `now` walks forward with late
    // requests mixed in (steps of -90..=+150 s), so the handle's windows
    // roll forwards, and back for a request stamped before its range.
    let mut t = Twin::new(Subject::device("d").with_consumer("c"));
    t.create(Rule::all_devices(5).every(2, "minute"));
    t.create(Rule::all_devices(1_000));
    t.create(Rule::all_consumers(40).every(1, "hour"));
    let mut now = MIDNIGHT - 600;
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let (mut allowed, mut denied) = (0, 0);
    for _ in 0..400 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        now += (x % 241) as i64 - 90;
        match t.spend(1 + x % 2, now) {
            Decision::Allowed(_) => allowed += 1,
            Decision::Denied(_) => denied += 1,
            other => panic!("{other:?}"),
        }
    }
    assert!(
        allowed > 50 && denied > 50,
        "allowed {allowed}, denied {denied}"
    );
}

#[test]
fn a_late_request_after_a_look_at_the_next_window_counts_in_its_own() {
    // The handle's windows roll to the next 2-minute window on a call that
    // debits nothing, so the counter stays in the window before; a request
    // stamped in that earlier window must still find it exhausted.
    let mut t = Twin::new(Subject::device("d"));
    t.create(Rule::all_devices(3).every(2, "minute"));
    assert!(t.spend(3, MIDNIGHT).is_allowed());
    assert!(t.spend(0, MIDNIGHT + 130).is_allowed()); // the next window: fresh
    assert!(!t.spend(1, MIDNIGHT + 100).is_allowed()); // late: still exhausted
}
