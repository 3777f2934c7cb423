//! The payment gateway is a third party, so in tests `wiremock` plays it. This module
//! holds the ways tests set it up and read what it received, and the payment-service that
//! charges through it.

use serde_json::json;
use wiremock::matchers::{body_string_contains, method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

use crate::helpers::{fresh_database, payment_config, running_payment_service, RunningService};

/// A gateway that answers nothing yet: every charge gets a 404 until answers are set.
pub async fn gateway() -> MockServer {
    MockServer::start().await
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
        .filter(|r| String::from_utf8_lossy(&r.body).contains(text))
        .collect()
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

/// payment-service on a database of its own, charging through `gateway`, with the fault
/// tests' settings ([`payment_config`]).
pub async fn payment_service_through(
    gateway: &MockServer,
    bootstrap: &str,
    prefix: &str,
) -> RunningService {
    let db = fresh_database().await;
    let config = payment_config(&db, bootstrap, prefix, Some(&gateway.uri()));
    running_payment_service(db, config).await
}
