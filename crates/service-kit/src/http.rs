//! Serving HTTP with bounds, so slow or idle clients cannot exhaust a service:
//! - a connection must send a request's headers within `HTTP_HEADER_TIMEOUT_SECS`, or it
//!   is closed; that also closes connections that send nothing, and kept-alive ones left
//!   idle between requests;
//! - a request must be received and answered within `HTTP_REQUEST_TIMEOUT_SECS`, or it is
//!   answered `408` (a body that stops arriving halfway included);
//! - at most `HTTP_MAX_IN_FLIGHT` requests are handled at once; more are answered `503`
//!   at once, with `Retry-After`.
//!
//! Every request also gets its trace context ([`events::TraceContext`]: from its
//! `traceparent` and `X-Request-Id`, or new), a span that carries it, `x-request-id` and
//! `traceparent` on the response, and its count and latency in the metrics.
//!
//! HTTP/1.1 only: the services have no use for HTTP/2, and the header timeout is an
//! HTTP/1 bound.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use events::spans::{self, Attribute as KeyValue};
use events::TraceContext;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::Problem;

/// The bounds on HTTP clients; the same variables for both services.
#[derive(Debug, Clone, clap::Args)]
pub struct HttpSettings {
    /// A connection must send a request's headers within this many seconds; one that
    /// sends nothing, or idles between requests, is closed after it.
    #[arg(long, env = "HTTP_HEADER_TIMEOUT_SECS", default_value_t = 10)]
    pub header_timeout_secs: u64,

    /// A request must be received and answered within this many seconds, else `408`.
    #[arg(long, env = "HTTP_REQUEST_TIMEOUT_SECS", default_value_t = 15)]
    pub request_timeout_secs: u64,

    /// Most requests handled at once; more are answered `503` at once.
    #[arg(long, env = "HTTP_MAX_IN_FLIGHT", default_value_t = 1024)]
    pub max_in_flight: usize,
}

impl HttpSettings {
    pub fn header_timeout(&self) -> Duration {
        Duration::from_secs(self.header_timeout_secs.max(1))
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs.max(1))
    }
}

/// What the middleware of one service needs.
#[derive(Clone)]
struct Bounds {
    service: &'static str,
    request_timeout: Duration,
    in_flight: Arc<Semaphore>,
}

/// `router` with the bounds, the trace context and the metrics of every request.
pub fn instrument(service: &'static str, router: Router, settings: &HttpSettings) -> Router {
    let bounds = Bounds {
        service,
        request_timeout: settings.request_timeout(),
        in_flight: Arc::new(Semaphore::new(settings.max_in_flight.max(1))),
    };
    router.layer(middleware::from_fn_with_state(bounds, bounded))
}

async fn bounded(State(bounds): State<Bounds>, mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().as_str().to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let mut trace = {
        let header = |name: &str| request.headers().get(name).and_then(|v| v.to_str().ok());
        TraceContext::from_request(
            header(events::trace::TRACEPARENT),
            header(events::trace::REQUEST_ID),
        )
    };
    // The API's requests are the flow's first hop; probes and scrapes are not exported.
    let hop = (!route.starts_with("/health") && route != "/metrics").then(|| {
        trace.begin(
            format!("{method} {route}"),
            spans::Kind::Server,
            SystemTime::now(),
            vec![
                KeyValue::new("http.request.method", method.clone()),
                KeyValue::new("http.route", route.clone()),
            ],
        )
    });
    if let Some(hop) = &hop {
        // A new trace is sampled as the sampler decided; a continued one, as its caller did.
        if spans::exporting() && trace.parent_span_id.is_none() && !hop.sampled() {
            trace.flags = "00".into();
        }
    }
    let span = tracing::info_span!(
        "http",
        service = bounds.service,
        %method,
        %route,
        request_id = %trace.request_id,
        trace_id = %trace.trace_id,
        span_id = %trace.span_id,
    );
    request.extensions_mut().insert(trace.clone());

    let mut response = match bounds.in_flight.clone().try_acquire_owned() {
        Err(_) => {
            let mut busy = Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                "Too many requests in flight",
                "the service is handling as many requests as it may (HTTP_MAX_IN_FLIGHT); retry shortly",
            )
            .into_response();
            busy.headers_mut()
                .insert("retry-after", HeaderValue::from_static("1"));
            busy
        }
        Ok(_permit) => {
            match tokio::time::timeout(bounds.request_timeout, next.run(request).instrument(span))
                .await
            {
                Ok(response) => response,
                Err(_) => Problem::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "request-timeout",
                    "Request not completed in time",
                    format!(
                        "the request was not received and answered within {:?} (HTTP_REQUEST_TIMEOUT_SECS)",
                        bounds.request_timeout
                    ),
                )
                .into_response(),
            }
        }
    };
    for (name, value) in trace.headers() {
        if let Ok(value) = HeaderValue::from_str(&value) {
            response.headers_mut().insert(name, value);
        }
    }
    if let Some(mut hop) = hop {
        hop.set([KeyValue::new(
            "http.response.status_code",
            i64::from(response.status().as_u16()),
        )]);
        hop.end();
    }
    let status = response.status().as_u16().to_string();
    metrics::counter!("http_requests_total", "service" => bounds.service, "method" => method.clone(), "route" => route.clone(), "status" => status).increment(1);
    metrics::histogram!("http_request_duration_seconds", "service" => bounds.service, "method" => method, "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

/// Serves `router` on `listener` until `shutdown` completes, then lets the requests in
/// flight finish (the caller bounds how long). Connections are HTTP/1.1, with the header
/// timeout of `settings`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    settings: &HttpSettings,
    shutdown: impl Future<Output = ()>,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(settings.header_timeout());
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, say: wait a little rather than spin.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let connection = http.serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}
