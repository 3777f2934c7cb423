//! `redrive`: list, inspect and replay dead letters. See `redrive --help`.

use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use redrive::{DeadLetter, Filter};

#[derive(Parser)]
#[command(
    name = "redrive",
    version,
    about = "List, inspect and replay dead letters to the topics they came from",
    long_about = "List, inspect and replay dead letters to the topics they came from.\n\n\
        Reading commits nothing. A replay keeps each record's key, value and original \
        headers, sends it to its original topic and partition, and adds a redriven-from \
        header. Replays are safe: consumers recognise an event they already processed.\n\n\
        Examples:\n  \
        redrive list order.created.DLT\n  \
        redrive show order.created.DLT --class poison.invalid\n  \
        redrive replay order.created.DLT --class gateway.unavailable --dry-run\n  \
        redrive replay order.created.DLT --partition 2 --from-offset 10 --to-offset 20"
)]
struct Cli {
    /// Where Kafka is and how to reach it (the services' KAFKA_* variables).
    #[command(flatten)]
    kafka: kafka::Connection,

    /// Longest time to read a dead-letter topic to its end, in seconds.
    #[arg(long, default_value_t = 30, global = true)]
    timeout_secs: u64,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Counts by error class, then one line per dead letter.
    List(Selection),
    /// Every header and the value of each dead letter.
    Show(Selection),
    /// Sends the selected dead letters back to their original topics.
    Replay {
        #[command(flatten)]
        selection: Selection,
        /// Print what would be replayed, and send nothing.
        #[arg(long)]
        dry_run: bool,
        /// Send to this topic instead of each record's original topic.
        #[arg(long)]
        to: Option<String>,
    },
}

#[derive(Args)]
struct Selection {
    /// The dead-letter topic, such as order.created.DLT.
    topic: String,
    /// Only this error class (see `list`), such as poison.invalid.
    #[arg(long)]
    class: Option<String>,
    /// Only records with this key.
    #[arg(long)]
    key: Option<String>,
    /// Only this partition of the dead-letter topic.
    #[arg(long)]
    partition: Option<i32>,
    /// Only offsets from this one, inclusive.
    #[arg(long)]
    from_offset: Option<i64>,
    /// Only offsets up to this one, inclusive.
    #[arg(long)]
    to_offset: Option<i64>,
}

impl Selection {
    fn filter(&self) -> Filter {
        Filter {
            class: self.class.clone(),
            key: self.key.clone(),
            partition: self.partition,
            from_offset: self.from_offset,
            to_offset: self.to_offset,
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let timeout = Duration::from_secs(cli.timeout_secs);
    let (selection, replay) = match &cli.command {
        Command::List(s) | Command::Show(s) => (s, None),
        Command::Replay {
            selection,
            dry_run,
            to,
        } => (selection, Some((*dry_run, to.as_deref()))),
    };
    cli.kafka.check()?;
    let letters = redrive::read(&cli.kafka, &selection.topic, &selection.filter(), timeout)
        .await
        .with_context(|| {
            format!(
                "reading {} (KAFKA_BOOTSTRAP={})",
                selection.topic, cli.kafka.bootstrap
            )
        })?;
    print_summary(&selection.topic, &letters);
    match (&cli.command, replay) {
        (Command::List(_), _) => print_lines(&letters),
        (Command::Show(_), _) => print_details(&letters),
        (_, Some((true, to))) => {
            for letter in &letters {
                let (topic, partition) = redrive::destination(letter, to)?;
                let partition = partition.map_or_else(|| "by key".into(), |p| p.to_string());
                println!(
                    "would replay {} -> {topic} (partition {partition})",
                    letter.locator()
                );
            }
            println!(
                "dry run: {} would be replayed, nothing sent",
                plural(letters.len(), "dead letter")
            );
        }
        (_, Some((false, to))) => {
            let bar = ProgressBar::new(letters.len() as u64).with_style(
                ProgressStyle::with_template("{bar:40} {pos}/{len} replayed {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            let replayed = redrive::replay(&cli.kafka, &letters, to, |_| bar.inc(1)).await?;
            bar.finish();
            println!("replayed {replayed} of {}", letters.len());
        }
        (_, None) => {}
    }
    Ok(())
}

fn print_summary(topic: &str, letters: &[DeadLetter]) {
    println!("{topic}: {} selected", plural(letters.len(), "dead letter"));
    for (class, count) in redrive::summary(letters) {
        println!("  {class:<32} {count:>8}");
    }
}

fn print_lines(letters: &[DeadLetter]) {
    if letters.is_empty() {
        return;
    }
    println!();
    println!(
        "{:<9} {:<9} {:<38} {:<28} {:<8} MESSAGE",
        "PARTITION", "OFFSET", "KEY", "CLASS", "ATTEMPTS"
    );
    for l in letters {
        let attempts = l
            .last_header_text(kafka::dead_letter::headers::ATTEMPTS)
            .unwrap_or_default();
        let message = l
            .last_header_text(kafka::dead_letter::headers::ERROR_MESSAGE)
            .unwrap_or_default();
        let message: String = message.chars().take(100).collect();
        println!(
            "{:<9} {:<9} {:<38} {:<28} {:<8} {message}",
            l.partition,
            l.offset,
            l.key_text(),
            l.dead_letter_class(),
            attempts
        );
    }
}

fn print_details(letters: &[DeadLetter]) {
    for l in letters {
        println!();
        println!("{}  key={}", l.locator(), l.key_text());
        for (name, value) in &l.headers {
            println!("  {name}: {}", redrive::printable(Some(value), 300));
        }
        println!(
            "  value: {}",
            redrive::printable(l.payload.as_deref(), 2000)
        );
    }
}

fn plural(count: usize, noun: &str) -> String {
    if count == 1 {
        format!("1 {noun}")
    } else {
        format!("{count} {noun}s")
    }
}
