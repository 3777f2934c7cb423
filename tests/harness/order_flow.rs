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
    eventually, order_service, payment_service, payment_service_on, topic_prefix, until_committed,
    within, RunningService, MINUTES_5, SECONDS_30,
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
        for record in testkit::scenario::order_created(50) {
            for _ in 0..2 {
                kafka::produce_with(&producer, &topics.order_created, &record)
                    .await
                    .expect("produce");
            }
        }
        until_committed(
            client,
            &payments.group,
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
        let mut config = testkit::services::test_config::<payment_service::Config>(
            &db.url,
            kafka.bootstrap(),
            &prefix,
        );
        config.service.consumer_group = format!("{prefix}payment-service-replay");
        let replay = crate::helpers::running_payment_service(db, config).await;
        until_committed(
            client,
            &replay.group,
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
        // Kafka is reported down, and the instance stays ready: the outbox keeps
        // POST /orders working, so a load balancer must not take it out of rotation.
        let (status, kafka) = orders.until_component("kafka", false, SECONDS_30).await;
        assert_eq!(status, 200, "ready while Kafka is down: {kafka}");
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
        let records = testkit::scenario::order_created(3000);
        let written = client
            .produce_all(&topics.order_created, &records)
            .await
            .expect("produce");
        // Where each event went, by its id.
        let place: std::collections::HashMap<Uuid, (i32, i64)> = records
            .iter()
            .zip(written)
            .map(|(record, place)| {
                let event: Value =
                    serde_json::from_slice(record.payload.as_deref().unwrap_or_default())
                        .expect("event");
                let id = event["event_id"]
                    .as_str()
                    .expect("id")
                    .parse()
                    .expect("uuid");
                (id, place)
            })
            .collect();

        let mut payments = payment_service(kafka.bootstrap(), &prefix).await;
        eventually(Duration::from_secs(60), "some payments made", || async {
            payments.count("payments").await >= 200
        })
        .await;
        payments.shut_down().await;

        // Partition by partition: the events processed are exactly those before the
        // committed offset — nothing processed is left uncommitted, nothing unprocessed
        // committed. A sum over partitions could hide one behind the other.
        let processed: Vec<Uuid> = sqlx::query_scalar("SELECT event_id FROM processed_events")
            .fetch_all(payments.db.pool())
            .await
            .expect("processed");
        let committed = client
            .committed_offsets(&payments.group, &topics.order_created)
            .await
            .expect("committed offsets");
        let mut processed_at: std::collections::BTreeMap<i32, Vec<i64>> = Default::default();
        for id in &processed {
            let (partition, offset) = place[id];
            processed_at.entry(partition).or_default().push(offset);
        }
        assert_eq!(committed.len(), 6);
        for (partition, next) in &committed {
            let mut offsets = processed_at.remove(partition).unwrap_or_default();
            offsets.sort_unstable();
            assert_eq!(
                offsets,
                (0..*next).collect::<Vec<i64>>(),
                "partition {partition}: processed exactly what is committed"
            );
        }
        assert!(
            processed_at.is_empty(),
            "processed on no committed partition"
        );
        assert!(
            (processed.len() as i64) < 3000,
            "the shutdown landed under load, not after the end"
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
            &orders.group,
            &topic,
            2,
            Duration::from_secs(60),
            "the duplicate consumed",
        )
        .await;
        let db = orders.into_database().await;
        let mut config = testkit::services::test_config::<order_service::Config>(
            &db.url,
            kafka.bootstrap(),
            &prefix,
        );
        config.service.consumer_group = format!("{prefix}order-service-replay");
        let replay = crate::helpers::running_order_service(db, config).await;
        until_committed(
            client,
            &replay.group,
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

#[tokio::test]
async fn duplicated_and_replayed_events_ask_the_remote_gateway_once_per_order() {
    within(MINUTES_5, async {
        let kafka = kafka::broker().await.expect("kafka");
        let client = kafka.client();
        let prefix = topic_prefix();
        let topics = Topics::with_prefix(&prefix);
        let gateway = crate::gateway_double::gateway().await;
        crate::gateway_double::answer_charges(&gateway, crate::gateway_double::approved()).await;
        let payments =
            crate::gateway_double::payment_service_through(&gateway, kafka.bootstrap(), &prefix)
                .await;

        // Each event delivered twice, as a producer retry or a relay crash would do.
        let records = testkit::scenario::order_created(50);
        let twice: Vec<Record> = records
            .iter()
            .flat_map(|r| [r.clone(), r.clone()])
            .collect();
        client
            .produce_all(&topics.order_created, &twice)
            .await
            .expect("produce");
        until_committed(
            client,
            &payments.group,
            &topics.order_created,
            100,
            Duration::from_secs(60),
            "all 100 deliveries consumed",
        )
        .await;
        assert_eq!(
            crate::gateway_double::charges_per_order(&gateway, &records).await,
            vec![1; 50],
            "one charge request per order"
        );
        assert_eq!(payments.count("payments").await, 50);

        // The whole topic again, from offset 0, to a new consumer group on the same data:
        // the orders already paid are not charged again.
        let db = payments.into_database().await;
        let mut config =
            crate::helpers::payment_config(&db, kafka.bootstrap(), &prefix, Some(&gateway.uri()));
        config.service.consumer_group = format!("{prefix}payment-service-replay");
        let replay = crate::helpers::running_payment_service(db, config).await;
        until_committed(
            client,
            &replay.group,
            &topics.order_created,
            100,
            Duration::from_secs(60),
            "the replay consumed the topic",
        )
        .await;
        assert_eq!(
            crate::gateway_double::charges_per_order(&gateway, &records).await,
            vec![1; 50],
            "no order charged again"
        );
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
async fn a_payment_event_for_an_unknown_order_or_another_amount_is_poison_and_changes_nothing() {
    within(MINUTES_5, async {
        let kafka = kafka::broker().await.expect("kafka");
        let client = kafka.client();
        let prefix = topic_prefix();
        let orders = order_service(kafka.bootstrap(), &prefix).await;
        let order: Value = orders
            .post_raw(
                r#"{"amount": 20.00, "currency": "EUR"}"#,
                "application/json",
                None,
            )
            .await
            .json()
            .await
            .expect("json");
        let order_id: Uuid = order["id"].as_str().expect("id").parse().expect("uuid");
        let payment = |order_id: Uuid, amount: &str, currency: Currency| {
            let event = Envelope::new(
                order_id,
                events::PaymentCompleted {
                    payment_id: Uuid::now_v7(),
                    order_id,
                    amount: amount.parse().expect("amount"),
                    currency,
                },
            );
            Record::new(serde_json::to_vec(&event).expect("json")).key(order_id.to_string())
        };
        let unknown = Uuid::now_v7();
        let eur: Currency = "EUR".parse().expect("currency");
        let forged = [
            payment(unknown, "20.00", eur),
            payment(order_id, "0.01", eur),
            payment(order_id, "20.00", Currency::USD),
        ];
        client
            .produce_all(&orders.topics.payment_completed, &forged)
            .await
            .expect("produce");

        let letters =
            crate::helpers::dead_letters(client, &orders.topics.payment_completed, 3).await;
        let mut classes: Vec<String> = letters
            .iter()
            .map(|l| crate::helpers::header_text(l, ::kafka::dead_letter::headers::ERROR_CLASS))
            .collect();
        classes.sort();
        assert_eq!(
            classes,
            [
                "poison.amount-mismatch",
                "poison.amount-mismatch",
                "poison.unknown-order"
            ]
        );
        assert_eq!(paid_orders(&orders).await, 0, "the order is unchanged");
        assert_eq!(orders.orders_with("PENDING").await, 1);

        // The true payment still pays it.
        client
            .produce_all(
                &orders.topics.payment_completed,
                &[payment(order_id, "20.00", eur)],
            )
            .await
            .expect("produce");
        eventually(Duration::from_secs(60), "the order PAID", || async {
            paid_orders(&orders).await == 1
        })
        .await;
    })
    .await;
}
