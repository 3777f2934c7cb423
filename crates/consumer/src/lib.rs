//! The consumer runner shared by every service: *how* messages are fetched, retried,
//! dead-lettered and committed. *What* to do with them is a [`BatchHandler`].
//!
//! - **Batches**: the runner waits for one message, then takes more until
//!   [`ConsumerConfig::batch_size`] or [`ConsumerConfig::batch_wait`]. The handler is meant
//!   to apply a whole batch in one database transaction.
//! - **At-least-once, in order per partition**: offsets are stored only after every
//!   message of the batch is settled — applied by the handler (after its database
//!   commit) or acknowledged on a dead-letter topic. librdkafka commits stored offsets in
//!   the background; on shutdown they are committed synchronously. A crash in between
//!   redelivers the batch, so handlers must be idempotent.
//! - **Every failure has a class, and each class its treatment** ([`Outcome`] and
//!   [`Outage`]):
//!   - [`Outcome::DeadLetter`] (poison: undecodable, unknown type or version, invalid
//!     payload) goes to `<topic>.DLT` at once, and the messages after it are processed;
//!   - [`Outcome::Retry`] (a message-specific transient failure, such as a payment
//!     gateway's 5xx or timeout) is retried with exponential backoff and jitter, up to
//!     [`RetryPolicy::max_attempts`], then dead-lettered;
//!   - an [`Outage`] (the handler's database or Kafka unreachable) retries the whole
//!     batch with backoff for as long as it takes. It is never dead-lettered, never
//!     skipped.
//! - **The dead-letter policy** ([`DeadLetterPolicy`], passed in as one value): dead
//!   letters keep the original key, bytes and headers, add diagnostic `dlt-*` headers,
//!   and are acknowledged before the offsets are stored; its guard stops the consumer,
//!   with a message saying why, when more than [`DeadLetterLimit::max_ratio`] of the last
//!   [`DeadLetterLimit::window`] messages would be dead-lettered.
//! - **Counts by error class** of retries and dead letters are logged as they change and
//!   returned in [`Stats`].

use std::collections::BTreeMap;

pub mod dead_letter;
mod retry;
mod runner;
mod settings;

pub use dead_letter::{DeadLetterLimit, DeadLetterPolicy};
pub use kafka::Record;
pub use retry::{Pauses, RetryPolicy};
pub use runner::run;
pub use settings::{ConsumerConfig, ConsumerSettings};

/// Why a message failed: a stable class for grouping (`poison.invalid`,
/// `gateway.unavailable`, …) and a message for people.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Failure {
    pub class: String,
    pub message: String,
}

impl Failure {
    pub fn new(class: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            class: class.into(),
            message: message.into(),
        }
    }
}

/// What became of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Applied (or already applied before: a duplicate).
    Applied,
    /// Can never be processed (poison): dead-lettered at once.
    DeadLetter(Failure),
    /// Failed for a reason of its own that may pass (a gateway's 5xx): tried again, alone,
    /// up to [`RetryPolicy::max_attempts`] times, then dead-lettered.
    Retry(Failure),
}

/// The error a handler returns when the batch could not be applied *now* (its database
/// or broker is unreachable); the runner retries the same messages, without limit.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Outage(pub String);

/// What to do with messages. Must be idempotent: a batch may be delivered again.
pub trait BatchHandler: Send + Sync + 'static {
    /// Applies `batch` (in offset order per partition; a retry round gets only the
    /// messages to retry) and returns one outcome per message, in the same order.
    fn handle(
        &self,
        batch: &[Record],
    ) -> impl std::future::Future<Output = Result<Vec<Outcome>, Outage>> + Send;
}

#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    #[error("kafka consumer: {0}")]
    Kafka(#[from] kafka::KafkaError),
    #[error(
        "stopped by the dead-letter guard: {dead} of the last {window} messages on {topic} \
         would be dead-lettered, more than the limit of {limit} (CONSUMER_DLT_MAX_RATIO); \
         the latest was {class}: {message}. Nothing of the last batch was dead-lettered or \
         committed: fix the cause and restart"
    )]
    DeadLetterLimit {
        topic: String,
        dead: usize,
        window: usize,
        limit: f64,
        class: String,
        message: String,
    },
}

/// Counts of what a runner did, returned when it stops.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stats {
    pub batches: u64,
    /// Messages settled: applied or dead-lettered.
    pub processed: u64,
    /// Attempts of whole batches that failed because of an outage.
    pub outage_retries: u64,
    /// Retries of single messages, by error class.
    pub retried: BTreeMap<String, u64>,
    /// Dead-lettered messages, by error class.
    pub dead_lettered: BTreeMap<String, u64>,
}
