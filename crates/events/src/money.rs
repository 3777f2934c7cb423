//! Exact money. Amounts are decimals (never floating point) with at most two places,
//! greater than zero and at most 1,000,000.00; currencies are ISO 4217 codes with two
//! minor units that the platform accepts.

use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// The largest amount one order may carry.
pub const MAX_AMOUNT: Decimal = Decimal::from_parts(100_000_000, 0, 0, false, 2);

/// A positive amount of money with at most two decimal places, at most [`MAX_AMOUNT`].
/// In JSON it is a number written exactly (`222.22`); a string (`"222.22"`) is accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Amount(#[serde(with = "rust_decimal::serde::arbitrary_precision")] Decimal);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    #[error("amount must be greater than zero")]
    NotPositive,
    #[error("amount must be at most 1000000.00")]
    TooLarge,
    #[error("amount must have at most two decimal places")]
    TooPrecise,
    #[error("amount must be a decimal number such as 222.22")]
    NotANumber,
    #[error("amount must be a JSON number such as 222.22 (not a string)")]
    NotAJsonNumber,
    #[error(
        "amount must be greater than zero and at most 1000000.00, with at most two decimal places"
    )]
    OutOfRange,
}

impl Amount {
    pub fn new(value: Decimal) -> Result<Self, AmountError> {
        if value <= Decimal::ZERO {
            return Err(AmountError::NotPositive);
        }
        if value > MAX_AMOUNT {
            return Err(AmountError::TooLarge);
        }
        if value.normalize().scale() > 2 {
            return Err(AmountError::TooPrecise);
        }
        // Always two places, so 5 and 5.00 are the same amount, stored and shown alike.
        let mut value = value;
        value.rescale(2);
        Ok(Self(value))
    }

    pub fn value(self) -> Decimal {
        self.0
    }
}

impl FromStr for Amount {
    type Err = AmountError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        // Decimal's parser accepts forms we do not want in money ("1e3", "1_000").
        if text.is_empty()
            || !text
                .chars()
                .all(|c| c.is_ascii_digit() || c == '.' || c == '-' || c == '+')
        {
            return Err(AmountError::NotANumber);
        }
        let value = Decimal::from_str_exact(text).map_err(|_| AmountError::NotANumber)?;
        Self::new(value)
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<'de> Deserialize<'de> for Amount {
    /// A JSON number, in any notation JSON allows (`222.22`, `5`, `2.2222e2`), taken at
    /// its exact decimal value; a string, even of digits, is refused, so the schema can
    /// say `type: number` and mean it.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // With serde_json's arbitrary_precision, a JSON number arrives as its exact text.
        let value = serde_json::Value::deserialize(deserializer)?;
        let serde_json::Value::Number(number) = &value else {
            return Err(serde::de::Error::custom(AmountError::NotAJsonNumber));
        };
        let text = number.to_string();
        let exact = if text.contains(['e', 'E']) {
            // Decimal's own parser refuses an exponent; an exponent too large to be
            // money is refused here as well.
            Decimal::from_scientific(&text).ok()
        } else {
            Decimal::from_str_exact(&text).ok()
        };
        let value = exact.ok_or_else(|| serde::de::Error::custom(AmountError::OutOfRange))?;
        Amount::new(value).map_err(serde::de::Error::custom)
    }
}

/// A currency the platform accepts: an ISO 4217 code with two minor units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(into = "String")]
pub struct Currency(&'static str);

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let code = String::deserialize(deserializer)?;
        code.parse().map_err(serde::de::Error::custom)
    }
}

/// The accepted codes.
pub const CURRENCIES: &[&str] = &[
    "AUD", "CAD", "CHF", "CZK", "DKK", "EUR", "GBP", "HKD", "NOK", "NZD", "PLN", "SEK", "SGD",
    "USD",
];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown currency {0:?}; accepted: {list}", list = CURRENCIES.join(", "))]
pub struct CurrencyError(pub String);

impl Currency {
    pub const USD: Currency = Currency("USD");

    pub fn code(self) -> &'static str {
        self.0
    }
}

impl Default for Currency {
    fn default() -> Self {
        Self::USD
    }
}

impl FromStr for Currency {
    type Err = CurrencyError;

    fn from_str(code: &str) -> Result<Self, Self::Err> {
        CURRENCIES
            .iter()
            .find(|c| **c == code)
            .map(|c| Currency(c))
            .ok_or_else(|| CurrencyError(code.to_owned()))
    }
}

impl From<Currency> for String {
    fn from(currency: Currency) -> Self {
        currency.0.to_owned()
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn amount(json: &str) -> Result<Amount, String> {
        serde_json::from_str::<Amount>(json).map_err(|e| e.to_string())
    }

    #[test]
    fn valid_amounts_keep_their_exact_value_with_two_places() {
        assert_eq!(amount("222.22").unwrap().to_string(), "222.22");
        assert_eq!(amount("2.2222e2").unwrap().to_string(), "222.22");
        assert_eq!(amount("1.5E2").unwrap().to_string(), "150.00");
        assert_eq!(amount("1e-2").unwrap().to_string(), "0.01");
        assert_eq!(amount("5").unwrap().to_string(), "5.00");
        assert_eq!(amount("0.01").unwrap().to_string(), "0.01");
        assert_eq!(amount("1000000.00").unwrap().to_string(), "1000000.00");
        assert_eq!(amount("1.50").unwrap(), amount("1.5").unwrap());
    }

    #[test]
    fn invalid_amounts_say_what_is_wrong() {
        assert!(amount("0").unwrap_err().contains("greater than zero"));
        assert!(amount("-1.00").unwrap_err().contains("greater than zero"));
        assert!(amount("1000000.01")
            .unwrap_err()
            .contains("at most 1000000.00"));
        assert!(amount("1.001").unwrap_err().contains("two decimal places"));
        assert!(amount("1e-3").unwrap_err().contains("two decimal places"));
        assert!(amount("1e7").unwrap_err().contains("at most 1000000.00"));
        assert!(amount("true").unwrap_err().contains("JSON number"));
        assert!(amount("\"abc\"").unwrap_err().contains("JSON number"));
        assert!(amount("\"222.22\"").unwrap_err().contains("not a string"));
        assert!(amount("\"+5\"").unwrap_err().contains("not a string"));
        assert!(amount("1e400").unwrap_err().contains("at most 1000000.00"));
    }

    #[test]
    fn amounts_serialize_as_exact_json_numbers() {
        let a: Amount = "0.10".parse().unwrap();
        assert_eq!(serde_json::to_string(&a).unwrap(), "0.10");
    }

    #[test]
    fn currencies_are_checked_against_the_accepted_list() {
        assert_eq!(
            serde_json::from_str::<Currency>("\"EUR\"").unwrap().code(),
            "EUR"
        );
        let err = serde_json::from_str::<Currency>("\"XXX\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown currency \"XXX\""), "{err}");
        assert!(serde_json::from_str::<Currency>("\"usd\"").is_err());
    }

    proptest! {
        #[test]
        fn every_cent_amount_in_range_round_trips_exactly(cents in 1u64..=100_000_000) {
            let text = format!("{}.{:02}", cents / 100, cents % 100);
            let parsed = amount(&text).unwrap();
            prop_assert_eq!(parsed.to_string(), text.clone());
            let json = serde_json::to_string(&parsed).unwrap();
            prop_assert_eq!(json, text);
        }
    }
}
