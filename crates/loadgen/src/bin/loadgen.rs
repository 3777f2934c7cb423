//! `loadgen`: post orders at a fixed rate and write what became of each one.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use loadgen::{LoadConfig, Outcome, Progress};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "loadgen",
    version,
    about = "Open-loop load for POST /orders: a fixed rate, one Idempotency-Key per order, retries under the same key, every outcome recorded"
)]
struct Cli {
    /// order-service base URL; repeat for several instances (round-robin).
    #[arg(long = "url", default_value = "http://127.0.0.1:8080")]
    urls: Vec<String>,
    /// Orders started per second.
    #[arg(long, default_value_t = 50.0)]
    rate: f64,
    /// How long to start orders, in seconds.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Bound on one request, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    request_timeout_ms: u64,
    /// An order unanswered this long after it started is indeterminate, in seconds.
    #[arg(long, default_value_t = 60)]
    give_up_after: u64,
    /// Seeds the amounts.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Where to write the history, one JSON line per order.
    #[arg(long, default_value = "target/loadgen/history.jsonl")]
    out: std::path::PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = LoadConfig {
        targets: cli.urls.clone(),
        rate: cli.rate,
        duration: Duration::from_secs(cli.duration),
        request_timeout: Duration::from_millis(cli.request_timeout_ms),
        give_up_after: Duration::from_secs(cli.give_up_after),
        seed: cli.seed,
        run_id: format!("loadgen-{}", uuid::Uuid::now_v7()),
    };
    let progress = Arc::new(Progress::default());
    let bar = indicatif::ProgressBar::new((cli.rate * cli.duration as f64) as u64).with_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} started {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let ticker = tokio::spawn({
        let progress = progress.clone();
        let bar = bar.clone();
        async move {
            loop {
                let [started, acked, refused, indeterminate, retries] = progress.snapshot();
                bar.set_position(started);
                bar.set_message(format!(
                    "· {acked} acknowledged · {refused} refused · {indeterminate} indeterminate · {retries} retries"
                ));
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    });
    let stop = CancellationToken::new();
    tokio::spawn({
        let stop = stop.clone();
        async move {
            let _ = tokio::signal::ctrl_c().await;
            stop.cancel();
        }
    });
    let requests = loadgen::run(&config, progress, stop).await?;
    ticker.abort();
    bar.finish();
    if let Some(dir) = cli.out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    loadgen::write_history(&cli.out, &requests)
        .with_context(|| format!("writing {}", cli.out.display()))?;
    let count = |f: fn(&Outcome) -> bool| requests.iter().filter(|r| f(&r.outcome)).count();
    println!(
        "{} orders: {} acknowledged, {} refused, {} indeterminate; history in {}",
        requests.len(),
        count(|o| matches!(o, Outcome::Acknowledged { .. })),
        count(|o| matches!(o, Outcome::Refused { .. })),
        count(|o| matches!(o, Outcome::Indeterminate { .. })),
        cli.out.display()
    );
    Ok(())
}
