//! Start-up and shutdown of a service: its database, its Kafka producer, and three tasks
//! — the HTTP API, the outbox relay and one consumer — that stop together.

use std::future::Future;
use std::time::Duration;

use anyhow::Context;
use consumer::{BatchHandler, ConsumerConfig};
use outbox::{Relay, RelayConfig};
use rdkafka::config::ClientConfig;
use rdkafka::producer::FutureProducer;
use sqlx::migrate::Migrator;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Connects a pool (bounded waits) and runs the service's migrations. `setting` names the
/// variable the URL came from, for the error message.
pub async fn connect_database(
    url: &str,
    max_connections: u32,
    acquire_timeout: Duration,
    migrator: &Migrator,
    setting: &str,
) -> anyhow::Result<PgPool> {
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(acquire_timeout)
        .connect(url)
        .await
        .with_context(|| format!("connecting to PostgreSQL ({setting})"))?;
    migrator
        .run(&pool)
        .await
        .context("running database migrations")?;
    Ok(pool)
}

/// Idempotent, `acks=all`: what Kafka acknowledged is written once and durable.
pub fn producer(bootstrap: &str) -> anyhow::Result<FutureProducer> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("broker.address.family", "v4")
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "30000")
        .create()
        .context("creating the Kafka producer")
}

/// Everything a service runs.
pub struct Service<H> {
    /// For log lines.
    pub name: &'static str,
    pub listener: TcpListener,
    pub router: axum::Router,
    pub pool: PgPool,
    pub producer: FutureProducer,
    pub consumer: ConsumerConfig,
    pub handler: H,
    /// Bound on everything after the shutdown signal.
    pub shutdown_timeout: Duration,
}

impl<H: BatchHandler> Service<H> {
    /// Serves until `shutdown` completes. Then it stops taking requests and messages,
    /// finishes the batch in flight, commits consumer offsets and stops the relay, all
    /// within `shutdown_timeout`.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let stop = CancellationToken::new();
        let relay = Relay::new(self.pool.clone(), self.producer, RelayConfig::default());
        let relay = tokio::spawn(relay.run(stop.clone()));
        let consuming = tokio::spawn(consumer::run(self.consumer, self.handler, stop.clone()));
        let serving = axum::serve(self.listener, self.router).with_graceful_shutdown({
            let stop = stop.clone();
            async move {
                tokio::select! {
                    () = shutdown => {}
                    () = stop.cancelled() => {}
                }
                stop.cancel();
            }
        });

        let stopping = stop.clone();
        let everything = async move {
            let served = serving.await;
            stopping.cancel(); // the server may also end by itself, on an error
            let consumed = consuming.await;
            let _ = relay.await;
            (served, consumed)
        };
        let limit = self.shutdown_timeout;
        let outcome = tokio::select! {
            outcome = everything => Some(outcome),
            () = async { stop.cancelled().await; tokio::time::sleep(limit).await } => None,
        };
        self.pool.close().await;
        let Some((served, consumed)) = outcome else {
            tracing::warn!(
                service = self.name,
                ?limit,
                "shutdown did not finish in time"
            );
            return Ok(());
        };
        served.context("serving HTTP")?;
        let stats = consumed
            .context("the consumer task failed")?
            .context("consuming")?;
        tracing::info!(service = self.name, ?stats, "stopped");
        Ok(())
    }
}
