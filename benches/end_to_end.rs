//! POST→PAID latency at fixed rates, and the highest rate the platform sustains, with
//! everything colocated: one Kafka broker and PostgreSQL (durability on) from the test
//! kit, order-service and payment-service each on a runtime (two threads) of its own in
//! this process, and the load generator the failure drills use (open loop: orders start
//! on schedule whatever the system does).
//!
//! For each rate, orders are posted for `BENCH_E2E_SECONDS` (10), then the run waits for
//! every accepted order to settle and reads each one's `paid_at − created_at` from
//! PostgreSQL into an HDR histogram: p50, p99, p99.9 and max. A rate is **sustained**
//! when every order was accepted at the first attempt and all were settled within 2 s of
//! the last one posted (the backlog stayed flat). After the fixed rates (50, 500, 1000,
//! 2000) the rate goes up by 1000 until one is not sustained.
//!
//! Not criterion: a latency distribution at a fixed rate is the result here, not a mean
//! time per iteration. `just bench end_to_end`; the table goes to
//! `target/bench-summary/end_to_end.md`.

#[path = "support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use loadgen::{LoadConfig, Outcome, Progress};
use testkit::{unique_name, TestDatabase};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const FIXED_RATES: [u32; 4] = [50, 500, 1000, 2000];
const STEP: u32 = 1000;
const HIGHEST_TRIED: u32 = 10_000;
/// After the last order is posted, the backlog must be gone within this for the rate to
/// count as sustained.
const DRAIN_ALLOWED: Duration = Duration::from_secs(2);

/// CPU seconds spent so far, by what spent them: this process (both services and the
/// load generator), PostgreSQL's processes, Kafka's (the JVM), and the whole machine
/// (busy, from `/proc/stat`). Read from `/proc`, so Linux only; zeros elsewhere.
#[derive(Clone, Copy, Default)]
struct Cpu {
    this: f64,
    postgres: f64,
    kafka: f64,
    machine_busy: f64,
}

impl Cpu {
    /// Clock ticks per second of `/proc`'s counters (`USER_HZ`, 100 on Linux).
    const TICKS: f64 = 100.0;

    fn now() -> Self {
        let mut cpu = Self::default();
        let me = std::process::id().to_string();
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for entry in entries.flatten() {
                let pid = entry.file_name().to_string_lossy().into_owned();
                if !pid.bytes().all(|b| b.is_ascii_digit()) {
                    continue;
                }
                let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                    continue;
                };
                // `pid (comm) state …`: the name may hold spaces, so split after `)`.
                let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
                    continue;
                };
                let comm = &stat[open + 1..close];
                let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
                let ticks = |i: usize| {
                    fields
                        .get(i)
                        .and_then(|f| f.parse::<f64>().ok())
                        .unwrap_or(0.0)
                };
                // utime and stime are fields 14 and 15, i.e. 11 and 12 after the name.
                let seconds = (ticks(11) + ticks(12)) / Self::TICKS;
                if pid == me {
                    cpu.this += seconds;
                } else if comm == "postgres" {
                    cpu.postgres += seconds;
                } else if comm == "java" {
                    cpu.kafka += seconds;
                }
            }
        }
        if let Ok(stat) = std::fs::read_to_string("/proc/stat") {
            if let Some(line) = stat.lines().next() {
                let v: Vec<f64> = line
                    .split_whitespace()
                    .skip(1)
                    .filter_map(|f| f.parse().ok())
                    .collect();
                // user nice system idle iowait irq softirq steal: busy is all but idle, iowait.
                if v.len() >= 8 {
                    cpu.machine_busy = (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / Self::TICKS;
                }
            }
        }
        cpu
    }

    fn since(self, before: Self) -> Self {
        Self {
            this: self.this - before.this,
            postgres: self.postgres - before.postgres,
            kafka: self.kafka - before.kafka,
            machine_busy: self.machine_busy - before.machine_busy,
        }
    }
}

/// One rate's result.
struct RateRun {
    rate: u32,
    posted: usize,
    accepted_first_time: usize,
    paid: u64,
    settled_after_load: Duration,
    all_settled: bool,
    latency_us: Histogram<u64>,
    /// From the first order posted until all were settled.
    cpu: Cpu,
    wall: Duration,
}

impl RateRun {
    fn sustained(&self) -> bool {
        self.all_settled
            && self.accepted_first_time == self.posted
            && self.paid as usize == self.posted
            && self.settled_after_load <= DRAIN_ALLOWED
    }

    fn row(&self) -> String {
        let ms = |q: f64| self.latency_us.value_at_quantile(q) as f64 / 1000.0;
        format!(
            "| {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2} | {} |\n",
            self.rate,
            self.posted,
            self.paid,
            ms(0.5),
            ms(0.99),
            ms(0.999),
            self.latency_us.max() as f64 / 1000.0,
            self.settled_after_load.as_secs_f64(),
            if self.sustained() { "yes" } else { "**no**" },
        )
    }

    /// CPU seconds per 1,000 orders by what spent them, and how busy the machine was.
    fn cpu_row(&self) -> String {
        let per_1000 = |s: f64| 1000.0 * s / self.posted.max(1) as f64;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        format!(
            "| {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.0} % |\n",
            self.rate,
            per_1000(self.cpu.this),
            per_1000(self.cpu.postgres),
            per_1000(self.cpu.kafka),
            per_1000(self.cpu.machine_busy),
            100.0 * self.cpu.machine_busy / (cores * self.wall.as_secs_f64()),
        )
    }
}

/// A service on a runtime of its own, on its own thread, stopped when dropped.
struct Service {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Service {
    /// Builds with `build` on a fresh two-thread runtime and runs it; returns once it
    /// listens, with its port.
    fn start<F, Fut, H>(name: &'static str, build: F) -> (Self, u16)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = anyhow::Result<service_kit::Application<H>>>,
        H: consumer::BatchHandler,
    {
        let (port_tx, port_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let app = build().await.unwrap_or_else(|e| panic!("{name}: {e:#}"));
                port_tx.send(app.port()).expect("port");
                app.run_until_stopped(async {
                    let _ = stopped.await;
                })
                .await
                .unwrap_or_else(|e| panic!("{name} stopped: {e:#}"));
            });
        });
        let port = port_rx
            .recv_timeout(Duration::from_secs(120))
            .unwrap_or_else(|_| panic!("{name} did not start"));
        (
            Self {
                stop: Some(stop),
                thread: Some(thread),
            },
            port,
        )
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Orders of `ids` still `PENDING`.
async fn pending(db: &TestDatabase, ids: &[Uuid]) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM orders WHERE id = ANY($1) AND status = 'PENDING'")
        .bind(ids)
        .fetch_one(db.pool())
        .await
        .expect("pending orders")
}

async fn run_rate(orders: &TestDatabase, url: &str, rate: u32, seconds: u64) -> RateRun {
    let config = LoadConfig {
        targets: vec![url.to_owned()],
        rate: f64::from(rate),
        duration: Duration::from_secs(seconds),
        request_timeout: Duration::from_secs(10),
        give_up_after: Duration::from_secs(30),
        seed: u64::from(rate),
        run_id: unique_name("e2e"),
    };
    eprintln!("end_to_end: {rate} orders/s for {seconds} s…");
    let (cpu_before, started) = (Cpu::now(), Instant::now());
    let requests = loadgen::run(
        &config,
        Arc::new(Progress::default()),
        CancellationToken::new(),
    )
    .await
    .expect("load generator");
    let load_ended = Instant::now();
    let ids: Vec<Uuid> = requests
        .iter()
        .filter_map(|r| match r.outcome {
            Outcome::Acknowledged { order_id } => Some(order_id),
            _ => None,
        })
        .collect();
    let accepted_first_time = requests
        .iter()
        .filter(|r| r.attempts == 1 && matches!(r.outcome, Outcome::Acknowledged { .. }))
        .count();
    let deadline = load_ended + Duration::from_secs(120);
    let mut all_settled = false;
    while Instant::now() < deadline {
        if pending(orders, &ids).await == 0 {
            all_settled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let settled_after_load = load_ended.elapsed();
    let (cpu, wall) = (Cpu::now().since(cpu_before), started.elapsed());
    let latencies: Vec<f64> = sqlx::query_scalar(
        "SELECT EXTRACT(EPOCH FROM paid_at - created_at)::float8 FROM orders
          WHERE id = ANY($1) AND status = 'PAID'",
    )
    .bind(&ids)
    .fetch_all(orders.pool())
    .await
    .expect("latencies");
    let mut latency_us = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("histogram");
    for seconds in &latencies {
        latency_us.saturating_record((seconds * 1e6).max(1.0) as u64);
    }
    RateRun {
        rate,
        posted: requests.len(),
        accepted_first_time,
        paid: latency_us.len(),
        settled_after_load,
        all_settled,
        latency_us,
        cpu,
        wall,
    }
}

/// The peak resident memory of this process (both services, the load generator and the
/// clients), from `/proc`.
fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn main() {
    if support::is_check_run() || std::env::args().any(|a| a == "--list") {
        return;
    }
    let seconds: u64 = std::env::var("BENCH_E2E_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (kafka, postgres, order_db, payment_db) = runtime.block_on(async {
        let (kafka, postgres) = support::servers().await;
        let order_db = postgres.fresh_database().await.expect("database");
        let payment_db = postgres.fresh_database().await.expect("database");
        (kafka, postgres, order_db, payment_db)
    });
    let prefix = format!("{}.", unique_name("e2e"));
    let (bootstrap, order_url, payment_url) = (
        kafka.bootstrap().to_owned(),
        order_db.url.clone(),
        payment_db.url.clone(),
    );
    let (payments, _) = Service::start("payment-service", {
        let (bootstrap, prefix) = (bootstrap.clone(), prefix.clone());
        move || async move {
            let mut config = testkit::services::test_config::<payment_service::Config>(
                &payment_url,
                &bootstrap,
                &prefix,
            );
            config.service.consumer_group = format!("{prefix}payment-service");
            payment_service::build(config).await
        }
    });
    let (orders, order_port) = Service::start("order-service", {
        let (bootstrap, prefix) = (bootstrap.clone(), prefix.clone());
        move || async move {
            let mut config = testkit::services::test_config::<order_service::Config>(
                &order_url, &bootstrap, &prefix,
            );
            config.service.consumer_group = format!("{prefix}order-service");
            order_service::build(config).await
        }
    });
    let url = format!("http://127.0.0.1:{order_port}");

    let runs = runtime.block_on(async {
        // A warm-up, not reported: the consumer groups join, and Kafka's JVM compiles its
        // hot paths (right after the broker starts, that alone takes most of a core).
        run_rate(&order_db, &url, 300, 15).await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        let mut runs = Vec::new();
        for rate in FIXED_RATES {
            runs.push(run_rate(&order_db, &url, rate, seconds).await);
        }
        let mut rate = FIXED_RATES[FIXED_RATES.len() - 1];
        while runs.last().is_some_and(RateRun::sustained) && rate < HIGHEST_TRIED {
            rate += STEP;
            runs.push(run_rate(&order_db, &url, rate, seconds).await);
        }
        runs
    });
    drop(orders);
    drop(payments);
    drop(postgres);

    let highest = runs.iter().filter(|r| r.sustained()).map(|r| r.rate).max();
    let mut out = format!(
        "## End to end: POST→PAID (`just bench end_to_end`)\n\n\
         Both services, Kafka (one broker) and PostgreSQL (durability on) on this machine; \
         the load generator posts at each rate for {seconds} s (open loop); latency is each \
         order's `paid_at − created_at`, from an HDR histogram. *Sustained*: every order \
         accepted at the first attempt, all paid, the backlog gone within {} s of the last \
         post.\n\n\
         | rate (orders/s) | posted | paid | p50 ms | p99 ms | p99.9 ms | max ms | settled after load (s) | sustained |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---|\n",
        DRAIN_ALLOWED.as_secs()
    );
    for run in &runs {
        out += &run.row();
    }
    out += "\nWhere the CPU goes: seconds per 1,000 orders, from the first order posted until \
            all were settled (this process is both services and the load generator), and how \
            busy the machine's cores were meanwhile.\n\n\
            | rate (orders/s) | services + load generator | PostgreSQL | Kafka | whole machine | machine busy |\n\
            |---:|---:|---:|---:|---:|---:|\n";
    for run in &runs {
        out += &run.cpu_row();
    }
    out += &format!(
        "\nHighest sustained rate tried: **{}** orders/s (steps of {STEP}). Peak memory of \
         the whole bench process (both services, load generator, clients): {} MB.\n",
        highest.map_or("none".into(), |r| r.to_string()),
        peak_rss_mb().map_or("—".into(), |m| format!("{m:.0}")),
    );
    print!("{out}");
    support::write_section("end_to_end", &out);
}
