//! Settings. Each has a flag and an environment variable; `order-service --help` lists all.
//! Those every service has are [`service_kit::ServiceSettings`], named here.

use clap::Parser;
use service_kit::settings::Naming;
use service_kit::ServiceSettings;

/// How order-service names the settings every service has.
pub const NAMING: Naming = Naming {
    prefix: "ORDER",
    listen: "127.0.0.1:8080",
    database_url: "postgres://orders:orders@127.0.0.1:5432/orders",
    consumer_group: "order-service",
};

#[derive(Debug, Clone, Parser)]
#[command(
    name = "order-service",
    version,
    about = "Accepts orders and publishes order.created"
)]
pub struct Config {
    #[command(flatten)]
    pub service: ServiceSettings,

    /// How long an `Idempotency-Key` is remembered, in hours: the window in which a client
    /// may retry `POST /orders` and get the original order back. Older keys are removed in
    /// batches at the clean-up rounds (`CLEANUP_INTERVAL_SECS`); a key sent again after
    /// that makes a new order.
    #[arg(
        long,
        env = "ORDER_IDEMPOTENCY_KEY_RETENTION_HOURS",
        default_value_t = 24
    )]
    pub idempotency_key_retention_hours: u64,
}

service_kit::service_config!(Config, NAMING, &crate::MIGRATIONS, "ORDER_DATABASE_URL");
