//! The drills: what each one breaks, when, how it proves the fault took effect, and what
//! it requires beyond the invariants. Victims and timings are drawn from the drill's seed.

use std::time::{Duration, Instant};

use anyhow::Context;
use gateway_stand_in::Fault as GatewayFault;

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
    /// The design tolerates the fault: after `grace`, orders are paid at (at least) half
    /// the offered rate in every 5 s window while it is in force.
    pub flow_during_fault: bool,
    /// The failover time: how long after the injection the flow may stop.
    pub grace: Duration,
    /// The grace counts from the fault's last action, not its first: each action is a
    /// failover of its own (payment-kill's kills, each a session timeout).
    pub grace_from_last_action: bool,
    /// Orders per second for this drill, whatever `--rate` says (the low-rate variants).
    pub rate: Option<f64>,
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
    OrderPause,
    Rebalance,
    Partition,
    GatewayDown,
    GatewaySlow,
    GatewayLostAnswers,
    GatewayAuth,
}

const fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

const fn drill(name: &'static str, about: &'static str, fault: Fault) -> Drill {
    Drill {
        name,
        about,
        orders: 1,
        payments: 1,
        fault_length: secs(20),
        flow_during_fault: false,
        grace: secs(0),
        grace_from_last_action: false,
        rate: None,
        fault,
    }
}

/// A drill the design tolerates: the flow goes on after `grace`.
const fn tolerated(mut d: Drill, length: u64, grace: u64) -> Drill {
    d.flow_during_fault = true;
    d.fault_length = secs(length);
    d.grace = secs(grace);
    d
}

const fn lasting(mut d: Drill, length: u64) -> Drill {
    d.fault_length = secs(length);
    d
}

const fn at_rate(mut d: Drill, name: &'static str, rate: f64) -> Drill {
    d.name = name;
    d.rate = Some(rate);
    d
}

const fn instances(mut d: Drill, orders: usize, payments: usize) -> Drill {
    d.orders = orders;
    d.payments = payments;
    d
}

const GATEWAY_DOWN: Drill = lasting(
    drill(
        "gateway-down",
        "the payment gateway refuses connections for 15 s, then answers 503 for 15 s",
        Fault::GatewayDown,
    ),
    30,
);
const GATEWAY_SLOW: Drill = lasting(
    drill(
        "gateway-slow",
        "the payment gateway hangs past the client's timeout for 30 s",
        Fault::GatewaySlow,
    ),
    30,
);
const GATEWAY_LOST: Drill = lasting(
    drill(
        "gateway-lost-answers",
        "the payment gateway charges, then drops the connection, on one call in five, for 30 s",
        Fault::GatewayLostAnswers,
    ),
    30,
);
const GATEWAY_AUTH: Drill = lasting(
    drill(
        "gateway-auth",
        "the payment gateway answers 401 (our credentials refused) for 30 s",
        Fault::GatewayAuth,
    ),
    30,
);

/// A killed consumer's partitions wait out its session (`CONSUMER_SESSION_TIMEOUT_MS`,
/// 20 s) before the group hands them on, and the kills chain: a restarted instance's
/// join waits for the members killed before it. So the flow may stop until a session
/// and a rebalance after the last kill; counted from it, since how far apart the kills
/// fall depends on how soon charges are in flight and restarts ready.
const PAYMENT_KILL_GRACE: u64 = 28;

/// Counts the grace from the fault's last action.
const fn from_last_action(mut d: Drill) -> Drill {
    d.grace_from_last_action = true;
    d
}

/// Every drill, in the order `just chaos` runs them.
pub const DRILLS: &[Drill] = &[
    tolerated(drill("broker-kill", "SIGKILL the leader of an order.created partition; restart it 15 s later", Fault::BrokerKill), 15, 12),
    tolerated(drill("leader-kill-loop", "SIGKILL whichever broker leads, five times, about 10 s apart, each restarted", Fault::LeaderKillLoop), 55, 55),
    tolerated(drill("controller-kill", "SIGKILL the active KRaft controller; restart it 15 s later", Fault::ControllerKill), 15, 12),
    tolerated(drill("broker-pause", "freeze the leader of an order.created partition for 20 s (container pause), then resume it", Fault::BrokerPause), 20, 12),
    drill("minority-left", "two of three brokers down for 20 s: orders still accepted, nothing published, then everything drains", Fault::MinorityLeft),
    drill("kafka-down", "all three brokers SIGKILLed for 20 s, then restarted", Fault::KafkaDown),
    lasting(drill("postgres-kill", "SIGKILL PostgreSQL mid-flow and restart it", Fault::PostgresKill), 5),
    instances(from_last_action(tolerated(drill("payment-kill", "SIGKILL a payment-service instance three times with charges in flight, restarting it each time", Fault::PaymentKill), 60, PAYMENT_KILL_GRACE)), 1, 2),
    lasting(drill("order-kill", "SIGKILL order-service while its outbox has rows to publish; restart it", Fault::OrderKill), 5),
    instances(tolerated(drill("order-pause", "SIGSTOP one of two order-service instances (its relay publishing) for 30 s; the other takes its slots", Fault::OrderPause), 30, 20), 2, 1),
    tolerated(drill("rebalance", "payment-service scaled 1 → 3 → 1 instances mid-flow", Fault::Rebalance), 30, 10),
    tolerated(drill("partition", "the leader of an order.created partition cut off from its peers and the clients for 20 s (rules in its network namespace), then reconnected", Fault::Partition), 20, 12),
    GATEWAY_DOWN,
    at_rate(GATEWAY_DOWN, "gateway-down-low", 2.0),
    GATEWAY_SLOW,
    at_rate(GATEWAY_SLOW, "gateway-slow-low", 2.0),
    GATEWAY_LOST,
    at_rate(GATEWAY_LOST, "gateway-lost-answers-low", 2.0),
    GATEWAY_AUTH,
    at_rate(GATEWAY_AUTH, "gateway-auth-low", 2.0),
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

/// What a drill did and saw while its fault was in force.
#[derive(Debug, Default, Clone)]
pub struct FaultNotes {
    /// What was done, for the report.
    pub actions: Vec<String>,
    /// When the first action was done: the fault's start. Finding a victim can take
    /// seconds (the active controller is asked of the quorum by a command-line tool), and
    /// the grace period counts from the fault, not from the search.
    pub struck: Option<Instant>,
    /// When the last action was done.
    pub last_struck: Option<Instant>,
    /// What showed the fault took effect.
    pub proofs: Vec<String>,
    /// What should have shown it and did not: the drill fails, the fault unproven.
    pub unproven: Vec<String>,
    /// Events order-service's relay saw acknowledged while only one broker was up
    /// (minority-left): there must be none.
    pub published_during: Option<i64>,
    /// When order-service (some instance) was down or frozen, Unix milliseconds:
    /// requests left unanswered then are the fault's, not a failure.
    pub orders_down: Vec<(i64, i64)>,
}

impl FaultNotes {
    /// Records what was done; the first call marks the fault's start, the last its last
    /// action.
    fn did(&mut self, action: impl Into<String>) {
        let now = Instant::now();
        self.struck.get_or_insert(now);
        self.last_struck = Some(now);
        self.actions.push(action.into());
    }

    fn proved(&mut self, proof: impl Into<String>) {
        self.proofs.push(proof.into());
    }

    fn not_proved(&mut self, what: impl Into<String>) {
        self.unproven.push(what.into());
    }
}

/// Polls `check` every 250 ms for up to `limit`; `true` once it held.
async fn within<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while started.elapsed() < limit {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    false
}

/// The leaders of `topic`'s partitions, by partition (0 for none).
async fn leaders(platform: &Platform, topic: &str) -> anyhow::Result<Vec<i32>> {
    let metadata = platform.cluster.client().metadata().await?;
    Ok(metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map(|t| t.partitions().iter().map(|p| p.leader()).collect())
        .unwrap_or_default())
}

/// A random partition of `topic` with a leader: (partition, leader).
async fn led_partition(
    platform: &Platform,
    topic: &str,
    dice: &mut Dice,
) -> anyhow::Result<(usize, i32)> {
    let led: Vec<(usize, i32)> = leaders(platform, topic)
        .await?
        .into_iter()
        .enumerate()
        .filter(|(_, l)| *l > 0)
        .collect();
    anyhow::ensure!(!led.is_empty(), "no partition of {topic} has a leader");
    Ok(led[dice.below(led.len() as u64) as usize])
}

/// Waits until partition `partition` of `topic` is led by another broker than `victim`.
async fn leadership_moved(
    platform: &Platform,
    topic: &str,
    partition: usize,
    victim: i32,
    notes: &mut FaultNotes,
) {
    let moved = within(secs(30), || async {
        leaders(platform, topic)
            .await
            .ok()
            .and_then(|l| l.get(partition).copied())
            .is_some_and(|l| l > 0 && l != victim)
    })
    .await;
    if moved {
        notes.proved(format!(
            "leadership of {topic}/{partition} moved off broker {victim}"
        ));
    } else {
        notes.not_proved(format!(
            "leadership of {topic}/{partition} did not move off broker {victim} within 30 s"
        ));
    }
}

/// A service's readiness body, if it answers.
async fn readiness(url: &str) -> Option<serde_json::Value> {
    let http = reqwest::Client::builder().timeout(secs(3)).build().ok()?;
    http.get(format!("{url}/health/ready"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()
}

/// Whether a readiness body reports `name` (a check or a component) failing.
fn reports_failing(body: &serde_json::Value, name: &str) -> bool {
    ["checks", "components"].iter().any(|list| {
        body[list]
            .as_array()
            .is_some_and(|items| items.iter().any(|c| c["name"] == name && c["ok"] == false))
    })
}

/// Watches `url`'s readiness for `limit`: whether `name` was reported failing.
async fn saw_failing(url: &str, name: &str, limit: Duration) -> bool {
    within(limit, || async {
        readiness(url)
            .await
            .is_some_and(|body| reports_failing(&body, name))
    })
    .await
}

/// The sum of a metric's samples in a service's `/metrics`.
async fn metric(url: &str, name: &str) -> f64 {
    let Ok(http) = reqwest::Client::builder().timeout(secs(3)).build() else {
        return 0.0;
    };
    let Ok(response) = http.get(format!("{url}/metrics")).send().await else {
        return 0.0;
    };
    let text = response.text().await.unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with(&format!("{name}_")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

impl Drill {
    /// Injects the fault, proves it took effect, and heals it; returns what it did.
    pub async fn inject(
        &self,
        platform: &mut Platform,
        dice: &mut Dice,
    ) -> anyhow::Result<FaultNotes> {
        let mut notes = FaultNotes::default();
        match self.fault {
            Fault::BrokerKill => broker_kill(platform, dice, &mut notes).await?,
            Fault::LeaderKillLoop => leader_kill_loop(platform, dice, &mut notes).await?,
            Fault::ControllerKill => controller_kill(platform, &mut notes).await?,
            Fault::BrokerPause => broker_pause(platform, dice, &mut notes).await?,
            Fault::MinorityLeft => minority_left(platform, dice, &mut notes).await?,
            Fault::KafkaDown => kafka_down(platform, &mut notes).await?,
            Fault::PostgresKill => postgres_kill(platform, &mut notes).await?,
            Fault::PaymentKill => payment_kill(platform, dice, &mut notes).await?,
            Fault::OrderKill => order_kill(platform, &mut notes).await?,
            Fault::OrderPause => order_pause(platform, &mut notes).await?,
            Fault::Rebalance => rebalance(platform, &mut notes).await?,
            Fault::Partition => partition(platform, dice, &mut notes).await?,
            Fault::GatewayDown => {
                gateway(platform, GatewayFault::Refuse, secs(15), &mut notes).await;
                gateway(platform, GatewayFault::Unavailable, secs(15), &mut notes).await;
            }
            Fault::GatewaySlow => gateway(platform, GatewayFault::Hang, secs(30), &mut notes).await,
            Fault::GatewayLostAnswers => {
                let fault = GatewayFault::LoseAnswers { one_in: 5 };
                gateway(platform, fault, secs(30), &mut notes).await;
            }
            Fault::GatewayAuth => {
                gateway(platform, GatewayFault::Unauthorized, secs(30), &mut notes).await;
            }
        }
        Ok(notes)
    }
}

/// SIGKILLs the leader of a random `order.created` partition, proves its leadership
/// moved, and restarts it `down` after the kill.
async fn kill_a_leader(
    p: &mut Platform,
    dice: &mut Dice,
    notes: &mut FaultNotes,
    (label, down): (&str, Duration),
) -> anyhow::Result<()> {
    let topic = p.topics.order_created.clone();
    let (partition, victim) = led_partition(p, &topic, dice).await?;
    p.cluster.broker(victim).kill().await?;
    notes.did(format!(
        "{label}SIGKILL broker {victim} (leader of {topic}/{partition})"
    ));
    let killed = Instant::now();
    leadership_moved(p, &topic, partition, victim, notes).await;
    tokio::time::sleep(down.saturating_sub(killed.elapsed())).await;
    p.cluster.broker(victim).start().await?;
    notes.did(format!("{label}restarted broker {victim}"));
    Ok(())
}

async fn broker_kill(
    p: &mut Platform,
    dice: &mut Dice,
    notes: &mut FaultNotes,
) -> anyhow::Result<()> {
    kill_a_leader(p, dice, notes, ("", secs(15))).await
}

async fn leader_kill_loop(
    p: &mut Platform,
    dice: &mut Dice,
    notes: &mut FaultNotes,
) -> anyhow::Result<()> {
    for round in 1..=5 {
        let down = dice.around(secs(6));
        kill_a_leader(p, dice, notes, (&format!("round {round}: "), down)).await?;
        p.cluster
            .client()
            .wait_for_brokers(3, secs(60))
            .await
            .context("the broker rejoins")?;
        // The next kill only once the restarted broker is back in every in-sync replica
        // set: killing a second replica before that is two of three down, a fault the
        // design does not tolerate (min.insync.replicas 2).
        for topic in [
            p.topics.order_created.as_str(),
            p.topics.payment_completed.as_str(),
            "__consumer_offsets",
        ] {
            p.cluster
                .wait_for_full_isr(topic, secs(120))
                .await
                .with_context(|| format!("{topic} back in sync after round {round}"))?;
        }
        tokio::time::sleep(dice.around(secs(4))).await;
    }
    Ok(())
}

async fn controller_kill(p: &mut Platform, notes: &mut FaultNotes) -> anyhow::Result<()> {
    let controller = p.cluster.active_controller().await?;
    p.cluster.broker(controller).kill().await?;
    notes.did(format!(
        "SIGKILL the active controller, broker {controller}"
    ));
    let killed = Instant::now();
    let elected = within(secs(30), || async {
        p.cluster
            .active_controller()
            .await
            .is_ok_and(|c| c != controller)
    })
    .await;
    if elected {
        let new = p.cluster.active_controller().await.unwrap_or(-1);
        notes.proved(format!("broker {new} was elected controller"));
    } else {
        notes.not_proved("no new controller was elected within 30 s");
    }
    tokio::time::sleep(secs(15).saturating_sub(killed.elapsed())).await;
    p.cluster.broker(controller).start().await?;
    notes.did(format!("restarted broker {controller}"));
    Ok(())
}

async fn broker_pause(
    p: &mut Platform,
    dice: &mut Dice,
    notes: &mut FaultNotes,
) -> anyhow::Result<()> {
    let topic = p.topics.order_created.clone();
    let (partition, victim) = led_partition(p, &topic, dice).await?;
    let before = p.cluster.client().end_offsets(&topic).await?;
    p.cluster.broker(victim).pause().await?;
    notes.did(format!(
        "paused broker {victim} (leader of {topic}/{partition})"
    ));
    tokio::time::sleep(secs(20)).await;
    let after = p
        .cluster
        .client()
        .end_offsets(&topic)
        .await
        .unwrap_or_default();
    p.cluster.broker(victim).unpause().await?;
    notes.did(format!("resumed broker {victim}"));
    let carried = |m: &std::collections::BTreeMap<i32, (i64, i64)>| {
        m.get(&(partition as i32)).map_or(0, |(_, h)| *h)
    };
    let grew = carried(&after) - carried(&before);
    if grew > 0 {
        notes.proved(format!(
            "broker {victim} led {topic}/{partition} at the pause; {grew} records were written to it while it was frozen"
        ));
    } else {
        notes.not_proved(format!(
            "{topic}/{partition}, led by the paused broker, carried no traffic during the pause"
        ));
    }
    Ok(())
}

async fn minority_left(
    p: &mut Platform,
    dice: &mut Dice,
    notes: &mut FaultNotes,
) -> anyhow::Result<()> {
    let survivor = 1 + dice.below(3) as i32;
    let victims: Vec<i32> = (1..=3).filter(|b| *b != survivor).collect();
    for victim in &victims {
        p.cluster.broker(*victim).kill().await?;
    }
    notes.did(format!(
        "SIGKILL brokers {victims:?}; broker {survivor} left alone"
    ));
    // Leaders move or vanish in the first seconds; from then on, Kafka may acknowledge
    // nothing, so the relay marks nothing published.
    tokio::time::sleep(secs(4)).await;
    let from = chrono::Utc::now();
    tokio::time::sleep(secs(16)).await;
    let published: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at >= $1")
        .bind(from)
        .fetch_one(p.orders_db.pool())
        .await
        .context("counting what was published")?;
    notes.published_during = Some(published);
    if published == 0 {
        notes.proved("nothing was published while one broker of three was up");
    }
    for victim in &victims {
        p.cluster.broker(*victim).start().await?;
    }
    notes.did(format!("restarted brokers {victims:?}"));
    Ok(())
}

async fn kafka_down(p: &mut Platform, notes: &mut FaultNotes) -> anyhow::Result<()> {
    for broker in 1..=3 {
        p.cluster.broker(broker).kill().await?;
    }
    notes.did("SIGKILL all three brokers");
    let killed = Instant::now();
    let url = p.order_urls()[0].clone();
    if saw_failing(&url, "kafka", secs(20)).await {
        notes.proved("order-service reported Kafka unreachable");
    } else {
        notes.not_proved(
            "order-service never reported Kafka unreachable while every broker was down",
        );
    }
    tokio::time::sleep(secs(20).saturating_sub(killed.elapsed())).await;
    let restarts = (1..=3).map(|b| p.cluster.broker(b).start());
    for restarted in futures::future::join_all(restarts).await {
        restarted?;
    }
    notes.did("restarted all three brokers");
    Ok(())
}

async fn postgres_kill(p: &mut Platform, notes: &mut FaultNotes) -> anyhow::Result<()> {
    p.postgres.kill().await?;
    notes.did("SIGKILL PostgreSQL");
    let killed = Instant::now();
    let url = p.order_urls()[0].clone();
    if saw_failing(&url, "database", secs(5)).await {
        notes.proved("order-service reported its database unreachable");
    } else {
        notes.not_proved("order-service never reported its database unreachable");
    }
    tokio::time::sleep(secs(5).saturating_sub(killed.elapsed())).await;
    p.postgres.start().await?;
    notes.did("restarted PostgreSQL (crash recovery from its WAL)");
    Ok(())
}

async fn payment_kill(
    p: &mut Platform,
    dice: &mut Dice,
    notes: &mut FaultNotes,
) -> anyhow::Result<()> {
    let mut in_flight_at_kills = 0;
    for round in 1..=3 {
        let victim = dice.below(p.payments.len() as u64) as usize;
        // Kill it with charges in flight at the gateway (each takes a while).
        let charging = within(secs(5), || async {
            p.gateway
                .requests()
                .iter()
                .any(|r| r.method == "POST" && r.ended_ms.is_none())
        })
        .await;
        let label = p.service(Kind::Payment, victim).label();
        p.service(Kind::Payment, victim).kill();
        in_flight_at_kills += usize::from(charging);
        notes.did(format!(
            "round {round}: SIGKILL {label}{}",
            if charging {
                " with charges in flight"
            } else {
                ""
            }
        ));
        tokio::time::sleep(dice.around(secs(3))).await;
        p.service(Kind::Payment, victim).start()?;
        match p.wait_ready(secs(60)).await {
            Ok(()) => notes.proved(format!(
                "round {round}: {label} restarted and ready before the next kill"
            )),
            Err(e) => notes.not_proved(format!(
                "round {round}: {label} did not become ready again: {e:#}"
            )),
        }
        tokio::time::sleep(dice.around(secs(5))).await;
    }
    if in_flight_at_kills > 0 {
        notes.proved(format!(
            "{in_flight_at_kills} of 3 kills had charges in flight at the gateway"
        ));
    } else {
        notes.not_proved("no kill came with a charge in flight");
    }
    Ok(())
}

async fn order_kill(p: &mut Platform, notes: &mut FaultNotes) -> anyhow::Result<()> {
    let pool = p.orders_db.pool().clone();
    let pending = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM outbox WHERE published_at IS NULL AND parked_at IS NULL",
        )
        .fetch_one(&pool)
        .await
        .unwrap_or(0)
    };
    let started = Instant::now();
    let mut waiting = 0;
    while started.elapsed() < secs(5) {
        waiting = pending().await;
        if waiting > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let down = chrono::Utc::now().timestamp_millis();
    p.service(Kind::Order, 0).kill();
    notes.did("SIGKILL order-service#0");
    if waiting > 0 {
        notes.proved(format!(
            "{waiting} outbox rows were waiting to be published at the kill"
        ));
    } else {
        notes.not_proved("no outbox row was waiting at the kill");
    }
    tokio::time::sleep(secs(5)).await;
    p.service(Kind::Order, 0).start()?;
    p.wait_ready(secs(60)).await?;
    notes
        .orders_down
        .push((down, chrono::Utc::now().timestamp_millis()));
    notes.did("restarted order-service#0");
    Ok(())
}

async fn order_pause(p: &mut Platform, notes: &mut FaultNotes) -> anyhow::Result<()> {
    let url = p.order_urls()[0].clone();
    let slots = metric(&url, "outbox_relay_slots").await;
    let down = chrono::Utc::now().timestamp_millis();
    p.service(Kind::Order, 0).freeze(true);
    notes.did(format!(
        "SIGSTOP order-service#0 (its relay held {slots} slots)"
    ));
    if slots > 0.0 {
        notes.proved(format!(
            "the frozen instance's relay was publishing: it held {slots} of 64 slots"
        ));
    } else {
        notes.not_proved("the frozen instance's relay held no slot");
    }
    tokio::time::sleep(secs(30)).await;
    p.service(Kind::Order, 0).freeze(false);
    notes
        .orders_down
        .push((down, chrono::Utc::now().timestamp_millis()));
    notes.did("SIGCONT order-service#0");
    Ok(())
}

async fn rebalance(p: &mut Platform, notes: &mut FaultNotes) -> anyhow::Result<()> {
    let prefix = p.prefix();
    let bootstrap = p.cluster.bootstrap().to_owned();
    let first = p.add(Kind::Payment, &prefix, &bootstrap)?;
    let second = p.add(Kind::Payment, &prefix, &bootstrap)?;
    notes.did("payment-service scaled 1 → 3");
    match p.wait_ready(secs(60)).await {
        Ok(()) => notes.proved("the two new payment-service instances became ready"),
        Err(e) => notes.not_proved(format!("the new instances did not become ready: {e:#}")),
    }
    tokio::time::sleep(secs(15)).await;
    for index in [first, second] {
        let url = p.service(Kind::Payment, index).url();
        let consumed = metric(&url, "consumer_messages_total").await;
        let label = p.service(Kind::Payment, index).label();
        if consumed > 0.0 {
            notes.proved(format!(
                "{label} was assigned partitions: it consumed {consumed} messages"
            ));
        } else {
            notes.not_proved(format!(
                "{label} consumed nothing: it was assigned no partition"
            ));
        }
    }
    for index in [first, second] {
        let label = p.service(Kind::Payment, index).label();
        match p.service(Kind::Payment, index).terminate(secs(25)).await {
            Some(status) if status.success() => {
                notes.proved(format!("{label} exited 0 on SIGTERM"))
            }
            Some(status) => notes.not_proved(format!("{label} exited with {status} on SIGTERM")),
            None => notes.not_proved(format!("{label} did not stop within 25 s of SIGTERM")),
        }
    }
    notes.did("payment-service scaled 3 → 1 (SIGTERM)");
    tokio::time::sleep(secs(5)).await;
    Ok(())
}

async fn partition(
    p: &mut Platform,
    dice: &mut Dice,
    notes: &mut FaultNotes,
) -> anyhow::Result<()> {
    let topic = p.topics.order_created.clone();
    let (partition, victim) = led_partition(p, &topic, dice).await?;
    let pid = p.cluster.broker(victim).pid().await?;
    let cut = Cut::new(pid)?;
    notes.did(format!(
        "cut broker {victim} (leader of {topic}/{partition}) off from everyone: rules in its network namespace"
    ));
    let cut_at = Instant::now();
    let left = within(secs(20), || async {
        let Ok(metadata) = p.cluster.client().metadata().await else {
            return false;
        };
        metadata
            .topics()
            .iter()
            .filter(|t| t.name() == topic)
            .any(|t| {
                t.partitions()
                    .iter()
                    .any(|p| p.isr().len() < 3 && !p.isr().contains(&victim))
            })
    })
    .await;
    if left {
        notes.proved(format!(
            "broker {victim} left the in-sync replicas of {topic}"
        ));
    } else {
        notes.not_proved(format!(
            "broker {victim} never left the in-sync replicas: the cut did not take"
        ));
    }
    tokio::time::sleep(secs(20).saturating_sub(cut_at.elapsed())).await;
    drop(cut);
    notes.did(format!("reconnected broker {victim}"));
    Ok(())
}

async fn gateway(p: &mut Platform, fault: GatewayFault, length: Duration, notes: &mut FaultNotes) {
    let before = p.gateway.requests().len();
    p.gateway.set_fault(fault);
    notes.did(format!("the gateway: {fault:?} for {length:?}"));
    let url = p.payment_urls()[0].clone();
    let started = Instant::now();
    let open = saw_failing(&url, "payment_gateway", length).await;
    tokio::time::sleep(length.saturating_sub(started.elapsed())).await;
    p.gateway.set_fault(GatewayFault::None);
    notes.did("the gateway answers again");
    let requests = p.gateway.requests();
    let during = &requests[before.min(requests.len())..];
    match fault {
        GatewayFault::LoseAnswers { .. } => {
            let lost = during.iter().filter(|r| r.answer == "lost").count();
            let asked = during.iter().filter(|r| r.method == "GET").count();
            if lost > 0 {
                notes.proved(format!(
                    "{lost} charges lost their answer; {asked} inquiries were made"
                ));
            } else {
                notes.not_proved("no charge lost its answer");
            }
        }
        _ if open => notes.proved(format!(
            "payment-service's circuit breaker opened ({fault:?})"
        )),
        GatewayFault::Refuse if during.is_empty() => {
            notes.proved("no request reached the gateway while it refused connections");
        }
        _ => notes.not_proved(format!(
            "payment-service never reported the gateway down ({fault:?})"
        )),
    }
}

/// A broker cut off from everyone by rules inside its own network namespace (so its
/// peers and the clients alike lose it, whatever the engine's networking); dropping it —
/// also when a drill is interrupted — removes them, and they go with the container.
struct Cut {
    pid: i64,
    rules: Vec<Vec<String>>,
}

/// Marks the rules as the drills'.
const RULE_TAG: &str = "order-platform-drill";

impl Cut {
    fn new(pid: i64) -> anyhow::Result<Self> {
        let mut cut = Self {
            pid,
            rules: Vec::new(),
        };
        for chain in ["INPUT", "OUTPUT"] {
            let rule: Vec<String> = [
                chain,
                "!",
                "-i",
                "lo",
                "-m",
                "comment",
                "--comment",
                RULE_TAG,
                "-j",
                "DROP",
            ]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
            let rule = if chain == "OUTPUT" {
                rule.iter()
                    .map(|s| {
                        if s == "-i" {
                            "-o".to_owned()
                        } else {
                            s.clone()
                        }
                    })
                    .collect()
            } else {
                rule
            };
            iptables_in(pid, "-I", &rule)?;
            cut.rules.push(rule);
        }
        Ok(cut)
    }
}

impl Drop for Cut {
    fn drop(&mut self) {
        for rule in &self.rules {
            if let Err(e) = iptables_in(self.pid, "-D", rule) {
                eprintln!("removing a partition rule: {e:#}");
            }
        }
    }
}

/// `iptables <action> <rule>` in the network namespace of process `pid`: needs root, as
/// the drills' container engine does.
fn iptables_in(pid: i64, action: &str, rule: &[String]) -> anyhow::Result<()> {
    let status = std::process::Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-n", "iptables", action])
        .args(rule)
        .status()
        .context("running nsenter and iptables (the partition drill needs both, and root)")?;
    anyhow::ensure!(
        status.success(),
        "iptables {action} {} in the network namespace of {pid} failed",
        rule.join(" ")
    );
    Ok(())
}
