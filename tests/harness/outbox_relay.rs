//! The outbox relay publishes what services wrote in their transactions: every event,
//! once, in order per key — also with two relays running at once.

use std::collections::HashMap;
use std::time::Duration;

use outbox::{Published, Relay, RelayConfig};
use testkit::{kafka, unique_name, TestDatabase};
use tokio_util::sync::CancellationToken;

use crate::helpers::{fresh_database, within, MINUTES_2, SECONDS_30};

/// A database with the order-service schema (which has the outbox table), and `count`
/// pending events for `topic` spread over `keys` keys, with sequence numbers as payload.
async fn outbox_with_events(topic: &str, count: usize, keys: usize) -> TestDatabase {
    let db = fresh_database().await;
    order_service::migrate(db.pool()).await.expect("migrations");
    for i in 0..count {
        sqlx::query(
            "INSERT INTO outbox (topic, message_key, payload, headers) VALUES ($1, $2, $3, $4)",
        )
        .bind(topic)
        .bind(format!("key-{}", i % keys))
        .bind(i.to_string().into_bytes())
        .bind(serde_json::json!({"event-id": format!("event-{i}"), "event-type": "test"}))
        .execute(db.pool())
        .await
        .expect("insert outbox row");
    }
    db
}

async fn pending(db: &TestDatabase) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
        .fetch_one(db.pool())
        .await
        .expect("count pending")
}

fn relay(db: &TestDatabase, kafka: &testkit::kafka::KafkaClient) -> Relay {
    let config = RelayConfig {
        batch_size: 50,
        poll_interval: Duration::from_millis(100),
        ..RelayConfig::default()
    };
    Relay::new(
        db.pool().clone(),
        kafka.producer().expect("producer"),
        config,
    )
}

async fn wait_until_all_published(db: &TestDatabase) {
    tokio::time::timeout(SECONDS_30, async {
        while pending(db).await > 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("every outbox row is marked published");
}

#[tokio::test]
async fn every_pending_event_is_published_with_its_key_and_headers_then_marked_sent() {
    within(MINUTES_2, async {
        let kafka = kafka::broker().await.expect("kafka").client();
        let topic = unique_name("outbox");
        kafka.create_topic(&topic, 3, 1).await.expect("topic");
        let db = outbox_with_events(&topic, 20, 4).await;

        // Four keys, five events each: each key's next event goes once the previous one
        // is acknowledged, all in one pass.
        let mut relay = relay(&db, kafka);
        let published = relay.publish_pending(SECONDS_30).await.expect("publish");
        assert_eq!(
            (published.taken, published.published),
            (20, 20),
            "{published:?}"
        );
        assert_eq!(pending(&db).await, 0);

        let records = kafka.read_all(&topic, SECONDS_30).await.expect("read");
        assert_eq!(records.len(), 20, "each event once");
        let mut seen: Vec<usize> = records
            .iter()
            .map(|r| r.payload_text().parse().unwrap())
            .collect();
        seen.sort();
        assert_eq!(seen, (0..20).collect::<Vec<_>>());
        let first = records
            .iter()
            .find(|r| r.payload.as_deref() == Some(b"0"))
            .expect("event 0");
        assert_eq!(first.key.as_deref(), Some(&b"key-0"[..]));
        assert_eq!(first.header_value("event-id"), Some(&b"event-0"[..]));

        assert_eq!(
            relay.publish_pending(SECONDS_30).await.expect("again"),
            Published::default(),
            "nothing twice"
        );
    })
    .await;
}

#[tokio::test]
async fn two_relays_at_once_publish_each_event_once_and_in_order_per_key() {
    within(MINUTES_2, async {
        let kafka = kafka::broker().await.expect("kafka").client();
        let topic = unique_name("outbox-two-relays");
        kafka.create_topic(&topic, 3, 1).await.expect("topic");
        let db = outbox_with_events(&topic, 400, 8).await;

        let stop = CancellationToken::new();
        let first = tokio::spawn(relay(&db, kafka).run(stop.clone()));
        let second = tokio::spawn(relay(&db, kafka).run(stop.clone()));
        wait_until_all_published(&db).await;
        stop.cancel();
        let _ = tokio::join!(first, second);

        let records = kafka.read_all(&topic, SECONDS_30).await.expect("read");
        assert_eq!(
            records.len(),
            400,
            "every record to the end of each partition"
        );
        let mut per_key: HashMap<Vec<u8>, Vec<usize>> = HashMap::new();
        for record in &records {
            let n: usize = record.payload_text().parse().unwrap();
            per_key
                .entry(record.key.clone().unwrap_or_default())
                .or_default()
                .push(n);
        }
        let mut all: Vec<usize> = per_key.values().flatten().copied().collect();
        all.sort();
        assert_eq!(all, (0..400).collect::<Vec<_>>(), "each event exactly once");
        for (key, sequence) in &per_key {
            assert!(
                sequence.windows(2).all(|w| w[0] < w[1]),
                "{} out of order: {sequence:?}",
                String::from_utf8_lossy(key)
            );
        }
    })
    .await;
}

/// Inserts one pending outbox row and returns its id.
async fn insert_row(db: &TestDatabase, topic: &str, key: &str, payload: Vec<u8>) -> i64 {
    sqlx::query_scalar(
        "INSERT INTO outbox (topic, message_key, payload) VALUES ($1, $2, $3) RETURNING id",
    )
    .bind(topic)
    .bind(key)
    .bind(payload)
    .fetch_one(db.pool())
    .await
    .expect("insert outbox row")
}

#[tokio::test]
async fn a_row_kafka_refuses_is_parked_other_keys_go_on_and_its_key_waits_until_requeued() {
    within(MINUTES_2, async {
        let kafka = kafka::broker().await.expect("kafka").client();
        let topic = unique_name("outbox-parked");
        kafka.create_topic(&topic, 3, 1).await.expect("topic");
        let db = fresh_database().await;
        order_service::migrate(db.pool()).await.expect("migrations");
        // Larger than the relay's producer takes (1000000 bytes), smaller than the
        // broker's limit: a cause an operator can fix.
        let big = vec![b'b'; 1_010_000];
        let first = insert_row(&db, &topic, "k1", b"k1-first".to_vec()).await;
        let parked = insert_row(&db, &topic, "k2", big.clone()).await;
        let behind = insert_row(&db, &topic, "k2", b"k2-after".to_vec()).await;
        let other = insert_row(&db, &topic, "k3", b"k3-first".to_vec()).await;

        let mut relay = relay(&db, kafka);
        let batch = relay.publish_pending(SECONDS_30).await.expect("publish");
        assert_eq!((batch.published, batch.parked), (2, 1), "{batch:?}");
        // The row behind the parked one waits; nothing else is left to do.
        let batch = relay
            .publish_pending(SECONDS_30)
            .await
            .expect("publish again");
        assert_eq!(batch, Published::default(), "k2's later row waits");
        let published: Vec<i64> =
            sqlx::query_scalar("SELECT id FROM outbox WHERE published_at IS NOT NULL ORDER BY id")
                .fetch_all(db.pool())
                .await
                .expect("published");
        assert_eq!(published, [first, other]);

        let rows = outbox::parked::list(db.pool()).await.expect("list");
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].id, rows[0].message_key.as_str()), (parked, "k2"));
        let error = rows[0].last_error.clone().unwrap_or_default();
        assert!(error.to_lowercase().contains("too large"), "{error}");
        assert_eq!(outbox::parked::count(db.pool()).await.expect("count"), 1);
        let on_kafka = kafka.read_all(&topic, SECONDS_30).await.expect("read");
        assert_eq!(on_kafka.len(), 2, "only the rows of the other keys");

        // The cause fixed (a producer that takes the record), the rows go, in order.
        assert_eq!(
            outbox::parked::requeue(db.pool(), None)
                .await
                .expect("requeue"),
            1
        );
        let producer = kafka
            .producer_config()
            .set("message.max.bytes", "1048576")
            .create()
            .expect("producer");
        relay.release().await;
        let mut fixed = Relay::new(db.pool().clone(), producer, RelayConfig::default());
        fixed.publish_pending(SECONDS_30).await.expect("publish");
        assert_eq!(pending(&db).await, 0, "{behind} published too");
        let on_kafka = kafka.read_all(&topic, SECONDS_30).await.expect("read");
        let k2: Vec<Vec<u8>> = on_kafka
            .iter()
            .filter(|r| r.key.as_deref() == Some(&b"k2"[..]))
            .map(|r| r.payload.clone().unwrap_or_default())
            .collect();
        assert_eq!(
            k2,
            [big, b"k2-after".to_vec()],
            "k2's events in their order"
        );
        assert_eq!(on_kafka.len(), 4, "each event once");
    })
    .await;
}

#[tokio::test]
async fn published_rows_and_old_inbox_records_are_removed_in_batches_and_nothing_pending() {
    within(MINUTES_2, async {
        let db = fresh_database().await;
        order_service::migrate(db.pool()).await.expect("migrations");
        let insert = |published: &'static str, parked: &'static str, n: i64| {
            let pool = db.pool().clone();
            async move {
                sqlx::query(&format!(
                    "INSERT INTO outbox (topic, message_key, payload, published_at, parked_at)
                     SELECT 't', 'k' || g, '\\x00', {published}, {parked}
                     FROM generate_series(1, $1) AS g"
                ))
                .bind(n)
                .execute(&pool)
                .await
                .expect("insert");
            }
        };
        insert("now() - interval '2 days'", "NULL", 2500).await; // to go
        insert("now()", "NULL", 10).await; // too young
        insert("NULL", "NULL", 7).await; // pending: never touched
        insert("NULL", "now() - interval '9 days'", 3).await; // parked: never touched
        sqlx::query(
            "INSERT INTO processed_events (consumer, event_id, processed_at)
             SELECT 'c', gen_random_uuid(), now() - interval '20 days' FROM generate_series(1, 1500)
             UNION ALL
             SELECT 'c', gen_random_uuid(), now() FROM generate_series(1, 5)",
        )
        .execute(db.pool())
        .await
        .expect("inbox");

        let removed = outbox::cleanup::clean(
            db.pool(),
            Duration::from_secs(24 * 3600),
            Duration::from_secs(14 * 24 * 3600),
        )
        .await
        .expect("clean");
        assert_eq!((removed.outbox, removed.inbox), (2500, 1500));
        let left: (i64, i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE published_at IS NOT NULL),
                    count(*) FILTER (WHERE published_at IS NULL AND parked_at IS NULL),
                    count(*) FILTER (WHERE parked_at IS NOT NULL)
             FROM outbox",
        )
        .fetch_one(db.pool())
        .await
        .expect("left");
        assert_eq!(left, (10, 7, 3));
        let inbox: i64 = sqlx::query_scalar("SELECT count(*) FROM processed_events")
            .fetch_one(db.pool())
            .await
            .expect("inbox");
        assert_eq!(inbox, 5);
        assert_eq!(
            outbox::cleanup::clean(
                db.pool(),
                Duration::from_secs(3600),
                Duration::from_secs(3600)
            )
            .await
            .expect("again")
            .outbox,
            0,
            "the young rows stay under a one-hour retention"
        );
    })
    .await;
}

/// Inserts `count` rows for `topic`, one every `every`, over `keys` keys, with sequence
/// numbers (from `from`) as payload.
async fn feed(
    db: &TestDatabase,
    topic: &str,
    from: usize,
    count: usize,
    keys: usize,
    every: Duration,
) {
    let mut ticks = tokio::time::interval(every);
    for i in from..from + count {
        ticks.tick().await;
        insert_row(
            db,
            topic,
            &format!("key-{}", i % keys),
            i.to_string().into_bytes(),
        )
        .await;
    }
}

/// Sequence numbers read back, per key, in the order they stand on the topic.
fn sequences_per_key(records: &[testkit::Record]) -> HashMap<String, Vec<usize>> {
    let mut per_key: HashMap<String, Vec<usize>> = HashMap::new();
    for record in records {
        per_key
            .entry(record.key_text())
            .or_default()
            .push(record.payload_text().parse().expect("sequence number"));
    }
    per_key
}

/// The leader of each partition of `topic`, by partition.
async fn leaders_of(kafka: &kafka::KafkaClient, topic: &str) -> Vec<i32> {
    let metadata = kafka.metadata().await.expect("metadata");
    let t = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .expect("topic");
    t.partitions().iter().map(|p| p.leader()).collect()
}

/// Every event of the 800 on the topic once, and each key's in order.
fn each_event_once_and_in_order_per_key(records: &[testkit::Record]) {
    let per_key = sequences_per_key(records);
    let mut all: Vec<usize> = per_key.values().flatten().copied().collect();
    all.sort_unstable();
    assert_eq!(all, (0..800).collect::<Vec<_>>(), "each event once");
    for (key, sequence) in &per_key {
        assert!(
            sequence.windows(2).all(|w| w[0] < w[1]),
            "{key}: {sequence:?}"
        );
    }
}

/// While the `victim` broker was frozen, events of keys on partitions other brokers lead
/// went on: the other partitions were caught up before the frozen broker's came back.
async fn the_others_went_on_while_the_broker_was_frozen(
    db: &testkit::TestDatabase,
    started: chrono::DateTime<chrono::Utc>,
    records: &[testkit::Record],
    (leaders, victim): (&[i32], i32),
) {
    // While the broker was frozen, events of keys on partitions other brokers lead
    // went on.
    let partition_of: HashMap<String, i32> = records
        .iter()
        .map(|r| (r.key_text(), r.partition))
        .collect();
    let published: Vec<(String, f64, f64)> = sqlx::query_as(
        "SELECT message_key, EXTRACT(EPOCH FROM published_at - $1)::float8,
                EXTRACT(EPOCH FROM created_at - $1)::float8 FROM outbox",
    )
    .bind(started)
    .fetch_all(db.pool())
    .await
    .expect("published");
    let per_second = |second: i32, theirs: bool| {
        published
            .iter()
            .filter(|(key, at, _)| {
                *at >= f64::from(second)
                    && *at < f64::from(second + 1)
                    && (leaders[partition_of[key] as usize] == victim) == theirs
            })
            .count()
    };
    let timeline: Vec<(i32, usize, usize)> = (0..45)
        .map(|s| (s, per_second(s, false), per_second(s, true)))
        .collect();
    // Kafka holds every acks=all write for some seconds until the frozen broker leaves
    // the in-sync replicas (it is fenced, or lags too long); then the other partitions
    // go on, while the frozen broker's wait for a new leader and for their requests to
    // the frozen one to time out. So the other partitions are caught up before the
    // frozen broker's come back: everything queued for them up to 2 s before was
    // published by then. (How long the first stall lasts depends on the load on the
    // machine; that the others do not wait for the frozen broker's does not.)
    let back = (11..45)
        .find(|&s| per_second(s, true) > 0)
        .expect("the frozen broker's partitions published again");
    let flowing = (11..back).filter(|&s| per_second(s, false) > 0).count();
    let behind: Vec<&(String, f64, f64)> = published
        .iter()
        .filter(|(key, at, queued)| {
            leaders[partition_of[key] as usize] != victim
                && *queued < f64::from(back - 2)
                && *at >= f64::from(back)
        })
        .collect();
    assert!(
        flowing >= 1 && behind.is_empty(),
        "the other partitions were not caught up when the frozen broker's came back at \
         {back} s: published in {flowing} of the seconds before, {} queued before {} s \
         published after; (second, others, the frozen broker's): {timeline:?}",
        behind.len(),
        back - 2
    );
}

#[tokio::test]
async fn a_broker_that_cannot_be_reached_delays_only_its_partitions_and_everything_is_published_once_in_order_after(
) {
    within(Duration::from_secs(600), async {
        let cluster = testkit::KafkaCluster::start().await.expect("cluster");
        let topic = unique_name("outbox-cut");
        let kafka = cluster.client();
        kafka.create_topic(&topic, 6, 3).await.expect("topic");
        cluster
            .wait_for_full_isr(&topic, MINUTES_2)
            .await
            .expect("in sync");
        let leaders = leaders_of(kafka, &topic).await;
        let victim = leaders[0];
        let db = fresh_database().await;
        order_service::migrate(db.pool()).await.expect("migrations");
        let producer = kafka::KafkaClient::at(cluster.bootstrap())
            .producer_config()
            .set("message.timeout.ms", "200000")
            .create()
            .expect("producer");
        let stop = CancellationToken::new();
        let relay = Relay::new(db.pool().clone(), producer, RelayConfig::default());
        let running = tokio::spawn(relay.run(stop.clone()));

        // 20 events a second for 40 s over 200 keys; the leader of partition 0 frozen
        // (unreachable) from 10 s to 30 s.
        let started = chrono::Utc::now();
        let fault = async {
            tokio::time::sleep(Duration::from_secs(10)).await;
            cluster.broker(victim).pause().await.expect("pause");
            tokio::time::sleep(Duration::from_secs(20)).await;
            cluster.broker(victim).unpause().await.expect("unpause");
        };
        tokio::join!(
            feed(&db, &topic, 0, 800, 200, Duration::from_millis(50)),
            fault
        );
        tokio::time::timeout(Duration::from_secs(300), async {
            while pending(&db).await > 0 {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
        .await
        .expect("everything published once the broker is back");
        stop.cancel();
        let _ = running.await;

        let records = kafka.read_all(&topic, MINUTES_2).await.expect("read");
        each_event_once_and_in_order_per_key(&records);
        the_others_went_on_while_the_broker_was_frozen(&db, started, &records, (&leaders, victim))
            .await;
    })
    .await;
}

/// A relay on a thread and runtime of its own, which the test can freeze (as SIGSTOP
/// would: none of its code runs) and thaw.
struct Freezable {
    /// Frozen while `true`.
    gate: std::sync::Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
    freeze: std::sync::Arc<tokio::sync::Notify>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Freezable {
    /// A relay on `database_url`, made and run on the thread (its pool and producer are
    /// its own, as another process's would be).
    fn run(
        database_url: String,
        kafka: testkit::kafka::KafkaClient,
        config: RelayConfig,
        stop: CancellationToken,
    ) -> Self {
        let gate = std::sync::Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
        let freeze = std::sync::Arc::new(tokio::sync::Notify::new());
        let (g, f) = (gate.clone(), freeze.clone());
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                tokio::spawn(async move {
                    loop {
                        f.notified().await;
                        // Blocks the runtime's only thread until the test thaws it.
                        let (frozen, thawed) = &*g;
                        let mut frozen = frozen.lock().unwrap_or_else(|e| e.into_inner());
                        while *frozen {
                            frozen = thawed.wait(frozen).unwrap_or_else(|e| e.into_inner());
                        }
                    }
                });
                let pool = sqlx::postgres::PgPoolOptions::new()
                    .max_connections(3)
                    .connect(&database_url)
                    .await
                    .expect("pool");
                let relay = Relay::new(pool, kafka.producer().expect("producer"), config);
                relay.run(stop).await;
            });
        });
        Self {
            gate,
            freeze,
            thread: Some(thread),
        }
    }

    /// Freezes the relay until [`Freezable::thaw`].
    fn freeze(&self) {
        *self.gate.0.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.freeze.notify_one();
    }

    fn thaw(&self) {
        *self.gate.0.lock().unwrap_or_else(|e| e.into_inner()) = false;
        self.gate.1.notify_all();
    }
}

impl Drop for Freezable {
    fn drop(&mut self) {
        self.thaw();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[tokio::test]
async fn a_relay_frozen_mid_flight_delays_its_slots_only_for_its_lease_then_the_other_publishes_everything(
) {
    within(MINUTES_2, async {
        let kafka = kafka::broker().await.expect("kafka").client();
        let topic = unique_name("outbox-frozen");
        kafka.create_topic(&topic, 6, 1).await.expect("topic");
        let db = fresh_database().await;
        order_service::migrate(db.pool()).await.expect("migrations");
        let lease = Duration::from_secs(4);
        let config = RelayConfig {
            lease,
            poll_interval: Duration::from_millis(100),
            ..RelayConfig::default()
        };
        let stop = CancellationToken::new();
        let first = Relay::new(
            db.pool().clone(),
            kafka.producer().expect("producer"),
            config.clone(),
        );
        let first = tokio::spawn(first.run(stop.clone()));
        let second = Freezable::run(db.url.clone(), kafka.clone(), config, stop.clone());
        // Both hold slots.
        tokio::time::sleep(lease).await;
        let owners: i64 = sqlx::query_scalar(
            "SELECT count(DISTINCT owner) FROM outbox_slots WHERE expires_at > now()",
        )
        .fetch_one(db.pool())
        .await
        .expect("owners");
        assert_eq!(owners, 2, "the slots are shared");

        feed(&db, &topic, 0, 200, 40, Duration::from_millis(5)).await;
        second.freeze();
        let frozen_at = std::time::Instant::now();
        feed(&db, &topic, 200, 200, 40, Duration::from_millis(5)).await;
        tokio::time::timeout(lease * 5, async {
            while pending(&db).await > 0 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await
        .expect("the other relay published everything");
        let took = frozen_at.elapsed();
        assert!(
            took < lease * 3,
            "published everything {took:?} after the freeze"
        );
        let held: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM outbox_slots WHERE expires_at > now() AND owner =
                 (SELECT owner FROM outbox_slots WHERE expires_at > now() LIMIT 1)",
        )
        .fetch_one(db.pool())
        .await
        .expect("held");
        assert_eq!(held, 64, "the live relay took every slot");

        second.thaw();
        stop.cancel();
        let _ = first.await;
        drop(second);
        let records = kafka.read_all(&topic, SECONDS_30).await.expect("read");
        let per_key = sequences_per_key(&records);
        let seen: std::collections::BTreeSet<usize> = per_key.values().flatten().copied().collect();
        assert_eq!(seen, (0..400).collect(), "every event at least once");
        for (key, sequence) in &per_key {
            // At least once: a repeat of an event already seen is allowed (the frozen
            // relay's sends in flight land late), never a new event before an older one
            // of its key.
            let firsts: Vec<usize> = {
                let mut seen = std::collections::HashSet::new();
                sequence
                    .iter()
                    .copied()
                    .filter(|n| seen.insert(*n))
                    .collect()
            };
            assert!(
                firsts.windows(2).all(|w| w[0] < w[1]),
                "{key}: {sequence:?}"
            );
        }
    })
    .await;
}
