//! The checker: after a drill, from PostgreSQL, the topics, the gateway's record and the
//! load generator's history, what went wrong — Jepsen's queue checks applied to the whole
//! order → payment → charge flow.
//!
//! - **lost**: an acknowledged order missing, or not `PAID` / `PAYMENT_FAILED` after the
//!   drain (likewise an indeterminate request whose order exists);
//! - **money** (the bijection): for every order of the run, `PAID` ⇔ exactly one
//!   `COMPLETED` payment ⇔ exactly one approved charge at the gateway, of the order's
//!   amount and currency; `PAYMENT_FAILED` ⇔ a declined charge and no approved one; no
//!   approved charge for an order that is not `PAID`; no charge for an order that does not
//!   exist; no two charge requests of one key in flight at once; no key reused with
//!   another body (the gateway's `422`); and a gateway that recorded no charge at all
//!   fails the run (the path was not used);
//! - **stuck**: consumer lag left at the end, or outbox rows never published;
//! - **wrong order**: an order whose status went anywhere but forward from `PENDING`;
//! - **dead letters**: any (no poison is injected, so there must be none);
//! - **requests**: a refused request, an unanswered one while order-service was up, or
//!   fewer requests sent than planned;
//! - **progress**, second by second: where the design tolerates the fault, after its grace
//!   period, orders paid in every 5 s window are at least half the offered rate; at any
//!   time outside the fault and its recovery budget, no acknowledged order waits longer
//!   than [`STEADY_WAIT`] to be settled (within a tolerated fault, the grace period more).
//!
//! The checker is pure: [`check`] reads an [`Observed`] and returns a [`Verdict`], so its
//! own tests feed it made-up histories.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::str::FromStr;
use std::time::Duration;

use gateway_stand_in::{Charge, RequestRecord};
use loadgen::{Outcome, Request};
use rust_decimal::Decimal;
use serde::Serialize;
use uuid::Uuid;

/// The longest an acknowledged order may wait to be settled outside a fault.
pub const STEADY_WAIT: Duration = Duration::from_secs(10);

/// An order as the order database has it at the end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderState {
    pub id: Uuid,
    pub status: String,
    pub amount: String,
    pub currency: String,
    /// Milliseconds since the Unix epoch.
    pub created_ms: i64,
    /// When it was settled (paid or failed).
    pub paid_ms: Option<i64>,
}

/// A payment as the payment database has it at the end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentState {
    pub order_id: Uuid,
    pub status: String,
    pub amount: String,
    pub currency: String,
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
    /// Where the grace period counts from: the fault's start, or its last action.
    pub grace_from_s: u64,
    pub heal_s: u64,
}

/// Everything observed after a drill.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub requests: Vec<Request>,
    /// How many requests the load generator planned.
    pub planned: u64,
    /// The orders of the run (created after the load started).
    pub orders: Vec<OrderState>,
    /// Every order id in the database, the warm-up's included.
    pub existing: HashSet<Uuid>,
    /// Idempotency key → order id, from the order database.
    pub keys: HashMap<String, Uuid>,
    pub payments: Vec<PaymentState>,
    /// The charges the gateway made.
    pub charges: Vec<Charge>,
    /// Every request the gateway received.
    pub gateway_requests: Vec<RequestRecord>,
    pub transitions: Vec<Transition>,
    pub lag: Vec<Lag>,
    /// Outbox rows not published at the end, both services.
    pub unpublished: i64,
    pub dead_letters: i64,
    /// Per second since the load started.
    pub timeline: Vec<Second>,
    pub fault: Option<Window>,
    /// When the load started, Unix milliseconds.
    pub started_ms: i64,
    /// When order-service (an instance) was down or frozen, Unix milliseconds.
    pub orders_down: Vec<(i64, i64)>,
}

/// What a drill requires beyond the invariants.
#[derive(Debug, Clone, Copy)]
pub struct Expectations {
    /// Orders offered per second.
    pub rate: f64,
    /// Orders keep being paid while the fault is in force.
    pub flow_during_fault: bool,
    /// How long after the injection the flow may stop (the failover time).
    pub grace: Duration,
    /// After the heal, the backlog drains within this.
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
    pub charges: usize,
    /// The most charge requests any one order took.
    pub charge_requests_max: usize,
    pub lost: Vec<String>,
    pub money: Vec<String>,
    pub stuck: Vec<String>,
    pub wrong_order: Vec<String>,
    pub requests_failed: Vec<String>,
    pub dead_letters: i64,
    pub max_lag: i64,
    pub no_progress: Vec<String>,
    /// What should have shown the fault took effect, and did not.
    pub fault_unproven: Vec<String>,
    pub paid_during_fault: Option<u64>,
    /// The longest any acknowledged order waited to be settled, seconds.
    pub longest_wait_s: Option<f64>,
    /// POST→PAID, milliseconds.
    pub latency_p50_ms: Option<i64>,
    pub latency_p99_ms: Option<i64>,
}

impl Verdict {
    pub fn passed(&self) -> bool {
        self.lost.is_empty()
            && self.money.is_empty()
            && self.stuck.is_empty()
            && self.wrong_order.is_empty()
            && self.requests_failed.is_empty()
            && self.dead_letters == 0
            && self.no_progress.is_empty()
            && self.fault_unproven.is_empty()
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
        add("money", &self.money);
        add("stuck", &self.stuck);
        add("wrong order", &self.wrong_order);
        add("requests", &self.requests_failed);
        add("progress", &self.no_progress);
        add("fault not proven", &self.fault_unproven);
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
        charges: observed.charges.len(),
        ..Verdict::default()
    };
    let judged = check_requests(observed, &mut verdict);
    check_money(observed, &judged, &mut verdict);
    check_flow(observed, &mut verdict);
    check_progress(observed, expect, &mut verdict);
    latencies(observed, &mut verdict);
    verdict
}

/// The requests: every acknowledged order settled, nothing refused, nothing unanswered
/// while order-service was up, as many sent as planned. Returns the orders to hold to the
/// money rules: those acknowledged, and those of indeterminate requests that exist.
fn check_requests(observed: &Observed, verdict: &mut Verdict) -> HashSet<Uuid> {
    let orders: HashMap<Uuid, &OrderState> = observed.orders.iter().map(|o| (o.id, o)).collect();
    let settled = |status: &str| status == "PAID" || status == "PAYMENT_FAILED";
    let mut judged = HashSet::new();
    for request in &observed.requests {
        match &request.outcome {
            Outcome::Acknowledged { order_id } => {
                verdict.acknowledged += 1;
                judged.insert(*order_id);
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
            Outcome::Refused { status, detail } => {
                verdict.refused += 1;
                verdict.requests_failed.push(format!(
                    "request {} was refused: {status} {detail}",
                    request.idempotency_key
                ));
            }
            Outcome::Indeterminate { last_error } => {
                verdict.indeterminate += 1;
                if !while_orders_down(observed, request) {
                    verdict.requests_failed.push(format!(
                        "request {} was never answered while order-service was up: {last_error}",
                        request.idempotency_key
                    ));
                }
                if let Some(order_id) = observed.keys.get(&request.idempotency_key) {
                    verdict.indeterminate_existing += 1;
                    judged.insert(*order_id);
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
    if (observed.requests.len() as u64) != observed.planned {
        verdict.requests_failed.push(format!(
            "{} requests on record, {} planned",
            observed.requests.len(),
            observed.planned
        ));
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
    judged
}

/// Whether an unanswered request overlapped a time order-service was down.
fn while_orders_down(observed: &Observed, request: &Request) -> bool {
    let from = observed.started_ms + request.started_ms as i64;
    let to = observed.started_ms + request.ended_ms as i64;
    observed
        .orders_down
        .iter()
        .any(|(down, up)| from <= *up && to >= *down)
}

fn same_money(a: &str, b: &str) -> bool {
    match (Decimal::from_str(a), Decimal::from_str(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// The money bijection.
fn check_money(observed: &Observed, judged: &HashSet<Uuid>, verdict: &mut Verdict) {
    let mut charges: BTreeMap<Uuid, Vec<&Charge>> = BTreeMap::new();
    for charge in &observed.charges {
        match charge.order_id.parse::<Uuid>() {
            Ok(id) if observed.existing.contains(&id) => {
                charges.entry(id).or_default().push(charge)
            }
            _ => verdict.money.push(format!(
                "a charge ({} {}) for order {}, which does not exist",
                charge.amount, charge.currency, charge.order_id
            )),
        }
    }
    if observed.charges.is_empty() && !judged.is_empty() {
        verdict
            .money
            .push("the gateway recorded no charge at all: the payment path was not used".into());
    }
    let mut payments: HashMap<Uuid, Vec<&PaymentState>> = HashMap::new();
    for payment in &observed.payments {
        payments.entry(payment.order_id).or_default().push(payment);
    }
    for order in observed.orders.iter().filter(|o| judged.contains(&o.id)) {
        let mine = charges.remove(&order.id).unwrap_or_default();
        let approved: Vec<&&Charge> = mine.iter().filter(|c| c.status == "approved").collect();
        let declined = mine.iter().any(|c| c.status == "declined");
        let paid = payments
            .get(&order.id)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let id = order.id;
        match order.status.as_str() {
            "PAID" => {
                let completed = paid.iter().filter(|p| p.status == "COMPLETED").count();
                if paid.len() != 1 || completed != 1 {
                    verdict.money.push(format!(
                        "order {id} is PAID with {} payments ({completed} COMPLETED)",
                        paid.len()
                    ));
                }
                if approved.len() != 1 {
                    verdict.money.push(format!(
                        "order {id} is PAID with {} approved charges at the gateway",
                        approved.len()
                    ));
                }
                for charge in &approved {
                    if !same_money(&charge.amount, &order.amount)
                        || charge.currency != order.currency
                    {
                        verdict.money.push(format!(
                            "order {id} is for {} {} but was charged {} {}",
                            order.amount, order.currency, charge.amount, charge.currency
                        ));
                    }
                }
            }
            "PAYMENT_FAILED" => {
                if !declined || !approved.is_empty() {
                    verdict.money.push(format!(
                        "order {id} is PAYMENT_FAILED with {} approved charges and {} declined",
                        approved.len(),
                        u8::from(declined)
                    ));
                }
            }
            status => {
                if !approved.is_empty() {
                    verdict.money.push(format!(
                        "order {id} is {status} but has {} approved charges",
                        approved.len()
                    ));
                }
            }
        }
    }
    // Charges of orders that exist but are not the run's (the warm-up) are not judged.
    let mut per_key: HashMap<&str, usize> = HashMap::new();
    for request in observed
        .gateway_requests
        .iter()
        .filter(|r| r.method == "POST")
    {
        *per_key.entry(request.idempotency_key.as_str()).or_default() += 1;
    }
    verdict.charge_requests_max = per_key.values().copied().max().unwrap_or(0);
    for request in observed
        .gateway_requests
        .iter()
        .filter(|r| r.answer == "422")
    {
        verdict.money.push(format!(
            "the gateway refused request {} ({}): its key was used before with another body",
            request.seq, request.idempotency_key
        ));
    }
    for (first, second) in gateway_stand_in::overlapping(&observed.gateway_requests) {
        verdict.money.push(format!(
            "gateway requests {first} and {second} of one key were in flight at the same time"
        ));
    }
}

/// Nothing stuck, nothing dead-lettered, nothing going backwards.
fn check_flow(observed: &Observed, verdict: &mut Verdict) {
    for t in &observed.transitions {
        if t.from != "PENDING" || t.to == "PENDING" {
            verdict.wrong_order.push(format!(
                "order {} went from {} to {}",
                t.order_id, t.from, t.to
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
}

/// Progress, second by second.
fn check_progress(observed: &Observed, expect: &Expectations, verdict: &mut Verdict) {
    if verdict.paid == 0 {
        verdict
            .no_progress
            .push("no order was paid: a run that does nothing never passes".into());
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
        if expect.flow_during_fault {
            check_windows(observed, expect, window, verdict);
        }
    }
    check_waits(observed, expect, verdict);
}

/// Where the fault is tolerated: after the grace period, every full 5 s window while load
/// is offered — through the fault, its heal and what follows — has at least half the
/// offered orders paid. A stall that begins late in the fault (a consumer group that loses
/// its coordinator and then its session) or at the heal is as much a failure as one at the
/// fault's start.
fn check_windows(
    observed: &Observed,
    expect: &Expectations,
    window: Window,
    verdict: &mut Verdict,
) {
    let from = window.grace_from_s + expect.grace.as_secs();
    let sum = |range: std::ops::Range<u64>, of: fn(&Second) -> u64| -> u64 {
        range
            .filter_map(|s| observed.timeline.get(s as usize))
            .map(of)
            .sum()
    };
    // The load's last second: the last one in which an order was accepted.
    let load_end = observed
        .timeline
        .iter()
        .rposition(|s| s.accepted > 0)
        .map_or(window.heal_s, |last| last as u64 + 1)
        .max(window.heal_s);
    let mut start = from;
    while start + 5 <= load_end {
        let paid = sum(start..start + 5, |s| s.paid);
        // Half the offered rate, or everything there was to pay (accepted by the window's
        // end, not paid before it) when that is less: once the load has ended and all is
        // paid, a quiet window is not a stall.
        let owed = sum(0..start + 5, |s| s.accepted).saturating_sub(sum(0..start, |s| s.paid));
        let needed = (expect.rate * 5.0 / 2.0).min(owed as f64);
        if (paid as f64) < needed {
            verdict.no_progress.push(format!(
                "{paid} orders paid from {start} s to {} s, during or after a fault the design \
                 tolerates; at least {needed:.0} (half the offered rate, or all there was to \
                 pay) from its {} s grace on",
                start + 5,
                expect.grace.as_secs()
            ));
        }
        start += 5;
    }
}

/// The age of the oldest acknowledged order not yet settled, second by second: at most
/// [`STEADY_WAIT`] outside the fault and its recovery budget, at most the grace period
/// more during a tolerated fault (and its recovery).
fn check_waits(observed: &Observed, expect: &Expectations, verdict: &mut Verdict) {
    let acknowledged: HashSet<Uuid> = observed
        .requests
        .iter()
        .filter_map(|r| match r.outcome {
            Outcome::Acknowledged { order_id } => Some(order_id),
            _ => None,
        })
        .collect();
    let orders: Vec<&OrderState> = observed
        .orders
        .iter()
        .filter(|o| acknowledged.contains(&o.id))
        .collect();
    let Some(end_ms) = orders
        .iter()
        .map(|o| o.paid_ms.unwrap_or(o.created_ms))
        .max()
    else {
        return;
    };
    let mut longest = 0i64;
    let mut flagged = 0;
    let mut t = observed.started_ms;
    while t <= end_ms {
        let wait = orders
            .iter()
            .filter(|o| o.created_ms <= t && o.paid_ms.is_none_or(|p| p > t))
            .map(|o| t - o.created_ms)
            .max()
            .unwrap_or(0);
        longest = longest.max(wait);
        let second = ((t - observed.started_ms) / 1000) as u64;
        if let Some(allowed) = allowed_wait(observed.fault, expect, second) {
            if wait > allowed.as_millis() as i64 && flagged < 5 {
                flagged += 1;
                verdict.no_progress.push(format!(
                    "at {second} s an acknowledged order had waited {:.1} s to be settled (at most {} s then)",
                    wait as f64 / 1000.0,
                    allowed.as_secs()
                ));
            }
        }
        t += 1000;
    }
    verdict.longest_wait_s = Some(longest as f64 / 1000.0);
}

/// How long an order may wait at `second` of the run; `None` for no bound (an outage
/// the design does not carry, and the recovery after it).
fn allowed_wait(fault: Option<Window>, expect: &Expectations, second: u64) -> Option<Duration> {
    let Some(window) = fault else {
        return Some(STEADY_WAIT);
    };
    let recovered = window.heal_s + expect.recover_within.as_secs();
    if second < window.start_s || second > recovered {
        return Some(STEADY_WAIT);
    }
    if expect.flow_during_fault {
        // Orders caught by the fault may wait for the failover, from the action the grace
        // counts from.
        let since_start = Duration::from_secs(window.grace_from_s.saturating_sub(window.start_s));
        return Some(STEADY_WAIT + since_start + expect.grace);
    }
    None
}

fn latencies(observed: &Observed, verdict: &mut Verdict) {
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
}

#[cfg(test)]
mod tests;
