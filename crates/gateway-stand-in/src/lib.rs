//! A stand-in payment gateway, as strict as a real provider, for the suite and the
//! failure drills. It speaks the protocol of `docs/payment-gateway.md`:
//!
//! - `POST /charges` with an `Idempotency-Key`: the first request of a key charges (or
//!   declines, above [`Settings::decline_above`]); a repeat with the same body gets the
//!   same charge back; a repeat with another body is refused (`422`); a repeat while the
//!   first is still in flight gets `409`. After [`Settings::key_retention`] a key is
//!   forgotten, as providers forget keys after about a day: a repeat then charges again.
//! - `GET /charges/{key}`: the charge made under that key (kept for good, as providers
//!   keep charges), or `404 {"status": "none"}`.
//!
//! It records every request it receives — when it started and ended, what it answered,
//! whether it created a charge — so tests and drills count real charges per order and
//! see requests of one key that overlapped in time. And it can be told to fail
//! ([`Fault`]): refuse connections, answer `503` or `401`, hang past the client's
//! timeout, or charge and then drop the connection — for everyone, or for one order.
//!
//! In-process ([`StandIn::start`]) for tests; as a process (`gateway-stand-in`) for
//! drills, controlled through an admin listener of its own ([`admin`]).

pub mod admin;
mod handlers;
mod record;
mod server;
pub mod tls;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

pub use record::{overlapping, Charge, RequestRecord};

/// What the stand-in does to the requests it receives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "fault")]
pub enum Fault {
    /// Answers as a provider does.
    #[default]
    None,
    /// Nothing listens: connections are refused.
    Refuse,
    /// Every request is answered `503`.
    Unavailable,
    /// Every request is held without an answer until the client gives up (or
    /// [`HANG_LIMIT`] passes).
    Hang,
    /// Every request is answered `401`: the client's credentials are not accepted.
    Unauthorized,
    /// One charge request in `one_in` is charged, then its connection is dropped without
    /// an answer; the others are answered as usual.
    LoseAnswers { one_in: u32 },
    /// Every charge request is charged, then held without an answer until the client
    /// gives up (its answer comes too late).
    LateAnswers,
}

/// How long a hung request is held at most.
pub const HANG_LIMIT: Duration = Duration::from_secs(60);

/// How the stand-in behaves when nothing fails.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// Charges above this amount are declined (`{"status": "declined"}`).
    pub decline_above: Option<rust_decimal::Decimal>,
    /// After this long a key is forgotten: a repeat of it charges again.
    pub key_retention: Option<Duration>,
    /// `409` for a request whose key has another request in flight (as providers do).
    pub conflict_while_in_flight: bool,
    /// Every charge takes this long to answer (as a card network does).
    pub charge_delay: Option<Duration>,
}

impl Settings {
    /// A provider's defaults: keys remembered, `409` while a key is in flight.
    pub fn strict() -> Self {
        Self {
            conflict_while_in_flight: true,
            ..Self::default()
        }
    }
}

/// The stand-in's state, shared by its handlers.
pub(crate) struct State {
    pub settings: Mutex<Settings>,
    pub book: Mutex<record::Book>,
    pub fault: watch::Sender<Fault>,
    /// Faults of single orders (by order id), ahead of the general one: the status each
    /// of its charge requests is answered with.
    pub order_faults: Mutex<HashMap<String, u16>>,
}

/// A running stand-in gateway. Stops when dropped.
pub struct StandIn {
    addr: SocketAddr,
    scheme: &'static str,
    state: Arc<State>,
    _server: tokio::task::JoinHandle<()>,
}

impl StandIn {
    /// A strict stand-in on a free loopback port, over plain HTTP.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(Settings::strict(), ([127, 0, 0, 1], 0).into(), None, None).await
    }

    /// A stand-in on `listen` with `settings`, over TLS when `tls` is given, writing each
    /// request to `record` (one JSON line each, as it ends) when given.
    pub async fn start_with(
        settings: Settings,
        listen: SocketAddr,
        tls: Option<tls::ServerTls>,
        record: Option<&Path>,
    ) -> anyhow::Result<Self> {
        let book = record::Book::new(record)?;
        let (fault, _) = watch::channel(Fault::None);
        let state = Arc::new(State {
            settings: Mutex::new(settings),
            book: Mutex::new(book),
            fault,
            order_faults: Mutex::default(),
        });
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let server = tokio::spawn(server::serve(listener, addr, tls, state.clone()));
        Ok(Self {
            addr,
            scheme,
            state,
            _server: server,
        })
    }

    /// The base URL to give payment-service (`PAYMENT_GATEWAY_URL`).
    pub fn url(&self) -> String {
        let host = if self.scheme == "https" {
            "localhost".to_owned()
        } else {
            self.addr.ip().to_string()
        };
        format!("{}://{host}:{}", self.scheme, self.addr.port())
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Fails every request from now on as `fault` says (`Fault::None` heals).
    pub fn set_fault(&self, fault: Fault) {
        self.state.fault.send_replace(fault);
    }

    /// Answers every charge request of `order_id` with `status` (a `5xx`, say), while
    /// other orders are answered as usual; `None` heals it.
    pub fn fail_order(&self, order_id: &str, status: Option<u16>) {
        let mut faults = lock(&self.state.order_faults);
        match status {
            Some(status) => faults.insert(order_id.to_owned(), status),
            None => faults.remove(order_id),
        };
    }

    /// Changes the settings.
    pub fn configure(&self, change: impl FnOnce(&mut Settings)) {
        change(&mut lock(&self.state.settings));
    }

    /// Every request received so far (ended or not), in the order they arrived.
    pub fn requests(&self) -> Vec<RequestRecord> {
        lock(&self.state.book).requests()
    }

    /// Every charge made so far, in the order made.
    pub fn charges(&self) -> Vec<Charge> {
        lock(&self.state.book).charges()
    }

    /// Charges made for `order_id`.
    pub fn charges_of(&self, order_id: &str) -> Vec<Charge> {
        self.charges()
            .into_iter()
            .filter(|c| c.order_id == order_id)
            .collect()
    }

    /// Charge requests (`POST`) received for `order_id`.
    pub fn charge_requests_of(&self, order_id: &str) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.method == "POST" && r.order_id.as_deref() == Some(order_id))
            .count()
    }
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
