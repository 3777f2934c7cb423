//! Exactly-once effects across PostgreSQL and Kafka, both ways:
//!
//! - the **outbox** ([`Outbox`]): a service writes the events it publishes into its
//!   `outbox` table in the same transaction as its business rows ([`Outbox::commit`]),
//!   and the [`Relay`] publishes them to Kafka, marking them sent only after Kafka
//!   acknowledged them; [`backlog`] is what waits;
//! - the **inbox** ([`inbox`]): a consumer records the ids of the events it applied in
//!   `processed_events`, in the same transaction as their effects, so a redelivery
//!   changes nothing.
//!
//! This crate owns both tables: their schema is in its `migrations/`, every service runs
//! them through [`migrator`] beside its own, and no other crate writes SQL against them.
//!
//! The relay's promises ([`Relay`], [`leases`]):
//! - **Nothing lost**: a row stays pending until Kafka acknowledged it (`acks=all`,
//!   idempotent producer); a crash before the mark means it is sent again, and consumers
//!   are idempotent.
//! - **Partitions independently**: rows are streamed, each marked as its acknowledgement
//!   arrives; a partition whose leader cannot be reached delays only its keys.
//! - **Order per key, with any number of relays**: a key's next row is sent only after the
//!   previous one is acknowledged; every row of a key is in one slot (a hash of the key),
//!   published by the one relay holding that slot's lease; writers of one key commit in id
//!   order (`Outbox::commit` locks the key's slot until commit).
//! - **Several relays in parallel, none a single point**: slots are shared out among the
//!   relays alive; one that freezes or dies delays its slots for at most its lease
//!   (`RelayConfig::lease`, 15 s), then the others take them. No lock or transaction is
//!   held across Kafka I/O.
//! - **Prompt, without slowing the writers**: a service wakes its own relay in-process
//!   after committing outbox rows, and tells the relays of other instances with a
//!   `NOTIFY outbox` sent outside the business transaction ([`Wake`]); relays also poll
//!   as a fallback.
//! - **No stall**: a row Kafka refuses for good is **parked** with its error ([`parked`]):
//!   rows of other keys go on, later rows of its key wait behind it, an ERROR line counts
//!   the parked rows, and `outbox parked` / `outbox requeue` list them and put them back
//!   in line once the cause is fixed.
//! - **Bounded tables**: [`cleanup`] removes published rows and old inbox records.

mod backlog;
pub mod cleanup;
pub mod inbox;
pub mod leases;
pub mod parked;
mod queue;
mod relay;
mod wake;

use futures::future::BoxFuture;
use sqlx::error::BoxDynError;
use sqlx::migrate::{MigrateError, Migration, MigrationSource, Migrator};

pub use backlog::{backlog, Backlog};
pub use cleanup::{Cleanup, RetentionSettings};
pub use queue::{Events, Outbox, Row, INSERT_ONE};
pub use relay::{Published, Relay, RelayConfig, RelayError};
pub use wake::Wake;

/// The schema of the tables this crate owns (`outbox`, `processed_events`). Versions
/// start at 10001 so they never meet a service's own (1, 2, …).
pub static SHARED_TABLES: Migrator = sqlx::migrate!("./migrations");

/// A service's migrator: the shared tables first, then the service's own migrations.
pub async fn migrator(own: &Migrator) -> Result<Migrator, MigrateError> {
    let all = SHARED_TABLES.iter().chain(own.iter()).cloned().collect();
    Migrator::new(InOrder(all)).await
}

/// Migrations already resolved, taken in the order given.
#[derive(Debug)]
struct InOrder(Vec<Migration>);

impl<'s> MigrationSource<'s> for InOrder {
    fn resolve(self) -> BoxFuture<'s, Result<Vec<Migration>, BoxDynError>> {
        Box::pin(async move { Ok(self.0) })
    }
}
