//! The platform's event contract, shared by every service: the [`Envelope`] every event
//! travels in, the payloads, the topic names, and exact money ([`Amount`], [`Currency`]).
//!
//! The contract is written down for users, with examples, in `docs/events.md`.

pub mod envelope;
pub mod money;
pub mod payloads;
pub mod topics;

pub use envelope::{DecodeError, Envelope, EventType};
pub use money::{Amount, AmountError, Currency, CurrencyError};
pub use payloads::{OrderCreated, PaymentCompleted, PaymentFailed};
pub use topics::Topics;
