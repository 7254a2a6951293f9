//! Arbitrary bytes as a ledger record (a counter key, a counter record, a
//! rule record): decoding never panics; what decodes encodes back to the
//! same bytes (keys and counter records, whose layout is canonical) or to
//! the same record (rules, stored as JSON).
#![no_main]

use benefit_quota::ledger::{
    decode_counter, decode_counter_key, decode_rule, encode_counter, encode_counter_key,
    encode_rule,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(key) = decode_counter_key(data) {
        assert_eq!(encode_counter_key(&key), data);
    }
    if let Ok(rec) = decode_counter(data) {
        assert_eq!(&encode_counter(&rec)[..], data);
    }
    if let Ok(rule) = decode_rule(data) {
        let again = decode_rule(&encode_rule(&rule)).expect("an encoded rule decodes");
        assert_eq!(again, rule);
    }
});
