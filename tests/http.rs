//! The tower middleware and the admin routes over real HTTP on loopback
//! (features `tower`, `axum`): an axum server on an ephemeral port, a
//! reqwest client.
#![cfg(all(feature = "tower", feature = "axum"))]

mod common;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use axum::routing::get;
use axum::Router;
use benefit_quota::{
    admin_router, admin_router_with_clock, subject_from, AdminAuth, ConsumerHeader, DeviceHeader,
    Engine, MemberHeaders, QuotaLayer, RequestSubject, Subject, SubjectExtractor, Used,
    QUOTA_DENIED_CODE,
};
use common::*;
use serde_json::Value;

/// 2025-03-12 11:00:00 +08:00: 13 hours before the next local midnight.
const ELEVEN: i64 = MIDNIGHT + 11 * 3600;

/// Serves `app` on an ephemeral loopback port; returns its base URL.
async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}

fn device_header() -> DeviceHeader {
    DeviceHeader(http::HeaderName::from_static("x-device-id"))
}

/// A gateway: `/chat` behind the layer (the clock fixed at `clock`), the
/// admin routes beside it.
fn gateway(engine: &Arc<Engine>, clock: Arc<AtomicI64>) -> Router {
    let layer = QuotaLayer::new(Arc::clone(engine), device_header())
        .headers_when_allowed(true)
        .clock(move || clock.load(Ordering::Relaxed));
    Router::new()
        .route("/chat", get(|| async { "upstream" }))
        .layer(layer)
        .merge(admin_router(
            Arc::clone(engine),
            AdminAuth::new("admin").read_only("viewer"),
        ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_the_limit_is_served_to_concurrent_clients_then_429_with_headers() {
    let engine = Arc::new(Engine::new());
    let daily = Rule::all_devices(50).daily().create(&engine);
    let base = serve(gateway(&engine, Arc::new(AtomicI64::new(ELEVEN)))).await;
    let client = reqwest::Client::new();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (client, url) = (client.clone(), format!("{base}/chat"));
        tasks.push(tokio::spawn(async move {
            let mut ok = 0;
            for _ in 0..10 {
                let r = client
                    .get(&url)
                    .header("x-device-id", "sn-1")
                    .send()
                    .await
                    .expect("answer");
                ok += u32::from(r.status() == 200);
            }
            ok
        }));
    }
    let mut served = 0;
    for t in tasks {
        served += t.await.expect("task");
    }
    assert_eq!(served, 50);
    assert_eq!(
        used(&engine, &Subject::device("sn-1"), &daily, ELEVEN),
        units(50)
    );
    // The next one: 429, the platform's envelope, when to come back.
    let r = client
        .get(format!("{base}/chat"))
        .header("x-device-id", "sn-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let h = r.headers().clone();
    assert_eq!(h["retry-after"], "46800"); // 13 hours to the next local midnight
    assert_eq!(h["ratelimit-reset"], "46800");
    assert_eq!(h["ratelimit-remaining"], "0");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], QUOTA_DENIED_CODE);
    let msg = body["msg"].as_str().unwrap();
    assert!(msg.contains(&daily) && msg.contains("exhausted"), "{msg}");
    assert!(body["detail"]["logid"]
        .as_str()
        .is_some_and(|l| !l.is_empty()));
    // Allowed answers carry what is left (`headers_when_allowed`).
    let r = client
        .get(format!("{base}/chat"))
        .header("x-device-id", "sn-2")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["ratelimit-remaining"], "49");
    assert_eq!(r.text().await.unwrap(), "upstream");
}

#[tokio::test]
async fn a_frozen_rule_is_429_with_no_retry_after_and_no_subject_is_400() {
    let engine = Arc::new(Engine::new());
    Rule::all_devices(50).status("frozen").create(&engine);
    let base = serve(gateway(&engine, Arc::new(AtomicI64::new(ELEVEN)))).await;
    let client = reqwest::Client::new();
    let r = client
        .get(format!("{base}/chat"))
        .header("x-device-id", "sn-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().get("retry-after").is_none());
    let body: Value = r.json().await.unwrap();
    assert!(body["msg"].as_str().unwrap().contains("frozen"));
    let r = client.get(format!("{base}/chat")).send().await.unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], 4000);
    assert!(body["msg"].as_str().unwrap().contains("x-device-id"));
}

#[tokio::test]
async fn subject_ids_in_any_script_are_read_and_overlong_ones_refused() {
    let engine = Arc::new(Engine::new());
    Rule::all_devices(50).create(&engine);
    Rule::device("设备-1", 1).create(&engine);
    let base = serve(gateway(&engine, Arc::new(AtomicI64::new(ELEVEN)))).await;
    let client = reqwest::Client::new();
    let get = |id: &[u8]| {
        let value = http::HeaderValue::from_bytes(id).unwrap();
        client
            .get(format!("{base}/chat"))
            .header("x-device-id", value)
            .send()
    };
    // A UTF-8 id is the device its single rule names (limit 1), not a
    // missing header.
    assert_eq!(get("设备-1".as_bytes()).await.unwrap().status(), 200);
    assert_eq!(get("设备-1".as_bytes()).await.unwrap().status(), 429);
    // Only spaces and tabs around it are trimmed: an ideographic space is
    // part of the id, another device than the rule names.
    assert_eq!(get(" 设备-1\t".as_bytes()).await.unwrap().status(), 429);
    assert_eq!(
        get("设备-1\u{3000}".as_bytes()).await.unwrap().status(),
        200
    );
    // The longest id a rule can name is served; one byte more is refused,
    // naming the header, and makes no counter.
    assert_eq!(get(&[b'a'; 256]).await.unwrap().status(), 200);
    let counters = engine.counter_count();
    let r = get(&[b'a'; 257]).await.unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], 4000);
    assert_eq!(
        body["msg"],
        "invalid parameter `subject`: header `x-device-id` is 257 bytes long, at most 256"
    );
    let r = get(&[0xff, b'a']).await.unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body["msg"],
        "invalid parameter `subject`: header `x-device-id` is not UTF-8"
    );
    assert_eq!(engine.counter_count(), counters);
}

#[test]
fn consumer_member_and_closure_extractors_read_their_headers() {
    let head = |headers: &[(&'static str, &'static str)]| {
        let mut r = http::Request::builder().uri("/devices/sn-9");
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        r.body(()).unwrap().into_parts().0
    };
    let consumer = ConsumerHeader(http::HeaderName::from_static("x-consumer-id"));
    let parts = head(&[("x-consumer-id", " c-1 ")]);
    let s = consumer.extract(&parts).unwrap();
    assert_eq!(s.subject(), Subject::consumer("c-1"));
    assert!(consumer.extract(&head(&[])).is_err());
    let parts = head(&[("x-coze-user-id", "u-1"), ("x-coze-workspace-id", "w-1")]);
    let s = MemberHeaders::default().extract(&parts).unwrap();
    let m = s.subject().member.unwrap();
    assert_eq!(
        (
            m.coze_user_id,
            m.coze_role,
            m.workspace_id,
            m.organization_id
        ),
        (Some("u-1"), None, Some("w-1"), None)
    );
    // The user header is required; the others are optional.
    let e = MemberHeaders::default()
        .extract(&head(&[("x-coze-role", "admin")]))
        .unwrap_err();
    assert_eq!(e.0, "header `x-coze-user-id` is missing or empty");
    let by_path = subject_from(|head| {
        let id = head.uri.path().strip_prefix("/devices/").unwrap_or("");
        Ok(RequestSubject {
            device_id: Some(std::borrow::Cow::Borrowed(id)),
            ..RequestSubject::default()
        })
    });
    let parts = head(&[]);
    assert_eq!(
        by_path.extract(&parts).unwrap().subject(),
        Subject::device("sn-9")
    );
}

#[tokio::test]
async fn post_paid_usage_is_booked_from_the_response() {
    let engine = Arc::new(Engine::new());
    let voice = Rule::all_devices(100)
        .daily()
        .of("voice_unified_duration_system")
        .create(&engine);
    let layer = QuotaLayer::new(Arc::clone(&engine), device_header())
        .post_paid(VOICE, http::HeaderName::from_static("x-voice-seconds"))
        .headers_when_allowed(true)
        .clock(|| ELEVEN);
    let app = Router::new()
        // The handler knows the seconds only at the end: an extension...
        .route(
            "/call",
            get(|| async {
                let mut r = axum::response::Response::new(axum::body::Body::from("call ended"));
                r.extensions_mut().insert(Used(VOICE, units(30)));
                r
            }),
        )
        // ...or a header.
        .route(
            "/short",
            get(|| async { ([("x-voice-seconds", "2.5")], "ok") }),
        )
        // ...not an amount (seven decimals): not booked.
        .route(
            "/garbled",
            get(|| async { ([("x-voice-seconds", "1.2345678")], "ok") }),
        )
        .layer(layer);
    let base = serve(app).await;
    let client = reqwest::Client::new();
    let d = Subject::device("sn-1");
    let r = client
        .get(format!("{base}/call"))
        .header("x-device-id", "sn-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["ratelimit-remaining"], "70");
    assert_eq!(used(&engine, &d, &voice, ELEVEN), units(30));
    client
        .get(format!("{base}/short"))
        .header("x-device-id", "sn-1")
        .send()
        .await
        .unwrap();
    assert_eq!(used(&engine, &d, &voice, ELEVEN), "32.5".parse().unwrap());
    let r = client
        .get(format!("{base}/garbled"))
        .header("x-device-id", "sn-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(used(&engine, &d, &voice, ELEVEN), "32.5".parse().unwrap());
    // Past the limit (post-paid usage may pass it), the next call is refused.
    // The call whose booking passes it was served: its 200 shows no room
    // left, but no `Retry-After` (the handler's answer stands).
    for _ in 0..3 {
        let r = client
            .get(format!("{base}/call"))
            .header("x-device-id", "sn-1")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.headers().get("retry-after").is_none());
    }
    assert_eq!(used(&engine, &d, &voice, ELEVEN), "122.5".parse().unwrap());
    let r = client
        .get(format!("{base}/call"))
        .header("x-device-id", "sn-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(used(&engine, &d, &voice, ELEVEN), "122.5".parse().unwrap());
}

#[tokio::test]
async fn what_the_engine_cannot_decide_is_503_not_a_quota_denial() {
    // No room for a second device's counter: not the client's quota.
    let engine = Arc::new(Engine::builder().max_counters(1).build());
    Rule::all_devices(50).daily().create(&engine);
    let base = serve(gateway(&engine, Arc::new(AtomicI64::new(ELEVEN)))).await;
    let client = reqwest::Client::new();
    let get = |dev: &'static str| {
        client
            .get(format!("{base}/chat"))
            .header("x-device-id", dev)
            .send()
    };
    assert_eq!(get("sn-1").await.unwrap().status(), 200);
    let r = get("sn-2").await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().get("retry-after").is_none());
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], 5000);
    assert!(body["msg"].as_str().unwrap().contains("counter_capacity"));
}

/// A ledger that grants nothing: 503, and no `Retry-After` or rate-limit
/// headers, which would send clients away until the daily window's end
/// over what may be a short outage, and say their quota is spent.
#[tokio::test]
async fn a_503_for_an_unavailable_ledger_carries_no_backoff_headers() {
    let engine = on_a_failing_ledger(50);
    let base = serve(gateway(&engine, Arc::new(AtomicI64::new(ELEVEN)))).await;
    let r = reqwest::Client::new()
        .get(format!("{base}/chat"))
        .header("x-device-id", "sn-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    for h in ["retry-after", "ratelimit-remaining", "ratelimit-reset"] {
        assert!(r.headers().get(h).is_none(), "{h}: {:?}", r.headers());
    }
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], 5000);
    assert!(body["msg"].as_str().unwrap().contains("ledger_unavailable"));
}

/// An impossible clock is answered 500 (code 5000) and counts nothing; a
/// pre-paid unit stays spent when the inner service then fails (H1).
#[tokio::test]
async fn an_impossible_clock_is_500_and_a_failed_upstream_keeps_its_unit_spent() {
    let engine = Arc::new(Engine::new());
    let daily = Rule::all_devices(5).daily().create(&engine);
    let layer =
        |clock: i64| QuotaLayer::new(Arc::clone(&engine), device_header()).clock(move || clock);
    let app = Router::new()
        .route(
            "/broken",
            get(|| async { (http::StatusCode::INTERNAL_SERVER_ERROR, "upstream failed") }),
        )
        .layer(layer(ELEVEN))
        .merge(
            Router::new()
                .route("/late", get(|| async { "upstream" }))
                .layer(layer(253_402_300_800_000)),
        );
    let base = serve(app).await;
    let client = reqwest::Client::new();
    let r = client
        .get(format!("{base}/late"))
        .header("x-device-id", "sn-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 500);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], 5000);
    assert_eq!(
        used(&engine, &Subject::device("sn-1"), &daily, ELEVEN),
        units(0)
    );
    let r = client
        .get(format!("{base}/broken"))
        .header("x-device-id", "sn-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 500);
    assert_eq!(r.text().await.unwrap(), "upstream failed");
    assert_eq!(
        used(&engine, &Subject::device("sn-1"), &daily, ELEVEN),
        units(1)
    );
}

#[tokio::test]
async fn until_configured_holds_requests_until_the_engine_has_rules() {
    let engine = Arc::new(Engine::new());
    let layer = QuotaLayer::new(Arc::clone(&engine), device_header())
        .until_configured(true)
        .clock(|| ELEVEN);
    let app = Router::new()
        .route("/chat", get(|| async { "upstream" }))
        .layer(layer);
    let base = serve(app).await;
    let client = reqwest::Client::new();
    let get = || {
        client
            .get(format!("{base}/chat"))
            .header("x-device-id", "sn-1")
            .send()
    };
    let r = get().await.unwrap();
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], 5000);
    assert!(body["msg"].as_str().unwrap().contains("not ready"));
    // A listing with no rule configures it too: then nothing is limited.
    engine
        .import_response_json(
            r#"{"code":0,"msg":"","data":{"has_more":false,"page_token":"","benefit_infos":[]}}"#,
            ELEVEN,
        )
        .unwrap();
    assert_eq!(get().await.unwrap().status(), 200);
}

#[tokio::test]
async fn admin_errors_outside_the_engine_come_in_the_envelope_too() {
    let engine = Arc::new(Engine::new());
    let base = serve(gateway(&engine, Arc::new(AtomicI64::new(ELEVEN)))).await;
    let client = reqwest::Client::new();
    let url = format!("{base}/v1/commerce/benefit/limitations");
    // A body past axum's own limit (2 MiB), as one under it but past the
    // engine's: 400, code 4000 naming the body.
    for size in [1 << 20 | 1, 3 << 20] {
        let r = client
            .post(&url)
            .bearer_auth("admin")
            .body(vec![b' '; size])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{size}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["code"], 4000);
        assert!(
            body["msg"].as_str().unwrap().contains("`body`"),
            "{size}: {body}"
        );
    }
    // Without a token, the token is what is wrong, whatever the body.
    let r = client
        .post(&url)
        .body(vec![b' '; 3 << 20])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // A method the routes do not serve.
    let r = client
        .delete(&url)
        .bearer_auth("admin")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], 4000);
    // An id that is not UTF-8 once decoded, and no id at all: 400 naming
    // `benefit_id`, in the envelope, after the token check.
    for path in ["%FF", ""] {
        let put = |token: Option<&str>| {
            let r = client.put(format!("{url}/{path}")).body(SDK_UPDATE);
            match token {
                Some(t) => r.bearer_auth(t),
                None => r,
            }
        };
        let r = put(None).send().await.unwrap();
        assert_eq!(r.status(), 401, "{path:?}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["code"], 4100, "{path:?}");
        // The gateway refused, in its own words, not as the platform's answer.
        assert_eq!(
            body["msg"], "the access token is missing or invalid",
            "{path:?}"
        );
        let r = put(Some("admin")).send().await.unwrap();
        assert_eq!(r.status(), 400, "{path:?}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["code"], 4000, "{path:?}");
        assert!(
            body["msg"].as_str().unwrap().contains("`benefit_id`"),
            "{path:?}: {body}"
        );
    }
    // Other methods on the update path without an id are not an update
    // missing its id: 405, whatever the token.
    for token in ["viewer", "admin"] {
        let r = client
            .get(format!("{url}/?entity_type=enterprise_all_devices"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 405, "{token}");
        assert_eq!(r.headers()["allow"], "PUT", "{token}");
    }
    assert!(engine.records().is_empty());
}

/// The official Java SDK's create body and limit-only update (D18, D19).
const SDK_CREATE: &str = r#"{"entity_type":"enterprise_all_identifiers","benefit_info":{"benefit_id":null,"benefit_type":"resource_point","active_mode":"absolute_time","started_at":1741536000,"ended_at":253402300799,"limit":1000,"status":null}}"#;
const SDK_UPDATE: &str = r#"{"started_at":0,"ended_at":0,"limit":2000}"#;

#[tokio::test]
async fn admin_routes_answer_as_the_platform_with_tokens_checked() {
    let engine = Arc::new(Engine::new());
    let base = serve(gateway(&engine, Arc::new(AtomicI64::new(ELEVEN)))).await;
    let client = reqwest::Client::new();
    let url = format!("{base}/v1/commerce/benefit/limitations");
    // Create, as the SDK sends it.
    let r = client
        .post(&url)
        .bearer_auth("admin")
        .body(SDK_CREATE)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        (body["code"].as_u64(), body["msg"].as_str()),
        (Some(0), Some(""))
    );
    let info = &body["data"]["benefit_info"];
    assert_eq!(info["entity_type"], "enterprise_all_custom_consumers");
    let id = info["benefit_id"].as_str().unwrap().to_owned();
    // Update, as the SDK sends it: only the limit changes.
    let r = client
        .put(format!("{url}/{id}"))
        .bearer_auth("admin")
        .body(SDK_UPDATE)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["data"]["limit"], 2000);
    assert_eq!(body["data"]["started_at"], 1741536000);
    // List, with a read-only token.
    let r = client
        .get(format!(
            "{url}?entity_type=enterprise_all_identifiers&benefit_type=resource_point"
        ))
        .bearer_auth("viewer")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["data"]["benefit_infos"][0]["benefit_id"], id.as_str());
    assert_eq!(body["data"]["has_more"], false);
    let before = engine.records();
    // A bad body: 4000 naming the field.
    let r = client
        .put(format!("{url}/{id}"))
        .bearer_auth("admin")
        .body(r#"{"limit":-1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], 4000);
    assert!(body["msg"]
        .as_str()
        .unwrap()
        .starts_with("invalid parameter `limit`"));
    // An unknown id: 4200.
    let r = client
        .put(format!("{url}/404"))
        .bearer_auth("admin")
        .body(SDK_UPDATE)
        .send()
        .await
        .unwrap();
    assert_eq!(
        (
            r.status().as_u16(),
            r.json::<Value>().await.unwrap()["code"].as_u64()
        ),
        (404, Some(4200))
    );
    // No token, a wrong one: 4100; a read-only one writing: 4101.
    let r = client.post(&url).body(SDK_CREATE).send().await.unwrap();
    assert_eq!(
        (
            r.status().as_u16(),
            r.json::<Value>().await.unwrap()["code"].as_u64()
        ),
        (401, Some(4100))
    );
    let r = client
        .post(&url)
        .bearer_auth("nope")
        .body(SDK_CREATE)
        .send()
        .await
        .unwrap();
    assert_eq!(
        (
            r.status().as_u16(),
            r.json::<Value>().await.unwrap()["code"].as_u64()
        ),
        (401, Some(4100))
    );
    let r = client
        .put(format!("{url}/{id}"))
        .bearer_auth("viewer")
        .body(SDK_UPDATE)
        .send()
        .await
        .unwrap();
    assert_eq!(
        (
            r.status().as_u16(),
            r.json::<Value>().await.unwrap()["code"].as_u64()
        ),
        (403, Some(4101))
    );
    let r = client.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 401);
    // Nothing of that changed anything.
    assert_eq!(engine.records(), before);
}

/// A body limit set on the router (axum's `DefaultBodyLimit`) holds for the
/// admin routes too: a valid create body past it is refused, naming the
/// body, and creates nothing.
#[tokio::test]
async fn the_routers_body_limit_holds_for_admin_writes() {
    let engine = Arc::new(Engine::new());
    let app = admin_router(Arc::clone(&engine), AdminAuth::new("admin"))
        .layer(axum::extract::DefaultBodyLimit::max(1024));
    let base = serve(app).await;
    let body = format!("{}{}", " ".repeat(2048), Rule::all_devices(10).body());
    let r = reqwest::Client::new()
        .post(format!("{base}/v1/commerce/benefit/limitations"))
        .bearer_auth("admin")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let answer: Value = r.json().await.unwrap();
    assert!(
        answer["msg"].as_str().unwrap().contains("`body`"),
        "{answer}"
    );
    assert!(engine.records().is_empty());
}

/// A write without a valid token is refused before its body is read: a
/// client that sends headers announcing a megabyte, and never the body,
/// gets its 401 (it waited for the body before).
#[tokio::test]
async fn a_write_without_a_token_is_refused_before_its_body_is_read() {
    use std::io::{Read, Write};
    let engine = Arc::new(Engine::new());
    let base = serve(gateway(&engine, Arc::new(AtomicI64::new(ELEVEN)))).await;
    let addr = base.trim_start_matches("http://").to_owned();
    for (method, path) in [("POST", ""), ("PUT", "/7001")] {
        let addr = addr.clone();
        let answer = tokio::task::spawn_blocking(move || {
            let mut conn = std::net::TcpStream::connect(&addr).unwrap();
            let head = format!(
                "{method} /v1/commerce/benefit/limitations{path} HTTP/1.1\r\nhost: {addr}\r\n\
                 content-type: application/json\r\ncontent-length: 1000000\r\n\r\n{{"
            );
            conn.write_all(head.as_bytes()).unwrap();
            // The rest of the body never comes: a server that waits for it
            // answers nothing, and this read fails the test after a minute.
            conn.set_read_timeout(Some(std::time::Duration::from_secs(60)))
                .unwrap();
            let mut answer = vec![0u8; 4096];
            let n = conn.read(&mut answer).expect("no answer before the body");
            String::from_utf8_lossy(&answer[..n]).into_owned()
        })
        .await
        .unwrap();
        assert!(answer.starts_with("HTTP/1.1 401"), "{method}: {answer}");
    }
    assert!(engine.records().is_empty());
}

#[tokio::test]
async fn admin_tokens_are_read_as_http_and_configuration_have_them() {
    let engine = Arc::new(Engine::new());
    // A token as read from a file (its line break kept), and an empty one.
    let auth = AdminAuth::new("admin\n")
        .read_only("")
        .read_only(" viewer ");
    let base = serve(admin_router(Arc::clone(&engine), auth)).await;
    let client = reqwest::Client::new();
    let url = format!("{base}/v1/commerce/benefit/limitations?entity_type=enterprise_all_devices&benefit_type=resource_point");
    let status = |authorization: &'static str| {
        let r = client
            .get(&url)
            .header("authorization", authorization)
            .send();
        async move { r.await.unwrap().status().as_u16() }
    };
    // The scheme in any case; the configured tokens without their blanks.
    assert_eq!(status("Bearer admin").await, 200);
    assert_eq!(status("bearer admin").await, 200);
    assert_eq!(status("BEARER viewer").await, 200);
    // No token matches the empty one, or a prefix, or another scheme.
    for refused in [
        "Bearer",
        "Bearer  ",
        "Bearer adm",
        "Bearer admin2",
        "Basic admin",
    ] {
        assert_eq!(status(refused).await, 401, "{refused}");
    }
    // A 401 names the scheme that would do.
    let r = client.get(&url).send().await.unwrap();
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
}

/// Admin tokens are secrets: `AdminAuth`'s `Debug` counts them and shows
/// none.
#[test]
fn admin_auth_debug_shows_no_token() {
    let shown = format!("{:?}", AdminAuth::new("s3cret-w").read_only("s3cret-r"));
    assert!(!shown.contains("s3cret"), "{shown}");
    assert!(
        shown.contains("write_tokens: 1") && shown.contains("read_only_tokens: 1"),
        "{shown}"
    );
}

/// The admin routes' updates take `now` from the router's clock, as every
/// configuration write takes it from its caller: one that reads an
/// impossible time answers 4000 naming `now` (the system clock would have
/// let it through).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_updates_take_now_from_the_routers_clock() {
    let engine = Arc::new(Engine::new());
    let id = Rule::all_devices(50).daily().create(&engine);
    let clock = Arc::new(AtomicI64::new(-1));
    let app = {
        let clock = Arc::clone(&clock);
        admin_router_with_clock(Arc::clone(&engine), AdminAuth::new("admin"), move || {
            clock.load(Ordering::Relaxed)
        })
    };
    let url = format!("{}/v1/commerce/benefit/limitations/{id}", serve(app).await);
    let client = reqwest::Client::new();
    let put = || {
        client
            .put(&url)
            .bearer_auth("admin")
            .body(r#"{"limit":60}"#)
    };
    let r = put().send().await.unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], 4000);
    assert!(body["msg"].as_str().unwrap().contains("`now`"), "{body}");
    assert_eq!(engine.get(&id).unwrap().limit(), 50);
    clock.store(ELEVEN, Ordering::Relaxed);
    let r = put().send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(engine.get(&id).unwrap().limit(), 60);
}

/// A ledger whose commits wait while its gate is shut, counting the
/// commits that began.
struct GatedLedger {
    inner: benefit_quota::MemoryLedger,
    shut: std::sync::Mutex<bool>,
    opened: std::sync::Condvar,
    began: std::sync::atomic::AtomicUsize,
}

impl GatedLedger {
    fn new() -> Arc<GatedLedger> {
        Arc::new(GatedLedger {
            inner: benefit_quota::MemoryLedger::new(),
            shut: std::sync::Mutex::new(false),
            opened: std::sync::Condvar::new(),
            began: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    fn set_shut(&self, shut: bool) {
        *self.shut.lock().unwrap() = shut;
        self.opened.notify_all();
    }

    fn began(&self) -> usize {
        self.began.load(Ordering::SeqCst)
    }
}

impl benefit_quota::Ledger for GatedLedger {
    fn load(&self) -> Result<benefit_quota::ledger::Snapshot, benefit_quota::LedgerError> {
        self.inner.load()
    }

    fn commit(
        &self,
        changes: &[benefit_quota::ledger::Change],
    ) -> Result<Vec<u64>, benefit_quota::LedgerError> {
        self.began.fetch_add(1, Ordering::SeqCst);
        let mut shut = self.shut.lock().unwrap();
        while *shut {
            shut = self.opened.wait(shut).unwrap();
        }
        drop(shut);
        self.inner.commit(changes)
    }
}

/// Opens the gate when dropped, so that the engine's writer, waiting at
/// it, can finish when the engine goes (a failed test included).
struct OpenOnDrop(Arc<GatedLedger>);

impl Drop for OpenOnDrop {
    fn drop(&mut self) {
        self.0.set_shut(false);
    }
}

/// An engine on a [`GatedLedger`] (its gate open) with one all-devices
/// daily rule of 50 points. Dropped, it opens the gate before the engine
/// goes (the engine waits for its writer, which may be at the gate).
struct Gated {
    /// Declared first, so dropped before `engine`.
    open: OpenOnDrop,
    engine: Arc<Engine>,
    /// The daily rule's id.
    daily: String,
}

impl Gated {
    /// With `grant_timeout`, or the engine's default if `None`.
    fn new(grant_timeout: Option<std::time::Duration>) -> Gated {
        let ledger = GatedLedger::new();
        let mut builder = Engine::builder().ledger(Arc::clone(&ledger));
        if let Some(t) = grant_timeout {
            builder = builder.grant_timeout(t);
        }
        let engine = Arc::new(builder.open().unwrap());
        let daily = Rule::all_devices(50).daily().create(&engine);
        Gated {
            open: OpenOnDrop(ledger),
            engine,
            daily,
        }
    }

    fn ledger(&self) -> &GatedLedger {
        &self.open.0
    }
}

/// A client that gives up on an answer after 30 s (a request that should
/// be answered while another waits fails the test instead of hanging it).
fn patient_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .unwrap()
}

/// Serves `app` on a runtime of its own with a single worker thread (in
/// a thread of its own); returns its base URL.
fn serve_on_one_thread(app: Router) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    listener.set_nonblocking(true).expect("nonblocking");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            let _ = axum::serve(listener, app).await;
        });
    });
    format!("http://{addr}")
}

/// Waits (a bounded number of times) until `ledger` has begun more than
/// `before` commits.
async fn until_a_commit_began(ledger: &GatedLedger, before: usize) {
    for _ in 0..6_000 {
        if ledger.began() > before {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("no commit began");
}

/// A request that waits for a grant holds no thread: on a server whose
/// runtime has a single worker, a request for a new device waits for its
/// grant while the ledger's commit is held, and another request is
/// answered meanwhile; once the commit goes through, the first is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_waiting_for_its_grant_blocks_no_other_request() {
    let g = Gated::new(Some(std::time::Duration::from_secs(600)));
    let (ledger, engine) = (g.ledger(), &g.engine);
    let base = serve_on_one_thread(gateway(engine, Arc::new(AtomicI64::new(ELEVEN))));
    let client = patient_client();
    ledger.set_shut(true);
    let before = ledger.began();
    let first = tokio::spawn(
        client
            .get(format!("{base}/chat"))
            .header("x-device-id", "sn-1")
            .send(),
    );
    until_a_commit_began(ledger, before).await;
    // The server's only worker is free: a request with no subject is
    // answered while the first still waits for its grant.
    let r = client.get(format!("{base}/chat")).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(!first.is_finished(), "the first request did not wait");
    ledger.set_shut(false);
    let r = first.await.unwrap().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["ratelimit-remaining"], "49");
    assert_eq!(
        used(engine, &Subject::device("sn-1"), &g.daily, ELEVEN),
        units(1)
    );
}

/// A request whose grant the ledger does not give within the engine's
/// grant timeout is answered by the failure policy (fail closed: 503)
/// while the ledger still holds the commit: the wait is bounded by the
/// timeout, not by the ledger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_the_ledger_holds_past_the_timeout_is_answered_by_the_failure_policy() {
    let g = Gated::new(Some(std::time::Duration::from_millis(200)));
    let (ledger, engine) = (g.ledger(), &g.engine);
    let base = serve_on_one_thread(gateway(engine, Arc::new(AtomicI64::new(ELEVEN))));
    let client = patient_client();
    ledger.set_shut(true);
    let r = client
        .get(format!("{base}/chat"))
        .header("x-device-id", "sn-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.unwrap();
    assert!(body["msg"].as_str().unwrap().contains("ledger_unavailable"));
    assert!(ledger.began() > 0);
}

/// A request that waits for its grant holds none of the inner service's
/// capacity: behind a concurrency limit of one, a request for a device
/// that holds a grant is served while a new device's request waits for
/// its grant (the waiting request readies its own copy of the service
/// once allowed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_waiting_for_its_grant_holds_none_of_the_inner_services_capacity() {
    let g = Gated::new(Some(std::time::Duration::from_secs(600)));
    let (ledger, engine) = (g.ledger(), &g.engine);
    let clock = Arc::new(AtomicI64::new(ELEVEN));
    let layer = QuotaLayer::new(Arc::clone(engine), device_header())
        .clock(move || clock.load(Ordering::Relaxed));
    // The middleware right over the limit (a router's `layer` would put
    // each route between them, whose readiness is the limit's only once
    // called).
    use axum::handler::HandlerWithoutStateExt;
    use tower_layer::Layer;
    let upstream = (|| async { "upstream" }).into_service();
    let limited = tower::limit::ConcurrencyLimitLayer::new(1).layer(upstream);
    let app = Router::new().route_service("/chat", layer.layer(limited));
    let base = serve_on_one_thread(app);
    let client = patient_client();
    let get = |dev: &'static str| {
        client
            .get(format!("{base}/chat"))
            .header("x-device-id", dev)
            .send()
    };
    // sn-1 holds a grant from its first request.
    assert_eq!(get("sn-1").await.unwrap().status(), 200);
    ledger.set_shut(true);
    let before = ledger.began();
    let waiting = tokio::spawn(get("sn-2"));
    until_a_commit_began(ledger, before).await;
    assert_eq!(get("sn-1").await.unwrap().status(), 200);
    assert!(!waiting.is_finished(), "sn-2 did not wait for its grant");
    ledger.set_shut(false);
    assert_eq!(waiting.await.unwrap().unwrap().status(), 200);
}

/// An admin write on a ledgered engine, which waits until the ledger has
/// stored the rules, holds no worker meanwhile: on a server with a single
/// worker, a list is answered while a create waits for its commit, and
/// the create answers once the commit goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_write_waiting_for_the_ledger_blocks_no_other_request() {
    let g = Gated::new(None);
    let (ledger, engine) = (g.ledger(), &g.engine);
    let base = serve_on_one_thread(gateway(engine, Arc::new(AtomicI64::new(ELEVEN))));
    let client = patient_client();
    let url = format!("{base}/v1/commerce/benefit/limitations");
    ledger.set_shut(true);
    let before = ledger.began();
    let create = tokio::spawn(
        client
            .post(&url)
            .bearer_auth("admin")
            .header("content-type", "application/json")
            .body(Rule::device("sn-1", 10).body())
            .send(),
    );
    until_a_commit_began(ledger, before).await;
    let list = client
        .get(format!(
            "{url}?entity_type=enterprise_all_devices&benefit_type=resource_point"
        ))
        .bearer_auth("viewer")
        .send()
        .await
        .unwrap();
    assert_eq!(list.status(), 200);
    assert!(
        !create.is_finished(),
        "the create did not wait for the ledger"
    );
    ledger.set_shut(false);
    let created = create.await.unwrap().unwrap();
    assert_eq!(created.status(), 200);
    let body: Value = created.json().await.unwrap();
    assert_eq!(body["code"], 0, "{body}");
}
