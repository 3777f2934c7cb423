//! The loop and its offsets: take a batch from the group, apply it (the retry rounds,
//! [`crate::rounds`]), dead-letter what failed, store the batch's offsets; at the end,
//! commit and close.

use std::collections::{HashMap, HashSet};
use std::time::{Instant, SystemTime};

use events::spans::{Attribute, Kind};
use rdkafka::consumer::Consumer;
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::dead_letter::DeadLetter;
use crate::group::Group;
use crate::rounds::Interrupted;
use crate::{BatchHandler, ConsumerConfig, ConsumerError, DeadLetterPolicy, Message, Stats};

/// Consumes until `stop` is cancelled, then commits what was processed and returns.
///
/// Returns an error without committing the batch in hand when the dead-letter guard
/// trips, or when a dead letter cannot be written for a reason retrying cannot fix:
/// nothing of that batch is dead-lettered or committed, so a restart after the cause is
/// fixed processes it.
pub async fn run<H: BatchHandler>(
    config: ConsumerConfig,
    handler: H,
    dead_letters: DeadLetterPolicy,
    stop: CancellationToken,
) -> Result<Stats, ConsumerError> {
    Runner::new(config, handler, dead_letters, stop)?
        .run()
        .await
}

/// One consumer of a group and everything its loop needs; the steps are its methods.
pub struct Runner<H> {
    /// The group member: the consumer, its pauses, and the stop token (cancelled to stop;
    /// a batch in flight is then left uncommitted).
    pub(crate) group: Group,
    pub(crate) config: ConsumerConfig,
    pub(crate) handler: H,
    /// Where dead letters go, and when to halt instead.
    pub(crate) dead_letters: DeadLetterPolicy,
    pub(crate) stats: Stats,
    /// Partitions the group took away while the batch in hand was being applied: nothing
    /// of them is committed or dead-lettered.
    pub(crate) abandoned: HashSet<(String, i32)>,
}

impl<H: BatchHandler> Runner<H> {
    /// Joins the group of `config` and subscribes to its topics.
    pub fn new(
        config: ConsumerConfig,
        handler: H,
        dead_letters: DeadLetterPolicy,
        stop: CancellationToken,
    ) -> Result<Self, ConsumerError> {
        Ok(Self {
            group: Group::join(&config, stop.clone())?,
            config,
            handler,
            dead_letters,
            stats: Stats::default(),
            abandoned: HashSet::new(),
        })
    }

    /// The loop; see [`run`].
    pub async fn run(mut self) -> Result<Stats, ConsumerError> {
        self.dead_letters.recall(&self.config).await;
        let result = loop {
            let Some(mut batch) = self.group.next_batch(&self.config).await else {
                break Ok(());
            };
            let revoked = self.group.forget_revoked();
            batch.retain(|m| !revoked.contains(&(m.topic.clone(), m.partition)));
            if batch.is_empty() {
                continue;
            }
            self.abandoned.clear();
            let span = tracing::info_span!(
                "batch",
                group = %self.config.group_id,
                topic = %batch[0].topic,
                partition = batch[0].partition,
                first_offset = batch[0].offset,
                size = batch.len(),
            );
            let started = Instant::now();
            let started_at = SystemTime::now();
            self.count_consumed(&batch);
            let step = self.process(&mut batch).instrument(span).await;
            self.group.release();
            metrics::histogram!("consumer_batch_duration_seconds", "group" => self.config.group_id.clone())
                .record(started.elapsed().as_secs_f64());
            match step {
                Ok(true) => {
                    self.store_offsets(&batch);
                    self.record_hops(&batch, started_at);
                }
                // Stopped before the batch was settled: its offsets stay uncommitted.
                Ok(false) => break Ok(()),
                Err(error) => break Err(error),
            }
        };
        self.stats.revocations = self.group.revocations();
        self.stats.consumer_errors = self.group.errors();
        self.group.close().await;
        result.map(|()| self.stats)
    }

    /// Applies a batch and dead-letters what failed. `Ok(true)` when every message is
    /// settled and the offsets may be stored; `Ok(false)` if `stop` came first.
    async fn process(&mut self, batch: &mut Vec<Message>) -> Result<bool, ConsumerError> {
        let retried_before = self.stats.retried.values().sum::<u64>();
        let dead = match self.apply(batch).await {
            Ok(dead) => dead,
            Err(Interrupted::Stopped) => return Ok(false),
            Err(Interrupted::Halt(error)) => return Err(error),
        };
        let batch = &batch[..];
        self.admit(batch, &dead)?;
        if !dead.is_empty() {
            if !self.write_dead_letters(batch, &dead).await? {
                return Ok(false);
            }
            for letter in &dead {
                self.count_dead_letter(&batch[letter.index], letter);
            }
        }
        // Operators see the running counts whenever they change.
        if !dead.is_empty() || self.stats.retried.values().sum::<u64>() != retried_before {
            tracing::warn!(
                dead_lettered = ?self.stats.dead_lettered, retried = ?self.stats.retried,
                "totals by error class"
            );
        }
        self.stats.batches += 1;
        let kept = |m: &&Message| !self.abandoned.contains(&(m.topic.clone(), m.partition));
        self.stats.processed += batch.iter().filter(kept).count() as u64;
        Ok(true)
    }

    /// Asks the dead-letter guard whether the batch may dead-letter `dead`; halts if not.
    fn admit(&mut self, batch: &[Message], dead: &[DeadLetter]) -> Result<(), ConsumerError> {
        let Err(tripped) = self.dead_letters.admit(batch.len(), dead) else {
            return Ok(());
        };
        let last = dead.last().map(|d| d.failure.clone()).unwrap_or_default();
        let error = ConsumerError::DeadLetterLimit {
            topic: batch[0].topic.clone(),
            dead: tripped.dead,
            window: tripped.window,
            limit: self.dead_letters.limit(),
            class: last.class,
            message: last.message,
        };
        tracing::error!(%error, "consumer stopped by the dead-letter guard");
        self.count_halt("dead-letter-guard");
        Err(error)
    }

    /// Writes the dead letters of the batch and waits for their acknowledgement, as long
    /// as it takes: an unreachable broker is an outage, not a reason to lose a message.
    /// `Ok(false)` only if `stop` came first (nothing is then known to be written for
    /// sure, and the batch's offsets must not be stored); an error for a dead letter
    /// Kafka refuses for good.
    async fn write_dead_letters(
        &mut self,
        batch: &[Message],
        dead: &[DeadLetter],
    ) -> Result<bool, ConsumerError> {
        let mut pauses = self.config.retry.pauses();
        let mut pending: Vec<&DeadLetter> = dead.iter().collect();
        loop {
            let written = self.dead_letters.write(batch, &pending, &self.config).await;
            pending = match written {
                Ok(left) => left,
                Err(error) => {
                    tracing::error!(%error, "consumer stopped: a dead letter cannot be written");
                    self.count_halt("dead-letter-refused");
                    return Err(error);
                }
            };
            if pending.is_empty() {
                return Ok(true);
            }
            if !self.group.hold(pauses.next_delay()).await {
                return Ok(false);
            }
        }
    }

    /// Stores, for each partition of the batch, the offset after its last message.
    fn store_offsets(&self, batch: &[Message]) {
        let mut next: HashMap<(&str, i32), i64> = HashMap::new();
        for message in batch {
            let entry = next.entry((&message.topic, message.partition)).or_insert(0);
            *entry = (*entry).max(message.offset + 1);
        }
        let mut list = TopicPartitionList::new();
        for ((topic, partition), offset) in next {
            if self.abandoned.contains(&(topic.to_owned(), partition)) {
                continue;
            }
            // Fails only for an invalid offset, which a consumed message cannot have.
            let _ = list.add_partition_offset(topic, partition, Offset::Offset(offset));
        }
        // Fails only for partitions revoked meanwhile; their new owner reprocesses.
        if let Err(e) = self.group.consumer().store_offsets(&list) {
            tracing::debug!(error = %e, "storing offsets");
        }
    }

    /// Counts the messages of a batch by topic, and its size.
    pub(crate) fn count_consumed(&self, batch: &[Message]) {
        let group = &self.config.group_id;
        metrics::histogram!("consumer_batch_size", "group" => group.clone())
            .record(batch.len() as f64);
        let mut by_topic: HashMap<&str, u64> = HashMap::new();
        for message in batch {
            *by_topic.entry(&message.topic).or_default() += 1;
        }
        for (topic, count) in by_topic {
            metrics::counter!("consumer_messages_total", "group" => group.clone(), "topic" => topic.to_owned())
                .increment(count);
        }
    }

    /// Each settled message's hop of its trace, from the batch's start until now.
    fn record_hops(&self, batch: &[Message], started_at: SystemTime) {
        if !events::spans::exporting() {
            return;
        }
        for message in batch {
            let Some(trace) = &message.trace else {
                continue;
            };
            let name = format!("consume {}", message.topic);
            trace.record(name, Kind::Consumer, started_at, || {
                vec![
                    Attribute::new("messaging.destination.name", message.topic.clone()),
                    Attribute::new("messaging.kafka.partition", i64::from(message.partition)),
                    Attribute::new("messaging.kafka.offset", message.offset),
                    Attribute::new(
                        "messaging.consumer.group.name",
                        self.config.group_id.clone(),
                    ),
                ]
            });
        }
    }

    fn count_dead_letter(&mut self, message: &Message, letter: &DeadLetter) {
        let class = &letter.failure.class;
        *self.stats.dead_lettered.entry(class.clone()).or_default() += 1;
        metrics::counter!("consumer_dead_letters_total", "group" => self.config.group_id.clone(), "topic" => message.topic.clone(), "class" => class.clone()).increment(1);
        tracing::warn!(
            topic = %message.topic, partition = message.partition, offset = message.offset,
            key = %message.key_text(), correlation_id = message.correlation(),
            trace_id = message.trace_id(), span_id = message.span_id(), class = %class,
            reason = %letter.failure.message, attempts = letter.attempts, "dead-lettered"
        );
    }

    fn count_halt(&self, reason: &'static str) {
        metrics::counter!("consumer_halts_total", "group" => self.config.group_id.clone(), "reason" => reason).increment(1);
    }
}
