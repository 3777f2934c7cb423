//! Containers do not outlive the process that started them, even when it panics.

use std::process::Command;
use std::time::Duration;

use testkit::engine;

#[tokio::test]
async fn a_process_that_panics_leaves_no_container_behind() {
    let limit = Duration::from_secs(120);
    tokio::time::timeout(limit, async {
        let output = tokio::task::spawn_blocking(|| {
            Command::new(env!("CARGO_BIN_EXE_testkit-exit-probe"))
                .output()
                .expect("run the probe")
        })
        .await
        .expect("probe task");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            output.status.code(),
            Some(101),
            "the probe panics: {stderr}"
        );
        assert!(stderr.contains("panics on purpose"), "{stderr}");
        let session = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        assert_eq!(
            session.len(),
            32,
            "the probe prints its session id: {session:?}"
        );

        let docker = engine::docker().await.expect("engine");
        let left =
            engine::remove_labelled(&docker, engine::LABEL_SESSION, &session, Duration::ZERO).await;
        assert!(
            matches!(left, Ok(0)),
            "the probe's containers were still there after it exited: {left:?}"
        );
    })
    .await
    .expect("the test did not finish within 2 minutes");
}
