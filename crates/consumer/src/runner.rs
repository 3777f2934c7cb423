//! The loop: fetch a batch, settle every message in it (applied, retried, or
//! dead-lettered), write the dead letters, then store the offsets.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::StreamExt;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::dead_letter::{DeadLetterGuard, DeadLetterWriter, Failed};
use crate::pause::{sleep_unless_stopped, Pauses};
use crate::{BatchHandler, ConsumerConfig, ConsumerError, Incoming, Outcome, Stats};

/// Consumes until `stop` is cancelled, then commits what was processed and returns.
///
/// Returns an error without committing the batch in hand when the dead-letter guard
/// trips: nothing of that batch is dead-lettered, so a restart after the cause is fixed
/// processes it.
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
    let mut writer = DeadLetterWriter::new(&config)?;
    let mut guard = DeadLetterGuard::new(config.dlt_window, config.dlt_max_ratio);
    let mut stats = Stats::default();

    let result = loop {
        let Some(batch) = next_batch(&consumer, &config, &stop).await else {
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
        let retried_before = stats.retried.values().sum::<u64>();
        // Stopped before the batch was settled: its offsets stay uncommitted.
        let Some(failed) = settle(&handler, &batch, &config, &stop, &mut stats)
            .instrument(span.clone())
            .await
        else {
            break Ok(());
        };
        let mut dead = vec![false; batch.len()];
        for f in &failed {
            dead[f.index] = true;
        }
        if let Err(tripped) = guard.admit(&dead) {
            let last = failed.last().map(|f| f.failure.clone()).unwrap_or_default();
            let error = ConsumerError::DeadLetterLimit {
                topic: batch[0].topic.clone(),
                dead: tripped.dead,
                window: tripped.window,
                limit: config.dlt_max_ratio,
                class: last.class,
                message: last.message,
            };
            tracing::error!(parent: &span, %error, "consumer stopped by the dead-letter guard");
            break Err(error);
        }
        if !failed.is_empty() {
            if !writer
                .write(&batch, &failed, &stop)
                .instrument(span.clone())
                .await
            {
                break Ok(());
            }
            for f in &failed {
                let message = &batch[f.index];
                *stats
                    .dead_lettered
                    .entry(f.failure.class.clone())
                    .or_default() += 1;
                tracing::warn!(
                    parent: &span,
                    topic = %message.topic, partition = message.partition, offset = message.offset,
                    class = %f.failure.class, reason = %f.failure.message, attempts = f.attempts,
                    "dead-lettered"
                );
            }
        }
        // Operators see the running counts whenever they change.
        if !failed.is_empty() || stats.retried.values().sum::<u64>() != retried_before {
            tracing::warn!(
                parent: &span,
                dead_lettered = ?stats.dead_lettered, retried = ?stats.retried,
                "totals by error class"
            );
        }
        store_offsets(&consumer, &batch);
        stats.batches += 1;
        stats.processed += batch.len() as u64;
    };

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
    result.map(|()| stats)
}

/// Hands the batch to the handler until every message is settled: applied, poison, or
/// failed transiently `max_attempts` times. Returns the messages to dead-letter, in batch
/// order, or `None` if `stop` came first.
///
/// Two kinds of retry, kept apart on purpose:
/// - the handler's `Err` (its database or Kafka is unreachable) retries the same messages
///   without limit: an outage is never a reason to dead-letter;
/// - an [`Outcome::Retry`] (this message's charge failed, say) retries only the messages
///   that asked for it, up to `max_attempts`, then dead-letters them.
async fn settle<H: BatchHandler>(
    handler: &H,
    batch: &[Incoming],
    config: &ConsumerConfig,
    stop: &CancellationToken,
    stats: &mut Stats,
) -> Option<Vec<Failed>> {
    let mut pauses = Pauses::new(config.retry_delay, config.max_retry_delay);
    let mut failed = Vec::new();
    let mut first_failure = HashMap::new();
    // The indices still to settle; all of them in the first round.
    let mut pending: Vec<usize> = (0..batch.len()).collect();
    let mut attempt = 1;
    loop {
        let outcomes = if pending.len() == batch.len() {
            apply(handler, batch, config, stop, stats).await?
        } else {
            let subset: Vec<Incoming> = pending.iter().map(|&i| batch[i].clone()).collect();
            apply(handler, &subset, config, stop, stats).await?
        };
        let now = Utc::now();
        let mut again = Vec::new();
        for (&index, outcome) in pending.iter().zip(outcomes) {
            let (failure, retry) = match outcome {
                Outcome::Done => continue,
                Outcome::Poison(failure) => (failure, false),
                Outcome::Retry(failure) => (failure, true),
            };
            let first = *first_failure.entry(index).or_insert(now);
            if retry && attempt < config.max_attempts {
                *stats.retried.entry(failure.class.clone()).or_default() += 1;
                let message = &batch[index];
                tracing::warn!(
                    topic = %message.topic, partition = message.partition, offset = message.offset,
                    class = %failure.class, reason = %failure.message, attempt,
                    "message failed; retrying"
                );
                again.push(index);
            } else {
                failed.push(Failed {
                    index,
                    failure,
                    attempts: attempt,
                    first_failure: first,
                    last_failure: now,
                });
            }
        }
        if again.is_empty() {
            failed.sort_by_key(|f| f.index);
            return Some(failed);
        }
        if !sleep_unless_stopped(pauses.next_delay(), stop).await {
            return None;
        }
        pending = again;
        attempt += 1;
    }
}

/// One attempt at `messages`, repeated with backoff while the handler reports an outage.
/// An attempt in flight is never cut off (it may be committing); `stop` only interrupts
/// the pause between attempts, and then `None` is returned.
async fn apply<H: BatchHandler>(
    handler: &H,
    messages: &[Incoming],
    config: &ConsumerConfig,
    stop: &CancellationToken,
    stats: &mut Stats,
) -> Option<Vec<Outcome>> {
    let mut pauses = Pauses::new(config.retry_delay, config.max_retry_delay);
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
                    outcomes.resize(messages.len(), Outcome::Done);
                }
                return Some(outcomes);
            }
            Err(error) => {
                let delay = pauses.next_delay();
                stats.outage_retries += 1;
                tracing::warn!(%error, ?delay, group = %config.group_id, "batch failed: outage; retrying");
                if !sleep_unless_stopped(delay, stop).await {
                    return None;
                }
            }
        }
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
        timestamp: message.timestamp().to_millis(),
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
