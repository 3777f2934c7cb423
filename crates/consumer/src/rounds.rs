//! The retry rounds: the one place the retry, outage and dead-letter policy lives
//! (`docs/dead-letters.md` explains it to operators).
//!
//! A batch is handed to the handler, round after round, until every message is applied
//! or condemned. What the handler answers decides:
//! - [`Outcome::Applied`] and [`Outcome::Duplicate`] settle the message;
//! - [`Outcome::DeadLetter`] (poison) condemns it at once;
//! - [`Outcome::Retry`] (its own failure: the gateway fails this order while it answers
//!   others) uses up one attempt; after `max_attempts` the message is dead-lettered;
//! - [`Outcome::Wait`] (what it depends on is down, or busy with it) uses up nothing: the
//!   message is tried again after a pause, without limit, and never dead-lettered;
//! - a [`BatchError::Outage`] (the handler's database or Kafka unreachable) tries the same
//!   messages again after a pause, without limit;
//! - a [`BatchError::Refused`] (the database refuses something of the batch however often
//!   it is asked) splits the batch in halves until each refused message is alone and
//!   dead-lettered; the first half is applied before the second, so the order within a
//!   partition holds.
//!
//! The runner does not guess which of these a failure is; the handler says.
//!
//! Between rounds the runner waits (exponential backoff with jitter) with the partitions
//! of the messages still pending paused, polling so the group keeps it; messages of other
//! partitions that arrive meanwhile **join the batch**, up to its size, and are tried in
//! the next round. So one order that keeps failing never holds up the others, and their
//! success is what tells its failure from an outage. Partitions the group takes away
//! meanwhile are **abandoned**: their messages leave the batch and nothing of them is
//! committed (their new owner has them), and since the runner polls only between
//! attempts, no attempt for them is in flight when the revocation returns.
//!
//! A retried message is applied after messages behind it that succeeded at once; per-key
//! order holds for every message applied on its first attempt.

use std::collections::{HashMap, HashSet};
use std::ops::Range;

use chrono::{DateTime, Utc};

use crate::dead_letter::DeadLetter;
use crate::runner::Runner;
use crate::{BatchError, BatchHandler, ConsumerError, Failure, Message, Outcome, Pauses};

/// Where the messages of a batch stand between rounds.
pub(crate) struct Rounds {
    /// The indices still to apply; all of them in the first round.
    pending: Vec<usize>,
    /// Attempts used up, per message (a [`Outcome::Wait`] uses none).
    attempts: HashMap<usize, u32>,
    first_failure: HashMap<usize, DateTime<Utc>>,
    dead: Vec<DeadLetter>,
    pauses: Pauses,
}

/// Why the rounds ended early.
pub(crate) enum Interrupted {
    /// `stop` came first.
    Stopped,
    /// The consumer must halt.
    Halt(ConsumerError),
}

impl<H: BatchHandler> Runner<H> {
    /// Applies `batch` through its rounds (messages may join it, and those of revoked
    /// partitions leave it: see the module documentation). Returns the messages to
    /// dead-letter, in batch order.
    pub(crate) async fn apply(
        &mut self,
        batch: &mut Vec<Message>,
    ) -> Result<Vec<DeadLetter>, Interrupted> {
        let mut rounds = Rounds {
            pending: (0..batch.len()).collect(),
            attempts: HashMap::new(),
            first_failure: HashMap::new(),
            dead: Vec::new(),
            pauses: self.config.retry.pauses(),
        };
        loop {
            let outcomes = if rounds.pending.len() == batch.len() {
                self.attempt_all(batch).await?
            } else {
                let subset: Vec<Message> =
                    rounds.pending.iter().map(|&i| batch[i].clone()).collect();
                self.attempt_all(&subset).await?
            };
            let again = self.judge(batch, &mut rounds, outcomes);
            if again.is_empty() {
                rounds.dead.sort_by_key(|d| d.index);
                return Ok(rounds.dead);
            }
            let delay = rounds.pauses.next_delay();
            let waiting = partitions_of(batch, &again);
            let before = batch.len();
            let limit = self.config.batch_size;
            if !self.group.hold_joining(delay, batch, &waiting, limit).await {
                return Err(Interrupted::Stopped);
            }
            self.count_consumed(&batch[before..]);
            rounds.pending = again.into_iter().chain(before..batch.len()).collect();
            self.abandon_revoked(batch, &mut rounds);
        }
    }

    /// Drops from the rounds the messages of partitions the group took away.
    fn abandon_revoked(&mut self, batch: &[Message], rounds: &mut Rounds) {
        let revoked = self.group.forget_revoked();
        if revoked.is_empty() {
            return;
        }
        let gone = |i: &usize| revoked.contains(&(batch[*i].topic.clone(), batch[*i].partition));
        let before = rounds.pending.len();
        rounds.pending.retain(|i| !gone(i));
        rounds.dead.retain(|d| !gone(&d.index));
        tracing::info!(
            abandoned = before - rounds.pending.len(),
            "partitions revoked mid-batch: their messages are left to the new owner"
        );
        self.abandoned.extend(revoked);
    }

    /// Settles what a round's outcomes settle; returns the indices to try again.
    fn judge(
        &mut self,
        batch: &[Message],
        rounds: &mut Rounds,
        outcomes: Vec<Outcome>,
    ) -> Vec<usize> {
        let now = Utc::now();
        let mut again = Vec::new();
        let mut waits: Vec<(usize, Failure)> = Vec::new();
        let round_size = rounds.pending.len();
        for (&index, outcome) in rounds.pending.iter().zip(outcomes) {
            let (failure, counts) = match outcome {
                Outcome::Applied => {
                    self.count_settled(&batch[index], "consumer_applied_total");
                    continue;
                }
                Outcome::Duplicate => {
                    self.count_settled(&batch[index], "consumer_duplicates_total");
                    continue;
                }
                Outcome::Wait(failure) => {
                    waits.push((index, failure));
                    again.push(index);
                    continue;
                }
                Outcome::DeadLetter(failure) => (failure, false),
                Outcome::Retry(failure) => (failure, true),
            };
            let first = *rounds.first_failure.entry(index).or_insert(now);
            let attempts = rounds.attempts.entry(index).or_insert(0);
            *attempts += 1;
            if counts && *attempts < self.config.retry.max_attempts {
                self.count_retry(&batch[index], &failure, *attempts);
                again.push(index);
            } else {
                rounds.dead.push(DeadLetter {
                    index,
                    failure,
                    attempts: *attempts,
                    first_failure: first,
                    last_failure: now,
                });
            }
        }
        self.count_waits(batch, &waits, waits.len() == round_size);
        again.sort_unstable();
        again
    }

    /// One attempt at every message of `messages`, splitting a refused batch until each
    /// refused message is alone and answered with a dead letter.
    async fn attempt_all(&mut self, messages: &[Message]) -> Result<Vec<Outcome>, Interrupted> {
        let mut outcomes = vec![Outcome::Applied; messages.len()];
        let mut parts: Vec<Range<usize>> = Vec::with_capacity(8);
        parts.push(0..messages.len());
        while let Some(part) = parts.pop() {
            match self
                .attempt_through_outages(&messages[part.clone()])
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
        Ok(outcomes)
    }

    /// One attempt at `messages`, repeated with backoff while the handler reports an
    /// outage; the inner `Err` carries the failure of a batch the handler refused. An
    /// attempt in flight is never cut off (it may be committing); `stop` only interrupts
    /// the pause between attempts.
    async fn attempt_through_outages(
        &mut self,
        messages: &[Message],
    ) -> Result<Result<Vec<Outcome>, Failure>, Interrupted> {
        let mut pauses = self.config.retry.pauses();
        loop {
            let reason = match self.handler.handle(messages).await {
                Ok(outcomes) if outcomes.len() == messages.len() => return Ok(Ok(outcomes)),
                Ok(outcomes) => {
                    return Err(Interrupted::Halt(self.handler_bug(messages, &outcomes)))
                }
                Err(BatchError::Refused(failure)) => return Ok(Err(failure)),
                Err(BatchError::Outage(reason)) => reason,
            };
            self.stats.outage_retries += 1;
            metrics::counter!("consumer_outage_retries_total").increment(1);
            tracing::warn!(error = %reason, "batch failed: outage; retrying");
            if !self.group.hold(pauses.next_delay()).await {
                return Err(Interrupted::Stopped);
            }
        }
    }

    /// A handler that does not answer for every message is a bug: the consumer halts, and
    /// nothing of the batch is committed.
    fn handler_bug(&self, messages: &[Message], outcomes: &[Outcome]) -> ConsumerError {
        let error = ConsumerError::HandlerBug {
            topic: messages[0].topic.clone(),
            expected: messages.len(),
            got: outcomes.len(),
        };
        tracing::error!(%error, "consumer stopped: the handler broke its contract");
        metrics::counter!("consumer_halts_total", "group" => self.config.group_id.clone(), "reason" => "handler-bug").increment(1);
        error
    }

    /// Counts one settled message under `counter`, by group and topic.
    fn count_settled(&self, message: &Message, counter: &'static str) {
        metrics::counter!(counter, "group" => self.config.group_id.clone(), "topic" => message.topic.clone())
            .increment(1);
    }

    fn count_retry(&mut self, message: &Message, failure: &Failure, attempt: u32) {
        *self.stats.retried.entry(failure.class.clone()).or_default() += 1;
        metrics::counter!("consumer_retries_total", "group" => self.config.group_id.clone(), "topic" => message.topic.clone(), "class" => failure.class.clone()).increment(1);
        tracing::warn!(
            topic = %message.topic, partition = message.partition, offset = message.offset,
            key = %message.key_text(), correlation_id = message.correlation(),
            trace_id = message.trace_id(), span_id = message.span_id(), class = %failure.class, reason = %failure.message,
            attempt, "message failed; retrying"
        );
    }

    /// Counts the messages that wait this round, by class, and says so in one line; a
    /// round in which everything waits is an outage retry.
    fn count_waits(&mut self, batch: &[Message], waits: &[(usize, Failure)], all: bool) {
        let Some((first, failure)) = waits.first() else {
            return;
        };
        let mut by_class: HashMap<&str, u64> = HashMap::new();
        for (_, f) in waits {
            *by_class.entry(f.class.as_str()).or_default() += 1;
        }
        for (class, n) in by_class {
            metrics::counter!("consumer_waits_total", "group" => self.config.group_id.clone(), "class" => class.to_owned()).increment(n);
        }
        if all {
            self.stats.outage_retries += 1;
            metrics::counter!("consumer_outage_retries_total").increment(1);
        }
        let message = &batch[*first];
        tracing::warn!(
            waiting = waits.len(), class = %failure.class, reason = %failure.message,
            topic = %message.topic, partition = message.partition, offset = message.offset,
            key = %message.key_text(), "messages wait; trying again"
        );
    }
}

impl From<ConsumerError> for Interrupted {
    fn from(error: ConsumerError) -> Self {
        Interrupted::Halt(error)
    }
}

/// The partitions of the messages at `indices`.
fn partitions_of(batch: &[Message], indices: &[usize]) -> HashSet<(String, i32)> {
    indices
        .iter()
        .map(|&i| (batch[i].topic.clone(), batch[i].partition))
        .collect()
}
