//! An open-loop load generator for `POST /orders`, shared by the failure drills and the
//! benchmarks.
//!
//! - **Open loop**: orders are started at a fixed rate whatever the system does; a slow
//!   system gets more requests in flight, not fewer requests (a closed loop would hide a
//!   stall by slowing down with it).
//! - **Careful client**: each order has its own `Idempotency-Key`. A request that fails
//!   (no connection, a timeout, a `5xx`) is sent again with the same key — to the next
//!   service instance, if there are several — until it is answered or `give_up_after`.
//! - **Everything recorded**: every order ends [`Outcome::Acknowledged`] (a `201`, with
//!   the order's id), [`Outcome::Refused`] (another `4xx`) or [`Outcome::Indeterminate`]
//!   (never answered: the order may or may not exist), with its attempts and times.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How to load the service.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// Base URLs of the order-service instances (`http://127.0.0.1:8080`); requests go
    /// round-robin, and a retry goes to the next one.
    pub targets: Vec<String>,
    /// Orders started per second.
    pub rate: f64,
    /// How long orders are started.
    pub duration: Duration,
    /// Bound on one request.
    pub request_timeout: Duration,
    /// An order still unanswered this long after it was started is indeterminate.
    pub give_up_after: Duration,
    /// Seeds the amounts, so a run can be repeated.
    pub seed: u64,
    /// Part of every idempotency key, to keep runs apart.
    pub run_id: String,
}

/// What became of one order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// `201`: the order exists.
    Acknowledged { order_id: Uuid },
    /// A `4xx` other than the retryable ones: the order does not exist.
    Refused { status: u16, detail: String },
    /// Never answered: it may or may not exist.
    Indeterminate { last_error: String },
}

/// One order's request, as the generator saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub seq: u64,
    pub idempotency_key: String,
    /// The amount sent, as text (exact).
    pub amount: String,
    /// Milliseconds after the run started: when the order was started and when it ended.
    pub started_ms: u64,
    pub ended_ms: u64,
    pub attempts: u32,
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// Counts while a run goes on, for progress lines.
#[derive(Debug, Default)]
pub struct Progress {
    pub started: AtomicU64,
    pub acknowledged: AtomicU64,
    pub refused: AtomicU64,
    pub indeterminate: AtomicU64,
    pub retries: AtomicU64,
}

impl Progress {
    pub fn snapshot(&self) -> [u64; 5] {
        [
            self.started.load(Ordering::Relaxed),
            self.acknowledged.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed),
            self.indeterminate.load(Ordering::Relaxed),
            self.retries.load(Ordering::Relaxed),
        ]
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("no target to send orders to")]
    NoTarget,
    #[error("the rate must be above 0, not {0}")]
    Rate(f64),
    #[error("building the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

/// Starts orders at `config.rate` for `config.duration` (or until `stop`), waits for
/// each to end, and returns every order's record, in the order started.
pub async fn run(
    config: &LoadConfig,
    progress: Arc<Progress>,
    stop: CancellationToken,
) -> Result<Vec<Request>, LoadError> {
    if config.targets.is_empty() {
        return Err(LoadError::NoTarget);
    }
    if config.rate.is_nan() || config.rate <= 0.0 {
        return Err(LoadError::Rate(config.rate));
    }
    let client = reqwest::Client::builder()
        .timeout(config.request_timeout)
        .connect_timeout(config.request_timeout)
        .pool_max_idle_per_host(64)
        .build()?;
    let started = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / config.rate);
    let total = planned(config);
    let mut amounts = Amounts(config.seed | 1);
    let mut tasks = Vec::with_capacity(total as usize);
    // Ticks are kept to the schedule (a late tick is not skipped), so the rate holds.
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for seq in 0..total {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = ticks.tick() => {}
        }
        let order = Order {
            seq,
            key: format!("{}-{seq}", config.run_id),
            amount: amounts.next(),
        };
        progress.started.fetch_add(1, Ordering::Relaxed);
        let (key, amount) = (order.key.clone(), order.amount.clone());
        let started_ms = started.elapsed().as_millis() as u64;
        let task = tokio::spawn(send(
            client.clone(),
            config.clone(),
            order,
            started,
            progress.clone(),
        ));
        tasks.push((seq, key, amount, started_ms, task));
    }
    let mut requests = Vec::with_capacity(tasks.len());
    for (seq, idempotency_key, amount, started_ms, task) in tasks {
        // A send that panicked is on the record too: its order may exist.
        let request = task.await.unwrap_or_else(|e| Request {
            seq,
            idempotency_key,
            amount,
            started_ms,
            ended_ms: started.elapsed().as_millis() as u64,
            attempts: 0,
            outcome: Outcome::Indeterminate {
                last_error: format!("the send failed: {e}"),
            },
        });
        requests.push(request);
    }
    Ok(requests)
}

/// How many orders `config` plans: its rate times its duration.
pub fn planned(config: &LoadConfig) -> u64 {
    (config.rate * config.duration.as_secs_f64()).round() as u64
}

struct Order {
    seq: u64,
    key: String,
    amount: String,
}

/// Sends one order until it is answered or it is time to give up.
async fn send(
    client: reqwest::Client,
    config: LoadConfig,
    order: Order,
    run_started: Instant,
    progress: Arc<Progress>,
) -> Request {
    let started = Instant::now();
    let started_ms = run_started.elapsed().as_millis() as u64;
    let body = format!(r#"{{"amount": {}, "currency": "EUR"}}"#, order.amount);
    let mut attempts = 0;
    let mut pause = Duration::from_millis(100);
    let outcome = loop {
        let target =
            &config.targets[(order.seq as usize + attempts as usize) % config.targets.len()];
        attempts += 1;
        let answer = client
            .post(format!("{target}/orders"))
            .header("content-type", "application/json")
            .header("idempotency-key", &order.key)
            .body(body.clone())
            .send()
            .await;
        let last_error = match answer {
            Ok(response) if response.status().as_u16() == 201 => {
                match response.json::<serde_json::Value>().await {
                    Ok(order) => match order["id"].as_str().and_then(|id| id.parse().ok()) {
                        Some(order_id) => break Outcome::Acknowledged { order_id },
                        None => format!("201 without an order id: {order}"),
                    },
                    Err(e) => format!("201, body unreadable: {e}"),
                }
            }
            Ok(response)
                if response.status().is_client_error()
                    && response.status().as_u16() != 408
                    && response.status().as_u16() != 429 =>
            {
                let status = response.status().as_u16();
                let detail = response.text().await.unwrap_or_default();
                break Outcome::Refused { status, detail };
            }
            Ok(response) => format!("answered {}", response.status()),
            Err(e) if e.is_timeout() => "timed out".to_owned(),
            Err(e) => e.to_string(),
        };
        if started.elapsed() + pause > config.give_up_after {
            break Outcome::Indeterminate { last_error };
        }
        progress.retries.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(2));
    };
    let counter = match &outcome {
        Outcome::Acknowledged { .. } => &progress.acknowledged,
        Outcome::Refused { .. } => &progress.refused,
        Outcome::Indeterminate { .. } => &progress.indeterminate,
    };
    counter.fetch_add(1, Ordering::Relaxed);
    Request {
        seq: order.seq,
        idempotency_key: order.key,
        amount: order.amount,
        started_ms,
        ended_ms: run_started.elapsed().as_millis() as u64,
        attempts,
        outcome,
    }
}

/// Amounts from 1.00 to 999.99, from a seed (xorshift): repeatable, varied.
struct Amounts(u64);

impl Amounts {
    fn next(&mut self) -> String {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        let cents = 100 + x % 99_900;
        format!("{}.{:02}", cents / 100, cents % 100)
    }
}

/// Writes `requests` as JSON lines.
pub fn write_history(path: &std::path::Path, requests: &[Request]) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    for request in requests {
        serde_json::to_writer(&mut out, request)?;
        out.write_all(b"\n")?;
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_are_repeatable_valid_money() {
        let mut a = Amounts(7);
        let mut b = Amounts(7);
        for _ in 0..1000 {
            let amount = a.next();
            assert_eq!(amount, b.next());
            let (whole, cents) = amount.split_once('.').expect("two places");
            assert_eq!(cents.len(), 2);
            let whole: u64 = whole.parse().expect("number");
            assert!((1..=999).contains(&whole), "{amount}");
        }
    }

    #[test]
    fn a_request_record_reads_back_as_written() {
        let request = Request {
            seq: 3,
            idempotency_key: "run-3".into(),
            amount: "12.34".into(),
            started_ms: 10,
            ended_ms: 25,
            attempts: 2,
            outcome: Outcome::Acknowledged {
                order_id: Uuid::nil(),
            },
        };
        let line = serde_json::to_string(&request).expect("json");
        assert!(line.contains(r#""outcome":"acknowledged""#), "{line}");
        assert_eq!(
            serde_json::from_str::<Request>(&line).expect("back"),
            request
        );
    }
}
