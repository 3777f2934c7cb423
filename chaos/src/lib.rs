//! Failure drills: the real system — a 3-broker KRaft cluster, a durable PostgreSQL, the
//! services as OS processes, a stand-in payment gateway as strict as a provider — under
//! open-loop load, with a fault injected mid-flow and proven to have taken effect, then
//! healed; then a checker that holds every order to the money bijection (paid ⇔ one
//! payment ⇔ one approved charge of its amount) and the run to progress second by second.
//!
//! - [`drills`]: the catalogue, and each drill's fault;
//! - [`platform`]: starting, killing and restarting the parts;
//! - [`observe`]: what is looked at afterwards;
//! - [`checker`]: the invariants, with tests of their own on made-up histories;
//! - [`run`]: one drill from start to verdict, with live progress;
//! - [`report`]: the table, the raw history and a timeline picture per drill.

pub mod checker;
pub mod drills;
pub mod observe;
pub mod platform;
pub mod report;
pub mod run;
