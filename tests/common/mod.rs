//! Helpers shared by the integration tests.
#![allow(dead_code)]

use benefit_quota::{
    Amount, BenefitType, Engine, HandleRequest, Subject, SubjectHandle, UsageReport, FOREVER,
};
use serde_json::json;

/// 2025-03-12 00:00:00 +08:00 (the seed's `started_at`): a local midnight.
pub const MIDNIGHT: i64 = 1_741_708_800;
pub const DAY: i64 = 86_400;
pub const PTS: BenefitType = BenefitType::ResourcePoint;
pub const VOICE: BenefitType = BenefitType::VoiceUnifiedDurationSystem;

pub fn units(n: u64) -> Amount {
    Amount::from_units(n)
}

/// One request per handle, spending `amounts` points (in order) of
/// `resource_point`.
pub fn point_requests<'h, E: std::ops::Deref<Target = Engine>>(
    handles: &'h mut [SubjectHandle<E>],
    amounts: impl IntoIterator<Item = u64>,
) -> Vec<HandleRequest<'h, E>> {
    handles
        .iter_mut()
        .zip(amounts)
        .map(|(h, n)| HandleRequest {
            handle: h,
            benefit_type: PTS,
            amount: units(n),
        })
        .collect()
}

/// Builder for create bodies.
pub struct Rule {
    pub entity_type: &'static str,
    pub entity_id: Option<String>,
    pub benefit_type: &'static str,
    pub limit: i64,
    pub unit: &'static str,
    pub time: i64,
    pub started_at: i64,
    pub ended_at: i64,
    pub status: &'static str,
}

impl Rule {
    pub fn new(entity_type: &'static str, entity_id: Option<&str>, limit: i64) -> Rule {
        Rule {
            entity_type,
            entity_id: entity_id.map(str::to_owned),
            benefit_type: "resource_point",
            limit,
            unit: "never",
            time: 1,
            started_at: 0,
            ended_at: FOREVER,
            status: "valid",
        }
    }
    pub fn all_devices(limit: i64) -> Rule {
        Rule::new("enterprise_all_devices", None, limit)
    }
    pub fn device(id: &str, limit: i64) -> Rule {
        Rule::new("single_device", Some(id), limit)
    }
    pub fn all_consumers(limit: i64) -> Rule {
        Rule::new("enterprise_all_custom_consumers", None, limit)
    }
    pub fn consumer(id: &str, limit: i64) -> Rule {
        Rule::new("single_custom_consumer", Some(id), limit)
    }
    pub fn every(mut self, time: i64, unit: &'static str) -> Rule {
        self.unit = unit;
        self.time = time;
        self
    }
    pub fn daily(self) -> Rule {
        self.every(1, "day")
    }
    pub fn of(mut self, benefit_type: &'static str) -> Rule {
        self.benefit_type = benefit_type;
        self
    }
    pub fn active(mut self, started_at: i64, ended_at: i64) -> Rule {
        self.started_at = started_at;
        self.ended_at = ended_at;
        self
    }
    pub fn status(mut self, status: &'static str) -> Rule {
        self.status = status;
        self
    }
    pub fn body(&self) -> String {
        let mut v = json!({
            "entity_type": self.entity_type,
            "benefit_info": {
                "benefit_type": self.benefit_type,
                "active_mode": "absolute_time",
                "started_at": self.started_at,
                "ended_at": self.ended_at,
                "limit": self.limit,
                "status": self.status,
                "trigger_unit": self.unit,
                "trigger_time": self.time,
            }
        });
        if let Some(id) = &self.entity_id {
            v["entity_id"] = json!(id);
        }
        v.to_string()
    }
    /// Creates the rule and returns its id.
    pub fn create(&self, engine: &Engine) -> String {
        match engine.create_json(self.body()) {
            Ok(info) => info.benefit_id().as_str().to_owned(),
            Err(e) => panic!("create failed: {e}"),
        }
    }
}

/// Everything observable about an engine: records and the usage of `subjects`.
pub fn snapshot(engine: &Engine, subjects: &[Subject<'_>], now: i64) -> String {
    let records = serde_json::to_string(&engine.records()).unwrap();
    let usage: Vec<Vec<UsageReport>> = subjects.iter().map(|s| engine.usage(s, now)).collect();
    format!("{records}\n{usage:?}\n{}", engine.counter_count())
}

pub fn used(engine: &Engine, subject: &Subject<'_>, benefit_id: &str, now: i64) -> Amount {
    engine
        .usage(subject, now)
        .into_iter()
        .find(|u| u.benefit_id.as_str() == benefit_id)
        .map(|u| u.used)
        .unwrap_or_else(|| panic!("rule {benefit_id} does not apply"))
}

/// Device `devices[i % len]`, in workspace `w` when `i % every == 0`.
pub fn device_maybe_in_workspace(
    devices: &[&'static str],
    i: usize,
    every: usize,
) -> Subject<'static> {
    let d = devices[i % devices.len()];
    if i.is_multiple_of(every) {
        Subject::device(d).with_member(benefit_quota::Member {
            workspace_id: Some("w"),
            ..Default::default()
        })
    } else {
        Subject::device(d)
    }
}
pub mod redis;

/// The example binary `name`, which `cargo test` builds beside the test
/// binaries (target/<profile>/deps/<test> → target/<profile>/examples/<name>)
/// when the features it requires (`feature`) are on.
pub fn example_binary(name: &str, feature: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(std::path::Path::parent).unwrap();
    let bin = dir.join("examples").join(name);
    assert!(
        bin.exists(),
        "{} is missing: run the tests with --features {feature} (cargo builds examples for `cargo test`)",
        bin.display()
    );
    bin
}

/// A child process this test started, killed (SIGKILL) and reaped when the
/// guard is dropped: a failed assertion in the test does not leave it
/// running (some children run until killed).
pub struct KillOnDrop(pub std::process::Child);

impl std::ops::Deref for KillOnDrop {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // Already ended (waited for): both fail harmlessly.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An engine on a ledger that fails every commit from the start (so it
/// grants nothing), with one all-devices daily rule of `limit` points
/// committed before the failures begin. A call waits up to a minute for a
/// grant: the failure, not the clock, must be what denies it.
pub fn on_a_failing_ledger(limit: i64) -> std::sync::Arc<Engine> {
    let ledger = std::sync::Arc::new(benefit_quota::MemoryLedger::new());
    let engine = std::sync::Arc::new(
        Engine::builder()
            .ledger(std::sync::Arc::clone(&ledger))
            .grant_timeout(std::time::Duration::from_secs(60))
            .open()
            .unwrap(),
    );
    Rule::all_devices(limit).daily().create(&engine);
    ledger.fail_next(u32::MAX);
    engine
}

/// Sets its flag when dropped, so that a test's helper threads that loop
/// until the flag is set also stop when the test panics first (the panic
/// unwinds through the guard; a scope waiting for those threads would
/// otherwise wait forever).
pub struct SetOnDrop<'a>(pub &'a std::sync::atomic::AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Release);
    }
}

/// How long a test waits for a child process it started to end.
pub const CHILD_DEADLINE: std::time::Duration = std::time::Duration::from_secs(600);

/// `child`'s exit status once it ends; if it has not ended within
/// [`CHILD_DEADLINE`], it is killed and the test fails (a hung child
/// fails the test instead of hanging it).
pub fn wait_within(child: &mut std::process::Child) -> std::process::ExitStatus {
    let until = std::time::Instant::now() + CHILD_DEADLINE;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if std::time::Instant::now() > until {
            let _ = child.kill();
            let _ = child.wait();
            panic!("child {} did not end within {CHILD_DEADLINE:?}", child.id());
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
