//! `QuotaLayer` in front of services with the response bodies of tonic and
//! hyper (feature `tower`), called as tower services: `grpc()` answers a
//! denial as a trailers-only gRPC response (`grpc-status` 8,
//! `RESOURCE_EXHAUSTED`; 3, `INVALID_ARGUMENT`, without a subject), and the
//! default answers HTTP 429 with the envelope in hyper's `Full<Bytes>`.
//! (axum over real HTTP: `tests/http.rs`.)
#![cfg(feature = "tower")]

mod common;

use std::convert::Infallible;
use std::future::{ready, Ready};
use std::sync::Arc;
use std::task::{Context, Poll};

use benefit_quota::{DeviceHeader, Engine, QuotaLayer, Subject};
use common::*;
use tower_layer::Layer;
use tower_service::Service;

/// A gRPC method's stand-in: answers 200 with tonic's body and a marker.
#[derive(Clone)]
struct Upstream;

impl Service<http::Request<tonic::body::Body>> for Upstream {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Request<tonic::body::Body>) -> Self::Future {
        let mut r = http::Response::new(tonic::body::Body::default());
        r.headers_mut()
            .insert("x-upstream", http::HeaderValue::from_static("yes"));
        ready(Ok(r))
    }
}

fn request(device: Option<&str>) -> http::Request<tonic::body::Body> {
    let mut b = http::Request::builder()
        .uri("/pkg.Svc/Method")
        .header("content-type", "application/grpc");
    if let Some(d) = device {
        b = b.header("x-device-id", d);
    }
    b.body(tonic::body::Body::default()).expect("request")
}

#[tokio::test]
async fn a_tonic_service_gets_grpc_status_answers() {
    let engine = Arc::new(Engine::new());
    let daily = Rule::all_devices(2).daily().create(&engine);
    let layer = QuotaLayer::new(
        Arc::clone(&engine),
        DeviceHeader(http::HeaderName::from_static("x-device-id")),
    )
    .clock(|| MIDNIGHT + 3600)
    .grpc();
    let mut svc = layer.layer(Upstream);
    for _ in 0..2 {
        let r = svc.call(request(Some("sn-1"))).await.unwrap();
        assert_eq!(r.headers()["x-upstream"], "yes");
    }
    let r = svc.call(request(Some("sn-1"))).await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("x-upstream").is_none());
    assert_eq!(r.headers()["content-type"], "application/grpc");
    assert_eq!(r.headers()["grpc-status"], "8");
    let msg = r.headers()["grpc-message"].to_str().unwrap();
    assert!(msg.contains(&daily) && msg.contains("exhausted"), "{msg}");
    assert_eq!(r.headers()["retry-after"], "82800"); // 23 h to the next local midnight
    let r = svc.call(request(None)).await.unwrap();
    assert_eq!(r.headers()["grpc-status"], "3");
    assert_eq!(
        used(&engine, &Subject::device("sn-1"), &daily, MIDNIGHT + 3600),
        units(2)
    );
    // An impossible clock: 13 (`INTERNAL`), nothing counted.
    let mut late = QuotaLayer::new(
        Arc::clone(&engine),
        DeviceHeader(http::HeaderName::from_static("x-device-id")),
    )
    .clock(|| 253_402_300_800_000)
    .grpc()
    .layer(Upstream);
    let r = late.call(request(Some("sn-2"))).await.unwrap();
    assert_eq!(r.headers()["grpc-status"], "13");
    // A subject taken from credentials: 401 is `UNAUTHENTICATED` (16), 403
    // `PERMISSION_DENIED` (7).
    for (status, grpc) in [
        (http::StatusCode::UNAUTHORIZED, "16"),
        (http::StatusCode::FORBIDDEN, "7"),
    ] {
        let mut strict = QuotaLayer::new(
            Arc::clone(&engine),
            DeviceHeader(http::HeaderName::from_static("x-device-id")),
        )
        .on_missing_subject(status)
        .grpc()
        .layer(Upstream);
        let r = strict.call(request(None)).await.unwrap();
        assert_eq!(r.headers()["grpc-status"], grpc, "{status}");
        assert!(r.headers().get("x-upstream").is_none());
    }
    // A ledger that grants nothing: 14 (`UNAVAILABLE`), no retry hint.
    let ledgered = on_a_failing_ledger(2);
    let mut down = QuotaLayer::new(
        Arc::clone(&ledgered),
        DeviceHeader(http::HeaderName::from_static("x-device-id")),
    )
    .clock(|| MIDNIGHT + 3600)
    .grpc()
    .layer(Upstream);
    let r = down.call(request(Some("sn-1"))).await.unwrap();
    assert_eq!(r.headers()["grpc-status"], "14");
    assert!(r.headers().get("retry-after").is_none());
}

/// A hyper service stand-in with hyper's usual response body.
#[derive(Clone)]
struct HyperUpstream;

type Full = http_body_util::Full<bytes::Bytes>;

impl Service<http::Request<Full>> for HyperUpstream {
    type Response = http::Response<Full>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Request<Full>) -> Self::Future {
        ready(Ok(http::Response::new(Full::from("upstream"))))
    }
}

#[tokio::test]
async fn a_hyper_service_gets_http_answers() {
    use http_body_util::BodyExt;
    let engine = Arc::new(Engine::new());
    Rule::all_devices(1).create(&engine);
    let layer = QuotaLayer::new(
        Arc::clone(&engine),
        DeviceHeader(http::HeaderName::from_static("x-device-id")),
    )
    .clock(|| MIDNIGHT);
    let mut svc = layer.layer(HyperUpstream);
    let req = || {
        http::Request::builder()
            .header("x-device-id", "sn-1")
            .body(Full::default())
            .expect("request")
    };
    let r = svc.call(req()).await.unwrap();
    assert_eq!(
        r.into_body().collect().await.unwrap().to_bytes(),
        "upstream"
    );
    let r = svc.call(req()).await.unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().get("retry-after").is_none()); // a cumulative cap
    let body = r.into_body().collect().await.unwrap().to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["code"], benefit_quota::QUOTA_DENIED_CODE);
}
