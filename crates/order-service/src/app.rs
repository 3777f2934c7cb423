//! Start-up and shutdown: database, migrations, HTTP listener.

use std::future::Future;

use anyhow::Context;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use tokio::net::TcpListener;

use crate::http::{router, AppState};
use crate::{Config, MIGRATOR};

/// A built service, listening but not yet serving.
pub struct Application {
    listener: TcpListener,
    pool: PgPool,
    config: Config,
}

impl Application {
    /// Connects to PostgreSQL, runs the migrations and binds the listener.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(config.db_pool)
            .acquire_timeout(config.db_acquire_timeout())
            .connect(&config.database_url)
            .await
            .context("connecting to PostgreSQL (ORDER_DATABASE_URL)")?;
        MIGRATOR
            .run(&pool)
            .await
            .context("running database migrations")?;
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("listening on {}", config.listen))?;
        Ok(Self {
            listener,
            pool,
            config,
        })
    }

    /// The port actually bound (useful with port 0).
    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Serves until `shutdown` completes, then drains in-flight requests for at most the
    /// configured shutdown timeout.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let app = router(AppState {
            pool: self.pool.clone(),
        });
        let stop = tokio_util::sync::CancellationToken::new();
        let serving = axum::serve(self.listener, app).with_graceful_shutdown({
            let stop = stop.clone();
            async move {
                shutdown.await;
                stop.cancel();
            }
        });
        let limit = self.config.shutdown_timeout();
        tokio::select! {
            served = serving => served.context("serving HTTP")?,
            () = async { stop.cancelled().await; tokio::time::sleep(limit).await } => {
                tracing::warn!(?limit, "in-flight requests did not finish in time");
            }
        }
        self.pool.close().await;
        Ok(())
    }
}
