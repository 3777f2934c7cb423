//! The wiring: the payment gateway, database and migrations, topics, producer and
//! listener, then the HTTP API and the `order.created` consumer, as one [`Application`].

use anyhow::Context;
use consumer::DeadLetterPolicy;
use service_kit::{Application, Resources};

use crate::gateway::{Gateway, HttpGateway, Simulated};
use crate::http::{router, AppState};
use crate::on_order_created::OnOrderCreated;
use crate::Config;

/// Creates the gateway client, connects to PostgreSQL, runs the migrations, creates
/// missing topics, binds the listener and wires the service. Fails with a message naming
/// what could not be reached.
pub async fn build(config: Config) -> anyhow::Result<Application<OnOrderCreated>> {
    let gateway = gateway(&config)?;
    let resources = Resources::acquire(config.needs()).await?;
    let topics = config.topics();
    let bootstrap = &config.kafka.kafka_bootstrap;
    Ok(Application {
        name: "payment-service",
        router: router(AppState {
            pool: resources.pool.clone(),
        }),
        consumer: config.consumer.config(
            bootstrap,
            "payment-service",
            &config.consumer_group,
            &[&topics.order_created],
        ),
        dead_letters: DeadLetterPolicy::new(bootstrap, config.consumer.dead_letter_limit())
            .context("creating the dead-letter producer")?,
        retention: config.retention.clone(),
        relay_stuck_after: config.relay_stuck_after(),
        handler: OnOrderCreated::new(
            resources.pool.clone(),
            resources.outbox.clone(),
            gateway,
            config.gateway_concurrency as usize,
        ),
        resources,
        shutdown_timeout: config.shutdown_timeout(),
        http: config.http.clone(),
    })
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
