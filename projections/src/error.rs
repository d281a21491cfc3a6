//! The projector's errors.

/// What can stop the projector.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Kafka(#[from] statehouse_kafka::Error),
    #[error(transparent)]
    Store(#[from] statehouse_store::Error),
    #[error("the projection handler at {address}: {reason}")]
    Handler { address: String, reason: String },
    #[error("binding {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("the journal topic {0} does not exist (no processor of the service has started)")]
    NoJournal(String),
    #[error("shutting down")]
    ShuttingDown,
}
