use order_service::Config;
use service_kit::ServiceConfig;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::load();
    service_kit::init_tracing(&config.service.log);
    // Flushes the last spans when main returns.
    let _telemetry = service_kit::telemetry::init("order-service")?;
    let app = order_service::build(config).await?;
    tracing::info!(port = app.port(), "order-service listening");
    app.run_until_stopped(service_kit::shutdown_signal())
        .await
        .map(|_stats| ())
}
