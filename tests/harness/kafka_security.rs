//! Kafka as managed services run it: both services over SASL_SSL (SCRAM) and over mutual
//! TLS pay an order end to end; a wrong password, a client without a certificate, or a
//! broker signed by another CA is refused at start, at once, with the broker's reason on
//! one line.

use std::time::{Duration, Instant};

use kafka::{Connection, SaslMechanism};
use serde_json::json;
use testkit::secure_kafka::{SecureKafka, PASSWORD};
use testkit::tls::Certificates;
use tokio::sync::OnceCell;

use crate::helpers::{
    eventually, fresh_database, order_config, payment_config, running_order_service,
    running_payment_service, topic_prefix, within, MINUTES_5,
};

/// The secure broker of this binary, started on first use.
async fn secure_kafka() -> &'static SecureKafka {
    static KAFKA: OnceCell<SecureKafka> = OnceCell::const_new();
    KAFKA
        .get_or_init(|| async { SecureKafka::start().await.expect("secure kafka") })
        .await
}

/// order-service over `orders`, payment-service over `payments`: one order is paid.
async fn an_order_is_paid(orders: Connection, payments: Connection) {
    let prefix = topic_prefix();
    let db = fresh_database().await;
    let mut config = order_config(&db, &orders.bootstrap, &prefix);
    config.service.kafka.connection = orders;
    let order_service = running_order_service(db, config).await.ready().await;
    let db = fresh_database().await;
    let mut config = payment_config(&db, &payments.bootstrap, &prefix, None);
    config.service.kafka.connection = payments;
    let payment_service = running_payment_service(db, config).await.ready().await;

    let response = order_service
        .post_order(&json!({"amount": 12.5}), None)
        .await;
    assert_eq!(response.status(), 201);
    eventually(Duration::from_secs(60), "the order PAID", || async {
        order_service.orders_with("PAID").await == 1
    })
    .await;
    assert_eq!(payment_service.count("payments").await, 1);
    assert_eq!(order_service.count("orders").await, 1);
}

/// Starting order-service over `connection` fails within 15 s: the error, on one line.
async fn refused_at_start(connection: Connection) -> String {
    let db = fresh_database().await;
    let mut config = order_config(&db, &connection.bootstrap, &topic_prefix());
    config.service.kafka.connection = connection;
    let started = Instant::now();
    let error = match order_service::build(config).await {
        Ok(_) => panic!("order-service started over a connection the broker refuses"),
        Err(error) => format!("{error:#}"),
    };
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "refused after {:?}, not at once: {error}",
        started.elapsed()
    );
    assert!(!error.contains('\n'), "one line: {error}");
    error
}

#[tokio::test]
async fn over_sasl_ssl_with_scram_both_services_connect_and_an_order_is_paid() {
    within(MINUTES_5, async {
        let kafka = secure_kafka().await;
        an_order_is_paid(
            kafka.sasl_ssl(SaslMechanism::ScramSha512, PASSWORD),
            kafka.sasl_ssl(SaslMechanism::ScramSha256, PASSWORD),
        )
        .await;
    })
    .await;
}

#[tokio::test]
async fn over_mutual_tls_both_services_connect_and_an_order_is_paid() {
    within(MINUTES_5, async {
        let kafka = secure_kafka().await;
        an_order_is_paid(kafka.mtls(), kafka.mtls()).await;
    })
    .await;
}

#[tokio::test]
async fn a_wrong_password_is_refused_at_start_with_the_reason_and_without_the_password() {
    within(MINUTES_5, async {
        let kafka = secure_kafka().await;
        let error = refused_at_start(kafka.sasl_ssl(SaslMechanism::ScramSha512, "not-it")).await;
        assert!(
            error.starts_with("cannot reach Kafka at 127.0.0.1:"),
            "{error}"
        );
        assert!(error.contains("SASL authentication error"), "{error}");
        assert!(
            !error.contains("not-it"),
            "the password is not shown: {error}"
        );
    })
    .await;
}

#[tokio::test]
async fn without_a_client_certificate_the_mutual_tls_listener_refuses_at_start() {
    within(MINUTES_5, async {
        let kafka = secure_kafka().await;
        let mut connection = kafka.mtls();
        connection.ssl_certificate_location = None;
        connection.ssl_key_location = None;
        let error = refused_at_start(connection).await;
        assert!(
            error.starts_with("cannot reach Kafka at 127.0.0.1:"),
            "{error}"
        );
        assert!(error.contains("SSL"), "{error}");
    })
    .await;
}

#[tokio::test]
async fn a_broker_whose_certificate_another_ca_signed_is_refused_at_start() {
    within(MINUTES_5, async {
        let kafka = secure_kafka().await;
        let other = Certificates::new("another CA").expect("certificates");
        let mut connection = kafka.sasl_ssl(SaslMechanism::ScramSha512, PASSWORD);
        connection.ssl_ca_location = Some(other.ca_file());
        let error = refused_at_start(connection).await;
        assert!(error.contains("certificate verify failed"), "{error}");
    })
    .await;
}
