//! The outbox relay's throughput on a 3-broker cluster (replication 3, `acks=all`,
//! idempotent producer) with PostgreSQL's durability on: 1, 2 and 4 relays side by side,
//! and 2 relays with the leader of one partition frozen (unreachable) throughout.
//!
//! Each case gets a fresh database; its relays start on the empty outbox and share its 64
//! slots out first (each its fair share), then `BENCH_RELAY_ROWS` (30 000) rows over
//! 3 000 keys are committed at once, and the rate is rows ÷ (last `published_at` − first).
//! The ceilings come from the same run: one producer writing the same number of records to
//! the same topic (Kafka's), and marking that many rows published in the relay's batches
//! of 500 (PostgreSQL's).
//!
//! The relays run in this process, each on a runtime (two threads) of its own with a
//! producer of its own; a service runs one relay, so this measures the relay code, not
//! the services around it. Not criterion: each case is one timed drain, run
//! `BENCH_RELAY_SAMPLES` (3) times, median reported. `just bench relay`; the table goes
//! to `target/bench-summary/relay.md`.

#[path = "support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use outbox::{Relay, RelayConfig};
use rdkafka::producer::FutureRecord;
use support::{number, Figures};
use testkit::postgres::PostgresServer;
use testkit::{unique_name, KafkaCluster, TestDatabase};
use tokio_util::sync::CancellationToken;

const PARTITIONS: i32 = 12;
const KEYS: usize = 3_000;
const DRAIN_LIMIT: Duration = Duration::from_secs(300);

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One relay on a thread and runtime of its own, as a service instance would run it.
struct RelayThread {
    stop: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RelayThread {
    fn start(db: &TestDatabase, bootstrap: &str) -> Self {
        let stop = CancellationToken::new();
        let (pool, bootstrap, token) = (db.pool().clone(), bootstrap.to_owned(), stop.clone());
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("relay runtime");
            runtime.block_on(async move {
                let producer = testkit::kafka::KafkaClient::at(&bootstrap)
                    .producer()
                    .expect("producer");
                Relay::new(pool, producer, RelayConfig::default())
                    .run(token)
                    .await;
            });
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for RelayThread {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn scalar(db: &TestDatabase, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(db.pool())
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Waits until `relays` relays hold every slot between them, none more than its fair
/// share (rounded up).
async fn wait_for_fair_shares(db: &TestDatabase, relays: usize) {
    let fair = (64 + relays as i64 - 1) / relays as i64;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (holders, most, held): (i64, i64, i64) = sqlx::query_as(
            "SELECT count(*), coalesce(max(n), 0), coalesce(sum(n), 0)::int8 FROM \
             (SELECT owner, count(*) AS n FROM outbox_slots \
              WHERE owner IS NOT NULL AND expires_at > now() GROUP BY owner) h",
        )
        .fetch_one(db.pool())
        .await
        .expect("slot holders");
        if holders == relays as i64 && most <= fair && held == 64 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{relays} relays did not share the slots out within 60 s: {holders} holders, \
             the largest share {most}, {held} slots held"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Commits `rows` rows over [`KEYS`] keys in one statement.
async fn commit_rows(db: &TestDatabase, topic: &str, rows: usize) {
    sqlx::query(
        "INSERT INTO outbox (topic, message_key, payload, headers) \
         SELECT $1, 'key-' || (i % $3), convert_to(i::text, 'UTF8'), \
                jsonb_build_object('event-id', 'event-' || i, 'event-type', 'bench') \
         FROM generate_series(0, $2 - 1) AS i",
    )
    .bind(topic)
    .bind(rows as i64)
    .bind(KEYS as i64)
    .execute(db.pool())
    .await
    .expect("outbox rows");
}

/// Waits until nothing is pending; panics after [`DRAIN_LIMIT`].
async fn wait_until_published(db: &TestDatabase) {
    let deadline = Instant::now() + DRAIN_LIMIT;
    loop {
        let pending = scalar(db, "SELECT count(*) FROM outbox WHERE published_at IS NULL").await;
        if pending == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{pending} rows still pending after {DRAIN_LIMIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Seconds from the first row published to the last, of the rows of `keys` (all rows
/// when `None`).
async fn publishing_span(db: &TestDatabase, keys: Option<&[String]>) -> f64 {
    sqlx::query_scalar(
        "SELECT EXTRACT(EPOCH FROM max(published_at) - min(published_at))::float8 \
         FROM outbox WHERE $1::text[] IS NULL OR message_key = ANY($1)",
    )
    .bind(keys.map(<[String]>::to_vec))
    .fetch_one(db.pool())
    .await
    .expect("publishing span")
}

struct Bench {
    cluster: KafkaCluster,
    postgres: PostgresServer,
    rows: usize,
    figures: Figures,
}

impl Bench {
    async fn topic(&self) -> String {
        let topic = unique_name("bench-relay");
        let kafka = self.cluster.client();
        kafka
            .create_topic(&topic, PARTITIONS, 3)
            .await
            .expect("topic");
        self.cluster
            .wait_for_full_isr(&topic, Duration::from_secs(120))
            .await
            .expect("in sync");
        topic
    }

    async fn database(&self) -> TestDatabase {
        let db = self.postgres.fresh_database().await.expect("database");
        order_service::migrate(db.pool()).await.expect("migrations");
        db
    }

    /// `relays` relays drain `rows` rows; records rows per second.
    async fn side_by_side(&self, relays: usize) {
        let (db, topic) = (self.database().await, self.topic().await);
        let running: Vec<RelayThread> = (0..relays)
            .map(|_| RelayThread::start(&db, self.cluster.bootstrap()))
            .collect();
        wait_for_fair_shares(&db, relays).await;
        commit_rows(&db, &topic, self.rows).await;
        wait_until_published(&db).await;
        drop(running);
        let span = publishing_span(&db, None).await;
        let rate = self.rows as f64 / span;
        eprintln!(
            "relay: {relays} relay(s): {} rows in {span:.2} s, {rate:.0}/s",
            self.rows
        );
        self.figures.record(&format!("relays {relays}"), rate);
        drop(db);
    }

    /// Two relays drain `rows` rows while the leader of partition 0 is frozen: records
    /// the rate of the keys on other partitions while it is, and how long the frozen
    /// leader's keys waited.
    async fn one_leader_unreachable(&self) {
        let (db, topic) = (self.database().await, self.topic().await);
        let kafka = self.cluster.client();
        // Which partition each key goes to: one record per key, read back.
        let keys: Vec<String> = (0..KEYS).map(|k| format!("key-{k}")).collect();
        let probe = unique_name("bench-relay-keys");
        kafka
            .create_topic(&probe, PARTITIONS, 3)
            .await
            .expect("probe topic");
        let producer = kafka.producer().expect("producer");
        for key in &keys {
            producer
                .send(
                    FutureRecord::to(&probe).key(key).payload(""),
                    Duration::from_secs(30),
                )
                .await
                .map_err(|(e, _)| e)
                .expect("probe record");
        }
        let partition_of: HashMap<String, i32> = kafka
            .read_all(&probe, Duration::from_secs(120))
            .await
            .expect("probe read")
            .iter()
            .map(|r| (r.key_text(), r.partition))
            .collect();
        let victim = leader_of(kafka, &topic, 0).await;
        let leaders: Vec<i32> =
            futures::future::join_all((0..PARTITIONS).map(|p| leader_of(kafka, &topic, p))).await;
        let (theirs, others): (Vec<String>, Vec<String>) = keys
            .iter()
            .cloned()
            .partition(|k| leaders[partition_of[k] as usize] == victim);

        let running: Vec<RelayThread> = (0..2)
            .map(|_| RelayThread::start(&db, self.cluster.bootstrap()))
            .collect();
        wait_for_fair_shares(&db, 2).await;
        self.cluster.broker(victim).pause().await.expect("pause");
        let frozen_at = Instant::now();
        commit_rows(&db, &topic, self.rows).await;
        let others_total = self.rows * others.len() / KEYS;
        let deadline = Instant::now() + DRAIN_LIMIT;
        loop {
            let published: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM outbox WHERE published_at IS NOT NULL \
                 AND message_key = ANY($1)",
            )
            .bind(&others)
            .fetch_one(db.pool())
            .await
            .expect("published");
            if published as usize >= others_total || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let others_done = frozen_at.elapsed();
        self.cluster
            .broker(victim)
            .unpause()
            .await
            .expect("unpause");
        wait_until_published(&db).await;
        let all_done = frozen_at.elapsed();
        drop(running);
        let span = publishing_span(&db, Some(&others)).await;
        let rate = others_total as f64 / span;
        eprintln!(
            "relay: leader {victim} frozen: {others_total} rows of other leaders' keys in \
             {span:.2} s ({rate:.0}/s; all of them {:.1} s after the freeze), {} keys \
             waited for the leader; everything published {:.1} s after the freeze",
            others_done.as_secs_f64(),
            theirs.len(),
            all_done.as_secs_f64()
        );
        self.figures.record("frozen leader: others", rate);
        self.figures.record(
            "frozen leader: others done after",
            others_done.as_secs_f64(),
        );
        self.figures
            .record("frozen leader: keys waiting", theirs.len() as f64);
        drop(db);
    }

    /// Kafka's ceiling: one idempotent `acks=all` producer writing as many records of the
    /// same size and keys to a topic like the relay's.
    async fn kafka_ceiling(&self) {
        let topic = self.topic().await;
        let producer = self.cluster.client().producer().expect("producer");
        let started = Instant::now();
        let sends = (0..self.rows).map(|i| {
            let key = format!("key-{}", i % KEYS);
            let payload = i.to_string();
            let producer = producer.clone();
            let topic = topic.clone();
            async move {
                producer
                    .send(
                        FutureRecord::to(&topic).key(&key).payload(&payload),
                        Duration::from_secs(30),
                    )
                    .await
                    .map_err(|(e, _)| e)
                    .expect("ack")
            }
        });
        futures::future::join_all(sends).await;
        let rate = self.rows as f64 / started.elapsed().as_secs_f64();
        eprintln!("relay: Kafka ceiling {rate:.0}/s");
        self.figures.record("kafka ceiling", rate);
    }

    /// PostgreSQL's ceiling for the relay's bookkeeping: marking as many rows published,
    /// 500 per transaction, with four connections.
    async fn postgres_ceiling(&self) {
        let db = self.database().await;
        commit_rows(&db, "ceiling", self.rows).await;
        let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM outbox ORDER BY id")
            .fetch_all(db.pool())
            .await
            .expect("ids");
        let chunks: Vec<Vec<i64>> = ids.chunks(500).map(<[i64]>::to_vec).collect();
        let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let chunks = std::sync::Arc::new(chunks);
        let started = Instant::now();
        let workers = (0..4).map(|_| {
            let (pool, next, chunks) = (db.pool().clone(), next.clone(), chunks.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(chunk) = chunks.get(i) else { break };
                    sqlx::query("UPDATE outbox SET published_at = now() WHERE id = ANY($1)")
                        .bind(chunk)
                        .execute(&pool)
                        .await
                        .expect("mark");
                }
            })
        });
        for worker in futures::future::join_all(workers).await {
            worker.expect("worker");
        }
        let rate = self.rows as f64 / started.elapsed().as_secs_f64();
        eprintln!("relay: PostgreSQL ceiling {rate:.0}/s");
        self.figures.record("postgres ceiling", rate);
        drop(db);
    }

    fn summary(&self) -> String {
        let f = |name: &str| self.figures.median(name).map_or("—".into(), number);
        let one = self.figures.median("relays 1");
        let cases = [
            ("1 relay", "relays 1"),
            ("2 relays", "relays 2"),
            ("4 relays", "relays 4"),
            (
                "2 relays, the leader of partition 0 frozen: keys of the other leaders",
                "frozen leader: others",
            ),
            (
                "ceiling: one producer, same records (Kafka)",
                "kafka ceiling",
            ),
            (
                "ceiling: marking rows published, 500 per transaction, 4 connections (PostgreSQL)",
                "postgres ceiling",
            ),
        ];
        let table: String = cases
            .iter()
            .map(|(case, name)| {
                let vs_one = support::ratio(self.figures.median(name), one);
                format!("| {case} | {} | {vs_one} |\n", f(name))
            })
            .collect();
        format!(
            "## Outbox relay (`relay`)\n\n\
             {rows} rows over {KEYS} keys committed at once, drained by relays that had \
             already shared the 64 slots; a 3-broker cluster (replication 3, \
             `min.insync.replicas` 2), a topic of {PARTITIONS} partitions; median of {samples} \
             runs. Relays in the benchmark's process, each with a runtime (two threads) and \
             producer of its own.\n\n\
             | case | rows/s | × one relay |\n|---|---:|---:|\n{table}\n\
             With the leader frozen, the other leaders' keys were all published {od} s after \
             the freeze; {kw} of the {KEYS} keys waited for the frozen leader (until it was \
             thawed, or a new leader took over).\n",
            rows = number(self.rows as f64),
            samples = self.figures.samples("relays 1"),
            od = f("frozen leader: others done after"),
            kw = f("frozen leader: keys waiting"),
        )
    }
}

async fn leader_of(kafka: &testkit::kafka::KafkaClient, topic: &str, partition: i32) -> i32 {
    let metadata = kafka.metadata().await.expect("metadata");
    metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .and_then(|t| t.partitions().iter().find(|p| p.id() == partition))
        .map(|p| p.leader())
        .expect("leader")
}

fn main() {
    let check_only = support::is_check_run();
    let rows = if check_only {
        500
    } else {
        setting("BENCH_RELAY_ROWS", 30_000)
    };
    let samples = if check_only {
        1
    } else {
        setting("BENCH_RELAY_SAMPLES", 3)
    };
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let bench = Bench {
            cluster: KafkaCluster::start().await.expect("cluster"),
            postgres: PostgresServer::durable().await.expect("durable PostgreSQL"),
            rows,
            figures: Figures::default(),
        };
        for sample in 1..=samples {
            eprintln!("relay: sample {sample} of {samples}");
            for relays in [1, 2, 4] {
                bench.side_by_side(relays).await;
            }
            bench.one_leader_unreachable().await;
            bench.kafka_ceiling().await;
            bench.postgres_ceiling().await;
        }
        if !check_only {
            support::write_section("relay", &bench.summary());
        }
    });
}
