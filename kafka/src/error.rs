use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// Errors of the Kafka layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Another producer with the same transactional id took over: this writer can never commit
    /// again. The partition now belongs to someone else.
    #[error("partition writer {transactional_id} was fenced by a newer owner: {reason}")]
    Fenced {
        transactional_id: String,
        reason: String,
    },
    /// The transaction was aborted; none of its records are visible. Safe to retry.
    #[error("transaction aborted, nothing was committed: {reason}")]
    Aborted { reason: String },
    /// The outcome of the commit is unknown (e.g. a timeout). The writer stopped; the owner
    /// recovers the partition (which settles the transaction) before writing again. A retry
    /// must carry the same idempotency key.
    #[error("transaction outcome unknown: {reason}")]
    Indefinite { reason: String },
    /// The writer stopped (shutdown, revoked partition, or an earlier unknown outcome) before the
    /// records were committed.
    #[error("partition writer {transactional_id} is closed: {reason}")]
    Closed {
        transactional_id: String,
        reason: String,
    },
    /// A batch larger than the writer accepts.
    #[error(
        "append of {records} records / {bytes} bytes exceeds the writer limits ({max_records} records / {max_bytes} bytes)"
    )]
    TooLarge {
        records: usize,
        bytes: usize,
        max_records: usize,
        max_bytes: usize,
    },
    /// One record larger than `kafka.max-record-bytes`: refused before it reaches the writer's
    /// transaction, so no other append is affected. Retrying cannot help.
    #[error(
        "a record of {bytes} bytes for {topic} exceeds the record limit kafka.max-record-bytes ({limit} bytes)"
    )]
    RecordTooLarge {
        topic: String,
        bytes: usize,
        limit: usize,
    },
    #[error(
        "topic {topic} has {actual} partitions, but {expected} are configured; partition counts of a service cannot change"
    )]
    PartitionMismatch {
        topic: String,
        expected: u32,
        actual: u32,
    },
    #[error("topic {topic} has {key}={actual}, but Statehouse requires {expected}")]
    TopicConfigMismatch {
        topic: String,
        key: String,
        expected: String,
        actual: String,
    },
    #[error("invalid Kafka option: {0}")]
    InvalidOption(String),
    #[error("Kafka: {context}: {source}")]
    Kafka {
        context: String,
        #[source]
        source: KafkaError,
    },
}

impl Error {
    pub(crate) fn kafka(context: impl Into<String>, source: KafkaError) -> Self {
        Self::Kafka {
            context: context.into(),
            source,
        }
    }

    /// Whether retrying the same operation (possibly elsewhere) may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Aborted { .. } | Error::Indefinite { .. } | Error::Closed { .. } => true,
            Error::Fenced { .. }
            | Error::TooLarge { .. }
            | Error::RecordTooLarge { .. }
            | Error::PartitionMismatch { .. }
            | Error::TopicConfigMismatch { .. }
            | Error::InvalidOption(_) => false,
            Error::Kafka { source, .. } => is_retriable(source),
        }
    }
}

/// Whether a Kafka error is worth retrying as is.
pub(crate) fn is_retriable(err: &KafkaError) -> bool {
    match err {
        KafkaError::Transaction(e) => e.is_retriable(),
        other => matches!(
            other.rdkafka_error_code(),
            Some(
                RDKafkaErrorCode::OperationTimedOut
                    | RDKafkaErrorCode::RequestTimedOut
                    | RDKafkaErrorCode::BrokerTransportFailure
                    | RDKafkaErrorCode::AllBrokersDown
                    | RDKafkaErrorCode::NotCoordinator
                    | RDKafkaErrorCode::CoordinatorLoadInProgress
                    | RDKafkaErrorCode::CoordinatorNotAvailable
                    | RDKafkaErrorCode::LeaderNotAvailable
                    | RDKafkaErrorCode::NotLeaderForPartition
                    | RDKafkaErrorCode::QueueFull
            )
        ),
    }
}
