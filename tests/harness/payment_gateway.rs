//! Charging through the payment gateway (a third party, so `wiremock` stands in for it):
//! a transient failure is retried and charges once, a gateway that keeps timing out
//! dead-letters only the order it times out on, and a declined charge fails the order.

use std::time::Duration;

use consumer::dead_letter::headers;
use serde_json::{json, Value};
use wiremock::matchers::{body_string_contains, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::{
    eventually, fresh_database, order_created_records, order_service, payment_config, produce_all,
    records_on, running_payment_service, topic_prefix, within, MINUTES_2,
};

fn approved() -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({"status": "approved", "reference": "ch_1"}))
}

/// The charge requests `gateway` received for `order_id`.
async fn charges_for(gateway: &MockServer, order_id: &str) -> Vec<wiremock::Request> {
    gateway
        .received_requests()
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|r| String::from_utf8_lossy(&r.body).contains(order_id))
        .collect()
}

#[tokio::test]
async fn a_gateway_error_then_success_is_retried_and_charges_once() {
    within(MINUTES_2, async {
        let kafka = testkit::kafka::broker().await.expect("kafka");
        let gateway = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/charges"))
            .respond_with(ResponseTemplate::new(500))
            .up_to_n_times(1)
            .with_priority(1)
            .mount(&gateway)
            .await;
        Mock::given(method("POST"))
            .and(path("/charges"))
            .respond_with(approved())
            .mount(&gateway)
            .await;
        let db = fresh_database().await;
        let prefix = topic_prefix();
        let config = payment_config(&db, kafka.bootstrap(), &prefix, Some(&gateway.uri()));
        let payments = running_payment_service(db, config).await;
        let records = order_created_records(1);
        let order_id = String::from_utf8(records[0].key.clone().expect("key")).expect("utf-8");
        produce_all(kafka.client(), &payments.topics.order_created, &records).await;

        eventually(MINUTES_2, "the order is paid", || async {
            payments.payments_with("COMPLETED").await == 1
        })
        .await;
        let charges = charges_for(&gateway, &order_id).await;
        assert_eq!(charges.len(), 2, "one failed attempt, one that succeeded");
        for charge in &charges {
            assert_eq!(
                charge
                    .headers
                    .get("idempotency-key")
                    .map(|v| v.to_str().unwrap_or_default()),
                Some(order_id.as_str()),
                "every attempt carries the order's idempotency key"
            );
        }
        assert_eq!(payments.count("payments").await, 1);
        let dlt = consumer::dead_letter_topic(&payments.topics.order_created);
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
        let stuck = String::from_utf8(records[2].key.clone().expect("key")).expect("utf-8");
        let gateway = MockServer::start().await;
        // Far longer than the service's 500 ms bound on a call.
        Mock::given(method("POST"))
            .and(path("/charges"))
            .and(body_string_contains(stuck.as_str()))
            .respond_with(approved().set_delay(Duration::from_secs(5)))
            .with_priority(1)
            .mount(&gateway)
            .await;
        Mock::given(method("POST"))
            .and(path("/charges"))
            .respond_with(approved())
            .mount(&gateway)
            .await;
        let db = fresh_database().await;
        let prefix = topic_prefix();
        let config = payment_config(&db, kafka.bootstrap(), &prefix, Some(&gateway.uri()));
        let attempts = config.kafka.max_attempts;
        let payments = running_payment_service(db, config).await;
        produce_all(kafka.client(), &payments.topics.order_created, &records).await;

        let dlt = consumer::dead_letter_topic(&payments.topics.order_created);
        let letters = kafka
            .client()
            .read_topic(&dlt, 1, MINUTES_2)
            .await
            .expect("the dead letter");
        let letter = &letters[0];
        assert_eq!(letter.key.as_deref(), Some(stuck.as_bytes()));
        assert_eq!(letter.payload, records[2].payload, "the original bytes");
        let header = |name: &str| {
            String::from_utf8_lossy(letter.header_value(name).unwrap_or_default()).into_owned()
        };
        assert_eq!(header(headers::ERROR_CLASS), "gateway.unavailable");
        assert!(
            header(headers::ERROR_MESSAGE).contains("timed out"),
            "{}",
            header(headers::ERROR_MESSAGE)
        );
        assert_eq!(header(headers::ATTEMPTS), attempts.to_string());
        assert_eq!(charges_for(&gateway, &stuck).await.len(), attempts as usize);

        eventually(MINUTES_2, "the other five orders are paid", || async {
            payments.payments_with("COMPLETED").await == 5
        })
        .await;
        assert_eq!(
            payments.count("payments").await,
            5,
            "no payment for the stuck order"
        );
        assert_eq!(
            records_on(kafka.client(), &dlt).await,
            1,
            "only the stuck order"
        );
    })
    .await;
}

#[tokio::test]
async fn a_declined_charge_fails_the_payment_and_the_order() {
    within(MINUTES_2, async {
        let kafka = testkit::kafka::broker().await.expect("kafka");
        let gateway = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/charges"))
            .and(body_string_contains(r#""amount":13.13"#))
            .respond_with(
                ResponseTemplate::new(200)
                    .set_body_json(json!({"status": "declined", "reason": "insufficient funds"})),
            )
            .with_priority(1)
            .mount(&gateway)
            .await;
        Mock::given(method("POST"))
            .and(path("/charges"))
            .respond_with(approved())
            .mount(&gateway)
            .await;
        let prefix = topic_prefix();
        let orders = order_service(kafka.bootstrap(), &prefix).await;
        let db = fresh_database().await;
        let config = payment_config(&db, kafka.bootstrap(), &prefix, Some(&gateway.uri()));
        let payments = running_payment_service(db, config).await;

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
        let declined: Value = orders
            .get(&format!("/orders/{}", ids[0]))
            .await
            .json()
            .await
            .expect("json");
        assert_eq!(declined["status"], "PAYMENT_FAILED");
        let paid: Value = orders
            .get(&format!("/orders/{}", ids[1]))
            .await
            .json()
            .await
            .expect("json");
        assert_eq!(paid["status"], "PAID");

        let payment: Value = payments
            .get(&format!("/payments/{}", ids[0]))
            .await
            .json()
            .await
            .expect("json");
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
async fn a_charge_the_gateway_refuses_is_dead_lettered_at_once() {
    within(MINUTES_2, async {
        let kafka = testkit::kafka::broker().await.expect("kafka");
        let gateway = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/charges"))
            .respond_with(ResponseTemplate::new(400).set_body_string("unsupported currency"))
            .mount(&gateway)
            .await;
        let db = fresh_database().await;
        let prefix = topic_prefix();
        let config = payment_config(&db, kafka.bootstrap(), &prefix, Some(&gateway.uri()));
        let payments = running_payment_service(db, config).await;
        let records = order_created_records(1);
        produce_all(kafka.client(), &payments.topics.order_created, &records).await;

        let dlt = consumer::dead_letter_topic(&payments.topics.order_created);
        let letters = kafka
            .client()
            .read_topic(&dlt, 1, MINUTES_2)
            .await
            .expect("the dead letter");
        let header = |name: &str| {
            String::from_utf8_lossy(letters[0].header_value(name).unwrap_or_default()).into_owned()
        };
        assert_eq!(header(headers::ERROR_CLASS), "gateway.refused");
        assert!(
            header(headers::ERROR_MESSAGE).contains("unsupported currency"),
            "{}",
            header(headers::ERROR_MESSAGE)
        );
        assert_eq!(header(headers::ATTEMPTS), "1", "a refusal is not retried");
        assert_eq!(
            gateway.received_requests().await.unwrap_or_default().len(),
            1
        );
        assert_eq!(payments.count("payments").await, 0);
    })
    .await;
}
