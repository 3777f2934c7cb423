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
        let consumer: BaseConsumer = kafka::client_config(&config.bootstrap)
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
    let deadline = Instant::now() + READ_TIMEOUT;
    let left = || deadline.saturating_duration_since(Instant::now());
    let mut recent = Recent::default();
    for topic in &config.topics {
        // Where the window of each source partition starts.
        let starts = window_starts(consumer, topic, window, left())?;
        recent.seen += starts
            .values()
            .map(|(start, end)| (end - start) as usize)
            .sum::<usize>();
        let dead = dead_since(consumer, config, topic, &starts, window, deadline)?;
        recent.seen += dead.beyond;
        recent.dead += dead.within + dead.beyond;
    }
    Ok(recent)
}

/// Per partition of `topic`: `(first offset of the window, committed offset)`, for the
/// partitions the group has committed.
fn window_starts(
    consumer: &BaseConsumer,
    topic: &str,
    window: usize,
    timeout: Duration,
) -> Result<HashMap<i32, (i64, i64)>, String> {
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(|e| e.to_string())?;
    let mut list = TopicPartitionList::new();
    for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
        list.add_partition(topic, partition.id());
    }
    let committed = consumer
        .committed_offsets(list, timeout)
        .map_err(|e| e.to_string())?;
    Ok(committed
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(end) if end > 0 => {
                Some((e.partition(), ((end - window as i64).max(0), end)))
            }
            _ => None,
        })
        .collect())
}

/// Dead letters of the group's recent messages: within the committed window, and beyond
/// it (not committed yet).
#[derive(Default)]
struct Dead {
    within: usize,
    beyond: usize,
}

fn dead_since(
    consumer: &BaseConsumer,
    config: &ConsumerConfig,
    topic: &str,
    starts: &HashMap<i32, (i64, i64)>,
    window: usize,
    deadline: Instant,
) -> Result<Dead, String> {
    let dlt = dead_letter_topic(topic);
    let left = || deadline.saturating_duration_since(Instant::now());
    let mut tail = TopicPartitionList::new();
    let mut ends = HashMap::new();
    let metadata = consumer
        .fetch_metadata(Some(&dlt), left())
        .map_err(|e| e.to_string())?;
    for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
        let (low, high) = consumer
            .fetch_watermarks(&dlt, partition.id(), left())
            .map_err(|e| e.to_string())?;
        if high > low {
            let from = (high - window as i64).max(low);
            tail.add_partition_offset(&dlt, partition.id(), Offset::Offset(from))
                .map_err(|e| e.to_string())?;
            ends.insert(partition.id(), high);
        }
    }
    let mut dead = Dead::default();
    if ends.is_empty() {
        return Ok(dead);
    }
    consumer.assign(&tail).map_err(|e| e.to_string())?;
    let mut counted = HashSet::new();
    while !ends.is_empty() {
        if Instant::now() > deadline {
            return Err(format!("reading {dlt} took longer than {READ_TIMEOUT:?}"));
        }
        let Some(polled) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = polled.map_err(|e| e.to_string())?;
        let record = Record::from_message(&message);
        if ends
            .get(&record.partition)
            .is_some_and(|end| record.offset + 1 >= *end)
        {
            ends.remove(&record.partition);
        }
        let text = |name| record.last_header_text(name).unwrap_or_default();
        if text(headers::ORIGINAL_CONSUMER_GROUP) != config.group_id
            || text(headers::ORIGINAL_TOPIC) != topic
        {
            continue;
        }
        let (Ok(partition), Ok(offset)) = (
            text(headers::ORIGINAL_PARTITION).parse::<i32>(),
            text(headers::ORIGINAL_OFFSET).parse::<i64>(),
        ) else {
            continue;
        };
        if !counted.insert((partition, offset)) {
            continue;
        }
        match starts.get(&partition) {
            Some((start, end)) if offset >= *start && offset < *end => dead.within += 1,
            Some((_, end)) if offset >= *end => dead.beyond += 1,
            None => dead.beyond += 1,
            _ => {}
        }
    }
    let _ = consumer.unassign();
    Ok(dead)
}
