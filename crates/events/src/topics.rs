//! Topic names. Every topic is keyed by order id, so each order's events stay in order.

pub const ORDER_CREATED: &str = "order.created";
pub const PAYMENT_COMPLETED: &str = "payment.completed";

/// The dead-letter topic of `topic`: `order.created` → `order.created.DLT`.
pub fn dead_letter(topic: &str) -> String {
    format!("{topic}.DLT")
}
