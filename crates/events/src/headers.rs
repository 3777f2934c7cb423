//! The Kafka headers every event is published with, so that tools can route and trace
//! without parsing the payload. Values are UTF-8 text.

use crate::Envelope;

pub const EVENT_ID: &str = "event-id";
pub const EVENT_TYPE: &str = "event-type";
pub const SCHEMA_VERSION: &str = "schema-version";
pub const CORRELATION_ID: &str = "correlation-id";

/// The standard headers of `event`, in this order: id, type, schema version, correlation.
pub fn of<P>(event: &Envelope<P>) -> [(&'static str, String); 4] {
    [
        (EVENT_ID, event.event_id.to_string()),
        (EVENT_TYPE, event.event_type.name().to_owned()),
        (SCHEMA_VERSION, event.schema_version.to_string()),
        (CORRELATION_ID, event.correlation_id.to_string()),
    ]
}
