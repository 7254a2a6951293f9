//! Model-based property test: random operation sequences run against the
//! engine and against the reference model in `tests/model/`, compared after
//! every step (decisions, config answers, records and usage of every subject).

mod model;

use model::strategy::op;
use model::Harness;
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: Some(Box::new(proptest::test_runner::FileFailurePersistence::WithSource("regressions"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn engine_agrees_with_the_reference_model(
        // Mostly 2024-01-01 .. 2027-01-01; also 1971 .. 2000 (the calendar
        // before 2000: 1972 and 1996 leap, 1900 not reached) and 2000 ..
        // 2100 (2000 leap, 2100 not), any second.
        base in prop_oneof![
            8 => 1_704_038_400i64..1_798_732_800,
            1 => 31_536_000i64..946_684_800,
            1 => 946_684_800i64..4_102_444_800,
        ],
        // UTC+8 (the platform's), UTC, UTC−5, and offsets that are not
        // whole hours (UTC+5:30, UTC+5:45, UTC−9:30): hourly windows then
        // start at the local hour, not the UTC one.
        offset_seconds in prop_oneof![
            6 => Just(8 * 3_600),
            2 => Just(0),
            2 => Just(-5 * 3_600),
            1 => Just(5 * 3_600 + 1_800),
            1 => Just(5 * 3_600 + 2_700),
            1 => Just(-(9 * 3_600 + 1_800)),
        ],
        suspend in prop_oneof![3 => Just(false), 1 => Just(true)],
        ops in proptest::collection::vec(op(), 50..120),
    ) {
        let mut h = Harness::with_offset_seconds(base, offset_seconds, suspend);
        for (i, op) in ops.iter().enumerate() {
            let (engine, model) = h.step(op);
            prop_assert_eq!(&engine, &model, "step {} {:?}", i, op);
            if let Err(diff) = h.compare_state() {
                prop_assert!(false, "after step {} {:?}: {}", i, op, diff);
            }
        }
    }
}
