//! Start-up: database and migrations, topics, producer, listener. Running: the HTTP API,
//! the outbox relay and the `payment.completed` consumer, stopped together.

use std::future::Future;

use service_kit::lifecycle::{Needs, Resources, Service};

use crate::http::{router, AppState};
use crate::payments_in::PaymentsHandler;
use crate::{Config, MIGRATOR};

/// A built service, listening but not yet serving.
pub struct Application {
    resources: Resources,
    config: Config,
}

impl Application {
    /// Connects to PostgreSQL, runs the migrations, creates missing topics and binds the
    /// listener. Fails with a message naming what could not be reached.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let resources = Resources::acquire(Needs {
            listen: config.listen,
            database_url: &config.database_url,
            database_setting: "ORDER_DATABASE_URL",
            db_pool: config.db_pool,
            db_acquire_timeout: config.db_acquire_timeout(),
            migrator: &MIGRATOR,
            kafka: &config.kafka,
        })
        .await?;
        Ok(Self { resources, config })
    }

    /// The port actually bound (useful with port 0).
    pub fn port(&self) -> u16 {
        self.resources.port()
    }

    /// Serves until `shutdown` completes, then stops within the shutdown timeout.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Self { resources, config } = self;
        let topics = config.topics();
        let consumer = config.kafka.consumer(
            "order-service",
            &config.consumer_group,
            &[&topics.payment_completed, &topics.payment_failed],
        );
        Service {
            name: "order-service",
            router: router(AppState {
                pool: resources.pool.clone(),
                topics,
            }),
            handler: PaymentsHandler {
                pool: resources.pool.clone(),
                topics: config.topics(),
            },
            resources,
            consumer,
            shutdown_timeout: config.shutdown_timeout(),
        }
        .run(shutdown)
        .await
    }
}
