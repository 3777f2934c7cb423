//! Producing to and reading from a real broker keeps every byte: key, value and headers.

use testkit::{kafka, unique_name, Record};

use crate::helpers::{within, MINUTES_2, SECONDS_30};

#[tokio::test]
async fn a_record_comes_back_with_its_key_value_and_headers_unchanged() {
    within(MINUTES_2, async {
        let kafka = kafka::broker().await.expect("kafka").client();
        let topic = unique_name("roundtrip");
        kafka
            .create_topic(&topic, 3, 1)
            .await
            .expect("create topic");

        let sent = Record::new(b"\x00\xffnot utf-8 \xc3\x28".to_vec())
            .key("order-42")
            .header("event-type", "order.created")
            .header("trace", vec![0u8, 1, 2, 255])
            .header("trace", "a repeated header keeps both values")
            .header("empty", Vec::new());
        let (partition, offset) = kafka.produce(&topic, &sent).await.expect("produce");

        let read = kafka.read_all(&topic, SECONDS_30).await.expect("read");
        assert_eq!(read.len(), 1);
        let got = &read[0];
        assert_eq!(got.key, sent.key);
        assert_eq!(got.payload, sent.payload);
        assert_eq!(got.headers, sent.headers);
        assert_eq!((got.partition, got.offset), (partition, offset));
    })
    .await;
}

#[tokio::test]
async fn records_with_the_same_key_are_read_in_the_order_they_were_written() {
    within(MINUTES_2, async {
        let kafka = kafka::broker().await.expect("kafka").client();
        let topic = unique_name("ordering");
        kafka
            .create_topic(&topic, 3, 1)
            .await
            .expect("create topic");
        let producer = kafka.producer().expect("producer");

        for i in 0..30 {
            let key = format!("order-{}", i % 3);
            let record = Record::new(i.to_string()).key(key);
            kafka::produce_with(&producer, &topic, &record)
                .await
                .expect("produce");
        }

        let read = kafka.read_all(&topic, SECONDS_30).await.expect("read");
        assert_eq!(read.len(), 30, "every record, once");
        for key in ["order-0", "order-1", "order-2"] {
            let values: Vec<i32> = read
                .iter()
                .filter(|r| r.key.as_deref() == Some(key.as_bytes()))
                .map(|r| r.payload_text().parse().unwrap())
                .collect();
            assert_eq!(values.len(), 10, "all records of {key} arrive");
            assert!(
                values.windows(2).all(|w| w[0] < w[1]),
                "{key} in order: {values:?}"
            );
        }
    })
    .await;
}

#[tokio::test]
async fn reading_more_records_than_exist_fails_after_the_timeout_saying_how_many_arrived() {
    within(MINUTES_2, async {
        let kafka = kafka::broker().await.expect("kafka").client();
        let topic = unique_name("short");
        kafka
            .create_topic(&topic, 1, 1)
            .await
            .expect("create topic");
        kafka
            .produce(&topic, &Record::new("only one"))
            .await
            .expect("produce");

        let error = kafka
            .read_topic(&topic, 2, std::time::Duration::from_secs(5))
            .await
            .expect_err("only one record exists");
        assert!(error.to_string().contains("(got 1)"), "{error}");
    })
    .await;
}
