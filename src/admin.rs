//! Admin routes in the platform's shape (feature `axum`): `POST`, `GET`
//! and `PUT /v1/commerce/benefit/limitations[/{benefit_id}]` answering as
//! the platform does, so a tool that speaks the platform's API (its SDKs
//! included) can write rules straight to a gateway.
//!
//! Every route takes `Authorization: Bearer <token>` (the scheme in any
//! case). A missing, malformed or unknown token is answered 401 with code
//! 4100 and `WWW-Authenticate: Bearer`; a read-only token on a write, 403
//! with code 4101 (F13, F14). Tokens are compared in a time that does not
//! depend on their bytes. Other errors keep their code:
//! 400 for 4000 (the field named), 404 for 4200.
//!
//! On an engine with a ledger, a write (create, update) waits until the
//! ledger has stored the rules; it waits on tokio's blocking pool, not on
//! the runtime's worker, which meanwhile serves the gateway's other
//! requests.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::Router;

use crate::engine::Engine;
use crate::errors::{ApiError, ErrorCode};
use crate::wire::{CreateData, Envelope};

/// Who may call the admin routes: tokens that may write (create, update)
/// and list, and tokens that may only list.
#[derive(Clone, Default)]
pub struct AdminAuth {
    tokens: Vec<(String, bool)>,
}

impl std::fmt::Debug for AdminAuth {
    /// How many tokens of each kind, never the tokens (secrets).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let writers = self.tokens.iter().filter(|(_, w)| *w).count();
        f.debug_struct("AdminAuth")
            .field("write_tokens", &writers)
            .field("read_only_tokens", &(self.tokens.len() - writers))
            .finish()
    }
}

impl AdminAuth {
    /// A token that may create, update and list. Blanks around it are
    /// dropped (a token read from a file keeps its line break); an empty
    /// token admits no one.
    pub fn new(token: impl Into<String>) -> AdminAuth {
        AdminAuth::default().with(token.into(), true)
    }

    /// Adds a token that may only list (trimmed as in [`AdminAuth::new`]).
    #[must_use]
    pub fn read_only(self, token: impl Into<String>) -> AdminAuth {
        self.with(token.into(), false)
    }

    fn with(mut self, token: String, write: bool) -> AdminAuth {
        let token = token.trim();
        if !token.is_empty() {
            self.tokens.push((token.to_owned(), write));
        }
        self
    }

    /// `Ok` if the request's bearer token may do this (`write`: create or
    /// update). The scheme is matched in any case (`bearer` too, as HTTP
    /// has it); the token is compared with every known one, each in a time
    /// that depends on the lengths only, not on where the bytes differ, so
    /// that timing answers tell a caller nothing about a token's bytes.
    fn check(&self, headers: &HeaderMap, write: bool) -> Result<(), ApiError> {
        let token = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim());
        // The write permission of the token matched, if any: every known
        // token is compared, whichever matches.
        let mut known: Option<bool> = None;
        if let Some(t) = token {
            for (k, may_write) in &self.tokens {
                if same_secret(k.as_bytes(), t.as_bytes()) {
                    known = Some(known.unwrap_or(false) | may_write);
                }
            }
        }
        match known {
            // The gateway refuses here, not the platform: its own wording.
            None => Err(ApiError::new(
                ErrorCode::BadToken,
                "the access token is missing or invalid",
            )),
            Some(false) if write => Err(ApiError::new(
                ErrorCode::PermissionDenied,
                "the access token lacks this permission",
            )),
            Some(_) => Ok(()),
        }
    }
}

/// `a == b`, reading every byte whatever the first difference (lengths
/// differing answer at once: a token's length is not its secret).
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len()
        && std::hint::black_box(a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y))) == 0
}

#[derive(Clone)]
struct AdminState {
    engine: Arc<Engine>,
    auth: Arc<AdminAuth>,
    /// `now` of configuration writes, in unix seconds.
    clock: Arc<dyn Fn() -> i64 + Send + Sync>,
}

/// The admin routes over `engine`, for tokens `auth`: merge them into a
/// gateway's router (`router.merge(admin_router(..))`).
///
/// # Examples
/// ```
/// use std::sync::Arc;
/// use benefit_quota::{admin_router, AdminAuth, Engine};
/// let engine = Arc::new(Engine::new());
/// let app: axum::Router = admin_router(engine, AdminAuth::new("admin-secret").read_only("viewer"));
/// # let _ = app;
/// ```
pub fn admin_router(engine: Arc<Engine>, auth: AdminAuth) -> Router {
    admin_router_with_clock(engine, auth, crate::clock::system_now)
}

/// [`admin_router`] whose updates take `now` (unix seconds) from `clock`
/// instead of the system clock: the time D16 decides at (whether an update
/// restarts usage), as every other configuration write takes it. A clock
/// outside `0..=253402300799` makes updates answer 4000 naming `now`.
///
/// # Examples
/// ```
/// use std::sync::Arc;
/// use benefit_quota::{admin_router_with_clock, AdminAuth, Engine};
/// let engine = Arc::new(Engine::new());
/// let app: axum::Router =
///     admin_router_with_clock(engine, AdminAuth::new("admin-secret"), || 1_741_708_800);
/// # let _ = app;
/// ```
pub fn admin_router_with_clock(
    engine: Arc<Engine>,
    auth: AdminAuth,
    clock: impl Fn() -> i64 + Send + Sync + 'static,
) -> Router {
    let state = AdminState {
        engine,
        auth: Arc::new(auth),
        clock: Arc::new(clock),
    };
    Router::new()
        .route("/v1/commerce/benefit/limitations", get(list).post(create))
        .route("/v1/commerce/benefit/limitations/{benefit_id}", put(update))
        // The update path without its id (`.../limitations/`), which the
        // two routes above do not match: in the envelope too, not axum's
        // bare 404. Only a PUT is an update missing its id; other methods
        // there are answered 405 (a list with a trailing slash and a
        // read-only token was refused as lacking the write permission).
        .route("/v1/commerce/benefit/limitations/", put(no_id))
        .method_not_allowed_fallback(not_allowed)
        .with_state(state)
}

fn logid() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!(
        "bq-admin-{:x}-{:x}",
        crate::clock::system_now(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// An answer in the platform's envelope.
fn envelope<T: serde::Serialize>(result: Result<T, ApiError>) -> Response {
    let (status, json) = match result {
        Ok(data) => (StatusCode::OK, Envelope::ok(data, logid()).to_json()),
        Err(e) => {
            let status = match e.code() {
                ErrorCode::InvalidParameter => StatusCode::BAD_REQUEST,
                ErrorCode::BadToken => StatusCode::UNAUTHORIZED,
                ErrorCode::PermissionDenied => StatusCode::FORBIDDEN,
                ErrorCode::NotFound => StatusCode::NOT_FOUND,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            (status, Envelope::error(&e, logid()).to_json())
        }
    };
    let mut response = (
        status,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        json,
    )
        .into_response();
    if status == StatusCode::UNAUTHORIZED {
        // What a 401 must say (RFC 9110): the scheme that would do.
        response.headers_mut().insert(
            axum::http::header::WWW_AUTHENTICATE,
            axum::http::HeaderValue::from_static("Bearer"),
        );
    }
    response
}

/// A request's body, read only once its token passed (a client without
/// one cannot make the gateway read megabytes), within axum's body limit
/// (`DefaultBodyLimit`, 2 MiB unless the router sets another); a body past
/// it, or a broken stream, is answered as the engine answers a body it
/// cannot take: 4000 naming `body`.
async fn readable(request: Request) -> Result<Bytes, ApiError> {
    Bytes::from_request(request, &())
        .await
        .map_err(|e| ApiError::invalid("body", e.body_text()))
}

/// Makes a configuration write. On an engine with a ledger, a write
/// waits until the ledger has stored the rules: it is made on tokio's
/// blocking pool, so that the runtime's worker serves other requests
/// meanwhile (the decisions a gateway makes included). Elsewhere (no
/// ledger, or no tokio runtime to hand it to) it is made here.
async fn write<T: Send + 'static>(
    engine: &Arc<Engine>,
    write: impl FnOnce(&Engine) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    if engine.grants.is_some() {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let engine = Arc::clone(engine);
            return match runtime.spawn_blocking(move || write(&engine)).await {
                Ok(done) => done,
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                // The runtime is shutting down: nothing is answered anyway.
                Err(_) => Err(ApiError::new(
                    ErrorCode::Internal,
                    "the server is shutting down",
                )),
            };
        }
    }
    write(engine)
}

async fn create(State(s): State<AdminState>, request: Request) -> Response {
    envelope(
        async {
            s.auth.check(request.headers(), true)?;
            let body = readable(request).await?;
            let info = write(&s.engine, move |e| e.create_json(body)).await?;
            Ok(CreateData { benefit_info: info })
        }
        .await,
    )
}

/// A method the routes do not serve: 405, in the envelope.
async fn not_allowed() -> Response {
    let mut r = envelope::<()>(Err(ApiError::invalid(
        "method",
        "not served on this path (POST or GET /v1/commerce/benefit/limitations, PUT /v1/commerce/benefit/limitations/{benefit_id})",
    )));
    *r.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    r
}

async fn list(State(s): State<AdminState>, headers: HeaderMap, uri: Uri) -> Response {
    envelope(
        s.auth
            .check(&headers, false)
            .and_then(|()| s.engine.list_query_string(uri.query().unwrap_or_default())),
    )
}

/// The update path with an empty id: 4000 naming `benefit_id`, after the
/// token check.
async fn no_id(State(s): State<AdminState>, headers: HeaderMap) -> Response {
    envelope::<()>(
        s.auth
            .check(&headers, true)
            .and_then(|()| Err(ApiError::invalid("benefit_id", "empty"))),
    )
}

async fn update(
    State(s): State<AdminState>,
    path: Result<Path<String>, PathRejection>,
    request: Request,
) -> Response {
    envelope(
        async {
            s.auth.check(request.headers(), true)?;
            // An id that does not decode (percent-escapes that are not
            // UTF-8): 4000 naming it, after the token check.
            let Path(benefit_id) =
                path.map_err(|e| ApiError::invalid("benefit_id", e.body_text()))?;
            let body = readable(request).await?;
            let now = (s.clock)();
            write(&s.engine, move |e| {
                e.apply_update_json(&benefit_id, body, now)
            })
            .await
        }
        .await,
    )
}
