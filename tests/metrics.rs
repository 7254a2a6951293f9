//! The engine's metrics through the `metrics` facade (feature `metrics`),
//! read back from a debugging recorder. One test: the recorder is global.
#![cfg(feature = "metrics")]

mod common;

use std::collections::HashMap;

use benefit_quota::{BenefitType, Engine, EntityType, Listing, Subject};
use common::*;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};

/// Every counter and gauge, by name and sorted labels.
fn read(snapshotter: &metrics_util::debugging::Snapshotter) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let k = key.key();
        let mut labels: Vec<String> = k
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        labels.sort();
        let name = format!("{}{{{}}}", k.name(), labels.join(","));
        let v = match value {
            DebugValue::Counter(n) => n as f64,
            DebugValue::Gauge(g) => g.into_inner(),
            DebugValue::Histogram(h) => h.len() as f64,
        };
        out.insert(name, v);
    }
    out
}

fn decisions(m: &HashMap<String, f64>, outcome: &str, reason: &str, ty: &str) -> f64 {
    let k = format!(
        "benefit_quota_decisions_total{{benefit_type={ty},outcome={outcome},reason={reason}}}"
    );
    m.get(&k).copied().unwrap_or(0.0)
}

#[test]
fn decisions_writes_syncs_and_evictions_are_counted() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .expect("the only recorder of this test binary");

    let e = Engine::new();
    let daily = Rule::all_devices(2).daily().create(&e);
    assert!(e.create_json("{}").is_err());
    assert!(e
        .apply_update_json(&daily, r#"{"limit":3}"#, MIDNIGHT)
        .is_ok());
    let d = Subject::device("d");
    for _ in 0..4 {
        let _ = e.try_consume(&d, PTS, units(1), MIDNIGHT); // 3 allowed, then exhausted
    }
    let _ = e.check(&d, MIDNIGHT); // exhausted
    let _ = e.check(&Subject::consumer("c"), MIDNIGHT); // unlimited
    let _ = e.record(&d, VOICE, units(1), MIDNIGHT * 1000); // rejected
    let mut h = e.handle(&Subject::device("h")).with_lease(units(1));
    let _ = h.try_consume(PTS, units(1), MIDNIGHT);
    let _ = h.try_consume(PTS, units(1), MIDNIGHT); // from the lease: still counted
    drop(h);

    let mut listing = Listing::new();
    listing
        .add_page_json(
            EntityType::EnterpriseAllDevices,
            BenefitType::ResourcePoint,
            r#"{"has_more":false,"page_token":"","benefit_infos":[]}"#,
        )
        .unwrap();
    e.sync(&listing, MIDNIGHT).unwrap(); // withdraws the daily rule
                                         // Two days on, the two devices' daily counters belong to ended windows.
    assert_eq!(e.evict(MIDNIGHT + 2 * DAY), 2);

    let m = read(&snapshotter);
    let pts = "resource_point";
    assert_eq!(decisions(&m, "allowed", "", pts), 3.0 + 2.0, "{m:?}");
    assert_eq!(decisions(&m, "denied", "exhausted", pts), 1.0);
    assert_eq!(decisions(&m, "denied", "insufficient", pts), 0.0);
    assert_eq!(decisions(&m, "denied", "exhausted", "none"), 1.0);
    assert_eq!(decisions(&m, "unlimited", "", "none"), 1.0);
    assert_eq!(
        decisions(
            &m,
            "rejected",
            "impossible_time",
            "voice_unified_duration_system"
        ),
        1.0
    );
    let writes = |kind: &str, result: &str| {
        m.get(&format!(
            "benefit_quota_config_writes_total{{kind={kind},result={result}}}"
        ))
        .copied()
        .unwrap_or(0.0)
    };
    assert_eq!(writes("create", "ok"), 1.0);
    assert_eq!(writes("create", "error"), 1.0);
    assert_eq!(writes("update", "ok"), 1.0);
    assert_eq!(writes("sync", "ok"), 1.0);
    assert_eq!(
        m.get("benefit_quota_sync_changes_total{change=withdrawn}"),
        Some(&1.0)
    );
    assert_eq!(m.get("benefit_quota_evicted_total{}"), Some(&2.0));
    assert_eq!(
        m.get("benefit_quota_counters{}"),
        Some(&(e.counter_count() as f64))
    );

    // A post-paid amount the middleware cannot read is counted, not booked.
    #[cfg(all(feature = "tower", feature = "axum"))]
    {
        use tower_service::Service;
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        // One request by device `d` through a post-paid layer on `e`, whose
        // handler reports `used` voice seconds; the response's status.
        let post_paid_once = |e: &std::sync::Arc<Engine>, used: &'static str| {
            let layer = benefit_quota::QuotaLayer::new(
                std::sync::Arc::clone(e),
                benefit_quota::DeviceHeader(http::HeaderName::from_static("x-device-id")),
            )
            .post_paid(VOICE, http::HeaderName::from_static("x-voice-seconds"))
            .clock(|| MIDNIGHT);
            let app = axum::Router::new().route(
                "/",
                axum::routing::get(move || async move { ([("x-voice-seconds", used)], "ok") }),
            );
            let mut svc = tower_layer::Layer::layer(&layer, app);
            let req = http::Request::builder()
                .uri("/")
                .header("x-device-id", "d")
                .body(axum::body::Body::empty())
                .unwrap();
            rt.block_on(svc.call(req)).unwrap().status()
        };
        let e = std::sync::Arc::new(Engine::new());
        assert_eq!(post_paid_once(&e, "1.2345678"), 200);
        let m = read(&snapshotter);
        assert_eq!(
            m.get("benefit_quota_unbooked_total{reason=unparsable}"),
            Some(&1.0),
            "{m:?}"
        );

        // A record the engine refused (no room for the device's counter):
        // counted too, not dropped unseen.
        let e = std::sync::Arc::new(Engine::builder().max_counters(0).build());
        Rule::all_devices(100)
            .of("voice_unified_duration_system")
            .create(&e);
        assert_eq!(post_paid_once(&e, "30"), 200);
        let m = read(&snapshotter);
        assert_eq!(
            m.get("benefit_quota_unbooked_total{reason=counter_capacity}"),
            Some(&1.0),
            "{m:?}"
        );
    }
}
