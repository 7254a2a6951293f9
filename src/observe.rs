//! Metrics (feature `metrics`, through the `metrics` facade) and tracing
//! spans (feature `tracing`). With both features off every hook here is an
//! empty inline function: nothing is counted and nothing is paid.
//!
//! Metrics, all counters unless said:
//! - `benefit_quota_decisions_total{outcome, reason, benefit_type}`: every
//!   decision; `outcome` is `allowed`, `unlimited` (no rule applies),
//!   `denied` or `rejected`; `reason` the denial's or rejection's (empty
//!   when allowed); `benefit_type` the type spent, or `none` for a `check`.
//! - `benefit_quota_config_writes_total{kind, result}`: `create`, `update`,
//!   `import` or `sync`, `ok` or `error`.
//! - `benefit_quota_sync_changes_total{change}`: rules `created`, `updated`,
//!   `revived` and `withdrawn` by syncs.
//! - `benefit_quota_unbooked_total{reason}`: post-paid amounts the
//!   middleware could not book in full.
//! - `benefit_quota_evicted_total` and the gauge `benefit_quota_counters`
//!   (counters tracked, set at every `evict`).
//!
//! README.md's *Observability* has the same list for users (this module
//! is private).
//!
//! The decision counters are registered once per engine, so counting one is
//! an atomic add on a handle, not a registry lookup.

use crate::decision::Decision;
use crate::types::BenefitType;

#[cfg(feature = "metrics")]
use crate::decision::{DenyReason, Rejection};

/// An engine's metric handles.
#[derive(Default)]
pub(crate) struct Observe {
    /// Indexed by outcome (see [`outcome_index`]) × benefit type (the
    /// type's index, 3 for none).
    #[cfg(feature = "metrics")]
    decisions: Vec<metrics::Counter>,
}

#[cfg(feature = "metrics")]
const OUTCOMES: [(&str, &str); 8] = [
    ("allowed", ""),
    ("unlimited", ""),
    ("denied", "frozen"),
    ("denied", "exhausted"),
    ("denied", "insufficient"),
    ("denied", "counter_capacity"),
    ("rejected", "impossible_time"),
    ("denied", "ledger_unavailable"),
];

#[cfg(feature = "metrics")]
fn outcome_index(d: &Decision) -> usize {
    match d {
        Decision::Allowed(Some(_)) => 0,
        Decision::Allowed(None) => 1,
        Decision::Denied(den) => match den.reason {
            DenyReason::Frozen => 2,
            DenyReason::Exhausted => 3,
            DenyReason::Insufficient => 4,
            DenyReason::LedgerUnavailable => 7,
            _ => 5,
        },
        Decision::Rejected(Rejection::ImpossibleTime { .. }) => 6,
    }
}

impl Observe {
    /// Registers the engine's decision counters with the recorder installed
    /// now (none: they count nothing).
    pub fn new() -> Observe {
        #[cfg(feature = "metrics")]
        {
            let mut decisions = Vec::with_capacity(OUTCOMES.len() * 4);
            for (outcome, reason) in OUTCOMES {
                for ty in BenefitType::ALL.iter().map(|t| t.as_str()).chain(["none"]) {
                    decisions.push(metrics::counter!(
                        "benefit_quota_decisions_total",
                        "outcome" => outcome,
                        "reason" => reason,
                        "benefit_type" => ty
                    ));
                }
            }
            Observe { decisions }
        }
        #[cfg(not(feature = "metrics"))]
        Observe::default()
    }

    /// Counts a decision for `benefit_type` (`None`: a `check`).
    #[inline(always)]
    pub fn decision(&self, benefit_type: Option<BenefitType>, d: &Decision) {
        #[cfg(feature = "metrics")]
        {
            let ty = benefit_type.map_or(3, |t| t as usize);
            if let Some(c) = self.decisions.get(outcome_index(d) * 4 + ty) {
                c.increment(1);
            }
        }
        #[cfg(not(feature = "metrics"))]
        let _ = (benefit_type, d);
    }

    /// Counts a configuration write of `kind`.
    #[inline]
    pub fn config_write(&self, kind: &'static str, ok: bool) {
        #[cfg(feature = "metrics")]
        metrics::counter!(
            "benefit_quota_config_writes_total",
            "kind" => kind,
            "result" => if ok { "ok" } else { "error" }
        )
        .increment(1);
        #[cfg(not(feature = "metrics"))]
        let _ = (kind, ok);
    }

    /// Counts what a sync changed.
    #[inline]
    pub fn sync_changes(&self, report: &crate::mirror::SyncReport) {
        #[cfg(feature = "metrics")]
        for (change, n) in [
            ("created", report.created.len()),
            ("updated", report.updated.len()),
            ("revived", report.revived.len()),
            ("withdrawn", report.withdrawn.len()),
        ] {
            metrics::counter!("benefit_quota_sync_changes_total", "change" => change)
                .increment(n as u64);
        }
        #[cfg(not(feature = "metrics"))]
        let _ = report;
    }

    /// Counts a post-paid usage report the middleware could not book, or
    /// not in full (`reason`: `unparsable` for a value that is not an
    /// amount, `counter_capacity` or `ledger_unavailable` for a record
    /// the engine refused, `impossible_time` for a clock it rejected), and
    /// logs it at `warn`.
    #[cfg(feature = "tower")]
    #[inline]
    pub fn unbooked(&self, reason: &'static str, value: &str) {
        #[cfg(feature = "metrics")]
        metrics::counter!("benefit_quota_unbooked_total", "reason" => reason).increment(1);
        #[cfg(feature = "tracing")]
        tracing::warn!(reason, value, "post-paid usage not booked");
        #[cfg(not(any(feature = "metrics", feature = "tracing")))]
        let _ = (reason, value);
    }

    /// Counts an eviction and the counters left.
    #[inline]
    pub fn evicted(&self, removed: usize, tracked: usize) {
        #[cfg(feature = "metrics")]
        {
            metrics::counter!("benefit_quota_evicted_total").increment(removed as u64);
            metrics::gauge!("benefit_quota_counters").set(tracked as f64);
        }
        #[cfg(not(feature = "metrics"))]
        let _ = (removed, tracked);
    }
}

/// What [`span!`] gives without the `tracing` feature: nothing to enter.
#[cfg(not(feature = "tracing"))]
pub(crate) struct NoSpan;

/// A tracing span around a configuration write or a sync (feature
/// `tracing`); nothing otherwise.
macro_rules! span {
    ($name:literal $(, $k:ident = $v:expr)*) => {{
        #[cfg(feature = "tracing")]
        let span = tracing::info_span!($name $(, $k = $v)*).entered();
        #[cfg(not(feature = "tracing"))]
        let span = $crate::observe::NoSpan;
        span
    }};
}
pub(crate) use span;
