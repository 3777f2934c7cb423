//! What the benchmarks share: the events they feed, a progress meter that times from the
//! first message settled to the last, and the figures each run writes for
//! `target/bench-summary.md` (`just bench` puts the sections together).
#![allow(dead_code)] // each benchmark uses part of it

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use testkit::kafka::KafkaClient;
use testkit::postgres::PostgresServer;
use tokio_util::sync::CancellationToken;

/// The servers every benchmark runs on: the test kit's single broker, and a PostgreSQL
/// with durability on (`fsync` and synchronous commit), as in production.
pub async fn servers() -> (KafkaClient, PostgresServer) {
    let kafka = testkit::kafka::broker()
        .await
        .expect("kafka")
        .client()
        .clone();
    let postgres = PostgresServer::durable().await.expect("durable PostgreSQL");
    (kafka, postgres)
}

/// A service running on the current runtime until [`Running::stop`].
pub struct Running {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<consumer::Stats>>,
}

impl Running {
    pub fn start<H: consumer::BatchHandler>(app: service_kit::Application<H>) -> Self {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(app.run_until_stopped(async {
            let _ = stopped.await;
        }));
        Self { stop, task }
    }

    /// Stops it and waits; panics if it did not stop cleanly.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        self.task
            .await
            .expect("service task")
            .expect("service stopped cleanly");
    }
}

/// Runs `work(i)` for every `i` below `total`, `concurrency` at a time (each task takes
/// the next `i`); returns how long it took.
pub async fn concurrently<F, Fut>(concurrency: usize, total: usize, work: F) -> Duration
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let next = std::sync::Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (next, work) = (next.clone(), work.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                    if i >= total {
                        break;
                    }
                    work(i).await;
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.expect("worker");
    }
    started.elapsed()
}

/// Counts what a run settles and times it from the first settled to the `target`th, so
/// that start-up (a consumer group joining, a pool connecting) is not counted. Cancels
/// `done` when the target is reached.
pub struct Meter {
    target: u64,
    count: AtomicU64,
    first: OnceLock<Instant>,
    last: OnceLock<Instant>,
    pub done: CancellationToken,
}

impl Meter {
    pub fn new(target: usize) -> Self {
        Self {
            target: target as u64,
            count: AtomicU64::new(0),
            first: OnceLock::new(),
            last: OnceLock::new(),
            done: CancellationToken::new(),
        }
    }

    /// `n` more settled.
    pub fn add(&self, n: usize) {
        let now = Instant::now();
        let _ = self.first.set(now);
        let total = self.count.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
        if total >= self.target {
            let _ = self.last.set(now);
            self.done.cancel();
        }
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Waits until the target is reached; panics, saying how far it got, after `limit`.
    pub async fn wait(&self, what: &str, limit: Duration) {
        if tokio::time::timeout(limit, self.done.cancelled())
            .await
            .is_err()
        {
            panic!(
                "{what}: {} of {} within {limit:?}",
                self.count(),
                self.target
            );
        }
    }

    /// From the first settled to the target.
    pub fn elapsed(&self) -> Duration {
        match (self.first.get(), self.last.get()) {
            (Some(first), Some(last)) => last.duration_since(*first),
            _ => Duration::ZERO,
        }
    }
}

/// Figures gathered during a run, by name: one value per sample.
#[derive(Default)]
pub struct Figures {
    samples: Mutex<BTreeMap<String, Vec<f64>>>,
}

impl Figures {
    pub fn record(&self, name: &str, value: f64) {
        self.samples
            .lock()
            .expect("figures")
            .entry(name.to_owned())
            .or_default()
            .push(value);
    }

    /// The median of `name`'s samples, if it has any.
    pub fn median(&self, name: &str) -> Option<f64> {
        let samples = self.samples.lock().expect("figures");
        let mut values = samples.get(name)?.clone();
        values.sort_by(f64::total_cmp);
        Some(values[values.len() / 2])
    }

    pub fn samples(&self, name: &str) -> usize {
        self.samples
            .lock()
            .expect("figures")
            .get(name)
            .map_or(0, Vec::len)
    }
}

/// A figure for the summary: `12 345` style for large numbers, one decimal below 100.
pub fn number(value: f64) -> String {
    if value >= 100.0 {
        let whole = value.round() as u64;
        let text = whole.to_string();
        let mut out = String::new();
        for (i, c) in text.chars().enumerate() {
            if i > 0 && (text.len() - i).is_multiple_of(3) {
                out.push(' ');
            }
            out.push(c);
        }
        out
    } else {
        format!("{value:.1}")
    }
}

/// `a ÷ b`, two decimals, or `—` when either is missing.
pub fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "—".into(),
    }
}

/// The target directory the benchmarks write to (`CARGO_TARGET_DIR`, or the workspace's).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"))
}

/// Writes this benchmark's section of the summary to
/// `target/bench-summary/<bench>.md`, and says where.
pub fn write_section(bench: &str, markdown: &str) {
    let dir = target_dir().join("bench-summary");
    let path = dir.join(format!("{bench}.md"));
    let written = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, markdown));
    match written {
        Ok(()) => eprintln!("{bench}: summary section in {}", path.display()),
        Err(e) => eprintln!("{bench}: could not write {}: {e}", path.display()),
    }
}

/// Whether criterion was asked only to check that the benchmark runs (`cargo test
/// --benches`, `--test`): the summary is then not written.
pub fn is_check_run() -> bool {
    std::env::args().any(|a| a == "--test" || a == "--list")
}
