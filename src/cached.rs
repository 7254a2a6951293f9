//! Resolved rules kept between calls: a handle's cache of its subject's
//! rules, and each thread's copy of the all-scope rules that a call by
//! subject, or through an exact handle, for an entity named by no single
//! rule decides with.
//!
//! Both are exact for the same reason (the handle module has the argument
//! in full): they are taken with a copy of the rule table locked, tagged
//! with the configuration version read under that lock, and used only
//! after the same version is read again with the counters' shard locked.
//! Every configuration write bumps the version with every copy of the rule
//! table locked, so on each shard an operation decided with version `v`
//! comes before every operation decided with a later one, as it would had
//! it held a copy of the rule table throughout.

use std::cell::RefCell;
use std::rc::Rc;

use smallvec::SmallVec;

use crate::decide::{RuleView, Rules};
use crate::period::{Period, Window};
use crate::rules::{Applied, FrozenPolicy, RuleEntry, Validity};
use crate::types::{BenefitId, BenefitType};

/// One applicable rule, as a cache keeps it: what a decision reads of the
/// rule, and its window at the last call's `now`.
pub(crate) struct CachedRule {
    pub slot: u32,
    pub id: BenefitId,
    pub benefit_type: BenefitType,
    pub frozen: bool,
    pub limit: u64,
    pub generation: u32,
    pub period: Period,
    /// The window at the last call's `now`.
    pub window: Option<Window>,
    /// Index of the counter's owner among the cache's owners (a handle's;
    /// always 0 in a thread's copy, whose rules count on the subject).
    pub owner: u32,
}

impl CachedRule {
    /// Rule `e` in `slot`, applied with `window`, counted on owner `owner`.
    pub fn of(
        e: &RuleEntry,
        slot: u32,
        policy: FrozenPolicy,
        window: Option<Window>,
        owner: u32,
    ) -> CachedRule {
        let v = RuleView::of(e, slot, policy);
        CachedRule {
            slot,
            id: e.info.benefit_id.clone(),
            benefit_type: v.benefit_type,
            frozen: v.frozen,
            limit: v.limit,
            generation: v.generation,
            period: e.period,
            window,
            owner,
        }
    }

    #[inline]
    pub fn view(&self) -> RuleView<'_> {
        RuleView {
            slot: self.slot,
            benefit_type: self.benefit_type,
            frozen: self.frozen,
            limit: self.limit,
            generation: self.generation,
            period: &self.period,
        }
    }
}

/// Cached rules, as a decision reads them.
pub(crate) struct CachedRules<'h>(pub &'h [CachedRule]);

impl<'h> Rules<'h> for CachedRules<'h> {
    #[inline(always)]
    fn len(&self) -> usize {
        self.0.len()
    }

    #[inline(always)]
    fn rule(&self, i: usize) -> (RuleView<'h>, Option<Window>) {
        let r = &self.0[i];
        (r.view(), r.window)
    }

    /// Every slot a decision names is one of the cached rules.
    #[inline(always)]
    fn id_of(&self, slot: u32) -> &'h BenefitId {
        let r = self.0.iter().find(|r| r.slot == slot);
        r.map_or(&self.0[0].id, |r| &r.id)
    }
}

/// The rules `applied` (all counted on one owner), read from `table`, as a
/// cache keeps them.
pub(crate) fn cached_rules(
    table: &[RuleEntry],
    applied: &[Applied<'_>],
    policy: FrozenPolicy,
) -> SmallVec<[CachedRule; 2]> {
    let of = |a: &Applied<'_>| CachedRule::of(&table[a.slot as usize], a.slot, policy, a.window, 0);
    applied.iter().map(of).collect()
}

/// `valid` narrowed to the windows of `rules` (within it, cached rules are
/// used as they are), and never beyond the times the platform knows, so
/// that a call at an impossible `now` takes a path that rejects it.
pub(crate) fn fresh_range(valid: Validity, rules: &[CachedRule]) -> Validity {
    let mut fresh = valid;
    fresh.lo = fresh.lo.max(0);
    fresh.hi = fresh.hi.min(crate::types::FOREVER + 1);
    for w in rules.iter().filter_map(|r| r.window) {
        fresh.lo = fresh.lo.max(w.start);
        fresh.hi = fresh.hi.min(w.end);
    }
    fresh
}

/// Rolls the windows of `rules` that do not contain `now` to those that do
/// (a new minute, hour or day), if their resolution, valid over `valid`,
/// still holds at `now`; returns the new fresh range then.
pub(crate) fn roll(rules: &mut [CachedRule], valid: Validity, now: i64) -> Option<Validity> {
    if !valid.contains(now) {
        return None;
    }
    for r in rules.iter_mut() {
        if r.window.is_some_and(|w| !w.contains(now)) {
            r.window = r.period.window(now);
        }
    }
    Some(fresh_range(valid, rules))
}

/// One thread's copy of the rules that apply, at one configuration version,
/// to every device (or every consumer) that no single rule names: the
/// family's all-scope rules in effect. A call by subject, or through an
/// exact handle, for such an entity (its counter entry marked alone at that
/// version) decides with it under its shard's lock only, without a copy of
/// the rule table.
pub(crate) struct ThreadRules {
    /// The engine it was taken from ([`crate::Engine`]'s unique id).
    engine: u64,
    /// The owner kind (device or consumer) whose family's rules these are.
    fam: usize,
    /// The configuration version they were read at.
    pub version: u64,
    /// The times over which the same rules apply (their activation).
    valid: Validity,
    /// `valid` narrowed to the rules' current windows.
    fresh: Validity,
    pub rules: SmallVec<[CachedRule; 2]>,
}

/// How many engines and families a thread keeps copies for at once: a
/// gateway has one engine and mostly one family; more is for tests and for
/// processes with several engines, which then take the usual path when
/// their copies were pushed out.
const KEPT: usize = 4;

#[cfg(not(benefit_quota_loom))]
thread_local! {
    static KEPT_RULES: RefCell<Vec<Rc<ThreadRules>>> = const { RefCell::new(Vec::new()) };
}

// One per modelled thread, so that `loom-tests/tests/loom.rs` sees each thread decide
// from its own copy.
#[cfg(benefit_quota_loom)]
loom::thread_local! {
    static KEPT_RULES: RefCell<Vec<Rc<ThreadRules>>> = RefCell::new(Vec::new());
}

/// This thread's copy of the rules of family `fam` of engine `engine`, its
/// windows rolled to `now`, if it holds one that is still valid at `now`.
/// Shared (`Rc`), so that the caller decides outside the thread-local's
/// closure: a decision built inside it was copied out field by field.
///
/// `SITE` names the call site (the call by subject, the exact handle):
/// each gets its own instantiation of the thread-local access, which then
/// inlines into it; one instantiation shared by both was kept out of line,
/// a call more on each.
#[inline(always)]
pub(crate) fn thread_rules<const SITE: u8>(
    engine: u64,
    fam: usize,
    now: i64,
) -> Option<Rc<ThreadRules>> {
    KEPT_RULES
        .try_with(|kept| {
            let mut kept = kept.try_borrow_mut().ok()?;
            let t = kept
                .iter_mut()
                .find(|t| t.engine == engine && t.fam == fam)?;
            if !t.fresh.contains(now) {
                // No call holds the copy between calls: it is changed in
                // place (a new window), never while a decision reads it.
                let t = Rc::get_mut(t)?;
                t.fresh = roll(&mut t.rules, t.valid, now)?;
            }
            Some(Rc::clone(t))
        })
        .ok()
        .flatten()
}

/// Whether this thread holds a copy of family `fam` of `engine` at
/// `version` that applies at `now` (then there is nothing to keep).
pub(crate) fn holds(engine: u64, fam: usize, version: u64, now: i64) -> bool {
    KEPT_RULES
        .try_with(|kept| {
            kept.try_borrow().is_ok_and(|kept| {
                kept.iter().any(|t| {
                    t.engine == engine
                        && t.fam == fam
                        && t.version == version
                        && t.valid.contains(now)
                })
            })
        })
        .unwrap_or(true)
}

/// Keeps, as this thread's copy for family `fam` of `engine`, the rules
/// `applied` (all counted on one owner) read from `table` at `version`,
/// valid over `valid`; the caller holds a copy of the rule table locked.
pub(crate) fn keep(
    engine: u64,
    fam: usize,
    version: u64,
    valid: Validity,
    table: &[RuleEntry],
    applied: &[Applied<'_>],
    policy: FrozenPolicy,
) {
    let rules = cached_rules(table, applied, policy);
    let fresh = fresh_range(valid, &rules);
    let copy = ThreadRules {
        engine,
        fam,
        version,
        valid,
        fresh,
        rules,
    };
    let _ = KEPT_RULES.try_with(|kept| {
        if let Ok(mut kept) = kept.try_borrow_mut() {
            match kept.iter().position(|t| t.engine == engine && t.fam == fam) {
                // In place when no call holds the old copy (none does between
                // calls): a configuration write then costs each thread no
                // allocation (two rules are inline).
                Some(i) => match Rc::get_mut(&mut kept[i]) {
                    Some(old) => *old = copy,
                    None => kept[i] = Rc::new(copy),
                },
                None if kept.len() < KEPT => kept.push(Rc::new(copy)),
                None => {
                    // The copy kept first goes (first in, first out); the
                    // new one is put last.
                    kept.remove(0);
                    kept.push(Rc::new(copy));
                }
            }
        }
    });
}
