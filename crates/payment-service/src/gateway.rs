//! The payment gateway's client: the third party that charges an order.
//!
//! Either a real gateway over HTTP(S) ([`HttpGateway`], when `PAYMENT_GATEWAY_URL` is set)
//! or the built-in [`Simulated`] one, which approves everything except what its decline
//! rule says (for the demo and for benchmarks, with no network on the hot path).
//!
//! The protocol, written down in `docs/payment-gateway.md`:
//! - `POST {base}/charges` with `Idempotency-Key: <order id>` and
//!   `{"order_id", "amount", "currency"}`; the answer is `{"status": "approved",
//!   "reference": …}` or `{"status": "declined", "reason": …}` (a `402` is a decline too);
//! - `GET {base}/charges/{key}`: the charge made under that key, or `404 {"status":
//!   "none"}`.
//!
//! Each answer is read for what it means ([`GatewayError`]): about this order (a decline;
//! `400`, `422`: its data refused), about this key (`409`: a request with it in
//! progress), or about the gateway (no connection, a timeout, `5xx`, `429`, `401`, `403`,
//! a `404` from the charge endpoint). Every call goes through the process's circuit
//! breaker ([`crate::breaker`]).

use std::sync::Arc;
use std::time::Duration;

use events::{Amount, Currency};
use reqwest::StatusCode;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::breaker::{Breaker, BreakerSettings, Permit};
use crate::domain::{clean, Charge};

/// One charge: an order's amount.
#[derive(Debug, Clone, Serialize)]
pub struct ChargeRequest {
    pub order_id: Uuid,
    pub amount: Amount,
    pub currency: Currency,
}

/// A call the gateway did not settle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    /// About the gateway, not the order: no connection, a timeout, `5xx`, `408`, `429`,
    /// `401`, `403`, a `404` from its endpoint, an unreadable answer. With
    /// `unknown_outcome`, the request reached the gateway and may have charged (a timeout
    /// or a reset after it was sent, `5xx`, an unreadable `2xx`): ask before charging
    /// again.
    #[error("payment gateway unavailable: {reason}")]
    Unavailable {
        reason: String,
        unknown_outcome: bool,
    },
    /// `409`: a request with this key is in progress at the gateway.
    #[error("payment gateway: a request with this key is in progress ({0})")]
    InProgress(String),
    /// `400` or `422`: the gateway refuses this order's data as it is.
    #[error("payment gateway refused the request: {0}")]
    Refused(String),
    /// The circuit breaker is open: no call was made.
    #[error("payment gateway circuit breaker open: {0}")]
    Open(String),
}

impl GatewayError {
    fn unavailable(reason: impl Into<String>, unknown_outcome: bool) -> Self {
        GatewayError::Unavailable {
            reason: reason.into(),
            unknown_outcome,
        }
    }

    /// The `outcome` label of `payment_gateway_calls_total`.
    fn label(&self) -> &'static str {
        match self {
            GatewayError::Unavailable { .. } => "unavailable",
            GatewayError::InProgress(_) => "in-progress",
            GatewayError::Refused(_) => "refused",
            GatewayError::Open(_) => "breaker-open",
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
    /// Charges an order. Counted in `payment_gateway_calls_total{gateway,call,outcome}`
    /// and timed in `payment_gateway_call_duration_seconds`.
    pub async fn charge(&self, request: &ChargeRequest) -> Result<Charge, GatewayError> {
        let started = std::time::Instant::now();
        let (kind, result) = match self {
            Gateway::Http(gateway) => ("http", gateway.charge(request).await),
            Gateway::Simulated(gateway) => ("simulated", Ok(gateway.charge(request))),
        };
        let outcome = match &result {
            Ok(Charge::Approved { .. }) => "approved",
            Ok(Charge::Declined { .. }) => "declined",
            Err(e) => e.label(),
        };
        count_call(kind, "charge", outcome, started);
        result
    }

    /// What the gateway did with `order_id`'s key: its charge, or `None` if it made none.
    pub async fn inquire(&self, order_id: Uuid) -> Result<Option<Charge>, GatewayError> {
        let started = std::time::Instant::now();
        let (kind, result) = match self {
            Gateway::Http(gateway) => ("http", gateway.inquire(order_id).await),
            // It keeps nothing: it never made a charge it could not answer for.
            Gateway::Simulated(_) => ("simulated", Ok(None)),
        };
        let outcome = match &result {
            Ok(Some(Charge::Approved { .. })) => "approved",
            Ok(Some(Charge::Declined { .. })) => "declined",
            Ok(None) => "none",
            Err(e) => e.label(),
        };
        count_call(kind, "inquire", outcome, started);
        result
    }

    /// Whether each charge is a network call (and so worth doing concurrently).
    pub fn is_remote(&self) -> bool {
        matches!(self, Gateway::Http(_))
    }

    /// The circuit breaker of a remote gateway.
    pub fn breaker(&self) -> Option<&Arc<Breaker>> {
        match self {
            Gateway::Http(gateway) => Some(&gateway.breaker),
            Gateway::Simulated(_) => None,
        }
    }
}

fn count_call(
    kind: &'static str,
    call: &'static str,
    outcome: &'static str,
    started: std::time::Instant,
) {
    metrics::counter!("payment_gateway_calls_total", "gateway" => kind, "call" => call, "outcome" => outcome)
        .increment(1);
    metrics::histogram!("payment_gateway_call_duration_seconds", "gateway" => kind, "call" => call)
        .record(started.elapsed().as_secs_f64());
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

/// How to reach a gateway over HTTP(S).
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// The gateway's root: `https://host[:port][/base]` (or `http://` on loopback, or
    /// with `allow_http`).
    pub base_url: String,
    /// Bounds each call, from connecting to reading the whole answer.
    pub timeout: Duration,
    /// A private certificate authority to trust (PEM), besides the public ones.
    pub ca_pem: Option<Vec<u8>>,
    /// Plain HTTP to a host that is not the loopback.
    pub allow_http: bool,
    pub breaker: BreakerSettings,
}

/// Why a gateway client cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("PAYMENT_GATEWAY_URL is not a URL: {0}")]
    Url(String),
    #[error(
        "PAYMENT_GATEWAY_URL is plain http:// to {0}, which is not this machine: use https://, \
         or set PAYMENT_GATEWAY_ALLOW_HTTP=true to send card charges unencrypted"
    )]
    PlainHttp(String),
    #[error("PAYMENT_GATEWAY_URL must start with https:// or http://: {0}")]
    Scheme(String),
    #[error("PAYMENT_GATEWAY_CA_FILE holds no certificate: {0}")]
    Certificate(String),
    #[error("creating the HTTP client: {0}")]
    Client(String),
}

/// A gateway over HTTP(S), every call bounded by a timeout and guarded by the breaker.
#[derive(Debug, Clone)]
pub struct HttpGateway {
    client: reqwest::Client,
    charges_url: String,
    breaker: Arc<Breaker>,
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

#[derive(Deserialize)]
struct NoneBody {
    status: String,
}

impl HttpGateway {
    pub fn new(settings: &HttpSettings) -> Result<Self, SetupError> {
        let url = reqwest::Url::parse(&settings.base_url)
            .map_err(|e| SetupError::Url(format!("{}: {e}", settings.base_url)))?;
        match url.scheme() {
            "https" => {}
            "http" if settings.allow_http || is_loopback(&url) => {}
            "http" => {
                return Err(SetupError::PlainHttp(
                    url.host_str().unwrap_or("").to_owned(),
                ))
            }
            _ => return Err(SetupError::Scheme(settings.base_url.clone())),
        }
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout);
        if let Some(pem) = &settings.ca_pem {
            let certificates = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| SetupError::Certificate(e.to_string()))?;
            if certificates.is_empty() {
                return Err(SetupError::Certificate("no PEM certificate found".into()));
            }
            for certificate in certificates {
                builder = builder.add_root_certificate(certificate);
            }
        }
        let client = builder
            .build()
            .map_err(|e| SetupError::Client(e.to_string()))?;
        Ok(Self {
            client,
            charges_url: format!("{}/charges", settings.base_url.trim_end_matches('/')),
            breaker: Arc::new(Breaker::new(settings.breaker)),
        })
    }

    async fn charge(&self, request: &ChargeRequest) -> Result<Charge, GatewayError> {
        let key = request.order_id.to_string();
        self.guarded(&key, true, self.post_charge(request, &key))
            .await
    }

    async fn inquire(&self, order_id: Uuid) -> Result<Option<Charge>, GatewayError> {
        let key = order_id.to_string();
        self.guarded(&key, false, self.get_charge(&key)).await
    }

    /// Makes `call` if the breaker lets it (probing first when it is half-open), and
    /// tells the breaker what came of it.
    async fn guarded<T>(
        &self,
        key: &str,
        charge: bool,
        call: impl std::future::Future<Output = Result<T, GatewayError>>,
    ) -> Result<T, GatewayError> {
        match self.breaker.permit() {
            Permit::Call => {}
            Permit::Refused => return Err(GatewayError::Open(self.breaker.report().1)),
            Permit::Probe => {
                let probe = self.get_charge(&Uuid::new_v4().to_string()).await;
                let reason = probe
                    .as_ref()
                    .err()
                    .map(ToString::to_string)
                    .unwrap_or_default();
                self.breaker.probed(probe.is_ok(), &reason);
                if probe.is_err() {
                    return Err(GatewayError::Open(reason));
                }
            }
        }
        let result = call.await;
        match &result {
            Err(GatewayError::Unavailable { reason, .. }) => self.breaker.failed(key, reason),
            Err(GatewayError::Open(_)) => {}
            Ok(_) | Err(GatewayError::Refused(_) | GatewayError::InProgress(_)) => {
                self.breaker.answered(charge)
            }
        }
        result
    }

    async fn post_charge(
        &self,
        request: &ChargeRequest,
        key: &str,
    ) -> Result<Charge, GatewayError> {
        let mut response = self
            .client
            .post(&self.charges_url)
            .header("idempotency-key", key)
            .json(request)
            .send()
            .await
            .map_err(|e| GatewayError::unavailable(describe(&e), !e.is_connect()))?;
        let status = response.status();
        let body = read_bounded(&mut response).await;
        match status {
            StatusCode::PAYMENT_REQUIRED => {
                let reason = body
                    .ok()
                    .and_then(|b| serde_json::from_slice::<DeclineBody>(&b).ok())
                    .and_then(|b| b.reason);
                Ok(Charge::declined(reason.as_deref().unwrap_or("declined")))
            }
            StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => {
                Err(GatewayError::Refused(answered(status, body)))
            }
            StatusCode::CONFLICT => Err(GatewayError::InProgress(answered(status, body))),
            status if status.is_success() => read_charge(status, body),
            // It may have charged before failing.
            status if status.is_server_error() => {
                Err(GatewayError::unavailable(answered(status, body), true))
            }
            status => Err(GatewayError::unavailable(answered(status, body), false)),
        }
    }

    async fn get_charge(&self, key: &str) -> Result<Option<Charge>, GatewayError> {
        let mut response = self
            .client
            .get(format!("{}/{key}", self.charges_url))
            .send()
            .await
            .map_err(|e| GatewayError::unavailable(describe(&e), false))?;
        let status = response.status();
        let body = read_bounded(&mut response).await;
        match status {
            StatusCode::NOT_FOUND => {
                // "No such charge" only when it says so: a 404 from a wrong base path or
                // a proxy is about the gateway.
                let none = body
                    .as_ref()
                    .ok()
                    .and_then(|b| serde_json::from_slice::<NoneBody>(b).ok())
                    .is_some_and(|b| b.status == "none");
                if none {
                    Ok(None)
                } else {
                    Err(GatewayError::unavailable(answered(status, body), false))
                }
            }
            status if status.is_success() => read_charge(status, body)
                .map(Some)
                .map_err(|e| GatewayError::unavailable(e.to_string(), false)),
            status => Err(GatewayError::unavailable(answered(status, body), false)),
        }
    }
}

/// A `2xx` answer as a charge; one that cannot be read may still have charged.
fn read_charge(status: StatusCode, body: Result<Vec<u8>, String>) -> Result<Charge, GatewayError> {
    let body = body.map_err(|e| GatewayError::unavailable(e, true))?;
    match serde_json::from_slice::<Answer>(&body) {
        Ok(Answer::Approved { reference }) => Ok(Charge::approved(&reference)),
        Ok(Answer::Declined { reason }) => Ok(Charge::declined(&reason)),
        Err(e) => Err(GatewayError::unavailable(
            format!("unreadable answer ({status}): {e}"),
            true,
        )),
    }
}

/// `answered 503: <body>`, the body cleaned and cut.
fn answered(status: StatusCode, body: Result<Vec<u8>, String>) -> String {
    let text = body.map_or_else(|e| e, |b| String::from_utf8_lossy(&b).into_owned());
    format!("answered {status}: {}", clean(&text, 200))
}

fn is_loopback(url: &reqwest::Url) -> bool {
    let host = url.host_str().unwrap_or("");
    let ip = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || ip
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
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
        use std::error::Error;
        let mut text = error.to_string();
        let mut source = error.source();
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        text
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

    fn settings(url: &str, allow_http: bool) -> HttpSettings {
        HttpSettings {
            base_url: url.to_owned(),
            timeout: Duration::from_secs(1),
            ca_pem: None,
            allow_http,
            breaker: BreakerSettings::default(),
        }
    }

    #[test]
    fn plain_http_is_accepted_only_to_the_loopback_unless_allowed() {
        for url in [
            "http://127.0.0.1:9000",
            "http://localhost:9000",
            "http://[::1]:9000",
        ] {
            assert!(HttpGateway::new(&settings(url, false)).is_ok(), "{url}");
        }
        assert!(matches!(
            HttpGateway::new(&settings("http://pay.example.com", false)),
            Err(SetupError::PlainHttp(_))
        ));
        assert!(HttpGateway::new(&settings("http://pay.example.com", true)).is_ok());
        assert!(HttpGateway::new(&settings("https://pay.example.com", false)).is_ok());
        assert!(matches!(
            HttpGateway::new(&settings("ftp://pay.example.com", true)),
            Err(SetupError::Scheme(_))
        ));
    }
}
