//! Charging through the payment gateway (a third party, played by `wiremock`): a
//! transient failure is retried and charges once, a gateway that keeps timing out
//! dead-letters only the order it times out on, a refusal is dead-lettered at once, and a
//! declined charge fails the payment and the order.

use std::time::Duration;

use kafka::dead_letter::headers;
use serde_json::Value;
use wiremock::ResponseTemplate;

use crate::gateway_double::{
    answer_charges, answer_charges_containing, approved, charges_containing, declined, gateway,
    payment_service_through,
};
use crate::helpers::{
    dead_letters, eventually, header_text, key_text, order_created_records, order_service,
    produce_all, records_on, topic_prefix, within, MINUTES_2,
};

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
        let payments = payment_service_through(&gateway, kafka.bootstrap(), &topic_prefix()).await;
        produce_all(kafka.client(), &payments.topics.order_created, &records).await;

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
