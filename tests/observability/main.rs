//! What an operator sees, on real Kafka and PostgreSQL: the metrics move by exactly what
//! happened, and one order is followed by its trace through both services' logs and the
//! headers of all three topics it touches.
//!
//! A test binary of its own: the process has one metrics recorder and one log
//! subscriber, so exact counts need a process where nothing else runs.

#[allow(dead_code)]
#[path = "../harness/helpers.rs"]
mod helpers;

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

use helpers::*;

/// The log lines of the whole process, as the services write them with `LOG_FORMAT=json`.
#[derive(Clone, Default)]
struct CapturedLogs(Arc<Mutex<Vec<u8>>>);

impl Write for CapturedLogs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl CapturedLogs {
    fn install() -> Self {
        let logs = Self::default();
        let writer = logs.clone();
        let filter = tracing_subscriber::EnvFilter::new(
            "warn,order_service=debug,payment_service=debug,service_kit=info",
        );
        let subscriber =
            service_kit::log_subscriber(service_kit::LogFormat::Json, filter, move || {
                writer.clone()
            });
        tracing::subscriber::set_global_default(subscriber).expect("the first subscriber");
        logs
    }

    /// Every line, parsed; a line that is not one JSON object fails the test.
    fn lines(&self) -> Vec<Value> {
        let bytes = self.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        String::from_utf8_lossy(&bytes)
            .lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
            .collect()
    }

    /// The lines whose own fields or spans' fields give `field` the value `value`.
    fn mentioning(&self, field: &str, value: &str) -> Vec<Value> {
        self.lines()
            .into_iter()
            .filter(|line| fields_of(line).get(field).map(String::as_str) == Some(value))
            .collect()
    }
}

/// A line's fields and those of the spans it was written in, as text.
fn fields_of(line: &Value) -> BTreeMap<String, String> {
    let mut fields = BTreeMap::new();
    let mut add = |object: &Value| {
        if let Some(map) = object.as_object() {
            for (name, value) in map {
                let text = value
                    .as_str()
                    .map_or_else(|| value.to_string(), str::to_owned);
                fields.insert(name.clone(), text);
            }
        }
    };
    for span in line["spans"].as_array().into_iter().flatten() {
        add(span);
    }
    add(line);
    fields
}

/// A Prometheus text scrape: `(name, labels) → value`.
struct Scrape(Vec<(String, BTreeMap<String, String>, f64)>);

impl Scrape {
    async fn of(service: &RunningService) -> Self {
        let response = service.get("/metrics").await;
        assert_eq!(response.status(), 200);
        assert!(response.headers()["content-type"]
            .to_str()
            .expect("ascii")
            .starts_with("text/plain"));
        Self::parse(&response.text().await.expect("metrics"))
    }

    fn parse(text: &str) -> Self {
        let mut samples = Vec::new();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let (series, value) = line.rsplit_once(' ').expect("name value");
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split("\",")
                .filter(|l| !l.is_empty())
                .filter_map(|pair| pair.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.trim_matches('"').to_owned()))
                .collect();
            samples.push((name.to_owned(), labels, value.parse().expect("a number")));
        }
        Self(samples)
    }

    /// The sum of `name` over the series that have all of `labels` (0 if none).
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.series(name, labels).iter().map(|(_, v)| v).sum()
    }

    /// The series of `name` that have all of `labels`.
    fn series(&self, name: &str, labels: &[(&str, &str)]) -> Vec<(BTreeMap<String, String>, f64)> {
        self.0
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, l, v)| (l.clone(), *v))
            .collect()
    }
}

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

/// Both services on this binary's broker, payment-service declining above 1000.00.
struct Scene {
    kafka: &'static testkit::KafkaBroker,
    orders: RunningService,
    payments: RunningService,
    topics: events::Topics,
    order_group: String,
    payment_group: String,
}

impl Scene {
    async fn start() -> Self {
        let kafka = testkit::kafka::broker().await.expect("kafka");
        let prefix = topic_prefix();
        let orders = order_service(kafka.bootstrap(), &prefix).await;
        let db = fresh_database().await;
        let mut config = payment_config(&db, kafka.bootstrap(), &prefix, None);
        config.simulated_decline_above = Some("1000.00".parse().expect("decimal"));
        let payments = running_payment_service(db, config).await;
        Self {
            kafka,
            topics: orders.topics.clone(),
            order_group: orders.group.clone(),
            payment_group: payments.group.clone(),
            orders,
            payments,
        }
    }

    /// `order.created` as payment-service's group reads it.
    fn created(&self) -> [(&str, &str); 2] {
        [
            ("group", self.payment_group.as_str()),
            ("topic", self.topics.order_created.as_str()),
        ]
    }
}

/// Five orders: one traced that is paid, one traced that is declined, three plain; returns
/// the ids of the traced ones once all five are settled and consumed.
async fn five_orders(scene: &Scene) -> (String, String) {
    let orders = &scene.orders;
    let traced = |amount: &str, request_id: &str| {
        orders
            .http
            .post(format!("{}/orders", orders.base_url))
            .header("content-type", "application/json")
            .header("traceparent", format!("00-{TRACE_ID}-00f067aa0ba902b7-01"))
            .header("x-request-id", request_id)
            .body(format!(r#"{{"amount": {amount}}}"#))
            .send()
    };
    let paid = traced("12.34", "follow-me-paid").await.expect("POST");
    assert_eq!(paid.status(), 201);
    assert_eq!(paid.headers()["x-request-id"], "follow-me-paid");
    let paid_id = paid.json::<Value>().await.expect("order")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let declined = traced("5000.00", "follow-me-declined").await.expect("POST");
    assert_eq!(declined.status(), 201);
    let declined_id = declined.json::<Value>().await.expect("order")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    for _ in 0..3 {
        let response = orders.post_order(&json!({"amount": 1}), None).await;
        assert_eq!(response.status(), 201);
    }
    eventually(MINUTES_2, "4 orders PAID and 1 PAYMENT_FAILED", || async {
        orders.orders_with("PAID").await == 4 && orders.orders_with("PAYMENT_FAILED").await == 1
    })
    .await;
    // Offsets are committed in the background: the counts are final once they are.
    until_committed(
        scene.kafka.client(),
        &scene.payment_group,
        &scene.topics.order_created,
        5,
        MINUTES_2,
        "payment-service consumed 5",
    )
    .await;
    (paid_id, declined_id)
}

/// Each metric moved by exactly what five orders (four paid, one declined) make happen.
async fn metrics_moved_by_what_happened(scene: &Scene, before: (Scrape, Scrape)) {
    let (before_orders, before_payments) = before;
    let (topics, order_group, payment_group) =
        (&scene.topics, &scene.order_group, &scene.payment_group);
    let after_orders = Scrape::of(&scene.orders).await;
    let after_payments = Scrape::of(&scene.payments).await;
    let moved = |before: &Scrape, after: &Scrape, name: &str, labels: &[(&str, &str)]| {
        after.value(name, labels) - before.value(name, labels)
    };
    let posted = [
        ("service", "order-service"),
        ("method", "POST"),
        ("route", "/orders"),
        ("status", "201"),
    ];
    assert_eq!(
        moved(
            &before_orders,
            &after_orders,
            "http_requests_total",
            &posted
        ),
        5.0
    );
    assert_eq!(
        moved(
            &before_orders,
            &after_orders,
            "http_request_duration_seconds_count",
            &[
                ("service", "order-service"),
                ("method", "POST"),
                ("route", "/orders")
            ]
        ),
        5.0
    );
    let created = scene.created();
    assert_eq!(
        after_payments.value("consumer_messages_total", &created),
        5.0
    );
    assert_eq!(
        after_payments.value("consumer_applied_total", &created),
        5.0
    );
    assert_eq!(
        after_payments.value("consumer_duplicates_total", &created),
        0.0
    );
    let completed = [
        ("group", order_group.as_str()),
        ("topic", topics.payment_completed.as_str()),
    ];
    let failed = [
        ("group", order_group.as_str()),
        ("topic", topics.payment_failed.as_str()),
    ];
    assert_eq!(
        after_orders.value("consumer_applied_total", &completed),
        4.0
    );
    assert_eq!(after_orders.value("consumer_applied_total", &failed), 1.0);
    assert_eq!(
        after_payments.value(
            "consumer_dead_letters_total",
            &[("group", payment_group.as_str())]
        ),
        0.0
    );
    for (topic, count) in [
        (&topics.order_created, 5.0),
        (&topics.payment_completed, 4.0),
        (&topics.payment_failed, 1.0),
    ] {
        assert_eq!(
            after_orders.value("outbox_published_total", &[("topic", topic)]),
            count,
            "{topic}"
        );
    }
    let gateway = |outcome| {
        moved(
            &before_payments,
            &after_payments,
            "payment_gateway_calls_total",
            &[("gateway", "simulated"), ("outcome", outcome)],
        )
    };
    assert_eq!((gateway("approved"), gateway("declined")), (4.0, 1.0));
    assert_eq!(
        after_orders.value("outbox_backlog", &[("service", "order-service")]),
        0.0
    );
    assert_eq!(
        after_payments.value("outbox_backlog", &[("service", "payment-service")]),
        0.0
    );
    assert!(!after_payments
        .series(
            "consumer_batch_size_count",
            &[("group", payment_group.as_str())]
        )
        .is_empty());
}

/// The lag per partition, from librdkafka's statistics (every 5 s): there, and 0 once
/// everything is consumed.
async fn the_lag_is_zero_on_every_partition(scene: &Scene) {
    let created = scene.created();
    eventually(
        MINUTES_2,
        "a lag of 0 on every partition of order.created",
        || async {
            let lag = Scrape::of(&scene.payments)
                .await
                .series("kafka_consumer_lag", &created);
            !lag.is_empty() && lag.iter().all(|(_, v)| *v == 0.0)
        },
    )
    .await;
}

/// Replayed events are counted as duplicates, and change nothing.
async fn replays_are_counted_as_duplicates(scene: &Scene) {
    let (kafka, topics) = (scene.kafka, &scene.topics);
    let records = kafka
        .client()
        .read_all(&topics.order_created, MINUTES_2)
        .await
        .expect("order.created");
    assert_eq!(records.len(), 5);
    produce_all(kafka.client(), &topics.order_created, &records).await;
    until_committed(
        kafka.client(),
        &scene.payment_group,
        &topics.order_created,
        10,
        MINUTES_2,
        "payment-service consumed the replay",
    )
    .await;
    let created = scene.created();
    let replayed = Scrape::of(&scene.payments).await;
    assert_eq!(replayed.value("consumer_messages_total", &created), 10.0);
    assert_eq!(replayed.value("consumer_duplicates_total", &created), 5.0);
    assert_eq!(replayed.value("consumer_applied_total", &created), 5.0);
    assert_eq!(scene.payments.count("payments").await, 5);
}

/// The trace in the headers of all three topics, with a span of its own per hop.
async fn the_trace_is_in_every_topics_headers(scene: &Scene, paid_id: &str, declined_id: &str) {
    let (kafka, topics) = (scene.kafka, &scene.topics);
    for (topic, order_id, request_id) in [
        (&topics.order_created, paid_id, "follow-me-paid"),
        (&topics.order_created, declined_id, "follow-me-declined"),
        (&topics.payment_completed, paid_id, "follow-me-paid"),
        (&topics.payment_failed, declined_id, "follow-me-declined"),
    ] {
        let records = kafka
            .client()
            .read_all(topic, MINUTES_2)
            .await
            .expect("read");
        let mine: Vec<_> = records.iter().filter(|r| key_text(r) == order_id).collect();
        assert!(!mine.is_empty(), "{order_id} on {topic}");
        for record in mine {
            let traceparent = header_text(record, "traceparent");
            assert!(
                traceparent.starts_with(&format!("00-{TRACE_ID}-")),
                "{topic}: {traceparent}"
            );
            assert_eq!(header_text(record, "x-request-id"), request_id, "{topic}");
            assert_eq!(header_text(record, "correlation-id"), order_id, "{topic}");
        }
    }
    // Each hop has a span of its own.
    let mut spans = std::collections::HashSet::new();
    for topic in [&topics.order_created, &topics.payment_completed] {
        let records = kafka
            .client()
            .read_all(topic, MINUTES_2)
            .await
            .expect("read");
        for record in records.iter().filter(|r| key_text(r) == paid_id) {
            spans.insert(header_text(record, "traceparent"));
        }
    }
    assert_eq!(spans.len(), 2, "a new span id per hop: {spans:?}");
}

/// In both services' logs, every line about the order carries its correlation id and the
/// trace.
fn the_trace_is_in_both_services_logs(logs: &CapturedLogs, paid_id: &String) {
    let about = logs.mentioning("order_id", paid_id);
    let says = |message: &str| {
        about
            .iter()
            .map(fields_of)
            .filter(|f| f.get("message").map(String::as_str) == Some(message))
            .collect::<Vec<_>>()
    };
    let accepted = says("order accepted");
    let charged = says("order.created settled");
    let settled = says("payment outcome settled");
    assert_eq!(accepted.len(), 1, "order-service accepted it once");
    assert!(
        !charged.is_empty(),
        "payment-service settled its order.created"
    );
    assert!(
        !settled.is_empty(),
        "order-service settled its payment.completed"
    );
    for line in accepted.iter().chain(&charged).chain(&settled) {
        assert_eq!(line.get("correlation_id"), Some(paid_id), "{line:?}");
        assert_eq!(
            line.get("trace_id").map(String::as_str),
            Some(TRACE_ID),
            "{line:?}"
        );
        assert_eq!(
            line.get("request_id").map(String::as_str),
            Some("follow-me-paid"),
            "{line:?}"
        );
    }
    assert!(charged
        .iter()
        .all(|l| l.contains_key("topic") && l.contains_key("offset")));
}

#[tokio::test]
async fn metrics_count_what_happened_and_one_order_is_followed_across_both_services() {
    let logs = CapturedLogs::install();
    within(MINUTES_5, async {
        let scene = Scene::start().await;
        let before = (
            Scrape::of(&scene.orders).await,
            Scrape::of(&scene.payments).await,
        );
        let (paid_id, declined_id) = five_orders(&scene).await;

        metrics_moved_by_what_happened(&scene, before).await;
        the_lag_is_zero_on_every_partition(&scene).await;
        replays_are_counted_as_duplicates(&scene).await;
        the_trace_is_in_every_topics_headers(&scene, &paid_id, &declined_id).await;
        the_trace_is_in_both_services_logs(&logs, &paid_id);
    })
    .await;
}
