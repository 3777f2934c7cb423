//! How fast orders are taken, beside the limit of the transaction that stores them, in one
//! run: `order_tx` is the order transaction itself (the order, its idempotency key and
//! its `order.created` outbox row, one statement) from `CONCURRENCY` tasks on as many
//! pooled connections, without HTTP; `post_orders` is `POST /orders` through the whole
//! order-service (HTTP, JSON, validation, the same statement, its relay publishing the
//! events) at the same concurrency. PostgreSQL with durability on; a fresh database per
//! sample.
//!
//! `just bench order_path`; the figures go to `target/bench-summary/order_path.md`.

#[path = "support/mod.rs"]
mod support;

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use events::{Amount, Currency, Topics};
use order_service::domain::NewOrder;
use order_service::store::{create_order, Created};
use support::{number, ratio, Figures, Running};
use testkit::postgres::PostgresServer;
use testkit::{unique_name, TestDatabase};

/// Orders per sample.
const ORDERS: usize = 10_000;
/// Requests (or transactions) in flight at once.
const CONCURRENCY: usize = 32;

struct Bench {
    kafka: testkit::kafka::KafkaClient,
    postgres: PostgresServer,
    figures: Figures,
}

impl Bench {
    async fn order_database(&self) -> TestDatabase {
        let db = self.postgres.fresh_database().await.expect("database");
        order_service::migrate(db.pool()).await.expect("migrations");
        db
    }

    /// The transaction alone, `CONCURRENCY` at a time.
    async fn order_tx(&self) -> Duration {
        let db = self.order_database().await;
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(CONCURRENCY as u32)
            .connect(&db.url)
            .await
            .expect("pool");
        let outbox =
            outbox::Outbox::new(Topics::with_prefix(&format!("{}.", unique_name("bench"))));
        let run = unique_name("tx");
        let elapsed = support::concurrently(CONCURRENCY, ORDERS, move |i| {
            let (pool, outbox, key) = (pool.clone(), outbox.clone(), format!("{run}-{i}"));
            async move {
                let new = NewOrder {
                    amount: Amount::new(rust_decimal::Decimal::new(22_222, 2)).expect("amount"),
                    currency: Currency::USD,
                };
                let created = create_order(&pool, &outbox, &new, Some(&key), None)
                    .await
                    .expect("order stored");
                assert!(matches!(created, Created::New(_)));
            }
        })
        .await;
        assert_eq!(count(&db, "orders").await, ORDERS as i64);
        assert_eq!(
            count(&db, "outbox").await,
            ORDERS as i64,
            "one event per order"
        );
        elapsed
    }

    /// `POST /orders` through order-service, `CONCURRENCY` at a time.
    async fn post_orders(&self) -> Duration {
        let db = self.postgres.fresh_database().await.expect("database");
        let prefix = format!("{}.", unique_name("bench"));
        let mut config = testkit::services::test_config::<order_service::Config>(
            &db.url,
            self.kafka.bootstrap(),
            &prefix,
        );
        config.service.consumer_group = unique_name("bench-order");
        let app = order_service::build(config).await.expect("build");
        let url = format!("http://127.0.0.1:{}/orders", app.port());
        let running = Running::start(app);
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(CONCURRENCY)
            .timeout(Duration::from_secs(30))
            .build()
            .expect("client");
        let run = unique_name("post");
        let elapsed = support::concurrently(CONCURRENCY, ORDERS, move |i| {
            let (client, url, key) = (client.clone(), url.clone(), format!("{run}-{i}"));
            async move {
                let response = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .header("idempotency-key", key)
                    .body(r#"{"amount": 222.22, "currency": "EUR"}"#)
                    .send()
                    .await
                    .expect("answered");
                assert_eq!(response.status().as_u16(), 201);
            }
        })
        .await;
        running.stop().await;
        assert_eq!(count(&db, "orders").await, ORDERS as i64);
        elapsed
    }
}

async fn count(db: &TestDatabase, table: &str) -> i64 {
    // The table name is one of this file's constants, never input.
    sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
        .fetch_one(db.pool())
        .await
        .expect("count")
}

fn order_path(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let bench = runtime.block_on(async {
        let (kafka, postgres) = support::servers().await;
        Bench {
            kafka,
            postgres,
            figures: Figures::default(),
        }
    });
    let mut group = c.benchmark_group("order_path");
    group.sample_size(10);
    group.sampling_mode(SamplingMode::Flat);
    group.warm_up_time(Duration::from_millis(1));
    group.measurement_time(Duration::from_secs(1));
    group.throughput(Throughput::Elements(ORDERS as u64));
    for name in ["order_tx", "post_orders"] {
        let bench = &bench;
        group.bench_function(name, |b| {
            b.to_async(&runtime).iter_custom(|iterations| async move {
                let mut total = Duration::ZERO;
                for _ in 0..iterations {
                    let elapsed = match name {
                        "order_tx" => bench.order_tx().await,
                        _ => bench.post_orders().await,
                    };
                    bench
                        .figures
                        .record(name, ORDERS as f64 / elapsed.as_secs_f64());
                    total += elapsed;
                }
                total
            });
        });
    }
    group.finish();

    if !support::is_check_run() {
        let f = &bench.figures;
        let row = |name: &str, what: &str| {
            format!(
                "| {what} | `{name}` | {} | {} |\n",
                f.median(name).map_or("—".into(), number),
                f.samples(name)
            )
        };
        let mut out = format!(
            "## Order path (`just bench order_path`)\n\n{ORDERS} orders per sample, \
             {CONCURRENCY} at a time; orders per second, median of the samples.\n\n\
             | what | bench | orders/s | samples |\n|---|---|---:|---:|\n"
        );
        out += &row(
            "order_tx",
            "the order transaction alone (one statement), no HTTP",
        );
        out += &row("post_orders", "**`POST /orders`** through order-service");
        out += &format!(
            "\n| ratio | value |\n|---|---:|\n| `POST /orders` ÷ the transaction's ceiling | {} |\n",
            ratio(f.median("post_orders"), f.median("order_tx"))
        );
        support::write_section("order_path", &out);
    }
}

criterion_group!(benches, order_path);
criterion_main!(benches);
