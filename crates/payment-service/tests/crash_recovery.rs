//! A payment-service process killed (SIGKILL) after its database commit but before its
//! offset commit, then restarted: Kafka delivers the batch again, and still every order
//! has exactly one payment and one payment.completed queued.
//!
//! The service runs as a real OS process (this package's binary). Its background offset
//! commit is set to once a minute, so when every payment is in the database no offset
//! has been committed yet: the kill lands in exactly the window that matters.
//!
//! And the window that matters for money: killed after the gateway took the charges and
//! before the database commit. The restarted process asks again, under the same
//! idempotency key per order, so a gateway that honours the key charges each order once.

use std::time::Duration;

use events::Topics;
use testkit::{eventually, kafka, postgres, unique_name, Record, ServiceProcess, TestDatabase};

const ORDERS: usize = 500;

/// `count` order.created events waiting on a topic of their own, and a fresh database.
struct Waiting {
    broker: &'static kafka::KafkaBroker,
    prefix: String,
    topics: Topics,
    records: Vec<Record>,
    db: TestDatabase,
}

async fn orders_waiting(name: &str, count: usize) -> Waiting {
    let broker = kafka::broker().await.expect("kafka");
    let prefix = format!("{}.", unique_name(name));
    let topics = Topics::with_prefix(&prefix);
    broker
        .client()
        .create_topic(&topics.order_created, 6, 1)
        .await
        .expect("topic");
    let records = testkit::scenario::order_created(count);
    broker
        .client()
        .produce_all(&topics.order_created, &records)
        .await
        .expect("produce");
    let db = postgres::server()
        .await
        .expect("postgres")
        .fresh_database()
        .await
        .expect("db");
    Waiting {
        broker,
        prefix,
        topics,
        records,
        db,
    }
}

/// payment-service as a process of its own: committing offsets every `commit_ms`,
/// waiting `batch_wait_ms` for a batch to fill, charging at `gateway` (the simulated
/// gateway when `None`).
fn start_service(
    db: &TestDatabase,
    bootstrap: &str,
    prefix: &str,
    (commit_ms, batch_wait_ms): (u64, u64),
    gateway: Option<&str>,
) -> ServiceProcess {
    let group = format!("{prefix}payment-service");
    let (commit, wait) = (commit_ms.to_string(), batch_wait_ms.to_string());
    let mut env = vec![
        ("PAYMENT_GATEWAY_TIMEOUT_MS", "10000"),
        ("PAYMENT_DATABASE_URL", db.url.as_str()),
        ("KAFKA_BOOTSTRAP", bootstrap),
        ("TOPIC_PREFIX", prefix),
        ("PAYMENT_CONSUMER_GROUP", group.as_str()),
        ("CONSUMER_COMMIT_INTERVAL_MS", commit.as_str()),
        ("CONSUMER_BATCH_WAIT_MS", wait.as_str()),
        ("PAYMENT_SHUTDOWN_DRAIN_SECS", "0"),
        ("RUST_LOG", "warn"),
    ];
    if let Some(url) = gateway {
        env.push(("PAYMENT_GATEWAY_URL", url));
    }
    ServiceProcess::start(
        env!("CARGO_BIN_EXE_payment-service"),
        "PAYMENT_LISTEN",
        &env,
    )
    .expect("start payment-service")
}

async fn count(db: &TestDatabase, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(db.pool())
        .await
        .unwrap_or(-1)
}

#[tokio::test]
async fn killed_between_database_commit_and_offset_commit_it_pays_each_order_once() {
    tokio::time::timeout(Duration::from_secs(300), async {
        let Waiting {
            broker,
            prefix,
            topics,
            db,
            ..
        } = orders_waiting("crash", ORDERS).await;
        let client = broker.client();
        let group = format!("{prefix}payment-service");
        let mut first = start_service(&db, broker.bootstrap(), &prefix, (60_000, 0), None);
        eventually(
            Duration::from_secs(120),
            "every order paid in the database",
            async || count(&db, "SELECT count(*) FROM payments").await == ORDERS as i64,
        )
        .await;
        first.kill().expect("SIGKILL");
        let committed = client
            .committed_total(&group, &topics.order_created)
            .await
            .expect("offsets");
        assert_eq!(
            committed, 0,
            "the kill lands after the database commit and before any offset commit"
        );

        let mut second = start_service(&db, broker.bootstrap(), &prefix, (1000, 0), None);
        eventually(
            Duration::from_secs(120),
            "the redelivered batch consumed",
            async || {
                client
                    .committed_total(&group, &topics.order_created)
                    .await
                    .unwrap_or(0)
                    == ORDERS as i64
            },
        )
        .await;
        assert_eq!(
            count(&db, "SELECT count(*) FROM payments").await,
            ORDERS as i64
        );
        assert_eq!(
            count(&db, "SELECT count(DISTINCT order_id) FROM payments").await,
            ORDERS as i64
        );
        assert_eq!(
            count(&db, "SELECT count(*) FROM outbox").await,
            ORDERS as i64,
            "one payment.completed per order"
        );
        let _ = second.kill();
    })
    .await
    .expect("the test did not finish within 5 minutes");
}

#[tokio::test]
async fn killed_after_the_gateway_charged_and_before_the_database_commit_it_charges_each_key_once()
{
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    const CHARGED: usize = 20;
    tokio::time::timeout(Duration::from_secs(300), async {
        let Waiting {
            broker,
            prefix,
            records,
            db,
            ..
        } = orders_waiting("crash-gateway", CHARGED).await;
        // The gateway takes the charge at once and answers 3 s later: the window in
        // which the process is killed.
        let gateway = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/charges"))
            .respond_with(
                ResponseTemplate::new(200)
                    .set_body_json(serde_json::json!({"status": "approved", "reference": "ch"}))
                    .set_delay(Duration::from_secs(3)),
            )
            .mount(&gateway)
            .await;
        let requests = || async { gateway.received_requests().await.unwrap_or_default() };

        let uri = gateway.uri();
        // The premise, made sure of: all twenty in the first batch (the service waits a
        // second for it to fill), so none is committed before the kill.
        let mut first = start_service(&db, broker.bootstrap(), &prefix, (1000, 1000), Some(&uri));
        eventually(
            Duration::from_secs(120),
            "every order charged at the gateway",
            async || requests().await.len() >= CHARGED,
        )
        .await;
        first.kill().expect("SIGKILL");
        assert_eq!(
            count(&db, "SELECT count(*) FROM payments").await,
            0,
            "the kill lands after the charges and before the database commit"
        );

        let mut second = start_service(&db, broker.bootstrap(), &prefix, (1000, 0), Some(&uri));
        eventually(
            Duration::from_secs(120),
            "every order paid after the restart",
            async || count(&db, "SELECT count(*) FROM payments").await == CHARGED as i64,
        )
        .await;
        let _ = second.kill();

        // Per idempotency key: the order it names, asked once by each process.
        let mut per_key: std::collections::BTreeMap<String, usize> = Default::default();
        for request in requests().await {
            let key = request
                .headers
                .get("idempotency-key")
                .and_then(|v| v.to_str().ok())
                .expect("every charge carries an idempotency key")
                .to_owned();
            let body: serde_json::Value = serde_json::from_slice(&request.body).expect("json");
            assert_eq!(body["order_id"], key.as_str(), "the key is the order's id");
            *per_key.entry(key).or_default() += 1;
        }
        let orders: std::collections::BTreeSet<String> = records
            .iter()
            .map(|r| String::from_utf8_lossy(r.key.as_deref().unwrap_or_default()).into_owned())
            .collect();
        assert_eq!(
            per_key
                .keys()
                .cloned()
                .collect::<std::collections::BTreeSet<_>>(),
            orders,
            "one idempotency key per order"
        );
        assert!(
            per_key.values().all(|n| *n == 2),
            "each key asked once before the kill and once after: {per_key:?}"
        );
        assert_eq!(
            count(&db, "SELECT count(DISTINCT order_id) FROM payments").await,
            CHARGED as i64,
            "one payment per order"
        );
        assert_eq!(
            count(&db, "SELECT count(*) FROM outbox").await,
            CHARGED as i64,
            "one payment.completed per order"
        );
    })
    .await
    .expect("the test did not finish within 5 minutes");
}
