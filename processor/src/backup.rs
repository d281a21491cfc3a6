//! The asynchronous backup of one partition to Cassandra: committed records leave the
//! in-memory tail in commit order, in batches — journal events become journal rows (and
//! snapshot rows, only the newest of a batch per entity), value-entity records the entity's
//! `entity_values` row (only the newest of a batch per entity) — and each topic's checkpoint
//! advances only after every record before it is durable in Cassandra. An erased entity's
//! tombstones ([`Written::Erased`]) remove its rows (journal and snapshots up to the erased seq,
//! its value as of the tombstone's offset) in commit order: what the batch held before them is
//! written first, what comes after them (the entity started again) after the delete, so no
//! older row survives and no newer one is lost. Never on the command
//! path: when Cassandra is down, commands keep succeeding and the tail grows until it is back.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use statehouse_store::{JournalRow, SnapshotRow, Store, ValueRow};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::kinds::value;
use crate::records::{Topic, Topics, Written};
use crate::tail::{Entry, Tail};
use crate::{Error, metrics as m};

/// Most records written per round.
const BATCH: usize = 1_000;

/// What the backup of one partition works with.
pub(crate) struct Backup {
    pub(crate) service: String,
    pub(crate) partition: u32,
    pub(crate) topics: Topics,
    pub(crate) tail: Arc<Tail>,
    pub(crate) store: Store,
    pub(crate) interval: Duration,
    /// Cancelled when the partition's writer stops: flush what is left, then end.
    pub(crate) stopping: CancellationToken,
}

impl Backup {
    pub(crate) async fn run(self) {
        let mut backoff = self.interval;
        let mut progress = m::BackupProgress::new(self.partition);
        loop {
            let stopping = self.stopping.is_cancelled();
            progress.observe(self.tail.len(), false);
            let batch = self.tail.oldest(BATCH);
            if batch.is_empty() {
                if stopping {
                    break;
                }
                self.pause(self.interval).await;
                continue;
            }
            match self.write(&batch).await {
                Ok(()) => {
                    self.tail.remove_oldest(batch.len());
                    metrics::counter!(m::BACKUP_RECORDS).increment(batch.len() as u64);
                    progress.observe(self.tail.len(), true);
                    debug!(
                        partition = self.partition,
                        records = batch.len(),
                        "backed up"
                    );
                    backoff = self.interval;
                    if batch.len() < BATCH && !stopping {
                        self.pause(self.interval).await;
                    }
                }
                Err(e) => {
                    metrics::counter!(m::BACKUP_FAILURES).increment(1);
                    if stopping {
                        warn!(partition = self.partition, error = %e, "final backup failed; the next owner recovers from the checkpoint");
                        break;
                    }
                    warn!(partition = self.partition, error = %e, retry_in = ?backoff, pending = self.tail.len(), "backup failed; commands keep running, retrying");
                    self.pause(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
        progress.ended();
    }

    async fn pause(&self, wait: Duration) {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = self.stopping.cancelled() => {}
        }
    }

    async fn write(&self, batch: &[Entry]) -> Result<(), Error> {
        let service = self.service.as_str();
        let mut rows = Vec::new();
        // The newest snapshot per entity in this batch: an older one would never be read
        // (activation takes the newest, and every event after any snapshot is kept).
        let mut snapshots: HashMap<String, SnapshotRow> = HashMap::new();
        // The newest record per value entity in this batch (older ones would be overwritten).
        let mut values: HashMap<String, ValueRow> = HashMap::new();
        let mut next: HashMap<Topic, i64> = HashMap::new();
        // Erasures not carried out yet: journal (entity key → highest erased seq), values
        // (entity key → the tombstone's offset).
        let mut erase_journal: HashMap<String, i64> = HashMap::new();
        let mut erase_values: HashMap<String, i64> = HashMap::new();
        for Entry {
            topic,
            offset,
            record,
        } in batch
        {
            next.insert(*topic, offset + 1);
            if let Written::Erased(erased) = &**record {
                // What came before the tombstone goes first, so the delete covers it.
                self.flush(&mut rows, &mut snapshots, &mut values).await?;
                let key = erased.entity_key.clone();
                match erased.seq {
                    Some(seq) => {
                        let upto = erase_journal.entry(key).or_insert(seq);
                        *upto = (*upto).max(seq);
                    }
                    None => {
                        erase_values.insert(key, *offset);
                    }
                }
                continue;
            }
            if !erase_journal.is_empty() || !erase_values.is_empty() {
                self.erase(&mut erase_journal, &mut erase_values).await?;
            }
            match &**record {
                Written::Event(event) => {
                    let key = record.entity_key();
                    if let Some(s) = &event.snapshot
                        && snapshots
                            .get(&key)
                            .is_none_or(|older| older.seq < event.seq)
                    {
                        snapshots.insert(
                            key.clone(),
                            SnapshotRow {
                                service: service.to_string(),
                                entity_id: key.clone(),
                                seq: event.seq,
                                type_url: s.type_url.clone(),
                                snapshot: s.payload.clone(),
                                timestamp_ms: event.timestamp_ms,
                            },
                        );
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
                        partition: self.partition as i32,
                        offset: *offset,
                    });
                }
                // Never in the tail (the observer skips outputs); erasures are taken above.
                Written::Output(_) | Written::Erased(_) => {}
                Written::Value(_) | Written::Deleted(_) => {
                    if let Some(row) = value::row_of(service, record, self.partition, *offset) {
                        let row = row.map_err(|e| {
                            Error::Journal(format!("encoding a value record for the backup: {e}"))
                        })?;
                        values.insert(row.entity_id.clone(), row);
                    }
                }
            }
        }
        self.erase(&mut erase_journal, &mut erase_values).await?;
        self.flush(&mut rows, &mut snapshots, &mut values).await?;
        for (topic, offset) in next {
            // Never past a quarantined record: the next owner must find it again.
            let offset = self
                .tail
                .checkpoint_floor(topic)
                .map_or(offset, |floor| offset.min(floor));
            self.store
                .write_checkpoint(
                    service,
                    self.topics.name(topic),
                    self.partition as i32,
                    offset,
                )
                .await?;
        }
        Ok(())
    }

    /// Write (and forget) the rows collected so far.
    async fn flush(
        &self,
        rows: &mut Vec<JournalRow>,
        snapshots: &mut HashMap<String, SnapshotRow>,
        values: &mut HashMap<String, ValueRow>,
    ) -> Result<(), Error> {
        if !rows.is_empty() {
            self.store.write_journal(rows).await?;
            rows.clear();
        }
        for (_, snapshot) in snapshots.drain() {
            self.store.write_snapshot(&snapshot).await?;
        }
        for (_, row) in values.drain() {
            self.store.write_value(&row).await?;
        }
        Ok(())
    }

    /// Carry out (and forget) the erasures collected so far.
    async fn erase(
        &self,
        journal: &mut HashMap<String, i64>,
        values: &mut HashMap<String, i64>,
    ) -> Result<(), Error> {
        let service = self.service.as_str();
        for (key, seq) in journal.drain() {
            self.store.erase_journal(service, &key, seq).await?;
        }
        for (key, offset) in values.drain() {
            self.store.erase_value(service, &key, offset).await?;
        }
        Ok(())
    }
}
