//! Redrive: read a dead-letter topic, group its records by error class, and replay the
//! selected ones to the topics they came from.
//!
//! Replays are safe because consumers are idempotent: an event already processed is
//! recognised by its id and changes nothing. A replayed record keeps its key, value and
//! original headers (the `dlt-*` diagnostics are removed), goes back to its original
//! partition, and carries a `redriven-from` header naming the dead letter it came from.
//!
//! The `redrive` command line (`src/bin/redrive.rs`) is a thin layer over [`read`],
//! [`summary`] and [`replay`].

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kafka::dead_letter::headers;
use kafka::{KafkaError, Record};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::Message;
use rdkafka::producer::FutureProducer;
use rdkafka::{Offset, TopicPartitionList};

/// The header a replayed record carries: `<dead-letter topic>/<partition>/<offset>`.
pub use kafka::dead_letter::REDRIVEN_FROM;

#[derive(Debug, thiserror::Error)]
pub enum RedriveError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("reading stopped: {0}")]
    Stopped(String),
    #[error("topic {0} does not exist")]
    NoSuchTopic(String),
    #[error("reading {topic} did not reach its end within {after:?}")]
    Timeout { topic: String, after: Duration },
    #[error("dead letter {topic}/{partition}/{offset} has no {header} header, so its origin is unknown; pass --to")]
    NoOrigin {
        topic: String,
        partition: i32,
        offset: i64,
        header: &'static str,
    },
    #[error("replaying {topic}/{partition}/{offset}: {source}")]
    Replay {
        topic: String,
        partition: i32,
        offset: i64,
        source: KafkaError,
    },
}

/// One record of a dead-letter topic, with all its headers in order: the original ones,
/// then the `dlt-*` diagnostics.
pub type DeadLetter = Record;

/// Which dead letters to select; every field set must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub class: Option<String>,
    pub key: Option<String>,
    pub partition: Option<i32>,
    /// First offset, inclusive.
    pub from_offset: Option<i64>,
    /// Last offset, inclusive.
    pub to_offset: Option<i64>,
}

impl Filter {
    pub fn matches(&self, letter: &DeadLetter) -> bool {
        self.class
            .as_ref()
            .is_none_or(|c| *c == letter.dead_letter_class())
            && self
                .key
                .as_ref()
                .is_none_or(|k| letter.key.as_deref() == Some(k.as_bytes()))
            && self.partition.is_none_or(|p| p == letter.partition)
            && self.from_offset.is_none_or(|o| letter.offset >= o)
            && self.to_offset.is_none_or(|o| letter.offset <= o)
    }
}

/// Reads `topic` from its start to its end as of now and returns the records `filter`
/// selects, in partition and offset order. Commits nothing: reading changes nothing.
/// Fails if the end is not reached within `timeout`.
pub async fn read(
    connection: &kafka::Connection,
    topic: &str,
    filter: &Filter,
    timeout: Duration,
) -> Result<Vec<DeadLetter>, RedriveError> {
    let (connection, topic, filter) = (connection.clone(), topic.to_owned(), filter.clone());
    tokio::task::spawn_blocking(move || read_blocking(&connection, &topic, &filter, timeout))
        .await
        .map_err(|e| RedriveError::Stopped(e.to_string()))?
}

fn read_blocking(
    connection: &kafka::Connection,
    topic: &str,
    filter: &Filter,
    timeout: Duration,
) -> Result<Vec<DeadLetter>, RedriveError> {
    let deadline = Instant::now() + timeout;
    let left = || deadline.saturating_duration_since(Instant::now());
    let consumer: BaseConsumer = kafka::client_config(connection)
        .set("group.id", format!("redrive-{}", uuid::Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), left())?;
    let partitions: Vec<i32> = metadata
        .topics()
        .first()
        .filter(|t| t.error().is_none())
        .map(|t| t.partitions().iter().map(|p| p.id()).collect())
        .unwrap_or_default();
    if partitions.is_empty() {
        return Err(RedriveError::NoSuchTopic(topic.to_owned()));
    }
    // Where each partition ends now; records written later are not read.
    let mut ends = BTreeMap::new();
    let mut assignment = TopicPartitionList::new();
    for &partition in &partitions {
        if filter.partition.is_some_and(|p| p != partition) {
            continue;
        }
        let (low, high) = consumer.fetch_watermarks(topic, partition, left())?;
        let start = filter.from_offset.unwrap_or(low).max(low);
        if start < high {
            ends.insert(partition, high);
            assignment.add_partition_offset(topic, partition, Offset::Offset(start))?;
        }
    }
    let mut letters = Vec::new();
    if ends.is_empty() {
        return Ok(letters);
    }
    consumer.assign(&assignment)?;
    while !ends.is_empty() {
        if left().is_zero() {
            return Err(RedriveError::Timeout {
                topic: topic.to_owned(),
                after: timeout,
            });
        }
        let Some(polled) = consumer.poll(left().min(Duration::from_millis(500))) else {
            continue;
        };
        let message = match polled {
            Ok(message) => message,
            // Transient: librdkafka reconnects by itself until the deadline.
            Err(KafkaError::MessageConsumption(RDKafkaErrorCode::PartitionEOF)) => continue,
            Err(e) => {
                eprintln!("redrive: {e}");
                continue;
            }
        };
        let partition = message.partition();
        let Some(&end) = ends.get(&partition) else {
            continue;
        };
        if message.offset() + 1 >= end {
            ends.remove(&partition);
        }
        if message.offset() >= end {
            continue;
        }
        let letter = Record::from_message(&message);
        if filter.matches(&letter) {
            letters.push(letter);
        }
    }
    letters.sort_by_key(|l| (l.partition, l.offset));
    Ok(letters)
}

/// How many dead letters there are of each error class.
pub fn summary(letters: &[DeadLetter]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for letter in letters {
        *counts.entry(letter.dead_letter_class()).or_default() += 1;
    }
    counts
}

/// Where a replay sends a dead letter: `to`, or the topic and partition it came from.
pub fn destination(
    letter: &DeadLetter,
    to: Option<&str>,
) -> Result<(String, Option<i32>), RedriveError> {
    let partition = letter
        .last_header_text(headers::ORIGINAL_PARTITION)
        .and_then(|p| p.parse().ok());
    if let Some(to) = to {
        return Ok((to.to_owned(), None));
    }
    let topic = letter
        .last_header_text(headers::ORIGINAL_TOPIC)
        .ok_or(RedriveError::NoOrigin {
            topic: letter.topic.clone(),
            partition: letter.partition,
            offset: letter.offset,
            header: headers::ORIGINAL_TOPIC,
        })?;
    Ok((topic, partition))
}

/// Replays `letters`, in order, to their original topics (or to `to`), waits until Kafka
/// has acknowledged each one, and calls `progress` after each. Returns how many were
/// replayed. Stops at the first record Kafka does not accept.
pub async fn replay(
    connection: &kafka::Connection,
    letters: &[DeadLetter],
    to: Option<&str>,
    mut progress: impl FnMut(&DeadLetter),
) -> Result<u64, RedriveError> {
    let producer: FutureProducer = kafka::reliable_producer(connection)?;
    // Queued all at once (the idempotent producer keeps their order), acknowledged in turn.
    let mut deliveries = Vec::with_capacity(letters.len());
    for letter in letters {
        let (topic, partition) = destination(letter, to)?;
        let replayed = Record {
            headers: letter.original_headers().cloned().collect(),
            ..letter.clone()
        }
        .header(REDRIVEN_FROM, letter.locator());
        let mut record = replayed.to_send(&topic);
        if let Some(partition) = partition {
            record = record.partition(partition);
        }
        let delivery = producer
            .send_result(record)
            .map_err(|(source, _)| replay_error(letter, source))?;
        deliveries.push(delivery);
    }
    let mut replayed = 0;
    for (letter, delivery) in letters.iter().zip(deliveries) {
        match delivery.await {
            Ok(Ok(_)) => {
                replayed += 1;
                progress(letter);
            }
            Ok(Err((source, _))) => return Err(replay_error(letter, source)),
            Err(_) => return Err(replay_error(letter, KafkaError::Canceled)),
        }
    }
    Ok(replayed)
}

fn replay_error(letter: &DeadLetter, source: KafkaError) -> RedriveError {
    RedriveError::Replay {
        topic: letter.topic.clone(),
        partition: letter.partition,
        offset: letter.offset,
        source,
    }
}

/// A payload for people: the text if it is UTF-8, else hex; at most `limit` characters.
pub fn printable(bytes: Option<&[u8]>, limit: usize) -> String {
    let Some(bytes) = bytes else {
        return "(no value)".into();
    };
    let text = match std::str::from_utf8(bytes) {
        Ok(text) => text.escape_debug().to_string(),
        Err(_) => format!(
            "hex:{}",
            bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
        ),
    };
    if text.chars().count() > limit {
        format!(
            "{}… ({} bytes)",
            text.chars().take(limit).collect::<String>(),
            bytes.len()
        )
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(offset: i64, class: &str, key: &str) -> DeadLetter {
        Record {
            topic: "order.created.DLT".into(),
            partition: 1,
            offset,
            ..Record::new("{}")
                .key(key)
                .header("trace", "abc")
                .header(headers::ORIGINAL_TOPIC, "order.created")
                .header(headers::ORIGINAL_PARTITION, "1")
                .header(headers::ERROR_CLASS, class)
        }
    }

    #[test]
    fn filters_select_by_class_key_partition_and_offset_range() {
        let letters = [
            letter(0, "poison.invalid", "a"),
            letter(1, "gateway.unavailable", "b"),
            letter(2, "poison.invalid", "b"),
        ];
        let select = |f: Filter| -> Vec<i64> {
            letters
                .iter()
                .filter(|l| f.matches(l))
                .map(|l| l.offset)
                .collect()
        };
        assert_eq!(select(Filter::default()), [0, 1, 2]);
        let class = Some("poison.invalid".to_owned());
        assert_eq!(
            select(Filter {
                class,
                ..Filter::default()
            }),
            [0, 2]
        );
        let key = Some("b".to_owned());
        assert_eq!(
            select(Filter {
                key,
                ..Filter::default()
            }),
            [1, 2]
        );
        let range = Filter {
            from_offset: Some(1),
            to_offset: Some(1),
            ..Filter::default()
        };
        assert_eq!(select(range), [1]);
        assert!(select(Filter {
            partition: Some(0),
            ..Filter::default()
        })
        .is_empty());
        assert_eq!(
            summary(&letters),
            BTreeMap::from([
                ("gateway.unavailable".into(), 1),
                ("poison.invalid".into(), 2)
            ])
        );
    }

    #[test]
    fn a_replay_goes_to_the_origin_without_the_diagnostic_headers() {
        let l = letter(0, "poison.invalid", "a");
        assert_eq!(
            destination(&l, None).unwrap(),
            ("order.created".into(), Some(1))
        );
        assert_eq!(
            destination(&l, Some("other")).unwrap(),
            ("other".into(), None)
        );
        let kept: Vec<&str> = l.original_headers().map(|(n, _)| n.as_str()).collect();
        assert_eq!(kept, ["trace"]);
        assert_eq!(printable(Some(&[0xff, 0x00]), 10), "hex:ff00");
    }
}
