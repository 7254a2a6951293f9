//! # benefit-quota
//!
//! In-process enforcement of Coze enterprise *benefit limitations*
//! (权益额度, end-user quotas), with exactly the platform's wire format and
//! semantics, for API gateways that must decide per request, without a network
//! round-trip, whether a device, custom consumer or enterprise member may
//! spend more.
//!
//! ```
//! use benefit_quota::{Amount, BenefitType, DenyReason, Engine, Subject};
//!
//! let engine = Engine::new(); // periods in UTC+8, frozen rules block
//! // Every device: 10 points per local day (the platform's create body).
//! engine.create_json(r#"{
//!     "entity_type": "enterprise_all_devices",
//!     "benefit_info": {"benefit_type": "resource_point", "active_mode": "absolute_time",
//!                      "started_at": 0, "ended_at": 253402300799, "limit": 10,
//!                      "trigger_unit": "day", "trigger_time": 1}
//! }"#).unwrap();
//!
//! let now = 1_741_708_800; // 2025-03-12 00:00:00 +08:00
//! let dev = Subject::device("sn-0001");
//! let pts = BenefitType::ResourcePoint;
//! assert!(engine.try_consume(&dev, pts, Amount::from_units(8), now).is_allowed());
//! let d = engine.try_consume(&dev, pts, "2.5".parse().unwrap(), now + 60);
//! let denial = d.denial().unwrap();
//! assert_eq!(denial.reason, DenyReason::Insufficient);
//! assert_eq!(denial.resets_at, Some(now + 86_400)); // next local midnight
//! assert!(engine.try_consume(&dev, pts, Amount::from_units(2), now + 60).is_allowed());
//! assert!(!engine.check(&dev, now + 61).is_allowed()); // exhausted for today
//! assert!(engine.check(&dev, now + 86_400).is_allowed()); // a new day
//! ```
//!
//! ## Which call when
//! - A stateless request: [`Engine::try_consume`] (or [`Engine::check`],
//!   [`Engine::record`]) with the request's [`Subject`].
//! - Many requests at once: [`Engine::try_consume_many`].
//! - A connection or session: a [`SubjectHandle`] made once
//!   ([`Engine::handle`], or [`Engine::handle_owned`] to keep it beside an
//!   `Arc<Engine>`), then [`SubjectHandle::try_consume`],
//!   [`SubjectHandle::check`], [`SubjectHandle::record`]; batches of them
//!   through [`Engine::try_consume_many_handles`].
//! - A connection that does most of a device's or consumer's spending:
//!   the same, with [`SubjectHandle::with_lease`].
//!
//! Every one of them decides as a call by subject would (a leased handle's
//! only difference: others may be denied up to its unspent lease earlier).
//!
//! ## Usage that survives restarts
//! [`Engine::new`] keeps usage in memory. An engine opened with a ledger
//! (`Engine::builder().durable(path).open()` with the `durable` feature, or
//! [`EngineBuilder::ledger`]) keeps usage there (and rules too, in a file
//! or memory ledger; a Redis instance syncs its rules from the platform
//! after each start), and admits a
//! unit only out of a grant the ledger has already committed, so a crash
//! never causes over-admission (under the default failure policy,
//! [`LedgerFailure::FailClosed`]; see [`ledger`] and RELIABILITY.md §7).
//! With the `redis` feature, `Engine::builder().redis(url).open()` on every
//! gateway of a fleet shares the counters through Redis, checked against
//! the limit across the fleet (RELIABILITY.md §8).
//!
//! ## Layout
//! - [`wire`]: serde mirrors of the platform JSON (create, update, list, envelope).
//! - `validate`: wire → validated domain types ([`types`]), errors as [`ApiError`].
//! - `period`: reset windows in a fixed UTC offset (D15).
//! - `rules`: the rule table and rule resolution (precedence, activation, frozen).
//! - `state`: lock-sharded counters.
//! - `decide`: one decision over a subject's counters (D13, D17).
//! - [`Engine`]: the configuration plane and the enforcement API;
//!   [`SubjectHandle`]: a subject resolved once.
//! - [`ledger`]: where usage lives durably (the [`Ledger`] trait,
//!   [`MemoryLedger`], `FileLedger` with the `durable` feature,
//!   `RedisLedger` with `redis`); `grant`:
//!   the engine's write-ahead grants out of a ledger
//!   ([`EngineBuilder::ledger`], [`LedgeredBuilder`]).
//! - `mirror`: full sync with the platform's listing ([`Listing`],
//!   [`Engine::sync`]); `poller`: the list API polled over HTTP (feature
//!   `poller`).
//! - `middleware` and `admin`: a tower middleware and the platform's
//!   endpoints as axum routes (features `tower`, `axum`); `observe`:
//!   metrics and tracing.
//! - `cached`: each thread's copy of the all-scope rules; `sync`: the
//!   synchronisation primitives (std's, or `loom`'s models); `prefetch`:
//!   the crate's only `unsafe` code.
//!
//! The rules the engine enforces are written down, one by one with the test
//! that pins each, in `SEMANTICS.md`.
//!
//! ## Hot path
//! What a `check` / `try_consume` / `record` does, in order:
//!
//! - **Kept per thread:** for a device or consumer that no single rule
//!   names (the usual subject), the rules that apply are its family's
//!   all-scope rules; each thread keeps its own copy of them, taken at a
//!   configuration version, and decides with it under the counter shard's
//!   lock alone, after reading there that the version is unchanged and that
//!   the entity's entry says no single rule names it under that version.
//!   Any other call (another subject, a stale copy, an entity not known to
//!   be alone) locks a copy of the rule table instead, and resolves.
//! - **Locked, one of several:** that copy of the rule table. The table is
//!   replicated ([`EngineConfig::rule_replicas`], one copy per CPU, at most 16, by
//!   default), each copy behind a spin lock (one compare-and-swap to take,
//!   a plain store to release); a thread takes its own copy, or the next
//!   free one if another thread has it, so concurrent checks do not write to
//!   a shared lock word. A configuration write validates against one copy
//!   under a writer mutex, then locks every copy just long enough to apply
//!   the change and bump the version: it is O(1) in the number of tracked
//!   counters.
//! - **Hashed once:** the device or consumer id, with a per-engine keyed
//!   `ahash`; the same hash finds the entity's single-entity rules and its
//!   counters.
//! - **Locked, exclusive:** the one counter shard that holds the entity's
//!   counters (more shards, locked in ascending order, when the subject also
//!   touches rule pools or several families). The shard is a cache-padded
//!   spin lock around an open-addressing table whose slots hold
//!   the entries themselves: one probe, usually one cache miss, finds the
//!   entity's entry, whose counters (two inline) are read, decided on and
//!   debited under that lock: all or nothing. When the tables are larger
//!   than the cache (together over 16 MiB), that miss is started early: as
//!   soon as the id is hashed (or, through a handle, before locking), the
//!   call prefetches the entry's slot from a layout each shard publishes
//!   lock-free when its table grows, and the rule lookups and the locking
//!   happen while the line is on its way.
//! - **Cached:** each rule's current fixed window start (a relaxed atomic, a
//!   hint checked before use), so most calls do no division; a cumulative
//!   rule has no window to compute, and each rule's activation range and
//!   precedence bit (D10, D11) are computed once per record, not per call. Windows roll
//!   over lazily: a counter remembers its window start and its rule's
//!   generation, and starts from zero when either is stale.
//! - **Atomic, no lock:** only the tracked-counter count, and only when a
//!   counter is created.
//! - **Allocated:** nothing for a subject whose counters exist (inline small
//!   vectors; benefit ids of up to 23 bytes are stored inline, so a decision
//!   names its rule by copying, not by touching a shared reference count).
//!   Batches allocate nothing either.
//!
//! [`Engine::try_consume_many`] makes the same calls for a batch, in chunks
//! of [`BATCH_CHUNK`]: before making a chunk's calls it asks the CPU for
//! the lines they will read (the subjects' ids, then the sole devices' and
//! consumers' counter slots), so the chunk's cache
//! misses are in flight together rather than one after another. Those software prefetches
//! are the crate's only `unsafe` code (`src/prefetch.rs`: a hint that cannot
//! fault or change a value; the crate denies `unsafe` everywhere else).
//!
//! **Through a [`SubjectHandle`]** ([`Engine::handle`], resolved once per
//! connection), a call skips the rule-table lock, the hashing, the rule
//! lookups and, while the shard's table layout is unchanged (an epoch), the
//! probe for its counter entry, whose slot it remembers: it locks the shards
//! the handle remembers, compares the engine's configuration version (an
//! atomic bumped by every write with every copy of the rule table locked) with the
//! handle's, and decides with the rules the handle cached; on a mismatch, or
//! when `now` crosses an activation boundary, it resolves again first. A
//! handle of a device or consumer that no single rule names decides, like
//! a call by subject, with the thread's copy of the all-scope rules when
//! the version and the entry's mark allow, and then reads only the first
//! two of its thirteen cache lines. Its
//! rules' windows are checked by one range test (the range of `now` over
//! which the resolution holds, narrowed to the cached windows); a new
//! minute, hour or day rolls them, out of line, without resolving again.
//! One shard is locked inline, several through a sorted list. Reading the version under the shard
//! locks is what keeps these calls exactly as ordered as calls by subject
//! (see `src/handle/mod.rs`). [`Engine::try_consume_many_handles`] asks the
//! CPU for what a chunk of such calls reads before making them, so that
//! their memory misses overlap.
//!
//! **Through a leased handle** ([`SubjectHandle::with_lease`], for a subject
//! one connection spends for), a call takes no lock and no atomic
//! read-modify-write: it reads the configuration version and its counter
//! owners' stamps (plain loads), checks its cached windows and spends from
//! leases it holds in the handle itself, which the calling thread owns
//! (`&mut`): one record per benefit type, since a debit comes off all of a
//! type's leases alike. A lease is headroom a locked call took ahead, up to
//! the lease size per rule, added to the counter so every other spender
//! sees it as used. Every locked call that writes to a leased owner's
//! counters bumps the owner's stamp (an atomic of its own), so when
//! a lease runs short, a configuration write lands, another caller writes
//! to the counters or a window rolls, the next call takes the locks, gives
//! the unspent leases back, decides exactly as an exact handle and takes
//! new ones. Pools shared by several subjects are never leased; dropping the
//! handle gives its leases back (`src/handle/lease.rs`, SEMANTICS.md L1–L8).
//!
//! **Decided straight from the counters:** when every applicable rule counts
//! on one owner (a device's all-scope rules, or one pool: the usual case), a
//! `check` or `try_consume` whose counters all exist and that no rule denies
//! is decided in one pass over the rules and debited in a second, reusing
//! the counter positions found while reading; a `record` whose counters all
//! exist is debited, then decided from them. Nothing else is built. A denial
//! (which must name the rule that lasts longest) is ranked straight from the
//! counters too, out of line so the allowed path stays short; an owner's
//! first debit and subjects under more than four rules take the general
//! path: each rule's state gathered in a fixed array, then concluded. A
//! property test runs both ways on random states and requires the same
//! decisions and counters (`src/decide.rs`). Both enforcement paths hand
//! the decision their rules through one trait (`decide::Rules`) whose
//! methods are always inlined, so the compiler cannot choose to call out
//! for each rule view.
#![deny(unsafe_code)] // allowed in `prefetch` only
#![deny(missing_docs)]

#[cfg(feature = "axum")]
mod admin;
mod amount;
mod cached;
#[cfg(any(feature = "tower", feature = "poller"))]
mod clock;
mod decide;
mod decision;
mod engine;
mod errors;
mod grant;
mod handle;
pub mod ledger;
#[cfg(feature = "tower")]
mod middleware;
mod mirror;
mod observe;
mod period;
#[cfg(feature = "poller")]
mod poller;
mod prefetch;
mod rules;
mod state;
mod subject;
mod sync;
pub mod types;
mod validate;
pub mod wire;

#[cfg(feature = "axum")]
pub use admin::{admin_router, admin_router_with_clock, AdminAuth};
pub use amount::{Amount, ParseAmountError, MICROS_PER_UNIT};
pub use decision::{Decision, Denial, DenyReason, Headroom, Rejection, UsageReport};
pub use engine::{Engine, EngineBuilder, EngineConfig, Request, BATCH_CHUNK};
pub use errors::{ApiError, ErrorCode};
pub use grant::{GiveBackTimer, LedgerFailure, LedgerStats, LedgeredBuilder};
pub use handle::{HandleRequest, Released, SubjectHandle};
pub use ledger::{Ledger, LedgerError, LedgerErrorKind, MemoryLedger};
#[cfg(feature = "tower")]
pub use middleware::{
    subject_from, Answers, ConsumerHeader, DeviceHeader, ExtractError, Grpc, Http, MemberHeaders,
    QuotaFuture, QuotaLayer, QuotaService, Refusal, RequestSubject, SubjectExtractor, Used,
    QUOTA_DENIED_CODE,
};
pub use mirror::{Listing, SyncReport};
pub use period::{LocalTime, UtcOffset, Window};
#[cfg(feature = "poller")]
pub use poller::{
    PollError, PollState, Poller, PollerBuilder, RunningPoller, MAX_POLL_WAIT, MIN_POLL_WAIT,
};
pub use rules::FrozenPolicy;
pub use subject::{Member, Subject};
pub use types::{
    ActiveMode, BenefitId, BenefitInfo, BenefitType, EntityId, EntityType, Family, Reset, Status,
    TriggerUnit, FOREVER,
};
pub use validate::{DEFAULT_PAGE_SIZE, MAX_BODY_BYTES, MAX_PAGE_SIZE};
pub use wire::{CreateBody, Envelope, ListData, ListQuery, UpdateBody};

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
