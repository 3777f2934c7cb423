//! What the services share, so each service holds only what is its own:
//! - [`database`]: what a database error means for a consumer's batch (outage or
//!   refusal);
//! - [`health`]: `GET /health/live` and `GET /health/ready`;
//! - [`problem`]: RFC 9457 problem responses, so every error has one shape;
//! - [`lifecycle`]: connecting to PostgreSQL (running the shared and the service's own
//!   migrations) and Kafka (creating the topics) at start-up, and the [`Application`]:
//!   the HTTP API, the outbox relay and the consumer, run as one unit that starts and
//!   stops together;
//! - [`init_tracing`]: log lines to stderr, filtered by `RUST_LOG`;
//! - [`shutdown_signal`]: Ctrl-C or SIGTERM.

pub mod database;
pub mod health;
pub mod lifecycle;
pub mod problem;

pub use lifecycle::{Application, Needs, Resources};
pub use problem::Problem;

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { () = ctrl_c => {}, () = term => {} }
    tracing::info!("shutting down");
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`), with colours only on a
/// terminal so log files stay plain text.
pub fn init_tracing() {
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,sqlx=warn".into()),
        )
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}
