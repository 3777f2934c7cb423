//! The platform's event contract, shared by every service: the [`Envelope`] every event
//! travels in, the payloads (each an [`Event`] that declares its own type and key), the
//! topic names and the one rule that picks an event's topic ([`Topics::for_event`]), the
//! Kafka headers every event carries ([`headers`]), and exact money ([`Amount`],
//! [`Currency`]), and the trace context that follows one order across services
//! ([`TraceContext`]).
//!
//! The contract is written down for users, with examples, in `docs/events.md`.

pub mod envelope;
pub mod headers;
pub mod money;
pub mod payloads;
pub mod spans;
pub mod topics;
pub mod trace;

pub use envelope::{DecodeError, Envelope, Event, EventType};
pub use money::{Amount, AmountError, Currency, CurrencyError};
pub use payloads::{OrderCreated, PaymentCompleted, PaymentFailed};
pub use topics::Topics;
pub use trace::TraceContext;
