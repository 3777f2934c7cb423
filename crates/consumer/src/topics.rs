//! Topic creation at start-up (brokers here do not auto-create topics).

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::types::RDKafkaErrorCode;

use crate::ConsumerError;

/// Creates `topics` if they do not exist yet. Bounded: fails after 30 s if the brokers
/// do not answer.
pub async fn ensure_topics(
    bootstrap: &str,
    topics: &[&str],
    partitions: i32,
    replication: i32,
) -> Result<(), ConsumerError> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("broker.address.family", "v4")
        .create()?;
    let timeout = Some(Duration::from_secs(30));
    let options = AdminOptions::new()
        .operation_timeout(timeout)
        .request_timeout(timeout);
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(replication)))
        .collect();
    for result in admin.create_topics(&new, &options).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(ConsumerError::Topic {
                    topic,
                    reason: code.to_string(),
                })
            }
        }
    }
    Ok(())
}
