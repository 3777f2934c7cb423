//! Event payloads.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::envelope::{Envelope, Event, EventType};
use crate::money::{Amount, Currency};

/// An order was accepted and stored as `PENDING`. Key: the order id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderCreated {
    pub order_id: Uuid,
    pub amount: Amount,
    pub currency: Currency,
}

impl OrderCreated {
    /// The event for a new order; its correlation id is the order's id.
    pub fn event(order_id: Uuid, amount: Amount, currency: Currency) -> Envelope<Self> {
        Envelope::new(
            order_id,
            Self {
                order_id,
                amount,
                currency,
            },
        )
    }
}

impl Event for OrderCreated {
    const TYPE: EventType = EventType::OrderCreated;

    fn order_id(&self) -> Uuid {
        self.order_id
    }
}

/// An order was paid. Key: the order id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaymentCompleted {
    pub payment_id: Uuid,
    pub order_id: Uuid,
    pub amount: Amount,
    pub currency: Currency,
}

impl Event for PaymentCompleted {
    const TYPE: EventType = EventType::PaymentCompleted;

    fn order_id(&self) -> Uuid {
        self.order_id
    }
}

/// A charge was declined: the payment is stored as failed and the order cannot be paid.
/// Key: the order id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaymentFailed {
    pub payment_id: Uuid,
    pub order_id: Uuid,
    pub amount: Amount,
    pub currency: Currency,
    /// The gateway's reason, for people.
    pub reason: String,
}

impl Event for PaymentFailed {
    const TYPE: EventType = EventType::PaymentFailed;

    fn order_id(&self) -> Uuid {
        self.order_id
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Envelope;

    #[test]
    fn an_order_created_event_round_trips_through_json_exactly() {
        let order_id = Uuid::now_v7();
        let event = OrderCreated::event(order_id, "222.22".parse().unwrap(), Currency::USD);
        let json = serde_json::to_string(&event).unwrap();
        assert!(json.contains(r#""amount":222.22"#), "{json}");
        assert!(json.contains(r#""event_type":"order.created""#), "{json}");
        let back: Envelope<OrderCreated> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, event);
    }

    #[test]
    fn decoding_refuses_other_types_unknown_versions_and_garbage() {
        let order_id = Uuid::now_v7();
        let event = OrderCreated::event(order_id, "1.00".parse().unwrap(), Currency::USD);
        let bytes = serde_json::to_vec(&event).unwrap();
        let decoded = Envelope::<OrderCreated>::decode(Some(&bytes));
        assert_eq!(decoded.unwrap(), event);

        let wrong = Envelope::<PaymentCompleted>::decode(Some(&bytes));
        assert!(
            matches!(wrong, Err(crate::DecodeError::WrongType { .. })),
            "{wrong:?}"
        );

        let newer = String::from_utf8(bytes.clone())
            .unwrap()
            .replace(r#""schema_version":1"#, r#""schema_version":2"#);
        let newer = Envelope::<OrderCreated>::decode(Some(newer.as_bytes()));
        assert!(
            matches!(
                newer,
                Err(crate::DecodeError::UnsupportedVersion { version: 2, .. })
            ),
            "{newer:?}"
        );

        for garbage in [&b""[..], b"\xff\x00", b"{}", b"[1]", b"null"] {
            assert!(Envelope::<OrderCreated>::decode(Some(garbage)).is_err());
        }
        assert_eq!(
            Envelope::<OrderCreated>::decode(None),
            Err(crate::DecodeError::Empty)
        );
    }

    #[test]
    fn a_consumer_of_several_types_can_read_the_type_first() {
        let event = OrderCreated::event(Uuid::now_v7(), "1.00".parse().unwrap(), Currency::USD);
        let bytes = serde_json::to_vec(&event).unwrap();
        assert_eq!(
            crate::EventType::of(Some(&bytes), "anything"),
            Ok(crate::EventType::OrderCreated)
        );
        assert_eq!(event.key(), event.payload.order_id.to_string());
        assert!(matches!(
            crate::EventType::of(Some(b"{}"), "payment.*"),
            Err(crate::DecodeError::Invalid {
                expected: "payment.*",
                ..
            })
        ));
    }

    #[test]
    fn unknown_fields_are_refused() {
        let json = r#"{"order_id":"0193a3c5-7e4a-7cc2-9a51-3c1f0b6f2d10","amount":1,"currency":"USD","extra":1}"#;
        assert!(serde_json::from_str::<OrderCreated>(json).is_err());
    }
}
