//! Outcomes that tell the caller what to do next (D13, D17).

use crate::amount::Amount;
use crate::period::Window;
use crate::types::{BenefitId, BenefitType, EntityType, Status};

/// Why a request was denied. More reasons may come: match with a wildcard
/// arm, or ask [`DenyReason::is_quota_decision`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DenyReason {
    /// An applicable rule is frozen and the engine's policy is *block* (D12).
    Frozen,
    /// An applicable rule's usage has reached its limit (`used ≥ limit`).
    Exhausted,
    /// The rule still has headroom, but less than the amount asked for
    /// (`used + amount > limit`); a smaller request may pass.
    Insufficient,
    /// The request needed a new counter and the engine's
    /// [`crate::EngineConfig::max_counters`] is reached. A `try_consume`
    /// changed nothing; a `record` (usage already spent) was booked on the
    /// counters that exist and not on the one it names.
    /// Not a quota decision: retry after [`crate::Engine::evict`] or raise the cap.
    CounterCapacity,
    /// The engine keeps its usage in a ledger, the request needed a new
    /// grant from it, and the ledger could not give one in time (unreachable,
    /// failing, or slower than the grant timeout; a ledger that answers it
    /// has less left than the call needs denies it `Insufficient`). Not a
    /// quota decision: the
    /// engine fails closed rather than admit what the ledger does not hold.
    LedgerUnavailable,
}

impl DenyReason {
    /// Whether a rule decided (frozen, exhausted, insufficient), rather
    /// than the engine being unable to decide for now (no room for a new
    /// counter, no grant from the ledger): a gateway answers the first
    /// "quota spent" (HTTP 429) and the second "unavailable" (HTTP 503).
    pub const fn is_quota_decision(self) -> bool {
        matches!(
            self,
            DenyReason::Frozen | DenyReason::Exhausted | DenyReason::Insufficient
        )
    }

    /// `"frozen"`, `"exhausted"`, `"insufficient"`, `"counter_capacity"` or `"ledger_unavailable"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            DenyReason::Frozen => "frozen",
            DenyReason::Exhausted => "exhausted",
            DenyReason::Insufficient => "insufficient",
            DenyReason::CounterCapacity => "counter_capacity",
            DenyReason::LedgerUnavailable => "ledger_unavailable",
        }
    }
}

impl std::fmt::Display for DenyReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A denial: which benefit denied, why, what remains and when it resets (D17).
///
/// Outputs of a decision are plain data read through public fields (they
/// hold no invariant to protect; fields may be added, hence
/// `#[non_exhaustive]`). A [`crate::BenefitInfo`], which is validated, is
/// read through getters instead, so it cannot be built invalid.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Denial {
    /// The rule that denied.
    pub benefit_id: BenefitId,
    /// Its benefit type.
    pub benefit_type: BenefitType,
    /// Why.
    pub reason: DenyReason,
    /// `limit − used` on that rule (zero when exhausted). For a reason that
    /// is not a quota decision ([`DenyReason::is_quota_decision`] false),
    /// not the client's quota: zero, or what the counter had.
    pub remaining: Amount,
    /// When that rule's window resets (unix seconds); `None` for cumulative
    /// caps and for frozen rules, which only an update lifts. For a reason
    /// that is not a quota decision, the window of the rule the call
    /// needed, not a time to wait for: do not build a client's back-off
    /// (`Retry-After`) from it then (the engine may decide again at once,
    /// once the ledger answers or a counter is freed).
    pub resets_at: Option<i64>,
}

/// How much room the tightest applicable rule leaves (plain data, as
/// [`Denial`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Headroom {
    /// The tightest rule.
    pub benefit_id: BenefitId,
    /// Its benefit type.
    pub benefit_type: BenefitType,
    /// `limit − used` after the operation.
    pub remaining: Amount,
    /// When its window resets; `None` for cumulative caps.
    pub resets_at: Option<i64>,
}

/// The answer to `check`, `try_consume` and `record`.
///
/// # Examples
/// ```
/// use benefit_quota::{Amount, BenefitType, Engine, Subject};
/// let engine = Engine::new();
/// // No rule applies: the subject is unlimited (F16).
/// let d = engine.try_consume(&Subject::device("d"), BenefitType::ResourcePoint, Amount::from_units(5), 0);
/// assert!(d.is_allowed());
/// assert!(d.headroom().is_none());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "a decision that is not acted on is a quota that is not enforced"]
#[non_exhaustive]
pub enum Decision {
    /// Allowed. Carries the tightest applicable rule, or `None` when no rule
    /// applies (unlimited: [`Decision::is_unlimited`]).
    Allowed(Option<Headroom>),
    /// Denied by a rule, with the explanation.
    Denied(Denial),
    /// Not decided: the call itself is wrong (see [`Rejection`]). Nothing
    /// was counted; the request should not proceed.
    Rejected(Rejection),
}

/// Why a call was not decided at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Rejection {
    /// `now` is not a time in unix seconds the platform knows
    /// (`0..=253402300799`): most likely milliseconds. Decided with it,
    /// every rule would look expired and every call allowed and unlimited.
    ImpossibleTime {
        /// The `now` passed.
        now: i64,
    },
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rejection::ImpossibleTime { now } => write!(
                f,
                "now = {now} is not a time in unix seconds (0..=253402300799); milliseconds?"
            ),
        }
    }
}

impl Decision {
    /// True when the request may proceed.
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allowed(_))
    }

    /// True when allowed because no rule applies to the subject (nothing is
    /// counted for it): distinct from allowed with headroom.
    pub fn is_unlimited(&self) -> bool {
        matches!(self, Decision::Allowed(None))
    }

    /// The denial, if denied by a rule.
    pub fn denial(&self) -> Option<&Denial> {
        match self {
            Decision::Denied(d) => Some(d),
            _ => None,
        }
    }

    /// The headroom, if allowed and limited.
    pub fn headroom(&self) -> Option<&Headroom> {
        match self {
            Decision::Allowed(h) => h.as_ref(),
            _ => None,
        }
    }

    /// Why the call was not decided, if it was rejected.
    pub fn rejection(&self) -> Option<Rejection> {
        match self {
            Decision::Rejected(r) => Some(*r),
            _ => None,
        }
    }

    /// The rejection of a call at an impossible `now`.
    pub(crate) fn impossible_time(now: i64) -> Decision {
        Decision::Rejected(Rejection::ImpossibleTime { now })
    }
}

/// One applicable rule's counter, as reported by `usage` (plain data, as
/// [`Denial`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct UsageReport {
    /// The rule.
    pub benefit_id: BenefitId,
    /// Its scope type.
    pub entity_type: EntityType,
    /// Its benefit type.
    pub benefit_type: BenefitType,
    /// Its status (`valid` or `frozen`).
    pub status: Status,
    /// Usage counted in the current window (or ever, for cumulative rules).
    pub used: Amount,
    /// The rule's limit in whole units.
    pub limit: i64,
    /// `limit − used`, floored at zero.
    pub remaining: Amount,
    /// The current window; `None` for cumulative rules.
    pub window: Option<Window>,
    /// Everything ever counted on this counter, across resets (D16).
    pub lifetime: Amount,
}
