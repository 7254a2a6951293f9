//! Opening an engine with a ledger: the builder and the failure policy.

use std::sync::Arc;
use std::time::Duration;

use super::Grants;
use crate::amount::Amount;
use crate::engine::{Engine, EngineBuilder};
use crate::ledger::{Ledger, LedgerError};

/// What a call that needs a new grant does when the ledger cannot give one
/// (unreachable, failing, or slower than [`LedgeredBuilder::grant_timeout`]).
/// Calls covered by grants already held are not affected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum LedgerFailure {
    /// Deny it, with [`crate::DenyReason::LedgerUnavailable`] (the default).
    #[default]
    FailClosed,
    /// Decide it locally, as an engine without a ledger would, and book
    /// what it admits as post-paid usage, which reaches the ledger once it
    /// is back. Over-admission is possible while the ledger is away (other
    /// instances do not see it yet).
    FailOpen,
    /// [`LedgerFailure::FailOpen`] for at most this much per counter and
    /// window (a cumulative counter's window lasts as long as its rule),
    /// over all the times the ledger fails in it; beyond it,
    /// [`LedgerFailure::FailClosed`]. Not reset by a commit that succeeds
    /// in between: a ledger that is slow rather than down commits now and
    /// then, and each commit would otherwise allow as much again.
    SafeCapacity(Amount),
}

/// An [`EngineBuilder`] with a ledger: [`LedgeredBuilder::open`] loads
/// what the ledger holds and starts its writer.
#[must_use]
pub struct LedgeredBuilder {
    base: EngineBuilder,
    ledger: Box<dyn FnOnce() -> Result<Arc<dyn Ledger>, LedgerError> + Send>,
    max_grant: u64,
    record_interval: Duration,
    failure: LedgerFailure,
    grant_timeout: Duration,
}

impl std::fmt::Debug for LedgeredBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LedgeredBuilder")
            .field("base", &self.base)
            .field("max_grant", &self.max_grant)
            .field("record_interval", &self.record_interval)
            .field("failure", &self.failure)
            .field("grant_timeout", &self.grant_timeout)
            .finish_non_exhaustive()
    }
}

impl EngineBuilder {
    /// This engine, with its usage kept in `ledger`, and its rules too if
    /// the ledger stores them (a file or memory ledger does, Redis does
    /// not: see [`crate::ledger`]); open it with [`LedgeredBuilder::open`].
    pub fn ledger(self, ledger: impl Ledger) -> LedgeredBuilder {
        let ledger: Arc<dyn Ledger> = Arc::new(ledger);
        self.ledger_with(move || Ok(ledger))
    }

    /// This engine, with its usage and rules kept in the file at `path`
    /// (created if missing; feature `durable`): see
    /// [`crate::ledger::FileLedger`] and RELIABILITY.md.
    #[cfg(feature = "durable")]
    pub fn durable(self, path: impl AsRef<std::path::Path>) -> LedgeredBuilder {
        let path = path.as_ref().to_path_buf();
        self.ledger_with(move || {
            let l: Arc<dyn Ledger> = Arc::new(crate::ledger::FileLedger::open(&path)?);
            Ok(l)
        })
    }

    fn ledger_with(
        self,
        open: impl FnOnce() -> Result<Arc<dyn Ledger>, LedgerError> + Send + 'static,
    ) -> LedgeredBuilder {
        LedgeredBuilder {
            base: self,
            ledger: Box::new(open),
            max_grant: Amount::from_units(1_000).as_micros(),
            record_interval: Duration::from_millis(100),
            failure: LedgerFailure::FailClosed,
            grant_timeout: Duration::from_secs(2),
        }
    }

    /// This engine, with usage shared through Redis at `url` by every
    /// engine opened on it (a fleet of gateways; feature `redis`): see
    /// [`crate::ledger::RedisLedger`] (keys under `bq:`, 500 ms per round
    /// trip; build one with [`crate::ledger::RedisLedger::new`] and pass it
    /// to [`EngineBuilder::ledger`] for others) and RELIABILITY.md §8.
    #[cfg(feature = "redis")]
    pub fn redis(self, url: &str) -> LedgeredBuilder {
        let url = url.to_owned();
        self.ledger_with(move || {
            let l = crate::ledger::RedisLedger::new(&url, "bq", Duration::from_millis(500))?;
            let l: Arc<dyn Ledger> = Arc::new(l);
            Ok(l)
        })
    }
}

impl LedgeredBuilder {
    /// The largest grant one durable write takes for a counter (default:
    /// 1,000 units). A crash strands at most 1.5 times this per counter
    /// (one grant in use, the next taken ahead), plus the request being
    /// decided; a larger grant means fewer writes.
    pub fn max_grant(mut self, max: Amount) -> Self {
        self.max_grant = max.as_micros().max(1);
        self
    }

    /// How long post-paid usage ([`Engine::record`]) may wait before it is
    /// durable (default: 100 ms, at most an hour); a grant's commit takes
    /// it along sooner.
    pub fn record_interval(mut self, interval: Duration) -> Self {
        self.record_interval = interval.min(Duration::from_secs(3_600));
        self
    }

    /// What a call needing a new grant does when the ledger cannot give one
    /// (default: [`LedgerFailure::FailClosed`]).
    pub fn on_ledger_failure(mut self, policy: LedgerFailure) -> Self {
        self.failure = policy;
        self
    }

    /// How long a call waits for its grant before the ledger counts as
    /// failing for it (default: 2 s, at most an hour).
    pub fn grant_timeout(mut self, timeout: Duration) -> Self {
        self.grant_timeout = timeout.min(Duration::from_secs(3_600));
        self
    }

    /// Opens the ledger and the engine: the rules and the usage it holds
    /// are restored (the unspent part of grants a crash left counts as used).
    ///
    /// # Errors
    /// The ledger's error when it cannot be opened or read (a damaged,
    /// foreign, newer- or older-format file, an I/O error), or
    /// [`crate::LedgerErrorKind::Mismatch`] for a ledger whose windows were
    /// counted at another UTC offset (see [`crate::ledger::Ledger::bind`]);
    /// nothing is started empty over it.
    pub fn open(self) -> Result<Engine, LedgerError> {
        let ledger = (self.ledger)()?;
        ledger.bind(self.base.config.utc_offset.seconds())?;
        let snapshot = ledger.load()?;
        let mut engine = self.base.build();
        let mut grants = Grants::start(ledger, self.max_grant, self.record_interval);
        grants.failure = self.failure;
        grants.grant_timeout = self.grant_timeout;
        engine.grants = Some(Box::new(grants));
        engine.restore(snapshot)?;
        Ok(engine)
    }
}
