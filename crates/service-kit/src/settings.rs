//! The settings every service has, in one struct ([`ServiceSettings`]) that each service
//! flattens into its command line. Their environment variables carry the service's
//! prefix (`ORDER_LISTEN`, `PAYMENT_LISTEN`), and some defaults differ (the port, the
//! database): [`Naming`] says how, and [`parse`] reads a service's whole configuration
//! with them.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Command, CommandFactory, FromArgMatches};
use consumer::ConsumerSettings;
use kafka::KafkaSettings;
use outbox::RetentionSettings;
use sqlx::migrate::Migrator;

use crate::lifecycle::Needs;
use crate::{HttpSettings, LogSettings};

#[derive(Debug, Clone, Args)]
pub struct ServiceSettings {
    /// Address to listen on; 127.0.0.1 keeps the service off other interfaces.
    #[arg(long)]
    pub listen: SocketAddr,

    /// PostgreSQL connection URL.
    #[arg(long)]
    pub database_url: String,

    /// Consumer group of the service's consumer.
    #[arg(long)]
    pub consumer_group: String,

    /// Largest database pool.
    #[arg(long, default_value_t = 10)]
    pub db_pool: u32,

    /// How long a request may wait for a database connection, in seconds.
    #[arg(long, default_value_t = 5)]
    pub db_acquire_timeout_secs: u64,

    /// Readiness (`GET /health/ready`) reports the relay stuck when the oldest event not
    /// yet published has waited longer than this, in seconds.
    #[arg(long, default_value_t = 60)]
    pub relay_stuck_after_secs: u64,

    /// On SIGTERM or Ctrl-C, how long readiness answers 503 while requests and messages are
    /// still served, before stopping, in seconds: a load balancer that follows readiness
    /// takes the instance out first. Set it above the balancer's probe period × failure
    /// threshold.
    #[arg(long, default_value_t = 5)]
    pub shutdown_drain_secs: u64,

    /// How long shutdown may take, after the drain, before in-flight work is abandoned,
    /// in seconds.
    #[arg(long, default_value_t = 20)]
    pub shutdown_timeout_secs: u64,

    #[command(flatten)]
    pub kafka: KafkaSettings,

    #[command(flatten)]
    pub consumer: ConsumerSettings,

    #[command(flatten)]
    pub retention: RetentionSettings,

    #[command(flatten)]
    pub http: HttpSettings,

    #[command(flatten)]
    pub log: LogSettings,
}

/// How one service names its shared settings.
pub struct Naming {
    /// The prefix of their environment variables: `ORDER` gives `ORDER_LISTEN`, …
    pub prefix: &'static str,
    pub listen: &'static str,
    pub database_url: &'static str,
    pub consumer_group: &'static str,
}

/// The shared settings whose environment variables carry the service's prefix.
const PREFIXED: [&str; 8] = [
    "listen",
    "database_url",
    "consumer_group",
    "db_pool",
    "db_acquire_timeout_secs",
    "relay_stuck_after_secs",
    "shutdown_drain_secs",
    "shutdown_timeout_secs",
];

/// A service's whole configuration: its own settings and the shared ones, named as
/// [`ServiceConfig::NAMING`] says.
pub trait ServiceConfig: CommandFactory + FromArgMatches + Sized {
    const NAMING: Naming;

    fn service(&self) -> &ServiceSettings;

    fn service_mut(&mut self) -> &mut ServiceSettings;

    /// From the command line and the environment; exits with clap's message when a
    /// setting is wrong (or prints `--help`).
    fn load() -> Self {
        parse(&Self::NAMING, std::env::args_os())
    }

    /// From `args` (the program's name first) and the environment.
    fn load_from(args: impl IntoIterator<Item = impl Into<OsString> + Clone>) -> Self {
        parse(&Self::NAMING, args)
    }
}

/// Makes `$config` (a service's configuration, with its shared settings in a field
/// `service`) a [`ServiceConfig`] named by `$naming`, whose own migrations are
/// `$migrations` and whose database URL is the variable `$database`.
#[macro_export]
macro_rules! service_config {
    ($config:ty, $naming:expr, $migrations:expr, $database:literal) => {
        impl $crate::ServiceConfig for $config {
            const NAMING: $crate::settings::Naming = $naming;

            fn service(&self) -> &$crate::ServiceSettings {
                &self.service
            }

            fn service_mut(&mut self) -> &mut $crate::ServiceSettings {
                &mut self.service
            }
        }

        impl $config {
            /// What the service needs before it can serve, from these settings.
            pub fn needs(&self) -> $crate::Needs<'_> {
                self.service.needs($migrations, $database)
            }

            pub fn topics(&self) -> events::Topics {
                self.service.topics()
            }
        }
    };
}

/// Reads `C` (a service's configuration, flattening [`ServiceSettings`]) from `args`
/// and the environment, named as `naming` says; on a bad setting, or `--help`, prints
/// and exits as clap does.
pub fn parse<C: CommandFactory + FromArgMatches>(
    naming: &Naming,
    args: impl IntoIterator<Item = impl Into<OsString> + Clone>,
) -> C {
    let matches = named(C::command(), naming).get_matches_from(args);
    C::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

/// `command` with the shared settings' variables and defaults of the service `naming`
/// names.
pub fn named(command: Command, naming: &Naming) -> Command {
    let mut command = command;
    for id in PREFIXED {
        // Leaked once per setting at start-up: clap keeps `&'static str`.
        let variable: &'static str =
            Box::leak(format!("{}_{}", naming.prefix, id.to_uppercase()).into_boxed_str());
        command = command.mut_arg(id, |arg| arg.env(variable));
    }
    let examples: &'static str = Box::leak(examples(naming).into_boxed_str());
    command
        .after_help(examples)
        .mut_arg("listen", |a| a.required(false).default_value(naming.listen))
        .mut_arg("database_url", |a| {
            a.required(false)
                .default_value(naming.database_url)
                .hide_env_values(true)
        })
        .mut_arg("consumer_group", |a| {
            a.required(false).default_value(naming.consumer_group)
        })
}

/// `--help`'s closing examples: a managed Kafka, a PostgreSQL that requires TLS, traces.
fn examples(naming: &Naming) -> String {
    let database = format!("{}_DATABASE_URL", naming.prefix);
    format!(
        "Examples:\n\
         \n  A managed Kafka (SASL_SSL with SCRAM; the password is never logged):\n    \
         KAFKA_BOOTSTRAP=b-1.kafka.example.net:9096,b-2.kafka.example.net:9096\n    \
         KAFKA_SECURITY_PROTOCOL=SASL_SSL  KAFKA_SASL_MECHANISM=SCRAM-SHA-512\n    \
         KAFKA_SASL_USERNAME=orders  KAFKA_SASL_PASSWORD=…\n    \
         KAFKA_SSL_CA_LOCATION=/etc/order-platform/kafka-ca.pem   (when the CA is not a system one)\n\
         \n  Mutual TLS instead: KAFKA_SECURITY_PROTOCOL=SSL with KAFKA_SSL_CERTIFICATE_LOCATION and\n  \
         KAFKA_SSL_KEY_LOCATION. Any other librdkafka property, for every client:\n    \
         KAFKA_PROPERTIES=client.rack=eu1,socket.keepalive.enable=true\n\
         \n  A PostgreSQL that requires TLS (sslmode and sslrootcert in the URL):\n    \
         {database}='postgres://orders:…@db.example.net:5432/{db}?sslmode=verify-full&sslrootcert=/etc/order-platform/db-ca.pem'\n\
         \n  Traces over OTLP/HTTP (nothing is exported unless the endpoint is set):\n    \
         OTEL_EXPORTER_OTLP_ENDPOINT=http://otel-collector:4318\n    \
         and OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES, OTEL_TRACES_SAMPLER(_ARG), OTEL_EXPORTER_OTLP_HEADERS",
        db = naming.consumer_group.trim_end_matches("-service").to_owned() + "s",
    )
}

impl ServiceSettings {
    /// What the service needs before it can serve; `database_setting` names the URL's
    /// variable in errors.
    pub fn needs(
        &self,
        migrations: &'static Migrator,
        database_setting: &'static str,
    ) -> Needs<'_> {
        Needs {
            listen: self.listen,
            database_url: &self.database_url,
            database_setting,
            db_pool: self.db_pool,
            db_acquire_timeout: Duration::from_secs(self.db_acquire_timeout_secs),
            migrations,
            kafka: &self.kafka,
        }
    }

    pub fn relay_stuck_after(&self) -> Duration {
        Duration::from_secs(self.relay_stuck_after_secs)
    }

    pub fn shutdown_drain(&self) -> Duration {
        Duration::from_secs(self.shutdown_drain_secs)
    }

    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs(self.shutdown_timeout_secs)
    }

    pub fn topics(&self) -> events::Topics {
        events::Topics::with_prefix(&self.kafka.topic_prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Config {
        #[command(flatten)]
        service: ServiceSettings,
    }

    const NAMING: Naming = Naming {
        prefix: "SOME",
        listen: "127.0.0.1:9999",
        database_url: "postgres://localhost/some",
        consumer_group: "some-service",
    };

    #[test]
    fn the_shared_settings_take_the_services_names_and_defaults() {
        let config: Config = parse(&NAMING, ["some-service"]);
        assert_eq!(config.service.listen.port(), 9999);
        assert_eq!(config.service.consumer_group, "some-service");
        let help = named(Config::command(), &NAMING)
            .render_long_help()
            .to_string();
        for variable in [
            "SOME_LISTEN",
            "SOME_DATABASE_URL",
            "SOME_SHUTDOWN_TIMEOUT_SECS",
            "SOME_SHUTDOWN_DRAIN_SECS",
            "KAFKA_BOOTSTRAP",
        ] {
            assert!(help.contains(variable), "{variable} in --help");
        }
        let config: Config = parse(&NAMING, ["some-service", "--db-pool", "3"]);
        assert_eq!(config.service.db_pool, 3);
    }
}
