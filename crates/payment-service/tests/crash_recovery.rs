//! A payment-service process killed (SIGKILL) after its database commit but before its
//! offset commit, then restarted: Kafka delivers the batch again, and still every order
//! has exactly one payment and one payment.completed queued.
//!
//! The service runs as a real OS process (this package's binary). Its background offset
//! commit is set to once a minute, so when every payment is in the database no offset
//! has been committed yet: the kill lands in exactly the window that matters.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use events::{Currency, OrderCreated, Topics};
use testkit::{kafka, postgres, unique_name, Record, TestDatabase};
use uuid::Uuid;

const ORDERS: usize = 500;
const GROUP: &str = "payment-service";

fn spawn_service(db: &TestDatabase, bootstrap: &str, prefix: &str, commit_ms: u64) -> Child {
    Command::new(env!("CARGO_BIN_EXE_payment-service"))
        .env("PAYMENT_LISTEN", "127.0.0.1:0")
        .env("PAYMENT_DATABASE_URL", &db.url)
        .env("KAFKA_BOOTSTRAP", bootstrap)
        .env("TOPIC_PREFIX", prefix)
        .env("PAYMENT_CONSUMER_GROUP", GROUP)
        .env("CONSUMER_COMMIT_INTERVAL_MS", commit_ms.to_string())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start payment-service")
}

async fn count(db: &TestDatabase, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(db.pool())
        .await
        .unwrap_or(-1)
}

async fn eventually(limit: Duration, what: &str, mut check: impl AsyncFnMut() -> bool) {
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < limit, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn killed_between_database_commit_and_offset_commit_it_pays_each_order_once() {
    tokio::time::timeout(Duration::from_secs(300), async {
        let broker = kafka::broker().await.expect("kafka");
        let client = broker.client();
        let prefix = format!("{}.", unique_name("crash"));
        let topics = Topics::with_prefix(&prefix);
        client
            .create_topic(&topics.order_created, 6, 1)
            .await
            .expect("topic");
        let records: Vec<Record> = (0..ORDERS)
            .map(|i| {
                let order_id = Uuid::now_v7();
                let amount = format!("{}.25", 1 + i).parse().expect("amount");
                let event = OrderCreated::event(order_id, amount, Currency::USD);
                Record::new(serde_json::to_vec(&event).expect("json")).key(order_id.to_string())
            })
            .collect();
        client
            .produce_all(&topics.order_created, &records)
            .await
            .expect("produce");
        let db = postgres::server()
            .await
            .expect("postgres")
            .fresh_database()
            .await
            .expect("db");

        let mut first = spawn_service(&db, broker.bootstrap(), &prefix, 60_000);
        eventually(
            Duration::from_secs(120),
            "every order paid in the database",
            async || count(&db, "SELECT count(*) FROM payments").await == ORDERS as i64,
        )
        .await;
        first.kill().expect("SIGKILL");
        first.wait().expect("reaped");
        let committed = client
            .committed_total(GROUP, &topics.order_created)
            .await
            .expect("offsets");
        assert!(
            committed < ORDERS as i64,
            "the kill must land before the offsets were committed (committed {committed})"
        );

        let mut second = spawn_service(&db, broker.bootstrap(), &prefix, 1000);
        eventually(
            Duration::from_secs(120),
            "the redelivered batch consumed",
            async || {
                client
                    .committed_total(GROUP, &topics.order_created)
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
        let _ = second.wait();
    })
    .await
    .expect("the test did not finish within 5 minutes");
}
