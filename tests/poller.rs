//! The poller against a local HTTP server on loopback (feature `poller`):
//! recorded pages, paging, the bearer token, and every error case (4xx with
//! the platform's envelope, 5xx, a slow answer past the timeout, garbage, a
//! partial listing, no server at all), each keeping the last good rules.
#![cfg(feature = "poller")]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use benefit_quota::{BenefitType, Engine, EntityType, PollError, Poller, Subject};
use common::*;
use serde_json::json;

const DEVICES: (EntityType, BenefitType) =
    (EntityType::EnterpriseAllDevices, BenefitType::ResourcePoint);
const SINGLE: (EntityType, BenefitType) = (EntityType::SingleDevice, BenefitType::ResourcePoint);

/// What the server answers: status, body, delay before answering.
type Answer = (u16, String, Duration);

/// A test server on an ephemeral loopback port, answering each request with
/// `route(url)`, and recording every request's URL and Authorization header.
struct Server {
    base: String,
    seen: Arc<Mutex<Vec<(String, String)>>>,
    server: Arc<tiny_http::Server>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    fn start(route: impl Fn(&str) -> Answer + Send + 'static) -> Server {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").expect("bind loopback"));
        let port = server.server_addr().to_ip().expect("ip").port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let (server, seen) = (Arc::clone(&server), Arc::clone(&seen));
            std::thread::spawn(move || {
                for req in server.incoming_requests() {
                    let auth = req
                        .headers()
                        .iter()
                        .find(|h| h.field.equiv("Authorization"))
                        .map(|h| h.value.to_string())
                        .unwrap_or_default();
                    seen.lock().unwrap().push((req.url().to_owned(), auth));
                    let (status, body, delay) = route(req.url());
                    std::thread::sleep(delay);
                    let _ = req
                        .respond(tiny_http::Response::from_string(body).with_status_code(status));
                }
            })
        };
        Server {
            base: format!("http://127.0.0.1:{port}"),
            seen,
            server,
            thread: Some(thread),
        }
    }

    fn urls(&self) -> Vec<String> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|(u, _)| u.clone())
            .collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn record(id: &str, entity_type: &str, entity_id: Option<&str>, limit: i64) -> serde_json::Value {
    let mut r = json!({"benefit_id": id, "entity_type": entity_type, "benefit_type": "resource_point",
        "active_mode": "absolute_time", "started_at": 0, "ended_at": 253402300799i64, "limit": limit,
        "status": "valid", "trigger_unit": "never", "trigger_time": 1});
    if let Some(e) = entity_id {
        r["entity_id"] = json!(e);
    }
    r
}

fn page(records: &[serde_json::Value], next: Option<&str>) -> String {
    json!({"code": 0, "msg": "", "data": {"has_more": next.is_some(), "page_token": next.unwrap_or(""),
        "benefit_infos": records}, "detail": {"logid": "t"}})
    .to_string()
}

fn ok(body: String) -> Answer {
    (200, body, Duration::ZERO)
}

/// The platform with three rules: the all-devices listing in two pages, one
/// single-device rule.
fn platform(url: &str) -> Answer {
    if url.contains("entity_type=enterprise_all_devices") {
        if url.contains("page_token=p2") {
            ok(page(
                &[record("7002", "enterprise_all_devices", None, 20)],
                None,
            ))
        } else {
            ok(page(&[], Some("p2")))
        }
    } else {
        ok(page(
            &[record("7003", "single_device", Some("d1"), 5)],
            None,
        ))
    }
}

fn poller(base: &str, engine: &Arc<Engine>) -> Poller {
    poller_within(base, engine, Duration::from_secs(30))
}

/// A poller whose requests time out after `timeout`.
fn poller_within(base: &str, engine: &Arc<Engine>, timeout: Duration) -> Poller {
    Poller::builder(base, "pat_secret")
        .scopes([DEVICES, SINGLE])
        .timeout(timeout)
        .build(Arc::clone(engine))
}

/// By default a poll lists every scope the platform has: the device and
/// consumer types with each benefit type, the enterprise types with
/// `resource_point` only (F3: they have no voice rules).
#[test]
fn by_default_a_poll_lists_the_sixteen_scopes_the_platform_has() {
    let server = Server::start(|_| ok(page(&[], None)));
    let engine = Arc::new(Engine::new());
    let p = Poller::builder(&server.base, "t").build(Arc::clone(&engine));
    p.poll_once_at(MIDNIGHT).unwrap();
    let mut scopes: Vec<(String, String)> = server
        .urls()
        .iter()
        .map(|u| {
            let q = u.split_once('?').map(|(_, q)| q).unwrap_or_default();
            let get = |k: &str| {
                q.split('&')
                    .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
                    .unwrap_or_default()
                    .to_owned()
            };
            (get("entity_type"), get("benefit_type"))
        })
        .collect();
    scopes.sort();
    scopes.dedup();
    assert_eq!(scopes.len(), 16, "{scopes:?}");
    for (e, b) in &scopes {
        assert!(!e.starts_with("coze_") || b == "resource_point", "{e} {b}");
    }
    assert!(engine.is_configured());
}

#[test]
fn a_poll_lists_every_scope_page_by_page_with_the_token_and_syncs() {
    let server = Server::start(platform);
    let engine = Arc::new(Engine::new());
    let local = Rule::all_devices(1).create(&engine);
    let p = poller(&server.base, &engine);
    let report = p.poll_once_at(MIDNIGHT).unwrap();
    let created: Vec<&str> = report.created.iter().map(|i| i.as_str()).collect();
    assert_eq!(created, ["7002", "7003"]);
    assert_eq!(report.withdrawn.len(), 1);
    assert_eq!(report.withdrawn[0].as_str(), local);
    let urls = server.urls();
    assert_eq!(urls.len(), 3, "{urls:?}");
    assert!(
        urls[0].starts_with("/v1/commerce/benefit/limitations?"),
        "{urls:?}"
    );
    assert!(urls[0].contains("benefit_type=resource_point") && urls[0].contains("page_size=200"));
    assert!(!urls[0].contains("page_token") && urls[1].contains("page_token=p2"));
    assert!(server
        .seen
        .lock()
        .unwrap()
        .iter()
        .all(|(_, auth)| auth == "Bearer pat_secret"));
    let state = p.state();
    assert!(state.last_success.is_some() && state.last_error.is_none());
    assert_eq!(state.failures, 0);
    // The rules decide.
    let d1 = Subject::device("d1");
    assert!(engine
        .try_consume(&d1, PTS, units(5), MIDNIGHT)
        .is_allowed());
    assert!(!engine.check(&d1, MIDNIGHT).is_allowed());
    // Polling again changes nothing.
    assert!(p.poll_once_at(MIDNIGHT).unwrap().is_unchanged());
}

/// Syncs once from the good platform, then polls `bad` and checks the rules
/// are still the good ones and the state holds the error.
fn keeps_the_last_good_rules(bad: impl Fn(&str) -> Answer + Send + 'static) -> PollError {
    // Long enough for any answer on a loaded machine: these errors are the
    // server's, not the clock's.
    keeps_the_last_good_rules_within(bad, Duration::from_secs(30))
}

/// [`keeps_the_last_good_rules`] with a client timeout of `timeout`.
fn keeps_the_last_good_rules_within(
    bad: impl Fn(&str) -> Answer + Send + 'static,
    timeout: Duration,
) -> PollError {
    let engine = Arc::new(Engine::new());
    {
        let good = Server::start(platform);
        poller(&good.base, &engine).poll_once_at(MIDNIGHT).unwrap();
    }
    let before = engine.records();
    let server = Server::start(bad);
    let p = poller_within(&server.base, &engine, timeout);
    let err = p.poll_once_at(MIDNIGHT).unwrap_err();
    assert_eq!(engine.records(), before);
    let state = p.state();
    assert_eq!(state.last_error.as_ref(), Some(&err));
    assert_eq!(state.failures, 1);
    assert!(state.last_success.is_none());
    err
}

/// A configuration write through another path while a listing is read
/// (here, the platform's update mirrored with `apply_update_json`) is newer
/// than that listing: the poll does not apply it, which would undo the
/// write (the limit raised back), but lists again and applies the new one.
#[test]
fn a_write_landing_while_the_listing_is_read_is_not_undone_by_it() {
    // The platform lowers 7002 from 20 to 10 once the gateway has mirrored
    // the update; the first listing, read before, still says 20.
    let updated = Arc::new((Mutex::new(true), std::sync::Condvar::new()));
    let asked = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let server = {
        let (updated, asked) = (Arc::clone(&updated), Arc::clone(&asked));
        Server::start(move |url| {
            if !url.contains("entity_type=enterprise_all_devices") {
                return ok(page(&[], None));
            }
            let (lock, cvar) = &*updated;
            let mut done = lock.lock().unwrap();
            if !asked.swap(true, std::sync::atomic::Ordering::SeqCst) {
                // The first listing: answered only once the write landed
                // (or after a minute, if the test failed before writing:
                // the server's thread is joined when it is dropped).
                let until = std::time::Instant::now() + Duration::from_secs(60);
                while !*done {
                    let left = until.saturating_duration_since(std::time::Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    done = cvar.wait_timeout(done, left).unwrap().0;
                }
                return ok(page(
                    &[record("7002", "enterprise_all_devices", None, 20)],
                    None,
                ));
            }
            ok(page(
                &[record("7002", "enterprise_all_devices", None, 10)],
                None,
            ))
        })
    };
    let engine = Arc::new(Engine::new());
    let p = poller(&server.base, &engine);
    p.poll_once_at(MIDNIGHT).unwrap();
    assert_eq!(engine.get("7002").unwrap().limit(), 20);
    asked.store(false, std::sync::atomic::Ordering::SeqCst);
    *updated.0.lock().unwrap() = false;
    let polling = {
        let p = Arc::new(p);
        let q = Arc::clone(&p);
        (p, std::thread::spawn(move || q.poll_once_at(MIDNIGHT)))
    };
    // The poll is reading the listing: the update lands meanwhile.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !asked.load(std::sync::atomic::Ordering::SeqCst) {
        assert!(std::time::Instant::now() < deadline, "the poll never asked");
        std::thread::sleep(Duration::from_millis(1));
    }
    engine
        .apply_update_json("7002", r#"{"limit":10}"#, MIDNIGHT)
        .unwrap();
    *updated.0.lock().unwrap() = true;
    updated.1.notify_all();
    let report = polling.1.join().unwrap().unwrap();
    assert_eq!(engine.get("7002").unwrap().limit(), 10, "{report:?}");
    assert_eq!(
        server.urls().len(),
        2 + 2 * 2,
        "one poll before, then two listings"
    );
    drop(polling.0);
}

/// A poll whose every listing races a write (here the server writes a rule
/// to the engine while answering) gives up after three listings, applies
/// none of them, and says why; the writes stay.
#[test]
fn a_poll_outrun_by_writes_three_times_applies_nothing() {
    let engine = Arc::new(Engine::new());
    let server = {
        let engine = Arc::clone(&engine);
        Server::start(move |url| {
            if url.contains("entity_type=enterprise_all_devices") {
                // A rule of a scope the poller does not own, written
                // through another path while this listing is read.
                engine
                    .create_json(Rule::all_consumers(5).body())
                    .map(|_| ())
                    .or_else(|_| {
                        engine
                            .apply_update_json("1", r#"{"limit":6}"#, MIDNIGHT)
                            .map(|_| ())
                    })
                    .unwrap();
            }
            platform(url)
        })
    };
    let p = poller(&server.base, &engine);
    let err = p.poll_once_at(MIDNIGHT).unwrap_err();
    assert!(matches!(err, PollError::Outdated), "{err}");
    assert!(p.state().last_error.is_some());
    // Nothing the platform lists was applied; the racing writes were.
    assert_eq!(engine.records().len(), 1);
    assert_eq!(
        engine.records()[0].entity_type(),
        EntityType::EnterpriseAllCustomConsumers
    );
    assert_eq!(engine.get("1").unwrap().limit(), 6);
    // Three listings of the devices' scope, none of the next.
    let listed = server
        .urls()
        .iter()
        .filter(|u| u.contains("entity_type=enterprise_all_devices") && !u.contains("page_token"))
        .count();
    assert_eq!(listed, 3);
}

/// The token is a secret: a builder's `Debug` (logged with a
/// configuration, say) leaves it out.
#[test]
fn a_builders_debug_leaves_the_token_out() {
    let b = Poller::builder("https://api.coze.cn", "pat_secret");
    let shown = format!("{b:?}");
    assert!(!shown.contains("pat_secret"), "{shown}");
    assert!(shown.contains("api.coze.cn"), "{shown}");
}

/// A scope given twice is listed once (listed twice, its second listing
/// would add pages to one that had ended, and every poll would fail).
#[test]
fn a_scope_given_twice_is_listed_once() {
    let server = Server::start(platform);
    let engine = Arc::new(Engine::new());
    let p = Poller::builder(&server.base, "t")
        .scopes([DEVICES, SINGLE, DEVICES])
        .build(Arc::clone(&engine));
    let report = p.poll_once_at(MIDNIGHT).unwrap();
    assert_eq!(report.created.len(), 2);
    assert_eq!(server.urls().len(), 3);
}

#[test]
fn an_error_envelope_with_401_is_passed_on_with_the_platforms_code() {
    let err = keeps_the_last_good_rules(|_| {
        (
            401,
            r#"{"code":4100,"msg":"token expired","detail":{"logid":"z"}}"#.into(),
            Duration::ZERO,
        )
    });
    match err {
        PollError::Platform(e) => {
            assert_eq!(e.code().as_u32(), 4100);
            assert!(e.msg().contains("token expired"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_5xx_without_an_envelope_is_an_http_status() {
    let err = keeps_the_last_good_rules(|_| (503, "upstream down".into(), Duration::ZERO));
    assert_eq!(err, PollError::Status(503));
}

#[test]
fn a_slow_answer_times_out() {
    // An answer 3 s late against a timeout of 200 ms: the timeout fires
    // first however the machine is loaded (a stall only makes it later).
    let err = keeps_the_last_good_rules_within(
        |url| {
            let (status, body, _) = platform(url);
            (status, body, Duration::from_secs(3))
        },
        Duration::from_millis(200),
    );
    assert!(matches!(err, PollError::Transport(_)), "{err:?}");
}

#[test]
fn garbage_is_refused_naming_the_body() {
    let err = keeps_the_last_good_rules(|_| ok("<html>maintenance</html>".into()));
    match err {
        PollError::Platform(e) => assert!(
            e.msg().starts_with("invalid parameter `body`"),
            "{}",
            e.msg()
        ),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_listing_that_breaks_off_changes_nothing() {
    // The second page of the all-devices listing fails: the first page's
    // (valid, but partial) listing must not be applied.
    let err = keeps_the_last_good_rules(|url| {
        if url.contains("page_token=p2") {
            (500, String::new(), Duration::ZERO)
        } else if url.contains("entity_type=enterprise_all_devices") {
            ok(page(&[], Some("p2")))
        } else {
            ok(page(&[], None))
        }
    });
    assert_eq!(err, PollError::Status(500));
}

#[test]
fn a_listing_that_never_ends_is_cut_off() {
    let engine = Arc::new(Engine::new());
    let next = std::sync::atomic::AtomicUsize::new(0);
    let server = Server::start(move |_| {
        let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        ok(page(&[], Some(&format!("p{n}"))))
    });
    let p = Poller::builder(&server.base, "t")
        .scopes([DEVICES])
        .max_pages(5)
        .build(Arc::clone(&engine));
    let err = p.poll_once_at(MIDNIGHT).unwrap_err();
    assert!(matches!(err, PollError::TooManyPages { .. }), "{err:?}");
    assert_eq!(server.urls().len(), 5);
    assert!(!engine.is_configured());
}

#[test]
fn a_page_token_given_twice_is_refused_at_once() {
    // The same token again would page in a loop until `max_pages`.
    let engine = Arc::new(Engine::new());
    let server = Server::start(|_| ok(page(&[], Some("again"))));
    let p = Poller::builder(&server.base, "t")
        .scopes([DEVICES])
        .build(Arc::clone(&engine));
    let err = p.poll_once_at(MIDNIGHT).unwrap_err();
    match &err {
        PollError::Platform(e) => assert!(
            e.msg().starts_with("invalid parameter `data.page_token`"),
            "{}",
            e.msg()
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(server.urls().len(), 2);
    assert!(!engine.is_configured());
}

#[test]
fn no_server_at_all_is_a_transport_error() {
    // Port 0: nothing can listen there (a port bound and released could
    // be taken meanwhile by another test's server, which would answer).
    let engine = Arc::new(Engine::new());
    let p = poller("http://127.0.0.1:0", &engine);
    assert!(matches!(
        p.poll_once_at(MIDNIGHT),
        Err(PollError::Transport(_))
    ));
    assert!(!engine.is_configured());
}

#[test]
fn a_spawned_poller_syncs_then_stops_when_dropped() {
    let server = Server::start(platform);
    let engine = Arc::new(Engine::new());
    let running = Poller::builder(&server.base, "t")
        .scopes([DEVICES, SINGLE])
        .interval(Duration::from_millis(20))
        .build(Arc::clone(&engine))
        .spawn();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !engine.is_configured() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(engine.is_configured());
    assert!(engine.get("7003").is_some());
    drop(running);
    let after = server.urls().len();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        server.urls().len(),
        after,
        "the poller went on after being dropped"
    );
}
