use clap::Parser;
use order_service::{Application, Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,sqlx=warn".into()),
        )
        .init();
    let config = Config::parse();
    let app = Application::build(config).await?;
    tracing::info!(port = app.port(), "order-service listening");
    app.run_until_stopped(service_kit::shutdown_signal()).await
}
