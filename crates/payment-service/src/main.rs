use payment_service::Config;
use service_kit::ServiceConfig;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::load();
    service_kit::init_tracing(&config.service.log);
    // Flushes the last spans when main returns.
    let _telemetry = service_kit::telemetry::init("payment-service")?;
    let app = payment_service::build(config).await?;
    tracing::info!(port = app.port(), "payment-service listening");
    app.run_until_stopped(service_kit::shutdown_signal())
        .await
        .map(|_stats| ())
}
