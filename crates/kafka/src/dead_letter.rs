//! Dead-letter topics: where a record goes when it can never be processed, and the
//! diagnostic headers it gains there. The consumer runner writes them; redrive reads them.

use crate::Record;

/// The dead-letter topic of `topic`: `order.created` → `order.created.DLT`.
pub fn dead_letter_topic(topic: &str) -> String {
    format!("{topic}.DLT")
}

/// The header a record replayed from a dead-letter topic carries:
/// `<dead-letter topic>/<partition>/<offset>`. A consumer that could have acted on the
/// record before (a charge made, its answer lost) knows by it to ask first.
pub const REDRIVEN_FROM: &str = "redriven-from";

/// The headers added to every dead letter, modelled on Spring Kafka's `kafka_dlt-*` set.
/// Values are UTF-8 text (numbers in decimal), so any tool can show them.
pub mod headers {
    /// Every header this platform adds starts with this; the redrive tool removes them.
    pub const PREFIX: &str = "dlt-";
    pub const ORIGINAL_TOPIC: &str = "dlt-original-topic";
    pub const ORIGINAL_PARTITION: &str = "dlt-original-partition";
    pub const ORIGINAL_OFFSET: &str = "dlt-original-offset";
    /// The source record's timestamp, milliseconds since the Unix epoch.
    pub const ORIGINAL_TIMESTAMP: &str = "dlt-original-timestamp";
    pub const ORIGINAL_CONSUMER_GROUP: &str = "dlt-original-consumer-group";
    pub const SERVICE: &str = "dlt-service";
    /// A stable class such as `poison.invalid` or `gateway.unavailable`.
    pub const ERROR_CLASS: &str = "dlt-error-class";
    pub const ERROR_MESSAGE: &str = "dlt-error-message";
    /// How many times the message was tried.
    pub const ATTEMPTS: &str = "dlt-attempts";
    /// RFC 3339, UTC.
    pub const FIRST_FAILURE: &str = "dlt-first-failure";
    /// RFC 3339, UTC.
    pub const LAST_FAILURE: &str = "dlt-last-failure";
}

/// What a record read from a dead-letter topic says about itself.
impl Record {
    /// The error class it was dead-lettered for, or `unknown` for a record without one.
    pub fn dead_letter_class(&self) -> String {
        self.last_header_text(headers::ERROR_CLASS)
            .unwrap_or_else(|| "unknown".into())
    }

    /// The headers the record had before it was dead-lettered, in order.
    pub fn original_headers(&self) -> impl Iterator<Item = &(String, Vec<u8>)> {
        self.headers
            .iter()
            .filter(|(name, _)| !name.starts_with(headers::PREFIX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_letter_topics_add_dlt() {
        assert_eq!(dead_letter_topic("order.created"), "order.created.DLT");
    }

    #[test]
    fn a_dead_letter_knows_its_class_and_its_original_headers() {
        let letter = Record::new("{}")
            .header("trace", "abc")
            .header(headers::ERROR_CLASS, "poison.invalid");
        assert_eq!(letter.dead_letter_class(), "poison.invalid");
        let kept: Vec<&str> = letter.original_headers().map(|(n, _)| n.as_str()).collect();
        assert_eq!(kept, ["trace"]);
        assert_eq!(Record::new("{}").dead_letter_class(), "unknown");
    }
}
