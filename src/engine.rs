//! The engine: configuration plane (create, import, update, list) and
//! enforcement (check, try_consume, record, usage).

use std::sync::atomic::{AtomicUsize, Ordering};

use crossbeam_utils::CachePadded;
use smallvec::SmallVec;

use crate::amount::Amount;
use crate::decide::{
    add_to_counters, conclude, decide_one_owner, decide_one_owner_general, denied_without_room,
    effective_window, has_type, try_allow_across, Op, OwnersCounters, RuleView, Rules, Seen,
    SeenVec, FAST_RULES,
};
use crate::decision::{Decision, UsageReport};
use crate::errors::ApiError;
use crate::period::{possible_now, rule_window, UtcOffset, Window};
use crate::rules::{
    d5_error, Applied, AppliedVec, FrozenPolicy, RuleEntry, RuleSet, RuleShape, Validity,
};
use crate::state::{CounterState, Locked, Owner, OwnerHasher, SlotHint, Store};
use crate::subject::{prefetch_ids, Subject};
use crate::sync::{AtomicU64, Mutex, SpinGuard, SpinLock};
use crate::types::{BenefitId, BenefitInfo, BenefitType};
use crate::validate::{self, MAX_BODY_BYTES};
use crate::wire::{BenefitInfoWire, CreateBody, ListData, ListQuery, UpdateBody};

/// An engine's effective configuration, as [`Engine::config`] reports it;
/// set through [`Engine::builder`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct EngineConfig {
    /// Offset in which period boundaries are computed (D15). Default UTC+8.
    pub utc_offset: UtcOffset,
    /// What a frozen rule does (D12). Default [`FrozenPolicy::Block`].
    pub frozen_policy: FrozenPolicy,
    /// Number of counter shards; rounded up to a power of two in `1..=65536`.
    /// Default 1024: enough that threads deciding for different subjects
    /// rarely share a shard lock (a shared lock's cache line moves between
    /// cores on every call: with 64 shards two threads on disjoint devices
    /// barely beat one), few enough that the locks stay in cache (128 KiB)
    /// beside the counters of tens of thousands of devices, which more
    /// shards made slower to decide. An engine tracking millions of devices
    /// decides a little faster with 8192 (their counters miss the cache
    /// either way).
    pub shards: usize,
    /// Copies of the rule table. Each thread reads its own copy (threads are
    /// spread over the copies), or the next free one when another thread
    /// holds it, so concurrent checks rarely write to a shared lock word;
    /// configuration writes update every copy. Rounded up to a power of two
    /// in `1..=64`. Default: the number of CPUs, at most 16.
    pub rule_replicas: usize,
    /// Most counters tracked at once. A request that would create more is
    /// denied with [`crate::DenyReason::CounterCapacity`] and changes nothing
    /// (a `record`, of usage already spent, is still booked on the counters
    /// that exist);
    /// [`Engine::evict`] frees counters that no longer matter. A ledger's
    /// counters restored by `open` are all kept, past the cap if need be
    /// (new counters are then refused until evict makes room). Default: no
    /// cap.
    pub max_counters: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        EngineConfig {
            utc_offset: UtcOffset::CHINA,
            frozen_policy: FrozenPolicy::Block,
            shards: 1024,
            rule_replicas: cpus.min(16),
            max_counters: usize::MAX,
        }
    }
}

/// Builds an [`Engine`]: see [`Engine::builder`].
#[derive(Debug, Clone)]
#[must_use]
pub struct EngineBuilder {
    pub(crate) config: EngineConfig,
}

impl EngineBuilder {
    /// Offset in which period boundaries are computed (D15). Default UTC+8.
    pub fn utc_offset(mut self, offset: UtcOffset) -> Self {
        self.config.utc_offset = offset;
        self
    }

    /// What a frozen rule does (D12). Default [`FrozenPolicy::Block`].
    pub fn frozen_policy(mut self, policy: FrozenPolicy) -> Self {
        self.config.frozen_policy = policy;
        self
    }

    /// Number of counter shards, rounded up to a power of two in
    /// `1..=65536` (see [`EngineConfig::shards`]). Default 1024.
    pub fn shards(mut self, shards: usize) -> Self {
        self.config.shards = shards;
        self
    }

    /// Copies of the rule table, rounded up to a power of two in `1..=64`
    /// (see [`EngineConfig::rule_replicas`]). Default: the number of CPUs,
    /// at most 16.
    pub fn rule_replicas(mut self, replicas: usize) -> Self {
        self.config.rule_replicas = replicas;
        self
    }

    /// Most counters tracked at once (see [`EngineConfig::max_counters`]).
    /// Default: no cap.
    pub fn max_counters(mut self, max: usize) -> Self {
        self.config.max_counters = max;
        self
    }

    /// The engine.
    pub fn build(self) -> Engine {
        Engine::with_config(self.config)
    }
}

/// The quota engine. `Send + Sync`; share it behind an `Arc`.
///
/// See the crate documentation for an example.
pub struct Engine {
    /// Identical copies of the rule table; see [`EngineConfig::rule_replicas`].
    pub(crate) replicas: Box<[CachePadded<SpinLock<RuleSet>>]>,
    /// Serialises configuration writes: a writer validates against replica 0
    /// with replica 0 locked, then locks every replica only to apply.
    writer: Mutex<()>,
    /// Bumped by every configuration write, with every replica locked:
    /// a [`crate::SubjectHandle`] compares it, under its shard locks, with the
    /// version it resolved at.
    pub(crate) version: CachePadded<AtomicU64>,
    /// Some configuration was written or imported (see
    /// [`Engine::is_configured`]).
    configured: std::sync::atomic::AtomicBool,
    /// Metric handles (feature `metrics`; empty otherwise).
    pub(crate) observe: crate::observe::Observe,
    pub(crate) store: Store,
    pub(crate) config: EngineConfig,
    token_key: ahash::RandomState,
    /// The ledger and its writer, when usage is kept outside the process
    /// (see `grant`); `None` (the default) costs one branch per call.
    pub(crate) grants: Option<Box<crate::grant::Grants>>,
    /// This engine among all engines the process made: the key of the
    /// threads' copies of its rules (`crate::cached`).
    pub(crate) id: u64,
}

/// This thread's rule-table replica (threads are numbered round-robin).
#[inline]
fn replica_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local!(static MINE: usize = NEXT.fetch_add(1, Ordering::Relaxed));
    MINE.with(|m| *m)
}

impl Default for Engine {
    fn default() -> Self {
        Engine::new()
    }
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("config", &self.config)
            .field("rules", &self.read().rules.len())
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// An engine with the default configuration (UTC+8, frozen blocks, 1024 shards).
    pub fn new() -> Engine {
        Engine::builder().build()
    }

    /// A builder for an engine with another configuration.
    ///
    /// # Examples
    /// ```
    /// use benefit_quota::{Engine, FrozenPolicy, UtcOffset};
    /// let engine = Engine::builder()
    ///     .utc_offset(UtcOffset::UTC)
    ///     .frozen_policy(FrozenPolicy::Suspend)
    ///     .shards(1000) // rounded up to 1024
    ///     .build();
    /// assert_eq!(engine.config().shards, 1024);
    /// assert_eq!(engine.config().utc_offset, UtcOffset::UTC);
    /// ```
    pub fn builder() -> EngineBuilder {
        EngineBuilder {
            config: EngineConfig::default(),
        }
    }

    /// An engine with `config`.
    fn with_config(config: EngineConfig) -> Engine {
        let shards = config.shards.clamp(1, 1 << 16).next_power_of_two();
        let rule_replicas = config.rule_replicas.clamp(1, 64).next_power_of_two();
        let config = EngineConfig {
            shards,
            rule_replicas,
            ..config
        };
        let hasher = OwnerHasher::new();
        Engine {
            replicas: (0..rule_replicas)
                .map(|_| {
                    CachePadded::new(SpinLock::new(RuleSet::new(
                        hasher.clone(),
                        config.utc_offset,
                    )))
                })
                .collect(),
            writer: Mutex::new(()),
            store: Store::new(shards, hasher, config.max_counters),
            config,
            token_key: ahash::RandomState::new(),
            version: CachePadded::new(AtomicU64::new(0)),
            configured: std::sync::atomic::AtomicBool::new(false),
            observe: crate::observe::Observe::new(),
            grants: None,
            id: {
                static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
                NEXT.fetch_add(1, Ordering::Relaxed)
            },
        }
    }

    /// A copy of the rule table, locked: this thread's own if it is free,
    /// else the next free one (the copies are identical), else whichever
    /// is released first ([`Engine::read_contended`]). Each copy
    /// has a spin lock, not a read-write lock: a reader takes and releases
    /// it with one compare-and-swap and one store, where a shared read lock
    /// costs two read-modify-writes on a word every reader of the copy
    /// writes; readers of one copy at once are rare (one copy per CPU) and
    /// go to another.
    #[inline]
    pub(crate) fn read(&self) -> SpinGuard<'_, RuleSet> {
        let mask = self.replicas.len() - 1;
        let mine = replica_index() & mask;
        if let Some(guard) = self.replicas[mine].try_lock() {
            return guard;
        }
        self.read_contended(mine)
    }

    /// [`Engine::read`] when this thread's copy is taken: tries the
    /// others, then waits for whichever copy is released first.
    ///
    /// Not for this thread's own copy alone: a writer holds copy 0 while
    /// it validates and every copy only while it applies, so a reader that
    /// queued on copy 0 could lose it to the writer's next write again and
    /// again, while another copy stood free.
    #[cold]
    #[inline(never)]
    fn read_contended(&self, mine: usize) -> SpinGuard<'_, RuleSet> {
        let mask = self.replicas.len() - 1;
        // The first free copy from `mine + from` on, in turn.
        let free = |from: usize| {
            (from..self.replicas.len())
                .find_map(|step| self.replicas[(mine + step) & mask].try_lock())
        };
        if let Some(guard) = free(1) {
            return guard;
        }
        #[cfg(not(benefit_quota_loom))]
        loop {
            use spin::RelaxStrategy;
            crate::sync::SpinThenYield::relax();
            if let Some(guard) = free(0) {
                return guard;
            }
        }
        // The model's locks block: a waiter that polled them would make
        // loom explore an unbounded loop.
        #[cfg(benefit_quota_loom)]
        self.replicas[mine].lock()
    }

    /// Applies a configuration change to every copy, locked in index order
    /// (writers serialise on the writer mutex first), and bumps the version
    /// before releasing them.
    fn publish(&self, apply: impl FnMut(&mut RuleSet)) {
        // With a ledger, the changed rules are queued to its writer before
        // the copies are released, so that any grant for them (which only
        // a call that sees them can ask for) is committed after them; then
        // this waits until they are durable.
        let pending = self.publish_with(apply, |r| self.send_rules(r));
        self.await_rules(pending);
    }

    /// [`Engine::publish`], without storing the rules in the ledger (a
    /// restore from it).
    pub(crate) fn publish_unpersisted(&self, apply: impl FnMut(&mut RuleSet)) {
        self.publish_with(apply, |_| ());
    }

    /// Applies a configuration change to every copy and calls `then` with
    /// the first, all still locked.
    fn publish_with<T>(
        &self,
        mut apply: impl FnMut(&mut RuleSet),
        then: impl FnOnce(&RuleSet) -> T,
    ) -> T {
        let mut all: Vec<SpinGuard<'_, RuleSet>> = self.replicas.iter().map(|r| r.lock()).collect();
        for r in all.iter_mut() {
            apply(r);
        }
        let out = then(&all[0]);
        // Configured first: a call decided under these rules never finds
        // the engine unconfigured.
        self.configured.store(true, Ordering::Release);
        self.version.fetch_add(1, Ordering::Release);
        out
    }

    /// Whether any rule was ever created, updated or imported here (an
    /// import of an empty listing counts: the platform may have no rule).
    /// An engine that was never configured allows every call as unlimited;
    /// a gateway can hold traffic, or answer "not ready", until this is
    /// true.
    ///
    /// # Examples
    /// ```
    /// use benefit_quota::Engine;
    /// let engine = Engine::new();
    /// assert!(!engine.is_configured());
    /// engine.import_response_json(r#"{"code":0,"msg":"","data":{"has_more":false,"page_token":"","benefit_infos":[]}}"#, 0).unwrap();
    /// assert!(engine.is_configured());
    /// ```
    pub fn is_configured(&self) -> bool {
        self.configured.load(Ordering::Acquire)
    }

    /// The effective configuration.
    pub fn config(&self) -> EngineConfig {
        self.config
    }

    // ----------------------------------------------------------------------
    // Configuration plane
    // ----------------------------------------------------------------------

    /// Creates a rule from a create body (F9), assigning a fresh decimal id (D7).
    ///
    /// Takes no `now`, unlike the other writes: a new rule has no usage to
    /// keep or reset (D16), so nothing it does depends on the time.
    ///
    /// # Errors
    /// 4000 with the field named if the body is invalid (D4) or would break
    /// D5. Nothing changes on error.
    pub fn create(&self, body: &CreateBody) -> Result<BenefitInfo, ApiError> {
        self.observed("create", || self.create_unobserved(body))
    }

    /// A configuration write of `kind`, counted and traced (see `observe`).
    pub(crate) fn observed<T>(
        &self,
        kind: &'static str,
        write: impl FnOnce() -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        let _span = crate::observe::span!("benefit_quota.config_write", kind = kind);
        let result = write();
        self.observe.config_write(kind, result.is_ok());
        result
    }

    fn create_unobserved(&self, body: &CreateBody) -> Result<BenefitInfo, ApiError> {
        let draft = validate::create(body)?;
        let _writer = self.writer.lock();
        let rules = self.replicas[0].lock();
        let shape = RuleShape {
            entity_type: draft.entity_type,
            benefit_type: draft.benefit_type,
            cumulative: draft.reset.is_cumulative(),
            status: draft.status,
        };
        rules.check_unique(&shape, |_| false, "benefit_info.trigger_unit")?;
        let (id, next_id) = rules.generate_id();
        let id = BenefitId::new(&id).ok_or_else(|| ApiError::invalid("benefit_id", "internal"))?;
        let info = draft.with_id(id);
        drop(rules);
        self.publish(|r| {
            r.insert(info.clone(), next_id);
        });
        Ok(info)
    }

    /// [`Engine::create`] from the JSON body.
    ///
    /// # Errors
    /// 4000 naming the field for malformed JSON, wrong types (D1) or invalid values (D4).
    pub fn create_json(&self, body: impl AsRef<[u8]>) -> Result<BenefitInfo, ApiError> {
        let body: CreateBody = validate::parse_json(body.as_ref(), MAX_BODY_BYTES)?;
        self.create(&body)
    }

    /// Applies a PUT body to rule `benefit_id` (F11, D2, D16).
    ///
    /// Partial: absent or `null` fields keep their value. Usage survives the
    /// update except as D16 says (a change of the window containing `now`, or
    /// a switch between cumulative and periodic).
    ///
    /// # Errors
    /// 4200 for an unknown id; 4000 naming the field for a `benefit_id`
    /// mismatch, a cancelled rule (D6), an invalid merged record (D4) or a D5
    /// conflict; 4000 naming `now` outside `0..=253402300799` (T1). Nothing
    /// changes on error.
    pub fn apply_update(
        &self,
        benefit_id: &str,
        body: &UpdateBody,
        now: i64,
    ) -> Result<BenefitInfo, ApiError> {
        self.observed("update", || self.update_unobserved(benefit_id, body, now))
    }

    fn update_unobserved(
        &self,
        benefit_id: &str,
        body: &UpdateBody,
        now: i64,
    ) -> Result<BenefitInfo, ApiError> {
        let now = possible(now)?;
        let _writer = self.writer.lock();
        let rules = self.replicas[0].lock();
        let slot = rules
            .slot_of(benefit_id)
            .ok_or_else(|| ApiError::not_found(benefit_id))?;
        let current = &rules.rules[slot as usize].info;
        if current.status == crate::Status::Cancel {
            return Err(ApiError::invalid(
                "status",
                "the rule is cancelled; a cancelled rule cannot be updated",
            ));
        }
        let merged = validate::update(current, benefit_id, body)?;
        let field = if body.trigger_unit.is_some() {
            "trigger_unit"
        } else {
            "status"
        };
        rules.check_unique(&RuleShape::of(&merged), |s| s == slot, field)?;
        let bump = self.period_changed(current, &merged, now);
        drop(rules);
        self.publish(|r| r.replace(slot, merged.clone(), bump));
        Ok(merged)
    }

    /// [`Engine::apply_update`] from the JSON body.
    ///
    /// # Errors
    /// As [`Engine::apply_update`], plus 4000 naming the field for malformed JSON or wrong types.
    pub fn apply_update_json(
        &self,
        benefit_id: &str,
        body: impl AsRef<[u8]>,
        now: i64,
    ) -> Result<BenefitInfo, ApiError> {
        let body: UpdateBody = validate::parse_json(body.as_ref(), MAX_BODY_BYTES)?;
        self.apply_update(benefit_id, &body, now)
    }

    /// D16: must counters of a rule restart from zero after this change?
    fn period_changed(&self, old: &BenefitInfo, new: &BenefitInfo, now: i64) -> bool {
        match (old.reset.is_cumulative(), new.reset.is_cumulative()) {
            (true, true) => false,
            (false, false) => {
                let fam = old.entity_type.family();
                let off = self.config.utc_offset;
                rule_window(fam, old.reset, old.started_at, off, now)
                    != rule_window(fam, new.reset, new.started_at, off, now)
            }
            _ => true,
        }
    }

    /// Imports (upserts) a platform record with its own `benefit_id` (D7).
    ///
    /// A new id is appended; a known id is replaced as an update would replace
    /// it (D16 applies to its counters).
    ///
    /// # Errors
    /// 4000 naming the field if the record is invalid, changes the scope or
    /// benefit type of a known rule, revives a cancelled rule, or breaks D5;
    /// 4000 naming `now` outside `0..=253402300799` (T1).
    pub fn import(&self, record: &BenefitInfoWire, now: i64) -> Result<BenefitInfo, ApiError> {
        let info = validate::record(record, "")?;
        self.import_all(vec![info], now)?
            .pop()
            .ok_or_else(|| ApiError::invalid("body", "empty import"))
    }

    /// [`Engine::import`] from a record's JSON.
    ///
    /// # Errors
    /// As [`Engine::import`], plus malformed JSON.
    pub fn import_json(&self, record: impl AsRef<[u8]>, now: i64) -> Result<BenefitInfo, ApiError> {
        let record: BenefitInfoWire = validate::parse_json(record.as_ref(), MAX_BODY_BYTES)?;
        self.import(&record, now)
    }

    /// Imports every record of a platform response: a list response
    /// (`data.benefit_infos`), a create response (`data.benefit_info`) or an
    /// update response (`data` is the record). The envelope may be omitted
    /// (the `data` object alone). All or nothing.
    ///
    /// It adds and updates only: a list page is imported as it is, whether
    /// or not more pages follow, and rules it does not hold stay as they
    /// are. To make the rules equal to the platform's whole listing, collect
    /// its pages in a [`crate::Listing`] and call [`Engine::sync`].
    ///
    /// # Errors
    /// 4000 naming the field (e.g. `data.benefit_infos[2].limit`) if any record is
    /// invalid; the envelope's own code and message if its `code` is not 0
    /// (an error the platform answered: 5000 for a code the platform does
    /// not list); 4000 naming `now` outside `0..=253402300799` (T1).
    /// Nothing changes on error.
    pub fn import_response_json(
        &self,
        response: impl AsRef<[u8]>,
        now: i64,
    ) -> Result<Vec<BenefitInfo>, ApiError> {
        let (data, prefix) = validate::response_data(response.as_ref())?;
        let mut infos = Vec::new();
        if let Some(list) = data.get("benefit_infos") {
            let wires = validate::wire_records(list.clone(), &format!("{prefix}benefit_infos"))?;
            for (i, w) in wires.iter().enumerate() {
                infos.push(validate::record(
                    w,
                    &format!("{prefix}benefit_infos[{i}]."),
                )?);
            }
        } else {
            let (rec, p) = match data.get("benefit_info") {
                Some(r) => (r.clone(), format!("{prefix}benefit_info.")),
                None => (data, prefix.to_owned()),
            };
            let w = validate::wire_record(rec, p.trim_end_matches('.'))?;
            let known = w.benefit_id.as_deref().filter(|id| self.get(id).is_some());
            match known {
                // An update response as the platform's page shows it: the
                // record without its scope or reset fields. Those it leaves
                // out keep the known rule's values, as an update's body does,
                // read under the writer lock (a write landing between a read
                // here and the import would be undone by the stale copy).
                Some(id) if w.entity_type.is_none() => {
                    let id = id.to_owned();
                    return self.observed("import", || {
                        let mut kept_withdrawn = None;
                        let (infos, _) = self.import_batch(Vec::new(), now, |rules, infos| {
                            let Some(slot) = rules.slot_of(&id) else {
                                return Err(ApiError::not_found(&id));
                            };
                            let entry = &rules.rules[slot as usize];
                            let merged = update_response(&entry.info, &w, &p)?;
                            if entry.withdrawn && w.status.is_none() {
                                // A rule the last sync withdrew stays
                                // withdrawn (S3): a response that does not
                                // say its status does not cancel it for good.
                                kept_withdrawn = Some(merged.clone());
                                return Ok(vec![merged]);
                            }
                            infos.push(merged);
                            Ok(Vec::new())
                        })?;
                        // Imported and kept withdrawn: the record as stored.
                        Ok(match kept_withdrawn {
                            Some(info) => vec![info],
                            None => infos,
                        })
                    });
                }
                _ => infos.push(validate::record(&w, &p)?),
            }
        }
        self.import_all(infos, now)
    }

    fn import_all(&self, infos: Vec<BenefitInfo>, now: i64) -> Result<Vec<BenefitInfo>, ApiError> {
        self.observed("import", || {
            let (infos, _) = self.import_batch(infos, now, |_, _| Ok(Vec::new()))?;
            Ok(infos)
        })
    }

    /// Imports `infos` (upserts, D7) and, in the same atomic step, cancels
    /// as *withdrawn* the records `withdraw` picks from the rule set as it
    /// stands under the writer lock (S2; given the records being imported,
    /// which it may also leave out of the import first).
    /// All or nothing. Returns the imported records and what happened to
    /// each record, the withdrawn ones last.
    pub(crate) fn import_batch(
        &self,
        mut infos: Vec<BenefitInfo>,
        now: i64,
        withdraw: impl FnOnce(&RuleSet, &mut Vec<BenefitInfo>) -> Result<Vec<BenefitInfo>, ApiError>,
    ) -> Result<Imported, ApiError> {
        let now = possible(now)?;
        let _writer = self.writer.lock();
        let rules = self.replicas[0].lock();
        let withdrawn = withdraw(&rules, &mut infos)?;
        let listed = infos.len();
        infos.extend(withdrawn);
        // Validate the whole batch against the state it would produce.
        let slots: Vec<Option<u32>> = infos
            .iter()
            .map(|info| rules.slot_of(info.benefit_id.as_str()))
            .collect();
        // Sets, not scans of the earlier records: a listing of tens of
        // thousands of single-entity rules is checked here, on every sync,
        // under the writer lock.
        let mut ids: std::collections::HashSet<&BenefitId> =
            std::collections::HashSet::with_capacity(infos.len());
        let mut all_scope: Vec<&BenefitInfo> = Vec::new();
        for (info, slot) in infos.iter().zip(&slots) {
            if !ids.insert(&info.benefit_id) {
                return Err(ApiError::invalid(
                    "benefit_id",
                    format_args!("{} appears twice in the import", info.benefit_id),
                ));
            }
            if let Some(slot) = slot {
                let cur = &rules.rules[*slot as usize].info;
                for (field, same) in [
                    ("entity_type", cur.entity_type == info.entity_type),
                    ("entity_id", cur.entity_id == info.entity_id),
                    ("benefit_type", cur.benefit_type == info.benefit_type),
                ] {
                    if !same {
                        return Err(ApiError::invalid(
                            field,
                            format_args!("differs from the stored rule {}", info.benefit_id),
                        ));
                    }
                }
                let entry = &rules.rules[*slot as usize];
                if cur.status == crate::Status::Cancel
                    && info.status != crate::Status::Cancel
                    && !entry.withdrawn
                {
                    return Err(ApiError::invalid(
                        "status",
                        format_args!(
                            "rule {} is cancelled; it cannot be revived",
                            info.benefit_id
                        ),
                    ));
                }
            }
            // D5 against the stored rules the batch leaves in place, and
            // against the batch's own earlier records.
            let shape = RuleShape::of(info);
            if !info.entity_type.is_all_scope() {
                continue; // D5 limits all-scope rules only
            }
            rules.check_unique(&shape, |s| slots.contains(&Some(s)), "trigger_unit")?;
            if let Some(o) = all_scope
                .iter()
                .find(|o| shape.clashes_with(&RuleShape::of(o)))
            {
                return Err(d5_error(&shape, o.benefit_id.as_str(), "trigger_unit"));
            }
            all_scope.push(info);
        }
        let plan: Vec<(Option<u32>, bool)> = infos
            .iter()
            .zip(&slots)
            .map(|(info, slot)| match slot {
                Some(slot) => (
                    Some(*slot),
                    self.period_changed(&rules.rules[*slot as usize].info, info, now),
                ),
                None => (None, false),
            })
            .collect();
        let changes: Vec<(BenefitId, Change)> = infos
            .iter()
            .zip(&slots)
            .enumerate()
            .map(|(i, (info, slot))| {
                (
                    info.benefit_id.clone(),
                    match slot {
                        _ if i >= listed => Change::Withdrawn,
                        None => Change::Created,
                        Some(slot) => {
                            let cur = &rules.rules[*slot as usize].info;
                            if cur == info {
                                Change::Unchanged
                            } else if cur.status == crate::Status::Cancel
                                && info.status != crate::Status::Cancel
                            {
                                Change::Revived
                            } else {
                                Change::Updated
                            }
                        }
                    },
                )
            })
            .collect();
        drop(rules);
        self.publish(|r| {
            let next_id = r.next_id();
            for (i, (info, (slot, bump))) in infos.iter().zip(&plan).enumerate() {
                match slot {
                    Some(slot) => {
                        r.replace(*slot, info.clone(), *bump);
                        r.rules[*slot as usize].withdrawn = i >= listed;
                    }
                    None => {
                        r.insert(info.clone(), next_id);
                    }
                }
            }
        });
        self.configured.store(true, Ordering::Release);
        infos.truncate(listed);
        Ok((infos, changes))
    }

    /// The stored record of `benefit_id`.
    pub fn get(&self, benefit_id: &str) -> Option<BenefitInfo> {
        let rules = self.read();
        let slot = rules.slot_of(benefit_id)?;
        Some(rules.rules[slot as usize].info.clone())
    }

    /// Every stored record, in creation order (every status).
    pub fn records(&self) -> Vec<BenefitInfo> {
        self.read().rules.iter().map(|e| e.info.clone()).collect()
    }

    /// Number of rules stored (every status).
    pub fn rule_count(&self) -> usize {
        self.read().rules.len()
    }

    /// Number of counters currently tracked.
    pub fn counter_count(&self) -> usize {
        self.store.len()
    }

    /// Frees the counters that can no longer influence any decision, and
    /// returns how many it freed: counters of cancelled rules (D6: they never
    /// apply again), counters an update has reset (D16: a new generation), and
    /// periodic counters whose window ended before the window containing
    /// `now` (D16: they would count zero). Cumulative counters are kept, even
    /// of expired rules, since an update may extend `ended_at`.
    ///
    /// Call it with the current time; a request stamped earlier than the
    /// window of `now` may then find a fresh counter in its old window (it is
    /// not rolled into the newer one). The counters of a device, consumer or
    /// pool on which a leased handle holds leases stay until it gives them back
    /// (they hold them); a leased handle that holds none (its last call
    /// denied) keeps nothing. Lifetime totals of freed counters are
    /// gone: read [`Engine::usage`] first if you meter with them. The sweep
    /// looks at a few slots of one shard at a time (128), with the shard's
    /// lock and a copy of the rule table held for those only, and lets the
    /// calls waiting for that shard in between: a call or a configuration
    /// write waits for a few microseconds of the sweep, not for a shard or
    /// the whole sweep. Counters made while it runs may be left for the
    /// next one.
    ///
    /// # Examples
    /// ```
    /// use benefit_quota::{Amount, BenefitType, Engine, Subject};
    /// let e = Engine::new();
    /// e.create_json(r#"{"entity_type":"enterprise_all_devices","benefit_info":{"benefit_type":"resource_point",
    ///   "active_mode":"absolute_time","started_at":0,"ended_at":253402300799,"limit":5,"trigger_unit":"day"}}"#).unwrap();
    /// let now = 1_741_708_800; // a local midnight
    /// assert!(e.try_consume(&Subject::device("d"), BenefitType::ResourcePoint, Amount::from_units(1), now).is_allowed());
    /// assert_eq!(e.evict(now + 3_600), 0); // same day: still counts
    /// assert_eq!(e.evict(now + 86_400), 1); // the next day: yesterday's counter goes
    /// assert_eq!(e.counter_count(), 0);
    /// ```
    pub fn evict(&self, now: i64) -> usize {
        if !possible_now(now) {
            // Every window would look ended: nothing is evicted on it.
            return 0;
        }
        let mut gone = Vec::new();
        let keep_keys = self.grants.is_some();
        let removed = self.store.evict(
            || self.read(),
            |rules, owner, c| {
                let slot = c.rule & !crate::grant::CEILING;
                let drop = self.evictable(rules, slot, c, now);
                if drop && keep_keys {
                    // Ceilings too: a ceiling-only counter window (its grant
                    // taken, its debit denied) leaves the ledger with it.
                    gone.push((
                        owner.0,
                        owner.1.to_owned(),
                        slot,
                        c.generation,
                        c.window_start,
                    ));
                }
                drop
            },
        );
        self.forget(&self.read(), gone);
        self.observe.evicted(removed, self.store.len());
        removed
    }

    /// Whether `evict` at `now` frees counter `c` of rule `slot`.
    fn evictable(&self, rules: &RuleSet, slot: u32, c: &CounterState, now: i64) -> bool {
        {
            let Some(e) = rules.rules.get(slot as usize) else {
                return true;
            };
            // A withdrawn rule may be listed again, with its counters (S3).
            if (e.info.status == crate::Status::Cancel && !e.withdrawn)
                || c.generation != e.generation
            {
                return true;
            }
            e.window(now).is_some_and(|w| c.window_start < w.start)
        }
    }

    /// Lists rules as the platform's GET does (F10, D8): creation order, opaque
    /// page tokens that stay valid while rules are added or updated.
    ///
    /// # Errors
    /// 4000 naming the field for a missing or unknown `entity_type` /
    /// `benefit_type`, an unknown `status`, a `page_size` outside 1..=200, or a
    /// page token this engine did not issue for this query.
    pub fn list(&self, query: &ListQuery) -> Result<ListData, ApiError> {
        let q = validate::list_query(query)?;
        let rules = self.read();
        let start = if q.page_token.is_empty() {
            0
        } else {
            self.parse_token(&q, &q.page_token)?
        };
        let matches = |e: &&RuleEntry| {
            let i = &e.info;
            i.entity_type == q.entity_type
                && i.benefit_type == q.benefit_type
                && q.status.is_none_or(|s| s == i.status)
                && q.entity_id
                    .as_deref()
                    .is_none_or(|id| i.entity_id.as_ref().is_some_and(|e| e.as_str() == id))
        };
        let mut items = Vec::new();
        let mut next = None;
        let mut after_last = start;
        for (slot, e) in rules.rules.iter().enumerate().skip(start) {
            if !matches(&e) {
                continue;
            }
            if items.len() == q.page_size {
                // The next page starts just after this page's last item,
                // not at the next item that matches now: a rule between
                // them that comes to match (a status filter) is not skipped.
                next = Some(after_last);
                break;
            }
            items.push(e.info.clone());
            after_last = slot + 1;
        }
        Ok(ListData {
            has_more: next.is_some(),
            page_token: next.map(|s| self.make_token(&q, s)).unwrap_or_default(),
            benefit_infos: items,
        })
    }

    /// [`Engine::list`] from a URL query string such as
    /// `entity_type=single_device&benefit_type=resource_point&page_size=50`.
    ///
    /// # Errors
    /// As [`Engine::list`], plus malformed or duplicated parameters.
    pub fn list_query_string(&self, query: impl AsRef<[u8]>) -> Result<ListData, ApiError> {
        let q: ListQuery = validate::parse_query(query.as_ref())?;
        self.list(&q)
    }

    /// [`Engine::list`] from a JSON object with the query's fields.
    ///
    /// # Errors
    /// As [`Engine::list`], plus malformed JSON.
    pub fn list_json(&self, query: impl AsRef<[u8]>) -> Result<ListData, ApiError> {
        let q: ListQuery = validate::parse_json(query.as_ref(), MAX_BODY_BYTES)?;
        self.list(&q)
    }

    fn token_mac(&self, q: &validate::Query, slot: usize) -> u64 {
        self.token_key.hash_one((
            slot,
            q.entity_type,
            q.benefit_type,
            q.status,
            q.entity_id.as_deref(),
        ))
    }

    fn make_token(&self, q: &validate::Query, slot: usize) -> String {
        format!("{slot:x}.{:016x}", self.token_mac(q, slot))
    }

    fn parse_token(&self, q: &validate::Query, token: &str) -> Result<usize, ApiError> {
        let bad = || {
            ApiError::invalid(
                "page_token",
                "not a token issued by this engine for this query",
            )
        };
        let (slot, mac) = token.split_once('.').ok_or_else(bad)?;
        if slot.is_empty() || slot.len() > 8 || mac.len() != 16 {
            return Err(bad());
        }
        let slot = usize::from_str_radix(slot, 16).map_err(|_| bad())?;
        let mac = u64::from_str_radix(mac, 16).map_err(|_| bad())?;
        if mac != self.token_mac(q, slot) {
            return Err(bad());
        }
        Ok(slot)
    }

    // ----------------------------------------------------------------------
    // Enforcement
    // ----------------------------------------------------------------------

    /// Is the subject blocked right now (D13)? Changes nothing.
    ///
    /// Denied when any applicable rule, of any benefit type, is frozen (policy
    /// block) or has `used ≥ limit`. When allowed, the headroom names the
    /// applicable rule with the least remaining (each in its own unit).
    pub fn check(&self, subject: &Subject<'_>, now: i64) -> Decision {
        let d = self.run(subject, now, Op::Check);
        self.observe.decision(None, &d);
        d
    }

    /// Debits `amount` of `benefit_type` if, and only if, the subject is not
    /// blocked and every applicable rule of that type has `used + amount ≤
    /// limit`; all or nothing, atomically across rules and threads (D13).
    pub fn try_consume(
        &self,
        subject: &Subject<'_>,
        benefit_type: BenefitType,
        amount: Amount,
        now: i64,
    ) -> Decision {
        let op = Op::TryConsume(benefit_type, amount.as_micros());
        let d = self.run(subject, now, op);
        self.observe.decision(Some(benefit_type), &d);
        d
    }

    /// Books usage that already happened (post-paid, D13): adds `amount` to every
    /// applicable rule of `benefit_type`, even past the limit, and returns the
    /// subject's state afterwards (as [`Engine::check`] would).
    pub fn record(
        &self,
        subject: &Subject<'_>,
        benefit_type: BenefitType,
        amount: Amount,
        now: i64,
    ) -> Decision {
        let d = self.run(subject, now, Op::Record(benefit_type, amount.as_micros()));
        self.observe.decision(Some(benefit_type), &d);
        d
    }

    /// Every applicable rule's counter for the subject at `now`. Empty
    /// when no rule applies, and also at an impossible `now` (outside
    /// `0..=253402300799`, see [`crate::Rejection::ImpossibleTime`]), where
    /// nothing can be reported: check `now` first if the two must be told
    /// apart.
    pub fn usage(&self, subject: &Subject<'_>, now: i64) -> Vec<UsageReport> {
        if !possible_now(now) {
            return Vec::new();
        }
        let rules = self.read();
        let mut applied = AppliedVec::new();
        self.resolve(&rules, subject, now, &mut applied, false);
        let locked = self.lock(&applied);
        applied
            .iter()
            .map(|a| {
                let e = &rules.rules[a.slot as usize];
                let state = locked
                    .counters(a.shard, &a.owner)
                    .and_then(|cs| cs.iter().find(|c| c.rule == a.slot))
                    .copied()
                    .unwrap_or(CounterState::new(a.slot));
                let used = state.effective_used(e.generation, a.window);
                UsageReport {
                    benefit_id: e.info.benefit_id.clone(),
                    entity_type: e.info.entity_type,
                    benefit_type: e.info.benefit_type,
                    status: e.info.status,
                    used: Amount::from_micros(used),
                    limit: e.info.limit,
                    remaining: Amount::from_micros(e.limit_micros.saturating_sub(used)),
                    window: effective_window(&e.period, e.generation, &state, a.window),
                    lifetime: Amount::from_micros(state.lifetime),
                }
            })
            .collect()
    }

    #[inline(always)]
    pub(crate) fn lock(&self, applied: &[Applied<'_>]) -> Locked<'_> {
        let first = applied.first().map_or(0, |a| a.shard);
        if applied.iter().all(|a| a.shard == first) {
            return self.store.lock_many(&[first]);
        }
        let mut shards: SmallVec<[usize; 8]> = SmallVec::new();
        shards.extend(applied.iter().map(|a| a.shard));
        shards.sort_unstable();
        shards.dedup();
        self.store.lock_many(&shards)
    }

    pub(crate) fn run(&self, subject: &Subject<'_>, now: i64, op: Op) -> Decision {
        if let Some(g) = self.grants.as_deref() {
            return self.run_granted(g, subject, now, op);
        }
        if !possible_now(now) {
            return Decision::impossible_time(now);
        }
        let Some((kind, id)) = subject.sole_entity() else {
            return self.run_resolved_subject(subject, now, op);
        };
        // A device or a consumer: its all-scope rules, and its single rules
        // unless its entry says that none named it under this configuration
        // (then the single-rule index, whose miss a cold call would pay
        // before taking the shard's lock, is skipped, and so, when this
        // thread keeps a copy of the family's all-scope rules at that
        // configuration, is the rule table).
        let store = &self.store;
        let owner = store.entity_hashed(kind, id);
        let shard = store.shard_index(&owner);
        store.prefetch_in(shard, &owner);
        self.run_entity(subject, &owner, shard, now, op)
    }

    /// [`Engine::run`] for a sole device or consumer, `owner` (hashed), in
    /// `shard`, with no ledger and a possible `now`.
    #[inline(always)]
    fn run_entity(
        &self,
        subject: &Subject<'_>,
        owner: &Owner<'_>,
        shard: usize,
        now: i64,
        op: Op,
    ) -> Decision {
        let store = &self.store;
        // The rule table's families are indexed as the owner kinds.
        let fam = owner.kind as usize;
        if let Some(copy) = crate::cached::thread_rules::<0>(self.id, fam, now) {
            // Decided with the thread's copy of the family's all-scope rules
            // (`crate::cached`, which has why that is exact) if the
            // configuration is still the copy's and the entity's entry says
            // that no single rule names it under it.
            let mut locked = store.lock_shard(shard);
            let version = self.version.load(Ordering::Acquire);
            if version == copy.version {
                if let Some(counters) = locked.counters_if_alone(owner, version) {
                    let rules = crate::cached::CachedRules(&copy.rules);
                    return decide_one_owner(store, &rules, Some(counters), op);
                }
            }
        }
        self.run_sole_entity(subject, owner, shard, now, op)
    }

    /// [`Engine::run`] for a sole device or consumer (`owner`, in `shard`)
    /// that the thread's copy of the rules did not decide, with a copy of
    /// the rule table locked. Out of line: the usual call does not need
    /// this path's stack frame.
    #[inline(never)]
    fn run_sole_entity(
        &self,
        subject: &Subject<'_>,
        owner: &Owner<'_>,
        shard: usize,
        now: i64,
        op: Op,
    ) -> Decision {
        let store = &self.store;
        let (fam, policy) = (owner.kind as usize, self.config.frozen_policy);
        let rules = self.read();
        if rules.lists_single_rules(fam, owner.hash, owner.id) {
            // Named by a single rule: resolved in full (its entry is never
            // marked alone, so the all-scope rules alone would not do).
            return self.decide_resolved(&rules, subject, now, op);
        }
        let mut applied = AppliedVec::new();
        let mut valid = Validity::ALWAYS;
        rules.resolve_all_scope(fam, *owner, shard, 0, now, policy, &mut applied, &mut valid);
        if !applied.is_empty() {
            // A rule-table copy is locked: this is its version. The version
            // is compared under the rule-table copy's lock, as handles
            // compare theirs: a write changes every copy and the version
            // together.
            let version = self.version.load(Ordering::Relaxed);
            let mut locked = store.lock_many(&[shard]);
            let table = TableRules {
                table: &rules,
                applied: applied.as_slice(),
                policy,
            };
            if let Some(counters) = locked.counters_if_alone(shard, owner, version) {
                let d = decide_one_owner(store, &table, Some(counters), op);
                drop(locked);
                self.keep_alone_rules(&rules, fam, version, valid, &applied, now);
                return d;
            }
            // No single rule names it (see above) under this version.
            let d = self.decide_owner(&table, &mut locked, shard, owner, None, op);
            locked.mark_alone(shard, owner, version);
            drop(locked);
            self.keep_alone_rules(&rules, fam, version, valid, &applied, now);
            return d;
        }
        // No all-scope rule applies: resolved in full.
        self.decide_resolved(&rules, subject, now, op)
    }

    /// [`Engine::run`] for any other subject: resolved in full with a copy
    /// of the rule table locked.
    #[inline(never)]
    fn run_resolved_subject(&self, subject: &Subject<'_>, now: i64, op: Op) -> Decision {
        self.decide_resolved(&self.read(), subject, now, op)
    }

    /// Decides `op` for `subject` with the rules that apply to it, resolved
    /// from `rules` (a locked copy of the rule table) in full.
    #[inline(always)]
    fn decide_resolved(
        &self,
        rules: &RuleSet,
        subject: &Subject<'_>,
        now: i64,
        op: Op,
    ) -> Decision {
        // `with_applied`, spelled out: this is every other stateless
        // request's path, and the closures cost it (the commit that added
        // `with_applied` has the measurement).
        let mut applied = AppliedVec::new();
        self.resolve(rules, subject, now, &mut applied, true);
        if applied.is_empty() {
            return Decision::Allowed(None); // F16: unlimited, nothing tracked
        }
        let applied = applied.as_slice();
        let mut locked = self.lock(applied);
        let table = TableRules {
            table: rules,
            applied,
            policy: self.config.frozen_policy,
        };
        self.decide(applied, &table, &mut locked, op)
    }

    /// For an engine with a ledger, whose calls the rounds of
    /// `run_granted` decide with a rule-table copy and the subject's shards
    /// locked (`table`, `locked`): marks the entry of the sole device or
    /// consumer `owner` as alone at the current version if no single
    /// rule names it, and keeps this thread a copy of its family's
    /// all-scope rules, as [`Engine::run_sole_entity`] does under the same
    /// two locks. Every rule the round applied must count on the entity
    /// itself (a single rule counts on its own pool).
    pub(crate) fn mark_in_round(
        &self,
        table: &TableRules<'_, '_>,
        locked: &mut Locked<'_>,
        owner: &Owner<'_>,
        now: i64,
    ) {
        let store = &self.store;
        let fam = owner.kind as usize;
        let rules = table.table;
        if !table.applied.iter().all(|a| a.owner.same(owner))
            || rules.lists_single_rules(fam, owner.hash, owner.id)
        {
            return;
        }
        let shard = store.shard_index(owner);
        // A rule-table copy is locked: this is its version.
        let version = self.version.load(Ordering::Relaxed);
        locked.mark_alone(shard, owner, version);
        self.keep_family_rules(rules, fam, owner, shard, version, now);
    }

    /// Keeps family `fam`'s all-scope rules at `now`, read from `rules`
    /// (locked) at `version`, as this thread's copy (`crate::cached`),
    /// unless it keeps that copy already: once per thread and version.
    /// `owner` (in `shard`) is an entity of the family that no single rule
    /// names: the rules are resolved as they apply to it.
    pub(crate) fn keep_family_rules(
        &self,
        rules: &RuleSet,
        fam: usize,
        owner: &Owner<'_>,
        shard: usize,
        version: u64,
        now: i64,
    ) {
        if !crate::cached::holds(self.id, fam, version, now) {
            let policy = self.config.frozen_policy;
            let mut applied = AppliedVec::new();
            let mut valid = Validity::ALWAYS;
            rules.resolve_all_scope(fam, *owner, shard, 0, now, policy, &mut applied, &mut valid);
            if !applied.is_empty() {
                crate::cached::keep(self.id, fam, version, valid, &rules.rules, &applied, policy);
            }
        }
    }

    /// Keeps `applied`, family `fam`'s all-scope rules at `now` read from
    /// `rules` (locked) at `version`, as this thread's copy for the calls
    /// by subject and through exact handles that follow ([`Engine::run`]),
    /// unless it keeps that copy already.
    #[inline]
    fn keep_alone_rules(
        &self,
        rules: &RuleSet,
        fam: usize,
        version: u64,
        valid: Validity,
        applied: &[Applied<'_>],
        now: i64,
    ) {
        if !crate::cached::holds(self.id, fam, version, now) {
            let policy = self.config.frozen_policy;
            crate::cached::keep(self.id, fam, version, valid, &rules.rules, applied, policy);
        }
    }

    /// What every decision by subject starts from: the rules that apply to
    /// `subject` at `now`, read from a rule-table copy, with their
    /// counters' shards locked; `decide` decides with them (both held until
    /// it returns). A subject no rule applies to gets `unlimited()`, with
    /// no lock taken (F16: nothing tracked).
    #[inline(always)]
    pub(crate) fn with_applied<R>(
        &self,
        subject: &Subject<'_>,
        now: i64,
        unlimited: impl FnOnce() -> R,
        decide: impl FnOnce(&TableRules<'_, '_>, &mut Locked<'_>) -> R,
    ) -> R {
        let rules = self.read();
        let mut applied = AppliedVec::new();
        self.resolve(&rules, subject, now, &mut applied, true);
        if applied.is_empty() {
            return unlimited();
        }
        // A plain slice from here on: indexing the small vector checks
        // whether it spilled on every access.
        let applied = applied.as_slice();
        let mut locked = self.lock(applied);
        let table = TableRules {
            table: &rules,
            applied,
            policy: self.config.frozen_policy,
        };
        decide(&table, &mut locked)
    }

    /// Collects the rules that apply to `subject` at `now` into `out`;
    /// with `prefetch`, each entity's counter entry is asked for as soon as
    /// its id is hashed (a single call's head start; a batch asks for its
    /// sole entities' entries before making any call).
    #[inline(always)]
    pub(crate) fn resolve<'a>(
        &self,
        rules: &'a RuleSet,
        subject: &Subject<'a>,
        now: i64,
        out: &mut AppliedVec<'a>,
        prefetch: bool,
    ) -> Validity {
        let mut valid = Validity::ALWAYS;
        let policy = self.config.frozen_policy;
        let store = (&self.store, prefetch);
        rules.resolve(subject, now, policy, store, out, &mut valid);
        valid
    }

    /// Decides (and debits) one operation over its applicable rules, whose
    /// shards `locked` holds; `rules.rule(i)` is the rule of `applied[i]`
    /// (which says where its counter lives).
    pub(crate) fn decide<'r>(
        &self,
        applied: &[Applied<'_>],
        rules: &impl Rules<'r>,
        locked: &mut Locked<'_>,
        op: Op,
    ) -> Decision {
        if applied.is_empty() {
            return Decision::Allowed(None);
        }
        let first = &applied[0];
        if applied.iter().all(|a| a.owner.same(&first.owner)) {
            // The usual device (its all-scope rules) or one pool: one probe.
            let (shard, owner) = (first.shard, &first.owner);
            return self.decide_owner(rules, locked, shard, owner, None, op);
        }
        if let Some(d) = allow_across(applied, rules, locked, op) {
            return d;
        }
        let mut seen = self.seen_of(applied, rules, locked);
        conclude(
            &self.store,
            &mut seen,
            op,
            rules,
            |seen, ty, amount, create| {
                for run in owner_runs(applied) {
                    if amount == 0 || !has_type(&seen[run.clone()], ty, create) {
                        continue;
                    }
                    let first = &applied[run.start];
                    let counters = locked.counters_mut(first.shard, &first.owner);
                    add_to_counters(&mut seen[run], counters, ty, amount, create);
                }
            },
        )
    }

    /// The state of each of `applied`'s rules (whose shards `locked` holds),
    /// their owners' counters read one owner at a time.
    fn seen_of<'r>(
        &self,
        applied: &[Applied<'_>],
        rules: &impl Rules<'r>,
        locked: &mut Locked<'_>,
    ) -> SeenVec {
        let mut seen = SeenVec::new();
        for run in owner_runs(applied) {
            let first = &applied[run.start];
            let counters = locked.counters(first.shard, &first.owner);
            for i in run {
                let (v, w) = rules.rule(i);
                Seen::push(&mut seen, v, w, counters);
            }
        }
        seen
    }

    /// The denial of a `try_consume` of `amount` of `ty` over `applied` (whose
    /// shards `locked` holds) that may create no counter: a rule's own
    /// denial, ranked as [`Engine::decide`] ranks it, else
    /// `counter_capacity`. Nothing is debited.
    pub(crate) fn denied_without_room<'r>(
        &self,
        applied: &[Applied<'_>],
        rules: &impl Rules<'r>,
        locked: &mut Locked<'_>,
        ty: crate::BenefitType,
        amount: u64,
    ) -> crate::Denial {
        let seen = self.seen_of(applied, rules, locked);
        denied_without_room(&seen, ty, amount, rules)
    }

    /// [`Engine::decide`] when all the `rules` count on the counters of `owner`
    /// (in `shard`, which `locked` holds): one probe for a known owner; for a
    /// new one a second, its entry created only for a debit and dropped again
    /// if it stays empty.
    ///
    /// The decision's fast path is inlined here, for handles and calls by
    /// subject alike: its rule views are `Rules` methods that are always
    /// inlined, so inlining the fast path too lets the compiler see through
    /// both (when the views were closures, inlining it here made LLVM stop
    /// inlining them, which cost more than the call it saved).
    #[inline(always)]
    pub(crate) fn decide_owner<'r>(
        &self,
        rules: &impl Rules<'r>,
        locked: &mut Locked<'_>,
        shard: usize,
        owner: &Owner<'_>,
        hint: Option<&mut SlotHint>,
        op: Op,
    ) -> Decision {
        let mut hint = hint;
        let counters = match hint.as_deref_mut() {
            Some(hint) => locked.counters_if_any_hinted(shard, owner, hint),
            None => locked.counters_if_any(shard, owner),
        };
        // An entry that exists has counters (it is dropped when it would be
        // left with none), or is a leased handle's owner, kept empty until
        // evicted; deciding removes none: nothing to clean up.
        if counters.is_some() || !op.debits() {
            return decide_one_owner(&self.store, rules, counters, op);
        }
        // A new owner (no counter yet, so straight to the general path): its
        // entry is created, and dropped again if the operation creates no
        // counter in it.
        let mut entry = match hint {
            Some(hint) => locked.owner_entry_hinted(shard, owner, hint),
            None => locked.owner_entry(shard, owner),
        };
        let counters = Some(entry.counters());
        let decision = decide_one_owner_general(&self.store, rules, counters, op);
        entry.remove_if_empty();
        decision
    }

    /// [`Engine::try_consume`] for many requests at once, appending one
    /// decision per request to `out`, in order.
    ///
    /// Each request is decided exactly as a separate `try_consume` call made
    /// in slice order would be. The batch is worked through in chunks of
    /// [`BATCH_CHUNK`]: a chunk asks the CPU for its subjects' ids, then
    /// hashes its devices and consumers and asks for their counter entries
    /// (software prefetches, so the memory misses of independent subjects
    /// overlap instead of queueing), and then makes each call as
    /// [`Engine::try_consume`] would, with the hash already taken: under its
    /// own shards' locks, with the thread's copy of the rules when it may.
    /// Other threads, and a configuration write, wait for one request,
    /// never for a chunk. With
    /// [`crate::SubjectHandle`]s, use [`Engine::try_consume_many_handles`].
    ///
    /// # Examples
    /// ```
    /// use benefit_quota::{Amount, BenefitType, Engine, Request, Subject};
    /// let engine = Engine::new();
    /// let reqs: Vec<Request> = ["a", "b", "c"]
    ///     .iter()
    ///     .map(|d| Request {
    ///         subject: Subject::device(d),
    ///         benefit_type: BenefitType::ResourcePoint,
    ///         amount: Amount::from_units(1),
    ///     })
    ///     .collect();
    /// let mut out = Vec::new();
    /// engine.try_consume_many(&reqs, 0, &mut out);
    /// assert!(out.iter().all(|d| d.is_allowed()));
    /// ```
    pub fn try_consume_many(&self, requests: &[Request<'_>], now: i64, out: &mut Vec<Decision>) {
        let start = out.len();
        self.decide_many(requests, now, out);
        for (r, d) in requests.iter().zip(&out[start..]) {
            self.observe.decision(Some(r.benefit_type), d);
        }
    }

    /// [`Engine::try_consume_many`], unobserved.
    fn decide_many(&self, requests: &[Request<'_>], now: i64, out: &mut Vec<Decision>) {
        if self.grants.is_some() {
            // One at a time: a request may wait on a grant, without locks.
            out.extend(requests.iter().map(|r| {
                let op = Op::TryConsume(r.benefit_type, r.amount.as_micros());
                self.run(&r.subject, now, op)
            }));
            return;
        }
        if !possible_now(now) {
            out.extend(requests.iter().map(|_| Decision::impossible_time(now)));
            return;
        }
        out.reserve(requests.len());
        let store = &self.store;
        for chunk in requests.chunks(BATCH_CHUNK) {
            // Ask for the chunk's ids before hashing any, then for the
            // counter entries of its devices and consumers: their misses
            // are in flight together instead of queueing behind each hash.
            for r in chunk {
                prefetch_ids(r.subject);
            }
            let mut sole: SmallVec<[Option<(Owner<'_>, usize)>; BATCH_CHUNK]> = SmallVec::new();
            for r in chunk {
                sole.push(r.subject.sole_entity().map(|(kind, id)| {
                    let owner = store.entity_hashed(kind, id);
                    let shard = store.shard_index(&owner);
                    store.prefetch_in(shard, &owner);
                    (owner, shard)
                }));
            }
            for (r, one) in chunk.iter().zip(&sole) {
                let op = Op::TryConsume(r.benefit_type, r.amount.as_micros());
                out.push(match one {
                    Some((owner, shard)) => self.run_entity(&r.subject, owner, *shard, now, op),
                    None => self.run_resolved_subject(&r.subject, now, op),
                });
            }
        }
    }
}

/// The records an import took in, and what it did to each record (the
/// withdrawn ones last): see [`Engine::import_batch`].
pub(crate) type Imported = (Vec<BenefitInfo>, Vec<(BenefitId, Change)>);

/// What an import did to one record (see [`Engine::import_batch`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    Created,
    Updated,
    Unchanged,
    /// Listed again after a sync had withdrawn it.
    Revived,
    /// Left out of a sync's listing: cancelled here.
    Withdrawn,
}

/// `now` if it is a time in unix seconds the platform knows; else a 4000
/// naming `now` (a configuration write at such a time would decide D16's
/// resets against it).
fn possible(now: i64) -> Result<i64, ApiError> {
    if possible_now(now) {
        Ok(now)
    } else {
        Err(ApiError::invalid(
            "now",
            format_args!("{now} is not a time in unix seconds (0..=253402300799); milliseconds?"),
        ))
    }
}

/// The rules of a call by subject: `applied`, read from the rule table.
pub(crate) struct TableRules<'r, 'a> {
    pub(crate) table: &'r RuleSet,
    pub(crate) applied: &'a [Applied<'r>],
    pub(crate) policy: FrozenPolicy,
}

impl<'r> Rules<'r> for TableRules<'r, '_> {
    #[inline(always)]
    fn len(&self) -> usize {
        self.applied.len()
    }

    #[inline(always)]
    fn rule(&self, i: usize) -> (RuleView<'r>, Option<Window>) {
        let a = &self.applied[i];
        let view = RuleView::of(&self.table.rules[a.slot as usize], a.slot, self.policy);
        (view, a.window)
    }

    #[inline(always)]
    fn id_of(&self, slot: u32) -> &'r BenefitId {
        &self.table.rules[slot as usize].info.benefit_id
    }
}

/// The usual allowed `check` or `try_consume` of a subject whose rules
/// count on several owners (a device named by a single rule, a member's
/// pools), decided straight from their counters
/// ([`crate::decide::try_allow_across`]); `None` (nothing changed) for a
/// `record`, a denial, a missing counter, a spend of a type no rule
/// counts, or more rules than the fast path takes: the general path
/// decides.
#[inline]
fn allow_across<'r>(
    applied: &[Applied<'_>],
    rules: &impl Rules<'r>,
    locked: &mut Locked<'_>,
    op: Op,
) -> Option<Decision> {
    let debit = match op {
        Op::TryConsume(ty, amount) => Some((ty, amount)),
        Op::Check => None,
        Op::Record(..) => return None,
    };
    if applied.len() > FAST_RULES {
        return None;
    }
    let mut owner_of = [0u8; FAST_RULES];
    let mut owners: SmallVec<[(usize, Owner<'_>); FAST_RULES]> = SmallVec::new();
    for (i, a) in applied.iter().enumerate() {
        let o = match owners.iter().position(|(_, o)| o.same(&a.owner)) {
            Some(o) => o,
            None => {
                owners.push((a.shard, a.owner));
                owners.len() - 1
            }
        };
        owner_of[i] = o as u8; // at most FAST_RULES owners
    }
    let mut held = HeldOwners {
        locked,
        owners: &owners,
        slots: [None; FAST_RULES],
    };
    try_allow_across(rules, &owner_of[..applied.len()], &mut held, debit)
}

/// Owners (shard, owner) whose shards `locked` holds, by index, and the
/// slots their entries were read in (which stay theirs while the locks
/// are held).
struct HeldOwners<'a, 'l, 'o> {
    locked: &'a mut Locked<'l>,
    owners: &'a [(usize, Owner<'o>)],
    slots: [Option<usize>; FAST_RULES],
}

impl OwnersCounters for HeldOwners<'_, '_, '_> {
    fn read(&mut self, o: usize) -> Option<&[CounterState]> {
        let (shard, owner) = &self.owners[o];
        let slot = self.locked.slot_of(*shard, owner)?;
        self.slots[o] = Some(slot);
        Some(self.locked.counters_in(*shard, slot))
    }

    /// Only an owner read first (`try_allow_across` reads every owner it
    /// writes): its entry, in the slot the read found.
    fn write(&mut self, o: usize) -> Option<&mut [CounterState]> {
        let slot = self.slots[o]?;
        Some(self.locked.counters_in_mut(self.owners[o].0, slot))
    }
}

/// Index ranges of consecutive applied rules that share a counter owner
/// (resolution emits an entity's all-scope rules together).
fn owner_runs<'s>(applied: &'s [Applied<'_>]) -> impl Iterator<Item = std::ops::Range<usize>> + 's {
    let mut start = 0;
    std::iter::from_fn(move || {
        if start >= applied.len() {
            return None;
        }
        let owner = &applied[start].owner;
        let len = applied[start..]
            .iter()
            .position(|a| !a.owner.same(owner))
            .unwrap_or(applied.len() - start);
        let run = start..start + len;
        start += len;
        Some(run)
    })
}

/// Requests per chunk of [`Engine::try_consume_many`] and
/// [`Engine::try_consume_many_handles`].
///
/// Eight requests' cache misses in flight already hide most of the memory
/// latency; larger chunks only crowd the L1 cache with lines fetched early
/// (at 1M devices, chunks of 8 decided faster per request than chunks of 32).
pub const BATCH_CHUNK: usize = 8;

/// One request of a batch (see [`Engine::try_consume_many`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request<'a> {
    /// Who spends.
    pub subject: Subject<'a>,
    /// What is spent.
    pub benefit_type: BenefitType,
    /// How much.
    pub amount: Amount,
}

/// The rule an update response `w` (at `prefix`, e.g. `data.`) shows for the
/// known rule `current`: the response's fields over the rule's (as an update
/// body's are), its benefit type, if given, the rule's own.
fn update_response(
    current: &BenefitInfo,
    w: &BenefitInfoWire,
    prefix: &str,
) -> Result<BenefitInfo, ApiError> {
    if let Some(ty) = w.benefit_type.as_deref() {
        if ty != current.benefit_type().as_str() {
            return Err(ApiError::invalid(
                &format!("{prefix}benefit_type"),
                format_args!("differs from the stored rule {}", current.benefit_id()),
            ));
        }
    }
    let body = UpdateBody {
        benefit_id: w.benefit_id.clone(),
        active_mode: w.active_mode.clone(),
        started_at: w.started_at,
        ended_at: w.ended_at,
        limit: w.limit,
        status: w.status.clone(),
        trigger_unit: w.trigger_unit.clone(),
        trigger_time: w.trigger_time,
    };
    validate::update(current, current.benefit_id().as_str(), &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn engine_is_send_and_sync() {
        assert_send_sync::<Engine>();
    }

    #[test]
    fn replicas_stay_identical() {
        let e = Engine::with_config(EngineConfig {
            rule_replicas: 4,
            ..EngineConfig::default()
        });
        let body = |t: &str, unit: &str| {
            format!(
                r#"{{"entity_type":"{t}","entity_id":"x","benefit_info":{{"benefit_type":"resource_point","active_mode":"absolute_time","started_at":0,"ended_at":100000,"limit":5,"trigger_unit":"{unit}"}}}}"#
            )
        };
        e.create_json(body("enterprise_all_devices", "day"))
            .unwrap();
        e.create_json(body("single_device", "never")).unwrap();
        e.import_json(
            r#"{"benefit_id":"3","entity_type":"coze_role","entity_id":"EnterpriseAdmin","benefit_type":"resource_point","active_mode":"absolute_time","started_at":0,"ended_at":1,"limit":1}"#,
            0,
        )
        .unwrap();
        e.create_json(body("single_custom_consumer", "hour"))
            .unwrap();
        e.apply_update_json("1", r#"{"trigger_time":2}"#, 50_000)
            .unwrap();
        e.apply_update_json("2", r#"{"status":"cancel"}"#, 0)
            .unwrap();
        let reference: Vec<_> = {
            let r = e.replicas[0].lock();
            r.rules
                .iter()
                .map(|x| (x.info.clone(), x.generation, x.limit_micros))
                .collect()
        };
        assert_eq!(reference.len(), 4);
        assert_eq!(reference[0].1, 1);
        for replica in e.replicas.iter() {
            let r = replica.lock();
            let mine: Vec<_> = r
                .rules
                .iter()
                .map(|x| (x.info.clone(), x.generation, x.limit_micros))
                .collect();
            assert_eq!(mine, reference);
            assert_eq!(r.next_id(), 5);
            assert_eq!(r.slot_of("3"), Some(2));
        }
    }

    #[test]
    fn shards_round_up_to_a_power_of_two() {
        for (asked, got) in [
            (0, 1),
            (1, 1),
            (3, 4),
            (64, 64),
            (100, 128),
            (usize::MAX, 65_536),
        ] {
            let e = Engine::with_config(EngineConfig {
                shards: asked,
                ..EngineConfig::default()
            });
            assert_eq!(e.config().shards, got);
        }
    }
}
