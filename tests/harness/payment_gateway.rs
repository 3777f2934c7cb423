//! Charging through the payment gateway (a third party, played by `wiremock`): a
//! transient failure is retried and charges once, a gateway that keeps timing out
//! dead-letters only the order it times out on, a refusal is dead-lettered at once, and a
//! declined charge fails the payment and the order.

use std::time::Duration;

use kafka::dead_letter::headers;
use serde_json::Value;
use wiremock::ResponseTemplate;

use crate::gateway_double::{
    answer_charges, answer_charges_containing, approved, charges_containing, charges_per_order,
    declined, gateway, payment_service_through,
};
use crate::helpers::{
    dead_letters, eventually, fresh_database, header_text, key_text, order_created_records,
    order_service, payment_config, produce_all, records_on, running_payment_service, topic_prefix,
    within, RunningService, MINUTES_2,
};

/// `records` on a fresh `prefix` topic, then payment-service charging through `gateway`:
/// it finds them all there, so they come in its first batch.
async fn produced_then_started(
    gateway: &wiremock::MockServer,
    kafka: &testkit::kafka::KafkaBroker,
    prefix: &str,
    records: &[testkit::Record],
) -> RunningService {
    let topics = events::Topics::with_prefix(prefix);
    kafka
        .client()
        .create_topic(&topics.order_created, 6, 1)
        .await
        .expect("topic");
    produce_all(kafka.client(), &topics.order_created, records).await;
    payment_service_through(gateway, kafka.bootstrap(), prefix).await
}

#[tokio::test]
async fn a_gateway_error_then_success_is_retried_and_charges_once() {
    within(MINUTES_2, async {
        let kafka = testkit::kafka::broker().await.expect("kafka");
        let records = order_created_records(1);
        let order_id = key_text(&records[0]);
        let gateway = gateway().await;
        answer_charges_containing(&gateway, &order_id, ResponseTemplate::new(500), Some(1)).await;
        answer_charges(&gateway, approved()).await;
        let payments = payment_service_through(&gateway, kafka.bootstrap(), &topic_prefix()).await;
        produce_all(kafka.client(), &payments.topics.order_created, &records).await;

        eventually(MINUTES_2, "the order is paid", || async {
            payments.payments_with("COMPLETED").await == 1
        })
        .await;
        let charges = charges_containing(&gateway, &order_id).await;
        assert_eq!(charges.len(), 2, "one failed attempt, one that succeeded");
        for charge in &charges {
            let key = charge
                .headers
                .get("idempotency-key")
                .and_then(|v| v.to_str().ok());
            assert_eq!(
                key,
                Some(order_id.as_str()),
                "every attempt carries the order's key"
            );
        }
        assert_eq!(payments.count("payments").await, 1);
        let dlt = kafka::dead_letter_topic(&payments.topics.order_created);
        assert_eq!(
            records_on(kafka.client(), &dlt).await,
            0,
            "nothing dead-lettered"
        );
    })
    .await;
}

#[tokio::test]
async fn a_gateway_that_keeps_timing_out_dead_letters_that_order_after_the_configured_attempts() {
    within(MINUTES_2, async {
        let kafka = testkit::kafka::broker().await.expect("kafka");
        let records = order_created_records(6);
        let stuck = key_text(&records[2]);
        let gateway = gateway().await;
        // Far longer than the service's 500 ms bound on a call.
        let slow = approved().set_delay(Duration::from_secs(5));
        answer_charges_containing(&gateway, &stuck, slow, None).await;
        answer_charges(&gateway, approved()).await;
        // All six in the service's first batch: one order failing while others go through
        // is that order's own failure (were all to fail, it would be an outage).
        let prefix = topic_prefix();
        let payments = produced_then_started(&gateway, kafka, &prefix, &records).await;

        let letters = dead_letters(kafka.client(), &payments.topics.order_created, 1).await;
        let letter = &letters[0];
        assert_eq!(key_text(letter), stuck);
        assert_eq!(letter.payload, records[2].payload, "the original bytes");
        assert_eq!(
            header_text(letter, headers::ERROR_CLASS),
            "gateway.unavailable"
        );
        let reason = header_text(letter, headers::ERROR_MESSAGE);
        assert!(reason.contains("timed out"), "{reason}");
        assert_eq!(
            header_text(letter, headers::ATTEMPTS),
            "3",
            "the configured attempts"
        );
        assert_eq!(charges_containing(&gateway, &stuck).await.len(), 3);

        eventually(MINUTES_2, "the other five orders are paid", || async {
            payments.payments_with("COMPLETED").await == 5
        })
        .await;
        assert_eq!(
            payments.count("payments").await,
            5,
            "no payment for the stuck order"
        );
    })
    .await;
}

#[tokio::test]
async fn a_lone_order_the_gateway_keeps_failing_is_dead_lettered_not_retried_forever_and_later_orders_are_paid(
) {
    within(MINUTES_2, async {
        let kafka = testkit::kafka::broker().await.expect("kafka");
        let gateway = gateway().await;
        let stuck = order_created_records(1);
        answer_charges_containing(
            &gateway,
            &key_text(&stuck[0]),
            ResponseTemplate::new(503),
            None,
        )
        .await;
        answer_charges(&gateway, approved()).await;
        // Low load: the order arrives alone, and nothing keeps it company. Its failure is
        // its own, not an outage: were it taken for one, the consumer would stall on it.
        let prefix = topic_prefix();
        let payments = produced_then_started(&gateway, kafka, &prefix, &stuck).await;

        let letters = dead_letters(kafka.client(), &payments.topics.order_created, 1).await;
        assert_eq!(key_text(&letters[0]), key_text(&stuck[0]));
        assert_eq!(header_text(&letters[0], headers::ATTEMPTS), "3");
        assert_eq!(
            charges_containing(&gateway, &key_text(&stuck[0]))
                .await
                .len(),
            3
        );

        let later = order_created_records(3);
        produce_all(kafka.client(), &payments.topics.order_created, &later).await;
        eventually(MINUTES_2, "the three later orders are paid", || async {
            payments.payments_with("COMPLETED").await == 3
        })
        .await;
        let dlt = kafka::dead_letter_topic(&payments.topics.order_created);
        assert_eq!(
            records_on(kafka.client(), &dlt).await,
            1,
            "only the stuck one"
        );
    })
    .await;
}

#[tokio::test]
async fn a_charge_the_gateway_refuses_is_dead_lettered_at_once() {
    within(MINUTES_2, async {
        let kafka = testkit::kafka::broker().await.expect("kafka");
        let gateway = gateway().await;
        answer_charges(
            &gateway,
            ResponseTemplate::new(400).set_body_string("unsupported currency"),
        )
        .await;
        let payments = payment_service_through(&gateway, kafka.bootstrap(), &topic_prefix()).await;
        produce_all(
            kafka.client(),
            &payments.topics.order_created,
            &order_created_records(1),
        )
        .await;

        let letters = dead_letters(kafka.client(), &payments.topics.order_created, 1).await;
        assert_eq!(
            header_text(&letters[0], headers::ERROR_CLASS),
            "gateway.refused"
        );
        let reason = header_text(&letters[0], headers::ERROR_MESSAGE);
        assert!(reason.contains("unsupported currency"), "{reason}");
        assert_eq!(
            header_text(&letters[0], headers::ATTEMPTS),
            "1",
            "a refusal is not retried"
        );
        assert_eq!(
            gateway.received_requests().await.unwrap_or_default().len(),
            1
        );
        assert_eq!(payments.count("payments").await, 0);
    })
    .await;
}

#[tokio::test]
async fn a_declined_charge_fails_the_payment_and_the_order() {
    within(MINUTES_2, async {
        let kafka = testkit::kafka::broker().await.expect("kafka");
        let gateway = gateway().await;
        answer_charges_containing(
            &gateway,
            r#""amount":13.13"#,
            declined("insufficient funds"),
            None,
        )
        .await;
        answer_charges(&gateway, approved()).await;
        let prefix = topic_prefix();
        let orders = order_service(kafka.bootstrap(), &prefix).await;
        let payments = payment_service_through(&gateway, kafka.bootstrap(), &prefix).await;

        let mut ids = Vec::new();
        for amount in ["13.13", "20.00"] {
            let response = orders
                .post_raw(
                    format!(r#"{{"amount": {amount}}}"#),
                    "application/json",
                    None,
                )
                .await;
            assert_eq!(response.status(), 201);
            let order: Value = response.json().await.expect("json");
            ids.push(order["id"].as_str().expect("id").to_owned());
        }

        eventually(MINUTES_2, "one order failed, the other paid", || async {
            orders.orders_with("PAYMENT_FAILED").await == 1 && orders.orders_with("PAID").await == 1
        })
        .await;
        let json =
            |response: reqwest::Response| async { response.json::<Value>().await.expect("json") };
        let declined = json(orders.get(&format!("/orders/{}", ids[0])).await).await;
        assert_eq!(declined["status"], "PAYMENT_FAILED");
        let paid = json(orders.get(&format!("/orders/{}", ids[1])).await).await;
        assert_eq!(paid["status"], "PAID");
        let payment = json(payments.get(&format!("/payments/{}", ids[0])).await).await;
        assert_eq!(payment["status"], "FAILED");
        assert_eq!(payment["decline_reason"], "insufficient funds");

        let failed = kafka
            .client()
            .read_topic(&payments.topics.payment_failed, 1, MINUTES_2)
            .await
            .expect("payment.failed");
        let event: Value =
            serde_json::from_slice(failed[0].payload.as_deref().unwrap_or_default()).expect("json");
        assert_eq!(event["event_type"], "payment.failed");
        assert_eq!(event["payload"]["order_id"], ids[0].as_str());
        assert_eq!(event["payload"]["reason"], "insufficient funds");
        assert_eq!(
            records_on(kafka.client(), &payments.topics.payment_failed).await,
            1
        );
    })
    .await;
}

#[tokio::test]
async fn a_gateway_down_for_everyone_is_an_outage_nothing_is_dead_lettered_and_all_are_paid_after()
{
    within(MINUTES_2, async {
        let kafka = testkit::kafka::broker().await.expect("kafka");
        let gateway = gateway().await;
        answer_charges(&gateway, ResponseTemplate::new(503)).await;
        let records = order_created_records(8);
        let prefix = topic_prefix();
        let mut payments = produced_then_started(&gateway, kafka, &prefix, &records).await;

        // Down for everyone, for longer than the configured attempts take (3 tries,
        // pauses of 50 ms to 1 s): nothing goes to the dead-letter topic. (Batches are
        // taken as they come, so the first may hold only some of the eight; the outage
        // holds the rest back.)
        eventually(MINUTES_2, "orders tried beyond their attempts", || async {
            charges_per_order(&gateway, &records)
                .await
                .iter()
                .filter(|n| **n >= 4)
                .count()
                >= 2
        })
        .await;
        let dlt = kafka::dead_letter_topic(&payments.topics.order_created);
        assert_eq!(
            records_on(kafka.client(), &dlt).await,
            0,
            "an outage dead-letters nothing"
        );
        assert_eq!(payments.count("payments").await, 0);

        gateway.reset().await;
        answer_charges(&gateway, approved()).await;
        eventually(
            MINUTES_2,
            "all eight paid once the gateway is back",
            || async { payments.payments_with("COMPLETED").await == 8 },
        )
        .await;
        assert_eq!(
            charges_per_order(&gateway, &records).await,
            vec![1; 8],
            "once back, each order is charged once"
        );
        assert_eq!(records_on(kafka.client(), &dlt).await, 0);
        let stats = payments.shut_down().await;
        assert!(stats.outage_retries > 0, "{stats:?}");
        assert!(
            stats.retried.is_empty(),
            "no per-message retries: {stats:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn a_gateway_outage_longer_than_the_poll_interval_keeps_the_group_and_charges_each_order_once(
) {
    within(MINUTES_2, async {
        let kafka = testkit::kafka::broker().await.expect("kafka");
        let gateway = gateway().await;
        answer_charges(&gateway, ResponseTemplate::new(503)).await;
        let records = order_created_records(5);
        let prefix = topic_prefix();
        let topics = events::Topics::with_prefix(&prefix);
        kafka
            .client()
            .create_topic(&topics.order_created, 6, 1)
            .await
            .expect("topic");
        produce_all(kafka.client(), &topics.order_created, &records).await;
        let db = fresh_database().await;
        let mut config = payment_config(&db, kafka.bootstrap(), &prefix, Some(&gateway.uri()));
        // The smallest the broker allows for a session: an outage of 15 s outlasts it
        // twice over.
        config.consumer.max_poll_interval_ms = 6_000;
        let mut payments = running_payment_service(db, config).await;

        // Batches are taken as they come, so the first may hold only some of the five:
        // the outage has begun once an order has been tried again.
        eventually(MINUTES_2, "the outage has begun", || async {
            charges_per_order(&gateway, &records)
                .await
                .iter()
                .any(|n| *n >= 2)
        })
        .await;
        tokio::time::sleep(Duration::from_secs(15)).await;
        gateway.reset().await;
        answer_charges(&gateway, approved()).await;
        eventually(MINUTES_2, "all five paid", || async {
            payments.payments_with("COMPLETED").await == 5
        })
        .await;
        assert_eq!(
            charges_per_order(&gateway, &records).await,
            vec![1; 5],
            "no charge repeated after the outage"
        );
        let stats = payments.shut_down().await;
        assert_eq!(
            stats.revocations, 0,
            "the group never took the partitions away: {stats:?}"
        );
        assert!(stats.outage_retries > 5, "{stats:?}");
    })
    .await;
}

#[tokio::test]
async fn a_decline_reason_the_database_cannot_store_is_cleaned_and_every_order_settles() {
    within(MINUTES_2, async {
        let kafka = testkit::kafka::broker().await.expect("kafka");
        let gateway = gateway().await;
        let records = order_created_records(4);
        let odd = key_text(&records[1]);
        // U+0000 cannot be stored in a TEXT column; control characters are removed.
        answer_charges_containing(&gateway, &odd, declined("card\u{0} blocked\u{7}"), None).await;
        answer_charges(&gateway, approved()).await;
        let prefix = topic_prefix();
        let payments = produced_then_started(&gateway, kafka, &prefix, &records).await;

        eventually(MINUTES_2, "every order settled", || async {
            payments.count("payments").await == 4
        })
        .await;
        assert_eq!(payments.payments_with("COMPLETED").await, 3);
        let reason: String =
            sqlx::query_scalar("SELECT decline_reason FROM payments WHERE status = 'FAILED'")
                .fetch_one(payments.db.pool())
                .await
                .expect("reason");
        assert_eq!(reason, "card blocked");
        let dlt = kafka::dead_letter_topic(&payments.topics.order_created);
        assert_eq!(records_on(kafka.client(), &dlt).await, 0);
    })
    .await;
}

#[tokio::test]
async fn an_answer_larger_than_the_limit_is_not_read_and_counts_as_the_gateway_unavailable() {
    within(MINUTES_2, async {
        let kafka = testkit::kafka::broker().await.expect("kafka");
        let gateway = gateway().await;
        let records = order_created_records(4);
        let huge = key_text(&records[2]);
        let body = format!(
            r#"{{"status": "approved", "reference": "{}"}}"#,
            "r".repeat(payment_service::gateway::MAX_ANSWER_BYTES)
        );
        answer_charges_containing(
            &gateway,
            &huge,
            ResponseTemplate::new(200).set_body_raw(body, "application/json"),
            None,
        )
        .await;
        answer_charges(&gateway, approved()).await;
        let prefix = topic_prefix();
        let payments = produced_then_started(&gateway, kafka, &prefix, &records).await;

        let letters = dead_letters(kafka.client(), &payments.topics.order_created, 1).await;
        assert_eq!(key_text(&letters[0]), huge);
        assert_eq!(
            header_text(&letters[0], headers::ERROR_CLASS),
            "gateway.unavailable"
        );
        let reason = header_text(&letters[0], headers::ERROR_MESSAGE);
        assert!(reason.contains("larger than"), "{reason}");
        eventually(MINUTES_2, "the three others paid", || async {
            payments.payments_with("COMPLETED").await == 3
        })
        .await;
    })
    .await;
}
