//! The ledger's writer thread: group commits, finished grants handed back
//! to the engine, and the counters of its activity.

use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::reply::{reply, ReplyRx, ReplyTx};

use super::{LedgerFailure, GRANT_SHIFT};
use crate::ledger::{
    Change, CounterKey, Ledger, LedgerError, LedgerErrorKind, RuleRecord, WindowId,
};
use crate::state::OwnerKind;

/// A counter a call waits on a grant for.
pub(crate) struct Refill {
    pub(crate) shard: usize,
    pub(crate) kind: OwnerKind,
    pub(crate) pool: u32,
    pub(crate) id: String,
    pub(crate) hash: u64,
    pub(crate) slot: u32,
    pub(crate) window: WindowId,
    pub(crate) asked: u64,
    /// The least of it the call needed (0 for a grant taken ahead).
    pub(crate) at_least: u64,
    /// The counter, as the ledger names it.
    pub(crate) key: CounterKey,
}

/// Counters of a ledger's activity (see [`crate::Engine::ledger_stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LedgerStats {
    /// Batches committed (each one durable write).
    pub commits: u64,
    /// Grants asked for.
    pub grants: u64,
    /// Records sent.
    pub records: u64,
    /// Commits that failed.
    pub errors: u64,
}

#[derive(Default)]
pub(crate) struct Stats {
    pub(crate) commits: std::sync::atomic::AtomicU64,
    pub(crate) grants: std::sync::atomic::AtomicU64,
    pub(crate) records: std::sync::atomic::AtomicU64,
    pub(crate) errors: std::sync::atomic::AtomicU64,
}

/// How many give-backs an idle sweep queues before it waits for them to
/// commit (see `Engine::take_back`).
pub(crate) const GIVE_BACK_CHUNK: usize = 8192;

/// The answer to a caller waiting for a commit: whether a grant it asked
/// for came back short (the ledger had not even its minimum left).
type Reply = ReplyTx;

/// Where the answer of a queued commit arrives (see [`Grants::queue`]).
pub(crate) type Committed = ReplyRx;

struct Job {
    changes: Vec<Change>,
    /// The counters of the job's grants, in the order of its `Grant` changes.
    refills: Vec<Refill>,
    /// Who waits for the commit (`None`: records and grants taken ahead,
    /// which do not).
    reply: Option<Reply>,
}

/// Grants the writer committed (with what was granted) or failed to
/// commit (`None`), waiting to be added to their counters' ceilings by the
/// next call that looks.
#[derive(Default)]
pub(crate) struct Done {
    /// Locked briefly, never while a shard is locked by its holder.
    pub(crate) queue: Mutex<Vec<(Refill, Option<u64>)>>,
    /// Set (under `queue`'s lock) when it holds anything.
    pub(crate) ready: std::sync::atomic::AtomicBool,
    /// Held by the caller adding finished grants to their ceilings.
    pub(crate) applying: Mutex<()>,
    /// Admitted without a grant under [`LedgerFailure::SafeCapacity`] while
    /// the ledger was failing, per counter window, for the window's life
    /// (ended windows are pruned as it grows).
    pub(crate) unbacked: Mutex<std::collections::HashMap<(CounterKey, WindowId), u64>>,
    /// Counter windows the ledger refused a grant for, and until when calls
    /// past their ceilings are denied without asking again.
    pub(crate) refused: Mutex<std::collections::HashMap<(CounterKey, WindowId), Instant>>,
}

/// An engine's ledger, its writer thread and its grant policy.
pub(crate) struct Grants {
    tx: Mutex<Option<Sender<Job>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    pub(crate) max_grant: u64,
    pub(crate) stats: Arc<Stats>,
    pub(crate) done: Arc<Done>,
    /// The rules as last committed, by slot.
    pub(crate) persisted: Mutex<Vec<RuleRecord>>,
    pub(crate) failure: LedgerFailure,
    pub(crate) grant_timeout: Duration,
}

impl Grants {
    pub(crate) fn start(ledger: Arc<dyn Ledger>, max_grant: u64, interval: Duration) -> Grants {
        let (tx, rx) = mpsc::channel();
        let stats = Arc::new(Stats::default());
        let done = Arc::new(Done::default());
        let writer = {
            let (stats, done) = (Arc::clone(&stats), Arc::clone(&done));
            std::thread::Builder::new()
                .name("benefit-quota-ledger".into())
                .spawn(move || write_loop(&*ledger, rx, interval, &stats, &done))
                .ok()
        };
        Grants {
            tx: Mutex::new(Some(tx)),
            writer: Mutex::new(writer),
            max_grant,
            stats,
            done,
            persisted: Mutex::new(Vec::new()),
            failure: LedgerFailure::FailClosed,
            grant_timeout: Duration::from_secs(2),
        }
    }

    pub(crate) fn closed(&self) -> LedgerError {
        LedgerError::new(
            LedgerErrorKind::Closed,
            "ledger",
            "the ledger's writer stopped",
        )
    }

    /// Queues `changes` (`refills`: the counters of its grants, in order);
    /// with `wait`, the receiver of the commit's answer. `None` when the
    /// writer is gone (then nothing was queued). Every grant sent is counted
    /// ([`crate::LedgerStats::grants`]), whoever sends it.
    pub(crate) fn send(
        &self,
        changes: Vec<Change>,
        refills: Vec<Refill>,
        wait: bool,
    ) -> Result<Option<ReplyRx>, LedgerError> {
        self.stats
            .grants
            .fetch_add(refills.len() as u64, std::sync::atomic::Ordering::Relaxed);
        let (reply, rx) = if wait {
            let (s, r) = reply();
            (Some(s), Some(r))
        } else {
            (None, None)
        };
        let job = Job {
            changes,
            refills,
            reply,
        };
        match self.tx.lock().as_ref().map(|tx| tx.send(job)) {
            Some(Ok(())) => Ok(rx),
            Some(Err(mpsc::SendError(job))) => {
                self.complete_unsent(job.refills);
                Err(self.closed())
            }
            None => Err(self.closed()),
        }
    }

    /// Grants that never reached the writer: their pending amounts go.
    pub(crate) fn complete_unsent(&self, refills: Vec<Refill>) {
        if !refills.is_empty() {
            self.done
                .queue
                .lock()
                .extend(refills.into_iter().map(|r| (r, None)));
            self.done
                .ready
                .store(true, std::sync::atomic::Ordering::Release);
        }
    }

    /// Queues `changes` and waits until they are committed.
    pub(crate) fn commit(&self, changes: Vec<Change>) -> Result<(), LedgerError> {
        let committed = self.queue(changes)?;
        self.wait(committed)
    }

    /// Queues `changes` for the next commit, without waiting: what
    /// [`Grants::wait`] waits on.
    pub(crate) fn queue(&self, changes: Vec<Change>) -> Result<Committed, LedgerError> {
        self.send(changes, Vec::new(), true)?
            .ok_or_else(|| self.closed())
    }

    /// Waits until the commit of what was queued is done (and, the writer
    /// committing in order, of everything queued before it).
    pub(crate) fn wait(&self, committed: Committed) -> Result<(), LedgerError> {
        committed
            .recv()
            .unwrap_or_else(|| Err(self.closed()))
            .map(|_| ())
    }

    /// The grant to ask for a counter with `limit`, `used` and `reserved`
    /// (ceiling and pending grants), when `want` more is needed.
    /// The grant to take ahead for a counter whose `ceiling` covers the
    /// debit that brings it to `need` (of `amount`), if one is due: none
    /// while one is on its way (`pending`), after a refusal, or once the
    /// ceiling is the limit; none while the ceiling keeps half the next
    /// grant's worth above `need`, nor when the next grant is smaller than
    /// the debit (too near the limit to take more than the next call needs).
    /// The one rule for the rounds and for calls decided with the thread's
    /// copy of the rules.
    pub(crate) fn due_ahead(
        &self,
        limit: u64,
        need: u64,
        ceiling: u64,
        pending: u64,
        refused: bool,
        amount: u64,
    ) -> Option<u64> {
        if pending > 0 || refused || ceiling >= limit {
            return None;
        }
        let next = self.size(limit, need, ceiling, 1);
        (ceiling - need < next / 2 && next >= amount).then_some(next)
    }

    pub(crate) fn size(&self, limit: u64, used: u64, reserved: u64, want: u64) -> u64 {
        let room = limit.saturating_sub(reserved.max(used));
        let ahead = (room >> GRANT_SHIFT).min(self.max_grant);
        want.max(ahead).min(room.max(want))
    }

    pub(crate) fn stop(&self) {
        drop(self.tx.lock().take());
        if let Some(w) = self.writer.lock().take() {
            let _ = w.join();
        }
    }
}

/// `changes` with the records of one counter window added into one (at the
/// first one's place): records commute, and after an outage under
/// `FailOpen` a batch holds one per admitted call.
fn merge_records(changes: Vec<Change>) -> Vec<Change> {
    let mut at: std::collections::HashMap<(CounterKey, WindowId), usize> =
        std::collections::HashMap::new();
    let mut out: Vec<Change> = Vec::with_capacity(changes.len());
    for c in changes {
        if let Change::Record {
            key,
            window,
            amount,
            ..
        } = &c
        {
            if let Some(&i) = at.get(&(key.clone(), *window)) {
                if let Change::Record { amount: total, .. } = &mut out[i] {
                    *total = total.saturating_add(*amount);
                }
                continue;
            }
            at.insert((key.clone(), *window), out.len());
        }
        out.push(c);
    }
    out
}

/// The writer: commits every job waiting when it wakes in one batch; holds
/// records alone up to `interval`. After each commit, the grants it carried
/// go to `done` (granted amounts, or 0 if it failed) before anybody waiting
/// is answered, so a caller woken finds its grant there.
fn write_loop(
    ledger: &dyn Ledger,
    rx: Receiver<Job>,
    interval: Duration,
    stats: &Stats,
    done: &Done,
) {
    use std::sync::atomic::Ordering::{Relaxed, Release};
    let mut held: Vec<Change> = Vec::new();
    let mut refills: Vec<Refill> = Vec::new();
    let mut since: Option<Instant> = None;
    let mut open = true;
    // Who waits for the next commit, and which of `refills` are theirs.
    let mut waiting: Vec<(Reply, std::ops::Range<usize>)> = Vec::new();
    while open || !held.is_empty() || !refills.is_empty() {
        let first = match since {
            _ if !open => Err(RecvTimeoutError::Disconnected),
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some(t) => rx.recv_timeout((t + interval).saturating_duration_since(Instant::now())),
        };
        let mut take = |mut job: Job, held: &mut Vec<Change>, refills: &mut Vec<Refill>| {
            let start = refills.len();
            held.append(&mut job.changes);
            refills.append(&mut job.refills);
            if let Some(reply) = job.reply {
                waiting.push((reply, start..refills.len()));
            }
        };
        match first {
            Ok(job) => take(job, &mut held, &mut refills),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => open = false,
        }
        while let Ok(job) = rx.try_recv() {
            take(job, &mut held, &mut refills);
        }
        let due = since.is_some_and(|t| t.elapsed() >= interval);
        if waiting.is_empty() && refills.is_empty() && open && !due {
            if !held.is_empty() && since.is_none() {
                since = Some(Instant::now());
            }
            continue;
        }
        let batch = merge_records(std::mem::take(&mut held));
        since = None;
        let result = if batch.is_empty() {
            Ok(Vec::new())
        } else {
            let r = ledger.commit(&batch);
            stats.commits.fetch_add(1, Relaxed);
            if r.is_err() {
                stats.errors.fetch_add(1, Relaxed);
            }
            r
        };
        let granted = result.as_deref().unwrap_or(&[]);
        let mut amounts = granted.iter().copied();
        let finished: Vec<(Refill, Option<u64>)> = refills
            .drain(..)
            .map(|r| (r, result.is_ok().then(|| amounts.next().unwrap_or(0))))
            .collect();
        let short: Vec<bool> = finished
            .iter()
            .map(|(r, g)| g.is_some_and(|g| g < r.at_least))
            .collect();
        if !finished.is_empty() {
            let mut q = done.queue.lock();
            q.extend(finished);
            done.ready.store(true, Release);
        }
        for (reply, mine) in waiting.drain(..) {
            let answer = match &result {
                Ok(_) => Ok(short.get(mine).is_some_and(|s| s.iter().any(|&x| x))),
                Err(e) => Err(e.clone()),
            };
            reply.send(answer);
        }
        if result.is_err() && open {
            // Records stand (the usage happened): they wait for the next
            // commit (a bounded number, and none once the engine is gone).
            // So do rules: the engine decides under them already, and a
            // grant under a rule must not be durable before the rule is
            // (a restart would read the older rule back, not recognise the
            // newer counter, and admit its usage again); held, they go
            // first into the next batch, ahead of any grant. Grants were
            // refused; give-backs are dropped (what they gave back counts
            // as used: under-admission only).
            let (rules, records): (Vec<Change>, Vec<Change>) = batch
                .into_iter()
                .filter(|c| matches!(c, Change::Record { .. } | Change::Rule(_)))
                .partition(|c| matches!(c, Change::Rule(_)));
            held = rules;
            held.extend(records.into_iter().take(1 << 20));
            since = (!held.is_empty()).then(Instant::now);
        }
    }
}
