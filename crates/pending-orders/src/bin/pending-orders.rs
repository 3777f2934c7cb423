//! `pending-orders`: orders PENDING for longer than an age, with what is known of each.

use std::time::Duration;

use clap::Parser;
use sqlx::postgres::PgPoolOptions;

/// Lists orders PENDING for longer than --older-than, oldest first, with what is known
/// about each: its order.created in order-service's outbox, dead letters, its payment and
/// the payment's event; and what most likely holds it. See docs/dead-letters.md.
#[derive(Parser)]
#[command(name = "pending-orders", version)]
struct Args {
    /// Only orders PENDING for longer than this (`90s`, `10m`, `2h`).
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    older_than: Duration,
    /// At most this many orders.
    #[arg(long, default_value_t = 100)]
    limit: u32,
    #[arg(
        long,
        env = "ORDER_DATABASE_URL",
        default_value = "postgres://orders:orders@127.0.0.1:5432/orders"
    )]
    order_database_url: String,
    #[arg(
        long,
        env = "PAYMENT_DATABASE_URL",
        default_value = "postgres://orders:orders@127.0.0.1:5432/payments"
    )]
    payment_database_url: String,
    /// Where Kafka is and how to reach it (the services' KAFKA_* variables).
    #[command(flatten)]
    kafka: kafka::Connection,
    #[arg(long, env = "TOPIC_PREFIX", default_value = "")]
    topic_prefix: String,
    /// Bound on reading each dead-letter topic, in seconds.
    #[arg(long, default_value_t = 30)]
    read_timeout_secs: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    args.kafka.check()?;
    let connect = |url: String, what: &'static str| async move {
        PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(5))
            .connect(&url)
            .await
            .map_err(|e| anyhow::anyhow!("connecting to {what}: {e}"))
    };
    let orders = connect(
        args.order_database_url,
        "the order database (ORDER_DATABASE_URL)",
    )
    .await?;
    let payments = connect(
        args.payment_database_url,
        "the payment database (PAYMENT_DATABASE_URL)",
    )
    .await?;
    let topics = events::Topics::with_prefix(&args.topic_prefix);
    let sources = pending_orders::Sources {
        orders: &orders,
        payments: &payments,
        kafka: &args.kafka,
        topics: &topics,
        read_timeout: Duration::from_secs(args.read_timeout_secs),
    };
    let findings = pending_orders::find(&sources, args.older_than, args.limit, |step| {
        eprintln!("… {step}");
    })
    .await?;
    if findings.is_empty() {
        println!(
            "no order PENDING for longer than {}",
            humantime::format_duration(args.older_than)
        );
        return Ok(());
    }
    for f in &findings {
        let o = &f.order;
        println!(
            "{}  {} {}  pending {}",
            o.id,
            o.amount,
            o.currency,
            pending_orders::age(o.created_at)
        );
        for row in &f.order_events {
            println!("  order-service outbox #{}: {}", row.id, describe(row));
        }
        for letter in &f.dead_letters {
            println!(
                "  dead letter {}: {} — {}",
                letter.at, letter.class, letter.message
            );
        }
        match &f.payment {
            Some(p) => println!(
                "  payment {}: {} ({} ago)",
                p.id,
                p.status.as_str(),
                pending_orders::age(p.created_at)
            ),
            None => println!("  payment: none"),
        }
        for row in &f.payment_events {
            println!("  payment-service outbox #{}: {}", row.id, describe(row));
        }
        println!("  → {}", f.verdict());
    }
    println!("{} order(s)", findings.len());
    Ok(())
}

fn describe(row: &outbox::parked::KeyRow) -> String {
    let error = row.last_error.as_deref().unwrap_or("-");
    match (row.published_at, row.parked_at) {
        (Some(at), _) => format!("{} published {} ago", row.topic, pending_orders::age(at)),
        (None, Some(_)) => format!(
            "{} PARKED after {} attempts: {error}",
            row.topic, row.attempts
        ),
        (None, None) => format!(
            "{} waiting ({} attempts, last error: {error})",
            row.topic, row.attempts
        ),
    }
}
