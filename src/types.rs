//! Validated domain types: the enums and newtypes a benefit limitation is made of.
//!
//! Wire structs (see [`crate::wire`]) carry strings and loosely typed
//! integers; they are converted into these types at the boundary by
//! the crate's validation layer, so everything past that point is valid by construction.

use std::fmt;
use std::sync::Arc;

/// `253402300799`, 9999-12-31 23:59:59 UTC: the platform's "forever" (F5),
/// and the largest accepted timestamp (D4).
pub const FOREVER: i64 = 253_402_300_799;

/// Longest accepted `entity_id` / `benefit_id`, in bytes (D4).
pub const MAX_ID_LEN: usize = 256;

macro_rules! wire_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $var:ident => $s:literal $(| $alias:literal)*),+ $(,)? }) => {
        $(#[$m])*
        ///
        /// The platform may add values: match with a wildcard arm.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[non_exhaustive]
        pub enum $name { $($(#[$vm])* $var),+ }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$var),+];

            /// The wire string.
            pub const fn as_str(self) -> &'static str {
                match self { $($name::$var => $s),+ }
            }

            /// Parses the exact wire string (or one of its accepted aliases).
            pub fn from_wire(s: &str) -> Option<Self> {
                match s { $($s $(| $alias)* => Some($name::$var),)+ _ => None }
            }

            /// The accepted wire strings, for error messages.
            pub(crate) fn expected() -> String {
                let v: Vec<&str> = Self::ALL.iter().map(|x| x.as_str()).collect();
                v.join(", ")
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

wire_enum! {
    /// The scope of a rule (F2).
    EntityType {
        /// Every device of the enterprise, each with its own counter.
        EnterpriseAllDevices => "enterprise_all_devices",
        /// One device.
        SingleDevice => "single_device",
        /// Every custom consumer, each with its own counter. Also read as
        /// `enterprise_all_identifiers`, the official Java SDK's name (D18).
        EnterpriseAllCustomConsumers => "enterprise_all_custom_consumers" | "enterprise_all_identifiers",
        /// One custom consumer. Also read as `single_identifier` (D18).
        SingleCustomConsumer => "single_custom_consumer" | "single_identifier",
        /// One Coze user (enterprise family).
        CozeUserId => "coze_user_id",
        /// A role: `EnterpriseGuest`, `EnterpriseMember` or `EnterpriseAdmin` (enterprise family).
        CozeRole => "coze_role",
        /// A workspace (enterprise family).
        CozeWorkspace => "coze_workspace",
        /// An organization (enterprise family).
        CozeOrganization => "coze_organization",
    }
}

wire_enum! {
    /// What is limited (F3).
    BenefitType {
        /// Resource points.
        ResourcePoint => "resource_point",
        /// Voice duration on system voices, in seconds.
        VoiceUnifiedDurationSystem => "voice_unified_duration_system",
        /// Voice duration on custom voices, in seconds.
        VoiceUnifiedDurationCustom => "voice_unified_duration_custom",
    }
}

wire_enum! {
    /// How the activation window is expressed (F4): only absolute times exist.
    ActiveMode {
        /// In effect from `started_at` to `ended_at`.
        AbsoluteTime => "absolute_time",
    }
}

wire_enum! {
    /// A rule's status (F7).
    Status {
        /// In force.
        Valid => "valid",
        /// Frozen: blocks its subjects (policy *block*) or is ignored (policy *suspend*), D12.
        Frozen => "frozen",
        /// Cancelled: terminal, never applies again (D6).
        Cancel => "cancel",
    }
}

wire_enum! {
    /// The reset period unit (F8).
    TriggerUnit {
        /// Never resets: a cumulative cap.
        Never => "never",
        /// Resets every `trigger_time` minutes.
        Minute => "minute",
        /// Resets every `trigger_time` hours.
        Hour => "hour",
        /// Resets every `trigger_time` days (at local midnight for 1 day).
        Day => "day",
    }
}

impl TriggerUnit {
    /// Length of one unit in seconds; `None` for `never`.
    pub const fn seconds(self) -> Option<i64> {
        match self {
            TriggerUnit::Never => None,
            TriggerUnit::Minute => Some(60),
            TriggerUnit::Hour => Some(3_600),
            TriggerUnit::Day => Some(86_400),
        }
    }
}

/// The three rule families, resolved independently (D9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// `enterprise_all_devices` and `single_device`.
    Device,
    /// `enterprise_all_custom_consumers` and `single_custom_consumer`.
    CustomConsumer,
    /// `coze_user_id`, `coze_role`, `coze_workspace`, `coze_organization`.
    Enterprise,
}

impl EntityType {
    /// The family this scope belongs to.
    pub const fn family(self) -> Family {
        match self {
            EntityType::EnterpriseAllDevices | EntityType::SingleDevice => Family::Device,
            EntityType::EnterpriseAllCustomConsumers | EntityType::SingleCustomConsumer => {
                Family::CustomConsumer
            }
            _ => Family::Enterprise,
        }
    }

    /// True for the `enterprise_all_*` scopes, whose rules carry no `entity_id`.
    pub const fn is_all_scope(self) -> bool {
        matches!(
            self,
            EntityType::EnterpriseAllDevices | EntityType::EnterpriseAllCustomConsumers
        )
    }
}

/// The roles a `coze_role` rule can name (D4).
pub const COZE_ROLES: [&str; 3] = ["EnterpriseGuest", "EnterpriseMember", "EnterpriseAdmin"];

/// A string of up to `N` bytes stored inline, longer ones reference
/// counted: cloning never allocates, and short ones touch no shared count.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) enum SmallStr<const N: usize> {
    Inline { len: u8, bytes: [u8; N] },
    Shared(Arc<str>),
}

impl<const N: usize> SmallStr<N> {
    pub(crate) fn new(s: &str) -> Self {
        if s.len() <= N {
            let mut bytes = [0u8; N];
            bytes[..s.len()].copy_from_slice(s.as_bytes());
            SmallStr::Inline {
                len: s.len() as u8,
                bytes,
            }
        } else {
            SmallStr::Shared(Arc::from(s))
        }
    }

    #[inline]
    pub(crate) fn as_bytes(&self) -> &[u8] {
        match self {
            SmallStr::Inline { len, bytes } => &bytes[..usize::from(*len)],
            SmallStr::Shared(s) => s.as_bytes(),
        }
    }

    pub(crate) fn as_str(&self) -> &str {
        // Built from a `&str` in `new`, so always valid UTF-8.
        std::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }
}

/// Whether two byte strings are equal, compared eight bytes at a time
/// inline: ids are short (device serial numbers, consumer ids), and for them
/// the call into `memcmp` that slice equality makes costs more than the
/// comparison itself.
#[inline]
pub(crate) fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let (mut a, mut b) = (a, b);
    while let (Some((x, ra)), Some((y, rb))) =
        (a.split_first_chunk::<8>(), b.split_first_chunk::<8>())
    {
        if u64::from_ne_bytes(*x) != u64::from_ne_bytes(*y) {
            return false;
        }
        (a, b) = (ra, rb);
    }
    a.iter().zip(b).all(|(x, y)| x == y)
}

/// A benefit id: a non-empty string of at most 256 bytes.
///
/// Ids of up to 23 bytes (every id the platform or this engine issues: a
/// decimal `u64` has at most 20 digits) are stored inline, so cloning one —
/// every decision names a benefit — copies 32 bytes and touches no shared
/// reference count; longer ids are reference counted. Neither allocates on
/// clone.
#[derive(Clone)]
pub struct BenefitId {
    inline: InlineId,
    /// A longer id (then `inline` is unused); a thin pointer, so the id
    /// stays 32 bytes.
    shared: Option<Arc<String>>,
}

/// An id's bytes, zero-padded, and its length plus one (non-zero, so that an
/// `Option<BenefitId>` needs no extra word). Aligned and a multiple of eight
/// bytes: a copy is three aligned words, which the CPU forwards from the
/// stores that wrote them (an enum of the inline and shared forms, or an
/// odd-sized array, was copied through overlapping unaligned loads that
/// could not be, and every decision paid that stall).
#[derive(Clone, Copy)]
#[repr(C, align(8))]
struct InlineId {
    bytes: [u8; 23],
    len_plus_one: std::num::NonZeroU8,
}

impl BenefitId {
    /// Validates and wraps an id.
    ///
    /// # Errors
    /// `None` if `s` is empty or longer than [`MAX_ID_LEN`] bytes.
    pub fn new(s: &str) -> Option<BenefitId> {
        if s.is_empty() || s.len() > MAX_ID_LEN {
            return None;
        }
        let mut inline = InlineId {
            bytes: [0u8; 23],
            len_plus_one: std::num::NonZeroU8::MIN,
        };
        Some(match inline.bytes.get_mut(..s.len()) {
            Some(head) => {
                head.copy_from_slice(s.as_bytes());
                inline.len_plus_one = inline.len_plus_one.saturating_add(s.len() as u8);
                BenefitId {
                    inline,
                    shared: None,
                }
            }
            None => BenefitId {
                inline,
                shared: Some(Arc::new(s.to_owned())),
            },
        })
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        match &self.shared {
            Some(s) => s,
            // Built from a `&str` in `new`, so always valid UTF-8.
            None => {
                let len = usize::from(self.inline.len_plus_one.get() - 1);
                std::str::from_utf8(self.inline.bytes.get(..len).unwrap_or_default())
                    .unwrap_or_default()
            }
        }
    }
}

impl PartialEq for BenefitId {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for BenefitId {}

impl std::hash::Hash for BenefitId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl PartialOrd for BenefitId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for BenefitId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl fmt::Debug for BenefitId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BenefitId({:?})", self.as_str())
    }
}

impl fmt::Display for BenefitId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An entity id (device, consumer, user, role, workspace, organization):
/// non-empty, at most 256 bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntityId(Arc<str>);

impl EntityId {
    /// Validates and wraps an id.
    ///
    /// # Errors
    /// `None` if `s` is empty or longer than [`MAX_ID_LEN`] bytes.
    pub fn new(s: &str) -> Option<EntityId> {
        (!s.is_empty() && s.len() <= MAX_ID_LEN).then(|| EntityId(Arc::from(s)))
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EntityId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A validated reset period: `never`, or `unit × time` with
/// `1 ≤ time` and `time × unit ≤ 253402300799` seconds (D4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Reset {
    unit: TriggerUnit,
    time: u64,
}

impl Reset {
    /// The cumulative period (`never`, stored with `trigger_time` 1).
    pub const NEVER: Reset = Reset {
        unit: TriggerUnit::Never,
        time: 1,
    };

    /// Builds a period; with `never`, `time` is ignored and stored as 1 (D4).
    ///
    /// # Errors
    /// `None` if `time` is 0 or `time × unit` exceeds 253402300799 seconds.
    pub fn new(unit: TriggerUnit, time: i64) -> Option<Reset> {
        match unit.seconds() {
            None => Some(Reset::NEVER),
            Some(secs) => {
                if time < 1 || time.checked_mul(secs)? > FOREVER {
                    return None;
                }
                Some(Reset {
                    unit,
                    time: time as u64,
                })
            }
        }
    }

    /// The unit.
    pub const fn unit(self) -> TriggerUnit {
        self.unit
    }

    /// The number of units per window (1 for `never`).
    pub const fn time(self) -> u64 {
        self.time
    }

    /// True for a cumulative (never-resetting) rule.
    pub const fn is_cumulative(self) -> bool {
        matches!(self.unit, TriggerUnit::Never)
    }

    /// Window length in seconds for device/consumer rules; `None` for `never`.
    pub const fn window_seconds(self) -> Option<i64> {
        match self.unit.seconds() {
            // `time × unit ≤ FOREVER` was checked at construction.
            Some(s) => Some(s * self.time as i64),
            None => None,
        }
    }
}

/// A complete, validated benefit limitation record (the platform's `benefit_info`).
///
/// Serialises to exactly the platform's JSON object (D1, D3): integers as JSON
/// integers, `benefit_id` as a string, `entity_id` omitted for
/// `enterprise_all_*` scopes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BenefitInfo {
    pub(crate) benefit_id: BenefitId,
    pub(crate) entity_type: EntityType,
    pub(crate) entity_id: Option<EntityId>,
    pub(crate) benefit_type: BenefitType,
    pub(crate) active_mode: ActiveMode,
    pub(crate) started_at: i64,
    pub(crate) ended_at: i64,
    pub(crate) limit: i64,
    pub(crate) status: Status,
    pub(crate) reset: Reset,
}

impl BenefitInfo {
    /// The rule's id.
    pub fn benefit_id(&self) -> &BenefitId {
        &self.benefit_id
    }
    /// The scope type.
    pub fn entity_type(&self) -> EntityType {
        self.entity_type
    }
    /// The scoped entity; `None` for `enterprise_all_*`.
    pub fn entity_id(&self) -> Option<&EntityId> {
        self.entity_id.as_ref()
    }
    /// What is limited.
    pub fn benefit_type(&self) -> BenefitType {
        self.benefit_type
    }
    /// Always `absolute_time`.
    pub fn active_mode(&self) -> ActiveMode {
        self.active_mode
    }
    /// First second in effect (unix seconds, inclusive).
    pub fn started_at(&self) -> i64 {
        self.started_at
    }
    /// Last second in effect (unix seconds, inclusive, D10).
    pub fn ended_at(&self) -> i64 {
        self.ended_at
    }
    /// The limit in whole units (`0 ≤ limit ≤ 2^63−1`).
    pub fn limit(&self) -> i64 {
        self.limit
    }
    /// The status.
    pub fn status(&self) -> Status {
        self.status
    }
    /// The reset period.
    pub fn reset(&self) -> Reset {
        self.reset
    }
    /// `trigger_unit` as on the wire.
    pub fn trigger_unit(&self) -> TriggerUnit {
        self.reset.unit()
    }
    /// `trigger_time` as on the wire (1 for `never`).
    pub fn trigger_time(&self) -> u64 {
        self.reset.time()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_bytes_is_slice_equality() {
        // Every length up to past three words, equal and differing at each
        // position (the word loop and the tail), and lengths that differ.
        let a: Vec<u8> = (0..40u8).map(|i| i.wrapping_mul(37)).collect();
        for len in 0..a.len() {
            let x = &a[..len];
            assert!(same_bytes(x, &a[..len]));
            assert!(!same_bytes(x, &a[..len + 1]));
            for at in 0..len {
                let mut y = x.to_vec();
                y[at] ^= 0x40;
                assert!(!same_bytes(x, &y), "len {len}, differing at {at}");
            }
        }
    }

    #[test]
    fn reset_bounds() {
        assert_eq!(Reset::new(TriggerUnit::Never, 0), Some(Reset::NEVER));
        assert_eq!(Reset::new(TriggerUnit::Never, -7), Some(Reset::NEVER));
        assert_eq!(Reset::new(TriggerUnit::Day, 0), None);
        assert_eq!(Reset::new(TriggerUnit::Day, -1), None);
        let max_days = FOREVER / 86_400;
        assert!(Reset::new(TriggerUnit::Day, max_days).is_some());
        assert_eq!(Reset::new(TriggerUnit::Day, max_days + 1), None);
        assert_eq!(Reset::new(TriggerUnit::Minute, i64::MAX), None);
        assert_eq!(
            Reset::new(TriggerUnit::Minute, FOREVER / 60)
                .unwrap()
                .window_seconds(),
            Some(FOREVER / 60 * 60)
        );
    }

    #[test]
    fn enum_strings_round_trip() {
        for e in EntityType::ALL {
            assert_eq!(EntityType::from_wire(e.as_str()), Some(*e));
        }
        assert_eq!(EntityType::from_wire("Single_Device"), None);
        assert_eq!(Status::expected(), "valid, frozen, cancel");
    }

    #[test]
    fn benefit_ids_inline_short_and_share_long() {
        for len in [1, 20, 22, 23, 24, 30, 256] {
            let s = "7".repeat(len);
            let id = BenefitId::new(&s).unwrap();
            assert_eq!(id.as_str(), s);
            assert_eq!(id.clone(), id);
            assert_eq!(id.shared.is_none(), len <= 23);
        }
        let x = BenefitId::new("7484813285613486107").unwrap();
        assert_eq!(x, BenefitId::new("7484813285613486107").unwrap());
        assert_ne!(x, BenefitId::new("748481328561348610").unwrap());
        assert_eq!(std::mem::size_of::<Option<BenefitId>>(), 32);
        let (a, b) = (
            BenefitId::new("b").unwrap(),
            BenefitId::new(&"a".repeat(40)).unwrap(),
        );
        assert!(b < a);
        assert_eq!(format!("{a:?}"), "BenefitId(\"b\")");
        assert_eq!(std::mem::size_of::<BenefitId>(), 32);
    }

    #[test]
    fn ids_are_length_limited() {
        assert!(BenefitId::new("").is_none());
        assert!(EntityId::new(&"a".repeat(256)).is_some());
        assert!(EntityId::new(&"a".repeat(257)).is_none());
    }
}
