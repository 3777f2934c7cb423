//! The outbox relay: publishes the events a service wrote into its `outbox` table, in the
//! same transaction as its business rows, to Kafka — and marks them sent only after Kafka
//! acknowledged them.
//!
//! - **Nothing lost**: a row stays pending until every record of its batch is acknowledged
//!   (`acks=all`, idempotent producer); a crash before the mark means it is sent again,
//!   and consumers are idempotent.
//! - **Order per key kept, with any number of relays**: a batch is taken under a
//!   transaction-scoped advisory lock, so only one relay publishes at a time, in `id`
//!   order; the others wait for the next turn. Within a batch, the idempotent producer
//!   keeps the order of each partition.
//! - **Prompt**: the relay wakes on `LISTEN outbox` (the table's insert trigger notifies)
//!   and polls as a fallback.
//!
//! The table it expects (each service creates it in its migrations):
//! `outbox (id BIGSERIAL PRIMARY KEY, topic TEXT, message_key TEXT, payload BYTEA,
//! headers JSONB, created_at TIMESTAMPTZ, published_at TIMESTAMPTZ)`.

use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

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
    /// An event in its envelope, with the standard headers (`event-id`, `event-type`,
    /// `schema-version`, `correlation-id`) so tools can route without parsing.
    pub fn event<P: serde::Serialize>(
        topic: &str,
        key: &str,
        event: &events::Envelope<P>,
    ) -> Result<Self, serde_json::Error> {
        Ok(Self {
            topic: topic.to_owned(),
            key: key.to_owned(),
            payload: serde_json::to_vec(event)?,
            headers: serde_json::json!({
                "event-id": event.event_id.to_string(),
                "event-type": event.event_type.name(),
                "schema-version": event.schema_version.to_string(),
                "correlation-id": event.correlation_id.to_string(),
            }),
        })
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

/// Key of the advisory lock that makes relays take turns.
const RELAY_LOCK: i64 = 0x6f75_7462_6f78; // "outbox"

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("outbox database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("publishing outbox row {id} to {topic}: {source}")]
    Publish {
        id: i64,
        topic: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
}

/// How a relay behaves.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Rows taken per batch (one transaction, one round of acknowledgements).
    pub batch_size: i64,
    /// Fallback poll interval when no notification arrives.
    pub poll_interval: Duration,
    /// Wait after a failed batch before the next try.
    pub retry_delay: Duration,
    /// Bound on waiting for Kafka's acknowledgement of one record.
    pub send_timeout: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            batch_size: 500,
            poll_interval: Duration::from_millis(500),
            retry_delay: Duration::from_secs(1),
            send_timeout: Duration::from_secs(30),
        }
    }
}

pub struct Relay {
    pool: PgPool,
    producer: FutureProducer,
    config: RelayConfig,
}

impl Relay {
    /// `producer` should be created with `acks=all` and `enable.idempotence=true`.
    pub fn new(pool: PgPool, producer: FutureProducer, config: RelayConfig) -> Self {
        Self {
            pool,
            producer,
            config,
        }
    }

    /// Publishes until `stop` is cancelled. Errors are logged and retried: an outage of
    /// Kafka or PostgreSQL delays events, it never drops them.
    pub async fn run(self, stop: CancellationToken) {
        let mut listener = match PgListener::connect_with(&self.pool).await {
            Ok(mut listener) => match listener.listen("outbox").await {
                Ok(()) => Some(listener),
                Err(e) => {
                    tracing::warn!(error = %e, "LISTEN outbox failed; polling only");
                    None
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "no LISTEN connection; polling only");
                None
            }
        };
        while !stop.is_cancelled() {
            match self.publish_batch().await {
                // A full batch: more may be waiting.
                Ok(n) if n as i64 == self.config.batch_size => continue,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "outbox batch failed; will retry");
                    tokio::select! {
                        () = stop.cancelled() => break,
                        () = tokio::time::sleep(self.config.retry_delay) => {}
                    }
                    continue;
                }
            }
            let wake = async {
                match listener.as_mut() {
                    Some(l) => {
                        let _ = l.recv().await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = stop.cancelled() => break,
                () = wake => {}
                () = tokio::time::sleep(self.config.poll_interval) => {}
            }
        }
    }

    /// Publishes one batch of pending rows, oldest first, and marks them published.
    /// Returns how many were published (0 when none were pending or another relay had
    /// the turn).
    pub async fn publish_batch(&self) -> Result<usize, RelayError> {
        let mut tx = self.pool.begin().await?;
        let turn: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
            .bind(RELAY_LOCK)
            .fetch_one(&mut *tx)
            .await?;
        if !turn {
            return Ok(0);
        }
        let rows: Vec<(i64, String, String, Vec<u8>, serde_json::Value)> = sqlx::query_as(
            "SELECT id, topic, message_key, payload, headers FROM outbox
             WHERE published_at IS NULL ORDER BY id LIMIT $1",
        )
        .bind(self.config.batch_size)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            return Ok(0);
        }

        // Queue every record first, in id order, then wait for all acknowledgements: one
        // round of waiting per batch, not per event. Any failure rolls the batch back and
        // every row of it stays pending.
        let mut deliveries = Vec::with_capacity(rows.len());
        for (id, topic, key, payload, headers) in &rows {
            let publish_error = |source| RelayError::Publish {
                id: *id,
                topic: topic.clone(),
                source,
            };
            let mut kafka_headers = OwnedHeaders::new();
            if let Some(map) = headers.as_object() {
                for (name, value) in map {
                    let value = value
                        .as_str()
                        .map_or_else(|| value.to_string(), str::to_owned);
                    kafka_headers = kafka_headers.insert(Header {
                        key: name,
                        value: Some(value.as_bytes()),
                    });
                }
            }
            let record = FutureRecord::to(topic)
                .key(key)
                .payload(payload)
                .headers(kafka_headers);
            let delivery = self
                .producer
                .send_result(record)
                .map_err(|(source, _)| publish_error(source))?;
            deliveries.push((*id, topic, delivery));
        }
        for (id, topic, delivery) in deliveries {
            let failed = |source| RelayError::Publish {
                id,
                topic: topic.clone(),
                source,
            };
            match tokio::time::timeout(self.config.send_timeout, delivery).await {
                Ok(Ok(Ok(_))) => {}
                Ok(Ok(Err((source, _)))) => return Err(failed(source)),
                Ok(Err(_)) => return Err(failed(KafkaError::Canceled)),
                Err(_) => {
                    return Err(failed(KafkaError::MessageProduction(
                        RDKafkaErrorCode::MessageTimedOut,
                    )))
                }
            }
        }

        let ids: Vec<i64> = rows.iter().map(|(id, ..)| *id).collect();
        sqlx::query("UPDATE outbox SET published_at = now() WHERE id = ANY($1)")
            .bind(&ids)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        tracing::debug!(count = ids.len(), "outbox batch published");
        Ok(ids.len())
    }
}
