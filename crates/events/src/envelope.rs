//! The envelope every event travels in.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The kinds of event, with the schema version this code writes and understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventType {
    #[serde(rename = "order.created")]
    OrderCreated,
    #[serde(rename = "payment.completed")]
    PaymentCompleted,
    #[serde(rename = "payment.failed")]
    PaymentFailed,
}

impl EventType {
    /// The name in the envelope's `event_type` (and the standard topic name).
    pub fn name(self) -> &'static str {
        match self {
            EventType::OrderCreated => crate::topics::ORDER_CREATED,
            EventType::PaymentCompleted => crate::topics::PAYMENT_COMPLETED,
            EventType::PaymentFailed => crate::topics::PAYMENT_FAILED,
        }
    }

    /// The schema version this code writes.
    pub fn schema_version(self) -> u32 {
        1
    }
}

/// A payload type of the platform: it declares its own event type, so a payload can
/// never travel under another type's tag, and its record key.
pub trait Event: Serialize + serde::de::DeserializeOwned {
    /// The type tag every envelope of this payload carries.
    const TYPE: EventType;

    /// The Kafka record key: the order id, so that each order's events stay in order.
    fn order_id(&self) -> Uuid;
}

/// One event: who it is, what it is, when and why it happened, and its payload.
///
/// ```json
/// {
///   "event_id": "0193a3c5-7e4a-7cc2-9a51-3c1f0b6f2d10",
///   "event_type": "order.created",
///   "schema_version": 1,
///   "occurred_at": "2026-11-25T06:00:00.000000Z",
///   "correlation_id": "0193a3c5-7e4a-7cc2-9a51-3c1f0b6f2d0f",
///   "payload": { "order_id": "…", "amount": 222.22, "currency": "USD" }
/// }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope<P> {
    /// Unique per event; consumers remember it to process each event once.
    pub event_id: Uuid,
    pub event_type: EventType,
    /// Version of the payload's schema, so a consumer can refuse one it does not know.
    pub schema_version: u32,
    pub occurred_at: DateTime<Utc>,
    /// The same for every event caused by one request (the order's id for the order flow).
    pub correlation_id: Uuid,
    pub payload: P,
}

impl<P: Event> Envelope<P> {
    /// A new event of the payload's type, with a time-ordered id, stamped now.
    pub fn new(correlation_id: Uuid, payload: P) -> Self {
        Self {
            event_id: Uuid::now_v7(),
            event_type: P::TYPE,
            schema_version: P::TYPE.schema_version(),
            occurred_at: Utc::now(),
            correlation_id,
            payload,
        }
    }

    /// The Kafka record key of this event.
    pub fn key(&self) -> String {
        self.payload.order_id().to_string()
    }
}

/// Why a message is not an event this code can process: it is poison, retrying will not
/// help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("the message has no payload")]
    Empty,
    #[error("not a valid {expected} event: {reason}")]
    Invalid {
        expected: &'static str,
        reason: String,
    },
    #[error("expected a {expected} event, got {got}")]
    WrongType {
        expected: &'static str,
        got: &'static str,
    },
    #[error(
        "{event_type} schema version {version} is not supported (this code reads {supported})"
    )]
    UnsupportedVersion {
        event_type: &'static str,
        version: u32,
        supported: u32,
    },
}

/// The type and version of an event, read before its payload.
#[derive(Deserialize)]
struct Head {
    event_type: EventType,
    schema_version: u32,
}

fn read_head<'b>(
    bytes: Option<&'b [u8]>,
    expected: &'static str,
) -> Result<(&'b [u8], Head), DecodeError> {
    let bytes = bytes.filter(|b| !b.is_empty()).ok_or(DecodeError::Empty)?;
    let head: Head = serde_json::from_slice(bytes).map_err(|e| DecodeError::Invalid {
        expected,
        reason: e.to_string(),
    })?;
    Ok((bytes, head))
}

impl EventType {
    /// The type an event's bytes declare, for a consumer of several types that chooses
    /// the payload by it. `expected` names what the consumer reads, for the error.
    pub fn of(bytes: Option<&[u8]>, expected: &'static str) -> Result<Self, DecodeError> {
        read_head(bytes, expected).map(|(_, head)| head.event_type)
    }
}

impl<P: Event> Envelope<P> {
    /// Reads an event of `P`'s type from a message's bytes, refusing anything else.
    pub fn decode(bytes: Option<&[u8]>) -> Result<Self, DecodeError> {
        let expected = P::TYPE;
        // The type and version first, so a newer version is reported as such rather than
        // as a payload that does not parse.
        let (bytes, head) = read_head(bytes, expected.name())?;
        if head.event_type != expected {
            return Err(DecodeError::WrongType {
                expected: expected.name(),
                got: head.event_type.name(),
            });
        }
        if head.schema_version != expected.schema_version() {
            return Err(DecodeError::UnsupportedVersion {
                event_type: expected.name(),
                version: head.schema_version,
                supported: expected.schema_version(),
            });
        }
        serde_json::from_slice(bytes).map_err(|e| DecodeError::Invalid {
            expected: expected.name(),
            reason: e.to_string(),
        })
    }
}
