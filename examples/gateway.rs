//! A small gateway (features `axum`, `tower`): a toy upstream behind
//! `QuotaLayer` (one point per request, the device from `x-device-id`), the
//! admin routes beside it, on loopback.
//!
//! Run: `cargo run --release --example gateway --features axum`, then for
//! example create a rule with
//! `curl -XPOST -H 'Authorization: Bearer admin-secret' localhost:3000/v1/commerce/benefit/limitations -d '{"entity_type":"enterprise_all_devices","benefit_info":{"benefit_type":"resource_point","active_mode":"absolute_time","started_at":0,"ended_at":253402300799,"limit":3,"trigger_unit":"day"}}'`
//! and spend with `curl -i -H 'x-device-id: sn-1' localhost:3000/chat`
//! (the fourth call of the day is answered 429).

use std::sync::Arc;

use axum::routing::get;
use axum::Router;
use benefit_quota::{admin_router, AdminAuth, DeviceHeader, Engine, QuotaLayer};

#[tokio::main]
async fn main() {
    // The subject comes from a header the client writes: each new id is a
    // new counter, so the count is capped (see README on `max_counters`).
    let engine = Arc::new(Engine::builder().max_counters(1_000_000).build());
    let quota = QuotaLayer::new(
        Arc::clone(&engine),
        DeviceHeader(http::HeaderName::from_static("x-device-id")),
    );
    let app = Router::new()
        .route("/chat", get(|| async { "the upstream answered\n" }))
        .layer(quota)
        .merge(admin_router(engine, AdminAuth::new("admin-secret")));
    let listener = match tokio::net::TcpListener::bind("127.0.0.1:3000").await {
        Ok(l) => l,
        Err(e) => return eprintln!("cannot listen on 127.0.0.1:3000: {e}"),
    };
    println!("gateway on http://127.0.0.1:3000 (admin token: admin-secret)");
    if let Err(e) = axum::serve(listener, app).await {
        eprintln!("{e}");
    }
}
