//! A tower middleware (feature `tower`): [`QuotaLayer`] in front of any
//! `http::Request` service (axum, hyper, tonic), deciding each request with
//! the engine before the inner service runs (pre-paid) or booking what the
//! response says was used after it (post-paid).
//!
//! A request the engine could not decide for now (no room for a new
//! counter, no grant from its ledger, no rules yet with
//! [`QuotaLayer::until_configured`]) is answered `503 Service Unavailable`,
//! code 5000, with no `Retry-After` or rate-limit headers: it is not the
//! client's quota. A post-paid amount the response reports in a form that
//! is not an amount, or that the engine could not book in full (no room
//! for a counter, an impossible clock), is counted
//! (`benefit_quota_unbooked_total`, feature `metrics`) and logged (feature
//! `tracing`).
//!
//! What a request costs is settled when its decision is made:
//! - **Pre-paid**, the unit is spent before the inner service runs, and
//!   stays spent whatever follows: an error from the inner service, a 5xx,
//!   a panic, a client that goes away (its future dropped), a retry (a new
//!   request). There is no refund; a gateway that must not charge failed
//!   calls meters them post-paid instead.
//! - **Post-paid**, the usage is read from the response *head* (its
//!   headers or extensions) when the inner service answers: a request whose
//!   inner service fails, or whose future is dropped first, books nothing;
//!   so does usage known only at the end of a streamed body or in gRPC
//!   trailers, which the middleware does not read (book it with
//!   [`Engine::record`] where the stream ends).
//!
//! **On an engine with a ledger** (durable file, Redis), a decision whose
//! counter has no grant left (a new subject, or a burst faster than grants
//! are taken ahead) waits for one without holding a thread: the request's
//! future is parked until the ledger has committed the grant, then the
//! request is decided as a blocking call would decide it; if the engine's
//! `grant_timeout` passes first (2 s by default), the failure policy
//! decides, whatever the ledger is doing (one thread per process, started
//! by the first such wait, wakes requests at their deadlines). Meanwhile
//! the runtime's workers serve other requests. Grants are taken ahead in
//! the background, so in steady state no request waits. (The admin
//! routes' writes wait for the ledger on tokio's blocking pool; calls made
//! outside both, `Engine::try_consume` and the rest, wait on their thread:
//! on an async runtime, make them where blocking is allowed, as
//! `tokio::task::spawn_blocking` gives.)
//!
//! A denial is answered `429 Too Many Requests` with a body in the
//! platform's envelope shape and the headers a client needs to back off:
//! `Retry-After` (seconds until the denying rule's window resets; none for a
//! cumulative cap or a frozen rule, which no wait lifts), `RateLimit-Remaining`
//! and `RateLimit-Reset` (the two fields of the IETF rate-limit headers
//! draft that a decision carries; `RateLimit-Limit` is not sent, since
//! knowing it would cost a second lookup per request). Allowed responses
//! carry `RateLimit-Remaining` and `RateLimit-Reset` too when a rule
//! applies and [`QuotaLayer::headers_when_allowed`] is on (off by default).

use crate::clock::system_now;
use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};

use crate::amount::Amount;
use crate::decide::Op;
use crate::decision::Decision;
use crate::engine::Engine;
use crate::grant::{GrantWait, Step};
use crate::subject::{Member, Subject};
use crate::types::{BenefitType, MAX_ID_LEN};

/// The envelope `code` of a 429 answer. The platform has no code for an
/// end user's quota being spent (its codes are about the API's own
/// callers), so this one is the middleware's, in the platform's 4xxx range.
pub const QUOTA_DENIED_CODE: u32 = 4029;

/// A subject's ids as a [`SubjectExtractor`] takes them from a request:
/// borrowed from its headers where they can be (a pre-paid decision needs
/// them only until the request moves on), owned otherwise.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestSubject<'h> {
    /// The device id.
    pub device_id: Option<Cow<'h, str>>,
    /// The custom consumer id.
    pub custom_consumer_id: Option<Cow<'h, str>>,
    /// The member context: user, role, workspace, organization.
    pub member: Option<[Option<Cow<'h, str>>; 4]>,
}

impl RequestSubject<'_> {
    /// The same ids, owned (for a post-paid booking after the response).
    pub fn into_owned(self) -> RequestSubject<'static> {
        let own = |v: Option<Cow<'_, str>>| v.map(|c| Cow::Owned(c.into_owned()));
        RequestSubject {
            device_id: own(self.device_id),
            custom_consumer_id: own(self.custom_consumer_id),
            member: self.member.map(|m| m.map(own)),
        }
    }

    /// The subject as the engine takes it.
    pub fn subject(&self) -> Subject<'_> {
        Subject {
            device_id: self.device_id.as_deref(),
            custom_consumer_id: self.custom_consumer_id.as_deref(),
            member: self.member.as_ref().map(|m| Member {
                coze_user_id: m[0].as_deref(),
                coze_role: m[1].as_deref(),
                workspace_id: m[2].as_deref(),
                organization_id: m[3].as_deref(),
            }),
        }
    }
}

/// Why no subject could be taken from a request: answered with
/// [`QuotaLayer::on_missing_subject`]'s status (400 by default) and an
/// envelope with code 4000 naming what is missing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtractError(pub String);

/// Takes the subject out of a request's head.
pub trait SubjectExtractor: Send + Sync + 'static {
    /// The subject of a request with these headers and extensions.
    ///
    /// # Errors
    /// [`ExtractError`] naming what is missing or malformed.
    fn extract<'h>(
        &self,
        head: &'h http::request::Parts,
    ) -> Result<RequestSubject<'h>, ExtractError>;
}

impl<F> SubjectExtractor for F
where
    F: for<'h> Fn(&'h http::request::Parts) -> Result<RequestSubject<'h>, ExtractError>
        + Send
        + Sync
        + 'static,
{
    fn extract<'h>(
        &self,
        head: &'h http::request::Parts,
    ) -> Result<RequestSubject<'h>, ExtractError> {
        self(head)
    }
}

/// A closure as a [`SubjectExtractor`]: passing it through here gives it
/// the signature the trait needs (the subject may borrow from the request's
/// head), which a closure handed straight to [`QuotaLayer::new`] cannot
/// infer. A `fn` item needs no wrapping.
///
/// # Examples
/// ```
/// use std::borrow::Cow;
/// use std::sync::Arc;
/// use benefit_quota::{subject_from, Engine, ExtractError, QuotaLayer, RequestSubject};
/// let engine = Arc::new(Engine::new());
/// // The device id from the path: `/devices/sn-0001` is device `sn-0001`.
/// let layer = QuotaLayer::new(engine, subject_from(|head| {
///     match head.uri.path().strip_prefix("/devices/") {
///         Some(id) if !id.is_empty() && !id.contains('/') => Ok(RequestSubject {
///             device_id: Some(Cow::Borrowed(id)),
///             ..RequestSubject::default()
///         }),
///         _ => Err(ExtractError("no device id in the path".into())),
///     }
/// }));
/// # let _ = layer;
/// ```
pub fn subject_from<F>(f: F) -> F
where
    F: for<'h> Fn(&'h http::request::Parts) -> Result<RequestSubject<'h>, ExtractError>
        + Send
        + Sync
        + 'static,
{
    f
}

/// A header's value as an id: `None` if the header is absent or blank;
/// refused if it is not UTF-8 (an id of any script is a header's raw
/// UTF-8 bytes) or longer than [`MAX_ID_LEN`] bytes, which no rule's entity
/// id can be (so such an id could only ever take a counter, and its bytes,
/// under the all-scope rules: bounded in number by `max_counters`, not in
/// size).
fn header<'h>(
    head: &'h http::request::Parts,
    name: &HeaderName,
) -> Result<Option<Cow<'h, str>>, ExtractError> {
    let Some(value) = head.headers.get(name) else {
        return Ok(None);
    };
    let text = std::str::from_utf8(value.as_bytes())
        .map_err(|_| ExtractError(format!("header `{name}` is not UTF-8")))?
        // HTTP's blanks only (space and tab): an id's own characters, of
        // any script, stay as a rule names them.
        .trim_matches([' ', '\t']);
    if text.len() > MAX_ID_LEN {
        return Err(ExtractError(format!(
            "header `{name}` is {} bytes long, at most {MAX_ID_LEN}",
            text.len()
        )));
    }
    Ok((!text.is_empty()).then_some(Cow::Borrowed(text)))
}

/// A header that must be there, non-empty.
fn required<'h>(
    head: &'h http::request::Parts,
    name: &HeaderName,
) -> Result<Cow<'h, str>, ExtractError> {
    header(head, name)?.ok_or_else(|| ExtractError(format!("header `{name}` is missing or empty")))
}

/// The device id from a header (e.g. `x-device-id`).
///
/// Like every extractor here, it refuses (400, code 4000, naming the
/// header) a value that is not UTF-8 or is longer than 256 bytes, the
/// longest entity id a rule can name; surrounding spaces and tabs are
/// trimmed (other characters, of any script, are the id's own).
#[derive(Debug, Clone)]
pub struct DeviceHeader(pub HeaderName);

impl SubjectExtractor for DeviceHeader {
    fn extract<'h>(
        &self,
        head: &'h http::request::Parts,
    ) -> Result<RequestSubject<'h>, ExtractError> {
        Ok(RequestSubject {
            device_id: Some(required(head, &self.0)?),
            ..RequestSubject::default()
        })
    }
}

/// The custom consumer id from a header (e.g. `x-consumer-id`).
#[derive(Debug, Clone)]
pub struct ConsumerHeader(pub HeaderName);

impl SubjectExtractor for ConsumerHeader {
    fn extract<'h>(
        &self,
        head: &'h http::request::Parts,
    ) -> Result<RequestSubject<'h>, ExtractError> {
        Ok(RequestSubject {
            custom_consumer_id: Some(required(head, &self.0)?),
            ..RequestSubject::default()
        })
    }
}

/// A member context from four headers (user, role, workspace,
/// organization); the user header is required, the others optional.
#[derive(Debug, Clone)]
pub struct MemberHeaders {
    /// The Coze user id header (default `x-coze-user-id`).
    pub user: HeaderName,
    /// The role header (default `x-coze-role`).
    pub role: HeaderName,
    /// The workspace header (default `x-coze-workspace-id`).
    pub workspace: HeaderName,
    /// The organization header (default `x-coze-organization-id`).
    pub organization: HeaderName,
}

impl Default for MemberHeaders {
    fn default() -> Self {
        MemberHeaders {
            user: HeaderName::from_static("x-coze-user-id"),
            role: HeaderName::from_static("x-coze-role"),
            workspace: HeaderName::from_static("x-coze-workspace-id"),
            organization: HeaderName::from_static("x-coze-organization-id"),
        }
    }
}

impl SubjectExtractor for MemberHeaders {
    fn extract<'h>(
        &self,
        head: &'h http::request::Parts,
    ) -> Result<RequestSubject<'h>, ExtractError> {
        let user = required(head, &self.user)?;
        Ok(RequestSubject {
            member: Some([
                Some(user),
                header(head, &self.role)?,
                header(head, &self.workspace)?,
                header(head, &self.organization)?,
            ]),
            ..RequestSubject::default()
        })
    }
}

/// What a handler reports it used, for the post-paid mode: put it in the
/// response's extensions (`response.extensions_mut().insert(Used(..))`).
/// Without it, the header named to [`QuotaLayer::post_paid`] is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Used(pub BenefitType, pub Amount);

/// What a request costs (pre-paid), from its head.
pub type CostFn = dyn Fn(&http::request::Parts) -> (BenefitType, Amount) + Send + Sync;

/// Where "now" comes from: the system clock unless injected.
pub type ClockFn = dyn Fn() -> i64 + Send + Sync;

#[derive(Clone)]
enum Mode {
    PrePaid(Arc<CostFn>),
    /// Check before; book what the response says after. The header names
    /// the amount when no [`Used`] extension is set.
    PostPaid(BenefitType, HeaderName),
}

/// The middleware: see the module docs.
///
/// # Examples
/// ```
/// use std::sync::Arc;
/// use benefit_quota::{DeviceHeader, Engine, QuotaLayer};
/// let engine = Arc::new(Engine::new());
/// let layer = QuotaLayer::new(Arc::clone(&engine), DeviceHeader(http::HeaderName::from_static("x-device-id")));
/// // axum: Router::new().route(..).layer(layer)
/// # let _ = layer;
/// ```
#[derive(Clone)]
pub struct QuotaLayer<R = Http>(Arc<LayerConfig>, std::marker::PhantomData<R>);

/// A [`QuotaLayer`]'s settings, shared by its services (one reference
/// count a request, not one per setting).
#[derive(Clone)]
struct LayerConfig {
    engine: Arc<Engine>,
    extractor: Arc<dyn SubjectExtractor>,
    mode: Mode,
    clock: Arc<ClockFn>,
    missing_status: StatusCode,
    headers_when_allowed: bool,
    until_configured: bool,
}

impl<R> std::fmt::Debug for QuotaLayer<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuotaLayer").finish_non_exhaustive()
    }
}

impl QuotaLayer<Http> {
    /// Pre-paid, one `resource_point` per request, the system clock, 400 for
    /// a request without a subject, answers in HTTP (see [`Http`]).
    pub fn new(engine: Arc<Engine>, extractor: impl SubjectExtractor) -> QuotaLayer<Http> {
        QuotaLayer(
            Arc::new(LayerConfig {
                engine,
                extractor: Arc::new(extractor),
                mode: Mode::PrePaid(Arc::new(|_| {
                    (BenefitType::ResourcePoint, Amount::from_units(1))
                })),
                clock: Arc::new(system_now),
                missing_status: StatusCode::BAD_REQUEST,
                headers_when_allowed: false,
                until_configured: false,
            }),
            std::marker::PhantomData,
        )
    }

    /// This layer answering as a gRPC service does (see [`Grpc`]): for a
    /// tonic server, whose response body is not built from a string.
    pub fn grpc(self) -> QuotaLayer<Grpc> {
        QuotaLayer(self.0, std::marker::PhantomData)
    }
}

impl<R> QuotaLayer<R> {
    fn with(mut self, change: impl FnOnce(&mut LayerConfig)) -> Self {
        change(Arc::make_mut(&mut self.0));
        self
    }

    /// Whether allowed responses carry `RateLimit-Remaining` and
    /// `RateLimit-Reset` too (default: only 429 answers carry them, as
    /// `tower_governor` does unless told otherwise; each header is bytes on
    /// every response).
    #[must_use]
    pub fn headers_when_allowed(self, on: bool) -> Self {
        self.with(|c| c.headers_when_allowed = on)
    }

    /// Pre-paid, each request costing what `cost` says (per route, from a
    /// header...).
    #[must_use]
    pub fn cost(
        self,
        cost: impl Fn(&http::request::Parts) -> (BenefitType, Amount) + Send + Sync + 'static,
    ) -> Self {
        self.with(|c| c.mode = Mode::PrePaid(Arc::new(cost)))
    }

    /// Post-paid: a request is refused only if its subject is blocked
    /// already; once the inner service has answered, what the response
    /// reports (a [`Used`] extension, else the decimal amount in `header`)
    /// is booked with `record` in `benefit_type`.
    #[must_use]
    pub fn post_paid(self, benefit_type: BenefitType, header: HeaderName) -> Self {
        self.with(|c| c.mode = Mode::PostPaid(benefit_type, header))
    }

    /// The clock (unix seconds) instead of the system's.
    #[must_use]
    pub fn clock(self, clock: impl Fn() -> i64 + Send + Sync + 'static) -> Self {
        self.with(|c| c.clock = Arc::new(clock))
    }

    /// Whether requests are answered 503 ([`Refusal::Unavailable`]) until
    /// the engine is configured ([`Engine::is_configured`]: a sync, an
    /// import or a rule written through it), rather than allowed as
    /// unlimited (default: allowed, as an engine with no rules is
    /// meant to). A gateway that takes its rules from the platform turns
    /// this on, so that it enforces nothing only when the platform has
    /// nothing to enforce, not while its first sync is still to come.
    #[must_use]
    pub fn until_configured(self, on: bool) -> Self {
        self.with(|c| c.until_configured = on)
    }

    /// The status for a request with no subject (default 400; 401 suits a
    /// subject taken from credentials). Under [`QuotaLayer::grpc`], 401 is
    /// answered `UNAUTHENTICATED`, 403 `PERMISSION_DENIED`, any other
    /// `INVALID_ARGUMENT`.
    #[must_use]
    pub fn on_missing_subject(self, status: StatusCode) -> Self {
        self.with(|c| c.missing_status = status)
    }
}

impl<S, R> tower_layer::Layer<S> for QuotaLayer<R> {
    type Service = QuotaService<S, R>;

    fn layer(&self, inner: S) -> QuotaService<S, R> {
        QuotaService {
            inner,
            layer: Arc::clone(&self.0),
            answers: std::marker::PhantomData,
        }
    }
}

/// The service [`QuotaLayer`] wraps around another.
pub struct QuotaService<S, R = Http> {
    inner: S,
    layer: Arc<LayerConfig>,
    answers: std::marker::PhantomData<fn() -> R>,
}

impl<S: Clone, R> Clone for QuotaService<S, R> {
    fn clone(&self) -> Self {
        QuotaService {
            inner: self.inner.clone(),
            layer: Arc::clone(&self.layer),
            answers: std::marker::PhantomData,
        }
    }
}

impl<S, R> std::fmt::Debug for QuotaService<S, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuotaService").finish_non_exhaustive()
    }
}

/// A log id for an answer of the middleware itself.
fn logid() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!(
        "bq-{:x}-{:x}",
        system_now(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Why the middleware answers a request itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// A rule denied it (HTTP 429, envelope code [`QUOTA_DENIED_CODE`];
    /// gRPC `RESOURCE_EXHAUSTED`).
    Denied,
    /// No subject could be taken from it (the layer's status, code 4000;
    /// gRPC `INVALID_ARGUMENT`, or `UNAUTHENTICATED` / `PERMISSION_DENIED`
    /// for a status of 401 / 403).
    NoSubject(StatusCode),
    /// It was not decided: the clock gave an impossible time (HTTP 500,
    /// code 5000; gRPC `INTERNAL`).
    NotDecided,
    /// The engine could not decide it for now: no room for a new counter
    /// ([`crate::DenyReason::CounterCapacity`]), no grant from its ledger
    /// ([`crate::DenyReason::LedgerUnavailable`]), or no rules yet
    /// ([`QuotaLayer::until_configured`]). Not a quota decision, so not a
    /// 429: HTTP 503, code 5000; gRPC `UNAVAILABLE`.
    Unavailable,
}

/// How the middleware's own answers are made, for a response body type
/// `B`: [`Http`] or [`Grpc`].
pub trait Answers<B> {
    /// The answer to a refused request, explained by `msg`.
    fn answer(why: Refusal, msg: &str) -> Response<B>;
}

/// Answers as HTTP: the status of the [`Refusal`], a JSON body in the
/// platform's envelope (`{code, msg, detail:{logid}}`). For any body built
/// from a `String` (axum's, hyper's `Full`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Http;

impl<B: From<String>> Answers<B> for Http {
    fn answer(why: Refusal, msg: &str) -> Response<B> {
        let (status, code) = match why {
            Refusal::Denied => (StatusCode::TOO_MANY_REQUESTS, QUOTA_DENIED_CODE),
            Refusal::NoSubject(status) => (status, 4000),
            Refusal::NotDecided => (StatusCode::INTERNAL_SERVER_ERROR, 5000),
            Refusal::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, 5000),
        };
        let body =
            serde_json::json!({"code": code, "msg": msg, "detail": {"logid": logid()}}).to_string();
        let mut resp = Response::new(B::from(body));
        *resp.status_mut() = status;
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        resp
    }
}

/// Answers as a gRPC server does: HTTP 200, an empty body, `grpc-status`
/// (8 `RESOURCE_EXHAUSTED` for a denial, 3 `INVALID_ARGUMENT` without a
/// subject, or 16 `UNAUTHENTICATED` / 7 `PERMISSION_DENIED` if
/// [`QuotaLayer::on_missing_subject`] chose 401 / 403, 13 `INTERNAL` when
/// not decided, 14 `UNAVAILABLE` when the
/// engine could not decide for now) and `grpc-message` in the
/// headers (a trailers-only response). For any body with a `Default`
/// (tonic's).
#[derive(Debug, Clone, Copy, Default)]
pub struct Grpc;

impl<B: Default> Answers<B> for Grpc {
    fn answer(why: Refusal, msg: &str) -> Response<B> {
        let code: u16 = match why {
            Refusal::Denied => 8,
            // The status chosen for HTTP, in gRPC's terms (the mapping
            // of gRPC's own HTTP table, read backwards).
            Refusal::NoSubject(StatusCode::UNAUTHORIZED) => 16,
            Refusal::NoSubject(StatusCode::FORBIDDEN) => 7,
            Refusal::NoSubject(_) => 3,
            Refusal::NotDecided => 13,
            Refusal::Unavailable => 14,
        };
        let mut resp = Response::new(B::default());
        let h = resp.headers_mut();
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        h.insert("grpc-status", HeaderValue::from(code));
        // gRPC percent-encodes the message; these are printable ASCII
        // except for what the encoding covers.
        let encoded: String = msg
            .bytes()
            .map(|b| match b {
                b' '..=b'~' if b != b'%' => char::from(b).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect();
        if let Ok(v) = HeaderValue::from_str(&encoded) {
            h.insert("grpc-message", v);
        }
        resp
    }
}

/// Adds the rate-limit headers of a decision at `now` to `h`, and
/// `Retry-After` to a denial if `refused` (the middleware's own answer).
fn limit_headers(h: &mut HeaderMap, d: &Decision, now: i64, refused: bool) {
    let (remaining, resets_at) = match d {
        Decision::Allowed(Some(room)) => (Some(room.remaining), room.resets_at),
        Decision::Denied(den) => (Some(den.remaining), den.resets_at),
        _ => (None, None),
    };
    let num = |n: u64| HeaderValue::from(n);
    if let Some(r) = remaining {
        // Whole units, rounded down: a header carries an integer.
        h.insert(
            "ratelimit-remaining",
            num(r.as_micros() / crate::amount::MICROS_PER_UNIT),
        );
    }
    if let Some(at) = resets_at {
        h.insert("ratelimit-reset", num(at.saturating_sub(now).max(0) as u64));
    }
    if let (true, Decision::Denied(_), Some(at)) = (refused, d, resets_at) {
        h.insert(
            http::header::RETRY_AFTER,
            num(at.saturating_sub(now).max(0) as u64),
        );
    }
}

mod future {
    use super::{After, Granting, Response};

    pin_project_lite::pin_project! {
        /// The future of a [`QuotaService`](super::QuotaService) call: the
        /// middleware's own answer (a denial, no subject), a grant the
        /// engine's ledger is asked for (the request waits, its task
        /// parked, no thread blocked), or the inner service's future and
        /// what to do once it has answered. Opaque: only the service makes
        /// one.
        pub struct QuotaFuture<S, ReqBody, ResBody>
        where
            S: tower_service::Service<http::Request<ReqBody>>,
        {
            #[pin]
            state: State<S, ReqBody, ResBody>,
        }
    }

    pin_project_lite::pin_project! {
        #[project = StateProj]
        pub(super) enum State<S, ReqBody, ResBody>
        where
            S: tower_service::Service<http::Request<ReqBody>>,
        {
            // Answered by the middleware itself; taken when polled.
            Answered { response: Option<Response<ResBody>> },
            // Waiting for a grant; taken once decided.
            Granting { granting: Option<Box<Granting<S, ReqBody, ResBody>>> },
            // The inner service's answer, with a post-paid booking or the
            // rate-limit headers to add to it, if any.
            Inner {
                #[pin]
                inner: S::Future,
                after: Option<Box<After>>,
            },
        }
    }

    impl<S, ReqBody, ResBody> QuotaFuture<S, ReqBody, ResBody>
    where
        S: tower_service::Service<http::Request<ReqBody>>,
    {
        /// The middleware's own answer.
        pub(super) fn answered(response: Response<ResBody>) -> Self {
            QuotaFuture {
                state: State::Answered {
                    response: Some(response),
                },
            }
        }

        /// A wait for a grant, then the decision.
        pub(super) fn granting(granting: Box<Granting<S, ReqBody, ResBody>>) -> Self {
            QuotaFuture {
                state: State::Granting {
                    granting: Some(granting),
                },
            }
        }

        /// The inner service's answer, then `after`.
        pub(super) fn inner(inner: S::Future, after: Option<Box<After>>) -> Self {
            QuotaFuture {
                state: State::Inner { inner, after },
            }
        }

        pub(super) fn state(
            self: core::pin::Pin<&mut Self>,
        ) -> core::pin::Pin<&mut State<S, ReqBody, ResBody>> {
            self.project().state
        }
    }
}
pub use future::QuotaFuture;
use future::{State, StateProj};

/// What a call does once the inner service has answered.
#[derive(Debug)]
struct After {
    layer: Arc<LayerConfig>,
    subject: RequestSubject<'static>,
    decision: Decision,
    now: i64,
}

impl std::fmt::Debug for LayerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LayerConfig").finish_non_exhaustive()
    }
}

impl After {
    fn finish<B>(self, resp: &mut Response<B>) {
        let mut shown = self.decision;
        let mut at = self.now;
        if let Mode::PostPaid(ty, header) = &self.layer.mode {
            let used = match resp.extensions().get::<Used>() {
                Some(u) => Some(*u),
                None => resp.headers().get(header).and_then(|v| {
                    // A value that is not an amount cannot be booked; it is
                    // counted and logged (`benefit_quota_unbooked_total`)
                    // rather than dropped unseen.
                    let parsed = v.to_str().ok().and_then(|v| v.trim().parse().ok());
                    if parsed.is_none() {
                        let value = String::from_utf8_lossy(v.as_bytes());
                        self.layer.engine.observe.unbooked("unparsable", &value);
                    }
                    parsed.map(|amount| Used(*ty, amount))
                }),
            };
            if let Some(Used(ty, amount)) = used {
                at = (self.layer.clock)();
                shown = self
                    .layer
                    .engine
                    .record(&self.subject.subject(), ty, amount, at);
                // Booked in part or not at all (no room for a counter, an
                // impossible clock): counted and logged, as an amount that
                // cannot be read is.
                let unbooked = match &shown {
                    Decision::Denied(d) if !d.reason.is_quota_decision() => Some(d.reason.as_str()),
                    Decision::Rejected(_) => Some("impossible_time"),
                    _ => None,
                };
                if let Some(reason) = unbooked {
                    self.layer
                        .engine
                        .observe
                        .unbooked(reason, &amount.to_string());
                }
            }
        }
        if self.layer.headers_when_allowed {
            // The inner service's answer stands: a booking that passed a
            // limit shows no room left, but no `Retry-After` on it.
            limit_headers(resp.headers_mut(), &shown, at, false);
        }
    }
}

/// A request waiting for a grant from the engine's ledger (a new subject,
/// or a burst faster than grants are taken ahead): its task is woken when
/// the ledger answers or the engine's grant timeout passes, then the
/// request is decided as it would have been on a blocked thread.
pub(crate) struct Granting<S, ReqBody, ResBody> {
    /// A clone of the inner service, polled ready once the request is
    /// allowed (the ready service stays with the middleware for the next
    /// request: a request waiting for its grant holds none of the inner
    /// service's capacity).
    service: S,
    /// The decision, once made, while the service gets ready.
    decided: Option<Decision>,
    head: http::request::Parts,
    body: ReqBody,
    wait: GrantWait,
    layer: Arc<LayerConfig>,
    subject: RequestSubject<'static>,
    op: Op,
    ty: Option<BenefitType>,
    now: i64,
    /// The middleware's own answer to a decision that refuses the request
    /// (`refuse::<R, _>`: the answer's format, without a type parameter).
    refuse: fn(&Decision, i64) -> Option<Response<ResBody>>,
}

impl<S, ReqBody, ResBody, E> Future for QuotaFuture<S, ReqBody, ResBody>
where
    S: tower_service::Service<Request<ReqBody>, Response = Response<ResBody>, Error = E>,
{
    type Output = Result<Response<ResBody>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let mut state = self.as_mut().state();
            let next = match state.as_mut().project() {
                StateProj::Answered { response } => {
                    return Poll::Ready(Ok(response
                        .take()
                        .expect("QuotaFuture polled after it completed")))
                }
                StateProj::Inner { inner, after } => {
                    let mut resp = match inner.poll(cx) {
                        Poll::Ready(r) => r?,
                        Poll::Pending => return Poll::Pending,
                    };
                    if let Some(after) = after.take() {
                        after.finish(&mut resp);
                    }
                    return Poll::Ready(Ok(resp));
                }
                StateProj::Granting { granting } => {
                    let g = granting
                        .as_deref_mut()
                        .expect("QuotaFuture polled after it completed");
                    if g.decided.is_none() {
                        let engine = &g.layer.engine;
                        let decision = loop {
                            let subject = g.subject.subject();
                            match engine.poll_step(&mut g.wait, &subject, g.now, g.op, cx) {
                                Poll::Pending => return Poll::Pending,
                                // Another grant to wait for: polled at once,
                                // so that its answer wakes this task.
                                Poll::Ready(Step::Wait(w)) => g.wait = w,
                                Poll::Ready(Step::Decided(d)) => break d,
                            }
                        };
                        engine.observe.decision(g.ty, &decision);
                        if let Some(response) = (g.refuse)(&decision, g.now) {
                            state.set(State::Answered {
                                response: Some(response),
                            });
                            continue;
                        }
                        g.decided = Some(decision);
                    }
                    // Allowed: handed on once the service is ready.
                    match g.service.poll_ready(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Ready(Ok(())) => {}
                    }
                    let g = granting.take().expect("taken once");
                    let Granting {
                        service,
                        decided,
                        head,
                        body,
                        layer,
                        subject,
                        now,
                        ..
                    } = *g;
                    let decision = decided.expect("decided before the service was ready");
                    let (inner, after) =
                        proceed(&layer, service, head, body, subject, decision, now);
                    State::Inner { inner, after }
                }
            };
            state.set(next);
        }
    }
}

/// An allowed request handed on to `service` (polled ready for it): the
/// inner service's future, and what to do once it has answered (a
/// post-paid booking for `subject`, the rate-limit headers of `decision`).
fn proceed<S, ReqBody, ResBody>(
    layer: &Arc<LayerConfig>,
    mut service: S,
    head: http::request::Parts,
    body: ReqBody,
    subject: RequestSubject<'static>,
    decision: Decision,
    now: i64,
) -> (S::Future, Option<Box<After>>)
where
    S: tower_service::Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    let post_paid = matches!(layer.mode, Mode::PostPaid(..));
    let after = (post_paid || layer.headers_when_allowed).then(|| {
        Box::new(After {
            layer: Arc::clone(layer),
            // Booked to after the inner service: a pre-paid call keeps none.
            subject: if post_paid {
                subject
            } else {
                RequestSubject::default()
            },
            decision,
            now,
        })
    });
    (service.call(Request::from_parts(head, body)), after)
}

impl<S, R, ReqBody, ResBody> tower_service::Service<Request<ReqBody>> for QuotaService<S, R>
where
    S: tower_service::Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    R: Answers<ResBody>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = QuotaFuture<S, ReqBody, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let layer = &self.layer;
        if layer.until_configured && !layer.engine.is_configured() {
            let msg = "not ready: no rules have been configured yet";
            return QuotaFuture::answered(R::answer(Refusal::Unavailable, msg));
        }
        let (head, body) = req.into_parts();
        let now = (layer.clock)();
        let subject = match layer.extractor.extract(&head) {
            Ok(s) => s,
            Err(ExtractError(why)) => {
                let msg = format!("invalid parameter `subject`: {why}");
                let response = R::answer(Refusal::NoSubject(layer.missing_status), &msg);
                return QuotaFuture::answered(response);
            }
        };
        let (op, ty) = match &layer.mode {
            Mode::PrePaid(cost) => {
                let (ty, amount) = cost(&head);
                (Op::TryConsume(ty, amount.as_micros()), Some(ty))
            }
            Mode::PostPaid(..) => (Op::Check, None),
        };
        // Decided here unless a grant must be waited for, which the
        // returned future waits for instead of this thread (an async
        // runtime's worker, which other requests need).
        let step = layer.engine.step(&subject.subject(), now, op);
        // The service that was polled ready handles this request; a clone
        // takes its place for the next one (tower's usual pattern).
        let ready = |inner: &mut S| {
            let clone = inner.clone();
            std::mem::replace(inner, clone)
        };
        let refuse = refuse::<R, ResBody>;
        match step {
            Step::Decided(decision) => {
                layer.engine.observe.decision(ty, &decision);
                if let Some(resp) = refuse(&decision, now) {
                    return QuotaFuture::answered(resp);
                }
                let service = ready(&mut self.inner);
                // Kept past the call (it borrows the request's head) only if
                // a post-paid booking needs it.
                let kept = match layer.mode {
                    Mode::PostPaid(..) => subject.into_owned(),
                    Mode::PrePaid(_) => RequestSubject::default(),
                };
                let (inner, after) = proceed(layer, service, head, body, kept, decision, now);
                QuotaFuture::inner(inner, after)
            }
            Step::Wait(wait) => {
                let subject = subject.into_owned();
                QuotaFuture::granting(Box::new(Granting {
                    service: self.inner.clone(),
                    decided: None,
                    head,
                    body,
                    wait,
                    layer: Arc::clone(layer),
                    subject,
                    op,
                    ty,
                    now,
                    refuse,
                }))
            }
        }
    }
}

/// The middleware's own answer to a decision at `now` that refuses the
/// request, if it does: the rate-limit headers on a quota denial only (a
/// 503, no grant from the ledger or no room for a counter, is not the
/// client's quota, and the window's end would tell clients to wait hours
/// over a short outage).
fn refuse<R: Answers<B>, B>(decision: &Decision, now: i64) -> Option<Response<B>> {
    let mut resp = refusal::<R, B>(decision)?;
    if matches!(decision, Decision::Denied(d) if d.reason.is_quota_decision()) {
        limit_headers(resp.headers_mut(), decision, now, true);
    }
    Some(resp)
}

/// The answer to a request the engine did not allow, if it did not.
fn refusal<R: Answers<B>, B>(d: &Decision) -> Option<Response<B>> {
    match d {
        Decision::Allowed(_) => None,
        Decision::Denied(den) if !den.reason.is_quota_decision() => {
            let msg = format!(
                "benefit {} ({}) could not be decided: {}",
                den.benefit_id, den.benefit_type, den.reason
            );
            Some(R::answer(Refusal::Unavailable, &msg))
        }
        Decision::Denied(den) => {
            let msg = format!(
                "benefit {} ({}) denied: {}, {} left",
                den.benefit_id, den.benefit_type, den.reason, den.remaining
            );
            Some(R::answer(Refusal::Denied, &msg))
        }
        Decision::Rejected(r) => Some(R::answer(Refusal::NotDecided, &r.to_string())),
    }
}
