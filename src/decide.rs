//! Deciding one operation over the counters of its rules (D13, D14, D17).
//!
//! Both enforcement paths end here: a call by subject (rules resolved under
//! the rule table's read lock) and a call through a [`crate::SubjectHandle`]
//! (rules and counter locations cached in the handle). The caller holds the
//! lock of every counter shard the operation touches.

use crate::amount::Amount;
use crate::decision::{Decision, Denial, DenyReason, Headroom};
use crate::period::{Period, Window};
use crate::rules::{FrozenPolicy, RuleEntry};
use crate::state::{counter_of, CounterState, Counters, Store};
use crate::types::{BenefitId, BenefitType, Status};

/// What an operation does to the counters of the rules it touches.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Check,
    TryConsume(BenefitType, u64),
    Record(BenefitType, u64),
}

impl Op {
    /// Whether the operation may create counters (and so counter owners).
    #[inline]
    pub fn debits(self) -> bool {
        !matches!(self, Op::Check)
    }
}

/// What a decision needs to know about one rule, wherever it was read from.
#[derive(Clone, Copy)]
pub(crate) struct RuleView<'r> {
    pub slot: u32,
    pub benefit_type: BenefitType,
    /// Frozen, and the policy is *block* (D12).
    pub frozen: bool,
    pub limit: u64,
    pub generation: u32,
    pub period: &'r Period,
}

impl<'r> RuleView<'r> {
    #[inline]
    pub fn of(e: &'r RuleEntry, slot: u32, policy: FrozenPolicy) -> RuleView<'r> {
        RuleView {
            slot,
            benefit_type: e.info.benefit_type,
            frozen: policy == FrozenPolicy::Block && e.info.status == Status::Frozen,
            limit: e.limit_micros,
            generation: e.generation,
            period: &e.period,
        }
    }
}

/// A rule's current state as seen by one operation (computed on the fly,
/// never stored: the decision streams over the rules).
#[derive(Clone, Copy)]
struct Seen {
    slot: u32,
    benefit_type: BenefitType,
    frozen: bool,
    /// The counter already exists (a debit creates it otherwise).
    exists: bool,
    used: u64,
    limit: u64,
    /// The window the counter's usage belongs to (see [`effective_window`]).
    window: Option<Window>,
}

impl Seen {
    /// The state of rule `v` at the caller's `window`, given its counter.
    #[inline]
    fn of(v: &RuleView<'_>, window: Option<Window>, c: Option<&CounterState>) -> Seen {
        Seen {
            slot: v.slot,
            benefit_type: v.benefit_type,
            frozen: v.frozen,
            exists: c.is_some(),
            used: c.map_or(0, |c| c.effective_used(v.generation, window)),
            limit: v.limit,
            window: match c {
                Some(c) => effective_window(v.period, v.generation, c, window),
                None => window,
            },
        }
    }
}

/// Where an operation's counters are: rule `i`'s counter (of rule `slot`).
pub(crate) trait CounterSource {
    /// The counter, if it exists.
    fn read(&self, i: usize, slot: u32) -> Option<&CounterState>;
    /// The counter, created if missing; `None` only where nothing can be
    /// created (a `check` of an owner never debited, which never writes).
    fn write(&mut self, i: usize, slot: u32) -> Option<&mut CounterState>;
}

/// Every rule counts on one owner's counters (absent: never debited).
impl CounterSource for Option<&mut Counters> {
    #[inline]
    fn read(&self, _: usize, slot: u32) -> Option<&CounterState> {
        self.as_deref()?.iter().find(|c| c.rule == slot)
    }

    #[inline]
    fn write(&mut self, _: usize, slot: u32) -> Option<&mut CounterState> {
        Some(counter_of(self.as_deref_mut()?, slot))
    }
}

/// The window a counter's usage belongs to: the caller's, or a newer one if
/// another caller's clock already moved the counter forward.
#[inline]
pub(crate) fn effective_window(
    period: &Period,
    generation: u32,
    state: &CounterState,
    window: Option<Window>,
) -> Option<Window> {
    let w = window?;
    if state.generation == generation && state.window_start > w.start {
        period.window(state.window_start)
    } else {
        Some(w)
    }
}

/// D13's outcome of `op` over `n` rules, streaming over them: `rule(i)`
/// describes rule `i` and gives the caller's window for it, `counters`
/// finds its counter, `id_of` names a rule by slot. Debits when the
/// operation goes through. Nothing is collected: each pass recomputes a
/// rule's state from its counter (a handful of loads), which costs less
/// than building and moving a per-rule array.
#[inline]
pub(crate) fn conclude<'r>(
    store: &Store,
    n: usize,
    rule: impl Fn(usize) -> (RuleView<'r>, Option<Window>),
    counters: &mut impl CounterSource,
    op: Op,
    id_of: impl Fn(u32) -> &'r BenefitId,
) -> Decision {
    match op {
        Op::Check => {
            let (mut deny, mut room) = (DenyPick::default(), RoomPick::default());
            for i in 0..n {
                let (v, w) = rule(i);
                let s = Seen::of(&v, w, counters.read(i, v.slot));
                deny.offer(&s, None, 0);
                room.offer(&s);
            }
            match deny.denial(&id_of) {
                Some(d) => Decision::Denied(d),
                None => Decision::Allowed(room.headroom(&id_of)),
            }
        }
        Op::TryConsume(ty, amount) => {
            let mut deny = DenyPick::default();
            let mut missing = Missing::default();
            for i in 0..n {
                let (v, w) = rule(i);
                let s = Seen::of(&v, w, counters.read(i, v.slot));
                deny.offer(&s, Some(ty), amount);
                missing.offer(&s, ty);
            }
            if let Some(d) = deny.denial(&id_of) {
                return Decision::Denied(d);
            }
            if let Err(d) = missing.reserve(store, amount, &id_of) {
                return Decision::Denied(d);
            }
            let mut room = RoomPick::default();
            for i in 0..n {
                let (v, w) = rule(i);
                if v.benefit_type == ty {
                    room.offer(&debited(counters, i, &v, w, amount));
                }
            }
            Decision::Allowed(room.headroom(&id_of))
        }
        Op::Record(ty, amount) => {
            let mut missing = Missing::default();
            for i in 0..n {
                let (v, w) = rule(i);
                if v.benefit_type == ty {
                    missing.offer(&Seen::of(&v, w, counters.read(i, v.slot)), ty);
                }
            }
            if let Err(d) = missing.reserve(store, amount, &id_of) {
                return Decision::Denied(d);
            }
            let (mut deny, mut room) = (DenyPick::default(), RoomPick::default());
            for i in 0..n {
                let (v, w) = rule(i);
                let s = if v.benefit_type == ty {
                    debited(counters, i, &v, w, amount)
                } else {
                    Seen::of(&v, w, counters.read(i, v.slot))
                };
                deny.offer(&s, None, 0);
                if v.benefit_type == ty {
                    room.offer(&s);
                }
            }
            match deny.denial(&id_of) {
                Some(d) => Decision::Denied(d),
                None => Decision::Allowed(room.headroom(&id_of)),
            }
        }
    }
}

/// Adds `amount` to rule `i`'s counter (created if missing), in the window
/// its usage belongs to, and returns the rule's state afterwards. Nothing is
/// added, and no counter created, for a zero amount.
#[inline]
fn debited(
    counters: &mut impl CounterSource,
    i: usize,
    v: &RuleView<'_>,
    window: Option<Window>,
    amount: u64,
) -> Seen {
    if amount > 0 {
        if let Some(c) = counters.write(i, v.slot) {
            // A counter just created reads as stale: the caller's window.
            let w = effective_window(v.period, v.generation, c, window);
            c.roll(v.generation, w);
            c.add(amount);
            return Seen::of(v, window, Some(c));
        }
    }
    Seen::of(v, window, counters.read(i, v.slot))
}

/// The counters a debit of `ty` would create.
#[derive(Default)]
struct Missing {
    count: usize,
    /// The first such rule: (slot, type, limit).
    first: Option<(u32, BenefitType, u64)>,
}

impl Missing {
    #[inline]
    fn offer(&mut self, s: &Seen, ty: BenefitType) {
        if s.benefit_type == ty && !s.exists {
            self.count += 1;
            if self.first.is_none() {
                self.first = Some((s.slot, s.benefit_type, s.limit));
            }
        }
    }

    /// Accounts for the counters about to be created; refuses (creating none)
    /// when that would pass [`crate::EngineConfig::max_counters`].
    #[inline]
    fn reserve<'r>(
        &self,
        store: &Store,
        amount: u64,
        id_of: &impl Fn(u32) -> &'r BenefitId,
    ) -> Result<(), Denial> {
        let Some((slot, benefit_type, limit)) = self.first else {
            return Ok(());
        };
        if amount == 0 || store.reserve(self.count) {
            return Ok(());
        }
        Err(Denial {
            benefit_id: id_of(slot).clone(),
            benefit_type,
            reason: DenyReason::CounterCapacity,
            remaining: Amount::from_micros(limit),
            resets_at: None,
        })
    }
}

/// D13 + D17: picks the denial, if any, among the rules offered. With `ty`,
/// also rules of that type that cannot fit `amount`. The denial reported is
/// the one that lasts longest: frozen first, then the latest reset
/// (cumulative = never), then exhausted before insufficient, then the lowest
/// slot (creation order).
#[derive(Default)]
struct DenyPick {
    best: Option<((u8, i64, u8), Seen, DenyReason)>,
}

impl DenyPick {
    #[inline]
    fn offer(&mut self, s: &Seen, ty: Option<BenefitType>, amount: u64) {
        let (reason, resets) = if s.frozen {
            (DenyReason::Frozen, None)
        } else if s.used >= s.limit {
            (DenyReason::Exhausted, s.window.map(|w| w.end))
        } else if Some(s.benefit_type) == ty && s.used.saturating_add(amount) > s.limit {
            (DenyReason::Insufficient, s.window.map(|w| w.end))
        } else {
            return;
        };
        let rank = (
            u8::from(reason == DenyReason::Frozen),
            resets.unwrap_or(i64::MAX),
            u8::from(reason == DenyReason::Exhausted),
        );
        let better = match &self.best {
            None => true,
            Some((r, b, _)) => rank > *r || (rank == *r && s.slot < b.slot),
        };
        if better {
            self.best = Some((rank, *s, reason));
        }
    }

    #[inline]
    fn denial<'r>(&self, id_of: &impl Fn(u32) -> &'r BenefitId) -> Option<Denial> {
        let (_, s, reason) = self.best.as_ref()?;
        Some(Denial {
            benefit_id: id_of(s.slot).clone(),
            benefit_type: s.benefit_type,
            reason: *reason,
            remaining: Amount::from_micros(s.limit.saturating_sub(s.used)),
            resets_at: if *reason == DenyReason::Frozen {
                None
            } else {
                s.window.map(|w| w.end)
            },
        })
    }
}

/// Picks the rule offered with the least remaining; ties go to the lowest slot.
#[derive(Default)]
struct RoomPick {
    best: Option<Seen>,
}

impl RoomPick {
    #[inline]
    fn offer(&mut self, s: &Seen) {
        let remaining = s.limit.saturating_sub(s.used);
        if self.best.as_ref().is_none_or(|b| {
            let r = b.limit.saturating_sub(b.used);
            remaining < r || (remaining == r && s.slot < b.slot)
        }) {
            self.best = Some(*s);
        }
    }

    #[inline]
    fn headroom<'r>(&self, id_of: &impl Fn(u32) -> &'r BenefitId) -> Option<Headroom> {
        let s = self.best.as_ref()?;
        Some(Headroom {
            benefit_id: id_of(s.slot).clone(),
            benefit_type: s.benefit_type,
            remaining: Amount::from_micros(s.limit.saturating_sub(s.used)),
            resets_at: s.window.map(|w| w.end),
        })
    }
}
