//! The loop, as its steps: create the consumer, then for each batch — gather it, apply
//! it (with retries), dead-letter what failed, store the offsets — and at the end commit
//! and close.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};

use std::time::{Duration, Instant};

use chrono::Utc;
use futures::{FutureExt, StreamExt};
use kafka::{KafkaError, Record};
use rdkafka::client::ClientContext;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, MessageStream, Rebalance, StreamConsumer,
};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::dead_letter::DeadLetter;
use crate::{
    BatchError, BatchHandler, ConsumerConfig, ConsumerError, DeadLetterPolicy, Outcome,
    RetryPolicy, Stats,
};

/// How often librdkafka reports its statistics (the lag metric's freshness).
const STATISTICS_INTERVAL_MS: &str = "5000";

/// After this long on one batch, the runner pauses its partitions and polls while it
/// works, so that the group keeps it as a member.
const KEEP_MEMBERSHIP_AFTER: Duration = Duration::from_secs(1);

/// Consumes until `stop` is cancelled, then commits what was processed and returns.
///
/// Returns an error without committing the batch in hand when the dead-letter guard
/// trips, or when a dead letter cannot be written for a reason retrying cannot fix:
/// nothing of that batch is dead-lettered or committed, so a restart after the cause is
/// fixed processes it.
pub async fn run<H: BatchHandler>(
    config: ConsumerConfig,
    handler: H,
    mut dead_letters: DeadLetterPolicy,
    stop: CancellationToken,
) -> Result<Stats, ConsumerError> {
    let consumer = create_consumer(&config)?;
    let mut stats = Stats::default();
    // Messages polled while partitions were paused: the next batch starts with them.
    let mut carried = VecDeque::new();
    let result = loop {
        let Some(mut batch) = gather(&consumer, &config, &mut carried, &stop, &mut stats).await
        else {
            break Ok(());
        };
        let span = tracing::info_span!(
            "batch",
            group = %config.group_id,
            topic = %batch[0].topic,
            partition = batch[0].partition,
            first_offset = batch[0].offset,
            size = batch.len(),
        );
        let started = Instant::now();
        record_consumed(&config.group_id, &batch);
        let work = process(
            &consumer,
            &mut batch,
            &handler,
            &mut dead_letters,
            &config,
            &stop,
            &mut stats,
        );
        let step = keep_membership(&consumer, &mut carried, work)
            .instrument(span)
            .await;
        metrics::histogram!("consumer_batch_duration_seconds", "group" => config.group_id.clone())
            .record(started.elapsed().as_secs_f64());
        match step {
            Ok(true) => store_offsets(&consumer, &batch),
            // Stopped before the batch was settled: its offsets stay uncommitted.
            Ok(false) => break Ok(()),
            Err(error) => break Err(error),
        }
    };
    stats.revocations = consumer.context().revocations.load(Ordering::Relaxed);
    stats.consumer_errors += consumer.context().errors.load(Ordering::Relaxed);
    commit_and_close(consumer).await;
    result.map(|()| stats)
}

/// Counts the messages of a gathered batch by topic, and its size.
fn record_consumed(group: &str, batch: &[Record]) {
    metrics::histogram!("consumer_batch_size", "group" => group.to_owned())
        .record(batch.len() as f64);
    let mut by_topic: HashMap<&str, u64> = HashMap::new();
    for message in batch {
        *by_topic.entry(&message.topic).or_default() += 1;
    }
    for (topic, count) in by_topic {
        metrics::counter!("consumer_messages_total", "group" => group.to_owned(), "topic" => topic.to_owned())
            .increment(count);
    }
}

/// Counts the partitions the group takes away, for [`Stats::revocations`], and the errors
/// librdkafka reports on its own (brokers unreachable), for [`Stats::consumer_errors`];
/// turns librdkafka's statistics into the lag of each partition it consumes.
struct Membership {
    group: String,
    revocations: AtomicU64,
    errors: AtomicU64,
}

impl ClientContext for Membership {
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

impl ConsumerContext for Membership {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(partitions) = rebalance {
            if partitions.count() > 0 {
                self.revocations.fetch_add(1, Ordering::Relaxed);
                tracing::info!(partitions = partitions.count(), "partitions revoked");
            }
        }
    }
}

type Kafka = StreamConsumer<Membership>;

/// A consumer in `config.group_id`, subscribed to `config.topics`, that commits only
/// the offsets the runner stores.
fn create_consumer(config: &ConsumerConfig) -> Result<ClosingConsumer, ConsumerError> {
    let consumer: Kafka = kafka::client_config(&config.bootstrap)
        .set("group.id", &config.group_id)
        .set("enable.auto.commit", "true")
        .set(
            "auto.commit.interval.ms",
            config.commit_interval.as_millis().to_string(),
        )
        // Offsets are stored by us, after the handler's commit: never before.
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        // librdkafka wants the poll interval at least as long as the session.
        .set(
            "session.timeout.ms",
            config
                .max_poll_interval
                .min(Duration::from_secs(10))
                .as_millis()
                .to_string(),
        )
        .set(
            "max.poll.interval.ms",
            config.max_poll_interval.as_millis().to_string(),
        )
        // For the lag metric.
        .set("statistics.interval.ms", STATISTICS_INTERVAL_MS)
        .create_with_context(Membership {
            group: config.group_id.clone(),
            revocations: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        })?;
    let topics: Vec<&str> = config.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    Ok(ClosingConsumer(Some(consumer)))
}

/// Waits for a first message (or stop), then takes what is ready now, up to
/// `batch_size`: at low load a message goes on at once, and under load batches grow by
/// themselves while the previous one is being applied. With a `batch_wait`, it then waits
/// up to that long for more. Messages carried over from a paused stretch come first.
async fn gather(
    consumer: &Kafka,
    config: &ConsumerConfig,
    carried: &mut VecDeque<Record>,
    stop: &CancellationToken,
    stats: &mut Stats,
) -> Option<Vec<Record>> {
    let mut stream = consumer.stream();
    let mut batch = Vec::with_capacity(config.batch_size);
    while batch.len() < config.batch_size {
        match carried.pop_front() {
            Some(record) => batch.push(record),
            None => break,
        }
    }
    while batch.is_empty() {
        let first = tokio::select! {
            () = stop.cancelled() => return None,
            next = stream.next() => next?,
        };
        match first {
            Ok(message) => batch.push(Record::from_message(&message)),
            // Transient: librdkafka reconnects by itself.
            Err(e) => {
                stats.consumer_errors += 1;
                tracing::debug!(error = %e, "consumer error");
            }
        }
    }
    take_ready(&mut stream, &mut batch, config.batch_size, stats);
    let deadline = Instant::now() + config.batch_wait;
    while batch.len() < config.batch_size && !config.batch_wait.is_zero() {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.next()).await {
            Ok(Some(Ok(message))) => batch.push(Record::from_message(&message)),
            Ok(Some(Err(e))) => {
                stats.consumer_errors += 1;
                tracing::debug!(error = %e, "consumer error");
            }
            Ok(None) | Err(_) => break,
        }
    }
    Some(batch)
}

/// Adds to `batch`, up to `limit`, what librdkafka has already fetched, without waiting.
fn take_ready(
    stream: &mut MessageStream<'_, Membership>,
    batch: &mut Vec<Record>,
    limit: usize,
    stats: &mut Stats,
) {
    while batch.len() < limit {
        match stream.next().now_or_never() {
            Some(Some(Ok(message))) => batch.push(Record::from_message(&message)),
            Some(Some(Err(e))) => {
                stats.consumer_errors += 1;
                tracing::debug!(error = %e, "consumer error");
            }
            Some(None) | None => break,
        }
    }
}

/// Company for a message that failed transiently on its own: waits up to `wait` for at
/// least one more message, then takes what is ready, and appends them to `batch` (after
/// it, so the order within each partition holds). Returns whether any came; `None` if
/// `stop` came first.
async fn top_up(
    consumer: &Kafka,
    config: &ConsumerConfig,
    batch: &mut Vec<Record>,
    wait: Duration,
    stop: &CancellationToken,
    stats: &mut Stats,
) -> Option<bool> {
    let before = batch.len();
    let mut stream = consumer.stream();
    let next = tokio::select! {
        () = stop.cancelled() => return None,
        next = tokio::time::timeout(wait, stream.next()) => next,
    };
    match next {
        Ok(Some(Ok(message))) => batch.push(Record::from_message(&message)),
        Ok(Some(Err(e))) => {
            stats.consumer_errors += 1;
            tracing::debug!(error = %e, "consumer error");
        }
        Ok(None) | Err(_) => {}
    }
    take_ready(&mut stream, batch, config.batch_size, stats);
    record_consumed(&config.group_id, &batch[before..]);
    Some(batch.len() > before)
}

/// Runs `work` to its end. If it takes longer than [`KEEP_MEMBERSHIP_AFTER`], the
/// consumer's partitions are paused and it is polled meanwhile, so the group keeps it as
/// a member through an outage of any length. A message that still arrives (from a
/// partition assigned in the meantime) is carried over to the next batch, and its
/// partition paused too.
async fn keep_membership<T>(
    consumer: &Kafka,
    carried: &mut VecDeque<Record>,
    work: impl Future<Output = T>,
) -> T {
    tokio::pin!(work);
    let patience = tokio::time::sleep(KEEP_MEMBERSHIP_AFTER);
    tokio::pin!(patience);
    let mut paused = false;
    loop {
        tokio::select! {
            out = &mut work => {
                if paused {
                    resume(consumer);
                }
                return out;
            }
            () = &mut patience, if !paused => {
                pause(consumer);
                paused = true;
            }
            polled = consumer.recv(), if paused => match polled {
                Ok(message) => {
                    carried.push_back(Record::from_message(&message));
                    pause(consumer);
                }
                Err(e) => tracing::debug!(error = %e, "consumer error while paused"),
            },
        }
    }
}

fn pause(consumer: &Kafka) {
    if let Err(e) = consumer
        .assignment()
        .and_then(|assignment| consumer.pause(&assignment))
    {
        tracing::debug!(error = %e, "pausing partitions");
    }
}

fn resume(consumer: &Kafka) {
    if let Err(e) = consumer
        .assignment()
        .and_then(|assignment| consumer.resume(&assignment))
    {
        tracing::warn!(error = %e, "resuming partitions");
    }
}

/// Applies a batch and dead-letters what failed. `Ok(true)` when every message is
/// settled and the offsets may be stored; `Ok(false)` if `stop` came first.
///
async fn process<H: BatchHandler>(
    consumer: &Kafka,
    batch: &mut Vec<Record>,
    handler: &H,
    dead_letters: &mut DeadLetterPolicy,
    config: &ConsumerConfig,
    stop: &CancellationToken,
    stats: &mut Stats,
) -> Result<bool, ConsumerError> {
    let retried_before = stats.retried.values().sum::<u64>();
    let group = config.group_id.as_str();
    let Some(dead) = apply(consumer, config, handler, batch, stop, stats).await else {
        return Ok(false);
    };
    let batch = &batch[..];
    if let Err(tripped) = dead_letters.admit(batch.len(), &dead) {
        let last = dead.last().map(|d| d.failure.clone()).unwrap_or_default();
        let error = ConsumerError::DeadLetterLimit {
            topic: batch[0].topic.clone(),
            dead: tripped.dead,
            window: tripped.window,
            limit: dead_letters.limit(),
            class: last.class,
            message: last.message,
        };
        tracing::error!(%error, "consumer stopped by the dead-letter guard");
        metrics::counter!("consumer_halts_total", "group" => group.to_owned(), "reason" => "dead-letter-guard").increment(1);
        return Err(error);
    }
    if !dead.is_empty() {
        match dead_letters.write(batch, &dead, config, stop).await {
            Ok(true) => {}
            Ok(false) => return Ok(false),
            Err(error) => {
                tracing::error!(%error, "consumer stopped: a dead letter cannot be written");
                metrics::counter!("consumer_halts_total", "group" => group.to_owned(), "reason" => "dead-letter-refused").increment(1);
                return Err(error);
            }
        }
        for letter in &dead {
            let message = &batch[letter.index];
            *stats
                .dead_lettered
                .entry(letter.failure.class.clone())
                .or_default() += 1;
            metrics::counter!("consumer_dead_letters_total", "group" => group.to_owned(), "topic" => message.topic.clone(), "class" => letter.failure.class.clone()).increment(1);
            let (correlation_id, trace_id) = origin(message);
            tracing::warn!(
                topic = %message.topic, partition = message.partition, offset = message.offset,
                key = %message.key_text(), correlation_id, trace_id,
                class = %letter.failure.class, reason = %letter.failure.message,
                attempts = letter.attempts, "dead-lettered"
            );
        }
    }
    // Operators see the running counts whenever they change.
    if !dead.is_empty() || stats.retried.values().sum::<u64>() != retried_before {
        tracing::warn!(
            dead_lettered = ?stats.dead_lettered, retried = ?stats.retried,
            "totals by error class"
        );
    }
    stats.batches += 1;
    stats.processed += batch.len() as u64;
    Ok(true)
}

/// Hands the batch to the handler until every message is applied or condemned: poison,
/// refused, or failed for a reason of its own `max_attempts` times. Returns the messages
/// to dead-letter, in batch order, or `None` if `stop` came first.
///
/// Two kinds of retry, kept apart on purpose:
/// - an outage (the handler's database or Kafka is unreachable, or every message of the
///   batch failed transiently at once) retries the same messages without limit: an
///   outage is never a reason to dead-letter;
/// - an [`Outcome::Retry`] of some messages while others went through (this message's
///   charge failed, say) retries only the messages that asked for it, up to
///   `max_attempts`, then dead-letters them.
///
/// A batch of one message that fails transiently says nothing about which of the two it
/// is. Instead of the first pause, the runner then waits that long for company: if more
/// messages come, they join the batch and the round is tried again, so that the others
/// tell an outage (they fail too) from that message's own failure (they go through).
/// With no company at all, it is that message's own failure: retried, then
/// dead-lettered — never a consumer stalled on one message.
async fn apply<H: BatchHandler>(
    consumer: &Kafka,
    config: &ConsumerConfig,
    handler: &H,
    batch: &mut Vec<Record>,
    stop: &CancellationToken,
    stats: &mut Stats,
) -> Option<Vec<DeadLetter>> {
    let (group, retry) = (config.group_id.as_str(), &config.retry);
    let mut pauses = retry.pauses();
    let mut company_sought = false;
    let mut dead = Vec::new();
    let mut first_failure = HashMap::new();
    // The indices still to apply; all of them in the first round.
    let mut pending: Vec<usize> = (0..batch.len()).collect();
    let mut attempt = 1;
    loop {
        let outcomes = if pending.len() == batch.len() {
            attempt_all(handler, batch, attempt, retry, stop, stats).await?
        } else {
            let subset: Vec<Record> = pending.iter().map(|&i| batch[i].clone()).collect();
            attempt_all(handler, &subset, attempt, retry, stop, stats).await?
        };
        // Paused already, waiting for company that did not come.
        let mut paused = false;
        if !company_sought && batch.len() == 1 && matches!(outcomes[0], Outcome::Retry(_)) {
            company_sought = true;
            let wait = pauses.next_delay();
            if top_up(consumer, config, batch, wait, stop, stats).await? {
                tracing::debug!(size = batch.len(), "a lone message failed; company came");
                pending = (0..batch.len()).collect();
                continue;
            }
            paused = true;
        }
        let now = Utc::now();
        let mut again = Vec::new();
        for (&index, outcome) in pending.iter().zip(outcomes) {
            let (failure, retryable) = match outcome {
                Outcome::Applied => {
                    settled(group, &batch[index], "consumer_applied_total");
                    continue;
                }
                Outcome::Duplicate => {
                    settled(group, &batch[index], "consumer_duplicates_total");
                    continue;
                }
                Outcome::DeadLetter(failure) => (failure, false),
                Outcome::Retry(failure) => (failure, true),
            };
            let first = *first_failure.entry(index).or_insert(now);
            if retryable && attempt < retry.max_attempts {
                *stats.retried.entry(failure.class.clone()).or_default() += 1;
                let message = &batch[index];
                metrics::counter!("consumer_retries_total", "group" => group.to_owned(), "topic" => message.topic.clone(), "class" => failure.class.clone()).increment(1);
                let (correlation_id, trace_id) = origin(message);
                tracing::warn!(
                    topic = %message.topic, partition = message.partition, offset = message.offset,
                    key = %message.key_text(), correlation_id, trace_id,
                    class = %failure.class, reason = %failure.message, attempt,
                    "message failed; retrying"
                );
                again.push(index);
            } else {
                dead.push(DeadLetter {
                    index,
                    failure,
                    attempts: attempt,
                    first_failure: first,
                    last_failure: now,
                });
            }
        }
        if again.is_empty() {
            dead.sort_by_key(|d| d.index);
            return Some(dead);
        }
        if !paused && !pauses.pause(stop).await {
            return None;
        }
        pending = again;
        attempt += 1;
    }
}

/// A message's correlation id and trace id, from its headers (`-` when it has none), so
/// that every log line about an order can be found by them.
fn origin(message: &Record) -> (String, String) {
    let correlation = message
        .last_header_text(events::headers::CORRELATION_ID)
        .unwrap_or_else(|| "-".into());
    let trace = crate::trace_of(message).map_or_else(|| "-".into(), |t| t.trace_id);
    (correlation, trace)
}

/// Counts one settled message under `counter`, by group and topic.
fn settled(group: &str, message: &Record, counter: &'static str) {
    metrics::counter!(counter, "group" => group.to_owned(), "topic" => message.topic.clone())
        .increment(1);
}

/// One attempt at every message of `messages`. A batch the handler refuses as a whole is
/// split in halves, each attempted on its own, until every refused message is alone and
/// answered with a dead letter; the first half is applied before the second, so the
/// order within a partition holds.
async fn attempt_all<H: BatchHandler>(
    handler: &H,
    messages: &[Record],
    round: u32,
    retry: &RetryPolicy,
    stop: &CancellationToken,
    stats: &mut Stats,
) -> Option<Vec<Outcome>> {
    let mut outcomes = vec![Outcome::Applied; messages.len()];
    let mut parts: Vec<Range<usize>> = Vec::with_capacity(8);
    parts.push(0..messages.len());
    while let Some(part) = parts.pop() {
        match attempt_through_outages(handler, &messages[part.clone()], round, retry, stop, stats)
            .await?
        {
            Ok(answers) => {
                for (slot, answer) in outcomes[part].iter_mut().zip(answers) {
                    *slot = answer;
                }
            }
            Err(failure) if part.len() == 1 => {
                outcomes[part.start] = Outcome::DeadLetter(failure);
            }
            Err(failure) => {
                tracing::warn!(
                    class = %failure.class, reason = %failure.message, messages = part.len(),
                    "batch refused; splitting it to find the message"
                );
                let middle = part.start + part.len() / 2;
                // A stack: the first half is taken first.
                parts.push(middle..part.end);
                parts.push(part.start..middle);
            }
        }
    }
    Some(outcomes)
}

/// One attempt at `messages`, repeated with backoff while the handler reports an outage —
/// or, on the first round, while every one of two or more messages asks for a retry: a
/// failure that all of them share is an outage of what they depend on (one message alone
/// is no such evidence). `Err` carries the failure of a batch
/// the handler refused. An attempt in flight is never cut off (it may be committing);
/// `stop` only interrupts the pause between attempts, and then `None` is returned.
async fn attempt_through_outages<H: BatchHandler>(
    handler: &H,
    messages: &[Record],
    round: u32,
    retry: &RetryPolicy,
    stop: &CancellationToken,
    stats: &mut Stats,
) -> Option<Result<Vec<Outcome>, crate::Failure>> {
    let mut pauses = retry.pauses();
    loop {
        let reason = match handler.handle(messages).await {
            Ok(mut outcomes) => {
                // A handler must answer for every message; one that does not is a bug,
                // and the messages it left out are treated as applied rather than lost
                // to a dead-letter topic by mistake.
                if outcomes.len() != messages.len() {
                    tracing::error!(
                        expected = messages.len(),
                        got = outcomes.len(),
                        "handler returned the wrong number of outcomes"
                    );
                    outcomes.resize(messages.len(), Outcome::Applied);
                }
                let shared = round == 1
                    && outcomes.len() > 1
                    && outcomes.iter().all(|o| matches!(o, Outcome::Retry(_)));
                match outcomes.first() {
                    Some(Outcome::Retry(failure)) if shared => format!(
                        "every message of the batch failed: {}: {}",
                        failure.class, failure.message
                    ),
                    _ => return Some(Ok(outcomes)),
                }
            }
            Err(BatchError::Refused(failure)) => return Some(Err(failure)),
            Err(BatchError::Outage(reason)) => reason,
        };
        stats.outage_retries += 1;
        metrics::counter!("consumer_outage_retries_total").increment(1);
        tracing::warn!(error = %reason, "batch failed: outage; retrying");
        if !pauses.pause(stop).await {
            return None;
        }
    }
}

/// Stores, for each partition of the batch, the offset after its last message.
fn store_offsets(consumer: &Kafka, batch: &[Record]) {
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

/// Commits what was stored, bounded: a broker that is gone must not hang shutdown.
/// librdkafka's commit and close block without a limit when no broker answers, so they
/// run on a thread of their own, which is left behind if it takes too long.
async fn commit_and_close(consumer: ClosingConsumer) {
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
}

/// Owns the consumer so that dropping it — also when the runner's future is dropped
/// mid-way — never blocks an async thread: librdkafka's close can wait without a limit for
/// a broker that is gone. The close then runs on a thread of its own.
struct ClosingConsumer(Option<Kafka>);

impl ClosingConsumer {
    fn take(mut self) -> Kafka {
        self.0.take().expect("the consumer is taken once")
    }
}

impl std::ops::Deref for ClosingConsumer {
    type Target = Kafka;

    fn deref(&self) -> &Kafka {
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
