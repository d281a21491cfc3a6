//! Read a partition from an offset to its current end — with `read_committed` by default, so
//! records of aborted or fenced transactions are never returned. Used by recovery, the
//! reliability checkers and tests.

use std::time::{Duration, Instant};

use bytes::Bytes;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::{Message as _, Offset, TopicPartitionList};

use crate::context::Quiet;
use crate::{Error, Options};

/// Which records a read may return.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    /// Only records of committed transactions (and non-transactional ones). The default.
    ReadCommitted,
    /// Every record written, including aborted ones. Only for checkers that must prove a record
    /// exists in the log although no committed reader can see it.
    ReadUncommitted,
}

/// A record read from Kafka.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Bytes>,
    /// `None` for a tombstone.
    pub value: Option<Bytes>,
    pub headers: Vec<(String, Bytes)>,
    /// Record timestamp, ms since the epoch, if the record has one.
    pub timestamp_ms: Option<i64>,
}

impl Message {
    pub(crate) fn from_borrowed(m: &BorrowedMessage<'_>) -> Self {
        let headers = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| {
                        (
                            h.key.to_string(),
                            Bytes::copy_from_slice(h.value.unwrap_or_default()),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        Self {
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(Bytes::copy_from_slice),
            value: m.payload().map(Bytes::copy_from_slice),
            headers,
            timestamp_ms: m.timestamp().to_millis(),
        }
    }

    /// The value of the first header named `key`.
    pub fn header(&self, key: &str) -> Option<&Bytes> {
        self.headers.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
}

/// Read `topic`/`partition` from `from` up to its end (the last stable offset for
/// `ReadCommitted`; at the latest, the high watermark the partition had when the read started).
/// Gives up when the read makes no progress for `stall` — nothing new read and the end not
/// reached — so a long partition may take as long as it needs, but a read that
/// is stuck (a broker that does not answer, a partition without a leader, a transaction that
/// keeps the last stable offset back) fails instead of hanging; the error names the position
/// and the partition's offsets.
pub async fn read_to_end(
    options: &Options,
    topic: &str,
    partition: u32,
    from: i64,
    isolation: Isolation,
    stall: Duration,
) -> Result<Vec<Message>, Error> {
    let mut config =
        options.consumer_config(&format!("{}reader-{}", options.topic_prefix, uuid_like()));
    config.set("enable.partition.eof", "true");
    if isolation == Isolation::ReadUncommitted {
        config.set("isolation.level", "read_uncommitted");
    }
    let consumer: BaseConsumer<Quiet> = config
        .create_with_context(Quiet)
        .map_err(|e| Error::kafka("creating a reader", e))?;
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&topic, partition as i32, Offset::Offset(from))
            .map_err(|e| Error::kafka("building the assignment", e))?;
        consumer
            .assign(&tpl)
            .map_err(|e| Error::kafka(format!("assigning {topic}/{partition}"), e))?;
        // A partition written all the time (the CRDT topic's heartbeats) may never report its
        // end: stop at the high watermark it had when the read started, if not earlier.
        let end_at_start = consumer
            .fetch_watermarks(&topic, partition as i32, Duration::from_secs(10))
            .map(|(_, high)| high)
            .ok();
        if end_at_start.is_some_and(|end| end <= from) {
            return Ok(Vec::new());
        }
        let mut progress = Instant::now();
        let mut warned = false;
        let mut out = Vec::new();
        loop {
            let quiet = progress.elapsed();
            if quiet > stall || (!warned && quiet > stall / 4) {
                let next = out.last().map_or(from, |m: &Message| m.offset + 1);
                let marks = consumer
                    .fetch_watermarks(&topic, partition as i32, Duration::from_secs(2))
                    .map_or_else(|e| format!("unknown ({e})"), |(lo, hi)| format!("{lo}..{hi}"));
                if quiet > stall {
                    return Err(Error::kafka(
                        format!(
                            "reading {topic}/{partition} to its end: no progress for {stall:?} (next offset {next}, the partition holds {marks}, {isolation:?})"
                        ),
                        KafkaError::Global(rdkafka::types::RDKafkaErrorCode::OperationTimedOut),
                    ));
                }
                tracing::warn!(topic, partition, next, offsets = marks, ?isolation, waited = ?quiet, "reading a partition to its end makes no progress");
                warned = true;
            }
            match consumer.poll(Duration::from_millis(200)) {
                None => continue,
                Some(Ok(message)) => {
                    let offset = message.offset();
                    out.push(Message::from_borrowed(&message));
                    progress = Instant::now();
                    if end_at_start.is_some_and(|end| offset + 1 >= end) {
                        return Ok(out);
                    }
                }
                Some(Err(KafkaError::PartitionEOF(_))) => return Ok(out),
                Some(Err(e)) => {
                    return Err(Error::kafka(format!("reading {topic}/{partition}"), e));
                }
            }
        }
    })
    .await
    .expect("reader task panicked")
}

/// The ends of `topic`/`partition`: `(last stable offset, high watermark)`. The first is where
/// `read_committed` readers stop; when it is below the second, a transaction is open there.
pub async fn end_offsets(
    options: &Options,
    topic: &str,
    partition: u32,
    timeout: Duration,
) -> Result<(i64, i64), Error> {
    let mut ends = [0i64; 2];
    for (end, isolation) in ends.iter_mut().zip(["read_committed", "read_uncommitted"]) {
        let mut config =
            options.consumer_config(&format!("{}ends-{}", options.topic_prefix, uuid_like()));
        config.set("isolation.level", isolation);
        let consumer: BaseConsumer = config
            .create()
            .map_err(|e| Error::kafka("creating a reader", e))?;
        let topic = topic.to_string();
        *end = tokio::task::spawn_blocking(move || {
            consumer
                .fetch_watermarks(&topic, partition as i32, timeout)
                .map(|(_, high)| high)
                .map_err(|e| Error::kafka(format!("reading the end of {topic}/{partition}"), e))
        })
        .await
        .expect("watermark task panicked")?;
    }
    Ok((ends[0], ends[1]))
}

fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "{}-{nanos}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Follow partitions from given offsets, forever (until `shutdown`): every record, as it
/// arrives, with its topic (`read_committed`). For compacted registry topics (services,
/// routing) that every reader rebuilds from the beginning; never commits offsets. Transient
/// consumer errors are logged and the read goes on (librdkafka reconnects by itself).
pub fn follow(
    options: &Options,
    partitions: &[(&str, u32, i64)],
    shutdown: tokio_util::sync::CancellationToken,
) -> Result<tokio::sync::mpsc::Receiver<(std::sync::Arc<str>, Message)>, Error> {
    use rdkafka::consumer::StreamConsumer;
    let config =
        options.consumer_config(&format!("{}follower-{}", options.topic_prefix, uuid_like()));
    let consumer: StreamConsumer<Quiet> = config
        .create_with_context(Quiet)
        .map_err(|e| Error::kafka("creating a follower", e))?;
    let mut tpl = TopicPartitionList::new();
    let mut topics: Vec<std::sync::Arc<str>> = Vec::new();
    for &(topic, partition, from) in partitions {
        tpl.add_partition_offset(topic, partition as i32, Offset::Offset(from))
            .map_err(|e| Error::kafka("building the assignment", e))?;
        if !topics.iter().any(|t| &**t == topic) {
            topics.push(std::sync::Arc::from(topic));
        }
    }
    consumer
        .assign(&tpl)
        .map_err(|e| Error::kafka("assigning the followed partitions", e))?;
    let (tx, rx) = tokio::sync::mpsc::channel(1024);
    tokio::spawn(async move {
        // librdkafka queues an error event per failed connection attempt while the brokers are
        // away (hundreds in a long outage) and reconnects by itself: take them quickly (a
        // pause per event kept followers minutes behind after a broker bounce) and log one per
        // 5 s.
        let mut last_logged: Option<Instant> = None;
        let mut suppressed = 0u64;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                message = consumer.recv() => match message {
                    Ok(m) => {
                        let topic = topics
                            .iter()
                            .find(|t| ***t == *m.topic())
                            .cloned()
                            .unwrap_or_else(|| std::sync::Arc::from(m.topic()));
                        if tx.send((topic, Message::from_borrowed(&m))).await.is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        if last_logged.is_none_or(|at| at.elapsed() >= Duration::from_secs(5)) {
                            tracing::warn!(error = %e, suppressed, "following topics failed; librdkafka retries");
                            last_logged = Some(Instant::now());
                            suppressed = 0;
                        } else {
                            suppressed += 1;
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                },
            }
        }
    });
    Ok(rx)
}
