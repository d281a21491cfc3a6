//! Schema migrations of the keyspace: ordered, idempotent, recorded in `schema_migrations`.
//!
//! `statehouse admin migrate` runs them (also as a Helm hook). Running them again — or from two
//! processes at once — changes nothing: every statement is `IF NOT EXISTS` and applied versions
//! are recorded. A migration, once shipped, is never edited; changes come as a new version.

use scylla::client::session::Session;

use crate::{Error, Options};

/// One schema change.
#[derive(Debug)]
pub struct Migration {
    pub version: i32,
    pub description: &'static str,
    /// CQL statements; `{ks}` stands for the keyspace.
    pub statements: &'static [&'static str],
}

/// Every migration, in order.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "journal, snapshots, values, CRDT state, checkpoints, projection offsets",
        statements: &[
            // One partition per entity, events in seq order.
            "CREATE TABLE IF NOT EXISTS {ks}.journal (
            service text, entity_id text, seq bigint,
            type_url text, payload blob,
            command_id text, idempotency_key text, event_time timestamp,
            writer_id text, writer_epoch bigint,
            reply_type_url text, reply blob,
            kafka_partition int, kafka_offset bigint,
            PRIMARY KEY ((service, entity_id), seq)
        ) WITH CLUSTERING ORDER BY (seq ASC)",
            // Immutable snapshots, newest first: `LIMIT 1` is the latest.
            "CREATE TABLE IF NOT EXISTS {ks}.snapshots (
            service text, entity_id text, seq bigint,
            type_url text, snapshot blob, snapshot_time timestamp,
            PRIMARY KEY ((service, entity_id), seq)
        ) WITH CLUSTERING ORDER BY (seq DESC)",
            // Value-entity state (`values` is a CQL keyword, hence the name).
            "CREATE TABLE IF NOT EXISTS {ks}.entity_values (
            service text, entity_id text, seq bigint,
            type_url text, value blob, deleted boolean,
            kafka_partition int, kafka_offset bigint,
            PRIMARY KEY ((service, entity_id))
        )",
            // Full CRDT states with the delta-topic offsets they include.
            "CREATE TABLE IF NOT EXISTS {ks}.crdt_state (
            service text, entity_id text,
            state blob, offsets map<int, bigint>, deleted boolean,
            PRIMARY KEY ((service, entity_id))
        )",
            // Everything of (service, topic, partition) before `kafka_offset` is in Cassandra.
            "CREATE TABLE IF NOT EXISTS {ks}.checkpoints (
            service text, topic text, kafka_partition int,
            kafka_offset bigint, updated_at timestamp,
            PRIMARY KEY ((service, topic), kafka_partition)
        )",
            "CREATE TABLE IF NOT EXISTS {ks}.projection_offsets (
            projection text, topic text, kafka_partition int,
            kafka_offset bigint, updated_at timestamp,
            PRIMARY KEY ((projection, topic), kafka_partition)
        )",
        ],
    },
    Migration {
        version: 2,
        description: "entity_values.record: the value entity's latest record (ValueRecord or ValueDeletion, Avro single-object encoding)",
        statements: &["ALTER TABLE {ks}.entity_values ADD record blob"],
    },
    Migration {
        version: 3,
        description: "crdt_states: full CRDT states per broadcast-topic partition (replaces crdt_state, which no release wrote)",
        statements: &[
            "DROP TABLE IF EXISTS {ks}.crdt_state",
            // Full CRDT states by broadcast-topic partition, each with the offset of that
            // partition it includes everything before; read back whole at bootstrap.
            "CREATE TABLE IF NOT EXISTS {ks}.crdt_states (
            service text, kafka_partition int, entity_key text,
            persistence_id text, entity_id text,
            state blob, deleted boolean, pruned set<text>, kafka_offset bigint,
            PRIMARY KEY ((service, kafka_partition), entity_key)
        )",
        ],
    },
    Migration {
        version: 4,
        description: "projections: their generations, rows, progress and parked events (replaces projection_offsets, which no release wrote)",
        statements: &[
            "DROP TABLE IF EXISTS {ks}.projection_offsets",
            // Per projection: the generation served, and the one being rebuilt (0: none).
            "CREATE TABLE IF NOT EXISTS {ks}.projections (
            service text, projection text, persistence_id text,
            generation int, building int, updated_at timestamp,
            PRIMARY KEY ((service), projection)
        )",
            // One row per entity and generation; `seq` is the entity's last event folded in,
            // also the write timestamp, so an older fold never replaces a newer one.
            "CREATE TABLE IF NOT EXISTS {ks}.projection_rows (
            service text, projection text, generation int, entity_id text,
            seq bigint, type_url text, row blob, deleted boolean,
            PRIMARY KEY ((service, projection, generation, entity_id))
        )",
            // The next journal offset of each partition the generation has read up to (its
            // rows are written first; never moves back).
            "CREATE TABLE IF NOT EXISTS {ks}.projection_progress (
            service text, projection text, generation int, kafka_partition int,
            kafka_offset bigint, updated_at timestamp,
            PRIMARY KEY ((service, projection, generation), kafka_partition)
        )",
            // Events the handler kept failing on: their partition waits until one is skipped.
            "CREATE TABLE IF NOT EXISTS {ks}.projection_parked (
            service text, projection text, generation int, kafka_partition int,
            kafka_offset bigint, entity_id text, seq bigint, error text, skip boolean,
            parked_at timestamp,
            PRIMARY KEY ((service, projection, generation), kafka_partition, kafka_offset)
        )",
        ],
    },
];

/// The version a fully migrated keyspace has.
pub fn latest_version() -> i32 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// What a migration run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub keyspace: String,
    pub applied: Vec<i32>,
    pub already_applied: Vec<i32>,
}

/// Create the keyspace if needed and apply every migration it lacks.
pub async fn run(options: &Options) -> Result<Report, Error> {
    let session = crate::store::connect(options, false).await?;
    run_on(&session, options).await
}

pub(crate) async fn run_on(session: &Session, options: &Options) -> Result<Report, Error> {
    let ks = &options.keyspace;
    ddl(
        session,
        &format!(
            "CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {}",
            options.replication_cql()
        ),
    )
    .await?;
    ddl(
        session,
        &format!(
            "CREATE TABLE IF NOT EXISTS {ks}.schema_migrations (
                version int PRIMARY KEY, description text, applied_at timestamp)"
        ),
    )
    .await?;
    let done = applied_versions(session, ks).await?;
    let mut report = Report {
        keyspace: ks.clone(),
        applied: Vec::new(),
        already_applied: Vec::new(),
    };
    for migration in MIGRATIONS {
        if done.contains(&migration.version) {
            report.already_applied.push(migration.version);
            continue;
        }
        for statement in migration.statements {
            ddl(session, &statement.replace("{ks}", ks)).await?;
        }
        session
            .query_unpaged(
                format!(
                    "INSERT INTO {ks}.schema_migrations (version, description, applied_at)
                     VALUES (?, ?, toTimestamp(now()))"
                ),
                (migration.version, migration.description),
            )
            .await
            .map_err(|e| Error::query(format!("recording migration {}", migration.version), e))?;
        tracing::info!(keyspace = %ks, version = migration.version, description = migration.description, "migration applied");
        report.applied.push(migration.version);
    }
    Ok(report)
}

pub(crate) async fn applied_versions(session: &Session, ks: &str) -> Result<Vec<i32>, Error> {
    let result = session
        .query_unpaged(format!("SELECT version FROM {ks}.schema_migrations"), ())
        .await
        .map_err(|e| Error::query("reading schema_migrations", e))?;
    let rows = result
        .into_rows_result()
        .map_err(|e| Error::data("schema_migrations", e))?;
    let mut versions = Vec::new();
    for row in rows
        .rows::<(i32,)>()
        .map_err(|e| Error::data("schema_migrations", e))?
    {
        versions.push(row.map_err(|e| Error::data("schema_migrations", e))?.0);
    }
    versions.sort_unstable();
    Ok(versions)
}

async fn ddl(session: &Session, statement: &str) -> Result<(), Error> {
    if let Err(e) = session.query_unpaged(statement, ()).await {
        // `ALTER TABLE … ADD` has no portable `IF NOT EXISTS` (ScyllaDB lacks it): a column
        // that another migrating process added meanwhile is no error.
        let text = e.to_string();
        let added_already = statement.contains(" ADD ")
            && (text.contains("conflicts with an existing column")
                || text.contains("already exist"));
        if !added_already {
            return Err(Error::query(first_line(statement), e));
        }
    }
    session
        .await_schema_agreement()
        .await
        .map_err(|e| Error::query("waiting for schema agreement", e))?;
    Ok(())
}

fn first_line(statement: &str) -> String {
    statement
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_string()
}
