//! [`Record`]: one Kafka record, owned — what a consumer hands to a handler, what a
//! dead-letter topic holds, what a test produces and reads back.

use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::FutureRecord;

/// An owned Kafka record. Built with [`Record::new`] and its builder methods to be
/// produced; copied from a consumed message with [`Record::from_message`], which also
/// fills in where it was read from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    /// The topic it was read from (empty for a record not read yet).
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// The record's timestamp, milliseconds since the Unix epoch, if it has one.
    pub timestamp: Option<i64>,
    pub key: Option<Vec<u8>>,
    /// `None` is a tombstone.
    pub payload: Option<Vec<u8>>,
    /// In order; a name may repeat.
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Record {
    /// A record with this payload, to be produced.
    pub fn new(payload: impl Into<Vec<u8>>) -> Self {
        Self {
            payload: Some(payload.into()),
            ..Self::default()
        }
    }

    pub fn key(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Adds a header after the ones it has.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// A copy of a consumed message.
    pub fn from_message(message: &impl Message) -> Self {
        Self {
            topic: message.topic().to_owned(),
            partition: message.partition(),
            offset: message.offset(),
            timestamp: message.timestamp().to_millis(),
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec),
            headers: message
                .headers()
                .map(|headers| {
                    headers
                        .iter()
                        .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    /// This record's key, payload and headers, to be sent to `topic`; the partition is
    /// the producer's choice by key unless the caller sets one.
    pub fn to_send<'a>(&'a self, topic: &'a str) -> FutureRecord<'a, [u8], [u8]> {
        let mut record = FutureRecord::to(topic).headers(owned_headers(&self.headers));
        if let Some(key) = &self.key {
            record = record.key(key.as_slice());
        }
        if let Some(payload) = &self.payload {
            record = record.payload(payload.as_slice());
        }
        record
    }

    /// The payload as text (lossy for bytes that are not UTF-8; empty if none).
    pub fn payload_text(&self) -> String {
        String::from_utf8_lossy(self.payload.as_deref().unwrap_or_default()).into_owned()
    }

    /// The key as text (lossy), or `-` for a record without one.
    pub fn key_text(&self) -> String {
        self.key
            .as_deref()
            .map_or_else(|| "-".into(), |k| String::from_utf8_lossy(k).into_owned())
    }

    /// The first header called `name`.
    pub fn header_value(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    /// The last header called `name`, as text (lossy): the latest word on it.
    pub fn last_header_text(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }

    /// `topic/partition/offset`: where this record was read from.
    pub fn locator(&self) -> String {
        format!("{}/{}/{}", self.topic, self.partition, self.offset)
    }
}

/// Kafka headers with these names and values, in order.
pub fn owned_headers(headers: &[(String, Vec<u8>)]) -> OwnedHeaders {
    headers.iter().fold(
        OwnedHeaders::new_with_capacity(headers.len()),
        |all, (name, value)| {
            all.insert(Header {
                key: name,
                value: Some(value.as_slice()),
            })
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::OwnedMessage;
    use rdkafka::Timestamp;

    #[test]
    fn a_consumed_message_is_copied_with_its_place_and_headers_in_order() {
        let headers = owned_headers(&[
            ("a".into(), b"1".to_vec()),
            ("b".into(), b"2".to_vec()),
            ("a".into(), b"3".to_vec()),
        ]);
        let message = OwnedMessage::new(
            Some(b"value".to_vec()),
            Some(b"key".to_vec()),
            "orders".into(),
            Timestamp::CreateTime(42),
            5,
            7,
            Some(headers),
        );
        let record = Record::from_message(&message);
        assert_eq!(record.locator(), "orders/5/7");
        assert_eq!(record.timestamp, Some(42));
        assert_eq!(record.key_text(), "key");
        assert_eq!(record.payload_text(), "value");
        assert_eq!(record.header_value("a"), Some(&b"1"[..]));
        assert_eq!(record.last_header_text("a").as_deref(), Some("3"));
        let names: Vec<&str> = record.headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["a", "b", "a"]);
    }
}
