//! The system clock, for the parts that read it themselves (the
//! middleware's and the admin routes' default clocks, the poller): every
//! other call takes `now` as an input.

use std::time::{SystemTime, UNIX_EPOCH};

/// The system clock in unix seconds; -1 (an impossible time, T1: a call is
/// rejected, a write refused naming `now`) for a clock set before 1970,
/// which 0 would let pass as a real time before every rule's start.
pub(crate) fn system_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(-1, |d| d.as_secs() as i64)
}
