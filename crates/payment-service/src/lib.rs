//! payment-service: consumes `order.created`, stores one payment per order and publishes
//! `payment.completed`.
//!
//! A map of the modules:
//! - [`config`]: every setting, from flags or environment variables.
//! - [`orders_in`]: the `order.created` handler — one transaction per batch records the
//!   events, inserts the payments (`ON CONFLICT (order_id) DO NOTHING`: never twice) and
//!   queues their `payment.completed` events in the outbox.
//! - [`http`]: `GET /payments`, `GET /payments/{order_id}`, OpenAPI and Swagger UI.
//! - [`app`]: wires the HTTP API, the outbox relay and the consumer together.

pub mod app;
pub mod config;
pub mod http;
pub mod orders_in;

pub use app::Application;
pub use config::Config;

/// Schema migrations, embedded in the binary and run at start-up.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");
