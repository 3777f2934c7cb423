//! The consumer side of applying each event once: a service records, in the same
//! transaction as the event's effects, the ids of the events it applied. A redelivered or
//! replayed event is then recognised and changes nothing.
//!
//! Each service's migrations create the table:
//! `processed_events (consumer TEXT, event_id UUID, processed_at TIMESTAMPTZ, PRIMARY KEY (consumer, event_id))`.

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
