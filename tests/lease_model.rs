//! Leased handles among every other kind of caller, against the reference
//! model (SEMANTICS.md L1–L8): random mixes of configuration writes, clock
//! steps, checks, spends and records, each call going by subject, through a
//! batch, through an exact handle or through one of two leased handles per
//! subject (lease sizes from one micro-unit to 40 points), with leases held
//! across all of it, and handles dropped and made again.
//!
//! The model is told only what the engine admitted, so it holds the real
//! usage. After every call:
//! - the engine never admits what the model denies (a `try_consume`, a
//!   `check` found allowed, a `record` said to leave the subject allowed);
//! - an engine denial the model would not make is an under-admission caused
//!   by leases held: some applicable counter reads more than the model's
//!   usage, none of them a pool of the enterprise family (never leased), and
//!   no counter reads more than the model's usage plus every leased handle's
//!   lease;
//! - configuration answers and records are the model's.
//!
//! And once every lease is given back (a settle step, and at the end), usage
//! and lifetime totals of every subject are exactly the model's.

mod model;

use std::sync::Arc;

use benefit_quota::{Amount, BenefitType, Engine, HandleRequest, Request, SubjectHandle};
use model::ops::{
    amount_micros, benefit_type_of, create_body, record_body, subjects, update_body, Op, Spec,
    Step, SubjectIds,
};
use model::strategy::op;
use model::{config_outcome, engine_records, engine_usage, subject_of, Model, Outcome};
use proptest::prelude::*;

/// Lease sizes in micro-units, by handle.
const LEASES: [u64; 4] = [1, 700_000, 3_000_000, 40_000_000];

#[derive(Debug, Clone)]
enum Mix {
    Op(Op),
    /// The connection of one leased handle ends; a new one is made.
    Reconnect {
        subject: u8,
        second: bool,
    },
    /// Every leased handle gives its leases back; usage is then compared.
    Settle,
    /// `evict` at the current time: it changes no answer (the clock never
    /// goes back here), leases held or not.
    Evict,
}

/// The micro-units value the model's operations turn into `n` whole units.
fn units_as_drawn(n: u32) -> u32 {
    (0..)
        .map(|k| n + 40 * k)
        .find(|m| m % 3 != 0)
        .expect("one of three in a row")
}

/// Rules that apply to the subjects most of the time (active now, valid,
/// small limits), so that leases are granted, spent and ended often.
fn dense_spec() -> impl Strategy<Value = Spec> {
    (
        prop_oneof![4 => Just(0u8), 3 => Just(1u8), 2 => Just(2u8), 1 => Just(3u8), 2 => 4u8..8],
        any::<u8>(),
        prop_oneof![4 => Just(0u8), 1 => Just(1u8)],
        1u16..40,
        prop_oneof![3 => Just(0u8), 1 => Just(1u8), 1 => Just(2u8), 2 => Just(3u8)],
        any::<u8>(),
        -72i16..1,
        prop_oneof![4 => Just(None), 1 => (1u16..200).prop_map(Some)],
        prop_oneof![6 => Just(0u8), 1 => Just(3u8)],
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

/// Mostly spends of a few points, some records, some other benefit type;
/// configuration writes and clock steps now and then.
fn dense_op() -> impl Strategy<Value = Op> {
    let ty = prop_oneof![4 => Just(0u8), 1 => Just(1u8)];
    prop_oneof![
        2 => dense_spec().prop_map(Op::Create),
        // No step back: `Evict` runs here, and a request stamped behind an
        // eviction's clock finds a fresh counter in its old window (a
        // documented limit of `evict` the model does not reproduce).
        2 => op().prop_filter("no clock step back", |o| !matches!(o, Op::Advance(Step::Back(_)))),
        16 => (any::<u8>(), ty.clone(), 0u32..4)
            .prop_map(|(subject, benefit_type, n)| Op::TryConsume { subject, benefit_type, micros: units_as_drawn(n) }),
        4 => (any::<u8>(), ty, 0u32..6)
            .prop_map(|(subject, benefit_type, n)| Op::Record { subject, benefit_type, micros: units_as_drawn(n) }),
        2 => any::<u8>().prop_map(|subject| Op::Check { subject }),
        2 => prop_oneof![
            4 => (0u16..120).prop_map(|s| Op::Advance(Step::Seconds(s))),
            1 => (0u8..6).prop_map(|h| Op::Advance(Step::Hours(h))),
        ],
    ]
}

fn mix() -> impl Strategy<Value = Mix> {
    prop_oneof![
        20 => dense_op().prop_map(Mix::Op),
        1 => (any::<u8>(), any::<bool>()).prop_map(|(subject, second)| Mix::Reconnect { subject, second }),
        1 => Just(Mix::Settle),
        1 => Just(Mix::Evict),
    ]
}

struct Mixed {
    engine: Arc<Engine>,
    model: Model,
    base: i64,
    now: i64,
    subjects: Vec<SubjectIds>,
    exact: Vec<SubjectHandle>,
    leased: Vec<[SubjectHandle; 2]>,
    /// The most any counter can hold in leases at once: every leased
    /// handle's lease.
    lease_bound: u64,
    /// Whether `evict` ran: the lifetime totals of the counters it freed
    /// are gone (which ones depends on the leases held then: an owner a
    /// leased handle watches keeps its counters), so they are no longer
    /// compared; usage in the current windows still is.
    evicted: bool,
}

impl Mixed {
    fn new(base: i64, suspend: bool) -> Mixed {
        let engine = Arc::new(
            Engine::builder()
                .shards(4)
                .frozen_policy(if suspend {
                    benefit_quota::FrozenPolicy::Suspend
                } else {
                    benefit_quota::FrozenPolicy::Block
                })
                .build(),
        );
        let subjects = subjects();
        let exact = subjects
            .iter()
            .map(|s| engine.handle_owned(&subject_of(s)))
            .collect();
        let leased: Vec<[SubjectHandle; 2]> = (0..subjects.len())
            .map(|i| [0, 1].map(|j| Self::leased_handle(&engine, &subjects, i, j)))
            .collect();
        let lease_bound = (0..subjects.len() * 2)
            .map(|k| LEASES[k % LEASES.len()])
            .sum();
        Mixed {
            model: Model::new(8 * 3600, suspend),
            engine,
            base,
            now: base,
            subjects,
            exact,
            leased,
            lease_bound,
            evicted: false,
        }
    }

    fn leased_handle(
        engine: &Arc<Engine>,
        subjects: &[SubjectIds],
        i: usize,
        j: usize,
    ) -> SubjectHandle {
        let lease = Amount::from_micros(LEASES[(2 * i + j) % LEASES.len()]);
        engine
            .handle_owned(&subject_of(&subjects[i]))
            .with_lease(lease)
    }

    fn target_id(&self, target: u8) -> String {
        let records = self.engine.records();
        if records.is_empty() {
            return "missing".into();
        }
        records[usize::from(target) % records.len()]
            .benefit_id()
            .to_string()
    }

    /// Runs one step; `Err` describes a broken property.
    fn step(&mut self, step: &Mix) -> Result<(), String> {
        let now = self.now;
        match step {
            Mix::Reconnect { subject, second } => {
                let i = usize::from(*subject) % self.subjects.len();
                let j = usize::from(*second);
                // Dropping the old handle gives its leases back.
                self.leased[i][j] = Self::leased_handle(&self.engine, &self.subjects, i, j);
                Ok(())
            }
            Mix::Settle => self.settle_and_compare(),
            Mix::Evict => {
                self.engine.evict(self.now);
                self.evicted = true;
                Ok(())
            }
            Mix::Op(op) => self.op(op, now),
        }
    }

    fn op(&mut self, op: &Op, now: i64) -> Result<(), String> {
        let config = |e: Outcome, m: Outcome| {
            if e == m {
                Ok(())
            } else {
                Err(format!("config answers differ: engine {e:?}, model {m:?}"))
            }
        };
        match op {
            Op::Create(spec) => {
                let v = spec.values(self.base);
                let e = config_outcome(self.engine.create_json(create_body(&v)));
                config(e, Outcome::Config(self.model.create(v)))?;
            }
            Op::Import { id, spec } => {
                let v = spec.values(self.base);
                let id = format!("p{}", id % 4);
                let e = config_outcome(self.engine.import_json(record_body(&id, &v), now));
                config(e, Outcome::Config(self.model.import(&id, v, now)))?;
            }
            Op::Update { target, patch } => {
                let p = patch.values(self.base);
                let id = self.target_id(*target);
                let e = config_outcome(self.engine.apply_update_json(&id, update_body(&p), now));
                config(e, Outcome::Config(self.model.update(*target, &p, now)))?;
            }
            Op::Freeze(t) | Op::Unfreeze(t) | Op::Cancel(t) => {
                let status = match op {
                    Op::Freeze(_) => "frozen",
                    Op::Unfreeze(_) => "valid",
                    _ => "cancel",
                };
                let p = model::ops::PatchValues {
                    status: Some(status),
                    ..Default::default()
                };
                let id = self.target_id(*t);
                let e = config_outcome(self.engine.apply_update_json(&id, update_body(&p), now));
                config(e, Outcome::Config(self.model.update(*t, &p, now)))?;
            }
            Op::Advance(step) => self.now += step.seconds(),
            Op::Check { subject } => {
                let i = usize::from(*subject) % self.subjects.len();
                let s = self.subjects[i];
                let d = match route(*subject) {
                    Route::BySubject | Route::Batch => self.engine.check(&subject_of(&s), now),
                    Route::Exact => self.exact[i].check(now),
                    Route::Leased(j) => self.leased[i][j].check(now),
                };
                let model_allows = !matches!(self.model.check(&s, now), Outcome::Denied(..));
                if d.is_allowed() && !model_allows {
                    return Err(format!("check of {s:?} allowed where the model denies"));
                }
                if !d.is_allowed() && model_allows {
                    self.under_admission(&s, now)?;
                }
            }
            Op::TryConsume {
                subject,
                benefit_type,
                micros,
            }
            | Op::Record {
                subject,
                benefit_type,
                micros,
            } => {
                let record = matches!(op, Op::Record { .. });
                let i = usize::from(*subject) % self.subjects.len();
                let s = self.subjects[i];
                let (bt, m) = (benefit_type_of(*benefit_type), amount_micros(*micros));
                let ebt = BenefitType::from_wire(bt).unwrap_or(BenefitType::ResourcePoint);
                let amount = Amount::from_micros(m);
                let subj = subject_of(&s);
                let r = route(*subject);
                let d = match (record, r) {
                    (true, Route::BySubject | Route::Batch) => {
                        self.engine.record(&subj, ebt, amount, now)
                    }
                    (true, Route::Exact) => self.exact[i].record(ebt, amount, now),
                    (true, Route::Leased(j)) => self.leased[i][j].record(ebt, amount, now),
                    (false, Route::BySubject) => self.engine.try_consume(&subj, ebt, amount, now),
                    (false, Route::Batch) => {
                        let mut out = Vec::new();
                        let reqs = [Request {
                            subject: subj,
                            benefit_type: ebt,
                            amount,
                        }];
                        self.engine.try_consume_many(&reqs, now, &mut out);
                        out.pop().expect("one decision")
                    }
                    (false, Route::Exact) => self.exact[i].try_consume(ebt, amount, now),
                    (false, Route::Leased(j)) if subject & 0x10 != 0 => {
                        let mut out = Vec::new();
                        let mut reqs = [HandleRequest {
                            handle: &mut self.leased[i][j],
                            benefit_type: ebt,
                            amount,
                        }];
                        self.engine
                            .try_consume_many_handles(&mut reqs, now, &mut out);
                        out.pop().expect("one decision")
                    }
                    (false, Route::Leased(j)) => self.leased[i][j].try_consume(ebt, amount, now),
                };
                if record {
                    // Post-paid: booked on both sides whatever the answer.
                    let m = self.model.record(&s, bt, m, now);
                    if d.is_allowed() && matches!(m, Outcome::Denied(..)) {
                        return Err(format!(
                            "record on {s:?} said allowed where the model is blocked"
                        ));
                    }
                } else if d.is_allowed() {
                    let model = self.model.try_consume(&s, bt, m, now);
                    if matches!(model, Outcome::Denied(..)) {
                        return Err(format!("try_consume({bt}, {m} micro-units) on {s:?} via {r:?} over-admitted: model {model:?}"));
                    }
                } else if self.model.would_consume(&s, bt, m, now) {
                    self.under_admission(&s, now)?;
                }
            }
        }
        Ok(())
    }

    /// The engine denied what the model would allow: leases held must
    /// explain it, within the bound.
    fn under_admission(&self, s: &SubjectIds, now: i64) -> Result<(), String> {
        let (e, m) = (engine_usage(&self.engine, s, now), self.model.usage(s, now));
        let mut leased = false;
        if e.len() != m.len() {
            return Err(format!(
                "applicable rules differ: engine {e:?}, model {m:?}"
            ));
        }
        for (eu, mu) in e.iter().zip(&m) {
            if eu.0 != mu.0 {
                return Err(format!(
                    "applicable rules differ: engine {e:?}, model {m:?}"
                ));
            }
            if eu.1 < mu.1 || eu.1 - mu.1 > self.lease_bound {
                return Err(format!(
                    "usage of {s:?} beyond the lease bound: engine {e:?}, model {m:?}"
                ));
            }
            if eu.1 > mu.1 && self.is_shared(&eu.0) {
                return Err(format!(
                    "rule {} of {s:?} is a shared pool and holds a lease",
                    eu.0
                ));
            }
            leased |= eu.1 > mu.1;
        }
        if !leased {
            return Err(format!(
                "{s:?} denied with no lease held: engine {e:?}, model {m:?}"
            ));
        }
        Ok(())
    }

    /// Whether the rule's counter is shared by subjects (a pool of the
    /// enterprise family): never leased (L6).
    fn is_shared(&self, benefit_id: &str) -> bool {
        self.engine
            .get(benefit_id)
            .is_some_and(|r| r.entity_type().family() == benefit_quota::Family::Enterprise)
    }

    /// Gives every lease back, then compares usage (and lifetime totals) of
    /// every subject with the model.
    fn settle_and_compare(&mut self) -> Result<(), String> {
        for pair in &mut self.leased {
            for h in pair {
                h.release();
            }
        }
        let (er, mr) = (engine_records(&self.engine), self.model.records());
        if er != mr {
            return Err(format!("records differ:\nengine {er:?}\nmodel  {mr:?}"));
        }
        for s in &self.subjects {
            let (mut e, mut m) = (
                engine_usage(&self.engine, s, self.now),
                self.model.usage(s, self.now),
            );
            if self.evicted {
                for line in e.iter_mut().chain(m.iter_mut()) {
                    line.5 = 0;
                }
            }
            if e != m {
                return Err(format!(
                    "usage of {s:?} at {} once settled:\nengine {e:?}\nmodel  {m:?}",
                    self.now
                ));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy)]
enum Route {
    BySubject,
    Batch,
    Exact,
    Leased(usize),
}

/// Which caller a check or spend goes through, from its subject byte: a
/// third through leased handles, the rest spread over the other callers.
fn route(subject: u8) -> Route {
    match (subject >> 5) % 6 {
        0 => Route::BySubject,
        1 => Route::Batch,
        2 => Route::Exact,
        3 => Route::Leased(0),
        4 => Route::Leased(1),
        _ => Route::Leased(usize::from(subject & 1)),
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: Some(Box::new(proptest::test_runner::FileFailurePersistence::WithSource("regressions"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn leases_never_admit_what_the_model_denies(
        base in 1_704_038_400i64..1_798_732_800,
        suspend in prop_oneof![3 => Just(false), 1 => Just(true)],
        steps in proptest::collection::vec(mix(), 50..150),
    ) {
        let mut h = Mixed::new(base, suspend);
        for (i, step) in steps.iter().enumerate() {
            if let Err(e) = h.step(step) {
                prop_assert!(false, "step {} {:?}: {}", i, step, e);
            }
        }
        if let Err(e) = h.settle_and_compare() {
            prop_assert!(false, "at the end: {}", e);
        }
    }
}
