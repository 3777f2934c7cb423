//! Poison and dead letters: every message that can never be processed lands on
//! `<topic>.DLT` unchanged, with headers saying where it came from and why; the good
//! messages around it are processed once and in order; a stream of nothing but poison
//! stops the consumer instead of emptying into its DLT; and a dead letter whose cause is
//! fixed is replayed with `redrive` and processed once, however often it is replayed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use consumer::{
    BatchHandler, ConsumerConfig, DeadLetterLimit, DeadLetterPolicy, Message, Outcome, Record,
};
use events::{Currency, OrderCreated, Topics};
use kafka::dead_letter::headers;
use payment_service::gateway::{Gateway, Simulated};
use payment_service::on_order_created::OnOrderCreated;
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, RngAlgorithm, TestRng, TestRunner};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use wiremock::{MockServer, ResponseTemplate};

use crate::gateway_double::{answer_charges, answer_charges_containing, approved, gateway};
use crate::helpers::{
    dead_letters, eventually, fresh_database, header_text, key_text, payment_config,
    payment_service, produce_all, records_on, running_payment_service, topic_prefix,
    until_committed, within, RunningService, MINUTES_2, MINUTES_5,
};

/// A good order.created event, as JSON to mutate into poison.
fn good_event() -> Value {
    let event = OrderCreated::event(
        Uuid::now_v7(),
        "10.00".parse().expect("amount"),
        Currency::USD,
    );
    serde_json::to_value(&event).expect("json")
}

fn with(mut event: Value, pointer: &str, value: Value) -> Vec<u8> {
    *event.pointer_mut(pointer).expect("field") = value;
    serde_json::to_vec(&event).expect("json")
}

fn without(mut event: Value, parent: &str, field: &str) -> Vec<u8> {
    let object = if parent.is_empty() {
        &mut event
    } else {
        event.pointer_mut(parent).expect("parent")
    };
    object.as_object_mut().expect("object").remove(field);
    serde_json::to_vec(&event).expect("json")
}

/// Payloads that can never be an order.created this code processes, one kind each.
fn poison() -> impl Strategy<Value = Option<Vec<u8>>> {
    let fields = prop::sample::select(vec![
        ("", "event_id"),
        ("", "event_type"),
        ("", "schema_version"),
        ("", "occurred_at"),
        ("", "correlation_id"),
        ("", "payload"),
        ("/payload", "order_id"),
        ("/payload", "amount"),
        ("/payload", "currency"),
    ]);
    let wrong_types = prop::sample::select(vec![
        ("/event_id", json!(42)),
        ("/schema_version", json!("1")),
        ("/occurred_at", json!(true)),
        ("/payload", json!([1, 2, 3])),
        ("/payload/order_id", json!({"id": 1})),
        ("/payload/amount", json!("ten")),
        ("/payload/currency", json!(840)),
    ]);
    let numbers = prop::sample::select(vec![
        "1e400",
        "-5.00",
        "0",
        "0.001",
        "1000000.01",
        "123456789012345678901234567890.12",
        "NaN",
        "18446744073709551616",
    ]);
    let odd_text = prop::sample::select(vec![
        "usd",
        "€UR",
        "U\u{301}SD",
        "\u{202E}DSU",
        "US\u{0}",
        "🙂🙂🙂",
        "",
    ]);
    prop_oneof![
        // Arbitrary bytes, empty ones and no value at all (a tombstone) included.
        prop::collection::vec(any::<u8>(), 0..300).prop_map(Some),
        Just(None),
        // A good event cut short anywhere.
        any::<prop::sample::Index>().prop_map(|at| {
            let bytes = serde_json::to_vec(&good_event()).expect("json");
            Some(bytes[..at.index(bytes.len())].to_vec())
        }),
        // Deeply nested JSON, beyond any sane depth.
        (1usize..3000).prop_map(|depth| Some(
            format!("{}{}", "[".repeat(depth), "]".repeat(depth)).into_bytes()
        )),
        (1usize..1000).prop_map(|depth| {
            Some(format!("{}1{}", r#"{"payload":"#.repeat(depth), "}".repeat(depth)).into_bytes())
        }),
        wrong_types.prop_map(|(pointer, value)| Some(with(good_event(), pointer, value))),
        // Numbers out of range, too precise, or too large for any type.
        numbers.prop_map(|n| {
            let text = serde_json::to_string(&good_event())
                .expect("json")
                .replace("10.00", n);
            Some(text.into_bytes())
        }),
        odd_text
            .clone()
            .prop_map(|c| Some(with(good_event(), "/payload/currency", json!(c)))),
        odd_text.prop_map(|t| Some(with(
            good_event(),
            "/event_type",
            json!(format!("order.created{t}x"))
        ))),
        fields.prop_map(|(parent, field)| Some(without(good_event(), parent, field))),
        prop::sample::select(vec!["", "/payload"]).prop_map(|parent| {
            let mut event = good_event();
            let object = if parent.is_empty() {
                &mut event
            } else {
                event.pointer_mut(parent).expect("parent")
            };
            object
                .as_object_mut()
                .expect("object")
                .insert("unknown".into(), json!(1));
            Some(serde_json::to_vec(&event).expect("json"))
        }),
        Just(Some(with(good_event(), "/schema_version", json!(2)))),
        Just(Some(with(
            good_event(),
            "/event_type",
            json!("payment.completed")
        ))),
    ]
}

/// One message of a generated stream: a good event or poison, under one of a few keys.
#[derive(Debug, Clone)]
enum Item {
    Good,
    Poison(Option<Vec<u8>>),
}

fn stream() -> impl Strategy<Value = Vec<(Item, u8)>> {
    let item = prop_oneof![3 => Just(Item::Good), 2 => poison().prop_map(Item::Poison)];
    prop::collection::vec((item, 0u8..4), 60..120)
}

/// The key and offset of each message a handler applied, in the order applied.
type Applied = Arc<Mutex<Vec<(Vec<u8>, i64)>>>;

/// The real handler, plus a record of which messages it applied, in order.
struct Recording {
    inner: OnOrderCreated,
    applied: Applied,
}

impl BatchHandler for Recording {
    async fn handle(&self, batch: &[Message]) -> Result<Vec<Outcome>, consumer::BatchError> {
        let outcomes = self.inner.handle(batch).await?;
        let mut applied = self.applied.lock().expect("lock");
        for (message, outcome) in batch.iter().zip(&outcomes) {
            if *outcome == Outcome::Applied {
                applied.push((message.key.clone().unwrap_or_default(), message.offset));
            }
        }
        Ok(outcomes)
    }
}

/// A payment-service handler on a fresh database, with the simulated gateway.
async fn handler(db: &testkit::TestDatabase, topics: &Topics) -> OnOrderCreated {
    payment_service::migrate(db.pool())
        .await
        .expect("migrations");
    OnOrderCreated::new(
        db.pool().clone(),
        outbox::Outbox::new(topics.clone()),
        Gateway::Simulated(Simulated::default()),
        1,
    )
}

async fn create_topics(kafka: &testkit::kafka::KafkaClient, topic: &str) {
    kafka.create_topic(topic, 3, 1).await.expect("topic");
    kafka
        .create_topic(&kafka::dead_letter_topic(topic), 3, 1)
        .await
        .expect("DLT");
}

/// The seed of the generated poison streams: `POISON_SEED` if set (to repeat a run),
/// otherwise new each run. Printed either way.
fn poison_seed() -> u64 {
    let seed = std::env::var("POISON_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        });
    println!("poison streams generated from seed {seed}; POISON_SEED={seed} repeats them");
    seed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_goes_to_the_dlt_unchanged_and_good_events_are_processed_once_in_order() {
    within(MINUTES_5 * 2, async {
        let kafka = testkit::kafka::broker().await.expect("kafka");
        let seed = poison_seed();
        let mut bytes = [0u8; 32];
        bytes[..8].copy_from_slice(&seed.to_le_bytes());
        // Each case needs Kafka and PostgreSQL, so a few generated cases, not hundreds; a
        // failure shrinks (each step on fresh topics and a fresh database) to a smaller
        // stream that still fails, and proptest prints it.
        let config = ProptestConfig {
            cases: 3,
            max_shrink_iters: 24,
            failure_persistence: None,
            ..ProptestConfig::default()
        };
        let mut runner =
            TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &bytes));
        let runtime = tokio::runtime::Handle::current();
        let case = std::sync::atomic::AtomicUsize::new(0);
        let result = tokio::task::block_in_place(|| {
            runner.run(&stream(), |items| {
                let case = case.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                runtime.block_on(check_poison_mix(kafka.client(), case, &items));
                Ok(())
            })
        });
        if let Err(failure) = result {
            panic!("seed {seed}: {failure}");
        }
    })
    .await;
}

async fn check_poison_mix(kafka: &testkit::kafka::KafkaClient, case: usize, items: &[(Item, u8)]) {
    let topics = Topics::with_prefix(&topic_prefix());
    create_topics(kafka, &topics.order_created).await;
    let db = fresh_database().await;
    let applied = Arc::new(Mutex::new(Vec::new()));
    let recording = Recording {
        inner: handler(&db, &topics).await,
        applied: applied.clone(),
    };

    // Produce the stream; remember where each message went.
    let records: Vec<Record> = items
        .iter()
        .enumerate()
        .map(|(i, (item, key))| {
            let record = match item {
                Item::Good => testkit::scenario::order_created(1).remove(0),
                Item::Poison(payload) => Record {
                    payload: payload.clone(),
                    ..Record::default()
                },
            };
            Record {
                key: Some(format!("customer-{key}").into_bytes()),
                ..record
            }
            .header("trace-id", format!("case-{case}-message-{i}"))
        })
        .collect();
    let written = kafka
        .produce_all(&topics.order_created, &records)
        .await
        .expect("produce");
    let mut poison = Vec::new(); // (record, partition, offset)
    let mut good = Vec::new(); // (order id, key, offset)
    for (((item, key), record), (partition, offset)) in items.iter().zip(records).zip(written) {
        match item {
            Item::Good => {
                let event: Value =
                    serde_json::from_slice(record.payload.as_deref().expect("payload"))
                        .expect("json");
                let order_id: Uuid = event["payload"]["order_id"]
                    .as_str()
                    .expect("id")
                    .parse()
                    .expect("uuid");
                good.push((order_id, format!("customer-{key}"), offset));
            }
            Item::Poison(_) => poison.push((record, partition, offset)),
        }
    }

    let group = testkit::unique_name("payment-service");
    let mut config = ConsumerConfig::new(kafka.connection(), &group, &[&topics.order_created]);
    config.batch_size = 7; // many batches, poison at every position in them
    let limit = DeadLetterLimit {
        max_ratio: 1.0, // this stream is poison by design
        ..DeadLetterLimit::default()
    };
    let dead_letters_to = DeadLetterPolicy::new(kafka.connection(), limit).expect("producer");
    let stop = CancellationToken::new();
    let running = tokio::spawn(consumer::run(
        config,
        recording,
        dead_letters_to,
        stop.clone(),
    ));

    let letters = dead_letters(kafka, &topics.order_created, poison.len()).await;
    eventually(MINUTES_2, "every good event paid", || async {
        let paid: i64 = sqlx::query_scalar("SELECT count(*) FROM payments")
            .fetch_one(db.pool())
            .await
            .expect("count");
        paid == good.len() as i64
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await; // anything extra would show now
    stop.cancel();
    let stats = running
        .await
        .expect("consumer task")
        .expect("the consumer never stopped by itself");

    // Every poison record, unchanged, on the same partition, with its diagnostics.
    let dlt = kafka::dead_letter_topic(&topics.order_created);
    assert_eq!(
        records_on(kafka, &dlt).await,
        poison.len() as i64,
        "no other dead letters"
    );
    let by_origin: HashMap<(i32, i64), &Record> = letters
        .iter()
        .map(|l| {
            let partition = header_text(l, headers::ORIGINAL_PARTITION)
                .parse()
                .expect("partition");
            let offset = header_text(l, headers::ORIGINAL_OFFSET)
                .parse()
                .expect("offset");
            ((partition, offset), l)
        })
        .collect();
    for (record, partition, offset) in &poison {
        let letter = by_origin
            .get(&(*partition, *offset))
            .unwrap_or_else(|| panic!("no dead letter for {offset}: {record:?}"));
        let header = |name: &str| header_text(letter, name);
        assert_eq!(letter.partition, *partition, "same partition as the source");
        assert_eq!(letter.key, record.key);
        assert_eq!(
            letter.payload.clone().unwrap_or_default(),
            record.payload.clone().unwrap_or_default(),
            "unchanged bytes"
        );
        assert_eq!(
            &letter.headers[..record.headers.len()],
            &record.headers[..],
            "original headers first, unchanged"
        );
        assert_eq!(header(headers::ORIGINAL_TOPIC), topics.order_created);
        assert_eq!(header(headers::ORIGINAL_CONSUMER_GROUP), group);
        assert!(
            header(headers::ERROR_CLASS).starts_with("poison."),
            "{}",
            header(headers::ERROR_CLASS)
        );
        assert!(!header(headers::ERROR_MESSAGE).is_empty());
        assert_eq!(header(headers::ATTEMPTS), "1", "poison is not retried");
        assert!(header(headers::ORIGINAL_TIMESTAMP).parse::<i64>().is_ok());
        assert!(
            !header(headers::FIRST_FAILURE).is_empty() && !header(headers::LAST_FAILURE).is_empty()
        );
    }
    assert_eq!(
        stats.dead_lettered.values().sum::<u64>(),
        poison.len() as u64
    );
    assert!(
        stats.retried.is_empty(),
        "poison is never retried: {:?}",
        stats.retried
    );

    // Every good event once, and each key's events in the order they were produced.
    let orders: Vec<Uuid> = sqlx::query_scalar("SELECT order_id FROM payments")
        .fetch_all(db.pool())
        .await
        .expect("payments");
    let mut expected: Vec<Uuid> = good.iter().map(|(id, _, _)| *id).collect();
    let mut got = orders.clone();
    expected.sort();
    got.sort();
    assert_eq!(got, expected, "each good event paid exactly once");
    let applied = applied.lock().expect("lock").clone();
    for key in 0..4 {
        let key = format!("customer-{key}");
        let order: Vec<i64> = applied
            .iter()
            .filter(|(k, _)| *k == key.as_bytes())
            .map(|(_, o)| *o)
            .collect();
        let produced: Vec<i64> = good
            .iter()
            .filter(|(_, k, _)| *k == key)
            .map(|(_, _, o)| *o)
            .collect();
        assert_eq!(
            order, produced,
            "{key}: applied in produced order, once each"
        );
    }
}

/// Waits until the service reports its consumer halted, and returns the reason. A halted
/// consumer is reported, not a reason to take the instance out of rotation: readiness
/// stays `200`, so order intake goes on.
async fn until_halted(service: &RunningService) -> String {
    let (status, consumer) = service.until_component("consumer", false, MINUTES_2).await;
    assert_eq!(
        status, 200,
        "a halted consumer leaves the instance ready: {consumer}"
    );
    consumer["detail"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn the_dead_letter_guard_halts_a_consumer_fed_only_poison_and_says_why() {
    within(MINUTES_2, async {
        let kafka = testkit::kafka::broker().await.expect("kafka");
        let prefix = topic_prefix();
        let db = fresh_database().await;
        let mut config = payment_config(&db, kafka.bootstrap(), &prefix, None);
        config.service.consumer.dlt_window = 20;
        config.service.consumer.dlt_max_ratio = 0.5;
        let mut payments = running_payment_service(db, config).await;
        let topics = payments.topics.clone();
        let poison: Vec<Record> = (0..200)
            .map(|i| Record::new(format!("not an event {i}")).key(format!("k{i}")))
            .collect();
        produce_all(kafka.client(), &topics.order_created, &poison).await;

        // The consumer halts, with the reason; the service goes on serving.
        let reason = until_halted(&payments).await;
        for expected in [
            "dead-letter guard",
            "of the last",
            "CONSUMER_DLT_MAX_RATIO",
            "poison.invalid",
        ] {
            assert!(reason.contains(expected), "{expected}: {reason}");
        }
        assert_eq!(
            payments.get("/payments").await.status(),
            200,
            "HTTP still served"
        );

        // It did not empty the topic into the DLT, and committed only what it dead-lettered.
        let dlt = kafka::dead_letter_topic(&topics.order_created);
        let dead = records_on(kafka.client(), &dlt).await;
        assert!(
            dead < 20,
            "{dead} dead letters: the guard should trip within one window"
        );
        let committed = kafka
            .client()
            .committed_total(&payments.group, &topics.order_created)
            .await
            .expect("committed");
        assert_eq!(
            committed, dead,
            "what was not dead-lettered is not committed either"
        );

        // Stopping it says why, so the exit status tells an orchestrator.
        let ended = payments.stop_and_wait().await;
        let error = format!(
            "{:#}",
            ended.expect_err("a halted consumer ends in an error")
        );
        assert!(error.contains("dead-letter guard"), "{error}");
    })
    .await;
}

#[tokio::test]
async fn poison_on_a_topic_order_service_reads_halts_its_consumer_but_orders_are_still_taken() {
    within(MINUTES_2, async {
        let kafka = testkit::kafka::broker().await.expect("kafka");
        let prefix = topic_prefix();
        let db = fresh_database().await;
        let mut config = crate::helpers::order_config(&db, kafka.bootstrap(), &prefix);
        config.service.consumer.dlt_window = 20;
        let mut orders = crate::helpers::running_order_service(db, config).await;
        let garbage: Vec<Record> = (0..100)
            .map(|i| Record::new(format!("garbage {i}")).key(format!("k{i}")))
            .collect();
        produce_all(kafka.client(), &orders.topics.payment_completed, &garbage).await;

        let reason = until_halted(&orders).await;
        assert!(reason.contains("dead-letter guard"), "{reason}");
        // Anyone who can write garbage to payment.completed must not stop POST /orders.
        let response = orders
            .post_order(&serde_json::json!({"amount": 10}), None)
            .await;
        assert_eq!(response.status(), 201, "orders are still taken");
        let order: Value = response.json().await.expect("json");
        let id = order["id"].as_str().expect("id").to_owned();
        let published = kafka
            .client()
            .read_all(&orders.topics.order_created, MINUTES_2)
            .await
            .expect("read");
        eventually(MINUTES_2, "its order.created published", || async {
            let published = kafka
                .client()
                .read_all(&orders.topics.order_created, MINUTES_2)
                .await
                .expect("read");
            published.len() == 1 && key_text(&published[0]) == id
        })
        .await;
        drop(published);
        let error = format!("{:#}", orders.stop_and_wait().await.expect_err("halted"));
        assert!(error.contains("dead-letter guard"), "{error}");
    })
    .await;
}

#[tokio::test]
async fn a_poison_record_near_the_brokers_size_limit_is_dead_lettered_whole() {
    within(MINUTES_2, async {
        let kafka = testkit::kafka::broker().await.expect("kafka");
        let prefix = topic_prefix();
        let payments = payment_service(kafka.bootstrap(), &prefix).await;
        let topics = payments.topics.clone();
        // Accepted by the broker (its limit is 1048588 bytes) but over the producer
        // default of 1000000 bytes once the diagnostic headers are added.
        let big = Record::new(vec![b'x'; 1_010_000]).key("big");
        let good = testkit::scenario::order_created(3);
        let producer = kafka
            .client()
            .producer_config()
            .set("message.max.bytes", "1048576")
            .create()
            .expect("a producer for large records");
        testkit::kafka::produce_with(&producer, &topics.order_created, &big)
            .await
            .expect("the broker takes it");
        produce_all(kafka.client(), &topics.order_created, &good).await;

        let letters = dead_letters(kafka.client(), &topics.order_created, 1).await;
        assert_eq!(
            letters[0].payload, big.payload,
            "the whole record, unchanged"
        );
        assert_eq!(
            header_text(&letters[0], headers::ERROR_CLASS),
            "poison.invalid"
        );
        eventually(MINUTES_2, "the good orders behind it paid", || async {
            payments.payments_with("COMPLETED").await == 3
        })
        .await;
    })
    .await;
}

#[tokio::test]
async fn a_dead_letter_kafka_refuses_halts_the_consumer_naming_the_record_and_why() {
    within(MINUTES_2, async {
        let kafka = testkit::kafka::broker().await.expect("kafka");
        let topics = Topics::with_prefix(&topic_prefix());
        // The source topic only: its dead-letter topic does not exist.
        kafka
            .client()
            .create_topic(&topics.order_created, 1, 1)
            .await
            .expect("topic");
        let db = fresh_database().await;
        let handler = handler(&db, &topics).await;
        let written = kafka
            .client()
            .produce_all(&topics.order_created, &[Record::new("garbage").key("k")])
            .await
            .expect("produce");
        let group = testkit::unique_name("payment-service");
        let config = ConsumerConfig::new(kafka.connection(), &group, &[&topics.order_created]);
        let policy = DeadLetterPolicy::new(
            kafka.connection(),
            DeadLetterLimit {
                max_ratio: 1.0,
                ..DeadLetterLimit::default()
            },
        )
        .expect("producer");
        let stop = CancellationToken::new();
        let ended = tokio::time::timeout(
            MINUTES_2,
            consumer::run(config, handler, policy, stop.clone()),
        )
        .await
        .expect("the consumer stops by itself, not retrying forever");
        let error = ended
            .expect_err("a dead letter that cannot be written")
            .to_string();
        let (partition, offset) = written[0];
        assert!(
            error.contains(&format!("{}/{partition}/{offset}", topics.order_created)),
            "names the record: {error}"
        );
        assert!(
            error.contains(".DLT"),
            "names the dead-letter topic: {error}"
        );
        assert!(error.contains("retrying cannot help"), "{error}");
        assert_eq!(
            kafka
                .client()
                .committed_total(&group, &topics.order_created)
                .await
                .expect("committed"),
            0,
            "nothing committed"
        );
    })
    .await;
}

/// Three orders the gateway cannot charge now, among two it can, and one poison record, on
/// a topic of their own; payment-service started on it with one attempt per message.
/// Returns the three, their topics and the service.
async fn three_unchargeable_among_five(
    kafka: &testkit::KafkaBroker,
    gateway: &MockServer,
) -> (Vec<Record>, Topics, RunningService) {
    // Three orders the gateway cannot charge now, among two it can, and one poison
    // record, all in the service's first batch: those three fail while others go
    // through, so they are retried, then dead-lettered.
    let prefix = topic_prefix();
    let topics = Topics::with_prefix(&prefix);
    kafka
        .client()
        .create_topic(&topics.order_created, 6, 1)
        .await
        .expect("topic");
    let records = testkit::scenario::order_created(3);
    for record in &records {
        answer_charges_containing(gateway, &key_text(record), ResponseTemplate::new(503), None)
            .await;
    }
    answer_charges(gateway, approved()).await;
    let mut all = records.clone();
    all.extend(testkit::scenario::order_created(2));
    // One poison record too: a replay by class must leave it where it is.
    all.push(Record::new("garbage").key("g"));
    produce_all(kafka.client(), &topics.order_created, &all).await;
    // The premise, made sure of: the service waits for its first batch to fill, so
    // all six are in it (taken as they come, two of the failing three could make a
    // batch of their own, and a batch whose every message fails is an outage).
    let db = fresh_database().await;
    let mut config = payment_config(&db, kafka.bootstrap(), &prefix, Some(&gateway.uri()));
    config.service.consumer.batch_wait_ms = 1000;
    // One attempt: a failure counts while the gateway answers the others of the batch,
    // so the three are dead-lettered at once rather than after later traffic.
    config.service.consumer.max_attempts = 1;
    let payments = running_payment_service(db, config).await;

    (records, topics, payments)
}

/// Replays `letters` twice; the second replay changes nothing once consumed.
async fn a_second_replay_changes_nothing(
    kafka: &testkit::KafkaBroker,
    (topics, dlt): (&Topics, &str),
    records: &[Record],
    letters: &[redrive::DeadLetter],
    payments: &RunningService,
) {
    // A second replay changes nothing: once it has been consumed, still three payments
    // and three payment.completed.
    redrive::replay(kafka.connection(), letters, None, |_| {})
        .await
        .expect("replay again");
    let consumed = 6 + 3 + 3;
    until_committed(
        kafka.client(),
        &payments.group,
        &topics.order_created,
        consumed,
        MINUTES_2,
        "the second replay consumed",
    )
    .await;
    assert_eq!(payments.count("payments").await, 5);
    assert_eq!(payments.count("outbox").await, 5);
    eventually(MINUTES_2, "five payment.completed published", || async {
        records_on(kafka.client(), &topics.payment_completed).await == 5
    })
    .await;
    assert_eq!(
        records_on(kafka.client(), dlt).await,
        4,
        "nothing dead-lettered again"
    );
    let replayed = kafka
        .client()
        .read_all(&topics.order_created, MINUTES_2)
        .await
        .expect("source");
    assert_eq!(replayed.len(), 12, "six produced, three replayed twice");
    let redriven: Vec<&Record> = replayed
        .iter()
        .filter(|r| r.header_value(redrive::REDRIVEN_FROM).is_some())
        .collect();
    assert_eq!(redriven.len(), 6);
    assert!(redriven.iter().all(|r| r
        .headers
        .iter()
        .all(|(n, _)| !n.starts_with(headers::PREFIX))));
    assert!(records.iter().all(|r| redriven
        .iter()
        .filter(|d| d.payload == r.payload && d.key == r.key)
        .count()
        == 2));
}

#[tokio::test]
async fn a_dead_letter_replayed_after_the_gateway_recovers_is_paid_once_however_often_it_is_replayed(
) {
    within(MINUTES_5, async {
        let kafka = testkit::kafka::broker().await.expect("kafka");
        // All six in the service's first batch: the three fail while others go through,
        // so they are retried, then dead-lettered.
        let gateway = gateway().await;
        let (records, topics, payments) = three_unchargeable_among_five(kafka, &gateway).await;
        let dlt = kafka::dead_letter_topic(&topics.order_created);
        eventually(MINUTES_2, "all four dead-lettered", || async {
            records_on(kafka.client(), &dlt).await == 4
        })
        .await;
        eventually(MINUTES_2, "the two others paid", || async {
            payments.payments_with("COMPLETED").await == 2
        })
        .await;

        let all = redrive::read(
            kafka.connection(),
            &dlt,
            &redrive::Filter::default(),
            Duration::from_secs(30),
        )
        .await
        .expect("read the DLT");
        assert_eq!(
            redrive::summary(&all),
            [
                ("gateway.unavailable".to_owned(), 3),
                ("poison.invalid".to_owned(), 1)
            ]
            .into(),
        );

        // The gateway recovers; the unavailable ones are replayed.
        crate::gateway_double::reset(&gateway).await;
        answer_charges(&gateway, approved()).await;
        let selected = redrive::Filter {
            class: Some("gateway.unavailable".into()),
            ..Default::default()
        };
        let letters = redrive::read(kafka.connection(), &dlt, &selected, Duration::from_secs(30))
            .await
            .expect("read");
        assert_eq!(letters.len(), 3);
        let mut progress = 0;
        let replayed = redrive::replay(kafka.connection(), &letters, None, |_| progress += 1)
            .await
            .expect("replay");
        assert_eq!((replayed, progress), (3, 3));
        eventually(MINUTES_2, "the three orders paid", || async {
            payments.payments_with("COMPLETED").await == 5
        })
        .await;

        a_second_replay_changes_nothing(kafka, (&topics, &dlt), &records, &letters, &payments)
            .await;
    })
    .await;
}

/// A handler that stores each message's text in a table of its own, one statement per
/// batch: a text PostgreSQL refuses (it holds U+0000) fails the whole batch, every time.
struct Notes {
    pool: sqlx::PgPool,
}

impl BatchHandler for Notes {
    async fn handle(&self, batch: &[Message]) -> Result<Vec<Outcome>, consumer::BatchError> {
        let offsets: Vec<i64> = batch.iter().map(|r| r.offset).collect();
        let texts: Vec<String> = batch.iter().map(|m| m.payload_text()).collect();
        sqlx::query(
            "INSERT INTO notes (source_offset, body)
             SELECT * FROM unnest($1::bigint[], $2::text[])",
        )
        .bind(&offsets)
        .bind(&texts)
        .execute(&self.pool)
        .await
        .map_err(|e| service_kit::db_failure::batch_error("notes", e))?;
        Ok(vec![Outcome::Applied; batch.len()])
    }
}

#[tokio::test]
async fn a_batch_the_database_refuses_is_split_until_the_offender_is_alone_and_dead_lettered() {
    within(MINUTES_2, async {
        let kafka = testkit::kafka::broker().await.expect("kafka");
        let topic = testkit::unique_name("notes");
        kafka
            .client()
            .create_topic(&topic, 1, 1)
            .await
            .expect("topic");
        kafka
            .client()
            .create_topic(&kafka::dead_letter_topic(&topic), 1, 1)
            .await
            .expect("DLT");
        let db = fresh_database().await;
        sqlx::query(
            "CREATE TABLE notes (id BIGSERIAL PRIMARY KEY, source_offset BIGINT, body TEXT)",
        )
        .execute(db.pool())
        .await
        .expect("table");
        let offenders = [7_i64, 31];
        let records: Vec<Record> = (0..40_i64)
            .map(|i| {
                let text = if offenders.contains(&i) {
                    format!("note {i} with a \u{0} inside")
                } else {
                    format!("note {i}")
                };
                Record::new(text).key("one-key")
            })
            .collect();
        produce_all(kafka.client(), &topic, &records).await;

        let group = testkit::unique_name("notes");
        let mut config = ConsumerConfig::new(kafka.connection(), &group, &[&topic]);
        config.batch_size = 40;
        let policy = DeadLetterPolicy::new(kafka.connection(), DeadLetterLimit::default())
            .expect("producer");
        let stop = CancellationToken::new();
        let handler = Notes {
            pool: db.pool().clone(),
        };
        let running = tokio::spawn(consumer::run(config, handler, policy, stop.clone()));
        until_committed(
            kafka.client(),
            &group,
            &topic,
            40,
            MINUTES_2,
            "all 40 settled",
        )
        .await;
        stop.cancel();
        let stats = running.await.expect("task").expect("consumer");

        let letters = dead_letters(kafka.client(), &topic, 2).await;
        let mut dead: Vec<i64> = letters
            .iter()
            .map(|l| {
                header_text(l, headers::ORIGINAL_OFFSET)
                    .parse()
                    .expect("offset")
            })
            .collect();
        dead.sort_unstable();
        assert_eq!(dead, offenders, "exactly the two offenders");
        for letter in &letters {
            assert_eq!(
                header_text(letter, headers::ERROR_CLASS),
                "database.data-exception"
            );
        }
        // The rest applied once each, in offset order.
        let stored: Vec<i64> = sqlx::query_scalar("SELECT source_offset FROM notes ORDER BY id")
            .fetch_all(db.pool())
            .await
            .expect("notes");
        let expected: Vec<i64> = (0..40).filter(|i| !offenders.contains(i)).collect();
        assert_eq!(stored, expected);
        assert_eq!(
            stats.outage_retries, 0,
            "a refusal is not an outage: {stats:?}"
        );
    })
    .await;
}

/// A handler for which every message is poison.
struct AllPoison;

impl BatchHandler for AllPoison {
    async fn handle(&self, batch: &[Message]) -> Result<Vec<Outcome>, consumer::BatchError> {
        Ok(batch
            .iter()
            .map(|_| Outcome::DeadLetter(consumer::Failure::new("poison.invalid", "test poison")))
            .collect())
    }
}

/// Runs a consumer of `group` on `topic` with `handler` until `stop`.
fn consuming<H: BatchHandler>(
    kafka: &testkit::kafka::KafkaClient,
    group: &str,
    topic: &str,
    handler: H,
    limit: DeadLetterLimit,
    stop: &CancellationToken,
) -> tokio::task::JoinHandle<Result<consumer::Stats, consumer::ConsumerError>> {
    let config = ConsumerConfig::new(kafka.connection(), group, &[topic]);
    let policy = DeadLetterPolicy::new(kafka.connection(), limit).expect("producer");
    tokio::spawn(consumer::run(config, handler, policy, stop.clone()))
}

fn poison_records(from: usize, count: usize) -> Vec<Record> {
    (from..from + count)
        .map(|i| Record::new(format!("poison {i}")).key(format!("k{i}")))
        .collect()
}

#[tokio::test]
async fn the_dead_letter_guard_remembers_across_restarts_so_a_restart_grants_no_fresh_allowance() {
    within(MINUTES_2, async {
        let kafka = testkit::kafka::broker().await.expect("kafka");
        let topic = testkit::unique_name("guarded");
        create_topics(kafka.client(), &topic).await;
        let dlt = kafka::dead_letter_topic(&topic);
        let group = testkit::unique_name("guarded-group");
        // Judged once 20 messages are in view: 15 poison are below that.
        let limit = DeadLetterLimit {
            window: 100,
            max_ratio: 0.5,
            min_judged: 20,
        };
        produce_all(kafka.client(), &topic, &poison_records(0, 15)).await;
        let stop = CancellationToken::new();
        let first = consuming(kafka.client(), &group, &topic, AllPoison, limit, &stop);
        until_committed(
            kafka.client(),
            &group,
            &topic,
            15,
            MINUTES_2,
            "the first 15 settled",
        )
        .await;
        stop.cancel();
        first
            .await
            .expect("task")
            .expect("a first run below the guard's minimum");
        assert_eq!(records_on(kafka.client(), &dlt).await, 15);

        // Restarted into more poison: it remembers the 15, so it halts at once.
        produce_all(kafka.client(), &topic, &poison_records(15, 10)).await;
        let stop = CancellationToken::new();
        let second = consuming(kafka.client(), &group, &topic, AllPoison, limit, &stop);
        let ended = tokio::time::timeout(MINUTES_2, second)
            .await
            .expect("the restarted consumer halts")
            .expect("task");
        let error = ended.expect_err("the guard trips");
        assert!(
            matches!(error, consumer::ConsumerError::DeadLetterLimit { .. }),
            "{error}"
        );
        let dead = records_on(kafka.client(), &dlt).await;
        assert!(
            dead < 25,
            "{dead} dead letters: the restart got a fresh allowance"
        );
    })
    .await;
}

/// A handler that forgets to answer for the last message of each batch.
struct ForgetsOne;

impl BatchHandler for ForgetsOne {
    async fn handle(&self, batch: &[Message]) -> Result<Vec<Outcome>, consumer::BatchError> {
        Ok(vec![Outcome::Applied; batch.len().saturating_sub(1)])
    }
}

#[tokio::test]
async fn a_handler_that_answers_for_fewer_messages_than_it_got_halts_the_consumer_and_commits_nothing(
) {
    within(MINUTES_2, async {
        let kafka = testkit::kafka::broker().await.expect("kafka");
        let topic = testkit::unique_name("forgetful");
        create_topics(kafka.client(), &topic).await;
        produce_all(kafka.client(), &topic, &poison_records(0, 5)).await;
        let group = testkit::unique_name("forgetful-group");
        let stop = CancellationToken::new();
        let running = consuming(
            kafka.client(),
            &group,
            &topic,
            ForgetsOne,
            DeadLetterLimit::default(),
            &stop,
        );
        let ended = tokio::time::timeout(MINUTES_2, running)
            .await
            .expect("the consumer halts")
            .expect("task");
        let error = ended.expect_err("a handler bug halts");
        assert!(
            matches!(error, consumer::ConsumerError::HandlerBug { .. }),
            "{error}"
        );
        assert!(error.to_string().contains("outcomes for"), "{error}");
        let committed = kafka
            .client()
            .committed_total(&group, &topic)
            .await
            .unwrap_or(0);
        assert_eq!(committed, 0, "nothing committed");
        assert_eq!(
            records_on(kafka.client(), &kafka::dead_letter_topic(&topic)).await,
            0
        );
    })
    .await;
}
