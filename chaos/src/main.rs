//! Failure drills: each starts a real 3-broker KRaft cluster, does real work against it,
//! breaks something on purpose and checks what a user would care about afterwards.
//! Run them with `just chaos` (all) or `cargo run -p chaos -- <drill>`.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use testkit::kafka::{produce_with, Kafka};
use testkit::{unique_name, KafkaCluster, Record};

#[derive(Parser)]
#[command(about = "Failure drills against a real 3-broker Kafka cluster")]
struct Cli {
    #[command(subcommand)]
    drill: Drill,
}

#[derive(Subcommand)]
enum Drill {
    /// SIGKILL the leader of a partition while producing with acks=all, restart it, and
    /// check that every acknowledged record is readable exactly once.
    BrokerKill {
        /// How many records to produce in all.
        #[arg(long, default_value_t = 3000)]
        records: usize,
        /// Partitions of the drill's topic.
        #[arg(long, default_value_t = 6)]
        partitions: i32,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().drill {
        Drill::BrokerKill {
            records,
            partitions,
        } => broker_kill(records, partitions).await,
    }
}

async fn broker_kill(records: usize, partitions: i32) -> anyhow::Result<()> {
    let started = Instant::now();
    println!("starting a 3-broker KRaft cluster (RF 3, min.insync.replicas=2)…");
    let cluster = KafkaCluster::start()
        .await
        .context("starting the cluster")?;
    let kafka = cluster.client();
    let topic = unique_name("drill-broker-kill");
    kafka.create_topic(&topic, partitions, 3).await?;
    cluster
        .wait_for_full_isr(&topic, Duration::from_secs(120))
        .await?;
    println!("cluster up in {:.1?}; topic {topic}", started.elapsed());

    let victim = leader_of_partition_zero(kafka, &topic).await?;
    let producer = kafka.producer()?;
    let bar = ProgressBar::new(records as u64).with_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} acknowledged {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut acknowledged = Vec::with_capacity(records);
    for i in 0..records {
        if i == records / 3 {
            cluster.broker(victim).kill().await?;
            bar.set_message(format!("(broker {victim} killed)"));
        }
        if i == 2 * records / 3 {
            cluster.broker(victim).start().await?;
            bar.set_message(format!("(broker {victim} restarted)"));
        }
        let value = format!("record-{i}");
        let record = Record::new(value.clone()).key(format!("key-{}", i % 97));
        produce_with(&producer, &topic, &record)
            .await
            .with_context(|| format!("{value} was not acknowledged"))?;
        acknowledged.push(value);
        bar.inc(1);
    }
    bar.finish();

    cluster
        .wait_for_full_isr(&topic, Duration::from_secs(120))
        .await
        .context("the killed broker did not rejoin")?;
    // Everything to the end of each partition: a duplicate beyond the count is counted.
    let read = kafka.read_all(&topic, Duration::from_secs(120)).await?;
    let read: Vec<String> = read.iter().map(Record::payload_text).collect();
    let distinct: HashSet<&String> = read.iter().collect();
    let missing = acknowledged
        .iter()
        .filter(|v| !distinct.contains(v))
        .count();
    let duplicates = read.len() - distinct.len();
    println!(
        "broker {victim} killed and restarted: {} acknowledged, {} read, {missing} missing, \
         {duplicates} duplicated, in {:.1?}",
        acknowledged.len(),
        read.len(),
        started.elapsed()
    );
    if missing > 0 || duplicates > 0 {
        bail!("the drill failed: acknowledged writes were lost or duplicated");
    }
    Ok(())
}

async fn leader_of_partition_zero(kafka: &Kafka, topic: &str) -> anyhow::Result<i32> {
    let metadata = kafka.metadata().await?;
    let topic = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .context("topic missing from metadata")?;
    Ok(topic.partitions()[0].leader())
}
