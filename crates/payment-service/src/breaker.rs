//! The circuit breaker on the payment gateway, shared by every batch of the process.
//!
//! - **Closed**: calls go through. Every answer that is about an order (a charge approved
//!   or declined, an order's data refused, "no such charge", "in progress") shows the
//!   gateway working and ends the run of failures; an answer that is about the gateway
//!   (no connection, a timeout, `5xx`, `429`, `401`, `403`, a `404` from the charge
//!   endpoint) adds the order to the run. When the run holds
//!   `PAYMENT_GATEWAY_BREAKER_FAILURES` different orders, or has lasted
//!   `PAYMENT_GATEWAY_BREAKER_WINDOW_MS` without a single answer (judged over time: a
//!   consumer whose partitions all wait holds only so many orders), the breaker **opens**.
//! - **Open**: no call is made; the orders wait (the consumer is in an outage: nothing is
//!   dead-lettered, no attempt is used up). After `PAYMENT_GATEWAY_BREAKER_OPEN_MS` it is
//!   **half-open**.
//! - **Half-open**: one probe — an inquiry about a key no order has, which has no effect
//!   at the gateway — is made; an answer closes the breaker, a failure opens it again.
//!
//! The run counts different orders, so one order the gateway keeps failing cannot open
//! the breaker by itself; and the probe is an inquiry, not a charge, so such an order
//! cannot keep it open either.
//!
//! It also counts the charges the gateway answered ([`Breaker::answered`]): an order's
//! failure uses up one of its attempts only if the gateway answered other charges since
//! its previous one (`on_order_created`).
//!
//! Written here rather than taken from `failsafe` or a tower layer: neither counts a run
//! of *different* keys nor probes with a call other than the one refused, and both are
//! what keep one order from standing for an outage.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The breaker's settings; flattened into payment-service's command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::Args)]
pub struct BreakerSettings {
    /// Failed gateway calls in a row, for this many different orders, open the circuit
    /// breaker: no call is made, orders wait (nothing dead-lettered) until a probe finds
    /// the gateway answering again.
    #[arg(long = "gateway-breaker-failures", env = "PAYMENT_GATEWAY_BREAKER_FAILURES",
          default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub failures: u32,

    /// How long the breaker stays open before it probes the gateway, in milliseconds.
    #[arg(
        long = "gateway-breaker-open-ms",
        env = "PAYMENT_GATEWAY_BREAKER_OPEN_MS",
        default_value_t = 5000
    )]
    pub open_ms: u64,

    /// Failed gateway calls with no answer at all for this long, in milliseconds, also
    /// open the breaker (at least two of them).
    #[arg(
        long = "gateway-breaker-window-ms",
        env = "PAYMENT_GATEWAY_BREAKER_WINDOW_MS",
        default_value_t = 10_000
    )]
    pub window_ms: u64,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self {
            failures: 5,
            open_ms: 5000,
            window_ms: 10_000,
        }
    }
}

/// Where the breaker is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half-open",
        }
    }

    /// The value of `payment_gateway_breaker_state`.
    fn gauge(self) -> f64 {
        match self {
            State::Closed => 0.0,
            State::HalfOpen => 1.0,
            State::Open => 2.0,
        }
    }
}

/// What a caller may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    /// Make the call.
    Call,
    /// Make the probe first; [`Breaker::probed`] with its result.
    Probe,
    /// Make no call: the breaker is open (or another caller is probing).
    Refused,
}

pub struct Breaker {
    settings: BreakerSettings,
    inner: Mutex<Inner>,
    answered: AtomicU64,
}

struct Inner {
    state: State,
    /// When an open breaker may probe.
    until: Instant,
    /// A probe is in flight.
    probing: bool,
    /// The orders of the current run of failures, its calls, and when it began.
    run: HashSet<String>,
    run_calls: u32,
    run_began: Instant,
    /// Why it opened, for people.
    reason: String,
    since: Instant,
}

impl std::fmt::Debug for Breaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.report().1.as_str())
    }
}

impl Breaker {
    pub fn new(settings: BreakerSettings) -> Self {
        metrics::gauge!("payment_gateway_breaker_state").set(State::Closed.gauge());
        Self {
            settings,
            inner: Mutex::new(Inner {
                state: State::Closed,
                until: Instant::now(),
                probing: false,
                run: HashSet::new(),
                run_calls: 0,
                run_began: Instant::now(),
                reason: String::new(),
                since: Instant::now(),
            }),
            answered: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a call may be made now.
    pub fn permit(&self) -> Permit {
        let mut inner = self.lock();
        match inner.state {
            State::Closed => Permit::Call,
            State::Open if Instant::now() < inner.until => Permit::Refused,
            State::Open | State::HalfOpen if !inner.probing => {
                if inner.state == State::Open {
                    self.transition(&mut inner, State::HalfOpen);
                }
                inner.probing = true;
                Permit::Probe
            }
            State::Open | State::HalfOpen => Permit::Refused,
        }
    }

    /// The probe's result: `true` if the gateway answered.
    pub fn probed(&self, answered: bool, reason: &str) {
        let mut inner = self.lock();
        inner.probing = false;
        if answered {
            inner.run.clear();
            inner.run_calls = 0;
            self.transition(&mut inner, State::Closed);
        } else {
            inner.reason = reason.to_owned();
            self.open(&mut inner);
        }
    }

    /// A call about `key` was answered; `charge` if it was a charge's answer.
    pub fn answered(&self, charge: bool) {
        if charge {
            self.answered.fetch_add(1, Ordering::Relaxed);
        }
        let mut inner = self.lock();
        inner.run.clear();
        inner.run_calls = 0;
        if inner.state == State::HalfOpen && !inner.probing {
            self.transition(&mut inner, State::Closed);
        }
    }

    /// A call about `key` failed for a reason about the gateway.
    pub fn failed(&self, key: &str, reason: &str) {
        let mut inner = self.lock();
        if inner.run_calls == 0 {
            inner.run_began = Instant::now();
        }
        inner.run_calls += 1;
        inner.run.insert(key.to_owned());
        let many = inner.run.len() >= self.settings.failures as usize;
        let long = inner.run_calls >= 2
            && inner.run_began.elapsed() >= Duration::from_millis(self.settings.window_ms);
        if inner.state == State::Closed && (many || long) {
            inner.reason = reason.to_owned();
            self.open(&mut inner);
        }
    }

    /// Charges the gateway has answered so far.
    pub fn charges_answered(&self) -> u64 {
        self.answered.load(Ordering::Relaxed)
    }

    /// The state, and what to say about it.
    pub fn report(&self) -> (State, String) {
        let inner = self.lock();
        let detail = match inner.state {
            State::Closed => "closed: calls go through".to_owned(),
            state => format!(
                "{} for {:.0} s: {}",
                state.as_str(),
                inner.since.elapsed().as_secs_f64(),
                inner.reason
            ),
        };
        (inner.state, detail)
    }

    fn open(&self, inner: &mut Inner) {
        inner.until = Instant::now() + Duration::from_millis(self.settings.open_ms);
        if inner.state != State::Open {
            self.transition(inner, State::Open);
        }
    }

    fn transition(&self, inner: &mut Inner, to: State) {
        let from = inner.state;
        if from == to {
            return;
        }
        inner.state = to;
        match to {
            State::Open if from == State::Closed => {
                inner.since = Instant::now();
                tracing::warn!(
                    reason = %inner.reason, orders = inner.run.len(),
                    open_for_ms = self.settings.open_ms,
                    "payment gateway circuit breaker opened: orders wait, nothing is dead-lettered"
                );
            }
            State::Closed => tracing::info!(
                after_s = inner.since.elapsed().as_secs_f64(),
                "payment gateway circuit breaker closed: the gateway answers again"
            ),
            _ => tracing::debug!(
                from = from.as_str(),
                to = to.as_str(),
                "payment gateway circuit breaker"
            ),
        }
        metrics::gauge!("payment_gateway_breaker_state").set(to.gauge());
        metrics::counter!("payment_gateway_breaker_transitions_total", "to" => to.as_str())
            .increment(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(failures: u32, open_ms: u64) -> Breaker {
        Breaker::new(BreakerSettings {
            failures,
            open_ms,
            window_ms: 60_000,
        })
    }

    #[test]
    fn failures_with_no_answer_for_the_window_open_it_too() {
        let breaker = Breaker::new(BreakerSettings {
            failures: 100,
            open_ms: 60_000,
            window_ms: 0,
        });
        breaker.failed("a", "401");
        assert_eq!(breaker.permit(), Permit::Call, "one failure is not a run");
        breaker.failed("a", "401");
        assert_eq!(breaker.permit(), Permit::Refused);
    }

    #[test]
    fn it_opens_after_failures_of_different_orders_in_a_row() {
        let breaker = breaker(3, 60_000);
        breaker.failed("a", "503");
        breaker.failed("b", "503");
        // One order failing again does not lengthen the run.
        breaker.failed("b", "503");
        assert_eq!(breaker.permit(), Permit::Call);
        breaker.failed("c", "503");
        assert_eq!(breaker.permit(), Permit::Refused);
        assert_eq!(breaker.report().0, State::Open);
    }

    #[test]
    fn an_answer_ends_the_run() {
        let breaker = breaker(2, 60_000);
        breaker.failed("a", "503");
        breaker.answered(true);
        breaker.failed("b", "503");
        assert_eq!(breaker.permit(), Permit::Call);
        assert_eq!(breaker.charges_answered(), 1);
    }

    #[test]
    fn one_order_alone_never_opens_it() {
        let breaker = breaker(2, 60_000);
        for _ in 0..10 {
            breaker.failed("a", "500");
        }
        assert_eq!(breaker.permit(), Permit::Call);
    }

    #[test]
    fn after_the_open_time_one_caller_probes_and_its_answer_closes_it() {
        let breaker = breaker(1, 0);
        breaker.failed("a", "refused");
        assert_eq!(breaker.permit(), Permit::Probe);
        // While the probe is out, others wait.
        assert_eq!(breaker.permit(), Permit::Refused);
        breaker.probed(true, "");
        assert_eq!(breaker.permit(), Permit::Call);
        assert_eq!(breaker.report().0, State::Closed);
    }

    #[test]
    fn a_failed_probe_opens_it_again() {
        let breaker = breaker(1, 60_000);
        breaker.failed("a", "refused");
        {
            // As if the open time had passed.
            breaker.lock().until = Instant::now();
        }
        assert_eq!(breaker.permit(), Permit::Probe);
        breaker.probed(false, "still refused");
        assert_eq!(breaker.permit(), Permit::Refused);
        assert_eq!(breaker.report().0, State::Open);
    }
}
