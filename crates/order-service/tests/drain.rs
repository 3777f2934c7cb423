//! Shutting down behind a load balancer: on SIGTERM, an order-service process answers
//! readiness `503` at once and goes on serving for its drain period
//! (`ORDER_SHUTDOWN_DRAIN_SECS`), so the balancer takes it out of rotation before its
//! listener closes; then it stops cleanly, having left its consumer group (so its
//! partitions move at once, not after the session timeout). Orders taken during the
//! drain are stored and their events published.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use events::Topics;
use serde_json::Value;
use testkit::{kafka, postgres, unique_name, ServiceProcess};

const DRAIN: Duration = Duration::from_secs(6);

#[tokio::test]
async fn on_sigterm_readiness_turns_503_at_once_requests_are_served_through_the_drain_then_it_exits_cleanly(
) {
    tokio::time::timeout(Duration::from_secs(180), async {
        let broker = kafka::broker().await.expect("kafka");
        let prefix = format!("{}.", unique_name("drain"));
        let db = postgres::fresh_database().await.expect("db");
        let group = format!("{prefix}order-service");
        let drain = DRAIN.as_secs().to_string();
        let mut service = ServiceProcess::start(
            env!("CARGO_BIN_EXE_order-service"),
            "ORDER_LISTEN",
            &[
                ("ORDER_DATABASE_URL", &db.url),
                ("ORDER_CONSUMER_GROUP", &group),
                ("ORDER_SHUTDOWN_DRAIN_SECS", &drain),
                ("KAFKA_BOOTSTRAP", broker.bootstrap()),
                ("TOPIC_PREFIX", &prefix),
                ("RUST_LOG", "info,sqlx=warn,librdkafka=warn,rdkafka=warn"),
            ],
        )
        .expect("start order-service");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("client");
        let base = service.url();
        service
            .until_ready(Duration::from_secs(60))
            .await
            .expect("ready");
        let mut taken = BTreeSet::from([post_order(&http, &base).await]);
        // /metrics says the same as readiness: ready, and each component well.
        let metrics = scrape(&http, &base).await;
        for line in [
            r#"health_ready{service="order-service"} 1"#,
            r#"health_component_ok{service="order-service",component="kafka"} 1"#,
            r#"health_component_ok{service="order-service",component="consumer"} 1"#,
            r#"health_component_ok{service="order-service",component="relay"} 1"#,
        ] {
            assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
        }

        service.terminate().expect("SIGTERM");
        let signalled = Instant::now();
        // At once: readiness 503, saying why, while orders are still taken.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (status, body) = readiness(&http, &base).await.expect("readiness answers");
        assert_eq!(status, 503, "not ready as soon as SIGTERM arrives: {body}");
        assert!(body.to_string().contains("shutting down"), "{body}");
        let first_answer = signalled.elapsed();
        assert!(
            first_answer < Duration::from_secs(3),
            "took {first_answer:?}"
        );
        let metrics = scrape(&http, &base).await;
        assert!(
            metrics
                .lines()
                .any(|l| l == r#"health_ready{service="order-service"} 0"#),
            "not ready in /metrics while draining:\n{metrics}"
        );
        while signalled.elapsed() < DRAIN - Duration::from_secs(2) {
            let (status, _) = readiness(&http, &base).await.expect("readiness answers");
            assert_eq!(status, 503, "not ready through the drain");
            taken.insert(post_order(&http, &base).await);
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        assert!(
            taken.len() > 5,
            "orders were taken through the drain: {taken:?}"
        );

        let status = service
            .wait_exit(DRAIN + Duration::from_secs(30))
            .await
            .expect("stopped");
        let stopped_after = signalled.elapsed();
        let output = service.log();
        assert!(status.success(), "a clean stop: {status}\n{output}");
        assert!(
            stopped_after >= DRAIN,
            "stopped {stopped_after:?} after SIGTERM, before its drain of {DRAIN:?}"
        );
        assert!(output.contains("readiness answers 503"), "{output}");

        left_its_group_at_once(broker, &group).await;

        every_order_taken_stored_and_published(broker, &db, &prefix, &taken).await;
    })
    .await
    .expect("the test did not finish within 3 minutes");
}

/// It left its consumer group before it exited: without the leave, it would stay a member
/// until its session (20 s) ran out, and its partitions wait as long.
async fn left_its_group_at_once(broker: &kafka::KafkaBroker, group: &str) {
    let exited = Instant::now();
    loop {
        let members = broker.client().group_members(group).await.expect("group");
        if members.is_empty() {
            break;
        }
        assert!(
            exited.elapsed() < Duration::from_secs(5),
            "still in its group 5 s after it exited: {members:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every order taken was stored, and its event published before the stop.
async fn every_order_taken_stored_and_published(
    broker: &kafka::KafkaBroker,
    db: &testkit::TestDatabase,
    prefix: &str,
    taken: &BTreeSet<String>,
) {
    let stored: Vec<uuid::Uuid> = sqlx::query_scalar("SELECT id FROM orders")
        .fetch_all(db.pool())
        .await
        .expect("orders");
    let stored: BTreeSet<String> = stored.iter().map(ToString::to_string).collect();
    assert_eq!(&stored, taken, "the orders stored are the orders taken");
    let topic = Topics::with_prefix(prefix).order_created;
    let published = broker
        .client()
        .read_all(&topic, Duration::from_secs(30))
        .await
        .expect("read order.created");
    let keys: BTreeSet<String> = published
        .iter()
        .map(|r| String::from_utf8_lossy(r.key.as_deref().unwrap_or_default()).into_owned())
        .collect();
    assert_eq!(published.len(), taken.len(), "one event per order");
    assert_eq!(&keys, taken, "each order's event published");
}

/// `GET /health/ready`: its status and body, or `None` if nothing answers.
async fn readiness(http: &reqwest::Client, base: &str) -> Option<(u16, Value)> {
    let response = http.get(format!("{base}/health/ready")).send().await.ok()?;
    let status = response.status().as_u16();
    Some((status, response.json().await.ok()?))
}

/// `GET /metrics`, which must answer.
async fn scrape(http: &reqwest::Client, base: &str) -> String {
    let response = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("GET /metrics answered");
    assert_eq!(response.status(), 200, "/metrics");
    response.text().await.expect("metrics text")
}

/// `POST /orders`, which must answer `201`; the new order's id.
async fn post_order(http: &reqwest::Client, base: &str) -> String {
    let response = http
        .post(format!("{base}/orders"))
        .header("content-type", "application/json")
        .body(r#"{"amount": 12.50}"#)
        .send()
        .await
        .expect("POST /orders answered");
    assert_eq!(response.status(), 201, "order taken");
    let order: Value = response.json().await.expect("json");
    order["id"].as_str().expect("id").to_owned()
}
