//! How many `order.created` events a payment-service applies per second: the whole
//! service (consumer in batches of 500, the simulated gateway, the outbox relay running
//! beside it) on a real single broker and a real PostgreSQL with durability on (`fsync`
//! and synchronous commit, as in production).
//!
//! Each sample puts `EVENTS` events on a fresh topic, starts a fresh service on a fresh
//! database and times from its first payment to its last, so consumer-group start-up is
//! not counted (nor is the first batch, at most 500 of the events).
//!
//! `just bench payment_consumer` (starts its own broker and PostgreSQL through the test kit).

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use events::{Currency, OrderCreated};
use testkit::postgres::PostgresServer;
use testkit::{kafka, unique_name, Record, TestDatabase};
use uuid::Uuid;

const EVENTS: usize = 50_000;

fn order_created(count: usize) -> Vec<Record> {
    (0..count)
        .map(|i| {
            let order_id = Uuid::now_v7();
            let amount = format!("{}.{:02}", 1 + i % 1000, i % 100)
                .parse()
                .expect("amount");
            let event = OrderCreated::event(order_id, amount, Currency::USD);
            Record::new(serde_json::to_vec(&event).expect("json")).key(order_id.to_string())
        })
        .collect()
}

async fn payments(db: &TestDatabase) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM payments")
        .fetch_one(db.pool())
        .await
        .unwrap_or(0)
}

/// One sample: the time from the first payment to the last.
async fn sample(kafka: &kafka::Kafka, postgres: &PostgresServer) -> Duration {
    let prefix = format!("{}.", unique_name("bench"));
    let db = postgres.fresh_database().await.expect("database");
    let mut config = payment_service::Config::for_test(&db.url, kafka.bootstrap(), &prefix);
    config.consumer_group = unique_name("bench");
    let topic = config.topics().order_created;
    let app = payment_service::build(config).await.expect("build");
    kafka
        .produce_all(&topic, &order_created(EVENTS))
        .await
        .expect("produce");

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(app.run_until_stopped(async {
        let _ = stopped.await;
    }));
    let deadline = Instant::now() + Duration::from_secs(300);
    while payments(&db).await == 0 {
        assert!(Instant::now() < deadline, "no payment within 300 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let first = Instant::now();
    while payments(&db).await < EVENTS as i64 {
        assert!(
            Instant::now() < deadline,
            "not every event paid within 300 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = first.elapsed();
    let _ = stop.send(());
    running
        .await
        .expect("service task")
        .expect("service stopped cleanly");
    elapsed
}

fn payment_consumer(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (kafka, postgres) = runtime.block_on(async {
        let kafka = kafka::broker().await.expect("kafka").client().clone();
        let postgres = PostgresServer::durable().await.expect("durable PostgreSQL");
        (kafka, postgres)
    });

    let mut group = c.benchmark_group("payment_consumer");
    group.throughput(Throughput::Elements(EVENTS as u64));
    group.sample_size(10);
    // Every sample is one run of seconds; criterion's growing iteration counts would
    // take many minutes.
    group.sampling_mode(SamplingMode::Flat);
    group.warm_up_time(Duration::from_millis(1));
    group.measurement_time(Duration::from_secs(30));
    group.bench_function("order_created_durable", |b| {
        b.to_async(&runtime).iter_custom(|iterations| {
            let (kafka, postgres) = (&kafka, &postgres);
            async move {
                let mut total = Duration::ZERO;
                for _ in 0..iterations {
                    total += sample(kafka, postgres).await;
                }
                total
            }
        });
    });
    group.finish();
}

criterion_group!(benches, payment_consumer);
criterion_main!(benches);
