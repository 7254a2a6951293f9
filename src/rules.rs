//! The rule table and rule resolution (D5, D9–D12).
//!
//! Rules are kept in creation order (their *slot*); indexes map entities to
//! the non-cancelled rules that name them, so resolving a subject costs a few
//! hash lookups whatever the number of rules.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use hashbrown::HashTable;
use smallvec::SmallVec;

use crate::amount::MICROS_PER_UNIT;
use crate::errors::ApiError;
use crate::period::{Period, UtcOffset, Window};
use crate::state::{Owner, OwnerHasher, OwnerKind, Store};
use crate::subject::Subject;
use crate::types::{BenefitInfo, BenefitType, EntityType, Family, Status};

/// What the engine does with a frozen rule (D12).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum FrozenPolicy {
    /// A frozen rule in effect blocks its subjects and still replaces the
    /// all-scope rule of its slot (the default).
    #[default]
    Block,
    /// A frozen rule is treated as not in effect.
    Suspend,
}

/// A stored rule plus what the hot path needs precomputed.
#[derive(Debug)]
pub(crate) struct RuleEntry {
    pub info: BenefitInfo,
    /// Bumped (wrapping) whenever an update must restart usage from zero (D16).
    pub generation: u32,
    /// The limit in micro-units, saturating (D14).
    pub limit_micros: u64,
    /// The reset schedule.
    pub period: Period,
    /// Start of the fixed window last computed: most calls fall in it, which
    /// saves the two divisions of [`Period::window`]. Racy by design: any
    /// thread may store the start of the window its `now` falls in, and a
    /// reader only uses it after checking that `now` is inside.
    cached_start: AtomicI64,
    /// D10, precomputed from the record: the times at which the rule can
    /// apply, `[from, to]` (empty for a cancelled rule, all time for an
    /// enterprise rule; a frozen rule is judged by the policy on top).
    live: (i64, i64),
    /// See [`RuleEntry::slot_bit`].
    slot_bit: u8,
    /// Cancelled here because a full sync's listing left it out (S2), not
    /// by the platform: a later listing may bring it back, with its
    /// counters, which `evict` keeps meanwhile (S3).
    pub withdrawn: bool,
}

impl RuleEntry {
    pub fn new(info: BenefitInfo, offset: UtcOffset) -> RuleEntry {
        let limit_micros = (info.limit as u64).saturating_mul(MICROS_PER_UNIT);
        let period = Period::new(
            info.entity_type.family(),
            info.reset,
            info.started_at,
            offset,
        );
        let live = match (info.status, info.entity_type.family()) {
            (Status::Cancel, _) => (i64::MAX, i64::MIN),
            (_, Family::Enterprise) => (i64::MIN, i64::MAX),
            _ => (info.started_at, info.ended_at),
        };
        let kind = u8::from(!info.reset.is_cumulative());
        RuleEntry {
            generation: 0,
            limit_micros,
            cached_start: AtomicI64::new(period.first_start()),
            period,
            live,
            slot_bit: 1 << (bt_index(info.benefit_type) * 2 + kind as usize),
            info,
            withdrawn: false,
        }
    }

    /// The rule's window at `now` (`None`: cumulative), D15.
    #[inline]
    pub fn window(&self, now: i64) -> Option<Window> {
        let len = self.period.fixed_len();
        if len > 0 {
            let start = self.cached_start.load(Ordering::Relaxed);
            // `now` is clamped to ±2^40 and windows are shorter than 2^38 s.
            if start <= now && now - start < len {
                return Some(Window {
                    start,
                    end: start + len,
                });
            }
        } else if self.period.is_cumulative() {
            return None; // without the call into the calendar arithmetic
        }
        let w = self.period.window(now)?;
        if len > 0 {
            self.cached_start.store(w.start, Ordering::Relaxed);
        }
        Some(w)
    }

    /// Whether a subject's resolution can change at `t` because of this
    /// rule's activation window: only single and all-scope rules have one
    /// (enterprise rules are in effect whatever the time, D10).
    #[inline]
    fn note_activation(&self, now: i64, valid: &mut Validity) {
        if self.info.entity_type.family() != Family::Enterprise {
            valid.note(now, self.info.started_at);
            valid.note(now, self.info.ended_at.saturating_add(1));
        }
    }

    /// D10 + D12: whether the rule applies at `now`.
    #[inline]
    pub fn in_effect(&self, now: i64, policy: FrozenPolicy) -> bool {
        let (from, to) = self.live;
        from <= now
            && now <= to
            && !(policy == FrozenPolicy::Suspend && self.info.status == Status::Frozen)
    }

    /// The slot bit of this rule: benefit type × kind (cumulative / periodic).
    #[inline]
    fn slot_bit(&self) -> u8 {
        self.slot_bit
    }
}

#[inline]
pub(crate) fn bt_index(bt: BenefitType) -> usize {
    match bt {
        BenefitType::ResourcePoint => 0,
        BenefitType::VoiceUnifiedDurationSystem => 1,
        BenefitType::VoiceUnifiedDurationCustom => 2,
    }
}

/// Rule slots listed in an index: four inline, which takes no more room
/// than two (the heap pointer and length are as large).
type SlotList = SmallVec<[u32; 4]>;

/// Rules naming one entity, found by the same hash the counter store uses.
struct IndexEntry {
    id: Arc<str>,
    hash: u64,
    slots: SlotList,
}

#[derive(Default)]
struct Index(HashTable<IndexEntry>);

impl Index {
    #[inline]
    fn get(&self, hash: u64, id: &str) -> Option<&[u32]> {
        self.0
            .find(hash, |e| *e.id == *id)
            .map(|e| e.slots.as_slice())
    }

    fn slots_mut(&mut self, hash: u64, id: &str) -> &mut SlotList {
        &mut self
            .0
            .entry(hash, |e| *e.id == *id, |e| e.hash)
            .or_insert_with(|| IndexEntry {
                id: Arc::from(id),
                hash,
                slots: SmallVec::new(),
            })
            .into_mut()
            .slots
    }
}

/// Hash tags of the enterprise indexes (the device and consumer indexes use
/// the owner kinds' tags, so one hash serves the index and the counters).
const ENTERPRISE_TAGS: [u8; 4] = [3, 4, 5, 6];

/// All rules, in creation order, with their lookup indexes.
pub(crate) struct RuleSet {
    pub rules: Vec<RuleEntry>,
    by_id: HashMap<Arc<str>, u32, ahash::RandomState>,
    /// Non-cancelled `enterprise_all_*` rules in slot order: [device, consumer]
    /// (D5 allows at most two per benefit type: one flat list is one loop).
    all_scope: [SlotList; 2],
    /// Non-cancelled single rules by entity id: [device, consumer].
    singles: [Index; 2],
    /// Non-cancelled enterprise rules by id: [user, role, workspace, organization].
    enterprise: [Index; 4],
    next_id: u64,
    hasher: OwnerHasher,
    offset: UtcOffset,
}

/// What D5 looks at in a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RuleShape {
    pub entity_type: EntityType,
    pub benefit_type: BenefitType,
    pub cumulative: bool,
    pub status: Status,
}

impl RuleShape {
    pub fn of(info: &BenefitInfo) -> RuleShape {
        RuleShape {
            entity_type: info.entity_type,
            benefit_type: info.benefit_type,
            cumulative: info.reset.is_cumulative(),
            status: info.status,
        }
    }

    /// Only non-cancelled `enterprise_all_*` rules are limited by D5.
    fn counts_for_d5(&self) -> bool {
        self.entity_type.is_all_scope() && self.status != Status::Cancel
    }

    /// Would these two rules break D5 together?
    pub fn clashes_with(&self, o: &RuleShape) -> bool {
        self.counts_for_d5()
            && o.counts_for_d5()
            && self.entity_type == o.entity_type
            && self.benefit_type == o.benefit_type
            && self.cumulative == o.cumulative
    }
}

/// The D5 error, naming `field`.
pub(crate) fn d5_error(candidate: &RuleShape, other_id: &str, field: &str) -> ApiError {
    ApiError::invalid(
        field,
        format_args!(
            "{} already has a {} {} rule ({other_id}); at most one is allowed",
            candidate.entity_type,
            if candidate.cumulative {
                "cumulative"
            } else {
                "periodic"
            },
            candidate.benefit_type,
        ),
    )
}

/// The times over which a subject's resolution stays the same, `[lo, hi)`:
/// between the activation boundaries (`started_at`, `ended_at + 1`) of the
/// rules it looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Validity {
    pub lo: i64,
    pub hi: i64,
}

impl Validity {
    pub const ALWAYS: Validity = Validity {
        lo: i64::MIN,
        hi: i64::MAX,
    };

    #[inline]
    fn note(&mut self, now: i64, boundary: i64) {
        if boundary <= now {
            self.lo = self.lo.max(boundary);
        } else {
            self.hi = self.hi.min(boundary);
        }
    }

    #[inline]
    pub fn contains(&self, now: i64) -> bool {
        self.lo <= now && now < self.hi
    }
}

/// One rule that applies to a subject, with the owner of its counter.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Applied<'a> {
    pub slot: u32,
    pub owner: Owner<'a>,
    pub shard: usize,
    pub window: Option<Window>,
}

/// Inline capacity for applicable rules: no allocation unless a subject is
/// under more than six rules at once.
pub(crate) type AppliedVec<'a> = SmallVec<[Applied<'a>; 6]>;

fn family_index(f: Family) -> usize {
    match f {
        Family::Device => 0,
        Family::CustomConsumer => 1,
        Family::Enterprise => 2,
    }
}

fn enterprise_index(t: EntityType) -> usize {
    match t {
        EntityType::CozeUserId => 0,
        EntityType::CozeRole => 1,
        EntityType::CozeWorkspace => 2,
        _ => 3,
    }
}

impl RuleSet {
    pub fn new(hasher: OwnerHasher, offset: UtcOffset) -> RuleSet {
        RuleSet {
            offset,
            rules: Vec::new(),
            by_id: HashMap::default(),
            all_scope: Default::default(),
            singles: Default::default(),
            enterprise: Default::default(),
            next_id: 1,
            hasher,
        }
    }

    pub fn slot_of(&self, id: &str) -> Option<u32> {
        self.by_id.get(id).copied()
    }

    /// A fresh decimal id, unique in this engine (D7), and the counter value
    /// to store with [`RuleSet::insert`] once it is used.
    pub fn generate_id(&self) -> (String, u64) {
        let mut next = self.next_id;
        loop {
            let id = next.to_string();
            next += 1;
            if !self.by_id.contains_key(id.as_str()) {
                return (id, next);
            }
        }
    }

    /// D5: at most one non-cancelled cumulative and one periodic rule per
    /// (`enterprise_all_*` type, benefit type). Checks `candidate` against the
    /// stored rules, except those `replaced` by the same write (the rule being
    /// updated, or rules an import replaces; those are checked as candidates).
    pub fn check_unique(
        &self,
        candidate: &RuleShape,
        replaced: impl Fn(u32) -> bool,
        field: &str,
    ) -> Result<(), ApiError> {
        if !candidate.counts_for_d5() {
            return Ok(());
        }
        let fam = family_index(candidate.entity_type.family());
        for &other in &self.all_scope[fam] {
            let o = &self.rules[other as usize].info;
            if replaced(other) || o.benefit_type != candidate.benefit_type {
                continue;
            }
            if o.reset.is_cumulative() == candidate.cumulative {
                return Err(d5_error(candidate, o.benefit_id.as_str(), field));
            }
        }
        Ok(())
    }

    /// Where `info`'s slot is listed: the all-scope list of its family, or
    /// its entity's list in an index.
    fn index_list(&mut self, info: &BenefitInfo) -> Option<&mut SlotList> {
        let t = info.entity_type;
        if t.is_all_scope() {
            return Some(&mut self.all_scope[family_index(t.family())]);
        }
        let id = info.entity_id.as_ref()?.as_str();
        let (index, tag) = match t.family() {
            Family::Enterprise => {
                let i = enterprise_index(t);
                (&mut self.enterprise[i], ENTERPRISE_TAGS[i])
            }
            Family::Device => (&mut self.singles[0], OwnerKind::Device as u8),
            Family::CustomConsumer => (&mut self.singles[1], OwnerKind::Consumer as u8),
        };
        Some(index.slots_mut(self.hasher.entity(tag, id), id))
    }

    /// Appends a new rule; `next_id` is the id counter after it (see
    /// [`RuleSet::generate_id`]; pass the current one for imported ids).
    pub fn insert(&mut self, info: BenefitInfo, next_id: u64) -> u32 {
        let entry = RuleEntry::new(info, self.offset);
        self.next_id = next_id;
        let slot = self.rules.len() as u32;
        self.by_id
            .insert(Arc::from(entry.info.benefit_id.as_str()), slot);
        if entry.info.status != Status::Cancel {
            let info = entry.info.clone();
            if let Some(list) = self.index_list(&info) {
                list.push(slot);
            }
        }
        self.rules.push(entry);
        slot
    }

    pub fn next_id(&self) -> u64 {
        self.next_id
    }

    /// Replaces a rule's record; the scope and benefit type never change.
    /// A cancelled rule comes back only when it was withdrawn (S3): it is
    /// indexed again, in slot order.
    pub fn replace(&mut self, slot: u32, info: BenefitInfo, bump_generation: bool) {
        let (was, now) = (self.rules[slot as usize].info.status, info.status);
        if was != Status::Cancel && now == Status::Cancel {
            if let Some(list) = self.index_list(&info) {
                list.retain(|s| *s != slot);
            }
        } else if was == Status::Cancel && now != Status::Cancel {
            debug_assert!(self.rules[slot as usize].withdrawn);
            if let Some(list) = self.index_list(&info) {
                if let Err(at) = list.binary_search(&slot) {
                    list.insert(at, slot);
                }
            }
        }
        let e = &mut self.rules[slot as usize];
        let generation = e.generation.wrapping_add(u32::from(bump_generation));
        *e = RuleEntry::new(info, self.offset);
        e.generation = generation;
    }

    /// Collects the rules that apply to `subject` at `now` (D9–D12), in slot order
    /// within each family. `store` is the counter store and whether to
    /// prefetch each entity's counter entry once its id is hashed.
    #[inline(always)]
    pub fn resolve<'a>(
        &'a self,
        subject: &Subject<'a>,
        now: i64,
        policy: FrozenPolicy,
        store: (&Store, bool),
        out: &mut AppliedVec<'a>,
        valid: &mut Validity,
    ) {
        if let Some(id) = subject.device_id {
            self.resolve_entity(0, OwnerKind::Device, id, now, policy, store, out, valid);
        }
        if let Some(id) = subject.custom_consumer_id {
            self.resolve_entity(1, OwnerKind::Consumer, id, now, policy, store, out, valid);
        }
        if let Some(m) = subject.member {
            let ids = [
                m.coze_user_id,
                m.coze_role,
                m.workspace_id,
                m.organization_id,
            ];
            for (i, id) in ids.iter().enumerate() {
                let Some(id) = id else { continue };
                let hash = self.hasher.entity(ENTERPRISE_TAGS[i], id);
                let Some(list) = self.enterprise[i].get(hash, id) else {
                    continue;
                };
                for &slot in list {
                    let e = &self.rules[slot as usize];
                    if e.in_effect(now, policy) {
                        out.push(pool(slot, e, now, store.0));
                    }
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn resolve_entity<'a>(
        &'a self,
        fam: usize,
        kind: OwnerKind,
        id: &'a str,
        now: i64,
        policy: FrozenPolicy,
        (store, prefetch): (&Store, bool),
        out: &mut AppliedVec<'a>,
        valid: &mut Validity,
    ) {
        // One hash of the id serves the single-rule index and the counters.
        let hash = self.hasher.entity(kind as u8, id);
        let owner = store.entity(kind, id, hash);
        if prefetch {
            // Ask for the entity's counter entry now: its miss overlaps the
            // single-rule lookup below, the locking and the decision's setup.
            store.prefetch(&owner);
        }
        // D11: in-effect single rules replace the all-scope rule of their slot.
        let mut covered = 0u8;
        if let Some(list) = self.singles[fam].get(hash, id) {
            for &slot in list {
                let e = &self.rules[slot as usize];
                e.note_activation(now, valid);
                if e.in_effect(now, policy) {
                    covered |= e.slot_bit();
                    out.push(pool(slot, e, now, store));
                }
            }
        }
        let shard = store.shard_index(&owner);
        self.resolve_all_scope(fam, owner, shard, covered, now, policy, out, valid);
    }

    /// The all-scope rules of family `fam` (0: devices, 1: consumers) that
    /// apply to `owner` (an entity of that family, whose counters are in
    /// `shard`) at `now`, except those of the slots in `covered` (replaced
    /// by single rules, D11), pushed to `out`; `valid` notes their
    /// activation boundaries.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    pub fn resolve_all_scope<'a>(
        &'a self,
        fam: usize,
        owner: Owner<'a>,
        shard: usize,
        covered: u8,
        now: i64,
        policy: FrozenPolicy,
        out: &mut AppliedVec<'a>,
        valid: &mut Validity,
    ) {
        for &slot in &self.all_scope[fam] {
            let e = &self.rules[slot as usize];
            e.note_activation(now, valid);
            if covered & e.slot_bit() != 0 || !e.in_effect(now, policy) {
                continue;
            }
            out.push(Applied {
                slot,
                owner,
                shard,
                window: e.window(now),
            });
        }
    }

    /// Whether a single rule (of family `fam`) names the entity `id`
    /// (hashed to `hash` with its owner kind's tag), in effect or not.
    #[inline]
    pub fn lists_single_rules(&self, fam: usize, hash: u64, id: &str) -> bool {
        self.singles[fam]
            .get(hash, id)
            .is_some_and(|list| !list.is_empty())
    }
}

/// A single-entity or enterprise rule: its counter is the rule's own pool.
#[inline]
fn pool(slot: u32, e: &RuleEntry, now: i64, store: &Store) -> Applied<'static> {
    let owner = store.pool(slot);
    Applied {
        slot,
        shard: store.shard_index(&owner),
        owner,
        window: e.window(now),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn four_inline_slots_take_no_more_room_than_two() {
        // What `SlotList`'s inline capacity rests on: an index of a million
        // single rules costs the same with four slots inline as with two.
        assert_eq!(
            std::mem::size_of::<SlotList>(),
            std::mem::size_of::<SmallVec<[u32; 2]>>()
        );
    }
}
