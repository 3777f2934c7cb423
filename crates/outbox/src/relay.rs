//! The relay: publishes pending outbox rows to Kafka and marks them sent only after
//! Kafka acknowledged them.

use std::time::Duration;

use kafka::{KafkaError, Record};
use rdkafka::producer::FutureProducer;
use rdkafka::types::RDKafkaErrorCode;
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

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
        source: KafkaError,
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
            let record = Record {
                key: Some(key.clone().into_bytes()),
                payload: Some(payload.clone()),
                headers: kafka_headers(headers),
                ..Record::default()
            };
            let delivery = self
                .producer
                .send_result(record.to_send(topic))
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

/// The headers of an outbox row (a JSON object of name → text) as Kafka headers.
fn kafka_headers(headers: &serde_json::Value) -> Vec<(String, Vec<u8>)> {
    headers
        .as_object()
        .map(|map| {
            map.iter()
                .map(|(name, value)| {
                    let text = value
                        .as_str()
                        .map_or_else(|| value.to_string(), str::to_owned);
                    (name.clone(), text.into_bytes())
                })
                .collect()
        })
        .unwrap_or_default()
}
