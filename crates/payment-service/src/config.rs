//! Settings. Each has a flag and an environment variable; `payment-service --help` lists all.
//! Those every service has are [`service_kit::ServiceSettings`], named here.

use std::time::Duration;

use clap::Parser;
use service_kit::settings::Naming;
use service_kit::ServiceSettings;

/// How payment-service names the settings every service has.
pub const NAMING: Naming = Naming {
    prefix: "PAYMENT",
    listen: "127.0.0.1:8081",
    database_url: "postgres://orders:orders@127.0.0.1:5432/payments",
    consumer_group: "payment-service",
};

#[derive(Debug, Clone, Parser)]
#[command(
    name = "payment-service",
    version,
    about = "Pays orders and publishes payment.completed"
)]
pub struct Config {
    #[command(flatten)]
    pub service: ServiceSettings,

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
}

service_kit::service_config!(Config, NAMING, &crate::MIGRATIONS, "PAYMENT_DATABASE_URL");

impl Config {
    pub fn gateway_timeout(&self) -> Duration {
        Duration::from_millis(self.gateway_timeout_ms)
    }
}
