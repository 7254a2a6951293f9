//! The hash table of a shard: open addressing, linear probing, entries stored
//! in the slots themselves.
//!
//! Why not `hashbrown`: its lookups read a control-byte group first and the
//! entry second, two dependent cache misses when the table is large (a million
//! devices). Here an entry lives in its *home slot* (`hash & mask`) or a few
//! slots after it, so a lookup costs one miss (the slot's lines, fetched
//! together), and a call (or a batch, for each of its calls) can ask for
//! the entry's home slot before it locks the shard (see [`SlotsView`]). The price is a lower maximum
//! load (3/4) and no SIMD group probing; entries are ~100 bytes, so a probe
//! that moves on stays within the next line or two.
//!
//! Deletion shifts the following entries of the cluster back (no tombstones),
//! so a probe always ends at the first empty slot. The table is never full:
//! it grows (doubling, rehashing every entry) before passing 3/4 load.

use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};

/// An open-addressing table of `T`, located by a caller-supplied 64-bit hash
/// (the table uses its low bits).
pub(crate) struct Table<T> {
    /// Power-of-two length (or empty).
    slots: Box<[Option<T>]>,
    len: usize,
    /// Layout epoch: bumped whenever an entry leaves its slot (each
    /// removal, with its shifting; growth), never by an insertion into an
    /// empty slot. While it is unchanged, an entry found at slot `i` is still there.
    /// Starts at 1, so 0 can mean "no slot remembered".
    epoch: u64,
}

impl<T> Default for Table<T> {
    fn default() -> Self {
        Table {
            slots: Box::default(),
            len: 0,
            epoch: 1,
        }
    }
}

/// Where a probe ended.
pub(crate) enum Probe {
    /// The entry is in this slot.
    Found(usize),
    /// Not present; this empty slot is where it would go (with room for it).
    Vacant(usize),
}

/// Where a [`Table::retain_some`] pass stands between its steps.
#[derive(Debug, Default)]
pub(crate) struct RetainPass {
    /// The slot to look at next.
    next: usize,
    /// The empty slot the pass started after, where it ends.
    stop: usize,
    /// The table's slot count when the pass started.
    slots: usize,
    /// The layout epoch the pass left the table at.
    epoch: u64,
    /// Whether the fields above were set.
    started: bool,
}

impl<T> Table<T> {
    /// Number of entries.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.len
    }

    /// The layout epoch (see the field).
    #[inline]
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Slot `i` if the layout is still at `epoch` (so whatever entry was
    /// found there then is there now).
    #[inline]
    pub fn remembered(&self, i: usize, epoch: u64) -> Option<usize> {
        (epoch == self.epoch && i < self.slots.len()).then_some(i)
    }

    #[inline]
    fn mask(&self) -> usize {
        self.slots.len().wrapping_sub(1)
    }

    /// The slot an entry of `hash` is placed at when nothing precedes it.
    #[inline]
    fn home(&self, hash: u64) -> usize {
        home_slot(hash, self.mask())
    }

    /// The slot holding the entry of `hash` that satisfies `eq`.
    #[inline(always)]
    pub fn find_index(&self, hash: u64, mut eq: impl FnMut(&T) -> bool) -> Option<usize> {
        if self.len == 0 {
            return None;
        }
        let mask = self.mask();
        let mut i = self.home(hash);
        // Terminates: the table is never full, so a probe meets an empty slot.
        while let Some(e) = &self.slots[i] {
            if eq(e) {
                return Some(i);
            }
            i = (i + 1) & mask;
        }
        None
    }

    /// The entry of `hash` that satisfies `eq`.
    #[inline]
    pub fn find(&self, hash: u64, eq: impl FnMut(&T) -> bool) -> Option<&T> {
        self.find_index(hash, eq)
            .and_then(|i| self.slots[i].as_ref())
    }

    /// [`Table::find`], for writing.
    #[inline(always)]
    pub fn find_mut(&mut self, hash: u64, eq: impl FnMut(&T) -> bool) -> Option<&mut T> {
        let i = self.find_index(hash, eq)?;
        self.slots[i].as_mut()
    }

    /// Finds the entry of `hash`, or the empty slot it goes to, growing the
    /// table first if one more entry would pass 3/4 load. `hash_of` rehashes
    /// entries when the table grows.
    #[inline]
    pub fn probe_for_insert(
        &mut self,
        hash: u64,
        mut eq: impl FnMut(&T) -> bool,
        hash_of: impl Fn(&T) -> u64,
    ) -> Probe {
        if let Some(i) = self.find_index(hash, &mut eq) {
            return Probe::Found(i);
        }
        if (self.len + 1) * 4 > self.slots.len() * 3 {
            self.grow(&hash_of);
        }
        Probe::Vacant(self.first_vacant(hash))
    }

    /// The first empty slot from the home of `hash` on (the table has room).
    #[inline]
    fn first_vacant(&self, hash: u64) -> usize {
        let mask = self.mask();
        let mut i = self.home(hash);
        while self.slots[i].is_some() {
            i = (i + 1) & mask;
        }
        i
    }

    /// Puts `value` into the empty slot `i` returned by
    /// [`Table::probe_for_insert`] (with no change to the table in between).
    #[inline]
    pub fn insert_at(&mut self, i: usize, value: T) {
        debug_assert!(self.slots[i].is_none());
        self.len += 1;
        self.slots[i] = Some(value);
    }

    /// The entry in slot `i`.
    ///
    /// # Panics
    /// If the slot is empty (a caller bug: indices come from a probe).
    #[inline]
    pub fn at(&self, i: usize) -> &T {
        match &self.slots[i] {
            Some(e) => e,
            None => panic!("slot {i} is empty"),
        }
    }

    /// [`Table::at`], for writing.
    ///
    /// # Panics
    /// If the slot is empty (a caller bug: indices come from a probe).
    #[inline]
    pub fn at_mut(&mut self, i: usize) -> &mut T {
        match &mut self.slots[i] {
            Some(e) => e,
            None => panic!("slot {i} is empty"),
        }
    }

    /// Removes the entry in slot `i`, shifting the rest of its cluster back
    /// so no probe stops early.
    pub fn remove_at(&mut self, mut i: usize, hash_of: impl Fn(&T) -> u64) -> Option<T> {
        let removed = self.slots[i].take()?;
        self.len -= 1;
        self.epoch += 1;
        let mask = self.mask();
        let mut j = i;
        loop {
            j = (j + 1) & mask;
            let home = match &self.slots[j] {
                None => break,
                Some(e) => self.home(hash_of(e)),
            };
            // The entry at j may fill the hole at i if its home is not in the
            // cyclic range (i, j]: then a probe from its home passes i.
            if (j.wrapping_sub(home) & mask) >= (j.wrapping_sub(i) & mask) {
                self.slots[i] = self.slots[j].take();
                i = j;
            }
        }
        Some(removed)
    }

    /// Keeps the entries for which `keep` is true (it may also change them),
    /// offering each entry to `keep` once. In place: a kept entry moves
    /// only to fill the hole of a removed one (as in [`Table::remove_at`]),
    /// and the layout epoch changes only if something was removed, so a
    /// pass that removes nothing leaves every remembered slot valid.
    #[cfg(test)]
    pub fn retain(&mut self, keep: impl FnMut(&mut T) -> bool, hash_of: impl Fn(&T) -> u64) {
        let done = self.retain_some(&mut RetainPass::default(), usize::MAX, keep, hash_of);
        debug_assert!(done);
    }

    /// [`Table::retain`] in steps: goes on with `pass` for at most `budget`
    /// slots, and returns whether the pass has looked at every slot. The
    /// caller may let the table change between steps (its lock released):
    /// an entry inserted meanwhile may or may not be offered; removals
    /// meanwhile make the pass look at a few slots behind it again, and a
    /// growth makes it start over (an entry may then be offered again,
    /// which `keep` must allow). Starting over cannot go on for long: a
    /// growth doubles the table, so a pass chasing a table that keeps
    /// growing looks at about twice the slots it ends with, at most (and
    /// the slots that removals made it look at again).
    /// Every entry present from the first step to the last is offered at
    /// least once.
    pub fn retain_some(
        &mut self,
        pass: &mut RetainPass,
        mut budget: usize,
        mut keep: impl FnMut(&mut T) -> bool,
        hash_of: impl Fn(&T) -> u64,
    ) -> bool {
        if pass.started && pass.epoch != self.epoch {
            if self.slots.len() == pass.slots {
                pass.next = self.back_over_removals(pass);
            } else {
                pass.started = false;
            }
        }
        if !pass.started {
            if self.len == 0 {
                return true;
            }
            // Start after an empty slot (the table is never full): no
            // cluster crosses it, so a removal's backward shift moves
            // entries only from slots not yet reached into the slot being
            // looked at or later ones, and every entry is offered once.
            // (An insertion into it between steps can let a later shift
            // bring an entry looked at first back ahead: offered again.)
            let Some(empty) = self.slots.iter().position(Option::is_none) else {
                unreachable!("the table is never full")
            };
            *pass = RetainPass {
                next: (empty + 1) & self.mask(),
                stop: empty,
                slots: self.slots.len(),
                epoch: self.epoch,
                started: true,
            };
        }
        let mask = self.mask();
        while pass.next != pass.stop && budget > 0 {
            budget -= 1;
            let i = pass.next;
            let kept = match self.slots[i].as_mut() {
                None => true,
                Some(e) => keep(e),
            };
            if kept {
                pass.next = (i + 1) & mask;
            } else {
                // The entry shifted into `i`, if any, is looked at next.
                self.remove_at(i, &hash_of);
            }
        }
        pass.epoch = self.epoch;
        pass.next == pass.stop
    }

    /// Where `pass` must go on from after others removed entries (the
    /// epoch moved, the size did not: every move since was a removal's).
    ///
    /// A removal shifts entries back within a run of occupied slots, so an
    /// entry not looked at yet (at `next` or after) may now sit behind
    /// `next`, in the run that reaches `next`: every slot between them was
    /// occupied when it moved, and that removal's own hole ends up at or
    /// after where the entry was. Each later removal leaves at most one
    /// more empty slot between them. So going back over as many empty
    /// slots as there were removals (one epoch step each), and to the
    /// start of the run found there, reaches every such entry; never
    /// before the pass's first slot.
    fn back_over_removals(&self, pass: &RetainPass) -> usize {
        let mask = self.mask();
        let first = (pass.stop + 1) & mask;
        let mut empties = self.epoch - pass.epoch;
        let mut next = pass.next;
        while next != first {
            let before = next.wrapping_sub(1) & mask;
            if self.slots[before].is_none() {
                if empties == 0 {
                    break;
                }
                empties -= 1;
            }
            next = before;
        }
        next
    }

    /// Doubles the capacity (at least 8 slots) and places every entry again.
    #[cold]
    fn grow(&mut self, hash_of: &impl Fn(&T) -> u64) {
        self.epoch += 1;
        let cap = (self.slots.len() * 2).max(8);
        let old = std::mem::replace(&mut self.slots, (0..cap).map(|_| None).collect());
        self.len = 0;
        for e in old.into_vec().into_iter().flatten() {
            self.put(e, hash_of);
        }
    }

    /// Places an entry known to be absent, with room for it.
    fn put(&mut self, e: T, hash_of: &impl Fn(&T) -> u64) {
        let i = self.first_vacant(hash_of(&e));
        self.slots[i] = Some(e);
        self.len += 1;
    }

    /// Slots allocated.
    #[inline]
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }
}

/// The home slot of `hash` in a table with index mask `mask`: one formula
/// for lookups and for the lock-free prefetch, so they cannot drift apart.
#[inline(always)]
fn home_slot(hash: u64, mask: usize) -> usize {
    (hash as usize) & mask
}

/// Asks for the home slot of `hash` in slots at `base`.
#[inline(always)]
fn prefetch_home_at<T>(base: *const Option<T>, mask: usize, hash: u64) {
    let home = base.wrapping_add(home_slot(hash, mask));
    crate::prefetch::range(home, std::mem::size_of::<Option<T>>());
}

/// Where a table's slots are, readable without the table's lock: a call
/// prefetches its entry's lines from here *before* it locks the shard and
/// resolves its rules, so the entry's cache miss overlaps that work.
///
/// The owner of the lock publishes the table's layout after every change of
/// it ([`SlotsView::publish`]; only growth moves the slots). A reader may see
/// a stale layout (freed slots, the old size): it only ever prefetches from
/// it, which cannot fault or change anything (`crate::prefetch`), and it
/// never dereferences the address.
///
/// One word per shard (the slots' address, their count's log2 in the top
/// bits, which no user-space address uses; 0 while nothing was published),
/// so that the views of every shard take as few lines as possible: each
/// call reads its shard's view before anything else, and over a million
/// subjects the views stay in cache only if they are small.
///
/// Only tables of at least `min_slots` slots (the caller's) are published: a
/// smaller table stays in cache, where the prefetch instructions would only
/// cost time.
pub(crate) struct SlotsView<T> {
    packed: AtomicU64,
    _slots: PhantomData<fn() -> T>,
}

/// Bits of [`SlotsView::packed`] below the log2 of the slot count.
const ADDRESS_BITS: u32 = 58;

impl<T> SlotsView<T> {
    /// A view with nothing published.
    pub fn new() -> SlotsView<T> {
        SlotsView {
            packed: AtomicU64::new(0),
            _slots: PhantomData,
        }
    }

    /// Records where `table`'s slots are now, if it has at least `min_slots`
    /// (call with the table's lock held, once it grew: growth is the only
    /// change that moves its slots, and tables never shrink, so a published
    /// layout stays published). An address that does not fit below the
    /// count is not published.
    #[inline]
    pub fn publish(&self, table: &Table<T>, min_slots: usize) {
        let len = table.slots.len();
        let base = table.slots.as_ptr() as usize as u64;
        if len >= min_slots.max(1) && base >> ADDRESS_BITS == 0 {
            // Only a pointer value is stored; nothing is ever read through it.
            let packed = base | u64::from(len.trailing_zeros()) << ADDRESS_BITS;
            self.packed.store(packed, Ordering::Relaxed);
        }
    }

    /// The last published layout: the slots' address and their mask.
    #[inline(always)]
    fn layout(&self) -> Option<(*const Option<T>, usize)> {
        let packed = self.packed.load(Ordering::Relaxed);
        if packed == 0 {
            return None;
        }
        let base = (packed & ((1 << ADDRESS_BITS) - 1)) as usize;
        let mask = (1usize << (packed >> ADDRESS_BITS)) - 1;
        // An address for prefetching only: never dereferenced.
        Some((std::ptr::null::<Option<T>>().wrapping_byte_add(base), mask))
    }

    /// Asks for the home slot of `hash` (the lines a lookup of `hash` most
    /// likely reads), without the table, from the last published layout
    /// (if any): a single call's entry is there most of the time, and each
    /// line asked for costs instructions on every call.
    #[inline]
    pub fn prefetch_home(&self, hash: u64) {
        if let Some((base, mask)) = self.layout() {
            prefetch_home_at(base, mask, hash);
        }
    }

    /// Whether the published layout is `table`'s current one.
    #[cfg(test)]
    pub fn shows(&self, table: &Table<T>) -> bool {
        self.layout().is_some_and(|(base, mask)| {
            std::ptr::eq(base, table.slots.as_ptr()) && mask == table.mask()
        })
    }

    /// Whether nothing is published.
    #[cfg(test)]
    pub fn is_blank(&self) -> bool {
        self.layout().is_none()
    }

    /// Asks for the lines of slot `i` of the last published layout.
    #[inline]
    pub fn prefetch_slot(&self, i: usize) {
        if let Some((base, mask)) = self.layout() {
            let slot = base.wrapping_add(i & mask);
            crate::prefetch::range(slot, std::mem::size_of::<Option<T>>());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    /// Deliberately weak hash (few distinct homes) so clusters and
    /// wrap-around are common.
    fn h(k: &(u16, u32)) -> u64 {
        u64::from(k.0 % 13).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 3 | u64::from(k.0 % 13)
    }

    #[derive(Debug, Clone)]
    enum Step {
        Upsert(u16, u32),
        Remove(u16),
        RetainEven,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            6 => (0u16..64, any::<u32>()).prop_map(|(k, v)| Step::Upsert(k, v)),
            3 => (0u16..64).prop_map(Step::Remove),
            1 => Just(Step::RetainEven),
        ]
    }

    proptest! {
        /// The table behaves as a map (checked against `HashMap` after every
        /// step), never passes 3/4 load, every entry stays reachable from
        /// its home without crossing an empty slot, and a slot remembered
        /// with the layout epoch still holds its entry while the epoch holds.
        #[test]
        fn behaves_like_a_map(steps in proptest::collection::vec(step(), 1..200)) {
            let mut t: Table<(u16, u32)> = Table::default();
            let mut m: HashMap<u16, u32> = HashMap::new();
            let mut remembered: HashMap<u16, (usize, u64)> = HashMap::new();
            for s in steps {
                match s {
                    Step::Upsert(k, v) => {
                        match t.probe_for_insert(h(&(k, 0)), |e| e.0 == k, h) {
                            Probe::Found(i) => t.at_mut(i).1 = v,
                            Probe::Vacant(i) => t.insert_at(i, (k, v)),
                        }
                        m.insert(k, v);
                    }
                    Step::Remove(k) => {
                        let got = t.find_index(h(&(k, 0)), |e| e.0 == k)
                            .and_then(|i| t.remove_at(i, h));
                        prop_assert_eq!(got.map(|e| e.1), m.remove(&k));
                    }
                    Step::RetainEven => {
                        let mut offered: Vec<u16> = Vec::new();
                        let epoch = t.epoch();
                        t.retain(|e| { offered.push(e.0); e.1 % 2 == 0 }, h);
                        let mut present: Vec<u16> = m.keys().copied().collect();
                        let removes = m.values().any(|v| v % 2 != 0);
                        m.retain(|_, v| *v % 2 == 0);
                        // Every entry offered once; a pass that removed
                        // nothing kept the layout.
                        offered.sort_unstable();
                        present.sort_unstable();
                        prop_assert_eq!(offered, present);
                        prop_assert_eq!(t.epoch() == epoch, !removes);
                    }
                }
                prop_assert_eq!(t.len(), m.len());
                prop_assert!(t.len() * 4 <= t.capacity() * 3);
                for (&k, &(slot, epoch)) in &remembered {
                    if let Some(i) = t.remembered(slot, epoch) {
                        prop_assert_eq!(t.at_mut(i).0, k);
                    }
                }
                for k in 0..64u16 {
                    prop_assert_eq!(t.find(h(&(k, 0)), |e| e.0 == k).map(|e| e.1), m.get(&k).copied());
                    if let Some(i) = t.find_index(h(&(k, 0)), |e| e.0 == k) {
                        remembered.insert(k, (i, t.epoch()));
                    }
                }
            }
        }
    }

    #[derive(Debug, Clone)]
    enum Between {
        Upsert(u16, u32),
        Remove(u16),
        /// The pass goes on for this many slots.
        Step(usize),
    }

    fn between() -> impl Strategy<Value = Between> {
        prop_oneof![
            4 => (0u16..64, any::<u32>()).prop_map(|(k, v)| Between::Upsert(k, v)),
            2 => (0u16..64).prop_map(Between::Remove),
            4 => (1usize..12).prop_map(Between::Step),
        ]
    }

    proptest! {
        /// A pass of `retain_some` in steps, with insertions, updates,
        /// removals and growth between them (as an eviction sweep releases
        /// the shard's lock): when it ends, every entry that was odd at its
        /// start and not touched since is gone, and every other entry is
        /// as the changes left it; none is lost, and the table stays a
        /// valid map (every entry found from its home) throughout.
        #[test]
        fn a_pass_in_steps_misses_no_entry_present_throughout(
            start in proptest::collection::vec((0u16..64, any::<u32>()), 0..48),
            steps in proptest::collection::vec(between(), 0..120),
        ) {
            let mut t: Table<(u16, u32)> = Table::default();
            let mut m: HashMap<u16, u32> = HashMap::new();
            let upsert = |t: &mut Table<(u16, u32)>, k: u16, v: u32| {
                match t.probe_for_insert(h(&(k, 0)), |e| e.0 == k, h) {
                    Probe::Found(i) => t.at_mut(i).1 = v,
                    Probe::Vacant(i) => t.insert_at(i, (k, v)),
                }
            };
            for (k, v) in start {
                upsert(&mut t, k, v);
                m.insert(k, v);
            }
            // Odd at the start, untouched since: the pass must remove them.
            let mut doomed: std::collections::HashSet<u16> =
                m.iter().filter(|(_, v)| *v % 2 == 1).map(|(k, _)| *k).collect();
            m.retain(|_, v| *v % 2 == 0);
            let mut pass = RetainPass::default();
            let mut done = false;
            // Changes between steps write even values: the pass keeps them.
            let steps = steps.into_iter().chain(std::iter::repeat_n(Between::Step(usize::MAX), 1));
            for s in steps {
                match s {
                    Between::Upsert(k, v) if !done => {
                        upsert(&mut t, k, v & !1);
                        doomed.remove(&k);
                        m.insert(k, v & !1);
                    }
                    Between::Remove(k) if !done => {
                        let got = t.find_index(h(&(k, 0)), |e| e.0 == k)
                            .and_then(|i| t.remove_at(i, h));
                        if doomed.remove(&k) {
                            prop_assert!(got.is_none_or(|e| e.1 % 2 == 1));
                        } else {
                            prop_assert_eq!(got.map(|e| e.1), m.remove(&k));
                        }
                    }
                    Between::Step(n) if !done => {
                        done = t.retain_some(&mut pass, n, |e| e.1 % 2 == 0, h);
                    }
                    _ => {}
                }
                for k in 0..64u16 {
                    let found = t.find(h(&(k, 0)), |e| e.0 == k).map(|e| e.1);
                    if doomed.contains(&k) {
                        prop_assert!(found.is_none_or(|v| v % 2 == 1));
                    } else {
                        prop_assert_eq!(found, m.get(&k).copied());
                    }
                }
                prop_assert!(t.len() * 4 <= t.capacity() * 3);
            }
            prop_assert!(done);
            prop_assert_eq!(t.len(), m.len());
        }
    }

    /// Two removals between steps: the first shifts an entry not looked
    /// at yet (D) behind the pass, the second leaves an empty slot between
    /// it and the pass (G's, whose follower H is at home and stays). Going
    /// back to the start of the run before the pass alone would miss D.
    #[test]
    fn a_pass_goes_back_over_as_many_empty_slots_as_removals() {
        let id = |e: &(u16, u32)| u64::from(e.0); // home = key & 7
        let mut t: Table<(u16, u32)> = Table::default();
        // Slots 1..=5: A(home 1), B(home 1), G(home 3), H(home 4), D(home 1).
        for (k, v) in [(1, 0), (9, 0), (3, 0), (4, 0), (17, 1)] {
            match t.probe_for_insert(u64::from(k), |e| e.0 == k, id) {
                Probe::Vacant(i) => t.insert_at(i, (k, v)),
                Probe::Found(_) => unreachable!(),
            }
        }
        assert_eq!(t.capacity(), 8);
        assert_eq!(t.find_index(17, |e| e.0 == 17), Some(5));
        let mut pass = RetainPass::default();
        // Slots 1 to 4 looked at; D, odd, is next.
        assert!(!t.retain_some(&mut pass, 4, |e| e.1 % 2 == 0, id));
        for k in [9, 3] {
            let i = t.find_index(u64::from(k), |e| e.0 == k).unwrap();
            t.remove_at(i, id);
        }
        assert_eq!(
            t.find_index(17, |e| e.0 == 17),
            Some(2),
            "D behind the pass"
        );
        assert!(t.retain_some(&mut pass, usize::MAX, |e| e.1 % 2 == 0, id));
        assert!(t.find(17, |e| e.0 == 17).is_none(), "D was offered");
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn an_empty_table_finds_nothing_and_removes_nothing() {
        let mut t: Table<(u16, u32)> = Table::default();
        assert!(t.find(1, |_| true).is_none());
        assert!(t.find_mut(1, |_| true).is_none());
        t.retain(|_| true, h);
        assert_eq!(t.capacity(), 0);
    }
}
