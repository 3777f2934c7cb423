//! The HTTP API: read-only views of payments, with the OpenAPI spec at
//! `/api-docs/openapi.json` and Swagger UI at `/swagger-ui`.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use service_kit::paging::{Page, PageParams};
use service_kit::problem::CommonResponses;
use service_kit::Problem;
use sqlx::PgPool;
use utoipa::OpenApi;
use utoipa_swagger_ui::SwaggerUi;
use uuid::Uuid;

use crate::domain::{Payment, PaymentStatus};
use crate::store;

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
    modifiers(&CommonResponses),
    components(schemas(Payment, PaymentStatus, Problem))
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

/// List payments, newest first.
#[utoipa::path(get, path = "/payments", params(PageParams),
    responses((status = 200, body = [Payment]), (status = 400, body = Problem, content_type = "application/problem+json")))]
async fn list_payments(
    State(state): State<AppState>,
    page: Page,
) -> Result<Json<Vec<Payment>>, ApiError> {
    Ok(Json(
        store::list_payments(&state.pool, page.limit, page.before).await?,
    ))
}

/// The payment of one order.
#[utoipa::path(get, path = "/payments/{order_id}", params(("order_id" = Uuid, Path)),
    responses((status = 200, body = Payment), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 404, body = Problem, content_type = "application/problem+json")))]
async fn get_payment(
    State(state): State<AppState>,
    order_id: Result<Path<Uuid>, PathRejection>,
) -> Result<Json<Payment>, ApiError> {
    let Path(order_id) =
        order_id.map_err(|_| ApiError::BadRequest("the order id must be a UUID".into()))?;
    store::payment_of(&state.pool, order_id)
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
