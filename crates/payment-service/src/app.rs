//! The wiring: the payment gateway, database and migrations, topics, producer and
//! listener, then the HTTP API and the `order.created` consumer, as one [`Application`].

use anyhow::Context;
use consumer::DeadLetterPolicy;
use service_kit::{Application, Resources};

use crate::gateway::{Gateway, HttpGateway, HttpSettings, Simulated};
use crate::http::{router, AppState};
use crate::on_order_created::OnOrderCreated;
use crate::Config;

/// Creates the gateway client, connects to PostgreSQL, runs the migrations, creates
/// missing topics, binds the listener and wires the service. Fails with a message naming
/// what could not be reached.
pub async fn build(config: Config) -> anyhow::Result<Application<OnOrderCreated>> {
    let gateway = gateway(&config)?;
    let components = gateway.breaker().map(|breaker| {
        let breaker = breaker.clone();
        service_kit::health::Component {
            name: "payment_gateway",
            report: std::sync::Arc::new(move || {
                let (state, detail) = breaker.report();
                (state == crate::breaker::State::Closed, detail)
            }),
        }
    });
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
        components: components.into_iter().collect(),
        gauges: Vec::new(),
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
    let ca_pem = match &config.gateway_ca_file {
        Some(path) => Some(
            std::fs::read(path)
                .with_context(|| format!("reading PAYMENT_GATEWAY_CA_FILE {}", path.display()))?,
        ),
        None => None,
    };
    let settings = HttpSettings {
        base_url: url.clone(),
        timeout: config.gateway_timeout(),
        ca_pem,
        allow_http: config.gateway_allow_http,
        breaker: config.breaker,
    };
    let gateway =
        HttpGateway::new(&settings).context("the payment gateway (PAYMENT_GATEWAY_URL)")?;
    tracing::info!(%url, timeout = ?config.gateway_timeout(), breaker = ?config.breaker, "using the payment gateway over HTTP");
    Ok(Gateway::Http(gateway))
}
