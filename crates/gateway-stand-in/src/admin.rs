//! The admin listener of a stand-in run as a process: faults set and the record read
//! over HTTP, on a port of its own (so refusing the provider's port refuses no admin).
//!
//! - `PUT /fault` with a [`Fault`] as JSON (`{"fault": "unavailable"}`, `{"fault":
//!   "lose-answers", "one_in": 5}`, `{"fault": "none"}`);
//! - `GET /requests`: every request so far, as JSON;
//! - `GET /charges`: every charge so far, as JSON.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::routing::{get, put};
use axum::{Json, Router};

use crate::{Charge, Fault, RequestRecord, StandIn};

/// Serves the admin API of `stand_in` on `listen` until the task is dropped.
pub async fn serve(stand_in: Arc<StandIn>, listen: SocketAddr) -> anyhow::Result<()> {
    let app = Router::new()
        .route("/fault", put(set_fault))
        .route("/requests", get(requests))
        .route("/charges", get(charges))
        .with_state(stand_in);
    let listener = tokio::net::TcpListener::bind(listen).await?;
    axum::serve(listener, app).await?;
    Ok(())
}

async fn set_fault(State(stand_in): State<Arc<StandIn>>, Json(fault): Json<Fault>) -> Json<Fault> {
    stand_in.set_fault(fault);
    tracing::info!(?fault, "stand-in gateway: fault set");
    Json(fault)
}

async fn requests(State(stand_in): State<Arc<StandIn>>) -> Json<Vec<RequestRecord>> {
    Json(stand_in.requests())
}

async fn charges(State(stand_in): State<Arc<StandIn>>) -> Json<Vec<Charge>> {
    Json(stand_in.charges())
}
