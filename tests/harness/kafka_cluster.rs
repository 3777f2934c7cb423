//! A 3-broker cluster keeps accepting `acks=all` writes and serving reads while one
//! broker is down, and a restarted broker rejoins.

use std::time::Duration;

use rdkafka::producer::FutureProducer;
use testkit::kafka::{self, KafkaClient};
use testkit::{unique_name, KafkaCluster, Record};

use crate::helpers::{within, MINUTES_2, MINUTES_5};

const PARTITIONS: i32 = 3;

/// Writes `count` records with `acks=all` and idempotence on; every one must be
/// acknowledged. A write may wait up to 200 s: while a broker is frozen, leadership
/// and the in-sync set move only once the controller has fenced it, and with the rest of
/// the suite on the same two cores that once took longer than 2 minutes.
async fn write(kafka: &KafkaClient, topic: &str, label: &str, count: usize) -> Vec<String> {
    let producer: FutureProducer = kafka
        .producer_config()
        .set("message.timeout.ms", "200000")
        .create()
        .expect("producer");
    let mut sent = Vec::with_capacity(count);
    for i in 0..count {
        let value = format!("{label}-{i}");
        let record = Record::new(value.clone()).key(format!("key-{}", i % 7));
        kafka::produce_with(&producer, topic, &record)
            .await
            .unwrap_or_else(|e| panic!("write {value} was not acknowledged: {e}"));
        sent.push(value);
    }
    sent
}

fn values(records: &[Record]) -> Vec<String> {
    let mut values: Vec<String> = records.iter().map(Record::payload_text).collect();
    values.sort();
    values
}

/// The leader of partition 0 of `topic`.
async fn leader_of_partition_zero(kafka: &KafkaClient, topic: &str) -> i32 {
    let metadata = kafka.metadata().await.expect("metadata");
    let topic = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .expect("topic");
    topic.partitions()[0].leader()
}

/// A fresh cluster and a topic whose partitions all have three in-sync replicas.
async fn cluster_with_replicated_topic(prefix: &str) -> (KafkaCluster, String) {
    let cluster = KafkaCluster::start().await.expect("cluster");
    let topic = unique_name(prefix);
    cluster
        .client()
        .create_topic(&topic, PARTITIONS, 3)
        .await
        .expect("create topic");
    cluster
        .wait_for_full_isr(&topic, MINUTES_2)
        .await
        .expect("replicas in sync");
    (cluster, topic)
}

#[tokio::test]
async fn writes_and_reads_go_on_when_a_broker_is_killed_and_it_rejoins_after_restart() {
    within(MINUTES_5, async {
        let (cluster, topic) = cluster_with_replicated_topic("replicated").await;
        let kafka = cluster.client();
        let mut expected = write(kafka, &topic, "before", 50).await;

        // Kill the leader of a partition, so a leader election must happen.
        let victim = leader_of_partition_zero(kafka, &topic).await;
        cluster.broker(victim).kill().await.expect("SIGKILL");
        assert!(!cluster.broker(victim).is_running().await.expect("state"));

        expected.extend(write(kafka, &topic, "during", 50).await);
        let new_leader = leader_of_partition_zero(kafka, &topic).await;
        assert_ne!(new_leader, victim, "a surviving broker leads partition 0");
        let read = kafka.read_all(&topic, MINUTES_2).await.expect("read");
        expected.sort();
        assert_eq!(
            values(&read),
            expected,
            "every acknowledged write is readable"
        );

        cluster.broker(victim).start().await.expect("restart");
        cluster
            .wait_for_full_isr(&topic, MINUTES_2)
            .await
            .expect("the killed broker rejoins");
        let metadata = kafka.metadata().await.expect("metadata");
        assert!(metadata.brokers().iter().any(|b| b.id() == victim));
    })
    .await;
}

#[tokio::test]
async fn writes_go_on_while_a_broker_is_paused_and_after_one_is_stopped_and_started() {
    within(Duration::from_secs(600), async {
        let (cluster, topic) = cluster_with_replicated_topic("paused").await;
        let kafka = cluster.client();

        // A paused broker is fenced once it misses heartbeats (6 s here; longer if it was
        // the active controller, which must be re-elected first); acks=all writes then go
        // on with the two brokers that remain in sync.
        let paused = cluster.broker(2);
        paused.pause().await.expect("pause");
        let mut expected = write(kafka, &topic, "paused", 20).await;
        paused.unpause().await.expect("unpause");
        cluster
            .wait_for_full_isr(&topic, MINUTES_2)
            .await
            .expect("the paused broker catches up");

        let stopped = cluster.broker(3);
        stopped.stop().await.expect("stop");
        expected.extend(write(kafka, &topic, "stopped", 20).await);
        stopped.start().await.expect("start");
        cluster
            .wait_for_full_isr(&topic, MINUTES_2)
            .await
            .expect("the stopped broker rejoins");

        let read = kafka
            .read_all(&topic, Duration::from_secs(60))
            .await
            .expect("read");
        expected.sort();
        assert_eq!(values(&read), expected);
    })
    .await;
}

#[tokio::test]
async fn topics_take_the_brokers_replication_two_in_sync_and_dead_letter_topics_room_and_time() {
    within(MINUTES_5, async {
        let cluster = KafkaCluster::start().await.expect("cluster");
        let kafka = cluster.client();
        let settings = ::kafka::KafkaSettings {
            connection: kafka.connection().clone(),
            topic_prefix: format!("{}.", unique_name("shape")),
            topic_partitions: 6,
            // Unset, as by default: the brokers' default.replication.factor (3 here).
            topic_replication: None,
            topic_dlt_retention_ms: None,
            topic_create: true,
            topic_min_replication: 3,
            topic_min_insync_replicas: 2,
        };
        let topics = events::Topics::with_prefix(&settings.topic_prefix);
        settings.ensure_topics(&topics.all()).await.expect("topics");

        let names: Vec<String> = topics
            .all()
            .iter()
            .flat_map(|t| [t.to_string(), ::kafka::dead_letter_topic(t)])
            .collect();
        let known = |m: &rdkafka::metadata::Metadata| {
            names.iter().all(|n| {
                m.topics()
                    .iter()
                    .any(|t| t.name() == n && t.partitions().iter().all(|p| p.leader() >= 0))
            })
        };
        let started = std::time::Instant::now();
        let metadata = loop {
            let metadata = kafka.metadata().await.expect("metadata");
            if known(&metadata) {
                break metadata;
            }
            let seen: Vec<&str> = metadata.topics().iter().map(|t| t.name()).collect();
            assert!(
                started.elapsed() < MINUTES_2,
                "the six topics were not all created: {seen:?}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        for name in topics.all() {
            let dlt = ::kafka::dead_letter_topic(name);
            for topic in [name, dlt.as_str()] {
                let described = metadata
                    .topics()
                    .iter()
                    .find(|t| t.name() == topic)
                    .unwrap_or_else(|| panic!("{topic} exists"));
                assert_eq!(described.partitions().len(), 6, "{topic}");
                assert!(
                    described
                        .partitions()
                        .iter()
                        .all(|p| p.replicas().len() == 3),
                    "{topic}: three replicas"
                );
                let config = kafka.topic_config(topic).await.expect("config");
                assert_eq!(config["min.insync.replicas"], "2", "{topic}");
            }
            let source = kafka.topic_config(name).await.expect("source");
            let dead = kafka.topic_config(&dlt).await.expect("dlt");
            let number = |c: &std::collections::BTreeMap<String, String>, k: &str| -> i64 {
                c[k].parse().expect("number")
            };
            assert_eq!(
                number(&dead, "max.message.bytes"),
                number(&source, "max.message.bytes") + ::kafka::topics::DEAD_LETTER_HEADROOM,
                "{dlt}: room for the largest source record and its headers"
            );
            assert_eq!(
                number(&dead, "retention.ms"),
                4 * number(&source, "retention.ms"),
                "{dlt}: kept longer than what it came from"
            );
        }
        // Where topics may not be created, these are fit: nothing falls short.
        let checked = ::kafka::KafkaSettings {
            topic_create: false,
            ..settings
        };
        assert_eq!(
            checked.prepare_topics(&topics.all()).await.expect("fit"),
            Vec::<::kafka::Shortfall>::new()
        );
    })
    .await;
}
