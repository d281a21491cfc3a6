//! What an operator can see of a running Statehouse — services, partitions, one entity — and the
//! erasure of one entity, for `statehouse admin` and the gateway's web console.
//!
//! Everything here is read from the sources of truth, never from a processor's memory: the
//! service registry and the routing table (the compacted `<prefix>services` and
//! `<prefix>routing` topics, applied to a [`Registry`] exactly as the gateway's feed applies
//! them, so the owners shown are the owners the router uses), the journal and values topics
//! (`read_committed`), and the Cassandra backup (checkpoints, journal, snapshots, values).
//!
//! An entity's history is the backup's rows up to the partition's checkpoint plus the topic read
//! from the checkpoint, with Kafka's compaction rules applied (a later record of a key replaces
//! an earlier one; a tombstone removes it). Event payloads are decoded with the descriptors the
//! user function reported at discovery (the registry record), falling back to Statehouse's own.
//!
//! The state of an event-sourced entity lives in its user function's memory: what is shown is
//! its latest snapshot and the events after it (what activation would replay), said as such.
//!
//! [`Inspector::erase`] asks the owner of the entity's partition (`Processor/Erase`) to erase
//! it — the journal has one writer per partition (`ARCHITECTURE.md`, "Erasing an entity");
//! [`Inspector::erase_plan`] is the dry run: what an erasure would remove, changing nothing.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use prost_reflect::{DescriptorPool, DynamicMessage};
use serde::Serialize;
use statehouse_core::ids::{entity_key, journal_key, parse_journal_key};
use statehouse_core::topics::{audit_topic, routing_topic, services_topic};
use statehouse_core::{ServiceName, Topics, partition_for};
use statehouse_kafka::admin::{Admin, audit_topic_spec};
use statehouse_kafka::reader::{self, Isolation, Message};
use statehouse_schemas::avro::{AvroRecord, EventRecord, ServiceRecord, ValueRecord};
use statehouse_schemas::statehouse::processor::v1::{
    EraseRequest, NotOwner, processor_client::ProcessorClient,
};
use statehouse_store::Store;

use crate::config::Config;
use crate::method_index::EntityKind;
use crate::router::{Registry, feed};

/// A topic read that makes no progress for this long fails.
const READ_STALL: Duration = Duration::from_secs(30);
/// Bound of reading a partition's end offsets.
const ENDS_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an erasure may take at the owner (it waits for the backup to remove the rows).
const ERASE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the erasure waits for a connection to the owner.
const ERASE_CONNECT: Duration = Duration::from_secs(5);
/// Attempts at reaching the owner while the partition's ownership moves.
const ERASE_ATTEMPTS: u32 = 5;

/// The errors of inspection and erasure. Bad input (an unknown service, a key that names no
/// entity type) is told apart from the infrastructure failing.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No service of that name is in the registry.
    #[error("unknown service {service:?} (registered: {known})")]
    UnknownService {
        /// The name asked for.
        service: String,
        /// The registered names, comma separated.
        known: String,
    },
    /// The entity key does not name an entity of the service.
    #[error("bad entity key {key:?}: {reason}")]
    BadKey {
        /// The key given.
        key: String,
        /// Why.
        reason: String,
    },
    /// An erasure needs a reason (kept in the audit record).
    #[error("an erasure needs a non-empty --reason")]
    NoReason,
    /// The service's partition has no owner in the routing table (or it cannot be reached).
    #[error("partition {partition} of {service} has no reachable owner: {reason}")]
    NoOwner {
        /// The service.
        service: String,
        /// The partition.
        partition: u32,
        /// The last failure.
        reason: String,
    },
    /// The owner refused or failed the erasure.
    #[error("the owner refused the erasure: {0}")]
    Erase(String),
    /// A registry record that does not decode.
    #[error("the registry record of {service} is invalid: {reason}")]
    Registry {
        /// The service.
        service: String,
        /// Why.
        reason: String,
    },
    /// Kafka failed.
    #[error(transparent)]
    Kafka(#[from] statehouse_kafka::Error),
    /// Cassandra failed.
    #[error(transparent)]
    Store(#[from] statehouse_store::Error),
    /// `[internal-tls]` could not be set up (the erasure's channel to the owner).
    #[error("internal TLS: {0}")]
    Tls(#[from] crate::tls::Error),
}

/// A registered service and its entity types.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServiceInfo {
    pub name: String,
    /// Partitions of its journal topic (`None`: the topic does not exist).
    pub partitions: Option<u32>,
    pub entities: Vec<EntityTypeInfo>,
    /// The processors the registry record names.
    pub processors: Vec<ProcessorInfo>,
    /// The user function's SDK, `name version`.
    pub sdk: String,
    /// The Cloudstate protocol version the user function reported, `major.minor`.
    pub protocol: String,
    /// When the registry record was written, ms since the epoch.
    pub updated_at_ms: i64,
}

/// One entity type (or action service) of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EntityTypeInfo {
    /// `event-sourced`, `value`, `crdt`, `action` or `function` (legacy action).
    pub kind: &'static str,
    /// The user's gRPC service, e.g. `com.example.shoppingcart.ShoppingCart`.
    pub grpc_service: String,
    /// The persistence id (empty for actions).
    pub persistence_id: String,
}

/// A processor instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProcessorInfo {
    pub processor_id: String,
    pub endpoint: String,
}

/// One partition of a service (the fields of `statehouse.admin.v1.PartitionStatus`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionInfo {
    pub partition: u32,
    /// The owner in the routing table (`None`: nobody owns it yet).
    pub owner: Option<OwnerInfo>,
    /// The journal partition's end for `read_committed` readers (last stable offset).
    pub journal_end: i64,
    /// Everything of the journal partition before this offset is in Cassandra.
    pub journal_checkpoint: i64,
    /// The values partition's end (last stable offset).
    pub values_end: i64,
    /// The values partition's backup checkpoint.
    pub values_checkpoint: i64,
    /// Offsets not backed up yet, both topics (transaction markers included, so an idle
    /// partition may show a small lag until its next backup round).
    pub backup_lag: i64,
}

/// The owner of a partition, as the routing table says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OwnerInfo {
    pub processor_id: String,
    pub endpoint: String,
    pub epoch: i64,
}

/// Everything Statehouse holds of one entity.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EntityReport {
    pub service: String,
    pub persistence_id: String,
    pub entity_id: String,
    /// `event-sourced`, `value` or `crdt`.
    pub kind: &'static str,
    pub partition: u32,
    /// The journal, in seq order.
    pub events: Vec<EventInfo>,
    /// The snapshots, newest first.
    pub snapshots: Vec<SnapshotInfo>,
    pub state: State,
}

/// Where a record was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    /// The Cassandra backup (up to the partition's checkpoint).
    Cassandra,
    /// The Kafka topic (past the checkpoint).
    Kafka,
}

/// One event of an entity's journal.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventInfo {
    pub seq: i64,
    /// Its offset in the journal partition.
    pub offset: i64,
    /// When it was written, ms since the epoch.
    pub time_ms: i64,
    pub type_url: String,
    /// The event, decoded to JSON (undecodable: `{"@type", "base64"}`).
    pub event: serde_json::Value,
    /// The idempotency key of the command that emitted it.
    pub idempotency_key: Option<String>,
    pub source: Source,
}

/// One snapshot.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SnapshotInfo {
    /// The snapshot is the fold of events 1..=seq.
    pub seq: i64,
    pub time_ms: i64,
    pub type_url: String,
    pub snapshot: serde_json::Value,
    pub source: Source,
}

/// The current state of an entity, as far as Statehouse holds it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum State {
    /// A value entity: its stored value (`None`: none, or deleted).
    Value {
        seq: Option<i64>,
        type_url: Option<String>,
        value: Option<serde_json::Value>,
        deleted: bool,
    },
    /// An event-sourced entity: the state is in the user function's memory; activation would
    /// start it from `snapshot` (at `snapshot_seq`) and replay `events_after`.
    EventSourced {
        snapshot_seq: Option<i64>,
        snapshot: Option<serde_json::Value>,
        /// The seqs of the events after the snapshot.
        events_after: Vec<i64>,
        note: &'static str,
    },
    /// A CRDT: replicated in every processor's memory; not inspected here.
    Crdt { note: &'static str },
}

/// What an erasure of one entity would remove (`--dry-run`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ErasePlan {
    pub service: String,
    pub persistence_id: String,
    pub entity_id: String,
    pub partition: u32,
    /// Journal keys that would get a tombstone (the live ones, in seq order).
    pub journal_keys: Vec<String>,
    /// The values-topic key, tombstoned too.
    pub values_key: String,
    /// Whether the values topic holds a live record of it.
    pub value_record: bool,
    /// Rows the backup holds.
    pub journal_rows: u64,
    pub snapshot_rows: u64,
    pub value_row: bool,
    /// Who would do it.
    pub owner: Option<OwnerInfo>,
}

/// What an erasure did (`Processor/Erase`'s answer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EraseReport {
    pub service: String,
    pub persistence_id: String,
    pub entity_id: String,
    pub partition: u32,
    pub owner: OwnerInfo,
    pub journal_tombstones: i64,
    pub last_seq: i64,
    pub value_tombstone: bool,
    pub journal_rows_removed: i64,
    pub snapshot_rows_removed: i64,
    pub value_row_removed: bool,
    pub evicted: bool,
    pub audit_topic: String,
    pub audit_partition: i32,
    pub audit_offset: i64,
    pub erased_at_ms: i64,
}

/// The read side over Kafka and Cassandra. Cheap to keep; every call reads afresh.
#[derive(Clone)]
pub struct Inspector {
    kafka: statehouse_kafka::Options,
    store: Store,
    /// How the erasure reaches the owner (`[internal-tls]`).
    tls: Option<std::sync::Arc<crate::tls::ClientTls>>,
}

/// The registry as every router sees it, with the raw records.
struct Snapshot {
    registry: Registry,
    records: BTreeMap<String, ServiceRecord>,
}

impl Inspector {
    /// Connect to Cassandra (the keyspace must be migrated) and check the Kafka options.
    pub async fn new(config: &Config) -> Result<Self, Error> {
        config.kafka.validate()?;
        let tls = crate::tls::internal_client(&config.internal_tls)?;
        let store = Store::connect(&config.cassandra).await?;
        Ok(Self {
            kafka: config.kafka.clone(),
            store,
            tls,
        })
    }

    /// Every registered service with its entity types, sorted by name.
    pub async fn services(&self) -> Result<Vec<ServiceInfo>, Error> {
        let snapshot = self.registry().await?;
        let admin = Admin::new(&self.kafka)?;
        let mut out = Vec::with_capacity(snapshot.records.len());
        for (name, record) in &snapshot.records {
            let partitions = match ServiceName::new(name.clone()) {
                Ok(service) => {
                    let topics = Topics::new(self.kafka.topic_prefix.clone(), service);
                    admin.partition_count(&topics.journal()).await?
                }
                Err(_) => None,
            };
            out.push(service_info(record, partitions));
        }
        Ok(out)
    }

    /// Every partition of `service`: its owner in the routing table, the journal's end, the
    /// backup checkpoints and the backup lag.
    pub async fn partitions(&self, service: &ServiceName) -> Result<Vec<PartitionInfo>, Error> {
        let snapshot = self.registry().await?;
        known(&snapshot, service)?;
        let topics = Topics::new(self.kafka.topic_prefix.clone(), service.clone());
        let count = self.partition_count(&topics).await?;
        let journal_checkpoints = self
            .store
            .checkpoints(service.as_str(), &topics.journal())
            .await?;
        let values_checkpoints = self
            .store
            .checkpoints(service.as_str(), &topics.values())
            .await?;
        let mut out = Vec::with_capacity(count as usize);
        for partition in 0..count {
            let (journal_end, _) =
                reader::end_offsets(&self.kafka, &topics.journal(), partition, ENDS_TIMEOUT)
                    .await?;
            let (values_end, _) =
                reader::end_offsets(&self.kafka, &topics.values(), partition, ENDS_TIMEOUT).await?;
            let journal_checkpoint = journal_checkpoints
                .get(&(partition as i32))
                .copied()
                .unwrap_or(0);
            let values_checkpoint = values_checkpoints
                .get(&(partition as i32))
                .copied()
                .unwrap_or(0);
            out.push(PartitionInfo {
                partition,
                owner: owner(&snapshot.registry, service, partition),
                journal_end,
                journal_checkpoint,
                values_end,
                values_checkpoint,
                backup_lag: (journal_end - journal_checkpoint).max(0)
                    + (values_end - values_checkpoint).max(0),
            });
        }
        Ok(out)
    }

    /// One entity: its journal (decoded), its snapshots and its current state. `key` is
    /// `<persistence_id>|<entity_id>`, or just the entity id when the service has one entity
    /// type.
    pub async fn entity(&self, service: &ServiceName, key: &str) -> Result<EntityReport, Error> {
        let snapshot = self.registry().await?;
        let record = known(&snapshot, service)?;
        let (persistence_id, entity_id, kind) = resolve_key(record, key)?;
        let pool = descriptors(&snapshot.registry, service);
        let topics = Topics::new(self.kafka.topic_prefix.clone(), service.clone());
        let partition = partition_for(entity_id.as_bytes(), self.partition_count(&topics).await?);
        let storage_key = entity_key(&persistence_id, &entity_id);
        let mut report = EntityReport {
            service: service.to_string(),
            persistence_id: persistence_id.clone(),
            entity_id: entity_id.clone(),
            kind: kind_name(kind),
            partition,
            events: Vec::new(),
            snapshots: Vec::new(),
            state: State::Crdt {
                note: "CRDT state is replicated in every processor's memory; not inspected here",
            },
        };
        match kind {
            EntityKind::EventSourced => {
                let history = self
                    .history(service, &topics, partition, &storage_key)
                    .await?;
                report.events = history
                    .events
                    .values()
                    .map(|(event, offset, source)| EventInfo {
                        seq: event.seq,
                        offset: *offset,
                        time_ms: event.timestamp_ms,
                        type_url: event.type_url.clone(),
                        event: to_json(&pool, &event.type_url, &event.payload),
                        idempotency_key: event.idempotency_key.clone(),
                        source: *source,
                    })
                    .collect();
                report.snapshots = history
                    .snapshots
                    .iter()
                    .rev()
                    .map(|s| SnapshotInfo {
                        seq: s.seq,
                        time_ms: s.time_ms,
                        type_url: s.type_url.clone(),
                        snapshot: to_json(&pool, &s.type_url, &s.payload),
                        source: s.source,
                    })
                    .collect();
                let latest = report.snapshots.first();
                let from = latest.map_or(0, |s| s.seq);
                report.state = State::EventSourced {
                    snapshot_seq: latest.map(|s| s.seq),
                    snapshot: latest.map(|s| s.snapshot.clone()),
                    events_after: report
                        .events
                        .iter()
                        .map(|e| e.seq)
                        .filter(|&s| s > from)
                        .collect(),
                    note: "the state of an event-sourced entity lives in its user function's memory; \
                           activation starts it from this snapshot and replays these events",
                };
            }
            EntityKind::ValueEntity => {
                let value = self
                    .value(service, &topics, partition, &storage_key)
                    .await?;
                report.state = match value {
                    Some(v) => State::Value {
                        seq: Some(v.seq),
                        value: v.payload.as_ref().map(|p| to_json(&pool, &v.type_url, p)),
                        deleted: v.payload.is_none(),
                        type_url: Some(v.type_url),
                    },
                    None => State::Value {
                        seq: None,
                        type_url: None,
                        value: None,
                        deleted: false,
                    },
                };
            }
            _ => {}
        }
        Ok(report)
    }

    /// The dry run of [`Inspector::erase`]: what it would remove. Changes nothing.
    pub async fn erase_plan(&self, service: &ServiceName, key: &str) -> Result<ErasePlan, Error> {
        let snapshot = self.registry().await?;
        let record = known(&snapshot, service)?;
        let (persistence_id, entity_id, kind) = resolve_key(record, key)?;
        erasable(kind, key)?;
        let topics = Topics::new(self.kafka.topic_prefix.clone(), service.clone());
        let partition = partition_for(entity_id.as_bytes(), self.partition_count(&topics).await?);
        let storage_key = entity_key(&persistence_id, &entity_id);
        let history = self
            .history(service, &topics, partition, &storage_key)
            .await?;
        let value = self
            .value(service, &topics, partition, &storage_key)
            .await?;
        let rows = self
            .store
            .entity_rows(service.as_str(), &storage_key)
            .await?;
        Ok(ErasePlan {
            service: service.to_string(),
            journal_keys: history
                .events
                .keys()
                .map(|&seq| journal_key(&storage_key, seq as u64))
                .collect(),
            values_key: storage_key,
            value_record: value.is_some_and(|v| v.payload.is_some()),
            journal_rows: rows.journal,
            snapshot_rows: rows.snapshots,
            value_row: rows.value,
            owner: owner(&snapshot.registry, service, partition),
            persistence_id,
            entity_id,
            partition,
        })
    }

    /// Erase one entity through the owner of its partition (`Processor/Erase`): tombstones for
    /// its journal and values keys, its Cassandra rows removed, its active instance evicted, an
    /// audit record in `<prefix>audit` (created here if missing). Retried while the partition's
    /// ownership moves; an erasure that failed half way can be run again.
    pub async fn erase(
        &self,
        service: &ServiceName,
        key: &str,
        reason: &str,
        requested_by: &str,
    ) -> Result<EraseReport, Error> {
        if reason.trim().is_empty() {
            return Err(Error::NoReason);
        }
        let snapshot = self.registry().await?;
        let record = known(&snapshot, service)?;
        let (persistence_id, entity_id, kind) = resolve_key(record, key)?;
        erasable(kind, key)?;
        let topics = Topics::new(self.kafka.topic_prefix.clone(), service.clone());
        let partition = partition_for(entity_id.as_bytes(), self.partition_count(&topics).await?);
        self.ensure_audit_topic().await?;
        let request = EraseRequest {
            service: service.to_string(),
            persistence_id: persistence_id.clone(),
            entity_id: entity_id.clone(),
            reason: reason.to_string(),
            requested_by: requested_by.to_string(),
        };
        let mut last = String::from("no owner in the routing table");
        for attempt in 0..ERASE_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(500 << attempt.min(4))).await;
            }
            let registry = if attempt == 0 {
                snapshot.registry.clone()
            } else {
                self.registry().await?.registry
            };
            let Some(owner) = owner(&registry, service, partition) else {
                continue;
            };
            let channel =
                crate::router::connect_lazy(&owner.endpoint, self.tls.as_ref(), ERASE_CONNECT);
            let mut client = match channel {
                Ok(channel) => ProcessorClient::new(channel),
                Err(e) => {
                    last = format!("{}: {e}", owner.endpoint);
                    continue;
                }
            };
            let mut call = tonic::Request::new(request.clone());
            call.set_timeout(ERASE_TIMEOUT);
            match client.erase(call).await {
                Ok(response) => {
                    let r = response.into_inner();
                    return Ok(EraseReport {
                        service: service.to_string(),
                        persistence_id,
                        entity_id,
                        partition,
                        owner,
                        journal_tombstones: r.journal_tombstones,
                        last_seq: r.last_seq,
                        value_tombstone: r.value_tombstone,
                        journal_rows_removed: r.journal_rows,
                        snapshot_rows_removed: r.snapshot_rows,
                        value_row_removed: r.value_row,
                        evicted: r.evicted,
                        audit_topic: r.audit_topic,
                        audit_partition: r.audit_partition,
                        audit_offset: r.audit_offset,
                        erased_at_ms: r.erased_at_ms,
                    });
                }
                Err(status) if not_owner(&status) => {
                    last = format!(
                        "{} is not the owner any more: {}",
                        owner.endpoint,
                        status.message()
                    );
                }
                Err(status) if status.code() == tonic::Code::Unavailable => {
                    last = format!("{}: {}", owner.endpoint, status.message());
                }
                Err(status) => {
                    return Err(Error::Erase(format!(
                        "{:?}: {}",
                        status.code(),
                        status.message()
                    )));
                }
            }
        }
        Err(Error::NoOwner {
            service: service.to_string(),
            partition,
            reason: last,
        })
    }

    /// The audit records of erasures (JSON), oldest first, optionally of one service.
    pub async fn audit(
        &self,
        service: Option<&ServiceName>,
    ) -> Result<Vec<serde_json::Value>, Error> {
        let topic = audit_topic(&self.kafka.topic_prefix);
        let admin = Admin::new(&self.kafka)?;
        let mut out = Vec::new();
        for m in self.read_all(&admin, &topic).await? {
            let Some(value) = m.value else { continue };
            let Ok(json) = serde_json::from_slice::<serde_json::Value>(&value) else {
                continue;
            };
            if service.is_none_or(|s| json["service"] == s.as_str()) {
                out.push(json);
            }
        }
        out.sort_by_key(|j| j["erased_at_ms"].as_i64().unwrap_or(0));
        Ok(out)
    }

    async fn ensure_audit_topic(&self) -> Result<(), Error> {
        Admin::new(&self.kafka)?
            .ensure(&[audit_topic_spec(&self.kafka)])
            .await?;
        Ok(())
    }

    async fn partition_count(&self, topics: &Topics) -> Result<u32, Error> {
        Admin::new(&self.kafka)?
            .partition_count(&topics.journal())
            .await?
            .filter(|&n| n > 0)
            .ok_or_else(|| Error::UnknownService {
                service: topics.service().to_string(),
                known: format!("(its journal topic {} does not exist)", topics.journal()),
            })
    }

    /// Every partition of `topic` read to its end (read_committed), partition by partition; an
    /// absent topic holds nothing.
    async fn read_all(&self, admin: &Admin, topic: &str) -> Result<Vec<Message>, Error> {
        let mut out = Vec::new();
        for partition in 0..admin.partition_count(topic).await?.unwrap_or(0) {
            out.extend(
                reader::read_to_end(
                    &self.kafka,
                    topic,
                    partition,
                    0,
                    Isolation::ReadCommitted,
                    READ_STALL,
                )
                .await?,
            );
        }
        Ok(out)
    }

    /// The services and routing topics read to their ends into a fresh registry.
    async fn registry(&self) -> Result<Snapshot, Error> {
        let registry = Registry::new();
        let mut records = BTreeMap::new();
        let admin = Admin::new(&self.kafka)?;
        let services = services_topic(&self.kafka.topic_prefix);
        let routing = routing_topic(&self.kafka.topic_prefix);
        for m in self.read_all(&admin, &services).await? {
            let key = m.key.as_deref().and_then(|k| std::str::from_utf8(k).ok());
            feed::apply_service(&registry, key, m.value.as_deref());
            match (&m.value, key) {
                (None, Some(key)) => {
                    records.remove(key);
                }
                (Some(value), _) => {
                    if let Ok(record) = ServiceRecord::decode(value) {
                        records.insert(record.service.clone(), record);
                    }
                }
                (None, None) => {}
            }
        }
        for m in self.read_all(&admin, &routing).await? {
            let key = m.key.as_deref().and_then(|k| std::str::from_utf8(k).ok());
            feed::apply_routing(&registry, key, m.value.as_deref());
        }
        Ok(Snapshot { registry, records })
    }

    /// An entity's journal and snapshots: the backup's rows, then the journal partition from
    /// the checkpoint with compaction's rules (the latest record of a key wins; a tombstone
    /// removes it).
    async fn history(
        &self,
        service: &ServiceName,
        topics: &Topics,
        partition: u32,
        storage_key: &str,
    ) -> Result<History, Error> {
        let checkpoint = self
            .store
            .checkpoint(service.as_str(), &topics.journal(), partition as i32)
            .await?;
        let mut history = History::default();
        for row in self
            .store
            .read_journal(service.as_str(), storage_key, 1)
            .await?
        {
            let event = EventRecord {
                service: row.service,
                persistence_id: String::new(),
                entity_id: String::new(),
                seq: row.seq,
                type_url: row.type_url,
                payload: row.payload,
                command_id: row.command_id,
                idempotency_key: row.idempotency_key,
                timestamp_ms: row.timestamp_ms,
                writer: statehouse_schemas::avro::Writer {
                    processor_id: row.writer_id,
                    epoch: row.writer_epoch,
                },
                snapshot: None,
                traceparent: None,
                reply: None,
            };
            history
                .events
                .insert(row.seq, (event, row.offset, Source::Cassandra));
        }
        for row in self.store.snapshots(service.as_str(), storage_key).await? {
            history.snapshots.push(SnapshotAt {
                seq: row.seq,
                time_ms: row.timestamp_ms,
                type_url: row.type_url,
                payload: row.snapshot,
                source: Source::Cassandra,
            });
        }
        let messages = reader::read_to_end(
            &self.kafka,
            &topics.journal(),
            partition,
            checkpoint,
            Isolation::ReadCommitted,
            READ_STALL,
        )
        .await?;
        history.apply(storage_key, &messages);
        history.snapshots.sort_by_key(|s| s.seq);
        history.snapshots.dedup_by_key(|s| s.seq);
        Ok(history)
    }

    /// A value entity's latest record: the values partition from the checkpoint, else the
    /// backup's row.
    async fn value(
        &self,
        service: &ServiceName,
        topics: &Topics,
        partition: u32,
        storage_key: &str,
    ) -> Result<Option<ValueAt>, Error> {
        let checkpoint = self
            .store
            .checkpoint(service.as_str(), &topics.values(), partition as i32)
            .await?;
        let mut latest = self
            .store
            .read_value(service.as_str(), storage_key)
            .await?
            .map(|row| ValueAt {
                seq: row.seq,
                type_url: row.type_url,
                payload: row.value,
            });
        let messages = reader::read_to_end(
            &self.kafka,
            &topics.values(),
            partition,
            checkpoint,
            Isolation::ReadCommitted,
            READ_STALL,
        )
        .await?;
        for m in messages
            .iter()
            .filter(|m| m.key.as_deref() == Some(storage_key.as_bytes()))
        {
            latest = match &m.value {
                Some(value) => ValueRecord::decode(value).ok().map(|v| ValueAt {
                    seq: v.seq,
                    type_url: v.type_url,
                    payload: Some(v.payload),
                }),
                // A delete (with its deletion header) or an erasure (without): nothing stored.
                None => None,
            };
        }
        Ok(latest)
    }
}

/// An entity's history as read.
#[derive(Default)]
struct History {
    /// By seq: the event, its offset, where it was found.
    events: BTreeMap<i64, (EventRecord, i64, Source)>,
    snapshots: Vec<SnapshotAt>,
}

struct SnapshotAt {
    seq: i64,
    time_ms: i64,
    type_url: String,
    payload: Bytes,
    source: Source,
}

struct ValueAt {
    seq: i64,
    type_url: String,
    payload: Option<Bytes>,
}

impl History {
    /// Apply journal records (in offset order) of the entity `storage_key` over what the backup
    /// holds: an event replaces the event of its seq; a tombstone removes the event of its key
    /// (and a snapshot taken at it).
    fn apply(&mut self, storage_key: &str, messages: &[Message]) {
        for m in messages {
            let Some(key) = m.key.as_deref().and_then(|k| std::str::from_utf8(k).ok()) else {
                continue;
            };
            let Ok((entity, seq)) = parse_journal_key(key) else {
                continue;
            };
            if entity != storage_key {
                continue;
            }
            let seq = seq as i64;
            match &m.value {
                None => {
                    self.events.remove(&seq);
                    self.snapshots.retain(|s| s.seq != seq);
                }
                Some(value) => {
                    let Ok(event) = EventRecord::decode(value) else {
                        continue;
                    };
                    self.snapshots.retain(|s| s.seq != seq);
                    if let Some(s) = &event.snapshot {
                        self.snapshots.push(SnapshotAt {
                            seq,
                            time_ms: event.timestamp_ms,
                            type_url: s.type_url.clone(),
                            payload: s.payload.clone(),
                            source: Source::Kafka,
                        });
                    }
                    self.events.insert(seq, (event, m.offset, Source::Kafka));
                }
            }
        }
    }
}

fn service_info(record: &ServiceRecord, partitions: Option<u32>) -> ServiceInfo {
    ServiceInfo {
        name: record.service.clone(),
        partitions,
        entities: record
            .entities
            .iter()
            .map(|e| EntityTypeInfo {
                kind: EntityKind::of(&e.entity_type).map_or("unknown", kind_name),
                grpc_service: e.service_name.clone(),
                persistence_id: e.persistence_id.clone(),
            })
            .collect(),
        processors: record
            .processors
            .iter()
            .map(|p| ProcessorInfo {
                processor_id: p.processor_id.clone(),
                endpoint: p.endpoint.clone(),
            })
            .collect(),
        sdk: format!(
            "{} {}",
            record.support_library_name, record.support_library_version
        ),
        protocol: format!("{}.{}", record.protocol_major, record.protocol_minor),
        updated_at_ms: record.updated_at_ms,
    }
}

fn kind_name(kind: EntityKind) -> &'static str {
    match kind {
        EntityKind::EventSourced => "event-sourced",
        EntityKind::ValueEntity => "value",
        EntityKind::Crdt => "crdt",
        EntityKind::Action => "action",
        EntityKind::LegacyFunction => "function",
    }
}

fn known<'a>(snapshot: &'a Snapshot, service: &ServiceName) -> Result<&'a ServiceRecord, Error> {
    snapshot
        .records
        .get(service.as_str())
        .ok_or_else(|| Error::UnknownService {
            service: service.to_string(),
            known: if snapshot.records.is_empty() {
                "none".into()
            } else {
                snapshot
                    .records
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        })
}

fn owner(registry: &Registry, service: &ServiceName, partition: u32) -> Option<OwnerInfo> {
    registry
        .owner(service.as_str(), partition)
        .map(|o| OwnerInfo {
            processor_id: o.processor_id,
            endpoint: o.endpoint,
            epoch: o.epoch,
        })
}

fn erasable(kind: EntityKind, key: &str) -> Result<(), Error> {
    match kind {
        EntityKind::EventSourced | EntityKind::ValueEntity => Ok(()),
        other => Err(Error::BadKey {
            key: key.to_string(),
            reason: format!(
                "{} entities cannot be erased (only event-sourced and value entities)",
                kind_name(other)
            ),
        }),
    }
}

/// `<persistence_id>|<entity_id>`, or a bare entity id when the service has exactly one keyed
/// entity type: the persistence id, the entity id and the kind.
fn resolve_key(record: &ServiceRecord, key: &str) -> Result<(String, String, EntityKind), Error> {
    let bad = |reason: String| Error::BadKey {
        key: key.to_string(),
        reason,
    };
    let keyed: Vec<(&str, EntityKind)> = record
        .entities
        .iter()
        .filter_map(|e| {
            let kind = EntityKind::of(&e.entity_type)?;
            kind.is_keyed().then_some((e.persistence_id.as_str(), kind))
        })
        .collect();
    if keyed.is_empty() {
        return Err(bad(format!(
            "service {} has no entities, only actions",
            record.service
        )));
    }
    let names = || keyed.iter().map(|(p, _)| *p).collect::<Vec<_>>().join(", ");
    if let Some((persistence_id, entity_id)) = key.split_once('|')
        && let Some(&(_, kind)) = keyed.iter().find(|(p, _)| *p == persistence_id)
    {
        if entity_id.is_empty() {
            return Err(bad("the entity id is empty".into()));
        }
        return Ok((persistence_id.to_string(), entity_id.to_string(), kind));
    }
    if key.is_empty() {
        return Err(bad("the entity id is empty".into()));
    }
    match keyed.as_slice() {
        [(persistence_id, kind)] => Ok((persistence_id.to_string(), key.to_string(), *kind)),
        _ => Err(bad(format!(
            "service {} has several entity types ({}): write <persistence_id>|<entity_id>",
            record.service,
            names()
        ))),
    }
}

/// The descriptors of the user function (completed with the well-known types), as the
/// registry validated them; none if its record did not validate.
fn descriptors(registry: &Registry, service: &ServiceName) -> Option<DescriptorPool> {
    registry
        .service(service.as_str())
        .map(|s| s.index.pool().clone())
}

/// A protobuf `Any` (type URL and bytes) as JSON: decoded with the user function's
/// descriptors, else Statehouse's own; `{"@type", "base64"}` when neither knows the type.
fn to_json(pool: &Option<DescriptorPool>, type_url: &str, payload: &[u8]) -> serde_json::Value {
    let name = type_url.rsplit_once('/').map_or(type_url, |(_, name)| name);
    let ours = DescriptorPool::decode(statehouse_schemas::FILE_DESCRIPTOR_SET).ok();
    for pool in [pool.as_ref(), ours.as_ref()].into_iter().flatten() {
        if let Some(descriptor) = pool.get_message_by_name(name)
            && let Ok(message) = DynamicMessage::decode(descriptor, payload)
            && let Ok(json) = serde_json::to_value(&message)
        {
            return json;
        }
    }
    serde_json::json!({ "@type": type_url, "base64": base64(payload) })
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn not_owner(status: &tonic::Status) -> bool {
    NotOwner::from_status(status).is_some()
}

#[cfg(test)]
mod tests {
    use statehouse_schemas::avro::{Entity, Snapshot as AvroSnapshot, Writer};

    use super::*;

    fn record(entities: &[(&str, &str)]) -> ServiceRecord {
        ServiceRecord {
            service: "shop".into(),
            descriptor_set: Bytes::new(),
            entities: entities
                .iter()
                .map(|(kind, pid)| Entity {
                    entity_type: (*kind).into(),
                    service_name: format!("x.{pid}"),
                    persistence_id: (*pid).into(),
                    passivation_timeout_ms: None,
                })
                .collect(),
            processors: Vec::new(),
            protocol_major: 0,
            protocol_minor: 2,
            support_library_name: "sdk".into(),
            support_library_version: "1".into(),
            updated_at_ms: 0,
        }
    }

    #[test]
    fn keys_name_an_entity_type_or_fail_clearly() {
        let es = "cloudstate.eventsourced.EventSourced";
        let ve = "cloudstate.valueentity.ValueEntity";
        let action = "cloudstate.action.ActionProtocol";
        let one = record(&[(es, "cart"), (action, "")]);
        assert_eq!(
            resolve_key(&one, "u1").unwrap(),
            ("cart".into(), "u1".into(), EntityKind::EventSourced)
        );
        assert_eq!(resolve_key(&one, "cart|u|1").unwrap().1, "u|1");
        // An id with a `|` that names no persistence id is an id.
        assert_eq!(resolve_key(&one, "a|b").unwrap().1, "a|b");
        assert!(matches!(resolve_key(&one, ""), Err(Error::BadKey { .. })));
        assert!(matches!(
            resolve_key(&one, "cart|"),
            Err(Error::BadKey { .. })
        ));

        let two = record(&[(es, "cart"), (ve, "wallet")]);
        assert_eq!(
            resolve_key(&two, "wallet|w").unwrap().2,
            EntityKind::ValueEntity
        );
        let err = resolve_key(&two, "w").unwrap_err().to_string();
        assert!(err.contains("cart, wallet"), "{err}");

        let actions = record(&[(action, "")]);
        assert!(
            resolve_key(&actions, "x")
                .unwrap_err()
                .to_string()
                .contains("only actions")
        );
        assert!(erasable(EntityKind::Crdt, "k").is_err());
    }

    fn event(seq: i64, snapshot: bool) -> Bytes {
        Bytes::from(
            EventRecord {
                service: "shop".into(),
                persistence_id: "cart".into(),
                entity_id: "u1".into(),
                seq,
                type_url: "type.googleapis.com/x.E".into(),
                payload: Bytes::new(),
                command_id: None,
                idempotency_key: None,
                timestamp_ms: seq,
                writer: Writer {
                    processor_id: "p".into(),
                    epoch: 1,
                },
                snapshot: snapshot.then(|| AvroSnapshot {
                    type_url: "type.googleapis.com/x.S".into(),
                    payload: Bytes::new(),
                }),
                traceparent: None,
                reply: None,
            }
            .encode()
            .unwrap(),
        )
    }

    fn message(offset: i64, key: &str, value: Option<Bytes>) -> Message {
        Message {
            partition: 0,
            offset,
            key: Some(Bytes::from(key.to_string())),
            value,
            headers: Vec::new(),
            timestamp_ms: None,
        }
    }

    #[test]
    fn history_follows_compaction_rules_and_tombstones() {
        let mut history = History::default();
        history.apply(
            "cart|u1",
            &[
                message(0, "cart|u1#1", Some(event(1, false))),
                message(1, "cart|u2#1", Some(event(1, false))),
                message(2, "cart|u1#2", Some(event(2, true))),
                message(3, "not a journal key", None),
            ],
        );
        assert_eq!(history.events.keys().copied().collect::<Vec<_>>(), [1, 2]);
        assert_eq!(history.snapshots.len(), 1);
        // Erased: a tombstone per key removes the event and the snapshot it carried.
        history.apply(
            "cart|u1",
            &[message(4, "cart|u1#1", None), message(5, "cart|u1#2", None)],
        );
        assert!(history.events.is_empty());
        assert!(history.snapshots.is_empty());
        // Started again from seq 1.
        history.apply("cart|u1", &[message(6, "cart|u1#1", Some(event(1, false)))]);
        assert_eq!(history.events[&1].1, 6);
    }

    #[test]
    fn undecodable_payloads_are_shown_as_base64() {
        assert_eq!(base64(b"Man"), "TWFu");
        assert_eq!(base64(b"Ma"), "TWE=");
        assert_eq!(base64(b"M"), "TQ==");
        let json = to_json(&None, "type.googleapis.com/no.Such", b"\x01");
        assert_eq!(json["base64"], "AQ==");
        assert_eq!(json["@type"], "type.googleapis.com/no.Such");
    }
}
