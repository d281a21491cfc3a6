//! Why the brokers cannot be reached, in librdkafka's own words.
//!
//! librdkafka reports a failed TLS handshake or a refused SASL login ("SASL authentication
//! error: … invalid credentials …") only as a log line and an error event on the client's main
//! queue; an operation that could not reach a broker fails with a bare `BrokerTransportFailure`
//! or a timeout. An admin client never serves its main queue, so that reason is lost and an
//! operator with a wrong password sees only "transport failure". [`connection_problem`] asks
//! again with a short-lived consumer (whose poll serves the main queue) and returns the first
//! error librdkafka gives, for the caller to add to its message.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer as _, ConsumerContext};
use rdkafka::error::KafkaError;

use crate::Options;

/// Keeps the first error librdkafka reports (error events, and log lines at error level).
#[derive(Default)]
struct Recorder {
    first: Mutex<Option<String>>,
}

impl Recorder {
    fn keep(&self, what: String) {
        let mut first = self.first.lock().unwrap_or_else(|e| e.into_inner());
        first.get_or_insert(what);
    }
}

impl ClientContext for Recorder {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        if matches!(
            level,
            RDKafkaLogLevel::Emerg
                | RDKafkaLogLevel::Alert
                | RDKafkaLogLevel::Critical
                | RDKafkaLogLevel::Error
        ) {
            self.keep(format!("{facility}: {message}"));
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.keep(format!("{error}: {reason}"));
    }
}

impl ConsumerContext for Recorder {}

/// Whether an error (its whole `{:#}` text) is the kind [`connection_problem`] can explain.
pub fn is_unreachable(error_text: &str) -> bool {
    [
        "BrokerTransportFailure",
        "AllBrokersDown",
        "Timed out",
        "timed out",
    ]
    .iter()
    .any(|s| error_text.contains(s))
}

/// The first error librdkafka reports while trying the brokers of `options` for up to `wait`;
/// `None` when it reports none (the brokers answer, or say nothing in time).
pub fn connection_problem(options: &Options, wait: Duration) -> Option<String> {
    let config = options.consumer_config(&format!("{}diagnose", options.topic_prefix));
    let consumer: BaseConsumer<Recorder> = config.create_with_context(Recorder::default()).ok()?;
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        if consumer
            .fetch_metadata(None, Duration::from_millis(200))
            .is_ok()
        {
            return None;
        }
        let _ = consumer.poll(Duration::from_millis(100));
        if let Some(first) = consumer.context().first.lock().ok()?.clone() {
            return Some(first);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_first_error_only() {
        let recorder = Recorder::default();
        recorder.log(RDKafkaLogLevel::Info, "CONNECT", "connecting");
        recorder.log(RDKafkaLogLevel::Error, "FAIL", "SASL authentication error");
        recorder.error(
            KafkaError::Global(rdkafka::types::RDKafkaErrorCode::Authentication),
            "later",
        );
        assert_eq!(
            recorder.first.lock().unwrap().as_deref(),
            Some("FAIL: SASL authentication error")
        );
    }

    #[test]
    fn recognizes_unreachable_brokers() {
        assert!(is_unreachable(
            "Meta data fetch error: BrokerTransportFailure (Local: Broker transport failure)"
        ));
        assert!(!is_unreachable("TopicAuthorizationFailed"));
    }
}
