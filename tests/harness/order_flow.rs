//! The flow end to end on real Kafka and PostgreSQL: an accepted order is paid once, and
//! only once, whatever Kafka does — duplicate deliveries, replays from offset 0, a broker
//! that is down, a service that shuts down under load.

use std::time::Duration;

use events::{Currency, Envelope, Topics};
use futures::StreamExt;
use serde_json::Value;
use testkit::{kafka, Record};
use uuid::Uuid;

use crate::helpers::{
    eventually, order_created_records, order_service, payment_service, payment_service_on,
    topic_prefix, until_committed, within, RunningService, MINUTES_5,
};

async fn paid_orders(orders: &RunningService) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM orders WHERE status = 'PAID'")
        .fetch_one(orders.db.pool())
        .await
        .expect("count paid")
}

/// Posts `count` orders, 16 at a time; every one must be accepted.
async fn post_orders(orders: &RunningService, count: usize) -> Vec<String> {
    futures::stream::iter(0..count)
        .map(|i| async move {
            let amount = format!("{}.{:02}", 1 + i % 500, i % 100);
            let response = orders
                .post_raw(
                    format!(r#"{{"amount": {amount}}}"#),
                    "application/json",
                    None,
                )
                .await;
            assert_eq!(response.status(), 201, "order {i}");
            let order: Value = response.json().await.expect("json");
            order["id"].as_str().expect("id").to_owned()
        })
        .buffer_unordered(16)
        .collect()
        .await
}

#[tokio::test]
async fn every_accepted_order_is_paid_exactly_once() {
    within(MINUTES_5, async {
        let kafka = kafka::broker().await.expect("kafka");
        let prefix = topic_prefix();
        let orders = order_service(kafka.bootstrap(), &prefix).await;
        let payments = payment_service(kafka.bootstrap(), &prefix).await;

        let ids = post_orders(&orders, 300).await;
        eventually(Duration::from_secs(120), "all 300 orders PAID", || async {
            paid_orders(&orders).await == 300
        })
        .await;

        assert_eq!(payments.count("payments").await, 300);
        let distinct: i64 = sqlx::query_scalar("SELECT count(DISTINCT order_id) FROM payments")
            .fetch_one(payments.db.pool())
            .await
            .expect("distinct");
        assert_eq!(distinct, 300, "one payment per order");
        let topics = Topics::with_prefix(&prefix);
        let client = kafka.client();
        assert_eq!(
            client
                .record_count(&topics.order_created)
                .await
                .expect("count"),
            300
        );
        assert_eq!(
            client
                .record_count(&topics.payment_completed)
                .await
                .expect("count"),
            300
        );

        let spec: Value = payments
            .get("/api-docs/openapi.json")
            .await
            .json()
            .await
            .expect("spec");
        assert!(spec["paths"]["/payments/{order_id}"]["get"].is_object());
        let payment: Value = payments
            .get(&format!("/payments/{}", ids[0]))
            .await
            .json()
            .await
            .expect("json");
        let order: Value = orders
            .get(&format!("/orders/{}", ids[0]))
            .await
            .json()
            .await
            .expect("json");
        assert_eq!(order["status"], "PAID");
        assert_eq!(payment["amount"], order["amount"]);
        assert_eq!(payment["order_id"], order["id"]);
    })
    .await;
}

#[tokio::test]
async fn duplicated_and_replayed_events_pay_each_order_once() {
    within(MINUTES_5, async {
        let kafka = kafka::broker().await.expect("kafka");
        let client = kafka.client();
        let prefix = topic_prefix();
        let topics = Topics::with_prefix(&prefix);
        let payments = payment_service(kafka.bootstrap(), &prefix).await;

        // Each event delivered twice, as a producer retry or a relay crash would do.
        let producer = client.producer().expect("producer");
        for record in order_created_records(50) {
            for _ in 0..2 {
                kafka::produce_with(&producer, &topics.order_created, &record)
                    .await
                    .expect("produce");
            }
        }
        until_committed(
            client,
            "payment-service",
            &topics.order_created,
            100,
            Duration::from_secs(60),
            "all 100 deliveries consumed",
        )
        .await;
        assert_eq!(payments.count("payments").await, 50);
        eventually(
            Duration::from_secs(30),
            "50 payment.completed published",
            || async { payments.count("outbox WHERE published_at IS NULL").await == 0 },
        )
        .await;
        assert_eq!(
            client
                .record_count(&topics.payment_completed)
                .await
                .expect("count"),
            50
        );

        // The whole topic again, from offset 0, to a new consumer group on the same data.
        let db = payments.into_database().await;
        let mut config = payment_service::Config::for_test(&db.url, kafka.bootstrap(), &prefix);
        config.consumer_group = "payment-service-replay".into();
        let replay = crate::helpers::running_payment_service(db, config).await;
        until_committed(
            client,
            "payment-service-replay",
            &topics.order_created,
            100,
            Duration::from_secs(60),
            "the replay consumed the topic",
        )
        .await;
        assert_eq!(replay.count("payments").await, 50, "no second payment");
        assert_eq!(
            replay.count("outbox").await,
            50,
            "no second payment.completed"
        );
    })
    .await;
}

#[tokio::test]
async fn orders_posted_while_kafka_is_down_are_accepted_and_paid_once_it_returns() {
    within(MINUTES_5, async {
        let broker = kafka::KafkaBroker::dedicated().await.expect("own broker");
        let prefix = topic_prefix();
        let mut orders = order_service(broker.bootstrap(), &prefix).await;
        let mut payments = payment_service(broker.bootstrap(), &prefix).await;

        broker.stop().await.expect("stop the broker");
        post_orders(&orders, 20).await;
        assert_eq!(paid_orders(&orders).await, 0);

        broker.start().await.expect("start the broker");
        eventually(Duration::from_secs(120), "all 20 orders PAID", || async {
            paid_orders(&orders).await == 20
        })
        .await;
        assert_eq!(payments.count("payments").await, 20);
        // Stop both while their broker is still there.
        orders.shut_down().await;
        payments.shut_down().await;
    })
    .await;
}

#[tokio::test]
async fn a_shutdown_under_load_commits_exactly_what_it_processed_and_a_restart_finishes() {
    within(MINUTES_5, async {
        let kafka = kafka::broker().await.expect("kafka");
        let client = kafka.client();
        let prefix = topic_prefix();
        let topics = Topics::with_prefix(&prefix);
        client
            .create_topic(&topics.order_created, 6, 1)
            .await
            .expect("topic");
        let producer = client.producer().expect("producer");
        for record in order_created_records(3000) {
            kafka::produce_with(&producer, &topics.order_created, &record)
                .await
                .expect("produce");
        }

        let mut payments = payment_service(kafka.bootstrap(), &prefix).await;
        eventually(Duration::from_secs(60), "some payments made", || async {
            payments.count("payments").await >= 200
        })
        .await;
        payments.shut_down().await;

        let processed = payments.count("processed_events").await;
        let committed = client
            .committed_total("payment-service", &topics.order_created)
            .await
            .expect("committed offsets");
        assert_eq!(
            committed, processed,
            "every processed message is committed, and nothing else"
        );

        let restarted =
            payment_service_on(payments.into_database().await, kafka.bootstrap(), &prefix).await;
        eventually(Duration::from_secs(120), "all 3000 orders paid", || async {
            restarted.count("payments").await == 3000
        })
        .await;
        eventually(
            Duration::from_secs(30),
            "every payment.completed published",
            || async { restarted.count("outbox WHERE published_at IS NULL").await == 0 },
        )
        .await;
        assert_eq!(
            client
                .record_count(&topics.payment_completed)
                .await
                .expect("count"),
            3000
        );
    })
    .await;
}

#[tokio::test]
async fn a_payment_delivered_twice_and_replayed_marks_its_order_paid_once() {
    within(MINUTES_5, async {
        let kafka = kafka::broker().await.expect("kafka");
        let client = kafka.client();
        let prefix = topic_prefix();
        let orders = order_service(kafka.bootstrap(), &prefix).await;
        let order: Value = orders
            .post_raw(r#"{"amount": 12.34}"#, "application/json", None)
            .await
            .json()
            .await
            .expect("json");
        let order_id: Uuid = order["id"].as_str().expect("id").parse().expect("uuid");

        let event = Envelope::new(
            order_id,
            events::PaymentCompleted {
                payment_id: Uuid::now_v7(),
                order_id,
                amount: "12.34".parse().expect("amount"),
                currency: Currency::USD,
            },
        );
        let record =
            Record::new(serde_json::to_vec(&event).expect("json")).key(order_id.to_string());
        let producer = client.producer().expect("producer");
        let topic = orders.topics.payment_completed.clone();
        kafka::produce_with(&producer, &topic, &record)
            .await
            .expect("produce");
        eventually(Duration::from_secs(60), "the order PAID", || async {
            paid_orders(&orders).await == 1
        })
        .await;
        let first = paid_at(&orders).await;

        // The same event again, then the whole topic again under a new consumer group.
        kafka::produce_with(&producer, &topic, &record)
            .await
            .expect("produce");
        until_committed(
            client,
            "order-service",
            &topic,
            2,
            Duration::from_secs(60),
            "the duplicate consumed",
        )
        .await;
        let db = orders.into_database().await;
        let mut config = order_service::Config::for_test(&db.url, kafka.bootstrap(), &prefix);
        config.consumer_group = "order-service-replay".into();
        let replay = crate::helpers::running_order_service(db, config).await;
        until_committed(
            client,
            "order-service-replay",
            &topic,
            2,
            Duration::from_secs(60),
            "the replay consumed the topic",
        )
        .await;

        assert_eq!(
            replay.count("processed_events").await,
            1,
            "one event, recorded once"
        );
        assert_eq!(paid_orders(&replay).await, 1);
        assert_eq!(
            paid_at(&replay).await,
            first,
            "one PENDING -> PAID transition"
        );
    })
    .await;
}

async fn paid_at(orders: &RunningService) -> chrono::DateTime<chrono::Utc> {
    sqlx::query_scalar("SELECT paid_at FROM orders WHERE paid_at IS NOT NULL")
        .fetch_one(orders.db.pool())
        .await
        .expect("paid_at")
}
