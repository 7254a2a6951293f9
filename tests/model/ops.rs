//! The operation language shared by the model-based proptest
//! (`tests/model_based.rs`) and the `ops` fuzz target (`fuzz/`).
//!
//! Operations are small plain data, so proptest strategies and
//! `arbitrary::Arbitrary` both generate them; `values` turns one into the
//! concrete values (strings, unix seconds) that the engine and the reference
//! model receive.

pub const ENTITY_TYPES: [&str; 8] = [
    "enterprise_all_devices",
    "single_device",
    "enterprise_all_custom_consumers",
    "single_custom_consumer",
    "coze_user_id",
    "coze_role",
    "coze_workspace",
    "coze_organization",
];
pub const BENEFIT_TYPES: [&str; 3] = [
    "resource_point",
    "voice_unified_duration_system",
    "voice_unified_duration_custom",
];
pub const UNITS: [&str; 4] = ["never", "minute", "hour", "day"];
pub const STATUSES: [&str; 3] = ["valid", "frozen", "cancel"];
pub const DEVICES: [&str; 3] = ["d0", "d1", "d2"];
pub const CONSUMERS: [&str; 2] = ["c0", "c1"];
pub const USERS: [&str; 2] = ["u0", "u1"];
pub const ROLES: [&str; 3] = ["EnterpriseGuest", "EnterpriseMember", "EnterpriseAdmin"];
pub const WORKSPACES: [&str; 2] = ["w0", "w1"];
pub const ORGS: [&str; 1] = ["o0"];
pub const FOREVER: i64 = 253_402_300_799;

/// A rule as generated.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(fuzzing, derive(arbitrary::Arbitrary))]
pub struct Spec {
    pub entity_type: u8,
    pub entity: u8,
    pub benefit_type: u8,
    pub limit: u16,
    pub unit: u8,
    pub time: u8,
    /// `started_at` in hours relative to the run's start.
    pub start_hours: i16,
    /// Length of the activation window in hours; `None` = forever.
    pub len_hours: Option<u16>,
    pub status: u8,
}

/// A PUT body as generated: absent fields are kept.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[cfg_attr(fuzzing, derive(arbitrary::Arbitrary))]
pub struct Patch {
    pub limit: Option<u16>,
    pub unit: Option<u8>,
    pub time: Option<u8>,
    pub start_hours: Option<i16>,
    pub len_hours: Option<Option<u16>>,
    pub status: Option<u8>,
}

/// How far time moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(fuzzing, derive(arbitrary::Arbitrary))]
pub enum Step {
    Seconds(u16),
    Hours(u8),
    Days(u8),
    /// Back by `n % 3000` minutes (up to 50 hours): a gateway whose clock
    /// went back, or a request stamped late.
    Back(u16),
}

impl Step {
    pub fn seconds(self) -> i64 {
        match self {
            Step::Seconds(s) => i64::from(s),
            Step::Hours(h) => i64::from(h) * 3_600,
            Step::Days(d) => i64::from(d % 40) * 86_400,
            Step::Back(m) => -i64::from(m % 3_000) * 60,
        }
    }
}

/// One operation.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(fuzzing, derive(arbitrary::Arbitrary))]
pub enum Op {
    Create(Spec),
    /// Import (upsert) a platform record with id `p{id % 4}`.
    Import {
        id: u8,
        spec: Spec,
    },
    Update {
        target: u8,
        patch: Patch,
    },
    Freeze(u8),
    Unfreeze(u8),
    Cancel(u8),
    /// `subject` picks a subject (modulo their number); its top bit picks
    /// the path on the engine side: by subject (0) or through the subject's
    /// long-lived [`benefit_quota::SubjectHandle`] (1), which lives across
    /// every update and clock step of the run; for a handle `TryConsume`, the
    /// next bit sends it through `try_consume_many_handles` as a batch of one.
    Check {
        subject: u8,
    },
    TryConsume {
        subject: u8,
        benefit_type: u8,
        micros: u32,
    },
    Record {
        subject: u8,
        benefit_type: u8,
        micros: u32,
    },
    Advance(Step),
}

/// A subject as plain ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SubjectIds {
    pub device: Option<&'static str>,
    pub consumer: Option<&'static str>,
    pub user: Option<&'static str>,
    pub role: Option<&'static str>,
    pub workspace: Option<&'static str>,
    pub org: Option<&'static str>,
}

/// The fixed population of subjects operations pick from.
pub fn subjects() -> Vec<SubjectIds> {
    let mut v = Vec::new();
    for d in DEVICES {
        v.push(SubjectIds {
            device: Some(d),
            ..SubjectIds::default()
        });
    }
    for c in CONSUMERS {
        v.push(SubjectIds {
            consumer: Some(c),
            ..SubjectIds::default()
        });
    }
    v.push(SubjectIds {
        device: Some("d0"),
        consumer: Some("c0"),
        ..SubjectIds::default()
    });
    v.push(SubjectIds {
        user: Some("u0"),
        role: Some("EnterpriseMember"),
        workspace: Some("w0"),
        org: Some("o0"),
        ..SubjectIds::default()
    });
    v.push(SubjectIds {
        user: Some("u1"),
        role: Some("EnterpriseGuest"),
        workspace: Some("w0"),
        ..SubjectIds::default()
    });
    v.push(SubjectIds {
        device: Some("d1"),
        user: Some("u1"),
        role: Some("EnterpriseAdmin"),
        workspace: Some("w1"),
        org: Some("o0"),
        ..SubjectIds::default()
    });
    v
}

/// Concrete values of a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Values {
    pub entity_type: &'static str,
    pub entity_id: Option<&'static str>,
    pub benefit_type: &'static str,
    pub limit: i64,
    pub unit: &'static str,
    pub time: i64,
    pub started_at: i64,
    pub ended_at: i64,
    pub status: &'static str,
}

fn pick<T: Copy>(xs: &[T], i: u8) -> T {
    xs[usize::from(i) % xs.len()]
}

pub fn hours_to_time(base: i64, h: i16) -> i64 {
    (base + i64::from(h) * 3_600).clamp(0, FOREVER)
}

pub fn end_time(started_at: i64, len: Option<u16>) -> i64 {
    match len {
        None => FOREVER,
        Some(l) => (started_at + i64::from(l) * 3_600).min(FOREVER),
    }
}

impl Spec {
    pub fn values(&self, base: i64) -> Values {
        let entity_type = pick(&ENTITY_TYPES, self.entity_type);
        let entity_id = match entity_type {
            "single_device" => Some(pick(&DEVICES, self.entity)),
            "single_custom_consumer" => Some(pick(&CONSUMERS, self.entity)),
            "coze_user_id" => Some(pick(&USERS, self.entity)),
            "coze_role" => Some(pick(&ROLES, self.entity)),
            "coze_workspace" => Some(pick(&WORKSPACES, self.entity)),
            "coze_organization" => Some(pick(&ORGS, self.entity)),
            _ => None,
        };
        let started_at = hours_to_time(base, self.start_hours);
        Values {
            entity_type,
            entity_id,
            benefit_type: pick(&BENEFIT_TYPES, self.benefit_type),
            limit: limit_of(self.limit),
            unit: pick(&UNITS, self.unit),
            time: i64::from(self.time % 5) + 1,
            started_at,
            ended_at: end_time(started_at, self.len_hours),
            // cancelled rules are rarer at creation
            status: pick(
                &["valid", "valid", "valid", "frozen", "cancel"],
                self.status,
            ),
        }
    }
}

/// JSON helpers so both sides of a comparison go through the wire.
pub fn create_body(v: &Values) -> String {
    let id = match v.entity_id {
        Some(id) => format!(r#""entity_id":"{id}","#),
        None => String::new(),
    };
    format!(
        r#"{{"entity_type":"{}",{id}"benefit_info":{{"benefit_type":"{}","active_mode":"absolute_time","started_at":{},"ended_at":{},"limit":{},"status":"{}","trigger_unit":"{}","trigger_time":{}}}}}"#,
        v.entity_type, v.benefit_type, v.started_at, v.ended_at, v.limit, v.status, v.unit, v.time
    )
}

pub fn record_body(benefit_id: &str, v: &Values) -> String {
    let id = match v.entity_id {
        Some(id) => format!(r#""entity_id":"{id}","#),
        None => String::new(),
    };
    format!(
        r#"{{"benefit_id":"{benefit_id}","entity_type":"{}",{id}"benefit_type":"{}","active_mode":"absolute_time","started_at":{},"ended_at":{},"limit":"{}","status":"{}","trigger_unit":"{}","trigger_time":{}}}"#,
        v.entity_type, v.benefit_type, v.started_at, v.ended_at, v.limit, v.status, v.unit, v.time
    )
}

/// Concrete values of a patch: each `Some` field is sent.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PatchValues {
    pub limit: Option<i64>,
    pub unit: Option<&'static str>,
    pub time: Option<i64>,
    pub started_at: Option<i64>,
    pub ended_at: Option<i64>,
    pub status: Option<&'static str>,
}

impl Patch {
    pub fn values(&self, base: i64) -> PatchValues {
        let started_at = self.start_hours.map(|h| hours_to_time(base, h));
        PatchValues {
            limit: self.limit.map(limit_of),
            unit: self.unit.map(|u| pick(&UNITS, u)),
            time: self.time.map(|t| i64::from(t % 5) + 1),
            started_at,
            ended_at: self
                .len_hours
                .map(|l| end_time(started_at.unwrap_or(base), l)),
            status: self.status.map(|s| pick(&STATUSES, s)),
        }
    }
}

pub fn update_body(p: &PatchValues) -> String {
    let mut parts = Vec::new();
    if let Some(x) = p.limit {
        parts.push(format!(r#""limit":{x}"#));
    }
    if let Some(x) = p.unit {
        parts.push(format!(r#""trigger_unit":"{x}""#));
    }
    if let Some(x) = p.time {
        parts.push(format!(r#""trigger_time":"{x}""#));
    }
    if let Some(x) = p.started_at {
        parts.push(format!(r#""started_at":{x}"#));
    }
    if let Some(x) = p.ended_at {
        parts.push(format!(r#""ended_at":{x}"#));
    }
    if let Some(x) = p.status {
        parts.push(format!(r#""status":"{x}""#));
    }
    format!("{{{}}}", parts.join(","))
}

pub fn benefit_type_of(i: u8) -> &'static str {
    pick(&BENEFIT_TYPES, i)
}

/// Limits: as drawn, except that the top of the range stands for the
/// limits around the counters' range (D14): the largest that fits in
/// micro-units, the smallest that saturates, and `i64::MAX`.
pub fn limit_of(l: u16) -> i64 {
    /// `u64::MAX` micro-units, in whole units (rounded down).
    const FITS: i64 = (u64::MAX / 1_000_000) as i64;
    match l {
        65_000 => FITS,
        65_001 => FITS + 1,
        65_002.. => i64::MAX,
        _ => i64::from(l),
    }
}

/// Amounts: mostly whole units, some fractional; the top of the range
/// stands for amounts within 256 micro-units of the counters' range (D14).
pub fn amount_micros(m: u32) -> u64 {
    if m >= 0xFFFF_FF00 {
        u64::MAX - u64::from(!m)
    } else if m.is_multiple_of(3) {
        u64::from(m % 7_000) * 1_000
    } else {
        u64::from(m % 40) * 1_000_000
    }
}
