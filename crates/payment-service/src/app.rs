//! The wiring: the payment gateway, database and migrations, topics, producer and
//! listener, then the HTTP API and the `order.created` consumer, as one [`Application`].

use anyhow::Context;
use service_kit::health::Component;
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
    let breaker = gateway.breaker().cloned();
    let resources = Resources::acquire(config.needs()).await?;
    let topics = config.topics();
    let router = router(AppState {
        pool: resources.pool.clone(),
    });
    let handler = OnOrderCreated::new(
        resources.pool.clone(),
        resources.outbox.clone(),
        gateway,
        config.gateway_concurrency as usize,
    );
    let mut app = Application::new(
        "payment-service",
        &config.service,
        resources,
        &[&topics.order_created],
        (router, handler),
    )?;
    app.components.extend(breaker.map(breaker_component));
    Ok(app)
}

/// The gateway's circuit breaker in the readiness body (not deciding readiness).
fn breaker_component(breaker: std::sync::Arc<crate::breaker::Breaker>) -> Component {
    Component {
        name: "payment_gateway",
        report: std::sync::Arc::new(move || {
            let (state, detail) = breaker.report();
            (state == crate::breaker::State::Closed, detail)
        }),
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
