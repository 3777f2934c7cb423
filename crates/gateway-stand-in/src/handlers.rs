//! The provider's two endpoints, `POST /charges` and `GET /charges/{key}`, with the
//! faults applied.

use std::str::FromStr;
use std::sync::Arc;

use axum::extract::{Path, State as Shared};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use crate::record::{now_ms, Found, RequestRecord};
use crate::server::Connection;
use crate::{lock, Charge, Fault, State, HANG_LIMIT};

pub(crate) fn router(state: Arc<State>) -> Router {
    Router::new()
        .route("/charges", post(charge))
        .route("/charges/{key}", get(inquire))
        .with_state(state)
}

#[derive(Deserialize)]
struct ChargeBody {
    order_id: String,
    amount: serde_json::Number,
    currency: String,
}

/// A request on the book until it ends; if its future is dropped first (the connection
/// went), it ends as `dropped`, or as what [`InFlight::on_drop`] says.
struct InFlight {
    state: Arc<State>,
    seq: u64,
    on_drop: &'static str,
    created: Option<Uuid>,
    ended: bool,
}

impl InFlight {
    fn begin(state: &Arc<State>, request: RequestRecord) -> Self {
        let seq = lock(&state.book).begin(request);
        Self {
            state: state.clone(),
            seq,
            on_drop: "dropped",
            created: None,
            ended: false,
        }
    }

    fn end(mut self, answer: &str, status: StatusCode, body: serde_json::Value) -> Response {
        lock(&self.state.book).end(self.seq, answer, self.created);
        self.ended = true;
        (status, Json(body)).into_response()
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if !self.ended {
            lock(&self.state.book).end(self.seq, self.on_drop, self.created);
        }
    }
}

fn record(method: &str, key: &str, body: Option<&ChargeBody>) -> RequestRecord {
    RequestRecord {
        seq: 0,
        method: method.to_owned(),
        idempotency_key: key.to_owned(),
        order_id: body.map(|b| b.order_id.clone()),
        amount: body.map(|b| b.amount.to_string()),
        currency: body.map(|b| b.currency.clone()),
        started_ms: now_ms(),
        ended_ms: None,
        answer: String::new(),
        created: None,
    }
}

/// What the general fault does to a request: its answer, or the request back when it is
/// to be answered as usual.
async fn apply_fault(
    fault: Fault,
    mut request: InFlight,
    connection: &Connection,
) -> Result<Response, InFlight> {
    match fault {
        Fault::Unavailable => Ok(request.end(
            "503",
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"error": "unavailable"}),
        )),
        Fault::Unauthorized => Ok(request.end(
            "401",
            StatusCode::UNAUTHORIZED,
            json!({"error": "invalid API key"}),
        )),
        Fault::Hang => {
            request.on_drop = "hung";
            tokio::select! {
                () = connection.closed() => {}
                () = tokio::time::sleep(HANG_LIMIT) => {}
            }
            Ok(request.end(
                "hung",
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"error": "hung"}),
            ))
        }
        // Refused connections never reach a handler; lost and late answers are a charge's.
        Fault::None | Fault::Refuse | Fault::LoseAnswers { .. } | Fault::LateAnswers => {
            Err(request)
        }
    }
}

async fn charge(
    Shared(state): Shared<Arc<State>>,
    Extension(connection): Extension<Connection>,
    headers: HeaderMap,
    body: Result<Json<ChargeBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Some(key) = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
    else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "Idempotency-Key is required"})),
        )
            .into_response();
    };
    let Ok(Json(body)) = body else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "the body is not a charge"})),
        )
            .into_response();
    };
    let request = InFlight::begin(&state, record("POST", &key, Some(&body)));
    let fault = *state.fault.borrow();
    let mut request = match apply_fault(fault, request, &connection).await {
        Ok(response) => return response,
        Err(request) => request,
    };
    let order_fault = lock(&state.order_faults).get(&body.order_id).copied();
    if let Some(status) = order_fault {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return request.end(status.as_str(), status, json!({"error": "failed"}));
    }
    let (conflicts, retention, delay) = {
        let settings = lock(&state.settings);
        (
            settings.conflict_while_in_flight,
            settings.key_retention,
            settings.charge_delay,
        )
    };
    if conflicts && lock(&state.book).others_in_flight(&key) {
        return request.end(
            "409",
            StatusCode::CONFLICT,
            json!({"error": "a request with this key is in progress"}),
        );
    }
    let fingerprint = format!("{} {} {}", body.order_id, body.amount, body.currency);
    let found = lock(&state.book).find(&key, &fingerprint, retention);
    let charge = match found {
        Found::Same(charge) => charge,
        Found::Other => {
            return request.end(
                "422",
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({"error": "this Idempotency-Key was used with another request"}),
            )
        }
        Found::Nothing => {
            let charge = Charge {
                id: Uuid::now_v7(),
                idempotency_key: key.clone(),
                order_id: body.order_id.clone(),
                amount: body.amount.to_string(),
                currency: body.currency.clone(),
                status: if declines(&state, &body.amount) {
                    "declined"
                } else {
                    "approved"
                }
                .to_owned(),
                at_ms: now_ms(),
            };
            lock(&state.book).add_charge(charge.clone(), fingerprint);
            request.created = Some(charge.id);
            charge
        }
    };
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    match fault {
        Fault::LoseAnswers { one_in } if request.seq % u64::from(one_in.max(1)) == 0 => {
            request.on_drop = "lost";
            connection.drop_it();
            std::future::pending::<()>().await;
        }
        Fault::LateAnswers => {
            request.on_drop = "late";
            tokio::select! {
                () = connection.closed() => {}
                () = tokio::time::sleep(HANG_LIMIT) => {}
            }
            return request.end("late", StatusCode::OK, answer_of(&charge));
        }
        _ => {}
    }
    let answer = charge.status.clone();
    request.end(&answer, StatusCode::OK, answer_of(&charge))
}

async fn inquire(
    Shared(state): Shared<Arc<State>>,
    Extension(connection): Extension<Connection>,
    Path(key): Path<String>,
) -> Response {
    let request = InFlight::begin(&state, record("GET", &key, None));
    let fault = *state.fault.borrow();
    let request = match fault {
        Fault::LoseAnswers { .. } | Fault::LateAnswers => request,
        _ => match apply_fault(fault, request, &connection).await {
            Ok(response) => return response,
            Err(request) => request,
        },
    };
    let found = lock(&state.book).charge_of(&key);
    match found {
        Some(charge) => {
            let answer = charge.status.clone();
            request.end(&answer, StatusCode::OK, answer_of(&charge))
        }
        None => request.end("none", StatusCode::NOT_FOUND, json!({"status": "none"})),
    }
}

/// The provider's answer for a charge.
fn answer_of(charge: &Charge) -> serde_json::Value {
    if charge.status == "approved" {
        json!({"status": "approved", "reference": charge.id.to_string(),
               "order_id": charge.order_id, "amount": charge.amount, "currency": charge.currency})
    } else {
        json!({"status": "declined", "reason": "amount above the stand-in's limit",
               "order_id": charge.order_id, "amount": charge.amount, "currency": charge.currency})
    }
}

/// Whether `amount` is above the decline limit.
fn declines(state: &State, amount: &serde_json::Number) -> bool {
    let limit = lock(&state.settings).decline_above;
    match (limit, rust_decimal::Decimal::from_str(&amount.to_string())) {
        (Some(limit), Ok(amount)) => amount > limit,
        _ => false,
    }
}
