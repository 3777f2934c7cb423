//! The relay: publishes pending outbox rows to Kafka, streaming, and marks each one sent
//! only after Kafka acknowledged it. A row Kafka refuses for good is parked, not retried
//! forever.
//!
//! - **Partitions independently**: every row is its own send; rows are in flight for every
//!   partition whose leader answers, and each is marked published (in small statements,
//!   every few milliseconds) as its acknowledgement arrives. A partition that cannot be
//!   reached delays only the keys that hash to it.
//! - **Order per key**: a key's next row is sent only once the previous one is
//!   acknowledged; a hot key goes on at the speed of its acknowledgements, not one row per
//!   round. Across relays, every row of a key is in one slot ([`crate::leases`]), which one
//!   relay holds at a time. Across writers, `Outbox::commit` takes a lock on each key it
//!   writes until its transaction ends, so a key's rows commit in the order of their ids.
//! - **No lock across Kafka I/O**: a relay holds leases with an expiry, not a transaction;
//!   one that freezes delays only its slots, for at most its lease.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant, SystemTime};

use events::spans::{Attribute, Kind};
use events::trace::TRACEPARENT;
use events::TraceContext;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use kafka::{Fault, KafkaError, Record};
use rdkafka::producer::FutureProducer;
use rdkafka::types::RDKafkaErrorCode;
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::leases::Leases;
use crate::Wake;

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("outbox database: {0}")]
    Database(#[from] sqlx::Error),
}

/// How a relay behaves.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Most rows read from the table at once.
    pub batch_size: i64,
    /// Fallback poll interval when no notification arrives.
    pub poll_interval: Duration,
    /// Wait before a key whose row could not reach Kafka is tried again.
    pub retry_delay: Duration,
    /// Bound on waiting for Kafka's acknowledgement of one record.
    pub send_timeout: Duration,
    /// Attempts a row gets when Kafka answers with an error that is neither an outage
    /// nor a plain refusal, before it is parked.
    pub max_attempts: i32,
    /// How often the count of parked rows is logged again while there are any.
    pub parked_reminder: Duration,
    /// How long a relay's hold on its slots lasts unless renewed: the longest a frozen
    /// relay delays its slots.
    pub lease: Duration,
    /// Most rows in flight at once.
    pub max_in_flight: usize,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            batch_size: 1000,
            poll_interval: Duration::from_millis(500),
            retry_delay: Duration::from_secs(1),
            send_timeout: Duration::from_secs(30),
            max_attempts: 5,
            parked_reminder: Duration::from_secs(60),
            lease: Duration::from_secs(15),
            max_in_flight: 10_000,
        }
    }
}

/// What [`Relay::publish_pending`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Published {
    /// Rows taken from the table.
    pub taken: usize,
    /// Rows Kafka acknowledged, now marked published.
    pub published: usize,
    /// Rows parked.
    pub parked: usize,
    /// Rows left pending because Kafka could not be reached.
    pub delayed: usize,
}

/// A pending row, as the relay reads it.
#[derive(Debug, Clone, sqlx::FromRow)]
struct Pending {
    id: i64,
    slot: i16,
    topic: String,
    message_key: String,
    payload: Vec<u8>,
    headers: serde_json::Value,
    attempts: i32,
    /// The relay's own hop of the row's trace, once sent.
    #[sqlx(skip)]
    hop: Option<TraceContext>,
}

/// A row's send, with its result.
type Delivery = BoxFuture<'static, (Pending, Instant, Result<(), KafkaError>)>;

pub struct Relay {
    pool: PgPool,
    producer: FutureProducer,
    config: RelayConfig,
    /// Woken in-process by this service after it commits outbox rows.
    wake: Wake,
    leases: Leases,
    /// Rows read and not sent yet, by id (the order to send them in).
    queued: BTreeMap<i64, Pending>,
    /// Keys with a row in flight (or waiting to be tried again), and until when.
    busy: HashMap<String, Option<Instant>>,
    /// Ids in flight.
    in_flight: HashSet<i64>,
    deliveries: FuturesUnordered<Delivery>,
    /// Acknowledged rows not marked yet, and since when the first of them waits.
    acked: Vec<i64>,
    acked_since: Option<Instant>,
    counts: Published,
}

/// How long acknowledgements gather before they are marked in one statement…
const MARK_EVERY: Duration = Duration::from_millis(5);
/// …or how many.
const MARK_AT_ONCE: usize = 500;

impl Relay {
    /// `producer` should be the platform's reliable producer (`acks=all`, idempotent).
    pub fn new(pool: PgPool, producer: FutureProducer, config: RelayConfig) -> Self {
        let leases = Leases::new(config.lease);
        Self {
            pool,
            producer,
            config,
            wake: Wake::default(),
            leases,
            queued: BTreeMap::new(),
            busy: HashMap::new(),
            in_flight: HashSet::new(),
            deliveries: FuturesUnordered::new(),
            acked: Vec::new(),
            acked_since: None,
            counts: Published::default(),
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
    /// their count is logged at ERROR every `parked_reminder`. On a clean stop it waits
    /// (bounded) for what is in flight and gives its slots back.
    pub async fn run(mut self, stop: CancellationToken) {
        let mut listener = listen(&self.pool).await;
        let mut renew_at = Instant::now();
        let mut fetch_at = Instant::now();
        let mut reminded = Instant::now();
        let mut parked_seen = crate::parked::count(&self.pool).await.unwrap_or(0) > 0;
        while !stop.is_cancelled() {
            let now = Instant::now();
            if now >= renew_at {
                renew_at = now + self.renew_every();
                if let Err(e) = self.renew().await {
                    tracing::warn!(error = %e, "relay: renewing its slots failed; will retry");
                    renew_at = now + self.config.retry_delay;
                }
            }
            if now >= fetch_at {
                fetch_at = now + self.config.poll_interval;
                if let Err(e) = self.fetch().await {
                    tracing::warn!(error = %e, "relay: reading the outbox failed; will retry");
                    fetch_at = now + self.config.retry_delay;
                }
            }
            self.send_ready();
            let parked_before = self.counts.parked;
            let woken = self
                .wait(&mut listener, &stop, renew_at.min(fetch_at))
                .await;
            if self.mark_due() {
                if let Err(e) = self.mark().await {
                    tracing::warn!(error = %e, "relay: marking rows published failed; will retry");
                }
            }
            if woken || self.refill_wanted() {
                fetch_at = Instant::now();
            }
            if self.counts.parked > parked_before
                || (parked_seen && reminded.elapsed() >= self.config.parked_reminder)
            {
                parked_seen = remind_parked(&self.pool).await;
                reminded = Instant::now();
            }
        }
        self.finish().await;
    }

    /// Publishes what is pending now in this relay's slots (taking its share first), and
    /// waits until each row is acknowledged, parked or found unreachable, or `limit`
    /// passes. For tools and tests; services use [`Relay::run`].
    pub async fn publish_pending(&mut self, limit: Duration) -> Result<Published, RelayError> {
        let deadline = Instant::now() + limit;
        self.counts = Published::default();
        self.renew().await?;
        loop {
            self.fetch().await?;
            if self.queued.is_empty() && self.deliveries.is_empty() {
                break;
            }
            self.send_ready();
            while let Ok(Some((row, sent, result))) =
                tokio::time::timeout_at(deadline.into(), self.deliveries.next()).await
            {
                self.settle(row, sent, result).await?;
            }
            self.mark().await?;
            let waiting: HashSet<&str> = self.busy.keys().map(String::as_str).collect();
            let only_delayed = self
                .queued
                .values()
                .all(|r| waiting.contains(r.message_key.as_str()));
            if Instant::now() >= deadline || (self.deliveries.is_empty() && only_delayed) {
                break;
            }
        }
        self.counts.delayed = self.queued.len();
        Ok(std::mem::take(&mut self.counts))
    }

    /// Gives this relay's slots back at once (rather than when its lease runs out), so
    /// another relay takes them.
    pub async fn release(mut self) {
        self.leases.release_all(&self.pool).await;
    }

    fn renew_every(&self) -> Duration {
        self.config.lease / 3
    }

    async fn renew(&mut self) -> Result<(), sqlx::Error> {
        let gone = self.leases.renew(&self.pool).await?;
        if !gone.is_empty() {
            // Rows of slots no longer held are the new holder's.
            self.queued.retain(|_, row| !gone.contains(&row.slot));
        }
        Ok(())
    }

    /// Reads pending rows of the held slots that are not known yet, oldest first,
    /// leaving out rows behind a parked row of their key.
    async fn fetch(&mut self) -> Result<(), sqlx::Error> {
        let slots = self.leases.slots();
        if slots.is_empty() {
            return Ok(());
        }
        let rows: Vec<Pending> = sqlx::query_as(
            "SELECT id, slot, topic, message_key, payload, headers, attempts FROM outbox o
             WHERE slot = ANY($1) AND published_at IS NULL AND parked_at IS NULL
               AND NOT EXISTS (SELECT 1 FROM outbox p
                               WHERE p.parked_at IS NOT NULL AND p.published_at IS NULL
                                 AND p.message_key = o.message_key AND p.id < o.id)
             ORDER BY id LIMIT $2",
        )
        .bind(&slots)
        .bind(self.config.batch_size)
        .fetch_all(&self.pool)
        .await?;
        for row in rows {
            if !self.in_flight.contains(&row.id) && !self.acked.contains(&row.id) {
                self.counts.taken += usize::from(!self.queued.contains_key(&row.id));
                self.queued.insert(row.id, row);
            }
        }
        Ok(())
    }

    /// Whether the queue ran low while more may be pending.
    fn refill_wanted(&self) -> bool {
        self.queued.len() < (self.config.batch_size as usize) / 2 && !self.acked.is_empty()
    }

    /// Sends, oldest first, every queued row whose key has nothing in flight and whose
    /// slot this relay holds, up to the in-flight bound.
    fn send_ready(&mut self) {
        let now = Instant::now();
        self.busy
            .retain(|_, until| until.is_none_or(|until| until > now));
        let mut sent = Vec::new();
        let mut skipped: HashSet<&str> = HashSet::new();
        for (id, row) in &self.queued {
            if self.deliveries.len() + sent.len() >= self.config.max_in_flight {
                break;
            }
            let key = row.message_key.as_str();
            if self.busy.contains_key(key) || skipped.contains(key) {
                continue;
            }
            if !self.leases.holds(row.slot) {
                skipped.insert(key);
                continue;
            }
            // Later rows of this key wait for this one.
            skipped.insert(key);
            sent.push(*id);
        }
        for id in sent {
            if let Some(row) = self.queued.remove(&id) {
                self.send(row);
            }
        }
    }

    fn send(&mut self, mut row: Pending) {
        self.busy.insert(row.message_key.clone(), None);
        self.in_flight.insert(row.id);
        let mut headers = kafka_headers(&row.headers);
        row.hop = publish_hop(&mut headers);
        let record = Record {
            key: Some(row.message_key.clone().into_bytes()),
            payload: Some(row.payload.clone()),
            headers,
            ..Record::default()
        };
        let queued = self
            .producer
            .send_result(record.to_send(&row.topic))
            .map_err(|(e, _)| e);
        let timeout = self.config.send_timeout;
        let sent = Instant::now();
        self.deliveries.push(
            async move {
                let result = match queued {
                    Err(e) => Err(e),
                    Ok(delivery) => match tokio::time::timeout(timeout, delivery).await {
                        Ok(Ok(Ok(_))) => Ok(()),
                        Ok(Ok(Err((e, _)))) => Err(e),
                        Ok(Err(_)) => Err(KafkaError::Canceled),
                        Err(_) => Err(KafkaError::MessageProduction(
                            RDKafkaErrorCode::MessageTimedOut,
                        )),
                    },
                };
                (row, sent, result)
            }
            .boxed(),
        );
    }

    /// Waits for an acknowledgement, a wake, or `until`; settles what was acknowledged.
    /// Returns whether new rows were announced.
    async fn wait(
        &mut self,
        listener: &mut Option<PgListener>,
        stop: &CancellationToken,
        until: Instant,
    ) -> bool {
        let mut woken = false;
        let deadline = match self.acked_since {
            Some(since) => until.min(since + MARK_EVERY),
            None => until,
        };
        let announced = async {
            match listener.as_mut() {
                Some(l) => {
                    let _ = l.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = stop.cancelled() => {}
            () = announced => woken = true,
            () = self.wake.relay.notified() => woken = true,
            () = tokio::time::sleep_until(deadline.into()) => {}
            Some((row, sent, result)) = self.deliveries.next() => {
                self.settle_logged(row, sent, result).await;
                // Take every other acknowledgement already here.
                while let Some(Some((row, sent, result))) = self.deliveries.next().now_or_never() {
                    self.settle_logged(row, sent, result).await;
                }
            }
        }
        // Notifications already here are about rows the next read will see.
        if let Some(listener) = listener.as_mut() {
            while listener.next_buffered().is_some() {}
        }
        woken
    }

    async fn settle_logged(&mut self, row: Pending, sent: Instant, result: Result<(), KafkaError>) {
        if let Err(e) = self.settle(row, sent, result).await {
            tracing::warn!(error = %e, "relay: recording a failed row failed; will retry");
        }
    }

    /// What became of one row's send.
    async fn settle(
        &mut self,
        row: Pending,
        sent: Instant,
        result: Result<(), KafkaError>,
    ) -> Result<(), sqlx::Error> {
        self.in_flight.remove(&row.id);
        let error = match result {
            Ok(()) => {
                metrics::counter!("outbox_published_total", "topic" => row.topic.clone())
                    .increment(1);
                metrics::histogram!("outbox_publish_duration_seconds")
                    .record(sent.elapsed().as_secs_f64());
                if let Some(hop) = &row.hop {
                    let started = SystemTime::now() - sent.elapsed();
                    hop.record(
                        format!("publish {}", row.topic),
                        Kind::Producer,
                        started,
                        || {
                            vec![
                                Attribute::new("messaging.destination.name", row.topic.clone()),
                                Attribute::new("outbox.id", row.id),
                            ]
                        },
                    );
                }
                self.busy.remove(&row.message_key);
                self.acked.push(row.id);
                self.acked_since.get_or_insert_with(Instant::now);
                return Ok(());
            }
            Err(error) => error,
        };
        let park = match kafka::fault_of(&error) {
            Fault::Refused => true,
            Fault::Outage if is_unreachable(&error) => {
                tracing::warn!(id = row.id, topic = %row.topic, key = %row.message_key, %error,
                    "outbox row not published; Kafka unreachable, will retry");
                self.retry_later(row);
                return Ok(());
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
        .execute(&self.pool)
        .await?;
        if park {
            self.counts.parked += 1;
            metrics::counter!("outbox_parked_total", "topic" => row.topic.clone()).increment(1);
            tracing::error!(
                id = row.id, topic = %row.topic, key = %row.message_key, %error,
                attempts = row.attempts + 1,
                "outbox row parked: Kafka will not take it; later events of its key wait behind it"
            );
            // Its key's later rows wait behind it until it is re-queued.
            let key = row.message_key.clone();
            self.queued.retain(|_, r| r.message_key != key);
            self.busy.remove(&key);
        } else {
            tracing::warn!(id = row.id, topic = %row.topic, key = %row.message_key, %error,
                attempts = row.attempts + 1, "outbox row not published; will retry");
            let mut row = row;
            row.attempts += 1;
            self.retry_later(row);
        }
        Ok(())
    }

    /// Puts `row` back in line; its key waits `retry_delay` first.
    fn retry_later(&mut self, row: Pending) {
        let until = Instant::now() + self.config.retry_delay;
        self.busy.insert(row.message_key.clone(), Some(until));
        self.queued.insert(row.id, row);
    }

    /// Marks the acknowledged rows published, in one statement, while this relay still
    /// holds their slots (a relay that lost them leaves the rows to the new holder).
    async fn mark(&mut self) -> Result<(), sqlx::Error> {
        if self.acked.is_empty() {
            return Ok(());
        }
        let marked = sqlx::query(
            "UPDATE outbox o SET published_at = now()
             FROM outbox_slots s
             WHERE o.id = ANY($1) AND s.slot = o.slot AND s.owner = $2",
        )
        .bind(&self.acked)
        .bind(self.leases.owner)
        .execute(&self.pool)
        .await?
        .rows_affected();
        self.counts.published += marked as usize;
        self.acked.clear();
        self.acked_since = None;
        Ok(())
    }

    /// Whether the acknowledged rows should be marked now: enough of them, or waiting long
    /// enough.
    fn mark_due(&self) -> bool {
        self.acked.len() >= MARK_AT_ONCE
            || self
                .acked_since
                .is_some_and(|since| since.elapsed() >= MARK_EVERY)
    }

    /// On a clean stop: waits (bounded) for what is in flight, marks it, and gives the
    /// slots back.
    async fn finish(mut self) {
        let drained = async {
            while let Some((row, sent, result)) = self.deliveries.next().await {
                self.settle_logged(row, sent, result).await;
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), drained).await;
        if let Err(e) = self.mark().await {
            tracing::warn!(error = %e, "relay: marking rows published at stop failed");
        }
        self.leases.release_all(&self.pool).await;
    }
}

/// The `LISTEN outbox` connection, or `None` (polling only) when it cannot be had.
async fn listen(pool: &PgPool) -> Option<PgListener> {
    match PgListener::connect_with(pool).await {
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
    }
}

/// Logs the number of parked rows at ERROR if there are any; `true` if there are.
async fn remind_parked(pool: &PgPool) -> bool {
    match crate::parked::count(pool).await {
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

/// The relay's hop: a child of the `traceparent` the row was queued with, which the
/// record carries in its place, so the consumer's hop is the publish's child.
fn publish_hop(headers: &mut [(String, Vec<u8>)]) -> Option<TraceContext> {
    let (_, value) = headers.iter_mut().find(|(name, _)| name == TRACEPARENT)?;
    let hop = TraceContext::from_headers(std::str::from_utf8(value).ok(), None)?;
    *value = hop.traceparent().into_bytes();
    Some(hop)
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
