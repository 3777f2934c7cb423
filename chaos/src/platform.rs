//! The platform a drill runs: a 3-broker KRaft cluster (RF 3, `min.insync.replicas=2`)
//! and a durable PostgreSQL from the test kit, the stand-in gateway, and release builds
//! of order-service and payment-service as OS processes — as many instances as the drill
//! asks for — each of which can be killed and started again.

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

    /// SIGKILL: no shutdown at all, as a crash or an OOM kill would have it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, and a wait for the process to stop (SIGKILL after `limit`).
    pub async fn terminate(&mut self, limit: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let started = Instant::now();
        while started.elapsed() < limit {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
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
    pub gateway_log: PathBuf,
    gateway: Child,
    gateway_url: String,
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

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

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

        let gateway_port = free_port()?;
        let gateway_log = dir.join("gateway.jsonl");
        let gateway = Command::new(std::env::current_exe()?)
            .args([
                "serve-gateway",
                "--listen",
                &format!("127.0.0.1:{gateway_port}"),
                "--record",
            ])
            .arg(&gateway_log)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting the stand-in gateway")?;
        let gateway_url = format!("http://127.0.0.1:{gateway_port}");

        let mut platform = Self {
            cluster,
            postgres,
            orders_db,
            payments_db,
            topics,
            orders: Vec::new(),
            payments: Vec::new(),
            gateway_log,
            gateway,
            gateway_url,
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
        let port = free_port()?;
        let mut env = vec![
            ("KAFKA_BOOTSTRAP".to_owned(), bootstrap.to_owned()),
            ("TOPIC_PREFIX".to_owned(), prefix.to_owned()),
            ("TOPIC_PARTITIONS".to_owned(), "6".to_owned()),
            ("RUST_LOG".to_owned(), "info,sqlx=warn".to_owned()),
        ];
        match kind {
            Kind::Order => env.extend([
                ("ORDER_LISTEN".to_owned(), format!("127.0.0.1:{port}")),
                ("ORDER_DATABASE_URL".to_owned(), self.orders_db.url.clone()),
            ]),
            Kind::Payment => env.extend([
                ("PAYMENT_LISTEN".to_owned(), format!("127.0.0.1:{port}")),
                (
                    "PAYMENT_DATABASE_URL".to_owned(),
                    self.payments_db.url.clone(),
                ),
                ("PAYMENT_GATEWAY_URL".to_owned(), self.gateway_url.clone()),
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

    /// Stops every service (SIGTERM, bounded) and the gateway.
    pub async fn stop(&mut self) {
        for service in self.orders.iter_mut().chain(self.payments.iter_mut()) {
            service.terminate(Duration::from_secs(25)).await;
        }
        let _ = self.gateway.kill();
        let _ = self.gateway.wait();
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        for service in self.orders.iter_mut().chain(self.payments.iter_mut()) {
            service.kill();
        }
        let _ = self.gateway.kill();
        let _ = self.gateway.wait();
    }
}
