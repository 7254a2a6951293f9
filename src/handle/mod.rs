//! Subject handles: a subject resolved once, then decided on without lookups.
//!
//! A handle caches what a call by subject computes each time: the applicable
//! rules (their limits, generations, windows, frozen flags) and where their
//! counters live (owner hashes and shards). A call through the handle locks
//! those shards, checks under the locks that the engine's configuration
//! version is still the one the handle resolved at, and decides. Any configuration write bumps the
//! version, so the next call through any handle resolves again; so does a
//! call whose `now` crosses an activation boundary (`started_at`,
//! `ended_at + 1`) of a rule the resolution looked at.
//!
//! Why that is exact: the version is read while every shard of the operation
//! is locked, and writers bump it with every copy of the rule table locked. On each
//! shard, operations therefore see non-decreasing versions in lock order, so
//! every operation decided with version `v` on a counter comes before every
//! operation decided with a later version on it: the same order a call by
//! subject (which holds a copy of the rule table locked throughout) would give.
//! `loom-tests/tests/loom.rs` checks this under every interleaving of small races.
//!
//! A handle whose subject is only a device or only a consumer, named by no
//! single rule at its last resolution, decides instead as a call by subject
//! for such an entity does: with the thread's copy of the family's
//! all-scope rules (`crate::cached`), if the version read under the shard
//! lock is the copy's and the entry, found through the slot the handle
//! remembers, is marked alone at it. The same argument makes that exact,
//! with the copy's version in place of the handle's; the entry is the
//! owner's because the slot is trusted only while the shard table's layout
//! epoch is the one it was found at.
//!
//! A leased handle (`lease.rs`) puts a path with no lock in front of that:
//! spending headroom that an earlier locked call took ahead.

use std::ops::Deref;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use smallvec::SmallVec;

use crate::amount::Amount;
use crate::cached::{CachedRule, CachedRules};
use crate::decide::{decide_one_owner, Op};
use crate::decision::Decision;
use crate::engine::Engine;
use crate::period::possible_now;
use crate::rules::{Applied, AppliedVec, RuleSet, Validity};
use crate::state::{Locked, Owner, OwnerKind, SlotHint, Stamp, Store};
use crate::subject::{Member, Subject};
use crate::types::{BenefitId, BenefitType, Family};

mod lease;

/// What a handle caches: an owned copy of the subject's ids, the rules that
/// applied at its last resolution, where their counters live, and its
/// leases.
// In this order (`repr(C)`): the first line, with the handle's engine,
// holds what every call reads (the version and fresh range, and what a
// leased call checks before spending: its flag and the first owner's
// stamp); the owners come next (an exact call for a sole device or
// consumer reads the first line and its owner's shard and slot, nothing
// else of the handle); what the other exact calls read follows,
// contiguous (the rules, the subject's device and consumer ids), so that a
// call misses on as few lines as the handle allows and a batch prefetches
// only those; the member's ids and the leases' state, which an exact call
// does not read, come last.
#[repr(C)]
pub(crate) struct HandleState {
    version: u64,
    /// `valid` narrowed to the cached windows of the rules: within it, a
    /// call uses the cached rules as they are; outside it but within
    /// `valid`, their windows roll first ([`Engine::roll_windows`]).
    fresh: Validity,
    /// The rules' leases were granted under the cached version, windows and
    /// generations, and every rule keeps some lease or is idle: calls may
    /// spend from them (see `lease.rs`).
    lease_ok: bool,
    watched: u8,
    /// The subject is only a device or only a consumer, and no single rule
    /// named it under `version`: its rules are its family's all-scope
    /// rules, so an exact call may decide with the thread's copy of those
    /// (`crate::cached`) when its entry is marked alone at the current
    /// version (see [`Engine::run_exact`]). A hint: the entry's mark and
    /// the copy's version are what make such a decision exact.
    alone: bool,
    /// The handle is counted as a holder of every watched owner's stamp
    /// (`state::hold`), from its grant until its leases are given back.
    holds: bool,
    /// The owners' stamps and their values when the leases were granted
    /// (see `state::Stamp`): the first `watched` entries; a leased call
    /// spends only while each is unchanged.
    watch: [Watch; 2],
    /// Micro-units of every rule's headroom a call takes ahead for the
    /// handle to spend without locking; 0: an exact handle (see
    /// [`SubjectHandle::with_lease`]).
    lease: u64,
    owners: SmallVec<[HandleOwner; 2]>,
    /// The range of `now` over which the resolution holds (no activation
    /// boundary of the rules it looked at inside).
    valid: Validity,
    rules: SmallVec<[CachedRule; 2]>,
    /// The owners' shards, sorted and deduplicated (the lock order).
    shards: SmallVec<[usize; 2]>,
    subject: OwnedSubject,
    /// One per cached rule, in the same order, once leases were granted.
    leases: SmallVec<[RuleLease; 2]>,
    /// What the leases allow per benefit type (indexed by the type), once
    /// leases were granted: what a leased call reads and writes.
    spend: [TypeLease; BenefitType::ALL.len()],
}

impl std::fmt::Debug for HandleState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandleState")
            .field("subject", &self.subject.borrow())
            .field(
                "rules",
                &self.rules.iter().map(|r| &r.id).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// The bytes of a handle that an exact call for a sole device or consumer
/// that no single rule names reads (the engine, the flags, the first
/// owner), from its start: `an_exact_call_from_the_threads_copy_reads_the_first_two_lines`
/// checks that they fit.
const ALONE_READS: usize = 2 * 64;

/// One counter owner's stamp and the value a grant saw there.
#[derive(Clone, Default)]
struct Watch {
    stamp: Option<Stamp>,
    seen: u64,
}

/// One rule's lease in a leased handle (see `lease.rs`): what its settling
/// needs. The unspent part is `granted` less what was spent of the rule's
/// type since the grant ([`TypeLease::spent`]).
#[derive(Clone)]
struct RuleLease {
    /// What the grant took, counted as used on the rule's counter in the
    /// window starting at `start`; 0 for a rule not leased.
    granted: u64,
    /// The counter's window start when the lease was granted.
    start: i64,
}

/// The leases of one benefit type's rules, taken together (see `lease.rs`):
/// every debit of the type comes off all of them alike, so what bounds the
/// next debit and which rule is the tightest stay fixed between grants.
#[derive(Clone)]
struct TypeLease {
    /// Spent from each of the type's leases since the grant.
    spent: u64,
    /// The least granted to one of the type's rules (0 if one of them is
    /// idle or not leased; `u64::MAX` with no rule of the type): a debit is
    /// covered while `spent + need ≤ cap`.
    cap: u64,
    /// The type's tightest rule (the least left, D13): `limit − used` on its
    /// counter before the grant, so `tight − spent` is what it has left.
    tight: u64,
    /// When the tightest rule's window resets; `i64::MIN`: never (cumulative).
    resets: i64,
    /// The tightest rule's slot (ties between types go to the lower one).
    slot: u32,
    /// The tightest rule's id; `None`: no rule of the type applies.
    id: Option<BenefitId>,
}

impl TypeLease {
    /// No lease granted, no rule of the type.
    const NONE: TypeLease = TypeLease {
        spent: 0,
        cap: u64::MAX,
        tight: 0,
        resets: i64::MIN,
        slot: 0,
        id: None,
    };
}

/// Where a counter owner's entry lives.
struct HandleOwner {
    kind: OwnerKind,
    /// Its counters may be spent by other subjects too (a rule's pool of the
    /// enterprise family): never leased.
    shared: bool,
    pool: u32,
    hash: u64,
    shard: usize,
    /// Where the owner's entry was found last (valid while its shard's
    /// table layout is unchanged).
    hint: SlotHint,
}

/// The ids of a subject, owned.
// `repr(C)`: the ids of an entity, which an exact call reads, first (see
// `HandleState`).
#[derive(Default)]
#[repr(C)]
struct OwnedSubject {
    device: Option<Box<str>>,
    consumer: Option<Box<str>>,
    member: Option<[Option<Box<str>>; 4]>,
}

impl OwnedSubject {
    fn borrow(&self) -> Subject<'_> {
        let s = self;
        Subject {
            device_id: s.device.as_deref(),
            custom_consumer_id: s.consumer.as_deref(),
            member: s.member.as_ref().map(|m| Member {
                coze_user_id: m[0].as_deref(),
                coze_role: m[1].as_deref(),
                workspace_id: m[2].as_deref(),
                organization_id: m[3].as_deref(),
            }),
        }
    }
}

/// A subject resolved once (per connection, per session), with the verbs of
/// the engine it was made by: [`SubjectHandle::check`],
/// [`SubjectHandle::try_consume`], [`SubjectHandle::record`].
///
/// Made by [`Engine::handle`] (borrowing the engine) or
/// [`Engine::handle_owned`] (sharing it through an `Arc`, for a handle kept
/// in a task or a connection state). A handle caches what a call by subject
/// computes each time: the applicable rules and where their counters live.
/// A call through it locks the shards of the subject's counters and
/// decides, with no hashing, no rule lookup and no lock on the rule table.
/// The first call, and the first after any configuration write or after
/// `now` crosses an activation boundary of the subject's rules, resolves
/// again (as a call by subject would). Decisions are exactly those of the
/// calls by subject. Creating a handle copies the ids (it allocates); calls
/// through it allocate nothing, except the first one that tracks a new
/// owner, and a thread's first resolution for an engine and family, which
/// keeps the thread's copy of the all-scope rules (as calls by subject do;
/// later copies replace it in place).
///
/// **Leases** ([`SubjectHandle::with_lease`]): a leased handle takes up to
/// the lease of every rule's headroom ahead, under the locks, and spends it
/// with no lock while nothing else writes to its counters (SEMANTICS.md,
/// L1–L8). Dropping the handle gives the unspent leases back
/// ([`SubjectHandle::release`] does it explicitly and says what it gave
/// back).
///
/// # Examples
/// ```
/// use benefit_quota::{Amount, BenefitType, Engine, Subject};
/// let engine = Engine::new();
/// engine.create_json(r#"{"entity_type":"enterprise_all_devices","benefit_info":{
///   "benefit_type":"resource_point","active_mode":"absolute_time","started_at":0,
///   "ended_at":253402300799,"limit":2,"trigger_unit":"day"}}"#).unwrap();
/// let mut h = engine.handle(&Subject::device("sn-1"));
/// let (pts, one, now) = (BenefitType::ResourcePoint, Amount::from_units(1), 1_741_708_800);
/// assert!(h.try_consume(pts, one, now).is_allowed());
/// assert!(engine.try_consume(&Subject::device("sn-1"), pts, one, now).is_allowed());
/// assert!(!h.try_consume(pts, one, now).is_allowed()); // same counter
/// assert!(h.check(now + 86_400).is_allowed()); // next day
/// ```
#[repr(C, align(64))] // the engine, then what a leased call reads, from the first line
pub struct SubjectHandle<E: Deref<Target = Engine> = Arc<Engine>> {
    engine: E,
    state: HandleState,
}

impl<E: Deref<Target = Engine>> std::fmt::Debug for SubjectHandle<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.state.fmt(f)
    }
}

impl Engine {
    /// A handle on `subject` that borrows this engine (see [`SubjectHandle`]).
    pub fn handle(&self, subject: &Subject<'_>) -> SubjectHandle<&Engine> {
        SubjectHandle {
            state: self.handle_state(subject),
            engine: self,
        }
    }

    /// A handle on `subject` that shares this engine through its `Arc`, so
    /// it can live as long as a connection or a task does (see
    /// [`SubjectHandle`]).
    ///
    /// # Examples
    /// ```
    /// use std::sync::Arc;
    /// use benefit_quota::{Engine, Subject};
    /// let engine = Arc::new(Engine::new());
    /// let mut h = engine.handle_owned(&Subject::device("sn-1"));
    /// std::thread::spawn(move || assert!(h.check(0).is_allowed())).join().unwrap();
    /// ```
    pub fn handle_owned(self: &Arc<Self>, subject: &Subject<'_>) -> SubjectHandle<Arc<Engine>> {
        SubjectHandle {
            state: self.handle_state(subject),
            engine: Arc::clone(self),
        }
    }

    fn handle_state(&self, subject: &Subject<'_>) -> HandleState {
        let own = |s: Option<&str>| s.map(Box::from);
        HandleState {
            version: 0,
            watch: [Watch::default(), Watch::default()],
            watched: 0,
            alone: false,
            holds: false,
            lease_ok: false,
            spend: [TypeLease::NONE; BenefitType::ALL.len()],
            lease: 0,
            leases: SmallVec::new(),
            // Empty: the first call resolves.
            valid: Validity { lo: 1, hi: 0 },
            fresh: Validity { lo: 1, hi: 0 },
            subject: OwnedSubject {
                device: own(subject.device_id),
                consumer: own(subject.custom_consumer_id),
                member: subject.member.map(|m| {
                    [
                        own(m.coze_user_id),
                        own(m.coze_role),
                        own(m.workspace_id),
                        own(m.organization_id),
                    ]
                }),
            },
            rules: SmallVec::new(),
            owners: SmallVec::new(),
            shards: SmallVec::new(),
        }
    }
}

impl<E: Deref<Target = Engine>> SubjectHandle<E> {
    /// This handle, taking up to `lease` of every applicable rule's
    /// headroom ahead and spending it without locking: the fastest way to
    /// decide for a subject one connection spends for alone. A `lease` of
    /// zero (the default) makes an exact handle.
    ///
    /// A leased call admits only what the exact path would admit at that
    /// moment: the lease is counted as used on the counters (others see it),
    /// and any write to the subject's counters by another caller, a
    /// configuration write or a new window sends the next call through the
    /// locks, which gives the unspent lease back and decides exactly.
    /// Counters other subjects share (pools of the enterprise family) are
    /// never leased: a handle whose subject has any works as an exact one.
    /// Others see the unspent lease as used, so they may be denied up to
    /// `lease` per rule earlier than without it (SEMANTICS.md, L1–L8).
    /// On an engine with a ledger, handles take no lease of their own (the
    /// ledger's grants play that part) and decide as calls by subject.
    ///
    /// # Examples
    /// ```
    /// use benefit_quota::{Amount, BenefitType, Engine, Subject};
    /// let engine = Engine::new();
    /// engine.create_json(r#"{"entity_type":"enterprise_all_devices","benefit_info":{
    ///   "benefit_type":"resource_point","active_mode":"absolute_time","started_at":0,
    ///   "ended_at":253402300799,"limit":100,"trigger_unit":"day"}}"#).unwrap();
    /// let (pts, one, now) = (BenefitType::ResourcePoint, Amount::from_units(1), 1_741_708_800);
    /// let device = Subject::device("sn-1");
    /// let mut h = engine.handle(&device).with_lease(Amount::from_units(10));
    /// let d = h.try_consume(pts, one, now); // locks, takes 10 ahead
    /// assert_eq!(d.headroom().unwrap().remaining, Amount::from_units(99));
    /// let d = h.try_consume(pts, one, now); // from the lease
    /// assert_eq!(d.headroom().unwrap().remaining, Amount::from_units(98));
    /// // Others see the unspent lease as used until it is given back.
    /// assert_eq!(engine.usage(&device, now)[0].used, Amount::from_units(1 + 10));
    /// drop(h); // gives it back
    /// assert_eq!(engine.usage(&device, now)[0].used, Amount::from_units(2));
    /// ```
    #[must_use]
    pub fn with_lease(mut self, lease: Amount) -> Self {
        self.engine.settle_state(&mut self.state, |_, _| {});
        self.state.lease = lease.as_micros();
        self
    }

    /// [`Engine::check`] for this handle's subject.
    pub fn check(&mut self, now: i64) -> Decision {
        let d = self.engine.call_handle(&mut self.state, now, Op::Check);
        self.engine.observe.decision(None, &d);
        d
    }

    /// [`Engine::try_consume`] for this handle's subject.
    pub fn try_consume(&mut self, benefit_type: BenefitType, amount: Amount, now: i64) -> Decision {
        let op = Op::TryConsume(benefit_type, amount.as_micros());
        let d = self.engine.call_handle(&mut self.state, now, op);
        self.engine.observe.decision(Some(benefit_type), &d);
        d
    }

    /// [`Engine::record`] for this handle's subject.
    pub fn record(&mut self, benefit_type: BenefitType, amount: Amount, now: i64) -> Decision {
        let op = Op::Record(benefit_type, amount.as_micros());
        let d = self.engine.call_handle(&mut self.state, now, op);
        self.engine.observe.decision(Some(benefit_type), &d);
        d
    }

    /// Gives the unspent leases back to their counters and says how much
    /// was given back (nothing for an exact handle). The next call takes new
    /// leases. Dropping the handle does the same.
    ///
    /// # Examples
    /// ```
    /// use benefit_quota::{Amount, BenefitType, Engine, Subject};
    /// let engine = Engine::new();
    /// engine.create_json(r#"{"entity_type":"enterprise_all_devices","benefit_info":{
    ///   "benefit_type":"resource_point","active_mode":"absolute_time","started_at":0,
    ///   "ended_at":253402300799,"limit":100,"trigger_unit":"never"}}"#).unwrap();
    /// let pts = BenefitType::ResourcePoint;
    /// let mut h = engine.handle(&Subject::device("sn-1")).with_lease(Amount::from_units(10));
    /// // Decided under the locks, which then take 10 ahead...
    /// assert!(h.try_consume(pts, Amount::from_units(3), 0).is_allowed());
    /// // ...of which this spends 2.
    /// assert!(h.try_consume(pts, Amount::from_units(2), 0).is_allowed());
    /// assert_eq!(h.release().given_back(pts), Amount::from_units(8));
    /// assert_eq!(engine.usage(&Subject::device("sn-1"), 0)[0].used, Amount::from_units(5));
    /// ```
    pub fn release(&mut self) -> Released {
        let mut back = Released::default();
        let report = |ty: BenefitType, unspent: u64| {
            let t = &mut back.per_type[ty as usize];
            *t = t.saturating_add(unspent);
        };
        self.engine.settle_state(&mut self.state, report);
        back
    }

    /// The lease size this handle takes ahead per rule (zero for an exact
    /// handle; see [`SubjectHandle::with_lease`]). On an engine with a
    /// ledger, leases are not taken (every debit spends out of a durable
    /// grant instead), whatever this says.
    pub fn lease(&self) -> Amount {
        Amount::from_micros(self.state.lease)
    }

    /// The subject this handle decides for.
    pub fn subject(&self) -> Subject<'_> {
        self.state.subject.borrow()
    }

    /// The engine this handle decides with.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }
}

/// What [`SubjectHandle::release`] gave back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Released {
    /// Micro-units, summed over the rules of each benefit type.
    per_type: [u64; BenefitType::ALL.len()],
}

impl Released {
    /// The unspent leases given back to the rules of `benefit_type`, summed
    /// over those rules (each rule had its own lease).
    pub fn given_back(&self, benefit_type: BenefitType) -> Amount {
        Amount::from_micros(self.per_type[benefit_type as usize])
    }

    /// Nothing was given back (an exact handle, or no lease held).
    pub fn is_empty(&self) -> bool {
        self.per_type.iter().all(|&n| n == 0)
    }
}

impl<E: Deref<Target = Engine>> Drop for SubjectHandle<E> {
    /// Gives the unspent leases back (see [`SubjectHandle::release`]).
    fn drop(&mut self) {
        self.engine.settle_state(&mut self.state, |_, _| {});
    }
}

impl Engine {
    /// A single call through a handle: spent from its leases right here
    /// when they cover it (inlined into each entry point, so the operation
    /// is known), else [`Engine::run_handle`].
    #[inline(always)]
    fn call_handle(&self, h: &mut HandleState, now: i64, op: Op) -> Decision {
        if self.grants.is_some() {
            // With a ledger, every debit is made out of a durable grant
            // (`crate::grant`): a handle decides as a call by subject, and
            // takes no lease of its own.
            return self.run(&h.subject.borrow(), now, op);
        }
        if h.lease_ok {
            if let Some(d) = self.spend_leased(h, now, op) {
                return d;
            }
        }
        self.run_handle(h, now, op)
    }

    /// [`SubjectHandle::try_consume`] for many requests, appending one
    /// decision per request to `out`, in order; each is decided exactly as
    /// separate calls in slice order would be.
    ///
    /// Works in chunks of [`crate::BATCH_CHUNK`]: the chunk asks the CPU for
    /// what its calls will read (software prefetches, so that the memory
    /// misses of independent handles overlap instead of queueing): each
    /// handle's first two lines; then, for a sole device or consumer that
    /// no single rule names, its counter entry (such a call decides with
    /// the thread's copy of the rules, and reads nothing else of the
    /// handle); for any other handle, the rest of what an exact call reads,
    /// its ids and its entries. Then each request is decided in turn, as
    /// [`SubjectHandle::try_consume`] decides it, under its own shards'
    /// locks: other threads wait for one request, never for a chunk. A
    /// leased handle's request spends from its leases, as its own call
    /// would (nothing but its handle is asked for), and a handle of another
    /// engine is decided by its engine; with a ledger, every request is
    /// decided as a call by subject.
    ///
    /// # Examples
    /// ```
    /// use benefit_quota::{Amount, BenefitType, Engine, HandleRequest, Subject};
    /// let engine = Engine::new();
    /// let mut handles: Vec<_> = ["a", "b"].iter().map(|d| engine.handle(&Subject::device(d))).collect();
    /// let mut reqs: Vec<HandleRequest<_>> = handles
    ///     .iter_mut()
    ///     .map(|h| HandleRequest { handle: h, benefit_type: BenefitType::ResourcePoint, amount: Amount::from_units(1) })
    ///     .collect();
    /// let mut out = Vec::new();
    /// engine.try_consume_many_handles(&mut reqs, 0, &mut out);
    /// assert!(out.iter().all(|d| d.is_allowed()));
    /// ```
    pub fn try_consume_many_handles<E: Deref<Target = Engine>>(
        &self,
        requests: &mut [HandleRequest<'_, E>],
        now: i64,
        out: &mut Vec<Decision>,
    ) {
        let start = out.len();
        self.decide_many_handles(requests, now, out);
        for (r, d) in requests.iter().zip(&out[start..]) {
            // Counted by the engine the handle decides with, as its own
            // call would be (another engine's handle is decided by its own).
            r.handle.engine.observe.decision(Some(r.benefit_type), d);
        }
    }

    /// [`Engine::try_consume_many_handles`], unobserved.
    fn decide_many_handles<E: Deref<Target = Engine>>(
        &self,
        requests: &mut [HandleRequest<'_, E>],
        now: i64,
        out: &mut Vec<Decision>,
    ) {
        if !possible_now(now) {
            out.extend(requests.iter().map(|_| Decision::impossible_time(now)));
            return;
        }
        out.reserve(requests.len());
        for chunk in requests.chunks_mut(crate::BATCH_CHUNK) {
            // Ask for every handle's first lines (the engine, the flags,
            // the first owner) before any is read.
            for r in chunk.iter() {
                crate::prefetch::range(&*r.handle as *const SubjectHandle<E>, ALONE_READS);
            }
            // An exact handle of this engine without a ledger. A leased one
            // spends from its leases (reading its handle only), a handle of
            // another engine is decided by its own, and with a ledger a
            // handle decides as a call by subject: none is asked for
            // anything more.
            let exact = |r: &HandleRequest<'_, E>| {
                self.grants.is_none()
                    && r.handle.state.lease == 0
                    && std::ptr::eq(&*r.handle.engine, self)
            };
            // Ask for the rest of what each exact call reads: of a sole
            // device or consumer that no single rule names, its counter
            // entry (the call decides with the thread's copy of the rules,
            // as `Engine::run_exact` says); of another handle, the rest of
            // what an exact call reads of it, then its ids and entries.
            // The misses of the chunk are in flight together.
            for r in chunk.iter().filter(|r| exact(r)) {
                let h = &r.handle.state;
                if h.alone {
                    let o = &h.owners[0];
                    self.store.prefetch_slot(o.shard, o.hint.slot());
                } else {
                    let reads = std::mem::offset_of!(HandleState, subject.member);
                    crate::prefetch::range(h as *const HandleState, reads);
                }
            }
            for r in chunk.iter().filter(|r| exact(r)) {
                let h = &r.handle.state;
                if !h.alone {
                    h.prefetch_ids();
                    h.prefetch_entries(&self.store);
                }
            }
            for r in chunk.iter_mut() {
                let op = Op::TryConsume(r.benefit_type, r.amount.as_micros());
                out.push(if exact(r) {
                    self.run_exact(&mut r.handle.state, now, op)
                } else {
                    let h = &mut *r.handle;
                    h.engine.call_handle(&mut h.state, now, op)
                });
            }
        }
    }

    /// Whether `h` was resolved for a range holding `now`,
    /// its windows rolled to `now` if they were not current (the version is
    /// checked separately, under the shard locks).
    #[inline]
    fn ready(&self, h: &mut HandleState, now: i64) -> bool {
        h.fresh.contains(now) || self.roll_windows(h, now)
    }

    /// The cold half of [`Engine::ready`]: if the resolution still holds at
    /// `now`, the cached windows that do not contain `now` are replaced by
    /// those that do (a new minute, hour or day), and `true`.
    #[cold]
    #[inline(never)]
    fn roll_windows(&self, h: &mut HandleState, now: i64) -> bool {
        let Some(fresh) = crate::cached::roll(&mut h.rules, h.valid, now) else {
            return false;
        };
        h.fresh = fresh;
        // The leases are settled and granted again under the locks.
        h.lease_ok = false;
        true
    }

    /// A call through a handle that its leases, if any, did not cover
    /// ([`Engine::call_handle`]): through a leased handle under the locks
    /// ([`Engine::run_leased_locked`]), else the exact way
    /// ([`Engine::run_exact`]).
    #[inline(never)]
    fn run_handle(&self, h: &mut HandleState, now: i64, op: Op) -> Decision {
        // A leased call at an impossible `now` gets here: no cached window
        // contains it.
        if !possible_now(now) {
            return Decision::impossible_time(now);
        }
        if h.lease != 0 {
            return self.run_leased_locked(h, now, op);
        }
        self.run_exact(h, now, op)
    }

    /// A call through an exact handle, at a clamped `now`.
    #[inline(never)]
    fn run_exact(&self, h: &mut HandleState, now: i64, op: Op) -> Decision {
        if h.alone {
            // A sole device or consumer that no single rule named: decided
            // with the thread's copy of its family's all-scope rules if the
            // configuration is still the copy's and the entity's entry says
            // that no single rule names it under it, as a call by subject
            // is (`Engine::run`; `crate::cached` has why that is exact),
            // the entry found through the slot the handle remembers. The
            // handle's own rules are not read: a call reads its first two
            // lines, not eight.
            let o = &h.owners[0];
            self.store.prefetch_slot(o.shard, o.hint.slot());
            if let Some(copy) = crate::cached::thread_rules::<1>(self.id, o.kind as usize, now) {
                let mut locked = self.store.lock_shard(o.shard);
                let version = self.version.load(Ordering::Acquire);
                if version == copy.version {
                    if let Some(counters) = locked.counters_if_alone_at(&o.hint, version) {
                        let rules = CachedRules(&copy.rules);
                        return decide_one_owner(&self.store, &rules, Some(counters), op);
                    }
                }
            }
        }
        self.run_exact_cached(h, now, op)
    }

    /// [`Engine::run_exact`] with the handle's cached rules. Out of line:
    /// the usual call does not need this path's stack frame.
    #[inline(never)]
    fn run_exact_cached(&self, h: &mut HandleState, now: i64, op: Op) -> Decision {
        if self.ready(h, now) {
            // The entries' misses overlap the locking and the version check.
            h.prefetch_entries(&self.store);
            if h.owners.len() == 1 && !h.rules.is_empty() {
                // The usual subject: every rule counts on one owner, in one
                // shard, whose slot the handle remembers (see `SlotHint`).
                // Its shard is locked alone; an owner with no counter yet
                // (an entry to create) is decided below instead.
                let HandleState {
                    rules,
                    owners,
                    subject,
                    version,
                    alone,
                    ..
                } = h;
                let o = &mut owners[0];
                let owner = subject.owner(o);
                let mut locked = self.store.lock_shard(o.shard);
                if self.version.load(Ordering::Acquire) == *version {
                    if let Some(counters) = locked.counters_if_any_hinted(&owner, &mut o.hint) {
                        let rules = CachedRules(rules.as_slice());
                        let d = decide_one_owner(&self.store, &rules, Some(counters), op);
                        if *alone {
                            // The copy did not decide: the entry is marked
                            // for the next call (what `alone` says, read
                            // under the rule table at `version`, holds at
                            // `version`, which this lock shows is still the
                            // current one).
                            locked.mark_alone_at(&o.hint, *version);
                        }
                        return d;
                    }
                }
            }
            let mut locked = self.store.lock_many(&h.shards);
            if self.version.load(Ordering::Acquire) == h.version {
                return self.decide_cached(h, now, op, &mut locked);
            }
        }
        self.run_resolved(h, now, |h, locked| self.decide_cached(h, now, op, locked))
    }

    /// Resolves a stale handle again with a copy of the rule table locked, which
    /// keeps the version still while `decide` runs under the handle's shard
    /// locks (no shard lock may be held on the way in).
    #[inline(always)]
    fn run_resolved(
        &self,
        h: &mut HandleState,
        now: i64,
        decide: impl FnOnce(&mut HandleState, &mut Locked<'_>) -> Decision,
    ) -> Decision {
        let rules = self.read();
        self.refresh(&rules, h, now);
        let mut locked = self.store.lock_many(&h.shards);
        decide(h, &mut locked)
    }

    /// Decides `op` with the handle's cached rules; `locked` holds their shards.
    /// Always inlined: since the leased path calls it too, LLVM would
    /// outline it, adding a call and its spills to every exact handle call.
    #[inline(always)]
    fn decide_cached(
        &self,
        h: &mut HandleState,
        now: i64,
        op: Op,
        locked: &mut Locked<'_>,
    ) -> Decision {
        if h.rules.is_empty() {
            return Decision::Allowed(None); // F16: unlimited
        }
        // Every cached window is `now`'s: `ready` rolled them, or `refresh`
        // computed them at `now`.
        debug_assert!(h
            .rules
            .iter()
            .all(|r| r.window.is_none_or(|w| w.contains(now))));
        if h.owners.len() == 1 {
            // The usual subject: every rule counts on one owner, whose slot
            // the handle remembers (see `SlotHint`).
            let HandleState {
                rules,
                owners,
                subject,
                ..
            } = h;
            // Indexed without spill checks.
            let rules = CachedRules(rules.as_slice());
            let o = &mut owners[0];
            let (owner, shard) = (subject.owner(o), o.shard);
            let hint = Some(&mut o.hint);
            return self.decide_owner(&rules, locked, shard, &owner, hint, op);
        }
        let h = &*h;
        let mut applied = AppliedVec::new();
        for r in &h.rules {
            let o = &h.owners[r.owner as usize];
            applied.push(Applied {
                slot: r.slot,
                owner: h.owner(o),
                shard: o.shard,
                window: r.window,
            });
        }
        self.decide(&applied, &CachedRules(&h.rules), locked, op)
    }

    /// Resolves the handle's subject at `now`; the caller holds `rules`.
    /// Reuses the handle's buffers, so resolving again allocates nothing.
    fn refresh(&self, rules: &RuleSet, h: &mut HandleState, now: i64) {
        let policy = self.config.frozen_policy;
        let subject = h.subject.borrow();
        let mut applied = AppliedVec::new();
        let valid = self.resolve(rules, &subject, now, &mut applied, false);
        // Leases were settled under the previous resolution (`run_leased_locked`).
        debug_assert!(h.leases.iter().all(|l| l.granted == 0));
        h.lease_ok = false;
        h.leases.clear();
        h.rules.clear();
        h.owners.clear();
        for (i, a) in applied.iter().enumerate() {
            let owner = match applied[..i].iter().position(|b| b.owner.same(&a.owner)) {
                Some(j) => h.rules[j].owner,
                None => {
                    let e = &rules.rules[a.slot as usize];
                    h.owners.push(HandleOwner {
                        kind: a.owner.kind,
                        shared: a.owner.kind == OwnerKind::Pool
                            && e.info.entity_type.family() == Family::Enterprise,
                        pool: a.owner.pool,
                        hash: a.owner.hash,
                        shard: a.shard,
                        hint: SlotHint::default(),
                    });
                    (h.owners.len() - 1) as u32
                }
            };
            let e = &rules.rules[a.slot as usize];
            h.rules
                .push(CachedRule::of(e, a.slot, policy, a.window, owner));
        }
        h.shards.clear();
        h.shards.extend(h.owners.iter().map(|o| o.shard));
        h.shards.sort_unstable();
        h.shards.dedup();
        h.valid = valid;
        h.fresh = h.fresh_range();
        h.alone = match (subject.sole_entity(), h.owners.as_slice()) {
            (Some((kind, id)), [o]) if o.kind == kind => {
                !rules.lists_single_rules(kind as usize, o.hash, id)
            }
            _ => false,
        };
        // Stable while the caller holds a copy of the rule table.
        h.version = self.version.load(Ordering::Acquire);
        if h.alone {
            // The thread keeps a copy of the family's all-scope rules at
            // this version, now that the rule table is locked anyway (a
            // call that finds none decides with the handle's rules; it does
            // not take the rule table to keep one).
            let o = &h.owners[0];
            let owner = h.subject.owner(o);
            self.keep_family_rules(rules, o.kind as usize, &owner, o.shard, h.version, now);
        }
    }
}

impl HandleState {
    /// [`HandleState::valid`] narrowed to the cached windows.
    /// Never beyond the times the platform knows, so that a leased call at
    /// an impossible `now` takes the locked path, which rejects it.
    fn fresh_range(&self) -> Validity {
        crate::cached::fresh_range(self.valid, &self.rules)
    }

    /// Asks the CPU for what a decision reads outside the handle itself: the
    /// rules if they spilled to the heap, the owners' ids.
    #[inline]
    fn prefetch_ids(&self) {
        if self.rules.spilled() {
            crate::prefetch::range(self.rules.as_ptr(), std::mem::size_of_val(&self.rules[..]));
        }
        // One owner with a remembered slot: the decision will most likely
        // not compare ids at all.
        if !matches!(self.owners.as_slice(), [o] if o.hint.is_set()) {
            crate::subject::prefetch_ids(self.subject.borrow());
        }
    }

    /// Asks the CPU for the owners' counter entries, before their shards
    /// are locked (see [`Store::prefetch`]): the remembered slot when there
    /// is one, the home slot otherwise.
    #[inline]
    fn prefetch_entries(&self, store: &Store) {
        for o in &self.owners {
            if o.hint.is_set() {
                store.prefetch_slot(o.shard, o.hint.slot());
            } else {
                store.prefetch(&self.owner(o));
            }
        }
    }

    /// The owner key of one of the handle's counter owners.
    #[inline]
    fn owner<'h>(&'h self, o: &HandleOwner) -> Owner<'h> {
        self.subject.owner(o)
    }
}

impl OwnedSubject {
    /// The owner key of counter owner `o` of this subject.
    #[inline]
    fn owner(&self, o: &HandleOwner) -> Owner<'_> {
        let id = match o.kind {
            OwnerKind::Device => self.device.as_deref(),
            OwnerKind::Consumer => self.consumer.as_deref(),
            OwnerKind::Pool => None,
        };
        Owner {
            kind: o.kind,
            pool: o.pool,
            id: id.unwrap_or_default(),
            hash: o.hash,
        }
    }
}

/// One request of a handle batch (see [`Engine::try_consume_many_handles`]).
#[derive(Debug)]
pub struct HandleRequest<'a, E: Deref<Target = Engine> = Arc<Engine>> {
    /// The subject's handle.
    pub handle: &'a mut SubjectHandle<E>,
    /// What is spent.
    pub benefit_type: BenefitType,
    /// How much.
    pub amount: Amount,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_stay_small() {
        // Two rules and two owners inline (the usual device): 832 bytes today,
        // thirteen lines (512 before leases; then the lease size and flag,
        // the three benefit types' leases with their tightest rule's id, two
        // 16-byte rule leases, alignment to a line), plus the ids on the
        // heap. A gateway keeps one per connection.
        let size = std::mem::size_of::<HandleState>();
        assert!(size <= 832, "{size}");
        assert!(std::mem::size_of::<CachedRule>() <= 120);
        assert!(std::mem::size_of::<TypeLease>() <= 72);
        assert!(std::mem::size_of::<RuleLease>() <= 16);
        // What an exact call reads (after the engine pointer, on the
        // handle's first line) is the first eight lines, contiguous, which
        // is all a batch prefetches of a handle.
        let exact = std::mem::offset_of!(HandleState, subject.member);
        let first = std::mem::offset_of!(SubjectHandle, state);
        assert!(first + exact <= 8 * 64, "{first} + {exact}");
        // The owners start within the second line: an exact call for a sole
        // device or consumer reads the first two.
        let owners = std::mem::offset_of!(HandleState, owners);
        assert!(first + owners < 2 * 64, "{first} + {owners}");
        // A leased call's check before spending (its flag, the first
        // owner's stamp) is on the first line.
        let stamp = std::mem::offset_of!(HandleState, watch) + std::mem::size_of::<Watch>();
        assert!(first + stamp <= 64, "{first} + {stamp}");
    }

    #[test]
    fn an_exact_call_from_the_threads_copy_reads_the_first_two_lines() {
        // What such a call reads of the handle: the first line (the engine,
        // the flags) and the first owner (its kind, shard and slot), which
        // must end within the second line.
        let engine = Engine::new();
        let rule = r#"{"entity_type":"enterprise_all_devices","benefit_info":{
          "benefit_type":"resource_point","active_mode":"absolute_time","started_at":0,
          "ended_at":253402300799,"limit":10,"trigger_unit":"day"}}"#;
        assert!(engine.create_json(rule).is_ok());
        let mut h = engine.handle(&Subject::device("d"));
        assert!(h.check(1_741_708_800).is_allowed());
        assert!(h.state.alone);
        let at =
            |p: *const u8| p as usize - (&h as *const SubjectHandle<&Engine>).cast::<u8>() as usize;
        let owner = at((&h.state.owners[0] as *const HandleOwner).cast());
        let end = owner + std::mem::size_of::<HandleOwner>();
        assert!(end <= 2 * 64, "the first owner ends at byte {end}");
        assert!(at((&h.state.alone as *const bool).cast()) < 64);
    }
}
