//! Topic names. Every topic is keyed by order id, so each order's events stay in order.
//!
//! A deployment may put a prefix before every name (`TOPIC_PREFIX`), so that several
//! environments — or tests running in parallel on one broker — share a cluster safely.

use crate::EventType;

pub const ORDER_CREATED: &str = "order.created";
pub const PAYMENT_COMPLETED: &str = "payment.completed";
pub const PAYMENT_FAILED: &str = "payment.failed";

/// The topic names a deployment uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    pub order_created: String,
    pub payment_completed: String,
    pub payment_failed: String,
}

impl Topics {
    /// `prefix` + each standard name; an empty prefix gives the standard names.
    pub fn with_prefix(prefix: &str) -> Self {
        Self {
            order_created: format!("{prefix}{ORDER_CREATED}"),
            payment_completed: format!("{prefix}{PAYMENT_COMPLETED}"),
            payment_failed: format!("{prefix}{PAYMENT_FAILED}"),
        }
    }

    /// Where events of `event_type` are published: the one rule, used by everything that
    /// publishes.
    pub fn for_event(&self, event_type: EventType) -> &str {
        match event_type {
            EventType::OrderCreated => &self.order_created,
            EventType::PaymentCompleted => &self.payment_completed,
            EventType::PaymentFailed => &self.payment_failed,
        }
    }

    /// Every topic of the platform.
    pub fn all(&self) -> [&str; 3] {
        [
            &self.order_created,
            &self.payment_completed,
            &self.payment_failed,
        ]
    }
}

impl Default for Topics {
    fn default() -> Self {
        Self::with_prefix("")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_goes_before_every_topic_name() {
        let topics = Topics::with_prefix("staging.");
        assert_eq!(
            topics.for_event(EventType::OrderCreated),
            "staging.order.created"
        );
        assert_eq!(topics.payment_completed, "staging.payment.completed");
        assert_eq!(Topics::default().order_created, "order.created");
    }
}
