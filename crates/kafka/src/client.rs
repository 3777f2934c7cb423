//! Client construction. Every client of the platform starts from [`client_config`];
//! every producer whose writes must not be lost is [`reliable_producer`].

use rdkafka::config::ClientConfig;
use rdkafka::producer::FutureProducer;

use crate::KafkaError;

/// The base of every client: the bootstrap servers, IPv4 (brokers here advertise
/// `127.0.0.1`, and `localhost` may resolve to `::1` first), and a bounded socket timeout.
pub fn client_config(bootstrap: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("broker.address.family", "v4")
        .set("socket.timeout.ms", "10000");
    config
}

/// The reliable-producer recipe, to adjust before `create()`: what Kafka acknowledged is
/// on every in-sync replica (`acks=all`) and written once, in order per partition
/// (idempotence); a record not acknowledged within 30 s fails rather than waits forever.
pub fn reliable_producer_config(bootstrap: &str) -> ClientConfig {
    let mut config = client_config(bootstrap);
    config
        .set("acks", "all")
        .set("enable.idempotence", "true")
        // librdkafka batches by itself while earlier requests are in flight; lingering
        // only adds latency at low load.
        .set("linger.ms", "1")
        .set("message.timeout.ms", "30000");
    config
}

/// A producer made with [`reliable_producer_config`].
pub fn reliable_producer(bootstrap: &str) -> Result<FutureProducer, KafkaError> {
    reliable_producer_config(bootstrap).create()
}
