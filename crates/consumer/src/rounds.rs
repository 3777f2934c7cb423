//! The retry rounds: the one place the retry, outage and dead-letter policy lives.
//!
//! A batch is handed to the handler until every message is applied or condemned:
//! poison, refused, or failed for a reason of its own `max_attempts` times. Two kinds of
//! retry are kept apart on purpose:
//! - an **outage** (the handler's database or Kafka is unreachable, or every message of
//!   a batch of two or more failed transiently at once) retries the same messages without
//!   limit: an outage is never a reason to dead-letter;
//! - an [`Outcome::Retry`] of some messages while others went through (this message's
//!   charge failed, say) retries only the messages that asked for it, up to
//!   `max_attempts`, then dead-letters them.
//!
//! A batch of one message that fails transiently says nothing about which of the two it
//! is. Instead of the first pause, the runner then waits that long for company: if more
//! messages come, they join the batch and the round is tried again, so that the others
//! tell an outage (they fail too) from that message's own failure (they go through).
//! With no company at all, it is that message's own failure: retried, then
//! dead-lettered — never a consumer stalled on one message.
//!
//! A batch the handler refuses as a whole ([`BatchError::Refused`]) is split in halves
//! until each refused message is alone and dead-lettered; the first half is applied
//! before the second, so the order within a partition holds.

use std::collections::HashMap;
use std::ops::Range;

use chrono::{DateTime, Utc};

use crate::dead_letter::DeadLetter;
use crate::runner::Runner;
use crate::{BatchError, BatchHandler, Failure, Message, Outcome, Pauses};

/// Where the messages of a batch stand between rounds.
struct Round {
    /// The indices still to apply; all of them in the first round.
    pending: Vec<usize>,
    attempt: u32,
    dead: Vec<DeadLetter>,
    first_failure: HashMap<usize, DateTime<Utc>>,
    pauses: Pauses,
}

impl<H: BatchHandler> Runner<H> {
    /// Applies `batch` through its rounds. Returns the messages to dead-letter, in batch
    /// order, or `None` if `stop` came first.
    pub(crate) async fn apply(&mut self, batch: &mut Vec<Message>) -> Option<Vec<DeadLetter>> {
        let mut round = Round {
            pending: (0..batch.len()).collect(),
            attempt: 1,
            dead: Vec::new(),
            first_failure: HashMap::new(),
            pauses: self.retry_policy().pauses(),
        };
        let mut company_sought = false;
        loop {
            let outcomes = if round.pending.len() == batch.len() {
                self.attempt_all(batch, round.attempt).await?
            } else {
                let subset: Vec<Message> =
                    round.pending.iter().map(|&i| batch[i].clone()).collect();
                self.attempt_all(&subset, round.attempt).await?
            };
            // Paused already, waiting for company that did not come.
            let mut waited = false;
            if !company_sought && batch.len() == 1 && matches!(outcomes[0], Outcome::Retry(_)) {
                company_sought = true;
                if self.seek_company(batch, &mut round).await? {
                    continue;
                }
                waited = true;
            }
            let again = self.judge(batch, &mut round, outcomes);
            if again.is_empty() {
                round.dead.sort_by_key(|d| d.index);
                return Some(round.dead);
            }
            if !waited && !self.group.hold(round.pauses.next_delay(), &self.stop).await {
                return None;
            }
            round.pending = again;
            round.attempt += 1;
        }
    }

    /// A lone message failed: waits the next pause for more messages. `Some(true)` if
    /// some came (they join the batch, and the round starts again with all of them).
    async fn seek_company(&mut self, batch: &mut Vec<Message>, round: &mut Round) -> Option<bool> {
        let wait = round.pauses.next_delay();
        let limit = self.config.batch_size;
        let came = self.group.top_up(batch, wait, limit, &self.stop).await?;
        if came == 0 {
            return Some(false);
        }
        self.count_consumed(&batch[batch.len() - came..]);
        tracing::debug!(size = batch.len(), "a lone message failed; company came");
        round.pending = (0..batch.len()).collect();
        Some(true)
    }

    /// Settles what the round's outcomes settle; returns the indices to try again.
    fn judge(
        &mut self,
        batch: &[Message],
        round: &mut Round,
        outcomes: Vec<Outcome>,
    ) -> Vec<usize> {
        let now = Utc::now();
        let mut again = Vec::new();
        for (&index, outcome) in round.pending.iter().zip(outcomes) {
            let (failure, retryable) = match outcome {
                Outcome::Applied => {
                    self.count_settled(&batch[index], "consumer_applied_total");
                    continue;
                }
                Outcome::Duplicate => {
                    self.count_settled(&batch[index], "consumer_duplicates_total");
                    continue;
                }
                Outcome::DeadLetter(failure) => (failure, false),
                Outcome::Retry(failure) => (failure, true),
            };
            let first = *round.first_failure.entry(index).or_insert(now);
            if retryable && round.attempt < self.config.retry.max_attempts {
                self.count_retry(&batch[index], &failure, round.attempt);
                again.push(index);
            } else {
                round.dead.push(DeadLetter {
                    index,
                    failure,
                    attempts: round.attempt,
                    first_failure: first,
                    last_failure: now,
                });
            }
        }
        again
    }

    /// One attempt at every message of `messages`, splitting a refused batch until each
    /// refused message is alone and answered with a dead letter.
    async fn attempt_all(&mut self, messages: &[Message], round: u32) -> Option<Vec<Outcome>> {
        let mut outcomes = vec![Outcome::Applied; messages.len()];
        let mut parts: Vec<Range<usize>> = Vec::with_capacity(8);
        parts.push(0..messages.len());
        while let Some(part) = parts.pop() {
            match self
                .attempt_through_outages(&messages[part.clone()], round)
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
        Some(outcomes)
    }

    /// One attempt at `messages`, repeated with backoff while the handler reports an
    /// outage — or, on the first round, while every one of two or more messages asks for
    /// a retry: a failure that all of them share is an outage of what they depend on
    /// (one message alone is no such evidence). `Err` carries the failure of a batch the
    /// handler refused. An attempt in flight is never cut off (it may be committing);
    /// `stop` only interrupts the pause between attempts, and then `None` is returned.
    async fn attempt_through_outages(
        &mut self,
        messages: &[Message],
        round: u32,
    ) -> Option<Result<Vec<Outcome>, Failure>> {
        let mut pauses = self.retry_policy().pauses();
        loop {
            let reason = match self.handler.handle(messages).await {
                Ok(outcomes) => {
                    let outcomes = answer_for_every_message(outcomes, messages.len());
                    let shared = round == 1
                        && outcomes.len() > 1
                        && outcomes.iter().all(|o| matches!(o, Outcome::Retry(_)));
                    match outcomes.first() {
                        Some(Outcome::Retry(failure)) if shared => format!(
                            "every message of the batch failed: {}: {}",
                            failure.class, failure.message
                        ),
                        _ => return Some(Ok(outcomes)),
                    }
                }
                Err(BatchError::Refused(failure)) => return Some(Err(failure)),
                Err(BatchError::Outage(reason)) => reason,
            };
            self.stats.outage_retries += 1;
            metrics::counter!("consumer_outage_retries_total").increment(1);
            tracing::warn!(error = %reason, "batch failed: outage; retrying");
            if !self.group.hold(pauses.next_delay(), &self.stop).await {
                return None;
            }
        }
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
            trace_id = message.trace_id(), class = %failure.class, reason = %failure.message,
            attempt, "message failed; retrying"
        );
    }
}

/// A handler must answer for every message; one that does not is a bug, and the
/// messages it left out are treated as applied rather than lost to a dead-letter topic by
/// mistake.
fn answer_for_every_message(mut outcomes: Vec<Outcome>, expected: usize) -> Vec<Outcome> {
    if outcomes.len() != expected {
        tracing::error!(
            expected,
            got = outcomes.len(),
            "handler returned the wrong number of outcomes"
        );
        outcomes.resize(expected, Outcome::Applied);
    }
    outcomes
}
