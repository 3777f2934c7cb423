//! The platform's suite, one test binary, on real Kafka and real PostgreSQL.
//!
//! Each module specifies one capability; shared set-up lives in `helpers`.

mod helpers;

mod dead_letters;
mod gateway_double;
mod http_bounds;
mod kafka_cluster;
mod kafka_roundtrip;
mod kafka_security;
mod no_engine;
mod order_flow;
mod orders_api;
mod outages;
mod outbox_relay;
mod payment_gateway;
mod pending_orders;
mod postgres_isolation;
mod postgres_tls;
mod shutdown;
