//! The synchronisation primitives that the protocol between configuration
//! writers, calls by subject and handle calls rests on (the rule replicas'
//! read-write locks, the writers' mutex, the shard mutexes, the configuration
//! version): `parking_lot`'s locks and std's atomics in normal builds,
//! `loom`'s models when built with `--cfg loom`, so that `tests/loom.rs` can
//! explore every interleaving of a write racing with handle calls.
//!
//! Other atomics (the counter count, the cached window starts, the shards'
//! published slot layouts, id and replica
//! counters) stay std's: they are hints or tallies, not part of the ordering
//! argument (RELIABILITY.md §6).

#[cfg(not(loom))]
pub(crate) use parking_lot::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::AtomicU64;

#[cfg(loom)]
pub(crate) use loom::sync::atomic::AtomicU64;
#[cfg(loom)]
pub(crate) use loom::sync::{MutexGuard, RwLockReadGuard, RwLockWriteGuard};

/// `loom`'s mutex with `parking_lot`'s signature (no poisoning).
#[cfg(loom)]
#[derive(Debug)]
pub(crate) struct Mutex<T>(loom::sync::Mutex<T>);

#[cfg(loom)]
impl<T> Mutex<T> {
    pub(crate) fn new(value: T) -> Self {
        Mutex(loom::sync::Mutex::new(value))
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// `loom`'s read-write lock with `parking_lot`'s signature (no poisoning).
#[cfg(loom)]
#[derive(Debug)]
pub(crate) struct RwLock<T>(loom::sync::RwLock<T>);

#[cfg(loom)]
impl<T> RwLock<T> {
    pub(crate) fn new(value: T) -> Self {
        RwLock(loom::sync::RwLock::new(value))
    }

    pub(crate) fn read(&self) -> RwLockReadGuard<'_, T> {
        self.0.read().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn write(&self) -> RwLockWriteGuard<'_, T> {
        self.0.write().unwrap_or_else(|e| e.into_inner())
    }
}
