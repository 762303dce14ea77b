//! Money: an exact decimal amount in one ISO 4217 currency.
//!
//! Amounts are `rust_decimal::Decimal`, never floats. Each currency knows its minor-unit
//! exponent (JPY 0, USD 2, KWD 3), and an amount with more decimals than its currency allows is
//! rejected rather than rounded, because silently rounding a price changes what a customer pays.

use std::fmt;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// Why an amount or currency was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    /// The currency code is not an ISO 4217 code this engine supports.
    #[error("unknown currency `{0}`")]
    UnknownCurrency(String),
    /// The amount is not a decimal number.
    #[error("amount `{0}` is not a decimal number")]
    Malformed(String),
    /// The amount has more decimals than the currency's minor unit allows.
    #[error("{currency} allows {allowed} decimal places, amount has {found}")]
    TooManyDecimals {
        /// The currency of the amount.
        currency: Currency,
        /// Decimal places the currency allows.
        allowed: u32,
        /// Decimal places found in the amount.
        found: u32,
    },
    /// The amount is below zero where only non-negative amounts make sense.
    #[error("amount must not be negative")]
    Negative,
    /// The amount does not fit the engine's bounds (minor units must fit an `i64`).
    #[error("amount is out of range")]
    OutOfRange,
    /// Two amounts in different currencies were combined.
    #[error("currency mismatch: {0} vs {1}")]
    CurrencyMismatch(Currency, Currency),
}

macro_rules! currencies {
    ($($code:ident = $exp:expr),+ $(,)?) => {
        /// An ISO 4217 currency supported by the engine.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[allow(clippy::upper_case_acronyms)]
        pub enum Currency { $(
            #[doc = concat!("ISO 4217 `", stringify!($code), "`.")]
            $code
        ),+ }

        impl Currency {
            /// Every supported currency, in declaration order (stable: snapshot codes index it).
            pub const ALL: &'static [Currency] = &[$(Currency::$code),+];

            /// The ISO code, e.g. `"USD"`.
            pub fn code(self) -> &'static str {
                match self { $(Currency::$code => stringify!($code)),+ }
            }

            /// Number of decimal places of the minor unit (USD 2, JPY 0, KWD 3).
            pub fn exponent(self) -> u32 {
                match self { $(Currency::$code => $exp),+ }
            }

            /// Parses an upper-case ISO 4217 code.
            pub fn parse(code: &str) -> Result<Currency, MoneyError> {
                match code { $(stringify!($code) => Ok(Currency::$code),)+
                    other => Err(MoneyError::UnknownCurrency(other.chars().take(16).collect())) }
            }
        }
    };
}

currencies! {
    USD = 2, EUR = 2, GBP = 2, CNY = 2, HKD = 2, SGD = 2, AUD = 2, CAD = 2, CHF = 2,
    INR = 2, BRL = 2, MXN = 2, SEK = 2, NOK = 2, DKK = 2, PLN = 2, ZAR = 2, NZD = 2,
    JPY = 0, KRW = 0, VND = 0, CLP = 0, ISK = 0,
    KWD = 3, BHD = 3, OMR = 3, JOD = 3, TND = 3,
}

impl Currency {
    /// Stable small integer for compact snapshots: the index in [`Currency::ALL`].
    pub fn index(self) -> u8 {
        Currency::ALL.iter().position(|c| *c == self).unwrap_or(0) as u8
    }

    /// Inverse of [`Currency::index`].
    pub fn from_index(index: u8) -> Option<Currency> {
        Currency::ALL.get(index as usize).copied()
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// Largest absolute amount in minor units the engine accepts: it keeps every total and every
/// sum of totals comfortably inside `i64` (about 9.2e18) so that conversions never overflow.
pub const MAX_MINOR_UNITS: i64 = 1_000_000_000_000_000; // 1e15 minor units = 1e13 USD

/// An exact amount of money in one currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Money {
    amount: Decimal,
    currency: Currency,
}

impl Money {
    /// Builds a money value, checking the scale against the currency and the range bound.
    pub fn new(amount: Decimal, currency: Currency) -> Result<Money, MoneyError> {
        let normalized = amount.normalize();
        if normalized.scale() > currency.exponent() {
            return Err(MoneyError::TooManyDecimals {
                currency,
                allowed: currency.exponent(),
                found: normalized.scale(),
            });
        }
        let money = Money {
            amount: normalized,
            currency,
        };
        money.to_minor_units()?;
        Ok(money)
    }

    /// Parses a plain decimal string such as `"19.99"` or `"-5"`: an optional minus, digits,
    /// optionally a dot and more digits. No exponent notation, separators, `+` or bare `.5`;
    /// more decimals than the currency allows is refused, never rounded.
    pub fn parse(amount: &str, currency: Currency) -> Result<Money, MoneyError> {
        let malformed = || MoneyError::Malformed(amount.chars().take(40).collect());
        let digits = amount.strip_prefix('-').unwrap_or(amount);
        let (whole, fraction) = match digits.split_once('.') {
            Some((whole, fraction)) => (whole, Some(fraction)),
            None => (digits, None),
        };
        let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !all_digits(whole) || fraction.is_some_and(|f| !all_digits(f)) {
            return Err(malformed());
        }
        // Trailing zeros are not precision: "2.50" is fine in USD, and so is "2.5000".
        let fraction = fraction.map(|f| f.trim_end_matches('0'));
        let decimals = fraction.map_or(0, str::len) as u32;
        if decimals > currency.exponent() {
            return Err(MoneyError::TooManyDecimals {
                currency,
                allowed: currency.exponent(),
                found: decimals,
            });
        }
        // Beyond 18 significant integer digits nothing fits the engine's range anyway.
        if whole.trim_start_matches('0').len() > 18 {
            return Err(MoneyError::OutOfRange);
        }
        let sign = if digits.len() < amount.len() { "-" } else { "" };
        let canonical = match fraction {
            Some(f) if !f.is_empty() => format!("{sign}{whole}.{f}"),
            _ => format!("{sign}{whole}"),
        };
        let value = Decimal::from_str_exact(&canonical).map_err(|_| MoneyError::OutOfRange)?;
        Money::new(value, currency)
    }

    /// Zero in `currency`.
    pub fn zero(currency: Currency) -> Money {
        Money {
            amount: Decimal::ZERO,
            currency,
        }
    }

    /// Builds money from an integer count of minor units (cents for USD, yen for JPY).
    pub fn from_minor_units(minor: i64, currency: Currency) -> Result<Money, MoneyError> {
        if minor.unsigned_abs() > MAX_MINOR_UNITS as u64 {
            return Err(MoneyError::OutOfRange);
        }
        Ok(Money {
            amount: Decimal::new(minor, currency.exponent()).normalize(),
            currency,
        })
    }

    /// Converts to an integer count of minor units; exact, or an error.
    pub fn to_minor_units(&self) -> Result<i64, MoneyError> {
        let scaled = self
            .amount
            .checked_mul(Decimal::from(10_i64.pow(self.currency.exponent())))
            .ok_or(MoneyError::OutOfRange)?;
        if !scaled.fract().is_zero() {
            return Err(MoneyError::TooManyDecimals {
                currency: self.currency,
                allowed: self.currency.exponent(),
                found: self.amount.scale(),
            });
        }
        let minor = i64::try_from(scaled).map_err(|_| MoneyError::OutOfRange)?;
        if minor.unsigned_abs() > MAX_MINOR_UNITS as u64 {
            return Err(MoneyError::OutOfRange);
        }
        Ok(minor)
    }

    /// The decimal amount.
    pub fn amount(&self) -> Decimal {
        self.amount
    }

    /// The currency.
    pub fn currency(&self) -> Currency {
        self.currency
    }

    /// Whether the amount is below zero.
    pub fn is_negative(&self) -> bool {
        self.amount.is_sign_negative() && !self.amount.is_zero()
    }

    /// Whether the amount is zero.
    pub fn is_zero(&self) -> bool {
        self.amount.is_zero()
    }

    /// Exact sum; fails on a currency mismatch or when the result leaves the engine's range.
    pub fn checked_add(self, other: Money) -> Result<Money, MoneyError> {
        self.same_currency(other)?;
        let sum = self
            .amount
            .checked_add(other.amount)
            .ok_or(MoneyError::OutOfRange)?;
        Money::new(sum, self.currency)
    }

    /// Exact difference; fails on a currency mismatch or out of range.
    pub fn checked_sub(self, other: Money) -> Result<Money, MoneyError> {
        self.same_currency(other)?;
        let diff = self
            .amount
            .checked_sub(other.amount)
            .ok_or(MoneyError::OutOfRange)?;
        Money::new(diff, self.currency)
    }

    /// Exact product by an integer quantity; fails when the result leaves the engine's range.
    pub fn checked_mul_quantity(self, quantity: u32) -> Result<Money, MoneyError> {
        let product = self
            .amount
            .checked_mul(Decimal::from(quantity))
            .ok_or(MoneyError::OutOfRange)?;
        Money::new(product, self.currency)
    }

    fn same_currency(self, other: Money) -> Result<(), MoneyError> {
        if self.currency == other.currency {
            Ok(())
        } else {
            Err(MoneyError::CurrencyMismatch(self.currency, other.currency))
        }
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Always print the currency's full number of decimals: "39.90 USD", "1000 JPY".
        let mut shown = self.amount;
        shown.rescale(self.currency.exponent());
        write!(f, "{} {}", shown, self.currency)
    }
}

/// Renders an amount with exactly the currency's number of decimals, as the wire format wants.
pub fn format_amount(money: &Money) -> String {
    let mut shown = money.amount();
    shown.rescale(money.currency().exponent());
    shown.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minor_units_follow_the_currency_exponent() {
        let usd = Money::parse("19.99", Currency::USD).unwrap();
        assert_eq!(usd.to_minor_units().unwrap(), 1999);
        let jpy = Money::parse("1500", Currency::JPY).unwrap();
        assert_eq!(jpy.to_minor_units().unwrap(), 1500);
        let kwd = Money::parse("1.234", Currency::KWD).unwrap();
        assert_eq!(kwd.to_minor_units().unwrap(), 1234);
        assert_eq!(Money::from_minor_units(1234, Currency::KWD).unwrap(), kwd);
    }

    #[test]
    fn too_many_decimals_is_rejected_not_rounded() {
        assert!(matches!(
            Money::parse("1.5", Currency::JPY),
            Err(MoneyError::TooManyDecimals {
                allowed: 0,
                found: 1,
                ..
            })
        ));
        assert!(matches!(
            Money::parse("0.001", Currency::USD),
            Err(MoneyError::TooManyDecimals {
                allowed: 2,
                found: 3,
                ..
            })
        ));
        // Trailing zeros are not extra precision.
        assert_eq!(
            Money::parse("2.5000", Currency::USD)
                .unwrap()
                .to_minor_units()
                .unwrap(),
            250
        );
    }

    #[test]
    fn malformed_and_unknown_are_errors() {
        assert!(matches!(
            Money::parse("abc", Currency::USD),
            Err(MoneyError::Malformed(_))
        ));
        assert!(matches!(
            Money::parse("", Currency::USD),
            Err(MoneyError::Malformed(_))
        ));
        assert!(matches!(
            Currency::parse("XXX"),
            Err(MoneyError::UnknownCurrency(_))
        ));
        assert!(matches!(
            Currency::parse("usd"),
            Err(MoneyError::UnknownCurrency(_))
        ));
    }

    #[test]
    fn huge_amounts_are_out_of_range_not_panics() {
        assert_eq!(
            Money::parse("99999999999999999999999", Currency::USD),
            Err(MoneyError::OutOfRange)
        );
        let big = Money::from_minor_units(MAX_MINOR_UNITS, Currency::USD).unwrap();
        assert_eq!(big.checked_add(big), Err(MoneyError::OutOfRange));
        assert_eq!(
            big.checked_mul_quantity(u32::MAX),
            Err(MoneyError::OutOfRange)
        );
    }

    #[test]
    fn display_uses_the_currency_scale() {
        assert_eq!(
            Money::parse("39.9", Currency::USD).unwrap().to_string(),
            "39.90 USD"
        );
        assert_eq!(
            format_amount(&Money::parse("7", Currency::KWD).unwrap()),
            "7.000"
        );
    }

    #[test]
    fn currency_index_round_trips() {
        for c in Currency::ALL {
            assert_eq!(Currency::from_index(c.index()), Some(*c));
        }
    }
}
