//! Which Kafka errors a retry can cure.

use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

/// What a failed write means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Brokers unreachable, leaders moving, too few in-sync replicas, a timeout: trying
    /// again later can succeed.
    Outage,
    /// Kafka will never accept this record as it is: too large, a topic that does not
    /// exist or may not be written, a record the broker calls invalid. Trying again only
    /// repeats the refusal.
    Refused,
}

/// The fault behind `error`.
pub fn fault_of(error: &KafkaError) -> Fault {
    use RDKafkaErrorCode as C;
    match error.rdkafka_error_code() {
        Some(
            C::MessageSizeTooLarge
            | C::InvalidMessageSize
            | C::MessageBatchTooLarge
            | C::TopicAuthorizationFailed
            | C::ClusterAuthorizationFailed
            | C::InvalidRecord
            | C::PolicyViolation
            | C::InvalidTopic
            | C::UnknownTopic
            | C::UnknownTopicOrPartition,
        ) => Fault::Refused,
        _ => Fault::Outage,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn too_large_and_missing_topics_are_refusals_timeouts_are_outages() {
        let produce = |code| KafkaError::MessageProduction(code);
        assert_eq!(
            fault_of(&produce(RDKafkaErrorCode::MessageSizeTooLarge)),
            Fault::Refused
        );
        assert_eq!(
            fault_of(&produce(RDKafkaErrorCode::UnknownTopicOrPartition)),
            Fault::Refused
        );
        assert_eq!(
            fault_of(&produce(RDKafkaErrorCode::MessageTimedOut)),
            Fault::Outage
        );
        assert_eq!(
            fault_of(&produce(RDKafkaErrorCode::NotEnoughReplicas)),
            Fault::Outage
        );
        assert_eq!(fault_of(&KafkaError::Canceled), Fault::Outage);
    }
}
