//! order-service: accepts orders over HTTP and publishes `order.created`.
//!
//! A map of the modules:
//! - [`config`]: every setting, from flags or environment variables, with defaults that
//!   match `docker-compose.yml`.
//! - [`domain`]: the order and its status; input becomes these types at the edge.
//! - [`store`]: PostgreSQL — an order, its idempotency key and its `order.created` event
//!   are written in **one** transaction (transactional outbox), so an accepted order is
//!   never without its event.
//! - [`http`]: the HTTP API, its errors (RFC 9457 problem details) and its OpenAPI spec.
//! - [`on_payment_outcome`]: consumes `payment.completed` and `payment.failed` and marks
//!   orders `PAID` or `PAYMENT_FAILED`, once per event.
//! - [`app`]: wires them together; [`build`] then `run_until_stopped`.

pub mod app;
pub mod config;
pub mod domain;
pub mod http;
pub mod on_payment_outcome;
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
