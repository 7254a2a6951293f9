//! Many subjects in few shards: the counter tables grow through many sizes,
//! shift entries back when owners are removed, on eviction too, and
//! every subject keeps exactly its own counters throughout (by subject,
//! through handles and in batches).

mod common;

use benefit_quota::{Engine, Request, Subject};
use common::*;

const DEVICES: usize = 20_000;

fn id(i: usize) -> String {
    format!("sn-{i:06}")
}

/// Units device `i` spends in the first round.
fn spent(i: usize) -> u64 {
    (i % 7) as u64 + 1
}

#[test]
fn many_devices_in_two_shards_keep_their_own_counters() {
    let e = Engine::builder().shards(2).build();
    let cum = Rule::all_devices(1_000).create(&e);
    let daily = Rule::all_devices(100).daily().create(&e);
    let ids: Vec<String> = (0..DEVICES).map(id).collect();
    // A third by subject, a third through handles, a third in batches.
    let third = DEVICES / 3;
    for (i, d) in ids[..third].iter().enumerate() {
        assert!(e
            .try_consume(&Subject::device(d), PTS, units(spent(i)), MIDNIGHT)
            .is_allowed());
    }
    let mut handles: Vec<_> = ids[third..2 * third]
        .iter()
        .map(|d| e.handle(&Subject::device(d)))
        .collect();
    for (k, h) in handles.iter_mut().enumerate() {
        let i = third + k;
        assert!(h.try_consume(PTS, units(spent(i)), MIDNIGHT).is_allowed());
    }
    let reqs: Vec<Request> = ids[2 * third..]
        .iter()
        .enumerate()
        .map(|(k, d)| Request {
            subject: Subject::device(d),
            benefit_type: PTS,
            amount: units(spent(2 * third + k)),
        })
        .collect();
    let mut out = Vec::new();
    e.try_consume_many(&reqs, MIDNIGHT, &mut out);
    assert!(out.iter().all(|d| d.is_allowed()));
    assert_eq!(e.counter_count(), 2 * DEVICES);
    for (i, d) in ids.iter().enumerate() {
        let s = Subject::device(d);
        assert_eq!(used(&e, &s, &cum, MIDNIGHT), units(spent(i)), "{d}");
        assert_eq!(used(&e, &s, &daily, MIDNIGHT), units(spent(i)), "{d}");
    }
    // A denied first request of a new device creates an entry and removes it
    // again (the last insertion, so nothing needs to shift back; the table's
    // own proptest covers removals in the middle of a cluster): interleave
    // such requests with spends of known devices through handle batches.
    let e2 = &e;
    let mut reqs = point_requests(&mut handles, std::iter::repeat(1));
    for (k, chunk) in reqs.chunks_mut(50).enumerate() {
        let newcomer = format!("new-{k}");
        let d = e2.try_consume(&Subject::device(&newcomer), PTS, units(101), MIDNIGHT);
        assert!(!d.is_allowed());
        out.clear();
        e2.try_consume_many_handles(chunk, MIDNIGHT, &mut out);
        assert!(out.iter().all(|d| d.is_allowed()));
    }
    drop(reqs);
    assert_eq!(e.counter_count(), 2 * DEVICES);
    // The next day the daily counters are stale: eviction removes them
    // from every table, and every device keeps its cumulative usage.
    let tomorrow = MIDNIGHT + 86_400;
    assert_eq!(e.evict(tomorrow), DEVICES);
    assert_eq!(e.counter_count(), DEVICES);
    for (i, d) in ids.iter().enumerate() {
        let s = Subject::device(d);
        let extra = u64::from((third..2 * third).contains(&i));
        assert_eq!(used(&e, &s, &cum, tomorrow), units(spent(i) + extra), "{d}");
        assert_eq!(used(&e, &s, &daily, tomorrow), units(0), "{d}");
    }
    for (k, h) in handles.iter_mut().enumerate() {
        let i = third + k;
        let d = h.check(tomorrow);
        let left = d.headroom().map(|h| h.remaining);
        assert_eq!(left, Some(units(100)), "daily headroom of {}", id(i));
    }
}
