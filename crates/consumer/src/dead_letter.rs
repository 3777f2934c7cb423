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
use kafka::{dead_letter_topic, Fault, KafkaError, Record};
use rdkafka::producer::{FutureProducer, Producer};

use crate::{ConsumerConfig, ConsumerError, Failure, Message};

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

/// When the dead-letter guard stops a consumer: more than `max_ratio` of the recent
/// messages would be dead-lettered.
///
/// Every batch is judged as a whole: with the messages before it up to `window` in all,
/// or alone if it is larger than `window`. Until `window` messages have been seen, the
/// guard judges as soon as it has seen `min_judged`, so a consumer that restarts into a
/// stream of poison stops after a few dead letters, not a window's worth each time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DeadLetterLimit {
    pub window: usize,
    /// 1.0 turns the guard off.
    pub max_ratio: f64,
    /// The fewest messages the guard judges.
    pub min_judged: usize,
}

impl Default for DeadLetterLimit {
    fn default() -> Self {
        Self {
            window: 100,
            max_ratio: 0.5,
            min_judged: 20,
        }
    }
}

/// The largest record the dead-letter producer sends: any record a consumer could read
/// (the broker's default limit is about 1 MiB), plus the diagnostic headers.
const MAX_DEAD_LETTER_BYTES: &str = "16777216";

/// Where dead letters are written, and the guard that stops a consumer from emptying a
/// topic into its dead-letter topic. Handed to [`crate::run`] as one value.
pub struct DeadLetterPolicy {
    producer: FutureProducer,
    guard: DeadLetterGuard,
    /// Partitions of each dead-letter topic, looked up once.
    partitions: HashMap<String, Option<i32>>,
}

impl DeadLetterPolicy {
    /// Dead letters written by a reliable producer over `connection`, under `limit`.
    ///
    /// The producer takes records far larger than any a source topic accepts: the size a
    /// dead letter may have is the dead-letter topic's to decide (the services create it
    /// with room for the largest source record plus headers).
    pub fn new(connection: &kafka::Connection, limit: DeadLetterLimit) -> Result<Self, KafkaError> {
        let producer = kafka::reliable_producer_config(connection)
            .set("message.max.bytes", MAX_DEAD_LETTER_BYTES)
            .create()?;
        Ok(Self::with_producer(producer, limit))
    }

    /// Dead letters written by `producer`, which should be a reliable one.
    pub fn with_producer(producer: FutureProducer, limit: DeadLetterLimit) -> Self {
        Self {
            producer,
            guard: DeadLetterGuard::new(limit),
            partitions: HashMap::new(),
        }
    }

    pub(crate) fn limit(&self) -> f64 {
        self.guard.limit.max_ratio
    }

    /// Starts the guard from what the group's dead-letter topics hold of its recent
    /// messages ([`crate::history`]), so a restart does not grant a fresh allowance; on
    /// any error reading them, it starts afresh and says so.
    pub(crate) async fn recall(&mut self, config: &ConsumerConfig) {
        if self.guard.limit.max_ratio >= 1.0 {
            return;
        }
        match crate::history::recent(config, self.guard.limit.window).await {
            Ok(recent) => {
                if recent.dead > 0 {
                    tracing::info!(
                        seen = recent.seen, dead = recent.dead, group = %config.group_id,
                        "the dead-letter guard remembers recent dead letters"
                    );
                }
                self.guard.seed(recent);
            }
            Err(error) => tracing::warn!(
                %error, group = %config.group_id,
                "the dead-letter guard starts afresh: its history cannot be read"
            ),
        }
    }

    /// Asks the guard whether a batch of `size` messages may dead-letter `dead`.
    pub(crate) fn admit(&mut self, size: usize, dead: &[DeadLetter]) -> Result<(), Tripped> {
        let mut verdicts = vec![false; size];
        for letter in dead {
            verdicts[letter.index] = true;
        }
        self.guard.admit(&verdicts)
    }

    /// Writes the dead letters `pending` of `batch` and waits for their acknowledgement;
    /// returns those Kafka did not acknowledge (unreachable, say), to be tried again after
    /// a pause. A dead letter Kafka refuses for good (too large, no such topic, not
    /// authorized) is an error: retrying would stall the partition forever, quietly.
    pub(crate) async fn write<'d>(
        &mut self,
        batch: &[Message],
        pending: &[&'d DeadLetter],
        config: &ConsumerConfig,
    ) -> Result<Vec<&'d DeadLetter>, ConsumerError> {
        let mut deliveries = Vec::with_capacity(pending.len());
        for letter in pending {
            let source = &batch[letter.index].record;
            let topic = dead_letter_topic(&source.topic);
            let refused = |e: &KafkaError| ConsumerError::DeadLetterRefused {
                record: source.locator(),
                topic: topic.clone(),
                reason: e.to_string(),
            };
            let partition = match self.partition_for(&topic, source.partition).await {
                Ok(partition) => partition,
                Err(e) => return Err(refused(&e)),
            };
            let record = with_diagnostics(source, letter, config);
            let mut send = record.to_send(&topic);
            if let Some(partition) = partition {
                send = send.partition(partition);
            }
            deliveries.push(match self.producer.send_result(send) {
                Ok(delivery) => Some(delivery),
                Err((e, _)) if kafka::fault_of(&e) == Fault::Refused => return Err(refused(&e)),
                Err((e, _)) => {
                    tracing::warn!(error = %e, %topic, "dead letter not queued; retrying");
                    None
                }
            });
        }
        let mut again = Vec::new();
        for (letter, delivery) in pending.iter().zip(deliveries) {
            let written = match delivery {
                Some(delivery) => match delivery.await {
                    Ok(Ok(_)) => true,
                    Ok(Err((e, _))) if kafka::fault_of(&e) == Fault::Refused => {
                        return Err(ConsumerError::DeadLetterRefused {
                            record: batch[letter.index].locator(),
                            topic: dead_letter_topic(&batch[letter.index].topic),
                            reason: e.to_string(),
                        });
                    }
                    Ok(Err((e, _))) => {
                        tracing::warn!(error = %e, "dead letter not acknowledged; retrying");
                        false
                    }
                    Err(_) => false,
                },
                None => false,
            };
            if !written {
                again.push(*letter);
            }
        }
        Ok(again)
    }

    /// The source's partition number if the dead-letter topic has it; otherwise the
    /// producer's partitioner picks one by key. A dead-letter topic the cluster refuses
    /// to describe (not authorized, say) is an error; no answer, or an unknown topic, is
    /// not (the write then says).
    async fn partition_for(
        &mut self,
        topic: &str,
        partition: i32,
    ) -> Result<Option<i32>, KafkaError> {
        if !self.partitions.contains_key(topic) {
            let producer = self.producer.clone();
            let name = topic.to_owned();
            let count = tokio::task::spawn_blocking(move || {
                let metadata = producer
                    .client()
                    .fetch_metadata(Some(&name), Duration::from_secs(10))
                    .ok()?;
                let topic = metadata.topics().first()?;
                if let Some(error) = topic.error() {
                    let code = rdkafka::types::RDKafkaErrorCode::from(error);
                    return Some(Err(KafkaError::MetadataFetch(code)));
                }
                i32::try_from(topic.partitions().len())
                    .ok()
                    .filter(|&n| n > 0)
                    .map(Ok)
            })
            .await
            .ok()
            .flatten();
            // A topic the cluster does not know *yet* (created a moment ago) looks the
            // same as one that does not exist: neither is final here. The write itself
            // tells them apart — librdkafka waits for a topic to appear for
            // topic.metadata.propagation.max.ms (30 s), then refuses the record.
            let count = match count {
                Some(Err(e))
                    if kafka::fault_of(&e) == Fault::Refused
                        && e.rdkafka_error_code()
                            != Some(rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition) =>
                {
                    return Err(e)
                }
                Some(Ok(count)) => Some(count),
                _ => None,
            };
            // Not remembered when unknown, so a later batch asks again.
            if count.is_some() {
                self.partitions.insert(topic.to_owned(), count);
            }
            return Ok(count.filter(|&n| partition < n).map(|_| partition));
        }
        Ok(self.partitions[topic]
            .filter(|&n| partition < n)
            .map(|_| partition))
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
    limit: DeadLetterLimit,
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
    pub fn new(limit: DeadLetterLimit) -> Self {
        let window = limit.window.max(1);
        Self {
            limit: DeadLetterLimit {
                window,
                min_judged: limit.min_judged.clamp(1, window),
                ..limit
            },
            recent: VecDeque::new(),
        }
    }

    /// Starts from `recent`: at most a window of it, in the same proportion, the dead
    /// letters last (the most recent).
    pub fn seed(&mut self, recent: crate::history::Recent) {
        let window = self.limit.window;
        let (seen, dead) = if recent.seen > window {
            (window, (recent.dead * window).div_ceil(recent.seen))
        } else {
            (recent.seen, recent.dead)
        };
        let dead = dead.min(seen);
        self.recent = std::iter::repeat_n(false, seen - dead)
            .chain(std::iter::repeat_n(true, dead))
            .collect();
    }

    /// Admits a batch whose messages are dead-lettered where `dead` is `true`, unless the
    /// messages it is judged with would then hold too many dead letters: the whole batch
    /// and, if it is smaller than the window, the messages just before it up to a
    /// window's worth. Judged once at least `min_judged` messages are in view. A batch
    /// refused leaves the guard unchanged.
    pub fn admit(&mut self, dead: &[bool]) -> Result<(), Tripped> {
        let window = self.limit.window;
        let from_recent = window.saturating_sub(dead.len()).min(self.recent.len());
        let seen = dead.len() + from_recent;
        let count = dead.iter().filter(|d| **d).count()
            + self
                .recent
                .iter()
                .rev()
                .take(from_recent)
                .filter(|d| **d)
                .count();
        #[allow(clippy::cast_precision_loss)] // counts are far below 2^52
        let ratio = count as f64 / seen.max(1) as f64;
        if seen >= self.limit.min_judged && ratio > self.limit.max_ratio {
            return Err(Tripped {
                dead: count,
                window: seen,
            });
        }
        self.recent.extend(dead.iter().copied());
        while self.recent.len() > window {
            self.recent.pop_front();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(window: usize, max_ratio: f64, min_judged: usize) -> DeadLetterGuard {
        DeadLetterGuard::new(DeadLetterLimit {
            window,
            max_ratio,
            min_judged,
        })
    }

    #[test]
    fn the_guard_trips_above_the_ratio_of_the_last_window() {
        let mut guard = guard(10, 0.5, 10);
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
    fn a_partial_window_is_judged_once_it_holds_the_minimum() {
        let mut guard = guard(100, 0.5, 20);
        // Fewer than the minimum: not judged, even if all are dead.
        assert_eq!(guard.admit(&[true; 5]), Ok(()));
        assert_eq!(guard.admit(&[true; 10]), Ok(()));
        // 20 seen, 20 dead: a restart into poison stops here, not after 100.
        assert_eq!(
            guard.admit(&[true; 5]),
            Err(Tripped {
                dead: 20,
                window: 20
            })
        );
    }

    #[test]
    fn a_batch_larger_than_the_window_is_judged_as_a_whole() {
        // 450 poison messages followed by 50 good ones: 90 % of the batch.
        let mut guard = guard(100, 0.5, 20);
        let mut batch = vec![true; 450];
        batch.extend([false; 50]);
        assert_eq!(
            guard.admit(&batch),
            Err(Tripped {
                dead: 450,
                window: 500
            })
        );
        // The same batch with the poison at the end is no different.
        batch.reverse();
        assert!(guard.admit(&batch).is_err());
        // A large healthy batch passes, and then counts as the recent window.
        assert_eq!(guard.admit(&[false; 300]), Ok(()));
        assert_eq!(guard.admit(&[true; 50]), Ok(()));
    }

    #[test]
    fn a_guard_seeded_with_recent_dead_letters_trips_sooner() {
        let mut guard = guard(100, 0.5, 20);
        guard.seed(crate::history::Recent { seen: 15, dead: 15 });
        // Five more: twenty seen, all dead.
        assert_eq!(
            guard.admit(&[true; 5]),
            Err(Tripped {
                dead: 20,
                window: 20
            })
        );
        // A long healthy history is scaled to the window.
        let mut guard = super::DeadLetterGuard::new(DeadLetterLimit {
            window: 10,
            max_ratio: 0.5,
            min_judged: 1,
        });
        guard.seed(crate::history::Recent {
            seen: 1000,
            dead: 10,
        });
        assert_eq!(guard.admit(&[true]), Ok(()));
    }

    #[test]
    fn a_ratio_of_one_never_trips() {
        let mut guard = guard(3, 1.0, 1);
        assert_eq!(guard.admit(&[true; 50]), Ok(()));
    }
}
