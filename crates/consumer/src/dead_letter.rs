//! The dead-letter policy, after getsentry/arroyo's `DlqPolicy`: where a message goes
//! when it can never be processed (the writer), and when to stop instead (the guard).
//!
//! A dead letter keeps the original key, value bytes and headers unchanged, goes to the
//! same partition number of `<topic>.DLT` (when that partition exists) and carries the
//! diagnostic headers of [`kafka::dead_letter::headers`]. Writes are acknowledged
//! (`acks=all`) before the source offsets are stored, so a dead letter is never lost
//! between the two topics.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use kafka::dead_letter::headers;
use kafka::{dead_letter_topic, KafkaError, Record};
use rdkafka::producer::{FutureProducer, Producer};
use tokio_util::sync::CancellationToken;

use crate::{ConsumerConfig, Failure};

/// A message of a batch that is to be dead-lettered, and why.
#[derive(Debug, Clone)]
pub(crate) struct DeadLetter {
    /// Its place in the batch.
    pub index: usize,
    pub failure: Failure,
    pub attempts: u32,
    pub first_failure: DateTime<Utc>,
    pub last_failure: DateTime<Utc>,
}

/// When the dead-letter guard stops a consumer: more than `max_ratio` of the last
/// `window` messages would be dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DeadLetterLimit {
    pub window: usize,
    /// 1.0 turns the guard off.
    pub max_ratio: f64,
}

impl Default for DeadLetterLimit {
    fn default() -> Self {
        Self {
            window: 100,
            max_ratio: 0.5,
        }
    }
}

/// Where dead letters are written, and the guard that stops a consumer from emptying a
/// topic into its dead-letter topic. Handed to [`crate::run`] as one value.
pub struct DeadLetterPolicy {
    producer: FutureProducer,
    guard: DeadLetterGuard,
    /// Partitions of each dead-letter topic, looked up once.
    partitions: HashMap<String, Option<i32>>,
}

impl DeadLetterPolicy {
    /// Dead letters written by a reliable producer to `bootstrap`, under `limit`.
    pub fn new(bootstrap: &str, limit: DeadLetterLimit) -> Result<Self, KafkaError> {
        Ok(Self::with_producer(
            kafka::reliable_producer(bootstrap)?,
            limit,
        ))
    }

    /// Dead letters written by `producer`, which should be a reliable one.
    pub fn with_producer(producer: FutureProducer, limit: DeadLetterLimit) -> Self {
        Self {
            producer,
            guard: DeadLetterGuard::new(limit.window, limit.max_ratio),
            partitions: HashMap::new(),
        }
    }

    pub(crate) fn limit(&self) -> f64 {
        self.guard.max_ratio
    }

    /// Asks the guard whether a batch of `size` messages may dead-letter `dead`.
    pub(crate) fn admit(&mut self, size: usize, dead: &[DeadLetter]) -> Result<(), Tripped> {
        let mut verdicts = vec![false; size];
        for letter in dead {
            verdicts[letter.index] = true;
        }
        self.guard.admit(&verdicts)
    }

    /// Writes the dead letters of `batch` and waits for their acknowledgement, retrying
    /// as long as it takes: an unreachable broker is an outage, not a reason to lose a
    /// message. Returns `false` only if `stop` was cancelled first; nothing is then known
    /// to be written for sure, and the batch's offsets must not be stored.
    pub(crate) async fn write(
        &mut self,
        batch: &[Record],
        dead: &[DeadLetter],
        config: &ConsumerConfig,
        stop: &CancellationToken,
    ) -> bool {
        let mut pauses = config.retry.pauses();
        let mut pending: Vec<&DeadLetter> = dead.iter().collect();
        while !pending.is_empty() {
            let mut deliveries = Vec::with_capacity(pending.len());
            for letter in &pending {
                let source = &batch[letter.index];
                let topic = dead_letter_topic(&source.topic);
                let partition = self.partition_for(&topic, source.partition).await;
                let record = with_diagnostics(source, letter, config);
                let mut send = record.to_send(&topic);
                if let Some(partition) = partition {
                    send = send.partition(partition);
                }
                deliveries.push(match self.producer.send_result(send) {
                    Ok(delivery) => Some(delivery),
                    Err((e, _)) => {
                        tracing::warn!(error = %e, %topic, "dead letter not queued");
                        None
                    }
                });
            }
            let mut again = Vec::new();
            for (letter, delivery) in pending.into_iter().zip(deliveries) {
                let written = match delivery {
                    Some(delivery) => match delivery.await {
                        Ok(Ok(_)) => true,
                        Ok(Err((e, _))) => {
                            tracing::warn!(error = %e, "dead letter not acknowledged; retrying");
                            false
                        }
                        Err(_) => false,
                    },
                    None => false,
                };
                if !written {
                    again.push(letter);
                }
            }
            pending = again;
            if !pending.is_empty() && !pauses.pause(stop).await {
                return false;
            }
        }
        true
    }

    /// The source's partition number if the dead-letter topic has it; otherwise the
    /// producer's partitioner picks one by key.
    async fn partition_for(&mut self, topic: &str, partition: i32) -> Option<i32> {
        if !self.partitions.contains_key(topic) {
            let producer = self.producer.clone();
            let name = topic.to_owned();
            let count = tokio::task::spawn_blocking(move || {
                producer
                    .client()
                    .fetch_metadata(Some(&name), Duration::from_secs(10))
                    .ok()
                    .and_then(|m| m.topics().first().map(|t| t.partitions().len()))
                    .and_then(|n| i32::try_from(n).ok())
                    .filter(|&n| n > 0)
            })
            .await
            .ok()
            .flatten();
            // Not remembered when unknown, so a later batch asks again.
            if count.is_some() {
                self.partitions.insert(topic.to_owned(), count);
            }
            return count.filter(|&n| partition < n).map(|_| partition);
        }
        self.partitions[topic]
            .filter(|&n| partition < n)
            .map(|_| partition)
    }
}

/// The source record with the diagnostic headers after its own.
fn with_diagnostics(source: &Record, letter: &DeadLetter, config: &ConsumerConfig) -> Record {
    let time = |t: &DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Millis, true);
    let added = [
        (headers::ORIGINAL_TOPIC, source.topic.clone()),
        (headers::ORIGINAL_PARTITION, source.partition.to_string()),
        (headers::ORIGINAL_OFFSET, source.offset.to_string()),
        (
            headers::ORIGINAL_TIMESTAMP,
            source.timestamp.map(|t| t.to_string()).unwrap_or_default(),
        ),
        (headers::ORIGINAL_CONSUMER_GROUP, config.group_id.clone()),
        (headers::SERVICE, config.service.clone()),
        (headers::ERROR_CLASS, letter.failure.class.clone()),
        (headers::ERROR_MESSAGE, letter.failure.message.clone()),
        (headers::ATTEMPTS, letter.attempts.to_string()),
        (headers::FIRST_FAILURE, time(&letter.first_failure)),
        (headers::LAST_FAILURE, time(&letter.last_failure)),
    ];
    let mut record = source.clone();
    record.headers.extend(
        added
            .into_iter()
            .map(|(name, value)| (name.to_owned(), value.into_bytes())),
    );
    record
}

/// Stops a consumer when too large a share of recent messages would be dead-lettered
/// (after arroyo's DLQ limit): that is a broken producer or a bad deployment, and
/// dead-lettering would only empty the topic into its DLT.
#[derive(Debug)]
pub(crate) struct DeadLetterGuard {
    window: usize,
    max_ratio: f64,
    /// `true` for each recent message that was dead-lettered, oldest first.
    recent: VecDeque<bool>,
}

/// What tripped the guard.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Tripped {
    pub dead: usize,
    pub window: usize,
}

impl DeadLetterGuard {
    pub fn new(window: usize, max_ratio: f64) -> Self {
        Self {
            window: window.max(1),
            max_ratio,
            recent: VecDeque::new(),
        }
    }

    /// Admits a batch whose messages are dead-lettered where `dead` is `true`, unless
    /// the last `window` messages, this batch included, would then hold too many dead
    /// letters. Judged only once `window` messages have been seen. A batch refused
    /// leaves the guard unchanged.
    pub fn admit(&mut self, dead: &[bool]) -> Result<(), Tripped> {
        let from_batch = dead.len().min(self.window);
        let from_recent = (self.window - from_batch).min(self.recent.len());
        let seen = from_batch + from_recent;
        let count = dead[dead.len() - from_batch..]
            .iter()
            .filter(|d| **d)
            .count()
            + self
                .recent
                .iter()
                .rev()
                .take(from_recent)
                .filter(|d| **d)
                .count();
        #[allow(clippy::cast_precision_loss)] // windows are far below 2^52
        let ratio = count as f64 / self.window as f64;
        if seen == self.window && ratio > self.max_ratio {
            return Err(Tripped {
                dead: count,
                window: self.window,
            });
        }
        self.recent.extend(dead.iter().copied());
        while self.recent.len() > self.window {
            self.recent.pop_front();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guard_waits_for_a_full_window_then_trips_above_the_ratio() {
        let mut guard = DeadLetterGuard::new(10, 0.5);
        // Fewer messages than the window: not judged, even if all are dead.
        assert_eq!(guard.admit(&[true; 5]), Ok(()));
        let mut guard = DeadLetterGuard::new(10, 0.5);
        assert_eq!(guard.admit(&[false; 10]), Ok(()));
        // Five of the last ten: exactly at the limit is allowed.
        assert_eq!(guard.admit(&[true; 5]), Ok(()));
        // Six of the last ten is too many.
        assert_eq!(
            guard.admit(&[true]),
            Err(Tripped {
                dead: 6,
                window: 10
            })
        );
        // A refused batch changes nothing: a healthy batch is admitted.
        assert_eq!(guard.admit(&[false; 3]), Ok(()));
    }

    #[test]
    fn a_batch_larger_than_the_window_is_judged_by_its_last_messages() {
        let mut guard = DeadLetterGuard::new(4, 0.5);
        let mut batch = vec![true; 100];
        batch.extend([false; 4]);
        assert_eq!(guard.admit(&batch), Ok(()));
        assert_eq!(
            guard.admit(&[true; 100]),
            Err(Tripped { dead: 4, window: 4 })
        );
    }

    #[test]
    fn a_ratio_of_one_never_trips() {
        let mut guard = DeadLetterGuard::new(3, 1.0);
        assert_eq!(guard.admit(&[true; 50]), Ok(()));
    }
}
