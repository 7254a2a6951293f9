//! A ledger in memory: the seam's reference and test double.

use std::collections::HashMap;

use parking_lot::Mutex;

use super::{
    apply_counter_change, Change, CounterKey, CounterRecord, Ledger, LedgerError, LedgerErrorKind,
    RuleRecord, Snapshot,
};

/// The records a durable ledger would keep, in memory: an engine opened on
/// it, dropped without a clean shutdown (a simulated crash) and opened again
/// on the same `MemoryLedger` restarts from what the ledger held. Share it
/// behind an `Arc`.
///
/// # Examples
/// ```
/// use std::sync::Arc;
/// use benefit_quota::{Amount, BenefitType, Engine, MemoryLedger, Subject};
/// let ledger = Arc::new(MemoryLedger::new());
/// let engine = Engine::builder().ledger(Arc::clone(&ledger)).open().unwrap();
/// engine.create_json(r#"{"entity_type":"enterprise_all_devices","benefit_info":{"benefit_type":"resource_point",
///   "active_mode":"absolute_time","started_at":0,"ended_at":253402300799,"limit":5}}"#).unwrap();
/// let (dev, pts) = (Subject::device("d"), BenefitType::ResourcePoint);
/// assert!(engine.try_consume(&dev, pts, Amount::from_units(3), 0).is_allowed());
/// drop(engine); // a clean shutdown gives the unspent grants back
///
/// let engine = Engine::builder().ledger(ledger).open().unwrap();
/// assert_eq!(engine.usage(&dev, 0)[0].used, Amount::from_units(3));
/// ```
#[derive(Debug, Default)]
pub struct MemoryLedger {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    counters: HashMap<CounterKey, CounterRecord>,
    rules: HashMap<String, RuleRecord>,
    commits: u64,
    fail: u32,
    /// The UTC offset its windows are counted at (see [`Ledger::bind`]).
    utc_offset: Option<i32>,
}

impl MemoryLedger {
    /// An empty ledger.
    pub fn new() -> MemoryLedger {
        MemoryLedger::default()
    }

    /// How many batches were committed.
    pub fn commits(&self) -> u64 {
        self.state.lock().commits
    }

    /// The record of a counter, if the ledger holds one.
    pub fn counter(&self, key: &CounterKey) -> Option<CounterRecord> {
        self.state.lock().counters.get(key).copied()
    }

    /// A new ledger holding what this one holds now: what a crash at this
    /// instant leaves behind. A test that crashes an engine (drops it
    /// without a clean shutdown, e.g. with `std::mem::forget`) and reopens
    /// it on the fork loses whatever the engine had not committed yet, as a
    /// killed process does; its writer, still running, commits into this
    /// ledger only.
    pub fn fork(&self) -> MemoryLedger {
        let s = self.state.lock();
        MemoryLedger {
            state: Mutex::new(State {
                counters: s.counters.clone(),
                rules: s.rules.clone(),
                commits: 0,
                fail: 0,
                utc_offset: s.utc_offset,
            }),
        }
    }

    /// Makes the next `n` commits fail (an unavailable ledger), applying nothing.
    pub fn fail_next(&self, n: u32) {
        self.state.lock().fail = n;
    }
}

impl Ledger for MemoryLedger {
    fn bind(&self, utc_offset_seconds: i32) -> Result<(), LedgerError> {
        let mut s = self.state.lock();
        match s.utc_offset {
            Some(o) if o != utc_offset_seconds => Err(super::offset_mismatch(
                "memory",
                i64::from(o),
                utc_offset_seconds,
            )),
            _ => {
                s.utc_offset = Some(utc_offset_seconds);
                Ok(())
            }
        }
    }

    fn load(&self) -> Result<Snapshot, LedgerError> {
        let s = self.state.lock();
        let mut rules: Vec<RuleRecord> = s.rules.values().cloned().collect();
        rules.sort_by_key(|r| r.position);
        let counters = s.counters.iter().map(|(k, v)| (k.clone(), *v)).collect();
        Ok(Snapshot { rules, counters })
    }

    fn commit(&self, changes: &[Change]) -> Result<Vec<u64>, LedgerError> {
        let mut s = self.state.lock();
        if s.fail > 0 {
            s.fail -= 1;
            return Err(LedgerError::new(
                LedgerErrorKind::Io,
                "memory",
                "failing on purpose (fail_next)",
            ));
        }
        let mut granted = Vec::new();
        for change in changes {
            match change {
                Change::Rule(r) => {
                    s.rules
                        .insert(r.info.benefit_id().as_str().to_owned(), r.clone());
                }
                Change::Forget { key, .. } => {
                    let stored = s.counters.get(key).copied();
                    if apply_counter_change(stored, change).0.is_none() {
                        s.counters.remove(key);
                    }
                }
                Change::Grant { key, .. }
                | Change::GiveBack { key, .. }
                | Change::Record { key, .. } => {
                    let stored = s.counters.get(key).copied();
                    let (rec, g) = apply_counter_change(stored, change);
                    if let Some(rec) = rec {
                        s.counters.insert(key.clone(), rec);
                    }
                    if matches!(change, Change::Grant { .. }) {
                        granted.push(g);
                    }
                }
            }
        }
        s.commits += 1;
        Ok(granted)
    }
}
