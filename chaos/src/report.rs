//! The report: a table per run (`report.md`), and a timeline picture per drill
//! (`timeline.png`: orders accepted and paid per second, the fault's start and heal).

use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;

use crate::run::Outcome;

/// The table, one row per drill, as Markdown.
pub fn table(outcomes: &[Outcome]) -> String {
    let mut out = String::from(
        "| drill | seed | rate | sent | acknowledged | indeterminate (existing) | paid | failed | charges | most requests for one order | lost | money | DLT | max lag | fault (s) | paid during fault | longest wait | POST→PAID p50 / p99 | took | verdict |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    for o in outcomes {
        let v = &o.verdict;
        let ms = |x: Option<i64>| x.map_or("—".into(), |v| format!("{v} ms"));
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} ({}) | {} | {} | {} | {} | {} | {} | {} | {} | {}–{} | {} | {} | {} / {} | {:.0} s | {} |",
            o.drill.name,
            o.seed,
            o.rate,
            v.sent,
            v.acknowledged,
            v.indeterminate,
            v.indeterminate_existing,
            v.paid,
            v.payment_failed,
            v.charges,
            v.charge_requests_max,
            v.lost.len(),
            v.money.len(),
            v.dead_letters,
            v.max_lag,
            o.fault.start_s,
            o.fault.heal_s,
            v.paid_during_fault.map_or("—".into(), |n| n.to_string()),
            v.longest_wait_s.map_or("—".into(), |s| format!("{s:.1} s")),
            ms(v.latency_p50_ms),
            ms(v.latency_p99_ms),
            o.took.as_secs_f64(),
            if v.passed() { "pass" } else { "**FAIL**" },
        );
    }
    out
}

/// The whole report: the table, then per drill what was done and what failed.
pub fn markdown(run: &str, outcomes: &[Outcome]) -> String {
    let mut out = format!("# Failure drills, run {run}\n\n{}\n", table(outcomes));
    for o in outcomes {
        let _ = writeln!(
            out,
            "## {} (seed {})\n\n{}\n",
            o.drill.name, o.seed, o.drill.about
        );
        for action in &o.notes.actions {
            let _ = writeln!(out, "- {action}");
        }
        if !o.notes.proofs.is_empty() {
            let _ = writeln!(out, "\nThe fault took effect:");
            for proof in &o.notes.proofs {
                let _ = writeln!(out, "- {proof}");
            }
        }
        let _ = writeln!(out, "\nHow the services ended:");
        for (label, status) in &o.exits {
            let _ = writeln!(
                out,
                "- {label}: {}",
                status.map_or("killed after the bound".into(), |s| s.to_string())
            );
        }
        for (label, lines) in &o.errors {
            let _ = writeln!(
                out,
                "- {label}: {} ERROR lines, the first: `{}`",
                lines.len(),
                lines[0].chars().take(300).collect::<String>()
            );
        }
        let failures = o.verdict.failures();
        if failures.is_empty() {
            let _ = writeln!(out, "\nEvery invariant held.");
        } else {
            let _ = writeln!(out, "\nFailures:");
            for f in failures {
                let _ = writeln!(out, "- {f}");
            }
        }
        let _ = writeln!(
            out,
            "\nTimeline: [{0}/timeline.png]({0}/timeline.png); raw history: `{0}/history.jsonl`, gateway record `{0}/gateway.jsonl`, service logs `{0}/*.log`.\n",
            o.drill.name
        );
    }
    out
}

/// Draws orders accepted and paid per second, with the fault's start and heal marked.
/// Text needs a font: DejaVu Sans from the system if present; without it the picture
/// has no labels.
pub fn timeline_png(path: &Path, outcome: &Outcome) -> anyhow::Result<()> {
    let labelled = register_font();
    let root = BitMapBackend::new(path, (1200, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let seconds = outcome.timeline.len().max(1) as u32;
    let top = outcome
        .timeline
        .iter()
        .map(|s| s.accepted.max(s.paid))
        .max()
        .unwrap_or(1)
        .max(1);
    let mut builder = ChartBuilder::on(&root);
    builder.margin(20);
    if labelled {
        builder
            .caption(
                format!(
                    "{} — orders per second (seed {})",
                    outcome.drill.name, outcome.seed
                ),
                ("sans-serif", 22),
            )
            .x_label_area_size(35)
            .y_label_area_size(50);
    }
    let mut chart = builder.build_cartesian_2d(0u32..seconds, 0u64..top + top / 10 + 1)?;
    if labelled {
        chart
            .configure_mesh()
            .x_desc("seconds since the load started")
            .y_desc("orders / s")
            .draw()?;
    }
    let fault = outcome.fault;
    chart.draw_series(std::iter::once(Rectangle::new(
        [
            (fault.start_s as u32, 0),
            (
                fault.heal_s.max(fault.start_s + 1) as u32,
                top + top / 10 + 1,
            ),
        ],
        RGBColor(255, 220, 220).filled(),
    )))?;
    let series = [
        (
            "accepted",
            BLUE,
            outcome
                .timeline
                .iter()
                .map(|s| s.accepted)
                .collect::<Vec<_>>(),
        ),
        (
            "paid",
            GREEN,
            outcome.timeline.iter().map(|s| s.paid).collect::<Vec<_>>(),
        ),
    ];
    for (name, color, values) in series {
        let drawn = chart.draw_series(LineSeries::new(
            values.into_iter().enumerate().map(|(s, v)| (s as u32, v)),
            color.stroke_width(2),
        ))?;
        if labelled {
            drawn
                .label(name)
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color));
        }
    }
    if labelled {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}

/// Registers DejaVu Sans as "sans-serif", once; `false` if no such font is installed.
fn register_font() -> bool {
    static REGISTERED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *REGISTERED.get_or_init(|| {
        let candidates = [
            "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
            "/usr/share/fonts/TTF/DejaVuSans.ttf",
        ];
        for path in candidates {
            if let Ok(bytes) = std::fs::read(path) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        false
    })
}
