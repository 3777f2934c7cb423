//! A service run as an OS process, for the tests that need what only a process has: an
//! exit status, a signal, a log on stderr. Its port is chosen here, its stderr goes to a
//! log file of its own, and dropping it kills the process and removes the log.

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::{Error, Result};

/// A running service process.
pub struct ServiceProcess {
    child: Child,
    log: PathBuf,
    port: u16,
}

impl ServiceProcess {
    /// Starts `binary` with `env`, listening on a free port of the loopback: the variable
    /// `listen` (`ORDER_LISTEN`, …) is set to it. Its stderr goes to a log file.
    pub fn start(binary: &str, listen: &str, env: &[(&str, &str)]) -> Result<Self> {
        let port = crate::engine::free_port()?;
        let log = std::env::temp_dir().join(format!("{}.log", crate::unique_name("service")));
        let stderr = std::fs::File::create(&log)
            .map_err(|e| Error::Unsupported(format!("creating {}: {e}", log.display())))?;
        let child = Command::new(binary)
            .env(listen, format!("127.0.0.1:{port}"))
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(|e| Error::Unsupported(format!("starting {binary}: {e}")))?;
        Ok(Self { child, log, port })
    }

    /// Its base URL: `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// What it has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Its exit status, if it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Sends SIGTERM, as an orchestrator stopping it does.
    pub fn terminate(&self) -> Result<()> {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .map_err(|e| Error::Unsupported(format!("kill: {e}")))?;
        if sent.success() {
            Ok(())
        } else {
            Err(Error::Unsupported(format!("kill -TERM: {sent}")))
        }
    }

    /// Sends SIGKILL: the process dies at once, as in a crash.
    pub fn kill(&mut self) -> Result<()> {
        self.child
            .kill()
            .map_err(|e| Error::Unsupported(format!("kill -KILL: {e}")))?;
        let _ = self.child.wait();
        Ok(())
    }

    /// Waits until it exits, for at most `limit` (then it is killed): its status.
    pub async fn wait_exit(&mut self, limit: Duration) -> Result<ExitStatus> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.exited() {
                return Ok(status);
            }
            if started.elapsed() > limit {
                let _ = self.child.kill();
                return Err(Error::Timeout {
                    what: format!("the process to exit; its log:\n{}", self.log()),
                    after: limit,
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until `GET /health/ready` answers `200`, for at most `limit`; fails at once,
    /// with its log, if it exits instead.
    pub async fn until_ready(&mut self, limit: Duration) -> Result<()> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| Error::Unsupported(format!("HTTP client: {e}")))?;
        let url = format!("{}/health/ready", self.url());
        let started = Instant::now();
        loop {
            if http.get(&url).send().await.is_ok_and(|r| r.status() == 200) {
                return Ok(());
            }
            if let Some(status) = self.exited() {
                return Err(Error::Unsupported(format!(
                    "exited ({status}) before it was ready; its log:\n{}",
                    self.log()
                )));
            }
            if started.elapsed() > limit {
                return Err(Error::Timeout {
                    what: format!("{url} to answer 200; its log:\n{}", self.log()),
                    after: limit,
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}
