//! Group membership: with a session long enough to outlast a broker's failover (30 s by
//! default), partitions still change hands at once when an instance stops cleanly, and a
//! static member (`CONSUMER_INSTANCE_ID`) restarted in place takes its own back at once.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use consumer::{BatchHandler, ConsumerConfig, DeadLetterLimit, DeadLetterPolicy, Message, Outcome};
use testkit::kafka::KafkaClient;
use testkit::Record;
use tokio_util::sync::CancellationToken;

use crate::helpers::{eventually, produce_all, within, MINUTES_2};

const PARTITIONS: i32 = 4;
/// Well below the 30 s session: a handover that waited for the session would miss it.
const HANDOVER: Duration = Duration::from_secs(12);

/// Records which member applied which payload.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<(&'static str, String)>>>);

impl Seen {
    fn by(&self, member: &'static str) -> Member {
        Member {
            name: member,
            seen: self.clone(),
        }
    }

    fn payloads(&self) -> BTreeSet<String> {
        let seen = self.0.lock().expect("lock");
        seen.iter().map(|(_, p)| p.clone()).collect()
    }

    fn applied_by(&self, member: &str, payloads: &BTreeSet<String>) -> usize {
        let seen = self.0.lock().expect("lock");
        seen.iter()
            .filter(|(m, p)| *m == member && payloads.contains(p))
            .count()
    }
}

struct Member {
    name: &'static str,
    seen: Seen,
}

impl BatchHandler for Member {
    async fn handle(&self, batch: &[Message]) -> Result<Vec<Outcome>, consumer::BatchError> {
        let mut seen = self.seen.0.lock().expect("lock");
        seen.extend(batch.iter().map(|m| (self.name, m.record.payload_text())));
        Ok(vec![Outcome::Applied; batch.len()])
    }
}

type Running = tokio::task::JoinHandle<Result<consumer::Stats, consumer::ConsumerError>>;

/// A member of `group` on `topic` with the default session timeout, static when
/// `instance_id` is given.
fn member(
    kafka: &KafkaClient,
    group: &str,
    topic: &str,
    instance_id: Option<&str>,
    handler: Member,
    stop: &CancellationToken,
) -> Running {
    let mut config = ConsumerConfig::new(kafka.bootstrap(), group, &[topic]);
    config.instance_id = instance_id.map(str::to_owned);
    let policy =
        DeadLetterPolicy::new(kafka.bootstrap(), DeadLetterLimit::default()).expect("producer");
    tokio::spawn(consumer::run(config, handler, policy, stop.clone()))
}

/// `count` records labelled `label`, spread over the partitions by their keys.
fn records(label: &str, count: usize) -> (Vec<Record>, BTreeSet<String>) {
    let records: Vec<Record> = (0..count)
        .map(|i| Record::new(format!("{label}-{i}")).key(format!("key-{i}")))
        .collect();
    let payloads = records.iter().map(Record::payload_text).collect();
    (records, payloads)
}

/// Produces `count` records and waits up to `limit` until every one was applied.
async fn all_applied(
    kafka: &KafkaClient,
    topic: &str,
    seen: &Seen,
    label: &str,
    count: usize,
    limit: Duration,
) -> BTreeSet<String> {
    let (batch, payloads) = records(label, count);
    produce_all(kafka, topic, &batch).await;
    eventually(limit, &format!("every {label} record applied"), || async {
        seen.payloads().is_superset(&payloads)
    })
    .await;
    payloads
}

/// Two members that both hold partitions, after `label` records all went through.
async fn two_members_sharing(
    kafka: &KafkaClient,
    topic: &str,
    group: &str,
    seen: &Seen,
    static_ids: bool,
    stops: (&CancellationToken, &CancellationToken),
) -> (Running, Running) {
    let a = member(
        kafka,
        group,
        topic,
        static_ids.then_some("a"),
        seen.by("a"),
        stops.0,
    );
    let b = member(
        kafka,
        group,
        topic,
        static_ids.then_some("b"),
        seen.by("b"),
        stops.1,
    );
    let mut round = 0;
    loop {
        round += 1;
        let label = format!("warm-up-{round}");
        let payloads = all_applied(kafka, topic, seen, &label, 40, MINUTES_2).await;
        if seen.applied_by("a", &payloads) > 0 && seen.applied_by("b", &payloads) > 0 {
            return (a, b);
        }
        assert!(round < 20, "the two members never both held partitions");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn topic_with_partitions(kafka: &KafkaClient, prefix: &str) -> String {
    let topic = testkit::unique_name(prefix);
    kafka
        .create_topic(&topic, PARTITIONS, 1)
        .await
        .expect("topic");
    kafka
        .create_topic(&kafka::dead_letter_topic(&topic), PARTITIONS, 1)
        .await
        .expect("DLT");
    topic
}

#[tokio::test]
async fn a_static_member_that_stops_cleanly_hands_its_partitions_over_at_once() {
    within(MINUTES_2 * 2, async {
        let broker = testkit::kafka::broker().await.expect("kafka");
        let kafka = broker.client();
        let topic = topic_with_partitions(kafka, "static-stop").await;
        let group = testkit::unique_name("static-stop-group");
        let seen = Seen::default();
        let (stop_a, stop_b) = (CancellationToken::new(), CancellationToken::new());
        let (a, b) =
            two_members_sharing(kafka, &topic, &group, &seen, true, (&stop_a, &stop_b)).await;

        stop_b.cancel();
        b.await.expect("task").expect("b stops cleanly");
        // Every partition, b's included, is a's well before b's session would end.
        let after = all_applied(kafka, &topic, &seen, "after-b-stopped", 40, HANDOVER).await;
        assert_eq!(seen.applied_by("a", &after), 40);

        stop_a.cancel();
        a.await.expect("task").expect("a stops cleanly");
    })
    .await;
}

#[tokio::test]
async fn a_static_member_killed_and_restarted_in_place_takes_its_partitions_back_at_once() {
    within(MINUTES_2 * 2, async {
        let broker = testkit::kafka::broker().await.expect("kafka");
        let kafka = broker.client();
        let topic = topic_with_partitions(kafka, "static-restart").await;
        let group = testkit::unique_name("static-restart-group");
        let seen = Seen::default();
        let (stop_a, stop_b) = (CancellationToken::new(), CancellationToken::new());
        let (a, b) =
            two_members_sharing(kafka, &topic, &group, &seen, true, (&stop_a, &stop_b)).await;

        // Dropped mid-run, as in a crash: no leave is sent, the group still counts it.
        b.abort();
        let _ = b.await;
        let stop_b = CancellationToken::new();
        let b = member(
            kafka,
            &group,
            &topic,
            Some("b"),
            seen.by("b again"),
            &stop_b,
        );
        // The same instance id: the group hands it b's partitions without waiting for the
        // old b's session to end, so every record goes through well within it.
        let after = all_applied(kafka, &topic, &seen, "after-b-restarted", 40, HANDOVER).await;
        assert!(
            seen.applied_by("b again", &after) > 0,
            "the restarted b got no partition back"
        );

        stop_a.cancel();
        stop_b.cancel();
        a.await.expect("task").expect("a stops cleanly");
        b.await.expect("task").expect("b stops cleanly");
    })
    .await;
}
