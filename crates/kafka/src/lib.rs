//! The Kafka foundation of the platform: everything about talking to Kafka that more than
//! one crate needs, in one place.
//!
//! - [`connection`]: [`Connection`], where Kafka is and how to talk to it (TLS, SASL,
//!   any further librdkafka property), applied to every client;
//! - [`client`]: the base client configuration and the **one** reliable-producer recipe
//!   (`acks=all`, idempotent) that the relay, the dead-letter writer, redrive and the test
//!   kit all use;
//! - [`record`]: [`Record`], an owned Kafka record — copied from a consumed message, or
//!   built to be produced — with its headers in order;
//! - [`topics`]: creating topics at start-up, and [`KafkaSettings`], the Kafka part of
//!   every service's command line;
//! - [`dead_letter`]: the dead-letter topic of a topic and the `dlt-*` diagnostic headers;
//! - [`fault`]: whether a failed write is an outage (retry) or a refusal (it never will).
//!
//! The consume loop itself lives in the `consumer` crate.

pub mod client;
pub mod connection;
pub mod dead_letter;
pub mod fault;
pub mod record;
pub mod topics;

pub use client::{client_config, reliable_producer, reliable_producer_config};
pub use connection::{Connection, Properties, SaslMechanism, Secret, SecurityProtocol};
pub use dead_letter::dead_letter_topic;
pub use fault::{fault_of, Fault};
pub use record::Record;
pub use topics::{ensure_topics, shortfalls, KafkaSettings, Requirements, ShortOf, Shortfall};

/// Re-exported so that crates above need no rdkafka version of their own to name these.
pub use rdkafka::error::KafkaError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kafka: {0}")]
    Client(#[from] KafkaError),
    #[error("creating topic {topic}: {reason}")]
    Topic { topic: String, reason: String },
    #[error("reading the cluster's configuration: {0}")]
    Config(String),
    /// Topics a service may not create are missing or fall short (`TOPIC_CREATE=false`).
    #[error("TOPIC_CREATE=false and the topics are not fit to use: {0}")]
    Unfit(String),
    /// The connection settings do not fit together, or name a file that cannot be read.
    #[error("Kafka settings: {0}")]
    Settings(String),
    /// The brokers did not answer, or refused this client.
    #[error("cannot reach Kafka at {bootstrap}: {why}")]
    Unreachable { bootstrap: String, why: String },
}
