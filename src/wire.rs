//! Plain serde mirrors of the platform's JSON (F9–F12, D1–D3).
//!
//! Input structs keep every field optional and every enum as a string, so that
//! *any* syntactically valid body deserialises and the validation layer can
//! reject bad values with a message naming the field. Integers use [`Int64`],
//! which accepts a JSON integer or a decimal string of one (D1).
//! Unknown fields are ignored; duplicate fields are rejected.

use serde::de::{self, Deserializer, Visitor};
use serde::ser::{SerializeStruct, Serializer};
use serde::{Deserialize, Serialize};
use std::fmt;

use crate::types::BenefitInfo;

/// A platform `Long`: a JSON integer or a decimal string of one (D1).
///
/// Floats, booleans, and values outside `i64` are rejected during
/// deserialisation. Serialises as a JSON integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Int64(pub i64);

impl Serialize for Int64 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i64(self.0)
    }
}

impl<'de> Deserialize<'de> for Int64 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Int64;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer or a decimal string of one, within the signed 64-bit range")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Int64, E> {
                Ok(Int64(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Int64, E> {
                i64::try_from(v)
                    .map(Int64)
                    .map_err(|_| E::custom("integer out of the signed 64-bit range"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Int64, E> {
                parse_decimal_i64(v).map(Int64).ok_or_else(|| {
                    E::custom(format_args!(
                        "expected an integer or a decimal string of one, got the string {:?}",
                        crate::errors::truncate_for_message(v)
                    ))
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// Parses `-?[0-9]+` into an `i64`; no `+`, spaces, or exponent.
pub(crate) fn parse_decimal_i64(s: &str) -> Option<i64> {
    let (neg, digits) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // i128 accumulation cannot overflow before we bail out at 20 digits of magnitude.
    let trimmed = digits.trim_start_matches('0');
    if trimmed.len() > 19 {
        return None;
    }
    let mut v: i128 = 0;
    for b in trimmed.bytes() {
        v = v * 10 + i128::from(b - b'0');
    }
    if neg {
        v = -v;
    }
    i64::try_from(v).ok()
}

/// The platform's three endpoints (F9–F11, F14).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Endpoint {
    /// `POST /v1/commerce/benefit/limitations`
    Create,
    /// `GET /v1/commerce/benefit/limitations`
    List,
    /// `PUT /v1/commerce/benefit/limitations/:benefit_id`
    Update,
}

impl Endpoint {
    /// The HTTP method.
    pub const fn method(self) -> &'static str {
        match self {
            Endpoint::Create => "POST",
            Endpoint::List => "GET",
            Endpoint::Update => "PUT",
        }
    }

    /// The path template, in the platform's notation (`:benefit_id`; axum
    /// 0.8 routes spell it `{benefit_id}`, as the admin routes of feature
    /// `axum` do).
    pub const fn path(self) -> &'static str {
        match self {
            Endpoint::Create | Endpoint::List => "/v1/commerce/benefit/limitations",
            Endpoint::Update => "/v1/commerce/benefit/limitations/:benefit_id",
        }
    }

    /// The permission the access token must carry (F14). The engine checks
    /// no tokens; the admin routes (feature `axum`) check their own bearer
    /// tokens, write or read-only, not these permissions.
    pub const fn permission(self) -> &'static str {
        match self {
            Endpoint::Create => "createBenefitLimitation",
            Endpoint::List => "listBenefitLimitation",
            Endpoint::Update => "updateBenefitLimitation",
        }
    }
}

/// Deserialises `T` only from a JSON object.
///
/// serde's derived struct impls also accept a JSON array (fields by
/// position); the platform's bodies are objects, so arrays are refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object<T>(pub T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Object<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<Object<T>, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map)).map(Object)
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// `Option<T>` that, when present and not `null`, must be a JSON object.
fn object_opt<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    Ok(Option::<Object<T>>::deserialize(d)?.map(|o| o.0))
}

/// The create body (F9): `{entity_type, entity_id?, benefit_info:{…}}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateBody {
    /// Scope type (required).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entity_type: Option<String>,
    /// Scoped entity; required except for `enterprise_all_*` (D4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entity_id: Option<String>,
    /// The limitation (required).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "object_opt"
    )]
    pub benefit_info: Option<CreateBenefitInfo>,
}

/// `benefit_info` of the create body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateBenefitInfo {
    /// Required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<Int64>,
    /// Required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub benefit_type: Option<String>,
    /// Required; only `absolute_time`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_mode: Option<String>,
    /// Required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Int64>,
    /// Required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<Int64>,
    /// Defaults to `valid`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Defaults to `never`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger_unit: Option<String>,
    /// Defaults to 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger_time: Option<Int64>,
}

/// The PUT body (F11): every field optional; absent or `null` keeps the value (D2).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateBody {
    /// If present, must equal the path's id (D2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub benefit_id: Option<String>,
    /// Only `absolute_time`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_mode: Option<String>,
    /// New start (unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Int64>,
    /// New end (unix seconds, inclusive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<Int64>,
    /// New limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<Int64>,
    /// New status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// New reset unit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger_unit: Option<String>,
    /// New reset multiplier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger_time: Option<Int64>,
}

/// A full record as it arrives from the platform (list items, create
/// responses), before validation. Used by [`crate::Engine::import`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BenefitInfoWire {
    /// Required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub benefit_id: Option<String>,
    /// Required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entity_type: Option<String>,
    /// Required except for `enterprise_all_*`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entity_id: Option<String>,
    /// Required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub benefit_type: Option<String>,
    /// Required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_mode: Option<String>,
    /// Required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Int64>,
    /// Required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<Int64>,
    /// Required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<Int64>,
    /// Defaults to `valid`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Defaults to `never`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger_unit: Option<String>,
    /// Defaults to 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger_time: Option<Int64>,
}

/// The list query (F10), from a URL query string or a JSON object.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListQuery {
    /// Required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entity_type: Option<String>,
    /// Optional filter (ignored for `enterprise_all_*`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entity_id: Option<String>,
    /// Required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub benefit_type: Option<String>,
    /// Optional filter; absent lists every status (D8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Opaque continuation token from a previous page; empty or absent for the first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page_token: Option<String>,
    /// 1..=200, default 20.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page_size: Option<Int64>,
}

/// `data` of a create response: `{benefit_info:{…}}` (D3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateData<T = BenefitInfo> {
    /// The created record.
    pub benefit_info: T,
}

/// `data` of a list response (F10, D3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListData<T = BenefitInfo> {
    /// Whether another page follows.
    pub has_more: bool,
    /// Token for the next page; `""` when there is none.
    pub page_token: String,
    /// The page's records (`[]` when empty).
    pub benefit_infos: Vec<T>,
}

/// `detail` of the envelope.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseDetail {
    /// The request's log id.
    #[serde(default)]
    pub logid: String,
}

/// The platform's response envelope `{code, msg, data?, detail:{logid}}` (F12).
///
/// # Examples
/// ```
/// use benefit_quota::{ApiError, Envelope};
/// let e = Envelope::error(&ApiError::not_found("42"), "log-1");
/// let json = serde_json::to_string(&e).unwrap();
/// assert!(json.starts_with(r#"{"code":4200,"msg":"#));
/// assert!(json.ends_with(r#""detail":{"logid":"log-1"}}"#));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope<T> {
    /// 0 on success.
    pub code: u32,
    /// `""` on success.
    #[serde(default)]
    pub msg: String,
    /// Present on success.
    #[serde(default = "none", skip_serializing_if = "Option::is_none")]
    pub data: Option<T>,
    /// Log id.
    #[serde(default)]
    pub detail: ResponseDetail,
}

fn none<T>() -> Option<T> {
    None
}

impl<T> Envelope<T> {
    /// A success envelope: `code` 0, `msg` "".
    pub fn ok(data: T, logid: impl Into<String>) -> Self {
        Envelope {
            code: 0,
            msg: String::new(),
            data: Some(data),
            detail: ResponseDetail {
                logid: logid.into(),
            },
        }
    }

    /// An error envelope with the error's code and message and no `data`,
    /// typed as the success envelope it stands in for (a handler that
    /// answers `Envelope<BenefitInfo>` either way); [`Envelope::error`] when
    /// no type is at hand.
    pub fn from_error(err: &crate::ApiError, logid: impl Into<String>) -> Self {
        Envelope {
            code: err.code().as_u32(),
            msg: err.msg().to_owned(),
            data: None,
            detail: ResponseDetail {
                logid: logid.into(),
            },
        }
    }
}

impl Envelope<()> {
    /// An error envelope with the error's code and message and no `data`.
    ///
    /// # Examples
    /// ```
    /// use benefit_quota::{ApiError, Envelope};
    /// let json = Envelope::error(&ApiError::not_found("42"), "log-1").to_json();
    /// assert!(json.starts_with(r#"{"code":4200,"#));
    /// ```
    pub fn error(err: &crate::ApiError, logid: impl Into<String>) -> Self {
        Envelope::from_error(err, logid)
    }
}

impl<T: Serialize> Envelope<T> {
    /// The envelope as compact JSON.
    pub fn to_json(&self) -> String {
        // Serialising these plain structs to a String cannot fail: every key is
        // a string and no value is a non-finite float.
        serde_json::to_string(self).unwrap_or_default()
    }
}

impl Serialize for BenefitInfo {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let n = if self.entity_id.is_some() { 11 } else { 10 };
        let mut st = s.serialize_struct("BenefitInfo", n)?;
        st.serialize_field("benefit_id", self.benefit_id.as_str())?;
        st.serialize_field("entity_type", self.entity_type.as_str())?;
        match &self.entity_id {
            Some(id) => st.serialize_field("entity_id", id.as_str())?,
            None => st.skip_field("entity_id")?,
        }
        st.serialize_field("benefit_type", self.benefit_type.as_str())?;
        st.serialize_field("active_mode", self.active_mode.as_str())?;
        st.serialize_field("started_at", &self.started_at)?;
        st.serialize_field("ended_at", &self.ended_at)?;
        st.serialize_field("limit", &self.limit)?;
        st.serialize_field("status", self.status.as_str())?;
        st.serialize_field("trigger_unit", self.reset.unit().as_str())?;
        st.serialize_field("trigger_time", &self.reset.time())?;
        st.end()
    }
}

impl<'de> Deserialize<'de> for BenefitInfo {
    /// Deserialises through [`BenefitInfoWire`] and validates (D1, D4).
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let wire = Object::<BenefitInfoWire>::deserialize(d)?.0;
        crate::validate::record(&wire, "").map_err(|e| de::Error::custom(e.msg()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_strings() {
        assert_eq!(parse_decimal_i64("0"), Some(0));
        assert_eq!(parse_decimal_i64("-0"), Some(0));
        assert_eq!(parse_decimal_i64("0012"), Some(12));
        assert_eq!(parse_decimal_i64("9223372036854775807"), Some(i64::MAX));
        assert_eq!(parse_decimal_i64("-9223372036854775808"), Some(i64::MIN));
        assert_eq!(parse_decimal_i64("9223372036854775808"), None);
        assert_eq!(parse_decimal_i64("99999999999999999999999"), None);
        for bad in ["", "-", "+1", " 1", "1 ", "1.0", "1e3", "0x10", "١"] {
            assert_eq!(parse_decimal_i64(bad), None, "{bad:?}");
        }
    }
}
