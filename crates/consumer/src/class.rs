//! Every failure class, in one place: the `dlt-error-class` header of dead letters, the
//! `class` label of `consumer_retries_total` and `consumer_dead_letters_total`, and the
//! keys of [`crate::Stats`]. `docs/dead-letters.md` explains each one.

use events::DecodeError;

use crate::Failure;

/// No value at all.
pub const POISON_EMPTY: &str = "poison.empty";
/// Not a valid event: not JSON, a schema violation, a missing field, a bad amount.
pub const POISON_INVALID: &str = "poison.invalid";
/// An event of another type than the consumer reads.
pub const POISON_WRONG_TYPE: &str = "poison.wrong-type";
/// A schema version this code does not read.
pub const POISON_UNSUPPORTED_VERSION: &str = "poison.unsupported-version";
/// A payment event for an order the service does not have.
pub const POISON_UNKNOWN_ORDER: &str = "poison.unknown-order";
/// A payment event with another amount or currency than its order's.
pub const POISON_AMOUNT_MISMATCH: &str = "poison.amount-mismatch";

/// The payment gateway failed a charge in a way that says nothing about the order (no
/// connection, a timeout, `5xx`, `429`, `401`, `403`, a `404` of its endpoint). Dead
/// letters carry it only after the gateway answered other charges between each of the
/// order's attempts, and said it has no charge for the order.
pub const GATEWAY_UNAVAILABLE: &str = "gateway.unavailable";
/// The payment gateway refused the order's data (`400`, `422`).
pub const GATEWAY_REFUSED: &str = "gateway.refused";
/// A request with the order's key was in progress at the gateway (`409`): the message
/// waits; never a dead letter's class.
pub const GATEWAY_IN_PROGRESS: &str = "gateway.in-progress";
/// The gateway's circuit breaker was open: the message waits; never a dead letter's class.
pub const GATEWAY_BREAKER_OPEN: &str = "gateway.breaker-open";

/// SQLSTATE class 22: a value the database will not store.
pub const DATABASE_DATA_EXCEPTION: &str = "database.data-exception";
/// SQLSTATE class 23: an integrity violation the code does not expect.
pub const DATABASE_INTEGRITY_VIOLATION: &str = "database.integrity-violation";
/// SQLSTATE class 54: a program limit exceeded.
pub const DATABASE_LIMIT_EXCEEDED: &str = "database.limit-exceeded";
/// A value that cannot even be encoded for the database.
pub const DATABASE_UNENCODABLE: &str = "database.unencodable";

/// The class of a message that does not decode.
pub fn of_decode_error(error: &DecodeError) -> &'static str {
    match error {
        DecodeError::Empty => POISON_EMPTY,
        DecodeError::Invalid { .. } => POISON_INVALID,
        DecodeError::WrongType { .. } => POISON_WRONG_TYPE,
        DecodeError::UnsupportedVersion { .. } => POISON_UNSUPPORTED_VERSION,
    }
}

impl Failure {
    /// A message that does not decode: poison, with its class and the decoder's words.
    pub fn poison(error: &DecodeError) -> Self {
        Self::new(of_decode_error(error), error.to_string())
    }
}
