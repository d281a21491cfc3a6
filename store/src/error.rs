/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot connect to Cassandra at {contact_points}: {reason}")]
    Connect {
        contact_points: String,
        reason: String,
    },
    #[error("Cassandra query failed ({context}): {reason}")]
    Query { context: String, reason: String },
    #[error("unexpected data in Cassandra ({context}): {reason}")]
    Data { context: String, reason: String },
    #[error(
        "keyspace {keyspace} is not migrated (table {table} missing); run `statehouse admin migrate`"
    )]
    NotMigrated { keyspace: String, table: String },
    #[error("invalid Cassandra option: {0}")]
    InvalidOption(String),
}

impl Error {
    pub(crate) fn query(context: impl Into<String>, err: impl std::fmt::Display) -> Self {
        Self::Query {
            context: context.into(),
            reason: err.to_string(),
        }
    }

    pub(crate) fn data(context: impl Into<String>, err: impl std::fmt::Display) -> Self {
        Self::Data {
            context: context.into(),
            reason: err.to_string(),
        }
    }

    /// Whether retrying may succeed (the backup loop retries these with backoff).
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Connect { .. } | Error::Query { .. })
    }
}
