//! Write-ahead grants: an engine's side of a [`Ledger`].
//!
//! With a ledger, every counter the engine debits has a *ceiling*: what the
//! ledger holds for it durably (grants and records, less give-backs). A
//! debit goes through only while it stays under its counter's ceiling; when
//! it would not, the call takes a new grant first: it marks the grant as
//! pending on the counter (so concurrent callers do not ask twice), sends it
//! to the ledger's writer, releases its locks and waits until the writer has
//! committed it, then raises the ceiling and decides again. So a unit is
//! admitted only out of a grant that is already durable, and after a crash
//! the ledger holds at least every admitted unit.
//!
//! A ceiling is kept beside its counter, in the owner's entry, as a second
//! [`CounterState`] whose rule slot has [`CEILING`] set (`used`: the
//! ceiling; `lifetime`: the pending grant and two flags, refused and
//! active; window and generation: the window the ceiling belongs to).
//! Engines without a ledger have none.
//!
//! Unspent grants go back at [`Engine::flush`] (and drop), and, for
//! counters no debit touched between two idle sweeps, at every sweep
//! ([`Engine::give_back_idle`], or its timer [`Engine::give_back_every`]):
//! so what a crash strands is held by counters active at the time.
//!
//! Grants adapt: an eighth of what the limit has left beyond the ceiling,
//! at most [`LedgeredBuilder::max_grant`], never less than the call needs
//! and never past the limit. So far from the limit one durable write serves
//! many calls, and near it the last units are granted exactly as asked
//! (none is stranded in a grant).
//!
//! The writer thread commits every change waiting when it wakes in one
//! batch (group commit): concurrent grants share one durable write. Records
//! (post-paid usage) do not wait: the writer holds them up to the record
//! interval, or commits them with the next grant.

mod builder;
mod idle;
mod reply;
mod writer;

pub use builder::{LedgerFailure, LedgeredBuilder};
pub use idle::GiveBackTimer;
pub(crate) use writer::Grants;
pub use writer::LedgerStats;
use writer::Refill;

use std::time::{Duration, Instant};

use smallvec::SmallVec;

use crate::amount::Amount;
use crate::decide::{Op, Rules};
use crate::decision::{Decision, Denial, DenyReason};
use crate::engine::{Engine, TableRules};
use crate::ledger::{
    Change, CounterKey, CounterOwner, LedgerError, LedgerErrorKind, RuleRecord, WindowId,
};
use crate::period::possible_now;
use crate::rules::RuleSet;
use crate::state::{counter_of, CounterState, Counters, Locked, OwnerKind};

/// Set in the rule slot of a ceiling (see the module documentation); rule
/// slots stay far below it.
pub(crate) const CEILING: u32 = 1 << 31;

/// Set in a ceiling's pending amount once the ledger refused a grant for
/// its window (not even the call's minimum was left, across every engine
/// sharing the ledger): calls past the ceiling are then denied without
/// asking again for [`REFUSED_FOR`] (`Done::refused` says until when).
/// Pending amounts stay far below.
const REFUSED: u64 = 1 << 63;

/// Set in a ceiling's pending amount by every call that looks at it for a
/// debit, and by every grant asked for it, since the last idle sweep (see
/// `idle`): a ceiling without it is idle, and its unspent grant goes back.
pub(crate) const ACTIVE: u64 = 1 << 62;

/// The pending amount of a ceiling's `lifetime` (its flags masked off);
/// also its cap: pending amounts saturate there, below the flags (a limit
/// may be as large as `u64::MAX` micro-units). A saturated pending amount
/// reads lower than the grants in flight once they come back, which at
/// worst asks for a grant again: it never raises a ceiling.
pub(crate) const PENDING: u64 = !(REFUSED | ACTIVE);

/// How long a refused counter window is denied locally before the ledger
/// is asked again.
const REFUSED_FOR: Duration = Duration::from_secs(1);

/// A grant is this fraction (a shift) of what the limit has left.
const GRANT_SHIFT: u32 = 3;

/// The window a debit of rule `slot` (at `generation`, in `window`) lands
/// in, given its counter: the counter's own if it is current (a newer one
/// included), else the caller's.
fn landing(
    rules: &RuleSet,
    slot: u32,
    c: Option<&CounterState>,
    generation: u32,
    window: Option<crate::Window>,
) -> WindowId {
    match (c, window) {
        // a newer window than the caller's (another caller's clock is ahead)
        (Some(c), Some(w)) if c.is_current(generation, window) && c.window_start != w.start => {
            window_id(rules, slot, c.generation, c.window_start)
        }
        (_, Some(w)) => WindowId {
            generation,
            start: w.start,
            end: w.end,
        },
        (_, None) => WindowId {
            generation,
            start: i64::MIN,
            end: i64::MAX,
        },
    }
}

/// Rule `slot`'s window of `generation` starting at `start` (`i64::MIN`:
/// cumulative), its end as the rule's period puts it.
fn window_id(rules: &RuleSet, slot: u32, generation: u32, start: i64) -> WindowId {
    let end = match rules.rules.get(slot as usize) {
        Some(r) if start != i64::MIN => r.period.window(start).map_or(i64::MAX, |w| w.end),
        _ => i64::MAX,
    };
    WindowId {
        generation,
        start,
        end,
    }
}

/// `counters`' ceiling of rule `slot`, moved to `window` (starting from
/// nothing) if it belonged to another.
fn ceiling_at(counters: &mut Counters, slot: u32, window: WindowId) -> &mut CounterState {
    let p = counter_of(counters, slot | CEILING);
    if p.generation != window.generation || p.window_start != window.start {
        p.used = 0;
        p.lifetime = 0;
        p.generation = window.generation;
        p.window_start = window.start;
    }
    p
}

fn key_of(rules: &RuleSet, slot: u32, kind: OwnerKind, id: &str) -> CounterKey {
    CounterKey {
        benefit_id: rules.rules[slot as usize].info.benefit_id.clone(),
        owner: match kind {
            OwnerKind::Device => CounterOwner::Device(id.to_owned()),
            OwnerKind::Consumer => CounterOwner::Consumer(id.to_owned()),
            OwnerKind::Pool => CounterOwner::Pool,
        },
    }
}

/// Tallies of unbacked admissions (`SafeCapacity`) at which, and at every
/// doubling after, those of ended windows are dropped.
const UNBACKED_PRUNE_AT: usize = 4_096;

/// The denial of a call the ledger could not grant for, naming the rule.
fn unavailable(rules: &RuleSet, slot: u32, resets_at: Option<i64>) -> Denial {
    let e = &rules.rules[slot as usize];
    Denial {
        benefit_id: e.info.benefit_id.clone(),
        benefit_type: e.info.benefit_type,
        reason: DenyReason::LedgerUnavailable,
        remaining: Amount::from_micros(0),
        resets_at,
    }
}

/// Seconds from `now` until a counter of rule `slot` counting in `window`
/// stops counting (`None`: cumulative).
fn ends_in(window: WindowId, now: i64) -> Option<u64> {
    if window.end == i64::MAX {
        return None;
    }
    Some(window.end.saturating_sub(now).max(0) as u64)
}

/// Rules queued to the ledger's writer by a configuration write.
pub(crate) struct PendingRules {
    rx: reply::ReplyRx,
}

/// What [`Engine::granted_from_copy`] did.
enum FromCopy<'s> {
    /// Decided.
    Decided(Decision),
    /// Not decided: this sole device or consumer has no copy of its rules
    /// on this thread, or its entry is not marked alone at the copy's
    /// version (its rounds then mark it).
    Unmarked(crate::state::Owner<'s>),
    /// Not decided: another subject, a `record`, or the ledger to ask.
    Not,
}

/// Where a call decided without blocking its thread stands (see
/// [`Engine::step`]).
pub(crate) enum Step {
    /// Decided.
    Decided(Decision),
    /// A grant to wait for ([`Engine::poll_step`]).
    Wait(GrantWait),
}

/// A call's wait for a grant it asked the ledger for.
pub(crate) struct GrantWait {
    /// Where the ledger's answer arrives (`Ok(None)`, `Err`: it will not).
    sent: Result<Option<reply::ReplyRx>, LedgerError>,
    /// What the call answers if the ledger fails and the policy fails closed.
    denial: Denial,
    /// When the call stops waiting (the engine's grant timeout after its
    /// first wait began).
    deadline: Instant,
    /// The subject's sole entity was not decided by the thread's copy: the
    /// round that decides marks its entry (read by the async rounds; the
    /// blocking ones carry the owner itself).
    #[cfg(feature = "tower")]
    unmarked: bool,
}

/// What a round of a call with a ledger came to.
enum Round {
    Decided(Decision),
    /// Grants sent (or not, if the writer is gone), and the denial to give
    /// if the ledger fails.
    Wait(Result<Option<reply::ReplyRx>, LedgerError>, Denial),
}

impl Engine {
    /// What the ledger did so far; `None` for an engine without one.
    pub fn ledger_stats(&self) -> Option<LedgerStats> {
        use std::sync::atomic::Ordering::Relaxed;
        let s = &self.grants.as_ref()?.stats;
        Some(LedgerStats {
            commits: s.commits.load(Relaxed),
            grants: s.grants.load(Relaxed),
            records: s.records.load(Relaxed),
            errors: s.errors.load(Relaxed),
        })
    }

    /// Gives every unspent grant back to the ledger and waits until that and
    /// every record booked so far are durable: what a clean shutdown does
    /// (dropping the engine does it too). The next debits take new grants.
    /// Does nothing without a ledger.
    ///
    /// # Errors
    /// The ledger's, if the final commit fails (what was given back then
    /// stays counted as used).
    pub fn flush(&self) -> Result<(), LedgerError> {
        let Some(g) = self.grants.as_deref() else {
            return Ok(());
        };
        // Every grant sent so far committed and on its ceiling first, so
        // that what is given back is what is really unspent.
        g.commit(Vec::new())?;
        self.apply_done(g);
        self.take_back(g, false, |_| true)?;
        // (and records booked since, if the sweep gave nothing back)
        g.commit(Vec::new())
    }

    /// Lowers every ceiling `pick` chooses to its counter's usage, under
    /// its owner's lock (`pick` may also update the ceiling's flags), and
    /// gives back what was above it; returns how many ceilings gave back.
    ///
    /// The sweep goes a few slots of a shard at a time
    /// (`Store::visit_mut`), and each step's give-backs are queued to the
    /// writer before the shard is unlocked: per counter, the ledger sees a
    /// give-back before any grant asked for after it (a give-back arriving later would be counted
    /// against that grant's room). With `turns`, the sweep waits for the
    /// queued give-backs to commit every [`writer::GIVE_BACK_CHUNK`] of
    /// them, with no shard locked: grants asked for meanwhile wait for a
    /// turn, not for the whole sweep (a file ledger rewrites what each turn
    /// touches, so a shutdown, with nobody waiting, takes no turns).
    ///
    /// A ceiling of an earlier generation of its rule (an update reset the
    /// rule's usage since) gives nothing back: its window's end would be
    /// computed from the rule's new period, which may name a window other
    /// engines count in now (a fleet's key), and its grant counts only in
    /// a window nobody counts in any more.
    ///
    /// # Errors
    /// The first failed commit's (what it would have given back stays
    /// counted as used).
    pub(crate) fn take_back(
        &self,
        g: &Grants,
        turns: bool,
        mut pick: impl FnMut(&mut CounterState) -> bool,
    ) -> Result<usize, LedgerError> {
        /// What the sweep queued: give-backs not waited for yet, the
        /// commits queued and not waited for (each answers for its own
        /// batch: a failed one followed by one that succeeds must still
        /// fail the sweep), how many give-backs in all, the first error.
        #[derive(Default)]
        struct Queued {
            unwaited: usize,
            commits: Vec<writer::Committed>,
            total: usize,
            error: Option<LedgerError>,
        }
        impl Queued {
            /// Waits for every commit queued so far, keeping the first error.
            fn wait_all(&mut self, g: &Grants) {
                for c in self.commits.drain(..) {
                    if let Err(e) = g.wait(c) {
                        self.error.get_or_insert(e);
                    }
                }
                self.unwaited = 0;
            }
        }
        let sent = std::cell::RefCell::new(Queued::default());
        self.store.visit_mut(
            || {
                let mut s = sent.borrow_mut();
                if turns && s.unwaited >= writer::GIVE_BACK_CHUNK {
                    s.wait_all(g);
                }
                (self.read(), Vec::new())
            },
            |(rules, changes), kind, id, counters| {
                for i in 0..counters.len() {
                    if counters[i].rule & CEILING == 0 || !pick(&mut counters[i]) {
                        continue;
                    }
                    let p = counters[i];
                    let slot = p.rule & !CEILING;
                    if rules
                        .rules
                        .get(slot as usize)
                        .is_none_or(|r| r.generation != p.generation)
                    {
                        continue;
                    }
                    let spent = counters
                        .iter()
                        .find(|c| c.rule == slot)
                        .filter(|c| {
                            c.generation == p.generation && c.window_start == p.window_start
                        })
                        .map_or(0, |c| c.used);
                    let unspent = p.used.saturating_sub(spent);
                    if unspent == 0 {
                        continue;
                    }
                    changes.push(Change::GiveBack {
                        key: key_of(rules, slot, kind, id),
                        window: window_id(rules, slot, p.generation, p.window_start),
                        amount: unspent,
                    });
                    counters[i].used = spent;
                }
            },
            |(rules, changes)| {
                drop(rules);
                if changes.is_empty() {
                    return;
                }
                let mut s = sent.borrow_mut();
                s.unwaited += changes.len();
                s.total += changes.len();
                match g.queue(changes) {
                    Ok(committed) => s.commits.push(committed),
                    Err(e) => {
                        s.error.get_or_insert(e);
                    }
                }
            },
        );
        let mut s = sent.into_inner();
        s.wait_all(g);
        match s.error {
            Some(e) => Err(e),
            None => Ok(s.total),
        }
    }

    /// Restores what a ledger held: rules first (in their order, with their
    /// generations), then the counters of rules still known, each at its
    /// ledger value (unspent grants of a crash count as used).
    fn restore(&self, snapshot: crate::ledger::Snapshot) -> Result<(), LedgerError> {
        let corrupt = |detail: String| LedgerError::new(LedgerErrorKind::Corrupt, "ledger", detail);
        if !snapshot.rules.is_empty() {
            let mut bad = None;
            self.publish_unpersisted(|r| {
                for rec in &snapshot.rules {
                    if r.slot_of(rec.info.benefit_id.as_str()).is_some() {
                        bad = Some(rec.info.benefit_id.clone());
                        continue;
                    }
                    let next = r.next_id();
                    let slot = r.insert(rec.info.clone(), next);
                    let e = &mut r.rules[slot as usize];
                    e.generation = rec.generation;
                    e.withdrawn = rec.withdrawn;
                }
            });
            if let Some(id) = bad {
                return Err(corrupt(format!("rule {id} is stored twice")));
            }
            if let Some(g) = self.grants.as_deref() {
                *g.persisted.lock() = snapshot.rules.clone();
            }
        }
        let rules = self.read();
        for (key, rec) in snapshot.counters {
            let Some(slot) = rules.slot_of(key.benefit_id.as_str()) else {
                continue; // a rule the ledger no longer holds: nothing counts on it
            };
            if rules.rules[slot as usize].generation != rec.window.generation {
                continue; // reset by an update since (D16)
            }
            if rec.used == 0 && rec.lifetime == 0 {
                continue; // nothing counts (grants that all came back)
            }
            let (kind, id) = match &key.owner {
                CounterOwner::Device(d) => (OwnerKind::Device, d.as_str()),
                CounterOwner::Consumer(c) => (OwnerKind::Consumer, c.as_str()),
                CounterOwner::Pool => (OwnerKind::Pool, ""),
            };
            let owner = match kind {
                OwnerKind::Pool => self.store.pool(slot),
                k => self.store.entity_hashed(k, id),
            };
            // Kept past `max_counters` if need be: refusing to open would
            // leave moving the file away, which forgets every counter.
            self.store.reserve_restored(1);
            let shard = self.store.shard_index(&owner);
            let mut locked = self.store.lock_many(&[shard]);
            let counters = locked.counters_mut(shard, &owner);
            let c = CounterState {
                used: rec.used,
                lifetime: rec.lifetime,
                window_start: rec.window.start,
                generation: rec.window.generation,
                rule: slot,
            };
            *counter_of(counters, slot) = c;
            *counter_of(counters, slot | CEILING) = CounterState {
                lifetime: 0,
                rule: slot | CEILING,
                ..c
            };
        }
        Ok(())
    }

    /// Queues the rules of `rules` that changed since they were last queued
    /// (with the writer: see `Engine::publish`); what to wait for.
    ///
    /// Compared with what was *queued*, not with what a commit stored: the
    /// writer commits in order and holds a failed batch's rules for the
    /// next, so the last queued record of a rule is what the ledger ends up
    /// with. Compared with the last stored one instead, a write undone
    /// after a failed commit (a limit raised, the commit failing, the limit
    /// lowered back) was never sent, and the held raise, committed later,
    /// stayed in the ledger for the next life to enforce.
    pub(crate) fn send_rules(&self, rules: &RuleSet) -> Option<PendingRules> {
        let g = self.grants.as_deref()?;
        let mut persisted = g.persisted.lock();
        let changed: Vec<RuleRecord> = rules
            .rules
            .iter()
            .enumerate()
            .filter(|(i, e)| {
                persisted.get(*i).is_none_or(|p| {
                    p.info != e.info || p.generation != e.generation || p.withdrawn != e.withdrawn
                })
            })
            .map(|(i, e)| RuleRecord {
                position: i as u32,
                info: e.info.clone(),
                generation: e.generation,
                withdrawn: e.withdrawn,
            })
            .collect();
        if changed.is_empty() {
            return None;
        }
        let changes = changed.iter().cloned().map(Change::Rule).collect();
        let rx = g.send(changes, Vec::new(), true).ok().flatten()?;
        // Under the same lock as the send: queued records are remembered in
        // the order the writer receives them.
        for r in changed {
            let i = r.position as usize;
            if i < persisted.len() {
                persisted[i] = r;
            } else {
                persisted.push(r);
            }
        }
        Some(PendingRules { rx })
    }

    /// Waits until the rules `send_rules` queued are durable. A failure is
    /// counted ([`LedgerStats::errors`]); the writer holds the rules and
    /// commits them first in its next batch, before any grant.
    pub(crate) fn await_rules(&self, pending: Option<PendingRules>) {
        if let Some(p) = pending {
            let _ = p.rx.recv();
        }
    }

    /// Tells the ledger which counter windows `evict` removed (a record
    /// of another window, granted since, stays).
    pub(crate) fn forget(&self, rules: &RuleSet, gone: Vec<(OwnerKind, String, u32, u32, i64)>) {
        let Some(g) = self.grants.as_deref() else {
            return;
        };
        let changes: Vec<Change> = gone
            .into_iter()
            .filter(|(_, _, slot, ..)| (*slot as usize) < rules.rules.len())
            .map(|(kind, id, slot, generation, start)| Change::Forget {
                key: key_of(rules, slot, kind, &id),
                window: window_id(rules, slot, generation, start),
            })
            .collect();
        if !changes.is_empty() {
            let _ = g.send(changes, Vec::new(), false);
        }
    }

    /// Adds the grants the writer finished to their counters' ceilings
    /// (those still in the window they were asked for), and takes them off
    /// the pending amounts.
    fn apply_done(&self, g: &Grants) {
        use std::sync::atomic::Ordering::{Acquire, Relaxed};
        if !g.done.ready.load(Acquire) {
            return;
        }
        // One applier at a time, and the flag cleared only once the queue
        // is found empty: a caller that saw it set waits here until every
        // grant finished so far, its own included, is on its ceiling.
        let _applying = g.done.applying.lock();
        loop {
            let finished = {
                let mut q = g.done.queue.lock();
                if q.is_empty() {
                    g.done.ready.store(false, Relaxed);
                    return;
                }
                std::mem::take(&mut *q)
            };
            for (r, granted) in finished {
                let owner = crate::state::Owner {
                    kind: r.kind,
                    pool: r.pool,
                    id: &r.id,
                    hash: r.hash,
                };
                let mut locked = self.store.lock_many(&[r.shard]);
                let Some(counters) = locked.counters_if_any(r.shard, &owner) else {
                    continue;
                };
                let Some(p) = counters.iter_mut().find(|c| c.rule == r.slot | CEILING) else {
                    continue;
                };
                if p.generation == r.window.generation && p.window_start == r.window.start {
                    let short = granted.is_some_and(|g| g < r.at_least);
                    if short {
                        let now = Instant::now();
                        let mut marks = g.done.refused.lock();
                        if marks.len() >= 4_096 {
                            marks.retain(|_, until| *until > now);
                        }
                        marks.insert((r.key.clone(), r.window), now + REFUSED_FOR);
                    }
                    let refused = p.lifetime & REFUSED != 0 || short;
                    let granted = granted.unwrap_or(0);
                    let pending = (p.lifetime & PENDING).saturating_sub(r.asked);
                    p.lifetime =
                        pending | (p.lifetime & ACTIVE) | if refused { REFUSED } else { 0 };
                    p.used = p.used.saturating_add(granted);
                }
            }
        }
    }

    /// [`Engine::run`] with a ledger: a debit goes through only under its
    /// counters' durable ceilings. A call whose debit would pass one takes a
    /// grant and waits for it; a call that leaves a counter with less than
    /// half a grant's worth takes the next grant ahead, without waiting (so
    /// a counter in steady use seldom makes anybody wait).
    pub(crate) fn run_granted(
        &self,
        g: &Grants,
        subject: &crate::Subject<'_>,
        now: i64,
        op: Op,
    ) -> Decision {
        match self.granted_first(g, subject, now, op) {
            Ok(d) => d,
            Err(unmarked) => self.run_granted_rounds(g, subject, now, op, unmarked),
        }
    }

    /// What every call with a ledger, blocking or not, tries before its
    /// rounds: an impossible `now` is rejected, finished grants are
    /// applied, and the thread's copy of the rules decides if it can
    /// (`Ok`); else `Err` carries the owner the copy found unmarked (a sole
    /// device or consumer), whose entry the round that decides marks.
    #[inline(always)]
    fn granted_first<'s>(
        &self,
        g: &Grants,
        subject: &crate::Subject<'s>,
        now: i64,
        op: Op,
    ) -> Result<Decision, Option<crate::state::Owner<'s>>> {
        if !possible_now(now) {
            return Ok(Decision::impossible_time(now));
        }
        self.apply_done(g);
        match self.granted_from_copy(g, subject, now, op) {
            FromCopy::Decided(d) => Ok(d),
            FromCopy::Unmarked(owner) => Err(Some(owner)),
            FromCopy::Not => Err(None),
        }
    }

    /// [`Engine::run_granted`] through the rule table, round by round
    /// ([`Engine::round_step`]), waiting on this thread for each grant.
    fn run_granted_rounds(
        &self,
        g: &Grants,
        subject: &crate::Subject<'_>,
        now: i64,
        op: Op,
        unmarked: Option<crate::state::Owner<'_>>,
    ) -> Decision {
        // Rounds until decided: a grant this call waited for may be spent by
        // another call before this one decides again (each round, somebody
        // progresses), so the bound is the grant timeout, not a count.
        // The clock is read only once a call has to wait (most never do).
        let mut deadline: Option<Instant> = None;
        loop {
            // Decided, or a grant to wait for (with no lock held meanwhile).
            let wait = match self.round_step(g, subject, now, op, unmarked, deadline) {
                Step::Decided(d) => return d,
                Step::Wait(wait) => wait,
            };
            deadline = Some(wait.deadline);
            let answer = match wait.sent {
                Ok(Some(rx)) => rx
                    .recv_until(wait.deadline)
                    .unwrap_or_else(|| Err(g.closed())),
                Ok(None) => Err(g.closed()),
                Err(e) => Err(e),
            };
            let late = Instant::now() >= wait.deadline;
            if let Some(d) = self.after_wait(g, subject, now, op, answer, late, wait.denial) {
                return d;
            }
        }
    }

    /// A call of [`Engine::run_granted`] decided with the thread's copy of
    /// the rules, as [`Engine::run`] decides without a ledger (the same
    /// checks: the version read under the shard lock is the copy's, the
    /// entity's entry is marked alone at it), when nothing is to be asked
    /// of the ledger: every counter the debit lands on is current, its
    /// ceiling is in the same window and covers the debit, and no grant is
    /// due ahead. Then the debit stays under the durable ceilings, checked
    /// under the shard's lock the decision holds, as the rounds check it.
    /// A `record` (booked to the ledger) always takes the rounds.
    #[inline]
    fn granted_from_copy<'s>(
        &self,
        g: &Grants,
        subject: &crate::Subject<'s>,
        now: i64,
        op: Op,
    ) -> FromCopy<'s> {
        if matches!(op, Op::Record(..)) {
            return FromCopy::Not;
        }
        let Some((kind, id)) = subject.sole_entity() else {
            return FromCopy::Not;
        };
        let store = &self.store;
        let owner = store.entity_hashed(kind, id);
        let shard = store.shard_index(&owner);
        // The entry's miss overlaps the copy's lookup and the locking.
        store.prefetch_in(shard, &owner);
        let Some(copy) = crate::cached::thread_rules::<2>(self.id, kind as usize, now) else {
            return FromCopy::Unmarked(owner);
        };
        let mut locked = store.lock_shard(shard);
        let version = self.version.load(std::sync::atomic::Ordering::Acquire);
        if version != copy.version {
            return FromCopy::Unmarked(owner);
        }
        let Some(counters) = locked.counters_if_alone(&owner, version) else {
            return FromCopy::Unmarked(owner);
        };
        if let Op::TryConsume(ty, amount) = op {
            for r in copy.rules.iter() {
                if r.benefit_type != ty || r.frozen || amount == 0 {
                    continue;
                }
                let Some(c) = counters.iter().find(|c| c.rule == r.slot).copied() else {
                    return FromCopy::Not;
                };
                if !c.is_current(r.generation, r.window) {
                    return FromCopy::Not; // a new window: its grant first
                }
                // Saturating, as the decision adds (D14; see `round_locked`).
                let need = c.used.saturating_add(amount);
                if need > r.limit {
                    continue; // the rule denies it anyway
                }
                let Some(p) = counters.iter_mut().find(|p| {
                    p.rule == r.slot | CEILING
                        && p.generation == c.generation
                        && p.window_start == c.window_start
                }) else {
                    return FromCopy::Not;
                };
                let (ceiling, pending, refused) =
                    (p.used, p.lifetime & PENDING, p.lifetime & REFUSED != 0);
                if need > ceiling
                    || g.due_ahead(r.limit, need, ceiling, pending, refused, amount)
                        .is_some()
                {
                    return FromCopy::Not; // a grant to wait for, or the next one due
                }
                // Spent since the last idle sweep (as the rounds mark it).
                p.lifetime |= ACTIVE;
            }
        }
        let rules = crate::cached::CachedRules(&copy.rules);
        FromCopy::Decided(crate::decide::decide_one_owner(
            store,
            &rules,
            Some(counters),
            op,
        ))
    }

    /// What a call that waited for a grant comes to, given the ledger's
    /// `answer` and whether its deadline passed (`late`): `None` if it was
    /// granted in time (the call decides again, with the grant), else the
    /// decision: `insufficient` when not even the minimum was left, the
    /// failure policy's when the ledger failed or was late (`denial`: what
    /// failing closed answers).
    #[allow(clippy::too_many_arguments)]
    fn after_wait(
        &self,
        g: &Grants,
        subject: &crate::Subject<'_>,
        now: i64,
        op: Op,
        answer: Result<bool, LedgerError>,
        late: bool,
        denial: Denial,
    ) -> Option<Decision> {
        match answer {
            Ok(false) if !late => None, // granted: decide again with it
            Ok(true) => {
                // Not even the minimum was left: the ledger's limit (a
                // fleet's, across instances) is reached.
                self.apply_done(g);
                Some(Decision::Denied(Denial {
                    reason: DenyReason::Insufficient,
                    ..denial
                }))
            }
            Ok(false) | Err(_) => {
                self.apply_done(g);
                Some(match g.failure {
                    LedgerFailure::FailClosed => Decision::Denied(denial),
                    LedgerFailure::FailOpen => self.decide_unbacked(g, subject, now, op, None),
                    LedgerFailure::SafeCapacity(cap) => {
                        self.decide_unbacked(g, subject, now, op, Some(cap.as_micros()))
                    }
                })
            }
        }
    }

    /// `op` for `subject` at `now`, decided as [`Engine::run`] decides it,
    /// except that a grant to wait for is handed back ([`Step::Wait`])
    /// rather than waited for on this thread: for callers on an async
    /// runtime, whose worker must not block (the tower middleware).
    #[cfg(feature = "tower")]
    pub(crate) fn step(&self, subject: &crate::Subject<'_>, now: i64, op: Op) -> Step {
        let Some(g) = self.grants.as_deref() else {
            return Step::Decided(self.run(subject, now, op));
        };
        match self.granted_first(g, subject, now, op) {
            Ok(d) => Step::Decided(d),
            Err(unmarked) => self.round_step(g, subject, now, op, unmarked, None),
        }
    }

    /// One round of a call with a ledger through the rule table, blocking
    /// ([`Engine::run_granted`]) or not ([`Engine::poll_step`]): decided,
    /// or a grant to wait for; the entry of `unmarked` (a sole device or
    /// consumer the thread's copy did not decide for) is marked by the
    /// round that decides. `deadline`: the call's, if it has waited
    /// already (else the grant timeout from now, should this round wait).
    fn round_step(
        &self,
        g: &Grants,
        subject: &crate::Subject<'_>,
        now: i64,
        op: Op,
        unmarked: Option<crate::state::Owner<'_>>,
        deadline: Option<Instant>,
    ) -> Step {
        self.apply_done(g);
        match self.round(g, subject, now, op, unmarked) {
            Round::Decided(d) => Step::Decided(d),
            Round::Wait(sent, denial) => Step::Wait(GrantWait {
                sent,
                denial,
                deadline: deadline.unwrap_or_else(|| Instant::now() + g.grant_timeout),
                #[cfg(feature = "tower")]
                unmarked: unmarked.is_some(),
            }),
        }
    }

    /// Polls a call's wait for its grant ([`Engine::step`], with the same
    /// `subject`, `now` and `op`): `Pending` until the ledger answers or the
    /// deadline passes (`cx`'s task is woken then), then the call's next
    /// step, as the blocking call takes it.
    #[cfg(feature = "tower")]
    pub(crate) fn poll_step(
        &self,
        wait: &mut GrantWait,
        subject: &crate::Subject<'_>,
        now: i64,
        op: Op,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Step> {
        use std::task::Poll;
        let Some(g) = self.grants.as_deref() else {
            // Only a ledgered engine hands out waits.
            return Poll::Ready(Step::Decided(self.run(subject, now, op)));
        };
        let answer = match &wait.sent {
            Ok(Some(rx)) => match rx.poll_until(cx, wait.deadline) {
                Poll::Ready(answer) => answer.unwrap_or_else(|| Err(g.closed())),
                Poll::Pending => return Poll::Pending,
            },
            Ok(None) => Err(g.closed()),
            Err(e) => Err(e.clone()),
        };
        let late = Instant::now() >= wait.deadline;
        let denial = wait.denial.clone();
        Poll::Ready(
            match self.after_wait(g, subject, now, op, answer, late, denial) {
                Some(d) => Step::Decided(d),
                None => {
                    // The owner `step` found unmarked (the subject's sole
                    // entity), carried as the blocking rounds carry it.
                    let unmarked = wait
                        .unmarked
                        .then(|| subject.sole_entity())
                        .flatten()
                        .map(|(kind, id)| self.store.entity_hashed(kind, id));
                    self.round_step(g, subject, now, op, unmarked, Some(wait.deadline))
                }
            },
        )
    }

    /// One round of [`Engine::run_granted`]: decided under the locks if
    /// every counter's ceiling covers the debit (sending grants taken
    /// ahead), else the grants asked for and the denial to give if the
    /// ledger fails (`ledger_unavailable`, naming the first rule waited on).
    fn round(
        &self,
        g: &Grants,
        subject: &crate::Subject<'_>,
        now: i64,
        op: Op,
        unmarked: Option<crate::state::Owner<'_>>,
    ) -> Round {
        self.with_applied(
            subject,
            now,
            || Round::Decided(Decision::Allowed(None)),
            |table, locked| {
                let round = self.round_locked(g, table, locked, now, op);
                if let (Some(owner), Round::Decided(_)) = (unmarked, &round) {
                    // Its entry exists now if it ever will: marked under the
                    // locks this round holds, so that its next call can
                    // decide with the thread's copy.
                    self.mark_in_round(table, locked, &owner, now);
                }
                round
            },
        )
    }

    /// [`Engine::round`] once its rules are resolved and their shards locked.
    fn round_locked(
        &self,
        g: &Grants,
        table: &TableRules<'_, '_>,
        locked: &mut Locked<'_>,
        now: i64,
        op: Op,
    ) -> Round {
        let (rules, applied) = (table.table, table.applied);
        let mut refills: Vec<Refill> = Vec::new();
        let mut changes = Vec::new();
        // The first rule this call must wait on, and its window's end.
        let mut waits_on: Option<(u32, Option<i64>)> = None;
        // Whether a rule's counter found no room (`max_counters`): the call
        // is then denied here, not left to the decision, whose own
        // reservation may succeed a moment later (a sweep or a refused
        // reservation elsewhere moves the count) and would then debit a
        // counter no grant covers.
        let mut no_room = false;
        if let Op::TryConsume(ty, amount) = op {
            for (i, a) in applied.iter().enumerate() {
                let (v, w) = table.rule(i);
                if v.benefit_type != ty || v.frozen || amount == 0 {
                    continue;
                }
                let cs = locked.counters(a.shard, &a.owner);
                let mut c = cs
                    .and_then(|cs| cs.iter().find(|c| c.rule == v.slot))
                    .copied();
                let p = cs
                    .and_then(|cs| cs.iter().find(|c| c.rule == v.slot | CEILING))
                    .copied();
                let mut window = landing(rules, v.slot, c.as_ref(), v.generation, w);
                if let Some(p) =
                    p.filter(|p| p.generation == window.generation && p.window_start > window.start)
                {
                    // A call whose clock is in a newer window took a grant
                    // there; this late call counts in that window too
                    // (windows only move forward, D16): the counter moves
                    // now, so that its debit lands where its ceiling is.
                    let newer = crate::Window {
                        start: p.window_start,
                        end: p.window_start,
                    };
                    let exists = c.is_some();
                    if !exists && !self.store.reserve(1) {
                        no_room = true;
                        continue;
                    }
                    let counters = locked.counters_mut(a.shard, &a.owner);
                    let cur = counter_of(counters, v.slot);
                    cur.roll(v.generation, Some(newer));
                    c = Some(*cur);
                    window = window_id(rules, v.slot, p.generation, p.window_start);
                }
                let used = match c {
                    Some(c)
                        if c.generation == window.generation && c.window_start == window.start =>
                    {
                        c.used
                    }
                    _ => 0,
                };
                // Saturating, as the decision adds (D14): under a saturated
                // limit a debit that saturates the counter is allowed, and
                // needs its grant like any other.
                let need = used.saturating_add(amount);
                if need > v.limit {
                    continue; // the rule denies it anyway
                }
                if c.is_none() && self.store.is_full() {
                    // Its counter cannot be created (`max_counters`): no
                    // grant, no entry, and the call is denied.
                    no_room = true;
                    continue;
                }
                let (ceiling, pending, refused) = match p {
                    Some(p)
                        if p.generation == window.generation && p.window_start == window.start =>
                    {
                        if p.lifetime & ACTIVE == 0 {
                            // Spent since the last idle sweep: its grant
                            // stays (written once per sweep, not per call).
                            let counters = locked.counters_mut(a.shard, &a.owner);
                            ceiling_at(counters, v.slot, window).lifetime |= ACTIVE;
                        }
                        (p.used, p.lifetime & PENDING, p.lifetime & REFUSED != 0)
                    }
                    _ => (0, 0, false),
                };
                let mut refused = refused;
                if refused && need > ceiling {
                    let key = (key_of(rules, v.slot, a.owner.kind, a.owner.id), window);
                    let mut marks = g.done.refused.lock();
                    if marks.get(&key).is_some_and(|&until| Instant::now() < until) {
                        // The ledger had not even this call's minimum left
                        // a moment ago (other engines hold or spent the
                        // rest): denied here, without asking again.
                        let mut d = unavailable(rules, v.slot, w.map(|w| w.end));
                        d.reason = DenyReason::Insufficient;
                        // Grants this call already marked pending for
                        // earlier rules still go (their pending amounts are
                        // cleared only when they come back).
                        if !refills.is_empty() {
                            let _ = g.send(changes, refills, false);
                        }
                        return Round::Decided(Decision::Denied(d));
                    }
                    // Time to ask again (others may have given grants back,
                    // or the limit grown).
                    marks.remove(&key);
                    drop(marks);
                    refused = false;
                    let counters = locked.counters_mut(a.shard, &a.owner);
                    ceiling_at(counters, v.slot, window).lifetime &= !REFUSED;
                }
                // What to ask for, the least of it worth granting, and
                // whether this call waits for it.
                let (asked, at_least, waits) = if need > ceiling {
                    waits_on = waits_on.or(Some((v.slot, w.map(|w| w.end))));
                    if need <= ceiling.saturating_add(pending) {
                        continue; // a grant on its way covers it
                    }
                    let want = need - ceiling - pending;
                    (g.size(v.limit, used, ceiling + pending, want), want, true)
                } else {
                    let Some(next) = g.due_ahead(v.limit, need, ceiling, pending, refused, amount)
                    else {
                        continue;
                    };
                    (next, amount, false)
                };
                let counters = locked.counters_mut(a.shard, &a.owner);
                let p = ceiling_at(counters, v.slot, window);
                // (Active: the grant is for a call, not to be swept back
                // before that call comes back for it.)
                p.lifetime = (p.lifetime & !PENDING)
                    | ACTIVE
                    | (p.lifetime & PENDING).saturating_add(asked).min(PENDING);
                changes.push(Change::Grant {
                    key: key_of(rules, v.slot, a.owner.kind, a.owner.id),
                    window,
                    at_least,
                    amount: asked,
                    limit: v.limit,
                    ends_in: ends_in(window, now),
                });
                refills.push(Refill {
                    shard: a.shard,
                    kind: a.owner.kind,
                    pool: a.owner.pool,
                    id: a.owner.id.to_owned(),
                    hash: a.owner.hash,
                    slot: v.slot,
                    window,
                    asked,
                    at_least: if waits { at_least } else { 0 },
                    key: key_of(rules, v.slot, a.owner.kind, a.owner.id),
                });
            }
        }
        if let (true, Op::TryConsume(ty, amount)) = (no_room, op) {
            // Grants marked pending for other rules still go (their pending
            // amounts are cleared only when they come back).
            if !refills.is_empty() {
                let _ = g.send(changes, refills, false);
            }
            // A rule that denies the call anyway is the answer, ranked as
            // without a ledger; else no room for the counter.
            let d = self.denied_without_room(applied, table, locked, ty, amount);
            return Round::Decided(Decision::Denied(d));
        }
        // Sent under the locks: per counter, the ledger sees changes in the
        // order the counters saw them.
        let wait = waits_on.is_some();
        let sent = if refills.is_empty() && !wait {
            Ok(None)
        } else {
            g.send(changes, refills, wait)
        };
        match waits_on {
            None => {
                let before = match op {
                    Op::Record(ty, _) => self.lifetimes(table, applied, locked, ty),
                    _ => SmallVec::new(),
                };
                let d = self.decide(applied, table, locked, op);
                if let Op::Record(ty, _) = op {
                    self.book_record(table, applied, locked, ty, &before, now);
                }
                Round::Decided(d)
            }
            Some((slot, resets_at)) => Round::Wait(sent, unavailable(rules, slot, resets_at)),
        }
    }

    /// A call the ledger could not grant for, under
    /// [`LedgerFailure::FailOpen`] (`cap` `None`) or
    /// [`LedgerFailure::SafeCapacity`]: decided locally and booked as
    /// post-paid usage (sent to the ledger, which takes it once back).
    fn decide_unbacked(
        &self,
        g: &Grants,
        subject: &crate::Subject<'_>,
        now: i64,
        op: Op,
        cap: Option<u64>,
    ) -> Decision {
        let Op::TryConsume(ty, amount) = op else {
            return self.run_granted(g, subject, now, op);
        };
        self.with_applied(
            subject,
            now,
            || Decision::Allowed(None),
            |table, locked| self.decide_unbacked_locked(g, table, locked, (ty, amount), now, cap),
        )
    }

    /// [`Engine::decide_unbacked`] of a debit of `amount` of `ty`, once its
    /// rules are resolved and their shards locked.
    fn decide_unbacked_locked(
        &self,
        g: &Grants,
        table: &TableRules<'_, '_>,
        locked: &mut Locked<'_>,
        (ty, amount): (crate::BenefitType, u64),
        now: i64,
        cap: Option<u64>,
    ) -> Decision {
        let (rules, applied) = (table.table, table.applied);
        let mut keys = Vec::new();
        if let Some(cap) = cap {
            let unbacked = g.done.unbacked.lock();
            for (i, a) in applied.iter().enumerate() {
                let (v, w) = table.rule(i);
                if v.benefit_type != ty {
                    continue;
                }
                let c = locked
                    .counters(a.shard, &a.owner)
                    .and_then(|cs| cs.iter().find(|c| c.rule == v.slot));
                let key = (
                    key_of(rules, v.slot, a.owner.kind, a.owner.id),
                    landing(rules, v.slot, c, v.generation, w),
                );
                let so_far = unbacked.get(&key).copied().unwrap_or(0);
                if so_far.saturating_add(amount) > cap {
                    return Decision::Denied(unavailable(rules, v.slot, w.map(|w| w.end)));
                }
                keys.push(key);
            }
        }
        let before = self.lifetimes(table, applied, locked, ty);
        let d = self.decide(applied, table, locked, Op::TryConsume(ty, amount));
        if d.is_allowed() {
            self.book_record(table, applied, locked, ty, &before, now);
            let mut unbacked = g.done.unbacked.lock();
            let len = unbacked.len();
            if len >= UNBACKED_PRUNE_AT && len.is_power_of_two() {
                // Ended windows need their tally no more. Only as the map
                // doubles: while its windows are all open, a pass per call
                // would find nothing to drop.
                unbacked.retain(|(_, w), _| w.end > now);
            }
            for key in keys {
                *unbacked.entry(key).or_default() += amount;
            }
        }
        d
    }

    /// The lifetime totals of the counters of type `ty` among `applied`.
    fn lifetimes(
        &self,
        table: &TableRules<'_, '_>,
        applied: &[crate::rules::Applied<'_>],
        locked: &crate::state::Locked<'_>,
        ty: crate::BenefitType,
    ) -> SmallVec<[u64; 4]> {
        applied
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let (v, _) = table.rule(i);
                if v.benefit_type != ty {
                    return 0;
                }
                locked
                    .counters(a.shard, &a.owner)
                    .and_then(|cs| cs.iter().find(|c| c.rule == v.slot))
                    .map_or(0, |c| c.lifetime)
            })
            .collect()
    }

    /// After a `record` of `ty`: raises each counter's ceiling by what was
    /// booked on it (the usage happened; what was granted stays what is
    /// left to spend) and sends the records to the ledger.
    fn book_record(
        &self,
        table: &TableRules<'_, '_>,
        applied: &[crate::rules::Applied<'_>],
        locked: &mut crate::state::Locked<'_>,
        ty: crate::BenefitType,
        before: &[u64],
        now: i64,
    ) {
        let mut changes = Vec::new();
        for (i, a) in applied.iter().enumerate() {
            let (v, w) = table.rule(i);
            if v.benefit_type != ty {
                continue;
            }
            let Some(counters) = locked.counters_if_any(a.shard, &a.owner) else {
                continue;
            };
            let Some(c) = counters.iter().find(|c| c.rule == v.slot).copied() else {
                continue;
            };
            let booked = c
                .lifetime
                .saturating_sub(before.get(i).copied().unwrap_or(0));
            if booked == 0 {
                continue;
            }
            let window = landing(table.table, v.slot, Some(&c), v.generation, w);
            let newer = counters.iter().any(|p| {
                p.rule == v.slot | CEILING
                    && p.generation == window.generation
                    && p.window_start > window.start
            });
            if !newer {
                // (A ceiling already in a newer window stays there: the
                // record counts in its own window, in the ledger too.)
                let p = ceiling_at(counters, v.slot, window);
                p.used = p.used.saturating_add(booked);
            }
            changes.push(Change::Record {
                key: key_of(table.table, v.slot, a.owner.kind, a.owner.id),
                window,
                amount: booked,
                ends_in: ends_in(window, now),
            });
        }
        let Some(g) = self.grants.as_deref() else {
            return;
        };
        if !changes.is_empty() {
            g.stats
                .records
                .fetch_add(changes.len() as u64, std::sync::atomic::Ordering::Relaxed);
            let _ = g.send(changes, Vec::new(), false);
        }
    }
}

impl Drop for Engine {
    /// With a ledger: gives the unspent grants back, waits until every
    /// record is durable, and stops the writer.
    fn drop(&mut self) {
        if let Some(g) = self.grants.as_deref() {
            let _ = self.flush();
            g.stop();
        }
    }
}
