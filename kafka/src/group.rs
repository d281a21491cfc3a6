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
//! * **Lanes** ([`GroupConsumer::dispatch`]): each partition's records go to a handler of
//!   their own, in order, so partitions proceed side by side. A lane is bounded by flow
//!   control, not by blocking the dispatcher: past [`LANE_HIGH`] records waiting, the partition
//!   is paused in the consumer, and the handler resumes it once it drained to [`LANE_LOW`]. A
//!   slow or stuck partition (a poison record) holds back only itself, and the consumer keeps
//!   polling — so the member stays in its group.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};

use crate::context::Quiet;
use crate::reader::Message;
use crate::{Error, Options};

/// How often stored offsets are committed.
const COMMIT_INTERVAL_MS: &str = "200";

/// Records waiting in a lane at which its partition is paused.
pub const LANE_HIGH: usize = 4_096;
/// Records waiting in a lane at which its paused partition is resumed.
pub const LANE_LOW: usize = 1_024;

/// What a lane carries.
#[derive(Debug)]
pub enum Item {
    Record(Message),
    /// The partition was read to its end: the consumer's position then (past transaction
    /// markers and aborted records). Taken when the end is seen; later it would count records
    /// fetched since and not handled yet.
    End {
        position: Option<i64>,
    },
}

/// One partition's records for its handler, in order (see the module docs).
pub struct Lane {
    pub partition: i32,
    rx: mpsc::UnboundedReceiver<Item>,
    flow: Arc<Flow>,
}

/// A lane's flow control, shared by the dispatcher and the handler.
struct Flow {
    consumer: Arc<GroupConsumer>,
    topic: String,
    partition: i32,
    queued: AtomicUsize,
    paused: AtomicBool,
}

impl Lane {
    /// The partition's next item (`None`: the dispatcher stopped).
    pub async fn recv(&mut self) -> Option<Item> {
        let item = self.rx.recv().await?;
        let waiting = self.flow.queued.fetch_sub(1, Ordering::AcqRel) - 1;
        if waiting <= LANE_LOW && self.flow.paused.swap(false, Ordering::AcqRel) {
            self.flow
                .consumer
                .set_paused(&self.flow.topic, self.flow.partition, false);
        }
        Some(item)
    }
}

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

    /// Hand every record of `topic` to the lane of its partition until `stop`; `open` gets
    /// each lane when its partition first shows up (and spawns its handler). The lanes end when
    /// this returns; commit with [`GroupConsumer::commit`] once their handlers are done.
    pub async fn dispatch(
        self: &Arc<Self>,
        topic: &str,
        stop: &CancellationToken,
        mut open: impl FnMut(Lane),
    ) {
        let mut lanes: HashMap<i32, (mpsc::UnboundedSender<Item>, Arc<Flow>)> = HashMap::new();
        loop {
            let event = tokio::select! {
                _ = stop.cancelled() => break,
                event = self.next_event() => event,
            };
            let (partition, item) = match event {
                Event::Record(message) => (message.partition, Item::Record(message)),
                Event::End { partition } => (
                    partition,
                    Item::End {
                        position: self.position(topic, partition),
                    },
                ),
            };
            let (tx, flow) = lanes.entry(partition).or_insert_with(|| {
                let (tx, rx) = mpsc::unbounded_channel();
                let flow = Arc::new(Flow {
                    consumer: Arc::clone(self),
                    topic: topic.to_string(),
                    partition,
                    queued: AtomicUsize::new(0),
                    paused: AtomicBool::new(false),
                });
                open(Lane {
                    partition,
                    rx,
                    flow: Arc::clone(&flow),
                });
                (tx, flow)
            });
            let waiting = flow.queued.fetch_add(1, Ordering::AcqRel) + 1;
            if tx.send(item).is_err() {
                // Its handler ended (stopping): nothing more goes to it.
                continue;
            }
            if waiting >= LANE_HIGH && !flow.paused.swap(true, Ordering::AcqRel) {
                self.set_paused(topic, partition, true);
            }
        }
    }

    /// Pause or resume fetching `topic`/`partition` (a partition this member no longer has is
    /// left alone).
    fn set_paused(&self, topic: &str, partition: i32, paused: bool) {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(topic, partition);
        let result = if paused {
            self.consumer.pause(&tpl)
        } else {
            self.consumer.resume(&tpl)
        };
        if let Err(e) = result {
            tracing::debug!(group = %self.group, topic, partition, paused, error = %e, "pausing or resuming a partition failed");
        }
    }

    /// The record at `topic`/`partition`/`offset` is done (and every earlier one of that
    /// partition): the group resumes after it. Fails for a partition this member no longer has.
    pub fn done(&self, topic: &str, partition: i32, offset: i64) -> Result<(), Error> {
        self.done_before(topic, partition, offset + 1)
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
