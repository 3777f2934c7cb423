//! Topics: creating them at start-up (brokers here do not auto-create topics), and the
//! Kafka settings every service flattens into its command line.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;

use crate::{client_config, Error};

/// Where a service finds Kafka and how the topics it creates are shaped.
#[derive(Debug, Clone, clap::Args)]
pub struct KafkaSettings {
    /// Kafka bootstrap servers.
    #[arg(long, env = "KAFKA_BOOTSTRAP", default_value = "127.0.0.1:9092")]
    pub kafka_bootstrap: String,

    /// Put before every topic name, to share a cluster between environments.
    #[arg(long, env = "TOPIC_PREFIX", default_value = "")]
    pub topic_prefix: String,

    /// Partitions of topics this service creates at start-up if they are missing.
    #[arg(long, env = "TOPIC_PARTITIONS", default_value_t = 6)]
    pub topic_partitions: i32,

    /// Replication factor of topics this service creates (3 on a production cluster).
    #[arg(long, env = "TOPIC_REPLICATION", default_value_t = 1)]
    pub topic_replication: i32,
}

/// Creates `topics` if they do not exist yet. Bounded: fails after 30 s if the brokers
/// do not answer.
pub async fn ensure_topics(
    bootstrap: &str,
    topics: &[&str],
    partitions: i32,
    replication: i32,
) -> Result<(), Error> {
    let admin: AdminClient<DefaultClientContext> = client_config(bootstrap).create()?;
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
                return Err(Error::Topic {
                    topic,
                    reason: code.to_string(),
                })
            }
        }
    }
    Ok(())
}
