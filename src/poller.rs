//! A poller of the platform's list endpoint (feature `poller`): lists every
//! scope page by page over HTTP and syncs the engine with the result
//! (S1–S5), keeping the last good rules on any error.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::engine::Engine;
use crate::errors::ApiError;
use crate::mirror::{Listing, SyncReport};
use crate::types::{BenefitType, EntityType, Family};

/// Why a poll did not sync. The engine keeps the rules it had.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PollError {
    /// No answer: the connection failed or timed out.
    Transport(String),
    /// An HTTP status other than 2xx, with no platform error in the body.
    Status(u16),
    /// The platform answered an error envelope (its code and message), or
    /// a page that is not a valid listing (4000 naming the field).
    Platform(ApiError),
    /// A scope's listing went on past the configured number of pages.
    TooManyPages {
        /// The scope's entity type.
        entity_type: EntityType,
        /// The scope's benefit type.
        benefit_type: BenefitType,
    },
    /// The listing was complete and valid, but the engine refused it (two
    /// all-scope rules of one kind in force, D5; a record listed twice with
    /// different values; a listed rule whose scope or type differs from
    /// the stored one's).
    Sync(ApiError),
    /// The engine's rules changed while the listing was read, by a write
    /// through another path (an imported response, an update, an admin
    /// route), each time the poll listed again: the listing predates the
    /// write, so applying it would have undone it. Nothing was applied.
    Outdated,
}

impl std::fmt::Display for PollError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PollError::Transport(e) => write!(f, "no answer from the platform: {e}"),
            PollError::Status(s) => write!(f, "the platform answered HTTP {s}"),
            PollError::Platform(e) => write!(f, "the platform's listing: {e}"),
            PollError::TooManyPages {
                entity_type,
                benefit_type,
            } => write!(
                f,
                "the listing of {entity_type} / {benefit_type} has more pages than allowed"
            ),
            PollError::Sync(e) => write!(f, "the listing was refused: {e}"),
            PollError::Outdated => write!(
                f,
                "the rules changed while each listing was read: none was applied"
            ),
        }
    }
}

impl std::error::Error for PollError {}

/// What the poller has done so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PollState {
    /// When the last successful sync finished.
    pub last_success: Option<SystemTime>,
    /// What it changed.
    pub last_report: Option<SyncReport>,
    /// The last poll's error, if it failed (cleared by a success).
    pub last_error: Option<PollError>,
    /// Polls failed in a row.
    pub failures: u32,
}

/// Builds a [`Poller`]: see [`Poller::builder`].
#[derive(Clone)]
#[must_use]
pub struct PollerBuilder {
    base_url: String,
    token: String,
    scopes: Vec<(EntityType, BenefitType)>,
    interval: Duration,
    timeout: Duration,
    max_backoff: Duration,
    page_size: u32,
    max_pages: u32,
}

impl std::fmt::Debug for PollerBuilder {
    /// Everything but the token (a secret).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PollerBuilder")
            .field("base_url", &self.base_url)
            .field("token", &"***")
            .field("scopes", &self.scopes)
            .field("interval", &self.interval)
            .field("timeout", &self.timeout)
            .field("max_backoff", &self.max_backoff)
            .field("page_size", &self.page_size)
            .field("max_pages", &self.max_pages)
            .finish()
    }
}

/// The shortest wait between polls, whatever the builder was given.
pub const MIN_POLL_WAIT: Duration = Duration::from_millis(10);

/// The longest interval or backoff the builder keeps (a week): a longer
/// one, or `Duration::MAX` for "once at start", would overflow the
/// backoff's arithmetic.
pub const MAX_POLL_WAIT: Duration = Duration::from_secs(7 * 86_400);

/// Listings read in one poll while configuration writes keep landing
/// during them (see [`PollError::Outdated`]).
const LISTINGS_PER_POLL: usize = 3;

impl PollerBuilder {
    /// The scopes to list (default: every entity type × benefit type that
    /// the platform has, 16 queries a poll: the four device and consumer
    /// types with each benefit type, the four enterprise types with
    /// `resource_point`). Rules of other scopes are left alone.
    pub fn scopes(mut self, scopes: impl IntoIterator<Item = (EntityType, BenefitType)>) -> Self {
        // Each once: a scope listed twice in one poll would add pages to a
        // listing that already ended, which refuses every poll.
        self.scopes.clear();
        for scope in scopes {
            if !self.scopes.contains(&scope) {
                self.scopes.push(scope);
            }
        }
        self
    }

    /// Time between successful polls (default 60 s; at least
    /// [`MIN_POLL_WAIT`], so that a zero cannot make the poller spin, and
    /// at most [`MAX_POLL_WAIT`]).
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval.clamp(MIN_POLL_WAIT, MAX_POLL_WAIT);
        self
    }

    /// Timeout of each HTTP request, connection included (default 10 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Longest wait between failed polls (default 10 min): after a failure
    /// the poller waits the interval times 2^failures, up to this, less a
    /// random part of up to half (jitter, so a fleet does not poll in step).
    /// At least [`MIN_POLL_WAIT`] and at most [`MAX_POLL_WAIT`]; a backoff
    /// shorter than the interval waits the interval.
    pub fn max_backoff(mut self, max: Duration) -> Self {
        self.max_backoff = max.clamp(MIN_POLL_WAIT, MAX_POLL_WAIT);
        self
    }

    /// Records asked for per page, 1..=200 (default 200, the platform's
    /// maximum, F10).
    pub fn page_size(mut self, n: u32) -> Self {
        self.page_size = n.clamp(1, 200);
        self
    }

    /// Most pages read per scope before a poll gives up (default 10,000).
    pub fn max_pages(mut self, n: u32) -> Self {
        self.max_pages = n.max(1);
        self
    }

    /// The poller; nothing is fetched until [`Poller::poll_once`] or
    /// [`Poller::spawn`].
    pub fn build(self, engine: Arc<Engine>) -> Poller {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(self.timeout))
            .http_status_as_error(false)
            .build()
            .into();
        Poller {
            engine,
            agent,
            config: self,
            state: Mutex::new(PollState::default()),
        }
    }
}

/// Keeps an engine's rules in sync with the platform's list endpoint
/// (`GET {base_url}/v1/commerce/benefit/limitations`, bearer token).
///
/// Each poll lists every configured scope page by page and, only if every
/// listing is complete and valid, syncs the engine with it
/// ([`Engine::sync`]); on any error (no answer, a timeout, an HTTP error, an
/// error envelope, a malformed or incomplete listing) the engine keeps the
/// rules it had and the error is kept in [`Poller::state`].
///
/// # Examples
/// ```no_run
/// use std::sync::Arc;
/// use benefit_quota::{Engine, Poller};
/// let engine = Arc::new(Engine::new());
/// let poller = Poller::builder("https://api.coze.cn", "pat_...").build(Arc::clone(&engine));
/// let _running = poller.spawn(); // polls until dropped
/// ```
pub struct Poller {
    engine: Arc<Engine>,
    agent: ureq::Agent,
    config: PollerBuilder,
    state: Mutex<PollState>,
}

impl std::fmt::Debug for Poller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Poller")
            .field("base_url", &self.config.base_url)
            .field("scopes", &self.config.scopes.len())
            .finish_non_exhaustive()
    }
}

impl Poller {
    /// A poller builder for the platform at `base_url` (for example
    /// `https://api.coze.cn`), authenticating with `token`.
    pub fn builder(base_url: impl Into<String>, token: impl Into<String>) -> PollerBuilder {
        // The enterprise family has `resource_point` rules only (F3, D4):
        // its voice scopes do not exist on the platform, which may refuse
        // the query, and one refused scope would fail every poll.
        let scopes = EntityType::ALL
            .iter()
            .flat_map(|&e| BenefitType::ALL.iter().map(move |&b| (e, b)))
            .filter(|&(e, b)| e.family() != Family::Enterprise || b == BenefitType::ResourcePoint)
            .collect();
        PollerBuilder {
            base_url: base_url.into().trim_end_matches('/').to_owned(),
            token: token.into(),
            scopes,
            interval: Duration::from_secs(60),
            timeout: Duration::from_secs(10),
            max_backoff: Duration::from_secs(600),
            page_size: 200,
            max_pages: 10_000,
        }
    }

    /// Lists every scope and syncs the engine, at the system clock's time.
    ///
    /// # Errors
    /// See [`PollError`]; the engine's rules are unchanged on error.
    pub fn poll_once(&self) -> Result<SyncReport, PollError> {
        self.poll_once_at(crate::clock::system_now())
    }

    /// [`Poller::poll_once`] at `now` (unix seconds).
    ///
    /// # Errors
    /// See [`PollError`].
    pub fn poll_once_at(&self, now: i64) -> Result<SyncReport, PollError> {
        let result = self.list_and_sync(now);
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match &result {
            Ok(report) => {
                state.last_success = Some(SystemTime::now());
                state.last_report = Some(report.clone());
                state.last_error = None;
                state.failures = 0;
            }
            Err(e) => {
                state.last_error = Some(e.clone());
                state.failures = state.failures.saturating_add(1);
            }
        }
        result
    }

    /// What the poller has done so far.
    pub fn state(&self) -> PollState {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Lists and syncs, unless a configuration write lands while the
    /// listing is read (it would undo that write): then lists again, a few
    /// times, before giving up for this poll.
    fn list_and_sync(&self, now: i64) -> Result<SyncReport, PollError> {
        for _ in 0..LISTINGS_PER_POLL {
            let version = self.engine.config_version();
            let listing = self.fetch()?;
            match self.engine.sync_since(&listing, now, version) {
                Ok(Some(report)) => return Ok(report),
                Ok(None) => continue,
                Err(e) => return Err(PollError::Sync(e)),
            }
        }
        Err(PollError::Outdated)
    }

    /// How long to wait before the next poll, given the failures in a row.
    fn next_wait(&self, failures: u32) -> Duration {
        if failures == 0 {
            return self.config.interval;
        }
        let doubled = self
            .config
            .interval
            .saturating_mul(1u32 << failures.min(16))
            .min(self.config.max_backoff.max(self.config.interval));
        // Jitter: up to half of it off, from the clock's low bits.
        let noise = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        doubled
            .mul_f64(1.0 - f64::from(noise % 1000) / 2000.0)
            .max(MIN_POLL_WAIT)
    }

    /// Polls in a background thread until the returned value is dropped:
    /// at once, then every interval, backing off after failures.
    #[must_use = "dropping the returned value stops the polling"]
    pub fn spawn(self) -> RunningPoller {
        let poller = Arc::new(self);
        let stop = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
        let stopped = Arc::new(AtomicBool::new(false));
        let thread = {
            let (poller, stop, stopped) =
                (Arc::clone(&poller), Arc::clone(&stop), Arc::clone(&stopped));
            std::thread::spawn(move || {
                while !stopped.load(Ordering::Acquire) {
                    let failures = match poller.poll_once() {
                        Ok(_) => 0,
                        Err(_) => poller.state().failures,
                    };
                    let wait = poller.next_wait(failures);
                    let (lock, cvar) = &*stop;
                    let guard = lock.lock().unwrap_or_else(|e| e.into_inner());
                    let _ = cvar
                        .wait_timeout_while(guard, wait, |s| !*s)
                        .unwrap_or_else(|e| e.into_inner());
                }
            })
        };
        RunningPoller {
            poller,
            stop,
            stopped,
            thread: Some(thread),
        }
    }

    /// Every configured scope, listed completely.
    fn fetch(&self) -> Result<Listing, PollError> {
        let url = format!("{}/v1/commerce/benefit/limitations", self.config.base_url);
        let bearer = format!("Bearer {}", self.config.token);
        let page_size = self.config.page_size.to_string();
        let mut listing = Listing::new();
        for &(entity_type, benefit_type) in &self.config.scopes {
            let mut token = String::new();
            let mut seen = std::collections::HashSet::new();
            let mut pages = 0;
            loop {
                if pages == self.config.max_pages {
                    return Err(PollError::TooManyPages {
                        entity_type,
                        benefit_type,
                    });
                }
                pages += 1;
                let mut req = self
                    .agent
                    .get(&url)
                    .header("Authorization", &bearer)
                    .query("entity_type", entity_type.as_str())
                    .query("benefit_type", benefit_type.as_str())
                    .query("page_size", &page_size);
                if !token.is_empty() {
                    req = req.query("page_token", &token);
                }
                let mut resp = req
                    .call()
                    .map_err(|e| PollError::Transport(e.to_string()))?;
                let status = resp.status().as_u16();
                let body = resp
                    .body_mut()
                    .with_config()
                    .limit(crate::validate::MAX_IMPORT_BYTES as u64)
                    .read_to_vec()
                    .map_err(|e| PollError::Transport(e.to_string()))?;
                if !(200..300).contains(&status) {
                    return Err(platform_error(&body).unwrap_or(PollError::Status(status)));
                }
                match listing.add_page_json(entity_type, benefit_type, &body) {
                    // A token given twice would page in a loop until
                    // `max_pages`: the listing is refused at once instead.
                    Ok(Some(next)) if !seen.insert(next.clone()) => {
                        return Err(PollError::Platform(ApiError::invalid(
                            "data.page_token",
                            format_args!(
                                "repeats an earlier page's token ({}): the pages would loop",
                                crate::errors::truncate_for_message(&next)
                            ),
                        )))
                    }
                    Ok(Some(next)) => token = next,
                    Ok(None) => break,
                    Err(e) => return Err(PollError::Platform(e)),
                }
            }
        }
        Ok(listing)
    }
}

/// The platform's error envelope in an HTTP error's body, if there is one.
fn platform_error(body: &[u8]) -> Option<PollError> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let code = v.get("code")?.as_u64().filter(|&c| c != 0)?;
    let msg = v.get("msg").and_then(|m| m.as_str()).unwrap_or_default();
    Some(PollError::Platform(ApiError::from_platform(code, msg)))
}

/// A poller running in its own thread ([`Poller::spawn`]); dropping it
/// stops the thread (after the poll in progress, if any).
pub struct RunningPoller {
    poller: Arc<Poller>,
    stop: Arc<(Mutex<bool>, std::sync::Condvar)>,
    stopped: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for RunningPoller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningPoller")
            .field("poller", &self.poller)
            .finish_non_exhaustive()
    }
}

impl RunningPoller {
    /// What the poller has done so far.
    pub fn state(&self) -> PollState {
        self.poller.state()
    }
}

impl Drop for RunningPoller {
    fn drop(&mut self) {
        self.stopped.store(true, Ordering::Release);
        let (lock, cvar) = &*self.stop;
        *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
        cvar.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A poller of no platform, built with these waits.
    fn waiting(interval: Duration, max_backoff: Duration) -> Poller {
        Poller::builder("http://127.0.0.1:9", "t")
            .interval(interval)
            .max_backoff(max_backoff)
            .build(Arc::new(Engine::new()))
    }

    #[test]
    fn a_zero_interval_or_backoff_cannot_make_the_poller_spin() {
        let p = waiting(Duration::ZERO, Duration::ZERO);
        for failures in 0..40 {
            // Jitter takes off at most half.
            assert!(p.next_wait(failures) >= MIN_POLL_WAIT / 2, "{failures}");
        }
        // A backoff shorter than the interval waits the interval (less jitter).
        let p = waiting(Duration::from_secs(60), Duration::from_secs(1));
        assert!(p.next_wait(3) >= Duration::from_secs(30));
    }

    /// "Once at start-up" as an interval of `Duration::MAX` does not
    /// overflow the backoff (whose jitter could panic the poller's thread).
    #[test]
    fn the_longest_interval_and_backoff_wait_a_week_at_most() {
        let p = waiting(Duration::MAX, Duration::MAX);
        for failures in 0..40 {
            let wait = p.next_wait(failures);
            assert!(
                wait <= MAX_POLL_WAIT && wait >= MAX_POLL_WAIT / 2,
                "{failures}"
            );
        }
    }
}
