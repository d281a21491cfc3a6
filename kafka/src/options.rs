use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::ClientConfig;
use serde::{Deserialize, Serialize};

use crate::Error;

/// Kafka client options (`[kafka]` in `statehouse.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct Options {
    /// Bootstrap servers, comma separated (`host:port,host:port`).
    pub bootstrap_servers: String,
    /// Prefix of every topic, consumer group and transactional id Statehouse uses.
    pub topic_prefix: String,
    /// Replication factor of the topics `statehouse admin topics create` makes (3 in production).
    pub replication_factor: u16,
    /// `min.insync.replicas` of those topics (2 in production with RF 3); unset = broker default.
    pub min_insync_replicas: Option<u16>,
    /// Retention of the CRDT delta topics, ms (at least twice the CRDT backup interval).
    pub crdt_retention_ms: u64,
    /// `transaction.timeout.ms` of partition writers: a dead owner's open transaction is aborted
    /// by the broker after this long at the latest.
    pub transaction_timeout_ms: u32,
    /// Consumer-group session timeout, ms: how fast a dead processor's partitions move.
    pub session_timeout_ms: u32,
    /// Timeout of blocking client calls (metadata, admin, init/commit/abort), ms.
    pub request_timeout_ms: u32,
    /// Largest record Statehouse writes (key + value + headers), bytes: an event, a value
    /// entity's state, an eventing output. A command whose record is larger is refused with
    /// INVALID_ARGUMENT naming this key before anything reaches the writer. The topics
    /// Statehouse creates allow it (`max.message.bytes`, plus room for the batch framing) and
    /// its producers send it (`message.max.bytes`); existing topics are checked at start.
    /// The default fits Kafka's default `message.max.bytes` (1048588).
    pub max_record_bytes: usize,
    /// The partition writer (group commit).
    pub writer: WriterOptions,
    /// Extra librdkafka properties passed through as they are, e.g. `security.protocol`,
    /// `sasl.mechanism`, `sasl.username`, `sasl.password`, `ssl.ca.location`. Properties that
    /// carry Statehouse's guarantees (idempotence, acks, isolation level, transactional id,
    /// offsets commit) cannot be set here.
    pub librdkafka: BTreeMap<String, String>,
}

/// Group-commit settings of a partition writer (`[kafka.writer]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct WriterOptions {
    /// How long the first record of an idle writer waits for company before its transaction
    /// starts, ms. 0 (the default) starts at once: under load, batches still form, from the
    /// appends that arrive while the previous transaction commits. A few ms trade latency for
    /// larger transactions.
    pub linger_ms: u64,
    /// The linger while the writer is busy, ms: when the previous transaction carried the
    /// appends of more than one caller (commands arrive concurrently), the next one waits this
    /// long for company (at least `linger-ms`). A lone caller never waits for it, so the
    /// latency at low load stays that of `linger-ms`; under load, transactions grow and Kafka's
    /// fixed cost per transaction is shared by more commands (`docs/benchmarks.md`). 0 turns it
    /// off.
    pub busy_linger_ms: u64,
    /// Most records in one transaction.
    pub max_records: usize,
    /// Most payload bytes (keys + values + headers) in one transaction.
    pub max_bytes: usize,
    /// Bound of the writer's queue of appends waiting for a transaction.
    pub queue_capacity: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            bootstrap_servers: "127.0.0.1:9092".into(),
            topic_prefix: statehouse_core::topics::DEFAULT_PREFIX.into(),
            replication_factor: 1,
            min_insync_replicas: None,
            crdt_retention_ms: 7 * 24 * 3600 * 1000,
            transaction_timeout_ms: 30_000,
            session_timeout_ms: 10_000,
            request_timeout_ms: 30_000,
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
            writer: WriterOptions::default(),
            librdkafka: BTreeMap::new(),
        }
    }
}

impl Default for WriterOptions {
    fn default() -> Self {
        Self {
            linger_ms: 0,
            busy_linger_ms: 1,
            max_records: 2_000,
            max_bytes: 4 * 1024 * 1024,
            queue_capacity: 8_192,
        }
    }
}

/// The largest `kafka.max-record-bytes` accepted: librdkafka's ceiling of `message.max.bytes`
/// (1000000000) less the batch overhead, rounded down.
const MAX_RECORD_BYTES_CEILING: usize = 900_000_000;

/// Default of `kafka.max-record-bytes`: within the broker's default `message.max.bytes`
/// (1048588) with room for the framing of a one-record batch, so topics made before the key
/// existed (or by hand with defaults) take every record Statehouse lets through.
pub const DEFAULT_MAX_RECORD_BYTES: usize = 1_000_000;

/// Bytes a record batch adds around its records (batch header, record framing, varints): the
/// topics' `max.message.bytes` and the producers' `message.max.bytes` are this much above
/// `kafka.max-record-bytes`.
pub const BATCH_OVERHEAD_BYTES: usize = 16 * 1024;

/// The smallest `max.message.bytes` an existing topic may have: one record of the limit in a
/// batch of its own fits.
pub(crate) const MIN_TOPIC_SLACK_BYTES: usize = 1024;

/// librdkafka properties that Statehouse sets itself because its guarantees depend on them.
const RESERVED: &[&str] = &[
    "bootstrap.servers",
    "metadata.broker.list",
    "transactional.id",
    "enable.idempotence",
    "acks",
    "request.required.acks",
    "isolation.level",
    "enable.auto.commit",
    "group.id",
    "transaction.timeout.ms",
    "message.max.bytes",
];

impl Options {
    /// Check the options; the error says which value is wrong and why.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |m: String| Err(Error::InvalidOption(m));
        if self.bootstrap_servers.trim().is_empty() {
            return bad("kafka.bootstrap-servers must list at least one host:port".into());
        }
        for server in self.bootstrap_servers.split(',') {
            let server = server.trim();
            match server.rsplit_once(':') {
                Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {}
                _ => {
                    return bad(format!(
                        "kafka.bootstrap-servers entry {server:?} is not host:port"
                    ));
                }
            }
        }
        if self
            .topic_prefix
            .chars()
            .any(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return bad(format!(
                "kafka.topic-prefix {:?} may only contain ASCII letters, digits, '.', '_' and '-'",
                self.topic_prefix
            ));
        }
        if self.replication_factor == 0 {
            return bad("kafka.replication-factor must be at least 1".into());
        }
        if let Some(min) = self.min_insync_replicas
            && (min == 0 || min > self.replication_factor)
        {
            return bad(format!(
                "kafka.min-insync-replicas {min} must be between 1 and the replication factor {}",
                self.replication_factor
            ));
        }
        if !(1_000..=900_000).contains(&self.transaction_timeout_ms) {
            return bad(format!(
                "kafka.transaction-timeout-ms {} must be between 1000 and 900000 (the broker's default transaction.max.timeout.ms)",
                self.transaction_timeout_ms
            ));
        }
        if !(1_000..=300_000).contains(&self.session_timeout_ms) {
            return bad(format!(
                "kafka.session-timeout-ms {} must be between 1000 and 300000",
                self.session_timeout_ms
            ));
        }
        if self.request_timeout_ms < 100 {
            return bad("kafka.request-timeout-ms must be at least 100".into());
        }
        if !(1_024..=MAX_RECORD_BYTES_CEILING).contains(&self.max_record_bytes) {
            return bad(format!(
                "kafka.max-record-bytes {} must be between 1024 and {MAX_RECORD_BYTES_CEILING}",
                self.max_record_bytes
            ));
        }
        let w = &self.writer;
        if w.max_records == 0 || w.max_bytes == 0 || w.queue_capacity == 0 {
            return bad(
                "kafka.writer.max-records, max-bytes and queue-capacity must be positive".into(),
            );
        }
        if w.max_bytes < self.max_record_bytes {
            return bad(format!(
                "kafka.writer.max-bytes {} is below kafka.max-record-bytes {}: a record the limit lets through could never be written",
                w.max_bytes, self.max_record_bytes
            ));
        }
        if w.linger_ms > 1_000 || w.busy_linger_ms > 1_000 {
            return bad(format!(
                "kafka.writer.linger-ms {} or busy-linger-ms {} is above 1000; it delays every reply",
                w.linger_ms, w.busy_linger_ms
            ));
        }
        for key in self.librdkafka.keys() {
            if RESERVED.contains(&key.as_str()) {
                return bad(format!(
                    "kafka.librdkafka.{key:?} is set by Statehouse itself (its guarantees depend on it); use the typed option instead"
                ));
            }
        }
        Ok(())
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(u64::from(self.request_timeout_ms))
    }

    /// The settings every client shares: servers and the passthrough properties.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.bootstrap_servers);
        // Requests are small and latency-bound (a commit is several round trips): Nagle plus
        // delayed ACKs would add up to 40 ms to each. Overridable through `librdkafka`.
        config.set("socket.nagle.disable", "true");
        for (k, v) in &self.librdkafka {
            config.set(k, v);
        }
        config
    }

    /// A transactional, idempotent producer with `acks=all` for one partition writer.
    pub fn transactional_producer_config(&self, transactional_id: &str) -> ClientConfig {
        let mut config = self.client_config();
        config
            .set("transactional.id", transactional_id)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set(
                "transaction.timeout.ms",
                self.transaction_timeout_ms.to_string(),
            )
            .set("linger.ms", "0")
            .set("partitioner", "murmur2_random")
            .set(
                "message.max.bytes",
                self.producer_max_message_bytes().to_string(),
            );
        config
    }

    /// `message.max.bytes` of Statehouse's producers and `max.message.bytes` of the topics it
    /// creates: the record limit plus a batch's framing.
    pub fn producer_max_message_bytes(&self) -> usize {
        self.max_record_bytes + BATCH_OVERHEAD_BYTES
    }

    /// An idempotent (non-transactional) producer, e.g. for CRDT deltas and registry records.
    pub fn idempotent_producer_config(&self) -> ClientConfig {
        let mut config = self.client_config();
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "1")
            .set("partitioner", "murmur2_random")
            .set(
                "message.max.bytes",
                self.producer_max_message_bytes().to_string(),
            );
        config
    }

    /// A consumer that only sees committed records and never commits offsets by itself.
    pub fn consumer_config(&self, group_id: &str) -> ClientConfig {
        let mut config = self.client_config();
        config
            .set("group.id", group_id)
            .set("isolation.level", "read_committed")
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", self.session_timeout_ms.to_string());
        config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_safe() {
        let o = Options::default();
        o.validate().unwrap();
        let p = o.transactional_producer_config("statehouse.cart.p0");
        assert_eq!(p.get("enable.idempotence"), Some("true"));
        assert_eq!(p.get("acks"), Some("all"));
        assert_eq!(p.get("transactional.id"), Some("statehouse.cart.p0"));
        let c = o.consumer_config("g");
        assert_eq!(c.get("isolation.level"), Some("read_committed"));
        assert_eq!(c.get("enable.auto.commit"), Some("false"));
    }

    #[test]
    fn validation_names_the_bad_value() {
        let mut o = Options::default();
        o.librdkafka
            .insert("isolation.level".into(), "read_uncommitted".into());
        let err = o.validate().unwrap_err().to_string();
        assert!(err.contains("isolation.level"), "{err}");

        let o = Options {
            bootstrap_servers: "localhost".into(),
            ..Options::default()
        };
        assert!(o.validate().unwrap_err().to_string().contains("host:port"));

        let o = Options {
            min_insync_replicas: Some(2),
            ..Options::default()
        };
        assert!(o.validate().is_err(), "min ISR above RF must fail");

        let mut o = Options::default();
        o.writer.busy_linger_ms = 1_001;
        let err = o.validate().unwrap_err().to_string();
        assert!(err.contains("busy-linger-ms 1001"), "{err}");

        let mut o = Options {
            max_record_bytes: 8 * 1024 * 1024,
            ..Options::default()
        };
        let err = o.validate().unwrap_err().to_string();
        assert!(
            err.contains("kafka.writer.max-bytes") && err.contains("kafka.max-record-bytes"),
            "{err}"
        );
        o.writer.max_bytes = o.max_record_bytes;
        o.validate().unwrap();
        assert_eq!(
            o.transactional_producer_config("t")
                .get("message.max.bytes"),
            Some(
                (8 * 1024 * 1024 + BATCH_OVERHEAD_BYTES)
                    .to_string()
                    .as_str()
            )
        );

        let mut o = Options::default();
        o.librdkafka.insert("message.max.bytes".into(), "1".into());
        let err = o.validate().unwrap_err().to_string();
        assert!(err.contains("message.max.bytes"), "{err}");

        let mut o = Options::default();
        o.librdkafka
            .insert("security.protocol".into(), "SASL_SSL".into());
        o.validate().unwrap();
        assert_eq!(o.client_config().get("security.protocol"), Some("SASL_SSL"));
    }
}
