//! What a runner reports: its counts when it stops ([`Stats`]), or why it halted
//! ([`ConsumerError`]).

use std::collections::BTreeMap;

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
    #[error(
        "the handler of {topic} answered {got} outcomes for {expected} messages: a bug in          the handler. Nothing of the batch was committed: fix it and restart"
    )]
    HandlerBug {
        topic: String,
        expected: usize,
        got: usize,
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
