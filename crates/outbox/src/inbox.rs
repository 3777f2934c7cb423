//! The inbox, the outbox's mirror on the consuming side: a service records, in the same
//! transaction as an event's effects, the id of each event it applied. A redelivered or
//! replayed event is then recognised and changes nothing.
//!
//! The table (`processed_events`) is created by this crate's migrations.

use std::collections::HashSet;

use sqlx::PgConnection;
use uuid::Uuid;

/// Records `event_ids` as applied by `consumer`, in one statement, and returns those not
/// recorded before: the ones whose effects are still to be applied.
pub async fn record_new(
    tx: &mut PgConnection,
    consumer: &str,
    event_ids: &[Uuid],
) -> sqlx::Result<HashSet<Uuid>> {
    let fresh = sqlx::query_scalar::<_, Uuid>(
        "INSERT INTO processed_events (consumer, event_id)
         SELECT $1, e FROM unnest($2::uuid[]) AS e
         ON CONFLICT DO NOTHING RETURNING event_id",
    )
    .bind(consumer)
    .bind(event_ids)
    .fetch_all(tx)
    .await?;
    Ok(fresh.into_iter().collect())
}
