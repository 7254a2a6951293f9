//! The synchronisation primitives that the protocol between configuration
//! writers, calls by subject and handle calls rests on (the rule replicas'
//! locks, the writers' mutex, the shard locks, the configuration version,
//! the leased owners' stamps): spin locks, `parking_lot`'s mutex and std's
//! atomics in normal builds, `loom`'s models when built with `--cfg benefit_quota_loom`,
//! so that `loom-tests/tests/loom.rs` can explore every interleaving of a write racing
//! with handle calls.
//!
//! Other atomics (the counter count, the cached window starts, the shards'
//! published slot layouts and counts of waiting callers, id and replica
//! counters) stay std's: they are hints or tallies, not part of the ordering
//! argument (RELIABILITY.md §6).

#[cfg(not(benefit_quota_loom))]
pub(crate) use parking_lot::Mutex;
#[cfg(not(benefit_quota_loom))]
pub(crate) use std::sync::atomic::AtomicU64;
/// The locks held for the span of one decision (a counter shard, a copy of
/// the rule table): taken with one compare-and-swap and released with a
/// plain store, where `parking_lot`'s mutex releases with a second
/// compare-and-swap (it must look for parked waiters), and its read lock
/// takes and releases with one each. What they guard is held for tens of
/// nanoseconds, so a waiter spins, yielding its core now and then in case
/// the holder was preempted.
#[cfg(not(benefit_quota_loom))]
pub(crate) type SpinLock<T> = spin::mutex::SpinMutex<T, SpinThenYield>;
#[cfg(not(benefit_quota_loom))]
pub(crate) type SpinGuard<'a, T> = spin::mutex::SpinMutexGuard<'a, T>;
#[cfg(benefit_quota_loom)]
pub(crate) type SpinLock<T> = Mutex<T>;
#[cfg(benefit_quota_loom)]
pub(crate) type SpinGuard<'a, T> = MutexGuard<'a, T>;

/// How a [`SpinLock`] waits: a pause instruction, and every 32nd time the
/// rest of the time slice (the holder may be preempted: on two cores a
/// waiter that only spun could burn the slice the holder needs).
#[cfg(not(benefit_quota_loom))]
pub(crate) struct SpinThenYield;

#[cfg(not(benefit_quota_loom))]
impl spin::RelaxStrategy for SpinThenYield {
    #[inline]
    fn relax() {
        use std::cell::Cell;
        thread_local!(static SPINS: Cell<u32> = const { Cell::new(0) });
        let n = SPINS.with(|s| {
            let n = s.get().wrapping_add(1);
            s.set(n);
            n
        });
        if n.is_multiple_of(32) {
            std::thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
    }
}

#[cfg(benefit_quota_loom)]
pub(crate) use loom::sync::atomic::AtomicU64;
#[cfg(benefit_quota_loom)]
pub(crate) use loom::sync::MutexGuard;

/// `loom`'s mutex with `parking_lot`'s signature (no poisoning).
#[cfg(benefit_quota_loom)]
#[derive(Debug)]
pub(crate) struct Mutex<T>(loom::sync::Mutex<T>);

#[cfg(benefit_quota_loom)]
impl<T> Mutex<T> {
    pub(crate) fn new(value: T) -> Self {
        Mutex(loom::sync::Mutex::new(value))
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn try_lock(&self) -> Option<MutexGuard<'_, T>> {
        self.0.try_lock().ok()
    }
}
