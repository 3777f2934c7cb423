//! Orders `PENDING` for longer than they should be, and what is known about each, from
//! every place an order passes through: its `order.created` row in order-service's
//! outbox, a dead letter of it on `order.created.DLT`, its payment in payment-service's
//! database, that payment's event in payment-service's outbox, and a dead letter of the
//! event on `payment.completed.DLT` / `payment.failed.DLT`. The runbook in
//! `docs/dead-letters.md` says what to do for each finding.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use events::Topics;
use outbox::parked::KeyRow;
use sqlx::PgPool;

/// Where to look.
pub struct Sources<'a> {
    pub orders: &'a PgPool,
    pub payments: &'a PgPool,
    pub kafka: &'a kafka::Connection,
    pub topics: &'a Topics,
    /// Bound on reading each dead-letter topic to its end.
    pub read_timeout: Duration,
}

/// One stuck order and what is known about it.
#[derive(Debug, Clone)]
pub struct Finding {
    pub order: order_service::domain::Order,
    /// Its rows in order-service's outbox (its `order.created`).
    pub order_events: Vec<KeyRow>,
    /// Its dead letters, on any of the platform's dead-letter topics.
    pub dead_letters: Vec<DeadLetter>,
    pub payment: Option<payment_service::domain::Payment>,
    /// Its payment's rows in payment-service's outbox.
    pub payment_events: Vec<KeyRow>,
}

/// A dead letter about an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// `topic/partition/offset` on the dead-letter topic.
    pub at: String,
    pub class: String,
    pub message: String,
}

impl Finding {
    /// What most likely holds the order, and what to do, in one line.
    pub fn verdict(&self) -> String {
        let published = |rows: &[KeyRow]| rows.iter().any(|r| r.published_at.is_some());
        let parked = |rows: &[KeyRow]| rows.iter().any(|r| r.parked_at.is_some());
        if parked(&self.order_events) || parked(&self.payment_events) {
            return "an event is parked in an outbox: fix the cause, then `just outbox … requeue`"
                .into();
        }
        if let Some(letter) = self.dead_letters.first() {
            return format!(
                "dead-lettered ({}) at {}: fix the cause, then `just redrive replay` it",
                letter.class, letter.at
            );
        }
        match &self.payment {
            Some(_) if !published(&self.payment_events) && !self.payment_events.is_empty() => {
                "paid; its payment event waits in payment-service's outbox (is the relay running?)".into()
            }
            Some(_) => "paid; its payment event was published: is order-service consuming it (lag, a halted consumer)?".into(),
            None if self.order_events.is_empty() => {
                "no order.created on record (removed after the outbox retention?)".into()
            }
            None if !published(&self.order_events) => {
                "order.created waits in order-service's outbox (is the relay running, Kafka reachable?)".into()
            }
            None => "order.created published, no payment: is payment-service consuming (lag, the gateway's breaker open)?".into(),
        }
    }
}

/// The orders `PENDING` for longer than `older_than` (at most `limit`, oldest first),
/// with what each place knows of them. `progress` is told each step.
pub async fn find(
    sources: &Sources<'_>,
    older_than: Duration,
    limit: u32,
    mut progress: impl FnMut(&str),
) -> anyhow::Result<Vec<Finding>> {
    progress("reading pending orders");
    let orders =
        order_service::store::pending_older_than(sources.orders, older_than, limit).await?;
    if orders.is_empty() {
        return Ok(Vec::new());
    }
    let keys: Vec<String> = orders.iter().map(|o| o.id.to_string()).collect();
    progress("reading order-service's outbox");
    let order_events = by_key(outbox::parked::rows_of(sources.orders, &keys).await?);
    progress("reading payments");
    let mut payments = HashMap::new();
    for order in &orders {
        if let Some(payment) =
            payment_service::store::payment_of(sources.payments, order.id).await?
        {
            payments.insert(order.id, payment);
        }
    }
    progress("reading payment-service's outbox");
    // A payment's event is keyed by its order's id.
    let payment_events = by_key(outbox::parked::rows_of(sources.payments, &keys).await?);
    let mut letters: HashMap<String, Vec<DeadLetter>> = HashMap::new();
    for topic in [
        &sources.topics.order_created,
        &sources.topics.payment_completed,
        &sources.topics.payment_failed,
    ] {
        let dlt = kafka::dead_letter_topic(topic);
        progress(&format!("reading {dlt}"));
        let read = redrive::read(
            sources.kafka,
            &dlt,
            &redrive::Filter::default(),
            sources.read_timeout,
        )
        .await;
        let records = match read {
            Ok(records) => records,
            Err(redrive::RedriveError::NoSuchTopic(_)) => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        for record in records {
            letters
                .entry(record.key_text())
                .or_default()
                .push(DeadLetter {
                    at: record.locator(),
                    class: record.dead_letter_class(),
                    message: record
                        .last_header_text(kafka::dead_letter::headers::ERROR_MESSAGE)
                        .unwrap_or_default(),
                });
        }
    }
    Ok(orders
        .into_iter()
        .map(|order| {
            let key = order.id.to_string();
            let payment = payments.remove(&order.id);
            Finding {
                order_events: order_events.get(&key).cloned().unwrap_or_default(),
                dead_letters: letters.remove(&key).unwrap_or_default(),
                payment_events: payment_events.get(&key).cloned().unwrap_or_default(),
                payment,
                order,
            }
        })
        .collect())
}

fn by_key(rows: Vec<KeyRow>) -> HashMap<String, Vec<KeyRow>> {
    let mut map: HashMap<String, Vec<KeyRow>> = HashMap::new();
    for row in rows {
        map.entry(row.message_key.clone()).or_default().push(row);
    }
    map
}

/// `12 s`, `3 min`, `2 h` ago.
pub fn age(since: DateTime<Utc>) -> String {
    let seconds = (Utc::now() - since).num_seconds().max(0);
    match seconds {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s => format!("{} h", s / 3600),
    }
}
