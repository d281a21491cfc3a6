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

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{Offset, TopicPartitionList};

use crate::reader::Message;
use crate::{Error, Options};

/// How often stored offsets are committed.
const COMMIT_INTERVAL_MS: &str = "200";

/// A member of consumer group `group` subscribed to `topics`.
pub struct GroupConsumer {
    consumer: StreamConsumer,
    group: String,
    last_error_logged: std::sync::Mutex<Option<Instant>>,
}

impl GroupConsumer {
    pub fn subscribe(options: &Options, group: &str, topics: &[&str]) -> Result<Self, Error> {
        options.validate()?;
        let mut config = options.consumer_config(group);
        config
            .set("enable.auto.commit", "true")
            .set("enable.auto.offset.store", "false")
            .set("auto.commit.interval.ms", COMMIT_INTERVAL_MS)
            .set("partition.assignment.strategy", "cooperative-sticky");
        let consumer: StreamConsumer = config
            .create()
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
            match self.consumer.recv().await {
                Ok(message) => return Message::from_borrowed(&message),
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

    /// Commit the stored offsets now (before leaving the group).
    pub fn commit(&self) {
        let _ = self
            .consumer
            .commit_consumer_state(rdkafka::consumer::CommitMode::Sync);
    }
}
