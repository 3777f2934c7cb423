//! Charging a batch's orders through the gateway, and what each failure means for the
//! runner (`docs/payment-gateway.md` has the table):
//!
//! | the gateway… | the order |
//! | --- | --- |
//! | approved or declined it | settled |
//! | refused its data (`400`, `422`) | dead-lettered at once (`gateway.refused`) |
//! | has a request with its key in progress (`409`) | waits, no attempt used |
//! | breaker open | waits, no attempt used |
//! | failed in a way about the gateway, and answered other charges since this order's last try | retried: one attempt used (`gateway.unavailable`) |
//! | failed in a way about the gateway, and answered nothing else since | waits, no attempt used |
//! | may have charged and did not say (timeout, reset, `5xx`, unreadable `2xx`) | asked (`GET /charges/{key}`): its charge if it made one; else as the line above; if it cannot say, waits |
//!
//! An order replayed from its dead-letter topic (`redriven-from`) is asked about before
//! it is charged, so a replay after the gateway forgot its key never charges twice.
//!
//! The gateway's answers are kept until they are stored, so a batch tried again after a
//! database outage, or split to find a refused message, does not ask the gateway again;
//! a charge that is asked again carries the same idempotency key.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::SystemTime;

use consumer::{class, Failure, Outcome};
use events::spans::{Attribute, Kind};
use events::TraceContext;
use futures::StreamExt;
use uuid::Uuid;

use crate::domain::Charge;
use crate::gateway::{ChargeRequest, Gateway, GatewayError};

/// More entries than this means they are not being cleared: they are dropped rather than
/// kept without bound.
const MAX_KEPT: usize = 100_000;

/// One order to charge.
pub struct Order {
    pub request: ChargeRequest,
    /// Replayed from a dead-letter topic: ask before charging.
    pub redriven: bool,
    /// The charge's hop of the order's trace (a child of its consume), if it has one.
    pub trace: Option<TraceContext>,
}

/// The gateway, and what this process remembers of its answers.
pub struct Charging {
    pub gateway: Gateway,
    /// Most charges in flight at once, for a remote gateway.
    pub concurrency: usize,
    /// The gateway's answers not stored yet, by order.
    answered: Mutex<HashMap<Uuid, Charge>>,
    /// For each order whose last try failed at the gateway: how many charges the gateway
    /// had answered then. Its next failure uses up an attempt only if that number grew.
    failed_at: Mutex<HashMap<Uuid, u64>>,
}

impl Charging {
    pub fn new(gateway: Gateway, concurrency: usize) -> Self {
        Self {
            gateway,
            concurrency: concurrency.max(1),
            answered: Mutex::default(),
            failed_at: Mutex::default(),
        }
    }

    /// Charges each order (once per order id, even if the batch holds it twice); an
    /// order the gateway already answered is not asked again. Returns per order its
    /// charge, or the outcome the runner should give its message.
    pub async fn charge_all(&self, orders: Vec<Order>) -> HashMap<Uuid, Result<Charge, Outcome>> {
        let mut results = HashMap::new();
        let mut seen = HashSet::new();
        let mut asking = Vec::new();
        {
            let answered = lock(&self.answered);
            for order in orders {
                let id = order.request.order_id;
                if let Some(charge) = answered.get(&id) {
                    results.insert(id, Ok(charge.clone()));
                } else if seen.insert(id) {
                    asking.push(order);
                }
            }
        }
        let before = self.charges_answered();
        let concurrency = if self.gateway.is_remote() {
            self.concurrency
        } else {
            1
        };
        let asked: Vec<(Uuid, Result<Charge, GatewayError>)> = futures::stream::iter(asking)
            .map(|order| async move { (order.request.order_id, self.charge_one(&order).await) })
            .buffer_unordered(concurrency)
            .collect()
            .await;
        for (order_id, result) in asked {
            let settled = match result {
                Ok(charge) => {
                    self.keep(order_id, &charge);
                    Ok(charge)
                }
                Err(error) => Err(self.outcome_of(order_id, &error, before)),
            };
            results.insert(order_id, settled);
        }
        results
    }

    /// Drops what is kept about orders whose payments are stored.
    pub fn forget(&self, orders: impl Iterator<Item = Uuid>) {
        let (mut answered, mut failed_at) = (lock(&self.answered), lock(&self.failed_at));
        for order_id in orders {
            answered.remove(&order_id);
            failed_at.remove(&order_id);
        }
    }

    /// One order: asked about first if it was replayed; charged; asked about if the
    /// charge's outcome is unknown.
    async fn charge_one(&self, order: &Order) -> Result<Charge, GatewayError> {
        let started = SystemTime::now();
        let result = self.charge_or_ask(order).await;
        if let Some(trace) = &order.trace {
            trace.record("charge", Kind::Client, started, || {
                vec![
                    Attribute::new("order.id", order.request.order_id.to_string()),
                    Attribute::new(
                        "charge.outcome",
                        match &result {
                            Ok(charge) => format!("{:?}", charge.status()),
                            Err(error) => error.to_string(),
                        },
                    ),
                ]
            });
        }
        result
    }

    async fn charge_or_ask(&self, order: &Order) -> Result<Charge, GatewayError> {
        let id = order.request.order_id;
        if order.redriven {
            if let Some(charge) = self.gateway.inquire(id).await? {
                tracing::info!(order_id = %id, "a replayed order was charged before: its charge is used");
                return Ok(charge);
            }
        }
        match self.gateway.charge(&order.request).await {
            Err(GatewayError::Unavailable {
                reason,
                unknown_outcome: true,
            }) => self.ask(id, reason).await,
            other => other,
        }
    }

    /// A charge whose answer never came: what the gateway did, or why it cannot say.
    async fn ask(&self, order_id: Uuid, reason: String) -> Result<Charge, GatewayError> {
        match self.gateway.inquire(order_id).await {
            Ok(Some(charge)) => {
                tracing::info!(order_id = %order_id, %reason, "the charge's answer was lost; asked, the gateway had made it");
                Ok(charge)
            }
            Ok(None) => Err(GatewayError::Unavailable {
                reason: format!("{reason}; asked, the gateway has no charge for it"),
                unknown_outcome: false,
            }),
            Err(error) => Err(GatewayError::Unavailable {
                reason: format!("{reason}; asking what became of it: {error}"),
                unknown_outcome: true,
            }),
        }
    }

    /// What a failed charge means for its message (the table above).
    fn outcome_of(&self, order_id: Uuid, error: &GatewayError, before: u64) -> Outcome {
        let failure = |class: &str| Failure::new(class, error.to_string());
        match error {
            GatewayError::Refused(_) => Outcome::DeadLetter(failure(class::GATEWAY_REFUSED)),
            GatewayError::InProgress(_) => Outcome::Wait(failure(class::GATEWAY_IN_PROGRESS)),
            GatewayError::Open(_) => Outcome::Wait(failure(class::GATEWAY_BREAKER_OPEN)),
            GatewayError::Unavailable {
                unknown_outcome: true,
                ..
            } => Outcome::Wait(failure(class::GATEWAY_UNAVAILABLE)),
            GatewayError::Unavailable { .. } => {
                let now = self.charges_answered();
                let since = {
                    let mut failed_at = lock(&self.failed_at);
                    if failed_at.len() > MAX_KEPT {
                        failed_at.clear();
                    }
                    failed_at.insert(order_id, now).unwrap_or(before)
                };
                if now > since && self.breaker_closed() {
                    Outcome::Retry(failure(class::GATEWAY_UNAVAILABLE))
                } else {
                    Outcome::Wait(failure(class::GATEWAY_UNAVAILABLE))
                }
            }
        }
    }

    fn keep(&self, order_id: Uuid, charge: &Charge) {
        let mut answered = lock(&self.answered);
        if answered.len() > MAX_KEPT {
            answered.clear();
        }
        answered.insert(order_id, charge.clone());
    }

    fn charges_answered(&self) -> u64 {
        self.gateway
            .breaker()
            .map_or(0, |breaker| breaker.charges_answered())
    }

    fn breaker_closed(&self) -> bool {
        self.gateway
            .breaker()
            .is_none_or(|breaker| breaker.report().0 == crate::breaker::State::Closed)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
