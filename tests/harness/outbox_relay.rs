//! The outbox relay publishes what services wrote in their transactions: every event,
//! once, in order per key — also with two relays running at once.

use std::collections::HashMap;
use std::time::Duration;

use outbox::{Relay, RelayConfig};
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

        let published = relay(&db, kafka).publish_batch().await.expect("publish");
        assert_eq!(published, 20);
        assert_eq!(pending(&db).await, 0);

        let records = kafka
            .read_topic(&topic, 20, SECONDS_30)
            .await
            .expect("read");
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
            relay(&db, kafka).publish_batch().await.expect("again"),
            0,
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

        let records = kafka
            .read_topic(&topic, 400, SECONDS_30)
            .await
            .expect("read");
        assert_eq!(records.len(), 400);
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
