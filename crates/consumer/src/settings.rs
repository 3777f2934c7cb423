//! How a consumer is configured: [`ConsumerConfig`] for the runner, and the
//! [`ConsumerSettings`] every service flattens into its command line.

use std::time::Duration;

use crate::dead_letter::DeadLetterLimit;
use crate::RetryPolicy;

#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// Where Kafka is and how to talk to it.
    pub connection: kafka::Connection,
    pub group_id: String,
    pub topics: Vec<String>,
    /// Named in the `dlt-service` header of dead letters.
    pub service: String,
    /// Most messages handed to the handler at once.
    pub batch_size: usize,
    /// Longest wait for a batch to fill once its first message arrived and what was
    /// ready was taken; zero (the default) waits for nothing: batches grow by themselves
    /// under load, and a message at low load goes on at once.
    pub batch_wait: Duration,
    /// Pauses between retries, and attempts before a failing message is dead-lettered.
    pub retry: RetryPolicy,
    /// How often stored offsets are committed in the background (and at shutdown).
    pub commit_interval: Duration,
    /// How long the group waits for a member to poll before it evicts it. The runner
    /// keeps polling while a batch is being worked on, so this bounds only a consumer
    /// that is truly stuck.
    pub max_poll_interval: Duration,
    /// How long the group coordinator waits for a member's heartbeat before it evicts it
    /// and hands its partitions to others; also how long this member keeps its partitions
    /// while it cannot reach the coordinator. It must outlast the loss of the coordinator
    /// (a killed broker is fenced, and its groups move, about 10 to 15 s later); at most
    /// `max_poll_interval`.
    pub session_timeout: Duration,
}

impl ConsumerConfig {
    pub fn new(connection: &kafka::Connection, group_id: &str, topics: &[&str]) -> Self {
        Self {
            connection: connection.clone(),
            group_id: group_id.to_owned(),
            topics: topics.iter().map(|t| (*t).to_owned()).collect(),
            service: group_id.to_owned(),
            batch_size: 500,
            batch_wait: Duration::ZERO,
            retry: RetryPolicy::default(),
            commit_interval: Duration::from_secs(1),
            max_poll_interval: Duration::from_secs(300),
            session_timeout: Duration::from_secs(20),
        }
    }
}

/// The consumer settings every service has; flattened into each service's command line.
#[derive(Debug, Clone, clap::Args)]
pub struct ConsumerSettings {
    /// Most messages a consumer applies in one database transaction.
    #[arg(long, env = "CONSUMER_BATCH_SIZE", default_value_t = 500)]
    pub batch_size: usize,

    /// How long a consumer waits for a batch to fill once it has a first message and has
    /// taken what was ready, in milliseconds. 0 (the default) waits for nothing: at low
    /// load a message goes on at once, and under load batches grow by themselves while
    /// the previous one is applied.
    #[arg(long, env = "CONSUMER_BATCH_WAIT_MS", default_value_t = 0)]
    pub batch_wait_ms: u64,

    /// How often processed offsets are committed to Kafka, in milliseconds. A crash loses
    /// at most this much of commits; what it loses is redelivered and recognised.
    #[arg(long, env = "CONSUMER_COMMIT_INTERVAL_MS", default_value_t = 1000)]
    pub commit_interval_ms: u64,

    /// Attempts a message gets when it fails transiently (a payment gateway answering
    /// 5xx or timing out) before it goes to its dead-letter topic.
    #[arg(long, env = "CONSUMER_MAX_ATTEMPTS", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_attempts: u32,

    /// First pause before such a message is tried again, in milliseconds; it doubles,
    /// with jitter, up to CONSUMER_MAX_RETRY_DELAY_MS.
    #[arg(long, env = "CONSUMER_RETRY_DELAY_MS", default_value_t = 200)]
    pub retry_delay_ms: u64,

    /// Longest pause between retries, in milliseconds; also between attempts of a batch
    /// while the database or Kafka is unreachable (those are retried without limit and
    /// never dead-lettered).
    #[arg(long, env = "CONSUMER_MAX_RETRY_DELAY_MS", default_value_t = 5000)]
    pub max_retry_delay_ms: u64,

    /// How long the group waits for a consumer to poll before it evicts it, in
    /// milliseconds. The runner keeps polling through outages, so this only bounds a
    /// consumer that is truly stuck.
    #[arg(long, env = "CONSUMER_MAX_POLL_INTERVAL_MS", default_value_t = 300_000)]
    pub max_poll_interval_ms: u64,

    /// How long the group waits for a consumer's heartbeat before it hands the consumer's
    /// partitions to others, in milliseconds; also how long a consumer keeps its
    /// partitions while the group coordinator cannot be reached. Above the time Kafka
    /// takes to move a killed broker's groups (10 to 15 s), so losing the coordinator
    /// stops no one; a consumer that dies keeps its partitions this long. At most
    /// CONSUMER_MAX_POLL_INTERVAL_MS.
    #[arg(long, env = "CONSUMER_SESSION_TIMEOUT_MS", default_value_t = 20_000,
          value_parser = clap::value_parser!(u64).range(6_000..=1_800_000))]
    pub session_timeout_ms: u64,

    /// The dead-letter guard looks at the last this many messages.
    #[arg(long, env = "CONSUMER_DLT_WINDOW", default_value_t = 100,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub dlt_window: u64,

    /// The consumer stops, and says why, when more than this share of the window would
    /// be dead-lettered: a broken producer or a bad deployment must not empty a topic
    /// into its dead-letter topic. 1 turns the guard off.
    #[arg(long, env = "CONSUMER_DLT_MAX_RATIO", default_value_t = 0.5,
          value_parser = ratio)]
    pub dlt_max_ratio: f64,

    /// Until CONSUMER_DLT_WINDOW messages have been seen, the guard judges as soon as it
    /// has seen this many, so a consumer restarted into poison stops after a few.
    #[arg(long, env = "CONSUMER_DLT_MIN_MESSAGES", default_value_t = 20,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub dlt_min_messages: u64,
}

fn ratio(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("{text:?} is not a share between 0 and 1")),
    }
}

impl ConsumerSettings {
    /// A consumer configuration with these settings, for `service`.
    pub fn config(
        &self,
        connection: &kafka::Connection,
        service: &str,
        group_id: &str,
        topics: &[&str],
    ) -> ConsumerConfig {
        let mut config = ConsumerConfig::new(connection, group_id, topics);
        config.service = service.to_owned();
        config.batch_size = self.batch_size;
        config.batch_wait = Duration::from_millis(self.batch_wait_ms);
        config.commit_interval = Duration::from_millis(self.commit_interval_ms);
        config.max_poll_interval = Duration::from_millis(self.max_poll_interval_ms);
        config.session_timeout = Duration::from_millis(self.session_timeout_ms);
        config.retry = RetryPolicy {
            first_delay: Duration::from_millis(self.retry_delay_ms),
            max_delay: Duration::from_millis(self.max_retry_delay_ms),
            max_attempts: self.max_attempts,
        };
        config
    }

    /// The dead-letter guard's limit with these settings.
    pub fn dead_letter_limit(&self) -> DeadLetterLimit {
        DeadLetterLimit {
            window: usize::try_from(self.dlt_window).unwrap_or(usize::MAX),
            max_ratio: self.dlt_max_ratio,
            min_judged: usize::try_from(self.dlt_min_messages).unwrap_or(usize::MAX),
        }
    }
}
