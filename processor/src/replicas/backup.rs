//! CRDT states in Cassandra (`crdt_states`): the owner of a broadcast-topic partition backs up
//! the full states of that partition's entities, and a starting replica bootstraps from them.
//!
//! **Backup** (every `processor.backup-interval-ms`, for each partition this processor owns):
//! note how far the partition has been read (`next`), write the full state of every entity of
//! the partition that changed since its last backup (each row says it includes everything
//! before `next`), then the checkpoint `next`. States only grow with what is read, so a row
//! never claims less than its offset says; a deposed owner's late row (an older offset) never
//! replaces a newer one. Changes made while another processor owned the partition stay marked
//! here until this processor owns it and backs them up.
//!
//! **Bootstrap**: the checkpoints and every row, then the topic from each partition's
//! checkpoint (re-reading a record a row already includes changes nothing: joins are
//! idempotent, deletes and prunes apply once). So a replica started after the topic's old
//! segments expired still has every state. Cassandra must answer: without it the replica
//! cannot know what the expired segments held, so it waits (and does not serve CRDTs).
//!
//! **Pruning**, in the same pass: a replica an entity's state still names that has been gone
//! longer than `processor.crdt-prune-after-ms` gets a `PRUNE` record, once.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use statehouse_crdt::{ReplicaId, codec};
use statehouse_schemas::avro::{CrdtRecordKind, WriteConsistency};
use statehouse_store::CrdtRow;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{Entry, Replicas};
use crate::Error;

/// Which partitions this processor owns now.
pub(crate) type Owned = Arc<dyn Fn() -> Vec<u32> + Send + Sync>;

impl Replicas {
    /// Bootstrap from the backup, then read the topic, heartbeat and back up until `shutdown`.
    pub(crate) fn start(self: &Arc<Self>, owned: Owned, shutdown: CancellationToken) {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let Some(from) = this.bootstrap(&shutdown).await else {
                return;
            };
            let ends = this.ends(&shutdown).await;
            tokio::spawn(Arc::clone(&this).heartbeats(shutdown.clone()));
            tokio::spawn(Arc::clone(&this).republisher(shutdown.clone()));
            tokio::spawn(Arc::clone(&this).backups(owned, shutdown.clone()));
            if let Err(e) = Arc::clone(&this).follow(from, ends, shutdown).await {
                warn!(error = %e, "cannot follow the CRDT topic; CRDT entities are not served");
            }
        });
    }

    /// Load every backed-up state; the offsets to read the topic from. `None`: shutting down.
    async fn bootstrap(&self, shutdown: &CancellationToken) -> Option<Vec<i64>> {
        let service = self.env.service.as_str();
        let mut backoff = Duration::from_millis(200);
        loop {
            let loaded = async {
                let checkpoints = self.env.store.checkpoints(service, &self.topic).await?;
                let mut rows = Vec::new();
                for p in 0..self.partitions {
                    rows.extend(self.env.store.read_crdts(service, p as i32).await?);
                }
                Ok::<_, statehouse_store::Error>((checkpoints, rows))
            }
            .await;
            match loaded {
                Ok((checkpoints, rows)) => {
                    let n = rows.len();
                    let mut entries = self.entries.lock().expect("entries lock");
                    for row in rows {
                        match entry_of(row) {
                            Ok((key, entry)) => {
                                entries.insert(key, entry);
                            }
                            Err(e) => warn!(error = %e, "skipping a CRDT backup row"),
                        }
                    }
                    info!(states = n, "CRDT states loaded from the backup");
                    return Some(
                        (0..self.partitions)
                            .map(|p| checkpoints.get(&(p as i32)).copied().unwrap_or(0))
                            .collect(),
                    );
                }
                Err(e) => {
                    warn!(error = %e, retry_in = ?backoff, "cannot read the CRDT backup; CRDT entities wait for it");
                    tokio::select! {
                        _ = shutdown.cancelled() => return None,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Where each partition of the topic ends now (what to read before serving).
    async fn ends(&self, shutdown: &CancellationToken) -> Vec<i64> {
        let mut ends = Vec::with_capacity(self.partitions as usize);
        for p in 0..self.partitions {
            let mut backoff = Duration::from_millis(200);
            loop {
                match statehouse_kafka::reader::end_offsets(
                    &self.env.kafka,
                    &self.topic,
                    p,
                    Duration::from_secs(10),
                )
                .await
                {
                    Ok((end, _)) => {
                        ends.push(end);
                        break;
                    }
                    Err(e) => {
                        warn!(partition = p, error = %e, "reading the end of the CRDT topic failed; retrying");
                        tokio::select! {
                            _ = shutdown.cancelled() => return ends,
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
            }
        }
        ends
    }

    /// Back up (and prune) the partitions this processor owns, every backup interval.
    async fn backups(self: Arc<Self>, owned: Owned, shutdown: CancellationToken) {
        let mut checkpoints: HashMap<u32, i64> = HashMap::new();
        loop {
            let stopping = tokio::select! {
                _ = shutdown.cancelled() => true,
                _ = tokio::time::sleep(self.options.backup_interval) => false,
            };
            for p in owned() {
                if let Err(e) = self.back_up(p, &mut checkpoints).await {
                    warn!(partition = p, error = %e, "backing up CRDT states failed; retrying");
                }
                if !stopping {
                    self.prune(p).await;
                }
            }
            if stopping {
                return;
            }
        }
    }

    async fn back_up(
        &self,
        partition: u32,
        checkpoints: &mut HashMap<u32, i64>,
    ) -> Result<(), Error> {
        let next = self.applied.lock().expect("applied lock")[partition as usize];
        let service = self.env.service.to_string();
        let rows: Vec<CrdtRow> = {
            let mut entries = self.entries.lock().expect("entries lock");
            entries
                .iter_mut()
                .filter(|(_, e)| e.partition == partition && e.dirty)
                .map(|(key, e)| {
                    e.dirty = false;
                    CrdtRow {
                        service: service.clone(),
                        partition: partition as i32,
                        entity_key: key.clone(),
                        persistence_id: e.persistence_id.clone(),
                        entity_id: e.entity_id.clone(),
                        state: e.state.as_ref().map(codec::encode),
                        deleted: e.deleted,
                        pruned: e.pruned.iter().map(ToString::to_string).collect(),
                        offset: next,
                    }
                })
                .collect()
        };
        if rows.is_empty() && checkpoints.get(&partition).is_some_and(|c| *c >= next) {
            return Ok(());
        }
        if let Err(e) = self.env.store.write_crdts(&rows).await {
            let mut entries = self.entries.lock().expect("entries lock");
            for row in &rows {
                if let Some(entry) = entries.get_mut(&row.entity_key) {
                    entry.dirty = true;
                }
            }
            return Err(e.into());
        }
        self.env
            .store
            .write_checkpoint(&service, &self.topic, partition as i32, next)
            .await?;
        checkpoints.insert(partition, next);
        Ok(())
    }

    /// Publish `PRUNE` for replicas gone longer than the prune delay that entities of
    /// `partition` still name.
    async fn prune(&self, partition: u32) {
        let now = Instant::now();
        let mut prunes = Vec::new();
        {
            let members = self.members.lock().expect("members lock");
            let mut entries = self.entries.lock().expect("entries lock");
            for entry in entries
                .values_mut()
                .filter(|e| e.partition == partition && !e.deleted)
            {
                let Some(state) = &entry.state else { continue };
                let departed: BTreeSet<ReplicaId> = state
                    .replicas()
                    .into_iter()
                    .filter(|r| {
                        !entry.pruned.contains(r)
                            && !entry.pruning.contains(r)
                            && members
                                .gone_for(r, now)
                                .is_some_and(|gone| gone >= self.options.prune_after)
                    })
                    .collect();
                for replica in departed {
                    entry.pruning.insert(replica.clone());
                    let mut record = self.record(
                        &entry.persistence_id,
                        &entry.entity_id,
                        CrdtRecordKind::Prune,
                        Bytes::new(),
                        WriteConsistency::Local,
                        None,
                    );
                    record.pruned_replica = Some(replica.to_string());
                    prunes.push(record);
                }
            }
        }
        for record in prunes {
            info!(entity = %record.entity_id, departed = ?record.pruned_replica, "pruning a departed replica");
            match self.send(&record.entity_id, &record) {
                Ok(delivery) => {
                    if let Err(e) = delivery.await {
                        warn!(error = %e, "publishing a prune failed; retrying later");
                        self.unmark_pruning(
                            &record.persistence_id,
                            &record.entity_id,
                            &record.pruned_replica,
                        );
                    }
                }
                Err(e) => {
                    warn!(error = %e, "queueing a prune failed; retrying later");
                    self.unmark_pruning(
                        &record.persistence_id,
                        &record.entity_id,
                        &record.pruned_replica,
                    );
                }
            }
        }
    }

    fn unmark_pruning(&self, persistence_id: &str, entity_id: &str, replica: &Option<String>) {
        let key = statehouse_core::ids::entity_key(persistence_id, entity_id);
        if let (Some(entry), Some(replica)) = (
            self.entries.lock().expect("entries lock").get_mut(&key),
            replica,
        ) {
            entry.pruning.remove(&ReplicaId::new(replica.as_str()));
        }
    }
}

/// A backup row as a replica's entry.
fn entry_of(row: CrdtRow) -> Result<(String, Entry), String> {
    let mut entry = Entry::new(&row.persistence_id, &row.entity_id, row.partition as u32);
    entry.deleted = row.deleted;
    entry.pruned = row.pruned.into_iter().map(ReplicaId::new).collect();
    if !row.deleted
        && let Some(bytes) = row.state
    {
        entry.state = Some(
            codec::decode(&bytes)
                .map_err(|e| format!("entity {}: state does not decode: {e}", row.entity_key))?,
        );
    }
    Ok((row.entity_key, entry))
}
