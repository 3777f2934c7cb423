//! Kafka: a single-broker KRaft node per test binary, and helpers that work against any
//! broker or cluster — create topics, produce raw bytes with headers, read a topic back.
//!
//! In external mode (`OP_DATABASE_URL` and `OP_KAFKA_BOOTSTRAP` set) [`broker`] starts
//! nothing and uses `OP_KAFKA_BOOTSTRAP`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures::StreamExt;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::metadata::Metadata;
use rdkafka::producer::FutureProducer;
use rdkafka::types::RDKafkaErrorCode;
use testcontainers::core::ContainerPort;
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, ContainerRequest, GenericImage, ImageExt};
use tokio::sync::OnceCell;

use crate::engine::{self, bind_loopback, labelled};
use crate::images::{kafka_image, KAFKA_LAUNCH_SCRIPT};
use crate::runtime::{on_testkit, spawn_detached};
use crate::{names, Error, Result};

use ::kafka::Connection;
/// A record to produce, or one read back (then with the topic, partition and offset it
/// was read from): the platform's one owned record type.
pub use ::kafka::Record;

/// The port every node listens on for clients, inside its container.
pub(crate) const CLIENT_PORT: u16 = 9092;
const STARTUP_TIMEOUT: Duration = Duration::from_secs(180);
/// How long one broker may take to answer after its container started.
const BROKER_READY_TIMEOUT: Duration = Duration::from_secs(90);
/// Bound on one admin, metadata or produce call.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A single-broker Kafka (KRaft, broker and controller in one process).
pub struct KafkaBroker {
    kafka: KafkaClient,
    /// The broker's container; `None` in external mode.
    _container: Option<Arc<ContainerAsync<GenericImage>>>,
}

impl Drop for KafkaBroker {
    fn drop(&mut self) {
        // Removed on the test kit's runtime, whatever runtime the owner was on.
        if let Some(container) = self._container.take() {
            spawn_detached(async move { drop(container) });
        }
    }
}

impl KafkaBroker {
    /// Helpers bound to this broker.
    pub fn client(&self) -> &KafkaClient {
        &self.kafka
    }

    /// `host:port` for `bootstrap.servers`.
    pub fn bootstrap(&self) -> &str {
        self.kafka.bootstrap()
    }

    /// How the platform's clients reach it (plaintext).
    pub fn connection(&self) -> &Connection {
        self.kafka.connection()
    }

    /// A broker of the caller's own, removed when dropped: for tests that stop it.
    /// Needs a container engine, also in external mode.
    pub async fn dedicated() -> Result<Self> {
        on_testkit(start_single_broker()).await
    }

    /// Sends SIGKILL: the broker dies at once, with no controlled shutdown; [`Self::start`]
    /// brings it back with its data.
    pub async fn kill(&self) -> Result<()> {
        let container = self.container()?;
        engine::kill(container.id(), "SIGKILL").await
    }

    /// Stops the broker (SIGTERM, then SIGKILL after 30 s); its data and address stay.
    pub async fn stop(&self) -> Result<()> {
        let container = self.container()?;
        on_testkit(async move { Ok(container.stop_with_timeout(Some(30)).await?) }).await
    }

    /// Starts a stopped broker again and waits until it serves metadata.
    pub async fn start(&self) -> Result<()> {
        let container = self.container()?;
        on_testkit(async move { Ok::<(), Error>(container.start().await?) }).await?;
        self.kafka.wait_for_brokers(1, STARTUP_TIMEOUT).await
    }

    fn container(&self) -> Result<Arc<ContainerAsync<GenericImage>>> {
        self._container.clone().ok_or_else(|| {
            Error::Unsupported("an external broker cannot be stopped by the test kit".into())
        })
    }
}

/// The single broker of this test binary, started on first use. Tests share it and keep
/// apart by using [`names::unique_name`] topics and groups.
pub async fn broker() -> Result<&'static KafkaBroker> {
    static BROKER: OnceCell<KafkaBroker> = OnceCell::const_new();
    BROKER
        .get_or_try_init(|| async {
            if let (Ok(_), Ok(bootstrap)) = (
                std::env::var("OP_DATABASE_URL"),
                std::env::var("OP_KAFKA_BOOTSTRAP"),
            ) {
                let kafka = KafkaClient::at(bootstrap);
                kafka.wait_for_brokers(1, STARTUP_TIMEOUT).await?;
                return Ok(KafkaBroker {
                    kafka,
                    _container: None,
                });
            }
            on_testkit(start_single_broker()).await
        })
        .await
}

async fn start_single_broker() -> Result<KafkaBroker> {
    engine::docker().await?;
    // A second try with a new port: on a loaded machine a port found free can be taken
    // again before the container binds it.
    match start_single_broker_once().await {
        Ok(broker) => Ok(broker),
        Err(first) => {
            tracing::warn!(error = %first, "Kafka did not start; trying once more");
            start_single_broker_once().await
        }
    }
}

async fn start_single_broker_once() -> Result<KafkaBroker> {
    let port = engine::free_port()?;
    let node = Node::single(port, None);
    let image = kafka_image();
    // Readiness is judged by the broker answering metadata requests, not by its log:
    // following container logs through Podman's API can end early.
    let container = node
        .request(None)
        .start()
        .await
        .map_err(|source| Error::Start {
            what: "Kafka".into(),
            image: image.to_string(),
            source,
        })?;
    let broker = KafkaBroker {
        kafka: KafkaClient::at(format!("127.0.0.1:{port}")),
        _container: Some(Arc::new(container)),
    };
    broker
        .kafka
        .wait_for_brokers(1, BROKER_READY_TIMEOUT)
        .await?;
    Ok(broker) // on an error above, dropping `broker` removes the container
}

/// A random KRaft cluster id: 16 bytes, URL-safe base64 without padding.
pub(crate) fn new_cluster_id() -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(uuid::Uuid::new_v4().as_bytes())
}

/// One KRaft node (broker and controller), as the launch script is told to start it.
pub(crate) struct Node {
    pub node_id: u32,
    /// The 127.0.0.1 port clients reach this node on (advertised to them).
    pub host_port: u16,
    /// The name other nodes reach this node by.
    pub hostname: String,
    /// `controller.quorum.voters`, the same on every node.
    pub voters: String,
    /// Replication factor of new and internal topics.
    pub replication: u16,
    pub min_insync: u16,
    pub cluster_id: String,
    /// TLS and SASL listeners in place of the plaintext one for clients.
    pub secure: Option<SecureListeners>,
}

/// A node's client listeners when they are secured: SASL_SSL (SCRAM) on one port, mutual
/// TLS on another, and the broker properties and SCRAM users that make them.
pub(crate) struct SecureListeners {
    /// The 127.0.0.1 port of the SASL_SSL listener.
    pub sasl_ssl_port: u16,
    /// The 127.0.0.1 port of the mutual-TLS listener.
    pub mtls_port: u16,
    /// Further broker properties, one per line (certificates and JAAS configuration).
    pub properties: String,
    /// `kafka-storage format --add-scram` arguments, separated by `;`.
    pub scram_users: String,
}

/// Where the secure listeners listen inside the container.
pub(crate) const SASL_SSL_PORT: u16 = 9094;
pub(crate) const MTLS_PORT: u16 = 9095;

impl Node {
    /// The one node of a single-broker cluster, reached on `host_port` (or, when
    /// `secure`, on its secure listeners' ports).
    pub(crate) fn single(host_port: u16, secure: Option<SecureListeners>) -> Self {
        Self {
            node_id: 1,
            host_port,
            hostname: "localhost".into(),
            voters: "1@localhost:9093".into(),
            replication: 1,
            min_insync: 1,
            cluster_id: new_cluster_id(),
            secure,
        }
    }

    /// The container request for this node, optionally on a user-defined network.
    pub(crate) fn request(&self, network: Option<&str>) -> ContainerRequest<GenericImage> {
        let image = kafka_image();
        let internal = format!("INTERNAL://{}:19092", self.hostname);
        let (listeners, advertised, protocols, ports) = match &self.secure {
            None => (
                format!("EXTERNAL://:{CLIENT_PORT},INTERNAL://:19092,CONTROLLER://:9093"),
                format!("EXTERNAL://127.0.0.1:{},{internal}", self.host_port),
                "EXTERNAL:PLAINTEXT,INTERNAL:PLAINTEXT,CONTROLLER:PLAINTEXT".to_owned(),
                vec![(CLIENT_PORT, self.host_port)],
            ),
            Some(secure) => (
                format!(
                    "SECURE://:{SASL_SSL_PORT},MTLS://:{MTLS_PORT},INTERNAL://:19092,\
                     CONTROLLER://:9093"
                ),
                format!(
                    "SECURE://127.0.0.1:{},MTLS://127.0.0.1:{},{internal}",
                    secure.sasl_ssl_port, secure.mtls_port
                ),
                "SECURE:SASL_SSL,MTLS:SSL,INTERNAL:PLAINTEXT,CONTROLLER:PLAINTEXT".to_owned(),
                vec![
                    (SASL_SSL_PORT, secure.sasl_ssl_port),
                    (MTLS_PORT, secure.mtls_port),
                ],
            ),
        };
        let env = [
            ("CLUSTER_ID", self.cluster_id.clone()),
            ("KAFKA_HEAP_OPTS", "-Xmx256m -Xms256m".into()),
            ("KAFKA_CFG_NODE_ID", self.node_id.to_string()),
            ("KAFKA_CFG_PROCESS_ROLES", "broker,controller".into()),
            ("KAFKA_CFG_LISTENERS", listeners),
            ("KAFKA_CFG_ADVERTISED_LISTENERS", advertised),
            ("KAFKA_CFG_LISTENER_SECURITY_PROTOCOL_MAP", protocols),
            ("KAFKA_CFG_INTER_BROKER_LISTENER_NAME", "INTERNAL".into()),
            ("KAFKA_CFG_CONTROLLER_LISTENER_NAMES", "CONTROLLER".into()),
            ("KAFKA_CFG_CONTROLLER_QUORUM_VOTERS", self.voters.clone()),
            ("KAFKA_CFG_AUTO_CREATE_TOPICS_ENABLE", "false".into()),
            ("KAFKA_CFG_NUM_PARTITIONS", "3".into()),
            (
                "KAFKA_CFG_DEFAULT_REPLICATION_FACTOR",
                self.replication.to_string(),
            ),
            ("KAFKA_CFG_MIN_INSYNC_REPLICAS", self.min_insync.to_string()),
            (
                "KAFKA_CFG_OFFSETS_TOPIC_REPLICATION_FACTOR",
                self.replication.to_string(),
            ),
            (
                "KAFKA_CFG_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
                self.replication.to_string(),
            ),
            (
                "KAFKA_CFG_TRANSACTION_STATE_LOG_MIN_ISR",
                self.min_insync.to_string(),
            ),
            ("KAFKA_CFG_GROUP_INITIAL_REBALANCE_DELAY_MS", "0".into()),
            // Notice a dead or frozen broker sooner than the production defaults (9 s,
            // 30 s), so failover in tests takes seconds.
            ("KAFKA_CFG_BROKER_SESSION_TIMEOUT_MS", "6000".into()),
            ("KAFKA_CFG_REPLICA_LAG_TIME_MAX_MS", "10000".into()),
            (
                "KAFKA_CFG_SHARE_COORDINATOR_STATE_TOPIC_REPLICATION_FACTOR",
                self.replication.to_string(),
            ),
            (
                "KAFKA_CFG_SHARE_COORDINATOR_STATE_TOPIC_MIN_ISR",
                self.min_insync.to_string(),
            ),
        ];
        let mut image = GenericImage::new(image.name, image.tag);
        for (container, _) in &ports {
            image = image.with_exposed_port(ContainerPort::Tcp(*container));
        }
        let mut request = image
            .with_cmd(["bash", "-c", KAFKA_LAUNCH_SCRIPT])
            .with_startup_timeout(STARTUP_TIMEOUT);
        for (name, value) in env {
            request = request.with_env_var(name, value);
        }
        if let Some(secure) = &self.secure {
            request = request
                .with_env_var("KAFKA_EXTRA_PROPERTIES", secure.properties.clone())
                .with_env_var("KAFKA_SCRAM_USERS", secure.scram_users.clone());
        }
        if let Some(network) = network {
            request = request
                .with_network(network)
                .with_container_name(self.hostname.clone());
        }
        bind_loopback(labelled(request), &ports)
    }
}

/// Helpers bound to one bootstrap address. Every call is bounded in time.
#[derive(Debug, Clone)]
pub struct KafkaClient {
    connection: Connection,
}

impl KafkaClient {
    /// Plaintext to `bootstrap`.
    pub fn at(bootstrap: impl Into<String>) -> Self {
        Self::over(Connection::plaintext(bootstrap))
    }

    /// Over `connection`, with its security settings.
    pub fn over(connection: Connection) -> Self {
        Self { connection }
    }

    pub fn bootstrap(&self) -> &str {
        &self.connection.bootstrap
    }

    /// How the platform's own clients reach these brokers.
    pub fn connection(&self) -> &Connection {
        &self.connection
    }

    /// A client configuration with this connection and bounded timeouts; add to it for
    /// producers and consumers of your own.
    pub fn config(&self) -> ClientConfig {
        ::kafka::client_config(&self.connection)
    }

    /// The configuration of [`Self::producer`], to adjust before `create()`.
    pub fn producer_config(&self) -> ClientConfig {
        ::kafka::reliable_producer_config(&self.connection)
    }

    /// The platform's reliable producer: it cannot lose or duplicate what the broker
    /// acknowledged (`acks=all`, idempotence on); a record not acknowledged in 30 s fails.
    pub fn producer(&self) -> Result<FutureProducer> {
        Ok(::kafka::reliable_producer(&self.connection)?)
    }

    /// Creates a topic and waits until every partition has a leader.
    pub async fn create_topic(&self, name: &str, partitions: i32, replication: i32) -> Result<()> {
        let admin: AdminClient<DefaultClientContext> = self.config().create()?;
        let options = AdminOptions::new()
            .operation_timeout(Some(CALL_TIMEOUT))
            .request_timeout(Some(CALL_TIMEOUT));
        let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(replication));
        let results = admin.create_topics([&topic], &options).await?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => {
                    return Err(Error::KafkaAdmin {
                        what: format!("creating topic {topic}"),
                        code,
                    })
                }
            }
        }
        let topic = name.to_owned();
        self.wait_for_metadata(&format!("topic {name}"), CALL_TIMEOUT, move |m| {
            m.topics().iter().any(|t| {
                t.name() == topic
                    && t.error().is_none()
                    && t.partitions().len() == partitions as usize
                    && t.partitions().iter().all(|p| p.leader() >= 0)
            })
        })
        .await
    }

    /// Produces one record and waits for the broker's acknowledgement.
    /// Returns the partition and offset it was written to.
    pub async fn produce(&self, topic: &str, record: &Record) -> Result<(i32, i64)> {
        let producer = self.producer()?;
        produce_with(&producer, topic, record).await
    }

    /// Produces `records` with one producer, in order (the idempotent producer keeps it),
    /// and waits until each is acknowledged. Returns where each one was written.
    pub async fn produce_all(&self, topic: &str, records: &[Record]) -> Result<Vec<(i32, i64)>> {
        let producer = self.producer()?;
        let sends = records
            .iter()
            .map(|record| produce_with(&producer, topic, record));
        futures::future::try_join_all(sends).await
    }

    /// Reads `count` records from the start of `topic` with a fresh consumer group, or fails
    /// after `timeout` saying how many arrived. Records come in the order read (per
    /// partition, in offset order).
    pub async fn read_topic(
        &self,
        topic: &str,
        count: usize,
        timeout: Duration,
    ) -> Result<Vec<Record>> {
        let consumer: StreamConsumer = self
            .config()
            .set("group.id", names::unique_name("testkit-reader"))
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .set("session.timeout.ms", "10000")
            .create()?;
        consumer.subscribe(&[topic])?;
        let mut records = Vec::with_capacity(count);
        // Errors such as "broker transport failure" while a broker is down are reported on
        // the stream but are not final: librdkafka reconnects. Keep reading, remember the
        // last one for the timeout message.
        let mut last_error = None;
        let read = tokio::time::timeout(timeout, async {
            let mut stream = consumer.stream();
            while records.len() < count {
                match stream.next().await {
                    Some(Ok(message)) => records.push(Record::from_message(&message)),
                    Some(Err(e)) => last_error = Some(e),
                    None => break,
                }
            }
        })
        .await;
        // Closing a consumer can block without a limit when a broker is gone: do it on a
        // thread of its own (not spawn_blocking, which a runtime waits for at shutdown).
        std::thread::spawn(move || drop(consumer));
        match read {
            Ok(()) => Ok(records),
            Err(_) => Err(Error::Timeout {
                what: format!(
                    "reading {count} records from {topic} (got {}{})",
                    records.len(),
                    last_error.map_or(String::new(), |e| format!("; last error: {e}"))
                ),
                after: timeout,
            }),
        }
    }

    /// Every record of `topic`, from the start of each partition to its end as of this
    /// call, in partition and offset order: counted to the end, never stopping at an
    /// expected number, so a duplicate cannot hide. Fails after `timeout` saying how far
    /// it got.
    pub async fn read_all(&self, topic: &str, timeout: Duration) -> Result<Vec<Record>> {
        let ends = self.end_offsets(topic).await?;
        let consumer: BaseConsumer = self
            .config()
            .set("group.id", names::unique_name("testkit-reader"))
            .set("enable.auto.commit", "false")
            .create()?;
        let topic = topic.to_owned();
        tokio::task::spawn_blocking(move || {
            let deadline = Instant::now() + timeout;
            let mut assignment = rdkafka::TopicPartitionList::new();
            let mut left: std::collections::BTreeMap<i32, i64> = std::collections::BTreeMap::new();
            for (&partition, &(low, high)) in &ends {
                if low < high {
                    assignment.add_partition_offset(
                        &topic,
                        partition,
                        rdkafka::Offset::Offset(low),
                    )?;
                    left.insert(partition, high);
                }
            }
            let mut records = Vec::new();
            if left.is_empty() {
                return Ok(records);
            }
            consumer.assign(&assignment)?;
            while !left.is_empty() {
                let now = Instant::now();
                if now >= deadline {
                    return Err(Error::Timeout {
                        what: format!(
                            "reading {topic} to its end (got {} records; partitions not finished: {:?})",
                            records.len(),
                            left.keys().collect::<Vec<_>>()
                        ),
                        after: timeout,
                    });
                }
                let Some(polled) = consumer.poll(deadline - now) else {
                    continue;
                };
                // Transport errors while a broker is down are not final: keep reading.
                let Ok(message) = polled else { continue };
                let record = Record::from_message(&message);
                let Some(&end) = left.get(&record.partition) else {
                    continue;
                };
                if record.offset + 1 >= end {
                    left.remove(&record.partition);
                }
                if record.offset < end {
                    records.push(record);
                }
            }
            // Closing can block when a broker is gone: on a thread of its own.
            std::thread::spawn(move || drop(consumer));
            records.sort_by_key(|r| (r.partition, r.offset));
            Ok(records)
        })
        .await
        .map_err(|e| Error::Unsupported(format!("reading task failed: {e}")))?
    }

    /// The low and high watermark of each partition of `topic`. A partition whose leader
    /// is moving (just created, or a broker just died), or a broker that does not answer
    /// (a loaded machine), is asked again, for up to a minute.
    pub async fn end_offsets(
        &self,
        topic: &str,
    ) -> Result<std::collections::BTreeMap<i32, (i64, i64)>> {
        let consumer: BaseConsumer = self.config().create()?;
        let topic = topic.to_owned();
        tokio::task::spawn_blocking(move || {
            let deadline = Instant::now() + 2 * CALL_TIMEOUT;
            loop {
                let attempt = (|| -> Result<std::collections::BTreeMap<i32, (i64, i64)>> {
                    let metadata = consumer.fetch_metadata(Some(&topic), CALL_TIMEOUT)?;
                    let mut ends = std::collections::BTreeMap::new();
                    for t in metadata.topics() {
                        for p in t.partitions() {
                            ends.insert(
                                p.id(),
                                consumer.fetch_watermarks(&topic, p.id(), CALL_TIMEOUT)?,
                            );
                        }
                    }
                    Ok(ends)
                })();
                match attempt {
                    Err(Error::Kafka(e)) if is_moving(&e) && Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(200));
                    }
                    other => return other,
                }
            }
        })
        .await
        .map_err(|e| Error::Unsupported(format!("watermarks task failed: {e}")))?
    }

    /// The offset `group` has committed on each partition of `topic` (0 where it has
    /// committed none): where it will start again, partition by partition.
    pub async fn committed_offsets(
        &self,
        group: &str,
        topic: &str,
    ) -> Result<std::collections::BTreeMap<i32, i64>> {
        let consumer: BaseConsumer = self
            .config()
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()?;
        let topic = topic.to_owned();
        tokio::task::spawn_blocking(move || {
            let metadata = consumer.fetch_metadata(Some(&topic), CALL_TIMEOUT)?;
            let mut list = rdkafka::TopicPartitionList::new();
            for t in metadata.topics() {
                for p in t.partitions() {
                    list.add_partition(&topic, p.id());
                }
            }
            let committed = consumer.committed_offsets(list, CALL_TIMEOUT)?;
            Ok(committed
                .elements()
                .iter()
                .map(|e| {
                    let offset = match e.offset() {
                        rdkafka::Offset::Offset(n) => n,
                        _ => 0,
                    };
                    (e.partition(), offset)
                })
                .collect())
        })
        .await
        .map_err(|e| Error::Unsupported(format!("offsets task failed: {e}")))?
    }

    /// A topic's configuration, as the brokers describe it. A topic created a moment ago
    /// may not be known yet to the broker asked: an empty or failed answer is asked
    /// again, for up to 30 s.
    pub async fn topic_config(
        &self,
        topic: &str,
    ) -> Result<std::collections::BTreeMap<String, String>> {
        let admin: AdminClient<DefaultClientContext> = self.config().create()?;
        let options = AdminOptions::new().request_timeout(Some(CALL_TIMEOUT));
        let deadline = Instant::now() + CALL_TIMEOUT;
        loop {
            let described = admin
                .describe_configs([&rdkafka::admin::ResourceSpecifier::Topic(topic)], &options)
                .await;
            let last = match described.map(|d| d.into_iter().next()) {
                Ok(Some(Ok(config))) if !config.entries.is_empty() => {
                    return Ok(config
                        .entries
                        .into_iter()
                        .filter_map(|e| e.value.map(|v| (e.name, v)))
                        .collect())
                }
                Ok(Some(Ok(_))) => "an empty configuration".to_owned(),
                Ok(Some(Err(code))) => code.to_string(),
                Ok(None) => "no answer".to_owned(),
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                return Err(Error::NotReady {
                    what: format!("the configuration of {topic}"),
                    waited: CALL_TIMEOUT,
                    last,
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The sum over `topic`'s partitions of the offsets `group` has committed (a partition
    /// with no commit counts 0): how many records the group has finished with, when every
    /// record is processed once.
    pub async fn committed_total(&self, group: &str, topic: &str) -> Result<i64> {
        let consumer: BaseConsumer = self
            .config()
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()?;
        let topic = topic.to_owned();
        tokio::task::spawn_blocking(move || {
            let metadata = consumer.fetch_metadata(Some(&topic), CALL_TIMEOUT)?;
            let mut list = rdkafka::TopicPartitionList::new();
            for t in metadata.topics() {
                for p in t.partitions() {
                    list.add_partition(&topic, p.id());
                }
            }
            let committed = consumer.committed_offsets(list, CALL_TIMEOUT)?;
            Ok(committed
                .elements()
                .iter()
                .map(|e| match e.offset() {
                    rdkafka::Offset::Offset(n) => n,
                    _ => 0,
                })
                .sum())
        })
        .await
        .map_err(|e| Error::Unsupported(format!("offsets task failed: {e}")))?
    }

    /// The members of consumer group `group`, by client id, as its coordinator reports
    /// them now (none once every member has left).
    pub async fn group_members(&self, group: &str) -> Result<Vec<String>> {
        let consumer: BaseConsumer = self.config().create()?;
        let group = group.to_owned();
        tokio::task::spawn_blocking(move || {
            let groups = consumer.fetch_group_list(Some(&group), CALL_TIMEOUT)?;
            Ok(groups
                .groups()
                .iter()
                .filter(|g| g.name() == group)
                .flat_map(|g| g.members().iter().map(|m| m.client_id().to_owned()))
                .collect())
        })
        .await
        .map_err(|e| Error::Unsupported(format!("group task failed: {e}")))?
    }

    /// Records in `topic` (sum of high watermarks less low ones; topics here are never
    /// compacted).
    pub async fn record_count(&self, topic: &str) -> Result<i64> {
        Ok(self
            .end_offsets(topic)
            .await?
            .values()
            .map(|(low, high)| high - low)
            .sum())
    }

    /// Waits until the cluster reports `count` brokers.
    pub async fn wait_for_brokers(&self, count: usize, timeout: Duration) -> Result<()> {
        self.wait_for_metadata(&format!("{count} Kafka broker(s)"), timeout, move |m| {
            m.brokers().len() >= count
        })
        .await
    }

    /// Cluster metadata: brokers, topics, partitions with leaders and in-sync replicas.
    pub async fn metadata(&self) -> Result<Metadata> {
        let consumer: BaseConsumer = self.config().create()?;
        tokio::task::spawn_blocking(move || consumer.fetch_metadata(None, CALL_TIMEOUT))
            .await
            .map_err(|e| Error::Unsupported(format!("metadata task failed: {e}")))?
            .map_err(Error::from)
    }

    /// Polls metadata until `ready` holds, or fails after `timeout` with the last error.
    pub async fn wait_for_metadata(
        &self,
        what: &str,
        timeout: Duration,
        ready: impl Fn(&Metadata) -> bool,
    ) -> Result<()> {
        let started = Instant::now();
        loop {
            let last = match self.metadata().await {
                Ok(metadata) if ready(&metadata) => return Ok(()),
                Ok(_) => "not yet".to_owned(),
                Err(e) => e.to_string(),
            };
            if started.elapsed() > timeout {
                return Err(Error::NotReady {
                    what: format!("{what} at {}", self.connection.bootstrap),
                    waited: started.elapsed(),
                    last,
                });
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// Errors of a partition whose leader is being elected: they pass.
fn is_moving(error: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as C;
    matches!(
        error.rdkafka_error_code(),
        Some(
            C::NotLeaderForPartition
                | C::LeaderNotAvailable
                | C::UnknownTopicOrPartition
                | C::BrokerTransportFailure
                | C::AllBrokersDown
                | C::RequestTimedOut
                | C::OperationTimedOut
        )
    )
}

/// Produces `record` with a producer of the caller's and waits for the acknowledgement.
pub async fn produce_with(
    producer: &FutureProducer,
    topic: &str,
    record: &Record,
) -> Result<(i32, i64)> {
    let delivery = producer
        .send(record.to_send(topic), CALL_TIMEOUT)
        .await
        .map_err(|(e, _)| Error::Kafka(e))?;
    Ok((delivery.partition, delivery.offset))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_ids_are_22_url_safe_characters() {
        let id = new_cluster_id();
        assert_eq!(id.len(), 22);
        assert!(id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        assert_ne!(id, new_cluster_id());
    }
}
