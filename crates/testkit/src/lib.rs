//! Real Kafka and real PostgreSQL, on demand, for the platform's tests, benchmarks and
//! chaos drills. Nothing here is a mock: every helper talks to a server process.
//!
//! A map of the modules:
//! - [`engine`]: finds the Docker-API container engine (Docker, or Podman's socket), labels
//!   every container this process starts, and removes them when the process exits.
//! - [`images`]: which images to run (`OP_POSTGRES_IMAGE`, `OP_KAFKA_IMAGE`) and the one
//!   launch script that starts a Kafka node in any of them.
//! - [`postgres`]: one PostgreSQL server per test binary and a fresh database per test.
//! - [`kafka`]: one single-broker KRaft Kafka per test binary, plus topic, produce and
//!   read-back helpers that work against any broker.
//! - [`cluster`]: a 3-broker KRaft cluster per test whose brokers can be killed, paused,
//!   stopped and restarted.
//! - [`names`]: unique topic, group and database names, so tests never share state.
//! - [`services`]: the platform's services as tests configure them.
//! - [`process`]: a service run as an OS process (exit status, signals, its log).
//! - [`scenario`]: `order.created` events as order-service publishes them, and
//!   [`eventually`].
//! - [`secure_kafka`]: a broker that speaks only SASL_SSL and mutual TLS, and [`tls`]:
//!   the certificates made for it (and for PostgreSQL with `ssl=on`) at test time.
//!
//! **External mode**: when `OP_DATABASE_URL` and `OP_KAFKA_BOOTSTRAP` are both set,
//! [`postgres::server`] and [`kafka::broker`] start nothing and use those servers.
//! The 3-broker [`cluster`] always needs a container engine, because its tests kill brokers.
//!
//! Container work runs on one runtime owned by this crate ([`runtime`]), so a server shared
//! by many `#[tokio::test]`s outlives the runtime of the test that happened to start it.

// Test-kit errors are rare and off any hot path; their size does not matter.
#![allow(clippy::result_large_err)]

pub mod cluster;
pub mod engine;
mod error;
pub mod images;
pub mod kafka;
pub mod names;
pub mod postgres;
pub mod process;
pub mod runtime;
pub mod scenario;
pub mod secure_kafka;
pub mod services;
pub mod tls;

pub use crate::kafka::{KafkaBroker, Record};
pub use cluster::{ClusterBroker, KafkaCluster};
pub use error::{Error, Result};
pub use names::unique_name;
pub use postgres::{PostgresServer, TestDatabase};
pub use process::ServiceProcess;
pub use scenario::eventually;
