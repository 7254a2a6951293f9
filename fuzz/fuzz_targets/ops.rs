//! Structured operations (the proptest's operation language) applied to the
//! engine and to the reference model: every answer and every usage report
//! must agree.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/model/mod.rs"]
#[allow(dead_code)]
mod model;

use model::ops::Op;
use model::Harness;

#[derive(Debug, arbitrary::Arbitrary)]
struct Input {
    base_offset: u32,
    offset: u8,
    suspend: bool,
    ops: Vec<Op>,
}

fuzz_target!(|input: Input| {
    // As the proptest: mostly 2024-01-01 plus up to ~3 years; also 1971 ..
    // 2000 and 2000 .. 2100; any second.
    let base = match input.base_offset % 10 {
        // Scaled up (base_offset / 10 alone reaches only 13.6 years), by a
        // factor prime to both ranges, so that any second can be drawn.
        0 => 31_536_000 + i64::from(input.base_offset / 10) * 11 % 915_148_800,
        1 => 946_684_800 + i64::from(input.base_offset / 10) * 11 % 3_155_760_000,
        _ => 1_704_038_400 + i64::from(input.base_offset / 10) % 94_694_400,
    };
    // UTC+8, UTC, UTC-5, and offsets that are not whole hours.
    let offset_seconds =
        [8 * 3_600, 0, -5 * 3_600, 19_800, 20_700, -34_200][usize::from(input.offset % 6)];
    let mut h = Harness::with_offset_seconds(base, offset_seconds, input.suspend);
    for (i, op) in input.ops.iter().take(300).enumerate() {
        let (engine, model) = h.step(op);
        assert_eq!(engine, model, "step {i} {op:?}");
        if let Err(diff) = h.compare_state() {
            panic!("after step {i} {op:?}: {diff}");
        }
    }
});
