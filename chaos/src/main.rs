//! `chaos`: the failure drills. `just chaos` runs them all; `just chaos broker-kill` one;
//! `just chaos --list` names them.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use chaos::drills::{self, DRILLS};
use chaos::run::{self, Options};
use clap::Parser;

#[derive(Parser)]
#[command(
    name = "chaos",
    version,
    about = "Failure drills: the whole platform under load, a fault injected mid-flow and healed, then a check that no order was lost, doubled, double-charged or stuck"
)]
struct Cli {
    /// Drills to run (all when none is named).
    drills: Vec<String>,
    /// Name the drills and stop.
    #[arg(long)]
    list: bool,
    /// Seed of victims and timings (printed; repeat a run with it). Random when unset.
    #[arg(long)]
    seed: Option<u64>,
    /// Orders per second.
    #[arg(long, default_value_t = 60.0)]
    rate: f64,
    /// Seconds of load, at least (longer when a drill's fault needs it).
    #[arg(long, default_value_t = 40)]
    duration: u64,
    /// Seconds into the load when the fault starts.
    #[arg(long, default_value_t = 12)]
    fault_at: u64,
    /// Seconds the backlog may take to drain after the heal.
    #[arg(long, default_value_t = 60)]
    recover_within: u64,
    /// Where reports go: <out>/<run>/report.md.
    #[arg(long, default_value = "target/chaos")]
    out: PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if cli.list {
        for drill in DRILLS {
            println!("{:<18} {}", drill.name, drill.about);
        }
        return Ok(());
    }
    let selected: Vec<&'static drills::Drill> = if cli.drills.is_empty() {
        DRILLS.iter().collect()
    } else {
        cli.drills
            .iter()
            .map(|name| {
                drills::find(name)
                    .with_context(|| format!("no drill called {name:?}; `chaos --list` names them"))
            })
            .collect::<anyhow::Result<_>>()?
    };
    let seed = cli.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_secs())
    });
    let run_name = chrono::Utc::now().format("%Y%m%d-%H%M%S").to_string();
    let dir = cli.out.join(&run_name);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    println!(
        "{} drill(s), seed {seed} (--seed {seed} repeats them), {} orders/s; report in {}",
        selected.len(),
        cli.rate,
        dir.display()
    );

    let mut outcomes = Vec::new();
    let mut errors = Vec::new();
    for (i, drill) in selected.iter().enumerate() {
        let options = Options {
            seed: seed.wrapping_add(i as u64),
            rate: cli.rate,
            duration: Duration::from_secs(cli.duration),
            fault_at: Duration::from_secs(cli.fault_at),
            drain_timeout: Duration::from_secs(120),
            recover_within: Duration::from_secs(cli.recover_within),
        };
        let drill_dir = dir.join(drill.name);
        let ran = tokio::select! {
            ran = run::run(drill, &options, &drill_dir) => ran,
            () = interrupted() => {
                println!("interrupted: stopping and cleaning up");
                break;
            }
        };
        match ran {
            Ok(outcome) => {
                if let Err(e) =
                    chaos::report::timeline_png(&drill_dir.join("timeline.png"), &outcome)
                {
                    println!("[{}] no timeline picture: {e:#}", drill.name);
                }
                println!(
                    "[{}] {} in {:.0?}",
                    drill.name,
                    if outcome.verdict.passed() {
                        "PASS"
                    } else {
                        "FAIL"
                    },
                    outcome.took
                );
                for failure in outcome.verdict.failures() {
                    println!("[{}]   {failure}", drill.name);
                }
                outcomes.push(outcome);
            }
            Err(e) => {
                println!("[{}] could not run: {e:#}", drill.name);
                errors.push(format!("{}: {e:#}", drill.name));
            }
        }
        std::fs::write(
            dir.join("report.md"),
            chaos::report::markdown(&run_name, &outcomes),
        )?;
    }
    println!("\n{}", chaos::report::table(&outcomes));
    println!("report: {}", dir.join("report.md").display());
    let failed: Vec<&str> = outcomes
        .iter()
        .filter(|o| !o.verdict.passed())
        .map(|o| o.drill.name)
        .collect();
    if !errors.is_empty() || !failed.is_empty() || outcomes.len() < selected.len() {
        bail!(
            "drills failed: {failed:?}; could not run: {errors:?}; ran {} of {}",
            outcomes.len(),
            selected.len()
        );
    }
    Ok(())
}

/// Ctrl-C or SIGTERM.
async fn interrupted() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
