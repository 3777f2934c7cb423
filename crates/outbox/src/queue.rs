//! Queueing events: written into the `outbox` table inside the caller's business
//! transaction, published by the relay once it is committed.
//!
//! A service holds one [`Outbox`]. It collects a transaction's events in [`Events`]
//! (each with the trace it continues) and hands them to [`Outbox::commit`], which writes
//! them in one statement, commits, and wakes the relay. A service whose business write is
//! one statement (order-service's order) instead binds a [`Row`] into [`INSERT_ONE`] and
//! calls [`Outbox::committed`]; [`INSERT_ONE`] takes no lock, so it is for a key no other
//! transaction can be writing (a new order's id).

use events::{Envelope, Event, Topics, TraceContext};
use sqlx::{Postgres, Transaction};

use crate::Wake;

/// The namespace of the writers' slot locks (`pg_advisory_xact_lock(SLOT_LOCKS, slot)`).
const SLOT_LOCKS: i32 = 0x6f75_7462; // "outb"

/// The head of an insert of one outbox row; its values are a [`Row`]'s, in field order:
/// `… SELECT topic, key, payload, headers FROM …`.
pub const INSERT_ONE: &str = "INSERT INTO outbox (topic, message_key, payload, headers)";

/// A service's outbox: where its events go (its topics) and the relay to wake. Cheap to
/// clone.
#[derive(Clone)]
pub struct Outbox {
    topics: Topics,
    wake: Wake,
}

impl Outbox {
    pub fn new(topics: Topics) -> Self {
        Self {
            topics,
            wake: Wake::default(),
        }
    }

    /// The relay (and the notifier of other instances) this outbox wakes.
    pub fn wake(&self) -> Wake {
        self.wake.clone()
    }

    pub fn topics(&self) -> &Topics {
        &self.topics
    }

    /// An empty list of events for this outbox.
    pub fn events(&self) -> Events {
        Events {
            topics: self.topics.clone(),
            rows: Vec::new(),
        }
    }

    /// The one event `event`, continuing `trace`, as a row for [`INSERT_ONE`].
    pub fn row<P: Event>(
        &self,
        event: &Envelope<P>,
        trace: Option<&TraceContext>,
    ) -> Result<Row, serde_json::Error> {
        Row::new(&self.topics, event, trace)
    }

    /// Writes `events` into `tx` in one statement, commits `tx`, and wakes the relay.
    pub async fn commit(
        &self,
        mut tx: Transaction<'_, Postgres>,
        events: Events,
    ) -> Result<(), sqlx::Error> {
        insert(&mut tx, &events.rows).await?;
        tx.commit().await?;
        if !events.rows.is_empty() {
            self.committed();
        }
        Ok(())
    }

    /// Rows were committed to the outbox by a statement of the caller's ([`INSERT_ONE`]):
    /// publish them now.
    pub fn committed(&self) {
        self.wake.wake();
    }
}

/// The events of one transaction, in the order they are to be published.
pub struct Events {
    topics: Topics,
    rows: Vec<Row>,
}

impl Events {
    /// Adds `event`, bound for its type's topic under its own key, continuing `trace`.
    pub fn push<P: Event>(
        &mut self,
        event: &Envelope<P>,
        trace: Option<&TraceContext>,
    ) -> Result<(), serde_json::Error> {
        self.rows.push(Row::new(&self.topics, event, trace)?);
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

/// One event as the outbox stores it.
#[derive(Debug, Clone)]
pub struct Row {
    pub topic: String,
    pub key: String,
    /// The exact bytes to publish.
    pub payload: Vec<u8>,
    /// Header name → text value: the standard headers ([`events::headers`]), so tools
    /// can route without parsing, and the trace context's (`traceparent`,
    /// `x-request-id`), so the next service continues the same trace.
    pub headers: serde_json::Value,
}

impl Row {
    fn new<P: Event>(
        topics: &Topics,
        event: &Envelope<P>,
        trace: Option<&TraceContext>,
    ) -> Result<Self, serde_json::Error> {
        let mut headers: serde_json::Map<String, serde_json::Value> = events::headers::of(event)
            .into_iter()
            .map(|(name, value)| (name.to_owned(), value.into()))
            .collect();
        if let Some(trace) = trace {
            for (name, value) in trace.headers() {
                headers.insert(name.to_owned(), value.into());
            }
        }
        Ok(Self {
            topic: topics.for_event(P::TYPE).to_owned(),
            key: event.key(),
            payload: serde_json::to_vec(event)?,
            headers: headers.into(),
        })
    }
}

/// Inserts `rows` in one statement, in their order (ids are publication order).
///
/// It first takes, until the transaction ends, a lock on each slot its keys fall in
/// (in slot order, so two writers never wait on each other in a circle): two
/// transactions that write one key then commit in the order of their rows' ids, and the
/// relay, which sends a key's rows in id order, sends them in commit order too. At most
/// 64 locks, whatever the number of rows.
async fn insert(tx: &mut sqlx::PgConnection, rows: &[Row]) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let topics: Vec<&str> = rows.iter().map(|r| r.topic.as_str()).collect();
    let keys: Vec<&str> = rows.iter().map(|r| r.key.as_str()).collect();
    let payloads: Vec<&[u8]> = rows.iter().map(|r| r.payload.as_slice()).collect();
    let headers: Vec<&serde_json::Value> = rows.iter().map(|r| &r.headers).collect();
    // WITH ORDINALITY keeps the rows' order, so ids (publication order) follow it.
    sqlx::query(
        "WITH locked AS (
             SELECT pg_advisory_xact_lock($5, s)
             FROM (SELECT DISTINCT outbox_slot(k)::int AS s FROM unnest($2::text[]) AS k
                   ORDER BY 1) AS slots)
         INSERT INTO outbox (topic, message_key, payload, headers)
         SELECT t, k, p, h FROM unnest($1::text[], $2::text[], $3::bytea[], $4::jsonb[])
             WITH ORDINALITY AS r(t, k, p, h, n)
         WHERE (SELECT count(*) FROM locked) >= 0
         ORDER BY n",
    )
    .bind(topics)
    .bind(keys)
    .bind(payloads)
    .bind(headers)
    .bind(SLOT_LOCKS)
    .execute(tx)
    .await?;
    Ok(())
}
