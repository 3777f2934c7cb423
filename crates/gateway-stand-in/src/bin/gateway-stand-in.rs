//! The stand-in payment gateway as a process of its own, for failure drills.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use gateway_stand_in::{Settings, StandIn};

/// A stand-in payment gateway, as strict as a real provider, with faults on demand.
#[derive(Parser)]
#[command(name = "gateway-stand-in", version)]
struct Args {
    /// Where the provider's API listens.
    #[arg(long, default_value = "127.0.0.1:9000")]
    listen: SocketAddr,
    /// Where the admin API listens (faults, records).
    #[arg(long, default_value = "127.0.0.1:9001")]
    admin: SocketAddr,
    /// Each request, as it ends, one JSON line.
    #[arg(long)]
    record: Option<PathBuf>,
    /// Charges above this amount are declined.
    #[arg(long)]
    decline_above: Option<rust_decimal::Decimal>,
    /// Keys are forgotten after this many seconds (a repeat then charges again).
    #[arg(long)]
    key_retention_secs: Option<u64>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let settings = Settings {
        decline_above: args.decline_above,
        key_retention: args.key_retention_secs.map(Duration::from_secs),
        ..Settings::strict()
    };
    let stand_in =
        Arc::new(StandIn::start_with(settings, args.listen, None, args.record.as_deref()).await?);
    gateway_stand_in::admin::serve(stand_in, args.admin).await
}
