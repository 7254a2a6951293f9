//! Lock-sharded counter state.
//!
//! Counters live in `2^k` shards, each a `parking_lot::Mutex` around a
//! `hashbrown::HashTable`, padded to its own cache line. A counter is keyed by
//! `(rule slot, owner)`: the owner is a device or consumer for
//! `enterprise_all_*` rules (one counter per entity), or the rule itself for
//! single-entity and enterprise-family rules (one shared counter, the pool).
//!
//! The shard is chosen from the owner's hash only, so all counters of one
//! device sit behind one lock. Hashes are keyed with a per-engine random
//! state (HashDoS).
//!
//! A counter does not copy its rule: it remembers the rule's *generation* and
//! the start of the window it counted in, and rolls over lazily when either
//! differs from the rule's current one. Updating a rule is therefore O(1).

mod counter;

pub(crate) use counter::CounterState;

use crossbeam_utils::CachePadded;
use hashbrown::HashTable;
use parking_lot::{Mutex, MutexGuard};
use smallvec::SmallVec;

/// Who a counter belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum OwnerKind {
    /// A device under an `enterprise_all_devices` rule.
    Device = 0,
    /// A consumer under an `enterprise_all_custom_consumers` rule.
    Consumer = 1,
    /// The rule's own shared counter.
    Pool = 2,
}

/// A counter's key with its precomputed hashes (borrowed: no allocation).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Key<'a> {
    pub rule: u32,
    pub kind: OwnerKind,
    pub id: &'a str,
    owner_hash: u64,
}

struct Entry {
    /// The entry's own hash, so table growth never re-hashes id strings.
    hash: u64,
    rule: u32,
    kind: OwnerKind,
    id: Box<str>,
    state: CounterState,
}

impl Entry {
    fn matches(&self, k: &Key<'_>) -> bool {
        self.rule == k.rule && self.kind == k.kind && *self.id == *k.id
    }
}

#[derive(Default)]
pub(crate) struct Shard {
    table: HashTable<Entry>,
}

/// The sharded counter store.
pub(crate) struct Store {
    shards: Box<[CachePadded<Mutex<Shard>>]>,
    shift: u32,
    hasher: ahash::RandomState,
}

/// Spreads the owner hash over a rule slot (a cheap, well-mixing finaliser).
#[inline]
fn entry_hash(owner_hash: u64, rule: u32) -> u64 {
    let x = owner_hash ^ (u64::from(rule).wrapping_add(1)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let x = (x ^ (x >> 31)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^ (x >> 29)
}

impl Store {
    /// `shards` must be a power of two.
    pub fn new(shards: usize, hasher: ahash::RandomState) -> Store {
        debug_assert!(shards.is_power_of_two());
        let v: Vec<_> = (0..shards)
            .map(|_| CachePadded::new(Mutex::new(Shard::default())))
            .collect();
        Store {
            shards: v.into_boxed_slice(),
            shift: 64 - shards.trailing_zeros(),
            hasher,
        }
    }

    /// Hash of an owner, computed once per request and family.
    #[inline]
    pub fn owner_hash(&self, kind: OwnerKind, id: &str) -> u64 {
        self.hasher.hash_one((kind as u8, id))
    }

    /// Hash of a rule's pool owner.
    #[inline]
    pub fn pool_hash(&self, rule: u32) -> u64 {
        self.hasher.hash_one((OwnerKind::Pool as u8, rule))
    }

    #[inline]
    pub fn key<'a>(&self, rule: u32, kind: OwnerKind, id: &'a str, owner_hash: u64) -> Key<'a> {
        Key {
            rule,
            kind,
            id,
            owner_hash,
        }
    }

    #[inline]
    pub fn shard_index(&self, k: &Key<'_>) -> usize {
        if self.shift == 64 {
            0
        } else {
            (k.owner_hash >> self.shift) as usize
        }
    }

    /// Locks the given shards in ascending index order (deadlock-free), returning
    /// the guards in the same order. `indices` must be sorted and deduplicated.
    pub fn lock_many(&self, indices: &[usize]) -> Locked<'_> {
        let mut guards = SmallVec::new();
        for &i in indices {
            guards.push((i, self.shards[i].lock()));
        }
        Locked { guards }
    }

    /// Number of tracked counters (locks each shard in turn).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().table.len()).sum()
    }
}

/// A set of held shard locks.
pub(crate) struct Locked<'s> {
    guards: SmallVec<[(usize, MutexGuard<'s, Shard>); 4]>,
}

impl Locked<'_> {
    fn shard(&self, i: usize) -> &Shard {
        let pos = self
            .guards
            .iter()
            .position(|(j, _)| *j == i)
            .unwrap_or_default();
        &self.guards[pos].1
    }

    fn shard_mut(&mut self, i: usize) -> &mut Shard {
        let pos = self
            .guards
            .iter()
            .position(|(j, _)| *j == i)
            .unwrap_or_default();
        &mut self.guards[pos].1
    }

    /// The counter, if it exists. `shard` must be one of the locked shards.
    pub fn get(&self, shard: usize, k: &Key<'_>) -> Option<&CounterState> {
        self.shard(shard)
            .table
            .find(entry_hash(k.owner_hash, k.rule), |e| e.matches(k))
            .map(|e| &e.state)
    }

    /// The counter, created empty if missing (the only allocating step: the
    /// owner id is copied once, when an entity is first seen).
    pub fn get_or_insert(&mut self, shard: usize, k: &Key<'_>) -> &mut CounterState {
        let h = entry_hash(k.owner_hash, k.rule);
        let table = &mut self.shard_mut(shard).table;
        let entry = table.entry(h, |e| e.matches(k), |e| e.hash);
        let occupied = entry.or_insert_with(|| Entry {
            hash: h,
            rule: k.rule,
            kind: k.kind,
            id: Box::from(k.id),
            state: CounterState::default(),
        });
        &mut occupied.into_mut().state
    }
}
