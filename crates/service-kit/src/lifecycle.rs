//! Start-up and shutdown of a service: its database, its Kafka producer, and three tasks
//! — the HTTP API, the outbox relay and one consumer — that stop together.
//!
//! A service's `build` acquires its [`Resources`] and wires its router and consumer
//! handler into an [`Application`]; `main` and the tests then call
//! [`Application::run_until_stopped`].

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use consumer::{BatchHandler, ConsumerConfig, DeadLetterPolicy, Stats};
use events::Topics;
use kafka::KafkaSettings;
use outbox::{Relay, RelayConfig, RetentionSettings};

use crate::health::Health;
use crate::http::HttpSettings;
use rdkafka::producer::FutureProducer;
use sqlx::migrate::Migrator;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Connects a pool (bounded waits) and runs the shared tables' migrations and the
/// service's own (`own`). `setting` names the variable the URL came from, for the error
/// message.
pub async fn connect_database(
    url: &str,
    max_connections: u32,
    acquire_timeout: Duration,
    own: &Migrator,
    setting: &str,
) -> anyhow::Result<PgPool> {
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(acquire_timeout)
        .connect(url)
        .await
        .with_context(|| format!("connecting to PostgreSQL ({setting})"))?;
    outbox::migrator(own)
        .await
        .context("reading database migrations")?
        .run(&pool)
        .await
        .context("running database migrations")?;
    Ok(pool)
}

/// What a service needs before it can serve.
pub struct Needs<'a> {
    pub listen: SocketAddr,
    pub database_url: &'a str,
    /// The variable the URL comes from, named in the error if it cannot be reached.
    pub database_setting: &'static str,
    pub db_pool: u32,
    pub db_acquire_timeout: Duration,
    /// The service's own migrations; the shared tables' run first.
    pub migrations: &'static Migrator,
    pub kafka: &'a KafkaSettings,
}

/// What a service holds once started: its listener, database pool and Kafka producer.
pub struct Resources {
    pub listener: TcpListener,
    pub pool: PgPool,
    pub producer: FutureProducer,
    /// The service's outbox: its events are queued there, and its relay woken.
    pub outbox: outbox::Outbox,
}

impl Resources {
    /// Connects to PostgreSQL and runs the migrations, creates the platform's topics if
    /// they are missing (or, with `TOPIC_CREATE=false`, checks them), creates the
    /// producer and binds the listener. Fails with a
    /// message naming what could not be reached.
    pub async fn acquire(needs: Needs<'_>) -> anyhow::Result<Self> {
        let kafka = &needs.kafka.connection;
        // Said whole on one line: settings that do not fit, or brokers that refuse us.
        kafka.check().map_err(|e| anyhow::anyhow!("{e}"))?;
        let pool = connect_database(
            needs.database_url,
            needs.db_pool,
            needs.db_acquire_timeout,
            needs.migrations,
            needs.database_setting,
        )
        .await?;
        // Every platform topic and its dead-letter topic, with the same partitions, so a
        // dead letter keeps its partition number.
        kafka
            .reach(KAFKA_REACH_TIMEOUT)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let topics = Topics::with_prefix(&needs.kafka.topic_prefix);
        match needs.kafka.prepare_topics(&topics.all()).await {
            Ok(shortfalls) if !shortfalls.is_empty() => {
                let all: Vec<String> = shortfalls.iter().map(ToString::to_string).collect();
                tracing::warn!(
                    shortfalls = %all.join("; "),
                    "{} topic shortfall(s): a topic falls short of what the platform needs",
                    all.len()
                );
            }
            Ok(_) => {}
            // Said whole on one line: the error names every shortfall.
            Err(e @ kafka::Error::Unfit(_)) => anyhow::bail!("{e}"),
            Err(e) => return Err(e).context("creating topics (KAFKA_BOOTSTRAP)"),
        }
        let producer = kafka::reliable_producer(kafka).context("creating the Kafka producer")?;
        let listener = TcpListener::bind(needs.listen)
            .await
            .with_context(|| format!("listening on {}", needs.listen))?;
        Ok(Self {
            listener,
            pool,
            producer,
            outbox: outbox::Outbox::new(topics),
        })
    }

    /// The port actually bound (useful with port 0).
    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }
}

/// A built service, listening but not yet serving: everything it runs.
pub struct Application<H> {
    /// For log lines.
    pub name: &'static str,
    pub resources: Resources,
    pub router: axum::Router,
    pub consumer: ConsumerConfig,
    /// Where the consumer's dead letters go, and when it stops instead.
    pub dead_letters: DeadLetterPolicy,
    /// How long published outbox rows and inbox records are kept.
    pub retention: RetentionSettings,
    /// The service's own clean-ups, run at the retention's rounds.
    pub cleanups: Vec<outbox::Cleanup>,
    /// Readiness reports the relay stuck when the oldest unpublished event is older.
    pub relay_stuck_after: Duration,
    pub handler: H,
    /// After the shutdown signal, how long readiness answers `503` while requests and
    /// messages are still served, so that load balancers take the instance out first.
    pub shutdown_drain: Duration,
    /// Bound on everything after the drain.
    pub shutdown_timeout: Duration,
    /// Bounds on HTTP clients.
    pub http: HttpSettings,
    /// Reported in the readiness body without deciding it.
    pub components: Vec<crate::health::Component>,
    /// Gauges read from the database at each scrape of `/metrics`.
    pub gauges: Vec<crate::metrics::AtScrape>,
}

impl<H: BatchHandler> Application<H> {
    /// Service `name`, as `settings` say, on `resources`: `router` serves its API,
    /// `handler` applies what it consumes from `consumes`. No components, gauges or
    /// clean-ups of its own yet.
    pub fn new(
        name: &'static str,
        settings: &crate::ServiceSettings,
        resources: Resources,
        consumes: &[&str],
        (router, handler): (axum::Router, H),
    ) -> anyhow::Result<Self> {
        let connection = &settings.kafka.connection;
        Ok(Self {
            name,
            resources,
            router,
            consumer: settings.consumer.config(
                connection,
                name,
                &settings.consumer_group,
                consumes,
            ),
            dead_letters: DeadLetterPolicy::new(connection, settings.consumer.dead_letter_limit())
                .context("creating the dead-letter producer")?,
            retention: settings.retention.clone(),
            cleanups: Vec::new(),
            relay_stuck_after: settings.relay_stuck_after(),
            handler,
            shutdown_drain: settings.shutdown_drain(),
            shutdown_timeout: settings.shutdown_timeout(),
            http: settings.http.clone(),
            components: Vec::new(),
            gauges: Vec::new(),
        })
    }

    /// The port actually bound (useful with port 0).
    pub fn port(&self) -> u16 {
        self.resources.port()
    }

    /// Serves until `shutdown` completes. Then readiness turns `503` at once and the
    /// service goes on serving for `shutdown_drain`; after that it stops taking requests and messages,
    /// finishes the batch in flight, commits consumer offsets and stops the relay, all
    /// within `shutdown_timeout`; closing the database pool after that is bounded too.
    ///
    /// A consumer that halts by itself (the dead-letter guard, or a dead letter Kafka
    /// refuses) does not take the service down: the HTTP API keeps taking requests, their
    /// events wait in the outbox, and the reason is logged at ERROR when it happens and
    /// every [`HALT_REMINDER`] after. Returns the consumer's counts; an error when the
    /// consumer halted, or when shutdown ran out of time, so that
    /// the exit status says what happened.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<Stats> {
        let name = self.name;
        let stop = CancellationToken::new();
        let Resources {
            listener,
            pool,
            producer,
            outbox,
        } = self.resources;
        let wake = outbox.wake();
        let health = Health::new(pool.clone(), producer.clone(), self.relay_stuck_after)
            .with_components(self.components);
        let router = crate::http::instrument(
            name,
            self.router
                .merge(health.clone().router())
                .merge(crate::metrics::router(
                    name,
                    pool.clone(),
                    self.gauges,
                    health.clone(),
                )),
            &self.http,
        );
        let relay =
            Relay::new(pool.clone(), producer, RelayConfig::default()).waking_on(wake.clone());
        let relay = tokio::spawn(relay.run(stop.clone()));
        let notifier = tokio::spawn(wake.notify_others(pool.clone(), stop.clone()));
        let cleanup = tokio::spawn(
            self.retention
                .run(pool.clone(), stop.clone(), self.cleanups),
        );
        let consuming = tokio::spawn({
            let running =
                consumer::run(self.consumer, self.handler, self.dead_letters, stop.clone());
            remind_while_halted(name, running, health.clone(), stop.clone())
        });
        let aborts = [
            notifier.abort_handle(),
            relay.abort_handle(),
            consuming.abort_handle(),
            cleanup.abort_handle(),
        ];
        let http = self.http.clone();
        let draining = health.clone();
        let drain = self.shutdown_drain;
        let serving = {
            let stop = stop.clone();
            async move {
                crate::http::serve(listener, router, &http, async {
                    tokio::select! {
                        () = shutdown => drain_for(name, &draining, drain).await,
                        () = stop.cancelled() => {}
                    }
                    stop.cancel();
                })
                .await;
            }
        };

        let stopping = stop.clone();
        let everything = async move {
            serving.await;
            stopping.cancel();
            let consumed = consuming.await;
            let _ = relay.await;
            let _ = cleanup.await;
            let _ = notifier.await;
            consumed
        };
        let limit = self.shutdown_timeout;
        let outcome = tokio::select! {
            outcome = everything => Some(outcome),
            () = async { stop.cancelled().await; tokio::time::sleep(limit).await } => None,
        };
        for abort in aborts {
            abort.abort();
        }
        // Bounded too: a task cut off above may still hold a connection.
        if tokio::time::timeout(POOL_CLOSE_TIMEOUT, pool.close())
            .await
            .is_err()
        {
            tracing::warn!(service = name, timeout = ?POOL_CLOSE_TIMEOUT, "closing the database pool timed out");
        }
        let Some(consumed) = outcome else {
            anyhow::bail!(
                "{name}: shutdown did not finish within {limit:?}; the work in flight was \
                 abandoned (its offsets stay uncommitted, so it is redelivered)"
            );
        };
        let stats = consumed
            .context("the consumer task failed")?
            .context("the consumer had halted")?;
        tracing::info!(service = name, ?stats, "stopped");
        Ok(stats)
    }
}

/// Readiness `503` from now on, and everything still served for `period`: a load
/// balancer that follows readiness stops sending requests before the listener closes.
async fn drain_for(service: &'static str, health: &Health, period: Duration) {
    health.shutting_down();
    if !period.is_zero() {
        tracing::info!(
            service,
            drain = ?period,
            "shutting down: readiness answers 503; still serving while load balancers take this instance out"
        );
        tokio::time::sleep(period).await;
    }
}

/// How often a halted consumer's reason is logged again.
pub const HALT_REMINDER: Duration = Duration::from_secs(30);

/// How long a service waits at start for the brokers to answer; a refusal (wrong
/// credentials, a certificate not trusted) ends the wait at once.
const KAFKA_REACH_TIMEOUT: Duration = Duration::from_secs(30);

/// Bound on closing the database pool at shutdown.
const POOL_CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs the consumer; if it halts by itself, says why at ERROR every [`HALT_REMINDER`]
/// until `stop`, and then returns the reason.
async fn remind_while_halted(
    service: &'static str,
    running: impl Future<Output = Result<Stats, consumer::ConsumerError>>,
    health: Health,
    stop: CancellationToken,
) -> Result<Stats, consumer::ConsumerError> {
    let result = running.await;
    if let Err(error) = &result {
        health.consumer_halted(error.to_string());
        if !stop.is_cancelled() {
            let mut reminders = tokio::time::interval(HALT_REMINDER);
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    _ = reminders.tick() => tracing::error!(
                        service, %error,
                        "the consumer is halted; the HTTP API is still served and events wait in the outbox; fix the cause and restart"
                    ),
                }
            }
        }
    }
    result
}
