//! The payment gateway: the third party that charges an order.
//!
//! Either a real gateway over HTTP ([`HttpGateway`], when `PAYMENT_GATEWAY_URL` is set) or
//! the built-in [`Simulated`] one, which approves everything except what its decline rule
//! says (for the demo and for benchmarks, with no network on the hot path).
//!
//! The HTTP protocol, written down in `docs/payment-gateway.md`:
//! `POST {base}/charges` with `Idempotency-Key: <order id>` and
//! `{"order_id", "amount", "currency"}`; the answer is
//! `{"status": "approved", "reference": …}` or `{"status": "declined", "reason": …}`
//! (a `402` is a decline too). Because the key is the order's id, a charge retried after a
//! timeout or a crash can never charge twice.

use std::time::Duration;

use events::{Amount, Currency};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::domain::{clean, Charge};

/// One charge: an order's amount.
#[derive(Debug, Clone, Serialize)]
pub struct ChargeRequest {
    pub order_id: Uuid,
    pub amount: Amount,
    pub currency: Currency,
}

/// A charge the gateway did not process.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GatewayError {
    /// A 5xx, 408 or 429, a timeout, or no connection: it may pass, so it is retried.
    #[error("payment gateway unavailable: {0}")]
    Unavailable(String),
    /// Another 4xx: the gateway will never accept this request as it is.
    #[error("payment gateway refused the request: {0}")]
    Refused(String),
}

impl GatewayError {
    /// What the consumer does about it: retry an unavailable gateway, dead-letter a
    /// refused request at once.
    pub fn outcome(&self) -> consumer::Outcome {
        let failure = consumer::Failure::new(self.class(), self.to_string());
        match self {
            GatewayError::Unavailable(_) => consumer::Outcome::Retry(failure),
            GatewayError::Refused(_) => consumer::Outcome::DeadLetter(failure),
        }
    }

    /// The error class in dead-letter headers and counts.
    pub fn class(&self) -> &'static str {
        match self {
            GatewayError::Unavailable(_) => consumer::class::GATEWAY_UNAVAILABLE,
            GatewayError::Refused(_) => consumer::class::GATEWAY_REFUSED,
        }
    }
}

/// The gateway in use.
#[derive(Debug, Clone)]
pub enum Gateway {
    Http(HttpGateway),
    Simulated(Simulated),
}

impl Gateway {
    /// Counted in `payment_gateway_calls_total{gateway,outcome}` (`approved`, `declined`,
    /// `unavailable`, `refused`) and timed in `payment_gateway_call_duration_seconds`.
    pub async fn charge(&self, request: &ChargeRequest) -> Result<Charge, GatewayError> {
        let started = std::time::Instant::now();
        let (kind, result) = match self {
            Gateway::Http(gateway) => ("http", gateway.charge(request).await),
            Gateway::Simulated(gateway) => ("simulated", Ok(gateway.charge(request))),
        };
        let outcome = match &result {
            Ok(Charge::Approved { .. }) => "approved",
            Ok(Charge::Declined { .. }) => "declined",
            Err(GatewayError::Unavailable(_)) => "unavailable",
            Err(GatewayError::Refused(_)) => "refused",
        };
        metrics::counter!("payment_gateway_calls_total", "gateway" => kind, "outcome" => outcome)
            .increment(1);
        metrics::histogram!("payment_gateway_call_duration_seconds", "gateway" => kind)
            .record(started.elapsed().as_secs_f64());
        result
    }

    /// Whether each charge is a network call (and so worth doing concurrently).
    pub fn is_remote(&self) -> bool {
        matches!(self, Gateway::Http(_))
    }
}

/// Approves every charge, except those above `decline_above` when it is set.
#[derive(Debug, Clone, Default)]
pub struct Simulated {
    pub decline_above: Option<Decimal>,
}

impl Simulated {
    fn charge(&self, request: &ChargeRequest) -> Charge {
        match self.decline_above {
            Some(limit) if request.amount.value() > limit => {
                Charge::declined(&format!("amount above the simulated limit of {limit}"))
            }
            _ => Charge::approved(&format!("sim-{}", request.order_id)),
        }
    }
}

/// A gateway over HTTP, every call bounded by a timeout.
#[derive(Debug, Clone)]
pub struct HttpGateway {
    client: reqwest::Client,
    charges_url: String,
}

#[derive(Deserialize)]
#[serde(tag = "status", rename_all = "lowercase")]
enum Answer {
    Approved { reference: String },
    Declined { reason: String },
}

#[derive(Deserialize)]
struct DeclineBody {
    reason: Option<String>,
}

impl HttpGateway {
    /// `base_url` is the gateway's root (`http://host:port`); `timeout` bounds each call,
    /// from connecting to reading the whole answer.
    pub fn new(base_url: &str, timeout: Duration) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()?;
        Ok(Self {
            client,
            charges_url: format!("{}/charges", base_url.trim_end_matches('/')),
        })
    }

    async fn charge(&self, request: &ChargeRequest) -> Result<Charge, GatewayError> {
        let mut response = self
            .client
            .post(&self.charges_url)
            .header("idempotency-key", request.order_id.to_string())
            .json(request)
            .send()
            .await
            .map_err(|e| GatewayError::Unavailable(describe(&e)))?;
        let status = response.status();
        let body = read_bounded(&mut response).await;
        if status == reqwest::StatusCode::PAYMENT_REQUIRED {
            let reason = body
                .ok()
                .and_then(|b| serde_json::from_slice::<DeclineBody>(&b).ok())
                .and_then(|b| b.reason);
            return Ok(Charge::declined(reason.as_deref().unwrap_or("declined")));
        }
        if status.is_server_error()
            || status == reqwest::StatusCode::REQUEST_TIMEOUT
            || status == reqwest::StatusCode::TOO_MANY_REQUESTS
        {
            return Err(GatewayError::Unavailable(format!("answered {status}")));
        }
        if !status.is_success() {
            let text = body.map_or_else(|e| e, |b| String::from_utf8_lossy(&b).into_owned());
            return Err(GatewayError::Refused(format!(
                "answered {status}: {}",
                clean(&text, 200)
            )));
        }
        // An unreadable success may still have charged: retrying with the same key is
        // safe, so it counts as unavailable rather than refused.
        let body = body.map_err(GatewayError::Unavailable)?;
        match serde_json::from_slice::<Answer>(&body) {
            Ok(Answer::Approved { reference }) => Ok(Charge::approved(&reference)),
            Ok(Answer::Declined { reason }) => Ok(Charge::declined(&reason)),
            Err(e) => Err(GatewayError::Unavailable(format!(
                "unreadable answer ({status}): {e}"
            ))),
        }
    }
}

/// The largest answer read from the gateway; a larger one is not an answer this protocol
/// gives, and is not read into memory.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// The answer's body, or why it is not read: larger than [`MAX_ANSWER_BYTES`], or cut
/// off. Bounded in time by the client's timeout.
async fn read_bounded(response: &mut reqwest::Response) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                    return Err(format!(
                        "answer larger than {MAX_ANSWER_BYTES} bytes, not read"
                    ));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(e) => return Err(format!("reading the answer: {}", describe(&e))),
        }
    }
}

fn describe(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        "timed out".into()
    } else if error.is_connect() {
        format!("cannot connect: {error}")
    } else {
        error.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(amount: &str) -> ChargeRequest {
        ChargeRequest {
            order_id: Uuid::now_v7(),
            amount: amount.parse().unwrap(),
            currency: Currency::USD,
        }
    }

    #[test]
    fn the_simulated_gateway_declines_only_above_its_limit() {
        let gateway = Simulated {
            decline_above: Some("100.00".parse().unwrap()),
        };
        assert!(matches!(
            gateway.charge(&request("100.00")),
            Charge::Approved { .. }
        ));
        assert!(matches!(
            gateway.charge(&request("100.01")),
            Charge::Declined { .. }
        ));
        let approving = Simulated::default();
        assert!(matches!(
            approving.charge(&request("999999.99")),
            Charge::Approved { .. }
        ));
    }
}
