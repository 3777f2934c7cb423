//! Metrics: `GET /metrics` in the Prometheus text format, from the `metrics` facade and
//! its Prometheus exporter. Every crate records through the facade (`metrics::counter!`
//! and friends); this module installs the one recorder of the process and serves it.
//!
//! What is recorded, and where:
//! - HTTP (here, [`crate::http`]): `http_requests_total{service,method,route,status}`,
//!   `http_request_duration_seconds{service,method,route}`;
//! - consumers (the `consumer` crate): messages consumed, applied and duplicates by
//!   topic, batch size and duration, retries and dead letters by class, halts, and the
//!   lag per partition from librdkafka's own statistics;
//! - the relay (the `outbox` crate): publish latency and rows published; at each scrape,
//!   here, the backlog, the age of its oldest row and the parked rows;
//! - the payment gateway (payment-service): calls by outcome, call latency;
//! - health (at each scrape, [`crate::health`]): `health_ready{service}` and
//!   `health_component_ok{service,component}`.

use std::sync::OnceLock;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use sqlx::PgPool;

/// Buckets of every `*_seconds` histogram: 1 ms to 10 s.
const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Buckets of batch sizes.
const SIZE_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0,
];

/// Bound on the scrape-time outbox query.
const OUTBOX_QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// The process's Prometheus recorder, installed on first use. One per process: services
/// started in-process by tests share it, told apart by their `service` label and their
/// topics.
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
            .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_size".into()), SIZE_BUCKETS))
            .expect("valid buckets");
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        // Another recorder may be installed already (a test's): this one still renders
        // what it is given, so the route works either way.
        let _ = metrics::set_global_recorder(recorder);
        handle.clone()
    })
}

/// A gauge a service reads from its own database at each scrape (so it is never stale):
/// given the pool, it records its value through the `metrics` facade.
pub type AtScrape = fn(PgPool) -> futures::future::BoxFuture<'static, ()>;

/// What `GET /metrics` reads at each scrape.
#[derive(Clone)]
struct Scrape {
    service: &'static str,
    pool: PgPool,
    gauges: Vec<AtScrape>,
    health: crate::health::Health,
}

/// The route `GET /metrics` of service `service`, which also reports its outbox, its
/// readiness and health components (`health`), and records `gauges` at each scrape.
pub fn router(
    service: &'static str,
    pool: PgPool,
    gauges: Vec<AtScrape>,
    health: crate::health::Health,
) -> Router {
    let _ = handle();
    Router::new()
        .route("/metrics", get(scrape))
        .with_state(Scrape {
            service,
            pool,
            gauges,
            health,
        })
}

async fn scrape(State(scrape): State<Scrape>) -> Response {
    tokio::join!(
        record_outbox(scrape.service, &scrape.pool),
        scrape.health.record(scrape.service)
    );
    for gauge in &scrape.gauges {
        if tokio::time::timeout(OUTBOX_QUERY_TIMEOUT, gauge(scrape.pool.clone()))
            .await
            .is_err()
        {
            tracing::warn!(timeout = ?OUTBOX_QUERY_TIMEOUT, "metrics: a scrape-time gauge timed out");
        }
    }
    let handle = handle();
    handle.run_upkeep();
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        handle.render(),
    )
        .into_response()
}

/// The outbox's backlog, the age of its oldest unpublished row and its parked rows, read
/// at scrape time (one indexed query), so they are never stale.
async fn record_outbox(service: &'static str, pool: &PgPool) {
    match tokio::time::timeout(OUTBOX_QUERY_TIMEOUT, outbox::backlog(pool)).await {
        Ok(Ok(backlog)) => {
            metrics::gauge!("outbox_backlog", "service" => service).set(backlog.pending as f64);
            metrics::gauge!("outbox_oldest_unpublished_age_seconds", "service" => service)
                .set(backlog.oldest_pending_seconds.unwrap_or(0.0));
            metrics::gauge!("outbox_parked", "service" => service).set(backlog.parked as f64);
        }
        Ok(Err(e)) => tracing::warn!(error = %e, "metrics: reading the outbox failed"),
        Err(_) => {
            tracing::warn!(timeout = ?OUTBOX_QUERY_TIMEOUT, "metrics: reading the outbox timed out")
        }
    }
}
