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
        // 2024-01-01 .. 2027-01-01, any second
        base in 1_704_038_400i64..1_798_732_800,
        offset_hours in prop_oneof![3 => Just(8i32), 1 => Just(0i32), 1 => Just(-5i32)],
        suspend in prop_oneof![3 => Just(false), 1 => Just(true)],
        ops in proptest::collection::vec(op(), 50..120),
    ) {
        let mut h = Harness::new(base, offset_hours, suspend);
        for (i, op) in ops.iter().enumerate() {
            let (engine, model) = h.step(op);
            prop_assert_eq!(&engine, &model, "step {} {:?}", i, op);
            if let Err(diff) = h.compare_state() {
                prop_assert!(false, "after step {} {:?}: {}", i, op, diff);
            }
        }
    }
}
