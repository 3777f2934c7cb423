//! payment-service: consumes `order.created`, charges each order through the payment
//! gateway, stores one payment per order and publishes `payment.completed` or
//! `payment.failed`.
//!
//! A map of the modules:
//! - [`config`]: every setting, from flags or environment variables.
//! - [`domain`]: the payment — where it is decided: a charge (approved or declined)
//!   becomes a payment (`COMPLETED` or `FAILED`), a payment its event.
//! - [`gateway`]: the payment gateway's client — over HTTP(S), or the built-in simulated
//!   one — and what each answer means; [`breaker`]: its circuit breaker; [`charging`]:
//!   a batch's charges, and what a failed one means (retry, wait or dead letter).
//! - [`store`]: PostgreSQL — typed payments, and the one place that decides which
//!   payments are new (the inbox, then `ON CONFLICT (order_id) DO NOTHING`: never twice).
//! - [`on_order_created`]: the `order.created` handler — decodes, charges the orders not
//!   paid yet, and stores the batch and its events in one transaction.
//! - [`http`]: `GET /payments`, `GET /payments/{order_id}`, OpenAPI and Swagger UI.
//! - [`app`]: wires the HTTP API, the outbox relay and the consumer together; [`build`].

pub mod app;
pub mod breaker;
pub mod charging;
pub mod config;
pub mod domain;
pub mod gateway;
pub mod http;
pub mod on_order_created;
pub mod store;

pub use app::build;
pub use config::Config;

/// This service's own schema migrations, embedded in the binary; the shared tables'
/// (outbox, inbox) run before them.
pub static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Brings a database to this service's schema: the shared tables, then its own.
pub async fn migrate(pool: &sqlx::PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    outbox::migrator(&MIGRATIONS).await?.run(pool).await
}
