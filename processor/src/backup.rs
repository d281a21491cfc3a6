//! The asynchronous backup of one partition to Cassandra (DESIGN §5): committed events leave
//! the in-memory tail in offset order, in batches; the checkpoint advances only after every
//! event before it is durable in Cassandra. Never on the command path: when Cassandra is down,
//! commands keep succeeding and the tail grows until it is back.

use std::sync::Arc;
use std::time::Duration;

use statehouse_store::{JournalRow, SnapshotRow};
use tracing::{debug, warn};

use crate::partition::Partition;
use crate::tail::{self, Entry};
use crate::{Node, metrics as m};

/// Most events written per round.
const BATCH: usize = 1_000;

pub(crate) async fn run(node: Arc<Node>, partition: Arc<Partition>) {
    let interval = Duration::from_millis(node.config.processor.backup_interval_ms);
    let mut backoff = interval;
    loop {
        let stopping = partition.writer_stopped();
        let batch = partition.tail.oldest(BATCH);
        if batch.is_empty() {
            if stopping {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = partition.writer_stopping() => {}
            }
            continue;
        }
        let last = batch.last().expect("non-empty").offset;
        match write(&node, &partition, &batch).await {
            Ok(()) => {
                partition.tail.remove_through(last);
                metrics::counter!(m::BACKUP_EVENTS).increment(batch.len() as u64);
                metrics::gauge!(m::BACKUP_LAG_EVENTS).set(partition.tail.len() as f64);
                debug!(
                    partition = partition.id,
                    events = batch.len(),
                    checkpoint = last + 1,
                    "backed up"
                );
                backoff = interval;
                if batch.len() < BATCH && !stopping {
                    tokio::select! {
                        _ = tokio::time::sleep(interval) => {}
                        _ = partition.writer_stopping() => {}
                    }
                }
            }
            Err(e) => {
                metrics::counter!(m::BACKUP_FAILURES).increment(1);
                if stopping {
                    warn!(partition = partition.id, error = %e, "final backup failed; the next owner recovers from the checkpoint");
                    break;
                }
                warn!(partition = partition.id, error = %e, retry_in = ?backoff, pending = partition.tail.len(), "backup failed; commands keep running, retrying");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = partition.writer_stopping() => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

async fn write(
    node: &Node,
    partition: &Partition,
    batch: &[Entry],
) -> Result<(), statehouse_store::Error> {
    let service = node.service.as_str();
    let mut rows = Vec::with_capacity(batch.len());
    let mut snapshots = Vec::new();
    for Entry { offset, event } in batch {
        let key = tail::entity_key(&event.persistence_id, &event.entity_id);
        if let Some(s) = &event.snapshot {
            snapshots.push(SnapshotRow {
                service: service.to_string(),
                entity_id: key.clone(),
                seq: event.seq,
                type_url: s.type_url.clone(),
                snapshot: s.payload.clone(),
                timestamp_ms: event.timestamp_ms,
            });
        }
        rows.push(JournalRow {
            service: service.to_string(),
            entity_id: key,
            seq: event.seq,
            type_url: event.type_url.clone(),
            payload: event.payload.clone(),
            command_id: event.command_id.clone(),
            idempotency_key: event.idempotency_key.clone(),
            timestamp_ms: event.timestamp_ms,
            writer_id: event.writer.processor_id.clone(),
            writer_epoch: event.writer.epoch,
            reply: event
                .reply
                .as_ref()
                .map(|r| (r.type_url.clone(), r.payload.clone())),
            partition: partition.id as i32,
            offset: *offset,
        });
    }
    node.store.write_journal(&rows).await?;
    for snapshot in &snapshots {
        node.store.write_snapshot(snapshot).await?;
    }
    let next = batch.last().expect("non-empty").offset + 1;
    node.store
        .write_checkpoint(service, &partition.journal_topic, partition.id as i32, next)
        .await
}
