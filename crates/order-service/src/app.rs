//! The wiring: database and migrations, topics, producer and listener, then the HTTP API
//! and the consumer of payment outcomes, as one [`Application`].

use std::sync::Arc;
use std::time::Duration;

use outbox::Cleanup;
use service_kit::{Application, Resources};

use crate::http::{router, AppState};
use crate::on_payment_outcome::OnPaymentOutcome;
use crate::Config;

/// Connects to PostgreSQL, runs the migrations, creates missing topics, binds the
/// listener and wires the service. Fails with a message naming what could not be reached.
pub async fn build(config: Config) -> anyhow::Result<Application<OnPaymentOutcome>> {
    let resources = Resources::acquire(config.needs()).await?;
    let topics = config.topics();
    let router = router(AppState {
        pool: resources.pool.clone(),
        outbox: resources.outbox.clone(),
    });
    let handler = OnPaymentOutcome {
        pool: resources.pool.clone(),
    };
    let consumes = [
        topics.payment_completed.as_str(),
        topics.payment_failed.as_str(),
    ];
    let mut app = Application::new(
        "order-service",
        &config.service,
        resources,
        &consumes,
        (router, handler),
    )?;
    app.gauges.push(pending_orders);
    app.cleanups.push(expired_keys(Duration::from_secs(
        config.idempotency_key_retention_hours * 3600,
    )));
    Ok(app)
}

/// Removes idempotency keys older than `retention` at each clean-up round.
fn expired_keys(retention: Duration) -> Cleanup {
    Cleanup {
        what: "expired idempotency keys",
        run: Arc::new(move |pool| {
            Box::pin(async move { crate::store::remove_expired_keys(&pool, retention).await })
        }),
    }
}

/// `orders_pending_oldest_age_seconds`: how long the oldest order not paid or failed yet
/// has waited (0 when none waits). Alert when it exceeds what payment normally takes.
fn pending_orders(pool: sqlx::PgPool) -> futures::future::BoxFuture<'static, ()> {
    Box::pin(async move {
        match crate::store::oldest_pending_age(&pool).await {
            Ok(age) => metrics::gauge!("orders_pending_oldest_age_seconds").set(age.unwrap_or(0.0)),
            Err(e) => {
                tracing::warn!(error = %e, "metrics: reading the oldest pending order failed")
            }
        }
    })
}
