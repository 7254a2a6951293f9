//! A ledger in Redis (feature `redis`): see [`RedisLedger`].

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::codec::encode_counter_key;
use super::{Change, Ledger, LedgerError, LedgerErrorKind, Snapshot};

/// How long Redis remembers a batch (for replays and cancellation): a
/// batch left in doubt is cancelled at the next commit, which a gateway
/// that only records makes up to `record_interval` (at most an hour) after
/// the failure, later still while Redis stays away; a day leaves room for
/// both.
const BATCH_TTL_S: u64 = 86_400;
/// The largest amount passed to Redis (see `commit`).
const EXACT: u64 = (1 << 53) - 1;
/// [`RedisLedger::utc_offset`] before [`Ledger::bind`]: batches are not
/// checked.
const UNBOUND: i64 = i64::MIN;
/// How long a counter key lives past its window's end.
const KEY_GRACE_S: u64 = 86_400;

const APPLY: &str = r#"
-- The previous batch's answer arrived: its record, kept for a cancel that
-- will not come, goes.
if ARGV[4] == '1' then redis.call('DEL', KEYS[3]) end
-- The UTC offset every instance counts windows at (see Ledger::bind): the
-- first instance sets it, an instance at another one is refused, since its
-- windows' keys would not be the fleet's.
if ARGV[3] ~= '' then
  local o = redis.call('GET', KEYS[2])
  if not o then
    redis.call('SET', KEYS[2], ARGV[3])
  elseif o ~= ARGV[3] then
    return {-2, tonumber(o)}
  end
end
local status = redis.call('GET', KEYS[1])
if status then
  if status == 'x' then return {-1} end
  return cjson.decode(status).g
end
local out = {}
-- Undo amounts as decimal strings: cjson keeps 14 significant digits of a
-- number, and a cancel must take back exactly what was applied.
local undo = {}
for i = 4, #KEYS do
  local k = KEYS[i]
  local base = 4 + (i - 4) * 5
  local op = ARGV[base + 1]
  local at_least = tonumber(ARGV[base + 2])
  local amount = tonumber(ARGV[base + 3])
  local limit = tonumber(ARGV[base + 4])
  local ttl = tonumber(ARGV[base + 5])
  local used = tonumber(redis.call('GET', k) or '0')
  if op == 'g' then
    local room = limit - used
    local g = 0
    if room >= at_least and room > 0 then
      g = math.min(amount, math.max(at_least, math.floor(room / 8)), room)
    end
    if g > 0 then
      redis.call('INCRBY', k, string.format('%.0f', g))
      undo[#undo + 1] = {k, string.format('%.0f', -g)}
    end
    out[#out + 1] = g
  elseif op == 'r' then
    redis.call('INCRBY', k, string.format('%.0f', amount))
    undo[#undo + 1] = {k, string.format('%.0f', -amount)}
  elseif op == 'b' then
    local b = math.min(amount, used)
    if b > 0 then
      redis.call('DECRBY', k, string.format('%.0f', b))
      undo[#undo + 1] = {k, string.format('%.0f', b)}
    end
  end
  if ttl > 0 and op ~= 'b' then
    local left = redis.call('TTL', k)
    if left < ttl then redis.call('EXPIRE', k, string.format('%.0f', ttl)) end
  end
end
redis.call('SET', KEYS[1], cjson.encode({g = out, u = undo}), 'EX', ARGV[2])
return out
"#;

const CANCEL: &str = r#"
local status = redis.call('GET', KEYS[1])
if status and status ~= 'x' then
  local rec = cjson.decode(status)
  for _, u in ipairs(rec.u) do
    local n = tonumber(u[2])
    if n < 0 then
      local cur = tonumber(redis.call('GET', u[1]) or '0')
      local d = math.min(-n, cur)
      if d > 0 then redis.call('DECRBY', u[1], string.format('%.0f', d)) end
    else
      redis.call('INCRBY', u[1], u[2])
    end
  end
end
redis.call('SET', KEYS[1], 'x', 'EX', ARGV[1])
return 1
"#;

struct Conn {
    con: Option<redis::Connection>,
    /// No new connection is tried before this (backoff after a failure).
    retry_at: Option<Instant>,
    backoff: Duration,
    /// A batch whose outcome a broken connection left unknown.
    in_doubt: Option<String>,
    /// The last batch whose answer arrived, whose record the next batch
    /// deletes.
    answered: Option<String>,
}

/// A ledger in Redis (feature `redis`), shared by a fleet of gateways.
///
/// Each counter window is one Redis integer (micro-units granted or
/// recorded by every instance), keyed by rule, owner and window (start and
/// end), expiring a day after its window ends (by the callers' clocks: a
/// key's time to live only grows). A batch of changes is one
/// Lua script, so Redis applies it atomically: a grant checks the limit
/// against what every instance holds, so the fleet never admits more than
/// the limit. Grants adapt to the fleet: at most an eighth of what the limit
/// has left across the fleet, at least what the call needs, or nothing.
///
/// Exactly once: each batch carries an id, and Redis remembers what a batch
/// did (for a day). When a connection breaks with a batch in flight, its
/// outcome is unknown; before the next batch the ledger *cancels* it: if it
/// was applied, its effect is undone, and in any case a late arrival of it
/// does nothing. So a failed commit has applied nothing, as the [`Ledger`]
/// contract says, and records the engine sends again are never counted
/// twice.
///
/// Every instance counts windows at one UTC offset: Redis keeps the first
/// instance's, and refuses the batches of an instance at another
/// ([`LedgerErrorKind::Mismatch`]), whose windows' keys would not be the
/// fleet's.
///
/// Rules stay per instance (each gateway syncs them from the platform), and
/// so does local usage: [`Ledger::load`] returns nothing, and a restarted
/// instance takes fresh grants, which the fleet's counters bound.
///
/// Made by [`crate::EngineBuilder::redis`], or with [`RedisLedger::new`]
/// and passed to [`crate::EngineBuilder::ledger`].
pub struct RedisLedger {
    client: redis::Client,
    location: String,
    prefix: String,
    timeout: Duration,
    instance: String,
    /// The engine's UTC offset in seconds ([`Ledger::bind`]), or
    /// [`UNBOUND`].
    utc_offset: AtomicI64,
    seq: AtomicU64,
    conn: Mutex<Conn>,
    apply: redis::Script,
    cancel: redis::Script,
}

impl std::fmt::Debug for RedisLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLedger")
            .field("location", &self.location)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisLedger {
    /// A ledger at `url` (`redis://[user:password@]host:port/db`;
    /// `rediss://` for TLS with the `redis-tls` feature), keys under
    /// `prefix`, every round trip bounded by `timeout`. Connects lazily:
    /// an unreachable server is an error of the first commit, not of this.
    ///
    /// # Errors
    /// A URL the `redis` crate does not accept.
    pub fn new(url: &str, prefix: &str, timeout: Duration) -> Result<RedisLedger, LedgerError> {
        let location = redact(url);
        let client = redis::Client::open(url)
            .map_err(|e| LedgerError::new(LedgerErrorKind::Io, location.clone(), e.to_string()))?;
        Ok(RedisLedger {
            client,
            location,
            prefix: prefix.to_owned(),
            timeout,
            // Unique in the fleet: Redis answers a batch id it knows with
            // that batch's outcome and applies nothing, so two ledgers
            // sharing one would take each other's grants for their own.
            instance: super::unique_id(),
            utc_offset: AtomicI64::new(UNBOUND),
            seq: AtomicU64::new(0),
            conn: Mutex::new(Conn {
                con: None,
                retry_at: None,
                backoff: Duration::from_millis(50),
                in_doubt: None,
                answered: None,
            }),
            apply: redis::Script::new(APPLY),
            cancel: redis::Script::new(CANCEL),
        })
    }

    fn error(&self, kind: LedgerErrorKind, e: impl std::fmt::Display) -> LedgerError {
        LedgerError::new(kind, self.location.clone(), e.to_string())
    }

    fn counter_key(&self, key: &super::CounterKey, window: &super::WindowId) -> Vec<u8> {
        let mut k = format!("{}:c:", self.prefix).into_bytes();
        k.extend_from_slice(&encode_counter_key(key));
        // Start and end, not the generation: each instance counts its own
        // generations (a restarted one starts again at zero), while every
        // instance with the rule computes the same window.
        k.extend_from_slice(&window.start.to_be_bytes());
        k.extend_from_slice(&window.end.to_be_bytes());
        k
    }

    /// The connection, made if needed (unless backing off).
    fn connected<'c>(&self, c: &'c mut Conn) -> Result<&'c mut redis::Connection, LedgerError> {
        if c.con.is_none() {
            if c.retry_at.is_some_and(|t| Instant::now() < t) {
                return Err(self.error(LedgerErrorKind::Io, "unreachable (backing off)"));
            }
            let made = self
                .client
                .get_connection_with_timeout(self.timeout)
                .and_then(|con| {
                    con.set_read_timeout(Some(self.timeout))?;
                    con.set_write_timeout(Some(self.timeout))?;
                    Ok(con)
                });
            match made {
                Ok(con) => {
                    c.con = Some(con);
                    c.retry_at = None;
                    c.backoff = Duration::from_millis(50);
                }
                Err(e) => {
                    c.retry_at = Some(Instant::now() + c.backoff);
                    c.backoff = (c.backoff * 2).min(Duration::from_secs(2));
                    return Err(self.error(LedgerErrorKind::Io, e));
                }
            }
        }
        c.con
            .as_mut()
            .ok_or_else(|| self.error(LedgerErrorKind::Io, "no connection"))
    }

    /// After an error: a server's answer leaves the connection usable; any
    /// other drops it (and leaves `id`, if given, in doubt).
    fn failed(&self, c: &mut Conn, e: &redis::RedisError, id: Option<String>) -> LedgerError {
        if e.kind() == redis::ErrorKind::ResponseError
            || e.kind() == redis::ErrorKind::ExtensionError
        {
            return self.error(LedgerErrorKind::Corrupt, e);
        }
        c.con = None;
        c.retry_at = Some(Instant::now() + c.backoff);
        c.backoff = (c.backoff * 2).min(Duration::from_secs(2));
        if id.is_some() {
            c.in_doubt = id;
        }
        self.error(LedgerErrorKind::Io, e)
    }
}

impl Ledger for RedisLedger {
    fn load(&self) -> Result<Snapshot, LedgerError> {
        Ok(Snapshot::default())
    }

    /// Kept for every batch, which Redis checks against the fleet's
    /// offset (the first instance's): an instance at another offset has
    /// its commits refused ([`LedgerErrorKind::Mismatch`]; the failure
    /// policy applies), since its windows' keys would not be the fleet's.
    /// The ledger connects lazily, so this does not fail.
    fn bind(&self, utc_offset_seconds: i32) -> Result<(), LedgerError> {
        self.utc_offset
            .store(i64::from(utc_offset_seconds), Ordering::Relaxed);
        Ok(())
    }

    fn commit(&self, changes: &[Change]) -> Result<Vec<u64>, LedgerError> {
        let mut inv = self.apply.prepare_invoke();
        let id = format!(
            "{}:b:{}:{}",
            self.prefix,
            self.instance,
            self.seq.fetch_add(1, Ordering::Relaxed)
        );
        let offset = self.utc_offset.load(Ordering::Relaxed);
        let mut c = self.conn.lock();
        let answered = c.answered.clone();
        inv.key(&id)
            .key(format!("{}:utc_offset", self.prefix))
            .key(answered.as_deref().unwrap_or(&id))
            .arg(&id)
            .arg(BATCH_TTL_S)
            .arg(if offset == UNBOUND {
                String::new()
            } else {
                offset.to_string()
            })
            .arg(if answered.is_some() { "1" } else { "" });
        let mut grants = 0usize;
        for change in changes {
            let (op, key, window, at_least, amount, limit, ends_in) = match change {
                Change::Grant {
                    key,
                    window,
                    at_least,
                    amount,
                    limit,
                    ends_in,
                } => ("g", key, window, *at_least, *amount, *limit, *ends_in),
                Change::GiveBack {
                    key,
                    window,
                    amount,
                } => ("b", key, window, 0, *amount, 0, None),
                Change::Record {
                    key,
                    window,
                    amount,
                    ends_in,
                } => ("r", key, window, 0, *amount, 0, *ends_in),
                Change::Forget { .. } | Change::Rule(_) => continue,
            };
            grants += usize::from(op == "g");
            // Lua computes in doubles: amounts stay exact below 2^53
            // micro-units (9×10⁹ units), and are held there so that no
            // INCRBY can overflow mid-script.
            let (at_least, amount, limit) =
                (at_least.min(EXACT), amount.min(EXACT), limit.min(EXACT));
            let ttl = ends_in.map_or(0, |e| e.saturating_add(KEY_GRACE_S).max(1));
            inv.key(self.counter_key(key, window))
                .arg(op)
                .arg(at_least)
                .arg(amount)
                .arg(limit)
                .arg(ttl);
        }
        if grants == 0
            && !changes
                .iter()
                .any(|c| matches!(c, Change::GiveBack { .. } | Change::Record { .. }))
        {
            return Ok(Vec::new()); // rules and forgets stay per instance
        }
        if let Some(doubt) = c.in_doubt.clone() {
            let con = self.connected(&mut c)?;
            match self.cancel.key(&doubt).arg(BATCH_TTL_S).invoke::<i64>(con) {
                Ok(_) => c.in_doubt = None,
                Err(e) => return Err(self.failed(&mut c, &e, None)),
            }
        }
        let con = self.connected(&mut c)?;
        let granted: Vec<i64> = match inv.invoke(con) {
            Ok(g) => g,
            Err(e) => return Err(self.failed(&mut c, &e, Some(id))),
        };
        // Answered: its record is needed by no cancel, and the next batch
        // deletes it (one a day per batch would be kept otherwise).
        c.answered = Some(id.clone());
        if let [-2, stored] = granted[..] {
            return Err(super::offset_mismatch(
                &self.location,
                stored,
                offset as i32,
            ));
        }
        if granted.first() == Some(&-1) || granted.len() != grants {
            return Err(self.error(
                LedgerErrorKind::Corrupt,
                format!("batch {id} answered {} grants for {grants}", granted.len()),
            ));
        }
        Ok(granted.into_iter().map(|g| g.max(0) as u64).collect())
    }
}

/// `url` without its password.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***@{}", &url[..s], &url[at + 1..]),
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_stay_out_of_messages() {
        assert_eq!(
            super::redact("redis://:pw@h:6379/0"),
            "redis://***@h:6379/0"
        );
        assert_eq!(super::redact("redis://h:6379"), "redis://h:6379");
    }
}
