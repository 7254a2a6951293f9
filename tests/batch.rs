//! The batch API decides exactly as the same calls made one by one.

mod common;

use benefit_quota::{Amount, BenefitType, Engine, HandleRequest, Request, Subject, SubjectHandle};
use common::*;
use proptest::prelude::*;

const DEVICES: [&str; 5] = ["a", "b", "c", "d", "e"];

const CONSUMERS: [&str; 2] = ["u", "v"];

fn setup(shards: usize) -> Engine {
    let e = Engine::builder().shards(shards).build();
    Rule::all_consumers(9).create(&e);
    Rule::all_consumers(4).daily().create(&e);
    Rule::consumer("v", 5).create(&e);
    Rule::all_devices(20).create(&e);
    Rule::all_devices(7).daily().create(&e);
    Rule::device("c", 3).create(&e);
    Rule::all_devices(5)
        .of("voice_unified_duration_custom")
        .create(&e);
    Rule::new("coze_workspace", Some("w"), 12).create(&e);
    e
}

/// Subject `i`: one in four a consumer (alone, or named by a single rule),
/// the others devices, some in a workspace.
fn subject(i: u8) -> Subject<'static> {
    let i = usize::from(i);
    if i % 4 == 3 {
        Subject::consumer(CONSUMERS[i / 4 % CONSUMERS.len()])
    } else {
        device_maybe_in_workspace(&DEVICES, i, 3)
    }
}

/// Exact handles a round may batch: this many per subject, so that a batch
/// can hold a subject more than once (each request needs its own handle).
const HANDLES_PER_SUBJECT: usize = 3;

/// `HANDLES_PER_SUBJECT` handles on `e` for each of the first `subjects`
/// subjects, in order; with `leased`, one in three takes leases of 2 points.
fn handles_on(e: &Engine, subjects: usize, leased: bool) -> Vec<SubjectHandle<&Engine>> {
    (0..subjects * HANDLES_PER_SUBJECT)
        .map(|i| {
            let h = e.handle(&subject((i / HANDLES_PER_SUBJECT) as u8));
            if leased && i % 3 == 2 {
                h.with_lease(Amount::from_units(2))
            } else {
                h
            }
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig {
        failure_persistence: Some(Box::new(proptest::test_runner::FileFailurePersistence::WithSource("regressions"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn batch_equals_sequential(
        reqs in proptest::collection::vec((any::<u8>(), any::<bool>(), 0u64..4_000_000), 0..150),
        shards in prop_oneof![Just(1usize), Just(4), Just(64)],
        now_step in 0i64..30_000,
    ) {
        let (batch_engine, seq_engine) = (setup(shards), setup(shards));
        let requests: Vec<Request> = reqs
            .iter()
            .map(|&(s, voice, micros)| Request {
                subject: subject(s),
                benefit_type: if voice { BenefitType::VoiceUnifiedDurationCustom } else { BenefitType::ResourcePoint },
                amount: Amount::from_micros(micros),
            })
            .collect();
        let now = MIDNIGHT + now_step;
        let mut got = Vec::new();
        batch_engine.try_consume_many(&requests, now, &mut got);
        let want: Vec<_> = requests.iter().map(|r| seq_engine.try_consume(&r.subject, r.benefit_type, r.amount, now)).collect();
        prop_assert_eq!(&got, &want);
        for i in 0..DEVICES.len() as u8 * 3 {
            prop_assert_eq!(batch_engine.usage(&subject(i), now), seq_engine.usage(&subject(i), now));
        }
    }


    /// Batches of handles, round after round, decide as the same calls
    /// made one by one, in the same order, through twin handles on a twin
    /// engine, and, when every handle is exact, as calls by subject on a
    /// third: across new windows (`now` moves up to a day and a half),
    /// configuration writes between rounds (a single rule naming a device
    /// that was alone, a new all-devices rule), devices alone and not (in a
    /// workspace, named by a single rule), the first calls that create
    /// counters, and leased handles (one in three, when `leased`) mixed
    /// with exact ones in a chunk.
    #[test]
    fn handle_batches_equal_the_same_calls_one_by_one(
        rounds in proptest::collection::vec(
            (
                proptest::collection::vec((any::<u8>(), any::<bool>(), 0u64..4_000_000), 0..150),
                0i64..6_000,
                0u8..6,
            ),
            1..6,
        ),
        shards in prop_oneof![Just(1usize), Just(4), Just(64)],
        leased in any::<bool>(),
    ) {
        let engines = [setup(shards), setup(shards), setup(shards)];
        let [batch_engine, twin_engine, by_subject] = &engines;
        let subjects = DEVICES.len() * 3;
        let mut handles = handles_on(batch_engine, subjects, leased);
        let mut twins = handles_on(twin_engine, subjects, leased);
        let writes = [
            Rule::device("a", 6),
            Rule::all_devices(4).of("voice_unified_duration_custom").every(1, "hour"),
            Rule::device("e", 9).daily(),
        ];
        let mut written = [false; 3];
        let mut now = MIDNIGHT - 3_000;
        for (reqs, step, write) in &rounds {
            now += step * 4;
            if let Some(rule) = writes.get(usize::from(*write)) {
                if !std::mem::replace(&mut written[usize::from(*write)], true) {
                    for e in &engines {
                        rule.create(e);
                    }
                }
            }
            // The requests of the round, each on a handle of its subject
            // not yet used in the round (a subject's requests past
            // `HANDLES_PER_SUBJECT` are dropped).
            let mut taken = vec![0usize; subjects];
            let mut picked = Vec::new();
            for &(s, voice, micros) in reqs {
                let i = usize::from(s) % subjects;
                if taken[i] < HANDLES_PER_SUBJECT {
                    picked.push((i * HANDLES_PER_SUBJECT + taken[i], voice, micros));
                    taken[i] += 1;
                }
            }
            let ty = |voice: bool| if voice { BenefitType::VoiceUnifiedDurationCustom } else { BenefitType::ResourcePoint };
            let want: Vec<_> = picked
                .iter()
                .map(|&(h, voice, micros)| twins[h].try_consume(ty(voice), Amount::from_micros(micros), now))
                .collect();
            let mut slots: Vec<Option<&mut SubjectHandle<&Engine>>> = handles.iter_mut().map(Some).collect();
            let mut requests: Vec<HandleRequest<'_, &Engine>> = picked
                .iter()
                .map(|&(h, voice, micros)| HandleRequest {
                    handle: slots[h].take().expect("one request per handle"),
                    benefit_type: ty(voice),
                    amount: Amount::from_micros(micros),
                })
                .collect();
            let mut got = Vec::new();
            batch_engine.try_consume_many_handles(&mut requests, now, &mut got);
            prop_assert_eq!(&got, &want);
            if !leased {
                let by_subject: Vec<_> = picked
                    .iter()
                    .map(|&(h, voice, micros)| {
                        let s = subject((h / HANDLES_PER_SUBJECT) as u8);
                        by_subject.try_consume(&s, ty(voice), Amount::from_micros(micros), now)
                    })
                    .collect();
                prop_assert_eq!(&got, &by_subject);
            }
            for i in 0..subjects as u8 {
                prop_assert_eq!(batch_engine.usage(&subject(i), now), twin_engine.usage(&subject(i), now));
            }
        }
    }
}

#[test]
fn batch_appends_to_the_output_and_spans_chunks() {
    let e = setup(8);
    let reqs: Vec<Request> = (0..100)
        .map(|_| Request {
            subject: Subject::device("a"),
            benefit_type: PTS,
            amount: units(1),
        })
        .collect();
    let mut out = vec![e.check(&Subject::device("zzz"), MIDNIGHT)];
    e.try_consume_many(&reqs, MIDNIGHT, &mut out);
    assert_eq!(out.len(), 101);
    // 7 a day on device "a": the first 7 of the batch pass, the rest are denied.
    let allowed = out[1..].iter().filter(|d| d.is_allowed()).count();
    assert_eq!(allowed, 7);
    assert!(out[1..8].iter().all(|d| d.is_allowed()));
}

#[test]
fn a_batch_after_a_write_decides_under_the_new_rules() {
    // Calls before the write mark the devices as named by no single rule;
    // a batch after single rules name some of them must not decide those
    // with the all-devices rules alone. Same calls, one by one, alongside.
    let (batch_engine, seq_engine) = (setup(4), setup(4));
    let devices = ["a", "b", "d", "e", "f", "g", "h", "i", "j", "k"];
    for e in [&batch_engine, &seq_engine] {
        for d in devices {
            assert!(e
                .try_consume(&Subject::device(d), PTS, units(1), MIDNIGHT)
                .is_allowed());
        }
        Rule::device("b", 1).create(e);
        Rule::device("j", 2).create(e);
    }
    let requests: Vec<Request> = devices
        .iter()
        .cycle()
        .take(40)
        .map(|d| Request {
            subject: Subject::device(d),
            benefit_type: PTS,
            amount: units(1),
        })
        .collect();
    let mut got = Vec::new();
    batch_engine.try_consume_many(&requests, MIDNIGHT, &mut got);
    let want: Vec<_> = requests
        .iter()
        .map(|r| seq_engine.try_consume(&r.subject, r.benefit_type, r.amount, MIDNIGHT))
        .collect();
    assert_eq!(got, want);
    // Each single rule's own counter starts at zero (D11).
    let allowed = |id: &str| {
        requests
            .iter()
            .zip(&got)
            .filter(|(r, d)| r.subject.device_id == Some(id) && d.is_allowed())
            .count()
    };
    assert_eq!((allowed("b"), allowed("j"), allowed("a")), (1, 2, 4));
}
