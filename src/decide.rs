//! Deciding one operation over the counters of its rules (D13, D14, D17).
//!
//! Both enforcement paths end here: a call by subject (rules resolved under
//! a copy of the rule table, locked) and a call through a [`crate::SubjectHandle`]
//! (rules and counter locations cached in the handle). The caller holds the
//! lock of every counter shard the operation touches.

use smallvec::SmallVec;

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

/// The applicable rules of one operation, wherever they are read from: the
/// rule table (a call by subject, [`crate::engine`]) or a handle's cache.
///
/// Implementations mark every method `#[inline(always)]`: the decision
/// calls them in its loops, and LLVM's own choice (when they were closures)
/// flipped with unrelated changes, outlining one now and then into a call
/// per rule per decision.
pub(crate) trait Rules<'r> {
    /// How many rules apply.
    fn len(&self) -> usize;
    /// Rule `i` (in `0..len()`) and the caller's window for it.
    fn rule(&self, i: usize) -> (RuleView<'r>, Option<Window>);
    /// The id of the rule in `slot`, one of these rules.
    fn id_of(&self, slot: u32) -> &'r BenefitId;
}

/// Inline capacity for one operation's rules: no allocation unless a subject
/// is under more than six rules at once.
pub(crate) type SeenVec = SmallVec<[Seen; 6]>;

/// A rule's current state as seen by one operation.
#[derive(Clone, Copy)]
pub(crate) struct Seen {
    slot: u32,
    benefit_type: BenefitType,
    frozen: bool,
    /// The counter already exists (a debit creates it otherwise).
    exists: bool,
    /// Its index among the owner's counters when it exists (saves the
    /// debit a second search).
    pos: u8,
    generation: u32,
    used: u64,
    limit: u64,
    /// The window the counter's usage belongs to (see [`effective_window`]).
    window: Option<Window>,
}

impl Seen {
    const BLANK: Seen = Seen {
        slot: 0,
        benefit_type: BenefitType::ResourcePoint,
        frozen: false,
        exists: false,
        pos: 0,
        generation: 0,
        used: 0,
        limit: 0,
        window: None,
    };

    /// Appends the state of rule `v` at the caller's `window`, given its
    /// counter among the owner's `counters` (if the owner has any).
    #[inline]
    pub fn push(
        seen: &mut SeenVec,
        v: RuleView<'_>,
        window: Option<Window>,
        counters: Option<&[CounterState]>,
    ) {
        seen.push(Seen::BLANK);
        if let Some(s) = seen.last_mut() {
            s.fill(v, window, counters);
        }
    }

    /// Sets this to the state of rule `v` at the caller's `window` (filled in
    /// place: building it elsewhere and moving it in costs a store-forwarding
    /// stall per rule).
    #[inline]
    fn fill(&mut self, v: RuleView<'_>, window: Option<Window>, counters: Option<&[CounterState]>) {
        let found = counters.and_then(|cs| {
            let i = cs.iter().position(|c| c.rule == v.slot)?;
            Some((i, &cs[i]))
        });
        self.slot = v.slot;
        self.benefit_type = v.benefit_type;
        self.frozen = v.frozen;
        self.generation = v.generation;
        self.limit = v.limit;
        match found {
            Some((i, c)) => {
                self.exists = true;
                self.pos = i as u8;
                self.used = c.effective_used(v.generation, window);
                self.window = effective_window(v.period, v.generation, c, window);
            }
            None => {
                self.exists = false;
                self.used = 0;
                self.window = window;
            }
        }
    }
}

/// Rules decided over stack arrays by the fast paths ([`decide_one_owner`]
/// for one owner, [`try_allow_across`] for several).
pub(crate) const FAST_RULES: usize = 4;

/// Decides `op` when all the applicable `rules` count on one owner's
/// `counters` (the usual subject: a device's all-scope rules, or one pool). With
/// `counters` absent (a `check` of a subject never debited) every counter
/// reads as empty.
///
/// Always inlined, and small: the usual `check`, `try_consume`
/// ([`try_allow`]) and `record` ([`record_known`]) are decided here,
/// everything else out of line ([`decide_one_owner_general`]).
#[inline(always)]
pub(crate) fn decide_one_owner<'r>(
    store: &Store,
    rules: &impl Rules<'r>,
    counters: Option<&mut Counters>,
    op: Op,
) -> Decision {
    let mut counters = counters;
    if let (true, Some(cs)) = (rules.len() <= FAST_RULES, counters.as_deref_mut()) {
        // One inlined copy per operation, so none tests which one it is.
        match op {
            Op::TryConsume(ty, amount) => {
                if let Some(d) = try_allow(rules, cs, Some((ty, amount))) {
                    return d;
                }
            }
            Op::Check => {
                if let Some(d) = try_allow(rules, cs, None) {
                    return d;
                }
            }
            Op::Record(ty, amount) => {
                if let Some(d) = record_known(rules, cs, ty, amount) {
                    return d;
                }
            }
        }
    }
    decide_one_owner_general(store, rules, counters, op)
}

/// [`decide_one_owner`] for any operation: a denied `check` or
/// `try_consume` whose counters all exist is explained straight from them
/// ([`denied_known`]); anything else by the rules' state, gathered, then
/// [`conclude`]d ([`decide_by_state`]): an owner's first debit, a `check` of
/// an owner never debited, a `record` that creates a counter.
#[inline(never)]
pub(crate) fn decide_one_owner_general<'r>(
    store: &Store,
    rules: &impl Rules<'r>,
    counters: Option<&mut Counters>,
    op: Op,
) -> Decision {
    if let Some(cs) = counters.as_deref() {
        // The usual denial (every counter exists): ranked straight from them.
        let denied = match op {
            Op::Check => denied_known(rules, cs, None, 0),
            Op::TryConsume(ty, amount) => denied_known(rules, cs, Some(ty), amount),
            Op::Record(..) => None,
        };
        if let Some(d) = denied {
            return d;
        }
    }
    decide_by_state(store, rules, counters, op)
}

/// [`decide_one_owner_general`] by the rules' gathered state (inline for
/// up to six rules): the reference every other path is tested against
/// (`decide::tests`).
#[inline(always)]
fn decide_by_state<'r>(
    store: &Store,
    rules: &impl Rules<'r>,
    counters: Option<&mut Counters>,
    op: Op,
) -> Decision {
    let mut seen = SeenVec::new();
    let read = counters.as_deref().map(|c| c.as_slice());
    for i in 0..rules.len() {
        let (v, w) = rules.rule(i);
        Seen::push(&mut seen, v, w, read);
    }
    conclude(store, &mut seen, op, rules, |seen, ty, amount, create| {
        if let Some(c) = counters {
            add_to_counters(seen, c, ty, amount, create);
        }
    })
}

/// The usual `check` or `try_consume` (every rule's counter exists, none
/// denies), decided (and debited) straight from the counters, without
/// gathering the rules' state first. `debit`: the type and amount a
/// `try_consume` takes, `None` for a `check`. `None` when a rule denies or a
/// counter is missing: nothing was changed, and the caller decides the
/// general way ([`decide_one_owner_general`], which ranks a denial straight
/// from the counters with [`denied_known`] when they all exist).
#[inline(always)]
fn try_allow<'r>(
    rules: &impl Rules<'r>,
    counters: &mut [CounterState],
    debit: Option<(BenefitType, u64)>,
) -> Option<Decision> {
    let n = rules.len();
    let (ty, amount) = match debit {
        Some((ty, amount)) => (Some(ty), amount),
        None => (None, 0),
    };
    let mut pos = [0usize; FAST_RULES];
    // The rule with the least left after the debit (of `ty`, or of any type
    // for a check; see `conclude`): left, slot, index.
    let mut least: Option<(u64, u32, usize)> = None;
    for (i, at) in pos[..n].iter_mut().enumerate() {
        let (v, w) = rules.rule(i);
        *at = counters.iter().position(|c| c.rule == v.slot)?;
        let used = counters[*at].effective_used(v.generation, w);
        rank_allowed(&v, used, ty, amount, i, &mut least)?;
    }
    debit_known(&pos[..n], rules, counters, ty, amount);
    if least.is_none() {
        // No rule of `ty`: nothing was debited, and the call names what a
        // `check` would (the rules of other types still apply, D13).
        least = least_of_any(&pos[..n], rules, counters);
    }
    Some(allowed_naming(least, &pos, rules, counters))
}

/// Rule `i` (`v`, with `used` in its window) in an allowed `check` (`ty`
/// `None`) or `try_consume` of `amount` of `ty`: `None` if it denies (the
/// caller declines, and the general path explains the denial); else it is
/// ranked in `least` (left after the debit, slot, index: the rule the
/// allowance names, see `conclude`) if the operation concerns it.
#[inline(always)]
fn rank_allowed(
    v: &RuleView<'_>,
    used: u64,
    ty: Option<BenefitType>,
    amount: u64,
    i: usize,
    least: &mut Option<(u64, u32, usize)>,
) -> Option<()> {
    let of_ty = Some(v.benefit_type) == ty;
    if reason_of(v.frozen, used, v.limit, of_ty.then_some(amount)).is_some() {
        return None;
    }
    if of_ty || ty.is_none() {
        let left = v.limit - used; // below the limit: it does not deny
        keep_least(least, left_after(left, of_ty, amount), v.slot, i);
    }
    Some(())
}

/// The counters of the owners that a decision's rules count on, by owner
/// index, when they are several (a device named by a single rule: its
/// all-scope rules on the device, the single rule on the rule's own
/// counter; a workspace member's pools). Two owners may share a shard's
/// table, so they are reached one at a time.
pub(crate) trait OwnersCounters {
    /// Owner `o`'s counters, if it has an entry (which a later
    /// [`OwnersCounters::write`] of `o` may go straight to).
    fn read(&mut self, o: usize) -> Option<&[CounterState]>;
    /// Owner `o`'s counters for writing (a write that a leased handle
    /// relying on the owner sees), if it has an entry.
    fn write(&mut self, o: usize) -> Option<&mut [CounterState]>;
}

/// [`try_allow`] for rules counted on several owners: rule `i` counts on
/// owner `owner_of[i]` of `owners`. The same decision and the same debits
/// as the general path ([`conclude`] over every rule's gathered state),
/// whose two steps it takes straight from the counters: every rule read
/// (none may deny, every counter must exist), then the debit written on
/// each owner that has a rule of the debited type. `None` when a rule
/// denies, a counter is missing, more than [`FAST_RULES`] rules apply, or
/// no rule is of the debited type (rare: the general path names the rule a
/// `check` would): nothing was changed.
#[inline]
pub(crate) fn try_allow_across<'r>(
    rules: &impl Rules<'r>,
    owner_of: &[u8],
    owners: &mut impl OwnersCounters,
    debit: Option<(BenefitType, u64)>,
) -> Option<Decision> {
    let n = rules.len();
    if n > FAST_RULES || owner_of.len() != n {
        return None;
    }
    let (ty, amount) = match debit {
        Some((ty, amount)) => (Some(ty), amount),
        None => (None, 0),
    };
    let last_owner = usize::from(*owner_of.iter().max()?);
    let mut pos = [0usize; FAST_RULES];
    // Each rule's counter as read: the named one's window is read from it
    // (a debit rolls a counter into the call's window only from an older
    // one, whose usage belongs to the call's window either way).
    let mut state = [CounterState::new(0); FAST_RULES];
    // As in `try_allow`: left after the debit, slot, index.
    let mut least: Option<(u64, u32, usize)> = None;
    for o in 0..=last_owner {
        if !owner_of.iter().any(|&x| usize::from(x) == o) {
            continue; // no rule counts on it
        }
        let counters = owners.read(o)?;
        for i in (0..n).filter(|&i| usize::from(owner_of[i]) == o) {
            let (v, w) = rules.rule(i);
            pos[i] = counters.iter().position(|c| c.rule == v.slot)?;
            state[i] = counters[pos[i]];
            let used = state[i].effective_used(v.generation, w);
            rank_allowed(&v, used, ty, amount, i, &mut least)?;
        }
    }
    // No rule of `ty` (a spend of a type no rule counts): named as a check
    // would name it, by the general path.
    least?;
    if amount != 0 {
        for o in 0..=last_owner {
            let mine = |i: &usize| usize::from(owner_of[*i]) == o;
            if !(0..n)
                .filter(mine)
                .any(|i| Some(rules.rule(i).0.benefit_type) == ty)
            {
                continue;
            }
            // Found by the first pass, under the same locks.
            let Some(counters) = owners.write(o) else {
                debug_assert!(false, "owner {o} was read, then not found");
                continue;
            };
            for i in (0..n).filter(mine) {
                let (v, w) = rules.rule(i);
                if Some(v.benefit_type) == ty {
                    let c = &mut counters[pos[i]];
                    c.roll(v.generation, w);
                    c.add(amount);
                }
            }
        }
    }
    // Named from the counters as read (`state`, rule `i`'s at `i`).
    let at: [usize; FAST_RULES] = std::array::from_fn(|i| i);
    Some(allowed_naming(least, &at, rules, &state))
}

/// The denial of a `check` (`ty` `None`) or a `try_consume` of `amount` of
/// `ty`, if a rule denies it: each rule's state read from the counters as
/// [`decide_by_state`] reads it, one at a time, and ranked by [`deny`]'s
/// helpers (D17), with nothing gathered. Called by the general path after
/// [`try_allow`] declined, not by `try_allow` itself: called from there, even
/// out of line, it lengthened the allowed path (the common one). `None` if
/// a counter is missing or no rule denies.
#[inline(never)]
#[cold]
fn denied_known<'r>(
    rules: &impl Rules<'r>,
    counters: &[CounterState],
    ty: Option<BenefitType>,
    amount: u64,
) -> Option<Decision> {
    // The denial that lasts longest so far: rank, the rule's state, why.
    let mut worst: Option<(DenialRank, Seen, DenyReason)> = None;
    for i in 0..rules.len() {
        let (v, w) = rules.rule(i);
        let mut s = Seen::BLANK;
        s.fill(v, w, Some(counters));
        if !s.exists {
            return None;
        }
        if let Some((reason, rank)) = denial_of(&s, ty, amount) {
            if worse(rank, s.slot, worst.map(|(r, b, _)| (r, b.slot))) {
                worst = Some((rank, s, reason));
            }
        }
    }
    let (_, s, reason) = worst?;
    Some(Decision::Denied(denial(&s, reason, rules)))
}

/// Adds `amount` to the counters at `pos` (the i-th rule's counter at
/// `pos[i]`) of the rules of type `ty` (`None`: a check, which debits
/// nothing), each rolled into its rule's current window first.
#[inline(always)]
fn debit_known<'r>(
    pos: &[usize],
    rules: &impl Rules<'r>,
    counters: &mut [CounterState],
    ty: Option<BenefitType>,
    amount: u64,
) {
    if amount == 0 {
        return;
    }
    for (i, &at) in pos.iter().enumerate() {
        let (v, w) = rules.rule(i);
        if Some(v.benefit_type) == ty {
            let c = &mut counters[at];
            c.roll(v.generation, w);
            c.add(amount);
        }
    }
}

/// The allowance naming the tightest rule, `least` (what it has left after
/// the operation, its slot, its index; its counter at `pos[index]`), or none
/// if no rule applies to the operation.
#[inline(always)]
fn allowed_naming<'r>(
    least: Option<(u64, u32, usize)>,
    pos: &[usize],
    rules: &impl Rules<'r>,
    counters: &[CounterState],
) -> Decision {
    let Some((remaining, _, i)) = least else {
        return Decision::Allowed(None);
    };
    let (v, w) = rules.rule(i);
    // Rolled or not, the counter's window is the one its usage belongs to.
    let window = effective_window(v.period, v.generation, &counters[pos[i]], w);
    Decision::Allowed(Some(headroom_of(
        rules.id_of(v.slot),
        v.benefit_type,
        remaining,
        window.map(|w| w.end),
    )))
}

/// What a rule with `left` has left once a debit of `amount` is booked on
/// it (if `debited`): saturating, since a debit that saturates its counter
/// (only possible under a limit of `u64::MAX` micro-units, D14) leaves 0,
/// not less. Rules are ranked by this, not by what they had before: such a
/// debit can leave several at 0, and then the tie goes to the lowest slot.
#[inline(always)]
fn left_after(left: u64, debited: bool, amount: u64) -> u64 {
    if debited {
        left.saturating_sub(amount)
    } else {
        left
    }
}

/// The usual `record` (every rule's counter exists, so nothing is reserved
/// and nothing can refuse the debit): debited, then decided from the
/// counters. Only a denial after the debit (a rule frozen or exhausted)
/// gathers the rules' state, to explain it ([`recorded_by_state`]). `None`
/// when a counter is missing: nothing was changed, and the caller decides
/// the general way.
#[inline(always)]
fn record_known<'r>(
    rules: &impl Rules<'r>,
    counters: &mut [CounterState],
    ty: BenefitType,
    amount: u64,
) -> Option<Decision> {
    let n = rules.len();
    let mut pos = [0usize; FAST_RULES];
    for (i, at) in pos[..n].iter_mut().enumerate() {
        let slot = rules.rule(i).0.slot;
        *at = counters.iter().position(|c| c.rule == slot)?;
    }
    debit_known(&pos[..n], rules, counters, Some(ty), amount);
    // The rule of `ty` with the least left after the debit: left, slot, index.
    let mut least: Option<(u64, u32, usize)> = None;
    for (i, &at) in pos[..n].iter().enumerate() {
        let (v, w) = rules.rule(i);
        let used = counters[at].effective_used(v.generation, w);
        if reason_of(v.frozen, used, v.limit, None).is_some() {
            return Some(recorded_by_state(rules, counters, ty));
        }
        if v.benefit_type == ty {
            let left = v.limit - used; // below the limit: it does not deny
            keep_least(&mut least, left, v.slot, i);
        }
    }
    if least.is_none() {
        // No rule of `ty`: nothing was debited (see `try_allow`).
        least = least_of_any(&pos[..n], rules, counters);
    }
    Some(allowed_naming(least, &pos, rules, counters))
}

/// The rule of any type with the least left (none of them denies), as a
/// `check` names it: what a spend of a type that no rule counts names, so
/// that it is not read as unlimited (T2) while the subject's other rules
/// apply to it (D13). Out of line: a spend of an uncounted type is rare.
#[cold]
#[inline(never)]
fn least_of_any<'r>(
    pos: &[usize],
    rules: &impl Rules<'r>,
    counters: &[CounterState],
) -> Option<(u64, u32, usize)> {
    let mut least = None;
    for (i, &at) in pos.iter().enumerate() {
        let (v, w) = rules.rule(i);
        let used = counters[at].effective_used(v.generation, w);
        keep_least(&mut least, v.limit.saturating_sub(used), v.slot, i);
    }
    least
}

/// [`recorded`] over the rules' state gathered from `counters`, once a
/// `record` of `ty` has been debited on them: the general path's
/// explanation, for [`record_known`] when a rule denies.
#[inline(never)]
fn recorded_by_state<'r>(
    rules: &impl Rules<'r>,
    counters: &[CounterState],
    ty: BenefitType,
) -> Decision {
    let n = rules.len();
    let mut buf = [Seen::BLANK; FAST_RULES];
    gather(&mut buf[..n], rules, Some(counters));
    recorded(&buf[..n], ty, rules)
}

/// Fills `seen` with the state of the rules `0..seen.len()` of `rules` over
/// an owner's `counters` (absent: all read as empty).
#[inline]
fn gather<'r>(seen: &mut [Seen], rules: &impl Rules<'r>, counters: Option<&[CounterState]>) {
    for (i, s) in seen.iter_mut().enumerate() {
        let (v, w) = rules.rule(i);
        s.fill(v, w, counters);
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

/// D13's outcome of `op` over the rules' current state `seen`; `debit` books
/// an amount on the counters of the rules of a type when the operation goes
/// through (creating the missing ones if told to, else skipping them);
/// `rules` name a rule by slot.
#[inline]
pub(crate) fn conclude<'r>(
    store: &Store,
    seen: &mut [Seen],
    op: Op,
    rules: &impl Rules<'r>,
    debit: impl FnOnce(&mut [Seen], BenefitType, u64, bool),
) -> Decision {
    match op {
        Op::Check => match deny(seen, None, 0, rules) {
            Some(d) => Decision::Denied(d),
            None => Decision::Allowed(headroom(seen, None, rules)),
        },
        Op::TryConsume(ty, amount) => {
            // One pass finds the denial, if any, the rule of `ty` that will
            // have the least left once debited (the headroom), and whether a
            // counter must be created: the same answers as `deny`, then
            // `reserve_counters` and `headroom` after the debit, in one loop
            // instead of three.
            let mut worst: Option<(DenialRank, usize, DenyReason)> = None;
            let mut least: Option<(u64, u32, usize)> = None;
            let mut missing = false;
            for (i, s) in seen.iter().enumerate() {
                if let Some((reason, rank)) = denial_of(s, Some(ty), amount) {
                    if worse(rank, s.slot, worst.map(|(r, j, _)| (r, seen[j].slot))) {
                        worst = Some((rank, i, reason));
                    }
                }
                if s.benefit_type == ty {
                    missing |= !s.exists;
                    // Ranked by what each will have left after the debit:
                    // the same amount comes off each, but a debit that
                    // saturates counters (D14) leaves several at zero, and
                    // then the tie goes to the lowest slot.
                    let left = s.limit.saturating_sub(s.used);
                    keep_least(&mut least, left_after(left, true, amount), s.slot, i);
                }
            }
            if let Some((_, i, reason)) = worst {
                return Decision::Denied(denial(&seen[i], reason, rules));
            }
            if missing {
                if let Err(d) = reserve_counters(store, seen, ty, amount, rules) {
                    return Decision::Denied(d);
                }
            }
            debit(seen, ty, amount, true);
            Decision::Allowed(match least {
                Some((_, _, i)) => Some(headroom_at(&seen[i], rules)),
                // No rule of `ty`: named as a `check` names (D13, T2).
                None => headroom(seen, None, rules),
            })
        }
        Op::Record(ty, amount) => {
            if let Err(d) = reserve_counters(store, seen, ty, amount, rules) {
                // The usage was spent already: what it cannot be booked on
                // (the counters past the cap) is lost, but the counters that
                // exist still take it, so the rules they count for do not
                // under-count it (the denial says that the rest was not).
                debit(seen, ty, amount, false);
                return Decision::Denied(d);
            }
            debit(seen, ty, amount, true);
            recorded(seen, ty, rules)
        }
    }
}

/// The outcome of a `record` of `ty` once debited, from the rules' state
/// after the debit: denied if a rule is frozen or exhausted (the usage
/// stands: it was already spent), else the headroom of `ty`.
#[inline]
fn recorded<'r>(seen: &[Seen], ty: BenefitType, rules: &impl Rules<'r>) -> Decision {
    match deny(seen, None, 0, rules) {
        Some(d) => Decision::Denied(d),
        // No rule of `ty`: named as a `check` names (D13, T2).
        None => Decision::Allowed(
            headroom(seen, Some(ty), rules).or_else(|| headroom(seen, None, rules)),
        ),
    }
}

/// Accounts for the counters a debit of `ty` would create; refuses
/// (creating none) when that would pass [`crate::EngineConfig::max_counters`].
fn reserve_counters<'r>(
    store: &Store,
    seen: &[Seen],
    ty: BenefitType,
    amount: u64,
    rules: &impl Rules<'r>,
) -> Result<(), Denial> {
    let mut missing = seen.iter().filter(|s| s.benefit_type == ty && !s.exists);
    let Some(first) = missing.next() else {
        return Ok(());
    };
    if amount == 0 || store.reserve(1 + missing.count()) {
        return Ok(());
    }
    Err(capacity_denial(first, rules))
}

/// The `counter_capacity` denial naming `s`, the first rule whose counter
/// found no room.
fn capacity_denial<'r>(s: &Seen, rules: &impl Rules<'r>) -> Denial {
    Denial {
        benefit_id: rules.id_of(s.slot).clone(),
        benefit_type: s.benefit_type,
        reason: DenyReason::CounterCapacity,
        remaining: Amount::from_micros(s.limit.saturating_sub(s.used)),
        resets_at: None,
    }
}

/// Adds `amount` to the counters, among one owner's `counters`, of the rules
/// of type `ty` in `seen` (all of that owner), creating them as needed if
/// `create`, else only to those that exist.
#[inline]
pub(crate) fn add_to_counters(
    seen: &mut [Seen],
    counters: &mut Counters,
    ty: BenefitType,
    amount: u64,
    create: bool,
) {
    if amount == 0 {
        return;
    }
    for s in seen {
        if s.benefit_type == ty && (create || s.exists) {
            let at = usize::from(s.pos);
            let c = match counters.get(at) {
                Some(c) if s.exists && c.rule == s.slot => &mut counters[at],
                _ => counter_of(counters, s.slot),
            };
            c.roll(s.generation, s.window);
            c.add(amount);
            s.used = c.used;
        }
    }
}

/// Whether `seen` has a rule of type `ty` (so a debit of it touches
/// counters), whose counter exists unless `create`.
#[inline]
pub(crate) fn has_type(seen: &[Seen], ty: BenefitType, create: bool) -> bool {
    seen.iter()
        .any(|s| s.benefit_type == ty && (create || s.exists))
}

/// What [`conclude`] answers for a `try_consume` of `amount` of `ty` over
/// `seen` when no counter may be created: the ranked quota denial if a rule
/// denies it anyway, else the capacity denial `reserve_counters` gives.
pub(crate) fn denied_without_room<'r>(
    seen: &[Seen],
    ty: BenefitType,
    amount: u64,
    rules: &impl Rules<'r>,
) -> Denial {
    if let Some(d) = deny(seen, Some(ty), amount, rules) {
        return d;
    }
    let first = seen
        .iter()
        .find(|s| s.benefit_type == ty && !s.exists)
        .or(seen.first())
        .copied()
        .unwrap_or(Seen::BLANK);
    capacity_denial(&first, rules)
}

/// D13 + D17: the denial, if any. With `ty`, also rules of that type that
/// cannot fit `amount`. The denial reported is the one that lasts longest:
/// frozen first, then the latest reset (cumulative = never), then exhausted
/// before insufficient, then the lowest slot (creation order).
#[inline]
fn deny<'r>(
    seen: &[Seen],
    ty: Option<BenefitType>,
    amount: u64,
    rules: &impl Rules<'r>,
) -> Option<Denial> {
    let mut worst: Option<(DenialRank, &Seen, DenyReason)> = None;
    for s in seen {
        if let Some((reason, rank)) = denial_of(s, ty, amount) {
            if worse(rank, s.slot, worst.map(|(r, b, _)| (r, b.slot))) {
                worst = Some((rank, s, reason));
            }
        }
    }
    worst.map(|(_, s, reason)| denial(s, reason, rules))
}

/// Why a rule with `used` of `limit` denies: frozen, exhausted, or (for a
/// debit of `amount` of its own type) too little left; `None` if it does not.
#[inline]
fn reason_of(frozen: bool, used: u64, limit: u64, debit: Option<u64>) -> Option<DenyReason> {
    if frozen {
        Some(DenyReason::Frozen)
    } else if used >= limit {
        Some(DenyReason::Exhausted)
    } else if debit.is_some_and(|amount| used.saturating_add(amount) > limit) {
        Some(DenyReason::Insufficient)
    } else {
        None
    }
}

/// Orders denials: frozen first, then the latest reset (cumulative =
/// never), then exhausted before insufficient (higher lasts longer).
type DenialRank = (u8, i64, u8);

/// Why rule `s` denies (with `ty`: also when it cannot fit `amount` of
/// that type), and the denial's rank; `None` if it does not deny.
#[inline]
fn denial_of(s: &Seen, ty: Option<BenefitType>, amount: u64) -> Option<(DenyReason, DenialRank)> {
    let debit = (Some(s.benefit_type) == ty).then_some(amount);
    let reason = reason_of(s.frozen, s.used, s.limit, debit)?;
    let rank = (
        u8::from(reason == DenyReason::Frozen),
        resets_at(reason, s.window).unwrap_or(i64::MAX),
        u8::from(reason == DenyReason::Exhausted),
    );
    Some((reason, rank))
}

/// When a denial for `reason` ends by itself: at the end of the window the
/// usage belongs to; never for a cumulative rule or a frozen one (only an
/// update lifts those).
#[inline]
fn resets_at(reason: DenyReason, window: Option<Window>) -> Option<i64> {
    match reason {
        DenyReason::Frozen => None,
        _ => window.map(|w| w.end),
    }
}

/// Whether the denial of `rank` by the rule in `slot` is reported over the
/// worst so far (rank, slot): the higher rank; on a tie, the lower slot.
#[inline]
fn worse(rank: DenialRank, slot: u32, so_far: Option<(DenialRank, u32)>) -> bool {
    so_far.is_none_or(|(r, b)| rank > r || (rank == r && slot < b))
}

/// The denial that rule `s` reports for `reason`.
#[inline]
fn denial<'r>(s: &Seen, reason: DenyReason, rules: &impl Rules<'r>) -> Denial {
    Denial {
        benefit_id: rules.id_of(s.slot).clone(),
        benefit_type: s.benefit_type,
        reason,
        remaining: Amount::from_micros(s.limit.saturating_sub(s.used)),
        resets_at: resets_at(reason, s.window),
    }
}

/// The applicable rule (of `ty`, or of any type) with the least remaining;
/// ties go to the lowest slot.
#[inline]
fn headroom<'r>(
    seen: &[Seen],
    ty: Option<BenefitType>,
    rules: &impl Rules<'r>,
) -> Option<Headroom> {
    // A plain loop: the iterator-adapter version kept its tuples on the stack
    // and cost a fifth of a hot call.
    let mut best: Option<&Seen> = None;
    for s in seen {
        if ty.is_some_and(|t| t != s.benefit_type) {
            continue;
        }
        let remaining = s.limit.saturating_sub(s.used);
        if fewer_left(
            remaining,
            s.slot,
            best.map(|b| (b.limit.saturating_sub(b.used), b.slot)),
        ) {
            best = Some(s);
        }
    }
    Some(headroom_at(best?, rules))
}

/// Whether the rule in `slot`, with `left` remaining, has less left than the
/// least so far (left, slot); on a tie, the lower slot wins.
#[inline]
pub(crate) fn fewer_left(left: u64, slot: u32, so_far: Option<(u64, u32)>) -> bool {
    so_far.is_none_or(|(l, b)| left < l || (left == l && slot < b))
}

/// Keeps in `least` (left, slot, index) the rule with the least left:
/// rule `i`, in `slot` with `left`, if it has fewer (see [`fewer_left`]).
#[inline(always)]
pub(crate) fn keep_least(least: &mut Option<(u64, u32, usize)>, left: u64, slot: u32, i: usize) {
    if fewer_left(left, slot, least.map(|(l, s, _)| (l, s))) {
        *least = Some((left, slot, i));
    }
}

/// The headroom that rule `s` reports.
#[inline]
fn headroom_at<'r>(s: &Seen, rules: &impl Rules<'r>) -> Headroom {
    let remaining = s.limit.saturating_sub(s.used);
    headroom_of(
        rules.id_of(s.slot),
        s.benefit_type,
        remaining,
        s.window.map(|w| w.end),
    )
}

/// The headroom of rule `id`, with `remaining` left until `resets_at` (the
/// end of its window; `None` for a cumulative rule).
#[inline]
pub(crate) fn headroom_of(
    id: &BenefitId,
    benefit_type: BenefitType,
    remaining: u64,
    resets_at: Option<i64>,
) -> Headroom {
    Headroom {
        benefit_id: id.clone(),
        benefit_type,
        remaining: Amount::from_micros(remaining),
        resets_at,
    }
}

#[cfg(test)]
mod tests {
    //! The fast paths (`try_allow`, `try_allow_across` with the counters
    //! spread over owners, `denied_known`, `record_known`) against
    //! the rules' gathered state (`decide_by_state`): two implementations of
    //! the same rules (D13, D17), compared on random states, edge values
    //! included (zero and saturating amounts and limits, stale and newer
    //! windows, other generations, frozen rules, ties, missing counters).

    use super::*;
    use crate::period::UtcOffset;
    use crate::state::OwnerHasher;
    use crate::types::{Family, Reset, TriggerUnit};
    use proptest::prelude::*;

    const DAY: i64 = 86_400;
    /// 2025-03-12 00:00 +08:00: a daily window starts here.
    const T0: i64 = 1_741_708_800;

    /// One rule and its counter's state.
    #[derive(Debug, Clone)]
    struct Case {
        ty: u8,
        frozen: bool,
        limit: u64,
        generation: u32,
        daily: bool,
        /// `None`: no counter yet.
        counter: Option<(u64, u32, i64)>,
    }

    fn edge() -> impl Strategy<Value = u64> {
        prop_oneof![6 => 0u64..12, 1 => Just(u64::MAX - 1), 1 => Just(u64::MAX)]
    }

    fn case() -> impl Strategy<Value = Case> {
        let counter = (edge(), 0u32..2, -1i64..=1);
        (
            0u8..2,
            prop::bool::weighted(0.1),
            edge(),
            0u32..2,
            any::<bool>(),
            prop::option::weighted(0.95, counter),
        )
            .prop_map(|(ty, frozen, limit, generation, daily, counter)| Case {
                ty,
                frozen,
                limit,
                generation,
                daily,
                counter,
            })
    }

    fn benefit_type(t: u8) -> BenefitType {
        [
            BenefitType::ResourcePoint,
            BenefitType::VoiceUnifiedDurationSystem,
        ][usize::from(t)]
    }

    /// The rules of a case: rule `i` in slot `len - i` (descending, so
    /// neither the rules' order nor the counters' is the slots').
    struct CaseRules<'c> {
        cases: &'c [Case],
        periods: &'c [Period],
        ids: &'c [BenefitId],
        now: i64,
    }

    impl<'c> Rules<'c> for CaseRules<'c> {
        fn len(&self) -> usize {
            self.cases.len()
        }

        fn rule(&self, i: usize) -> (RuleView<'c>, Option<Window>) {
            let c = &self.cases[i];
            let view = RuleView {
                slot: (self.cases.len() - i) as u32,
                benefit_type: benefit_type(c.ty),
                frozen: c.frozen,
                limit: c.limit,
                generation: c.generation,
                period: &self.periods[i],
            };
            (view, self.periods[i].window(self.now))
        }

        fn id_of(&self, slot: u32) -> &'c BenefitId {
            &self.ids[slot as usize]
        }
    }

    /// Each case's period: daily or cumulative.
    fn periods_of(cases: &[Case]) -> Vec<Period> {
        let day = Reset::new(TriggerUnit::Day, 1).unwrap();
        cases
            .iter()
            .map(|c| {
                let reset = if c.daily { day } else { Reset::NEVER };
                Period::new(Family::Device, reset, 0, UtcOffset::CHINA)
            })
            .collect()
    }

    /// The ids of the slots of `n` rules (`r0` to `rn`).
    fn ids_for(n: usize) -> Vec<BenefitId> {
        (0..=n)
            .map(|s| BenefitId::new(&format!("r{s}")).unwrap())
            .collect()
    }

    /// The counters of `cases` that have one (rule `i`'s in slot
    /// `len - i`, see [`CaseRules`]), each with its rule's index, in
    /// ascending slot order: the rules' slots descend and the counters'
    /// ascend, so neither order is the rules' (ties go to the lowest slot).
    fn counters_of(cases: &[Case]) -> Vec<(usize, CounterState)> {
        let n = cases.len();
        let mut counters = Vec::new();
        for (i, c) in cases.iter().enumerate().rev() {
            if let Some((used, generation, days)) = c.counter {
                let mut state = CounterState::new((n - i) as u32);
                state.used = used;
                state.lifetime = used;
                state.generation = generation;
                if c.daily {
                    state.window_start = T0 + days * DAY; // stale, current or newer
                }
                counters.push((i, state));
            }
        }
        counters
    }

    /// Decides `op` over `cases` at `T0 + at` both ways and compares.
    fn compare(cases: &[Case], op: Op, at: i64) -> Result<(), TestCaseError> {
        let now = T0 + at;
        let periods = periods_of(cases);
        let ids = ids_for(cases.len());
        let counters: Counters = counters_of(cases).into_iter().map(|(_, c)| c).collect();
        let rules = CaseRules {
            cases,
            periods: &periods,
            ids: &ids,
            now,
        };

        let store = Store::new(1, OwnerHasher::new(), usize::MAX);
        let mut general_state = counters.clone();
        let general = decide_by_state(&store, &rules, Some(&mut general_state), op);
        let mut fast_state = counters.clone();
        // What a call decides before gathering the rules' state: allowed by
        // `try_allow`, else (as `decide_one_owner_general` does first) denied
        // by `denied_known`; a `record` by `record_known`.
        let fast = match op {
            Op::Check | Op::TryConsume(..) => {
                let debit = match op {
                    Op::TryConsume(t, a) => Some((t, a)),
                    _ => None,
                };
                try_allow(&rules, &mut fast_state, debit).or_else(|| {
                    let (ty, amount) = (debit.map(|(t, _)| t), debit.map_or(0, |(_, a)| a));
                    denied_known(&rules, &fast_state, ty, amount)
                })
            }
            Op::Record(t, a) => record_known(&rules, &mut fast_state, t, a),
        };
        match fast {
            Some(fast) => {
                prop_assert_eq!(&fast, &general);
                prop_assert_eq!(&fast_state, &general_state);
            }
            None => {
                // Declined: nothing changed, and only because a counter is
                // missing.
                prop_assert_eq!(&fast_state, &counters);
                let complete = cases.iter().all(|c| c.counter.is_some());
                prop_assert!(!complete, "{:?}", general);
            }
        }
        Ok(())
    }

    /// Owners' counters in a vector, for [`try_allow_across`]; an owner
    /// with no counter has no entry.
    struct VecOwners(Vec<Counters>);

    impl OwnersCounters for VecOwners {
        fn read(&mut self, o: usize) -> Option<&[CounterState]> {
            self.0
                .get(o)
                .filter(|c| !c.is_empty())
                .map(|c| c.as_slice())
        }

        fn write(&mut self, o: usize) -> Option<&mut [CounterState]> {
            self.0
                .get_mut(o)
                .filter(|c| !c.is_empty())
                .map(|c| c.as_mut_slice())
        }
    }

    /// Decides `op` over `cases` at `T0 + at` with each rule's counter on
    /// owner `owner_of[i]` ([`try_allow_across`]) and over all counters on
    /// one owner ([`decide_by_state`]), and compares.
    fn compare_across(
        cases: &[Case],
        owner_of: &[u8],
        op: Op,
        at: i64,
    ) -> Result<(), TestCaseError> {
        let now = T0 + at;
        let periods = periods_of(cases);
        let ids = ids_for(cases.len());
        let owner_of = &owner_of[..cases.len()];
        let owner_count = usize::from(*owner_of.iter().max().unwrap()) + 1;
        let mut all = Counters::new();
        let mut split = vec![Counters::new(); owner_count];
        for (i, state) in counters_of(cases) {
            all.push(state);
            split[usize::from(owner_of[i])].push(state);
        }
        let rules = CaseRules {
            cases,
            periods: &periods,
            ids: &ids,
            now,
        };
        let store = Store::new(1, OwnerHasher::new(), usize::MAX);
        let mut general_state = all.clone();
        let general = decide_by_state(&store, &rules, Some(&mut general_state), op);
        let debit = match op {
            Op::TryConsume(t, a) => Some((t, a)),
            _ => None,
        };
        let mut owners = VecOwners(split.clone());
        let by_slot = |c: &mut Vec<CounterState>| c.sort_by_key(|s| s.rule);
        match try_allow_across(&rules, owner_of, &mut owners, debit) {
            Some(fast) => {
                prop_assert_eq!(&fast, &general);
                let mut fast_state: Vec<CounterState> = owners.0.concat();
                let mut general_state = general_state.to_vec();
                by_slot(&mut fast_state);
                by_slot(&mut general_state);
                prop_assert_eq!(fast_state, general_state);
            }
            None => {
                // Declined: nothing changed, and only because a counter is
                // missing, a rule denies, or no rule is of the debited type.
                prop_assert_eq!(&owners.0, &split);
                let complete = cases.iter().all(|c| c.counter.is_some());
                let of_ty = |t| cases.iter().any(|c| benefit_type(c.ty) == t);
                let untyped = matches!(op, Op::TryConsume(t, _) if !of_ty(t));
                prop_assert!(
                    !complete || !general.is_allowed() || untyped,
                    "{:?}",
                    general
                );
            }
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn the_fast_path_across_owners_decides_as_the_general_one(
            cases in prop::collection::vec(case(), 1..=FAST_RULES),
            owner_of in prop::collection::vec(0u8..3, FAST_RULES),
            check in prop::bool::weighted(0.3),
            ty in 0u8..2,
            amount in edge(),
            at in 0i64..DAY,
        ) {
            let op = if check {
                Op::Check
            } else {
                Op::TryConsume(benefit_type(ty), amount)
            };
            compare_across(&cases, &owner_of, op, at)?;
        }

        #[test]
        fn the_fast_path_decides_as_the_general_one(
            cases in prop::collection::vec(case(), 1..=FAST_RULES),
            check in prop::bool::weighted(0.3),
            ty in 0u8..2,
            amount in edge(),
            at in 0i64..DAY,
        ) {
            let op = if check {
                Op::Check
            } else {
                Op::TryConsume(benefit_type(ty), amount)
            };
            compare(&cases, op, at)?;
        }

        #[test]
        fn a_known_record_decides_as_the_general_path(
            cases in prop::collection::vec(case(), 1..=FAST_RULES),
            ty in 0u8..2,
            amount in edge(),
            at in 0i64..DAY,
        ) {
            compare(&cases, Op::Record(benefit_type(ty), amount), at)?;
        }
    }
}
