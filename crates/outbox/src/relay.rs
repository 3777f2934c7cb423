//! The relay: publishes pending outbox rows to Kafka and marks each one sent only after
//! Kafka acknowledged it. A row Kafka refuses for good is parked, not retried forever.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use kafka::{Fault, KafkaError, Record};
use rdkafka::producer::FutureProducer;
use rdkafka::types::RDKafkaErrorCode;
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::Wake;

/// Key of the advisory lock that makes relays take turns.
const RELAY_LOCK: i64 = 0x6f75_7462_6f78; // "outbox"

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("outbox database: {0}")]
    Database(#[from] sqlx::Error),
}

/// How a relay behaves.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Rows taken per batch (one transaction, one round of acknowledgements).
    pub batch_size: i64,
    /// Fallback poll interval when no notification arrives.
    pub poll_interval: Duration,
    /// Wait after a batch in which Kafka could not be reached.
    pub retry_delay: Duration,
    /// Bound on waiting for Kafka's acknowledgement of one record.
    pub send_timeout: Duration,
    /// Attempts a row gets when Kafka answers with an error that is neither an outage
    /// nor a plain refusal, before it is parked.
    pub max_attempts: i32,
    /// How often the count of parked rows is logged again while there are any.
    pub parked_reminder: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            batch_size: 500,
            poll_interval: Duration::from_millis(500),
            retry_delay: Duration::from_secs(1),
            send_timeout: Duration::from_secs(30),
            max_attempts: 5,
            parked_reminder: Duration::from_secs(60),
        }
    }
}

/// What one batch did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Published {
    /// Rows taken from the table.
    pub taken: usize,
    /// Rows Kafka acknowledged, now marked published.
    pub published: usize,
    /// Rows parked in this batch.
    pub parked: usize,
    /// Rows left pending because Kafka could not be reached.
    pub delayed: usize,
}

/// A pending row, as the relay reads it.
#[derive(sqlx::FromRow)]
struct Pending {
    id: i64,
    topic: String,
    message_key: String,
    payload: Vec<u8>,
    headers: serde_json::Value,
    attempts: i32,
}

pub struct Relay {
    pool: PgPool,
    producer: FutureProducer,
    config: RelayConfig,
    /// Woken in-process by this service after it commits outbox rows.
    wake: Wake,
}

impl Relay {
    /// `producer` should be the platform's reliable producer (`acks=all`, idempotent).
    pub fn new(pool: PgPool, producer: FutureProducer, config: RelayConfig) -> Self {
        Self {
            pool,
            producer,
            config,
            wake: Wake::default(),
        }
    }

    /// Also wakes when `wake` is woken (the service committed outbox rows), besides
    /// `NOTIFY outbox` and the poll.
    pub fn waking_on(mut self, wake: Wake) -> Self {
        self.wake = wake;
        self
    }

    /// Publishes until `stop` is cancelled. Errors are logged and retried: an outage of
    /// Kafka or PostgreSQL delays events, it never drops them. While rows are parked,
    /// their count is logged at ERROR every `parked_reminder`.
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
        let mut reminded = Instant::now();
        let mut parked_seen = self.remind_parked().await;
        while !stop.is_cancelled() {
            // Notifications already here are about rows this batch will see: one batch
            // answers them all, instead of one (mostly empty) batch each.
            if let Some(listener) = listener.as_mut() {
                while listener.next_buffered().is_some() {}
            }
            let outcome = self.publish_batch().await;
            let parked_now = matches!(&outcome, Ok(p) if p.parked > 0);
            if parked_now || (parked_seen && reminded.elapsed() >= self.config.parked_reminder) {
                parked_seen = self.remind_parked().await;
                reminded = Instant::now();
            }
            match outcome {
                Ok(p) if p.delayed > 0 => {
                    tokio::select! {
                        () = stop.cancelled() => break,
                        () = tokio::time::sleep(self.config.retry_delay) => {}
                    }
                    continue;
                }
                // A full batch: more may be waiting.
                Ok(p) if p.taken as i64 == self.config.batch_size => continue,
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
                () = self.wake.relay.notified() => {}
                () = tokio::time::sleep(self.config.poll_interval) => {}
            }
        }
    }

    /// Logs the number of parked rows at ERROR if there are any; `true` if there are.
    async fn remind_parked(&self) -> bool {
        match crate::parked::count(&self.pool).await {
            Ok(0) => false,
            Ok(count) => {
                tracing::error!(
                    count,
                    "outbox rows are parked: Kafka refused them; later events of their keys wait \
                     behind them. List them with `outbox parked`, fix the cause, then `outbox requeue`"
                );
                true
            }
            Err(e) => {
                tracing::debug!(error = %e, "counting parked outbox rows");
                false
            }
        }
    }

    /// Publishes one batch of pending rows, oldest first, and marks each one that Kafka
    /// acknowledged as published. Per-key order holds: a batch takes only the oldest
    /// pending row of each key, and no row whose key has an older row parked.
    ///
    /// A row Kafka refuses for good (too large, no such topic, not authorized) is parked
    /// at once, with the error; one that fails otherwise is parked after
    /// `max_attempts`; a row that could not reach Kafka stays pending as it was.
    pub async fn publish_batch(&self) -> Result<Published, RelayError> {
        let mut tx = self.pool.begin().await?;
        let turn: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
            .bind(RELAY_LOCK)
            .fetch_one(&mut *tx)
            .await?;
        if !turn {
            return Ok(Published::default());
        }
        let taken: Vec<Pending> = sqlx::query_as(
            "SELECT id, topic, message_key, payload, headers, attempts FROM outbox o
             WHERE published_at IS NULL AND parked_at IS NULL
               AND NOT EXISTS (SELECT 1 FROM outbox p
                               WHERE p.parked_at IS NOT NULL AND p.published_at IS NULL
                                 AND p.message_key = o.message_key AND p.id < o.id)
             ORDER BY id LIMIT $1",
        )
        .bind(self.config.batch_size)
        .fetch_all(&mut *tx)
        .await?;
        if taken.is_empty() {
            return Ok(Published::default());
        }
        // The oldest row of each key only: a later one waits for the next batch, so it can
        // never overtake one that fails.
        let mut keys = HashSet::new();
        let rows: Vec<&Pending> = taken
            .iter()
            .filter(|row| keys.insert(row.message_key.as_str()))
            .collect();

        // Queue every record first, in id order, then wait for all acknowledgements: one
        // round of waiting per batch, not per event.
        let sending = std::time::Instant::now();
        let mut deliveries = Vec::with_capacity(rows.len());
        for row in &rows {
            let record = Record {
                key: Some(row.message_key.clone().into_bytes()),
                payload: Some(row.payload.clone()),
                headers: kafka_headers(&row.headers),
                ..Record::default()
            };
            deliveries.push(
                self.producer
                    .send_result(record.to_send(&row.topic))
                    .map_err(|(e, _)| e),
            );
        }
        let mut published = Vec::new();
        let mut failed: Vec<(&Pending, KafkaError)> = Vec::new();
        for (row, delivery) in rows.iter().zip(deliveries) {
            let result = match delivery {
                Ok(delivery) => {
                    match tokio::time::timeout(self.config.send_timeout, delivery).await {
                        Ok(Ok(Ok(_))) => Ok(()),
                        Ok(Ok(Err((e, _)))) => Err(e),
                        Ok(Err(_)) => Err(KafkaError::Canceled),
                        Err(_) => Err(KafkaError::MessageProduction(
                            RDKafkaErrorCode::MessageTimedOut,
                        )),
                    }
                }
                Err(e) => Err(e),
            };
            match result {
                Ok(()) => {
                    metrics::counter!("outbox_published_total", "topic" => row.topic.clone())
                        .increment(1);
                    published.push(row.id);
                }
                Err(e) => failed.push((row, e)),
            }
        }
        // From the first send to the last acknowledgement.
        metrics::histogram!("outbox_publish_duration_seconds")
            .record(sending.elapsed().as_secs_f64());

        sqlx::query("UPDATE outbox SET published_at = now() WHERE id = ANY($1)")
            .bind(&published)
            .execute(&mut *tx)
            .await?;
        let mut outcome = Published {
            taken: rows.len(),
            published: published.len(),
            ..Published::default()
        };
        for (row, error) in failed {
            let park = match kafka::fault_of(&error) {
                Fault::Refused => true,
                Fault::Outage if is_unreachable(&error) => {
                    outcome.delayed += 1;
                    tracing::warn!(id = row.id, topic = %row.topic, key = %row.message_key, %error, "outbox row not published; Kafka unreachable, will retry");
                    continue;
                }
                Fault::Outage => row.attempts + 1 >= self.config.max_attempts,
            };
            sqlx::query(
                "UPDATE outbox SET attempts = attempts + 1, last_error = $2,
                        parked_at = CASE WHEN $3 THEN now() END
                 WHERE id = $1",
            )
            .bind(row.id)
            .bind(error.to_string())
            .bind(park)
            .execute(&mut *tx)
            .await?;
            if park {
                outcome.parked += 1;
                metrics::counter!("outbox_parked_total", "topic" => row.topic.clone()).increment(1);
                tracing::error!(
                    id = row.id, topic = %row.topic, key = %row.message_key, %error,
                    attempts = row.attempts + 1,
                    "outbox row parked: Kafka will not take it; later events of its key wait behind it"
                );
            } else {
                tracing::warn!(id = row.id, topic = %row.topic, key = %row.message_key, %error, attempts = row.attempts + 1, "outbox row not published; will retry");
            }
        }
        tx.commit().await?;
        tracing::debug!(?outcome, "outbox batch");
        Ok(outcome)
    }
}

/// Errors that say nothing about the row: Kafka was not reached, or not in time.
fn is_unreachable(error: &KafkaError) -> bool {
    use RDKafkaErrorCode as C;
    matches!(error, KafkaError::Canceled)
        || matches!(
            error.rdkafka_error_code(),
            Some(
                C::MessageTimedOut
                    | C::RequestTimedOut
                    | C::AllBrokersDown
                    | C::BrokerTransportFailure
                    | C::NotEnoughReplicas
                    | C::NotEnoughReplicasAfterAppend
                    | C::LeaderNotAvailable
                    | C::NotLeaderForPartition
                    | C::QueueFull
            )
        )
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
