//! The checker: after a drill, from PostgreSQL, the topics, the gateway's record and the
//! load generator's history, what went wrong — Jepsen's queue checks applied to the whole
//! order → payment → PAID flow.
//!
//! - **lost**: an acknowledged order missing, or not `PAID` / `PAYMENT_FAILED` after the
//!   drain;
//! - **doubled**: more than one payment for an order, or an order moved to `PAID` twice;
//! - **double-charged**: more than one distinct charge at the gateway for an order;
//! - **stuck**: consumer lag left at the end, or outbox rows never published;
//! - **wrong order**: an order whose status went anywhere but forward from `PENDING`;
//! - **dead letters**: any (no poison is injected, so there must be none);
//! - **progress**: fewer orders paid than the drill requires, no order paid while a fault
//!   the design tolerates was in force, or a backlog that did not drain in time.
//!
//! Indeterminate requests (never answered) are reported apart: such an order may or may
//! not exist, but if it exists it must be paid exactly once.
//!
//! The checker is pure: [`check`] reads an [`Observed`] and returns a [`Verdict`], so its
//! own tests feed it made-up histories.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use loadgen::{Outcome, Request};
use serde::Serialize;
use uuid::Uuid;

use crate::gateway::ChargeRequest;

/// An order as the order database has it at the end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderState {
    pub id: Uuid,
    pub status: String,
    /// Milliseconds since the Unix epoch.
    pub created_ms: i64,
    pub paid_ms: Option<i64>,
}

/// A status change, recorded by the drill's trigger on the order table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub order_id: Uuid,
    pub from: String,
    pub to: String,
}

/// Lag left on one partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Lag {
    pub group: String,
    pub topic: String,
    pub partition: i32,
    pub lag: i64,
}

/// Orders accepted and paid in one second of the run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Second {
    pub accepted: u64,
    pub paid: u64,
}

/// When the fault was in force, in seconds since the load started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Window {
    pub start_s: u64,
    pub heal_s: u64,
}

/// Everything observed after a drill.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub requests: Vec<Request>,
    pub orders: Vec<OrderState>,
    /// Idempotency key → order id, from the order database.
    pub keys: HashMap<String, Uuid>,
    /// Payment rows per order, from the payment database.
    pub payments: HashMap<Uuid, u32>,
    pub charges: Vec<ChargeRequest>,
    pub transitions: Vec<Transition>,
    pub lag: Vec<Lag>,
    /// Outbox rows not published at the end, both services.
    pub unpublished: i64,
    pub dead_letters: i64,
    /// Per second since the load started.
    pub timeline: Vec<Second>,
    pub fault: Option<Window>,
    /// From the heal until every acknowledged order was settled; `None` if it never was.
    pub recovered_after: Option<Duration>,
}

/// What a drill requires beyond the invariants.
#[derive(Debug, Clone, Copy)]
pub struct Expectations {
    /// A run that paid fewer orders fails: doing nothing must never pass.
    pub min_paid: u64,
    /// Orders keep being paid while the fault is in force (one broker of three, one
    /// payment instance of three).
    pub flow_during_fault: bool,
    /// The backlog drains within this after the heal.
    pub recover_within: Duration,
}

/// What the checker found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Verdict {
    pub sent: usize,
    pub acknowledged: usize,
    pub refused: usize,
    pub indeterminate: usize,
    /// Indeterminate requests whose order exists after all.
    pub indeterminate_existing: usize,
    pub paid: usize,
    pub payment_failed: usize,
    pub lost: Vec<String>,
    pub doubled: Vec<String>,
    pub double_charged: Vec<String>,
    pub stuck: Vec<String>,
    pub wrong_order: Vec<String>,
    pub dead_letters: i64,
    pub max_lag: i64,
    pub no_progress: Vec<String>,
    pub recovered_after_s: Option<f64>,
    pub paid_during_fault: Option<u64>,
    /// POST→PAID, milliseconds.
    pub latency_p50_ms: Option<i64>,
    pub latency_p99_ms: Option<i64>,
}

impl Verdict {
    pub fn passed(&self) -> bool {
        self.lost.is_empty()
            && self.doubled.is_empty()
            && self.double_charged.is_empty()
            && self.stuck.is_empty()
            && self.wrong_order.is_empty()
            && self.dead_letters == 0
            && self.no_progress.is_empty()
    }

    /// Every failure, one line each.
    pub fn failures(&self) -> Vec<String> {
        let mut lines = Vec::new();
        let mut add = |what: &str, items: &[String]| {
            for item in items.iter().take(20) {
                lines.push(format!("{what}: {item}"));
            }
            if items.len() > 20 {
                lines.push(format!("{what}: … and {} more", items.len() - 20));
            }
        };
        add("lost", &self.lost);
        add("doubled", &self.doubled);
        add("double-charged", &self.double_charged);
        add("stuck", &self.stuck);
        add("wrong order", &self.wrong_order);
        add("progress", &self.no_progress);
        if self.dead_letters > 0 {
            lines.push(format!("dead letters: {}", self.dead_letters));
        }
        lines
    }
}

/// Checks `observed` against the invariants and `expect`.
pub fn check(observed: &Observed, expect: &Expectations) -> Verdict {
    let mut verdict = Verdict {
        sent: observed.requests.len(),
        dead_letters: observed.dead_letters,
        ..Verdict::default()
    };
    let orders: HashMap<Uuid, &OrderState> = observed.orders.iter().map(|o| (o.id, o)).collect();
    let settled = |status: &str| status == "PAID" || status == "PAYMENT_FAILED";

    for request in &observed.requests {
        match &request.outcome {
            Outcome::Acknowledged { order_id } => {
                verdict.acknowledged += 1;
                match orders.get(order_id) {
                    None => verdict.lost.push(format!(
                        "order {order_id} ({}) was acknowledged but does not exist",
                        request.idempotency_key
                    )),
                    Some(order) if !settled(&order.status) => verdict.lost.push(format!(
                        "order {order_id} is still {} after the drain",
                        order.status
                    )),
                    Some(_) => {}
                }
            }
            Outcome::Refused { .. } => verdict.refused += 1,
            Outcome::Indeterminate { .. } => {
                verdict.indeterminate += 1;
                if let Some(order_id) = observed.keys.get(&request.idempotency_key) {
                    verdict.indeterminate_existing += 1;
                    let status = orders
                        .get(order_id)
                        .map_or("missing", |o| o.status.as_str());
                    if !settled(status) {
                        verdict.lost.push(format!(
                            "order {order_id} (indeterminate request {}) exists but is {status}",
                            request.idempotency_key
                        ));
                    }
                }
            }
        }
    }
    verdict.paid = observed
        .orders
        .iter()
        .filter(|o| o.status == "PAID")
        .count();
    verdict.payment_failed = observed
        .orders
        .iter()
        .filter(|o| o.status == "PAYMENT_FAILED")
        .count();

    for (order_id, count) in &observed.payments {
        if *count > 1 {
            verdict
                .doubled
                .push(format!("order {order_id} has {count} payments"));
        }
    }
    let mut to_paid: HashMap<Uuid, u32> = HashMap::new();
    for t in &observed.transitions {
        if t.from != "PENDING" || t.to == "PENDING" {
            verdict.wrong_order.push(format!(
                "order {} went from {} to {}",
                t.order_id, t.from, t.to
            ));
        }
        if t.to == "PAID" {
            *to_paid.entry(t.order_id).or_default() += 1;
        }
    }
    for (order_id, count) in to_paid {
        if count > 1 {
            verdict
                .doubled
                .push(format!("order {order_id} was marked PAID {count} times"));
        }
    }

    let mut charges: BTreeMap<&str, HashSet<Uuid>> = BTreeMap::new();
    for charge in &observed.charges {
        charges
            .entry(charge.order_id.as_str())
            .or_default()
            .insert(charge.charge_id);
    }
    for (order_id, ids) in charges {
        if ids.len() > 1 {
            verdict.double_charged.push(format!(
                "order {order_id} has {} distinct charges at the gateway",
                ids.len()
            ));
        }
    }

    for lag in &observed.lag {
        verdict.max_lag = verdict.max_lag.max(lag.lag);
        if lag.lag > 0 {
            verdict.stuck.push(format!(
                "group {} has {} unread on {}/{}",
                lag.group, lag.lag, lag.topic, lag.partition
            ));
        }
    }
    if observed.unpublished > 0 {
        verdict.stuck.push(format!(
            "{} outbox rows were never published",
            observed.unpublished
        ));
    }

    let paid_total: u64 = observed.timeline.iter().map(|s| s.paid).sum();
    if (verdict.paid as u64) < expect.min_paid || paid_total < expect.min_paid.min(1) {
        verdict.no_progress.push(format!(
            "{} orders paid; the drill requires at least {}",
            verdict.paid, expect.min_paid
        ));
    }
    if let Some(window) = observed.fault {
        let during: u64 = observed
            .timeline
            .iter()
            .enumerate()
            .filter(|(s, _)| (window.start_s..window.heal_s).contains(&(*s as u64)))
            .map(|(_, s)| s.paid)
            .sum();
        verdict.paid_during_fault = Some(during);
        if expect.flow_during_fault && during == 0 {
            verdict.no_progress.push(format!(
                "no order paid between {} s and {} s, while a fault the design tolerates was in force",
                window.start_s, window.heal_s
            ));
        }
    }
    verdict.recovered_after_s = observed.recovered_after.map(|d| d.as_secs_f64());
    match observed.recovered_after {
        Some(after) if after <= expect.recover_within => {}
        Some(after) => verdict.no_progress.push(format!(
            "the backlog drained {after:.1?} after the heal, more than {:?}",
            expect.recover_within
        )),
        None => verdict.no_progress.push("the backlog never drained".into()),
    }

    let mut latencies: Vec<i64> = observed
        .orders
        .iter()
        .filter_map(|o| o.paid_ms.map(|p| p - o.created_ms))
        .collect();
    latencies.sort_unstable();
    let at = |q: f64| -> Option<i64> {
        (!latencies.is_empty())
            .then(|| latencies[((latencies.len() - 1) as f64 * q).round() as usize])
    };
    verdict.latency_p50_ms = at(0.5);
    verdict.latency_p99_ms = at(0.99);
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXPECT: Expectations = Expectations {
        min_paid: 2,
        flow_during_fault: true,
        recover_within: Duration::from_secs(60),
    };

    fn acknowledged(seq: u64, order_id: Uuid) -> Request {
        Request {
            seq,
            idempotency_key: format!("k-{seq}"),
            amount: "1.00".into(),
            started_ms: seq * 10,
            ended_ms: seq * 10 + 5,
            attempts: 1,
            outcome: Outcome::Acknowledged { order_id },
        }
    }

    fn paid(id: Uuid) -> OrderState {
        OrderState {
            id,
            status: "PAID".into(),
            created_ms: 1_000,
            paid_ms: Some(1_040),
        }
    }

    fn charge(order_id: Uuid, charge_id: Uuid) -> ChargeRequest {
        ChargeRequest {
            at_ms: 0,
            idempotency_key: order_id.to_string(),
            order_id: order_id.to_string(),
            amount: "1.00".into(),
            charge_id,
            created: true,
        }
    }

    /// A healthy run of three orders: each acknowledged, paid once, charged once.
    fn healthy() -> Observed {
        let ids: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
        Observed {
            requests: ids
                .iter()
                .enumerate()
                .map(|(i, id)| acknowledged(i as u64, *id))
                .collect(),
            orders: ids.iter().map(|id| paid(*id)).collect(),
            keys: ids
                .iter()
                .enumerate()
                .map(|(i, id)| (format!("k-{i}"), *id))
                .collect(),
            payments: ids.iter().map(|id| (*id, 1)).collect(),
            charges: ids.iter().map(|id| charge(*id, Uuid::now_v7())).collect(),
            transitions: ids
                .iter()
                .map(|id| Transition {
                    order_id: *id,
                    from: "PENDING".into(),
                    to: "PAID".into(),
                })
                .collect(),
            timeline: vec![
                Second {
                    accepted: 3,
                    paid: 1,
                },
                Second {
                    accepted: 0,
                    paid: 2,
                },
            ],
            fault: Some(Window {
                start_s: 0,
                heal_s: 1,
            }),
            recovered_after: Some(Duration::from_secs(1)),
            ..Observed::default()
        }
    }

    #[test]
    fn a_healthy_run_passes() {
        let verdict = check(&healthy(), &EXPECT);
        assert!(verdict.passed(), "{:?}", verdict.failures());
        assert_eq!((verdict.acknowledged, verdict.paid), (3, 3));
        assert_eq!(verdict.latency_p50_ms, Some(40));
    }

    #[test]
    fn a_lost_order_is_caught() {
        let mut observed = healthy();
        observed.orders.remove(1);
        let verdict = check(&observed, &EXPECT);
        assert_eq!(verdict.lost.len(), 1, "{:?}", verdict.lost);
        assert!(!verdict.passed());

        let mut observed = healthy();
        observed.orders[0].status = "PENDING".into();
        assert_eq!(check(&observed, &EXPECT).lost.len(), 1);
    }

    #[test]
    fn an_indeterminate_request_whose_order_exists_must_be_paid() {
        let mut observed = healthy();
        observed.requests[2].outcome = Outcome::Indeterminate {
            last_error: "timed out".into(),
        };
        let verdict = check(&observed, &EXPECT);
        assert!(verdict.passed());
        assert_eq!(
            (verdict.indeterminate, verdict.indeterminate_existing),
            (1, 1)
        );
        observed.orders[2].status = "PENDING".into();
        assert!(!check(&observed, &EXPECT).passed());
    }

    #[test]
    fn a_doubled_payment_is_caught() {
        let mut observed = healthy();
        let id = observed.orders[0].id;
        observed.payments.insert(id, 2);
        let verdict = check(&observed, &EXPECT);
        assert_eq!(verdict.doubled.len(), 1);
        assert!(!verdict.passed());
    }

    #[test]
    fn a_double_charge_is_caught() {
        let mut observed = healthy();
        let id = observed.orders[1].id;
        observed.charges.push(charge(id, Uuid::now_v7()));
        let verdict = check(&observed, &EXPECT);
        assert_eq!(verdict.double_charged.len(), 1);
        assert!(!verdict.passed());
        // The same charge asked for again (a retry under the same key) is not a double.
        let mut observed = healthy();
        let again = observed.charges[1].clone();
        observed.charges.push(again);
        assert!(check(&observed, &EXPECT).passed());
    }

    #[test]
    fn a_stuck_consumer_or_relay_is_caught() {
        let mut observed = healthy();
        observed.lag.push(Lag {
            group: "payment-service".into(),
            topic: "order.created".into(),
            partition: 4,
            lag: 17,
        });
        let verdict = check(&observed, &EXPECT);
        assert_eq!((verdict.stuck.len(), verdict.max_lag), (1, 17));
        assert!(!verdict.passed());
        let mut observed = healthy();
        observed.unpublished = 3;
        assert!(!check(&observed, &EXPECT).passed());
    }

    #[test]
    fn a_status_going_backwards_is_caught() {
        let mut observed = healthy();
        observed.transitions.push(Transition {
            order_id: observed.orders[0].id,
            from: "PAID".into(),
            to: "PENDING".into(),
        });
        let verdict = check(&observed, &EXPECT);
        assert_eq!(verdict.wrong_order.len(), 1);
        assert!(!verdict.passed());
    }

    #[test]
    fn a_run_with_no_progress_fails() {
        let mut observed = healthy();
        observed.requests.clear();
        observed.orders.clear();
        observed.payments.clear();
        observed.charges.clear();
        observed.transitions.clear();
        observed.timeline = vec![Second::default(); 5];
        let verdict = check(&observed, &EXPECT);
        assert!(!verdict.no_progress.is_empty());
        assert!(!verdict.passed(), "a run that did nothing must never pass");
    }

    #[test]
    fn a_stall_during_a_tolerated_fault_or_a_slow_drain_fails() {
        let mut observed = healthy();
        observed.timeline = vec![
            Second {
                accepted: 3,
                paid: 0,
            },
            Second {
                accepted: 0,
                paid: 3,
            },
        ];
        assert!(
            !check(&observed, &EXPECT).passed(),
            "nothing paid during the fault"
        );
        let mut observed = healthy();
        observed.recovered_after = Some(Duration::from_secs(600));
        assert!(!check(&observed, &EXPECT).passed());
        observed.recovered_after = None;
        assert!(!check(&observed, &EXPECT).passed());
    }
}
