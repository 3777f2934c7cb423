//! Starts the shared PostgreSQL server, prints this process's session id, then panics.
//!
//! The suite runs it to prove that containers are removed when a process using the test
//! kit ends in a panic (see tests/harness/cleanup.rs).

#[tokio::main(flavor = "current_thread")]
async fn main() {
    testkit::postgres::server()
        .await
        .expect("the probe needs PostgreSQL");
    println!("{}", testkit::engine::session_id());
    panic!("the probe panics on purpose, with a container running");
}
