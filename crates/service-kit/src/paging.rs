//! Paging of the list endpoints (`GET /orders`, `GET /payments`): `?limit=&before=`,
//! checked at the edge, newest first.

use axum::extract::{FromRequestParts, Query};
use axum::http::request::Parts;
use axum::http::StatusCode;
use serde::Deserialize;
use utoipa::IntoParams;
use uuid::Uuid;

use crate::Problem;

/// Page size when none is asked for.
pub const DEFAULT_LIMIT: u32 = 50;
/// The largest page.
pub const MAX_LIMIT: u32 = 200;

/// The query of a list endpoint, as documented.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PageParams {
    /// Page size, 1 to 200; default 50.
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<u32>,
    /// The id of the last item of the previous page.
    pub before: Option<Uuid>,
}

/// One page to list: at most `limit` items, older than `before`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub limit: u32,
    pub before: Option<Uuid>,
}

impl<S: Send + Sync> FromRequestParts<S> for Page {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        let bad = |detail: String| {
            Problem::new(
                StatusCode::BAD_REQUEST,
                "bad-request",
                "Malformed request",
                detail,
            )
        };
        let Query(params) = Query::<PageParams>::from_request_parts(parts, state)
            .await
            .map_err(|e| bad(e.body_text()))?;
        let limit = params.limit.unwrap_or(DEFAULT_LIMIT);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(bad(format!("limit must be between 1 and {MAX_LIMIT}")));
        }
        Ok(Page {
            limit,
            before: params.before,
        })
    }
}
