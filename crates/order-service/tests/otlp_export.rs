//! Spans exported over OTLP: one order, posted to an order-service process and paid by a
//! payment-service, is one trace of six spans, each the child of the one before —
//! `POST /orders` → the relay's publish → payment-service's consume → its charge → its
//! relay's publish → order-service's consume — with the ids its `traceparent` headers
//! carry, each under its service's name. The receiver is an OTLP/HTTP endpoint in this
//! test, decoding the protobuf the services send. order-service's JSON log lines carry
//! the trace and span ids at the top level.
//!
//! payment-service runs in this test's process, which exports as `payment-service`;
//! order-service is a process of its own. This binary holds this one test, because the
//! tracer provider is the process's.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message as _;
use serde_json::Value;
use service_kit::ServiceConfig;
use testkit::{kafka, postgres, unique_name, ServiceProcess};

/// A span as the receiver got it.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    name: String,
    kind: i32,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
}

/// OTLP span kinds.
const SERVER: i32 = 2;
const CLIENT: i32 = 3;
const PRODUCER: i32 = 4;
const CONSUMER: i32 = 5;

type Spans = Arc<Mutex<Vec<Received>>>;

/// `POST /v1/traces`, OTLP protobuf: every span, with its resource's `service.name`.
async fn receive(State(spans): State<Spans>, body: Bytes) -> Vec<u8> {
    let request = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
    let mut seen = spans.lock().expect("lock");
    for resource_spans in request.resource_spans {
        let service = resource_spans
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|a| a.key == "service.name")
            .and_then(|a| a.value.as_ref()?.value.as_ref())
            .map_or_else(String::new, |v| match v {
                AnyValue::StringValue(s) => s.clone(),
                other => format!("{other:?}"),
            });
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                seen.push(Received {
                    service: service.clone(),
                    name: span.name,
                    kind: span.kind,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                });
            }
        }
    }
    Vec::new() // an empty ExportTraceServiceResponse: all accepted
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An OTLP/HTTP receiver on the loopback: its endpoint, and the spans it got.
async fn receiver() -> (String, Spans) {
    let spans = Spans::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
    let app = axum::Router::new()
        .route("/v1/traces", post(receive))
        .with_state(spans.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (endpoint, spans)
}

/// payment-service in this process, on `prefix`'s topics: stopped by the sender.
async fn payment_service_here(
    bootstrap: &str,
    prefix: &str,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<anyhow::Result<consumer::Stats>>,
    testkit::TestDatabase,
) {
    let db = postgres::fresh_database().await.expect("db");
    let mut config =
        testkit::services::test_config::<payment_service::Config>(&db.url, bootstrap, prefix);
    config.service_mut().consumer_group = format!("{prefix}payment-service");
    let payments = payment_service::build(config)
        .await
        .expect("payment-service");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(payments.run_until_stopped(async {
        let _ = stopped.await;
    }));
    (stop, running, db)
}

/// order-service as a process, exporting to `endpoint` and logging JSON.
async fn order_service_process(
    db: &testkit::TestDatabase,
    bootstrap: &str,
    prefix: &str,
    endpoint: &str,
) -> ServiceProcess {
    let group = format!("{prefix}order-service");
    let mut orders = ServiceProcess::start(
        env!("CARGO_BIN_EXE_order-service"),
        "ORDER_LISTEN",
        &[
            ("ORDER_DATABASE_URL", &db.url),
            ("ORDER_CONSUMER_GROUP", &group),
            ("ORDER_SHUTDOWN_DRAIN_SECS", "0"),
            ("KAFKA_BOOTSTRAP", bootstrap),
            ("TOPIC_PREFIX", prefix),
            ("LOG_FORMAT", "json"),
            ("RUST_LOG", "info,sqlx=warn,librdkafka=warn,rdkafka=warn"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "200"),
        ],
    )
    .expect("start order-service");
    orders
        .until_ready(Duration::from_secs(60))
        .await
        .expect("order-service ready");
    orders
}

/// Posts one order; returns the trace id and span id of its response's `traceparent`.
async fn post_one_order(orders: &ServiceProcess) -> (String, String) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    let response = http
        .post(format!("{}/orders", orders.url()))
        .json(&serde_json::json!({"amount": 12.5}))
        .send()
        .await
        .expect("POST /orders");
    assert_eq!(response.status(), 201);
    let traceparent = response.headers()["traceparent"].to_str().expect("ascii");
    (
        traceparent[3..35].to_owned(),
        traceparent[36..52].to_owned(),
    )
}

/// The spans of `trace_id`, once the one named `last` has arrived (and what was queued
/// behind it).
async fn spans_until(
    spans: &Spans,
    trace_id: &str,
    last: &str,
    orders: &ServiceProcess,
) -> Vec<Received> {
    let of_trace = || -> Vec<Received> {
        let seen = spans.lock().expect("lock");
        seen.iter()
            .filter(|s| s.trace_id == trace_id)
            .cloned()
            .collect()
    };
    let started = tokio::time::Instant::now();
    while !of_trace().iter().any(|s| s.name == last) {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the last hop never arrived; spans of the trace: {:#?}\norder-service's log:\n{}",
            of_trace(),
            orders.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    of_trace()
}

/// `trace` is exactly `wanted`, each span the child of the one before, the first a root.
fn assert_one_chain(trace: &[Received], wanted: &[(&str, String, i32)]) {
    assert_eq!(trace.len(), wanted.len(), "six spans, no more: {trace:#?}");
    let mut parent = String::new();
    for (service, name, kind) in wanted {
        let span = trace
            .iter()
            .find(|s| &s.name == name)
            .unwrap_or_else(|| panic!("no span {name}: {trace:#?}"));
        assert_eq!(span.service, *service, "{name}'s service");
        assert_eq!(span.kind, *kind, "{name}'s kind");
        assert_eq!(span.parent_span_id, parent, "{name}'s parent: {trace:#?}");
        parent = span.span_id.clone();
    }
}

#[tokio::test]
async fn one_order_is_one_trace_of_six_spans_each_the_child_of_the_one_before() {
    tokio::time::timeout(Duration::from_secs(240), async {
        let (endpoint, spans) = receiver().await;
        // This process exports as payment-service, in batches sent every 200 ms. The
        // variables are set before any thread of this binary reads the environment.
        std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint);
        std::env::set_var("OTEL_BSP_SCHEDULE_DELAY", "200");
        let telemetry = service_kit::telemetry::init("payment-service")
            .expect("telemetry")
            .expect("exporting, with an endpoint set");

        let broker = kafka::broker().await.expect("kafka");
        let prefix = format!("{}.", unique_name("otlp"));
        let topics = events::Topics::with_prefix(&prefix);
        let (stop, payments, _payments_db) =
            payment_service_here(broker.bootstrap(), &prefix).await;
        let orders_db = postgres::fresh_database().await.expect("db");
        let mut orders =
            order_service_process(&orders_db, broker.bootstrap(), &prefix, &endpoint).await;

        let (trace_id, request_span) = post_one_order(&orders).await;
        let wanted = [
            ("order-service", "POST /orders".to_owned(), SERVER),
            (
                "order-service",
                format!("publish {}", topics.order_created),
                PRODUCER,
            ),
            (
                "payment-service",
                format!("consume {}", topics.order_created),
                CONSUMER,
            ),
            ("payment-service", "charge".to_owned(), CLIENT),
            (
                "payment-service",
                format!("publish {}", topics.payment_completed),
                PRODUCER,
            ),
            (
                "order-service",
                format!("consume {}", topics.payment_completed),
                CONSUMER,
            ),
        ];
        let trace = spans_until(&spans, &trace_id, &wanted[5].1, &orders).await;
        assert_one_chain(&trace, &wanted);
        let request = trace
            .iter()
            .find(|s| s.name == "POST /orders")
            .expect("request");
        assert_eq!(
            request.span_id, request_span,
            "the response's traceparent names it"
        );

        // order-service's JSON log: the request's lines carry its trace at the top level.
        let log = orders.log();
        let accepted: Value = log
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|l| l["message"] == "order accepted")
            .unwrap_or_else(|| panic!("no 'order accepted' line in\n{log}"));
        assert_eq!(accepted["trace_id"], trace_id.as_str(), "{accepted}");
        assert_eq!(accepted["span_id"], request_span.as_str(), "{accepted}");

        orders.terminate().expect("SIGTERM");
        orders
            .wait_exit(Duration::from_secs(30))
            .await
            .expect("order-service exits");
        let _ = stop.send(());
        payments
            .await
            .expect("join")
            .expect("payment-service stops cleanly");
        drop(telemetry);
    })
    .await
    .expect("within 4 minutes");
}
