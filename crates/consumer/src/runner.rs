//! The loop, as its steps: create the consumer, then for each batch — gather it, apply
//! it (with retries), dead-letter what failed, store the offsets — and at the end commit
//! and close.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::StreamExt;
use kafka::{KafkaError, Record};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::dead_letter::DeadLetter;
use crate::{
    BatchHandler, ConsumerConfig, ConsumerError, DeadLetterPolicy, Outcome, RetryPolicy, Stats,
};

/// Consumes until `stop` is cancelled, then commits what was processed and returns.
///
/// Returns an error without committing the batch in hand when the dead-letter guard
/// trips: nothing of that batch is dead-lettered, so a restart after the cause is fixed
/// processes it.
pub async fn run<H: BatchHandler>(
    config: ConsumerConfig,
    handler: H,
    mut dead_letters: DeadLetterPolicy,
    stop: CancellationToken,
) -> Result<Stats, ConsumerError> {
    let consumer = create_consumer(&config)?;
    let mut stats = Stats::default();
    let result = loop {
        let Some(batch) = gather(&consumer, &config, &stop).await else {
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
        let step = process(
            &batch,
            &handler,
            &mut dead_letters,
            &config,
            &stop,
            &mut stats,
        )
        .instrument(span)
        .await;
        match step {
            Ok(true) => store_offsets(&consumer, &batch),
            // Stopped before the batch was settled: its offsets stay uncommitted.
            Ok(false) => break Ok(()),
            Err(error) => break Err(error),
        }
    };
    commit_and_close(consumer).await;
    result.map(|()| stats)
}

/// A consumer in `config.group_id`, subscribed to `config.topics`, that commits only
/// the offsets the runner stores.
fn create_consumer(config: &ConsumerConfig) -> Result<ClosingConsumer, ConsumerError> {
    let consumer: StreamConsumer = kafka::client_config(&config.bootstrap)
        .set("group.id", &config.group_id)
        .set("enable.auto.commit", "true")
        .set(
            "auto.commit.interval.ms",
            config.commit_interval.as_millis().to_string(),
        )
        // Offsets are stored by us, after the handler's commit: never before.
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "10000")
        .create()?;
    let topics: Vec<&str> = config.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    Ok(ClosingConsumer(Some(consumer)))
}

/// Waits for a first message (or stop), then gathers more for at most `batch_wait`.
async fn gather(
    consumer: &StreamConsumer,
    config: &ConsumerConfig,
    stop: &CancellationToken,
) -> Option<Vec<Record>> {
    let mut stream = consumer.stream();
    let mut batch = Vec::with_capacity(config.batch_size);
    loop {
        let first = tokio::select! {
            () = stop.cancelled() => return None,
            next = stream.next() => next?,
        };
        match first {
            Ok(message) => {
                batch.push(Record::from_message(&message));
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
            Ok(Some(Ok(message))) => batch.push(Record::from_message(&message)),
            Ok(Some(Err(e))) => tracing::debug!(error = %e, "consumer error"),
            Ok(None) | Err(_) => break,
        }
    }
    Some(batch)
}

/// Applies a batch and dead-letters what failed. `Ok(true)` when every message is
/// settled and the offsets may be stored; `Ok(false)` if `stop` came first.
async fn process<H: BatchHandler>(
    batch: &[Record],
    handler: &H,
    dead_letters: &mut DeadLetterPolicy,
    config: &ConsumerConfig,
    stop: &CancellationToken,
    stats: &mut Stats,
) -> Result<bool, ConsumerError> {
    let retried_before = stats.retried.values().sum::<u64>();
    let Some(dead) = apply(handler, batch, &config.retry, stop, stats).await else {
        return Ok(false);
    };
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
        return Err(error);
    }
    if !dead.is_empty() {
        if !dead_letters.write(batch, &dead, config, stop).await {
            return Ok(false);
        }
        for letter in &dead {
            let message = &batch[letter.index];
            *stats
                .dead_lettered
                .entry(letter.failure.class.clone())
                .or_default() += 1;
            tracing::warn!(
                topic = %message.topic, partition = message.partition, offset = message.offset,
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
/// or failed for a reason of its own `max_attempts` times. Returns the messages to
/// dead-letter, in batch order, or `None` if `stop` came first.
///
/// Two kinds of retry, kept apart on purpose:
/// - the handler's [`crate::Outage`] (its database or Kafka is unreachable) retries the
///   same messages without limit: an outage is never a reason to dead-letter;
/// - an [`Outcome::Retry`] (this message's charge failed, say) retries only the messages
///   that asked for it, up to `max_attempts`, then dead-letters them.
async fn apply<H: BatchHandler>(
    handler: &H,
    batch: &[Record],
    retry: &RetryPolicy,
    stop: &CancellationToken,
    stats: &mut Stats,
) -> Option<Vec<DeadLetter>> {
    let mut pauses = retry.pauses();
    let mut dead = Vec::new();
    let mut first_failure = HashMap::new();
    // The indices still to apply; all of them in the first round.
    let mut pending: Vec<usize> = (0..batch.len()).collect();
    let mut attempt = 1;
    loop {
        let outcomes = if pending.len() == batch.len() {
            attempt_through_outages(handler, batch, retry, stop, stats).await?
        } else {
            let subset: Vec<Record> = pending.iter().map(|&i| batch[i].clone()).collect();
            attempt_through_outages(handler, &subset, retry, stop, stats).await?
        };
        let now = Utc::now();
        let mut again = Vec::new();
        for (&index, outcome) in pending.iter().zip(outcomes) {
            let (failure, retryable) = match outcome {
                Outcome::Applied => continue,
                Outcome::DeadLetter(failure) => (failure, false),
                Outcome::Retry(failure) => (failure, true),
            };
            let first = *first_failure.entry(index).or_insert(now);
            if retryable && attempt < retry.max_attempts {
                *stats.retried.entry(failure.class.clone()).or_default() += 1;
                let message = &batch[index];
                tracing::warn!(
                    topic = %message.topic, partition = message.partition, offset = message.offset,
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
        if !pauses.pause(stop).await {
            return None;
        }
        pending = again;
        attempt += 1;
    }
}

/// One attempt at `messages`, repeated with backoff while the handler reports an outage.
/// An attempt in flight is never cut off (it may be committing); `stop` only interrupts
/// the pause between attempts, and then `None` is returned.
async fn attempt_through_outages<H: BatchHandler>(
    handler: &H,
    messages: &[Record],
    retry: &RetryPolicy,
    stop: &CancellationToken,
    stats: &mut Stats,
) -> Option<Vec<Outcome>> {
    let mut pauses = retry.pauses();
    loop {
        match handler.handle(messages).await {
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
                return Some(outcomes);
            }
            Err(outage) => {
                stats.outage_retries += 1;
                tracing::warn!(error = %outage, "batch failed: outage; retrying");
                if !pauses.pause(stop).await {
                    return None;
                }
            }
        }
    }
}

/// Stores, for each partition of the batch, the offset after its last message.
fn store_offsets(consumer: &StreamConsumer, batch: &[Record]) {
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
