//! The two ends of partitions, asked of the brokers again and again: the last stable offset
//! (where `read_committed` readers stop) and the high watermark. When the first stays below the
//! second, a transaction is open there; when it stays there long, that transaction hangs and
//! every `read_committed` reader of the partition (takeovers, projections, eventing, journal
//! consumers) is held back (`docs/runbooks.md`, "StatehouseLastStableOffsetStuck").
//!
//! Two long-lived consumers that never fetch, one per isolation level: a watermark query of
//! the `read_committed` one answers the last stable offset, of the `read_uncommitted` one the
//! high watermark (one `ListOffsets` request each, on connections kept open). Cheaper than
//! librdkafka's statistics, which carry these offsets only for partitions a consumer fetches.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::{Error, Options};

/// See the module docs. Blocking calls: use it from a blocking thread.
pub struct Ends {
    committed: BaseConsumer,
    uncommitted: BaseConsumer,
}

impl Ends {
    pub fn new(options: &Options) -> Result<Self, Error> {
        options.validate()?;
        let consumer = |isolation: &str| -> Result<BaseConsumer, Error> {
            let mut config = options.consumer_config(&format!(
                "{}ends-{}-{isolation}",
                options.topic_prefix,
                std::process::id()
            ));
            config.set("isolation.level", isolation);
            config
                .create()
                .map_err(|e| Error::kafka("creating the offsets watcher", e))
        };
        Ok(Self {
            committed: consumer("read_committed")?,
            uncommitted: consumer("read_uncommitted")?,
        })
    }

    /// `(last stable offset, high watermark)` of `topic`/`partition` (blocks up to twice
    /// `timeout`).
    pub fn get(&self, topic: &str, partition: u32, timeout: Duration) -> Result<(i64, i64), Error> {
        let end = |consumer: &BaseConsumer| {
            consumer
                .fetch_watermarks(topic, partition as i32, timeout)
                .map(|(_, high)| high)
                .map_err(|e| Error::kafka(format!("reading the ends of {topic}/{partition}"), e))
        };
        Ok((end(&self.committed)?, end(&self.uncommitted)?))
    }
}
