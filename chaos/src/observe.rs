//! What a drill looks at when it is over: the order and payment databases, the topics'
//! offsets and the consumer groups' commits, the dead-letter topics, and the gateway's
//! record — gathered into an [`Observed`] for the checker.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::checker::{Lag, Observed, OrderState, Second, Transition, Window};
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

/// An order as read: id, status, created, paid.
type OrderRow = (Uuid, String, DateTime<Utc>, Option<DateTime<Utc>>);

/// Everything the checker needs. `started_ms` is when the load began (Unix epoch);
/// `fault` when the fault was in force; `recovered_after` as measured by the drill.
pub async fn observe(
    platform: &Platform,
    requests: Vec<loadgen::Request>,
    started_ms: i64,
    fault: Option<Window>,
) -> anyhow::Result<Observed> {
    let orders_pool = platform.orders_db.pool();
    let rows: Vec<OrderRow> = sqlx::query_as("SELECT id, status, created_at, paid_at FROM orders")
        .fetch_all(orders_pool)
        .await?;
    // Orders from before the load (the warm-up) are not the drill's.
    let orders: Vec<OrderState> = rows
        .into_iter()
        .filter(|(_, _, created, _)| created.timestamp_millis() >= started_ms)
        .map(|(id, status, created, paid)| OrderState {
            id,
            status,
            created_ms: created.timestamp_millis(),
            paid_ms: paid.map(|p| p.timestamp_millis()),
        })
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
    let payments: HashMap<Uuid, u32> = sqlx::query_as::<_, (Uuid, i64)>(
        "SELECT order_id, count(*) FROM payments GROUP BY order_id",
    )
    .fetch_all(platform.payments_db.pool())
    .await?
    .into_iter()
    .map(|(id, n)| (id, u32::try_from(n).unwrap_or(u32::MAX)))
    .collect();
    let charges = crate::gateway::read_record(&platform.gateway_log)?;
    let mut dead_letters = 0;
    for topic in platform.topics.all() {
        dead_letters += records(platform, &kafka::dead_letter_topic(topic)).await?;
    }
    let timeline = timeline(&orders, started_ms);
    let recovered_after = fault.and_then(|f| recovery(&orders, started_ms, f));
    Ok(Observed {
        requests,
        orders,
        keys,
        payments,
        charges,
        transitions,
        lag: lag(platform).await?,
        unpublished: unpublished(platform).await?,
        dead_letters,
        timeline,
        fault,
        recovered_after,
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

/// How long after the heal the backlog fell back to what the system carries anyway:
/// the first moment after the heal at which every order accepted more than two seconds
/// earlier is settled. `None` if that never happened.
pub fn recovery(orders: &[OrderState], started_ms: i64, fault: Window) -> Option<Duration> {
    let heal_ms = started_ms + i64::try_from(fault.heal_s).ok()? * 1000;
    let last_ms = orders.iter().map(|o| o.paid_ms.unwrap_or(i64::MAX)).max()?;
    if last_ms == i64::MAX {
        return None; // some order never settled
    }
    // Step through time in 100 ms from the heal; at each moment, is anything older than
    // 2 s unsettled? Once past the last payment nothing is, so this ends.
    let mut at = heal_ms;
    loop {
        let behind = orders
            .iter()
            .any(|o| o.created_ms < at - 2000 && o.paid_ms.is_none_or(|paid| paid > at));
        if !behind {
            return Some(Duration::from_millis(
                u64::try_from(at - heal_ms).unwrap_or(0),
            ));
        }
        at += 100;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(created: i64, paid: Option<i64>) -> OrderState {
        OrderState {
            id: Uuid::now_v7(),
            status: if paid.is_some() { "PAID" } else { "PENDING" }.into(),
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

    #[test]
    fn recovery_is_when_nothing_older_than_two_seconds_is_waiting() {
        // Healed at 10 s; an order from 5 s is paid at 14 s: recovered 4 s after the heal.
        let orders = [order(5_000, Some(14_000)), order(13_000, Some(13_050))];
        let fault = Window {
            start_s: 5,
            heal_s: 10,
        };
        assert_eq!(
            recovery(&orders, 0, fault),
            Some(Duration::from_millis(4_000))
        );
        let never = [order(5_000, None)];
        assert_eq!(recovery(&never, 0, fault), None);
        // Healed after the last payment (a long fault): recovered at once.
        let late = Window {
            start_s: 5,
            heal_s: 30,
        };
        assert_eq!(recovery(&orders, 0, late), Some(Duration::ZERO));
    }
}
