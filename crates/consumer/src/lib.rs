//! The consumer runner shared by every service: *how* messages are fetched, retried and
//! committed. *What* to do with them is a [`BatchHandler`].
//!
//! - **Batches**: the runner waits for one message, then takes more until
//!   [`ConsumerConfig::batch_size`] or [`ConsumerConfig::batch_wait`]. The handler is meant
//!   to apply a whole batch in one database transaction.
//! - **At-least-once, in order per partition**: offsets are stored only after the
//!   handler returned `Ok` — that is, after its database commit — and a batch is handed
//!   over in offset order. librdkafka commits stored offsets in the background; on
//!   shutdown they are committed synchronously. A crash between the database commit and
//!   the offset commit redelivers the batch, so handlers must be idempotent.
//! - **Outages pause, they do not skip**: a handler error (database down, say) is retried
//!   with exponential backoff and jitter, for as long as it takes or until shutdown; the
//!   batch is never skipped and its offsets are not committed before it succeeds.
//! - **Poison does not sink a batch**: the handler reports each message's [`Outcome`];
//!   poison is logged with topic, partition and offset and its offset committed like the
//!   others. (Dead-letter routing comes with issue 4.)

use std::collections::HashMap;
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use futures::StreamExt;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// One consumed message, owned.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
}

/// What became of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Applied (or already applied before: a duplicate).
    Done,
    /// Can never be processed: undecodable, unknown type or version, invalid payload.
    Poison(String),
}

/// The error a handler returns when the batch could not be applied *now* (a database or
/// broker outage); the runner retries the same batch.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Transient(pub String);

/// What to do with messages. Must be idempotent: a batch may be delivered again.
pub trait BatchHandler: Send + Sync + 'static {
    /// Applies `batch` (in offset order per partition) and returns one outcome per
    /// message, in the same order.
    fn handle(
        &self,
        batch: &[Incoming],
    ) -> impl std::future::Future<Output = Result<Vec<Outcome>, Transient>> + Send;
}

#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    pub bootstrap: String,
    pub group_id: String,
    pub topics: Vec<String>,
    /// Most messages handed to the handler at once.
    pub batch_size: usize,
    /// Longest wait for a batch to fill once its first message arrived.
    pub batch_wait: Duration,
    /// Longest pause between retries of a failing batch.
    pub max_retry_delay: Duration,
    /// How often stored offsets are committed in the background (and at shutdown).
    pub commit_interval: Duration,
}

impl ConsumerConfig {
    pub fn new(bootstrap: &str, group_id: &str, topics: &[&str]) -> Self {
        Self {
            bootstrap: bootstrap.to_owned(),
            group_id: group_id.to_owned(),
            topics: topics.iter().map(|t| (*t).to_owned()).collect(),
            batch_size: 500,
            batch_wait: Duration::from_millis(20),
            max_retry_delay: Duration::from_secs(5),
            commit_interval: Duration::from_secs(1),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    #[error("kafka consumer: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("creating topic {topic}: {reason}")]
    Topic { topic: String, reason: String },
}

/// Counts of what a runner did, returned when it stops.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stats {
    pub batches: u64,
    pub processed: u64,
    pub poison: u64,
    pub retries: u64,
}

/// Consumes until `stop` is cancelled, then commits what was processed and returns.
pub async fn run<H: BatchHandler>(
    config: ConsumerConfig,
    handler: H,
    stop: CancellationToken,
) -> Result<Stats, ConsumerError> {
    let consumer = ClosingConsumer(Some(
        ClientConfig::new()
            .set("bootstrap.servers", &config.bootstrap)
            .set("group.id", &config.group_id)
            .set("broker.address.family", "v4")
            .set("enable.auto.commit", "true")
            .set(
                "auto.commit.interval.ms",
                config.commit_interval.as_millis().to_string(),
            )
            // Offsets are stored by us, after the handler's commit: never before.
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", "10000")
            .set("socket.timeout.ms", "10000")
            .create::<StreamConsumer>()?,
    ));
    let topics: Vec<&str> = config.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    let mut stats = Stats::default();

    loop {
        let Some(batch) = next_batch(&consumer, &config, &stop).await else {
            break;
        };
        // An attempt in flight is never cut off (it may be committing); shutdown only
        // interrupts the pause between attempts.
        let mut delays = ExponentialBuilder::default()
            .with_jitter()
            .with_max_delay(config.max_retry_delay)
            .without_max_times()
            .build();
        let span = tracing::info_span!(
            "batch",
            group = %config.group_id,
            topic = %batch[0].topic,
            partition = batch[0].partition,
            first_offset = batch[0].offset,
            size = batch.len(),
        );
        let outcomes = loop {
            match handler.handle(&batch).instrument(span.clone()).await {
                Ok(outcomes) => break Some(outcomes),
                Err(error) => {
                    let delay = delays.next().unwrap_or(config.max_retry_delay);
                    stats.retries += 1;
                    tracing::warn!(%error, ?delay, group = %config.group_id, "batch failed; retrying");
                    tokio::select! {
                        () = stop.cancelled() => break None,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        };
        // Stopped before the batch succeeded: its offsets stay uncommitted.
        let Some(outcomes) = outcomes else { break };
        for (message, outcome) in batch.iter().zip(&outcomes) {
            if let Outcome::Poison(reason) = outcome {
                stats.poison += 1;
                tracing::error!(
                    topic = %message.topic, partition = message.partition, offset = message.offset,
                    %reason, "poison message skipped"
                );
            }
        }
        store_offsets(&consumer, &batch);
        stats.batches += 1;
        stats.processed += batch.len() as u64;
    }

    // Commit what was stored, bounded: a broker that is gone must not hang shutdown.
    // librdkafka's commit and close block without a limit when no broker answers, so
    // they run on a thread of their own, which is left behind if it takes too long.
    let (done, finished) = tokio::sync::oneshot::channel();
    let consumer = consumer.take();
    std::thread::spawn(move || {
        let committed = consumer.commit_consumer_state(CommitMode::Sync);
        let _ = done.send(committed);
        drop(consumer);
    });
    match tokio::time::timeout(Duration::from_secs(10), finished).await {
        // NoOffset: nothing stored since the last background commit.
        Ok(Ok(Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)))) => {}
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "final offset commit failed"),
        _ => tracing::warn!("final offset commit did not finish within 10 s"),
    }
    Ok(stats)
}

/// Owns the consumer so that dropping it — also when the runner's future is dropped
/// mid-way — never blocks an async thread: librdkafka's close can wait without a limit for
/// a broker that is gone. The close then runs on a thread of its own.
struct ClosingConsumer(Option<StreamConsumer>);

impl ClosingConsumer {
    fn take(mut self) -> StreamConsumer {
        self.0.take().expect("the consumer is taken once")
    }
}

impl std::ops::Deref for ClosingConsumer {
    type Target = StreamConsumer;

    fn deref(&self) -> &StreamConsumer {
        self.0
            .as_ref()
            .expect("the consumer is present until taken")
    }
}

impl Drop for ClosingConsumer {
    fn drop(&mut self) {
        if let Some(consumer) = self.0.take() {
            std::thread::spawn(move || drop(consumer));
        }
    }
}

/// Waits for a first message (or stop), then gathers more for at most `batch_wait`.
async fn next_batch(
    consumer: &StreamConsumer,
    config: &ConsumerConfig,
    stop: &CancellationToken,
) -> Option<Vec<Incoming>> {
    let mut stream = consumer.stream();
    let mut batch = Vec::with_capacity(config.batch_size);
    loop {
        let first = tokio::select! {
            () = stop.cancelled() => return None,
            next = stream.next() => next?,
        };
        match first {
            Ok(message) => {
                batch.push(to_incoming(&message));
                break;
            }
            // Transient: librdkafka reconnects by itself.
            Err(e) => tracing::debug!(error = %e, "consumer error"),
        }
    }
    let deadline = Instant::now() + config.batch_wait;
    while batch.len() < config.batch_size {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.next()).await {
            Ok(Some(Ok(message))) => batch.push(to_incoming(&message)),
            Ok(Some(Err(e))) => tracing::debug!(error = %e, "consumer error"),
            Ok(None) | Err(_) => break,
        }
    }
    Some(batch)
}

fn store_offsets(consumer: &StreamConsumer, batch: &[Incoming]) {
    let mut next: HashMap<(&str, i32), i64> = HashMap::new();
    for message in batch {
        let entry = next.entry((&message.topic, message.partition)).or_insert(0);
        *entry = (*entry).max(message.offset + 1);
    }
    let mut list = TopicPartitionList::new();
    for ((topic, partition), offset) in next {
        // Fails only for an invalid offset, which a consumed message cannot have.
        let _ = list.add_partition_offset(topic, partition, Offset::Offset(offset));
    }
    // Fails only for partitions revoked meanwhile; their new owner reprocesses.
    if let Err(e) = consumer.store_offsets(&list) {
        tracing::debug!(error = %e, "storing offsets");
    }
}

fn to_incoming(message: &impl Message) -> Incoming {
    Incoming {
        topic: message.topic().to_owned(),
        partition: message.partition(),
        offset: message.offset(),
        key: message.key().map(<[u8]>::to_vec),
        payload: message.payload().map(<[u8]>::to_vec),
        headers: message
            .headers()
            .map(|headers| {
                headers
                    .iter()
                    .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// Creates `topics` if they do not exist yet (brokers here do not auto-create topics).
/// Bounded: fails after 30 s if the brokers do not answer.
pub async fn ensure_topics(
    bootstrap: &str,
    topics: &[&str],
    partitions: i32,
    replication: i32,
) -> Result<(), ConsumerError> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::types::RDKafkaErrorCode;

    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("broker.address.family", "v4")
        .create()?;
    let timeout = Some(Duration::from_secs(30));
    let options = AdminOptions::new()
        .operation_timeout(timeout)
        .request_timeout(timeout);
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(replication)))
        .collect();
    for result in admin.create_topics(&new, &options).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(ConsumerError::Topic {
                    topic,
                    reason: code.to_string(),
                })
            }
        }
    }
    Ok(())
}

/// The Kafka settings every service has; flattened into each service's command line.
#[derive(Debug, Clone, clap::Args)]
pub struct KafkaSettings {
    /// Kafka bootstrap servers.
    #[arg(long, env = "KAFKA_BOOTSTRAP", default_value = "127.0.0.1:9092")]
    pub kafka_bootstrap: String,

    /// Put before every topic name, to share a cluster between environments.
    #[arg(long, env = "TOPIC_PREFIX", default_value = "")]
    pub topic_prefix: String,

    /// Partitions of topics this service creates at start-up if they are missing.
    #[arg(long, env = "TOPIC_PARTITIONS", default_value_t = 6)]
    pub topic_partitions: i32,

    /// Replication factor of topics this service creates (3 on a production cluster).
    #[arg(long, env = "TOPIC_REPLICATION", default_value_t = 1)]
    pub topic_replication: i32,

    /// Most messages a consumer applies in one database transaction.
    #[arg(long, env = "CONSUMER_BATCH_SIZE", default_value_t = 500)]
    pub batch_size: usize,

    /// How often processed offsets are committed to Kafka, in milliseconds. A crash loses
    /// at most this much of commits; what it loses is redelivered and recognised.
    #[arg(long, env = "CONSUMER_COMMIT_INTERVAL_MS", default_value_t = 1000)]
    pub commit_interval_ms: u64,
}

impl KafkaSettings {
    /// A consumer configuration with these settings.
    pub fn consumer(&self, group_id: &str, topics: &[&str]) -> ConsumerConfig {
        let mut config = ConsumerConfig::new(&self.kafka_bootstrap, group_id, topics);
        config.batch_size = self.batch_size;
        config.commit_interval = Duration::from_millis(self.commit_interval_ms);
        config
    }
}
