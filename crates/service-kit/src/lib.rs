//! What the services share, so each service holds only what is its own:
//! - [`db_failure`]: what a database error means for a consumer's batch (outage or
//!   refusal);
//! - [`health`]: `GET /health/live` and `GET /health/ready`;
//! - [`http`]: serving HTTP with bounds on slow and idle clients, each request's trace
//!   context, span and metrics;
//! - [`metrics`]: `GET /metrics` (Prometheus), and the one recorder of the process;
//! - [`paging`]: `?limit=&before=` of the list endpoints, checked at the edge;
//! - [`problem`]: RFC 9457 problem responses, so every error has one shape;
//! - [`settings`]: the settings every service has, named with the service's prefix;
//! - [`lifecycle`]: connecting to PostgreSQL (running the shared and the service's own
//!   migrations) and Kafka (creating the topics) at start-up, and the [`Application`]:
//!   the HTTP API, the outbox relay and the consumer, run as one unit that starts and
//!   stops together;
//! - [`init_tracing`]: log lines to stderr, as text or JSON (with `trace_id` and
//!   `span_id` at the top level), filtered by `RUST_LOG`;
//! - [`telemetry`]: the flow's spans exported over OTLP, when `OTEL_EXPORTER_OTLP_ENDPOINT`
//!   is set;
//! - [`shutdown_signal`]: Ctrl-C or SIGTERM.

pub mod db_failure;
pub mod health;
pub mod http;
pub mod lifecycle;
mod log_lines;
pub mod metrics;
pub mod paging;
pub mod problem;
pub mod settings;
pub mod telemetry;

pub use http::HttpSettings;

pub use lifecycle::{Application, Needs, Resources};
pub use problem::Problem;
pub use settings::{ServiceConfig, ServiceSettings};

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

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// One line of text per event, for people.
    #[default]
    Text,
    /// One JSON object per line, with the fields of the event and of every span it is
    /// in (topic, partition, offset, event id, correlation id, trace id…), for machines.
    Json,
}

/// Logging settings; the same variables for both services.
#[derive(Debug, Clone, clap::Args)]
pub struct LogSettings {
    /// `text` or `json` (one JSON object per line). Lines are filtered by `RUST_LOG`.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`), as text (with colours only on
/// a terminal, so log files stay plain) or as JSON lines.
pub fn init_tracing(settings: &LogSettings) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,sqlx=warn".into());
    use tracing_subscriber::util::SubscriberInitExt;
    // Also takes the `log` records of libraries (librdkafka's among them).
    let _ = log_subscriber(settings.log_format, filter, std::io::stderr).try_init();
}

/// The services' log subscriber, writing to `writer`; tests capture the logs with it.
pub fn log_subscriber<W>(
    format: LogFormat,
    filter: tracing_subscriber::EnvFilter,
    writer: W,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Text => Box::new(builder.with_ansi(std::io::stderr().is_terminal()).finish()),
        LogFormat::Json => Box::new(
            builder
                .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
                .event_format(log_lines::TopLevelTrace(
                    tracing_subscriber::fmt::format()
                        .json()
                        .flatten_event(true)
                        .with_current_span(false)
                        .with_span_list(true),
                ))
                .finish(),
        ),
    }
}
