//! Start-up: database and migrations, topics, producer, listener. Running: the HTTP API,
//! the outbox relay and the `order.created` consumer, stopped together.

use std::future::Future;

use service_kit::lifecycle::{Needs, Resources, Service};

use anyhow::Context;

use crate::gateway::{Gateway, HttpGateway, Simulated};
use crate::http::{router, AppState};
use crate::orders_in::OrderCreatedHandler;
use crate::{Config, MIGRATOR};

/// A built service, listening but not yet serving.
pub struct Application {
    resources: Resources,
    gateway: Gateway,
    config: Config,
}

impl Application {
    /// Connects to PostgreSQL, runs the migrations, creates missing topics and binds the
    /// listener. Fails with a message naming what could not be reached.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let gateway = gateway(&config)?;
        let resources = Resources::acquire(Needs {
            listen: config.listen,
            database_url: &config.database_url,
            database_setting: "PAYMENT_DATABASE_URL",
            db_pool: config.db_pool,
            db_acquire_timeout: config.db_acquire_timeout(),
            migrator: &MIGRATOR,
            kafka: &config.kafka,
        })
        .await?;
        Ok(Self {
            resources,
            gateway,
            config,
        })
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
        let Self {
            resources,
            gateway,
            config,
        } = self;
        let topics = config.topics();
        let consumer = config.kafka.consumer(
            "payment-service",
            &config.consumer_group,
            &[&topics.order_created],
        );
        Service {
            name: "payment-service",
            router: router(AppState {
                pool: resources.pool.clone(),
            }),
            handler: OrderCreatedHandler {
                pool: resources.pool.clone(),
                topics,
                gateway,
                gateway_concurrency: config.gateway_concurrency as usize,
            },
            resources,
            consumer,
            shutdown_timeout: config.shutdown_timeout(),
        }
        .run(shutdown)
        .await
    }
}

/// The HTTP gateway if a URL is configured, the simulated one otherwise.
fn gateway(config: &Config) -> anyhow::Result<Gateway> {
    let Some(url) = &config.gateway_url else {
        tracing::info!(decline_above = ?config.simulated_decline_above, "using the simulated payment gateway");
        return Ok(Gateway::Simulated(Simulated {
            decline_above: config.simulated_decline_above,
        }));
    };
    anyhow::ensure!(
        url.starts_with("http://"),
        "PAYMENT_GATEWAY_URL must start with http:// (this build speaks plain HTTP; put a \
         TLS-terminating proxy in front of an https gateway): {url}"
    );
    let gateway = HttpGateway::new(url, config.gateway_timeout())
        .context("creating the payment gateway client (PAYMENT_GATEWAY_URL)")?;
    tracing::info!(%url, timeout = ?config.gateway_timeout(), "using the payment gateway over HTTP");
    Ok(Gateway::Http(gateway))
}
