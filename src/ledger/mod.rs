//! Where authoritative usage lives: the ledger seam.
//!
//! An engine decides locally, out of *grants*: before a unit of a counter
//! is spent, the engine has reserved it in the ledger (a [`Change::Grant`]),
//! and the ledger has confirmed that reservation durably. So whatever stops
//! the process, the ledger holds at least what was admitted: after a crash
//! the unspent part of a grant counts as used (under-admission bounded by
//! the grant, never over-admission). Unspent grants go back on a clean
//! shutdown ([`Change::GiveBack`]); post-paid usage is added as it is
//! booked ([`Change::Record`]). A ledger is consulted only to take or return
//! grants and to book records, never once per request in the steady state.
//!
//! [`Engine::new`](crate::Engine::new) has no ledger: its counters are the
//! authority, in memory, at no cost. [`MemoryLedger`] keeps the same records
//! a durable ledger would, in memory (a test double of the seam, and the
//! reference the others are tested against); `FileLedger` (feature
//! `durable`) keeps them in a crash-safe file; `RedisLedger` (feature
//! `redis`) in Redis, shared by a fleet of gateways.
//!
//! A counter is named by its rule and owner ([`CounterKey`]) and counts in
//! one window at a time ([`WindowId`]): a change for a newer window starts
//! the counter again from zero, so a ledger keeps one record per live
//! counter, whatever the number of windows it went through.

mod codec;
mod memory;

#[cfg(feature = "durable")]
mod file;
#[cfg(feature = "redis")]
mod redis;

#[cfg(feature = "redis")]
pub use self::redis::RedisLedger;
pub use codec::{
    decode_counter, decode_counter_key, decode_rule, encode_counter, encode_counter_key,
    encode_rule, DecodeError,
};
#[cfg(feature = "durable")]
pub use file::FileLedger;
pub use memory::MemoryLedger;

use crate::types::{BenefitId, BenefitInfo};

/// Whose counter it is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum CounterOwner {
    /// A device's counter of an `enterprise_all_devices` rule.
    Device(String),
    /// A custom consumer's counter of an `enterprise_all_custom_consumers` rule.
    Consumer(String),
    /// The rule's own counter (a single-entity or enterprise-family rule).
    Pool,
}

/// One counter: a rule (by id) and an owner.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CounterKey {
    /// The rule.
    pub benefit_id: BenefitId,
    /// The owner.
    pub owner: CounterOwner,
}

/// The window a counter counts in: the rule's generation (bumped by an
/// update that starts usage from zero), and the window's start and end in
/// unix seconds (`i64::MIN` and `i64::MAX` for a cumulative rule).
///
/// Within one engine the generation and start name a window. The
/// generation is the engine's own count of resets, though: engines that
/// share a ledger (a fleet) name a window by its start and end, which every
/// engine with the same rules computes alike, whenever it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WindowId {
    /// The rule's generation.
    pub generation: u32,
    /// The window's start (`i64::MIN`: cumulative).
    pub start: i64,
    /// The window's end, its first second after it (`i64::MAX`: cumulative).
    pub end: i64,
}

impl WindowId {
    /// Whether `self` and `other` are one window of one engine (same
    /// generation and start; the end follows from them, as the rule's
    /// period computes it).
    pub fn same(&self, other: &WindowId) -> bool {
        self.generation == other.generation && self.start == other.start
    }

    /// Whether a change for `self` replaces a counter that counts in
    /// `stored` (a later window, or another generation: the engine only
    /// ever moves a counter forward).
    pub fn supersedes(&self, stored: &WindowId) -> bool {
        self.generation != stored.generation || self.start > stored.start
    }
}

/// What a ledger holds for one counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CounterRecord {
    /// The window `used` belongs to.
    pub window: WindowId,
    /// Micro-units granted or recorded in the window, less what was given
    /// back: at least what was spent.
    pub used: u64,
    /// Micro-units granted or recorded across windows, less what was given back.
    pub lifetime: u64,
}

/// One rule as the engine knows it: the platform's record, its generation
/// and whether a full sync withdrew it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleRecord {
    /// The rule's position in creation order (its list order).
    pub position: u32,
    /// The platform's record.
    pub info: BenefitInfo,
    /// Bumped by every update that started usage from zero.
    pub generation: u32,
    /// Missing from the last complete listing (cancelled here, counters kept).
    pub withdrawn: bool,
}

/// A change to a ledger. A batch of them is applied all or nothing, in
/// order.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Change {
    /// Reserve between `at_least` and `amount` micro-units of a counter in
    /// `window`, keeping its `used` at or under `limit`: at most an eighth
    /// of what the limit has left (unless that is less than `at_least`),
    /// and nothing if not even `at_least` fits. The ledger answers with
    /// what it granted. (A ledger shared by several engines sees what the
    /// others hold; one engine alone asks for what it will be granted.)
    Grant {
        /// The counter.
        key: CounterKey,
        /// Its window.
        window: WindowId,
        /// Granted in full or not at all.
        at_least: u64,
        /// Asked for.
        amount: u64,
        /// The rule's limit, in micro-units.
        limit: u64,
        /// Seconds from the call until the window ends (`None`:
        /// cumulative), for ledgers that let ended windows expire. Relative
        /// to the caller's clock, so that a ledger's own clock never
        /// shortens a window the engine still counts in.
        ends_in: Option<u64>,
    },
    /// Give back `amount` unspent micro-units of a grant in `window`
    /// (nothing if the counter already moved to another window, older or
    /// newer: a give-back never creates or moves a record).
    GiveBack {
        /// The counter.
        key: CounterKey,
        /// Its window.
        window: WindowId,
        /// Given back.
        amount: u64,
    },
    /// Add post-paid usage, even past the limit.
    Record {
        /// The counter.
        key: CounterKey,
        /// Its window.
        window: WindowId,
        /// Booked.
        amount: u64,
        /// As for [`Change::Grant`].
        ends_in: Option<u64>,
    },
    /// Drop a counter's record of `window`, which can no longer count (it
    /// ended, or its rule was cancelled or reset); a record of another
    /// window (a newer one, granted since) stays.
    Forget {
        /// The counter.
        key: CounterKey,
        /// The window evicted.
        window: WindowId,
    },
    /// Store a rule (replacing the one with the same id).
    Rule(RuleRecord),
}

/// Everything a ledger holds, read once when an engine opens it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Rules, in position order.
    pub rules: Vec<RuleRecord>,
    /// Counters.
    pub counters: Vec<(CounterKey, CounterRecord)>,
}

/// Where authoritative usage lives (see the module documentation).
///
/// Implementations apply [`Change`]s with the semantics of
/// [`apply_counter_change`], all or nothing per batch, and return from
/// [`Ledger::commit`] only once the batch is as durable as the ledger
/// promises to be.
pub trait Ledger: Send + Sync + 'static {
    /// Everything the ledger holds.
    ///
    /// # Errors
    /// When the ledger cannot be read, or what it holds is not a ledger of
    /// a format this version knows.
    fn load(&self) -> Result<Snapshot, LedgerError>;

    /// Applies `changes`, in order, all or nothing, and returns the amount
    /// granted for each [`Change::Grant`] among them, in order.
    ///
    /// # Errors
    /// When the batch could not be made durable; then none of it was applied.
    fn commit(&self, changes: &[Change]) -> Result<Vec<u64>, LedgerError>;

    /// Called by [`crate::LedgeredBuilder::open`] before
    /// [`Ledger::load`], with the engine's UTC offset in seconds (which
    /// places every periodic window, D15). A ledger that counted windows
    /// under another offset refuses ([`LedgerErrorKind::Mismatch`]): its
    /// windows are not the engine's, so the usage it holds would not count
    /// in them (a restart would forgo it), and engines sharing it would not
    /// share a counter (a fleet would admit a limit per offset). A ledger
    /// that holds nothing yet takes the offset. The default accepts any.
    ///
    /// # Errors
    /// [`LedgerErrorKind::Mismatch`] for another offset; the ledger's own
    /// error when it cannot be read or written.
    fn bind(&self, utc_offset_seconds: i32) -> Result<(), LedgerError> {
        let _ = utc_offset_seconds;
        Ok(())
    }
}

/// The [`LedgerErrorKind::Mismatch`] error of a ledger at `location` whose
/// windows were counted at `stored` seconds east of UTC, opened by an
/// engine at `wanted`.
pub(crate) fn offset_mismatch(location: &str, stored: i64, wanted: i32) -> LedgerError {
    let show = |s: i64| {
        let sign = if s < 0 { '-' } else { '+' };
        let a = s.unsigned_abs();
        format!("UTC{sign}{:02}:{:02}", a / 3600, a % 3600 / 60)
    };
    LedgerError::new(
        LedgerErrorKind::Mismatch,
        location,
        format!(
            "its windows were counted at {}, this engine's utc_offset is {}: \
             open it with the offset it was written with",
            show(stored),
            show(i64::from(wanted))
        ),
    )
}

impl<L: Ledger + ?Sized> Ledger for std::sync::Arc<L> {
    fn load(&self) -> Result<Snapshot, LedgerError> {
        (**self).load()
    }

    fn bind(&self, utc_offset_seconds: i32) -> Result<(), LedgerError> {
        (**self).bind(utc_offset_seconds)
    }

    fn commit(&self, changes: &[Change]) -> Result<Vec<u64>, LedgerError> {
        (**self).commit(changes)
    }
}

/// A counter's record after `change` (one of `Grant`, `GiveBack`, `Record`
/// for `window`), and what it granted: the semantics every ledger applies.
///
/// - A change for a window that supersedes the stored one starts the
///   window's usage from zero; one for an older window counts in the
///   lifetime total only (and grants nothing).
/// - A grant takes what is asked, within an eighth of what the limit has
///   left unless that is less than `at_least`, and nothing when not even
///   `at_least` fits: `used` never passes the limit through a grant.
/// - A give-back takes off at most what the window holds.
pub fn apply_counter_change(
    stored: Option<CounterRecord>,
    change: &Change,
) -> (Option<CounterRecord>, u64) {
    let (window, amount) = match change {
        // A give-back takes back only what its own window was granted: one
        // that arrives after the counter moved on (a sweep's, queued before
        // a newer grant, even of a newer generation) changes nothing.
        Change::GiveBack { window, .. } if !stored.is_some_and(|r| r.window.same(window)) => {
            return (stored, 0);
        }
        Change::Grant { window, amount, .. }
        | Change::GiveBack { window, amount, .. }
        | Change::Record { window, amount, .. } => (*window, *amount),
        Change::Forget { window, .. } => {
            return match stored {
                Some(rec) if rec.window.same(window) => (None, 0),
                other => (other, 0),
            };
        }
        Change::Rule(_) => return (stored, 0),
    };
    let mut rec = stored.unwrap_or(CounterRecord {
        window,
        used: 0,
        lifetime: 0,
    });
    let current = if rec.window.same(&window) {
        true
    } else if window.supersedes(&rec.window) {
        rec.window = window;
        rec.used = 0;
        true
    } else {
        false
    };
    let granted = match change {
        Change::Grant {
            limit, at_least, ..
        } => {
            let room = limit.saturating_sub(rec.used);
            let granted = if current && room > 0 && room >= *at_least {
                amount.min((room >> 3).max(*at_least)).min(room)
            } else {
                0
            };
            rec.used += granted;
            rec.lifetime = rec.lifetime.saturating_add(granted);
            granted
        }
        Change::Record { .. } => {
            if current {
                rec.used = rec.used.saturating_add(amount);
            }
            rec.lifetime = rec.lifetime.saturating_add(amount);
            0
        }
        _ => {
            if current {
                let back = amount.min(rec.used);
                rec.used -= back;
                rec.lifetime = rec.lifetime.saturating_sub(back);
            }
            0
        }
    };
    (Some(rec), granted)
}

/// What went wrong with a ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LedgerErrorKind {
    /// Reading or writing failed (a disk error, a full disk, permissions).
    Io,
    /// The file is damaged: truncated, or a record does not decode.
    Corrupt,
    /// The file is not a benefit-quota ledger.
    Foreign,
    /// The file was written by a newer version of this library.
    NewerFormat,
    /// The file was written by an older version of this library, in a
    /// format this one does not read (there is no migration: start from a
    /// new file; the platform's rules come back with the next sync).
    OlderFormat,
    /// The ledger is closed or its writer stopped.
    Closed,
    /// The ledger was written under another configuration that places
    /// windows (another UTC offset: see [`Ledger::bind`]).
    Mismatch,
}

/// A ledger's error: what kind, where, and the detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerError {
    /// What kind of failure.
    pub kind: LedgerErrorKind,
    /// The ledger's location (a path for a file).
    pub location: String,
    /// What exactly is wrong.
    pub detail: String,
}

impl LedgerError {
    /// An error of `kind` at `location`.
    pub fn new(
        kind: LedgerErrorKind,
        location: impl Into<String>,
        detail: impl Into<String>,
    ) -> Self {
        LedgerError {
            kind,
            location: location.into(),
            detail: detail.into(),
        }
    }
}

impl std::fmt::Display for LedgerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self.kind {
            LedgerErrorKind::Io => "input/output error",
            LedgerErrorKind::Corrupt => "corrupted",
            LedgerErrorKind::Foreign => "not a benefit-quota ledger",
            LedgerErrorKind::NewerFormat => "written by a newer version",
            LedgerErrorKind::OlderFormat => "written by an older version",
            LedgerErrorKind::Closed => "closed",
            LedgerErrorKind::Mismatch => "written under another configuration",
        };
        write!(f, "quota ledger {}: {what}: {}", self.location, self.detail)
    }
}

impl std::error::Error for LedgerError {}

/// A name no other call makes, in this process or another: a Redis
/// ledger's part of its batch ids, a new ledger file's temporary name. The
/// process id and the clock alone repeat for two calls in one process
/// within a tick of the clock, or in two containers (each process 1)
/// started in the same tick: a count of the calls this process made and 64
/// random bits (the process's random hash keys) rule both out.
#[cfg(any(feature = "durable", feature = "redis"))]
pub(crate) fn unique_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    unique_id_at(nanos)
}

/// [`unique_id`] at `nanos` past the epoch.
#[cfg(any(feature = "durable", feature = "redis"))]
fn unique_id_at(nanos: u128) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static MADE: AtomicU64 = AtomicU64::new(0);
    let made = MADE.fetch_add(1, Ordering::Relaxed);
    let random = ahash::RandomState::new().hash_one((made, nanos));
    format!("{:x}-{nanos:x}-{made:x}-{random:x}", std::process::id())
}

#[cfg(test)]
mod tests {
    /// Two names made in one tick of the clock (in one process, or in
    /// two with one process id) differ.
    #[cfg(any(feature = "durable", feature = "redis"))]
    #[test]
    fn unique_ids_differ_within_one_tick_of_the_clock() {
        let ids: std::collections::HashSet<String> =
            (0..1000).map(|_| super::unique_id_at(5)).collect();
        assert_eq!(ids.len(), 1000);
        // The random part alone tells them apart too, as it does ids of
        // two processes with one id, one clock and one count (their hash
        // keys are random).
        let random = |id: &str| id.rsplit('-').next().unwrap().to_owned();
        let randoms: std::collections::HashSet<String> = ids.iter().map(|i| random(i)).collect();
        assert_eq!(randoms.len(), 1000);
    }

    use super::*;

    fn key() -> CounterKey {
        CounterKey {
            benefit_id: BenefitId::new("7").unwrap(),
            owner: CounterOwner::Device("d".into()),
        }
    }

    const W1: WindowId = WindowId {
        generation: 0,
        start: 100,
        end: 200,
    };
    const W2: WindowId = WindowId {
        generation: 0,
        start: 200,
        end: 300,
    };

    fn grant(window: WindowId, at_least: u64, amount: u64, limit: u64) -> Change {
        Change::Grant {
            key: key(),
            window,
            at_least,
            amount,
            limit,
            ends_in: None,
        }
    }

    #[test]
    fn grants_stop_at_the_limit_and_windows_start_from_zero() {
        let (r, g) = apply_counter_change(None, &grant(W1, 8, 8, 10));
        assert_eq!((r.unwrap().used, g), (8, 8));
        // not even `at_least` fits: nothing
        let (r, g) = apply_counter_change(r, &grant(W1, 3, 8, 10));
        assert_eq!((r.unwrap().used, g), (8, 0));
        let (r, g) = apply_counter_change(r, &grant(W1, 2, 8, 10));
        assert_eq!((r.unwrap().used, r.unwrap().lifetime, g), (10, 10, 2));
        let (r, g) = apply_counter_change(r, &grant(W2, 3, 3, 10));
        assert_eq!((r.unwrap().used, r.unwrap().lifetime, g), (3, 13, 3));
        // a late grant for the old window grants nothing
        let (r, g) = apply_counter_change(r, &grant(W1, 1, 3, 10));
        assert_eq!((r.unwrap().used, g), (3, 0));
    }

    #[test]
    fn grants_take_at_most_an_eighth_of_what_is_left_beyond_the_minimum() {
        let (r, g) = apply_counter_change(None, &grant(W1, 1, 500, 800));
        assert_eq!((r.unwrap().used, g), (100, 100));
        let (_, g) = apply_counter_change(r, &grant(W1, 300, 500, 800));
        assert_eq!(g, 300);
    }

    #[test]
    fn records_pass_the_limit_and_give_backs_stay_in_their_window() {
        let rec = Change::Record {
            key: key(),
            window: W1,
            amount: 15,
            ends_in: None,
        };
        let (r, _) = apply_counter_change(None, &rec);
        assert_eq!(r.unwrap().used, 15);
        let back = |w, amount| Change::GiveBack {
            key: key(),
            window: w,
            amount,
        };
        let (r, _) = apply_counter_change(r, &back(W1, 20));
        assert_eq!((r.unwrap().used, r.unwrap().lifetime), (0, 0));
        let (r, _) = apply_counter_change(r, &grant(W2, 5, 5, 10));
        let (r, _) = apply_counter_change(r, &back(W1, 5));
        assert_eq!((r.unwrap().used, r.unwrap().window), (5, W2));
        // a give-back of an earlier generation, arriving after a grant of
        // the next (a sweep's give-back queued before an update), changes
        // nothing: it neither moves the counter back nor clears its usage
        let next = WindowId {
            generation: 1,
            ..W2
        };
        let (r, _) = apply_counter_change(r, &grant(next, 4, 4, 10));
        let (r, _) = apply_counter_change(r, &back(W2, 5));
        assert_eq!((r.unwrap().used, r.unwrap().window), (4, next));
        // and none creates a record
        assert_eq!(apply_counter_change(None, &back(W1, 5)), (None, 0));
    }
}
