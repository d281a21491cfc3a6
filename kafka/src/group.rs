//! A consumer in a consumer group that commits what its owner says is done: eventing
//! subscriptions (a journal or a topic turned into commands) and projections.
//!
//! * `read_committed`: records of aborted transactions never come out.
//! * **At least once, in order per partition.** The owner handles a partition's records in
//!   order and calls [`GroupConsumer::done`] for each once its effect is complete; the offset
//!   after it is stored and committed with the next periodic commit (and when partitions are
//!   revoked), so a restart or a rebalance resumes after the last record done — a record may
//!   come again, never be skipped. What handles records makes the repeat harmless
//!   (idempotency keys, idempotent writes).
//! * Partitions are spread over the group's members by Kafka (cooperative-sticky): scale by
//!   adding members. Its progress is visible to Kafka's own consumer-group tools.

use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};

use crate::reader::Message;
use crate::{Error, Options};

/// How often stored offsets are committed.
const COMMIT_INTERVAL_MS: &str = "200";

/// The consumer's context: librdkafka's errors logged as warnings, except the ends of
/// partitions (events [`GroupConsumer::next_event`] hands out, not errors).
struct Quiet;

impl ClientContext for Quiet {
    fn error(&self, error: KafkaError, reason: &str) {
        if !matches!(error, KafkaError::PartitionEOF(_)) {
            tracing::warn!(error = %error, reason, "librdkafka");
        }
    }
}

impl ConsumerContext for Quiet {}

/// A member of consumer group `group` subscribed to `topics`.
pub struct GroupConsumer {
    consumer: StreamConsumer<Quiet>,
    group: String,
    last_error_logged: std::sync::Mutex<Option<Instant>>,
}

/// What [`GroupConsumer::next_event`] gives.
#[derive(Debug)]
pub enum Event {
    Record(Message),
    /// The member read partition `partition` to its end (as of now).
    End {
        partition: i32,
    },
}

impl GroupConsumer {
    pub fn subscribe(options: &Options, group: &str, topics: &[&str]) -> Result<Self, Error> {
        Self::create(options, group, topics, false)
    }

    /// As [`GroupConsumer::subscribe`], and [`GroupConsumer::next_event`] also says when a
    /// partition is read to its end.
    pub fn subscribe_with_ends(
        options: &Options,
        group: &str,
        topics: &[&str],
    ) -> Result<Self, Error> {
        Self::create(options, group, topics, true)
    }

    fn create(options: &Options, group: &str, topics: &[&str], ends: bool) -> Result<Self, Error> {
        options.validate()?;
        let mut config = options.consumer_config(group);
        if ends {
            config.set("enable.partition.eof", "true");
        }
        config
            .set("enable.auto.commit", "true")
            .set("enable.auto.offset.store", "false")
            .set("auto.commit.interval.ms", COMMIT_INTERVAL_MS)
            .set("partition.assignment.strategy", "cooperative-sticky");
        let consumer: StreamConsumer<Quiet> = config
            .create_with_context(Quiet)
            .map_err(|e| Error::kafka(format!("creating a member of group {group}"), e))?;
        consumer
            .subscribe(topics)
            .map_err(|e| Error::kafka(format!("subscribing group {group} to {topics:?}"), e))?;
        Ok(Self {
            consumer,
            group: group.to_string(),
            last_error_logged: std::sync::Mutex::new(None),
        })
    }

    pub fn group(&self) -> &str {
        &self.group
    }

    /// The next record. Transient consumer errors (brokers away; librdkafka reconnects by
    /// itself) are logged at most once per 5 s and skipped.
    pub async fn next(&self) -> Message {
        loop {
            if let Event::Record(message) = self.next_event().await {
                return message;
            }
        }
    }

    /// The next record, or the end of a partition (only with
    /// [`GroupConsumer::subscribe_with_ends`]). Errors as for [`GroupConsumer::next`].
    pub async fn next_event(&self) -> Event {
        loop {
            match self.consumer.recv().await {
                Ok(message) => return Event::Record(Message::from_borrowed(&message)),
                Err(KafkaError::PartitionEOF(partition)) => {
                    return Event::End { partition };
                }
                Err(e) => {
                    let log = {
                        let mut last = self
                            .last_error_logged
                            .lock()
                            .unwrap_or_else(|e| e.into_inner());
                        let log = last.is_none_or(|at| at.elapsed() >= Duration::from_secs(5));
                        if log {
                            *last = Some(Instant::now());
                        }
                        log
                    };
                    if log {
                        tracing::warn!(group = %self.group, error = %e, "consuming failed; librdkafka retries");
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }

    /// The record at `topic`/`partition`/`offset` is done (and every earlier one of that
    /// partition): the group resumes after it. Fails for a partition this member no longer has.
    pub fn done(&self, topic: &str, partition: i32, offset: i64) -> Result<(), Error> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, partition, Offset::Offset(offset + 1))
            .map_err(|e| Error::kafka("building the offset", e))?;
        self.consumer
            .store_offsets(&tpl)
            .map_err(|e| Error::kafka(format!("storing the offset of {topic}/{partition}"), e))
    }

    /// Everything of `topic`/`partition` before `next` is done: the group resumes at `next`.
    pub fn done_before(&self, topic: &str, partition: i32, next: i64) -> Result<(), Error> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, partition, Offset::Offset(next))
            .map_err(|e| Error::kafka("building the offset", e))?;
        self.consumer
            .store_offsets(&tpl)
            .map_err(|e| Error::kafka(format!("storing the offset of {topic}/{partition}"), e))
    }

    /// The offset this member reads next in `topic`/`partition` (past records it skipped:
    /// transaction markers, aborted records), if it has one.
    pub fn position(&self, topic: &str, partition: i32) -> Option<i64> {
        let positions = self.consumer.position().ok()?;
        match positions.find_partition(topic, partition)?.offset() {
            Offset::Offset(offset) => Some(offset),
            _ => None,
        }
    }

    /// The end of `topic`/`partition` for this member: its last stable offset (read_committed),
    /// asked of the broker (blocks up to `timeout`).
    pub fn end_offset(&self, topic: &str, partition: i32, timeout: Duration) -> Result<i64, Error> {
        let (_, high) = self
            .consumer
            .fetch_watermarks(topic, partition, timeout)
            .map_err(|e| Error::kafka(format!("reading the end of {topic}/{partition}"), e))?;
        Ok(high)
    }

    /// Commit the stored offsets now (before leaving the group).
    pub fn commit(&self) {
        let _ = self
            .consumer
            .commit_consumer_state(rdkafka::consumer::CommitMode::Sync);
    }
}
