//! The whole HTTP path on loopback (features `axum`, `tower`): requests per
//! second of a bare axum handler, the same behind `QuotaLayer`, and behind
//! `tower_governor` keyed by the same header, in interleaved rounds, each
//! driven by the same client tasks. Every request is allowed (the quotas are
//! far from spent), so what is measured is each layer's cost on the path.
//!
//! Run: `cargo run --release --example http_bench --features axum -- [seconds per round] [rounds]`

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::routing::get;
use axum::Router;
use benefit_quota::{DeviceHeader, Engine, QuotaLayer};
use tower_governor::governor::GovernorConfigBuilder;
use tower_governor::key_extractor::KeyExtractor;
use tower_governor::{GovernorError, GovernorLayer};

const DEVICES: usize = 1000;
const CLIENTS: usize = 32;

/// tower_governor keyed by the device header, as `QuotaLayer` is.
#[derive(Clone)]
struct DeviceKey;

impl KeyExtractor for DeviceKey {
    type Key = String;

    fn extract<T>(&self, req: &http::Request<T>) -> Result<String, GovernorError> {
        req.headers()
            .get("x-device-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .ok_or(GovernorError::UnableToExtractKey)
    }
}

async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}/chat")
}

/// Requests per second against `url` for `secs`.
async fn drive(url: &str, secs: f64, ids: &Arc<Vec<String>>) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs_f64(secs);
    let client = reqwest::Client::new();
    let mut tasks = Vec::new();
    for t in 0..CLIENTS {
        let (client, url, done, ids) = (
            client.clone(),
            url.to_owned(),
            Arc::clone(&done),
            Arc::clone(ids),
        );
        tasks.push(tokio::spawn(async move {
            let mut i = t;
            while Instant::now() < until {
                i = (i + CLIENTS) % DEVICES;
                let ok = client.get(&url).header("x-device-id", &ids[i]).send().await;
                if matches!(ok, Ok(r) if r.status() == 200) {
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    done.load(Ordering::Relaxed) as f64 / secs
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let secs: f64 = args
        .get(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0_f64)
        .clamp(0.1, 86_400.0);
    let rounds: usize = args
        .get(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(3_usize)
        .max(1);
    let ids: Arc<Vec<String>> = Arc::new((0..DEVICES).map(|i| format!("sn-{i:06}")).collect());

    let engine = Arc::new(Engine::new());
    let rule = r#"{"entity_type":"enterprise_all_devices","benefit_info":{"benefit_type":"resource_point","active_mode":"absolute_time","started_at":0,"ended_at":253402300799,"limit":1000000000,"trigger_unit":"day"}}"#;
    if let Err(e) = engine.create_json(rule) {
        return eprintln!("{e}");
    }
    let handler = || async { "upstream" };
    let bare = serve(Router::new().route("/chat", get(handler))).await;
    let quota = serve(
        Router::new()
            .route("/chat", get(handler))
            .layer(QuotaLayer::new(
                engine,
                DeviceHeader(http::HeaderName::from_static("x-device-id")),
            )),
    )
    .await;
    let config = GovernorConfigBuilder::default()
        .per_nanosecond(1)
        .burst_size(u32::MAX)
        .key_extractor(DeviceKey)
        .finish()
        .expect("governor config");
    let governor = serve(
        Router::new()
            .route("/chat", get(handler))
            .layer(GovernorLayer::new(config)),
    )
    .await;

    let _ = drive(&bare, 1.0, &ids).await; // warm-up
    let mut runs: [Vec<f64>; 3] = Default::default();
    for round in 0..rounds {
        for (k, url) in [&bare, &quota, &governor].into_iter().enumerate() {
            let rps = drive(url, secs, &ids).await;
            runs[k].push(rps);
            println!(
                "round {round}: {:<14} {rps:>10.0} req/s",
                ["bare", "QuotaLayer", "tower_governor"][k]
            );
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let [b, q, g] = &mut runs;
    let (b, q, g) = (median(b), median(q), median(g));
    println!("\n| server | req/s (median of {rounds}) | vs bare |");
    println!("|---|---|---|");
    for (name, v) in [
        ("bare axum handler", b),
        ("behind QuotaLayer", q),
        ("behind tower_governor", g),
    ] {
        println!("| {name} | {v:.0} | {:.3}x |", v / b);
    }
    println!(
        "\nQuotaLayer costs {:.1}% of the bare handler's throughput; tower_governor {:.1}%.",
        (1.0 - q / b) * 100.0,
        (1.0 - g / b) * 100.0
    );
}
