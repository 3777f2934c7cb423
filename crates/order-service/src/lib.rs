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
//! - [`app`]: wires them together; `Application::build` then `run_until_stopped`.
//!
//! - [`payments_in`]: consumes `payment.completed` and `payment.failed` and marks orders
//!   `PAID` or `PAYMENT_FAILED`, once per event.

pub mod app;
pub mod config;
pub mod domain;
pub mod http;
pub mod payments_in;
pub mod store;

pub use app::Application;
pub use config::Config;

/// Schema migrations, embedded in the binary and run at start-up.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");
