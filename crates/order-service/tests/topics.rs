//! Topics a service may not create (`TOPIC_CREATE=false`): an order-service process
//! checks at start that its topics and their dead-letter topics exist with enough
//! replicas and `min.insync.replicas`, and refuses to start with one line naming every
//! shortfall; fit topics start it. With creation on, a shortfall is a warning.

use std::process::ExitStatus;
use std::time::Duration;

use events::Topics;
use testkit::{kafka, postgres, unique_name, KafkaBroker, ServiceProcess, TestDatabase};

#[tokio::test]
async fn without_topic_creation_missing_or_under_replicated_topics_stop_the_start_with_one_line_naming_each(
) {
    tokio::time::timeout(Duration::from_secs(240), async {
        let broker = kafka::broker().await.expect("kafka");
        let db = postgres::fresh_database().await.expect("db");
        let prefix = format!("{}.", unique_name("topics"));
        let topics = Topics::with_prefix(&prefix);
        let mut names: Vec<String> = topics.all().iter().map(|t| t.to_string()).collect();
        names.extend(topics.all().iter().map(|t| ::kafka::dead_letter_topic(t)));

        // Missing: every topic named, on one line.
        let (status, log) = run_to_exit(broker, &db, &prefix, &[("TOPIC_CREATE", "false")]).await;
        assert!(!status.success(), "refused to start: {status}\n{log}");
        let line = the_line(&log);
        for name in &names {
            assert!(
                line.contains(&format!("{name} is missing")),
                "{name}: {line}"
            );
        }
        let created = broker.client().metadata().await.expect("metadata");
        assert!(
            !created
                .topics()
                .iter()
                .any(|t| t.name().starts_with(&prefix)),
            "it created nothing"
        );

        // Present with one replica and min.insync.replicas 1: both named, for each topic.
        for name in &names {
            broker
                .client()
                .create_topic(name, 3, 1)
                .await
                .expect("create");
        }
        let (status, log) = run_to_exit(broker, &db, &prefix, &[("TOPIC_CREATE", "false")]).await;
        assert!(!status.success(), "refused to start: {status}\n{log}");
        let line = the_line(&log);
        for name in &names {
            assert!(
                line.contains(&format!(
                    "{name} has replication factor 1, below TOPIC_MIN_REPLICATION=3"
                )),
                "{name}: {line}"
            );
            assert!(
                line.contains(&format!(
                    "{name} has min.insync.replicas=1, below TOPIC_MIN_INSYNC_REPLICAS=2"
                )),
                "{name}: {line}"
            );
        }

        // The same topics meet minimums set to what they are: it starts.
        let fit = [
            ("TOPIC_CREATE", "false"),
            ("TOPIC_MIN_REPLICATION", "1"),
            ("TOPIC_MIN_INSYNC_REPLICAS", "1"),
        ];
        let log = run_until_ready(broker, &db, &prefix, &fit).await;
        assert!(!log.contains("TOPIC_CREATE=false"), "{log}");

        // With creation on, the same shortfall is a warning, and it starts.
        let log = run_until_ready(broker, &db, &prefix, &[]).await;
        assert!(
            log.contains("a topic falls short") && log.contains("below TOPIC_MIN_REPLICATION=3"),
            "warned: {log}"
        );
    })
    .await
    .expect("the test did not finish within 4 minutes");
}

/// order-service on `broker` and `db` with `env`, logging WARN and above.
fn start(
    broker: &KafkaBroker,
    db: &TestDatabase,
    prefix: &str,
    env: &[(&str, &str)],
) -> ServiceProcess {
    let group = format!("{prefix}order-service");
    let mut all = vec![
        ("ORDER_DATABASE_URL", db.url.as_str()),
        ("ORDER_CONSUMER_GROUP", group.as_str()),
        ("ORDER_SHUTDOWN_DRAIN_SECS", "0"),
        ("KAFKA_BOOTSTRAP", broker.bootstrap()),
        ("TOPIC_PREFIX", prefix),
        ("RUST_LOG", "warn,librdkafka=off,rdkafka=off"),
    ];
    all.extend_from_slice(env);
    ServiceProcess::start(env!("CARGO_BIN_EXE_order-service"), "ORDER_LISTEN", &all)
        .expect("start order-service")
}

/// Runs order-service until it exits (within 60 s); its status and what it logged.
async fn run_to_exit(
    broker: &KafkaBroker,
    db: &TestDatabase,
    prefix: &str,
    env: &[(&str, &str)],
) -> (ExitStatus, String) {
    let mut service = start(broker, db, prefix, env);
    let status = service
        .wait_exit(Duration::from_secs(60))
        .await
        .expect("it stops by itself");
    (status, service.log())
}

/// Runs order-service until its readiness answers `200` (within 60 s); what it logged.
async fn run_until_ready(
    broker: &KafkaBroker,
    db: &TestDatabase,
    prefix: &str,
    env: &[(&str, &str)],
) -> String {
    let mut service = start(broker, db, prefix, env);
    service
        .until_ready(Duration::from_secs(60))
        .await
        .expect("it starts");
    service.log()
}

/// The one line saying why the start was refused.
fn the_line(log: &str) -> &str {
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("TOPIC_CREATE=false"))
        .collect();
    assert_eq!(lines.len(), 1, "one line says why: {log}");
    lines[0]
}
