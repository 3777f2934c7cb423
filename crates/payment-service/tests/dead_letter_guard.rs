//! The dead-letter guard, seen by an operator: a payment-service process fed nothing but
//! poison halts its consumer instead of emptying order.created into its dead-letter
//! topic, says why at ERROR and which setting governs it, reports its consumer halted —
//! and stays ready and keeps serving HTTP. Stopped, it exits with a non-zero status that says why.

use std::time::{Duration, Instant};

use events::Topics;
use testkit::{kafka, postgres, unique_name, Record, ServiceProcess};

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
        let db = postgres::fresh_database().await.expect("db");
        let group = unique_name("payment-service");
        let mut service = ServiceProcess::start(
            env!("CARGO_BIN_EXE_payment-service"),
            "PAYMENT_LISTEN",
            &[
                ("PAYMENT_CONSUMER_GROUP", &group),
                ("PAYMENT_DATABASE_URL", &db.url),
                ("KAFKA_BOOTSTRAP", broker.bootstrap()),
                ("TOPIC_PREFIX", &prefix),
                ("CONSUMER_DLT_WINDOW", "20"),
                ("CONSUMER_DLT_MAX_RATIO", "0.5"),
                ("RUST_LOG", "warn"),
            ],
        )
        .expect("start payment-service");

        let started = Instant::now();
        while !service.log().contains("stopped by the dead-letter guard") {
            if let Some(status) = service.exited() {
                panic!(
                    "payment-service exited ({status}) instead of halting its consumer\n{}",
                    service.log()
                );
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "the guard did not trip within 120 s\n{}",
                service.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let output = service.log();
        assert!(output.contains("CONSUMER_DLT_MAX_RATIO"), "{output}");
        assert!(output.contains("poison.invalid"), "{output}");

        // Still serving; not ready, and saying why.
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("client");
        let base = service.url();
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
        service.terminate().expect("SIGTERM");
        let status = service
            .wait_exit(Duration::from_secs(60))
            .await
            .expect("stopped within 60 s of SIGTERM");
        let output = service.log();
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
