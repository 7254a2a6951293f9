//! One counter: usage in its window, lifetime total, and what it belongs to.

use crate::period::Window;

/// One rule's usage by one owner. 32 bytes, no heap.
///
/// `window_start` is `i64::MIN` for cumulative rules. `generation` is the
/// rule's period generation when the counter was last written; the rule bumps
/// it (wrapping) whenever an update must start usage from zero (D16).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CounterState {
    /// Micro-units used in the current window.
    pub used: u64,
    /// Micro-units ever counted, across resets.
    pub lifetime: u64,
    /// Start of the window `used` belongs to.
    pub window_start: i64,
    /// Rule generation `used` belongs to.
    pub generation: u32,
    /// The rule's slot.
    pub rule: u32,
}

impl CounterState {
    /// An empty counter of rule `rule`.
    pub fn new(rule: u32) -> CounterState {
        CounterState {
            used: 0,
            lifetime: 0,
            window_start: i64::MIN,
            generation: 0,
            rule,
        }
    }

    /// Whether `used` still counts at `window` (`None`: cumulative) under `generation`.
    ///
    /// A counter whose window is *newer* than the caller's (a late request whose
    /// `now` is behind another thread's) still counts: windows only move forward,
    /// so a late request can never reopen a window that already rolled over.
    #[inline]
    pub fn is_current(&self, generation: u32, window: Option<Window>) -> bool {
        self.generation == generation
            && match window {
                None => true,
                Some(w) => self.window_start >= w.start,
            }
    }

    /// Usage that counts at `window` under `generation`.
    #[inline]
    pub fn effective_used(&self, generation: u32, window: Option<Window>) -> u64 {
        if self.is_current(generation, window) {
            self.used
        } else {
            0
        }
    }

    /// Starts a new window (or generation) if the counter is stale.
    #[inline]
    pub fn roll(&mut self, generation: u32, window: Option<Window>) {
        if !self.is_current(generation, window) {
            self.used = 0;
            self.generation = generation;
            self.window_start = window.map_or(i64::MIN, |w| w.start);
        }
    }

    /// Adds `micros` to the window and the lifetime total, saturating.
    #[inline]
    pub fn add(&mut self, micros: u64) {
        self.used = self.used.saturating_add(micros);
        self.lifetime = self.lifetime.saturating_add(micros);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W1: Window = Window {
        start: 100,
        end: 200,
    };
    const W2: Window = Window {
        start: 200,
        end: 300,
    };

    #[test]
    fn rolls_over_on_new_window_and_generation() {
        let mut c = CounterState::new(0);
        c.roll(0, Some(W1));
        c.add(5);
        assert_eq!(c.effective_used(0, Some(W1)), 5);
        assert_eq!(c.effective_used(0, Some(W2)), 0);
        assert_eq!(c.effective_used(1, Some(W1)), 0);
        c.roll(0, Some(W2));
        c.add(2);
        assert_eq!((c.used, c.lifetime, c.window_start), (2, 7, 200));
    }

    #[test]
    fn late_requests_count_in_the_newer_window() {
        let mut c = CounterState::new(0);
        c.roll(0, Some(W2));
        c.add(5);
        // a request stamped in W1 arrives after W2 began: it must not reset W2
        assert_eq!(c.effective_used(0, Some(W1)), 5);
        c.roll(0, Some(W1));
        assert_eq!((c.used, c.window_start), (5, 200));
    }

    #[test]
    fn cumulative_ignores_windows_but_not_generations() {
        let mut c = CounterState::new(0);
        c.roll(3, None);
        c.add(9);
        assert_eq!(c.effective_used(3, None), 9);
        assert_eq!(c.effective_used(4, None), 0);
        c.add(u64::MAX);
        assert_eq!(c.used, u64::MAX);
    }

    #[test]
    fn size_is_32_bytes() {
        assert_eq!(std::mem::size_of::<CounterState>(), 32);
    }
}
