//! Fixed-point usage amounts (D14): six decimal places, stored as micro-units.

use std::fmt;
use std::str::FromStr;

/// Micro-units per whole unit (point or second).
pub const MICROS_PER_UNIT: u64 = 1_000_000;

/// An amount of usage: points or seconds with six decimal places (F21, D14).
///
/// Stored as an integer number of micro-units, so sums are exact.
///
/// # Examples
/// ```
/// use benefit_quota::Amount;
/// let a: Amount = "0.16".parse().unwrap();
/// assert_eq!(a.as_micros(), 160_000);
/// assert_eq!(a.to_string(), "0.16");
/// assert_eq!(Amount::from_units(3).to_string(), "3");
/// assert_eq!(format!("{a:?}"), "Amount(0.16)"); // in units too
/// // Sums saturate, as counters do (D14).
/// let total: Amount = [a, a, Amount::from_units(1)].into_iter().sum();
/// assert_eq!(total.to_string(), "1.32");
/// assert_eq!(Amount::MAX + a, Amount::MAX);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Amount(u64);

impl fmt::Debug for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Amount({self})")
    }
}

impl std::ops::Add for Amount {
    type Output = Amount;

    /// Saturating, as counters add (D14).
    fn add(self, other: Amount) -> Amount {
        self.saturating_add(other)
    }
}

impl std::ops::AddAssign for Amount {
    fn add_assign(&mut self, other: Amount) {
        *self = self.saturating_add(other);
    }
}

impl std::iter::Sum for Amount {
    fn sum<I: Iterator<Item = Amount>>(iter: I) -> Amount {
        iter.fold(Amount::ZERO, Amount::saturating_add)
    }
}

impl Amount {
    /// Zero.
    pub const ZERO: Amount = Amount(0);
    /// The largest representable amount (about 18.4 million million units).
    pub const MAX: Amount = Amount(u64::MAX);

    /// `n` whole units, saturating at [`Amount::MAX`].
    pub const fn from_units(n: u64) -> Amount {
        Amount(n.saturating_mul(MICROS_PER_UNIT))
    }

    /// `n` micro-units (millionths of a unit).
    pub const fn from_micros(n: u64) -> Amount {
        Amount(n)
    }

    /// The amount in micro-units.
    pub const fn as_micros(self) -> u64 {
        self.0
    }

    /// `self + other`, saturating.
    pub const fn saturating_add(self, other: Amount) -> Amount {
        Amount(self.0.saturating_add(other.0))
    }

    /// `self - other`, floored at zero.
    pub const fn saturating_sub(self, other: Amount) -> Amount {
        Amount(self.0.saturating_sub(other.0))
    }
}

/// Why a string is not an [`Amount`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseAmountError(&'static str);

impl fmt::Display for ParseAmountError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for ParseAmountError {}

impl FromStr for Amount {
    type Err = ParseAmountError;

    /// Parses `"12"`, `"0.16"`, `"3.000001"`; at most six decimals, no sign,
    /// no exponent, no surrounding spaces.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (int, frac) = match s.split_once('.') {
            Some((i, f)) => (i, Some(f)),
            None => (s, None),
        };
        if s.starts_with('-') {
            return Err(ParseAmountError("an amount cannot be negative"));
        }
        if let Some(c) = s.bytes().find(|b| !b.is_ascii_digit() && *b != b'.') {
            return Err(ParseAmountError(match c {
                b'e' | b'E' => "exponents are not accepted: write the amount out (1000, not 1e3)",
                b'+' => "write the amount without a sign",
                _ => "expected a plain decimal amount: digits, then optionally a point and up to six digits",
            }));
        }
        if int.is_empty() || !int.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ParseAmountError("expected digits before the decimal point"));
        }
        let mut micros: u64 = 0;
        for b in int.bytes() {
            micros = micros
                .checked_mul(10)
                .and_then(|m| m.checked_add(u64::from(b - b'0')))
                .ok_or(ParseAmountError("amount too large"))?;
        }
        micros = micros
            .checked_mul(MICROS_PER_UNIT)
            .ok_or(ParseAmountError("amount too large"))?;
        if let Some(frac) = frac {
            if frac.is_empty() || frac.len() > 6 || !frac.bytes().all(|b| b.is_ascii_digit()) {
                return Err(ParseAmountError(
                    "expected one to six digits after the decimal point",
                ));
            }
            let mut f: u64 = 0;
            for b in frac.bytes() {
                f = f * 10 + u64::from(b - b'0');
            }
            for _ in frac.len()..6 {
                f *= 10;
            }
            micros = micros
                .checked_add(f)
                .ok_or(ParseAmountError("amount too large"))?;
        }
        Ok(Amount(micros))
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let int = self.0 / MICROS_PER_UNIT;
        let frac = self.0 % MICROS_PER_UNIT;
        if frac == 0 {
            write!(f, "{int}")
        } else {
            let digits = format!("{frac:06}");
            write!(f, "{int}.{}", digits.trim_end_matches('0'))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        for (s, m) in [
            ("0", 0),
            ("1", 1_000_000),
            ("0.16", 160_000),
            ("0.000001", 1),
            ("12.5", 12_500_000),
        ] {
            let a: Amount = s.parse().unwrap();
            assert_eq!(a.as_micros(), m, "{s}");
            assert_eq!(a.to_string(), s);
        }
    }

    #[test]
    fn rejects_malformed() {
        for s in [
            "",
            ".5",
            "1.",
            "-1",
            "+1",
            "1e3",
            " 1",
            "1.0000001",
            "a",
            "1.2.3",
        ] {
            assert!(s.parse::<Amount>().is_err(), "{s:?}");
        }
        // Each mistake says what it is.
        let why = |s: &str| s.parse::<Amount>().unwrap_err().to_string();
        assert_eq!(why("-1"), "an amount cannot be negative");
        assert!(why("1e3").starts_with("exponents are not accepted"));
        assert_eq!(why("+1"), "write the amount without a sign");
        assert!(why(" 1").starts_with("expected a plain decimal amount"));
        assert_eq!(why(".5"), "expected digits before the decimal point");
        assert_eq!(
            why("1."),
            "expected one to six digits after the decimal point"
        );
        assert!("18446744073709551616".parse::<Amount>().is_err());
        assert!("18446744073709.551616".parse::<Amount>().is_err());
        assert_eq!(
            "18446744073709.551615".parse::<Amount>().unwrap(),
            Amount::MAX
        );
    }

    #[test]
    fn saturates() {
        assert_eq!(Amount::from_units(u64::MAX), Amount::MAX);
        assert_eq!(
            Amount::MAX.saturating_add(Amount::from_micros(1)),
            Amount::MAX
        );
        assert_eq!(
            Amount::ZERO.saturating_sub(Amount::from_micros(1)),
            Amount::ZERO
        );
    }
}
