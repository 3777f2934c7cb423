//! When no container engine runs, the user learns so at once, in one line.

use std::time::{Duration, Instant};

use testkit::engine;

#[tokio::test]
async fn a_missing_engine_is_reported_in_one_line_that_names_it_and_points_to_external_mode() {
    let dir = std::env::temp_dir().join(testkit::unique_name("no-engine"));
    let host = format!("unix://{}/docker.sock", dir.display());

    let started = Instant::now();
    let error = engine::connect(&host, "given by the test")
        .await
        .expect_err("nothing listens on that socket");
    let message = error.to_string();

    assert!(
        started.elapsed() < Duration::from_secs(10),
        "it must not hang"
    );
    assert!(!message.contains('\n'), "one line: {message}");
    assert!(
        message.contains(&host),
        "names the engine it tried: {message}"
    );
    assert!(
        message.contains("OP_DATABASE_URL") && message.contains("OP_KAFKA_BOOTSTRAP"),
        "{message}"
    );
}

#[tokio::test]
async fn an_engine_that_accepts_but_never_answers_is_reported_within_seconds() {
    let dir = std::env::temp_dir().join(testkit::unique_name("mute-engine"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let socket = dir.join("docker.sock");
    let listener = tokio::net::UnixListener::bind(&socket).expect("bind");
    // Accepts connections and holds them open without a word.
    let mute = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });

    let host = format!("unix://{}", socket.display());
    let started = Instant::now();
    let error = engine::connect(&host, "given by the test")
        .await
        .expect_err("the engine never answers");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "it must not hang"
    );
    assert!(error.to_string().contains("no answer within"), "{error}");

    mute.abort();
    let _ = std::fs::remove_dir_all(&dir);
}
