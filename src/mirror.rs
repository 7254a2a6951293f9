//! Full sync with the platform's listing (S1–S4 in SEMANTICS.md): the
//! engine's rules made equal to the platform's in one atomic step.
//!
//! The platform's list endpoint (F10) takes one `entity_type` and one
//! `benefit_type` per query and answers page by page (`has_more`,
//! `page_token`). A [`Listing`] collects the pages of one or more such
//! *scopes*; [`Engine::sync`] then imports every listed record (counters of
//! rules that stay are kept, D16) and withdraws the rules of the covered
//! scopes that the listing left out. Since the platform lists rules of every
//! status, a rule missing from a complete listing does not exist there (it
//! was created here, or removed by the platform's operator).

use crate::engine::{Change, Engine};
use crate::errors::ApiError;
use crate::types::{BenefitId, BenefitInfo, BenefitType, EntityType, Status};
use crate::validate;

/// The platform's listing of one or more scopes (an `entity_type` and a
/// `benefit_type`), page by page: what [`Engine::sync`] takes.
///
/// # Examples
/// ```
/// use benefit_quota::{BenefitType, EntityType, Listing};
/// let mut listing = Listing::new();
/// let page = r#"{"code":0,"msg":"","data":{"has_more":false,"page_token":"","benefit_infos":[]}}"#;
/// let next = listing
///     .add_page_json(EntityType::EnterpriseAllDevices, BenefitType::ResourcePoint, page)
///     .unwrap();
/// assert_eq!(next, None); // the scope is complete
/// assert!(listing.is_complete());
/// ```
#[derive(Debug, Clone, Default)]
pub struct Listing {
    scopes: Vec<Scope>,
}

#[derive(Debug, Clone)]
struct Scope {
    entity_type: EntityType,
    benefit_type: BenefitType,
    records: Vec<BenefitInfo>,
    /// The ids in `records`.
    ids: std::collections::HashSet<BenefitId>,
    /// Its last page said `has_more: false`.
    complete: bool,
}

impl Listing {
    /// An empty listing.
    pub fn new() -> Listing {
        Listing::default()
    }

    /// Adds the next page of the listing of `entity_type` × `benefit_type`:
    /// a list response, with or without its envelope. Returns the page token
    /// to ask for next, or `None` once the scope's last page is in.
    ///
    /// # Errors
    /// The platform's own error if the envelope's `code` is not 0; 4000
    /// naming the field for malformed JSON, an invalid record, a record of
    /// another scope, or a page added after the scope's last one. The
    /// listing is unchanged on error.
    pub fn add_page_json(
        &mut self,
        entity_type: EntityType,
        benefit_type: BenefitType,
        page: impl AsRef<[u8]>,
    ) -> Result<Option<String>, ApiError> {
        let (data, prefix) = validate::response_data(page.as_ref())?;
        let has_more = match data.get("has_more") {
            Some(serde_json::Value::Bool(b)) => *b,
            Some(_) => {
                return Err(ApiError::invalid(
                    &format!("{prefix}has_more"),
                    "expected a boolean",
                ))
            }
            None => {
                return Err(ApiError::invalid(
                    &format!("{prefix}has_more"),
                    "is required in a list page",
                ))
            }
        };
        let token = match data.get("page_token") {
            Some(serde_json::Value::String(t)) => t.clone(),
            None | Some(serde_json::Value::Null) => String::new(),
            Some(_) => {
                return Err(ApiError::invalid(
                    &format!("{prefix}page_token"),
                    "expected a string",
                ))
            }
        };
        // A page without its list is refused, not read as empty: synced, an
        // empty page withdraws every rule of the scope (the platform's empty
        // page is `benefit_infos: []`, D3).
        let list = match data.get("benefit_infos") {
            None | Some(serde_json::Value::Null) => {
                return Err(ApiError::invalid(
                    &format!("{prefix}benefit_infos"),
                    "is required in a list page (an empty page is `[]`)",
                ))
            }
            Some(list) => list.clone(),
        };
        let wires = validate::wire_records(list, &format!("{prefix}benefit_infos"))?;
        let mut records = Vec::with_capacity(wires.len());
        for (i, w) in wires.iter().enumerate() {
            let at = format!("{prefix}benefit_infos[{i}].");
            let info = validate::record(w, &at)?;
            if info.entity_type() != entity_type || info.benefit_type() != benefit_type {
                return Err(ApiError::invalid(
                    &format!("{at}entity_type"),
                    format_args!(
                        "{} / {} is not the scope this page lists ({} / {})",
                        info.entity_type(),
                        info.benefit_type(),
                        entity_type,
                        benefit_type
                    ),
                ));
            }
            records.push(info);
        }
        if has_more && token.is_empty() {
            return Err(ApiError::invalid(
                &format!("{prefix}page_token"),
                "is empty on a page that says it has more",
            ));
        }
        let at = self
            .scopes
            .iter()
            .position(|s| s.entity_type == entity_type && s.benefit_type == benefit_type);
        let scope = match at {
            Some(i) if self.scopes[i].complete => {
                return Err(ApiError::invalid(
                    &format!("{prefix}has_more"),
                    format_args!("the listing of {entity_type} / {benefit_type} already ended"),
                ))
            }
            Some(i) => &mut self.scopes[i],
            None => {
                self.scopes.push(Scope {
                    entity_type,
                    benefit_type,
                    records: Vec::new(),
                    ids: std::collections::HashSet::new(),
                    complete: false,
                });
                self.scopes.last_mut().expect("just pushed")
            }
        };
        // A record listed again as it was (a page boundary that moved while
        // the platform paged) is the same rule once; one listed again with
        // other values is kept, and the sync refuses the listing for it.
        for info in records {
            // The whole records compared only for an id listed before.
            if scope.ids.insert(info.benefit_id.clone()) || !scope.records.contains(&info) {
                scope.records.push(info);
            }
        }
        scope.complete = !has_more;
        Ok(has_more.then_some(token))
    }

    /// Whether every scope added has had its last page.
    pub fn is_complete(&self) -> bool {
        self.scopes.iter().all(|s| s.complete)
    }

    /// Number of records listed so far.
    pub fn len(&self) -> usize {
        self.scopes.iter().map(|s| s.records.len()).sum()
    }

    /// Whether no record was listed (an empty listing still covers its
    /// scopes: syncing it withdraws every rule of them).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn covers(&self, info: &BenefitInfo) -> bool {
        self.scopes
            .iter()
            .any(|s| s.entity_type == info.entity_type() && s.benefit_type == info.benefit_type())
    }
}

/// What [`Engine::sync`] changed, rule by rule.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SyncReport {
    /// Listed and new here.
    pub created: Vec<BenefitId>,
    /// Listed with a record that differs from the one here.
    pub updated: Vec<BenefitId>,
    /// Listed exactly as here.
    pub unchanged: Vec<BenefitId>,
    /// Withdrawn here earlier, listed again: back, with their counters (S3).
    pub revived: Vec<BenefitId>,
    /// Of a covered scope, in force here, and not listed: withdrawn (S2).
    pub withdrawn: Vec<BenefitId>,
    /// Listed in force, but cancelled here (by an update, or by an earlier
    /// listing that had them cancelled): cancel is terminal (D6), so they
    /// stay cancelled, and the rest of the listing applies (S3).
    pub kept_cancelled: Vec<BenefitId>,
}

impl SyncReport {
    /// Whether the sync changed nothing.
    pub fn is_unchanged(&self) -> bool {
        self.created.is_empty()
            && self.updated.is_empty()
            && self.revived.is_empty()
            && self.withdrawn.is_empty()
    }
}

impl Engine {
    /// Makes this engine's rules of the listing's scopes equal to the
    /// listing, in one atomic step (S1–S4): every listed record is imported
    /// (counters of rules that stay are kept, D16), and every rule of a
    /// covered scope that is in force here but not listed is *withdrawn*:
    /// cancelled here, with its counters kept (`evict` keeps them too), so
    /// that if a later listing has it again it comes back where it was
    /// rather than from zero. Rules of scopes the listing does not cover
    /// are left alone. Syncing the same listing again changes nothing.
    ///
    /// # Errors
    /// 4000 naming `has_more` if a scope's listing is incomplete (its last
    /// page said it had more), or as [`Engine::import_response_json`] for an
    /// invalid record, a duplicate id, a rule that changes scope, or a
    /// listing that breaks D5; 4000 naming `now` outside
    /// `0..=253402300799` (T1). Nothing changes on error.
    ///
    /// # Examples
    /// ```
    /// use benefit_quota::{BenefitType, Engine, EntityType, Listing};
    /// let engine = Engine::new();
    /// // A rule created here, which the platform does not have.
    /// let local = engine.create_json(r#"{"entity_type":"enterprise_all_devices","benefit_info":{
    ///   "benefit_type":"resource_point","active_mode":"absolute_time","started_at":0,
    ///   "ended_at":253402300799,"limit":5,"trigger_unit":"day"}}"#).unwrap();
    /// let mut listing = Listing::new();
    /// listing.add_page_json(EntityType::EnterpriseAllDevices, BenefitType::ResourcePoint,
    ///   r#"{"code":0,"msg":"","data":{"has_more":false,"page_token":"","benefit_infos":[
    ///     {"benefit_id":"7001","entity_type":"enterprise_all_devices","benefit_type":"resource_point",
    ///      "active_mode":"absolute_time","started_at":0,"ended_at":253402300799,"limit":1000,
    ///      "status":"valid","trigger_unit":"day","trigger_time":1}]}}"#).unwrap();
    /// let report = engine.sync(&listing, 0).unwrap();
    /// assert_eq!(report.created.len(), 1);
    /// assert_eq!(report.withdrawn, vec![local.benefit_id().clone()]);
    /// assert!(engine.sync(&listing, 0).unwrap().is_unchanged());
    /// ```
    pub fn sync(&self, listing: &Listing, now: i64) -> Result<SyncReport, ApiError> {
        let report = self.observed("sync", || self.sync_unobserved(listing, now, None))?;
        self.observe.sync_changes(&report);
        Ok(report)
    }

    /// The configuration version: bumped by every configuration write,
    /// under the writer lock.
    #[cfg(feature = "poller")]
    pub(crate) fn config_version(&self) -> u64 {
        self.version.load(std::sync::atomic::Ordering::Acquire)
    }

    /// [`Engine::sync`] of a listing read since configuration `version`:
    /// `Ok(None)`, changing nothing, if a write came in between (through
    /// another path than this listing: an imported response, an update, an
    /// admin route). The listing predates it, so applying it would undo
    /// that write (a limit lowered back up, a rule created since withdrawn).
    #[cfg(feature = "poller")]
    pub(crate) fn sync_since(
        &self,
        listing: &Listing,
        now: i64,
        version: u64,
    ) -> Result<Option<SyncReport>, ApiError> {
        // `observed`, spelled out: an outdated listing is neither a sync
        // nor a failed one, so it is not counted as a configuration write.
        let _span = crate::observe::span!("benefit_quota.config_write", kind = "sync");
        let mut outdated = false;
        let result = self.sync_unobserved(listing, now, Some((version, &mut outdated)));
        if outdated {
            return Ok(None);
        }
        self.observe.config_write("sync", result.is_ok());
        let report = result?;
        self.observe.sync_changes(&report);
        Ok(Some(report))
    }

    fn sync_unobserved(
        &self,
        listing: &Listing,
        now: i64,
        since: Option<(u64, &mut bool)>,
    ) -> Result<SyncReport, ApiError> {
        if let Some(s) = listing.scopes.iter().find(|s| !s.complete) {
            return Err(ApiError::invalid(
                "has_more",
                format_args!(
                    "the listing of {} / {} is incomplete: its last page says it has more",
                    s.entity_type, s.benefit_type
                ),
            ));
        }
        let listed: Vec<BenefitInfo> = listing
            .scopes
            .iter()
            .flat_map(|s| s.records.iter().cloned())
            .collect();
        let mut kept_cancelled: Vec<BenefitId> = Vec::new();
        let (_, changes) = self.import_batch(listed, now, |rules, listed| {
            if let Some((version, outdated)) = since {
                // Read under the writer lock, which every configuration
                // write holds while it bumps the version.
                if self.version.load(std::sync::atomic::Ordering::Acquire) != version {
                    *outdated = true;
                    return Err(ApiError::invalid(
                        "listing",
                        "the rules changed while it was read",
                    ));
                }
            }
            // A rule cancelled here (not withdrawn) stays cancelled (D6) even
            // if the platform lists it in force: it is left out and
            // reported, and the rest of the listing applies. Refusing the
            // whole listing for it would keep every later change of every
            // scope from this engine. Decided under the writer lock, so a
            // cancel racing this sync is seen here or comes after it.
            let cancelled_here = |info: &BenefitInfo| {
                info.status != Status::Cancel
                    && rules.slot_of(info.benefit_id.as_str()).is_some_and(|slot| {
                        let e = &rules.rules[slot as usize];
                        e.info.status == Status::Cancel && !e.withdrawn
                    })
            };
            kept_cancelled = listed
                .iter()
                .filter(|i| cancelled_here(i))
                .map(|i| i.benefit_id.clone())
                .collect();
            listed.retain(|i| !cancelled_here(i));
            let listed_ids: std::collections::HashSet<&BenefitId> =
                listed.iter().map(|l| &l.benefit_id).collect();
            Ok(rules
                .rules
                .iter()
                .map(|e| &e.info)
                .filter(|info| {
                    info.status != Status::Cancel
                        && listing.covers(info)
                        && !listed_ids.contains(&info.benefit_id)
                })
                .map(|info| BenefitInfo {
                    status: Status::Cancel,
                    ..info.clone()
                })
                .collect())
        })?;
        let mut report = SyncReport {
            kept_cancelled,
            ..SyncReport::default()
        };
        for (id, change) in changes {
            let into = match change {
                Change::Created => &mut report.created,
                Change::Updated => &mut report.updated,
                Change::Unchanged => &mut report.unchanged,
                Change::Revived => &mut report.revived,
                Change::Withdrawn => &mut report.withdrawn,
            };
            into.push(id);
        }
        Ok(report)
    }
}
