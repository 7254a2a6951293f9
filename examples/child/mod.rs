//! What the test-driven child processes (`crash_child`, `fleet_child`)
//! share: their arguments and a random generator, and for `crash_child` a
//! simulated clock shared by its lives (`fleet_child`'s clocks follow its
//! threads' progress instead).
#![allow(dead_code)]

use std::time::{SystemTime, UNIX_EPOCH};

/// Simulated seconds per wall-clock second.
pub const SPEED: i64 = 10;

/// The value after `--name` on the command line.
pub fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    let i = args.iter().position(|a| a == name)?;
    args.get(i + 1).cloned()
}

/// The simulated time: `base` at unix millisecond `zero_ms` (shared by the
/// processes of one test), running at [`SPEED`].
pub fn now(base: i64, zero_ms: i64) -> i64 {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    base + (ms - zero_ms) * SPEED / 1000
}

/// xorshift64*: a thread's own random numbers.
pub struct Rng(pub u64);

impl Rng {
    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}
