use std::time::Duration;

/// Everything that can go wrong while providing a server to a test.
///
/// `Debug` prints the message and its causes, so `.expect()` in a test shows the
/// readable one-line reason rather than a struct dump.
#[derive(thiserror::Error)]
pub enum Error {
    /// The one-line message a user sees when containers cannot run at all.
    #[error(
        "no container engine answered at {host} ({source_of_host}): {reason}. \
         Start Docker, or Podman's Docker API (`just engine`), or set OP_DATABASE_URL and \
         OP_KAFKA_BOOTSTRAP to use a PostgreSQL and a Kafka you run yourself (external mode)"
    )]
    NoEngine {
        host: String,
        source_of_host: &'static str,
        reason: String,
    },

    #[error("could not start the {what} container from image {image}: {source}")]
    Start {
        what: String,
        image: String,
        #[source]
        source: testcontainers::TestcontainersError,
    },

    #[error("container engine: {0}")]
    Container(#[from] testcontainers::TestcontainersError),

    #[error("container engine API: {0}")]
    EngineApi(#[from] bollard::errors::Error),

    #[error("{what} was not ready after {waited:?}: {last}")]
    NotReady {
        what: String,
        waited: Duration,
        last: String,
    },

    #[error("{0}")]
    Unsupported(String),

    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),

    #[error("kafka admin: {what}: {code}")]
    KafkaAdmin {
        what: String,
        code: rdkafka::types::RDKafkaErrorCode,
    },

    #[error("postgres: {0}")]
    Postgres(#[from] sqlx::Error),

    #[error("{what} timed out after {after:?}")]
    Timeout { what: String, after: Duration },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Whether starting the same thing afresh, on new ports, may well succeed: it did not
    /// get ready in time, or its host port was taken between choosing and binding it.
    pub(crate) fn is_worth_a_fresh_start(&self) -> bool {
        match self {
            Error::NotReady { .. } => true,
            Error::Start { source, .. } => source.to_string().contains("address already in use"),
            _ => false,
        }
    }
}

impl std::fmt::Debug for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self}")?;
        let mut source = std::error::Error::source(self);
        while let Some(cause) = source {
            write!(f, "; caused by: {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}
