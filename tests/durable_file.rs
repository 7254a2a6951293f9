//! The file ledger (feature `durable`): restarts on a file, bad files, and
//! a file that does not grow with time.
#![cfg(feature = "durable")]

use std::path::PathBuf;

use benefit_quota::{Amount, BenefitType, Engine, LedgerError, LedgerErrorKind, Subject};

const PTS: BenefitType = BenefitType::ResourcePoint;
const T0: i64 = 1_741_708_800;

/// A fresh directory under the system's temp dir, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let p = std::env::temp_dir().join(format!("bq-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Dir(p)
    }
    fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn rule(limit: u64, unit: &str) -> String {
    format!(
        r#"{{"entity_type":"enterprise_all_devices","benefit_info":{{"benefit_type":"resource_point",
        "active_mode":"absolute_time","started_at":0,"ended_at":253402300799,"limit":{limit},"trigger_unit":"{unit}"}}}}"#
    )
}

fn open_err(path: &PathBuf) -> LedgerError {
    Engine::builder()
        .durable(path)
        .open()
        .expect_err("opening must fail")
}

#[test]
fn a_restart_on_the_file_keeps_rules_and_usage() {
    let dir = Dir::new("restart");
    let path = dir.file("quota.db");
    let e = Engine::builder().durable(&path).open().unwrap();
    e.create_json(rule(50, "day")).unwrap();
    let dev = Subject::device("sn-1");
    for _ in 0..20 {
        assert!(e
            .try_consume(&dev, PTS, Amount::from_units(1), T0)
            .is_allowed());
    }
    assert!(e.record(&dev, PTS, Amount::from_units(5), T0).is_allowed());
    drop(e);
    let e = Engine::builder().durable(&path).open().unwrap();
    assert!(e.is_configured());
    assert_eq!(e.usage(&dev, T0)[0].used, Amount::from_units(25));
    assert_eq!(e.usage(&dev, T0)[0].lifetime, Amount::from_units(25));
}

#[test]
fn a_file_open_elsewhere_is_refused() {
    let dir = Dir::new("twice");
    let path = dir.file("quota.db");
    let _e = Engine::builder().durable(&path).open().unwrap();
    let err = open_err(&path);
    assert_eq!(err.kind, LedgerErrorKind::Io);
    assert!(err.to_string().contains("quota.db"), "{err}");
}

#[test]
fn a_foreign_file_is_named_and_left_alone() {
    let dir = Dir::new("foreign");
    let path = dir.file("notes.txt");
    std::fs::write(&path, "not a database\n").unwrap();
    let err = open_err(&path);
    assert_eq!(err.kind, LedgerErrorKind::Foreign, "{err}");
    assert!(err.to_string().contains("notes.txt"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), b"not a database\n");
}

#[test]
fn an_empty_file_is_corrupt_not_a_fresh_start() {
    let dir = Dir::new("empty");
    let path = dir.file("quota.db");
    std::fs::write(&path, b"").unwrap();
    let err = open_err(&path);
    assert_eq!(err.kind, LedgerErrorKind::Corrupt, "{err}");
}

/// A ledger at `path` whose rule counts a point for each of 200 devices,
/// `device-0000` to `device-0199`, closed cleanly.
fn write_200_devices(path: &PathBuf) {
    let e = Engine::builder().durable(path).open().unwrap();
    e.create_json(rule(50, "never")).unwrap();
    for i in 0..200 {
        let d = format!("device-{i:04}");
        assert!(e
            .try_consume(&Subject::device(&d), PTS, Amount::from_units(1), T0)
            .is_allowed());
    }
}

#[test]
fn a_truncated_file_is_an_error_not_a_panic() {
    let dir = Dir::new("truncated");
    let path = dir.file("quota.db");
    write_200_devices(&path);
    let full = std::fs::read(&path).unwrap();
    for cut in [full.len() / 2, full.len() / 8, 100, 5] {
        std::fs::write(&path, &full[..cut]).unwrap();
        let r = Engine::builder().durable(&path).open();
        let err = r
            .err()
            .unwrap_or_else(|| panic!("a file cut to {cut} bytes opened"));
        assert!(err.to_string().contains("quota.db"), "{err}");
    }
}

#[test]
fn a_redb_file_of_another_application_is_foreign() {
    let dir = Dir::new("other-redb");
    let path = dir.file("other.redb");
    {
        let db = redb::Database::create(&path).unwrap();
        let w = db.begin_write().unwrap();
        {
            let def: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("sessions");
            w.open_table(def).unwrap().insert("a", 1).unwrap();
        }
        w.commit().unwrap();
    }
    let err = open_err(&path);
    assert_eq!(err.kind, LedgerErrorKind::Foreign, "{err}");
    assert!(err.detail.contains("sessions"), "{err}");
}

fn set_meta(path: &PathBuf, format: u32) {
    let db = redb::Database::create(path).unwrap();
    let w = db.begin_write().unwrap();
    {
        let def: redb::TableDefinition<&str, u32> =
            redb::TableDefinition::new("benefit_quota_meta");
        w.open_table(def).unwrap().insert("format", format).unwrap();
    }
    w.commit().unwrap();
}

#[test]
fn a_newer_format_is_refused_with_its_version() {
    let dir = Dir::new("newer");
    let path = dir.file("quota.db");
    drop(Engine::builder().durable(&path).open().unwrap());
    set_meta(&path, 9);
    let err = open_err(&path);
    assert_eq!(err.kind, LedgerErrorKind::NewerFormat, "{err}");
    assert!(err.detail.contains('9'), "{err}");
}

#[test]
fn an_older_format_is_refused_saying_so() {
    let dir = Dir::new("older");
    let path = dir.file("quota.db");
    drop(Engine::builder().durable(&path).open().unwrap());
    set_meta(&path, 1);
    let err = open_err(&path);
    assert_eq!(err.kind, LedgerErrorKind::OlderFormat, "{err}");
    assert!(err.to_string().contains("older"), "{err}");
    assert!(err.detail.contains("format 1"), "{err}");
}

#[test]
fn a_damaged_record_is_named() {
    let dir = Dir::new("damaged");
    let path = dir.file("quota.db");
    {
        let e = Engine::builder().durable(&path).open().unwrap();
        e.create_json(rule(50, "never")).unwrap();
        assert!(e
            .try_consume(&Subject::device("d"), PTS, Amount::from_units(1), T0)
            .is_allowed());
    }
    {
        let db = redb::Database::create(&path).unwrap();
        let w = db.begin_write().unwrap();
        {
            let def: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("counters");
            let mut t = w.open_table(def).unwrap();
            let keys: Vec<Vec<u8>> = {
                use redb::ReadableTable;
                t.iter()
                    .unwrap()
                    .map(|r| r.unwrap().0.value().to_vec())
                    .collect()
            };
            t.insert(keys[0].as_slice(), &[1u8, 2, 3][..]).unwrap();
        }
        w.commit().unwrap();
    }
    let err = open_err(&path);
    assert_eq!(err.kind, LedgerErrorKind::Corrupt, "{err}");
    assert!(err.detail.contains("counter"), "{err}");
}

/// A page damaged in a file closed cleanly (which redb opens without
/// checking its checksums): redb meets it while the ledger is read, and
/// asserts in places. The ledger reports it, naming the file, and the
/// process goes on.
#[test]
fn a_damaged_page_is_an_error_not_a_panic() {
    let dir = Dir::new("damaged-page");
    let path = dir.file("quota.db");
    write_200_devices(&path);
    let mut bytes = std::fs::read(&path).unwrap();
    let needle = b"device-0100";
    let pages: Vec<usize> = bytes
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(at, _)| at / 4096 * 4096)
        .collect();
    assert!(!pages.is_empty(), "the counter's key is in the file");
    for page in pages {
        bytes[page] = 0x07; // no page type redb knows
    }
    std::fs::write(&path, &bytes).unwrap();
    let err = open_err(&path);
    assert_eq!(err.kind, LedgerErrorKind::Corrupt, "{err}");
    assert!(err.to_string().contains("quota.db"), "{err}");
}

/// The file keeps the UTC offset its windows are counted at, and an
/// engine at another is refused (see `durable::a_ledger_opened_at_another_utc_offset_is_refused`).
#[test]
fn a_file_opened_at_another_utc_offset_is_refused() {
    let dir = Dir::new("offset");
    let path = dir.file("quota.db");
    {
        let e = Engine::builder().durable(&path).open().unwrap();
        e.create_json(rule(50, "day")).unwrap();
    }
    let err = Engine::builder()
        .utc_offset(benefit_quota::UtcOffset::from_hours(-5).unwrap())
        .durable(&path)
        .open()
        .unwrap_err();
    assert_eq!(err.kind, LedgerErrorKind::Mismatch, "{err}");
    assert!(err.to_string().contains("quota.db"), "{err}");
    assert!(err.detail.contains("UTC-05:00"), "{err}");
    assert!(Engine::builder().durable(&path).open().is_ok());
}

/// A new ledger is made under a name of its own and linked into place
/// once whole: a process killed while making it leaves no file at the
/// ledger's path that every later open would refuse as empty or
/// truncated, only its own leftover beside it. A ledger also holds a lock
/// file beside it for its life.
#[test]
fn a_new_file_appears_whole_beside_its_lock_only() {
    let dir = Dir::new("new-file");
    let path = dir.file("quota.db");
    // What a make killed after 2 bytes left.
    std::fs::write(dir.file("quota.db.new-1-2-3"), b"re").unwrap();
    {
        let e = Engine::builder().durable(&path).open().unwrap();
        e.create_json(rule(5, "never")).unwrap();
        assert!(e
            .try_consume(&Subject::device("d"), PTS, Amount::from_units(3), T0)
            .is_allowed());
    }
    let mut names: Vec<_> = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["quota.db", "quota.db.lock", "quota.db.new-1-2-3"]);
    let e = Engine::builder().durable(&path).open().unwrap();
    assert!(!e
        .try_consume(&Subject::device("d"), PTS, Amount::from_units(3), T0)
        .is_allowed());
}

/// One process per ledger: a second open of a ledger in use is refused,
/// by the lock file beside it (held even while the ledger's store is
/// closed after an I/O error, when redb's own lock is not).
#[test]
fn a_ledger_in_use_is_refused_to_a_second_opener() {
    let dir = Dir::new("in-use");
    let path = dir.file("quota.db");
    let first = Engine::builder().durable(&path).open().unwrap();
    let err = open_err(&path);
    assert_eq!(err.kind, LedgerErrorKind::Io, "{err}");
    assert!(err.detail.contains("already open"), "{err}");
    drop(first);
    assert!(Engine::builder().durable(&path).open().is_ok());
}

/// A second opener refused by the lock makes nothing: with the ledger's
/// file gone while its store is open, it would have made a new, empty
/// ledger there, which the first would take for its own when it opened
/// its store again after an I/O error.
#[test]
fn a_refused_second_opener_makes_no_file() {
    let dir = Dir::new("no-second-file");
    let path = dir.file("quota.db");
    let first = Engine::builder().durable(&path).open().unwrap();
    std::fs::remove_file(&path).unwrap();
    let err = open_err(&path);
    assert!(err.detail.contains("already open"), "{err}");
    assert!(!path.exists(), "the refused opener made a ledger file");
    drop(first);
}

#[test]
fn the_file_does_not_grow_with_time_at_constant_live_counters() {
    let dir = Dir::new("bounded");
    let path = dir.file("quota.db");
    let e = Engine::builder().durable(&path).open().unwrap();
    e.create_json(rule(1_000, "day")).unwrap();
    let devices: Vec<String> = (0..2_000).map(|i| format!("device-{i:05}")).collect();
    let mut sizes = Vec::new();
    for day in 0..12 {
        let now = T0 + day * 86_400;
        for d in &devices {
            assert!(e
                .try_consume(&Subject::device(d), PTS, Amount::from_units(1), now)
                .is_allowed());
        }
        e.evict(now);
        e.flush().unwrap();
        sizes.push(std::fs::metadata(&path).unwrap().len());
    }
    let (early, late) = (sizes[2], *sizes.last().unwrap());
    assert!(
        late <= early * 2,
        "file grew from {early} to {late} bytes: {sizes:?}"
    );
}
