//! The order, as the rest of the service sees it: already valid.

use chrono::{DateTime, Utc};
use events::{Amount, Currency};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

/// Where an order is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderStatus {
    /// Stored; `order.created` is on its way to payment.
    Pending,
    /// `payment.completed` arrived.
    Paid,
    /// `payment.failed` arrived: the charge was declined (the saga's compensating step).
    PaymentFailed,
}

impl OrderStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Pending => "PENDING",
            OrderStatus::Paid => "PAID",
            OrderStatus::PaymentFailed => "PAYMENT_FAILED",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "PENDING" => Some(OrderStatus::Pending),
            "PAID" => Some(OrderStatus::Paid),
            "PAYMENT_FAILED" => Some(OrderStatus::PaymentFailed),
            _ => None,
        }
    }
}

/// A valid request for a new order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOrder {
    pub amount: Amount,
    pub currency: Currency,
}

impl NewOrder {
    /// What makes two requests "the same" for an idempotency key.
    pub fn fingerprint(&self) -> String {
        format!("{} {}", self.amount, self.currency)
    }
}

/// A stored order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Order {
    pub id: Uuid,
    /// Exact decimal with two places, written as a JSON number.
    #[schema(value_type = f64, example = 222.22)]
    pub amount: Amount,
    #[schema(value_type = String, example = "USD")]
    pub currency: Currency,
    pub status: OrderStatus,
    pub created_at: DateTime<Utc>,
}
