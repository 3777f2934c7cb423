//! The drills: what each one breaks, when, and what it requires beyond the invariants.
//! Victims and timings are drawn from the drill's seed.

use std::time::Duration;

use anyhow::Context;

use crate::platform::{Kind, Platform};

/// One drill of the catalogue.
#[derive(Debug, Clone, Copy)]
pub struct Drill {
    pub name: &'static str,
    pub about: &'static str,
    /// order-service and payment-service instances at the start.
    pub orders: usize,
    pub payments: usize,
    /// How long the fault lasts, injection to heal, roughly.
    pub fault_length: Duration,
    /// Paid orders keep flowing while the fault is in force.
    pub flow_during_fault: bool,
    fault: Fault,
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    BrokerKill,
    LeaderKillLoop,
    ControllerKill,
    BrokerPause,
    MinorityLeft,
    KafkaDown,
    PostgresKill,
    PaymentKill,
    OrderKill,
    Rebalance,
    Partition,
}

const fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// Every drill, in the order `just chaos` runs them.
pub const DRILLS: &[Drill] = &[
    Drill {
        name: "broker-kill",
        about: "SIGKILL the leader of an order.created partition; restart it 15 s later",
        orders: 1,
        payments: 1,
        fault_length: secs(15),
        flow_during_fault: true,
        fault: Fault::BrokerKill,
    },
    Drill {
        name: "leader-kill-loop",
        about: "SIGKILL whichever broker leads, five times, about 10 s apart, each restarted",
        orders: 1,
        payments: 1,
        fault_length: secs(55),
        flow_during_fault: true,
        fault: Fault::LeaderKillLoop,
    },
    Drill {
        name: "controller-kill",
        about: "SIGKILL the active KRaft controller; restart it 15 s later",
        orders: 1,
        payments: 1,
        fault_length: secs(15),
        flow_during_fault: true,
        fault: Fault::ControllerKill,
    },
    Drill {
        name: "broker-pause",
        about: "freeze one broker for 20 s (container pause), then resume it",
        orders: 1,
        payments: 1,
        fault_length: secs(20),
        flow_during_fault: true,
        fault: Fault::BrokerPause,
    },
    Drill {
        name: "minority-left",
        about: "two of three brokers down for 20 s: orders still accepted, nothing published, then everything drains",
        orders: 1,
        payments: 1,
        fault_length: secs(20),
        flow_during_fault: false,
        fault: Fault::MinorityLeft,
    },
    Drill {
        name: "kafka-down",
        about: "all three brokers SIGKILLed for 20 s, then restarted",
        orders: 1,
        payments: 1,
        fault_length: secs(20),
        flow_during_fault: false,
        fault: Fault::KafkaDown,
    },
    Drill {
        name: "postgres-kill",
        about: "SIGKILL PostgreSQL mid-flow and restart it",
        orders: 1,
        payments: 1,
        fault_length: secs(5),
        flow_during_fault: false,
        fault: Fault::PostgresKill,
    },
    Drill {
        name: "payment-kill",
        about: "SIGKILL a payment-service instance three times mid-batch, restarting it each time",
        orders: 1,
        payments: 2,
        fault_length: secs(30),
        flow_during_fault: true,
        fault: Fault::PaymentKill,
    },
    Drill {
        name: "order-kill",
        about: "SIGKILL order-service while its relay is publishing; restart it",
        orders: 1,
        payments: 1,
        fault_length: secs(5),
        flow_during_fault: false,
        fault: Fault::OrderKill,
    },
    Drill {
        name: "rebalance",
        about: "payment-service scaled 1 → 3 → 1 instances mid-flow",
        orders: 1,
        payments: 1,
        fault_length: secs(30),
        flow_during_fault: true,
        fault: Fault::Rebalance,
    },
    Drill {
        name: "partition",
        about: "one broker cut off from the other two and from the clients for 20 s (firewall rules), then reconnected",
        orders: 1,
        payments: 1,
        fault_length: secs(20),
        flow_during_fault: true,
        fault: Fault::Partition,
    },
];

/// The drill called `name`.
pub fn find(name: &str) -> Option<&'static Drill> {
    DRILLS.iter().find(|d| d.name == name)
}

/// Numbers from a seed (xorshift): victims and timings.
pub struct Dice(u64);

impl Dice {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x % n.max(1)
    }

    /// `base` give or take a fifth.
    pub fn around(&mut self, base: Duration) -> Duration {
        let spread = base.as_millis() as u64 / 5;
        base - Duration::from_millis(spread) + Duration::from_millis(self.below(2 * spread + 1))
    }
}

/// What a drill saw while its fault was in force, for checks of its own.
#[derive(Debug, Default, Clone)]
pub struct FaultNotes {
    /// What was done, for the report.
    pub actions: Vec<String>,
    /// Events order-service's relay saw acknowledged while only one broker was up
    /// (minority-left): there must be none.
    pub published_during: Option<i64>,
}

/// The leader of a random partition of `topic`.
async fn leader_of(platform: &Platform, topic: &str, dice: &mut Dice) -> anyhow::Result<i32> {
    let metadata = platform.cluster.client().metadata().await?;
    let partitions = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map(|t| {
            t.partitions()
                .iter()
                .map(|p| p.leader())
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    let leaders: Vec<i32> = partitions.into_iter().filter(|l| *l > 0).collect();
    anyhow::ensure!(!leaders.is_empty(), "no partition of {topic} has a leader");
    Ok(leaders[dice.below(leaders.len() as u64) as usize])
}

impl Drill {
    /// Injects the fault and heals it; returns what it did.
    pub async fn inject(
        &self,
        platform: &mut Platform,
        dice: &mut Dice,
    ) -> anyhow::Result<FaultNotes> {
        let mut notes = FaultNotes::default();
        let topic = platform.topics.order_created.clone();
        match self.fault {
            Fault::BrokerKill => {
                let victim = leader_of(platform, &topic, dice).await?;
                platform.cluster.broker(victim).kill().await?;
                notes
                    .actions
                    .push(format!("SIGKILL broker {victim} (a leader of {topic})"));
                tokio::time::sleep(secs(15)).await;
                platform.cluster.broker(victim).start().await?;
                notes.actions.push(format!("restarted broker {victim}"));
            }
            Fault::LeaderKillLoop => {
                for round in 1..=5 {
                    let victim = leader_of(platform, &topic, dice).await?;
                    platform.cluster.broker(victim).kill().await?;
                    notes
                        .actions
                        .push(format!("round {round}: SIGKILL broker {victim}"));
                    tokio::time::sleep(dice.around(secs(6))).await;
                    platform.cluster.broker(victim).start().await?;
                    platform
                        .cluster
                        .client()
                        .wait_for_brokers(3, secs(60))
                        .await
                        .context("the broker rejoins")?;
                    tokio::time::sleep(dice.around(secs(4))).await;
                }
            }
            Fault::ControllerKill => {
                let controller = platform.cluster.active_controller().await?;
                platform.cluster.broker(controller).kill().await?;
                notes.actions.push(format!(
                    "SIGKILL the active controller, broker {controller}"
                ));
                tokio::time::sleep(secs(15)).await;
                platform.cluster.broker(controller).start().await?;
                notes.actions.push(format!("restarted broker {controller}"));
            }
            Fault::BrokerPause => {
                let victim = 1 + dice.below(3) as i32;
                platform.cluster.broker(victim).pause().await?;
                notes.actions.push(format!("paused broker {victim}"));
                tokio::time::sleep(secs(20)).await;
                platform.cluster.broker(victim).unpause().await?;
                notes.actions.push(format!("resumed broker {victim}"));
            }
            Fault::MinorityLeft => {
                let survivor = 1 + dice.below(3) as i32;
                let victims: Vec<i32> = (1..=3).filter(|b| *b != survivor).collect();
                for victim in &victims {
                    platform.cluster.broker(*victim).kill().await?;
                }
                notes.actions.push(format!(
                    "SIGKILL brokers {victims:?}; broker {survivor} left alone"
                ));
                // Leaders move or vanish in the first seconds; from then on, Kafka may
                // acknowledge nothing, so the relay marks nothing published.
                tokio::time::sleep(secs(4)).await;
                let from = chrono::Utc::now();
                tokio::time::sleep(secs(16)).await;
                let published: i64 =
                    sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at >= $1")
                        .bind(from)
                        .fetch_one(platform.orders_db.pool())
                        .await
                        .context("counting what was published")?;
                notes.published_during = Some(published);
                for victim in &victims {
                    platform.cluster.broker(*victim).start().await?;
                }
                notes.actions.push(format!("restarted brokers {victims:?}"));
            }
            Fault::KafkaDown => {
                for broker in 1..=3 {
                    platform.cluster.broker(broker).kill().await?;
                }
                notes.actions.push("SIGKILL all three brokers".into());
                tokio::time::sleep(secs(20)).await;
                let restarts = (1..=3).map(|b| platform.cluster.broker(b).start());
                for restarted in futures::future::join_all(restarts).await {
                    restarted?;
                }
                notes.actions.push("restarted all three brokers".into());
            }
            Fault::PostgresKill => {
                platform.postgres.kill().await?;
                notes.actions.push("SIGKILL PostgreSQL".into());
                tokio::time::sleep(secs(5)).await;
                platform.postgres.start().await?;
                notes
                    .actions
                    .push("restarted PostgreSQL (crash recovery from its WAL)".into());
            }
            Fault::PaymentKill => {
                for round in 1..=3 {
                    let victim = dice.below(platform.payments.len() as u64) as usize;
                    let service = platform.service(Kind::Payment, victim);
                    service.kill();
                    notes
                        .actions
                        .push(format!("round {round}: SIGKILL {}", service.label()));
                    tokio::time::sleep(dice.around(secs(3))).await;
                    platform.service(Kind::Payment, victim).start()?;
                    tokio::time::sleep(dice.around(secs(7))).await;
                }
            }
            Fault::OrderKill => {
                let service = platform.service(Kind::Order, 0);
                service.kill();
                notes.actions.push(format!("SIGKILL {}", service.label()));
                tokio::time::sleep(secs(5)).await;
                platform.service(Kind::Order, 0).start()?;
                notes.actions.push("restarted order-service#0".into());
            }
            Fault::Partition => {
                let victim = 1 + dice.below(3) as i32;
                let ip = platform.cluster.broker(victim).ip_address().await?;
                let cut = Cut::new(&ip)?;
                notes
                    .actions
                    .push(format!("cut broker {victim} ({ip}) off from everyone"));
                tokio::time::sleep(secs(20)).await;
                drop(cut);
                notes.actions.push(format!("reconnected broker {victim}"));
            }
            Fault::Rebalance => {
                let prefix = platform.prefix();
                let bootstrap = platform.cluster.bootstrap().to_owned();
                let first = platform.add(Kind::Payment, &prefix, &bootstrap)?;
                let second = platform.add(Kind::Payment, &prefix, &bootstrap)?;
                notes.actions.push("payment-service scaled 1 → 3".into());
                tokio::time::sleep(secs(15)).await;
                for index in [first, second] {
                    platform
                        .service(Kind::Payment, index)
                        .terminate(secs(25))
                        .await;
                }
                notes
                    .actions
                    .push("payment-service scaled 3 → 1 (SIGTERM)".into());
                tokio::time::sleep(secs(5)).await;
            }
        }
        Ok(notes)
    }
}

/// A broker cut off by firewall rules; dropping it (also when a drill is interrupted)
/// removes the rules.
struct Cut {
    rules: Vec<Vec<String>>,
}

impl Cut {
    fn new(ip: &str) -> anyhow::Result<Self> {
        let mut cut = Self { rules: Vec::new() };
        for rule in partition_rules(ip) {
            iptables("-I", &rule)?;
            cut.rules.push(rule);
        }
        Ok(cut)
    }
}

impl Drop for Cut {
    fn drop(&mut self) {
        for rule in &self.rules {
            if let Err(e) = iptables("-D", rule) {
                eprintln!("removing a partition rule: {e:#}");
            }
        }
    }
}

/// Firewall rules that drop every packet to and from `ip`: between containers (bridged
/// traffic passes the FORWARD chain here) and between the host's clients and it.
fn partition_rules(ip: &str) -> Vec<Vec<String>> {
    let rule = |chain: &str, dir: &str| {
        vec![
            chain.to_owned(),
            dir.to_owned(),
            ip.to_owned(),
            "-j".into(),
            "DROP".into(),
        ]
    };
    vec![
        rule("FORWARD", "-s"),
        rule("FORWARD", "-d"),
        rule("OUTPUT", "-d"),
        rule("INPUT", "-s"),
    ]
}

/// `iptables <action> <rule>`: needs root, as the drills' container engine does.
fn iptables(action: &str, rule: &[String]) -> anyhow::Result<()> {
    let status = std::process::Command::new("iptables")
        .arg(action)
        .args(rule)
        .status()
        .context("running iptables (the partition drill needs it, and root)")?;
    anyhow::ensure!(
        status.success(),
        "iptables {action} {} failed",
        rule.join(" ")
    );
    Ok(())
}
