//! Set-up shared by the suite.

use std::future::Future;
use std::time::Duration;

/// Runs a test body with an upper bound on its time, so a hung broker fails the test
/// instead of hanging CI.
/// Also shows the services' logs (warnings and errors, or what `RUST_LOG` asks for) in
/// the output of a test that fails.
pub async fn within<T>(limit: Duration, body: impl Future<Output = T>) -> T {
    static LOGS: std::sync::Once = std::sync::Once::new();
    LOGS.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| "warn,librdkafka=off,rdkafka=off".into());
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    });
    match tokio::time::timeout(limit, body).await {
        Ok(out) => out,
        Err(_) => panic!("the test did not finish within {limit:?}"),
    }
}

pub const SECONDS_30: Duration = Duration::from_secs(30);
pub const MINUTES_2: Duration = Duration::from_secs(120);
pub const MINUTES_5: Duration = Duration::from_secs(300);

/// A database of the test's own on this binary's PostgreSQL server.
pub async fn fresh_database() -> testkit::TestDatabase {
    testkit::postgres::server()
        .await
        .expect("postgres")
        .fresh_database()
        .await
        .expect("database")
}

/// A service running in-process on a free port, on a database of its own.
pub struct RunningService {
    pub base_url: String,
    pub db: testkit::TestDatabase,
    pub http: reqwest::Client,
    /// The topic names this service uses (its own prefix).
    pub topics: events::Topics,
    /// Its consumer group: the test's own, so tests running at once never rebalance
    /// each other.
    pub group: String,
    /// Sends the shutdown signal; dropping it stops the service too.
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<consumer::Stats>>>,
}

impl RunningService {
    fn new(
        port: u16,
        db: testkit::TestDatabase,
        topics: events::Topics,
        group: String,
        run: impl FnOnce(
            tokio::sync::oneshot::Receiver<()>,
        ) -> tokio::task::JoinHandle<anyhow::Result<consumer::Stats>>,
    ) -> Self {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = run(stopped);
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("http client");
        Self {
            base_url: format!("http://127.0.0.1:{port}"),
            db,
            http,
            topics,
            group,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Sends the shutdown signal and waits until the service has stopped cleanly;
    /// returns what its consumer did.
    pub async fn shut_down(&mut self) -> consumer::Stats {
        self.stop_and_wait().await.expect("service stopped cleanly")
    }

    /// Sends the shutdown signal and returns how the service ended: its consumer's
    /// counts, or why it did not stop cleanly.
    pub async fn stop_and_wait(&mut self) -> anyhow::Result<consumer::Stats> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => task.await.expect("service task"),
            None => Ok(consumer::Stats::default()),
        }
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.base_url))
            .send()
            .await
            .expect("GET")
    }

    /// Stops the service and hands back its database, to start another on the same data.
    pub async fn into_database(mut self) -> testkit::TestDatabase {
        self.shut_down().await;
        self.db
    }

    /// `SELECT count(*)` of a table of this service's database.
    pub async fn count(&self, table: &str) -> i64 {
        sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(self.db.pool())
            .await
            .expect("count")
    }
}

/// A unique topic prefix, so tests sharing one broker never share a topic.
pub fn topic_prefix() -> String {
    format!("{}.", testkit::unique_name("t"))
}

/// order-service on `bootstrap`, with topics named `prefix` + standard name and the
/// consumer group `prefix` + `order-service`.
/// Returns once it reports itself ready (`/health/ready`).
pub async fn order_service(bootstrap: &str, prefix: &str) -> RunningService {
    let db = fresh_database().await;
    let config = order_config(&db, bootstrap, prefix);
    running_order_service(db, config).await.ready().await
}

/// order-service's test settings: the defaults, on port 0, with the test's own topics
/// and consumer group.
pub fn order_config(
    db: &testkit::TestDatabase,
    bootstrap: &str,
    prefix: &str,
) -> order_service::Config {
    let mut config =
        testkit::services::test_config::<order_service::Config>(&db.url, bootstrap, prefix);
    config.service.consumer_group = format!("{prefix}order-service");
    config
}

/// order-service with a configuration of the test's own.
pub async fn running_order_service(
    db: testkit::TestDatabase,
    mut config: order_service::Config,
) -> RunningService {
    config.service.consumer.batch_size = 200;
    let topics = config.topics();
    let group = config.service.consumer_group.clone();
    let app = order_service::build(config)
        .await
        .expect("build order-service");
    let port = app.port();
    RunningService::new(port, db, topics, group, |stopped| {
        tokio::spawn(app.run_until_stopped(async {
            let _ = stopped.await;
        }))
    })
}

/// payment-service on `bootstrap`, with topics named `prefix` + standard name.
pub async fn payment_service(bootstrap: &str, prefix: &str) -> RunningService {
    payment_service_on(fresh_database().await, bootstrap, prefix).await
}

/// payment-service on a given database (to restart it on the same data); returns once it
/// reports itself ready.
pub async fn payment_service_on(
    db: testkit::TestDatabase,
    bootstrap: &str,
    prefix: &str,
) -> RunningService {
    let mut config =
        testkit::services::test_config::<payment_service::Config>(&db.url, bootstrap, prefix);
    config.service.consumer_group = format!("{prefix}payment-service");
    config.service.consumer.batch_size = 200;
    running_payment_service(db, config).await.ready().await
}

/// payment-service settings for fault tests: the gateway at `gateway` (the simulated one
/// if `None`), calls bounded by 500 ms, 3 attempts with short pauses between them.
pub fn payment_config(
    db: &testkit::TestDatabase,
    bootstrap: &str,
    prefix: &str,
    gateway: Option<&str>,
) -> payment_service::Config {
    let mut config =
        testkit::services::test_config::<payment_service::Config>(&db.url, bootstrap, prefix);
    config.service.consumer_group = format!("{prefix}payment-service");
    config.gateway_url = gateway.map(str::to_owned);
    config.gateway_timeout_ms = 500;
    config.service.db_acquire_timeout_secs = 2;
    config.service.consumer.batch_size = 200;
    config.service.consumer.max_attempts = 3;
    config.service.consumer.retry_delay_ms = 50;
    config.service.consumer.max_retry_delay_ms = 1000;
    // Probes of an open breaker twice a second.
    config.breaker.open_ms = 500;
    config
}

/// payment-service with a configuration of the test's own, used as it is.
pub async fn running_payment_service(
    db: testkit::TestDatabase,
    config: payment_service::Config,
) -> RunningService {
    let topics = config.topics();
    let group = config.service.consumer_group.clone();
    let app = payment_service::build(config)
        .await
        .expect("build payment-service");
    let port = app.port();
    RunningService::new(port, db, topics, group, |stopped| {
        tokio::spawn(app.run_until_stopped(async {
            let _ = stopped.await;
        }))
    })
}

/// An order-service with nothing on the Kafka side that a test could observe: its own
/// topic prefix on this binary's broker. For API tests.
pub async fn order_api() -> RunningService {
    let kafka = testkit::kafka::broker().await.expect("kafka");
    order_service(kafka.bootstrap(), &topic_prefix()).await
}

impl RunningService {
    /// POST /orders with a raw body and content type, and an optional idempotency key.
    pub async fn post_raw(
        &self,
        body: impl Into<reqwest::Body>,
        content_type: &str,
        idempotency_key: Option<&str>,
    ) -> reqwest::Response {
        let mut request = self
            .http
            .post(format!("{}/orders", self.base_url))
            .header("content-type", content_type)
            .body(body);
        if let Some(key) = idempotency_key {
            request = request.header("idempotency-key", key);
        }
        request.send().await.expect("POST /orders")
    }

    /// POST /orders with a JSON body.
    pub async fn post_order(
        &self,
        body: &serde_json::Value,
        key: Option<&str>,
    ) -> reqwest::Response {
        self.post_raw(body.to_string(), "application/json", key)
            .await
    }

    /// This service, once `/health/ready` answers `200` (within 30 s, or the test fails).
    pub async fn ready(self) -> Self {
        self.until_readiness(200, SECONDS_30).await;
        self
    }

    /// `GET /health/ready`: its status code and JSON body.
    pub async fn readiness(&self) -> (u16, serde_json::Value) {
        let response = self.get("/health/ready").await;
        let status = response.status().as_u16();
        (status, response.json().await.expect("readiness json"))
    }

    /// Waits until `/health/ready` answers `status`; then returns its body.
    pub async fn until_readiness(&self, status: u16, limit: Duration) -> serde_json::Value {
        let started = std::time::Instant::now();
        loop {
            let (now, body) = self.readiness().await;
            if now == status {
                return body;
            }
            assert!(
                started.elapsed() < limit,
                "readiness still {now}, not {status}, after {limit:?}: {body}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Waits until readiness reports the component `name` with `ok`; then returns the
    /// readiness status code and the component (its `detail` says why).
    pub async fn until_component(
        &self,
        name: &str,
        ok: bool,
        limit: Duration,
    ) -> (u16, serde_json::Value) {
        let started = std::time::Instant::now();
        loop {
            let (status, body) = self.readiness().await;
            let component = body["components"]
                .as_array()
                .and_then(|all| all.iter().find(|c| c["name"] == name))
                .cloned()
                .unwrap_or_default();
            if component["ok"] == ok {
                return (status, component);
            }
            assert!(
                started.elapsed() < limit,
                "readiness never reported {name} with ok = {ok} within {limit:?}: {body}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Rows in `orders` and in `outbox`: what a request left behind.
    pub async fn row_counts(&self) -> (i64, i64) {
        (self.count("orders").await, self.count("outbox").await)
    }
}

pub use testkit::eventually;

/// Produces `records` to `topic`, in order, each acknowledged.
pub async fn produce_all(
    kafka: &testkit::kafka::KafkaClient,
    topic: &str,
    records: &[testkit::Record],
) {
    kafka.produce_all(topic, records).await.expect("produce");
}

/// Records on `topic` now (all partitions).
pub async fn records_on(kafka: &testkit::kafka::KafkaClient, topic: &str) -> i64 {
    kafka.record_count(topic).await.expect("record count")
}

impl RunningService {
    /// Payments of this (payment-service) database with `status`.
    pub async fn payments_with(&self, status: &str) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM payments WHERE status = $1")
            .bind(status)
            .fetch_one(self.db.pool())
            .await
            .expect("count payments")
    }

    /// Orders of this (order-service) database with `status`.
    pub async fn orders_with(&self, status: &str) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM orders WHERE status = $1")
            .bind(status)
            .fetch_one(self.db.pool())
            .await
            .expect("count orders")
    }
}

/// The dead letters of `topic`: exactly `count` of them, or the test fails.
pub async fn dead_letters(
    kafka: &testkit::kafka::KafkaClient,
    topic: &str,
    count: usize,
) -> Vec<testkit::Record> {
    let dlt = kafka::dead_letter_topic(topic);
    eventually(
        MINUTES_2,
        &format!("{count} dead letters on {dlt}"),
        || async { records_on(kafka, &dlt).await >= count as i64 },
    )
    .await;
    let letters = kafka.read_all(&dlt, MINUTES_2).await.expect("dead letters");
    assert_eq!(letters.len(), count, "no other dead letters");
    letters
}

/// Header `name` of `record` as text; empty if it has none.
pub fn header_text(record: &testkit::Record, name: &str) -> String {
    String::from_utf8_lossy(record.header_value(name).unwrap_or_default()).into_owned()
}

/// The key of `record` as text.
pub fn key_text(record: &testkit::Record) -> String {
    String::from_utf8_lossy(record.key.as_deref().unwrap_or_default()).into_owned()
}

/// Waits until `group` has committed offsets adding up to `count` on `topic`: it has
/// consumed that many of its records (the topic starting at offset 0). Panics after
/// `limit` saying `what`.
pub async fn until_committed(
    kafka: &testkit::kafka::KafkaClient,
    group: &str,
    topic: &str,
    count: i64,
    limit: Duration,
    what: &str,
) {
    eventually(limit, what, || async {
        kafka.committed_total(group, topic).await.unwrap_or(0) == count
    })
    .await;
}
