//! payment-service: consumes `order.created`, charges each order through the payment
//! gateway, stores one payment per order and publishes `payment.completed` or
//! `payment.failed`.
//!
//! A map of the modules:
//! - [`config`]: every setting, from flags or environment variables.
//! - [`gateway`]: the payment gateway — over HTTP, or the built-in simulated one.
//! - [`orders_in`]: the `order.created` handler — charges the orders not paid yet, then one
//!   transaction per batch records the events, inserts the payments
//!   (`ON CONFLICT (order_id) DO NOTHING`: never twice) and queues their
//!   `payment.completed` / `payment.failed` events in the outbox.
//! - [`http`]: `GET /payments`, `GET /payments/{order_id}`, OpenAPI and Swagger UI.
//! - [`app`]: wires the HTTP API, the outbox relay and the consumer together.

pub mod app;
pub mod config;
pub mod gateway;
pub mod http;
pub mod orders_in;

pub use app::Application;
pub use config::Config;

/// Schema migrations, embedded in the binary and run at start-up.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");
