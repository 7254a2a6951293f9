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
    // 2024-01-01 plus up to ~3 years, any second.
    let base = 1_704_038_400 + i64::from(input.base_offset % 94_694_400);
    let offset_hours = [8, 0, -5][usize::from(input.offset % 3)];
    let mut h = Harness::new(base, offset_hours, input.suspend);
    for (i, op) in input.ops.iter().take(300).enumerate() {
        let (engine, model) = h.step(op);
        assert_eq!(engine, model, "step {i} {op:?}");
        if let Err(diff) = h.compare_state() {
            panic!("after step {i} {op:?}: {diff}");
        }
    }
});
