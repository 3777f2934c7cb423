//! Set-up shared by the suite.

use std::future::Future;
use std::time::Duration;

/// Runs a test body with an upper bound on its time, so a hung broker fails the test
/// instead of hanging CI.
pub async fn within<T>(limit: Duration, body: impl Future<Output = T>) -> T {
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

/// An order-service running in-process on a free port, on a database of its own.
pub struct OrderService {
    pub base_url: String,
    pub db: testkit::TestDatabase,
    pub http: reqwest::Client,
    /// Stops the service when dropped.
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl OrderService {
    pub async fn start() -> Self {
        let db = fresh_database().await;
        let config = order_service::Config::for_database(&db.url);
        let app = order_service::Application::build(config)
            .await
            .expect("build order-service");
        let base_url = format!("http://127.0.0.1:{}", app.port());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(app.run_until_stopped(async {
            let _ = stopped.await;
        }));
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("http client");
        Self {
            base_url,
            db,
            http,
            _stop: stop,
        }
    }

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

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.base_url))
            .send()
            .await
            .expect("GET")
    }

    /// Rows in `orders` and in `outbox`: what a request left behind.
    pub async fn row_counts(&self) -> (i64, i64) {
        let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
            .fetch_one(self.db.pool())
            .await
            .expect("count orders");
        let events: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
            .fetch_one(self.db.pool())
            .await
            .expect("count outbox");
        (orders, events)
    }
}
