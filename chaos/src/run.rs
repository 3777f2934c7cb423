//! One drill from start to verdict.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::checker::{self, Expectations, Verdict, Window};
use crate::drills::{Dice, Drill, FaultNotes};
use crate::platform::Platform;

/// How drills are run.
#[derive(Debug, Clone)]
pub struct Options {
    pub seed: u64,
    /// Orders per second.
    pub rate: f64,
    /// How long the load runs at least; longer when a fault needs it.
    pub duration: Duration,
    /// The fault starts this far into the load.
    pub fault_at: Duration,
    /// Bound on draining the backlog after the load ends.
    pub drain_timeout: Duration,
    /// The backlog must drain within this after the heal.
    pub recover_within: Duration,
}

/// What one drill did.
pub struct Outcome {
    pub drill: &'static Drill,
    pub seed: u64,
    pub verdict: Verdict,
    pub notes: FaultNotes,
    pub fault: Window,
    pub timeline: Vec<checker::Second>,
    pub took: Duration,
    /// How each service ended at the drill's end: its label and exit status (`None`:
    /// killed after the bound).
    pub exits: Vec<(String, Option<std::process::ExitStatus>)>,
    /// Each service's `ERROR` log lines.
    pub errors: Vec<(String, Vec<String>)>,
    /// Orders per second offered.
    pub rate: f64,
}

/// Runs `drill` with `options`, writing its files under `dir`.
pub async fn run(drill: &'static Drill, options: &Options, dir: &Path) -> anyhow::Result<Outcome> {
    let began = Instant::now();
    let mut dice = Dice::new(options.seed);
    say(
        drill,
        "starting the cluster, PostgreSQL, the gateway and the services",
    );
    let mut platform = Platform::start(dir, drill.orders, drill.payments).await?;
    warm_up(&platform).await.context("warming up")?;
    say(
        drill,
        &format!(
            "ready in {:.0?}: a first order went through",
            began.elapsed()
        ),
    );

    let duration = options
        .duration
        .max(options.fault_at + drill.fault_length + Duration::from_secs(10));
    let rate = drill.rate.unwrap_or(options.rate);
    let progress = Arc::new(loadgen::Progress::default());
    let load = loadgen::LoadConfig {
        targets: platform.order_urls(),
        rate,
        duration,
        request_timeout: Duration::from_secs(5),
        give_up_after: Duration::from_secs(90),
        seed: options.seed,
        run_id: format!("{}-{}", drill.name, options.seed),
    };
    let planned = loadgen::planned(&load);
    let stop = CancellationToken::new();
    let started_ms = chrono::Utc::now().timestamp_millis();
    let load_started = Instant::now();
    let loading = tokio::spawn({
        let progress = progress.clone();
        let stop = stop.clone();
        async move { loadgen::run(&load, progress, stop).await }
    });
    let phase = Arc::new(std::sync::Mutex::new("load".to_owned()));
    let ticker = tokio::spawn(tick(
        drill,
        progress.clone(),
        phase.clone(),
        platform.orders_db.pool().clone(),
        load_started,
    ));

    tokio::time::sleep(options.fault_at).await;
    set(&phase, &format!("FAULT: {}", drill.about));
    let asked_s = load_started.elapsed().as_secs();
    let notes = drill
        .inject(&mut platform, &mut dice)
        .await
        .context("injecting the fault")?;
    let start_s = notes
        .struck
        .map_or(asked_s, |at| at.duration_since(load_started).as_secs());
    let heal_s = load_started.elapsed().as_secs();
    let grace_from_s = match notes.last_struck {
        Some(at) if drill.grace_from_last_action => at.duration_since(load_started).as_secs(),
        _ => start_s,
    };
    for action in &notes.actions {
        say(drill, action);
    }
    set(&phase, "healed; load goes on");
    let requests = loading.await.context("the load generator")??;
    set(&phase, "draining");
    let drained = Instant::now();
    loop {
        let (pending, unpublished, lag) = crate::observe::backlog(&platform)
            .await
            .unwrap_or((-1, -1, -1));
        if (pending, unpublished, lag) == (0, 0, 0) {
            break;
        }
        if drained.elapsed() > options.drain_timeout {
            say(
                drill,
                &format!(
                    "not drained within {:?}: {pending} orders pending, {unpublished} events unpublished, lag {lag}",
                    options.drain_timeout
                ),
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    ticker.abort();
    stop.cancel();

    let fault = Window {
        start_s,
        grace_from_s,
        heal_s,
    };
    let run = crate::observe::Run {
        requests,
        planned,
        started_ms,
        fault: Some(fault),
        orders_down: notes.orders_down.clone(),
    };
    let observed = crate::observe::observe(&platform, run).await?;
    let expect = Expectations {
        rate,
        flow_during_fault: drill.flow_during_fault,
        grace: drill.grace,
        recover_within: options.recover_within,
    };
    let mut verdict = checker::check(&observed, &expect);
    verdict
        .fault_unproven
        .extend(notes.unproven.iter().cloned());
    if let Some(published) = notes.published_during {
        if published != 0 {
            verdict.no_progress.push(format!(
                "{published} events were acknowledged by Kafka while only one broker was up"
            ));
        }
        let accepted_during: u64 = observed
            .timeline
            .iter()
            .enumerate()
            .filter(|(s, _)| (start_s..heal_s).contains(&(*s as u64)))
            .map(|(_, s)| s.accepted)
            .sum();
        let offered = rate * (heal_s - start_s) as f64;
        if (accepted_during as f64) < offered / 2.0 {
            verdict.fault_unproven.push(format!(
                "{accepted_during} orders accepted while two brokers were down, of about {offered:.0} offered"
            ));
        }
    }
    loadgen::write_history(&dir.join("history.jsonl"), &observed.requests)?;
    let exits = platform.stop().await;
    for (label, status) in &exits {
        if !status.is_some_and(|s| s.success()) {
            verdict
                .stuck
                .push(format!("{label} did not exit 0 at the end: {status:?}"));
        }
    }
    let errors = platform.error_lines();
    drop(platform);
    Ok(Outcome {
        drill,
        seed: options.seed,
        verdict,
        notes,
        fault,
        timeline: observed.timeline,
        took: began.elapsed(),
        exits,
        errors,
        rate,
    })
}

/// Posts one order and waits until it is paid: consumers have joined their groups and
/// every part is warm before the clock starts.
async fn warm_up(platform: &Platform) -> anyhow::Result<()> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let order: serde_json::Value = http
        .post(format!("{}/orders", platform.order_urls()[0]))
        .header("content-type", "application/json")
        .body(r#"{"amount": 1.00, "currency": "EUR"}"#)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let id = order["id"].as_str().context("an order id")?.to_owned();
    let started = Instant::now();
    loop {
        let status: Option<String> =
            sqlx::query_scalar("SELECT status FROM orders WHERE id::text = $1")
                .bind(&id)
                .fetch_optional(platform.orders_db.pool())
                .await?;
        if status.as_deref() == Some("PAID") {
            return Ok(());
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(120),
            "the first order was not paid within 120 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn say(drill: &Drill, what: &str) {
    println!("[{}] {what}", drill.name);
}

fn set(phase: &std::sync::Mutex<String>, to: &str) {
    *phase.lock().unwrap_or_else(|e| e.into_inner()) = to.to_owned();
}

/// A progress line every five seconds: the phase, orders accepted and paid.
async fn tick(
    drill: &'static Drill,
    progress: Arc<loadgen::Progress>,
    phase: Arc<std::sync::Mutex<String>>,
    orders: sqlx::PgPool,
    started: Instant,
) {
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let paid: i64 = sqlx::query_scalar("SELECT count(*) FROM orders WHERE status = 'PAID'")
            .fetch_one(&orders)
            .await
            .unwrap_or(-1);
        let phase = phase.lock().unwrap_or_else(|e| e.into_inner()).clone();
        println!(
            "[{}] {:>4} s  {:<40} started {:>6}  acknowledged {:>6}  paid {:>6}  retries {:>5}",
            drill.name,
            started.elapsed().as_secs(),
            phase.chars().take(40).collect::<String>(),
            progress.started.load(Ordering::Relaxed),
            progress.acknowledged.load(Ordering::Relaxed),
            paid,
            progress.retries.load(Ordering::Relaxed),
        );
    }
}
