//! A 3-broker KRaft cluster for one test: replication factor 3, `min.insync.replicas=2`,
//! every node both broker and controller, on a network of its own. Each broker can be
//! killed (SIGKILL), paused, stopped and started again; a restarted broker keeps its data
//! and rejoins.

use std::sync::Arc;
use std::time::Duration;

use bollard::models::NetworkCreateRequest;
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage};

use crate::engine;
use crate::images::kafka_image;
use crate::kafka::{new_cluster_id, KafkaClient, Node};
use crate::runtime::{on_testkit, spawn_detached};
use crate::{names, Error, Result};

/// Brokers in a cluster.
pub const BROKERS: usize = 3;
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// Starts of a cluster before giving up: a cluster whose quorum has not formed within
/// [`READY_TIMEOUT`] (seen once in CI under load, both brokers' ports refusing for three
/// minutes) is removed and started afresh, and the first failure is printed.
const STARTS: usize = 2;

/// A running 3-broker cluster, removed when dropped.
pub struct KafkaCluster {
    kafka: KafkaClient,
    brokers: Vec<ClusterBroker>,
    /// The cluster's own network; removed after its containers.
    network: String,
}

/// One broker of a [`KafkaCluster`].
pub struct ClusterBroker {
    /// The broker's `node.id`, 1 to 3, as reported in metadata.
    pub node_id: i32,
    /// The 127.0.0.1 port clients reach this broker on.
    pub port: u16,
    container: Arc<ContainerAsync<GenericImage>>,
}

impl KafkaCluster {
    /// Starts a cluster and waits until all three brokers serve metadata.
    /// Needs a container engine, also in external mode.
    pub async fn start() -> Result<Self> {
        on_testkit(async {
            let mut attempt = 1;
            loop {
                match Self::start_on_testkit().await {
                    Err(error) if attempt < STARTS && error.is_worth_a_fresh_start() => {
                        eprintln!("testkit: {error}; starting the cluster afresh");
                        attempt += 1;
                    }
                    other => return other,
                }
            }
        })
        .await
    }

    async fn start_on_testkit() -> Result<Self> {
        let docker = engine::docker().await?;
        let id = names::unique_name("op-kafka");
        let network = format!("{id}-net");
        docker
            .create_network(NetworkCreateRequest {
                name: network.clone(),
                labels: Some(engine::labels()),
                ..Default::default()
            })
            .await?;

        let hostnames: Vec<String> = (1..=BROKERS).map(|n| format!("{id}-{n}")).collect();
        let voters = hostnames
            .iter()
            .enumerate()
            .map(|(i, host)| format!("{}@{host}:9093", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let cluster_id = new_cluster_id();
        let mut nodes = Vec::with_capacity(BROKERS);
        for (i, hostname) in hostnames.iter().enumerate() {
            nodes.push(Node {
                node_id: i as u32 + 1,
                host_port: engine::free_port()?,
                hostname: hostname.clone(),
                voters: voters.clone(),
                replication: BROKERS as u16,
                min_insync: 2,
                cluster_id: cluster_id.clone(),
                secure: None,
            });
        }

        // All at once: a node finishes starting only when a quorum of controllers is up.
        let image = kafka_image();
        let started = futures::future::join_all(
            nodes
                .iter()
                .map(|node| node.request(Some(&network)).start()),
        )
        .await;
        let mut brokers = Vec::with_capacity(BROKERS);
        let mut failure = None;
        for (node, result) in nodes.iter().zip(started) {
            match result {
                Ok(container) => brokers.push(ClusterBroker {
                    node_id: node.node_id as i32,
                    port: node.host_port,
                    container: Arc::new(container),
                }),
                Err(source) => {
                    failure.get_or_insert(Error::Start {
                        what: format!("Kafka broker {}", node.node_id),
                        image: image.to_string(),
                        source,
                    });
                }
            }
        }
        let bootstrap = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.host_port))
            .collect::<Vec<_>>()
            .join(",");
        let cluster = Self {
            kafka: KafkaClient::at(bootstrap),
            brokers,
            network,
        };
        if let Some(error) = failure {
            return Err(error); // dropping `cluster` removes what did start
        }
        cluster
            .kafka
            .wait_for_brokers(BROKERS, READY_TIMEOUT)
            .await?;
        Ok(cluster)
    }

    /// The node id of the active KRaft controller, asked of the quorum through a running
    /// broker.
    pub async fn active_controller(&self) -> Result<i32> {
        let mut last = String::new();
        for broker in &self.brokers {
            if !broker.is_running().await.unwrap_or(false) {
                continue;
            }
            let status = broker
                .exec(
                    "/opt/kafka/bin/kafka-metadata-quorum.sh --bootstrap-controller \
                     localhost:9093 describe --status 2>&1",
                )
                .await?;
            if let Some(id) = status
                .lines()
                .find_map(|l| l.trim().strip_prefix("LeaderId:"))
                .and_then(|id| id.trim().parse().ok())
            {
                return Ok(id);
            }
            last = status;
        }
        Err(Error::Unsupported(format!(
            "no running broker named the active controller: {last}"
        )))
    }

    /// Helpers bound to all three brokers.
    pub fn client(&self) -> &KafkaClient {
        &self.kafka
    }

    /// `bootstrap.servers` naming all three brokers.
    pub fn bootstrap(&self) -> &str {
        self.kafka.bootstrap()
    }

    /// The broker with `node.id` = `node_id` (1 to 3).
    pub fn broker(&self, node_id: i32) -> &ClusterBroker {
        self.brokers
            .iter()
            .find(|b| b.node_id == node_id)
            .unwrap_or_else(|| panic!("the cluster has brokers 1 to {BROKERS}, not {node_id}"))
    }

    pub fn brokers(&self) -> &[ClusterBroker] {
        &self.brokers
    }

    /// Waits until every partition of `topic` has all three replicas in sync again, as
    /// after a restarted broker has caught up.
    pub async fn wait_for_full_isr(&self, topic: &str, timeout: Duration) -> Result<()> {
        let topic = topic.to_owned();
        self.kafka
            .wait_for_metadata(
                &format!("all replicas of {topic} in sync"),
                timeout,
                move |m| {
                    m.brokers().len() == BROKERS
                        && m.topics().iter().any(|t| {
                            t.name() == topic
                                && !t.partitions().is_empty()
                                && t.partitions().iter().all(|p| p.isr().len() == BROKERS)
                        })
                },
            )
            .await
    }
}

impl ClusterBroker {
    /// The container's id, as the engine knows it.
    pub fn container_id(&self) -> &str {
        self.container.id()
    }

    /// Runs `script` with bash inside the broker's container and returns what it printed.
    pub async fn exec(&self, script: &str) -> Result<String> {
        let container = self.container.clone();
        let script = script.to_owned();
        on_testkit(async move {
            let mut result = container
                .exec(testcontainers::core::ExecCommand::new([
                    "bash", "-c", &script,
                ]))
                .await?;
            let out = result.stdout_to_vec().await?;
            Ok(String::from_utf8_lossy(&out).into_owned())
        })
        .await
    }

    /// Sends SIGKILL: the broker dies at once, with no controlled shutdown.
    pub async fn kill(&self) -> Result<()> {
        engine::kill(self.container.id(), "SIGKILL").await
    }

    /// Freezes every process of the broker (SIGSTOP-like); it stops answering but keeps
    /// its connections open.
    ///
    /// Tried up to five times: with cgroup v1, the freezer can fail to freeze a JVM that
    /// is busy creating threads, and `runc pause` then gives up at once.
    pub async fn pause(&self) -> Result<()> {
        let container = self.container.clone();
        on_testkit(async move {
            let mut attempt = 1;
            loop {
                match container.pause().await {
                    Ok(()) => return Ok(()),
                    Err(e) if attempt < 5 => {
                        tracing::warn!(error = %e, attempt, "pausing a broker failed; trying again");
                        attempt += 1;
                        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        })
        .await
    }

    pub async fn unpause(&self) -> Result<()> {
        let container = self.container.clone();
        on_testkit(async move { Ok(container.unpause().await?) }).await
    }

    /// Stops the broker with SIGTERM (a controlled shutdown), SIGKILL after 30 s.
    pub async fn stop(&self) -> Result<()> {
        let container = self.container.clone();
        on_testkit(async move { Ok(container.stop_with_timeout(Some(30)).await?) }).await
    }

    /// Starts a stopped or killed broker again; it keeps its data and rejoins.
    pub async fn start(&self) -> Result<()> {
        let container = self.container.clone();
        on_testkit(async move { Ok(container.start().await?) }).await
    }

    /// The broker's address on the cluster's network.
    pub async fn ip_address(&self) -> Result<String> {
        let docker = engine::docker().await?;
        let id = self.container.id().to_owned();
        on_testkit(async move {
            let inspected = docker.inspect_container(&id, None).await?;
            inspected
                .network_settings
                .and_then(|n| n.networks)
                .and_then(|networks| {
                    networks
                        .into_values()
                        .find_map(|n| n.ip_address.filter(|ip| !ip.is_empty()))
                })
                .ok_or_else(|| Error::Unsupported(format!("container {id} has no address")))
        })
        .await
    }

    /// The host's process id of the broker's main process: its network namespace is the
    /// container's (`nsenter -t <pid> -n …`).
    pub async fn pid(&self) -> Result<i64> {
        let docker = engine::docker().await?;
        let id = self.container.id().to_owned();
        on_testkit(async move {
            let inspected = docker.inspect_container(&id, None).await?;
            inspected
                .state
                .and_then(|s| s.pid)
                .filter(|pid| *pid > 0)
                .ok_or_else(|| Error::Unsupported(format!("container {id} has no process")))
        })
        .await
    }

    /// Whether the broker's container is running (not killed, stopped or exited).
    pub async fn is_running(&self) -> Result<bool> {
        let container = self.container.clone();
        on_testkit(async move { Ok(container.is_running().await?) }).await
    }
}

impl Drop for KafkaCluster {
    fn drop(&mut self) {
        let containers: Vec<_> = self.brokers.drain(..).map(|b| b.container).collect();
        let network = std::mem::take(&mut self.network);
        spawn_detached(async move {
            drop(containers); // removes each container (testcontainers' Drop)
            if let Ok(docker) = engine::docker().await {
                let _ = docker.remove_network(&network).await;
            }
        });
    }
}
