//! Settings. Each has a flag and an environment variable; `order-service --help` lists all.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use consumer::ConsumerSettings;
use kafka::KafkaSettings;
use service_kit::Needs;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "order-service",
    version,
    about = "Accepts orders and publishes order.created"
)]
pub struct Config {
    /// Address to listen on; 127.0.0.1 keeps the service off other interfaces.
    #[arg(long, env = "ORDER_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// PostgreSQL connection URL.
    #[arg(
        long,
        env = "ORDER_DATABASE_URL",
        default_value = "postgres://orders:orders@127.0.0.1:5432/orders"
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

    /// Consumer group of the payment.completed and payment.failed consumer.
    #[arg(long, env = "ORDER_CONSUMER_GROUP", default_value = "order-service")]
    pub consumer_group: String,

    /// Largest database pool.
    #[arg(long, env = "ORDER_DB_POOL", default_value_t = 10)]
    pub db_pool: u32,

    /// How long a request may wait for a database connection, in seconds.
    #[arg(long, env = "ORDER_DB_ACQUIRE_TIMEOUT_SECS", default_value_t = 5)]
    pub db_acquire_timeout_secs: u64,

    /// Readiness (`GET /health/ready`) reports the relay stuck when the oldest event not
    /// yet published has waited longer than this, in seconds.
    #[arg(long, env = "ORDER_RELAY_STUCK_AFTER_SECS", default_value_t = 60)]
    pub relay_stuck_after_secs: u64,

    /// How long shutdown may take before in-flight work is abandoned, in seconds.
    #[arg(long, env = "ORDER_SHUTDOWN_TIMEOUT_SECS", default_value_t = 20)]
    pub shutdown_timeout_secs: u64,
}

impl Config {
    /// What the service needs before it can serve, from these settings.
    pub fn needs(&self) -> Needs<'_> {
        Needs {
            listen: self.listen,
            database_url: &self.database_url,
            database_setting: "ORDER_DATABASE_URL",
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

    pub fn topics(&self) -> events::Topics {
        events::Topics::with_prefix(&self.kafka.topic_prefix)
    }

    /// The defaults, on port 0, with another database, broker and topic prefix; for tests.
    pub fn for_test(database_url: &str, kafka_bootstrap: &str, topic_prefix: &str) -> Self {
        let mut config = Self::parse_from(["order-service"]);
        config.database_url = database_url.to_owned();
        config.kafka.kafka_bootstrap = kafka_bootstrap.to_owned();
        config.kafka.topic_prefix = topic_prefix.to_owned();
        config.listen = ([127, 0, 0, 1], 0).into();
        config
    }
}
