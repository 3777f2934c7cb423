//! Outages are not poison: when PostgreSQL or Kafka is unreachable for a while in the
//! middle of a stream, the payment-service pauses and retries, dead-letters nothing, and
//! processes everything once the outage is over.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::Value;
use testkit::kafka::{KafkaBroker, KafkaClient};
use testkit::postgres::PostgresServer;
use wiremock::MockServer;

use crate::gateway_double::{answer_charges, approved, gateway};
use crate::helpers::{
    eventually, fresh_database, payment_config, produce_all, records_on, running_payment_service,
    topic_prefix, until_committed, within, RunningService, MINUTES_2, MINUTES_5,
};

const OUTAGE: Duration = Duration::from_secs(20);
const FIRST: usize = 300;
const DURING: usize = 100;

/// A gateway that takes 20 ms per charge, so that a stream takes seconds to process and
/// an outage can start in the middle of it.
async fn slow_gateway() -> MockServer {
    let gateway = gateway().await;
    answer_charges(&gateway, approved().set_delay(Duration::from_millis(20))).await;
    gateway
}

/// Small batches and two charges at a time: about a hundred orders a second.
fn slow_config(
    db: &testkit::TestDatabase,
    bootstrap: &str,
    gateway: &MockServer,
) -> payment_service::Config {
    let mut config = payment_config(db, bootstrap, &topic_prefix(), Some(&gateway.uri()));
    config.service.consumer.batch_size = 10;
    config.gateway_concurrency = 2;
    config
}

/// Waits until some but not all of the first orders are paid, and returns how many.
async fn mid_stream(payments: &RunningService) -> i64 {
    eventually(MINUTES_2, "the stream under way", || async {
        payments.count("payments").await >= 30
    })
    .await;
    let paid = payments.count("payments").await;
    assert!(
        paid < FIRST as i64,
        "the outage must start mid-stream, but {paid} were already paid"
    );
    paid
}

/// Everything paid once, everything published, nothing dead-lettered.
async fn all_processed_nothing_dead_lettered(kafka: &KafkaClient, payments: &RunningService) {
    let total = (FIRST + DURING) as i64;
    eventually(MINUTES_2, "every order paid after the outage", || async {
        payments.count("payments").await == total
    })
    .await;
    let distinct: i64 = sqlx::query_scalar("SELECT count(DISTINCT order_id) FROM payments")
        .fetch_one(payments.db.pool())
        .await
        .expect("count");
    assert_eq!(distinct, total);
    let topics = &payments.topics;
    assert_eq!(
        records_on(kafka, &kafka::dead_letter_topic(&topics.order_created)).await,
        0,
        "an outage dead-letters nothing"
    );
    eventually(MINUTES_2, "every payment.completed published", || async {
        records_on(kafka, &topics.payment_completed).await >= total
    })
    .await;
    // At least once on the topic (a relay cut off between publishing and marking may
    // publish again), exactly once by event id.
    let records = kafka
        .read_all(&topics.payment_completed, MINUTES_2)
        .await
        .expect("payment.completed");
    let ids: HashSet<String> = records
        .iter()
        .map(|r| {
            let event: Value =
                serde_json::from_slice(r.payload.as_deref().unwrap_or_default()).expect("json");
            event["payload"]["order_id"]
                .as_str()
                .expect("order id")
                .to_owned()
        })
        .collect();
    assert_eq!(ids.len() as i64, total);
}

#[tokio::test]
async fn postgres_down_for_20_seconds_mid_stream_dead_letters_nothing_and_loses_nothing() {
    within(MINUTES_5, async {
        let kafka = testkit::kafka::broker().await.expect("kafka");
        let postgres = PostgresServer::dedicated()
            .await
            .expect("a PostgreSQL of our own");
        let db = postgres.fresh_database().await.expect("database");
        let gateway = slow_gateway().await;
        let config = slow_config(&db, kafka.bootstrap(), &gateway);
        let mut payments = running_payment_service(db, config).await;
        let topic = payments.topics.order_created.clone();
        produce_all(
            kafka.client(),
            &topic,
            &testkit::scenario::order_created(FIRST),
        )
        .await;

        mid_stream(&payments).await;
        assert_eq!(payments.readiness().await.0, 200, "ready before");
        postgres.stop().await.expect("stop PostgreSQL");
        // The stream goes on while the database is down.
        produce_all(
            kafka.client(),
            &topic,
            &testkit::scenario::order_created(DURING),
        )
        .await;
        // Not ready, naming the database, while it is down.
        let down = payments
            .until_readiness(503, crate::helpers::SECONDS_30)
            .await;
        let database = down["checks"]
            .as_array()
            .and_then(|checks| checks.iter().find(|c| c["name"] == "database"))
            .cloned()
            .unwrap_or_default();
        assert_eq!(database["ok"], false, "{down}");
        assert!(
            !database["detail"].as_str().unwrap_or_default().is_empty(),
            "{down}"
        );
        tokio::time::sleep(OUTAGE).await;
        let dlt = kafka::dead_letter_topic(&topic);
        assert_eq!(
            records_on(kafka.client(), &dlt).await,
            0,
            "nothing dead-lettered during the outage"
        );
        postgres.start().await.expect("start PostgreSQL");
        payments.until_readiness(200, MINUTES_2).await;

        all_processed_nothing_dead_lettered(kafka.client(), &payments).await;
        let stats = payments.shut_down().await;
        assert!(
            stats.outage_retries > 0,
            "the service noticed the outage: {stats:?}"
        );
        assert!(stats.dead_lettered.is_empty(), "{stats:?}");
    })
    .await;
}

#[tokio::test]
async fn kafka_down_for_20_seconds_mid_stream_dead_letters_nothing_and_loses_nothing() {
    within(MINUTES_5, async {
        let broker = KafkaBroker::dedicated().await.expect("a broker of our own");
        let gateway = slow_gateway().await;
        let db = fresh_database().await;
        let config = slow_config(&db, broker.bootstrap(), &gateway);
        let mut payments = running_payment_service(db, config).await;
        let topic = payments.topics.order_created.clone();
        produce_all(
            broker.client(),
            &topic,
            &testkit::scenario::order_created(FIRST),
        )
        .await;

        mid_stream(&payments).await;
        // No controlled shutdown: the broker dies at once, as a crash would have it.
        broker.kill().await.expect("SIGKILL Kafka");
        tokio::time::sleep(OUTAGE).await;
        broker.start().await.expect("start Kafka");
        produce_all(
            broker.client(),
            &topic,
            &testkit::scenario::order_created(DURING),
        )
        .await;

        all_processed_nothing_dead_lettered(broker.client(), &payments).await;
        until_committed(
            broker.client(),
            &payments.group,
            &topic,
            (FIRST + DURING) as i64,
            MINUTES_2,
            "every offset committed",
        )
        .await;
        let stats = payments.shut_down().await;
        assert!(
            stats.consumer_errors > 0,
            "the service noticed the outage: {stats:?}"
        );
        assert!(stats.dead_lettered.is_empty(), "{stats:?}");
    })
    .await;
}
