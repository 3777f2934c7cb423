//! The dead-letter guard, seen by an operator: a payment-service process fed nothing but
//! poison halts its consumer instead of emptying order.created into its dead-letter
//! topic, says why at ERROR and which setting governs it, reports its consumer halted —
//! and stays ready and keeps serving HTTP. Stopped, it exits with a non-zero status that says why.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use events::Topics;
use testkit::{kafka, postgres, unique_name, Record};

#[tokio::test]
async fn a_service_fed_only_poison_halts_its_consumer_says_why_and_exits_non_zero_when_stopped() {
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
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut service = Command::new(env!("CARGO_BIN_EXE_payment-service"))
            .env("PAYMENT_LISTEN", format!("127.0.0.1:{port}"))
            .env("PAYMENT_CONSUMER_GROUP", unique_name("payment-service"))
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

        let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
        let started = Instant::now();
        while !read_log().contains("stopped by the dead-letter guard") {
            if let Some(status) = service.try_wait().expect("wait") {
                panic!(
                    "payment-service exited ({status}) instead of halting its consumer\n{}",
                    read_log()
                );
            }
            if started.elapsed() > Duration::from_secs(120) {
                let _ = service.kill();
                panic!("the guard did not trip within 120 s\n{}", read_log());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let output = read_log();
        assert!(output.contains("CONSUMER_DLT_MAX_RATIO"), "{output}");
        assert!(output.contains("poison.invalid"), "{output}");

        // Still serving; not ready, and saying why.
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("client");
        let base = format!("http://127.0.0.1:{port}");
        let payments = http
            .get(format!("{base}/payments"))
            .send()
            .await
            .expect("GET");
        assert_eq!(payments.status(), 200, "HTTP is still served");
        // The halt is logged as the consumer stops; readiness reports it once the consumer
        // has closed (its final commit and leave are bounded to 10 s), as a component: the
        // instance stays ready, so a load balancer keeps sending it requests.
        let asked = Instant::now();
        let (status, body) = loop {
            let ready = http
                .get(format!("{base}/health/ready"))
                .send()
                .await
                .expect("GET ready");
            let status = ready.status();
            let body: serde_json::Value = ready.json().await.expect("readiness json");
            let halted = body["components"].as_array().is_some_and(|all| {
                all.iter()
                    .any(|c| c["name"] == "consumer" && c["ok"] == false)
            });
            if halted || asked.elapsed() > Duration::from_secs(30) {
                break (status, body);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert!(
            body.to_string().contains("dead-letter guard"),
            "the consumer reported halted within 30 s, saying why: {body}"
        );
        assert_eq!(status, 200, "still ready: {body}");

        // SIGTERM: a clean stop of a halted service still says it failed.
        let killed = Command::new("kill")
            .args(["-TERM", &service.id().to_string()])
            .status()
            .expect("kill");
        assert!(killed.success());
        let started = Instant::now();
        let status = loop {
            if let Some(status) = service.try_wait().expect("wait") {
                break status;
            }
            if started.elapsed() > Duration::from_secs(60) {
                let _ = service.kill();
                panic!("payment-service did not stop within 60 s of SIGTERM");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let output = read_log();
        let _ = std::fs::remove_file(&log);
        assert!(
            !status.success(),
            "a halted consumer makes a failed exit: {status}\n{output}"
        );
        assert!(output.contains("the consumer had halted"), "{output}");

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
