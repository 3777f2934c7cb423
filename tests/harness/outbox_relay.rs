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

fn relay(db: &TestDatabase, kafka: &testkit::kafka::Kafka) -> Relay {
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

        // One event per key per batch, so no event can overtake an older one of its key
        // that fails: four keys, five batches.
        let relay = relay(&db, kafka);
        for round in 0..5 {
            let batch = relay.publish_batch().await.expect("publish");
            assert_eq!((batch.taken, batch.published), (4, 4), "round {round}");
        }
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
            relay.publish_batch().await.expect("again"),
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

        let relay = relay(&db, kafka);
        let batch = relay.publish_batch().await.expect("publish");
        assert_eq!((batch.published, batch.parked), (2, 1), "{batch:?}");
        // The row behind the parked one waits; nothing else is left to do.
        let batch = relay.publish_batch().await.expect("publish again");
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
        let fixed = Relay::new(db.pool().clone(), producer, RelayConfig::default());
        for _ in 0..2 {
            fixed.publish_batch().await.expect("publish");
        }
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
