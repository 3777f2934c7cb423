//! The HTTP API: routes, the JSON problem responses every error becomes, and the OpenAPI
//! spec (served at `/api-docs/openapi.json`, browsable at `/swagger-ui`).

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Extension;
use axum::{Json, Router};
use events::{Amount, Currency, TraceContext};
use serde::Deserialize;
use service_kit::paging::{Page, PageParams};
use service_kit::problem::CommonResponses;
use service_kit::Problem;
use sqlx::PgPool;
use utoipa::{OpenApi, ToSchema};
use utoipa_swagger_ui::SwaggerUi;
use uuid::Uuid;

use crate::domain::{NewOrder, Order, OrderStatus};
use crate::store::{self, Created, StoreError};

/// The largest request body accepted.
pub const MAX_BODY_BYTES: usize = 16 * 1024;
/// Longest accepted `Idempotency-Key`.
pub const MAX_IDEMPOTENCY_KEY: usize = 255;

#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    /// Where an order's event goes; woken once the order is committed.
    pub outbox: outbox::Outbox,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "order-service",
        description = "Accepts orders; each one is published as order.created."
    ),
    paths(create_order, list_orders, get_order),
    modifiers(&CommonResponses),
    components(schemas(CreateOrder, Order, OrderStatus, Problem))
)]
pub struct ApiDoc;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/orders", get(list_orders).post(create_order))
        .route("/orders/{id}", get(get_order))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
        .merge(SwaggerUi::new("/swagger-ui").url("/api-docs/openapi.json", ApiDoc::openapi()))
        .fallback(|| async { ApiError::NotFound("no such endpoint".into()) })
}

/// The body of `POST /orders`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateOrder {
    /// Greater than 0, at most 1000000.00, at most two decimal places; a JSON number, in
    /// any notation JSON allows (`222.22`, `2.2222e2`), never a string.
    #[schema(value_type = f64, exclusive_minimum = 0, maximum = 1000000, multiple_of = 0.01, example = 222.22)]
    pub amount: Amount,
    /// ISO 4217 code, one of the accepted ones; USD when left out (not null).
    #[serde(default)]
    #[schema(schema_with = currency_schema)]
    pub currency: Currency,
}

/// The accepted currency codes, as the schema of `currency`.
fn currency_schema() -> utoipa::openapi::schema::Object {
    utoipa::openapi::schema::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .enum_values(Some(events::money::CURRENCIES.iter().copied()))
        .default(Some(serde_json::Value::from("USD")))
        .examples(["USD"])
        .build()
}

/// Create an order. It is stored as `PENDING` and published as `order.created`.
#[utoipa::path(
    post, path = "/orders", request_body = CreateOrder,
    params(("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255,
        pattern = "^[\\x21-\\x7E]([\\x20-\\x7E]*[\\x21-\\x7E])?$",
        description = "Makes the call safe to retry: the same key and body return the original order. 1 to 255 visible ASCII characters")),
    responses(
        (status = 201, description = "Created (or, with a repeated Idempotency-Key, the original order)", body = Order),
        (status = 400, description = "Malformed JSON or header", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body larger than 16 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not application/json", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid field, or an Idempotency-Key reused with another body", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn create_order(
    State(state): State<AppState>,
    trace: Option<Extension<TraceContext>>,
    headers: HeaderMap,
    ApiJson(JsonObject(body)): ApiJson<JsonObject<CreateOrder>>,
) -> Result<Response, ApiError> {
    let key = idempotency_key(&headers)?;
    let new = NewOrder {
        amount: body.amount,
        currency: body.currency,
    };
    let trace = trace.map(|Extension(trace)| trace);
    let created = store::create_order(
        &state.pool,
        &state.outbox,
        &new,
        key.as_deref(),
        trace.as_ref(),
    )
    .await?;
    let (order, replayed) = match created {
        Created::New(order) => {
            state.outbox.committed();
            (order, false)
        }
        Created::Replayed(order) => (order, true),
    };
    // The order id is the correlation id of every event about the order.
    tracing::info!(order_id = %order.id, correlation_id = %order.id, replayed, "order accepted");
    let mut response = (StatusCode::CREATED, Json(order)).into_response();
    if replayed {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// 1 to 255 visible ASCII characters or spaces, not starting or ending with a space (the
/// schema's pattern); a tab or any other control character is refused.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value.as_bytes();
    let printable = key.iter().all(|b| (0x20..=0x7e).contains(b));
    let trimmed = key.first() != Some(&b' ') && key.last() != Some(&b' ');
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY || !printable || !trimmed {
        return Err(ApiError::BadRequest(format!(
            "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters (inner spaces allowed)"
        )));
    }
    Ok(Some(String::from_utf8_lossy(key).into_owned()))
}

/// List orders, newest first.
#[utoipa::path(get, path = "/orders", params(PageParams),
    responses((status = 200, body = [Order]), (status = 400, body = Problem, content_type = "application/problem+json")))]
async fn list_orders(
    State(state): State<AppState>,
    page: Page,
) -> Result<Json<Vec<Order>>, ApiError> {
    Ok(Json(
        store::list_orders(&state.pool, page.limit, page.before).await?,
    ))
}

/// One order.
#[utoipa::path(get, path = "/orders/{id}", params(("id" = Uuid, Path)),
    responses((status = 200, body = Order), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 404, body = Problem, content_type = "application/problem+json")))]
async fn get_order(
    State(state): State<AppState>,
    id: Result<Path<Uuid>, PathRejection>,
) -> Result<Json<Order>, ApiError> {
    let Path(id) = id.map_err(|_| ApiError::BadRequest("the order id must be a UUID".into()))?;
    store::get_order(&state.pool, id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("no order {id}")))
}

/// A struct read only from a JSON object, each field at most once: serde alone would also
/// read it from an array such as `[5, "USD"]`, and reading through a `Value` first would
/// keep the last of `{"amount": 1, "amount": 2}` silently.
pub struct JsonObject<T>(pub T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for JsonObject<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Object<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Object<T> {
            type Value = T;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                // The derived visitor refuses a field given twice ("duplicate field").
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            }
        }
        deserializer
            .deserialize_map(Object(std::marker::PhantomData))
            .map(JsonObject)
    }
}

/// JSON in, with every rejection turned into our problem response.
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    TooLarge(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::JsonDataError(e) => {
                ApiError::Invalid(without_axum_prefix(&e.body_text()))
            }
            JsonRejection::JsonSyntaxError(e) => {
                ApiError::BadRequest(without_axum_prefix(&e.body_text()))
            }
            JsonRejection::MissingJsonContentType(_) => ApiError::UnsupportedMediaType(
                "the body must be JSON, sent with Content-Type: application/json".into(),
            ),
            JsonRejection::BytesRejection(_) => {
                ApiError::TooLarge(format!("the body must be at most {MAX_BODY_BYTES} bytes"))
            }
            other => ApiError::BadRequest(other.body_text()),
        }
    }
}

/// "Failed to deserialize the JSON body into the target type: amount: …" → "amount: …".
fn without_axum_prefix(text: &str) -> String {
    text.split_once(": ")
        .filter(|(head, _)| head.starts_with("Failed to"))
        .map_or(text, |(_, rest)| rest)
        .to_owned()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, kind, title) = match &self {
            ApiError::BadRequest(_) => {
                (StatusCode::BAD_REQUEST, "bad-request", "Malformed request")
            }
            ApiError::Invalid(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid-request",
                "Invalid request",
            ),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not-found", "Not found"),
            ApiError::UnsupportedMediaType(_) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
            ),
            ApiError::TooLarge(_) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "too-large",
                "Request too large",
            ),
            ApiError::Store(StoreError::KeyReused) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency-key-reused",
                "Idempotency-Key reused",
            ),
            ApiError::Store(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "Temporarily unavailable",
            ),
        };
        let detail = match &self {
            ApiError::Store(e @ (StoreError::Database(_) | StoreError::Corrupt { .. })) => {
                tracing::error!(error = %e, "request failed");
                "the order store is unavailable; retry later (with the same Idempotency-Key)".into()
            }
            other => other.to_string(),
        };
        Problem::new(status, kind, title, detail).into_response()
    }
}
