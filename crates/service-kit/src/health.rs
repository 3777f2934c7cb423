//! Health: `GET /health/live` (the process serves) and `GET /health/ready` (send me
//! traffic). Readiness is decided only by what this instance needs to serve its API: its
//! database answers and it is not shutting down. Kafka, the consumer, the relay and any
//! component a service adds (the payment gateway's breaker) are reported by name in the
//! body and in `/metrics` (`health_component_ok`) without deciding it: with Kafka down
//! the outbox keeps `POST /orders` working, and a consumer halted by poison must not take
//! the API out of a load balancer's rotation. Not ready is `503` with the same body. Each
//! check is bounded and they run at once, so one probe takes at most [`CHECK_TIMEOUT`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use rdkafka::producer::{FutureProducer, Producer};
use serde::Serialize;
use sqlx::PgPool;

/// Bound on each check.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// A part of a service reported in the readiness body (`components`) without deciding
/// readiness: the payment gateway's circuit breaker, say.
#[derive(Clone)]
pub struct Component {
    pub name: &'static str,
    /// Whether it is well, and what to say about it.
    pub report: Arc<dyn Fn() -> (bool, String) + Send + Sync>,
}

/// What the readiness checks look at; cheap to clone.
#[derive(Clone)]
pub struct Health {
    pool: PgPool,
    producer: FutureProducer,
    /// Why the consumer halted, once it has.
    halted: Arc<Mutex<Option<String>>>,
    /// The relay is stuck when the oldest unpublished row is older than this.
    relay_stuck_after: Duration,
    components: Arc<Vec<Component>>,
    /// Set at the shutdown signal: readiness turns `503` while the service drains.
    shutting_down: Arc<AtomicBool>,
}

/// The answer of `GET /health/ready`.
#[derive(Debug, Serialize)]
struct Readiness {
    status: &'static str,
    /// What decides readiness, by name: `ok`, or why not.
    checks: Vec<Check>,
    /// Reported, not deciding readiness: `kafka`, `consumer`, `relay`, and the service's
    /// own.
    components: Vec<Check>,
}

#[derive(Debug, Serialize)]
struct Check {
    name: &'static str,
    ok: bool,
    detail: String,
}

impl Health {
    pub fn new(pool: PgPool, producer: FutureProducer, relay_stuck_after: Duration) -> Self {
        Self {
            pool,
            producer,
            halted: Arc::default(),
            relay_stuck_after,
            components: Arc::default(),
            shutting_down: Arc::default(),
        }
    }

    /// Also reports `components` in the body.
    pub fn with_components(mut self, components: Vec<Component>) -> Self {
        self.components = Arc::new(components);
        self
    }

    /// Marks the consumer halted, with the reason readiness reports.
    pub fn consumer_halted(&self, reason: String) {
        *self.halted.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason);
    }

    /// From now on readiness answers `503`: the service is shutting down.
    pub fn shutting_down(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
    }

    /// The routes `/health/live` and `/health/ready`.
    pub fn router(self) -> Router {
        Router::new()
            .route(
                "/health/live",
                get(|| async { Json(serde_json::json!({"status": "up"})) }),
            )
            .route("/health/ready", get(ready))
            .with_state(self)
    }

    async fn database(&self) -> Result<String, String> {
        let query = sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&self.pool);
        match tokio::time::timeout(CHECK_TIMEOUT, query).await {
            Ok(Ok(_)) => Ok("answers".into()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {CHECK_TIMEOUT:?}")),
        }
    }

    async fn kafka(&self) -> Result<String, String> {
        let producer = self.producer.clone();
        let fetched = tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(None, CHECK_TIMEOUT)
                .map(|m| m.brokers().len())
        })
        .await;
        match fetched {
            Ok(Ok(brokers)) => Ok(format!("{brokers} broker(s)")),
            Ok(Err(e)) => Err(format!("metadata: {e}")),
            Err(e) => Err(format!("metadata task: {e}")),
        }
    }

    fn consumer(&self) -> Result<String, String> {
        match &*self.halted.lock().unwrap_or_else(|e| e.into_inner()) {
            None => Ok("running".into()),
            Some(reason) => Err(format!("halted: {reason}")),
        }
    }

    async fn relay(&self) -> Result<String, String> {
        let query = outbox::backlog(&self.pool);
        let oldest = match tokio::time::timeout(CHECK_TIMEOUT, query).await {
            Ok(Ok(backlog)) => backlog.oldest_pending_seconds,
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err(format!("no answer within {CHECK_TIMEOUT:?}")),
        };
        match oldest {
            None => Ok("nothing waiting".into()),
            Some(age) if age <= self.relay_stuck_after.as_secs_f64() => {
                Ok(format!("oldest waiting {age:.1} s"))
            }
            Some(age) => Err(format!(
                "the oldest unpublished event has waited {age:.0} s (more than {:?})",
                self.relay_stuck_after
            )),
        }
    }

    fn serving(&self) -> Result<String, String> {
        if self.shutting_down.load(Ordering::Relaxed) {
            Err("shutting down".into())
        } else {
            Ok("serving".into())
        }
    }

    /// Every check and component, each bounded, all at once.
    async fn report(&self) -> Readiness {
        let (database, kafka, relay) = tokio::join!(self.database(), self.kafka(), self.relay());
        let checks = vec![
            Check::new("database", database),
            Check::new("serving", self.serving()),
        ];
        let mut components = vec![
            Check::new("kafka", kafka),
            Check::new("consumer", self.consumer()),
            Check::new("relay", relay),
        ];
        components.extend(self.components.iter().map(|c| {
            let (ok, detail) = (c.report)();
            Check {
                name: c.name,
                ok,
                detail,
            }
        }));
        let ok = checks.iter().all(|c| c.ok);
        Readiness {
            status: if ok { "ready" } else { "not ready" },
            checks,
            components,
        }
    }

    /// Records readiness and each component in the metrics of `service`:
    /// `health_ready{service}` and `health_component_ok{service,component}`, 1 or 0.
    pub(crate) async fn record(&self, service: &'static str) {
        let report = self.report().await;
        metrics::gauge!("health_ready", "service" => service)
            .set(f64::from(u8::from(report.is_ready())));
        for component in &report.components {
            metrics::gauge!("health_component_ok", "service" => service, "component" => component.name)
                .set(f64::from(u8::from(component.ok)));
        }
    }
}

impl Readiness {
    fn is_ready(&self) -> bool {
        self.checks.iter().all(|c| c.ok)
    }
}

impl Check {
    fn new(name: &'static str, result: Result<String, String>) -> Self {
        let (ok, detail) = match result {
            Ok(detail) => (true, detail),
            Err(detail) => (false, detail),
        };
        Self { name, ok, detail }
    }
}

async fn ready(State(health): State<Health>) -> Response {
    let report = health.report().await;
    let status = if report.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(report)).into_response()
}
