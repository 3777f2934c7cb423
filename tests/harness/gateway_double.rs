//! The payment gateway is a third party, so in tests a double plays it: `wiremock` where
//! a test sets the answers one by one, and the stand-in gateway (`gateway-stand-in`, as
//! strict as a real provider: idempotency keys, inquiries, every request recorded with
//! its start and end, faults on demand) where a test needs a provider's behaviour over
//! time. This module holds the ways tests set them up and read what they received, and
//! the payment-service that charges through them.

use std::time::Duration;

use gateway_stand_in::StandIn;
use serde_json::json;
use wiremock::matchers::{body_string_contains, method, path, path_regex};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

use crate::helpers::{fresh_database, payment_config, running_payment_service, RunningService};

/// A gateway that answers nothing yet but inquiries: every charge gets a 404 until
/// answers are set; every inquiry says it has no charge (`404 {"status": "none"}`).
pub async fn gateway() -> MockServer {
    let gateway = MockServer::start().await;
    answer_inquiries_with_none(&gateway).await;
    gateway
}

/// Forgets every answer set so far (and what was received), keeping the inquiries'.
pub async fn reset(gateway: &MockServer) {
    gateway.reset().await;
    answer_inquiries_with_none(gateway).await;
}

async fn answer_inquiries_with_none(gateway: &MockServer) {
    Mock::given(method("GET"))
        .and(path_regex("^/charges/[^/]+$"))
        .respond_with(ResponseTemplate::new(404).set_body_json(json!({"status": "none"})))
        .with_priority(10)
        .mount(gateway)
        .await;
}

/// The inquiry about `order_id` is answered with `answer`.
pub async fn answer_inquiry(gateway: &MockServer, order_id: &str, answer: ResponseTemplate) {
    Mock::given(method("GET"))
        .and(path(format!("/charges/{order_id}")))
        .respond_with(answer)
        .with_priority(1)
        .mount(gateway)
        .await;
}

/// The gateway's answer to an approved charge.
pub fn approved() -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({"status": "approved", "reference": "ch_1"}))
}

/// The gateway's answer to a declined charge.
pub fn declined(reason: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({"status": "declined", "reason": reason}))
}

/// Every charge is answered with `answer` (unless a more specific answer applies).
pub async fn answer_charges(gateway: &MockServer, answer: ResponseTemplate) {
    Mock::given(method("POST"))
        .and(path("/charges"))
        .respond_with(answer)
        .mount(gateway)
        .await;
}

/// Charges whose body contains `text` (an order id, an amount) are answered with
/// `answer`, ahead of the general answer; only the first `times` if given.
pub async fn answer_charges_containing(
    gateway: &MockServer,
    text: &str,
    answer: ResponseTemplate,
    times: Option<u64>,
) {
    let mock = Mock::given(method("POST"))
        .and(path("/charges"))
        .and(body_string_contains(text))
        .respond_with(answer)
        .with_priority(1);
    let mock = match times {
        Some(n) => mock.up_to_n_times(n),
        None => mock,
    };
    mock.mount(gateway).await;
}

/// The charge requests the gateway received whose body contains `text`.
pub async fn charges_containing(gateway: &MockServer, text: &str) -> Vec<Request> {
    gateway
        .received_requests()
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r.method.as_str() == "POST" && String::from_utf8_lossy(&r.body).contains(text))
        .collect()
}

/// The inquiries the gateway received about `order_id`.
pub async fn inquiries_about(gateway: &MockServer, order_id: &str) -> usize {
    gateway
        .received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .filter(|r| r.method.as_str() == "GET" && r.url.path() == format!("/charges/{order_id}"))
        .count()
}

/// payment-service on a database of its own, charging through `gateway`, with the fault
/// tests' settings ([`payment_config`]).
pub async fn payment_service_through(
    gateway: &MockServer,
    bootstrap: &str,
    prefix: &str,
) -> RunningService {
    payment_service_at(&gateway.uri(), bootstrap, prefix).await
}

/// A strict stand-in gateway on a free port.
pub async fn stand_in() -> StandIn {
    StandIn::start().await.expect("stand-in gateway")
}

/// payment-service on a database of its own, charging through the gateway at `url`,
/// with the fault tests' settings ([`payment_config`]); once ready.
pub async fn payment_service_at(url: &str, bootstrap: &str, prefix: &str) -> RunningService {
    let db = fresh_database().await;
    let config = payment_config(&db, bootstrap, prefix, Some(url));
    running_payment_service(db, config).await.ready().await
}

/// Posts `count` orders to order-service, one every `every`, each acknowledged;
/// returns their ids.
pub async fn post_orders(orders: &RunningService, count: usize, every: Duration) -> Vec<String> {
    let mut ids = Vec::with_capacity(count);
    let mut ticks = tokio::time::interval(every);
    for i in 0..count {
        ticks.tick().await;
        let response = orders
            .post_raw(
                format!(r#"{{"amount": {}.25}}"#, 10 + i),
                "application/json",
                None,
            )
            .await;
        assert_eq!(response.status(), 201, "order {i} accepted");
        let order: serde_json::Value = response.json().await.expect("order json");
        ids.push(order["id"].as_str().expect("id").to_owned());
    }
    ids
}

/// The state of the gateway's circuit breaker, as payment-service's readiness reports it.
pub async fn breaker_state(payments: &RunningService) -> (bool, String) {
    let (_, body) = payments.readiness().await;
    let component = body["components"]
        .as_array()
        .and_then(|all| all.iter().find(|c| c["name"] == "payment_gateway"))
        .cloned()
        .unwrap_or_default();
    (
        component["ok"].as_bool().unwrap_or(true),
        component["detail"].as_str().unwrap_or_default().to_owned(),
    )
}

/// The charge requests the gateway received for each of `records`' orders (keyed by
/// order id), in order.
pub async fn charges_per_order(gateway: &MockServer, records: &[testkit::Record]) -> Vec<usize> {
    let mut counts = Vec::new();
    for record in records {
        let id = crate::helpers::key_text(record);
        counts.push(charges_containing(gateway, &id).await.len());
    }
    counts
}
