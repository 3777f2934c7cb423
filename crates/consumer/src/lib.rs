//! The consumer runner shared by every service: *how* messages are fetched, retried,
//! dead-lettered and committed. *What* to do with them is a [`BatchHandler`].
//!
//! Where to look:
//!
//! | module | its one job |
//! | --- | --- |
//! | [`handler`] | what a handler sees and answers: [`Message`], [`Outcome`], [`BatchError`], [`BatchHandler`] |
//! | `runner` | the loop and its offsets: [`Runner`], [`run`] |
//! | `rounds` | the retry rounds — the one place the retry, outage and dead-letter policy lives |
//! | `group` | group membership: the rdkafka context, taking batches, pause and resume, closing |
//! | [`dead_letter`] | the dead-letter policy: the writer and the guard, after arroyo |
//! | `history` | the guard's memory across restarts, read from the dead-letter topics |
//! | [`class`] | every failure class, the `dlt-error-class` of dead letters |
//! | `retry` | pauses between attempts ([`RetryPolicy`]) |
//! | `settings` | [`ConsumerConfig`], and the [`ConsumerSettings`] of every service's command line |
//! | `report` | [`Stats`] when it stops, [`ConsumerError`] when it halts |
//!
//! The promises:
//! - **Batches, naturally**: the runner waits for one message, then takes what is ready
//!   now, up to [`ConsumerConfig::batch_size`] (and waits [`ConsumerConfig::batch_wait`]
//!   for more, if set). Under load, batches grow by themselves while the previous one is
//!   applied. The handler is meant to apply a whole batch in one database transaction.
//! - **At-least-once, in order per partition**: offsets are stored only after every
//!   message of the batch is settled — applied by the handler (after its database
//!   commit) or acknowledged on a dead-letter topic. librdkafka commits stored offsets in
//!   the background; on shutdown they are committed synchronously. A crash in between
//!   redelivers the batch, so handlers must be idempotent.
//! - **Every failure has a class, and each class its treatment**: see `rounds` and
//!   `docs/dead-letters.md`.
//! - **Membership through long work**: while a batch waits between attempts (an outage,
//!   retries), the runner pauses its partitions and keeps polling, so the group does not
//!   evict it however long the outage lasts.
//! - **The dead-letter policy** ([`DeadLetterPolicy`], passed in as one value): dead
//!   letters keep the original key, bytes and headers, add diagnostic `dlt-*` headers,
//!   and are acknowledged before the offsets are stored; a dead letter Kafka refuses for
//!   good stops the consumer, naming the record and why. Its guard stops the consumer
//!   when more than [`DeadLetterLimit::max_ratio`] of the recent messages would be
//!   dead-lettered.
//! - **Counts by error class** of retries and dead letters are logged as they change and
//!   returned in [`Stats`].

pub mod class;
pub mod dead_letter;
mod group;
pub mod handler;
mod history;
mod report;
mod retry;
mod rounds;
mod runner;
mod settings;

pub use dead_letter::{DeadLetterLimit, DeadLetterPolicy};
pub use handler::{BatchError, BatchHandler, Failure, Message, Outcome};
pub use kafka::Record;
pub use report::{ConsumerError, Stats};
pub use retry::{Pauses, RetryPolicy};
pub use runner::{run, Runner};
pub use settings::{ConsumerConfig, ConsumerSettings};
