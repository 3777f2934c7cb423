//! How fast `order.created` events are consumed and paid, beside the limits of what it is
//! made of, in one run so the ratios mean something on a noisy machine. On a real single
//! broker and a real PostgreSQL with durability on (`fsync`, synchronous commit):
//!
//! - `raw_drain`: rdkafka reading the topic, nothing else (Kafka's limit here);
//! - `runner_noop`: the consumer runner with a handler that does nothing;
//! - `handler_batch_N`: payment-service's handler through the runner, batches of N (1 to
//!   2000; 500 is the default);
//! - `service`: the whole payment-service (runner, handler, the relay publishing
//!   `payment.completed`, HTTP);
//! - `sql_ceiling`: the handler applied to the same events in batches of 500 without
//!   Kafka (PostgreSQL's limit for this write set);
//! - `per_message`: the pipeline as the Spring Boot original runs it, the baseline users
//!   know: per message an exists check, an insert, a commit and a synchronous offset
//!   commit;
//! - `replay`: the same events again, through the handler, on a database that has them
//!   (all duplicates).
//!
//! Each sample times from the first message settled to the last, so a consumer group
//! joining is not counted. `just bench consumer`; the figures go to
//! `target/bench-summary/consumer.md`.

#[path = "support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use consumer::{
    BatchError, BatchHandler, ConsumerConfig, DeadLetterLimit, DeadLetterPolicy, Outcome,
};
use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use events::{Envelope, OrderCreated, Topics};
use futures::StreamExt;
use payment_service::gateway::{Gateway, Simulated};
use payment_service::on_order_created::OnOrderCreated;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::Message;
use support::{number, ratio, Figures, Meter, Running};
use testkit::postgres::PostgresServer;
use testkit::{kafka::KafkaClient, unique_name, Record, TestDatabase};

/// Events on the topic; most variants consume them all.
const EVENTS: usize = 20_000;
/// The per-message baseline and the smallest batches are far slower: fewer events.
const PER_MESSAGE_EVENTS: usize = 2_000;
const LIMIT: Duration = Duration::from_secs(300);

struct Bench {
    kafka: KafkaClient,
    postgres: PostgresServer,
    topics: Topics,
    records: Vec<Record>,
    figures: Figures,
}

/// Counts what the inner handler settles.
struct Counting<H> {
    inner: H,
    meter: Arc<Meter>,
}

impl<H: BatchHandler> BatchHandler for Counting<H> {
    async fn handle(&self, batch: &[consumer::Message]) -> Result<Vec<Outcome>, BatchError> {
        let outcomes = self.inner.handle(batch).await?;
        self.meter.add(outcomes.len());
        Ok(outcomes)
    }
}

struct NoOp;

impl BatchHandler for NoOp {
    async fn handle(&self, batch: &[consumer::Message]) -> Result<Vec<Outcome>, BatchError> {
        Ok(vec![Outcome::Applied; batch.len()])
    }
}

impl Bench {
    async fn start() -> Self {
        let (kafka, postgres) = support::servers().await;
        let topics = Topics::with_prefix(&format!("{}.", unique_name("bench")));
        kafka
            .create_topic(&topics.order_created, 6, 1)
            .await
            .expect("topic");
        let records = testkit::scenario::order_created(EVENTS);
        kafka
            .produce_all(&topics.order_created, &records)
            .await
            .expect("produce");
        Self {
            kafka,
            postgres,
            topics,
            records,
            figures: Figures::default(),
        }
    }

    /// A fresh database with payment-service's schema.
    async fn payment_database(&self) -> TestDatabase {
        let db = self.postgres.fresh_database().await.expect("database");
        payment_service::migrate(db.pool())
            .await
            .expect("migrations");
        db
    }

    fn handler(&self, db: &TestDatabase) -> OnOrderCreated {
        OnOrderCreated::new(
            db.pool().clone(),
            outbox::Outbox::new(self.topics.clone()),
            Gateway::Simulated(Simulated {
                decline_above: None,
            }),
            16,
        )
    }

    /// rdkafka alone: a fresh group reads `n` records.
    async fn raw_drain(&self, n: usize) -> Duration {
        let consumer = self.raw_consumer();
        let meter = Meter::new(n);
        let mut stream = consumer.stream();
        let drained = async {
            while !meter.done.is_cancelled() {
                match stream.next().await {
                    Some(Ok(_)) => meter.add(1),
                    Some(Err(e)) => panic!("raw drain: {e}"),
                    None => break,
                }
            }
        };
        tokio::time::timeout(LIMIT, drained)
            .await
            .expect("raw drain within the limit");
        meter.elapsed()
    }

    fn raw_consumer(&self) -> StreamConsumer {
        let consumer: StreamConsumer = self
            .kafka
            .config()
            .set("group.id", unique_name("bench-raw"))
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .create()
            .expect("consumer");
        consumer
            .subscribe(&[&self.topics.order_created])
            .expect("subscribe");
        consumer
    }

    /// `handler` through the runner, with a fresh group, until `n` are settled.
    async fn through_runner<H: BatchHandler>(
        &self,
        handler: H,
        batch_size: usize,
        n: usize,
    ) -> Duration {
        let meter = Arc::new(Meter::new(n));
        let mut config = ConsumerConfig::new(
            self.kafka.connection(),
            &unique_name("bench-group"),
            &[&self.topics.order_created],
        );
        config.batch_size = batch_size;
        let dead_letters =
            DeadLetterPolicy::new(self.kafka.connection(), DeadLetterLimit::default())
                .expect("dead-letter producer");
        let stop = meter.done.clone();
        let counting = Counting {
            inner: handler,
            meter: meter.clone(),
        };
        let running = tokio::spawn(consumer::run(config, counting, dead_letters, stop.clone()));
        meter.wait("through the runner", LIMIT).await;
        let stats = running.await.expect("runner task").expect("runner");
        assert!(
            stats.dead_lettered.is_empty(),
            "nothing dead-lettered: {stats:?}"
        );
        meter.elapsed()
    }

    /// The handler through the runner on a fresh database; checks every event was paid.
    async fn handler_fresh(&self, batch_size: usize, n: usize) -> Duration {
        let db = self.payment_database().await;
        let elapsed = self.through_runner(self.handler(&db), batch_size, n).await;
        let paid = payments(&db).await;
        assert!(paid >= n as i64, "{paid} payments for {n} events");
        elapsed
    }

    /// The whole payment-service on a fresh database: from its first payment to its
    /// `EVENTS`th.
    async fn service(&self) -> Duration {
        let db = self.postgres.fresh_database().await.expect("database");
        let prefix = self.topics.order_created.trim_end_matches("order.created");
        let mut config = testkit::services::test_config::<payment_service::Config>(
            &db.url,
            self.kafka.bootstrap(),
            prefix,
        );
        config.service.consumer_group = unique_name("bench-service");
        let running = Running::start(payment_service::build(config).await.expect("build"));
        let deadline = Instant::now() + LIMIT;
        while payments(&db).await == 0 {
            assert!(Instant::now() < deadline, "no payment within {LIMIT:?}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let first = Instant::now();
        while payments(&db).await < EVENTS as i64 {
            assert!(
                Instant::now() < deadline,
                "not every event paid within {LIMIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let elapsed = first.elapsed();
        running.stop().await;
        assert_eq!(payments(&db).await, EVENTS as i64, "one payment per event");
        elapsed
    }

    /// The handler on the events in memory, batches of 500, no Kafka.
    async fn sql_ceiling(&self) -> Duration {
        let db = self.payment_database().await;
        let handler = self.handler(&db);
        let records: Vec<consumer::Message> = self
            .records
            .iter()
            .enumerate()
            .map(|(i, r)| {
                consumer::Message::new(Record {
                    topic: self.topics.order_created.clone(),
                    offset: i as i64,
                    ..r.clone()
                })
            })
            .collect();
        let started = Instant::now();
        for batch in records.chunks(500) {
            let outcomes = handler.handle(batch).await.expect("handler");
            assert!(outcomes.iter().all(|o| matches!(o, Outcome::Applied)));
        }
        let elapsed = started.elapsed();
        assert_eq!(payments(&db).await, EVENTS as i64);
        elapsed
    }

    /// The original's pipeline: one message at a time, each with its own transaction and
    /// a synchronous offset commit.
    async fn per_message(&self, n: usize) -> Duration {
        let db = self.postgres.fresh_database().await.expect("database");
        sqlx::raw_sql(
            "CREATE TABLE processed_events (event_id uuid PRIMARY KEY);
             CREATE TABLE payments (order_id uuid PRIMARY KEY, amount numeric(12,2) NOT NULL,
                                    status text NOT NULL)",
        )
        .execute(db.pool())
        .await
        .expect("baseline tables");
        let consumer = self.raw_consumer();
        let meter = Meter::new(n);
        let mut stream = consumer.stream();
        let pipeline = async {
            while !meter.done.is_cancelled() {
                let message = stream.next().await.expect("stream").expect("message");
                let event = Envelope::<OrderCreated>::decode(message.payload()).expect("event");
                let mut tx = db.pool().begin().await.expect("begin");
                let seen: bool = sqlx::query_scalar(
                    "SELECT EXISTS (SELECT 1 FROM processed_events WHERE event_id = $1)",
                )
                .bind(event.event_id)
                .fetch_one(&mut *tx)
                .await
                .expect("exists");
                if !seen {
                    sqlx::query("INSERT INTO processed_events (event_id) VALUES ($1)")
                        .bind(event.event_id)
                        .execute(&mut *tx)
                        .await
                        .expect("processed");
                    sqlx::query("INSERT INTO payments (order_id, amount, status) VALUES ($1, $2, 'COMPLETED')")
                        .bind(event.payload.order_id)
                        .bind(event.payload.amount.value())
                        .execute(&mut *tx)
                        .await
                        .expect("payment");
                }
                tx.commit().await.expect("commit");
                consumer
                    .commit_message(&message, CommitMode::Sync)
                    .expect("offset commit");
                meter.add(1);
            }
        };
        tokio::time::timeout(LIMIT, pipeline)
            .await
            .expect("per-message pipeline within the limit");
        meter.elapsed()
    }
}

async fn payments(db: &TestDatabase) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM payments")
        .fetch_one(db.pool())
        .await
        .unwrap_or(0)
}

/// Runs `sample` once per iteration and records each one's events per second.
fn measure<'a, F, Fut>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    runtime: &tokio::runtime::Runtime,
    bench: &'a Bench,
    name: &str,
    events: usize,
    sample: F,
) where
    F: Fn(&'a Bench) -> Fut + Copy,
    Fut: std::future::Future<Output = Duration>,
{
    group.throughput(Throughput::Elements(events as u64));
    group.bench_function(name, |b| {
        b.to_async(runtime).iter_custom(|iterations| async move {
            let mut total = Duration::ZERO;
            for _ in 0..iterations {
                let elapsed = sample(bench).await;
                bench
                    .figures
                    .record(name, events as f64 / elapsed.as_secs_f64().max(1e-9));
                total += elapsed;
            }
            total
        });
    });
}

fn consumer_bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let bench = runtime.block_on(Bench::start());
    let mut group = c.benchmark_group("consumer");
    group.sample_size(10);
    // Every sample is one run of seconds; criterion's growing iteration counts would take
    // many minutes.
    group.sampling_mode(SamplingMode::Flat);
    group.warm_up_time(Duration::from_millis(1));
    group.measurement_time(Duration::from_secs(1));

    measure(&mut group, &runtime, &bench, "raw_drain", EVENTS, |b| {
        b.raw_drain(EVENTS)
    });
    measure(&mut group, &runtime, &bench, "runner_noop", EVENTS, |b| {
        b.through_runner(NoOp, 500, EVENTS)
    });
    for (size, events) in [
        (1, PER_MESSAGE_EVENTS),
        (10, 5_000),
        (100, EVENTS),
        (500, EVENTS),
        (2000, EVENTS),
    ] {
        let name: &'static str = Box::leak(format!("handler_batch_{size}").into_boxed_str());
        measure(&mut group, &runtime, &bench, name, events, move |b| {
            b.handler_fresh(size, events)
        });
    }
    measure(&mut group, &runtime, &bench, "service", EVENTS, |b| {
        b.service()
    });
    measure(&mut group, &runtime, &bench, "sql_ceiling", EVENTS, |b| {
        b.sql_ceiling()
    });
    measure(
        &mut group,
        &runtime,
        &bench,
        "per_message",
        PER_MESSAGE_EVENTS,
        |b| b.per_message(PER_MESSAGE_EVENTS),
    );
    // Replays: one database that has every event, then a fresh group each sample.
    let replayed = runtime.block_on(async {
        let db = bench.payment_database().await;
        bench.through_runner(bench.handler(&db), 500, EVENTS).await;
        db
    });
    let replayed = &replayed;
    measure(
        &mut group,
        &runtime,
        &bench,
        "replay",
        EVENTS,
        move |b| async move {
            let elapsed = b.through_runner(b.handler(replayed), 500, EVENTS).await;
            assert_eq!(
                payments(replayed).await,
                EVENTS as i64,
                "a replay pays nothing again"
            );
            elapsed
        },
    );
    group.finish();

    if !support::is_check_run() {
        support::write_section("consumer", &summary(&bench.figures));
    }
}

fn summary(f: &Figures) -> String {
    let rate = |name: &str| f.median(name);
    let row = |name: &str, what: &str| {
        format!(
            "| {what} | `{name}` | {} | {} |\n",
            rate(name).map_or("—".into(), number),
            f.samples(name)
        )
    };
    let mut out = String::from(
        "## Consumer: `order.created` to payment (`just bench consumer`)\n\n\
         Events per second, median of the samples; each sample from the first event settled \
         to the last.\n\n| what | bench | events/s | samples |\n|---|---|---:|---:|\n",
    );
    out += &row(
        "raw_drain",
        "Kafka's limit: rdkafka reading the topic, nothing else",
    );
    out += &row("runner_noop", "the runner, a handler that does nothing");
    out += &row(
        "sql_ceiling",
        "PostgreSQL's limit: the handler's writes, batches of 500, no Kafka",
    );
    out += &row(
        "service",
        "**the whole payment-service** (runner, handler, relay, HTTP)",
    );
    for size in [1, 10, 100, 500, 2000] {
        out += &row(
            &format!("handler_batch_{size}"),
            &format!("the handler through the runner, batches of {size}"),
        );
    }
    out += &row(
        "per_message",
        "baseline: per message an exists check, an insert, a commit, a synchronous offset commit",
    );
    out += &row(
        "replay",
        "the same events again (all duplicates), through the handler",
    );
    out += "\n| ratio | value |\n|---|---:|\n";
    out += &format!(
        "| whole service ÷ SQL ceiling | {} |\n",
        ratio(rate("service"), rate("sql_ceiling"))
    );
    out += &format!(
        "| handler through the runner (500) ÷ SQL ceiling | {} |\n",
        ratio(rate("handler_batch_500"), rate("sql_ceiling"))
    );
    out += &format!(
        "| runner with a no-op handler ÷ raw drain | {} |\n",
        ratio(rate("runner_noop"), rate("raw_drain"))
    );
    out += &format!(
        "| whole service ÷ per-message baseline | {} |\n",
        ratio(rate("service"), rate("per_message"))
    );
    // Cost is time per event: the inverse of the rate.
    out += &format!(
        "| cost of a replayed event ÷ cost of a fresh one (through the handler, 500) | {} |\n",
        ratio(rate("handler_batch_500"), rate("replay"))
    );
    out
}

criterion_group!(benches, consumer_bench);
criterion_main!(benches);
