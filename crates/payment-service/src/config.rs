//! Settings. Each has a flag and an environment variable; `payment-service --help` lists all.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use consumer::ConsumerSettings;
use kafka::KafkaSettings;
use service_kit::Needs;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "payment-service",
    version,
    about = "Pays orders and publishes payment.completed"
)]
pub struct Config {
    /// Address to listen on; 127.0.0.1 keeps the service off other interfaces.
    #[arg(long, env = "PAYMENT_LISTEN", default_value = "127.0.0.1:8081")]
    pub listen: SocketAddr,

    /// PostgreSQL connection URL.
    #[arg(
        long,
        env = "PAYMENT_DATABASE_URL",
        default_value = "postgres://orders:orders@127.0.0.1:5432/payments"
    )]
    pub database_url: String,

    #[command(flatten)]
    pub kafka: KafkaSettings,

    #[command(flatten)]
    pub consumer: ConsumerSettings,

    #[command(flatten)]
    pub retention: outbox::RetentionSettings,

    #[command(flatten)]
    pub http: service_kit::HttpSettings,

    #[command(flatten)]
    pub log: service_kit::LogSettings,

    /// Consumer group of the order.created consumer.
    #[arg(
        long,
        env = "PAYMENT_CONSUMER_GROUP",
        default_value = "payment-service"
    )]
    pub consumer_group: String,

    /// Largest database pool.
    #[arg(long, env = "PAYMENT_DB_POOL", default_value_t = 10)]
    pub db_pool: u32,

    /// How long a request may wait for a database connection, in seconds.
    #[arg(long, env = "PAYMENT_DB_ACQUIRE_TIMEOUT_SECS", default_value_t = 5)]
    pub db_acquire_timeout_secs: u64,

    /// Base URL of the payment gateway (`https://host[:port][/path]`; see
    /// docs/payment-gateway.md). Plain `http://` is accepted only to this machine
    /// (127.0.0.1, ::1, localhost) unless PAYMENT_GATEWAY_ALLOW_HTTP is set. When unset, a
    /// built-in simulated gateway approves every charge, except those above
    /// PAYMENT_SIMULATED_DECLINE_ABOVE.
    #[arg(long, env = "PAYMENT_GATEWAY_URL")]
    pub gateway_url: Option<String>,

    /// A PEM file of certificate authorities to trust for the gateway's HTTPS, besides
    /// the public ones (a private CA).
    #[arg(long, env = "PAYMENT_GATEWAY_CA_FILE")]
    pub gateway_ca_file: Option<std::path::PathBuf>,

    /// Accept a plain `http://` gateway URL to another machine (card charges unencrypted).
    #[arg(long, env = "PAYMENT_GATEWAY_ALLOW_HTTP", default_value_t = false,
          action = clap::ArgAction::Set)]
    pub gateway_allow_http: bool,

    /// Bound on one gateway call, from connecting to the whole answer, in milliseconds.
    /// A call that times out may have charged: the gateway is asked what it did before
    /// the order is charged again.
    #[arg(long, env = "PAYMENT_GATEWAY_TIMEOUT_MS", default_value_t = 2000)]
    pub gateway_timeout_ms: u64,

    #[command(flatten)]
    pub breaker: crate::breaker::BreakerSettings,

    /// Most gateway calls in flight at once.
    #[arg(long, env = "PAYMENT_GATEWAY_CONCURRENCY", default_value_t = 32,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub gateway_concurrency: u32,

    /// The simulated gateway declines charges above this amount (for the demo).
    #[arg(long, env = "PAYMENT_SIMULATED_DECLINE_ABOVE")]
    pub simulated_decline_above: Option<rust_decimal::Decimal>,

    /// Readiness (`GET /health/ready`) reports the relay stuck when the oldest event not
    /// yet published has waited longer than this, in seconds.
    #[arg(long, env = "PAYMENT_RELAY_STUCK_AFTER_SECS", default_value_t = 60)]
    pub relay_stuck_after_secs: u64,

    /// How long shutdown may take before in-flight work is abandoned, in seconds.
    #[arg(long, env = "PAYMENT_SHUTDOWN_TIMEOUT_SECS", default_value_t = 20)]
    pub shutdown_timeout_secs: u64,
}

impl Config {
    /// What the service needs before it can serve, from these settings.
    pub fn needs(&self) -> Needs<'_> {
        Needs {
            listen: self.listen,
            database_url: &self.database_url,
            database_setting: "PAYMENT_DATABASE_URL",
            db_pool: self.db_pool,
            db_acquire_timeout: self.db_acquire_timeout(),
            migrations: &crate::MIGRATIONS,
            kafka: &self.kafka,
        }
    }

    pub fn db_acquire_timeout(&self) -> Duration {
        Duration::from_secs(self.db_acquire_timeout_secs)
    }

    pub fn relay_stuck_after(&self) -> Duration {
        Duration::from_secs(self.relay_stuck_after_secs)
    }

    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs(self.shutdown_timeout_secs)
    }

    pub fn gateway_timeout(&self) -> Duration {
        Duration::from_millis(self.gateway_timeout_ms)
    }

    pub fn topics(&self) -> events::Topics {
        events::Topics::with_prefix(&self.kafka.topic_prefix)
    }

    /// The defaults, on port 0, with another database, broker and topic prefix; for tests.
    pub fn for_test(database_url: &str, kafka_bootstrap: &str, topic_prefix: &str) -> Self {
        let mut config = Self::parse_from(["payment-service"]);
        config.database_url = database_url.to_owned();
        config.kafka.kafka_bootstrap = kafka_bootstrap.to_owned();
        config.kafka.topic_prefix = topic_prefix.to_owned();
        config.listen = ([127, 0, 0, 1], 0).into();
        config
    }
}
