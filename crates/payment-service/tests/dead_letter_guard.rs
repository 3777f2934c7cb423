//! The dead-letter guard, seen by an operator: a payment-service process fed nothing but
//! poison exits on its own, with a non-zero status and a log line that says why and which
//! setting governs it, instead of emptying order.created into its dead-letter topic.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use events::Topics;
use testkit::{kafka, postgres, unique_name, Record};

#[tokio::test]
async fn a_service_fed_only_poison_exits_and_says_why() {
    tokio::time::timeout(Duration::from_secs(180), async {
        let broker = kafka::broker().await.expect("kafka");
        let client = broker.client();
        let prefix = format!("{}.", unique_name("guard"));
        let topics = Topics::with_prefix(&prefix);
        client
            .create_topic(&topics.order_created, 6, 1)
            .await
            .expect("topic");
        let poison: Vec<Record> = (0..100)
            .map(|i| Record::new(format!("{{\"not\": \"an event {i}\"")).key(format!("k{i}")))
            .collect();
        client
            .produce_all(&topics.order_created, &poison)
            .await
            .expect("produce");
        let db = postgres::server()
            .await
            .expect("postgres")
            .fresh_database()
            .await
            .expect("db");

        let log = std::env::temp_dir().join(format!("{}.log", unique_name("payment-service")));
        let mut service = Command::new(env!("CARGO_BIN_EXE_payment-service"))
            .env("PAYMENT_LISTEN", "127.0.0.1:0")
            .env("PAYMENT_DATABASE_URL", &db.url)
            .env("KAFKA_BOOTSTRAP", broker.bootstrap())
            .env("TOPIC_PREFIX", &prefix)
            .env("CONSUMER_DLT_WINDOW", "20")
            .env("CONSUMER_DLT_MAX_RATIO", "0.5")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start payment-service");

        let started = Instant::now();
        let status = loop {
            if let Some(status) = service.try_wait().expect("wait") {
                break status;
            }
            if started.elapsed() > Duration::from_secs(120) {
                let _ = service.kill();
                panic!("payment-service did not stop by itself within 120 s");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let output = std::fs::read_to_string(&log).unwrap_or_default();
        let _ = std::fs::remove_file(&log);
        assert!(
            !status.success(),
            "a guard stop is a failure: {status}\n{output}"
        );
        assert!(
            output.contains("stopped by the dead-letter guard"),
            "{output}"
        );
        assert!(output.contains("CONSUMER_DLT_MAX_RATIO"), "{output}");
        assert!(output.contains("poison.invalid"), "{output}");

        let dlt = ::kafka::dead_letter_topic(&topics.order_created);
        let dead = client.record_count(&dlt).await.expect("count");
        assert!(
            dead < 20,
            "{dead} dead-lettered: the guard trips within one window"
        );
    })
    .await
    .expect("the test did not finish within 3 minutes");
}
