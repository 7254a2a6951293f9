//! Calls by subject, and calls through exact handles, for a device or
//! consumer that no single rule names are decided with the calling thread's
//! copy of its family's all-scope rules, under the counters' shard lock
//! only. These scenarios cross everything such a copy must not outlive: an
//! activation boundary, a new window, a configuration write made on another
//! thread, another engine or family on the same thread, a single rule
//! naming the entity later, an entity marked again under a newer
//! configuration by another thread. Each runs three ways: by subject,
//! through an exact handle, and through that handle in a batch (which
//! decides with the thread's copy too).

mod common;

use benefit_quota::{
    BenefitType, Decision, Engine, HandleRequest, Subject, SubjectHandle, FOREVER,
};
use common::*;

const PTS: BenefitType = BenefitType::ResourcePoint;

fn spend(e: &Engine, s: &Subject<'_>, now: i64) -> bool {
    e.try_consume(s, PTS, units(1), now).is_allowed()
}

/// How a scenario's subject spends: by subject, through one exact handle
/// kept for the whole scenario, or through that handle in a batch of one.
#[derive(Clone, Copy, Debug)]
enum Via {
    Subject,
    Handle,
    Batch,
}

const WAYS: [Via; 3] = [Via::Subject, Via::Handle, Via::Batch];

/// One subject's spender, called as `via` says.
enum Spender<'e> {
    Subject(&'e Engine, Subject<'e>),
    Handle(Box<SubjectHandle<&'e Engine>>),
    Batch(&'e Engine, Box<SubjectHandle<&'e Engine>>),
}

impl<'e> Spender<'e> {
    fn new(e: &'e Engine, s: Subject<'e>, via: Via) -> Spender<'e> {
        match via {
            Via::Subject => Spender::Subject(e, s),
            Via::Handle => Spender::Handle(Box::new(e.handle(&s))),
            Via::Batch => Spender::Batch(e, Box::new(e.handle(&s))),
        }
    }

    fn spend(&mut self, now: i64) -> bool {
        self.decide(now).is_allowed()
    }

    /// The decision on one point at `now`.
    fn decide(&mut self, now: i64) -> Decision {
        match self {
            Spender::Subject(e, s) => e.try_consume(s, PTS, units(1), now),
            Spender::Handle(h) => h.try_consume(PTS, units(1), now),
            Spender::Batch(e, h) => {
                let mut reqs = [HandleRequest {
                    handle: &mut **h,
                    benefit_type: PTS,
                    amount: units(1),
                }];
                let mut out = Vec::new();
                e.try_consume_many_handles(&mut reqs, now, &mut out);
                out.pop().expect("one decision")
            }
        }
    }
}

/// Runs `f` on another thread, to its end.
fn on_another_thread(f: impl FnOnce() + Send) {
    std::thread::scope(|s| s.spawn(f).join().expect("the other thread"));
}

#[test]
fn an_all_devices_rule_stops_applying_after_its_last_second() {
    for via in WAYS {
        let e = Engine::new();
        Rule::all_devices(1)
            .active(MIDNIGHT, MIDNIGHT + 10)
            .create(&e);
        let mut d = Spender::new(&e, Subject::device("d"), via);
        assert!(d.spend(MIDNIGHT), "{via:?}");
        assert!(!d.spend(MIDNIGHT + 5), "{via:?}");
        assert!(!d.spend(MIDNIGHT + 10), "{via:?}");
        // Past `ended_at`, nothing applies: allowed, unlimited.
        let after = d.decide(MIDNIGHT + 11);
        assert!(
            after.is_allowed() && after.is_unlimited(),
            "{via:?}: {after:?}"
        );
    }
}

#[test]
fn an_all_devices_rule_starting_later_applies_from_its_first_second() {
    for via in WAYS {
        let e = Engine::new();
        Rule::all_devices(100).create(&e);
        Rule::all_devices(1)
            .daily()
            .active(MIDNIGHT + 10, FOREVER)
            .create(&e);
        let mut d = Spender::new(&e, Subject::device("d"), via);
        for now in MIDNIGHT..MIDNIGHT + 10 {
            assert!(d.spend(now), "{via:?} at {now}");
        }
        assert!(d.spend(MIDNIGHT + 10), "{via:?}");
        assert!(!d.spend(MIDNIGHT + 11), "{via:?}");
    }
}

#[test]
fn a_new_window_starts_from_zero() {
    for via in WAYS {
        let e = Engine::new();
        Rule::all_devices(2).daily().create(&e);
        let mut d = Spender::new(&e, Subject::device("d"), via);
        assert!(d.spend(MIDNIGHT - 3), "{via:?}");
        assert!(d.spend(MIDNIGHT - 2), "{via:?}");
        assert!(!d.spend(MIDNIGHT - 1), "{via:?}");
        assert!(d.spend(MIDNIGHT), "{via:?}");
        assert!(d.spend(MIDNIGHT), "{via:?}");
        assert!(!d.spend(MIDNIGHT + 1), "{via:?}");
    }
}

#[test]
fn a_write_on_another_thread_is_seen_by_the_next_call() {
    for via in WAYS {
        let e = Engine::new();
        let id = Rule::all_devices(100).create(&e);
        let mut d = Spender::new(&e, Subject::device("d"), via);
        // Twice: a handle's first call resolves and keeps the thread's copy,
        // its second marks the entry.
        assert!(d.spend(MIDNIGHT), "{via:?}");
        assert!(d.spend(MIDNIGHT), "{via:?}");
        on_another_thread(|| {
            e.apply_update_json(&id, r#"{"limit":2}"#, MIDNIGHT)
                .expect("the update");
        });
        assert!(!d.spend(MIDNIGHT), "{via:?}");
        on_another_thread(|| {
            e.apply_update_json(&id, r#"{"status":"frozen","limit":100}"#, MIDNIGHT)
                .expect("the update");
        });
        assert!(!d.spend(MIDNIGHT), "{via:?}: frozen blocks (D12)");
    }
}

#[test]
fn engines_on_one_thread_keep_their_own_rules() {
    // More engines than a thread keeps copies for, all at the same
    // configuration version, called in turn: each admits its own limit.
    for via in WAYS {
        let engines: Vec<(Engine, u64)> = (1..=6)
            .map(|limit| {
                let e = Engine::new();
                Rule::all_devices(limit).create(&e);
                (e, limit as u64)
            })
            .collect();
        let mut spenders: Vec<Spender<'_>> = engines
            .iter()
            .map(|(e, _)| Spender::new(e, Subject::device("d"), via))
            .collect();
        let mut admitted = vec![0u64; engines.len()];
        for round in 0..10 {
            for (i, d) in spenders.iter_mut().enumerate() {
                admitted[i] += u64::from(d.spend(MIDNIGHT + round));
            }
        }
        let limits: Vec<u64> = engines.iter().map(|(_, l)| *l).collect();
        assert_eq!(admitted, limits, "{via:?}");
    }
}

#[test]
fn devices_and_consumers_keep_their_own_rules() {
    for via in WAYS {
        let e = Engine::new();
        Rule::all_devices(1).create(&e);
        Rule::all_consumers(4).create(&e);
        let mut d = Spender::new(&e, Subject::device("x"), via);
        let mut c = Spender::new(&e, Subject::consumer("x"), via);
        let mut admitted = (0, 0);
        for now in MIDNIGHT..MIDNIGHT + 6 {
            admitted.0 += u32::from(d.spend(now));
            admitted.1 += u32::from(c.spend(now));
        }
        assert_eq!(admitted, (1, 4), "{via:?}");
    }
}

#[test]
fn a_single_rule_naming_the_device_later_applies_from_the_next_call() {
    for via in WAYS {
        let e = Engine::new();
        Rule::all_devices(100).create(&e);
        let mut d = Spender::new(&e, Subject::device("d"), via);
        assert!(d.spend(MIDNIGHT), "{via:?}");
        assert!(d.spend(MIDNIGHT), "{via:?}");
        Rule::device("d", 1).create(&e);
        // Another device, named by no rule, has this thread keep a copy at
        // the new configuration and marks its own entry: the first
        // device's is not marked, whatever a handle remembers.
        assert!(spend(&e, &Subject::device("other"), MIDNIGHT));
        assert!(spend(&e, &Subject::device("other"), MIDNIGHT));
        // The single rule's own counter starts at zero (D11): one more.
        assert!(d.spend(MIDNIGHT), "{via:?}");
        assert!(!d.spend(MIDNIGHT), "{via:?}");
    }
}

#[test]
fn a_copy_older_than_the_entrys_mark_is_not_used() {
    // This thread keeps a copy at the first configuration. Another thread
    // writes, then spends, which marks the device alone again under the
    // new configuration: by subject, or through the spender itself (a
    // handle then resolves again there, so that back here it is current
    // and its slot is remembered). The mark is current, this thread's copy
    // is not.
    for spender_goes_along in [false, true] {
        for via in WAYS {
            let e = Engine::new();
            let id = Rule::all_devices(4).create(&e);
            let mut d = Spender::new(&e, Subject::device("d"), via);
            // Twice: a handle's first call resolves and keeps the thread's
            // copy, its second marks the entry.
            assert!(d.spend(MIDNIGHT), "{via:?}");
            assert!(d.spend(MIDNIGHT), "{via:?}");
            on_another_thread(|| {
                e.apply_update_json(&id, r#"{"limit":3}"#, MIDNIGHT)
                    .expect("the update");
                if spender_goes_along {
                    assert!(d.spend(MIDNIGHT), "{via:?}");
                } else {
                    assert!(spend(&e, &Subject::device("d"), MIDNIGHT));
                }
            });
            // Three spent of 3: denied, whatever the stale copy's 4 would say.
            assert!(
                !d.spend(MIDNIGHT),
                "{via:?}, spender along: {spender_goes_along}"
            );
        }
    }
}

#[test]
fn a_single_rule_not_yet_in_effect_keeps_the_device_from_being_marked_alone() {
    // The single rule names the device before it applies: until then the
    // device decides under the all-devices rule, but neither a call by
    // subject nor a handle may mark it alone, or calls would keep deciding
    // with the all-devices copy once the single rule applies.
    for via in WAYS {
        let e = Engine::new();
        Rule::all_devices(100).create(&e);
        Rule::device("d", 1)
            .active(MIDNIGHT + 10, FOREVER)
            .create(&e);
        let mut d = Spender::new(&e, Subject::device("d"), via);
        for _ in 0..3 {
            assert!(d.spend(MIDNIGHT), "{via:?}");
        }
        // Another device has this thread keep a copy at this configuration.
        assert!(spend(&e, &Subject::device("other"), MIDNIGHT));
        // From its first second the single rule replaces the all-devices
        // rule (D11), with a counter of its own: one point, by subject and
        // through the handle alike.
        let by_subject = Subject::device("d");
        assert!(spend(&e, &by_subject, MIDNIGHT + 10), "{via:?}");
        assert!(!spend(&e, &by_subject, MIDNIGHT + 10), "{via:?}");
        assert!(!d.spend(MIDNIGHT + 10), "{via:?}");
    }
}

#[test]
fn a_slot_that_moved_is_found_again() {
    // One shard: a thousand other devices make its table grow, which moves
    // every entry, between the handle's calls from its thread's copy.
    for via in WAYS {
        let e = Engine::builder().shards(1).build();
        Rule::all_devices(5).create(&e);
        let mut d = Spender::new(&e, Subject::device("d"), via);
        for _ in 0..3 {
            assert!(d.spend(MIDNIGHT), "{via:?}");
        }
        for i in 0..1_000 {
            assert!(spend(&e, &Subject::device(&format!("o-{i}")), MIDNIGHT));
        }
        // Two left of 5, whatever slot the device's entry moved to.
        assert!(d.spend(MIDNIGHT), "{via:?}");
        assert!(d.spend(MIDNIGHT), "{via:?}");
        assert!(!d.spend(MIDNIGHT), "{via:?}");
    }
}
