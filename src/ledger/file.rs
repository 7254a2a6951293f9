//! A ledger in one crash-safe file (feature `durable`), on `redb`: a
//! pure-Rust embedded store with ACID transactions, copy-on-write pages and
//! checksums, so a commit is either entirely on disk or not at all, whatever
//! kills the process. Each commit is one write transaction, made durable
//! (fsynced) before it returns; the engine's writer puts every change waiting
//! at that moment into one commit (group commit).

use std::io::Read;
use std::path::{Path, PathBuf};

use parking_lot::Mutex;

use redb::{Database, ReadableTable, TableDefinition, TableHandle};

use super::codec::{self, FORMAT};
use super::{apply_counter_change, Change, Ledger, LedgerError, LedgerErrorKind, Snapshot};

const META: TableDefinition<&str, u32> = TableDefinition::new("benefit_quota_meta");
/// The meta key of the UTC offset the windows are counted at (see
/// [`Ledger::bind`]); a file written before it was kept takes the offset
/// it is next opened with.
const UTC_OFFSET: &str = "utc_offset";
const COUNTERS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("counters");
/// Keyed by rule id.
const RULES: TableDefinition<&str, &[u8]> = TableDefinition::new("rules");

/// The first bytes of every redb file.
const REDB_MAGIC: &[u8] = b"redb";

/// Usage and rules in one file; see [`crate::EngineBuilder::durable`].
///
/// # Examples
/// ```
/// # let dir = std::env::temp_dir().join(format!("bq-doc-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir).unwrap();
/// use benefit_quota::{Amount, BenefitType, Engine, Subject};
/// let path = dir.join("quota.db");
/// let engine = Engine::builder().durable(&path).open()?;
/// engine.create_json(r#"{"entity_type":"enterprise_all_devices","benefit_info":{"benefit_type":"resource_point",
///   "active_mode":"absolute_time","started_at":0,"ended_at":253402300799,"limit":5}}"#).unwrap();
/// let (dev, pts) = (Subject::device("d"), BenefitType::ResourcePoint);
/// assert!(engine.try_consume(&dev, pts, Amount::from_units(3), 0).is_allowed());
/// drop(engine);
///
/// // A restart knows the rule and the usage: 2 left of the cumulative 5.
/// let engine = Engine::builder().durable(&path).open()?;
/// assert!(!engine.try_consume(&dev, pts, Amount::from_units(3), 0).is_allowed());
/// assert!(engine.try_consume(&dev, pts, Amount::from_units(2), 0).is_allowed());
/// # drop(engine); std::fs::remove_dir_all(&dir).unwrap();
/// # Ok::<(), benefit_quota::LedgerError>(())
/// ```
pub struct FileLedger {
    /// The open store; `None` after an I/O error, until the next call
    /// opens the file again (see [`FileLedger::db`]).
    db: Mutex<Option<Database>>,
    path: PathBuf,
    /// Opens the store again.
    reopen: Box<dyn Fn() -> Result<Database, LedgerError> + Send + Sync>,
    /// An exclusive lock on `<path>.lock`, held for the ledger's life:
    /// redb's own lock on the file is let go while the store is closed
    /// after an I/O error, and another process must not open the ledger
    /// then (two processes granting from one file would each admit the
    /// limit).
    _lock: Option<std::fs::File>,
}

impl std::fmt::Debug for FileLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileLedger")
            .field("path", &self.path)
            .finish()
    }
}

impl FileLedger {
    /// Opens the ledger at `path`, creating it if the file does not exist.
    ///
    /// # Errors
    /// [`LedgerErrorKind::Foreign`] for a file that is not a ledger,
    /// [`LedgerErrorKind::NewerFormat`] for one a newer version wrote,
    /// [`LedgerErrorKind::OlderFormat`] for one in a format this version no
    /// longer reads,
    /// [`LedgerErrorKind::Corrupt`] for a damaged one, [`LedgerErrorKind::Io`]
    /// when it cannot be read or written (or another process has it open);
    /// each names the path. Nothing is started from zero over a file that
    /// exists.
    pub fn open(path: impl AsRef<Path>) -> Result<FileLedger, LedgerError> {
        let path = path.as_ref().to_path_buf();
        let at = path.display().to_string();
        let fail = |kind, detail: String| LedgerError::new(kind, at.clone(), detail);
        // First: a second opener must not even make the file (one it made
        // while the ledger's store is closed after an I/O error would be
        // taken for the ledger when it opens again).
        let lock = lock_beside(&path)?;
        match std::fs::File::open(&path) {
            Ok(mut f) => {
                let mut head = [0u8; 4];
                let mut n = 0;
                while n < head.len() {
                    match f.read(&mut head[n..]) {
                        Ok(0) => break,
                        Ok(k) => n += k,
                        Err(e) => return Err(fail(LedgerErrorKind::Io, e.to_string())),
                    }
                }
                if n == 0 {
                    return Err(fail(
                        LedgerErrorKind::Corrupt,
                        "the file is empty (truncated?)".into(),
                    ));
                }
                if head[..n] != REDB_MAGIC[..n] || n < REDB_MAGIC.len() {
                    return Err(fail(
                        LedgerErrorKind::Foreign,
                        "the file does not start as a redb database does".into(),
                    ));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => create_new(&path)?,
            Err(e) => return Err(fail(LedgerErrorKind::Io, e.to_string())),
        }
        let reopen_at = path.clone();
        // Opened, never created: the file exists (made whole above), and a
        // file gone when the store is opened again is an error, not a new
        // empty ledger.
        let mut ledger = FileLedger::with_store(
            path,
            Box::new(move || open_store(&reopen_at, || Database::open(&reopen_at))),
        )?;
        ledger._lock = Some(lock);
        Ok(ledger)
    }

    /// A ledger on the store `open` opens (again after an I/O error), at
    /// `path`; its format is checked, or marked on a new store.
    fn with_store(
        path: PathBuf,
        open: Box<dyn Fn() -> Result<Database, LedgerError> + Send + Sync>,
    ) -> Result<FileLedger, LedgerError> {
        let db = open()?;
        let ledger = FileLedger {
            db: Mutex::new(Some(db)),
            path,
            reopen: open,
            _lock: None,
        };
        ledger.check_format()?;
        Ok(ledger)
    }

    /// Runs `f` on the store, opened again first if an I/O error closed it.
    ///
    /// After an I/O error (a full disk, say) redb refuses every later
    /// transaction of that `Database` (`PreviousIo`) until it is opened
    /// again, which repairs the file if need be. So an I/O error closes it
    /// here, and the next call opens it again: a transient failure fails
    /// the commits made during it, as the ledger contract allows, not every
    /// commit until the process restarts.
    fn db<T>(&self, f: impl FnOnce(&Database) -> Result<T, LedgerError>) -> Result<T, LedgerError> {
        let mut slot = self.db.lock();
        if slot.is_none() {
            // The file may have changed while the store was closed (a
            // volume remounted, the file replaced): it must still be this
            // ledger, not a new or foreign store. Checked under the same
            // catch as every store call: the damaged page that closed it
            // may panic here too.
            let reopened = caught(&self.at(), DAMAGED, || {
                let db = (self.reopen)()?;
                self.check_format_of(&db, false).map(|()| db)
            });
            *slot = Some(reopened.and_then(|r| r)?);
        }
        let db = slot.as_ref().expect("opened above");
        // redb asserts in places on a damaged page (one it meets after
        // opening a file closed cleanly, whose checksums it does not check
        // then): reported as the damage it is, so that the process goes on.
        let result = caught(&self.at(), DAMAGED, || f(db));
        let panicked = result.is_err();
        let result = result.and_then(|r| r);
        // A store that met an I/O error refuses every later transaction; one
        // that panicked may hold a poisoned lock or pages of the write it
        // did not roll back: either is closed, and opened again by the next
        // call (its drop, which writes, caught too).
        if panicked || matches!(&result, Err(e) if e.kind == LedgerErrorKind::Io) {
            let old = slot.take();
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(old)));
        }
        result
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn at(&self) -> String {
        self.path.display().to_string()
    }

    /// Marks a new file as a ledger; checks an existing one is a ledger of
    /// a format this version reads.
    fn check_format(&self) -> Result<(), LedgerError> {
        self.db(|db| self.check_format_of(db, true))
    }

    /// [`FileLedger::check_format`] of `db`; a store with no table at all
    /// is marked as a new ledger only if `new_ok`.
    fn check_format_of(&self, db: &Database, new_ok: bool) -> Result<(), LedgerError> {
        let at = self.at();
        let r = db.begin_read().map_err(|e| redb_error(&at, e.into()))?;
        let tables: Vec<String> = r
            .list_tables()
            .map_err(|e| redb_error(&at, e.into()))?
            .map(|t| t.name().to_owned())
            .collect();
        let format = match r.open_table(META) {
            Ok(t) => t
                .get("format")
                .map_err(|e| redb_error(&at, e.into()))?
                .map(|v| v.value()),
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(redb_error(&at, e.into())),
        };
        drop(r);
        match format {
            Some(f) if f == u32::from(FORMAT) => Ok(()),
            Some(f) if f > u32::from(FORMAT) => Err(LedgerError::new(
                LedgerErrorKind::NewerFormat,
                at,
                format!("ledger format {f}, this version reads up to {FORMAT}"),
            )),
            Some(f) => Err(LedgerError::new(
                LedgerErrorKind::OlderFormat,
                at,
                format!(
                    "ledger format {f}, older than this version's {FORMAT} (counter records \
                     gained their window's end; no migration: start from a new file)"
                ),
            )),
            None if tables.is_empty() && !new_ok => Err(LedgerError::new(
                LedgerErrorKind::Foreign,
                at,
                "the file was emptied or replaced while the ledger had it open",
            )),
            None if tables.is_empty() => {
                let w = db.begin_write().map_err(|e| redb_error(&at, e.into()))?;
                {
                    let mut meta = w.open_table(META).map_err(|e| redb_error(&at, e.into()))?;
                    meta.insert("format", u32::from(FORMAT))
                        .map_err(|e| redb_error(&at, e.into()))?;
                    w.open_table(COUNTERS)
                        .map_err(|e| redb_error(&at, e.into()))?;
                    w.open_table(RULES).map_err(|e| redb_error(&at, e.into()))?;
                }
                w.commit().map_err(|e| redb_error(&at, e.into()))
            }
            None => Err(LedgerError::new(
                LedgerErrorKind::Foreign,
                at,
                format!(
                    "a redb database without a benefit-quota format marker (tables: {})",
                    tables.join(", ")
                ),
            )),
        }
    }
}

impl Ledger for FileLedger {
    fn load(&self) -> Result<Snapshot, LedgerError> {
        self.db(|db| self.load_from(db))
    }

    fn commit(&self, changes: &[Change]) -> Result<Vec<u64>, LedgerError> {
        self.db(|db| self.commit_to(db, changes))
    }

    fn bind(&self, utc_offset_seconds: i32) -> Result<(), LedgerError> {
        self.db(|db| {
            let at = self.at();
            let e = |err: redb::Error| redb_error(&at, err);
            let w = db.begin_write().map_err(|x| e(x.into()))?;
            {
                let mut meta = w.open_table(META).map_err(|x| e(x.into()))?;
                // The offset's bits as a u32 (the meta table's values).
                let stored = meta
                    .get(UTC_OFFSET)
                    .map_err(|x| e(x.into()))?
                    .map(|v| v.value() as i32);
                match stored {
                    Some(o) if o != utc_offset_seconds => {
                        return Err(super::offset_mismatch(
                            &at,
                            i64::from(o),
                            utc_offset_seconds,
                        ))
                    }
                    Some(_) => return Ok(()),
                    None => {
                        meta.insert(UTC_OFFSET, utc_offset_seconds as u32)
                            .map_err(|x| e(x.into()))?;
                    }
                }
            }
            w.commit().map_err(|x| e(x.into()))
        })
    }
}

impl FileLedger {
    fn load_from(&self, db: &Database) -> Result<Snapshot, LedgerError> {
        let at = self.at();
        let e = |err: redb::Error| redb_error(&at, err);
        let r = db.begin_read().map_err(|x| e(x.into()))?;
        let mut snap = Snapshot::default();
        let rules = r.open_table(RULES).map_err(|x| e(x.into()))?;
        for item in rules.iter().map_err(|x| e(x.into()))? {
            let (k, v) = item.map_err(|x| e(x.into()))?;
            let rec = codec::decode_rule(v.value()).map_err(|d| {
                LedgerError::new(
                    LedgerErrorKind::Corrupt,
                    at.clone(),
                    format!("rule {}: {d}", k.value()),
                )
            })?;
            snap.rules.push(rec);
        }
        snap.rules.sort_by_key(|r| r.position);
        let counters = r.open_table(COUNTERS).map_err(|x| e(x.into()))?;
        for item in counters.iter().map_err(|x| e(x.into()))? {
            let (k, v) = item.map_err(|x| e(x.into()))?;
            let corrupt = |d: codec::DecodeError| {
                LedgerError::new(
                    LedgerErrorKind::Corrupt,
                    at.clone(),
                    format!("counter {:?}: {d}", k.value()),
                )
            };
            let key = codec::decode_counter_key(k.value()).map_err(corrupt)?;
            let rec = codec::decode_counter(v.value()).map_err(corrupt)?;
            snap.counters.push((key, rec));
        }
        Ok(snap)
    }

    fn commit_to(&self, db: &Database, changes: &[Change]) -> Result<Vec<u64>, LedgerError> {
        let at = self.at();
        let e = |err: redb::Error| redb_error(&at, err);
        let w = db.begin_write().map_err(|x| e(x.into()))?;
        let mut granted = Vec::new();
        {
            let mut counters = w.open_table(COUNTERS).map_err(|x| e(x.into()))?;
            let mut rules = w.open_table(RULES).map_err(|x| e(x.into()))?;
            for change in changes {
                match change {
                    Change::Rule(r) => {
                        rules
                            .insert(
                                r.info.benefit_id().as_str(),
                                codec::encode_rule(r).as_slice(),
                            )
                            .map_err(|x| e(x.into()))?;
                    }
                    Change::Forget { key, .. } => {
                        let k = codec::encode_counter_key(key);
                        let stored = match counters.get(k.as_slice()).map_err(|x| e(x.into()))? {
                            Some(v) => codec::decode_counter(v.value()).ok(),
                            None => None,
                        };
                        if stored.is_some() && apply_counter_change(stored, change).0.is_none() {
                            counters.remove(k.as_slice()).map_err(|x| e(x.into()))?;
                        }
                    }
                    Change::Grant { key, .. }
                    | Change::GiveBack { key, .. }
                    | Change::Record { key, .. } => {
                        let k = codec::encode_counter_key(key);
                        let stored = match counters.get(k.as_slice()).map_err(|x| e(x.into()))? {
                            Some(v) => Some(codec::decode_counter(v.value()).map_err(|d| {
                                LedgerError::new(
                                    LedgerErrorKind::Corrupt,
                                    at.clone(),
                                    format!("counter {k:?}: {d}"),
                                )
                            })?),
                            None => None,
                        };
                        let (rec, g) = apply_counter_change(stored, change);
                        if let Some(rec) = rec {
                            counters
                                .insert(k.as_slice(), codec::encode_counter(&rec).as_slice())
                                .map_err(|x| e(x.into()))?;
                        }
                        if matches!(change, Change::Grant { .. }) {
                            granted.push(g);
                        }
                    }
                }
            }
        }
        w.commit().map_err(|x| e(x.into()))?;
        Ok(granted)
    }
}

/// Makes a new, empty ledger at `path`, whole or not at all: redb creates
/// a file before it writes its header, so a process killed in between
/// left a file every later open refused (an empty or truncated file is
/// never taken for a new one: it may be a ledger that lost its contents).
/// The ledger is made under a name of its own (`unique_id`: two processes
/// making one ledger at once never write into one file), then linked to `path`, which fails if another process
/// made `path` meanwhile (theirs is then opened: no process replaces a
/// file another may have open), and the directory is synced. Where the
/// filesystem has no hard links, it is renamed into place if `path` is
/// still free. What a kill leaves under the temporary name is not the
/// ledger, and stays beside it.
fn create_new(path: &Path) -> Result<(), LedgerError> {
    let at = path.display().to_string();
    let io = |e: std::io::Error| LedgerError::new(LedgerErrorKind::Io, at.clone(), e.to_string());
    let new = beside(path, &format!(".new-{}", super::unique_id()));
    let made = {
        let on = new.clone();
        FileLedger::with_store(
            new.clone(),
            Box::new(move || open_store(&on, || Database::create(&on))),
        )
    };
    if let Err(e) = made.map(drop) {
        let _ = std::fs::remove_file(&new);
        return Err(e);
    } // else closed: its format is marked, committed and synced
    let placed = match std::fs::hard_link(&new, path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(_) if path.exists() => Ok(false),
        // No hard links here (FAT, some network filesystems): renamed if
        // the path is still free (a race with another process making it
        // at this very moment is not excluded there).
        Err(_) => std::fs::rename(&new, path).map(|()| true),
    };
    let _ = std::fs::remove_file(&new);
    if !placed.map_err(io)? {
        return Ok(());
    }
    #[cfg(unix)]
    {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
    }
    Ok(())
}

/// `path` with `suffix` added to its file name.
fn beside(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

/// Takes the exclusive lock on `<path>.lock` (made if need be) that a
/// ledger holds for its life (see `FileLedger::_lock`).
fn lock_beside(path: &Path) -> Result<std::fs::File, LedgerError> {
    let at = path.display().to_string();
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(beside(path, ".lock"))
        .map_err(|e| LedgerError::new(LedgerErrorKind::Io, at.clone(), e.to_string()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(LedgerError::new(
            LedgerErrorKind::Io,
            at,
            "already open (by this or another process)",
        )),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(LedgerError::new(LedgerErrorKind::Io, at, e.to_string()))
        }
    }
}

/// Opens the store at `path` with `create`. redb checks a damaged file
/// with assertions in places (a file shorter than its header says panics):
/// caught here and reported as what it is, so that no bad file brings the
/// process down.
fn open_store(
    path: &Path,
    create: impl FnOnce() -> Result<Database, redb::DatabaseError>,
) -> Result<Database, LedgerError> {
    let at = path.display().to_string();
    caught(&at, "the store refused the file (truncated?)", create)
        .and_then(|r| r.map_err(|e| db_error(&at, e)))
}

/// What a store call that panicked met, after opening (see [`caught`]).
const DAMAGED: &str = "the store met a damaged page";

/// Runs `f`, a panic in it (redb asserts on damage in places) caught and
/// reported as a `Corrupt` error at `at`: `what`, then what the panic said.
fn caught<R>(at: &str, what: &str, f: impl FnOnce() -> R) -> Result<R, LedgerError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|panic| {
        let said = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        LedgerError::new(LedgerErrorKind::Corrupt, at, format!("{what}: {said}"))
    })
}

fn db_error(at: &str, err: redb::DatabaseError) -> LedgerError {
    match err {
        redb::DatabaseError::DatabaseAlreadyOpen => LedgerError::new(
            LedgerErrorKind::Io,
            at,
            "already open (by this or another process)",
        ),
        redb::DatabaseError::UpgradeRequired(v) => LedgerError::new(
            LedgerErrorKind::NewerFormat,
            at,
            format!("redb file format {v} is not the one this version reads"),
        ),
        other => redb_error(at, other.into()),
    }
}

fn redb_error(at: &str, err: redb::Error) -> LedgerError {
    let kind = match &err {
        redb::Error::Corrupted(_) | redb::Error::ValueTooLarge(_) => LedgerErrorKind::Corrupt,
        redb::Error::UpgradeRequired(_) => LedgerErrorKind::NewerFormat,
        redb::Error::TableDoesNotExist(_) | redb::Error::TableTypeMismatch { .. } => {
            LedgerErrorKind::Foreign
        }
        _ => LedgerErrorKind::Io,
    };
    LedgerError::new(kind, at, err.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{CounterKey, CounterOwner, WindowId};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    /// A store in memory whose writes and syncs fail while `failing` is
    /// set, as a full or failing disk's do; it outlives the `Database`s
    /// opened on it, as a file does.
    #[derive(Debug, Default)]
    struct Disk {
        bytes: parking_lot::Mutex<Vec<u8>>,
        failing: AtomicBool,
    }

    #[derive(Debug)]
    struct Backend(Arc<Disk>);

    impl Backend {
        fn check(&self) -> std::io::Result<()> {
            if self.0.failing.load(Ordering::SeqCst) {
                return Err(std::io::Error::other("no space left on device"));
            }
            Ok(())
        }
    }

    impl redb::StorageBackend for Backend {
        fn len(&self) -> std::io::Result<u64> {
            Ok(self.0.bytes.lock().len() as u64)
        }
        fn read(&self, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
            let b = self.0.bytes.lock();
            let at = offset as usize;
            Ok(b[at..at + len].to_vec())
        }
        fn set_len(&self, len: u64) -> std::io::Result<()> {
            self.check()?;
            self.0.bytes.lock().resize(len as usize, 0);
            Ok(())
        }
        fn sync_data(&self, _: bool) -> std::io::Result<()> {
            self.check()
        }
        fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
            self.check()?;
            let at = offset as usize;
            self.0.bytes.lock()[at..at + data.len()].copy_from_slice(data);
            Ok(())
        }
    }

    fn record(amount: u64) -> Change {
        Change::Record {
            key: CounterKey {
                benefit_id: crate::BenefitId::new("r").unwrap(),
                owner: CounterOwner::Device("d".into()),
            },
            window: WindowId {
                generation: 0,
                start: i64::MIN,
                end: i64::MAX,
            },
            amount,
            ends_in: None,
        }
    }

    /// A new ledger on a disk of its own, which the ledger opens again
    /// after an I/O error.
    fn on_disk() -> (Arc<Disk>, FileLedger) {
        let disk = Arc::new(Disk::default());
        let on = Arc::clone(&disk);
        let ledger = FileLedger::with_store(
            PathBuf::from("disk"),
            Box::new(move || {
                open_store(Path::new("disk"), || {
                    redb::Builder::new().create_with_backend(Backend(Arc::clone(&on)))
                })
            }),
        )
        .unwrap();
        (disk, ledger)
    }

    /// An I/O error fails the commits made while it lasts, not every commit
    /// after it: redb refuses every transaction of a `Database` that met
    /// one, so the ledger opens the store again.
    #[test]
    fn a_transient_io_error_fails_only_the_commits_made_during_it() {
        let (disk, ledger) = on_disk();
        ledger.commit(&[record(5)]).unwrap();
        disk.failing.store(true, Ordering::SeqCst);
        let failed = ledger.commit(&[record(100)]).unwrap_err();
        assert_eq!(failed.kind, LedgerErrorKind::Io, "{failed:?}");
        assert!(ledger.commit(&[record(100)]).is_err());
        disk.failing.store(false, Ordering::SeqCst);
        ledger.commit(&[record(7)]).expect("the disk is back");
        let counters = ledger.load().unwrap().counters;
        assert_eq!(counters.len(), 1);
        assert_eq!(counters[0].1.used, 12, "the failed commits applied nothing");
    }

    /// A store opened again after an I/O error must still be this ledger:
    /// one emptied or replaced meanwhile is refused, not used as a new,
    /// empty ledger (which would forget every counter).
    #[test]
    fn a_store_emptied_while_closed_is_refused_when_opened_again() {
        let (disk, ledger) = on_disk();
        ledger.commit(&[record(5)]).unwrap();
        disk.failing.store(true, Ordering::SeqCst);
        assert!(ledger.commit(&[record(1)]).is_err());
        disk.bytes.lock().clear();
        disk.failing.store(false, Ordering::SeqCst);
        let err = ledger.commit(&[record(1)]).unwrap_err();
        assert_eq!(err.kind, LedgerErrorKind::Foreign, "{err:?}");
    }
}
