//! The processor's CRDT replicas: one replica of every CRDT entity of the service, kept in step
//! with the other processors through the broadcast topic `<prefix><service>.crdt`
//! (`ARCHITECTURE.md`, "A CRDT").
//!
//! * **State.** Every entity the topic names is held here (like the reference proxy's
//!   distributed data, every node holds all of it): its CRDT state, whether it was deleted,
//!   and the replicas pruned from it. An active entity ([`Crdt`]) keeps its own copy, which its
//!   own changes reach at once; remote changes reach it as [`Changed`] inputs.
//! * **Writing** ([`Replicas::publish`]): the fragment is joined here, queued on the topic
//!   (keyed by entity id: one partition, one total order per entity), and the write is done —
//!   `LOCAL` at once (a failed delivery marks the entity for a full-state publish), `MAJORITY`
//!   once Kafka acknowledged it (acks=all), `ALL` once every live replica's heartbeat says it
//!   read past it; `MAJORITY` and `ALL` within `processor.crdt-write-timeout-ms`.
//! * **Reading** ([`follow`]): every partition, every record, in order. Fragments of other
//!   replicas are stripped of pruned replicas and joined; deletes and prunes apply where they
//!   stand (also this replica's own: they are ordered by the topic); heartbeats feed
//!   [`members`]. A replica joins its own fragments when it writes them and skips them here.
//! * **Heartbeats** ([`heartbeats`]): every `processor.crdt-heartbeat-interval-ms`, and at once
//!   after reading an `ALL` record, with how far this replica has read each partition. The live
//!   set counts Vote voters and `ALL` acknowledgements; a change reaches every active entity.
//! * **Backup and bootstrap** ([`backup`]): the owner of a partition writes the full states of
//!   its changed entities to Cassandra (`crdt_states`) with the partition offset they include,
//!   then the checkpoint; a starting replica loads them, reads the topic from the checkpoints,
//!   and serves CRDT commands once it has caught up with the ends it found at start.
//! * **Pruning**: the owner of a partition publishes `PRUNE` for a replica gone longer than
//!   `processor.crdt-prune-after-ms` that an entity's state still names; every replica folds
//!   what it counted into the counters' `~departed` slot at that point of the order.

pub(crate) mod backup;
pub(crate) mod members;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use statehouse_core::ids::entity_key;
use statehouse_core::partition_for;
use statehouse_crdt::{ReplicaId, State, codec};
use statehouse_kafka::broadcast::{Broadcast, Delivered};
use statehouse_schemas::avro::{
    self, AppliedOffset, AvroRecord, CrdtDeltaRecord, CrdtRecordKind, WriteConsistency,
};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::entity::{EntityRef, Home};
use crate::env::Env;
use crate::kinds::crdt::{Change, Changed, Crdt, DELETED, Loaded, Publish};
use crate::{Error, metrics as m};

use members::Members;

/// Timing of replication (`processor.crdt-*`).
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub(crate) heartbeat_interval: Duration,
    pub(crate) heartbeat_timeout: Duration,
    pub(crate) write_timeout: Duration,
    pub(crate) prune_after: Duration,
    pub(crate) backup_interval: Duration,
}

/// The CRDT replicas of one processor (the [`Crdt`] kind's context).
pub(crate) struct Replicas {
    env: Arc<Env>,
    me: ReplicaId,
    writer: avro::Writer,
    options: Options,
    topic: Arc<str>,
    partitions: u32,
    broadcast: RwLock<Broadcast>,
    entries: Mutex<HashMap<String, Entry>>,
    members: Mutex<Members>,
    /// Per partition, the next offset this replica will read.
    applied: Mutex<Vec<i64>>,
    sequence: AtomicI64,
    ready: AtomicBool,
    stopping: AtomicBool,
    home: OnceLock<Weak<Home<Crdt>>>,
    /// Heartbeat now: an `ALL` record was read.
    wake: Notify,
    /// A full state waits to be published.
    failed: Notify,
}

/// One entity's replica.
struct Entry {
    persistence_id: String,
    entity_id: String,
    partition: u32,
    state: Option<State>,
    deleted: bool,
    pruned: BTreeSet<ReplicaId>,
    /// Changed since the last backup.
    dirty: bool,
    /// A delivery of this replica's change failed: publish the full state (or the delete).
    republish: bool,
    /// This replica changed it since it started (a new producer publishes these in full).
    touched: bool,
    /// `PRUNE` published, not read back yet.
    pruning: BTreeSet<ReplicaId>,
}

impl Entry {
    fn new(persistence_id: &str, entity_id: &str, partition: u32) -> Self {
        Self {
            persistence_id: persistence_id.to_string(),
            entity_id: entity_id.to_string(),
            partition,
            state: None,
            deleted: false,
            pruned: BTreeSet::new(),
            dirty: false,
            republish: false,
            touched: false,
            pruning: BTreeSet::new(),
        }
    }

    /// Join a fragment (stripped of pruned replicas). Returns what the entity should join, if
    /// anything.
    fn join(&mut self, mut fragment: State) -> Option<State> {
        if self.deleted {
            return None;
        }
        fragment.strip(&self.pruned);
        match &mut self.state {
            Some(state) => {
                if let Err(e) = state.join(&fragment) {
                    warn!(entity = %self.entity_id, error = ?e, "a fragment of another CRDT type was left out");
                    return None;
                }
            }
            None => self.state = Some(fragment.clone()),
        }
        self.dirty = true;
        Some(fragment)
    }
}

impl Replicas {
    pub(crate) fn new(
        env: Arc<Env>,
        options: Options,
        partitions: u32,
    ) -> Result<Arc<Self>, Error> {
        let incarnation = crate::entity::now_ms();
        let me = ReplicaId::new(format!("{}:{incarnation}", env.processor_id));
        let topic: Arc<str> = Arc::from(env.service_topics.crdt());
        let broadcast = Broadcast::new(&env.kafka, topic.as_ref())?;
        Ok(Arc::new(Self {
            writer: avro::Writer {
                processor_id: env.processor_id.clone(),
                epoch: incarnation,
            },
            members: Mutex::new(Members::new(
                me.clone(),
                options.heartbeat_timeout,
                Instant::now(),
            )),
            me,
            options,
            topic,
            partitions,
            broadcast: RwLock::new(broadcast),
            entries: Mutex::new(HashMap::new()),
            applied: Mutex::new(vec![0; partitions as usize]),
            sequence: AtomicI64::new(0),
            ready: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            home: OnceLock::new(),
            wake: Notify::new(),
            failed: Notify::new(),
            env,
        }))
    }

    /// The entities to tell about changes.
    pub(crate) fn attach(&self, home: &Arc<Home<Crdt>>) {
        let _ = self.home.set(Arc::downgrade(home));
    }

    pub(crate) fn replica_id(&self) -> &ReplicaId {
        &self.me
    }

    /// Caught up with the topic and not stopping.
    pub(crate) fn is_serving(&self) -> bool {
        self.ready.load(Ordering::Acquire) && !self.stopping.load(Ordering::Acquire)
    }

    pub(crate) fn stop_serving(&self) {
        self.stopping.store(true, Ordering::Release);
    }

    pub(crate) fn writer(&self) -> &avro::Writer {
        &self.writer
    }

    /// The entity's replica, for its activation.
    pub(crate) fn load(&self, entity: &EntityRef) -> Result<Loaded, Error> {
        let state = {
            let entries = self.entries.lock().expect("entries lock");
            match entries.get(&entity.key) {
                Some(entry) if entry.deleted => {
                    return Err(Error::EntityFailure(DELETED.to_string()));
                }
                Some(entry) => entry.state.clone(),
                None => None,
            }
        };
        Ok(Loaded {
            me: self.me.clone(),
            live: self.members.lock().expect("members lock").live(),
            state,
        })
    }

    /// Write an entity's change at its consistency (see the module documentation).
    pub(crate) async fn publish(self: &Arc<Self>, write: Publish) -> Result<(), Error> {
        let Publish {
            entity,
            change,
            consistency,
            traceparent,
        } = write;
        let (kind, state) = match &change {
            Change::Fragment(fragment) => (CrdtRecordKind::Delta, codec::encode(fragment)),
            Change::Delete => (CrdtRecordKind::Delete, Bytes::new()),
        };
        {
            let mut entries = self.entries.lock().expect("entries lock");
            let entry = entries.entry(entity.key.clone()).or_insert_with(|| {
                Entry::new(
                    &entity.info.persistence_id,
                    &entity.id,
                    partition_for(entity.id.as_bytes(), self.partitions),
                )
            });
            if entry.deleted {
                // Deleted by another replica meanwhile: the entity hears of it next.
                return Ok(());
            }
            match change {
                Change::Fragment(fragment) => {
                    entry.join(fragment);
                }
                Change::Delete => {
                    entry.deleted = true;
                    entry.state = None;
                    entry.dirty = true;
                }
            }
            entry.touched = true;
        }
        let record = self.record(
            &entity.info.persistence_id,
            &entity.id,
            kind,
            state,
            consistency,
            traceparent,
        );
        let delivery = match self.send(&entity.id, &record) {
            Ok(delivery) => delivery,
            Err(e) => {
                self.republish(&entity.key);
                return match consistency {
                    WriteConsistency::Local => Ok(()),
                    _ => Err(e),
                };
            }
        };
        metrics::counter!(m::CRDT_WRITES, "consistency" => consistency_label(consistency))
            .increment(1);
        match consistency {
            WriteConsistency::Local => {
                let this = Arc::downgrade(self);
                let key = entity.key;
                tokio::spawn(async move {
                    if delivery.await.is_err()
                        && let Some(this) = this.upgrade()
                    {
                        this.republish(&key);
                    }
                });
                Ok(())
            }
            WriteConsistency::Majority => {
                self.delivered(&entity.key, delivery).await?;
                Ok(())
            }
            WriteConsistency::All => {
                let deadline = Instant::now() + self.options.write_timeout;
                let delivered = self.delivered(&entity.key, delivery).await?;
                let acked = self
                    .members
                    .lock()
                    .expect("members lock")
                    .wait_all(delivered.partition, delivered.offset);
                match tokio::time::timeout_at(deadline, acked).await {
                    Ok(Ok(())) => Ok(()),
                    _ => Err(Error::Overloaded(format!(
                        "not every live replica applied the change within {:?}",
                        self.options.write_timeout
                    ))),
                }
            }
        }
    }

    async fn delivered(
        &self,
        key: &str,
        delivery: impl std::future::Future<Output = Result<Delivered, Error>>,
    ) -> Result<Delivered, Error> {
        match tokio::time::timeout(self.options.write_timeout, delivery).await {
            Ok(Ok(delivered)) => Ok(delivered),
            Ok(Err(e)) => {
                self.republish(key);
                Err(e)
            }
            Err(_) => {
                // It may still fail later, unwatched: publish the full state to be sure.
                self.republish(key);
                Err(Error::Overloaded(format!(
                    "Kafka did not acknowledge the change within {:?}",
                    self.options.write_timeout
                )))
            }
        }
    }

    fn send(
        &self,
        key: &str,
        record: &CrdtDeltaRecord,
    ) -> Result<impl std::future::Future<Output = Result<Delivered, Error>> + use<>, Error> {
        let bytes = record.encode().map_err(|e| Error::Journal(e.to_string()))?;
        metrics::histogram!(m::CRDT_RECORD_BYTES, "kind" => kind_label(record.kind))
            .record(bytes.len() as f64);
        let broadcast = self.broadcast.read().expect("broadcast lock").clone();
        let delivery = broadcast.send(key, &bytes)?;
        Ok(async move { delivery.await.map_err(Error::from) })
    }

    fn record(
        &self,
        persistence_id: &str,
        entity_id: &str,
        kind: CrdtRecordKind,
        state: Bytes,
        write_consistency: WriteConsistency,
        traceparent: Option<String>,
    ) -> CrdtDeltaRecord {
        CrdtDeltaRecord {
            service: self.env.service.to_string(),
            persistence_id: persistence_id.to_string(),
            entity_id: entity_id.to_string(),
            replica_id: self.me.to_string(),
            delta: Bytes::new(),
            deleted: kind == CrdtRecordKind::Delete,
            write_consistency,
            timestamp_ms: crate::entity::now_ms(),
            kind,
            sequence: self.sequence.fetch_add(1, Ordering::Relaxed) + 1,
            state,
            pruned_replica: None,
            applied: Vec::new(),
            traceparent,
        }
    }

    /// A delivery of this replica's change to `key` failed: publish its full state soon.
    fn republish(&self, key: &str) {
        if let Some(entry) = self.entries.lock().expect("entries lock").get_mut(key) {
            entry.republish = true;
        }
        metrics::counter!(m::CRDT_DELIVERY_FAILURES).increment(1);
        self.failed.notify_one();
    }

    /// Publish the full state (or the delete) of entities whose delivery failed; with a new
    /// producer after a fatal error, of every entity this replica changed.
    async fn republish_pending(&self) {
        let fatal = self.broadcast.read().expect("broadcast lock").fatal_error();
        if let Some(fatal) = fatal {
            warn!(error = %fatal, "the CRDT producer failed for good; replacing it and publishing the full states this replica changed");
            match Broadcast::new(&self.env.kafka, self.topic.as_ref()) {
                Ok(fresh) => {
                    *self.broadcast.write().expect("broadcast lock") = fresh;
                    for entry in self.entries.lock().expect("entries lock").values_mut() {
                        entry.republish |= entry.touched;
                    }
                }
                Err(e) => warn!(error = %e, "creating a new CRDT producer failed"),
            }
        }
        let pending: Vec<(String, CrdtDeltaRecord)> = {
            let mut entries = self.entries.lock().expect("entries lock");
            entries
                .iter_mut()
                .filter(|(_, e)| e.republish)
                .map(|(key, e)| {
                    e.republish = false;
                    let (kind, state) = match (&e.state, e.deleted) {
                        (_, true) => (CrdtRecordKind::Delete, Bytes::new()),
                        (Some(state), false) => (CrdtRecordKind::FullState, codec::encode(state)),
                        (None, false) => (CrdtRecordKind::FullState, Bytes::new()),
                    };
                    (
                        key.clone(),
                        self.record(
                            &e.persistence_id,
                            &e.entity_id,
                            kind,
                            state,
                            WriteConsistency::Local,
                            None,
                        ),
                    )
                })
                .filter(|(_, r)| r.kind == CrdtRecordKind::Delete || !r.state.is_empty())
                .collect()
        };
        // Queue them all, then wait for their deliveries together.
        let deliveries = pending.into_iter().map(|(key, record)| {
            let delivery = self.send(&record.entity_id, &record);
            async move {
                let delivered = match delivery {
                    Ok(delivery) => delivery.await,
                    Err(e) => Err(e),
                };
                (key, delivered)
            }
        });
        for (key, delivered) in futures::future::join_all(deliveries).await {
            match delivered {
                Ok(_) => metrics::counter!(m::CRDT_FULL_STATES).increment(1),
                Err(e) => {
                    debug!(entity = %key, error = %e, "publishing a full CRDT state failed; retrying");
                    if let Some(entry) = self.entries.lock().expect("entries lock").get_mut(&key) {
                        entry.republish = true;
                    }
                }
            }
        }
    }

    /// Publish full states after failed deliveries, until `shutdown` (apart from the
    /// heartbeats, which must not wait for a broker that is away).
    async fn republisher(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.failed.notified() => {}
                // Also retry what failed last time, and look for a fatal producer error.
                _ = tokio::time::sleep(self.options.heartbeat_interval) => {}
            }
            self.republish_pending().await;
        }
    }

    /// Apply one record of the topic (its value; `None`: nothing to apply).
    fn apply(&self, partition: i32, offset: i64, value: Option<&[u8]>) {
        if let Some(value) = value {
            match CrdtDeltaRecord::decode(value) {
                Ok(record) => self.apply_record(record),
                Err(e) => {
                    warn!(partition, offset, error = %e, "skipping a CRDT record that does not decode")
                }
            }
        }
        if let Some(next) = self
            .applied
            .lock()
            .expect("applied lock")
            .get_mut(partition as usize)
        {
            *next = (*next).max(offset + 1);
        }
    }

    fn apply_record(&self, record: CrdtDeltaRecord) {
        let own = record.replica_id == self.me.as_str();
        if record.write_consistency == WriteConsistency::All && !own {
            // Acknowledge in the next heartbeat, now.
            self.wake.notify_one();
        }
        if record.kind == CrdtRecordKind::Heartbeat {
            let age = Duration::from_millis(
                (crate::entity::now_ms() - record.timestamp_ms).max(0) as u64
            );
            let changed = self.members.lock().expect("members lock").heartbeat(
                ReplicaId::new(record.replica_id),
                age,
                &record.applied,
                Instant::now(),
            );
            if changed {
                self.live_changed();
            }
            return;
        }
        if own
            && matches!(
                record.kind,
                CrdtRecordKind::Delta | CrdtRecordKind::FullState
            )
        {
            // Joined when written.
            return;
        }
        let key = entity_key(&record.persistence_id, &record.entity_id);
        let changed = {
            let mut entries = self.entries.lock().expect("entries lock");
            let entry = entries.entry(key.clone()).or_insert_with(|| {
                Entry::new(
                    &record.persistence_id,
                    &record.entity_id,
                    partition_for(record.entity_id.as_bytes(), self.partitions),
                )
            });
            match record.kind {
                CrdtRecordKind::Delta | CrdtRecordKind::FullState => {
                    if record.state.is_empty() {
                        // A version-1 record (a protocol delta): nothing to join.
                        return;
                    }
                    let fragment = match codec::decode(&record.state) {
                        Ok(fragment) => fragment,
                        Err(e) => {
                            warn!(entity = %key, error = %e, "skipping a CRDT fragment that does not decode");
                            return;
                        }
                    };
                    entry.join(fragment).map(|fragment| Changed {
                        fragment: Some(fragment),
                        ..Changed::default()
                    })
                }
                CrdtRecordKind::Delete => {
                    if entry.deleted {
                        None
                    } else {
                        entry.deleted = true;
                        entry.state = None;
                        entry.dirty = true;
                        Some(Changed {
                            deleted: true,
                            ..Changed::default()
                        })
                    }
                }
                CrdtRecordKind::Prune => {
                    let Some(departed) = record.pruned_replica.map(ReplicaId::new) else {
                        return;
                    };
                    entry.pruning.remove(&departed);
                    if departed == self.me || !entry.pruned.insert(departed.clone()) {
                        None
                    } else {
                        if let Some(state) = &mut entry.state {
                            state.prune(&departed);
                        }
                        entry.dirty = true;
                        metrics::counter!(m::CRDT_PRUNES).increment(1);
                        Some(Changed {
                            pruned: vec![departed],
                            ..Changed::default()
                        })
                    }
                }
                CrdtRecordKind::Heartbeat => None,
            }
        };
        if let Some(changed) = changed
            && let Some(home) = self.home.get().and_then(Weak::upgrade)
        {
            home.input(&key, changed);
        }
    }

    /// Tell every active entity who is live now.
    fn live_changed(&self) {
        let live = self.members.lock().expect("members lock").live();
        metrics::gauge!(m::CRDT_LIVE_REPLICAS).set(live.len() as f64 + 1.0);
        info!(live = live.len() + 1, "CRDT replicas changed");
        if let Some(home) = self.home.get().and_then(Weak::upgrade) {
            for key in home.keys() {
                home.input(
                    &key,
                    Changed {
                        live: Some(Arc::clone(&live)),
                        ..Changed::default()
                    },
                );
            }
        }
    }

    fn applied_offsets(&self) -> Vec<AppliedOffset> {
        self.applied
            .lock()
            .expect("applied lock")
            .iter()
            .enumerate()
            .map(|(partition, offset)| AppliedOffset {
                partition: partition as i32,
                offset: *offset,
            })
            .collect()
    }

    /// Heartbeats, membership, and full states to republish, until `shutdown`.
    async fn heartbeats(self: Arc<Self>, shutdown: CancellationToken) {
        let key = format!("~heartbeat/{}", self.me);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.options.heartbeat_interval) => {}
                _ = self.wake.notified() => {}
            }
            let mut record = self.record(
                "",
                "",
                CrdtRecordKind::Heartbeat,
                Bytes::new(),
                WriteConsistency::Local,
                None,
            );
            record.applied = self.applied_offsets();
            if let Err(e) = self.send(&key, &record) {
                debug!(error = %e, "queueing a heartbeat failed");
            }
            let changed = self
                .members
                .lock()
                .expect("members lock")
                .refresh(Instant::now());
            if changed {
                self.live_changed();
            }
        }
    }

    /// Read every partition from `from`, applying each record, until `shutdown`; ready once
    /// every partition reached `ends`.
    async fn follow(
        self: Arc<Self>,
        from: Vec<i64>,
        ends: Vec<i64>,
        shutdown: CancellationToken,
    ) -> Result<(), Error> {
        let topic = Arc::clone(&self.topic);
        let partitions: Vec<(&str, u32, i64)> = from
            .iter()
            .enumerate()
            .map(|(p, offset)| (topic.as_ref(), p as u32, *offset))
            .collect();
        {
            let mut applied = self.applied.lock().expect("applied lock");
            for (p, offset) in from.iter().enumerate() {
                applied[p] = *offset;
            }
        }
        let mut records = statehouse_kafka::reader::follow(&self.env.kafka, &partitions, shutdown)?;
        let caught_up = |this: &Self| {
            let applied = this.applied.lock().expect("applied lock");
            applied.iter().zip(&ends).all(|(a, e)| a >= e)
        };
        if caught_up(&self) {
            self.become_ready();
        }
        while let Some((_, message)) = records.recv().await {
            self.apply(message.partition, message.offset, message.value.as_deref());
            if !self.ready.load(Ordering::Acquire) && caught_up(&self) {
                self.become_ready();
            }
        }
        Ok(())
    }

    fn become_ready(&self) {
        self.ready.store(true, Ordering::Release);
        let entities = self.entries.lock().expect("entries lock").len();
        info!(replica = %self.me, entities, "CRDT replicas caught up; serving CRDT entities");
    }

    /// Flush queued records (bounded), at shutdown.
    pub(crate) fn flush(&self) {
        let broadcast = self.broadcast.read().expect("broadcast lock").clone();
        broadcast.flush(Duration::from_secs(5));
    }
}

fn kind_label(kind: CrdtRecordKind) -> &'static str {
    match kind {
        CrdtRecordKind::Delta => "delta",
        CrdtRecordKind::FullState => "full_state",
        CrdtRecordKind::Delete => "delete",
        CrdtRecordKind::Prune => "prune",
        CrdtRecordKind::Heartbeat => "heartbeat",
    }
}

fn consistency_label(consistency: WriteConsistency) -> &'static str {
    match consistency {
        WriteConsistency::Local => "local",
        WriteConsistency::Majority => "majority",
        WriteConsistency::All => "all",
    }
}
