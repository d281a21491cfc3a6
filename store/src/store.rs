use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt, stream};
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::policies::load_balancing::DefaultPolicy;
use scylla::statement::Consistency;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::value::CqlTimestamp;

use crate::{CrdtRow, Error, JournalRow, Options, SnapshotRow, ValueRow, migrations};

/// How many batches the store keeps in flight at once.
pub(crate) const CONCURRENCY: usize = 32;

type JournalTuple = (
    String,
    String,
    i64,
    String,
    Bytes,
    Option<String>,
    Option<String>,
    CqlTimestamp,
    String,
    i64,
    Option<String>,
    Option<Bytes>,
    i32,
    i64,
);

/// A connected store with its statements prepared. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    session: Session,
    keyspace: String,
    insert_journal: PreparedStatement,
    select_journal: PreparedStatement,
    insert_snapshot: PreparedStatement,
    select_snapshot: PreparedStatement,
    select_snapshot_at: PreparedStatement,
    upsert_value: PreparedStatement,
    select_value: PreparedStatement,
    upsert_checkpoint: PreparedStatement,
    select_checkpoints: PreparedStatement,
    upsert_crdt: PreparedStatement,
    select_crdts: PreparedStatement,
    projections: crate::projections::Statements,
}

pub(crate) async fn connect(options: &Options, with_keyspace: bool) -> Result<Session, Error> {
    options.validate()?;
    let mut policy = DefaultPolicy::builder().token_aware(true);
    if let Some(dc) = &options.local_datacenter {
        policy = policy.prefer_datacenter(dc.clone());
    }
    let profile = ExecutionProfile::builder()
        .consistency(Consistency::LocalQuorum)
        .request_timeout(Some(options.request_timeout()))
        .load_balancing_policy(policy.build())
        .build();
    let mut builder = SessionBuilder::new()
        .known_nodes(&options.contact_points)
        .connection_timeout(std::time::Duration::from_millis(options.connect_timeout_ms))
        .default_execution_profile_handle(profile.into_handle());
    if let (Some(user), Some(password)) = (&options.username, &options.password) {
        builder = builder.user(user, password);
    }
    if options.tls.enabled {
        builder = builder.tls_context(Some(tls_connector(&options.tls)?));
    }
    if with_keyspace {
        builder = builder.use_keyspace(&options.keyspace, false);
    }
    builder.build().await.map_err(|e| Error::Connect {
        contact_points: options.contact_points.join(","),
        reason: e.to_string(),
    })
}

/// The OpenSSL client context of `[cassandra.tls]`: peers verified against `ca-file` (else the
/// system's roots) and, per connection, against the node's IP address (the driver sets it).
fn tls_connector(
    tls: &crate::options::TlsOptions,
) -> Result<openssl::ssl::SslConnectorBuilder, Error> {
    use openssl::ssl::{SslConnector, SslFiletype, SslMethod};
    let invalid = |what: String, e: openssl::error::ErrorStack| {
        Error::InvalidOption(format!("cassandra.tls: {what}: {e}"))
    };
    let mut builder = SslConnector::builder(SslMethod::tls_client())
        .map_err(|e| invalid("cannot create an OpenSSL context".into(), e))?;
    if let Some(ca) = &tls.ca_file {
        builder
            .set_ca_file(ca)
            .map_err(|e| invalid(format!("cannot load ca-file {}", ca.display()), e))?;
    }
    if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
        builder
            .set_certificate_chain_file(cert)
            .map_err(|e| invalid(format!("cannot load cert-file {}", cert.display()), e))?;
        builder
            .set_private_key_file(key, SslFiletype::PEM)
            .map_err(|e| invalid(format!("cannot load key-file {}", key.display()), e))?;
        builder.check_private_key().map_err(|e| {
            invalid(
                format!("key-file {} does not match cert-file", key.display()),
                e,
            )
        })?;
    }
    Ok(builder)
}

impl Store {
    /// Connect to a migrated keyspace and prepare the statements. Fails with
    /// [`Error::NotMigrated`] (saying to run `statehouse admin migrate`) if it is not.
    pub async fn connect(options: &Options) -> Result<Self, Error> {
        let session = match connect(options, true).await {
            Ok(session) => session,
            Err(Error::Connect { reason, .. })
                if reason.contains("Keyspace") || reason.contains("keyspace") =>
            {
                return Err(Error::NotMigrated {
                    keyspace: options.keyspace.clone(),
                    table: "(keyspace)".into(),
                });
            }
            Err(e) => return Err(e),
        };
        let ks = &options.keyspace;
        let versions = migrations::applied_versions(&session, ks)
            .await
            .map_err(|_| Error::NotMigrated {
                keyspace: ks.clone(),
                table: "schema_migrations".into(),
            })?;
        if versions.last().copied().unwrap_or(0) < migrations::latest_version() {
            return Err(Error::NotMigrated {
                keyspace: ks.clone(),
                table: format!("migration {}", migrations::latest_version()),
            });
        }
        let prepare = async |cql: &str| {
            session
                .prepare(cql)
                .await
                .map_err(|e| Error::query(format!("preparing {cql}"), e))
        };
        let inner = Inner {
            insert_journal: prepare(
                "INSERT INTO journal (service, entity_id, seq, type_url, payload, command_id, \
                 idempotency_key, event_time, writer_id, writer_epoch, reply_type_url, reply, \
                 kafka_partition, kafka_offset) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .await?,
            select_journal: prepare(
                "SELECT service, entity_id, seq, type_url, payload, command_id, idempotency_key, \
                 event_time, writer_id, writer_epoch, reply_type_url, reply, kafka_partition, \
                 kafka_offset FROM journal \
                 WHERE service = ? AND entity_id = ? AND seq >= ?",
            )
            .await?,
            insert_snapshot: prepare(
                "INSERT INTO snapshots (service, entity_id, seq, type_url, snapshot, snapshot_time) \
                 VALUES (?, ?, ?, ?, ?, ?)",
            )
            .await?,
            select_snapshot: prepare(
                "SELECT seq, type_url, snapshot, snapshot_time FROM snapshots \
                 WHERE service = ? AND entity_id = ? LIMIT 1",
            )
            .await?,
            select_snapshot_at: prepare(
                "SELECT seq, type_url, snapshot, snapshot_time FROM snapshots \
                 WHERE service = ? AND entity_id = ? AND seq <= ? LIMIT 1",
            )
            .await?,
            upsert_value: prepare(
                "INSERT INTO entity_values (service, entity_id, seq, type_url, value, deleted, \
                 kafka_partition, kafka_offset, record) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) \
                 USING TIMESTAMP ?",
            )
            .await?,
            select_value: prepare(
                "SELECT seq, type_url, value, deleted, kafka_partition, kafka_offset, record \
                 FROM entity_values WHERE service = ? AND entity_id = ?",
            )
            .await?,
            upsert_checkpoint: prepare(
                "INSERT INTO checkpoints (service, topic, kafka_partition, kafka_offset, updated_at) \
                 VALUES (?, ?, ?, ?, toTimestamp(now())) USING TIMESTAMP ?",
            )
            .await?,
            select_checkpoints: prepare(
                "SELECT kafka_partition, kafka_offset FROM checkpoints WHERE service = ? AND topic = ?",
            )
            .await?,
            upsert_crdt: prepare(
                "INSERT INTO crdt_states (service, kafka_partition, entity_key, persistence_id, \
                 entity_id, state, deleted, pruned, kafka_offset) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ?",
            )
            .await?,
            select_crdts: prepare(
                "SELECT entity_key, persistence_id, entity_id, state, deleted, pruned, kafka_offset \
                 FROM crdt_states WHERE service = ? AND kafka_partition = ?",
            )
            .await?,
            projections: crate::projections::Statements::prepare(&session).await?,
            keyspace: ks.clone(),
            session,
        };
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    pub fn keyspace(&self) -> &str {
        &self.inner.keyspace
    }

    pub(crate) fn session(&self) -> &Session {
        &self.inner.session
    }

    pub(crate) fn projection_statements(&self) -> &crate::projections::Statements {
        &self.inner.projections
    }

    /// Write journal rows. Idempotent (a row is keyed by service, entity and seq), so a batch
    /// can be retried as a whole after any failure. Rows of one entity go in one single-partition
    /// batch; batches run concurrently.
    pub async fn write_journal(&self, rows: &[JournalRow]) -> Result<(), Error> {
        let mut by_entity: BTreeMap<(&str, &str), Vec<&JournalRow>> = BTreeMap::new();
        for row in rows {
            by_entity
                .entry((&row.service, &row.entity_id))
                .or_default()
                .push(row);
        }
        let batches: Vec<_> = by_entity
            .into_values()
            .map(|rows| self.write_entity_batch(rows))
            .collect();
        stream::iter(batches)
            .buffer_unordered(CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    async fn write_entity_batch(&self, rows: Vec<&JournalRow>) -> Result<(), Error> {
        let mut batch = Batch::new(BatchType::Unlogged);
        let mut values = Vec::with_capacity(rows.len());
        for row in rows {
            batch.append_statement(self.inner.insert_journal.clone());
            values.push((
                &row.service,
                &row.entity_id,
                row.seq,
                &row.type_url,
                &row.payload,
                &row.command_id,
                &row.idempotency_key,
                CqlTimestamp(row.timestamp_ms),
                &row.writer_id,
                row.writer_epoch,
                row.reply.as_ref().map(|(t, _)| t),
                row.reply.as_ref().map(|(_, p)| p),
                row.partition,
                row.offset,
            ));
        }
        self.inner
            .session
            .batch(&batch, values)
            .await
            .map_err(|e| Error::query("writing journal rows", e))?;
        Ok(())
    }

    /// The journal of an entity from `from_seq` on, in seq order.
    pub async fn read_journal(
        &self,
        service: &str,
        entity_id: &str,
        from_seq: i64,
    ) -> Result<Vec<JournalRow>, Error> {
        let pager = self
            .inner
            .session
            .execute_iter(
                self.inner.select_journal.clone(),
                (service, entity_id, from_seq),
            )
            .await
            .map_err(|e| Error::query("reading the journal", e))?;
        let mut rows = pager
            .rows_stream::<JournalTuple>()
            .map_err(|e| Error::data("journal", e))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().await {
            let r = row.map_err(|e| Error::data("journal", e))?;
            out.push(JournalRow {
                service: r.0,
                entity_id: r.1,
                seq: r.2,
                type_url: r.3,
                payload: r.4,
                command_id: r.5,
                idempotency_key: r.6,
                timestamp_ms: r.7.0,
                writer_id: r.8,
                writer_epoch: r.9,
                reply: r.10.zip(r.11),
                partition: r.12,
                offset: r.13,
            });
        }
        Ok(out)
    }

    /// Store a snapshot (immutable: the same seq always holds the same state).
    pub async fn write_snapshot(&self, row: &SnapshotRow) -> Result<(), Error> {
        self.inner
            .session
            .execute_unpaged(
                &self.inner.insert_snapshot,
                (
                    &row.service,
                    &row.entity_id,
                    row.seq,
                    &row.type_url,
                    &row.snapshot,
                    CqlTimestamp(row.timestamp_ms),
                ),
            )
            .await
            .map_err(|e| Error::query("writing a snapshot", e))?;
        Ok(())
    }

    /// The newest snapshot of an entity, or the newest at or before `at_most_seq`.
    pub async fn latest_snapshot(
        &self,
        service: &str,
        entity_id: &str,
        at_most_seq: Option<i64>,
    ) -> Result<Option<SnapshotRow>, Error> {
        let result = match at_most_seq {
            None => {
                self.inner
                    .session
                    .execute_unpaged(&self.inner.select_snapshot, (service, entity_id))
                    .await
            }
            Some(seq) => {
                self.inner
                    .session
                    .execute_unpaged(&self.inner.select_snapshot_at, (service, entity_id, seq))
                    .await
            }
        }
        .map_err(|e| Error::query("reading a snapshot", e))?;
        let rows = result
            .into_rows_result()
            .map_err(|e| Error::data("snapshots", e))?;
        let row = rows
            .maybe_first_row::<(i64, String, Bytes, CqlTimestamp)>()
            .map_err(|e| Error::data("snapshots", e))?;
        Ok(row.map(|(seq, type_url, snapshot, at)| SnapshotRow {
            service: service.to_string(),
            entity_id: entity_id.to_string(),
            seq,
            type_url,
            snapshot,
            timestamp_ms: at.0,
        }))
    }

    /// Store the state of a value entity as of Kafka offset `row.offset`. A write of an older
    /// offset never replaces a newer one (the offset is the write timestamp).
    pub async fn write_value(&self, row: &ValueRow) -> Result<(), Error> {
        self.inner
            .session
            .execute_unpaged(
                &self.inner.upsert_value,
                (
                    &row.service,
                    &row.entity_id,
                    row.seq,
                    &row.type_url,
                    &row.value,
                    row.value.is_none(),
                    row.partition,
                    row.offset,
                    &row.record,
                    write_timestamp(row.offset),
                ),
            )
            .await
            .map_err(|e| Error::query("writing a value", e))?;
        Ok(())
    }

    pub async fn read_value(
        &self,
        service: &str,
        entity_id: &str,
    ) -> Result<Option<ValueRow>, Error> {
        let result = self
            .inner
            .session
            .execute_unpaged(&self.inner.select_value, (service, entity_id))
            .await
            .map_err(|e| Error::query("reading a value", e))?;
        let rows = result
            .into_rows_result()
            .map_err(|e| Error::data("entity_values", e))?;
        let row = rows
            .maybe_first_row::<(i64, String, Option<Bytes>, bool, i32, i64, Option<Bytes>)>()
            .map_err(|e| Error::data("entity_values", e))?;
        Ok(row.map(
            |(seq, type_url, value, deleted, partition, offset, record)| ValueRow {
                service: service.to_string(),
                entity_id: entity_id.to_string(),
                seq,
                type_url,
                value: if deleted { None } else { value },
                partition,
                offset,
                record,
            },
        ))
    }

    /// Record that everything of `topic`/`partition` before `offset` is in Cassandra. Only call
    /// it once those writes succeeded. A smaller offset written later never replaces a larger one.
    pub async fn write_checkpoint(
        &self,
        service: &str,
        topic: &str,
        partition: i32,
        offset: i64,
    ) -> Result<(), Error> {
        self.inner
            .session
            .execute_unpaged(
                &self.inner.upsert_checkpoint,
                (service, topic, partition, offset, write_timestamp(offset)),
            )
            .await
            .map_err(|e| Error::query("writing a checkpoint", e))?;
        Ok(())
    }

    /// The checkpoints of every partition of `topic` (partitions never backed up are absent).
    pub async fn checkpoints(
        &self,
        service: &str,
        topic: &str,
    ) -> Result<BTreeMap<i32, i64>, Error> {
        let result = self
            .inner
            .session
            .execute_unpaged(&self.inner.select_checkpoints, (service, topic))
            .await
            .map_err(|e| Error::query("reading checkpoints", e))?;
        let rows = result
            .into_rows_result()
            .map_err(|e| Error::data("checkpoints", e))?;
        let mut out = BTreeMap::new();
        for row in rows
            .rows::<(i32, i64)>()
            .map_err(|e| Error::data("checkpoints", e))?
        {
            let (partition, offset) = row.map_err(|e| Error::data("checkpoints", e))?;
            out.insert(partition, offset);
        }
        Ok(out)
    }

    /// The checkpoint of one partition: 0 if it was never backed up.
    pub async fn checkpoint(
        &self,
        service: &str,
        topic: &str,
        partition: i32,
    ) -> Result<i64, Error> {
        Ok(self
            .checkpoints(service, topic)
            .await?
            .get(&partition)
            .copied()
            .unwrap_or(0))
    }
}

impl Store {
    /// Store full CRDT states. A row as of an older offset never replaces a newer one.
    pub async fn write_crdts(&self, rows: &[CrdtRow]) -> Result<(), Error> {
        let writes: Vec<_> = rows.iter().map(|row| self.write_crdt(row)).collect();
        stream::iter(writes)
            .buffer_unordered(CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    async fn write_crdt(&self, row: &CrdtRow) -> Result<(), Error> {
        self.inner
            .session
            .execute_unpaged(
                &self.inner.upsert_crdt,
                (
                    &row.service,
                    row.partition,
                    &row.entity_key,
                    &row.persistence_id,
                    &row.entity_id,
                    &row.state,
                    row.deleted,
                    &row.pruned,
                    row.offset,
                    write_timestamp(row.offset),
                ),
            )
            .await
            .map_err(|e| Error::query("writing a CRDT state", e))?;
        Ok(())
    }

    /// Every CRDT state backed up for one partition of the broadcast topic.
    pub async fn read_crdts(&self, service: &str, partition: i32) -> Result<Vec<CrdtRow>, Error> {
        type Tuple = (
            String,
            String,
            String,
            Option<Bytes>,
            Option<bool>,
            Option<Vec<String>>,
            i64,
        );
        let mut rows = self
            .inner
            .session
            .execute_iter(self.inner.select_crdts.clone(), (service, partition))
            .await
            .map_err(|e| Error::query("reading CRDT states", e))?
            .rows_stream::<Tuple>()
            .map_err(|e| Error::data("crdt_states", e))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().await {
            let (entity_key, persistence_id, entity_id, state, deleted, pruned, offset) =
                row.map_err(|e| Error::data("crdt_states", e))?;
            out.push(CrdtRow {
                service: service.to_string(),
                partition,
                entity_key,
                persistence_id,
                entity_id,
                state,
                deleted: deleted.unwrap_or(false),
                pruned: pruned.unwrap_or_default(),
                offset,
            });
        }
        Ok(out)
    }
}

/// Cassandra write timestamp for data as of a Kafka offset: newer offsets win last-write-wins.
/// Offset 0 maps to 1 so that even the first record beats a timestamp-less default.
pub(crate) fn write_timestamp(offset: i64) -> i64 {
    offset.saturating_add(1)
}
