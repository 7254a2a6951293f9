//! Period arithmetic (D15): reset windows in a fixed UTC offset.
//!
//! All functions are pure and total: `now` is clamped to ±2^40 s (about
//! ±34,000 years) so no sum or product below can overflow `i64`.

use crate::types::{Family, Reset};

/// A fixed offset from UTC in which period boundaries are computed (D15).
///
/// # Examples
/// ```
/// use benefit_quota::UtcOffset;
/// assert_eq!(UtcOffset::default(), UtcOffset::CHINA);
/// assert_eq!(UtcOffset::from_hours(8), Some(UtcOffset::CHINA));
/// assert_eq!(UtcOffset::from_seconds(86_400), None);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UtcOffset(i32);

impl UtcOffset {
    /// UTC+0.
    pub const UTC: UtcOffset = UtcOffset(0);
    /// UTC+8, China Standard Time (no DST): the platform's default.
    pub const CHINA: UtcOffset = UtcOffset(8 * 3600);

    /// An offset of `secs` seconds east of UTC.
    ///
    /// # Errors
    /// `None` unless `-86400 < secs < 86400`.
    pub const fn from_seconds(secs: i32) -> Option<UtcOffset> {
        if secs > -86_400 && secs < 86_400 {
            Some(UtcOffset(secs))
        } else {
            None
        }
    }

    /// An offset of `h` whole hours east of UTC.
    ///
    /// # Errors
    /// `None` unless `-24 < h < 24`.
    pub const fn from_hours(h: i32) -> Option<UtcOffset> {
        if h > -24 && h < 24 {
            Some(UtcOffset(h * 3600))
        } else {
            None
        }
    }

    /// Seconds east of UTC.
    pub const fn seconds(self) -> i32 {
        self.0
    }

    const fn secs(self) -> i64 {
        self.0 as i64
    }

    /// The local date and time of a unix timestamp in this offset, e.g. to
    /// show a user when their quota resets.
    ///
    /// # Examples
    /// ```
    /// use benefit_quota::UtcOffset;
    /// let t = UtcOffset::CHINA.local(1_741_795_200);
    /// assert_eq!(t.to_string(), "2025-03-13 00:00:00 +08:00");
    /// ```
    pub fn local(self, ts: i64) -> LocalTime {
        let local = clamp_now(ts) + self.secs();
        let (year, month, day) = civil_from_days(local.div_euclid(86_400));
        let secs = local.rem_euclid(86_400) as u32;
        LocalTime {
            year,
            month,
            day,
            hour: secs / 3_600,
            minute: secs / 60 % 60,
            second: secs % 60,
            offset: self,
        }
    }
}

/// A date and time in a fixed offset, as returned by [`UtcOffset::local`].
/// Displays as `YYYY-MM-DD hh:mm:ss ±hh:mm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalTime {
    /// Proleptic Gregorian year.
    pub year: i64,
    /// 1..=12.
    pub month: u32,
    /// 1..=31.
    pub day: u32,
    /// 0..=23.
    pub hour: u32,
    /// 0..=59.
    pub minute: u32,
    /// 0..=59.
    pub second: u32,
    /// The offset it is expressed in.
    pub offset: UtcOffset,
}

impl std::fmt::Display for LocalTime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let off = self.offset.seconds();
        let sign = if off < 0 { '-' } else { '+' };
        let abs = off.unsigned_abs();
        write!(
            f,
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02} {sign}{:02}:{:02}",
            self.year,
            self.month,
            self.day,
            self.hour,
            self.minute,
            self.second,
            abs / 3_600,
            abs / 60 % 60
        )
    }
}

impl Default for UtcOffset {
    fn default() -> Self {
        UtcOffset::CHINA
    }
}

/// Bound on `|now|` so window arithmetic cannot overflow.
pub(crate) const NOW_BOUND: i64 = 1 << 40;

/// Whether `now` can be a time in unix seconds the platform knows:
/// `0..=253402300799` (1970 to 9999, D4's range). A time in milliseconds
/// (anything after 1977) or a negative one is not.
#[inline(always)]
pub(crate) const fn possible_now(now: i64) -> bool {
    0 <= now && now <= crate::types::FOREVER
}

/// Clamps a caller-supplied time into the range the arithmetic supports.
pub(crate) const fn clamp_now(now: i64) -> i64 {
    if now > NOW_BOUND {
        NOW_BOUND
    } else if now < -NOW_BOUND {
        -NOW_BOUND
    } else {
        now
    }
}

/// A reset window `[start, end)` in unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Window {
    /// First second of the window.
    pub start: i64,
    /// First second after the window: when its usage resets.
    pub end: i64,
}

impl Window {
    /// Whether `t` falls in `[start, end)`.
    #[inline]
    pub const fn contains(&self, t: i64) -> bool {
        self.start <= t && t < self.end
    }
}

/// Window of a minute/hour/day rule: anchored at `started_at` floored to the
/// unit in local time, `len` seconds long (D15).
pub(crate) fn fixed_window(
    started_at: i64,
    unit_secs: i64,
    len: i64,
    offset: UtcOffset,
    now: i64,
) -> Window {
    let now = clamp_now(now);
    let started_at = clamp_now(started_at);
    let anchor = (started_at + offset.secs()).div_euclid(unit_secs) * unit_secs - offset.secs();
    let k = (now - anchor).div_euclid(len);
    let start = anchor + k * len;
    Window {
        start,
        end: start + len,
    }
}

/// Calendar month containing `now`, in local time (F20, D15).
pub(crate) fn month_window(offset: UtcOffset, now: i64) -> Window {
    let local = clamp_now(now) + offset.secs();
    let days = local.div_euclid(86_400);
    let (y, m, _) = civil_from_days(days);
    let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    Window {
        start: days_from_civil(y, m, 1) * 86_400 - offset.secs(),
        end: days_from_civil(ny, nm, 1) * 86_400 - offset.secs(),
    }
}

/// The window of a rule at `now`; `None` for cumulative rules.
pub(crate) fn rule_window(
    family: Family,
    reset: Reset,
    started_at: i64,
    offset: UtcOffset,
    now: i64,
) -> Option<Window> {
    let unit_secs = reset.unit().seconds()?;
    if family == Family::Enterprise {
        return Some(month_window(offset, now));
    }
    let len = reset.window_seconds()?;
    Some(fixed_window(started_at, unit_secs, len, offset, now))
}

/// A rule's reset schedule, copied out of its record for the hot path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Period {
    family: Family,
    reset: Reset,
    started_at: i64,
    offset: UtcOffset,
    /// Length of a fixed (minute/hour/day) window; 0 for cumulative rules and
    /// calendar months.
    fixed_len: i64,
}

impl Period {
    pub fn new(family: Family, reset: Reset, started_at: i64, offset: UtcOffset) -> Period {
        let fixed_len = match family {
            Family::Enterprise => 0,
            _ => reset.window_seconds().unwrap_or(0),
        };
        Period {
            family,
            reset,
            started_at,
            offset,
            fixed_len,
        }
    }

    /// The window at `now` (`None`: cumulative), D15.
    pub fn window(&self, now: i64) -> Option<Window> {
        rule_window(self.family, self.reset, self.started_at, self.offset, now)
    }

    /// Length of a fixed (minute/hour/day) window; 0 for cumulative rules
    /// and calendar months.
    #[inline]
    pub fn fixed_len(&self) -> i64 {
        self.fixed_len
    }

    /// Whether the rule never resets (its window is always `None`).
    #[inline]
    pub fn is_cumulative(&self) -> bool {
        self.reset.is_cumulative()
    }

    /// A start to seed a window cache with.
    pub fn first_start(&self) -> i64 {
        self.window(self.started_at).map_or(0, |w| w.start)
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
pub(crate) const fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 } as i64;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The proleptic Gregorian date of a day count since 1970-01-01.
pub(crate) const fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{TriggerUnit, FOREVER};

    #[test]
    fn civil_round_trip() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        for z in (-800_000..3_000_000).step_by(997) {
            let (y, m, d) = civil_from_days(z);
            assert_eq!(days_from_civil(y, m, d), z);
        }
        assert_eq!(FOREVER.div_euclid(86_400), days_from_civil(9999, 12, 31));
    }

    #[test]
    fn day_window_is_local_midnight() {
        // 2025-03-12 00:00:00 +08:00 = 1741708800
        let w = fixed_window(
            1_741_708_800,
            86_400,
            86_400,
            UtcOffset::CHINA,
            1_741_708_800 + 5,
        );
        assert_eq!(
            w,
            Window {
                start: 1_741_708_800,
                end: 1_741_708_800 + 86_400
            }
        );
        // anchored at a mid-day start, still floored to local midnight
        let w = fixed_window(
            1_741_708_800 + 3_600 * 13,
            86_400,
            86_400,
            UtcOffset::CHINA,
            1_741_708_800 + 3_600 * 20,
        );
        assert_eq!(w.start, 1_741_708_800);
        // in UTC the same instant belongs to the day that began 8 hours earlier
        let w = fixed_window(0, 86_400, 86_400, UtcOffset::UTC, 1_741_708_800 + 5);
        assert_eq!(w.start, 1_741_708_800 - 16 * 3_600);
    }

    #[test]
    fn n_unit_windows_are_anchored() {
        // 3-hour windows anchored at 10:00 local
        let start = 1_741_708_800 + 10 * 3_600 + 1_234;
        let w = fixed_window(
            start,
            3_600,
            3 * 3_600,
            UtcOffset::CHINA,
            1_741_708_800 + 14 * 3_600,
        );
        assert_eq!(w.start, 1_741_708_800 + 13 * 3_600);
        assert_eq!(w.end, 1_741_708_800 + 16 * 3_600);
    }

    #[test]
    fn months_handle_february_and_leap_years() {
        // 2024-02-10 12:00 +08:00
        let t = days_from_civil(2024, 2, 10) * 86_400 + 4 * 3_600;
        let w = month_window(UtcOffset::CHINA, t);
        assert_eq!(w.start, days_from_civil(2024, 2, 1) * 86_400 - 28_800);
        assert_eq!(w.end - w.start, 29 * 86_400);
        let t = days_from_civil(2023, 2, 10) * 86_400;
        assert_eq!(
            month_window(UtcOffset::CHINA, t).end - month_window(UtcOffset::CHINA, t).start,
            28 * 86_400
        );
        let t = days_from_civil(2023, 12, 31) * 86_400;
        let w = month_window(UtcOffset::CHINA, t);
        assert_eq!(w.end, days_from_civil(2024, 1, 1) * 86_400 - 28_800);
    }

    #[test]
    fn extreme_inputs_do_not_overflow() {
        let r = Reset::new(TriggerUnit::Minute, FOREVER / 60).unwrap();
        for now in [i64::MIN, -1, 0, FOREVER, FOREVER + 1, i64::MAX] {
            for started in [0, FOREVER] {
                let w = rule_window(
                    Family::Device,
                    r,
                    started,
                    UtcOffset::from_seconds(-86_399).unwrap(),
                    now,
                )
                .unwrap();
                assert!(w.start < w.end);
                let w = rule_window(
                    Family::Enterprise,
                    r,
                    started,
                    UtcOffset::from_seconds(86_399).unwrap(),
                    now,
                )
                .unwrap();
                assert!(w.start < w.end);
            }
        }
        assert_eq!(
            rule_window(Family::Device, Reset::NEVER, 0, UtcOffset::CHINA, 5),
            None
        );
    }
}
