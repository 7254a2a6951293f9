//! Leased handles: headroom taken ahead, spent without locking (rules L1–L8 in
//! SEMANTICS.md).
//!
//! A leased handle's call that takes the shard locks decides exactly as an
//! exact handle, then, if it allowed, *grants* the handle a lease on every
//! rule that is not frozen: up to the handle's lease size of the rule's
//! headroom, added to the usage of the rule's counter (so every other
//! spender sees it as used) and remembered in the handle. The next calls
//! spend from those leases with no lock and no atomic read-modify-write: the
//! handle is `&mut`, so its leases are the calling thread's alone. A call the leases cannot cover (one is short, a
//! rule is frozen, a window rolled, the configuration changed) takes the
//! locks, *settles* (gives the unspent leases back to their counters' usage
//! and adds what was spent to their lifetime totals), decides exactly and
//! grants again.
//!
//! Other callers: a grant marks the handle's counter owners as leased and
//! remembers their stamps (`state::Stamp`); every locked call that takes a
//! leased owner's counters for writing bumps its stamp, and the lock-free
//! path spends only while every stamp is unchanged. So the counters a
//! covered call relies on have seen no write but the grant since it was
//! taken: the argument below holds whoever else spends on them. Counters of
//! pools several subjects share are never leased (a lease there would be
//! headroom one member holds while the others starve).
//!
//! Why a lease-covered call decides as the exact path would when the
//! counters have seen no other write since the grant: the counter holds `used + leased` with
//! `used + leased ≤ limit` (a grant never passes the limit), so a rule whose
//! lease covers `amount` has `used + amount ≤ limit` and `used < limit`, and
//! its exact remaining after the debit is what it had left before the grant
//! less everything spent since (`tight − spent` in `TypeLease`'s terms).
//! Frozen rules deny every call, so no grant follows one.
//!
//! The leases are kept per benefit type as well as per rule: a debit of a
//! type comes off every lease of that type alike, so between two grants the
//! type's least lease is always the same rule's (the debit is covered while
//! what was spent of the type plus the amount stays within the least
//! granted), and its tightest rule too (everyone's remaining falls by the
//! same amount). A covered call therefore reads and writes one small
//! per-type record, whatever the number of rules; each rule's unspent lease
//! (its grant less what its type spent) is worked out when it is settled.

use std::sync::atomic::Ordering;

use crate::decide::{effective_window, fewer_left, headroom_of, keep_least, Op};
use crate::decision::{Decision, Headroom};
use crate::engine::Engine;
use crate::state::{hold, let_go, CounterState, Locked};
use crate::types::BenefitType;

use super::{HandleOwner, HandleState, OwnedSubject, RuleLease, TypeLease, Watch};
use crate::cached::CachedRule;

impl Engine {
    /// Gives a handle's unspent leases back to their counters, reporting
    /// each (rule, amount given back); the next call takes new ones.
    pub(super) fn settle_state(&self, h: &mut HandleState, report: impl FnMut(BenefitType, u64)) {
        if h.leases.iter().any(|l| l.granted != 0) {
            let mut locked = self.store.lock_many(&h.shards);
            settle(h, &mut locked, report);
        }
        h.unwatch();
    }

    /// `op` spent from a handle's leases, if they were granted under the
    /// current version and windows and cover it; `None` (nothing changed)
    /// otherwise.
    #[inline(always)]
    pub(super) fn spend_leased(&self, h: &mut HandleState, now: i64, op: Op) -> Option<Decision> {
        // `now` is not clamped (`clamp_now`): nothing here computes with it,
        // and the cached windows contain the clamped time they were taken
        // at, so if they contain `now` they contain its clamped value too
        // (which lies between the two).
        // The version is read with no lock held: a call that reads the
        // version before a write is ordered before the write (it spends
        // headroom granted under the old configuration, as a call that took
        // the locks just before the write would).
        // Each owner's stamp likewise: a call that reads it before another
        // caller's write is ordered before that write.
        if h.lease_ok
            && h.fresh.contains(now)
            && self.version.load(Ordering::Acquire) == h.version
            && h.watch[..usize::from(h.watched)].iter().all(|w| {
                w.stamp
                    .as_ref()
                    .is_some_and(|s| s.load(Ordering::Acquire) == w.seen)
            })
        {
            return h.spend_from_leases(op);
        }
        None
    }

    /// A call through a leased handle that its leases did not cover
    /// ([`Engine::spend_leased`]), under the locks: settle, decide exactly as
    /// an exact handle does, grant again.
    #[inline(never)]
    pub(super) fn run_leased_locked(&self, h: &mut HandleState, now: i64, op: Op) -> Decision {
        let ready = self.ready(h, now);
        {
            let mut locked = self.store.lock_many(&h.shards);
            // Under the resolution the leases were granted in, even if it
            // ends at `now` (an activation boundary).
            settle(h, &mut locked, |_, _| {});
            if ready && self.version.load(Ordering::Acquire) == h.version {
                return self.decide_and_grant(h, now, op, &mut locked);
            }
        }
        // Stale: the shard locks are released, then taken again under the
        // rule table's lock, as for an exact handle.
        self.run_resolved(h, now, |h, locked| {
            self.decide_and_grant(h, now, op, locked)
        })
    }

    /// Decides exactly as an exact handle and, if allowed, grants new leases.
    /// The caller uses each `Locked` where it built it: moving one copies
    /// its inline guards (two `memcpy` calls a refill when one
    /// `Option<Locked>` was carried through both cases).
    #[inline(always)]
    fn decide_and_grant(
        &self,
        h: &mut HandleState,
        now: i64,
        op: Op,
        locked: &mut Locked<'_>,
    ) -> Decision {
        let d = self.decide_cached(h, now, op, locked);
        // After a denial a rule is frozen, exhausted or short of this
        // amount: leases would not cover the next calls either, and denied
        // subjects are called often (each such call takes the locks anyway).
        if d.is_allowed() {
            self.grant(h, locked);
        }
        d
    }

    /// Takes up to the handle's lease of every rule's headroom (rules not
    /// frozen whose counter counts in the current window), counting it as
    /// used on the rule's counter; marks the rules with nothing counted yet
    /// idle. The handle's leases are settled; `locked` holds its shards,
    /// under its version.
    fn grant(&self, h: &mut HandleState, locked: &mut Locked<'_>) {
        h.unhold();
        let HandleState {
            rules,
            owners,
            subject,
            lease,
            leases,
            spend,
            watch,
            watched,
            lease_ok,
            holds,
            ..
        } = h;
        debug_assert!(leases.iter().all(|l| l.granted == 0));
        leases.clear();
        *spend = [TypeLease::NONE; BenefitType::ALL.len()];
        *watched = 0;
        *lease_ok = false;
        // Counters other subjects spend too are never leased (L6): a lease
        // there would be headroom one member holds while others starve, and
        // their writes would end it at every call anyway.
        if owners.len() > watch.len() || owners.iter().any(|o| o.shared) {
            return;
        }
        // Nor are the counters of a limit too large for them (D14: it
        // saturates, and only a counter at `u64::MAX` blocks). A lease
        // there could fill a counter to exactly `u64::MAX`, which a settle
        // cannot tell from a counter another caller's `record` saturated
        // (that one must stay saturated: see `settle`); such limits are
        // beyond any real quota, and their calls take the locks.
        if rules.iter().any(|r| r.limit == u64::MAX) {
            return;
        }
        // A rule with nothing to lease (it is exhausted): every call takes
        // the locks.
        let mut blocked = false;
        for r in rules.iter_mut() {
            // Frozen rules (policy block) and rules with a limit of zero deny
            // every call, and grants follow allowed calls only.
            debug_assert!(!r.frozen && r.limit != 0);
            let t = &mut spend[r.benefit_type as usize];
            let counter = counter_of_rule(locked, owners, subject, r)
                .filter(|c| c.is_current(r.generation, r.window));
            // `limit − used` before the grant, and when that resets.
            let (left, resets, l) = match counter {
                Some(c) => {
                    let left = r.limit.saturating_sub(c.used);
                    let granted = (*lease).min(left);
                    // Usage only: the lifetime total gets what is spent of
                    // it, when it is settled (a saturated total could not
                    // give an unspent lease back exactly).
                    c.used += granted;
                    t.cap = t.cap.min(granted);
                    blocked |= granted == 0;
                    let resets = effective_window(&r.period, r.generation, c, r.window);
                    let l = RuleLease {
                        granted,
                        start: c.window_start,
                    };
                    (left, resets.map_or(i64::MIN, |w| w.end), l)
                }
                None => {
                    // Nothing counts on it in this window yet: it reads as
                    // empty until a debit of its type, which the lease cannot
                    // cover (it is *idle*), so takes the locks. Rolling or
                    // creating the counter here would move its window where
                    // the exact path does not (D16).
                    t.cap = 0;
                    let l = RuleLease {
                        granted: 0,
                        start: i64::MIN,
                    };
                    (r.limit, r.window.map_or(i64::MIN, |w| w.end), l)
                }
            };
            if t.id.is_none() || fewer_left(left, r.slot, Some((t.tight, t.slot))) {
                t.tight = left;
                t.resets = resets;
                t.slot = r.slot;
                t.id = Some(r.id.clone());
            }
            leases.push(l);
        }
        if blocked {
            // No call spends out of these leases while a rule has nothing
            // left (every call takes the locks): they go back at once.
            // Left on their counters, no hold of the handle's would pin
            // them, so `evict` could drop such a counter with its lease,
            // and the settle would then take the lease off a counter made
            // since, which never held it.
            give_back_granted(rules, leases, owners, subject, locked);
            return;
        }
        // From here every write to the owners' counters by another caller
        // (a `record`, a debit of any type that may exhaust a rule, D13, a
        // window rolled) changes their stamp, which the lock-free path
        // compares: an owner with no entry yet gets an empty one, so the
        // write that creates its first counter is seen too.
        // If a lease was granted, the handle holds leases on the owners'
        // counters from here until they are given back: counted in the
        // owners' stamps, so that `evict` keeps those counters (and only
        // while they hold leases). With every rule idle (nothing granted),
        // nothing is held: an evicted owner's stamp changes, which ends the
        // lock-free path.
        let granted = leases.iter().any(|l| l.granted > 0);
        for (n, (o, w)) in owners.iter_mut().zip(watch.iter_mut()).enumerate() {
            let owner = subject.owner(o);
            let (stamp, value) = locked.lease_owner(o.shard, &owner, &mut o.hint);
            let held = if granted { hold(&stamp) } else { Some(value) };
            let Some(seen) = held else {
                // As many handles hold leases there as a stamp counts: no
                // lease for this one (an exact handle's decisions).
                for w in &watch[..n] {
                    if let Some(s) = &w.stamp {
                        let_go(s);
                    }
                }
                give_back_granted(rules, leases, owners, subject, locked);
                return;
            };
            *w = Watch {
                stamp: Some(stamp),
                seen,
            };
        }
        *watched = owners.len() as u8;
        *holds = granted;
        *lease_ok = true;
    }
}

/// Takes the leases just granted (nothing spent of them) off their
/// counters again.
fn give_back_granted(
    rules: &[CachedRule],
    leases: &mut [RuleLease],
    owners: &mut [HandleOwner],
    subject: &OwnedSubject,
    locked: &mut Locked<'_>,
) {
    for (r, l) in rules.iter().zip(leases.iter_mut()) {
        let granted = std::mem::take(&mut l.granted);
        if granted > 0 {
            if let Some(c) = counter_of_rule(locked, owners, subject, r) {
                c.used -= granted;
            }
        }
    }
}

/// Gives every unspent lease back to its counter's usage, if the counter is
/// still in the window and generation the lease was granted in (else the
/// counter has started afresh without it) and not saturated, reporting
/// what was given back; adds what was spent of it to the counter's
/// lifetime total. `locked` holds the handle's shards.
fn settle(h: &mut HandleState, locked: &mut Locked<'_>, mut report: impl FnMut(BenefitType, u64)) {
    // The owners' stamps stay referenced: a refill takes the same ones
    // again (letting go here would have each refill drop and make them
    // anew); the hold ends with the leases.
    h.lease_ok = false;
    h.unhold();
    let HandleState {
        rules,
        owners,
        subject,
        leases,
        spend,
        ..
    } = h;
    for (r, l) in rules.iter().zip(leases.iter_mut()) {
        let granted = std::mem::take(&mut l.granted);
        if granted == 0 {
            continue;
        }
        let unspent = granted - spend[r.benefit_type as usize].spent;
        // None: evicted since the grant.
        if let Some(c) = counter_of_rule(locked, owners, subject, r) {
            // A counter at `u64::MAX` keeps it: no lease fills a counter
            // that far (saturating limits are not leased), so another
            // caller's debit reached it, most likely saturating (D14), and
            // the lease is not known to be in it; taking it off could
            // reopen a counter the exact path keeps blocked (at worst the
            // lease stays spent: an under-admission, by the lease).
            if c.generation == r.generation && c.window_start == l.start && c.used != u64::MAX {
                let back = unspent.min(c.used);
                c.used -= back;
                report(r.benefit_type, back);
            }
            c.lifetime = c.lifetime.saturating_add(granted - unspent);
        }
    }
    // `spend` is read again only after the next grant, which starts it
    // afresh.
}

/// The counter of cached rule `r`, if its owner has one (`locked` holds the
/// owner's shard; the owner's remembered slot is updated).
fn counter_of_rule<'l>(
    locked: &'l mut Locked<'_>,
    owners: &mut [HandleOwner],
    subject: &OwnedSubject,
    r: &CachedRule,
) -> Option<&'l mut CounterState> {
    let o = &mut owners[r.owner as usize];
    let owner = subject.owner(o);
    let counters = locked.counters_if_any_hinted(o.shard, &owner, &mut o.hint)?;
    counters.iter_mut().find(|c| c.rule == r.slot)
}

impl HandleState {
    /// Ends the handle's hold of its watched owners' stamps, if it holds
    /// them (see `state::hold`).
    fn unhold(&mut self) {
        if std::mem::take(&mut self.holds) {
            for w in &self.watch[..usize::from(self.watched)] {
                if let Some(s) = &w.stamp {
                    let_go(s);
                }
            }
        }
    }

    /// Stops spending from the leases, ends its hold and lets go of the
    /// owners' stamps (an owner no handle watches stops bumping its stamp).
    fn unwatch(&mut self) {
        self.unhold();
        self.lease_ok = false;
        self.watched = 0;
        for w in &mut self.watch {
            w.stamp = None;
        }
    }

    /// Spends `op` from the leases, as the exact path would decide it (see
    /// the module docs); `None`, changing nothing, when a lease does not
    /// cover it. Every rule keeps at least one micro-unit (so none is
    /// exhausted, nor frozen: those are never leased) or is idle (nothing
    /// counted in its window), or `lease_ok` would be false; each rule of
    /// the debited type must have `amount` left (a `try_consume`) or more
    /// than `amount` (a `record`, which must leave it below its limit to be
    /// allowed), and not be idle.
    #[inline(always)]
    fn spend_from_leases(&mut self, op: Op) -> Option<Decision> {
        let (ty, amount, extra) = match op {
            Op::Check => return Some(self.check_from_leases()),
            Op::TryConsume(ty, amount) => (ty, amount, u64::from(amount == 0)),
            Op::Record(ty, amount) => (ty, amount, 1),
        };
        let t = &mut self.spend[ty as usize];
        if t.id.is_none() {
            // No rule of the type: nothing to debit; named as a `check`
            // names (the other types' rules still apply, D13), unlimited
            // only when no rule applies at all (T2).
            return Some(self.check_from_leases());
        }
        // `spent ≤ cap` always holds.
        if amount.checked_add(extra)? > t.cap - t.spent {
            return None;
        }
        t.spent += amount;
        if t.spent == t.cap {
            // A rule's lease is spent: it may be exhausted, which would deny
            // every call, so the next one takes the locks.
            self.lease_ok = false;
        }
        Some(Decision::Allowed(t.headroom(ty)))
    }

    /// A `check` from the leases (every rule keeps some or is idle): allowed,
    /// naming the rule with the least left of any type.
    #[inline(never)]
    fn check_from_leases(&self) -> Decision {
        let mut least: Option<(u64, u32, usize)> = None;
        for (i, t) in self.spend.iter().enumerate() {
            if t.id.is_some() {
                keep_least(&mut least, t.tight - t.spent, t.slot, i);
            }
        }
        Decision::Allowed(least.and_then(|(_, _, i)| self.spend[i].headroom(BenefitType::ALL[i])))
    }
}

impl TypeLease {
    /// What the type's tightest rule has left, of type `ty` (this record's),
    /// and when that resets; `None` with no rule of the type.
    #[inline(always)]
    fn headroom(&self, ty: BenefitType) -> Option<Headroom> {
        let resets_at = (self.resets != i64::MIN).then_some(self.resets);
        let id = self.id.as_ref()?;
        Some(headroom_of(id, ty, self.tight - self.spent, resets_at))
    }
}
