//! Start-up: database and migrations, topics, producer, listener. Running: the HTTP API,
//! the outbox relay and the `payment.completed` consumer, stopped together.

use std::future::Future;

use anyhow::Context;
use rdkafka::producer::FutureProducer;
use service_kit::lifecycle::{self, Service};
use sqlx::PgPool;
use tokio::net::TcpListener;

use crate::http::{router, AppState};
use crate::payments_in::PaymentCompletedHandler;
use crate::{Config, MIGRATOR};

/// A built service, listening but not yet serving.
pub struct Application {
    listener: TcpListener,
    pool: PgPool,
    producer: FutureProducer,
    config: Config,
}

impl Application {
    /// Connects to PostgreSQL, runs the migrations, creates missing topics and binds the
    /// listener. Fails with a message naming what could not be reached.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let pool = lifecycle::connect_database(
            &config.database_url,
            config.db_pool,
            config.db_acquire_timeout(),
            &MIGRATOR,
            "ORDER_DATABASE_URL",
        )
        .await?;
        let topics = config.topics();
        consumer::ensure_topics(
            &config.kafka.kafka_bootstrap,
            &[&topics.order_created, &topics.payment_completed],
            config.kafka.topic_partitions,
            config.kafka.topic_replication,
        )
        .await
        .context("creating topics (KAFKA_BOOTSTRAP)")?;
        let producer = lifecycle::producer(&config.kafka.kafka_bootstrap)?;
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("listening on {}", config.listen))?;
        Ok(Self {
            listener,
            pool,
            producer,
            config,
        })
    }

    /// The port actually bound (useful with port 0).
    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// Serves until `shutdown` completes, then stops within the shutdown timeout.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let topics = self.config.topics();
        let consumer = self
            .config
            .kafka
            .consumer(&self.config.consumer_group, &[&topics.payment_completed]);
        Service {
            name: "order-service",
            router: router(AppState {
                pool: self.pool.clone(),
                topics,
            }),
            handler: PaymentCompletedHandler {
                pool: self.pool.clone(),
            },
            listener: self.listener,
            pool: self.pool,
            producer: self.producer,
            consumer,
            shutdown_timeout: self.config.shutdown_timeout(),
        }
        .run(shutdown)
        .await
    }
}
