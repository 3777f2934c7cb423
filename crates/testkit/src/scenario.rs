//! What many tests, benchmarks and drills need in the same words: events as
//! order-service publishes them, and waiting for something to become true.

use std::future::Future;
use std::time::{Duration, Instant};

use events::{Currency, OrderCreated};
use uuid::Uuid;

use crate::Record;

/// `count` distinct `order.created` events as order-service publishes them, keyed by
/// order id, with amounts that vary (1.00 to 1000.99).
pub fn order_created(count: usize) -> Vec<Record> {
    (0..count)
        .map(|i| {
            let order_id = Uuid::now_v7();
            let amount = format!("{}.{:02}", 1 + i % 1000, i % 100)
                .parse()
                .expect("a valid amount");
            let event = OrderCreated::event(order_id, amount, Currency::USD);
            Record::new(serde_json::to_vec(&event).expect("json")).key(order_id.to_string())
        })
        .collect()
}

/// Polls `check` every 200 ms until it holds, or panics after `limit` saying `what`.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < limit, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
