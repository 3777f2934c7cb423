//! Failure drills: the real system — a 3-broker KRaft cluster, a durable PostgreSQL, the
//! services as OS processes, a stand-in payment gateway — under open-loop load, with a
//! fault injected mid-flow and healed; then a checker that looks for lost, doubled,
//! double-charged, stuck and reordered orders and for a run that made no progress.
//!
//! - [`drills`]: the catalogue, and each drill's fault;
//! - [`platform`]: starting, killing and restarting the parts;
//! - [`gateway`]: the stand-in payment gateway (run as `chaos serve-gateway`);
//! - [`observe`]: what is looked at afterwards;
//! - [`checker`]: the invariants, with tests of their own on made-up histories;
//! - [`run`]: one drill from start to verdict, with live progress;
//! - [`report`]: the table, the raw history and a timeline picture per drill.

pub mod checker;
pub mod drills;
pub mod gateway;
pub mod observe;
pub mod platform;
pub mod report;
pub mod run;
