//! The dead-letter guard's memory across restarts, read from Kafka at start: which of the
//! group's recent messages its dead-letter topics hold.
//!
//! For each partition of each source topic, the recent messages are the last
//! `window` before the group's committed offset; a dead letter is recent when its
//! `dlt-original-offset` is at or after the start of that range (one the group has not
//! committed yet counts too: it is about to be judged again). Dead letters go to the same
//! partition number of the dead-letter topic, so the tail of each of its partitions — its
//! last `window` records — holds them all. A restart loop therefore cannot dead-letter a
//! fresh allowance on every start.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use kafka::dead_letter::headers;
use kafka::{dead_letter_topic, Record};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use crate::ConsumerConfig;

/// Bound on reading the history; past it the guard starts afresh.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The recent messages of the group's partitions, and how many of them were
/// dead-lettered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Recent {
    pub seen: usize,
    pub dead: usize,
}

/// Reads the recent history of `config`'s group, looking `window` messages back per
/// partition.
pub(crate) async fn recent(config: &ConsumerConfig, window: usize) -> Result<Recent, String> {
    let config = config.clone();
    let reading = tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = kafka::client_config(&config.connection)
            .set("group.id", &config.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .create()
            .map_err(|e| e.to_string())?;
        let recent = read(&consumer, &config, window);
        // Closing waits without a limit for a broker that is gone: not here.
        std::thread::spawn(move || drop(consumer));
        recent
    });
    match tokio::time::timeout(READ_TIMEOUT + Duration::from_secs(1), reading).await {
        Ok(read) => read.map_err(|e| e.to_string())?,
        Err(_) => Err(format!("no answer within {READ_TIMEOUT:?}")),
    }
}

fn read(consumer: &BaseConsumer, config: &ConsumerConfig, window: usize) -> Result<Recent, String> {
    let reader = Reader {
        consumer,
        config,
        window: window as i64,
        deadline: Instant::now() + READ_TIMEOUT,
    };
    let mut recent = Recent::default();
    for topic in &config.topics {
        let starts = reader.window_starts(topic)?;
        recent.seen += starts
            .values()
            .map(|(start, end)| (end - start) as usize)
            .sum::<usize>();
        let dead = reader.dead_letters(topic, &starts)?;
        recent.seen += dead.beyond;
        recent.dead += dead.within + dead.beyond;
    }
    Ok(recent)
}

/// Dead letters of the group's recent messages: within the committed window, and beyond
/// it (not committed yet).
#[derive(Default)]
struct Dead {
    within: usize,
    beyond: usize,
}

/// Reads one group's history, within one deadline.
struct Reader<'a> {
    consumer: &'a BaseConsumer,
    config: &'a ConsumerConfig,
    window: i64,
    deadline: Instant,
}

impl Reader<'_> {
    fn left(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// Per partition of `topic`: `(first offset of the window, committed offset)`, for
    /// the partitions the group has committed.
    fn window_starts(&self, topic: &str) -> Result<HashMap<i32, (i64, i64)>, String> {
        let mut list = TopicPartitionList::new();
        for partition in self.partitions(topic)? {
            list.add_partition(topic, partition);
        }
        let committed = self
            .consumer
            .committed_offsets(list, self.left())
            .map_err(|e| e.to_string())?;
        Ok(committed
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(end) if end > 0 => {
                    Some((e.partition(), ((end - self.window).max(0), end)))
                }
                _ => None,
            })
            .collect())
    }

    fn partitions(&self, topic: &str) -> Result<Vec<i32>, String> {
        let metadata = self
            .consumer
            .fetch_metadata(Some(topic), self.left())
            .map_err(|e| e.to_string())?;
        Ok(metadata
            .topics()
            .iter()
            .flat_map(|t| t.partitions())
            .map(|p| p.id())
            .collect())
    }

    /// Assigns the last `window` records of each partition of `dlt`; returns where each
    /// partition ends.
    fn assign_tail(&self, dlt: &str) -> Result<HashMap<i32, i64>, String> {
        let mut tail = TopicPartitionList::new();
        let mut ends = HashMap::new();
        for partition in self.partitions(dlt)? {
            let (low, high) = self
                .consumer
                .fetch_watermarks(dlt, partition, self.left())
                .map_err(|e| e.to_string())?;
            if high > low {
                let from = (high - self.window).max(low);
                tail.add_partition_offset(dlt, partition, Offset::Offset(from))
                    .map_err(|e| e.to_string())?;
                ends.insert(partition, high);
            }
        }
        if !ends.is_empty() {
            self.consumer.assign(&tail).map_err(|e| e.to_string())?;
        }
        Ok(ends)
    }

    /// The dead letters of `topic`'s recent messages (`starts`), from the tail of its
    /// dead-letter topic.
    fn dead_letters(&self, topic: &str, starts: &HashMap<i32, (i64, i64)>) -> Result<Dead, String> {
        let dlt = dead_letter_topic(topic);
        let mut ends = self.assign_tail(&dlt)?;
        let mut dead = Dead::default();
        let mut counted = HashSet::new();
        while !ends.is_empty() {
            if Instant::now() > self.deadline {
                return Err(format!("reading {dlt} took longer than {READ_TIMEOUT:?}"));
            }
            let Some(polled) = self.consumer.poll(Duration::from_millis(200)) else {
                continue;
            };
            let record = Record::from_message(&polled.map_err(|e| e.to_string())?);
            if ends
                .get(&record.partition)
                .is_some_and(|end| record.offset + 1 >= *end)
            {
                ends.remove(&record.partition);
            }
            let Some(origin) = self.origin(topic, &record) else {
                continue;
            };
            if !counted.insert(origin) {
                continue;
            }
            match starts.get(&origin.0) {
                Some((start, end)) if origin.1 >= *start && origin.1 < *end => dead.within += 1,
                Some((_, end)) if origin.1 >= *end => dead.beyond += 1,
                None => dead.beyond += 1,
                _ => {}
            }
        }
        let _ = self.consumer.unassign();
        Ok(dead)
    }

    /// The source partition and offset of a dead letter this group wrote for `topic`.
    fn origin(&self, topic: &str, record: &Record) -> Option<(i32, i64)> {
        let text = |name| record.last_header_text(name).unwrap_or_default();
        if text(headers::ORIGINAL_CONSUMER_GROUP) != self.config.group_id
            || text(headers::ORIGINAL_TOPIC) != topic
        {
            return None;
        }
        Some((
            text(headers::ORIGINAL_PARTITION).parse().ok()?,
            text(headers::ORIGINAL_OFFSET).parse().ok()?,
        ))
    }
}
