//! The stand-in payment gateway a drill runs as a process of its own: it approves every
//! charge, honours the idempotency key as a real provider does (the same key gets the
//! same charge back), and records every request, so the checker can count real charges
//! per order.
//!
//! Protocol: `docs/payment-gateway.md` (`POST /charges`, `Idempotency-Key`). The record is
//! one JSON line per request: [`ChargeRequest`].

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// One request the gateway received, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChargeRequest {
    /// Milliseconds since the Unix epoch.
    pub at_ms: i64,
    pub idempotency_key: String,
    pub order_id: String,
    pub amount: String,
    /// The charge this request got: new for a new key, the earlier one for a repeat.
    pub charge_id: Uuid,
    /// Whether this request created the charge.
    pub created: bool,
}

struct Gateway {
    charges: HashMap<String, Uuid>,
    log: std::io::BufWriter<std::fs::File>,
}

/// Serves the gateway on `listen` until the process is killed, recording to `log`.
pub async fn serve(listen: SocketAddr, log: &Path) -> anyhow::Result<()> {
    let state = Arc::new(Mutex::new(Gateway {
        charges: HashMap::new(),
        log: std::io::BufWriter::new(std::fs::File::create(log)?),
    }));
    let app = Router::new()
        .route("/charges", post(charge))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(listen).await?;
    axum::serve(listener, app).await?;
    Ok(())
}

#[derive(Deserialize)]
struct Body {
    order_id: String,
    amount: serde_json::Value,
}

async fn charge(
    State(state): State<Arc<Mutex<Gateway>>>,
    headers: HeaderMap,
    Json(body): Json<Body>,
) -> impl IntoResponse {
    let Some(key) = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
    else {
        return (
            StatusCode::BAD_REQUEST,
            Json(serde_json::json!({"error": "Idempotency-Key is required"})),
        );
    };
    let mut gateway = state.lock().unwrap_or_else(|e| e.into_inner());
    let (charge_id, created) = match gateway.charges.get(&key) {
        Some(id) => (*id, false),
        None => {
            let id = Uuid::now_v7();
            gateway.charges.insert(key.clone(), id);
            (id, true)
        }
    };
    let request = ChargeRequest {
        at_ms: chrono::Utc::now().timestamp_millis(),
        idempotency_key: key,
        order_id: body.order_id,
        amount: body.amount.to_string(),
        charge_id,
        created,
    };
    // Written through before answering: a charge the gateway made is on record.
    let line = serde_json::to_string(&request).unwrap_or_default();
    let _ = writeln!(gateway.log, "{line}").and_then(|()| gateway.log.flush());
    (
        StatusCode::OK,
        Json(serde_json::json!({"status": "approved", "reference": charge_id.to_string()})),
    )
}

/// Reads a gateway record.
pub fn read_record(log: &Path) -> anyhow::Result<Vec<ChargeRequest>> {
    let text = std::fs::read_to_string(log)?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| Ok(serde_json::from_str(l)?))
        .collect()
}
