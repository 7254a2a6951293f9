//! Platform-style errors: a numeric `code` and a message that names the field.

use std::fmt;

/// The platform's error codes (F13). Each variant's discriminant is its
/// code, so `code as u32` and [`ErrorCode::as_u32`] agree.
///
/// # Examples
/// ```
/// use benefit_quota::ErrorCode;
/// assert_eq!(ErrorCode::NotFound as u32, 4200);
/// assert_eq!(ErrorCode::NotFound as i64, 4200);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
#[non_exhaustive]
pub enum ErrorCode {
    /// 4000: a parameter is missing, malformed or out of range.
    InvalidParameter = 4000,
    /// 4100: the access token is missing or invalid (the admin routes of
    /// feature `axum`; otherwise passed on from the platform's answers).
    BadToken = 4100,
    /// 4101: the token lacks the permission (the admin routes, for a
    /// read-only token that writes; otherwise passed on from the platform).
    PermissionDenied = 4101,
    /// 4200: the benefit limitation does not exist.
    NotFound = 4200,
    /// 5000: internal error; also used when a configured resource bound is hit.
    Internal = 5000,
}

impl ErrorCode {
    /// The numeric code as it appears in the envelope's `code` field.
    ///
    /// # Examples
    /// ```
    /// assert_eq!(benefit_quota::ErrorCode::InvalidParameter.as_u32(), 4000);
    /// ```
    pub const fn as_u32(self) -> u32 {
        self as u32
    }
}

/// An error as the platform would answer it: `{code, msg}`.
///
/// Every message produced by validation starts with the offending field's
/// name in the form `` `field` `` (for nested create bodies,
/// `` `benefit_info.limit` ``), so callers and tests can rely on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    code: ErrorCode,
    msg: String,
}

impl ApiError {
    /// A 4000 error about `field`.
    pub fn invalid(field: &str, what: impl fmt::Display) -> Self {
        ApiError {
            code: ErrorCode::InvalidParameter,
            msg: format!("invalid parameter `{field}`: {what}"),
        }
    }

    /// The error the platform answered (an envelope whose `code` is not 0),
    /// passed on: its own code when it is one of the platform's (F13),
    /// 5000 otherwise, with its message.
    pub fn from_platform(code: u64, msg: &str) -> Self {
        let known = [
            ErrorCode::InvalidParameter,
            ErrorCode::BadToken,
            ErrorCode::PermissionDenied,
            ErrorCode::NotFound,
            ErrorCode::Internal,
        ]
        .into_iter()
        .find(|c| u64::from(c.as_u32()) == code);
        ApiError {
            code: known.unwrap_or(ErrorCode::Internal),
            msg: format!(
                "the platform answered code {code}: {}",
                truncate_for_message(msg)
            ),
        }
    }

    /// A 4200 error for an unknown benefit id.
    pub fn not_found(benefit_id: &str) -> Self {
        ApiError {
            code: ErrorCode::NotFound,
            msg: format!(
                "`benefit_id` not found: {:?}",
                truncate_for_message(benefit_id)
            ),
        }
    }

    /// An error with an arbitrary code and message.
    pub fn new(code: ErrorCode, msg: impl Into<String>) -> Self {
        ApiError {
            code,
            msg: msg.into(),
        }
    }

    /// The error code.
    pub fn code(&self) -> ErrorCode {
        self.code
    }

    /// The human-readable message (names the field for validation errors).
    pub fn msg(&self) -> &str {
        &self.msg
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code.as_u32(), self.msg)
    }
}

impl std::error::Error for ApiError {}

/// Keeps error messages bounded whatever the caller sent: echoed values are
/// cut to 64 bytes.
pub(crate) fn truncate_for_message(s: &str) -> &str {
    truncate_at(s, 64)
}

/// `s` cut to at most `max` bytes, at a character boundary.
pub(crate) fn truncate_at(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_respects_char_boundaries() {
        let s = "设".repeat(40); // 120 bytes
        let t = truncate_for_message(&s);
        assert!(t.len() <= 64);
        assert_eq!(t.len() % 3, 0);
    }
}
