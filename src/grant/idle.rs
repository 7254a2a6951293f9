//! Idle give-back: unspent grants of counters nobody spends from go back
//! to the ledger on a timer, so that other engines sharing it (a fleet)
//! can have them, and so that a crash strands only what active counters
//! held.

use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use super::{ACTIVE, PENDING};
use crate::engine::Engine;
use crate::ledger::LedgerError;

impl Engine {
    /// One idle sweep: every counter that no call touched since the
    /// previous sweep (a call marks a counter when it looks at its grant
    /// for a debit or asks for one) gives its unspent grant back to the
    /// ledger; the marks of the others are cleared, for the next sweep to
    /// look again. Returns how many counters gave grants back. Does nothing
    /// without a ledger.
    ///
    /// A counter with a grant in flight is left alone (its ceiling is not
    /// final yet). Only what is above the counter's usage goes back, under
    /// the counter's lock, and it is queued to the ledger before the lock
    /// is released, so a debit racing the sweep either lands under the old
    /// ceiling before it or takes a new grant that the ledger sees after
    /// the give-back: no unit is admitted that the ledger does not hold.
    /// Give-backs commit in turns (grants asked for meanwhile wait for a
    /// turn, not for the whole sweep).
    ///
    /// Call it from a timer ([`Engine::give_back_every`] runs one): a
    /// counter then gives back after one to two periods without calls
    /// (rarely sooner: a sweep that meets its table growing or shrinking
    /// under it looks at some counters twice). A
    /// period short next to the gap between a subject's requests makes each
    /// of its requests wait for a new grant; a few seconds suit gateways.
    ///
    /// # Errors
    /// The ledger's, if the commit fails (what was given back then stays
    /// counted as used: under-admission, never over-admission).
    ///
    /// # Examples
    /// ```
    /// use benefit_quota::{Amount, BenefitType, Engine, MemoryLedger, Subject};
    /// let engine = Engine::builder().ledger(MemoryLedger::new()).open()?;
    /// engine.create_json(r#"{"entity_type":"enterprise_all_devices","benefit_info":{
    ///     "benefit_type":"resource_point","active_mode":"absolute_time","started_at":0,
    ///     "ended_at":253402300799,"limit":100,"trigger_unit":"never"}}"#)?;
    /// let now = 1_767_225_600;
    /// let one = Amount::from_units(1);
    /// let spent = engine.try_consume(&Subject::device("d"), BenefitType::ResourcePoint, one, now);
    /// assert!(spent.is_allowed());
    /// assert_eq!(engine.give_back_idle()?, 0); // spent since the last sweep: kept
    /// assert_eq!(engine.give_back_idle()?, 1); // idle since: given back
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn give_back_idle(&self) -> Result<usize, LedgerError> {
        let Some(g) = self.grants.as_deref() else {
            return Ok(0);
        };
        self.apply_done(g);
        self.take_back(g, true, |p| {
            if p.lifetime & PENDING != 0 {
                false // its ceiling moves when the grant comes back
            } else if p.lifetime & ACTIVE != 0 {
                p.lifetime &= !ACTIVE; // touched: kept, until a sweep finds it idle
                false
            } else {
                true
            }
        })
    }

    /// Runs [`Engine::give_back_idle`] every `period` on a thread of its
    /// own, until the returned timer is dropped or the engine is (the
    /// thread holds the engine weakly). A failed sweep is counted in
    /// [`Engine::ledger_stats`] and the next one tries again.
    ///
    /// # Examples
    /// ```
    /// use std::{sync::Arc, time::Duration};
    /// use benefit_quota::{Engine, MemoryLedger};
    /// let engine = Arc::new(Engine::builder().ledger(MemoryLedger::new()).open()?);
    /// let timer = Engine::give_back_every(&engine, Duration::from_secs(5));
    /// drop(timer); // stops the sweeps
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use = "dropping the timer stops it"]
    pub fn give_back_every(engine: &Arc<Engine>, period: Duration) -> GiveBackTimer {
        let weak: Weak<Engine> = Arc::downgrade(engine);
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("benefit-quota-give-back".into())
            .spawn(move || {
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(period)
                {
                    let Some(engine) = weak.upgrade() else {
                        return;
                    };
                    let _ = engine.give_back_idle();
                }
            })
            .ok();
        GiveBackTimer {
            stop: Some(stop),
            thread,
        }
    }
}

/// The thread of [`Engine::give_back_every`]: stopped (and joined) on
/// drop.
#[derive(Debug)]
pub struct GiveBackTimer {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for GiveBackTimer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
