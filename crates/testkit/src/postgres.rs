//! PostgreSQL: one server per test binary, a fresh database per test.
//!
//! The server is started once (or taken from `OP_DATABASE_URL` in external mode). Each
//! [`TestDatabase`] is a new database created with `CREATE DATABASE`, so tests run in
//! parallel without seeing each other's rows, and is dropped `WITH (FORCE)` afterwards.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, ImageExt};
use testcontainers_modules::postgres::Postgres;
use tokio::sync::OnceCell;

use crate::engine::{self, bind_loopback, labelled};
use crate::images::postgres_image;
use crate::runtime::{on_testkit, spawn_detached};
use crate::tls::Pem;
use crate::{names, Error, Result};

const USER: &str = "postgres";
const PASSWORD: &str = "postgres";
const STARTUP_TIMEOUT: Duration = Duration::from_secs(120);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A running PostgreSQL server that tests may create databases on.
pub struct PostgresServer {
    /// Connection options for the server's maintenance database, as a superuser.
    admin: PgConnectOptions,
    /// Kept so the container lives as long as its owner; `None` in external mode.
    _container: Option<Arc<ContainerAsync<Postgres>>>,
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        // Removed on the test kit's runtime, whatever runtime the owner was on.
        if let Some(container) = self._container.take() {
            spawn_detached(async move { drop(container) });
        }
    }
}

/// A database of its own on this test binary's server.
pub async fn fresh_database() -> Result<TestDatabase> {
    server().await?.fresh_database().await
}

/// The server of this test binary, started on first use.
pub async fn server() -> Result<&'static PostgresServer> {
    static SERVER: OnceCell<PostgresServer> = OnceCell::const_new();
    SERVER
        .get_or_try_init(PostgresServer::start_or_connect)
        .await
}

impl PostgresServer {
    async fn start_or_connect() -> Result<Self> {
        if let (Ok(url), Ok(_)) = (
            std::env::var("OP_DATABASE_URL"),
            std::env::var("OP_KAFKA_BOOTSTRAP"),
        ) {
            let admin: PgConnectOptions = url.parse()?;
            wait_until_accepting(&admin).await?;
            return Ok(Self {
                admin,
                _container: None,
            });
        }
        on_testkit(Self::start_container(0, false, None)).await
    }

    /// A server of the caller's own, removed when dropped: for tests that stop it. Its
    /// host port is fixed, so its address stays the same across [`Self::stop`] and
    /// [`Self::start`]. Needs a container engine, also in external mode.
    pub async fn dedicated() -> Result<Self> {
        let port = engine::free_port()?;
        on_testkit(Self::start_container(port, false, None)).await
    }

    /// A server of the caller's own with PostgreSQL's durability settings (`fsync`,
    /// `synchronous_commit`, `full_page_writes` on), for benchmarks whose numbers must
    /// hold in production. Removed when dropped.
    pub async fn durable() -> Result<Self> {
        on_testkit(Self::start_container(0, true, None)).await
    }

    /// A durable server (see [`Self::durable`]) on a fixed host port, so its address stays
    /// the same across [`Self::kill`] and [`Self::start`]: for failure drills.
    pub async fn durable_dedicated() -> Result<Self> {
        let port = engine::free_port()?;
        on_testkit(Self::start_container(port, true, None)).await
    }

    /// Sends SIGKILL to the server: it dies at once, as in a crash, and recovers from its
    /// write-ahead log on [`Self::start`].
    pub async fn kill(&self) -> Result<()> {
        let container = self.container()?;
        engine::kill(container.id(), "SIGKILL").await
    }

    /// Stops the server (a fast shutdown: SIGTERM, then SIGKILL after 10 s). Clients see
    /// their connections refused until [`Self::start`].
    pub async fn stop(&self) -> Result<()> {
        let container = self.container()?;
        on_testkit(async move { Ok(container.stop_with_timeout(Some(10)).await?) }).await
    }

    /// Starts a stopped server again and waits until it accepts connections.
    pub async fn start(&self) -> Result<()> {
        let container = self.container()?;
        on_testkit(async move { Ok::<(), Error>(container.start().await?) }).await?;
        wait_until_accepting(&self.admin).await
    }

    fn container(&self) -> Result<Arc<ContainerAsync<Postgres>>> {
        self._container.clone().ok_or_else(|| {
            Error::Unsupported("an external PostgreSQL cannot be stopped by the test kit".into())
        })
    }

    /// A server of the caller's own with `ssl=on`, presenting `certificate` (which should
    /// name `127.0.0.1`), that still accepts connections without TLS.
    pub async fn with_tls(certificate: &Pem) -> Result<Self> {
        let certificate = certificate.clone();
        on_testkit(async move { Self::start_container(0, false, Some(&certificate)).await }).await
    }

    /// `port` 0 lets the engine choose the host port; `durable` keeps `fsync` on; `tls`
    /// turns `ssl` on with that certificate.
    async fn start_container(port: u16, durable: bool, tls: Option<&Pem>) -> Result<Self> {
        engine::docker().await?;
        let image = postgres_image();
        // fsync off: these are throw-away databases. Benchmarks that need durability
        // start their own server (`durable`).
        let mut settings = vec![
            "-c".to_owned(),
            format!("fsync={}", if durable { "on" } else { "off" }),
            "-c".to_owned(),
            "max_connections=500".to_owned(),
        ];
        let mut request = Postgres::default()
            .with_name(image.name.clone())
            .with_tag(image.tag.clone())
            .with_startup_timeout(STARTUP_TIMEOUT);
        match tls {
            None => request = request.with_cmd(settings),
            Some(pem) => {
                // The entrypoint runs any other command as it is: this one writes the key
                // where only the server's user can read it, then starts the server.
                settings.extend(
                    [
                        "ssl=on",
                        "ssl_cert_file=/tmp/tls/server.pem",
                        "ssl_key_file=/tmp/tls/server.key",
                    ]
                    .into_iter()
                    .flat_map(|s| ["-c".to_owned(), s.to_owned()]),
                );
                let script = format!(
                    "set -e; install -d -o postgres -m 700 /tmp/tls; \
                     printf '%s' \"$TLS_CERTIFICATE\" > /tmp/tls/server.pem; \
                     printf '%s' \"$TLS_KEY\" > /tmp/tls/server.key; \
                     chown postgres /tmp/tls/server.pem /tmp/tls/server.key; \
                     chmod 600 /tmp/tls/server.key; \
                     exec docker-entrypoint.sh postgres {}",
                    settings.join(" ")
                );
                request = request
                    .with_cmd(["bash".to_owned(), "-c".to_owned(), script])
                    .with_env_var("TLS_CERTIFICATE", pem.certificate.clone())
                    .with_env_var("TLS_KEY", pem.key.clone());
            }
        }
        let request = bind_loopback(labelled(request), &[(5432, port)]);
        let container = request.start().await.map_err(|source| Error::Start {
            what: "PostgreSQL".into(),
            image: image.to_string(),
            source,
        })?;
        let port = container.get_host_port_ipv4(5432).await?;
        let admin = PgConnectOptions::new()
            .host("127.0.0.1")
            .port(port)
            .username(USER)
            .password(PASSWORD)
            .database("postgres");
        wait_until_accepting(&admin).await?;
        Ok(Self {
            admin,
            _container: Some(Arc::new(container)),
        })
    }

    /// A connection URL for `database` on this server.
    pub fn url_for(&self, database: &str) -> String {
        self.admin
            .clone()
            .database(database)
            .to_url_lossy()
            .to_string()
    }

    /// Creates an empty database that only the calling test uses.
    pub async fn fresh_database(&self) -> Result<TestDatabase> {
        // Names are identifiers: letters, digits and underscores only, so quoting is safe.
        let name = names::unique_name("test").replace('-', "_");
        let mut admin = self.admin_connection().await?;
        sqlx::query(&format!(r#"CREATE DATABASE "{name}""#))
            .execute(&mut admin)
            .await?;
        admin.close().await?;
        let options = self.admin.clone().database(&name);
        let pool = PgPoolOptions::new()
            .max_connections(10)
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect_with(options)
            .await?;
        Ok(TestDatabase {
            url: self.url_for(&name),
            name,
            pool,
            admin: Some(self.admin.clone()),
        })
    }

    async fn admin_connection(&self) -> Result<PgConnection> {
        Ok(tokio::time::timeout(CONNECT_TIMEOUT, self.admin.connect())
            .await
            .map_err(|_| Error::Timeout {
                what: "connecting to PostgreSQL".into(),
                after: CONNECT_TIMEOUT,
            })??)
    }
}

/// A database of its own for one test, removed when dropped.
pub struct TestDatabase {
    /// The database's name (also in [`Self::url`]).
    pub name: String,
    /// A URL a service under test can be configured with.
    pub url: String,
    pool: PgPool,
    /// To drop the database afterwards; `None` for a shared handle, which leaves that to
    /// the owner.
    admin: Option<PgConnectOptions>,
}

impl TestDatabase {
    /// A pool on this database for the test's own queries.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Another handle on the same database (for several instances of a service on one
    /// database); the database is removed when the original is dropped, not this one.
    pub fn shared(&self) -> TestDatabase {
        TestDatabase {
            name: self.name.clone(),
            url: self.url.clone(),
            pool: self.pool.clone(),
            admin: None,
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let Some(admin) = self.admin.take() else {
            return;
        };
        let name = std::mem::take(&mut self.name);
        spawn_detached(async move {
            // FORCE ends this test's connections, wherever its pool lives.
            if let Ok(mut connection) = admin.connect().await {
                let drop = format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#);
                let _ = sqlx::query(&drop).execute(&mut connection).await;
            }
        });
    }
}

async fn wait_until_accepting(options: &PgConnectOptions) -> Result<()> {
    let started = Instant::now();
    loop {
        let attempt = tokio::time::timeout(CONNECT_TIMEOUT, options.connect()).await;
        let last = match attempt {
            Ok(Ok(connection)) => {
                let _ = connection.close().await;
                return Ok(());
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {CONNECT_TIMEOUT:?}"),
        };
        if started.elapsed() > STARTUP_TIMEOUT {
            return Err(Error::NotReady {
                what: format!(
                    "PostgreSQL at {}:{}",
                    options.get_host(),
                    options.get_port()
                ),
                waited: started.elapsed(),
                last,
            });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
