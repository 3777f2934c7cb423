//! Health: `GET /health/live` (the process serves) and `GET /health/ready` (it can do
//! its work). Ready only when PostgreSQL answers, Kafka metadata can be fetched, the
//! consumer is running (not halted) and the relay is not stuck (the oldest unpublished
//! outbox row is younger than a bound). Not ready is `503` with a JSON body naming each
//! failing check and why. Each check is bounded, so polling every second is cheap.

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
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

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
}

/// The answer of `GET /health/ready`.
#[derive(Debug, Serialize)]
struct Readiness {
    status: &'static str,
    /// Each check by name: `ok`, or why not.
    checks: Vec<Check>,
    /// Reported, not deciding readiness.
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
}

async fn ready(State(health): State<Health>) -> Response {
    let (database, kafka, relay) = tokio::join!(health.database(), health.kafka(), health.relay());
    let checks: Vec<Check> = [
        ("database", database),
        ("kafka", kafka),
        ("consumer", health.consumer()),
        ("relay", relay),
    ]
    .into_iter()
    .map(|(name, result)| match result {
        Ok(detail) => Check {
            name,
            ok: true,
            detail,
        },
        Err(detail) => Check {
            name,
            ok: false,
            detail,
        },
    })
    .collect();
    let ok = checks.iter().all(|c| c.ok);
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let components = health
        .components
        .iter()
        .map(|c| {
            let (ok, detail) = (c.report)();
            Check {
                name: c.name,
                ok,
                detail,
            }
        })
        .collect();
    let body = Readiness {
        status: if ok { "ready" } else { "not ready" },
        checks,
        components,
    };
    (status, Json(body)).into_response()
}
