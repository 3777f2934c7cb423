//! No order stays `PENDING` unnoticed: `orders_pending_oldest_age_seconds` in
//! order-service's `/metrics`, and `pending-orders`, which lists orders pending for longer
//! than an age with what every place knows of them.

use std::time::Duration;

use kafka::dead_letter::headers;
use serde_json::Value;

use crate::helpers::{
    eventually, fresh_database, order_service, produce_all, topic_prefix, within, MINUTES_2,
};

#[tokio::test]
async fn an_order_left_pending_is_in_the_metrics_and_listed_with_its_dead_letter() {
    within(MINUTES_2, async {
        let kafka = testkit::kafka::broker().await.expect("kafka");
        let prefix = topic_prefix();
        // No payment-service: nothing pays the orders.
        let orders = order_service(kafka.bootstrap(), &prefix).await;
        let payments_db = fresh_database().await;
        payment_service::migrate(payments_db.pool())
            .await
            .expect("migrations");
        let mut ids = Vec::new();
        for amount in ["12.00", "13.00"] {
            let created: Value = orders
                .post_raw(
                    format!(r#"{{"amount": {amount}}}"#),
                    "application/json",
                    None,
                )
                .await
                .json()
                .await
                .expect("order");
            ids.push(created["id"].as_str().expect("id").to_owned());
        }
        // The first one's event was dead-lettered by payment-service, say.
        let topics = orders.topics.clone();
        let event = kafka
            .client()
            .read_topic(&topics.order_created, 2, MINUTES_2)
            .await
            .expect("order.created");
        let first = event
            .iter()
            .find(|r| r.key_text() == ids[0])
            .expect("the first order's event")
            .clone()
            .header(headers::ERROR_CLASS, "gateway.unavailable")
            .header(
                headers::ERROR_MESSAGE,
                "payment gateway unavailable: answered 500",
            );
        let dlt = kafka::dead_letter_topic(&topics.order_created);
        produce_all(kafka.client(), &dlt, &[first]).await;

        let metrics = orders.get("/metrics").await.text().await.expect("metrics");
        assert!(
            metrics.contains("orders_pending_oldest_age_seconds"),
            "{metrics}"
        );
        eventually(MINUTES_2, "both orders pending for a second", || async {
            order_service::store::oldest_pending_age(orders.db.pool())
                .await
                .expect("age")
                .is_some_and(|age| age > 1.0)
        })
        .await;

        let sources = pending_orders::Sources {
            orders: orders.db.pool(),
            payments: payments_db.pool(),
            kafka: kafka.connection(),
            topics: &topics,
            read_timeout: Duration::from_secs(30),
        };
        let findings = pending_orders::find(&sources, Duration::from_secs(1), 10, |_| {})
            .await
            .expect("findings");
        let found: Vec<String> = findings.iter().map(|f| f.order.id.to_string()).collect();
        assert_eq!(found, ids, "both, oldest first");
        let dead = &findings[0];
        assert_eq!(dead.dead_letters.len(), 1);
        assert_eq!(dead.dead_letters[0].class, "gateway.unavailable");
        assert!(
            dead.verdict().contains("dead-lettered"),
            "{}",
            dead.verdict()
        );
        assert!(dead.payment.is_none());
        let waiting = &findings[1];
        assert!(waiting.dead_letters.is_empty());
        assert_eq!(waiting.order_events.len(), 1);
        assert!(
            waiting.order_events[0].published_at.is_some(),
            "its order.created was published"
        );
        assert!(
            waiting.verdict().contains("is payment-service consuming"),
            "{}",
            waiting.verdict()
        );

        // Younger than the age asked for: not listed.
        let none = pending_orders::find(&sources, Duration::from_secs(3600), 10, |_| {})
            .await
            .expect("findings");
        assert!(none.is_empty());
    })
    .await;
}
