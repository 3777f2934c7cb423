//! What a database error means for a consumer's batch: an outage to wait out, or a
//! refusal that will recur however often the batch is tried.

use consumer::{class, BatchError, Failure};

/// `sqlx::Error` as the runner needs it. Refused (pinned to the messages that cause it
/// and dead-lettered): a value the database rejects — SQLSTATE class 22 (data
/// exception), 23 (integrity constraint violation) or 54 (program limit exceeded), or a
/// value that cannot even be encoded. Everything else — lost connections, a server
/// shutting down, a pool that timed out, serialization failures — is an outage.
pub fn batch_error(store: &str, error: sqlx::Error) -> BatchError {
    match refusal_class(&error) {
        Some(class) => BatchError::Refused(Failure::new(class, format!("{store}: {error}"))),
        None => BatchError::Outage(format!("{store}: {error}")),
    }
}

/// The error class of a refusal, or `None` for an outage.
fn refusal_class(error: &sqlx::Error) -> Option<&'static str> {
    match error {
        sqlx::Error::Database(e) => match e.code().as_deref().map(|c| c.get(..2)) {
            Some(Some("22")) => Some(class::DATABASE_DATA_EXCEPTION),
            Some(Some("23")) => Some(class::DATABASE_INTEGRITY_VIOLATION),
            Some(Some("54")) => Some(class::DATABASE_LIMIT_EXCEEDED),
            _ => None,
        },
        sqlx::Error::Encode(_) => Some(class::DATABASE_UNENCODABLE),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lost_connections_and_timeouts_are_outages() {
        assert!(matches!(
            batch_error("orders", sqlx::Error::PoolTimedOut),
            BatchError::Outage(_)
        ));
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        assert!(matches!(
            batch_error("orders", sqlx::Error::Io(io)),
            BatchError::Outage(_)
        ));
        let encode = sqlx::Error::Encode("bad".into());
        assert_eq!(
            batch_error("orders", encode),
            BatchError::Refused(Failure::new(
                "database.unencodable",
                "orders: error occurred while encoding a value: bad"
            ))
        );
    }
}
