//! The platform a drill runs: a 3-broker KRaft cluster (RF 3, `min.insync.replicas=2`)
//! and a durable PostgreSQL from the test kit, the stand-in gateway (in this process,
//! as strict as a provider, its faults set by the drill), and release builds of
//! order-service and payment-service as OS processes — as many instances as the drill
//! asks for — each of which can be killed, frozen and started again.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use events::Topics;
use testkit::postgres::PostgresServer;
use testkit::{KafkaCluster, TestDatabase};

/// Which service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Order,
    Payment,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Order => "order-service",
            Kind::Payment => "payment-service",
        }
    }
}

/// One service instance, a process of its own.
pub struct Service {
    pub kind: Kind,
    pub index: usize,
    pub port: u16,
    env: Vec<(String, String)>,
    binary: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Service {
    /// Starts the process (its log appended to).
    pub fn start(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let mut command = Command::new(&self.binary);
        command
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(log);
        self.child = Some(
            command
                .spawn()
                .with_context(|| format!("starting {}", self.binary.display()))?,
        );
        Ok(())
    }

    /// SIGSTOP (`true`) or SIGCONT (`false`): the process freezes as a paused VM or a
    /// stuck machine would, its sockets open and its kernel answering TCP.
    pub fn freeze(&mut self, frozen: bool) {
        if let Some(child) = self.child.as_ref() {
            let signal = if frozen { "-STOP" } else { "-CONT" };
            let _ = Command::new("kill")
                .args([signal, &child.id().to_string()])
                .status();
        }
    }

    /// The log's `ERROR` lines so far.
    pub fn error_lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("ERROR"))
            .map(str::to_owned)
            .collect()
    }

    /// SIGKILL: no shutdown at all, as a crash or an OOM kill would have it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, and a wait for the process to stop (SIGKILL after `limit`). Returns its
    /// exit status: `None` if it had to be killed (or was not running).
    pub async fn terminate(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-CONT", &child.id().to_string()])
            .status();
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let started = Instant::now();
        while started.elapsed() < limit {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn label(&self) -> String {
        format!("{}#{}", self.kind.name(), self.index)
    }

    fn running(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }
}

/// Everything a drill runs.
pub struct Platform {
    pub cluster: KafkaCluster,
    pub postgres: PostgresServer,
    pub orders_db: TestDatabase,
    pub payments_db: TestDatabase,
    pub topics: Topics,
    pub orders: Vec<Service>,
    pub payments: Vec<Service>,
    /// The payment gateway: every request on record, faults on demand.
    pub gateway: gateway_stand_in::StandIn,
    bin_dir: PathBuf,
    dir: PathBuf,
}

/// The binaries beside this one: release builds of the services.
fn bin_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("finding this program")?;
    let dir = exe.parent().context("this program's folder")?.to_owned();
    for service in [Kind::Order, Kind::Payment] {
        let binary = dir.join(service.name());
        if !binary.exists() {
            bail!(
                "{} is missing: build the services beside the drills \
                 (cargo build --release -p order-service -p payment-service -p chaos)",
                binary.display()
            );
        }
    }
    Ok(dir)
}

/// How long the stand-in gateway takes to answer a charge, as a card network does: long
/// enough that charges are in flight when a drill kills or moves a payment-service.
const CHARGE_DELAY: Duration = Duration::from_millis(30);

impl Platform {
    /// Starts the infrastructure, the gateway and `orders` + `payments` instances, and
    /// waits until every instance is ready.
    pub async fn start(dir: &Path, orders: usize, payments: usize) -> anyhow::Result<Self> {
        let bin_dir = bin_dir()?;
        std::fs::create_dir_all(dir)?;
        let (cluster, postgres) =
            tokio::join!(KafkaCluster::start(), PostgresServer::durable_dedicated());
        let cluster = cluster.context("starting the 3-broker cluster")?;
        let postgres = postgres.context("starting PostgreSQL")?;
        let orders_db = postgres.fresh_database().await?;
        let payments_db = postgres.fresh_database().await?;
        let prefix = format!("{}.", testkit::unique_name("drill"));
        let topics = Topics::with_prefix(&prefix);

        let gateway = gateway_stand_in::StandIn::start_with(
            gateway_stand_in::Settings {
                charge_delay: Some(CHARGE_DELAY),
                ..gateway_stand_in::Settings::strict()
            },
            ([127, 0, 0, 1], 0).into(),
            None,
            Some(&dir.join("gateway.jsonl")),
        )
        .await
        .context("starting the stand-in gateway")?;

        let mut platform = Self {
            cluster,
            postgres,
            orders_db,
            payments_db,
            topics,
            orders: Vec::new(),
            payments: Vec::new(),
            gateway,
            bin_dir,
            dir: dir.to_owned(),
        };
        let bootstrap = platform.cluster.bootstrap().to_owned();
        for _ in 0..orders {
            platform.add(Kind::Order, &prefix, &bootstrap)?;
        }
        platform.wait_ready(Duration::from_secs(120)).await?;
        // Every status change of an order, for the checker (the drill's instrument, not
        // the product's).
        sqlx::raw_sql(
            "CREATE TABLE drill_status_log (order_id UUID, from_status TEXT, to_status TEXT,
                 at TIMESTAMPTZ DEFAULT clock_timestamp());
             CREATE FUNCTION drill_log_status() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 IF NEW.status IS DISTINCT FROM OLD.status THEN
                     INSERT INTO drill_status_log (order_id, from_status, to_status)
                     VALUES (NEW.id, OLD.status, NEW.status);
                 END IF;
                 RETURN NEW;
             END $$;
             CREATE TRIGGER drill_log_status AFTER UPDATE ON orders
                 FOR EACH ROW EXECUTE FUNCTION drill_log_status();",
        )
        .execute(platform.orders_db.pool())
        .await
        .context("installing the status log")?;
        for _ in 0..payments {
            platform.add(Kind::Payment, &prefix, &bootstrap)?;
        }
        platform.wait_ready(Duration::from_secs(120)).await?;
        Ok(platform)
    }

    /// Starts one more instance of `kind`; returns its index.
    pub fn add(&mut self, kind: Kind, prefix: &str, bootstrap: &str) -> anyhow::Result<usize> {
        let index = match kind {
            Kind::Order => self.orders.len(),
            Kind::Payment => self.payments.len(),
        };
        let port = testkit::engine::free_port()?;
        let mut env = vec![
            ("KAFKA_BOOTSTRAP".to_owned(), bootstrap.to_owned()),
            ("TOPIC_PREFIX".to_owned(), prefix.to_owned()),
            ("TOPIC_PARTITIONS".to_owned(), "6".to_owned()),
            ("RUST_LOG".to_owned(), "info,sqlx=warn".to_owned()),
        ];
        match kind {
            // No drain: the drills post to each instance directly, no load balancer to
            // take it out of rotation.
            Kind::Order => env.extend([
                ("ORDER_LISTEN".to_owned(), format!("127.0.0.1:{port}")),
                ("ORDER_SHUTDOWN_DRAIN_SECS".to_owned(), "0".to_owned()),
                ("ORDER_DATABASE_URL".to_owned(), self.orders_db.url.clone()),
            ]),
            Kind::Payment => env.extend([
                ("PAYMENT_LISTEN".to_owned(), format!("127.0.0.1:{port}")),
                ("PAYMENT_SHUTDOWN_DRAIN_SECS".to_owned(), "0".to_owned()),
                (
                    "PAYMENT_DATABASE_URL".to_owned(),
                    self.payments_db.url.clone(),
                ),
                ("PAYMENT_GATEWAY_URL".to_owned(), self.gateway.url()),
            ]),
        }
        let mut service = Service {
            kind,
            index,
            port,
            env,
            binary: self.bin_dir.join(kind.name()),
            log: self.dir.join(format!("{}-{index}.log", kind.name())),
            child: None,
        };
        service.start()?;
        match kind {
            Kind::Order => self.orders.push(service),
            Kind::Payment => self.payments.push(service),
        }
        Ok(index)
    }

    /// The topic prefix of this drill.
    pub fn prefix(&self) -> String {
        self.topics
            .order_created
            .strip_suffix(events::topics::ORDER_CREATED)
            .unwrap_or_default()
            .to_owned()
    }

    /// Base URLs of the payment-service instances.
    pub fn payment_urls(&self) -> Vec<String> {
        self.payments.iter().map(Service::url).collect()
    }

    /// Base URLs of the order-service instances.
    pub fn order_urls(&self) -> Vec<String> {
        self.orders.iter().map(Service::url).collect()
    }

    pub fn service(&mut self, kind: Kind, index: usize) -> &mut Service {
        match kind {
            Kind::Order => &mut self.orders[index],
            Kind::Payment => &mut self.payments[index],
        }
    }

    /// Waits until every running instance answers `GET /health/ready` with `200`.
    pub async fn wait_ready(&mut self, limit: Duration) -> anyhow::Result<()> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()?;
        let started = Instant::now();
        loop {
            let mut waiting = Vec::new();
            for service in self.orders.iter_mut().chain(self.payments.iter_mut()) {
                if !service.running() {
                    if service.child.is_some() {
                        bail!("{} exited; see {}", service.label(), service.log.display());
                    }
                    continue;
                }
                let ready = http
                    .get(format!("{}/health/ready", service.url()))
                    .send()
                    .await
                    .map(|r| r.status().is_success())
                    .unwrap_or(false);
                if !ready {
                    waiting.push(service.label());
                }
            }
            if waiting.is_empty() {
                return Ok(());
            }
            if started.elapsed() > limit {
                bail!("not ready within {limit:?}: {}", waiting.join(", "));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Stops every service (SIGTERM, bounded); returns how each ended, by label: its exit
    /// status, or `None` when it had to be killed.
    pub async fn stop(&mut self) -> Vec<(String, Option<std::process::ExitStatus>)> {
        let mut ended = Vec::new();
        for service in self.orders.iter_mut().chain(self.payments.iter_mut()) {
            if service.child.is_some() {
                let label = service.label();
                ended.push((label, service.terminate(Duration::from_secs(25)).await));
            }
        }
        ended
    }

    /// Every service's `ERROR` lines, by label.
    pub fn error_lines(&self) -> Vec<(String, Vec<String>)> {
        self.orders
            .iter()
            .chain(self.payments.iter())
            .map(|s| (s.label(), s.error_lines()))
            .filter(|(_, lines)| !lines.is_empty())
            .collect()
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        for service in self.orders.iter_mut().chain(self.payments.iter_mut()) {
            service.freeze(false);
            service.kill();
        }
    }
}
