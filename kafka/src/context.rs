//! The client context of consumers that ask for partition ends (`enable.partition.eof`):
//! librdkafka reports each end through the error callback, which rdkafka's default context
//! logs at ERROR ("Global error: PartitionEOF") — a normal condition, every time a follower
//! catches up. Here the ends are dropped (their readers get them as events) and every other
//! librdkafka error is a warning: the operations that fail because of it report the error.

use rdkafka::ClientContext;
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

/// See the module docs.
pub(crate) struct Quiet;

impl ClientContext for Quiet {
    fn error(&self, error: KafkaError, reason: &str) {
        if !is_partition_end(&error) {
            tracing::warn!(error = %error, reason, "librdkafka");
        }
    }
}

impl ConsumerContext for Quiet {}

/// librdkafka hands partition ends to the error callback as a "global" error.
fn is_partition_end(error: &KafkaError) -> bool {
    matches!(
        error,
        KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_partition_ends_are_dropped() {
        assert!(is_partition_end(&KafkaError::PartitionEOF(3)));
        assert!(is_partition_end(&KafkaError::Global(
            RDKafkaErrorCode::PartitionEOF
        )));
        assert!(!is_partition_end(&KafkaError::Global(
            RDKafkaErrorCode::BrokerTransportFailure
        )));
    }
}
