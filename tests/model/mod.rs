//! A deliberately simple reference model of the platform's semantics, and a
//! driver that runs the same operations against the engine and the model.
//!
//! The model keeps rules in a `Vec` and usage as a log of debit events; usage
//! is recomputed from the log by summing the events of the current window and
//! epoch. Nothing is sharded, cached or rolled over lazily, and windows are
//! found by walking the calendar, so it shares no mechanism with the engine.
//! Shared with the `ops` fuzz target.
#![allow(dead_code)]

pub mod ops;
#[cfg(not(fuzzing))]
pub mod strategy;

use std::sync::Arc;

use benefit_quota::{Amount, Decision, DenyReason, Engine, Member, Subject};
use ops::*;
use serde_json::{json, Value};

const MICROS: u64 = 1_000_000;

#[derive(Debug, Clone)]
pub struct MRule {
    pub id: String,
    pub v: Values,
    /// Bumped when an update restarts usage (D16).
    pub epoch: u64,
}

#[derive(Debug, Clone)]
struct Event {
    rule: usize,
    owner: Option<String>,
    epoch: u64,
    window_start: Option<i64>,
    micros: u64,
}

/// What an operation answered, in plain data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Config(Result<Value, u32>),
    Allowed(Option<(String, &'static str, u64, Option<i64>)>),
    Denied(String, &'static str, &'static str, u64, Option<i64>),
    Time(i64),
}

/// One line of a usage report, in plain data.
pub type UsageLine = (String, u64, i64, u64, Option<(i64, i64)>, u64);

pub struct Model {
    pub offset: i64,
    pub suspend: bool,
    pub rules: Vec<MRule>,
    events: Vec<Event>,
    next_id: u64,
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if is_leap(y) => 29,
        _ => 28,
    }
}

/// The local calendar month containing `now`, found by walking from 1970-01-01.
/// (Operations only generate times from 1971 to 2101.)
fn month_of(offset: i64, now: i64) -> (i64, i64) {
    let local = now + offset;
    let mut start = 0; // 1970-01-01 00:00 UTC, as a local time
    let mut y = 1970;
    loop {
        let len = if is_leap(y) { 366 } else { 365 } * 86_400;
        if local < start + len {
            break;
        }
        start += len;
        y += 1;
    }
    let mut m = 1;
    loop {
        let len = days_in_month(y, m) * 86_400;
        if local < start + len {
            return (start - offset, start + len - offset);
        }
        start += len;
        m += 1;
    }
}

fn unit_seconds(unit: &str) -> i64 {
    match unit {
        "minute" => 60,
        "hour" => 3_600,
        "day" => 86_400,
        _ => 0,
    }
}

fn is_enterprise(t: &str) -> bool {
    t.starts_with("coze_")
}

fn is_all(t: &str) -> bool {
    t.starts_with("enterprise_all_")
}

impl Model {
    pub fn new(offset: i64, suspend: bool) -> Model {
        Model {
            offset,
            suspend,
            rules: Vec::new(),
            events: Vec::new(),
            next_id: 1,
        }
    }

    /// D15: the window of a rule at `now`; `None` for cumulative rules.
    pub fn window(&self, v: &Values, now: i64) -> Option<(i64, i64)> {
        if v.unit == "never" {
            return None;
        }
        if is_enterprise(v.entity_type) {
            return Some(month_of(self.offset, now));
        }
        let u = unit_seconds(v.unit);
        let len = u * v.time;
        let anchor = v.started_at - (v.started_at + self.offset).rem_euclid(u);
        let k = (now - anchor).div_euclid(len);
        Some((anchor + k * len, anchor + (k + 1) * len))
    }

    fn in_effect(&self, v: &Values, now: i64) -> bool {
        if v.status == "cancel" || (self.suspend && v.status == "frozen") {
            return false;
        }
        is_enterprise(v.entity_type) || (v.started_at <= now && now <= v.ended_at)
    }

    /// D9 + D11: (rule index, counter owner) of every applicable rule.
    pub fn applicable(&self, s: &SubjectIds, now: i64) -> Vec<(usize, Option<String>)> {
        let mut out = Vec::new();
        for (id, single, all, tag) in [
            (
                s.device,
                "single_device",
                "enterprise_all_devices",
                "device:",
            ),
            (
                s.consumer,
                "single_custom_consumer",
                "enterprise_all_custom_consumers",
                "consumer:",
            ),
        ] {
            let Some(id) = id else { continue };
            for bt in BENEFIT_TYPES {
                for cumulative in [true, false] {
                    let in_slot = |r: &MRule| {
                        r.v.benefit_type == bt
                            && (r.v.unit == "never") == cumulative
                            && self.in_effect(&r.v, now)
                    };
                    let singles: Vec<usize> = (0..self.rules.len())
                        .filter(|&i| {
                            self.rules[i].v.entity_type == single
                                && self.rules[i].v.entity_id == Some(id)
                                && in_slot(&self.rules[i])
                        })
                        .collect();
                    if !singles.is_empty() {
                        out.extend(singles.into_iter().map(|i| (i, None)));
                    } else {
                        for i in 0..self.rules.len() {
                            if self.rules[i].v.entity_type == all && in_slot(&self.rules[i]) {
                                out.push((i, Some(format!("{tag}{id}"))));
                            }
                        }
                    }
                }
            }
        }
        for (i, r) in self.rules.iter().enumerate() {
            let mine = match r.v.entity_type {
                "coze_user_id" => s.user,
                "coze_role" => s.role,
                "coze_workspace" => s.workspace,
                "coze_organization" => s.org,
                _ => None,
            };
            if mine.is_some() && mine == r.v.entity_id && self.in_effect(&r.v, now) {
                out.push((i, None));
            }
        }
        out
    }

    /// D16: the window a counter's usage counts in at `now`: the caller's,
    /// or the newer one a debit stamped later already moved the counter to
    /// (windows only move forward: a request whose clock is behind counts
    /// in the newer window).
    fn counter_window(&self, rule: usize, owner: &Option<String>, now: i64) -> Option<(i64, i64)> {
        let r = &self.rules[rule];
        let w = self.window(&r.v, now)?;
        let latest = self
            .events
            .iter()
            .filter(|e| e.rule == rule && &e.owner == owner && e.epoch == r.epoch)
            .filter_map(|e| e.window_start)
            .max();
        match latest {
            Some(l) if l > w.0 => self.window(&r.v, l),
            _ => Some(w),
        }
    }

    fn used(&self, rule: usize, owner: &Option<String>, now: i64) -> u64 {
        let r = &self.rules[rule];
        let w = self.counter_window(rule, owner, now).map(|w| w.0);
        let sum: u128 = self
            .events
            .iter()
            .filter(|e| {
                e.rule == rule && &e.owner == owner && e.epoch == r.epoch && e.window_start == w
            })
            .map(|e| u128::from(e.micros))
            .sum();
        sum.min(u128::from(u64::MAX)) as u64
    }

    fn lifetime(&self, rule: usize, owner: &Option<String>) -> u64 {
        let sum: u128 = self
            .events
            .iter()
            .filter(|e| e.rule == rule && &e.owner == owner)
            .map(|e| u128::from(e.micros))
            .sum();
        sum.min(u128::from(u64::MAX)) as u64
    }

    fn limit_micros(&self, rule: usize) -> u64 {
        (self.rules[rule].v.limit as u64).saturating_mul(MICROS)
    }

    pub fn record_json(&self, i: usize) -> Value {
        let r = &self.rules[i];
        let mut v = json!({
            "benefit_id": r.id, "entity_type": r.v.entity_type, "benefit_type": r.v.benefit_type,
            "active_mode": "absolute_time", "started_at": r.v.started_at, "ended_at": r.v.ended_at,
            "limit": r.v.limit, "status": r.v.status, "trigger_unit": r.v.unit,
            "trigger_time": if r.v.unit == "never" { 1 } else { r.v.time },
        });
        if let Some(id) = r.v.entity_id {
            v["entity_id"] = json!(id);
        }
        v
    }

    pub fn records(&self) -> Vec<Value> {
        (0..self.rules.len()).map(|i| self.record_json(i)).collect()
    }

    /// D4 (the parts operations can break) and D5.
    fn validate(&self, v: &Values, replacing: Option<usize>) -> Result<(), u32> {
        if is_enterprise(v.entity_type) && v.benefit_type != "resource_point" {
            return Err(4000);
        }
        if v.ended_at < v.started_at {
            return Err(4000);
        }
        if is_all(v.entity_type) && v.status != "cancel" {
            let clash = self.rules.iter().enumerate().any(|(i, r)| {
                Some(i) != replacing
                    && r.v.entity_type == v.entity_type
                    && r.v.benefit_type == v.benefit_type
                    && (r.v.unit == "never") == (v.unit == "never")
                    && r.v.status != "cancel"
            });
            if clash {
                return Err(4000);
            }
        }
        Ok(())
    }

    /// D16: does replacing `old` by `new` at `now` restart usage?
    fn restarts(&self, old: &Values, new: &Values, now: i64) -> bool {
        match (old.unit == "never", new.unit == "never") {
            (true, true) => false,
            (false, false) => self.window(old, now) != self.window(new, now),
            _ => true,
        }
    }

    fn replace(&mut self, i: usize, mut v: Values, now: i64) -> Value {
        if v.unit == "never" {
            v.time = 1;
        }
        if self.restarts(&self.rules[i].v, &v, now) {
            self.rules[i].epoch += 1;
        }
        self.rules[i].v = v;
        self.record_json(i)
    }

    pub fn create(&mut self, mut v: Values) -> Result<Value, u32> {
        self.validate(&v, None)?;
        if v.unit == "never" {
            v.time = 1;
        }
        let id = loop {
            let id = self.next_id.to_string();
            self.next_id += 1;
            if !self.rules.iter().any(|r| r.id == id) {
                break id;
            }
        };
        self.rules.push(MRule { id, v, epoch: 0 });
        Ok(self.record_json(self.rules.len() - 1))
    }

    pub fn import(&mut self, id: &str, v: Values, now: i64) -> Result<Value, u32> {
        match self.rules.iter().position(|r| r.id == id) {
            Some(i) => {
                let cur = &self.rules[i].v;
                if cur.entity_type != v.entity_type
                    || cur.entity_id != v.entity_id
                    || cur.benefit_type != v.benefit_type
                {
                    return Err(4000);
                }
                if cur.status == "cancel" && v.status != "cancel" {
                    return Err(4000);
                }
                self.validate(&v, Some(i))?;
                Ok(self.replace(i, v, now))
            }
            None => {
                self.validate(&v, None)?;
                let mut v = v;
                if v.unit == "never" {
                    v.time = 1;
                }
                self.rules.push(MRule {
                    id: id.to_owned(),
                    v,
                    epoch: 0,
                });
                Ok(self.record_json(self.rules.len() - 1))
            }
        }
    }

    pub fn update(&mut self, target: u8, p: &PatchValues, now: i64) -> Result<Value, u32> {
        if self.rules.is_empty() {
            return Err(4200);
        }
        let i = usize::from(target) % self.rules.len();
        let cur = self.rules[i].v.clone();
        if cur.status == "cancel" {
            return Err(4000);
        }
        let unit = p.unit.unwrap_or(cur.unit);
        let v = Values {
            limit: p.limit.unwrap_or(cur.limit),
            unit,
            time: p.time.unwrap_or(cur.time),
            started_at: p.started_at.unwrap_or(cur.started_at),
            ended_at: p.ended_at.unwrap_or(cur.ended_at),
            status: p.status.unwrap_or(cur.status),
            ..cur
        };
        self.validate(&v, Some(i))?;
        Ok(self.replace(i, v, now))
    }

    fn seen(&self, s: &SubjectIds, now: i64) -> Vec<Seen> {
        self.applicable(s, now)
            .into_iter()
            .map(|(i, owner)| {
                let r = &self.rules[i];
                Seen {
                    rule: i,
                    bt: r.v.benefit_type,
                    frozen: !self.suspend && r.v.status == "frozen",
                    used: self.used(i, &owner, now),
                    limit: self.limit_micros(i),
                    window: self.counter_window(i, &owner, now),
                    owner,
                }
            })
            .collect()
    }

    /// D13 + D17.
    fn deny(&self, seen: &[Seen], ty: Option<&str>, amount: u64) -> Option<Outcome> {
        // (frozen, resets (None = never), exhausted, -rule): larger wins.
        type Rank = (bool, i64, bool, i64);
        let mut cands: Vec<(Rank, &Seen, &'static str)> = Vec::new();
        for s in seen {
            let (reason, resets) = if s.frozen {
                ("frozen", None)
            } else if s.used >= s.limit {
                ("exhausted", s.window.map(|w| w.1))
            } else if Some(s.bt) == ty && s.used.saturating_add(amount) > s.limit {
                // D14: the sum saturates, so under a saturated limit only a
                // saturated counter blocks.
                ("insufficient", s.window.map(|w| w.1))
            } else {
                continue;
            };
            cands.push((
                (
                    reason == "frozen",
                    resets.unwrap_or(i64::MAX),
                    reason == "exhausted",
                    -(s.rule as i64),
                ),
                s,
                reason,
            ));
        }
        cands.sort_by_key(|c| c.0);
        let (_, s, reason) = cands.pop()?;
        let resets = if reason == "frozen" {
            None
        } else {
            s.window.map(|w| w.1)
        };
        Some(Outcome::Denied(
            self.rules[s.rule].id.clone(),
            s.bt,
            reason,
            s.limit.saturating_sub(s.used),
            resets,
        ))
    }

    fn headroom(&self, seen: &[Seen], ty: Option<&str>) -> Outcome {
        let least = |of: Option<&str>| {
            seen.iter()
                .filter(|s| of.is_none() || Some(s.bt) == of)
                .min_by_key(|s| (s.limit.saturating_sub(s.used), s.rule))
        };
        // D13/T2: a spend of a type no rule counts names what a check names.
        let best = least(ty).or_else(|| least(None));
        Outcome::Allowed(best.map(|s| {
            (
                self.rules[s.rule].id.clone(),
                s.bt,
                s.limit.saturating_sub(s.used),
                s.window.map(|w| w.1),
            )
        }))
    }

    fn debit(&mut self, seen: &[Seen], ty: &str, micros: u64) {
        if micros == 0 {
            return;
        }
        for s in seen.iter().filter(|s| s.bt == ty) {
            self.events.push(Event {
                rule: s.rule,
                owner: s.owner.clone(),
                epoch: self.rules[s.rule].epoch,
                window_start: s.window.map(|w| w.0),
                micros,
            });
        }
    }

    pub fn check(&self, s: &SubjectIds, now: i64) -> Outcome {
        let seen = self.seen(s, now);
        self.deny(&seen, None, 0)
            .unwrap_or_else(|| self.headroom(&seen, None))
    }

    pub fn try_consume(
        &mut self,
        s: &SubjectIds,
        ty: &'static str,
        micros: u64,
        now: i64,
    ) -> Outcome {
        let seen = self.seen(s, now);
        if let Some(d) = self.deny(&seen, Some(ty), micros) {
            return d;
        }
        self.debit(&seen, ty, micros);
        let seen = self.seen(s, now);
        self.headroom(&seen, Some(ty))
    }

    /// Whether [`Model::try_consume`] would allow, changing nothing.
    pub fn would_consume(&self, s: &SubjectIds, ty: &'static str, micros: u64, now: i64) -> bool {
        self.deny(&self.seen(s, now), Some(ty), micros).is_none()
    }

    pub fn record(&mut self, s: &SubjectIds, ty: &'static str, micros: u64, now: i64) -> Outcome {
        let seen = self.seen(s, now);
        self.debit(&seen, ty, micros);
        let seen = self.seen(s, now);
        self.deny(&seen, None, 0)
            .unwrap_or_else(|| self.headroom(&seen, Some(ty)))
    }

    pub fn usage(&self, s: &SubjectIds, now: i64) -> Vec<UsageLine> {
        let mut v: Vec<UsageLine> = self
            .applicable(s, now)
            .into_iter()
            .map(|(i, owner)| {
                let used = self.used(i, &owner, now);
                (
                    self.rules[i].id.clone(),
                    used,
                    self.rules[i].v.limit,
                    self.limit_micros(i).saturating_sub(used),
                    self.counter_window(i, &owner, now),
                    self.lifetime(i, &owner),
                )
            })
            .collect();
        v.sort();
        v
    }
}

struct Seen {
    rule: usize,
    owner: Option<String>,
    bt: &'static str,
    frozen: bool,
    used: u64,
    limit: u64,
    window: Option<(i64, i64)>,
}

// ---------------------------------------------------------------------------
// Driving the engine with the same operations
// ---------------------------------------------------------------------------

pub fn subject_of(s: &SubjectIds) -> Subject<'static> {
    let member = (s.user.is_some() || s.role.is_some() || s.workspace.is_some() || s.org.is_some())
        .then_some(Member {
            coze_user_id: s.user,
            coze_role: s.role,
            workspace_id: s.workspace,
            organization_id: s.org,
        });
    Subject {
        device_id: s.device,
        custom_consumer_id: s.consumer,
        member,
    }
}

fn bt_static(s: &str) -> &'static str {
    BENEFIT_TYPES
        .iter()
        .copied()
        .find(|b| *b == s)
        .unwrap_or("?")
}

pub fn outcome_of(d: Decision) -> Outcome {
    match d {
        Decision::Allowed(h) => Outcome::Allowed(h.map(|h| {
            (
                h.benefit_id.to_string(),
                bt_static(h.benefit_type.as_str()),
                h.remaining.as_micros(),
                h.resets_at,
            )
        })),
        Decision::Denied(d) => Outcome::Denied(
            d.benefit_id.to_string(),
            bt_static(d.benefit_type.as_str()),
            match d.reason {
                DenyReason::Frozen => "frozen",
                DenyReason::Exhausted => "exhausted",
                DenyReason::Insufficient => "insufficient",
                DenyReason::CounterCapacity => "counter_capacity",
                other => panic!("a reason the model does not know: {other}"),
            },
            d.remaining.as_micros(),
            d.resets_at,
        ),
        other => panic!("the model's times are all possible: {other:?}"),
    }
}

pub fn engine_usage(e: &Engine, s: &SubjectIds, now: i64) -> Vec<UsageLine> {
    let mut v: Vec<UsageLine> = e
        .usage(&subject_of(s), now)
        .into_iter()
        .map(|u| {
            (
                u.benefit_id.to_string(),
                u.used.as_micros(),
                u.limit,
                u.remaining.as_micros(),
                u.window.map(|w| (w.start, w.end)),
                u.lifetime.as_micros(),
            )
        })
        .collect();
    v.sort();
    v
}

pub fn engine_records(e: &Engine) -> Vec<Value> {
    e.records()
        .iter()
        .map(|r| serde_json::to_value(r).unwrap_or(Value::Null))
        .collect()
}

pub fn config_outcome(r: Result<benefit_quota::BenefitInfo, benefit_quota::ApiError>) -> Outcome {
    Outcome::Config(
        r.map(|i| serde_json::to_value(&i).unwrap_or(Value::Null))
            .map_err(|e| e.code().as_u32()),
    )
}

/// A run: the engine, the model, the clock, and the fixed subjects.
pub struct Harness {
    pub engine: Arc<Engine>,
    pub model: Model,
    pub base: i64,
    pub now: i64,
    pub subjects: Vec<SubjectIds>,
    /// One handle per subject, made before any rule exists.
    pub handles: Vec<benefit_quota::SubjectHandle>,
    /// One leased handle per subject (lease sizes from one micro-unit to
    /// thousands of units), made before any rule exists. A leased handle
    /// decides as the model only while it is its counters' only spender, so
    /// every other check or spend first gives all leases back
    /// ([`Harness::release_except`]): then at most one handle holds leases,
    /// and only the calls through it spend meanwhile.
    pub leased: Vec<benefit_quota::SubjectHandle>,
    /// The leased handle that may hold leases (the last one used).
    pub holder: Option<usize>,
}

/// Lease sizes of the harness's leased handles, in micro-units, by subject.
const LEASES: [u64; 5] = [1, 500_000, 3_000_000, 40_000_000, 5_000_000_000];

impl Harness {
    pub fn new(base: i64, offset_hours: i32, suspend: bool) -> Harness {
        Harness::with_offset_seconds(base, offset_hours * 3_600, suspend)
    }

    /// [`Harness::new`] with an offset that need not be whole hours
    /// (UTC+5:30, UTC+5:45, UTC−9:30).
    pub fn with_offset_seconds(base: i64, offset_seconds: i32, suspend: bool) -> Harness {
        let utc_offset = benefit_quota::UtcOffset::from_seconds(offset_seconds)
            .unwrap_or_else(|| panic!("offset {offset_seconds} s is not one the engine takes"));
        let engine = Arc::new(
            Engine::builder()
                .utc_offset(utc_offset)
                .frozen_policy(if suspend {
                    benefit_quota::FrozenPolicy::Suspend
                } else {
                    benefit_quota::FrozenPolicy::Block
                })
                .shards(4)
                .rule_replicas(2)
                .build(),
        );
        let subjects = subjects();
        let handles = subjects
            .iter()
            .map(|s| engine.handle_owned(&subject_of(s)))
            .collect();
        let leased = subjects
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let lease = Amount::from_micros(LEASES[i % LEASES.len()]);
                engine.handle_owned(&subject_of(s)).with_lease(lease)
            })
            .collect();
        Harness {
            engine,
            model: Model::new(i64::from(utc_offset.seconds()), suspend),
            base,
            now: base,
            subjects,
            handles,
            leased,
            holder: None,
        }
    }

    /// Whether a check or spend with this `subject` byte goes through the
    /// subject's leased handle: half of the calls that would go by subject
    /// (a quarter of all), so that the exact handles keep their half (with a
    /// quarter, removing the activation bound from the handle path no longer
    /// failed this test).
    fn is_leased(subject: u8) -> bool {
        subject >> 7 == 0 && subject & 0x20 != 0
    }

    /// Gives back the leases of every leased handle but `keep` (a check or
    /// spend is about to go through it), so that it is the only spender
    /// holding leases; `None`: of all of them.
    fn release_except(&mut self, keep: Option<usize>) {
        if let Some(h) = self.holder.filter(|&h| Some(h) != keep) {
            self.leased[h].release();
        }
        self.holder = keep;
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

    fn status_patch(status: &'static str) -> PatchValues {
        PatchValues {
            status: Some(status),
            ..PatchValues::default()
        }
    }

    /// Applies `op` to both sides; returns (engine's answer, model's answer).
    pub fn step(&mut self, op: &Op) -> (Outcome, Outcome) {
        let now = self.now;
        match op {
            Op::Create(spec) => {
                let v = spec.values(self.base);
                (
                    config_outcome(self.engine.create_json(create_body(&v))),
                    Outcome::Config(self.model.create(v)),
                )
            }
            Op::Import { id, spec } => {
                let v = spec.values(self.base);
                let id = format!("p{}", id % 4);
                (
                    config_outcome(self.engine.import_json(record_body(&id, &v), now)),
                    Outcome::Config(self.model.import(&id, v, now)),
                )
            }
            Op::Update { target, patch } => {
                let p = patch.values(self.base);
                self.update(*target, &p)
            }
            Op::Freeze(t) => self.update(*t, &Self::status_patch("frozen")),
            Op::Unfreeze(t) => self.update(*t, &Self::status_patch("valid")),
            Op::Cancel(t) => self.update(*t, &Self::status_patch("cancel")),
            Op::Check { subject } => {
                let i = usize::from(*subject) % self.subjects.len();
                let s = self.subjects[i];
                let leased = Self::is_leased(*subject);
                self.release_except(leased.then_some(i));
                let engine = if leased {
                    self.leased[i].check(now)
                } else if subject >> 7 == 1 {
                    self.handles[i].check(now)
                } else {
                    self.engine.check(&subject_of(&s), now)
                };
                (outcome_of(engine), self.model.check(&s, now))
            }
            Op::TryConsume {
                subject,
                benefit_type,
                micros,
            } => self.spend(*subject, *benefit_type, *micros, false),
            Op::Record {
                subject,
                benefit_type,
                micros,
            } => self.spend(*subject, *benefit_type, *micros, true),
            Op::Advance(step) => {
                // Never before 1971, where the model's times start (a long
                // run of steps back, which the fuzzer can draw, stops there).
                self.now = (self.now + step.seconds()).max(31_536_000);
                (Outcome::Time(self.now), Outcome::Time(self.now))
            }
        }
    }

    /// `try_consume` (or, with `record`, `record`) on both sides.
    fn spend(
        &mut self,
        subject: u8,
        benefit_type: u8,
        micros: u32,
        record: bool,
    ) -> (Outcome, Outcome) {
        let i = usize::from(subject) % self.subjects.len();
        let s = self.subjects[i];
        let (bt, m) = (benefit_type_of(benefit_type), amount_micros(micros));
        let ebt = benefit_quota::BenefitType::from_wire(bt)
            .unwrap_or(benefit_quota::BenefitType::ResourcePoint);
        let (subj, amount, now) = (subject_of(&s), Amount::from_micros(m), self.now);
        let leased = Self::is_leased(subject);
        self.release_except(leased.then_some(i));
        let e = &self.engine;
        let h = if leased {
            &mut self.leased[i]
        } else {
            &mut self.handles[i]
        };
        let (through_handle, batch) = if leased {
            (true, subject & 0x10 != 0)
        } else {
            (subject >> 7 == 1, subject & 0x40 != 0)
        };
        let engine = match (record, through_handle) {
            (true, false) => e.record(&subj, ebt, amount, now),
            (true, true) => h.record(ebt, amount, now),
            (false, false) => e.try_consume(&subj, ebt, amount, now),
            (false, true) if batch => {
                // through the batch entry point, as a batch of one
                let mut out = Vec::new();
                let mut reqs = [benefit_quota::HandleRequest {
                    handle: h,
                    benefit_type: ebt,
                    amount,
                }];
                e.try_consume_many_handles(&mut reqs, now, &mut out);
                assert_eq!(out.len(), 1, "one decision per request");
                out.pop().expect("one decision per request")
            }
            (false, true) => h.try_consume(ebt, amount, now),
        };
        let model = if record {
            self.model.record(&s, bt, m, now)
        } else {
            self.model.try_consume(&s, bt, m, now)
        };
        (outcome_of(engine), model)
    }

    fn update(&mut self, target: u8, p: &PatchValues) -> (Outcome, Outcome) {
        let id = self.target_id(target);
        (
            config_outcome(self.engine.apply_update_json(&id, update_body(p), self.now)),
            Outcome::Config(self.model.update(target, p, self.now)),
        )
    }

    /// Compares everything observable; returns a description of the first difference.
    /// Usage is compared once no leased handle holds leases (they count as
    /// used until given back, SEMANTICS.md L1): after the next step that
    /// does not go through the holder.
    pub fn compare_state(&self) -> Result<(), String> {
        let (er, mr) = (engine_records(&self.engine), self.model.records());
        if er != mr {
            return Err(format!("records differ:\nengine {er:?}\nmodel  {mr:?}"));
        }
        if self.holder.is_some() {
            return Ok(());
        }
        for s in &self.subjects {
            let (eu, mu) = (
                engine_usage(&self.engine, s, self.now),
                self.model.usage(s, self.now),
            );
            if eu != mu {
                return Err(format!(
                    "usage of {s:?} differs at {}:\nengine {eu:?}\nmodel  {mu:?}",
                    self.now
                ));
            }
        }
        Ok(())
    }
}
