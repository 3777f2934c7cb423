//! Dead-letter topics: where a message goes when it can never be processed, and the guard
//! that stops a consumer from emptying a topic into one.
//!
//! A dead letter keeps the original key, value bytes and headers unchanged, goes to the
//! same partition number of `<topic>.DLT` (when that partition exists) and carries the
//! diagnostic headers in [`headers`]. Writes are acknowledged (`acks=all`) before the
//! source offsets are stored, so a dead letter is never lost between the two topics.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use tokio_util::sync::CancellationToken;

use crate::pause::{sleep_unless_stopped, Pauses};
use crate::{ConsumerConfig, Failure, Incoming};

/// The dead-letter topic of `topic`: `order.created` → `order.created.DLT`.
pub fn dead_letter_topic(topic: &str) -> String {
    format!("{topic}.DLT")
}

/// The headers added to every dead letter, modelled on Spring Kafka's `kafka_dlt-*` set.
/// Values are UTF-8 text (numbers in decimal), so any tool can show them.
pub mod headers {
    /// Every header this platform adds starts with this; the redrive tool removes them.
    pub const PREFIX: &str = "dlt-";
    pub const ORIGINAL_TOPIC: &str = "dlt-original-topic";
    pub const ORIGINAL_PARTITION: &str = "dlt-original-partition";
    pub const ORIGINAL_OFFSET: &str = "dlt-original-offset";
    /// The source record's timestamp, milliseconds since the Unix epoch.
    pub const ORIGINAL_TIMESTAMP: &str = "dlt-original-timestamp";
    pub const ORIGINAL_CONSUMER_GROUP: &str = "dlt-original-consumer-group";
    pub const SERVICE: &str = "dlt-service";
    /// A stable class such as `poison.invalid` or `gateway.unavailable`.
    pub const ERROR_CLASS: &str = "dlt-error-class";
    pub const ERROR_MESSAGE: &str = "dlt-error-message";
    /// How many times the message was tried.
    pub const ATTEMPTS: &str = "dlt-attempts";
    /// RFC 3339, UTC.
    pub const FIRST_FAILURE: &str = "dlt-first-failure";
    /// RFC 3339, UTC.
    pub const LAST_FAILURE: &str = "dlt-last-failure";
}

/// A message of a batch that is to be dead-lettered, and why.
#[derive(Debug, Clone)]
pub(crate) struct Failed {
    /// Its place in the batch.
    pub index: usize,
    pub failure: Failure,
    pub attempts: u32,
    pub first_failure: DateTime<Utc>,
    pub last_failure: DateTime<Utc>,
}

/// Writes dead letters, and retries a write that Kafka did not acknowledge for as long
/// as it takes: an unreachable broker is an outage, not a reason to lose a message.
pub(crate) struct DeadLetterWriter {
    producer: FutureProducer,
    group: String,
    service: String,
    retry_delay: Duration,
    max_retry_delay: Duration,
    /// Partitions of each dead-letter topic, looked up once.
    partitions: HashMap<String, Option<i32>>,
}

impl DeadLetterWriter {
    pub fn new(config: &ConsumerConfig) -> Result<Self, rdkafka::error::KafkaError> {
        let producer = ClientConfig::new()
            .set("bootstrap.servers", &config.bootstrap)
            .set("broker.address.family", "v4")
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .set("message.timeout.ms", "30000")
            .create()?;
        Ok(Self {
            producer,
            group: config.group_id.clone(),
            service: config.service.clone(),
            retry_delay: config.retry_delay,
            max_retry_delay: config.max_retry_delay,
            partitions: HashMap::new(),
        })
    }

    /// Writes the dead letters of `batch` and waits for their acknowledgement. Returns
    /// `false` only if `stop` was cancelled first; nothing is then known to be written
    /// for sure, and the batch's offsets must not be stored.
    pub async fn write(
        &mut self,
        batch: &[Incoming],
        failed: &[Failed],
        stop: &CancellationToken,
    ) -> bool {
        let mut pauses = Pauses::new(self.retry_delay, self.max_retry_delay);
        let mut pending: Vec<&Failed> = failed.iter().collect();
        while !pending.is_empty() {
            let mut deliveries = Vec::with_capacity(pending.len());
            for failed in &pending {
                let message = &batch[failed.index];
                let topic = dead_letter_topic(&message.topic);
                let partition = self.partition_for(&topic, message.partition).await;
                let headers = self.headers(message, failed);
                let mut record = FutureRecord::<[u8], [u8]>::to(&topic).headers(headers);
                if let Some(key) = &message.key {
                    record = record.key(key.as_slice());
                }
                if let Some(payload) = &message.payload {
                    record = record.payload(payload.as_slice());
                }
                if let Some(partition) = partition {
                    record = record.partition(partition);
                }
                deliveries.push(match self.producer.send_result(record) {
                    Ok(delivery) => Some(delivery),
                    Err((e, _)) => {
                        tracing::warn!(error = %e, %topic, "dead letter not queued");
                        None
                    }
                });
            }
            let mut again = Vec::new();
            for (failed, delivery) in pending.into_iter().zip(deliveries) {
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
                    again.push(failed);
                }
            }
            pending = again;
            if !pending.is_empty() && !sleep_unless_stopped(pauses.next_delay(), stop).await {
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

    fn headers(&self, message: &Incoming, failed: &Failed) -> OwnedHeaders {
        let mut headers = owned_headers(&message.headers);
        let time = |t: &DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Millis, true);
        let added = [
            (headers::ORIGINAL_TOPIC, message.topic.clone()),
            (headers::ORIGINAL_PARTITION, message.partition.to_string()),
            (headers::ORIGINAL_OFFSET, message.offset.to_string()),
            (
                headers::ORIGINAL_TIMESTAMP,
                message.timestamp.map(|t| t.to_string()).unwrap_or_default(),
            ),
            (headers::ORIGINAL_CONSUMER_GROUP, self.group.clone()),
            (headers::SERVICE, self.service.clone()),
            (headers::ERROR_CLASS, failed.failure.class.clone()),
            (headers::ERROR_MESSAGE, failed.failure.message.clone()),
            (headers::ATTEMPTS, failed.attempts.to_string()),
            (headers::FIRST_FAILURE, time(&failed.first_failure)),
            (headers::LAST_FAILURE, time(&failed.last_failure)),
        ];
        for (name, value) in &added {
            headers = headers.insert(Header {
                key: name,
                value: Some(value.as_bytes()),
            });
        }
        headers
    }
}

/// Kafka headers with these names and values, in order.
pub fn owned_headers(headers: &[(String, Vec<u8>)]) -> OwnedHeaders {
    headers.iter().fold(
        OwnedHeaders::new_with_capacity(headers.len()),
        |all, (name, value)| {
            all.insert(Header {
                key: name,
                value: Some(value.as_slice()),
            })
        },
    )
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

    #[test]
    fn dead_letter_topics_add_dlt() {
        assert_eq!(dead_letter_topic("order.created"), "order.created.DLT");
    }
}
