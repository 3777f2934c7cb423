//! Baseline: how fast one idempotent `acks=all` producer writes to a real single broker.
//! The consumer benchmarks of the services will be measured against this ceiling.
//!
//! `cargo bench --bench kafka_produce` (starts its own broker through the test kit).

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rdkafka::producer::FutureRecord;
use testkit::{kafka, unique_name};

const BATCH: usize = 10_000;

fn produce_acks_all(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (kafka, topic) = runtime.block_on(async {
        let kafka = kafka::broker().await.expect("kafka").client().clone();
        let topic = unique_name("bench-produce");
        kafka.create_topic(&topic, 6, 1).await.expect("topic");
        (kafka, topic)
    });
    let producer = kafka.producer().expect("producer");
    let payload = vec![b'x'; 256];

    let mut group = c.benchmark_group("kafka_produce");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    group.bench_function("acks_all_idempotent_256B", |b| {
        b.to_async(&runtime).iter_custom(|iterations| {
            let producer = producer.clone();
            let topic = topic.clone();
            let payload = payload.clone();
            async move {
                let started = Instant::now();
                for _ in 0..iterations {
                    let sends = (0..BATCH).map(|i| {
                        let key = (i % 1024).to_string();
                        let record = FutureRecord::to(&topic).key(&key).payload(&payload);
                        let send = producer.send_result(record).map_err(|(e, _)| e);
                        async move { send.expect("queue").await.expect("delivery").expect("ack") }
                    });
                    futures::future::join_all(sends).await;
                }
                started.elapsed()
            }
        });
    });
    group.finish();
}

criterion_group!(benches, produce_acks_all);
criterion_main!(benches);
