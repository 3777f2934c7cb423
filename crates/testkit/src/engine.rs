//! The container engine: which one, whether it answers, and the labels and clean-up that
//! keep a test run from leaving containers behind.
//!
//! Every container and network the test kit starts carries two labels:
//! [`LABEL_PROJECT`] (so `just test` and CI can find leftovers of any run) and
//! [`LABEL_SESSION`] with this process's id. When the process exits — tests passed, failed
//! or panicked — a destructor removes everything with this process's session label.
//! Containers that outlive a `kill -9` of the test binary are removed by `just clean`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::LazyLock;
use std::time::Duration;

use bollard::models::PortBinding;
use bollard::query_parameters::{
    KillContainerOptions, ListContainersOptions, ListNetworksOptions, RemoveContainerOptions,
};
use bollard::Docker;
use testcontainers::{ContainerRequest, Image, ImageExt};
use tokio::sync::OnceCell;

use crate::runtime::on_testkit;
use crate::{Error, Result};

/// Set to `true` on everything the test kit starts.
pub const LABEL_PROJECT: &str = "org.order-platform.testkit";
/// Set to the id of the process that started the container.
pub const LABEL_SESSION: &str = "org.order-platform.session";

const DEFAULT_HOST: &str = "unix:///var/run/docker.sock";
/// How long the engine may take to answer a ping before we say it is not there.
const PING_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on any one engine API call.
const API_TIMEOUT: u64 = 60;

static SESSION: LazyLock<String> = LazyLock::new(|| uuid::Uuid::new_v4().simple().to_string());
/// Set once this process has labelled anything, so that exit clean-up knows to run.
static LABELLED_ANYTHING: AtomicBool = AtomicBool::new(false);

/// This process's session id, as found in [`LABEL_SESSION`].
pub fn session_id() -> &'static str {
    &SESSION
}

/// The engine address that will be used, and where it came from.
pub fn docker_host() -> (String, &'static str) {
    match std::env::var("DOCKER_HOST") {
        Ok(host) if !host.is_empty() => (host, "from DOCKER_HOST"),
        _ => (
            DEFAULT_HOST.to_owned(),
            "the default; DOCKER_HOST is not set",
        ),
    }
}

/// Connects to the engine at `host` and checks that it answers within a few seconds.
///
/// The error, if any, is the one-line [`Error::NoEngine`] that names the engine tried and
/// points to external mode.
pub async fn connect(host: &str, source_of_host: &'static str) -> Result<Docker> {
    let no_engine = |reason: String| Error::NoEngine {
        host: host.to_owned(),
        source_of_host,
        reason,
    };
    let docker = Docker::connect_with_host(host)
        .map_err(|e| no_engine(e.to_string()))?
        .with_timeout(Duration::from_secs(API_TIMEOUT));
    match tokio::time::timeout(PING_TIMEOUT, docker.ping()).await {
        Ok(Ok(_)) => Ok(docker),
        Ok(Err(e)) => Err(no_engine(e.to_string())),
        Err(_) => Err(no_engine(format!("no answer within {PING_TIMEOUT:?}"))),
    }
}

/// The engine client of this process, checked once. Runs on the test kit's runtime.
pub async fn docker() -> Result<Docker> {
    static DOCKER: OnceCell<Docker> = OnceCell::const_new();
    on_testkit(async {
        DOCKER
            .get_or_try_init(|| async {
                let (host, source) = docker_host();
                connect(&host, source).await
            })
            .await
            .cloned()
    })
    .await
}

/// The project and session labels, for anything created through the engine API directly.
pub fn labels() -> HashMap<String, String> {
    LABELLED_ANYTHING.store(true, Ordering::SeqCst);
    HashMap::from([
        (LABEL_PROJECT.to_owned(), "true".to_owned()),
        (LABEL_SESSION.to_owned(), session_id().to_owned()),
    ])
}

/// Adds the clean-up labels to a container request.
pub fn labelled<I: Image>(request: ContainerRequest<I>) -> ContainerRequest<I> {
    request.with_labels(labels())
}

/// Publishes each `(container port, host port)` on 127.0.0.1 only; host port 0 lets the
/// engine choose. (Podman 4 reports no host address for "publish all ports", and
/// testcontainers then finds no port; binding explicitly works on Docker and Podman.)
pub fn bind_loopback<I: Image>(
    request: ContainerRequest<I>,
    ports: &[(u16, u16)],
) -> ContainerRequest<I> {
    let bindings: HashMap<String, Option<Vec<PortBinding>>> = ports
        .iter()
        .map(|&(container, host)| {
            let host_port = if host == 0 {
                String::new()
            } else {
                host.to_string()
            };
            (
                format!("{container}/tcp"),
                Some(vec![PortBinding {
                    host_ip: Some("127.0.0.1".to_owned()),
                    host_port: Some(host_port),
                }]),
            )
        })
        .collect();
    request.with_host_config_modifier(move |config| {
        config.publish_all_ports = Some(false);
        config.port_bindings = Some(bindings.clone());
    })
}

/// A free TCP port on 127.0.0.1 below the kernel's ephemeral range, for a listener whose
/// address must be known before the container starts (Kafka advertises it to clients) or
/// must stay the same across restarts.
pub fn free_port() -> Result<u16> {
    // The kernel hands out ports from its ephemeral range (32768-60999 on Linux) for every
    // outgoing connection and every "any port" bind, the engine's own port mappings
    // included; a port found free there can be taken by someone else before the container
    // binds it. Ports below that range are handed out only by this allocator: each once
    // per process, from a place that differs between processes, and each checked free.
    const FIRST: u16 = 30_100;
    const LAST: u16 = 32_700;
    static NEXT: LazyLock<AtomicU32> = LazyLock::new(|| {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
            ^ std::process::id().wrapping_mul(2_654_435_761);
        AtomicU32::new(seed)
    });
    let span = u32::from(LAST - FIRST);
    for _ in 0..span {
        let port = FIRST + (NEXT.fetch_add(1, Ordering::Relaxed) % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Err(Error::Unsupported(format!(
        "cannot find a free port between {FIRST} and {LAST}"
    )))
}

/// Sends `signal` (for example `SIGKILL`) to a container.
pub async fn kill(container_id: &str, signal: &str) -> Result<()> {
    let docker = docker().await?;
    let id = container_id.to_owned();
    let signal = signal.to_owned();
    on_testkit(async move {
        docker
            .kill_container(&id, Some(KillContainerOptions { signal }))
            .await
            .map_err(Error::from)
    })
    .await
}

/// Removes every container and network that carries `label=value`, and returns how many
/// containers it removed. It tries again while any remain (another task may be removing
/// the same container at the same moment), for up to `deadline`.
pub async fn remove_labelled(
    docker: &Docker,
    label: &str,
    value: &str,
    deadline: Duration,
) -> Result<usize> {
    let filter = HashMap::from([("label".to_owned(), vec![format!("{label}={value}")])]);
    let started = std::time::Instant::now();
    let mut removed = 0;
    loop {
        // Listing can fail while the engine is busy removing the same containers for
        // another task; that is worth another try, not giving up.
        let listed = docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(filter.clone()),
                ..Default::default()
            }))
            .await;
        let last = match listed {
            Ok(containers) if containers.is_empty() => break,
            Ok(containers) => {
                let count = containers.len();
                for id in containers.into_iter().filter_map(|c| c.id) {
                    let options = RemoveContainerOptions {
                        force: true,
                        v: true,
                        ..Default::default()
                    };
                    if docker.remove_container(&id, Some(options)).await.is_ok() {
                        removed += 1;
                    }
                }
                format!("{count} container(s) still there")
            }
            Err(e) => e.to_string(),
        };
        if started.elapsed() >= deadline {
            return Err(Error::Timeout {
                what: format!("removing containers labelled {label}={value} ({last})"),
                after: deadline,
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let networks = docker
        .list_networks(Some(ListNetworksOptions {
            filters: Some(filter),
        }))
        .await?;
    for name in networks.into_iter().filter_map(|n| n.name) {
        let _ = docker.remove_network(&name).await;
    }
    Ok(removed)
}

/// Removes this process's containers when it exits, whether its tests passed or failed
/// (libtest ends a failed run with `exit(101)`, which runs this too).
///
/// At that point the Rust runtime may have torn down thread-locals of the main thread, so
/// the work runs on a fresh thread with a runtime of its own, bounded in time.
#[allow(unsafe_code)]
#[dtor::dtor(unsafe)]
fn remove_session_containers_at_exit() {
    if !LABELLED_ANYTHING.load(Ordering::SeqCst) {
        return; // this process never started a container
    }
    let session = session_id().to_owned();
    let worker = std::thread::spawn(move || {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        let outcome = runtime.block_on(async move {
            let (host, source) = docker_host();
            let docker = connect(&host, source).await?;
            remove_labelled(&docker, LABEL_SESSION, &session, Duration::from_secs(60)).await
        });
        if let Err(e) = outcome {
            eprintln!("testkit: could not remove this run's containers at exit: {e}");
        }
    });
    let _ = worker.join();
}
