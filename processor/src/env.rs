//! What every partition and entity of a processor shares: its service, topics, stores, user
//! function and limits — set once at start, read everywhere (a leaf module).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::time::Duration;

use statehouse_store::Store;
use tokio_util::sync::CancellationToken;

use crate::records::{Topic, Topics};
use crate::user_function::UserFunction;

pub(crate) struct Env {
    pub(crate) kafka: statehouse_kafka::Options,
    pub(crate) service: statehouse_core::ServiceName,
    pub(crate) service_topics: statehouse_core::Topics,
    /// The topics partitions write, as the writer names them.
    pub(crate) topics: Topics,
    pub(crate) processor_id: String,
    pub(crate) store: Store,
    /// The ownership lease: owned partitions serve only while it runs (`ARCHITECTURE.md`,
    /// "The ownership lease").
    pub(crate) lease: statehouse_kafka::ownership::Lease,
    pub(crate) uf: UserFunction,
    /// Idle time before passivation when the entity type names none.
    pub(crate) passivation: Duration,
    pub(crate) max_active: usize,
    /// `processor.max-commands-per-entity`: the bound of an entity's mailbox.
    pub(crate) mailbox: usize,
    pub(crate) backup_interval: Duration,
    /// Active entities of the whole processor.
    pub(crate) active: Arc<AtomicUsize>,
    /// The highest offsets this process's writers saw committed.
    pub(crate) seen_committed: SeenCommitted,
    pub(crate) shutdown: CancellationToken,
}

/// The highest offset of each partition of the journal and values topics this process's writers
/// saw committed (their `commit_transaction` returned OK). Kept across a partition's release and
/// takeover within the process: when Kafka left a transaction open after an unclean broker
/// restart and the takeover aborted it, records up to this offset were committed — this process
/// acknowledged them — and are written again, even above the backup checkpoint
/// (`Partition::take_over`). Lock-free: noted once per committed transaction.
#[derive(Debug)]
pub(crate) struct SeenCommitted(Box<[[AtomicI64; 2]]>);

impl SeenCommitted {
    /// Nothing seen yet, for `partitions` partitions.
    pub(crate) fn new(partitions: u32) -> Self {
        Self(
            (0..partitions)
                .map(|_| [AtomicI64::new(-1), AtomicI64::new(-1)])
                .collect(),
        )
    }

    /// A transaction committed records of `topic`'s `partition` up to `offset`.
    pub(crate) fn note(&self, topic: Topic, partition: u32, offset: i64) {
        if let Some(slots) = self.0.get(partition as usize) {
            slots[topic as usize].fetch_max(offset, Ordering::AcqRel);
        }
    }

    /// The highest offset of `topic`'s `partition` seen committed, if any.
    pub(crate) fn get(&self, topic: Topic, partition: u32) -> Option<i64> {
        let seen = self.0.get(partition as usize)?[topic as usize].load(Ordering::Acquire);
        (seen >= 0).then_some(seen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seen_offsets_only_grow_per_topic_and_partition() {
        let seen = SeenCommitted::new(2);
        assert_eq!(seen.get(Topic::Journal, 0), None);
        seen.note(Topic::Journal, 0, 7);
        seen.note(Topic::Journal, 0, 3);
        seen.note(Topic::Values, 1, 0);
        assert_eq!(seen.get(Topic::Journal, 0), Some(7));
        assert_eq!(seen.get(Topic::Values, 0), None);
        assert_eq!(seen.get(Topic::Values, 1), Some(0));
        // A partition beyond the count is ignored, never a panic.
        seen.note(Topic::Journal, 5, 1);
        assert_eq!(seen.get(Topic::Journal, 5), None);
    }
}
