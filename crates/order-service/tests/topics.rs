//! Topics a service may not create (`TOPIC_CREATE=false`): an order-service process
//! checks at start that its topics and their dead-letter topics exist with enough
//! replicas and `min.insync.replicas`, and refuses to start with one line naming every
//! shortfall; fit topics start it. With creation on, a shortfall is a warning.

use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use events::Topics;
use testkit::{kafka, postgres, unique_name, KafkaBroker, TestDatabase};

#[tokio::test]
async fn without_topic_creation_missing_or_under_replicated_topics_stop_the_start_with_one_line_naming_each(
) {
    tokio::time::timeout(Duration::from_secs(240), async {
        let broker = kafka::broker().await.expect("kafka");
        let db = database().await;
        let prefix = format!("{}.", unique_name("topics"));
        let topics = Topics::with_prefix(&prefix);
        let mut names: Vec<String> = topics.all().iter().map(|t| t.to_string()).collect();
        names.extend(topics.all().iter().map(|t| ::kafka::dead_letter_topic(t)));

        // Missing: every topic named, on one line.
        let (status, log) = run_to_exit(broker, &db, &prefix, &[("TOPIC_CREATE", "false")]);
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
        let (status, log) = run_to_exit(broker, &db, &prefix, &[("TOPIC_CREATE", "false")]);
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

async fn database() -> TestDatabase {
    postgres::server()
        .await
        .expect("postgres")
        .fresh_database()
        .await
        .expect("db")
}

/// An order-service process on `broker` and `db` with `env`, logging WARN and above to
/// a file; its port.
fn spawn(
    broker: &KafkaBroker,
    db: &TestDatabase,
    prefix: &str,
    env: &[(&str, &str)],
) -> (Child, std::path::PathBuf, u16) {
    let port = testkit::engine::free_port().expect("a free port");
    let log = std::env::temp_dir().join(format!("{}.log", unique_name("order-service")));
    let child = Command::new(env!("CARGO_BIN_EXE_order-service"))
        .env("ORDER_LISTEN", format!("127.0.0.1:{port}"))
        .env("ORDER_DATABASE_URL", &db.url)
        .env("ORDER_CONSUMER_GROUP", format!("{prefix}order-service"))
        .env("ORDER_SHUTDOWN_DRAIN_SECS", "0")
        .env("KAFKA_BOOTSTRAP", broker.bootstrap())
        .env("TOPIC_PREFIX", prefix)
        .env("RUST_LOG", "warn,librdkafka=off,rdkafka=off")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("start order-service");
    (child, log, port)
}

/// Runs order-service until it exits (within 60 s); its status and what it logged.
fn run_to_exit(
    broker: &KafkaBroker,
    db: &TestDatabase,
    prefix: &str,
    env: &[(&str, &str)],
) -> (ExitStatus, String) {
    let (mut child, log, _) = spawn(broker, db, prefix, env);
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!(
                "still running 60 s after start\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    (status, output)
}

/// Runs order-service until its readiness answers `200` (within 60 s), then kills it;
/// what it logged.
async fn run_until_ready(
    broker: &KafkaBroker,
    db: &TestDatabase,
    prefix: &str,
    env: &[(&str, &str)],
) -> String {
    let (mut child, log, port) = spawn(broker, db, prefix, env);
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    let started = Instant::now();
    loop {
        let ready = http
            .get(format!("http://127.0.0.1:{port}/health/ready"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200);
        if ready {
            break;
        }
        if let Some(status) = child.try_wait().expect("wait") {
            panic!("exited ({status}) instead of starting\n{}", read_log());
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "not ready within 60 s\n{}",
            read_log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    let output = read_log();
    let _ = std::fs::remove_file(&log);
    output
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
