//! The `redrive` command line as a user runs it, against a real broker: `list` groups by
//! class, `replay --dry-run` sends nothing, `replay` sends the selected records back to
//! their original topic and partition without the diagnostic headers.

use std::process::Command;
use std::time::Duration;

use kafka::dead_letter::headers;
use testkit::Record;

fn redrive(bootstrap: &str, args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_redrive"))
        .arg("--bootstrap")
        .arg(bootstrap)
        .args(args)
        .output()
        .expect("run redrive");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "redrive {args:?} failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

fn dead_letter(origin: &str, partition: i32, offset: i64, class: &str, key: &str) -> Record {
    Record::new(format!("payload of {key}"))
        .key(key)
        .header("trace-id", key)
        .header(headers::ORIGINAL_TOPIC, origin)
        .header(headers::ORIGINAL_PARTITION, partition.to_string())
        .header(headers::ORIGINAL_OFFSET, offset.to_string())
        .header(headers::ERROR_CLASS, class)
        .header(headers::ERROR_MESSAGE, "why it failed")
        .header(headers::ATTEMPTS, "1")
}

#[tokio::test]
async fn list_groups_by_class_dry_run_sends_nothing_and_replay_sends_the_selection_home() {
    let test = async {
        let kafka = testkit::kafka::broker().await.expect("kafka").client();
        let origin = testkit::unique_name("orders");
        let dlt = kafka::dead_letter_topic(&origin);
        kafka.create_topic(&origin, 2, 1).await.expect("topic");
        kafka.create_topic(&dlt, 1, 1).await.expect("DLT");
        kafka
            .produce_all(
                &dlt,
                &[
                    dead_letter(&origin, 1, 7, "gateway.unavailable", "a"),
                    dead_letter(&origin, 0, 3, "poison.invalid", "b"),
                    dead_letter(&origin, 1, 9, "gateway.unavailable", "c"),
                ],
            )
            .await
            .expect("produce");

        let listed = redrive(kafka.bootstrap(), &["list", &dlt]);
        assert!(listed.contains("3 dead letters"), "{listed}");
        assert!(
            listed.contains("gateway.unavailable") && listed.contains("poison.invalid"),
            "{listed}"
        );
        assert!(listed.contains("why it failed"), "{listed}");

        let dry = redrive(
            kafka.bootstrap(),
            &[
                "replay",
                &dlt,
                "--class",
                "gateway.unavailable",
                "--dry-run",
            ],
        );
        assert!(
            dry.contains("2 dead letters would be replayed, nothing sent"),
            "{dry}"
        );
        assert_eq!(
            kafka.record_count(&origin).await.expect("count"),
            0,
            "a dry run sends nothing"
        );

        let replayed = redrive(
            kafka.bootstrap(),
            &["replay", &dlt, "--class", "gateway.unavailable"],
        );
        assert!(replayed.contains("replayed 2 of 2"), "{replayed}");
        let home = kafka
            .read_topic(&origin, 2, Duration::from_secs(30))
            .await
            .expect("replayed");
        let mut keys: Vec<String> = home
            .iter()
            .map(|r| {
                assert_eq!(r.partition, 1, "back to the original partition");
                assert_eq!(
                    r.header_value("trace-id"),
                    r.key.as_deref(),
                    "original headers kept"
                );
                assert!(
                    r.headers
                        .iter()
                        .all(|(n, _)| !n.starts_with(headers::PREFIX)),
                    "{r:?}"
                );
                assert!(r.header_value(redrive::REDRIVEN_FROM).is_some());
                String::from_utf8_lossy(r.key.as_deref().unwrap_or_default()).into_owned()
            })
            .collect();
        keys.sort();
        assert_eq!(keys, ["a", "c"]);
        assert_eq!(
            kafka.record_count(&origin).await.expect("count"),
            2,
            "only the selection"
        );
    };
    tokio::time::timeout(Duration::from_secs(180), test)
        .await
        .expect("the test finished within 180 s");
}
