//! Topics: creating them at start-up (brokers here do not auto-create topics), and the
//! Kafka settings every service flattens into its command line (its [`Connection`] and
//! the shape of its topics).
//!
//! What the platform's topics look like:
//! - the replication factor is the `TOPIC_REPLICATION` setting, or the brokers'
//!   `default.replication.factor` when it is not set;
//! - a topic replicated three times or more gets `min.insync.replicas=2`, so an
//!   acknowledged write is on two brokers at least;
//! - a dead-letter topic has its source's partitions and replication, room for the
//!   largest record its source accepts plus the diagnostic headers, and a retention of
//!   its own: `TOPIC_DLT_RETENTION_MS`, or four times its source's;
//! - a topic replicated twice keeps `min.insync.replicas=1`: with 2, one broker down
//!   would stop every write to it. Such topics fall short of the minimums below, and the
//!   service says so at start.
//!
//! Where a service may not create topics (`TOPIC_CREATE=false`), it checks instead that
//! each topic and dead-letter topic exists with at least `TOPIC_MIN_REPLICATION`
//! replicas and `TOPIC_MIN_INSYNC_REPLICAS`, and refuses to start, naming every
//! shortfall; with creation on, shortfalls of existing topics are reported at `WARN`.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaErrorCode;

use crate::{client_config, dead_letter_topic, Connection, Error};

/// Room a dead letter needs beyond its source record: the `dlt-*` headers (their
/// message is bounded).
pub const DEAD_LETTER_HEADROOM: i64 = 64 * 1024;

/// Where a service finds Kafka and how the topics it creates are shaped.
#[derive(Debug, Clone, clap::Args)]
pub struct KafkaSettings {
    #[command(flatten)]
    pub connection: Connection,

    /// Put before every topic name, to share a cluster between environments.
    #[arg(long, env = "TOPIC_PREFIX", default_value = "")]
    pub topic_prefix: String,

    /// Partitions of topics this service creates at start-up if they are missing.
    #[arg(long, env = "TOPIC_PARTITIONS", default_value_t = 6)]
    pub topic_partitions: i32,

    /// Replication factor of topics this service creates; the brokers'
    /// default.replication.factor when unset. Topics replicated 3 times or more get
    /// min.insync.replicas=2.
    #[arg(long, env = "TOPIC_REPLICATION")]
    pub topic_replication: Option<i32>,

    /// Retention of dead-letter topics this service creates, in milliseconds; four times
    /// the source topic's when unset, so dead letters outlive what they came from.
    #[arg(long, env = "TOPIC_DLT_RETENTION_MS")]
    pub topic_dlt_retention_ms: Option<i64>,

    /// Create missing topics at start-up. `false` where the service may not create
    /// topics: it then checks that its topics and their dead-letter topics exist with
    /// TOPIC_MIN_REPLICATION and TOPIC_MIN_INSYNC_REPLICAS, and refuses to start otherwise.
    #[arg(long, env = "TOPIC_CREATE", default_value_t = true, action = clap::ArgAction::Set)]
    pub topic_create: bool,

    /// The least replication factor a topic must have (checked at start; refused with
    /// TOPIC_CREATE=false, a warning otherwise).
    #[arg(long, env = "TOPIC_MIN_REPLICATION", default_value_t = 3)]
    pub topic_min_replication: i32,

    /// The least min.insync.replicas a topic must have (checked at start; refused with
    /// TOPIC_CREATE=false, a warning otherwise).
    #[arg(long, env = "TOPIC_MIN_INSYNC_REPLICAS", default_value_t = 2)]
    pub topic_min_insync_replicas: i32,
}

/// How long topics just created may take to be seen whole.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);

/// How a topic falls short of the [`Requirements`]: one sentence naming the topic and the
/// setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shortfall {
    pub topic: String,
    pub what: ShortOf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShortOf {
    Missing,
    /// The fewest replicas of any partition.
    Replication {
        has: usize,
        least: i32,
    },
    InSync {
        has: Option<i32>,
        least: i32,
    },
    /// Its configuration could not be read.
    Unreadable(String),
}

impl Shortfall {
    /// Whether it may be gone when asked again: a topic just created may not be known yet
    /// to the broker asked.
    fn may_pass(&self) -> bool {
        matches!(self.what, ShortOf::Missing | ShortOf::Unreadable(_))
    }
}

impl std::fmt::Display for Shortfall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let topic = &self.topic;
        match &self.what {
            ShortOf::Missing => write!(f, "{topic} is missing"),
            ShortOf::Replication { has, least } => write!(
                f,
                "{topic} has replication factor {has}, below TOPIC_MIN_REPLICATION={least}"
            ),
            ShortOf::InSync {
                has: Some(has),
                least,
            } => write!(
                f,
                "{topic} has min.insync.replicas={has}, below TOPIC_MIN_INSYNC_REPLICAS={least}"
            ),
            ShortOf::InSync { has: None, .. } => {
                write!(f, "{topic} reports no min.insync.replicas")
            }
            ShortOf::Unreadable(why) => {
                write!(f, "{topic}: its configuration cannot be read: {why}")
            }
        }
    }
}

/// What each topic must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Requirements {
    pub min_replication: i32,
    pub min_insync_replicas: i32,
}

impl KafkaSettings {
    /// Makes sure `sources` and their dead-letter topics are there. With `topic_create`,
    /// creates what is missing and returns how existing topics fall short of the
    /// requirements (for a warning); without, fails with [`Error::Unfit`] naming every
    /// shortfall.
    pub async fn prepare_topics(&self, sources: &[&str]) -> Result<Vec<Shortfall>, Error> {
        let mut names: Vec<String> = sources.iter().map(|s| (*s).to_owned()).collect();
        names.extend(sources.iter().map(|s| dead_letter_topic(s)));
        let required = self.requirements();
        if !self.topic_create {
            let shortfalls = shortfalls(&self.connection, &names, required).await?;
            if shortfalls.is_empty() {
                return Ok(shortfalls);
            }
            let all: Vec<String> = shortfalls.iter().map(ToString::to_string).collect();
            return Err(Error::Unfit(all.join("; ")));
        }
        self.ensure_topics(sources).await?;
        // Topics created a moment ago may not be known yet to the broker asked.
        let deadline = tokio::time::Instant::now() + SETTLE_TIMEOUT;
        loop {
            let shortfalls = shortfalls(&self.connection, &names, required).await?;
            if !shortfalls.iter().any(Shortfall::may_pass)
                || tokio::time::Instant::now() >= deadline
            {
                return Ok(shortfalls);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub fn requirements(&self) -> Requirements {
        Requirements {
            min_replication: self.topic_min_replication,
            min_insync_replicas: self.topic_min_insync_replicas,
        }
    }

    /// Creates `sources` and their dead-letter topics if they are missing.
    pub async fn ensure_topics(&self, sources: &[&str]) -> Result<(), Error> {
        ensure_topics(
            &self.connection,
            sources,
            self.topic_partitions,
            self.topic_replication,
            self.topic_dlt_retention_ms,
        )
        .await
    }
}

/// Bound on each admin call.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Creates each of `sources` and its dead-letter topic if they do not exist yet, shaped
/// as the module says. Topics that exist are left as they are. Bounded: fails after 30 s
/// per call if the brokers do not answer.
pub async fn ensure_topics(
    connection: &Connection,
    sources: &[&str],
    partitions: i32,
    replication: Option<i32>,
    dlt_retention_ms: Option<i64>,
) -> Result<(), Error> {
    let admin: AdminClient<DefaultClientContext> = client_config(connection).create()?;
    let options = AdminOptions::new()
        .operation_timeout(Some(ADMIN_TIMEOUT))
        .request_timeout(Some(ADMIN_TIMEOUT));
    let replication = match replication {
        Some(replication) => replication,
        None => default_replication(connection, &admin, &options).await?,
    };
    let min_insync = (replication >= 3).then_some("2");

    let new: Vec<NewTopic> = sources
        .iter()
        .map(|name| {
            let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(replication));
            match min_insync {
                Some(n) => topic.set("min.insync.replicas", n),
                None => topic,
            }
        })
        .collect();
    create(&admin, &new, &options).await?;

    // The dead-letter topics, shaped after their sources as they are now.
    let names: Vec<String> = sources.iter().map(|s| dead_letter_topic(s)).collect();
    let mut shapes = Vec::with_capacity(sources.len());
    for source in sources {
        let (max_bytes, retention) = source_limits(&admin, source, &options).await?;
        let retention = match (dlt_retention_ms, retention) {
            (Some(chosen), _) => chosen,
            (None, r) if r < 0 => -1,
            (None, r) => r.saturating_mul(4),
        };
        shapes.push((
            (max_bytes + DEAD_LETTER_HEADROOM).to_string(),
            retention.to_string(),
        ));
    }
    let new: Vec<NewTopic> = names
        .iter()
        .zip(&shapes)
        .map(|(name, (max_bytes, retention))| {
            let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(replication))
                .set("max.message.bytes", max_bytes)
                .set("retention.ms", retention);
            match min_insync {
                Some(n) => topic.set("min.insync.replicas", n),
                None => topic,
            }
        })
        .collect();
    create(&admin, &new, &options).await
}

/// How each of `names` falls short of `required`: missing, too few replicas (the fewest
/// of any partition) or too low a `min.insync.replicas`. Bounded like every admin call.
pub async fn shortfalls(
    connection: &Connection,
    names: &[String],
    required: Requirements,
) -> Result<Vec<Shortfall>, Error> {
    let client: BaseConsumer = client_config(connection).create()?;
    let metadata = tokio::task::spawn_blocking(move || client.fetch_metadata(None, ADMIN_TIMEOUT))
        .await
        .map_err(|e| Error::Config(format!("reading metadata: {e}")))??;
    let mut problems = Vec::new();
    let mut present = Vec::new();
    for name in names {
        let topic = metadata
            .topics()
            .iter()
            .find(|t| t.name() == name && t.error().is_none() && !t.partitions().is_empty());
        let short = |what| Shortfall {
            topic: name.clone(),
            what,
        };
        let Some(topic) = topic else {
            problems.push(short(ShortOf::Missing));
            continue;
        };
        let replication = topic
            .partitions()
            .iter()
            .map(|p| p.replicas().len())
            .min()
            .unwrap_or(0);
        if (replication as i64) < i64::from(required.min_replication) {
            problems.push(short(ShortOf::Replication {
                has: replication,
                least: required.min_replication,
            }));
        }
        present.push(name.as_str());
    }
    if present.is_empty() {
        return Ok(problems);
    }

    let admin: AdminClient<DefaultClientContext> = client_config(connection).create()?;
    let options = AdminOptions::new()
        .operation_timeout(Some(ADMIN_TIMEOUT))
        .request_timeout(Some(ADMIN_TIMEOUT));
    let resources: Vec<ResourceSpecifier> = present
        .iter()
        .map(|name| ResourceSpecifier::Topic(name))
        .collect();
    let described = admin.describe_configs(&resources, &options).await?;
    for (name, result) in present.iter().zip(described) {
        let short = |what| Shortfall {
            topic: (*name).to_owned(),
            what,
        };
        let has = match result {
            Ok(config) => config
                .get("min.insync.replicas")
                .and_then(|e| e.value.as_deref())
                .and_then(|v| v.parse::<i32>().ok()),
            Err(code) => {
                problems.push(short(ShortOf::Unreadable(code.to_string())));
                continue;
            }
        };
        let least = required.min_insync_replicas;
        if has.is_none_or(|n| n < least) {
            problems.push(short(ShortOf::InSync { has, least }));
        }
    }
    Ok(problems)
}

async fn create(
    admin: &AdminClient<DefaultClientContext>,
    topics: &[NewTopic<'_>],
    options: &AdminOptions,
) -> Result<(), Error> {
    for result in admin.create_topics(topics, options).await? {
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

/// The brokers' `default.replication.factor`, read from one of them.
async fn default_replication(
    connection: &Connection,
    admin: &AdminClient<DefaultClientContext>,
    options: &AdminOptions,
) -> Result<i32, Error> {
    let client: BaseConsumer = client_config(connection).create()?;
    let broker = tokio::task::spawn_blocking(move || {
        client
            .fetch_metadata(None, ADMIN_TIMEOUT)
            .map(|m| m.brokers().first().map(|b| b.id()))
    })
    .await
    .map_err(|e| Error::Config(format!("reading metadata: {e}")))??
    .ok_or_else(|| Error::Config("the cluster reports no broker".into()))?;
    let value = config_value(
        admin,
        ResourceSpecifier::Broker(broker),
        "default.replication.factor",
        options,
    )
    .await?;
    value
        .parse()
        .map_err(|_| Error::Config(format!("default.replication.factor is {value:?}")))
}

/// A source topic's `max.message.bytes` and `retention.ms`.
async fn source_limits(
    admin: &AdminClient<DefaultClientContext>,
    topic: &str,
    options: &AdminOptions,
) -> Result<(i64, i64), Error> {
    let number = |name: &'static str, value: String| {
        value
            .parse::<i64>()
            .map_err(|_| Error::Config(format!("{topic}: {name} is {value:?}")))
    };
    let max_bytes = config_value(
        admin,
        ResourceSpecifier::Topic(topic),
        "max.message.bytes",
        options,
    )
    .await?;
    let retention = config_value(
        admin,
        ResourceSpecifier::Topic(topic),
        "retention.ms",
        options,
    )
    .await?;
    Ok((
        number("max.message.bytes", max_bytes)?,
        number("retention.ms", retention)?,
    ))
}

/// One configuration value of `resource`. A topic created a moment ago may not be known
/// yet to the broker asked, so an empty or failed answer is asked again, for up to
/// [`ADMIN_TIMEOUT`].
async fn config_value(
    admin: &AdminClient<DefaultClientContext>,
    resource: ResourceSpecifier<'_>,
    name: &str,
    options: &AdminOptions,
) -> Result<String, Error> {
    let deadline = tokio::time::Instant::now() + ADMIN_TIMEOUT;
    loop {
        let answer = match admin.describe_configs([&resource], options).await {
            Ok(described) => match described.into_iter().next() {
                Some(Ok(config)) => match config.get(name).and_then(|e| e.value.clone()) {
                    Some(value) => return Ok(value),
                    None => format!("{resource:?} has no {name}"),
                },
                Some(Err(code)) => format!("describing {resource:?}: {code}"),
                None => format!("no configuration of {resource:?}"),
            },
            Err(e) => format!("describing {resource:?}: {e}"),
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::Config(answer));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
