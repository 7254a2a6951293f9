//! No allocation on the `check` / `try_consume` / `record` path for a subject
//! whose counters exist, nor in batches of them, proven with a counting
//! global allocator.
//!
//! Only the measuring thread's allocations count: the test harness's own
//! thread allocates while a test runs (its queue of running tests), and a
//! global count caught it whenever that push fell inside a measured call.
//! This file holds a single test so no other test thread allocates meanwhile.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use benefit_quota::{Amount, BenefitType, Engine, HandleRequest, Member, Request, Subject};

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Whether this thread's allocations are counted (const-initialised and
    /// without a destructor, so reading it never allocates).
    static COUNTED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn count() {
    if COUNTED.with(|c| c.get()) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every method forwards to the system allocator with the caller's
// arguments unchanged; counting has no effect on the memory handed out.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations made by this thread while `f` runs.
fn allocations_during(f: impl FnOnce()) -> usize {
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    COUNTED.with(|c| c.set(true));
    f();
    COUNTED.with(|c| c.set(false));
    ALLOCATIONS.load(Ordering::Relaxed) - before
}

const MIDNIGHT: i64 = 1_741_708_800;
const PTS: BenefitType = BenefitType::ResourcePoint;

fn body(t: &str, id: &str, limit: u64, unit: &str) -> String {
    format!(
        r#"{{"entity_type":"{t}","entity_id":"{id}","benefit_info":{{"benefit_type":"resource_point","active_mode":"absolute_time","started_at":0,"ended_at":253402300799,"limit":{limit},"trigger_unit":"{unit}"}}}}"#
    )
}

#[test]
fn known_subjects_are_checked_and_debited_without_allocating() {
    let e = Engine::new();
    for b in [
        body("enterprise_all_devices", "", 1_000_000, "never"),
        body("enterprise_all_devices", "", 500, "day"),
        body("single_device", "vip", 1_000_000, "never"),
        body("enterprise_all_custom_consumers", "", 1_000, "hour"),
        body("coze_workspace", "ws", 1_000_000, "day"),
        body("coze_user_id", "u", 3, "never"),
    ] {
        e.create_json(b).unwrap();
    }
    let member = Member {
        coze_user_id: Some("u"),
        workspace_id: Some("ws"),
        ..Member::default()
    };
    let subjects = [
        Subject::device("plain"),
        Subject::device("vip"),
        Subject::consumer("c"),
        Subject::member(member),
        Subject::device("plain")
            .with_consumer("c")
            .with_member(member),
    ];
    // Warm up: every counter these subjects touch now exists, and every
    // handle is resolved.
    for s in &subjects {
        let _ = e.try_consume(s, PTS, Amount::from_units(1), MIDNIGHT);
    }
    let mut handles: Vec<_> = subjects.iter().map(|s| e.handle(s)).collect();
    for h in &mut handles {
        let _ = h.check(MIDNIGHT);
    }
    // Leased handles whose lease (one point) runs short every few calls, so
    // the locked path that gives it back and takes a new one runs too.
    let mut leased: Vec<_> = subjects
        .iter()
        .map(|s| e.handle(s).with_lease(Amount::from_units(1)))
        .collect();
    for h in &mut leased {
        let _ = h.try_consume(PTS, Amount::from_micros(1), MIDNIGHT);
    }
    let mut allowed = 0usize;
    let mut denied = 0usize;
    let n = allocations_during(|| {
        for i in 0..2_000i64 {
            for ((s, h), l) in subjects.iter().zip(&mut handles).zip(&mut leased) {
                // crossing an hour and a day boundary on the way
                let now = MIDNIGHT + i * 60;
                for d in [
                    e.check(s, now),
                    e.try_consume(s, PTS, Amount::from_micros(160_000), now),
                    e.record(s, PTS, Amount::from_micros(10), now),
                    h.check(now),
                    h.try_consume(PTS, Amount::from_micros(160_000), now),
                    h.record(PTS, Amount::from_micros(10), now),
                    l.check(now),
                    l.try_consume(PTS, Amount::from_micros(160_000), now),
                    l.record(PTS, Amount::from_micros(10), now),
                ] {
                    if d.is_allowed() {
                        allowed += 1
                    } else {
                        denied += 1
                    }
                }
            }
        }
    });
    assert_eq!(n, 0, "allocations on the hot path");
    let n = allocations_during(|| {
        for l in &mut leased {
            l.release();
        }
    });
    assert_eq!(n, 0, "allocations when leases are given back");
    // A configuration write makes every handle resolve again: still no allocation.
    e.apply_update_json("2", r#"{"limit":501}"#, MIDNIGHT)
        .unwrap();
    let n = allocations_during(|| {
        for h in &mut handles {
            let _ = std::hint::black_box(h.check(MIDNIGHT + 10));
        }
    });
    assert_eq!(n, 0, "allocations when a handle resolves again");
    // And calls by subject: this thread keeps its copy of the all-scope
    // rules again, in place.
    e.apply_update_json("2", r#"{"limit":502}"#, MIDNIGHT)
        .unwrap();
    let n = allocations_during(|| {
        for s in &subjects {
            let _ =
                std::hint::black_box(e.try_consume(s, PTS, Amount::from_micros(1), MIDNIGHT + 10));
        }
    });
    assert_eq!(
        n, 0,
        "allocations when a thread keeps its copy of the rules again"
    );
    // Batches, by subject and through handles, over known devices: nothing
    // either, given room in `out`.
    let ids: Vec<String> = (0..64).map(|i| format!("batch-{i}")).collect();
    let devices: Vec<Subject> = ids.iter().map(|d| Subject::device(d)).collect();
    for s in &devices {
        let _ = e.try_consume(s, PTS, Amount::from_units(1), MIDNIGHT);
    }
    let requests: Vec<Request> = devices
        .iter()
        .map(|s| Request {
            subject: *s,
            benefit_type: PTS,
            amount: Amount::from_micros(1),
        })
        .collect();
    let mut device_handles: Vec<_> = devices.iter().map(|s| e.handle(s)).collect();
    for h in &mut device_handles {
        let _ = h.check(MIDNIGHT);
    }
    let mut handle_requests: Vec<HandleRequest<_>> = device_handles
        .iter_mut()
        .map(|h| HandleRequest {
            handle: h,
            benefit_type: PTS,
            amount: Amount::from_micros(1),
        })
        .collect();
    let mut out = Vec::with_capacity(2 * requests.len());
    let n = allocations_during(|| {
        for _ in 0..50 {
            out.clear();
            e.try_consume_many(&requests, MIDNIGHT + 20, &mut out);
            e.try_consume_many_handles(&mut handle_requests, MIDNIGHT + 20, &mut out);
        }
    });
    assert_eq!(n, 0, "allocations in batches");
    assert!(out.len() == 2 * requests.len() && out.iter().all(|d| d.is_allowed()));
    // Both outcomes were exercised: denials name their rule without allocating.
    assert!(
        allowed > 1_000 && denied > 1_000,
        "allowed {allowed}, denied {denied}"
    );
}
