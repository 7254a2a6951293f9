//! The byte layout of a ledger's records: counter keys, counter records and
//! rule records, each led by a format byte.
//!
//! Decoding takes any bytes (a damaged file, a fuzzer's input) and answers
//! a record or a [`DecodeError`]; it never panics. What decodes encodes back
//! to the same bytes (counter keys and records) or to the same record (rules,
//! stored as JSON).

use serde::{Deserialize, Serialize};

use super::{CounterKey, CounterOwner, CounterRecord, RuleRecord, WindowId};
use crate::types::{BenefitId, BenefitInfo};

/// The record format this version writes and reads.
pub(crate) const FORMAT: u8 = 2;

/// Why bytes are not a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DecodeError {}

fn err(what: impl Into<String>) -> DecodeError {
    DecodeError(what.into())
}

fn format_byte(bytes: &[u8], what: &str) -> Result<(), DecodeError> {
    match bytes.first() {
        None => Err(err(format!("empty {what}"))),
        Some(&FORMAT) => Ok(()),
        Some(v) => Err(err(format!(
            "{what} of format {v}, this version reads {FORMAT}"
        ))),
    }
}

/// A counter key's bytes: format, owner tag (0 device, 1 consumer, 2 pool),
/// the rule id's length (2 bytes, big-endian) and bytes, then the owner id.
pub fn encode_counter_key(key: &CounterKey) -> Vec<u8> {
    let id = key.benefit_id.as_str().as_bytes();
    let (tag, owner) = match &key.owner {
        CounterOwner::Device(d) => (0u8, d.as_str()),
        CounterOwner::Consumer(c) => (1, c.as_str()),
        CounterOwner::Pool => (2, ""),
    };
    let mut out = Vec::with_capacity(4 + id.len() + owner.len());
    out.push(FORMAT);
    out.push(tag);
    out.extend_from_slice(&(id.len() as u16).to_be_bytes());
    out.extend_from_slice(id);
    out.extend_from_slice(owner.as_bytes());
    out
}

/// Decodes [`encode_counter_key`]'s bytes.
///
/// # Errors
/// Another format, an unknown owner tag, a length past the end, a rule id
/// that is not one, an owner id that is not UTF-8, a pool with an owner id.
pub fn decode_counter_key(bytes: &[u8]) -> Result<CounterKey, DecodeError> {
    format_byte(bytes, "counter key")?;
    let [_, tag, hi, lo, rest @ ..] = bytes else {
        return Err(err("counter key shorter than its header"));
    };
    let len = usize::from(u16::from_be_bytes([*hi, *lo]));
    if rest.len() < len {
        return Err(err("counter key: rule id runs past the end"));
    }
    let (id, owner) = rest.split_at(len);
    let id = std::str::from_utf8(id).map_err(|_| err("counter key: rule id is not UTF-8"))?;
    let benefit_id = BenefitId::new(id).ok_or_else(|| err("counter key: not a rule id"))?;
    let owner =
        String::from_utf8(owner.to_vec()).map_err(|_| err("counter key: owner id is not UTF-8"))?;
    let owner = match tag {
        0 => CounterOwner::Device(owner),
        1 => CounterOwner::Consumer(owner),
        2 if owner.is_empty() => CounterOwner::Pool,
        2 => return Err(err("counter key: a pool with an owner id")),
        t => return Err(err(format!("counter key: unknown owner tag {t}"))),
    };
    Ok(CounterKey { benefit_id, owner })
}

/// Length of a counter record.
const COUNTER_LEN: usize = 1 + 4 + 8 + 8 + 8 + 8;

/// A counter record's bytes: format, generation, window start, window end,
/// used, lifetime (big-endian).
pub fn encode_counter(rec: &CounterRecord) -> [u8; COUNTER_LEN] {
    let mut out = [0u8; COUNTER_LEN];
    out[0] = FORMAT;
    out[1..5].copy_from_slice(&rec.window.generation.to_be_bytes());
    out[5..13].copy_from_slice(&rec.window.start.to_be_bytes());
    out[13..21].copy_from_slice(&rec.window.end.to_be_bytes());
    out[21..29].copy_from_slice(&rec.used.to_be_bytes());
    out[29..37].copy_from_slice(&rec.lifetime.to_be_bytes());
    out
}

/// Decodes [`encode_counter`]'s bytes.
///
/// # Errors
/// Another format or length.
pub fn decode_counter(bytes: &[u8]) -> Result<CounterRecord, DecodeError> {
    format_byte(bytes, "counter record")?;
    let b: &[u8; COUNTER_LEN] = bytes.try_into().map_err(|_| {
        err(format!(
            "counter record of {} bytes, not {COUNTER_LEN}",
            bytes.len()
        ))
    })?;
    let u32_at = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let u64_at = |i: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&b[i..i + 8]);
        u64::from_be_bytes(w)
    };
    Ok(CounterRecord {
        window: WindowId {
            generation: u32_at(1),
            start: u64_at(5) as i64,
            end: u64_at(13) as i64,
        },
        used: u64_at(21),
        lifetime: u64_at(29),
    })
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleJson {
    position: u32,
    generation: u32,
    withdrawn: bool,
    info: BenefitInfo,
}

/// A rule record's bytes: format, then JSON (the platform's record, its
/// position, generation and whether it was withdrawn).
pub fn encode_rule(rec: &RuleRecord) -> Vec<u8> {
    let json = RuleJson {
        position: rec.position,
        generation: rec.generation,
        withdrawn: rec.withdrawn,
        info: rec.info.clone(),
    };
    let mut out = vec![FORMAT];
    // Serialising plain fields and a record of strings and integers into a
    // vector cannot fail.
    serde_json::to_writer(&mut out, &json).unwrap_or_default();
    out
}

/// Decodes [`encode_rule`]'s bytes; the platform's record is validated as
/// an import is.
///
/// # Errors
/// Another format, JSON that is not a rule record, a record the platform
/// would not hold.
pub fn decode_rule(bytes: &[u8]) -> Result<RuleRecord, DecodeError> {
    format_byte(bytes, "rule record")?;
    let json: RuleJson =
        serde_json::from_slice(&bytes[1..]).map_err(|e| err(format!("rule record: {e}")))?;
    Ok(RuleRecord {
        position: json.position,
        info: json.info,
        generation: json.generation,
        withdrawn: json.withdrawn,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_keys_and_records_round_trip() {
        for owner in [
            CounterOwner::Device("sn-1".into()),
            CounterOwner::Consumer("".into()),
            CounterOwner::Pool,
        ] {
            let key = CounterKey {
                benefit_id: BenefitId::new("7345").unwrap(),
                owner,
            };
            let bytes = encode_counter_key(&key);
            assert_eq!(decode_counter_key(&bytes).unwrap(), key);
        }
        let rec = CounterRecord {
            window: WindowId {
                generation: 3,
                start: i64::MIN,
                end: i64::MAX,
            },
            used: 5,
            lifetime: u64::MAX,
        };
        assert_eq!(decode_counter(&encode_counter(&rec)).unwrap(), rec);
    }

    #[test]
    fn damaged_bytes_are_errors() {
        assert!(decode_counter_key(&[]).is_err());
        assert!(decode_counter_key(&[FORMAT, 0, 0, 9, b'1']).is_err());
        assert!(decode_counter_key(&[FORMAT, 2, 0, 1, b'1', b'x']).is_err());
        assert!(decode_counter_key(&[FORMAT, 7, 0, 1, b'1']).is_err());
        assert!(decode_counter_key(&[FORMAT + 1, 0, 0, 1, b'1']).is_err());
        assert!(decode_counter_key(&[FORMAT - 1, 0, 0, 1, b'1']).is_err());
        assert!(decode_counter(&[FORMAT; 36]).is_err());
        assert!(decode_counter(&[FORMAT + 1; 37]).is_err());
        assert!(decode_rule(&[FORMAT, b'{', b'}']).is_err());
        assert!(decode_rule(b"").is_err());
    }
}
