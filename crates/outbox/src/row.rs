//! Writing events into the outbox, inside the caller's business transaction.

use events::{Envelope, Event, Topics};

/// One event to publish, as stored in the outbox table.
#[derive(Debug, Clone)]
pub struct OutboxRow {
    pub topic: String,
    pub key: String,
    /// The exact bytes to publish.
    pub payload: Vec<u8>,
    /// Header name → text value.
    pub headers: serde_json::Value,
}

impl OutboxRow {
    /// An event in its envelope, bound for its type's topic under its own key, with the
    /// standard headers ([`events::headers`]) so tools can route without parsing.
    pub fn event<P: Event>(
        topics: &Topics,
        event: &Envelope<P>,
    ) -> Result<Self, serde_json::Error> {
        let headers: serde_json::Map<String, serde_json::Value> = events::headers::of(event)
            .into_iter()
            .map(|(name, value)| (name.to_owned(), value.into()))
            .collect();
        Ok(Self {
            topic: topics.for_event(P::TYPE).to_owned(),
            key: event.key(),
            payload: serde_json::to_vec(event)?,
            headers: headers.into(),
        })
    }

    /// Adds the trace context's headers (`traceparent`, `x-request-id`), so the next
    /// service continues the same trace.
    pub fn traced(mut self, trace: Option<&events::TraceContext>) -> Self {
        if let (Some(trace), Some(headers)) = (trace, self.headers.as_object_mut()) {
            for (name, value) in trace.headers() {
                headers.insert(name.to_owned(), value.into());
            }
        }
        self
    }
}

/// Queues `rows` for publication inside the caller's transaction, in one statement.
pub async fn enqueue(tx: &mut sqlx::PgConnection, rows: &[OutboxRow]) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let topics: Vec<&str> = rows.iter().map(|r| r.topic.as_str()).collect();
    let keys: Vec<&str> = rows.iter().map(|r| r.key.as_str()).collect();
    let payloads: Vec<&[u8]> = rows.iter().map(|r| r.payload.as_slice()).collect();
    let headers: Vec<&serde_json::Value> = rows.iter().map(|r| &r.headers).collect();
    // WITH ORDINALITY keeps the rows' order, so ids (publication order) follow it.
    sqlx::query(
        "INSERT INTO outbox (topic, message_key, payload, headers)
         SELECT t, k, p, h FROM unnest($1::text[], $2::text[], $3::bytea[], $4::jsonb[])
             WITH ORDINALITY AS r(t, k, p, h, n)
         ORDER BY n",
    )
    .bind(topics)
    .bind(keys)
    .bind(payloads)
    .bind(headers)
    .execute(tx)
    .await?;
    Ok(())
}
