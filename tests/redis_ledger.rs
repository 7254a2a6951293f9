//! Usage shared through Redis (feature `redis`): several engines (the
//! instances of a fleet) on one server never admit more than a limit
//! together, give unspent grants back, and follow the failure policy when
//! the server goes away.
#![cfg(feature = "redis")]

mod common;

use std::time::Duration;

use benefit_quota::ledger::RedisLedger;
use benefit_quota::{
    Amount, BenefitType, DenyReason, Engine, LedgerErrorKind, LedgerFailure, Subject,
};
use common::redis::{LosingProxy, RedisServer};

const PTS: BenefitType = BenefitType::ResourcePoint;
const T0: i64 = 1_741_708_800;

/// Rule 7001: 100 points for good for every device, as the platform
/// lists it.
const CUMULATIVE: &str = r#"{"benefit_id":"7001","entity_type":"enterprise_all_devices","benefit_type":"resource_point",
    "active_mode":"absolute_time","started_at":0,"ended_at":253402300799,"limit":100,"trigger_unit":"never"}"#;

/// Rule 7002: 100 points per `unit` for every device.
fn periodic(unit: &str) -> String {
    format!(
        r#"{{"benefit_id":"7002","entity_type":"enterprise_all_devices","benefit_type":"resource_point",
        "active_mode":"absolute_time","started_at":0,"ended_at":253402300799,"limit":100,"trigger_unit":"{unit}","trigger_time":1}}"#
    )
}

/// How long a round trip, and a call waiting for its grant, may take. The
/// outages below stop the server, which refuses connections at once (their
/// calls are denied as soon as a grant fails, not after this), so this
/// only has to outlast a slow fsync (the throwaway server writes its
/// append-only file on every command) on a loaded machine: running out of
/// it there would be denied as an outage.
const ROUND_TRIP: Duration = Duration::from_secs(10);

/// An instance on `ledger`: its own engine and rules (the same rule ids on
/// every instance, as each gateway imports them from the platform).
fn engine_on(ledger: RedisLedger, policy: LedgerFailure, rule: &str, now: i64) -> Engine {
    let e = Engine::builder()
        .ledger(ledger)
        .max_grant(Amount::from_units(10))
        .on_ledger_failure(policy)
        .grant_timeout(ROUND_TRIP)
        .open()
        .unwrap();
    e.import_json(rule, now).unwrap();
    e
}

/// An instance under [`CUMULATIVE`], the fleet's counters in Redis under
/// `prefix`.
fn instance(url: &str, prefix: &str, policy: LedgerFailure) -> Engine {
    let ledger = RedisLedger::new(url, prefix, ROUND_TRIP).unwrap();
    engine_on(ledger, policy, CUMULATIVE, T0)
}

/// An instance under rule 7002 with `unit`, imported at `now`, the fleet's
/// counters in Redis under `prefix`.
fn periodic_instance(url: &str, prefix: &str, unit: &str, now: i64) -> Engine {
    let ledger = RedisLedger::new(url, prefix, ROUND_TRIP).unwrap();
    engine_on(ledger, LedgerFailure::FailClosed, &periodic(unit), now)
}

/// Calls spending 1 point each for `dev` at `now`; how many were admitted.
fn spend_at(e: &Engine, dev: &str, n: usize, now: i64) -> usize {
    (0..n)
        .filter(|_| {
            e.try_consume(&Subject::device(dev), PTS, Amount::from_units(1), now)
                .is_allowed()
        })
        .count()
}

fn spend(e: &Engine, dev: &str, n: usize) -> usize {
    spend_at(e, dev, n, T0)
}

/// Spends for `dev` at `now` until `want` more are admitted, or a deadline
/// passes: an instance refused a grant asks the ledger again only once its
/// refusal mark (a second) has lapsed, and the mark may be set after the
/// last call returned (by the writer thread), so a fixed sleep could end
/// just before it lapses. Never asks for more than `want`: check the next
/// call's denial to see the limit.
fn spend_until(e: &Engine, dev: &str, want: usize, now: i64) -> usize {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut got = 0;
    while got < want && std::time::Instant::now() < deadline {
        got += spend_at(e, dev, want - got, now);
        if got < want {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    got
}

/// Flushes until a flush succeeds: the ledger reconnects once its backoff
/// (whatever its length) has passed. Fails after a minute.
fn flush_until_ok(e: &Engine) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while let Err(err) = e.flush() {
        assert!(
            std::time::Instant::now() < deadline,
            "no flush succeeded in a minute: {err}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn instances_share_one_limit_exactly() {
    let Some(server) = RedisServer::start("share") else {
        return;
    };
    let a = instance(&server.url, "share", LedgerFailure::FailClosed);
    let b = instance(&server.url, "share", LedgerFailure::FailClosed);
    let mut total = 0;
    for _ in 0..40 {
        total += spend(&a, "d", 3) + spend(&b, "d", 3);
    }
    // demand 240 for a limit of 100: exactly 100, less what the other
    // instance still holds in grants
    assert!(total <= 100, "{total}");
    assert!(total >= 100 - 2 * 10, "{total}");
    // a gives its unspent grants back; b, refused a grant a moment ago,
    // asks the ledger again after a second
    drop(a);
    total += spend_until(&b, "d", 100 - total, T0);
    assert_eq!(total, 100);
    let denied = b.try_consume(&Subject::device("d"), PTS, Amount::from_units(1), T0);
    assert!(!denied.is_allowed());
}

#[test]
fn an_idle_instance_gives_its_grants_to_the_others_and_then_a_crash_strands_nothing() {
    let Some(server) = RedisServer::start("idle") else {
        return;
    };
    let a = instance(&server.url, "idle", LedgerFailure::FailClosed);
    let b = instance(&server.url, "idle", LedgerFailure::FailClosed);
    assert_eq!(spend(&a, "d", 4), 4);
    // a holds more than it spent; b gets the rest of the limit but that
    let mut total = 4 + spend(&b, "d", 200);
    assert!(total < 100, "a's unspent grant is not b's: {total}");
    // a goes idle: two sweeps give its unspent grant back...
    a.give_back_idle().unwrap();
    assert_eq!(a.give_back_idle().unwrap(), 1);
    // ...and then a crash of a strands nothing
    std::mem::forget(a);
    total += spend_until(&b, "d", 100 - total, T0);
    assert_eq!(total, 100, "every unit of the limit was reachable");
    assert_eq!(spend(&b, "d", 5), 0);
}

#[test]
fn threads_of_several_instances_never_pass_the_limit() {
    let Some(server) = RedisServer::start("threads") else {
        return;
    };
    let engines: Vec<Engine> = (0..3)
        .map(|_| instance(&server.url, "threads", LedgerFailure::FailClosed))
        .collect();
    let admitted: usize = std::thread::scope(|s| {
        let hs: Vec<_> = engines
            .iter()
            .flat_map(|e| (0..2).map(move |_| e))
            .map(|e| s.spawn(move || spend(e, "d", 120)))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert!(admitted <= 100, "{admitted}");
    for e in &engines {
        let d = e.try_consume(&Subject::device("d"), PTS, Amount::from_units(1), T0);
        if let Some(den) = d.denial() {
            assert_ne!(den.reason, DenyReason::LedgerUnavailable);
        }
    }
    drop(engines);
    let last = instance(&server.url, "threads", LedgerFailure::FailClosed);
    assert_eq!(admitted + spend(&last, "d", 200), 100);
}

#[test]
fn an_outage_fails_closed_then_recovers_without_counting_twice() {
    let Some(mut server) = RedisServer::start("outage") else {
        return;
    };
    let e = instance(&server.url, "outage", LedgerFailure::FailClosed);
    assert_eq!(spend(&e, "a", 5), 5);
    server.stop();
    // what is already granted is spent; beyond it, the ledger's own denial
    let mut reasons = Vec::new();
    for _ in 0..30 {
        let d = e.try_consume(&Subject::device("a"), PTS, Amount::from_units(1), T0);
        if let Some(den) = d.denial() {
            reasons.push(den.reason);
        }
    }
    assert!(!reasons.is_empty());
    assert!(reasons.iter().all(|r| *r == DenyReason::LedgerUnavailable));
    assert!(e.ledger_stats().unwrap().errors > 0);
    server.restart(); // its append-only file kept the counters
                      // Calls are refused until the ledger reconnects, past its backoff
                      // (whatever its length): spend until the limit's rest is admitted, then
                      // not one more.
    let before = 5 + (30 - reasons.len());
    let more = spend_until(&e, "a", 100 - before, T0);
    assert_eq!(before + more, 100);
    assert_eq!(spend(&e, "a", 10), 0);
}

/// On a server of its own (`None` without redis-server), records 5 units
/// for device `a`, then `amount` in a batch whose answer a proxy loses after
/// Redis applied it, then flushes until the batch has been cancelled and
/// sent again; returns the server, to read what counted.
fn record_through_a_lost_answer(name: &str, amount: Amount) -> Option<RedisServer> {
    let server = RedisServer::start(name)?;
    let proxy = LosingProxy::start(server.port());
    let ledger = RedisLedger::new(&proxy.url, name, ROUND_TRIP).unwrap();
    let e = engine_on(ledger, LedgerFailure::FailClosed, CUMULATIVE, T0);
    let a = Subject::device("a");
    let _ = e.record(&a, PTS, Amount::from_units(5), T0);
    e.flush().unwrap();
    proxy.lose_next_reply();
    let _ = e.record(&a, PTS, amount, T0);
    assert!(e.flush().is_err(), "the lost answer is a failed commit");
    assert!(e.ledger_stats().unwrap().errors > 0);
    flush_until_ok(&e); // reconnected, past its backoff
    Some(server)
}

#[test]
fn a_batch_applied_but_whose_answer_was_lost_is_undone_before_it_is_sent_again() {
    // A batch of records reaches Redis and is applied, but its answer is
    // lost: the ledger cannot tell it was applied, and the engine sends the
    // records again. Before that, the batch is cancelled, which undoes it,
    // so the records count once.
    let Some(server) = record_through_a_lost_answer("lost", Amount::from_units(7)) else {
        return;
    };
    // Another instance, straight on the server: 12 used, 88 left (19 used
    // had the lost batch been counted as well as sent again).
    let other = instance(&server.url, "lost", LedgerFailure::FailClosed);
    assert_eq!(spend(&other, "a", 200), 88);
}

/// The same with an amount of 15 significant digits in micro-units: the
/// cancel takes back exactly what the lost batch applied (Lua's JSON
/// encoder keeps 14 digits of a number).
#[test]
fn an_in_doubt_batch_of_a_large_amount_is_undone_exactly() {
    let large = Amount::from_micros(123_456_789_012_345);
    let Some(server) = record_through_a_lost_answer("lost-large", large) else {
        return;
    };
    // The counter's key in Redis holds exactly what was recorded.
    let mut con = redis::Client::open(server.url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let keys: Vec<Vec<u8>> = redis::cmd("KEYS")
        .arg("lost-large:c:*")
        .query(&mut con)
        .unwrap();
    let counters: Vec<u64> = keys
        .iter()
        .filter_map(|k| {
            let v: Option<Vec<u8>> = redis::cmd("GET").arg(k).query(&mut con).ok()?;
            String::from_utf8(v?).ok()?.parse().ok()
        })
        .collect();
    assert_eq!(counters, [5_000_000 + 123_456_789_012_345]);
}

/// Redis remembers a batch well past the longest `record_interval` (an
/// hour): a gateway that only records cancels a batch left in doubt at its
/// next commit, up to an interval after the failure, and a batch Redis has
/// forgotten by then is not undone (its records would count twice).
#[test]
fn a_batch_is_remembered_well_past_the_longest_record_interval() {
    let Some(server) = record_through_a_lost_answer("batch-ttl", Amount::from_units(7)) else {
        return;
    };
    let mut con = redis::Client::open(server.url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("batch-ttl:b:*")
        .query(&mut con)
        .unwrap();
    // The cancelled batch's marker and the last answered batch (each
    // batch deletes the previous answered one's record).
    assert!(keys.len() >= 2, "the batches sent: {keys:?}");
    for k in keys {
        let ttl: i64 = redis::cmd("TTL").arg(&k).query(&mut con).unwrap();
        assert!(ttl > 4 * 3600, "{k} is remembered for {ttl} s");
    }
}

/// Instances count windows at one UTC offset (their keys name the
/// windows' start and end): one at another offset would count on keys of
/// its own, and the fleet would admit a limit per offset. Redis keeps the
/// first instance's offset and refuses another's commits.
#[test]
fn an_instance_at_another_utc_offset_is_refused() {
    let Some(server) = RedisServer::start("offset") else {
        return;
    };
    let first = instance(&server.url, "offset", LedgerFailure::FailClosed);
    assert_eq!(spend(&first, "a", 5), 5);
    let ledger = RedisLedger::new(&server.url, "offset", ROUND_TRIP).unwrap();
    let other = Engine::builder()
        .utc_offset(benefit_quota::UtcOffset::UTC)
        .ledger(ledger)
        .grant_timeout(ROUND_TRIP)
        .open()
        .unwrap();
    other.import_json(CUMULATIVE, T0).unwrap();
    let d = other.try_consume(&Subject::device("a"), PTS, Amount::from_units(1), T0);
    assert_eq!(
        d.denial().map(|x| x.reason),
        Some(DenyReason::LedgerUnavailable),
        "{d:?}"
    );
    let _ = other.record(&Subject::device("a"), PTS, Amount::from_units(1), T0);
    let err = other.flush().unwrap_err();
    assert_eq!(err.kind, LedgerErrorKind::Mismatch, "{err}");
    assert!(err.detail.contains("UTC+08:00"), "{err}");
    // The first instance goes on, and nothing of the other's was counted.
    flush_until_ok(&first);
    let fresh = instance(&server.url, "offset", LedgerFailure::FailClosed);
    assert_eq!(spend(&fresh, "a", 200), 95);
}

/// A batch whose answer arrived needs no record (no cancel will come for
/// it): the next batch deletes it, so Redis keeps one per instance, not
/// one per batch for a day.
#[test]
fn answered_batches_leave_one_record_per_instance() {
    let Some(server) = RedisServer::start("answered") else {
        return;
    };
    let e = instance(&server.url, "answered", LedgerFailure::FailClosed);
    for n in 0..10 {
        let _ = e.record(&Subject::device("a"), PTS, Amount::from_units(1), T0 + n);
        e.flush().unwrap();
    }
    let mut con = redis::Client::open(server.url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("answered:b:*")
        .query(&mut con)
        .unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    let fresh = instance(&server.url, "answered", LedgerFailure::FailClosed);
    assert_eq!(spend(&fresh, "a", 200), 90);
}

#[test]
fn fail_open_books_what_it_admits_once_the_server_is_back() {
    let Some(mut server) = RedisServer::start("open") else {
        return;
    };
    let e = instance(&server.url, "open", LedgerFailure::FailOpen);
    assert_eq!(spend(&e, "a", 5), 5);
    server.stop();
    assert_eq!(spend(&e, "a", 20), 20); // admitted locally, booked as records
    server.restart();
    flush_until_ok(&e); // reconnected, past its backoff
    drop(e);
    // another instance sees the 25 (no more, no less): 75 left
    let other = instance(&server.url, "open", LedgerFailure::FailClosed);
    assert_eq!(spend(&other, "a", 200), 75);
}

#[test]
fn safe_capacity_bounds_what_an_outage_admits_per_counter() {
    let Some(mut server) = RedisServer::start("safe") else {
        return;
    };
    let e = instance(
        &server.url,
        "safe",
        LedgerFailure::SafeCapacity(Amount::from_units(4)),
    );
    assert_eq!(spend(&e, "a", 1), 1);
    server.stop();
    // the rest of its grant, then 4 more, then the ledger's denial
    let got = spend(&e, "a", 40);
    assert!((4..=4 + 10).contains(&got), "{got}");
    assert_eq!(spend(&e, "b", 40), 4);
}

#[test]
fn a_tls_url_is_spoken_in_tls_and_a_failed_handshake_fails_closed() {
    let Some(server) = RedisServer::start("tls") else {
        return;
    };
    // the throwaway server speaks plain text: a TLS client cannot talk to it
    let url = server.url.replacen("redis://", "rediss://", 1);
    let made = RedisLedger::new(&url, "tls", Duration::from_millis(300));
    if !cfg!(feature = "redis-tls") {
        let e = made.expect_err("rediss:// needs the redis-tls feature");
        assert!(e.to_string().contains("rediss://"), "{e}");
        return;
    }
    let e = engine_on(made.unwrap(), LedgerFailure::FailClosed, CUMULATIVE, T0);
    let d = e.try_consume(&Subject::device("d"), PTS, Amount::from_units(1), T0);
    assert_eq!(
        d.denial().map(|d| d.reason),
        Some(DenyReason::LedgerUnavailable)
    );
    assert!(e.ledger_stats().unwrap().errors > 0);
}

#[test]
fn an_instance_started_after_a_reset_counts_with_the_ones_that_saw_it() {
    // Each instance counts its own resets (D16 generations): one that saw
    // the update has counted one, one started after it none. They must
    // still share the window's counter.
    let Some(server) = RedisServer::start("reset") else {
        return;
    };
    let a = periodic_instance(&server.url, "reset", "day", T0);
    assert_eq!(spend_at(&a, "d", 60, T0 + 60), 60);
    // the platform changes the rule to hourly: a new window, usage from zero
    let later = T0 + 1_800;
    a.import_json(periodic("hour"), later).unwrap();
    let b = periodic_instance(&server.url, "reset", "hour", later);
    let c = periodic_instance(&server.url, "reset", "hour", later);
    let mut total = 0;
    for _ in 0..30 {
        total +=
            spend_at(&a, "d", 3, later) + spend_at(&b, "d", 3, later) + spend_at(&c, "d", 3, later);
    }
    assert!(total <= 100, "the fleet admitted {total} of an hourly 100");
    drop((a, b));
    total += spend_until(&c, "d", 100 - total, later);
    assert_eq!(total, 100);
    assert_eq!(spend_at(&c, "d", 5, later), 0);
}

#[test]
fn a_grant_of_a_window_an_update_reset_goes_back_to_that_window_only() {
    // An instance holds part of a daily grant when the rule becomes hourly
    // (a new window, D16), and gives it back later: the hourly window,
    // which starts at the same second, must not receive it.
    let Some(server) = RedisServer::start("stale") else {
        return;
    };
    let a = periodic_instance(&server.url, "stale", "day", T0);
    assert_eq!(spend_at(&a, "d", 3, T0 + 60), 3); // a grant of 10: 7 unspent
    let later = T0 + 1_800;
    a.import_json(periodic("hour"), later).unwrap();
    let b = periodic_instance(&server.url, "stale", "hour", later);
    let mut total = spend_at(&b, "d", 200, later);
    assert_eq!(total, 100, "the hourly window is b's alone");
    a.give_back_idle().unwrap();
    a.give_back_idle().unwrap();
    // and what a clean shutdown gives back; then a third instance, with
    // nothing counted locally, asks the fleet
    drop(a);
    let c = periodic_instance(&server.url, "stale", "hour", later);
    total += spend_at(&c, "d", 200, later);
    assert_eq!(
        total, 100,
        "a's daily grant went back into the hourly window"
    );
}
