//! What every partition and entity of a processor shares: its service, topics, stores, user
//! function and limits — set once at start, read everywhere (a leaf module).

use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use statehouse_store::Store;
use tokio_util::sync::CancellationToken;

use crate::records::Topics;
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
    pub(crate) backup_interval: Duration,
    /// Active entities of the whole processor.
    pub(crate) active: Arc<AtomicUsize>,
    /// The highest offsets this process's writers saw committed.
    pub(crate) seen_committed: SeenCommitted,
    pub(crate) shutdown: CancellationToken,
}

/// The highest offset of each (topic, partition) this process's writers saw committed (their
/// `commit_transaction` returned OK). Kept across a partition's release and takeover within the
/// process: when Kafka left a transaction open after an unclean broker restart and the takeover
/// aborted it, records up to this offset were committed — this process acknowledged them — and
/// are written again, even above the backup checkpoint (`Partition::take_over`).
#[derive(Debug, Default)]
pub(crate) struct SeenCommitted(Mutex<HashMap<(Arc<str>, u32), i64>>);

impl SeenCommitted {
    /// A transaction committed records of `topic`'s `partition` up to `offset`.
    pub(crate) fn note(&self, topic: &Arc<str>, partition: u32, offset: i64) {
        let mut seen = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let entry = seen.entry((Arc::clone(topic), partition)).or_insert(offset);
        *entry = (*entry).max(offset);
    }

    /// The highest offset of `topic`'s `partition` seen committed, if any.
    pub(crate) fn get(&self, topic: &Arc<str>, partition: u32) -> Option<i64> {
        let seen = self.0.lock().unwrap_or_else(|e| e.into_inner());
        seen.get(&(Arc::clone(topic), partition)).copied()
    }
}
