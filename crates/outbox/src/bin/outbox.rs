//! `outbox`: list the outbox rows Kafka refused (parked), and put them back in line once
//! the cause is fixed.

use anyhow::Context;
use clap::{Parser, Subcommand};
use sqlx::postgres::PgPoolOptions;

#[derive(Parser)]
#[command(
    name = "outbox",
    version,
    about = "Parked outbox rows: list them, and re-queue them once Kafka can take them"
)]
struct Cli {
    /// The service's PostgreSQL database (ORDER_DATABASE_URL or PAYMENT_DATABASE_URL).
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// One line per parked row: id, topic, key, size, attempts, when, and Kafka's error.
    Parked,
    /// Put parked rows back in line (the relay publishes them in their original order).
    Requeue {
        /// Only these rows; every parked row if none is given.
        #[arg(long = "id")]
        ids: Vec<i64>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(std::time::Duration::from_secs(10))
        .connect(&cli.database_url)
        .await
        .context("connecting to PostgreSQL (DATABASE_URL)")?;
    match cli.command {
        Command::Parked => {
            let rows = outbox::parked::list(&pool).await?;
            println!("{} parked outbox rows", rows.len());
            if !rows.is_empty() {
                println!(
                    "{:<10} {:<28} {:<38} {:>9} {:>8}  {:<24} ERROR",
                    "ID", "TOPIC", "KEY", "BYTES", "ATTEMPTS", "PARKED AT"
                );
            }
            for row in rows {
                println!(
                    "{:<10} {:<28} {:<38} {:>9} {:>8}  {:<24} {}",
                    row.id,
                    row.topic,
                    row.message_key,
                    row.size,
                    row.attempts,
                    row.parked_at.format("%Y-%m-%d %H:%M:%S%.3fZ"),
                    row.last_error.unwrap_or_default()
                );
            }
        }
        Command::Requeue { ids } => {
            let ids = (!ids.is_empty()).then_some(ids.as_slice());
            let n = outbox::parked::requeue(&pool, ids).await?;
            println!("{n} outbox rows re-queued");
        }
    }
    Ok(())
}
