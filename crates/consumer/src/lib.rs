//! The consumer runner shared by every service: *how* messages are fetched, retried,
//! dead-lettered and committed. *What* to do with them is a [`BatchHandler`].
//!
//! - **Batches, naturally**: the runner waits for one message, then takes what is ready
//!   now, up to [`ConsumerConfig::batch_size`] (and waits [`ConsumerConfig::batch_wait`]
//!   for more, if set; by default it waits for nothing). Under load, batches grow by
//!   themselves while the previous one is applied. The handler is meant to apply a whole
//!   batch in one database transaction.
//! - **At-least-once, in order per partition**: offsets are stored only after every
//!   message of the batch is settled — applied by the handler (after its database
//!   commit) or acknowledged on a dead-letter topic. librdkafka commits stored offsets in
//!   the background; on shutdown they are committed synchronously. A crash in between
//!   redelivers the batch, so handlers must be idempotent.
//! - **Every failure has a class, and each class its treatment** ([`Outcome`] and
//!   [`BatchError`]):
//!   - [`Outcome::DeadLetter`] (poison: undecodable, unknown type or version, invalid
//!     payload) goes to `<topic>.DLT` at once, and the messages after it are processed;
//!   - [`Outcome::Retry`] (a message-specific transient failure, such as a payment
//!     gateway's 5xx or timeout) is retried with exponential backoff and jitter, up to
//!     [`RetryPolicy::max_attempts`], then dead-lettered — unless *every* message of a
//!     batch of two or more asked for a retry on its first attempt: a failure shared by
//!     all is an outage of what they depend on, and is treated as one. A message that
//!     fails alone in its batch waits the first retry pause for company (what arrives
//!     meanwhile joins the batch and tells the two apart); with none, its failure is its
//!     own;
//!   - a [`BatchError::Outage`] (the handler's database or Kafka unreachable) retries the
//!     whole batch with backoff for as long as it takes. It is never dead-lettered, never
//!     skipped;
//!   - a [`BatchError::Refused`] (the batch holds something the database refuses however
//!     often it is asked) splits the batch in halves until each refused message is alone;
//!     that message is dead-lettered, the rest applied.
//! - **Membership through long work**: while a batch takes longer than a second (an
//!   outage, retries), the runner pauses its partitions and keeps polling, so the group
//!   does not evict it however long the outage lasts.
//! - **The dead-letter policy** ([`DeadLetterPolicy`], passed in as one value): dead
//!   letters keep the original key, bytes and headers, add diagnostic `dlt-*` headers,
//!   and are acknowledged before the offsets are stored; a dead letter Kafka refuses for
//!   good (a missing or forbidden DLT) stops the consumer, naming the record and why. Its
//!   guard stops the consumer, with a message saying why, when more than
//!   [`DeadLetterLimit::max_ratio`] of the recent messages would be dead-lettered (every
//!   batch judged as a whole).
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
    /// Applied.
    Applied,
    /// Applied before (a redelivery or a replay): recognised, and nothing done again.
    Duplicate,
    /// Can never be processed (poison): dead-lettered at once.
    DeadLetter(Failure),
    /// Failed for a reason of its own that may pass (a gateway's 5xx): tried again, alone,
    /// up to [`RetryPolicy::max_attempts`] times, then dead-lettered.
    Retry(Failure),
}

/// Why a handler could not apply a batch at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// Not *now*: its database or broker is unreachable. The runner tries the same
    /// messages again, without limit.
    #[error("outage: {0}")]
    Outage(String),
    /// Never as a whole: a message of the batch holds something refused however often it
    /// is asked (a value the database will not store). The runner splits the batch until
    /// each such message is alone, dead-letters it with this failure, and applies the rest.
    #[error("refused: {}: {}", .0.class, .0.message)]
    Refused(Failure),
}

/// What to do with messages. Must be idempotent: a batch may be delivered again.
pub trait BatchHandler: Send + Sync + 'static {
    /// Applies `batch` (in offset order per partition; a retry round gets only the
    /// messages to retry) and returns one outcome per message, in the same order.
    fn handle(
        &self,
        batch: &[Record],
    ) -> impl std::future::Future<Output = Result<Vec<Outcome>, BatchError>> + Send;
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
    #[error(
        "cannot dead-letter {record} to {topic}: Kafka refuses it ({reason}); retrying \
         cannot help. Nothing of its batch was committed: fix the dead-letter topic and restart"
    )]
    DeadLetterRefused {
        /// `topic/partition/offset` of the message that could not be dead-lettered.
        record: String,
        topic: String,
        reason: String,
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
    /// Times the group took partitions away from this consumer.
    pub revocations: u64,
    /// Errors Kafka reported while polling (a broker unreachable, say); librdkafka
    /// reconnects by itself, so these are counted and logged, not acted on.
    pub consumer_errors: u64,
    /// Retries of single messages, by error class.
    pub retried: BTreeMap<String, u64>,
    /// Dead-lettered messages, by error class.
    pub dead_lettered: BTreeMap<String, u64>,
}

/// The trace context a record carries in its headers (`traceparent`, `x-request-id`),
/// continued as this service's hop; `None` when it carries none.
pub fn trace_of(message: &Record) -> Option<events::TraceContext> {
    events::TraceContext::from_headers(
        message
            .last_header_text(events::trace::TRACEPARENT)
            .as_deref(),
        message
            .last_header_text(events::trace::REQUEST_ID)
            .as_deref(),
    )
}
