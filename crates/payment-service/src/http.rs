//! The HTTP API: read-only views of payments, with the OpenAPI spec at
//! `/api-docs/openapi.json` and Swagger UI at `/swagger-ui`.

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use service_kit::Problem;
use sqlx::PgPool;
use utoipa::{IntoParams, OpenApi, ToSchema};
use utoipa_swagger_ui::SwaggerUi;
use uuid::Uuid;

pub const DEFAULT_LIMIT: u32 = 50;
pub const MAX_LIMIT: u32 = 200;

#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "payment-service",
        description = "One payment per order, charged through the payment gateway; published as payment.completed or, when declined, payment.failed."
    ),
    paths(list_payments, get_payment),
    components(schemas(Payment, Problem))
)]
pub struct ApiDoc;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/payments", get(list_payments))
        .route("/payments/{order_id}", get(get_payment))
        .with_state(state)
        .merge(SwaggerUi::new("/swagger-ui").url("/api-docs/openapi.json", ApiDoc::openapi()))
        .fallback(|| async { ApiError::NotFound("no such endpoint".into()) })
}

/// A stored payment.
#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct Payment {
    pub id: Uuid,
    pub order_id: Uuid,
    /// Exact decimal with two places, written as a JSON number.
    #[schema(value_type = f64, example = 222.22)]
    #[serde(with = "rust_decimal::serde::arbitrary_precision")]
    pub amount: Decimal,
    #[schema(example = "USD")]
    pub currency: String,
    /// `COMPLETED`, or `FAILED` when the gateway declined the charge.
    #[schema(example = "COMPLETED")]
    pub status: String,
    /// The gateway's reason, for a declined charge.
    pub decline_reason: Option<String>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// Page size, 1 to 200; default 50.
    pub limit: Option<u32>,
    /// The id of the last payment of the previous page.
    pub before: Option<Uuid>,
}

/// List payments, newest first.
#[utoipa::path(get, path = "/payments", params(ListParams),
    responses((status = 200, body = [Payment]), (status = 400, body = Problem)))]
async fn list_payments(
    State(state): State<AppState>,
    query: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<Vec<Payment>>, ApiError> {
    let Query(params) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let limit = params.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit must be between 1 and {MAX_LIMIT}"
        )));
    }
    let payments = sqlx::query_as(
        "SELECT id, order_id, amount, currency, status, decline_reason, created_at FROM payments
         WHERE ($1::uuid IS NULL OR id < $1) ORDER BY id DESC LIMIT $2",
    )
    .bind(params.before)
    .bind(i64::from(limit))
    .fetch_all(&state.pool)
    .await?;
    Ok(Json(payments))
}

/// The payment of one order.
#[utoipa::path(get, path = "/payments/{order_id}", params(("order_id" = Uuid, Path)),
    responses((status = 200, body = Payment), (status = 400, body = Problem), (status = 404, body = Problem)))]
async fn get_payment(
    State(state): State<AppState>,
    order_id: Result<Path<Uuid>, PathRejection>,
) -> Result<Json<Payment>, ApiError> {
    let Path(order_id) =
        order_id.map_err(|_| ApiError::BadRequest("the order id must be a UUID".into()))?;
    sqlx::query_as(
        "SELECT id, order_id, amount, currency, status, decline_reason, created_at FROM payments WHERE order_id = $1",
    )
    .bind(order_id)
    .fetch_optional(&state.pool)
    .await?
    .map(Json)
    .ok_or_else(|| ApiError::NotFound(format!("no payment for order {order_id}")))
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::BadRequest(detail) => Problem::new(
                StatusCode::BAD_REQUEST,
                "bad-request",
                "Malformed request",
                detail,
            ),
            ApiError::NotFound(detail) => {
                Problem::new(StatusCode::NOT_FOUND, "not-found", "Not found", detail)
            }
            ApiError::Database(e) => {
                tracing::error!(error = %e, "request failed");
                Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "Temporarily unavailable",
                    "the payment store is unavailable; retry later",
                )
            }
        }
        .into_response()
    }
}
