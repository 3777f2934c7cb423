//! Client construction. Every client of the platform starts from [`client_config`];
//! every producer whose writes must not be lost is [`reliable_producer`].

use rdkafka::config::ClientConfig;
use rdkafka::producer::FutureProducer;

use crate::{Connection, KafkaError};

/// The base of every client: a bounded socket timeout, then the [`Connection`] (where,
/// how securely, and the user's own properties, which may change the timeout).
pub fn client_config(connection: &Connection) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("socket.timeout.ms", "10000");
    connection.apply(&mut config);
    config
}

/// The reliable-producer recipe, to adjust before `create()`: what Kafka acknowledged is
/// on every in-sync replica (`acks=all`) and written once, in order per partition
/// (idempotence); a record not acknowledged within 30 s fails rather than waits forever.
pub fn reliable_producer_config(connection: &Connection) -> ClientConfig {
    let mut config = client_config(connection);
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
pub fn reliable_producer(connection: &Connection) -> Result<FutureProducer, KafkaError> {
    reliable_producer_config(connection).create()
}
