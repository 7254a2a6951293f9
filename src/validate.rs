//! The boundary: JSON bytes → wire structs → validated domain types (D1, D2, D4).
//!
//! Every failure is an [`ApiError`] with code 4000 whose message names the
//! offending field. Nothing here touches engine state.

use serde::de::DeserializeOwned;

use crate::errors::{truncate_at, truncate_for_message, ApiError};
use crate::types::{
    ActiveMode, BenefitId, BenefitInfo, BenefitType, EntityId, EntityType, Family, Reset, Status,
    TriggerUnit, COZE_ROLES, FOREVER, MAX_ID_LEN,
};
use crate::wire::{BenefitInfoWire, CreateBody, Int64, ListQuery, Object, UpdateBody};

/// Largest accepted create / update / list body, in bytes.
pub const MAX_BODY_BYTES: usize = 1 << 20;
/// Largest accepted import body (a whole list response), in bytes.
pub const MAX_IMPORT_BYTES: usize = 64 << 20;

/// Parses a JSON object into `T`, naming the field of any type error.
/// The `data` of a platform response (the whole value when it has no
/// envelope) and the prefix that names its fields in errors (`data.` or
/// nothing); the platform's own error if the envelope's `code` is not 0.
pub(crate) fn response_data(
    response: &[u8],
) -> Result<(serde_json::Value, &'static str), ApiError> {
    let v: serde_json::Value = parse_json(response, MAX_IMPORT_BYTES)?;
    // A `Value` keeps the last of two equal keys; a body is refused for
    // them (D2), and so is a response, whose records are bodies too.
    no_duplicate_keys(response)?;
    let Some(code) = v.get("code") else {
        return Ok((v, ""));
    };
    // An integer field: a JSON integer or a decimal string of one (D1).
    match serde_json::from_value::<Int64>(code.clone()).map(|c| u64::try_from(c.0)) {
        Ok(Ok(0)) => Ok((v.get("data").cloned().unwrap_or_default(), "data.")),
        Ok(Ok(code)) => {
            let msg = v.get("msg").and_then(|m| m.as_str()).unwrap_or_default();
            Err(ApiError::from_platform(code, msg))
        }
        _ => Err(ApiError::invalid("code", "expected a non-negative integer")),
    }
}

/// `Err` naming the first key that appears twice in one object of `json`
/// (already parsed once, so well-formed), with its path
/// (`data.benefit_infos[1].limit`).
fn no_duplicate_keys(json: &[u8]) -> Result<(), ApiError> {
    use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

    /// Any JSON value, read only to find duplicate keys.
    struct Unique;
    /// The value of a key seen twice: refused, so the error's path ends
    /// at that key.
    struct Again;

    impl<'de> Deserialize<'de> for Again {
        fn deserialize<D: Deserializer<'de>>(_: D) -> Result<Again, D::Error> {
            Err(de::Error::custom("duplicate field"))
        }
    }

    impl<'de> Deserialize<'de> for Unique {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Unique, D::Error> {
            d.deserialize_any(UniqueVisitor)
        }
    }

    struct UniqueVisitor;
    impl<'de> Visitor<'de> for UniqueVisitor {
        type Value = Unique;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("any JSON value")
        }
        fn visit_bool<E>(self, _: bool) -> Result<Unique, E> {
            Ok(Unique)
        }
        fn visit_i64<E>(self, _: i64) -> Result<Unique, E> {
            Ok(Unique)
        }
        fn visit_u64<E>(self, _: u64) -> Result<Unique, E> {
            Ok(Unique)
        }
        fn visit_f64<E>(self, _: f64) -> Result<Unique, E> {
            Ok(Unique)
        }
        fn visit_str<E>(self, _: &str) -> Result<Unique, E> {
            Ok(Unique)
        }
        fn visit_unit<E>(self) -> Result<Unique, E> {
            Ok(Unique)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Unique, A::Error> {
            while seq.next_element::<Unique>()?.is_some() {}
            Ok(Unique)
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Unique, A::Error> {
            let mut keys = std::collections::HashSet::new();
            while let Some(k) = map.next_key::<String>()? {
                if keys.contains(&k) {
                    map.next_value::<Again>()?;
                }
                map.next_value::<Unique>()?;
                keys.insert(k);
            }
            Ok(Unique)
        }
    }

    let mut de = serde_json::Deserializer::from_slice(json);
    serde_path_to_error::deserialize::<_, Unique>(&mut de)
        .map(|_| ())
        .map_err(|e| ApiError::invalid(&e.path().to_string(), "duplicate key"))
}

pub(crate) fn parse_json<T: DeserializeOwned>(body: &[u8], max: usize) -> Result<T, ApiError> {
    if body.len() > max {
        return Err(ApiError::invalid(
            "body",
            format_args!("too large ({} bytes, at most {max})", body.len()),
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let value: Object<T> = serde_path_to_error::deserialize(&mut de)
        .map_err(|e| deser_error(&e.path().to_string(), &e.inner().to_string()))?;
    de.end().map_err(|e| ApiError::invalid("body", e))?;
    Ok(value.0)
}

/// Parses a URL query string (`a=1&b=x`) into `T`, naming the field of any type error.
pub(crate) fn parse_query<T: DeserializeOwned>(query: &[u8]) -> Result<T, ApiError> {
    if query.len() > MAX_BODY_BYTES {
        return Err(ApiError::invalid("query", "too large"));
    }
    let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query));
    serde_path_to_error::deserialize(de)
        .map_err(|e| deser_error(&e.path().to_string(), &e.inner().to_string()))
}

fn deser_error(path: &str, inner: &str) -> ApiError {
    let field = if path.is_empty() || path == "." || path == "?" {
        backticked_after(inner, "duplicate field `")
            .or_else(|| backticked_after(inner, "missing field `"))
            .unwrap_or("body")
    } else {
        path
    };
    // Parser messages (which may quote input) are cut to 300 bytes.
    ApiError::invalid(field, truncate_at(inner, 300))
}

fn backticked_after<'a>(msg: &'a str, marker: &str) -> Option<&'a str> {
    let start = msg.find(marker)? + marker.len();
    let len = msg[start..].find('`')?;
    Some(&msg[start..start + len])
}

/// A validated rule without its id (what create produces before an id is assigned).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Draft {
    pub entity_type: EntityType,
    pub entity_id: Option<EntityId>,
    pub benefit_type: BenefitType,
    pub active_mode: ActiveMode,
    pub started_at: i64,
    pub ended_at: i64,
    pub limit: i64,
    pub status: Status,
    pub reset: Reset,
}

impl Draft {
    pub fn with_id(self, benefit_id: BenefitId) -> BenefitInfo {
        BenefitInfo {
            benefit_id,
            entity_type: self.entity_type,
            entity_id: self.entity_id,
            benefit_type: self.benefit_type,
            active_mode: self.active_mode,
            started_at: self.started_at,
            ended_at: self.ended_at,
            limit: self.limit,
            status: self.status,
            reset: self.reset,
        }
    }
}

/// Raw field values from any source, with the prefix used to name them.
struct Raw<'a> {
    entity_prefix: &'a str,
    info_prefix: &'a str,
    entity_type: Option<&'a str>,
    entity_id: Option<&'a str>,
    benefit_type: Option<&'a str>,
    active_mode: Option<&'a str>,
    started_at: Option<i64>,
    ended_at: Option<i64>,
    limit: Option<i64>,
    status: Option<&'a str>,
    trigger_unit: Option<&'a str>,
    trigger_time: Option<i64>,
}

fn name(prefix: &str, field: &str) -> String {
    format!("{prefix}{field}")
}

fn required<T>(v: Option<T>, prefix: &str, field: &str) -> Result<T, ApiError> {
    v.ok_or_else(|| ApiError::invalid(&name(prefix, field), "is required"))
}

fn parse_enum<T>(
    v: &str,
    prefix: &str,
    field: &str,
    from: fn(&str) -> Option<T>,
    expected: fn() -> String,
) -> Result<T, ApiError> {
    from(v).ok_or_else(|| {
        ApiError::invalid(
            &name(prefix, field),
            format_args!(
                "unknown value {:?}; expected one of: {}",
                truncate_for_message(v),
                expected()
            ),
        )
    })
}

fn timestamp(v: i64, prefix: &str, field: &str) -> Result<i64, ApiError> {
    if (0..=FOREVER).contains(&v) {
        Ok(v)
    } else {
        Err(ApiError::invalid(
            &name(prefix, field),
            format_args!("{v} is outside 0..={FOREVER} (unix seconds)"),
        ))
    }
}

fn build(r: Raw<'_>) -> Result<Draft, ApiError> {
    let (ep, ip) = (r.entity_prefix, r.info_prefix);
    let entity_type = parse_enum(
        required(r.entity_type, ep, "entity_type")?,
        ep,
        "entity_type",
        EntityType::from_wire,
        EntityType::expected,
    )?;
    let entity_id = if entity_type.is_all_scope() {
        None // D4: ignored and stored as absent
    } else {
        let field = name(ep, "entity_id");
        let id = r.entity_id.ok_or_else(|| {
            ApiError::invalid(
                &field,
                format_args!("is required for entity_type {entity_type}"),
            )
        })?;
        if id.is_empty() {
            return Err(ApiError::invalid(&field, "must not be empty"));
        }
        if id.len() > MAX_ID_LEN {
            return Err(ApiError::invalid(
                &field,
                format_args!("is {} bytes long, at most {MAX_ID_LEN}", id.len()),
            ));
        }
        if entity_type == EntityType::CozeRole && !COZE_ROLES.contains(&id) {
            return Err(ApiError::invalid(
                &field,
                format_args!(
                    "unknown role {:?}; expected one of: {}",
                    truncate_for_message(id),
                    COZE_ROLES.join(", ")
                ),
            ));
        }
        EntityId::new(id)
    };
    let benefit_type = parse_enum(
        required(r.benefit_type, ip, "benefit_type")?,
        ip,
        "benefit_type",
        BenefitType::from_wire,
        BenefitType::expected,
    )?;
    if entity_type.family() == Family::Enterprise && benefit_type != BenefitType::ResourcePoint {
        return Err(ApiError::invalid(
            &name(ip, "benefit_type"),
            format_args!("entity_type {entity_type} accepts only resource_point"),
        ));
    }
    let active_mode = parse_enum(
        required(r.active_mode, ip, "active_mode")?,
        ip,
        "active_mode",
        ActiveMode::from_wire,
        ActiveMode::expected,
    )?;
    let started_at = timestamp(required(r.started_at, ip, "started_at")?, ip, "started_at")?;
    let ended_at = timestamp(required(r.ended_at, ip, "ended_at")?, ip, "ended_at")?;
    if ended_at < started_at {
        return Err(ApiError::invalid(
            &name(ip, "ended_at"),
            format_args!("{ended_at} is earlier than `{ip}started_at` {started_at}"),
        ));
    }
    let limit = required(r.limit, ip, "limit")?;
    if limit < 0 {
        return Err(ApiError::invalid(
            &name(ip, "limit"),
            format_args!("{limit} is negative"),
        ));
    }
    let status = match r.status {
        None => Status::Valid,
        Some(s) => parse_enum(s, ip, "status", Status::from_wire, Status::expected)?,
    };
    let unit = match r.trigger_unit {
        None => TriggerUnit::Never,
        Some(s) => parse_enum(
            s,
            ip,
            "trigger_unit",
            TriggerUnit::from_wire,
            TriggerUnit::expected,
        )?,
    };
    let time = r.trigger_time.unwrap_or(1);
    let reset = Reset::new(unit, time).ok_or_else(|| {
        ApiError::invalid(
            &name(ip, "trigger_time"),
            format_args!(
                "{time} is out of range: at least 1, and trigger_time × {unit} at most {FOREVER} seconds"
            ),
        )
    })?;
    Ok(Draft {
        entity_type,
        entity_id,
        benefit_type,
        active_mode,
        started_at,
        ended_at,
        limit,
        status,
        reset,
    })
}

fn int(v: Option<Int64>) -> Option<i64> {
    v.map(|x| x.0)
}

/// Validates a create body (D4).
pub(crate) fn create(body: &CreateBody) -> Result<Draft, ApiError> {
    let info = body
        .benefit_info
        .as_ref()
        .ok_or_else(|| ApiError::invalid("benefit_info", "is required"))?;
    build(Raw {
        entity_prefix: "",
        info_prefix: "benefit_info.",
        entity_type: body.entity_type.as_deref(),
        entity_id: body.entity_id.as_deref(),
        benefit_type: info.benefit_type.as_deref(),
        active_mode: info.active_mode.as_deref(),
        started_at: int(info.started_at),
        ended_at: int(info.ended_at),
        limit: int(info.limit),
        status: info.status.as_deref(),
        trigger_unit: info.trigger_unit.as_deref(),
        trigger_time: int(info.trigger_time),
    })
}

fn benefit_id(v: Option<&str>, field: &str) -> Result<BenefitId, ApiError> {
    let s = required(v, "", field)?;
    BenefitId::new(s).ok_or_else(|| {
        ApiError::invalid(
            field,
            format_args!("must be 1..={MAX_ID_LEN} bytes, got {}", s.len()),
        )
    })
}

/// Reads the wire record at `value`, named `at` in errors (e.g.
/// `data.benefit_infos[3]`): it must be a JSON object, and a type error names
/// the field inside it (`data.benefit_infos[3].limit`).
pub(crate) fn wire_record(value: serde_json::Value, at: &str) -> Result<BenefitInfoWire, ApiError> {
    let w: Object<BenefitInfoWire> = serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let field = if path.is_empty() || path == "." || path == "?" {
            at.to_owned()
        } else {
            format!("{at}.{path}")
        };
        deser_error(&field, &e.inner().to_string())
    })?;
    Ok(w.0)
}

/// The list of wire records at `value` (a JSON array of objects), named
/// `at` in errors (e.g. `data.benefit_infos`); each item's errors name its
/// index and field.
pub(crate) fn wire_records(
    value: serde_json::Value,
    at: &str,
) -> Result<Vec<BenefitInfoWire>, ApiError> {
    let serde_json::Value::Array(items) = value else {
        return Err(ApiError::invalid(at, "expected an array of records"));
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, v)| wire_record(v, &format!("{at}[{i}]")))
        .collect()
}

/// Validates a full record (import, D4, D7). `prefix` names the record's
/// position, e.g. `"benefit_infos[3]."`.
pub(crate) fn record(w: &BenefitInfoWire, prefix: &str) -> Result<BenefitInfo, ApiError> {
    let id = benefit_id(w.benefit_id.as_deref(), &name(prefix, "benefit_id"))?;
    let draft = build(Raw {
        entity_prefix: prefix,
        info_prefix: prefix,
        entity_type: w.entity_type.as_deref(),
        entity_id: w.entity_id.as_deref(),
        benefit_type: w.benefit_type.as_deref(),
        active_mode: w.active_mode.as_deref(),
        started_at: int(w.started_at),
        ended_at: int(w.ended_at),
        limit: int(w.limit),
        status: w.status.as_deref(),
        trigger_unit: w.trigger_unit.as_deref(),
        trigger_time: int(w.trigger_time),
    })?;
    Ok(draft.with_id(id))
}

/// Merges a PUT body into the current record and validates the result (D2, D4).
pub(crate) fn update(
    current: &BenefitInfo,
    path_id: &str,
    body: &UpdateBody,
) -> Result<BenefitInfo, ApiError> {
    if let Some(id) = body.benefit_id.as_deref() {
        if id != path_id {
            return Err(ApiError::invalid(
                "benefit_id",
                format_args!(
                    "{:?} in the body differs from {:?} in the path",
                    truncate_for_message(id),
                    truncate_for_message(path_id)
                ),
            ));
        }
    }
    // D19: typed clients (the official Java SDK) send every primitive field;
    // `ended_at: 0` (a window ending at the epoch) means "not sent", and so
    // does a `started_at: 0` beside it. A lone `started_at: 0` is a value,
    // and so is `limit: 0` (it blocks).
    let unsent_window = int(body.ended_at) == Some(0);
    let sent = |v: Option<Int64>| int(v).filter(|_| !unsent_window || int(v) != Some(0));
    let draft = build(Raw {
        entity_prefix: "",
        info_prefix: "",
        entity_type: Some(current.entity_type.as_str()),
        entity_id: current.entity_id.as_ref().map(EntityId::as_str),
        benefit_type: Some(current.benefit_type.as_str()),
        active_mode: Some(
            body.active_mode
                .as_deref()
                .unwrap_or(current.active_mode.as_str()),
        ),
        started_at: Some(sent(body.started_at).unwrap_or(current.started_at)),
        ended_at: Some(sent(body.ended_at).unwrap_or(current.ended_at)),
        limit: Some(int(body.limit).unwrap_or(current.limit)),
        status: Some(body.status.as_deref().unwrap_or(current.status.as_str())),
        trigger_unit: Some(
            body.trigger_unit
                .as_deref()
                .unwrap_or(current.reset.unit().as_str()),
        ),
        // A stored `never` rule carries 1, which is also the right default when
        // the body switches it to a periodic unit without a trigger_time.
        trigger_time: Some(int(body.trigger_time).unwrap_or(current.reset.time() as i64)),
    })?;
    Ok(draft.with_id(current.benefit_id.clone()))
}

/// A validated list query (F10, D8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Query {
    pub entity_type: EntityType,
    pub entity_id: Option<String>,
    pub benefit_type: BenefitType,
    pub status: Option<Status>,
    pub page_token: String,
    pub page_size: usize,
}

/// Default `page_size` (F10).
pub const DEFAULT_PAGE_SIZE: usize = 20;
/// Largest accepted `page_size` (F10).
pub const MAX_PAGE_SIZE: usize = 200;

/// Validates a list query (F10).
pub(crate) fn list_query(q: &ListQuery) -> Result<Query, ApiError> {
    let entity_type = parse_enum(
        required(q.entity_type.as_deref(), "", "entity_type")?,
        "",
        "entity_type",
        EntityType::from_wire,
        EntityType::expected,
    )?;
    let benefit_type = parse_enum(
        required(q.benefit_type.as_deref(), "", "benefit_type")?,
        "",
        "benefit_type",
        BenefitType::from_wire,
        BenefitType::expected,
    )?;
    let entity_id = match q.entity_id.as_deref() {
        _ if entity_type.is_all_scope() => None,
        None | Some("") => None,
        Some(id) if id.len() > MAX_ID_LEN => {
            return Err(ApiError::invalid(
                "entity_id",
                format_args!("is {} bytes long, at most {MAX_ID_LEN}", id.len()),
            ))
        }
        Some(id) => Some(id.to_owned()),
    };
    let status = match q.status.as_deref() {
        None | Some("") => None,
        Some(s) => Some(parse_enum(
            s,
            "",
            "status",
            Status::from_wire,
            Status::expected,
        )?),
    };
    let page_size = match q.page_size {
        None => DEFAULT_PAGE_SIZE,
        Some(Int64(n)) if (1..=MAX_PAGE_SIZE as i64).contains(&n) => n as usize,
        Some(Int64(n)) => {
            return Err(ApiError::invalid(
                "page_size",
                format_args!("{n} is outside 1..={MAX_PAGE_SIZE}"),
            ))
        }
    };
    Ok(Query {
        entity_type,
        entity_id,
        benefit_type,
        status,
        page_token: q.page_token.clone().unwrap_or_default(),
        page_size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deser_error_names_duplicate_field() {
        let e = parse_json::<UpdateBody>(br#"{"limit":1,"limit":2}"#, MAX_BODY_BYTES).unwrap_err();
        assert!(
            e.msg().starts_with("invalid parameter `limit`"),
            "{}",
            e.msg()
        );
    }

    #[test]
    fn deser_error_names_nested_field() {
        let e = parse_json::<CreateBody>(br#"{"benefit_info":{"limit":1.5}}"#, MAX_BODY_BYTES)
            .unwrap_err();
        assert!(
            e.msg()
                .starts_with("invalid parameter `benefit_info.limit`"),
            "{}",
            e.msg()
        );
    }

    #[test]
    fn trailing_garbage_is_rejected() {
        let e = parse_json::<UpdateBody>(br#"{} x"#, MAX_BODY_BYTES).unwrap_err();
        assert!(
            e.msg().starts_with("invalid parameter `body`"),
            "{}",
            e.msg()
        );
    }
}
