//! The payment, as the rest of the service sees it — and **where the payment is
//! decided**: a gateway's [`Charge`] (approved or declined) becomes a [`Payment`]
//! (`COMPLETED` or `FAILED`), and a payment becomes its event (`payment.completed` or
//! `payment.failed`).

use chrono::{DateTime, Utc};
use events::{
    Amount, Currency, Envelope, OrderCreated, PaymentCompleted, PaymentFailed, TraceContext,
};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

/// The longest decline reason kept, in characters.
pub const MAX_REASON_CHARS: usize = 500;
/// The longest gateway reference kept, in characters.
pub const MAX_REFERENCE_CHARS: usize = 200;

/// Where a payment ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PaymentStatus {
    /// The gateway approved the charge.
    Completed,
    /// The gateway declined the charge; the order is never charged again.
    Failed,
}

impl PaymentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentStatus::Completed => "COMPLETED",
            PaymentStatus::Failed => "FAILED",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "COMPLETED" => Some(PaymentStatus::Completed),
            "FAILED" => Some(PaymentStatus::Failed),
            _ => None,
        }
    }
}

/// The gateway's answer to a charge it processed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Charge {
    Approved { reference: String },
    Declined { reason: String },
}

impl Charge {
    /// An approval, its reference cleaned and bounded ([`clean`]).
    pub fn approved(reference: &str) -> Self {
        Charge::Approved {
            reference: clean(reference, MAX_REFERENCE_CHARS),
        }
    }

    /// A decline, its reason cleaned and bounded ([`clean`]); never empty.
    pub fn declined(reason: &str) -> Self {
        let reason = clean(reason, MAX_REASON_CHARS);
        Charge::Declined {
            reason: if reason.is_empty() {
                "declined".into()
            } else {
                reason
            },
        }
    }

    /// The status of the payment this charge makes.
    pub fn status(&self) -> PaymentStatus {
        match self {
            Charge::Approved { .. } => PaymentStatus::Completed,
            Charge::Declined { .. } => PaymentStatus::Failed,
        }
    }

    /// The gateway's reference of an approved charge.
    pub fn reference(&self) -> Option<&str> {
        match self {
            Charge::Approved { reference } => Some(reference),
            Charge::Declined { .. } => None,
        }
    }

    /// The gateway's reason for a declined charge.
    pub fn decline_reason(&self) -> Option<&str> {
        match self {
            Charge::Approved { .. } => None,
            Charge::Declined { reason } => Some(reason),
        }
    }
}

/// Text from the gateway as the platform keeps it: control characters (U+0000 among
/// them, which PostgreSQL cannot store) removed, surrounding space trimmed, at most
/// `limit` characters.
pub fn clean(text: &str, limit: usize) -> String {
    let cleaned: String = text
        .chars()
        .filter(|c| !c.is_control())
        .take(limit)
        .collect();
    cleaned.trim().to_owned()
}

/// An order charged by the gateway, to be stored as a payment.
#[derive(Debug, Clone)]
pub struct NewPayment<'a> {
    /// The event that asked for it.
    pub event: &'a Envelope<OrderCreated>,
    pub charge: Charge,
    /// The trace the order came with, continued by its payment event.
    pub trace: Option<&'a TraceContext>,
}

/// A stored payment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Payment {
    pub id: Uuid,
    pub order_id: Uuid,
    /// Exact decimal with two places, written as a JSON number.
    #[schema(value_type = f64, example = 222.22)]
    pub amount: Amount,
    #[schema(value_type = String, example = "USD")]
    pub currency: Currency,
    /// `COMPLETED`, or `FAILED` when the gateway declined the charge.
    pub status: PaymentStatus,
    /// The gateway's reason, for a declined charge.
    pub decline_reason: Option<String>,
    pub created_at: DateTime<Utc>,
}

impl Payment {
    /// Queues this payment's event — `payment.completed`, or `payment.failed` with the
    /// decline reason — carrying the correlation id of the order's event and continuing
    /// `trace`.
    pub fn queue_event(
        &self,
        events: &mut outbox::Events,
        correlation_id: Uuid,
        trace: Option<&TraceContext>,
    ) -> Result<(), serde_json::Error> {
        let (payment_id, order_id, amount, currency) =
            (self.id, self.order_id, self.amount, self.currency);
        match self.status {
            PaymentStatus::Failed => {
                let reason = self.decline_reason.clone().unwrap_or_default();
                let failed = PaymentFailed {
                    payment_id,
                    order_id,
                    amount,
                    currency,
                    reason,
                };
                events.push(&Envelope::new(correlation_id, failed), trace)
            }
            PaymentStatus::Completed => {
                let completed = PaymentCompleted {
                    payment_id,
                    order_id,
                    amount,
                    currency,
                };
                events.push(&Envelope::new(correlation_id, completed), trace)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_text_is_cleaned_and_bounded() {
        assert_eq!(
            Charge::declined("insufficient\u{0} funds\n"),
            Charge::Declined {
                reason: "insufficient funds".into()
            }
        );
        assert_eq!(
            Charge::declined("\u{0}\u{7}"),
            Charge::Declined {
                reason: "declined".into()
            }
        );
        let long = "x".repeat(10_000);
        assert_eq!(
            Charge::approved(&long).reference().map(str::len),
            Some(MAX_REFERENCE_CHARS)
        );
        assert_eq!(
            Charge::declined(&long).decline_reason().map(str::len),
            Some(MAX_REASON_CHARS)
        );
    }
}
