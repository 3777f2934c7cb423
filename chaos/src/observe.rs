//! What a drill looks at when it is over: the order and payment databases, the topics'
//! offsets and the consumer groups' commits, the dead-letter topics, and the gateway's
//! record — gathered into an [`Observed`] for the checker.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::checker::{Lag, Observed, OrderState, PaymentState, Second, Transition, Window};
use crate::platform::Platform;

/// The consumer groups of the platform and the topics each reads.
fn groups(platform: &Platform) -> [(&'static str, Vec<String>); 2] {
    let t = &platform.topics;
    [
        ("payment-service", vec![t.order_created.clone()]),
        (
            "order-service",
            vec![t.payment_completed.clone(), t.payment_failed.clone()],
        ),
    ]
}

/// Orders still waiting for their payment, outbox rows not published, and consumer lag:
/// all zero once the backlog has drained.
pub async fn backlog(platform: &Platform) -> anyhow::Result<(i64, i64, i64)> {
    let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM orders WHERE status = 'PENDING'")
        .fetch_one(platform.orders_db.pool())
        .await?;
    let unpublished = unpublished(platform).await?;
    let lag: i64 = lag(platform).await?.iter().map(|l| l.lag).sum();
    Ok((pending, unpublished, lag))
}

async fn unpublished(platform: &Platform) -> anyhow::Result<i64> {
    let mut total = 0;
    for db in [&platform.orders_db, &platform.payments_db] {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
            .fetch_one(db.pool())
            .await?;
        total += n;
    }
    Ok(total)
}

/// Unread records of each group on each partition of the topics it reads.
pub async fn lag(platform: &Platform) -> anyhow::Result<Vec<Lag>> {
    let kafka = platform.cluster.client();
    let mut lags = Vec::new();
    for (group, topics) in groups(platform) {
        for topic in topics {
            let ends = kafka.end_offsets(&topic).await?;
            let committed = kafka.committed_offsets(group, &topic).await?;
            for (partition, (_, high)) in ends {
                let done = committed.get(&partition).copied().unwrap_or(0);
                lags.push(Lag {
                    group: group.to_owned(),
                    topic: topic.clone(),
                    partition,
                    lag: (high - done).max(0),
                });
            }
        }
    }
    Ok(lags)
}

/// Records on `topic` now.
pub async fn records(platform: &Platform, topic: &str) -> anyhow::Result<i64> {
    Ok(platform.cluster.client().record_count(topic).await?)
}

/// An order as read: id, status, amount, currency, created, settled.
type OrderRow = (
    Uuid,
    String,
    String,
    String,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
);

/// What the run was: its requests and plan, when it started, when the fault was in force
/// and when order-service was down.
pub struct Run {
    pub requests: Vec<loadgen::Request>,
    pub planned: u64,
    /// Unix milliseconds.
    pub started_ms: i64,
    pub fault: Option<Window>,
    pub orders_down: Vec<(i64, i64)>,
}

/// Everything the checker needs.
pub async fn observe(platform: &Platform, run: Run) -> anyhow::Result<Observed> {
    let orders_pool = platform.orders_db.pool();
    let rows: Vec<OrderRow> = sqlx::query_as(
        "SELECT id, status, amount::text, currency, created_at,
                CASE WHEN status = 'PENDING' THEN NULL ELSE coalesce(paid_at, updated_at) END
         FROM orders",
    )
    .fetch_all(orders_pool)
    .await?;
    let existing = rows.iter().map(|r| r.0).collect();
    let started_ms = run.started_ms;
    // Orders from before the load (the warm-up) are not the drill's.
    let orders: Vec<OrderState> = rows
        .into_iter()
        .filter(|(_, _, _, _, created, _)| created.timestamp_millis() >= started_ms)
        .map(
            |(id, status, amount, currency, created, settled)| OrderState {
                id,
                status,
                amount,
                currency,
                created_ms: created.timestamp_millis(),
                paid_ms: settled.map(|p| p.timestamp_millis()),
            },
        )
        .collect();
    let keys: HashMap<String, Uuid> =
        sqlx::query_as::<_, (String, Uuid)>("SELECT key, order_id FROM idempotency_keys")
            .fetch_all(orders_pool)
            .await?
            .into_iter()
            .collect();
    let transitions = sqlx::query_as::<_, (Uuid, String, String)>(
        "SELECT order_id, from_status, to_status FROM drill_status_log ORDER BY at",
    )
    .fetch_all(orders_pool)
    .await?
    .into_iter()
    .map(|(order_id, from, to)| Transition { order_id, from, to })
    .collect();
    let payments: Vec<PaymentState> = sqlx::query_as::<_, (Uuid, String, String, String)>(
        "SELECT order_id, status, amount::text, currency FROM payments",
    )
    .fetch_all(platform.payments_db.pool())
    .await?
    .into_iter()
    .map(|(order_id, status, amount, currency)| PaymentState {
        order_id,
        status,
        amount,
        currency,
    })
    .collect();
    let mut dead_letters = 0;
    for topic in platform.topics.all() {
        dead_letters += records(platform, &kafka::dead_letter_topic(topic)).await?;
    }
    let timeline = timeline(&orders, started_ms);
    Ok(Observed {
        requests: run.requests,
        planned: run.planned,
        orders,
        existing,
        keys,
        payments,
        charges: platform.gateway.charges(),
        gateway_requests: platform.gateway.requests(),
        transitions,
        lag: lag(platform).await?,
        unpublished: unpublished(platform).await?,
        dead_letters,
        timeline,
        fault: run.fault,
        started_ms,
        orders_down: run.orders_down,
    })
}

/// Orders accepted and paid in each second since the load started, from the database's
/// own timestamps.
pub fn timeline(orders: &[OrderState], started_ms: i64) -> Vec<Second> {
    let second = |ms: i64| usize::try_from((ms - started_ms).max(0) / 1000).unwrap_or(0);
    let last = orders
        .iter()
        .map(|o| second(o.paid_ms.unwrap_or(o.created_ms).max(o.created_ms)))
        .max()
        .unwrap_or(0);
    let mut seconds = vec![Second::default(); last + 1];
    for order in orders {
        seconds[second(order.created_ms)].accepted += 1;
        if let Some(paid) = order.paid_ms {
            seconds[second(paid)].paid += 1;
        }
    }
    seconds
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(created: i64, paid: Option<i64>) -> OrderState {
        OrderState {
            id: Uuid::now_v7(),
            status: if paid.is_some() { "PAID" } else { "PENDING" }.into(),
            amount: "1.00".into(),
            currency: "EUR".into(),
            created_ms: created,
            paid_ms: paid,
        }
    }

    #[test]
    fn the_timeline_counts_orders_by_the_second_they_were_accepted_and_paid() {
        let orders = [
            order(100, Some(200)),
            order(1_500, Some(3_100)),
            order(1_900, None),
        ];
        let seconds = timeline(&orders, 0);
        assert_eq!(seconds.len(), 4);
        assert_eq!((seconds[0].accepted, seconds[0].paid), (1, 1));
        assert_eq!((seconds[1].accepted, seconds[1].paid), (2, 0));
        assert_eq!(seconds[3].paid, 1);
    }
}
