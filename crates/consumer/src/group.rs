//! Group membership: the consumer in its group (the rdkafka context that counts
//! revocations and errors and reports lag), taking batches from it, holding its
//! partitions paused while a batch waits between attempts, and closing it.
//!
//! Rebalance callbacks run only inside a poll, and the runner polls only between batches
//! and while it waits between attempts ([`Group::hold`]): never while a handler is at
//! work. A long outage keeps the membership, because the runner polls while it waits;
//! and the group never takes partitions away in the middle of an attempt.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use kafka::{KafkaError, Record};
use rdkafka::client::ClientContext;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, MessageStream, Rebalance, StreamConsumer,
};
use rdkafka::types::RDKafkaErrorCode;
use tokio_util::sync::CancellationToken;

use crate::{ConsumerConfig, ConsumerError, Message};

/// How often librdkafka reports its statistics (the lag metric's freshness).
const STATISTICS_INTERVAL_MS: &str = "5000";

/// Bound on the final commit and close: a broker that is gone must not hang shutdown.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// The rdkafka context of a group consumer: counts the partitions the group takes away
/// ([`crate::Stats::revocations`]) and remembers which, counts the errors librdkafka
/// reports on its own (brokers unreachable), and turns librdkafka's statistics into the
/// lag of each partition it consumes.
pub(crate) struct GroupContext {
    group: String,
    revocations: AtomicU64,
    errors: AtomicU64,
    /// Partitions revoked, and not assigned again, since the runner last asked
    /// ([`Group::forget_revoked`]).
    revoked: Mutex<HashSet<(String, i32)>>,
}

impl ClientContext for GroupContext {
    fn error(&self, error: KafkaError, reason: &str) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(%error, reason, "kafka consumer");
    }

    /// Every `statistics.interval.ms`: librdkafka's own lag of each partition this
    /// consumer fetches (high watermark − committed offset); `-1` (not known, or not
    /// ours) is not reported.
    fn stats(&self, statistics: rdkafka::Statistics) {
        for (topic, stats) in statistics.topics {
            for (partition, p) in stats.partitions {
                if partition < 0 || p.consumer_lag < 0 {
                    continue;
                }
                metrics::gauge!(
                    "kafka_consumer_lag",
                    "group" => self.group.clone(),
                    "topic" => topic.clone(),
                    "partition" => partition.to_string()
                )
                .set(p.consumer_lag as f64);
            }
        }
    }
}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(partitions) = rebalance {
            if partitions.count() > 0 {
                self.revocations.fetch_add(1, Ordering::Relaxed);
                let mut revoked = self.revoked.lock().unwrap_or_else(|e| e.into_inner());
                for p in partitions.elements() {
                    revoked.insert((p.topic().to_owned(), p.partition()));
                }
                tracing::info!(partitions = partitions.count(), "partitions revoked");
            }
        }
    }

    /// A partition assigned again is ours: the messages of it in hand are kept (librdkafka
    /// fetches it again from the committed offset, so what they were also comes again,
    /// and is recognised), never dropped while later ones go on.
    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(partitions) = rebalance {
            let mut revoked = self.revoked.lock().unwrap_or_else(|e| e.into_inner());
            for p in partitions.elements() {
                revoked.remove(&(p.topic().to_owned(), p.partition()));
            }
        }
    }
}

/// The consumer of a group, as the runner uses it.
pub(crate) type GroupConsumer = StreamConsumer<GroupContext>;

/// A member of a consumer group, subscribed to its topics.
pub(crate) struct Group {
    consumer: ClosingConsumer,
    /// Messages polled while partitions were paused: the next batch starts with them.
    carried: VecDeque<Message>,
    /// Whether the assigned partitions are paused (while a batch waits between attempts).
    paused: bool,
    /// Errors the message stream returned.
    stream_errors: u64,
    /// Cancelled to stop: ends a wait at once.
    stop: CancellationToken,
}

impl Group {
    /// A consumer in `config.group_id`, subscribed to `config.topics`, that commits only
    /// the offsets the runner stores.
    pub fn join(config: &ConsumerConfig, stop: CancellationToken) -> Result<Self, ConsumerError> {
        let consumer: GroupConsumer = kafka::client_config(&config.connection)
            .set("group.id", &config.group_id)
            .set("enable.auto.commit", "true")
            .set(
                "auto.commit.interval.ms",
                config.commit_interval.as_millis().to_string(),
            )
            // Offsets are stored by us, after the handler's commit: never before.
            .set("enable.auto.offset.store", "false")
            // A rebalance moves only the partitions that change owner; the others go on.
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("auto.offset.reset", "earliest")
            // librdkafka wants the poll interval at least as long as the session.
            .set(
                "session.timeout.ms",
                config
                    .session_timeout
                    .min(config.max_poll_interval)
                    .as_millis()
                    .to_string(),
            )
            .set(
                "max.poll.interval.ms",
                config.max_poll_interval.as_millis().to_string(),
            )
            // For the lag metric.
            .set("statistics.interval.ms", STATISTICS_INTERVAL_MS)
            .create_with_context(GroupContext {
                group: config.group_id.clone(),
                revocations: AtomicU64::new(0),
                errors: AtomicU64::new(0),
                revoked: Mutex::default(),
            })?;
        let topics: Vec<&str> = config.topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics)?;
        Ok(Self {
            consumer: ClosingConsumer(Some(consumer)),
            carried: VecDeque::new(),
            paused: false,
            stream_errors: 0,
            stop,
        })
    }

    pub fn consumer(&self) -> &GroupConsumer {
        &self.consumer
    }

    /// The next batch: messages carried over from a paused stretch first; with none, it
    /// waits for one message. Then it takes what is ready now, up to `config.batch_size`:
    /// at low load a message goes on at once, and under load batches grow by themselves
    /// while the previous one is applied. With a `config.batch_wait`, it then waits up to
    /// that long for more. `None` once `stop` is cancelled.
    pub async fn next_batch(&mut self, config: &ConsumerConfig) -> Option<Vec<Message>> {
        let stop = self.stop.clone();
        let limit = config.batch_size.max(1);
        let mut batch = Vec::with_capacity(limit.min(1024));
        while batch.len() < limit {
            match self.carried.pop_front() {
                Some(message) => batch.push(message),
                None => break,
            }
        }
        let consumer = &*self.consumer;
        let mut stream = consumer.stream();
        while batch.is_empty() {
            let next = tokio::select! {
                () = stop.cancelled() => return None,
                next = stream.next() => next,
            };
            match next {
                Some(Ok(message)) => batch.push(Message::new(Record::from_message(&message))),
                None => return None,
                Some(Err(e)) => {
                    self.stream_errors += 1;
                    tracing::debug!(error = %e, "consumer error");
                }
            }
        }
        self.stream_errors += take_ready(&mut stream, &mut batch, limit);
        let deadline = Instant::now() + config.batch_wait;
        while batch.len() < limit && !config.batch_wait.is_zero() {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, stream.next()).await {
                Ok(Some(Ok(message))) => batch.push(Message::new(Record::from_message(&message))),
                Ok(Some(Err(e))) => {
                    self.stream_errors += 1;
                    tracing::debug!(error = %e, "consumer error");
                }
                Ok(None) | Err(_) => break,
            }
        }
        Some(batch)
    }

    /// Waits `delay` with the assigned partitions paused, polling meanwhile so that the
    /// group keeps this consumer as a member however long a batch waits. A message that
    /// still arrives (from a partition assigned in the meantime) is carried over to the
    /// next batch, and its partition paused too. `false` if `stop` came first.
    pub async fn hold(&mut self, delay: Duration) -> bool {
        self.hold_joining(delay, &mut Vec::new(), &HashSet::new(), 0)
            .await
    }

    /// Waits `delay`, polling meanwhile so that the group keeps this consumer however long
    /// a batch waits, with the partitions in `waiting` (those of messages still pending)
    /// paused: a message of another partition that arrives meanwhile joins `batch`, until
    /// it holds `limit`; then every partition is paused, and what still arrives is carried
    /// over to the next batch (its partition paused too). `false` if `stop` came first.
    pub async fn hold_joining(
        &mut self,
        delay: Duration,
        batch: &mut Vec<Message>,
        waiting: &HashSet<(String, i32)>,
        limit: usize,
    ) -> bool {
        let stop = self.stop.clone();
        let mut waiting = waiting.clone();
        self.pause_only(&waiting, batch.len() >= limit);
        let until = tokio::time::sleep(delay);
        tokio::pin!(until);
        loop {
            tokio::select! {
                () = stop.cancelled() => return false,
                () = &mut until => return true,
                polled = self.consumer.recv() => match polled {
                    Ok(message) => {
                        let message = Message::new(Record::from_message(&message));
                        let place = (message.topic.clone(), message.partition);
                        if waiting.contains(&place) || batch.len() >= limit {
                            self.carried.push_back(message);
                            waiting.insert(place);
                        } else {
                            batch.push(message);
                        }
                        self.pause_only(&waiting, batch.len() >= limit);
                    }
                    Err(e) => tracing::debug!(error = %e, "consumer error while waiting"),
                },
            }
        }
    }

    /// Pauses the partitions in `waiting`, or all of them if `all`.
    fn pause_only(&mut self, waiting: &HashSet<(String, i32)>, all: bool) {
        if all {
            self.set_paused(true);
            return;
        }
        let mut list = rdkafka::TopicPartitionList::new();
        for (topic, partition) in waiting {
            list.add_partition(topic, *partition);
        }
        if let Err(e) = self.consumer.pause(&list) {
            tracing::warn!(error = %e, "pausing partitions");
        }
        self.paused = true;
    }

    /// The partitions the group took away (and has not given back) since the last call;
    /// messages of theirs that were carried over are dropped (their new owner takes them
    /// from the committed offset, and so would this consumer, were they given back).
    pub fn forget_revoked(&mut self) -> HashSet<(String, i32)> {
        let revoked = std::mem::take(
            &mut *self
                .consumer
                .context()
                .revoked
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        if !revoked.is_empty() {
            self.carried
                .retain(|m| !revoked.contains(&(m.topic.clone(), m.partition)));
        }
        revoked
    }

    /// Resumes the partitions [`Group::hold`] paused, if it did.
    pub fn release(&mut self) {
        if self.paused {
            self.set_paused(false);
        }
    }

    fn set_paused(&mut self, paused: bool) {
        let consumer = &*self.consumer;
        let result = consumer.assignment().and_then(|assignment| {
            if paused {
                consumer.pause(&assignment)
            } else {
                consumer.resume(&assignment)
            }
        });
        if let Err(e) = result {
            tracing::warn!(error = %e, paused, "pausing or resuming partitions");
        }
        self.paused = paused;
    }

    /// Times the group took partitions away.
    pub fn revocations(&self) -> u64 {
        self.consumer.context().revocations.load(Ordering::Relaxed)
    }

    /// Errors reported while polling and by librdkafka on its own.
    pub fn errors(&self) -> u64 {
        self.stream_errors + self.consumer.context().errors.load(Ordering::Relaxed)
    }

    /// Commits what was stored, then closes the consumer, which leaves the group (so its
    /// partitions move at once, not after the session timeout), and returns once it has
    /// left. Bounded: librdkafka's commit and close block without a limit when no broker
    /// answers, so they run on a thread of their own, which is left behind if it takes
    /// too long. Returning before the close finished would let the process exit before
    /// the leave is sent, and the partitions wait out the session.
    pub async fn close(self) {
        let (done, finished) = tokio::sync::oneshot::channel();
        let consumer = self.consumer.take();
        std::thread::spawn(move || {
            let committed = consumer.commit_consumer_state(CommitMode::Sync);
            // Dropping closes the consumer: revokes, leaves the group, waits until closed.
            drop(consumer);
            let _ = done.send(committed);
        });
        match tokio::time::timeout(CLOSE_TIMEOUT, finished).await {
            // NoOffset: nothing stored since the last background commit.
            Ok(Ok(Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)))) => {}
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "final offset commit failed"),
            _ => {
                tracing::warn!(timeout = ?CLOSE_TIMEOUT, "the final offset commit and leaving the group did not finish in time")
            }
        }
    }
}

/// Adds to `batch`, up to `limit`, what librdkafka has already fetched, without waiting.
/// Returns the errors the stream returned meanwhile.
fn take_ready(
    stream: &mut MessageStream<'_, GroupContext>,
    batch: &mut Vec<Message>,
    limit: usize,
) -> u64 {
    let mut errors = 0;
    while batch.len() < limit {
        match stream.next().now_or_never() {
            Some(Some(Ok(message))) => batch.push(Message::new(Record::from_message(&message))),
            Some(Some(Err(e))) => {
                errors += 1;
                tracing::debug!(error = %e, "consumer error");
            }
            Some(None) | None => break,
        }
    }
    errors
}

/// Owns the consumer so that dropping it — also when the runner's future is dropped
/// mid-way — never blocks an async thread: librdkafka's close can wait without a limit for
/// a broker that is gone. The close then runs on a thread of its own.
struct ClosingConsumer(Option<GroupConsumer>);

impl ClosingConsumer {
    fn take(mut self) -> GroupConsumer {
        self.0.take().expect("the consumer is taken once")
    }
}

impl std::ops::Deref for ClosingConsumer {
    type Target = GroupConsumer;

    fn deref(&self) -> &GroupConsumer {
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
