//! Lock-sharded counter state.
//!
//! Counters live in `2^k` shards, each a spin lock (`crate::sync::SpinLock`) around an
//! open-addressing [`table::Table`], padded to its own cache line. Entries
//! are keyed by *owner*: a device or consumer (its counters under `enterprise_all_*`
//! rules, one per rule), or a rule's own pool (the single counter of a
//! single-entity or enterprise-family rule). An entry keeps its counters inline
//! (two without spilling), so the usual device — one cumulative and one
//! periodic all-devices rule — costs one lookup and one string comparison.
//!
//! The shard is chosen from the owner's hash, so one lock covers all counters
//! of a device. Hashes are keyed with a per-engine random state (HashDoS).
//!
//! A counter does not copy its rule: it remembers the rule's *generation* and
//! the start of the window it counted in, and rolls over lazily when either
//! differs from the rule's current one. Updating a rule is therefore O(1).

mod counter;
mod table;

pub(crate) use counter::CounterState;

use crossbeam_utils::CachePadded;
use smallvec::SmallVec;

use self::table::{Probe, RetainPass, SlotsView, Table};
use crate::sync::AtomicU64;
use crate::sync::{SpinGuard as MutexGuard, SpinLock as Mutex};
use crate::types::SmallStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Who a counter belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum OwnerKind {
    /// A device under `enterprise_all_devices` rules.
    Device = 0,
    /// A consumer under `enterprise_all_custom_consumers` rules.
    Consumer = 1,
    /// A rule's own shared counter.
    Pool = 2,
}

/// An owner with its precomputed hash (borrowed: building one allocates nothing).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Owner<'a> {
    pub kind: OwnerKind,
    /// The rule slot for pools, 0 otherwise.
    pub pool: u32,
    /// The entity id; empty for pools.
    pub id: &'a str,
    pub hash: u64,
}

struct Entry {
    /// The owner's kind (the low 8 bits) and, above them, a pool's rule
    /// slot or, for a device or consumer, the configuration version under
    /// which no single rule named it (see [`Entry::alone_at`]). One word,
    /// so that the entry stays 112 bytes.
    tag: u64,
    /// The owner's stamp, once a leased handle relies on it (see [`Stamp`]):
    /// every write to the entry bumps it. Set by a grant, dropped only with
    /// the entry (whose removal bumps it too).
    stamp: Option<Stamp>,
    /// Inline up to 22 bytes (typical device ids): comparing it costs no
    /// extra cache miss.
    id: SmallStr<22>,
    counters: SmallVec<[CounterState; 2]>,
}

/// [`Entry::tag`] above the kind for an entity not known to be alone.
const NOT_ALONE: u64 = u64::MAX >> 8;

impl Entry {
    fn new(owner: &Owner<'_>) -> Entry {
        let above = match owner.kind {
            OwnerKind::Pool => u64::from(owner.pool),
            _ => NOT_ALONE,
        };
        Entry {
            tag: above << 8 | owner.kind as u64,
            stamp: None,
            id: SmallStr::new(owner.id),
            counters: SmallVec::new(),
        }
    }

    #[inline]
    fn kind(&self) -> OwnerKind {
        match self.tag as u8 {
            0 => OwnerKind::Device,
            1 => OwnerKind::Consumer,
            _ => OwnerKind::Pool,
        }
    }

    #[inline]
    fn is(&self, o: &Owner<'_>) -> bool {
        self.tag as u8 == o.kind as u8
            && (o.kind != OwnerKind::Pool || self.tag >> 8 == u64::from(o.pool))
            && crate::types::same_bytes(self.id.as_bytes(), o.id.as_bytes())
    }

    /// Whether the entity (a device or consumer) was found named by no
    /// single rule under configuration `version`, so that only all-scope
    /// rules apply to it as a subject while that version holds.
    #[inline]
    fn alone_at(&self, version: u64) -> bool {
        version < NOT_ALONE && self.tag >> 8 == version
    }

    /// Records [`Entry::alone_at`] `version` (for an entity; a version that
    /// does not fit above the kind is not recorded: 2^56 configuration
    /// writes are not reached).
    fn set_alone_at(&mut self, version: u64) {
        if self.kind() != OwnerKind::Pool && version < NOT_ALONE {
            self.tag = version << 8 | (self.tag & 0xff);
        }
    }
}

#[derive(Default)]
pub(crate) struct Shard {
    table: Table<Entry>,
}

/// Slots a sweep ([`Store::evict`], [`Store::visit_mut`]) looks at per
/// hold of a shard's lock: a few microseconds of waiting for a call on
/// that shard.
const SWEEP_STEP: usize = 128;

/// Total size of the shard tables from which single calls prefetch their
/// entry before locking: half of this machine's 32 MB L3 (smaller tables
/// stay mostly cached, and the prefetch would only cost time).
const PREFETCH_ABOVE_BYTES: usize = 16 << 20;

/// Hashes owners; shared by the counter store and the rule indexes so a
/// request hashes each entity id once.
#[derive(Clone)]
pub(crate) struct OwnerHasher(ahash::RandomState);

impl OwnerHasher {
    pub fn new() -> OwnerHasher {
        OwnerHasher(ahash::RandomState::new())
    }

    /// Hash of an entity id under a namespace tag (owner kind or index kind).
    #[inline]
    pub fn entity(&self, tag: u8, id: &str) -> u64 {
        use std::hash::{BuildHasher, Hasher};
        let mut h = self.0.build_hasher();
        h.write_u8(tag);
        h.write(id.as_bytes());
        h.finish()
    }

    #[inline]
    fn of_entry(&self, e: &Entry) -> u64 {
        match e.kind() {
            OwnerKind::Pool => self.pool((e.tag >> 8) as u32),
            k => self.entity(k as u8, e.id.as_str()),
        }
    }

    #[inline]
    pub fn pool(&self, rule: u32) -> u64 {
        self.0.hash_one((OwnerKind::Pool as u8, rule))
    }
}

/// An owner's change stamp: it changes whenever a locked call takes the
/// counters of an owner a leased handle relies on for writing, or `evict`
/// removes one of them. A leased handle keeps a reference to the stamp of
/// each of its owners and the value it saw at its grant, and its lock-free
/// path spends only while they are unchanged (one atomic load per owner): so
/// a `record`, another caller's debit (which may exhaust a rule of any
/// benefit type, D13) or a window rolled by another caller sends the
/// handle's next call through the locks. One stamp per owner, in its own
/// allocation (entries move when a table grows; the stamp must not): a
/// stamp shared by several owners made each one's refills end the others'
/// leases, over and over.
///
/// Its low 16 bits count the handles holding leases on the owner's
/// counters right now ([`hold`], [`let_go`]), the rest its changes: `evict`
/// keeps an entry whose counters hold leases, and only those (a handle
/// that watches an owner but holds nothing there pins nothing).
pub(crate) type Stamp = Arc<AtomicU64>;

/// One holder, in a stamp's value (see [`Stamp`]).
const HOLDER: u64 = 1;
/// The bits of a stamp's value counting its holders.
const HOLDERS: u64 = (1 << 16) - 1;
/// One change, in a stamp's value.
const CHANGE: u64 = 1 << 16;

/// Changes `stamp`; returns its new value.
#[inline]
fn bump(stamp: &Stamp) -> u64 {
    stamp
        .fetch_add(CHANGE, Ordering::AcqRel)
        .wrapping_add(CHANGE)
}

/// Counts one more handle holding leases on the stamp's owner; its new
/// value, or `None` (nothing changed) if as many hold it as the stamp can
/// count. Call with the owner's shard locked.
#[inline]
pub(crate) fn hold(stamp: &Stamp) -> Option<u64> {
    let v = stamp.load(Ordering::Acquire);
    if v & HOLDERS == HOLDERS {
        return None;
    }
    Some(stamp.fetch_add(HOLDER, Ordering::AcqRel) + HOLDER)
}

/// Counts one handle fewer holding leases on the stamp's owner (one that
/// [`hold`] counted, once its leases were given back).
#[inline]
pub(crate) fn let_go(stamp: &Stamp) {
    stamp.fetch_sub(HOLDER, Ordering::AcqRel);
}

/// Whether a handle holds leases on the owner of `stamp`.
#[inline]
fn held(stamp: &Stamp) -> bool {
    Arc::strong_count(stamp) > 1 && stamp.load(Ordering::Acquire) & HOLDERS != 0
}

/// The counters of `e`, handed out for writing: if a leased handle relies
/// on the entry, its stamp changes first. A stamp no handle holds any more
/// is dropped instead, so that writes to an owner whose leased handles are
/// gone cost nothing: handles take their references under this entry's
/// shard lock only (in a grant), so a count of one, read under it, stays
/// one until the lock is released.
#[inline(always)]
fn writing(e: &mut Entry) -> &mut Counters {
    stamp_write(e);
    &mut e.counters
}

/// The stamp side of [`writing`].
#[inline(always)]
fn stamp_write(e: &mut Entry) {
    if let Some(stamp) = &e.stamp {
        if Arc::strong_count(stamp) == 1 {
            e.stamp = None;
        } else {
            bump(stamp);
        }
    }
}

/// A shard's lock, and how many callers are waiting for it.
struct ShardLock {
    lock: Mutex<Shard>,
    /// Callers spinning for `lock` right now: an eviction, which releases
    /// the lock between its steps, lets them in before it takes the lock
    /// again ([`ShardLock::let_waiters_in`]). Without this, a sweep that
    /// takes the lock again at once kept a caller spinning for the whole
    /// shard, the spin lock being unfair. A hint (std's atomic): the
    /// protocol does not rest on it.
    waiting: std::sync::atomic::AtomicU32,
}

impl Default for ShardLock {
    fn default() -> Self {
        ShardLock {
            lock: Mutex::new(Shard::default()),
            waiting: std::sync::atomic::AtomicU32::new(0),
        }
    }
}

impl ShardLock {
    #[inline]
    fn lock(&self) -> MutexGuard<'_, Shard> {
        match self.lock.try_lock() {
            Some(guard) => guard,
            None => self.lock_contended(),
        }
    }

    #[cold]
    #[inline(never)]
    fn lock_contended(&self) -> MutexGuard<'_, Shard> {
        self.waiting.fetch_add(1, Ordering::Relaxed);
        let guard = self.lock.lock();
        self.waiting.fetch_sub(1, Ordering::Relaxed);
        guard
    }

    /// With the lock released: while callers are waiting for it, for at
    /// most a few microseconds (one may have been preempted), gives them
    /// the time to take it. A waiter looks at the lock after every pause
    /// instruction, and every 32nd time yields its core first (see
    /// `crate::sync::SpinThenYield`), so it may take a yield's time to
    /// see the lock free.
    fn let_waiters_in(&self) {
        #[cfg(not(benefit_quota_loom))]
        for _ in 0..256 {
            if self.waiting.load(Ordering::Relaxed) == 0 {
                break;
            }
            std::hint::spin_loop();
        }
    }
}

/// The sharded counter store.
pub(crate) struct Store {
    /// Each shard's lock, around its table, on a line of its own (two
    /// threads on different shards write different lines).
    shards: Box<[CachePadded<ShardLock>]>,
    /// Where each shard's slots are, for prefetching before the lock (see
    /// [`SlotsView`]): one word per shard, in an array apart from the
    /// locks, so that the views of all shards take a few kilobytes that
    /// stay in cache even when the tables do not, and a call's read of its
    /// view does not wait for its shard's lock line, which another core may
    /// hold.
    views: Box<[SlotsView<Entry>]>,
    /// The least table size whose layout is published to its view.
    min_slots: usize,
    shift: u32,
    hasher: OwnerHasher,
    /// Counters in existence (maintained on creation and eviction only).
    count: CachePadded<AtomicUsize>,
    cap: usize,
}

impl Store {
    /// `shards` must be a power of two.
    pub fn new(shards: usize, hasher: OwnerHasher, cap: usize) -> Store {
        Store::with_prefetch_above(shards, hasher, cap, PREFETCH_ABOVE_BYTES)
    }

    /// [`Store::new`], with single calls prefetching their entry only once
    /// the shard tables together take about `bytes` (see [`SlotsView`]).
    fn with_prefetch_above(shards: usize, hasher: OwnerHasher, cap: usize, bytes: usize) -> Store {
        debug_assert!(shards.is_power_of_two());
        let min_slots = bytes / std::mem::size_of::<Option<Entry>>() / shards;
        let v: Vec<_> = (0..shards)
            .map(|_| CachePadded::new(ShardLock::default()))
            .collect();
        Store {
            shards: v.into_boxed_slice(),
            views: (0..shards).map(|_| SlotsView::new()).collect(),
            min_slots,
            shift: 64 - shards.trailing_zeros(),
            hasher,
            count: CachePadded::new(AtomicUsize::new(0)),
            cap,
        }
    }

    /// Accounts for `n` counters about to be created; false (and nothing
    /// accounted) if that would pass the cap.
    pub fn reserve(&self, n: usize) -> bool {
        let before = self.count.fetch_add(n, Ordering::Relaxed);
        if before.saturating_add(n) > self.cap {
            self.count.fetch_sub(n, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Removes every counter for which `drop` is true (and owners left with
    /// none), a few slots of one shard at a time; returns how many were
    /// removed.
    ///
    /// `drop` is given the state `enter` made for the step just before the
    /// shard's lock was taken (as in [`Store::visit_mut`]: the engine holds
    /// a rule-table copy for one step at a time, not for the whole sweep,
    /// during which a configuration write, and the calls waiting behind it
    /// for a copy, would wait), and each counter's owner (kind and entity
    /// id, empty for a pool). Counters whose rule slot has
    /// `crate::grant::CEILING` set (a ledger's ceilings) are removed the
    /// same way but not counted.
    ///
    /// The lock is released every [`SWEEP_STEP`] slots, so that a call
    /// waits for a step of a sweep, not a shard's whole table (a thousand
    /// owners per shard over a million devices). An owner may
    /// be looked at twice in a sweep (`drop` must allow it, as a rule's
    /// predicate does), and one made meanwhile may be left for the next.
    pub fn evict<S>(
        &self,
        enter: impl FnMut() -> S,
        mut drop: impl FnMut(&S, (OwnerKind, &str), &CounterState) -> bool,
    ) -> usize {
        let mut removed = 0;
        self.sweep(
            enter,
            |state, e| {
                // An owner on whose counters a leased handle holds leases
                // keeps its entry and counters until the handle gives them
                // back: the counters hold the unspent leases (a counter
                // evicted and made again in the same window would take back
                // what it never held), and a removed entry would take its
                // stamp with it, so that the next write, to a new entry,
                // would not end the leases. Holds are counted under this
                // lock only (in a grant); one let go of meanwhile only
                // keeps the entry until the next eviction. A handle that
                // watches the owner and holds nothing there pins nothing:
                // the removal below changes the stamp, so its next call
                // takes the locks.
                if e.stamp.as_ref().is_some_and(held) {
                    return true;
                }
                let before = e.counters.len();
                let owner = (e.kind(), e.id.as_str());
                e.counters.retain(|c| {
                    let gone = drop(state, owner, c);
                    removed += usize::from(gone && c.rule & crate::grant::CEILING == 0);
                    !gone
                });
                if let Some(stamp) = e
                    .stamp
                    .as_ref()
                    .filter(|_| e.counters.len() != before || e.counters.is_empty())
                {
                    bump(stamp);
                }
                !e.counters.is_empty()
            },
            std::mem::drop,
        );
        self.count.fetch_sub(removed, Ordering::Relaxed);
        removed
    }

    /// Calls `f` with every owner's kind, entity id and counters, a few
    /// slots of one shard at a time, with the state `enter` made for that
    /// step just before the shard's lock was taken; `leave` gets the state
    /// back while the shard is still locked. A ledger's sweeps and shutdown
    /// hold a rule-table copy for one step at a time (taken before the
    /// shard's lock, as every call takes them), and send what they took
    /// back from the step's counters before any later call can change them.
    ///
    /// Steps as in [`Store::evict`], letting the calls waiting for the
    /// shard in between. Every owner present throughout is visited; one
    /// may be visited twice if another removal or a growth moved entries
    /// between two steps (`f` must allow it: a give-back finds nothing
    /// left to give the second time; an idle sweep may find a ceiling it
    /// marked idle a moment ago idle, and give it back a sweep early).
    pub fn visit_mut<S>(
        &self,
        enter: impl FnMut() -> S,
        mut f: impl FnMut(&mut S, OwnerKind, &str, &mut Counters),
        leave: impl FnMut(S),
    ) {
        self.sweep(
            enter,
            |state, e| {
                stamp_write(e);
                f(state, e.kind(), e.id.as_str(), &mut e.counters);
                true
            },
            leave,
        );
    }

    /// The sweep under [`Store::evict`] and [`Store::visit_mut`]: every
    /// shard in [`SWEEP_STEP`]s of its table ([`Table::retain_some`]), each
    /// step with the state `enter` made just before the shard's lock was
    /// taken, given back to `leave` before the lock is released; `keep`
    /// says whether an entry stays. Between steps, the calls waiting for
    /// the shard go first ([`ShardLock::let_waiters_in`]).
    fn sweep<S>(
        &self,
        mut enter: impl FnMut() -> S,
        mut keep: impl FnMut(&mut S, &mut Entry) -> bool,
        mut leave: impl FnMut(S),
    ) {
        let hasher = &self.hasher;
        for shard_lock in self.shards.iter() {
            let mut pass = RetainPass::default();
            loop {
                let mut state = enter();
                let mut shard = shard_lock.lock();
                let done = shard.table.retain_some(
                    &mut pass,
                    SWEEP_STEP,
                    |e| keep(&mut state, e),
                    |e| hasher.of_entry(e),
                );
                leave(state);
                std::mem::drop(shard);
                if done {
                    break;
                }
                shard_lock.let_waiters_in();
            }
        }
    }

    /// The owner key of an entity's counters.
    #[inline]
    pub fn entity<'a>(&self, kind: OwnerKind, id: &'a str, hash: u64) -> Owner<'a> {
        Owner {
            kind,
            pool: 0,
            id,
            hash,
        }
    }

    /// The owner key of an entity's counters, its id hashed here (where
    /// the hash is not needed for anything else first).
    #[inline]
    pub fn entity_hashed<'a>(&self, kind: OwnerKind, id: &'a str) -> Owner<'a> {
        self.entity(kind, id, self.hasher.entity(kind as u8, id))
    }

    /// The owner key of a rule's pool.
    #[inline]
    pub fn pool(&self, rule: u32) -> Owner<'static> {
        Owner {
            kind: OwnerKind::Pool,
            pool: rule,
            id: "",
            hash: self.hasher.pool(rule),
        }
    }

    #[inline]
    pub fn shard_index(&self, o: &Owner<'_>) -> usize {
        if self.shift == 64 {
            0
        } else {
            // The table uses the low bits of the hash (and the rule indexes'
            // hashbrown tables its top 7 bits); the shard takes bits just
            // below the top 7.
            ((o.hash << 7) >> self.shift) as usize
        }
    }

    /// Asks the CPU for the lines where `owner`'s entry most likely is,
    /// without locking its shard (from the layout the shard last published):
    /// a single call does this as soon as it has hashed its subject, so the
    /// entry's miss overlaps the rest of resolution and the locking.
    #[inline]
    pub fn prefetch(&self, owner: &Owner<'_>) {
        self.prefetch_in(self.shard_index(owner), owner);
    }

    /// [`Store::prefetch`] for an owner whose shard the caller has already
    /// computed.
    #[inline]
    pub fn prefetch_in(&self, shard: usize, owner: &Owner<'_>) {
        if let Some(view) = self.views.get(shard) {
            view.prefetch_home(owner.hash);
        }
    }

    /// Asks for the lines of slot `slot` of shard `shard` (a handle's
    /// remembered slot), without locking it.
    #[inline]
    pub fn prefetch_slot(&self, shard: usize, slot: usize) {
        if let Some(view) = self.views.get(shard) {
            view.prefetch_slot(slot);
        }
    }

    /// Locks shard `index` alone (see [`ShardGuard`]).
    #[inline(always)]
    pub fn lock_shard(&self, index: usize) -> ShardGuard<'_> {
        ShardGuard(self.shards[index].lock())
    }

    /// Locks one shard, inline: the usual operation's counters all live in
    /// one (no list to walk, no collection to move).
    #[inline]
    fn lock_one(&self, index: usize) -> Locked<'_> {
        Locked {
            first: Some((index, self.shards[index].lock())),
            rest: None,
            store: self,
        }
    }

    /// Locks the given shards in ascending index order (deadlock-free).
    /// `indices` must be sorted and deduplicated. One shard, the usual case,
    /// is locked inline ([`Store::lock_one`]).
    #[inline]
    pub fn lock_many(&self, indices: &[usize]) -> Locked<'_> {
        match indices {
            &[index] => self.lock_one(index),
            _ => self.lock_several(indices),
        }
    }

    /// [`Store::lock_many`] for no shard or several, out of line.
    #[inline(never)]
    fn lock_several(&self, indices: &[usize]) -> Locked<'_> {
        let (first, rest) = match indices.split_first() {
            Some((&i, rest)) => (Some((i, self.shards[i].lock())), rest),
            None => (None, indices),
        };
        let others =
            (!rest.is_empty()).then(|| rest.iter().map(|&i| (i, self.shards[i].lock())).collect());
        Locked {
            first,
            rest: others,
            store: self,
        }
    }

    /// Accounts for `n` counters restored from a ledger, past the cap if
    /// need be: a ledger's usage is never dropped for room (the cap may
    /// have been lowered between lives); new counters are then refused
    /// until evict brings the count under the cap.
    pub fn reserve_restored(&self, n: usize) {
        self.count.fetch_add(n, Ordering::Relaxed);
    }

    /// Whether no counter can be created without passing the cap.
    pub fn is_full(&self) -> bool {
        self.count.load(Ordering::Relaxed) >= self.cap
    }

    /// Number of tracked counters.
    pub fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }
}

/// The counters of `owner` in `table`, for writing, if its entry is marked
/// alone at `version` (see [`Locked::mark_alone`]).
#[inline(always)]
fn alone_counters<'t>(
    table: &'t mut Table<Entry>,
    owner: &Owner<'_>,
    version: u64,
) -> Option<&'t mut Counters> {
    table
        .find_mut(owner.hash, |e| e.is(owner))
        .filter(|e| e.alone_at(version))
        .map(writing)
}

/// The counters of `owner` in `table`, for writing, if it has any, found
/// through the slot `hint` remembers if it is still current (`hint` is
/// updated).
#[inline(always)]
fn hinted_counters<'t>(
    table: &'t mut Table<Entry>,
    owner: &Owner<'_>,
    hint: &mut SlotHint,
) -> Option<&'t mut Counters> {
    let slot = match table.remembered(hint.slot, hint.epoch) {
        Some(i) => i,
        None => {
            let i = table.find_index(owner.hash, |e| e.is(owner))?;
            *hint = SlotHint::at(i, table.epoch());
            i
        }
    };
    Some(writing(table.at_mut(slot)))
}

/// One shard's lock, held alone: what a call by subject deciding from its
/// thread's copy of the rules holds, and a call through an exact handle
/// whose counters are all one owner's (one owner, one shard: none of
/// [`Locked`]'s bookkeeping for several).
pub(crate) struct ShardGuard<'s>(MutexGuard<'s, Shard>);

impl ShardGuard<'_> {
    /// [`Locked::counters_if_alone`] in this shard.
    #[inline(always)]
    pub fn counters_if_alone(&mut self, owner: &Owner<'_>, version: u64) -> Option<&mut Counters> {
        alone_counters(&mut self.0.table, owner, version)
    }

    /// [`Locked::counters_if_any_hinted`] in this shard.
    #[inline(always)]
    pub fn counters_if_any_hinted(
        &mut self,
        owner: &Owner<'_>,
        hint: &mut SlotHint,
    ) -> Option<&mut Counters> {
        hinted_counters(&mut self.0.table, owner, hint)
    }

    /// The counters of the entity whose slot `hint` remembers, for writing,
    /// if the hint is current (the entry there is still that entity's) and
    /// the entry is marked alone at `version` (see
    /// [`Locked::mark_alone`]); `None` otherwise, with nothing read beyond
    /// that entry.
    #[inline(always)]
    pub fn counters_if_alone_at(&mut self, hint: &SlotHint, version: u64) -> Option<&mut Counters> {
        let table = &mut self.0.table;
        let slot = table.remembered(hint.slot, hint.epoch)?;
        let e = table.at_mut(slot);
        e.alone_at(version).then(|| writing(e))
    }

    /// Marks the entity whose slot `hint` remembers, if the hint is
    /// current, as named by no single rule under configuration `version`:
    /// the caller learned that under a rule-table copy at `version` (it
    /// need not hold it now) and read `version` as the current one under
    /// this shard's lock. The mark is a fact about `version`, true whenever
    /// it is written; only a read at the same version uses it.
    #[inline]
    pub fn mark_alone_at(&mut self, hint: &SlotHint, version: u64) {
        let table = &mut self.0.table;
        if let Some(slot) = table.remembered(hint.slot, hint.epoch) {
            table.at_mut(slot).set_alone_at(version);
        }
    }
}

/// A held shard lock and the shard's index.
type Held<'s> = (usize, MutexGuard<'s, Shard>);

/// A set of held shard locks.
pub(crate) struct Locked<'s> {
    /// The lowest shard held: most operations hold only this one, and it
    /// costs no collection.
    first: Option<Held<'s>>,
    /// The others, ascending; `None` rather than empty, so the usual
    /// one-shard operation has no collection to build or drop. Room for
    /// five more inline: a subject's rules count on at most as many owners
    /// as there are rules (its device or consumer, its single rules' and its
    /// enterprise pools' counters), and six rules are kept inline
    /// (`crate::rules::AppliedVec`), so no call under that many allocates.
    /// Kept that small because several shards are locked out of line and
    /// the whole `Locked` is returned by value (moved on every such call).
    /// One shard is locked inline, building this in place.
    rest: Option<SmallVec<[Held<'s>; 5]>>,
    /// The store: its hasher, and its views, to which a held table's
    /// layout is published when it grows.
    store: &'s Store,
}

impl Locked<'_> {
    /// The table of a held shard. A shard that is not held cannot be asked
    /// for: callers lock every shard they touch (the first shard's table
    /// stands in, as the old index lookup's default did).
    #[inline]
    fn table(&self, shard: usize) -> &Table<Entry> {
        let rest = self.rest.as_deref().unwrap_or_default();
        if let Some((i, g)) = &self.first {
            if *i == shard || rest.is_empty() {
                debug_assert_eq!(*i, shard, "shard {shard} is not held");
                return &g.table;
            }
        }
        match rest.binary_search_by_key(&shard, |(j, _)| *j) {
            Ok(p) => &rest[p].1.table,
            Err(_) => {
                debug_assert!(false, "shard {shard} is not held");
                &rest[0].1.table
            }
        }
    }

    /// [`Locked::table`], for writing.
    #[inline]
    fn table_mut(&mut self, shard: usize) -> &mut Table<Entry> {
        let rest = self.rest.as_deref_mut().unwrap_or_default();
        if let Some((i, g)) = self.first.as_mut() {
            if *i == shard || rest.is_empty() {
                debug_assert_eq!(*i, shard, "shard {shard} is not held");
                return &mut g.table;
            }
        }
        let p = rest.binary_search_by_key(&shard, |(j, _)| *j);
        debug_assert!(p.is_ok(), "shard {shard} is not held");
        &mut rest[p.unwrap_or_default()].1.table
    }

    /// The counters of `owner`, if it has any.
    #[inline]
    pub fn counters(&self, shard: usize, owner: &Owner<'_>) -> Option<&[CounterState]> {
        self.table(shard)
            .find(owner.hash, |e| e.is(owner))
            .map(|e| e.counters.as_slice())
    }

    /// The slot of `owner`'s entry in shard `shard`, if it has one: its
    /// slot for as long as the shard stays locked and no entry is added to
    /// or removed from it (see [`Locked::counters_in`]).
    #[inline]
    pub fn slot_of(&self, shard: usize, owner: &Owner<'_>) -> Option<usize> {
        self.table(shard).find_index(owner.hash, |e| e.is(owner))
    }

    /// The counters of the entry in `slot` of shard `shard`, a slot
    /// [`Locked::slot_of`] found under these locks.
    #[inline]
    pub fn counters_in(&self, shard: usize, slot: usize) -> &[CounterState] {
        &self.table(shard).at(slot).counters
    }

    /// [`Locked::counters_in`], for writing.
    #[inline]
    pub fn counters_in_mut(&mut self, shard: usize, slot: usize) -> &mut Counters {
        writing(self.table_mut(shard).at_mut(slot))
    }

    /// [`Locked::counters_if_any`] for an owner whose slot `hint` may
    /// remember (then without probing or comparing ids); `hint` is updated.
    /// Always inlined: a handle's decision finds its entry through it, and
    /// once leases called it too LLVM would outline it into every call.
    #[inline(always)]
    pub fn counters_if_any_hinted(
        &mut self,
        shard: usize,
        owner: &Owner<'_>,
        hint: &mut SlotHint,
    ) -> Option<&mut Counters> {
        hinted_counters(self.table_mut(shard), owner, hint)
    }

    /// The counters of `owner`, if it has any, for writing.
    #[inline]
    pub fn counters_if_any(&mut self, shard: usize, owner: &Owner<'_>) -> Option<&mut Counters> {
        self.table_mut(shard)
            .find_mut(owner.hash, |e| e.is(owner))
            .map(writing)
    }

    /// [`Locked::counters_if_any`] for an entity marked alone at `version`
    /// ([`Locked::mark_alone`]): `None` if it has no entry or was not
    /// marked at that version.
    #[inline(always)]
    pub fn counters_if_alone(
        &mut self,
        shard: usize,
        owner: &Owner<'_>,
        version: u64,
    ) -> Option<&mut Counters> {
        alone_counters(self.table_mut(shard), owner, version)
    }

    /// Marks the entity `owner` (if it has an entry) as named by no single
    /// rule under configuration `version`, which the caller read with a
    /// rule-table copy of that version locked.
    pub fn mark_alone(&mut self, shard: usize, owner: &Owner<'_>, version: u64) {
        if let Some(e) = self.table_mut(shard).find_mut(owner.hash, |e| e.is(owner)) {
            e.set_alone_at(version);
        }
    }

    /// `owner`'s stamp (see [`Stamp`]), made if the entry had none, and
    /// its value after this call: its entry is created empty if missing
    /// (it stays, marked, until evicted), so that the write creating its
    /// first counter is seen too. `hint` is updated.
    pub fn lease_owner(
        &mut self,
        shard: usize,
        owner: &Owner<'_>,
        hint: &mut SlotHint,
    ) -> (Stamp, u64) {
        let entry = self.owner_entry_hinted(shard, owner, hint);
        let e = entry.table.at_mut(entry.slot);
        let stamp = e.stamp.get_or_insert_with(|| Arc::new(AtomicU64::new(0)));
        (Arc::clone(stamp), bump(stamp))
    }

    /// The counters of `owner`, its entry created if missing. Creating an
    /// entry is the only allocating step (the owner id is copied once, when the
    /// entity is first seen).
    #[inline]
    pub fn counters_mut(&mut self, shard: usize, owner: &Owner<'_>) -> &mut Counters {
        self.owner_entry(shard, owner).into_counters()
    }
}

impl<'s> Locked<'s> {
    /// The owner's entry, created if missing; call
    /// [`OwnerEntry::remove_if_empty`] when done so an owner that ends up with
    /// no counter leaves nothing behind.
    #[inline]
    pub fn owner_entry(&mut self, shard: usize, owner: &Owner<'_>) -> OwnerEntry<'_> {
        let store = self.store;
        let hasher = &store.hasher;
        let table = self.table_mut(shard);
        let slot = slot_of(table, store, shard, owner);
        writing(table.at_mut(slot));
        OwnerEntry {
            table,
            slot,
            hasher,
        }
    }

    /// [`Locked::owner_entry`] for an owner whose slot `hint` may remember
    /// (then without probing or comparing ids); `hint` is updated.
    #[inline]
    pub fn owner_entry_hinted(
        &mut self,
        shard: usize,
        owner: &Owner<'_>,
        hint: &mut SlotHint,
    ) -> OwnerEntry<'_> {
        let store = self.store;
        let hasher = &store.hasher;
        let table = self.table_mut(shard);
        let slot = match table.remembered(hint.slot, hint.epoch) {
            Some(slot) => {
                debug_assert!(table.at_mut(slot).is(owner));
                slot
            }
            None => {
                let slot = slot_of(table, store, shard, owner);
                *hint = SlotHint::at(slot, table.epoch());
                slot
            }
        };
        writing(table.at_mut(slot));
        OwnerEntry {
            table,
            slot,
            hasher,
        }
    }
}

/// The slot of `owner`'s entry in `table` (shard `shard` of `store`), the
/// entry created if missing (and the table's layout published to the
/// shard's view if creating grew it: growth is the only change that moves a
/// table's slots, and the views, eight to a cache line that every call
/// reads, are written no more than that).
#[inline]
fn slot_of(table: &mut Table<Entry>, store: &Store, shard: usize, owner: &Owner<'_>) -> usize {
    let before = table.capacity();
    let hash_of = |e: &Entry| store.hasher.of_entry(e);
    match table.probe_for_insert(owner.hash, |e| e.is(owner), hash_of) {
        Probe::Found(i) => i,
        Probe::Vacant(i) => {
            if table.capacity() != before {
                store.views[shard].publish(table, store.min_slots);
            }
            table.insert_at(i, Entry::new(owner));
            i
        }
    }
}

/// Where an owner's entry was found last: its slot and the table's layout
/// epoch at the time. While the epoch is unchanged the entry is still in that
/// slot (entries move only when the epoch is bumped), so a handle can go
/// straight to it.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SlotHint {
    slot: usize,
    /// 0: nothing remembered (tables start at epoch 1).
    epoch: u64,
}

impl SlotHint {
    fn at(slot: usize, epoch: u64) -> SlotHint {
        SlotHint { slot, epoch }
    }

    /// Whether a slot was remembered (it may be out of date).
    #[inline]
    pub fn is_set(&self) -> bool {
        self.epoch != 0
    }

    /// The slot remembered (meaningful only if [`SlotHint::is_set`]; it may
    /// be out of date: use it to prefetch, not to read).
    #[inline]
    pub fn slot(&self) -> usize {
        self.slot
    }
}

/// One owner's entry, held for an operation on a single owner.
pub(crate) struct OwnerEntry<'t> {
    table: &'t mut Table<Entry>,
    slot: usize,
    hasher: &'t OwnerHasher,
}

impl<'t> OwnerEntry<'t> {
    /// The owner's counters.
    #[inline]
    pub fn counters(&mut self) -> &mut Counters {
        &mut self.table.at_mut(self.slot).counters
    }

    /// The owner's counters, for as long as the entry was borrowed.
    #[inline]
    pub fn into_counters(self) -> &'t mut Counters {
        &mut self.table.at_mut(self.slot).counters
    }

    /// Drops the entry again if no counter was created in it.
    #[inline]
    pub fn remove_if_empty(self) {
        if self.table.at_mut(self.slot).counters.is_empty() {
            let hasher = self.hasher;
            self.table.remove_at(self.slot, |e| hasher.of_entry(e));
        }
    }
}

/// An owner's counters, one per rule.
pub(crate) type Counters = SmallVec<[CounterState; 2]>;

/// The counter of `rule` among an owner's counters, created empty if missing.
#[inline]
pub(crate) fn counter_of(counters: &mut Counters, rule: u32) -> &mut CounterState {
    match counters.iter().position(|c| c.rule == rule) {
        Some(i) => &mut counters[i],
        None => {
            counters.push(CounterState::new(rule));
            let last = counters.len() - 1;
            &mut counters[last]
        }
    }
}

impl Owner<'_> {
    /// Same owner (the common case, the same borrowed id, is a pointer compare).
    #[inline]
    pub fn same(&self, o: &Owner<'_>) -> bool {
        self.kind == o.kind
            && self.pool == o.pool
            && self.hash == o.hash
            && (std::ptr::eq(self.id, o.id) || self.id == o.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_small() {
        // id (24) + the tag (kind, and a pool's slot or an entity's
        // alone-at version: 8) + the stamp a leased handle watches (8) + two
        // inline counters (64) + SmallVec tag (8)
        assert!(
            std::mem::size_of::<Entry>() <= 112,
            "{}",
            std::mem::size_of::<Entry>()
        );
    }

    #[test]
    fn an_entity_is_alone_only_at_the_version_it_was_marked_at() {
        let store = Store::new(1, OwnerHasher::new(), usize::MAX);
        let h = store.hasher.entity(OwnerKind::Device as u8, "d");
        let d = store.entity(OwnerKind::Device, "d", h);
        let c = store.entity(OwnerKind::Consumer, "d", h); // same id and hash
        let mut l = store.lock_many(&[0]);
        // No entry: nothing to mark, nothing found.
        l.mark_alone(0, &d, 3);
        assert!(l.counters_if_alone(0, &d, 3).is_none());
        counter_of(l.counters_mut(0, &d), 1).add(1);
        // Not marked yet, at any version (version 0 included).
        assert!(l.counters_if_alone(0, &d, 0).is_none());
        assert!(l.counters_if_alone(0, &d, 3).is_none());
        l.mark_alone(0, &d, 3);
        assert!(l
            .counters_if_alone(0, &d, 3)
            .is_some_and(|cs| cs.len() == 1));
        assert!(l.counters_if_alone(0, &d, 4).is_none());
        assert!(l.counters_if_alone(0, &d, 2).is_none());
        // The consumer with the same id is another owner, never marked.
        counter_of(l.counters_mut(0, &c), 1).add(1);
        assert!(l.counters_if_alone(0, &c, 3).is_none());
        // The mark does not change who the entry is.
        assert!(l.counters(0, &d).is_some_and(|cs| cs.len() == 1));
        // A version that does not fit above the kind is never recorded.
        l.mark_alone(0, &d, u64::MAX >> 8);
        assert!(l.counters_if_alone(0, &d, u64::MAX >> 8).is_none());
        assert!(l.counters_if_alone(0, &d, 3).is_some());
        l.mark_alone(0, &d, u64::MAX);
        assert!(l.counters_if_alone(0, &d, u64::MAX).is_none());
    }

    #[test]
    fn pools_are_told_apart_by_slot_and_never_marked_alone() {
        let store = Store::new(1, OwnerHasher::new(), usize::MAX);
        let (p7, p8) = (store.pool(7), store.pool(8));
        let mut l = store.lock_many(&[0]);
        counter_of(l.counters_mut(0, &p7), 7).add(1);
        assert!(l.counters(0, &p8).is_none());
        // Another slot whose hash collides with the first's: still another pool.
        let p8_colliding = Owner {
            hash: p7.hash,
            ..p8
        };
        assert!(l.counters(0, &p8_colliding).is_none());
        l.mark_alone(0, &p7, 0);
        assert!(l.counters_if_alone(0, &p7, 0).is_none());
        assert!(l.counters(0, &p7).is_some_and(|cs| cs.len() == 1));
    }

    #[test]
    fn holds_are_counted_apart_from_changes_and_never_overflow_into_them() {
        let stamp: Stamp = Arc::new(AtomicU64::new(0));
        let _watcher = Arc::clone(&stamp);
        assert!(!held(&stamp));
        let v = hold(&stamp).expect("room");
        assert!(held(&stamp));
        assert_eq!(bump(&stamp), v + CHANGE);
        let_go(&stamp);
        assert!(!held(&stamp));
        // Full: no hold, and nothing changes.
        stamp.store(5 * CHANGE + HOLDERS, Ordering::Relaxed);
        assert_eq!(hold(&stamp), None);
        assert_eq!(stamp.load(Ordering::Relaxed), 5 * CHANGE + HOLDERS);
        // A stamp no handle references is not held, whatever it counts.
        drop(_watcher);
        assert!(!held(&stamp));
    }

    #[test]
    fn a_leased_owners_stamp_changes_with_every_write_until_no_handle_holds_it() {
        let store = Store::new(1, OwnerHasher::new(), usize::MAX);
        let h = store.hasher.entity(OwnerKind::Device as u8, "d");
        let d = store.entity(OwnerKind::Device, "d", h);
        let mut hint = SlotHint::default();
        let mut l = store.lock_many(&[0]);
        // No entry yet: one is made, empty, to carry the stamp.
        let (stamp, seen) = l.lease_owner(0, &d, &mut hint);
        assert_eq!(stamp.load(Ordering::Relaxed), seen);
        assert!(l.counters(0, &d).is_some_and(|c| c.is_empty()));
        counter_of(l.counters_mut(0, &d), 1).add(1);
        assert_ne!(stamp.load(Ordering::Relaxed), seen);
        let seen = stamp.load(Ordering::Relaxed);
        // Reading changes nothing; any write path does.
        let _ = l.counters(0, &d);
        assert_eq!(stamp.load(Ordering::Relaxed), seen);
        let _ = l.counters_if_any(0, &d);
        assert_ne!(stamp.load(Ordering::Relaxed), seen);
        // A second lease takes the same stamp.
        let (again, _) = l.lease_owner(0, &d, &mut hint);
        assert!(Arc::ptr_eq(&stamp, &again));
        // Once no handle holds it, the next write drops it.
        drop((stamp, again));
        let _ = l.counters_if_any(0, &d);
        let slot = l
            .table(0)
            .find_index(d.hash, |e| e.is(&d))
            .unwrap_or(usize::MAX);
        assert!(l.table_mut(0).at_mut(slot).stamp.is_none());
    }

    #[test]
    fn shards_publish_where_their_slots_are() {
        // Growing moves a table's slots; the lock-free prefetch view must
        // follow, or single calls would prefetch freed memory forever. Tables
        // below the threshold (64 slots here) publish nothing.
        let slot = std::mem::size_of::<Option<Entry>>();
        let store = Store::with_prefetch_above(1, OwnerHasher::new(), usize::MAX, 64 * slot);
        let ids: Vec<String> = (0..1000).map(|i| format!("dev-{i}")).collect();
        for id in &ids {
            let h = store.hasher.entity(OwnerKind::Device as u8, id);
            let owner = store.entity(OwnerKind::Device, id, h);
            let mut l = store.lock_many(&[0]);
            counter_of(l.counters_mut(0, &owner), 1).add(1);
            drop(l);
            let shard = store.shards[0].lock();
            if shard.table.capacity() >= 64 {
                assert!(store.views[0].shows(&shard.table), "after {id}");
            } else {
                assert!(store.views[0].is_blank(), "after {id}");
            }
        }
        assert!(store.shards[0].lock().table.capacity() >= 1024);
        // The default threshold: a thousand devices in 1024 shards (a few
        // kilobytes per shard) publish nothing.
        let store = Store::new(1024, OwnerHasher::new(), usize::MAX);
        for id in &ids {
            let owner = store.entity(OwnerKind::Device, id, store.hasher.entity(0, id));
            let shard = store.shard_index(&owner);
            counter_of(store.lock_many(&[shard]).counters_mut(shard, &owner), 1).add(1);
        }
        assert!(store.views.iter().all(|v| v.is_blank()));
    }

    #[test]
    fn counters_are_found_per_owner_and_rule() {
        let store = Store::new(4, OwnerHasher::new(), usize::MAX);
        let h = store.hasher.entity(OwnerKind::Device as u8, "d1");
        let d1 = store.entity(OwnerKind::Device, "d1", h);
        let c1 = store.entity(
            OwnerKind::Consumer,
            "d1",
            store.hasher.entity(OwnerKind::Consumer as u8, "d1"),
        );
        let p = store.pool(7);
        let mut shards: Vec<usize> = [&d1, &c1, &p]
            .iter()
            .map(|o| store.shard_index(o))
            .collect();
        shards.sort_unstable();
        shards.dedup();
        assert!(store.reserve(3));
        let mut l = store.lock_many(&shards);
        let used = |l: &Locked<'_>, o: &Owner<'_>, rule: u32| {
            l.counters(store.shard_index(o), o)
                .and_then(|cs| cs.iter().find(|c| c.rule == rule))
                .map(|c| c.used)
        };
        counter_of(l.counters_mut(store.shard_index(&d1), &d1), 3).add(5);
        counter_of(l.counters_mut(store.shard_index(&d1), &d1), 4).add(6);
        counter_of(l.counters_mut(store.shard_index(&p), &p), 7).add(7);
        assert_eq!(used(&l, &d1, 3), Some(5));
        assert_eq!(used(&l, &d1, 4), Some(6));
        assert_eq!(used(&l, &c1, 3), None);
        assert_eq!(used(&l, &p, 7), Some(7));
        assert!(d1.same(&store.entity(OwnerKind::Device, "d1", h)));
        assert!(!d1.same(&c1));
        drop(l);
        assert_eq!(store.len(), 3);
        assert_eq!(store.evict(|| (), |_, _, c| c.rule == 4), 1);
        assert_eq!(store.len(), 2);
        let capped = Store::new(1, OwnerHasher::new(), 2);
        assert!(capped.reserve(2));
        assert!(!capped.reserve(1));
        assert_eq!(capped.len(), 2);
    }
}
