//! proptest strategies for the model's operations (not built for the fuzz
//! target, which draws them with `arbitrary`).

use super::ops::{Op, Patch, Spec, Step};
use proptest::prelude::*;

pub fn spec() -> impl Strategy<Value = Spec> {
    (
        any::<u8>(),
        any::<u8>(),
        // resource points most of the time, so rules interact
        prop_oneof![4 => Just(0u8), 1 => any::<u8>()],
        // 65,000 and up stand for a limit that saturates the counters (D14:
        // `limit_of`), drawn outright, not left to `any` (under 1%)
        prop_oneof![1 => Just(0u16), 6 => 1u16..60, 1 => any::<u16>(), 1 => 65_000u16..=u16::MAX],
        any::<u8>(),
        any::<u8>(),
        -72i16..72,
        prop_oneof![Just(None), (0u16..200).prop_map(Some)],
        any::<u8>(),
    )
        .prop_map(
            |(
                entity_type,
                entity,
                benefit_type,
                limit,
                unit,
                time,
                start_hours,
                len_hours,
                status,
            )| Spec {
                entity_type,
                entity,
                benefit_type,
                limit,
                unit,
                time,
                start_hours,
                len_hours,
                status,
            },
        )
}

pub fn patch() -> impl Strategy<Value = Patch> {
    (
        proptest::option::of(prop_oneof![8 => 0u16..60, 1 => 65_000u16..=u16::MAX]),
        proptest::option::weighted(0.3, any::<u8>()),
        proptest::option::weighted(0.3, any::<u8>()),
        proptest::option::weighted(0.2, -72i16..72),
        proptest::option::weighted(0.2, prop_oneof![Just(None), (0u16..200).prop_map(Some)]),
        proptest::option::weighted(0.3, any::<u8>()),
    )
        .prop_map(
            |(limit, unit, time, start_hours, len_hours, status)| Patch {
                limit,
                unit,
                time,
                start_hours,
                len_hours,
                status,
            },
        )
}

/// An amount's draw (`amount_micros`): 0xFFFF_FF00 and up stand for
/// amounts within 256 micro-units of the counters' range (D14), drawn
/// outright (`any` reaches them once in 16 million draws), so that
/// saturated counters, and a saturating limit's, are reached in a run.
fn micros() -> impl Strategy<Value = u32> {
    prop_oneof![12 => any::<u32>(), 1 => 0xFFFF_FF00u32..=u32::MAX]
}

pub fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => spec().prop_map(Op::Create),
        1 => (any::<u8>(), spec()).prop_map(|(id, spec)| Op::Import { id, spec }),
        2 => (any::<u8>(), patch()).prop_map(|(target, patch)| Op::Update { target, patch }),
        1 => any::<u8>().prop_map(Op::Freeze),
        1 => any::<u8>().prop_map(Op::Unfreeze),
        1 => any::<u8>().prop_map(Op::Cancel),
        3 => any::<u8>().prop_map(|subject| Op::Check { subject }),
        8 => (any::<u8>(), prop_oneof![3 => Just(0u8), 1 => any::<u8>()], micros())
            .prop_map(|(subject, benefit_type, micros)| Op::TryConsume { subject, benefit_type, micros }),
        3 => (any::<u8>(), prop_oneof![3 => Just(0u8), 1 => any::<u8>()], micros())
            .prop_map(|(subject, benefit_type, micros)| Op::Record { subject, benefit_type, micros }),
        4 => prop_oneof![
            3 => any::<u16>().prop_map(|s| Op::Advance(Step::Seconds(s % 900))),
            2 => any::<u8>().prop_map(|h| Op::Advance(Step::Hours(h % 30))),
            1 => any::<u8>().prop_map(|d| Op::Advance(Step::Days(d % 40))),
            1 => any::<u16>().prop_map(|m| Op::Advance(Step::Back(m % 3_000))),
        ],
    ]
}
