//! What `statehouse projector` keeps in Cassandra (migration 4): each projection's generations,
//! its rows (one per entity), its progress per journal partition and its parked events.
//!
//! Exactly once in effect rests on three rules (`ARCHITECTURE.md`, "Projections"):
//! a row carries the seq of its entity's last event folded in and is written with that seq as
//! its write timestamp (an older fold — a replay, a zombie projector — never replaces a newer
//! one); events at or below a row's seq are not folded again; progress is written only after
//! the rows it covers, with the offset as its timestamp (it never moves back).

use std::collections::BTreeMap;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt, stream};
use scylla::client::session::Session;
use scylla::deserialize::row::DeserializeRow;
use scylla::response::query_result::QueryResult;
use scylla::serialize::row::SerializeRow;
use scylla::statement::prepared::PreparedStatement;

use crate::store::{CONCURRENCY, write_timestamp};
use crate::{Error, Store};

/// A projection's generations: the one served, and the one being rebuilt (0: none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Generations {
    pub serving: i32,
    pub building: i32,
}

/// A projection as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectionRecord {
    pub name: String,
    pub persistence_id: String,
    pub generations: Generations,
}

/// One entity's row in a projection generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectionRow {
    pub entity_id: String,
    /// The seq of the entity's last event folded in.
    pub seq: i64,
    /// The row (`None` when deleted), with its protobuf type URL.
    pub row: Option<(String, Bytes)>,
}

/// An event the handler kept failing on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parked {
    pub partition: i32,
    pub offset: i64,
    pub entity_id: String,
    pub seq: i64,
    pub error: String,
    pub skip: bool,
}

pub(crate) struct Statements {
    insert_projection: PreparedStatement,
    select_projection: PreparedStatement,
    select_projections: PreparedStatement,
    start_rebuild: PreparedStatement,
    switch: PreparedStatement,
    select_row: PreparedStatement,
    upsert_row: PreparedStatement,
    select_rows: PreparedStatement,
    select_row_ids: PreparedStatement,
    upsert_progress: PreparedStatement,
    select_progress: PreparedStatement,
    insert_parked: PreparedStatement,
    select_parked: PreparedStatement,
    skip_parked: PreparedStatement,
    delete_row: PreparedStatement,
    delete_progress: PreparedStatement,
    delete_parked: PreparedStatement,
}

impl Statements {
    pub(crate) async fn prepare(session: &Session) -> Result<Self, Error> {
        let prepare = async |cql: &str| {
            session
                .prepare(cql)
                .await
                .map_err(|e| Error::query(format!("preparing {cql}"), e))
        };
        Ok(Self {
            insert_projection: prepare(
                "INSERT INTO projections (service, projection, persistence_id, generation, \
                 building, updated_at) VALUES (?, ?, ?, 1, 0, toTimestamp(now())) IF NOT EXISTS",
            )
            .await?,
            select_projection: prepare(
                "SELECT projection, persistence_id, generation, building FROM projections \
                 WHERE service = ? AND projection = ?",
            )
            .await?,
            select_projections: prepare(
                "SELECT projection, persistence_id, generation, building FROM projections \
                 WHERE service = ?",
            )
            .await?,
            start_rebuild: prepare(
                "UPDATE projections SET building = ?, updated_at = toTimestamp(now()) \
                 WHERE service = ? AND projection = ? IF generation = ? AND building = 0",
            )
            .await?,
            switch: prepare(
                "UPDATE projections SET generation = ?, building = 0, \
                 updated_at = toTimestamp(now()) \
                 WHERE service = ? AND projection = ? IF building = ?",
            )
            .await?,
            select_row: prepare(
                "SELECT seq, type_url, row, deleted FROM projection_rows \
                 WHERE service = ? AND projection = ? AND generation = ? AND entity_id = ?",
            )
            .await?,
            upsert_row: prepare(
                "INSERT INTO projection_rows (service, projection, generation, entity_id, seq, \
                 type_url, row, deleted) VALUES (?, ?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ?",
            )
            .await?,
            select_rows: prepare(
                "SELECT entity_id, seq, type_url, row, deleted FROM projection_rows \
                 WHERE service = ? AND projection = ? AND generation = ? ALLOW FILTERING",
            )
            .await?,
            select_row_ids: prepare(
                "SELECT entity_id FROM projection_rows \
                 WHERE service = ? AND projection = ? AND generation = ? ALLOW FILTERING",
            )
            .await?,
            upsert_progress: prepare(
                "INSERT INTO projection_progress (service, projection, generation, \
                 kafka_partition, kafka_offset, updated_at) \
                 VALUES (?, ?, ?, ?, ?, toTimestamp(now())) USING TIMESTAMP ?",
            )
            .await?,
            select_progress: prepare(
                "SELECT kafka_partition, kafka_offset FROM projection_progress \
                 WHERE service = ? AND projection = ? AND generation = ?",
            )
            .await?,
            insert_parked: prepare(
                "INSERT INTO projection_parked (service, projection, generation, \
                 kafka_partition, kafka_offset, entity_id, seq, error, skip, parked_at) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, false, toTimestamp(now())) IF NOT EXISTS",
            )
            .await?,
            select_parked: prepare(
                "SELECT kafka_partition, kafka_offset, entity_id, seq, error, skip \
                 FROM projection_parked WHERE service = ? AND projection = ? AND generation = ?",
            )
            .await?,
            delete_row: prepare(
                "DELETE FROM projection_rows WHERE service = ? AND projection = ? \
                 AND generation = ? AND entity_id = ?",
            )
            .await?,
            delete_progress: prepare(
                "DELETE FROM projection_progress WHERE service = ? AND projection = ? \
                 AND generation = ?",
            )
            .await?,
            delete_parked: prepare(
                "DELETE FROM projection_parked WHERE service = ? AND projection = ? \
                 AND generation = ?",
            )
            .await?,
            skip_parked: prepare(
                "UPDATE projection_parked SET skip = true WHERE service = ? AND projection = ? \
                 AND generation = ? AND kafka_partition = ? AND kafka_offset = ? IF EXISTS",
            )
            .await?,
        })
    }
}

type RowTuple = (i64, Option<String>, Option<Bytes>, Option<bool>);

fn row_of(entity_id: String, (seq, type_url, row, deleted): RowTuple) -> ProjectionRow {
    let row = match (deleted.unwrap_or(false), type_url, row) {
        (false, Some(type_url), Some(row)) => Some((type_url, row)),
        _ => None,
    };
    ProjectionRow {
        entity_id,
        seq,
        row,
    }
}

/// Run `operations` (at most `CONCURRENCY` at once); their results, or the first error.
async fn all<T, F>(operations: Vec<F>) -> Result<Vec<T>, Error>
where
    F: std::future::Future<Output = Result<T, Error>>,
{
    stream::iter(operations)
        .buffer_unordered(CONCURRENCY)
        .try_collect()
        .await
}

/// Whether a lightweight transaction applied (its first column, `[applied]`; the current
/// values may follow it when it did not).
fn applied(result: QueryResult) -> Result<bool, Error> {
    let rows = result
        .into_rows_result()
        .map_err(|e| Error::data("a conditional write", e))?;
    let row = rows
        .first_row::<scylla::value::Row>()
        .map_err(|e| Error::data("a conditional write", e))?;
    match row.columns.first() {
        Some(Some(scylla::value::CqlValue::Boolean(applied))) => Ok(*applied),
        other => Err(Error::data(
            "a conditional write",
            format!("no [applied] column: {other:?}"),
        )),
    }
}

impl Store {
    /// Run `statement`; `what` names it in errors.
    async fn run(
        &self,
        statement: &PreparedStatement,
        values: impl SerializeRow,
        what: &str,
    ) -> Result<QueryResult, Error> {
        self.session()
            .execute_unpaged(statement, values)
            .await
            .map_err(|e| Error::query(what, e))
    }

    /// Run `statement` and decode its rows (few: one page) as `R`; `table` names them in
    /// errors.
    async fn select<R>(
        &self,
        statement: &PreparedStatement,
        values: impl SerializeRow,
        table: &str,
    ) -> Result<Vec<R>, Error>
    where
        R: for<'frame, 'metadata> DeserializeRow<'frame, 'metadata>,
    {
        let rows = self
            .run(statement, values, &format!("reading {table}"))
            .await?
            .into_rows_result()
            .map_err(|e| Error::data(table, e))?;
        rows.rows::<R>()
            .map_err(|e| Error::data(table, e))?
            .map(|r| r.map_err(|e| Error::data(table, e)))
            .collect()
    }

    /// Record projection `name` (generation 1) unless it is recorded.
    pub async fn ensure_projection(
        &self,
        service: &str,
        name: &str,
        persistence_id: &str,
    ) -> Result<(), Error> {
        self.run(
            &self.projection_statements().insert_projection,
            (service, name, persistence_id),
            "recording a projection",
        )
        .await?;
        Ok(())
    }

    /// Projection `name` of `service`, if recorded.
    pub async fn projection(
        &self,
        service: &str,
        name: &str,
    ) -> Result<Option<ProjectionRecord>, Error> {
        let rows = self
            .select(
                &self.projection_statements().select_projection,
                (service, name),
                "projections",
            )
            .await?;
        Ok(rows.into_iter().next().map(record_of))
    }

    /// Every projection of `service`.
    pub async fn projections(&self, service: &str) -> Result<Vec<ProjectionRecord>, Error> {
        let rows = self
            .select(
                &self.projection_statements().select_projections,
                (service,),
                "projections",
            )
            .await?;
        Ok(rows.into_iter().map(record_of).collect())
    }

    /// Start rebuilding `name` into the generation after `serving`: `Ok(Some(generation))`, or
    /// `Ok(None)` when the projection is not at `serving` or a rebuild is already running.
    pub async fn start_rebuild(
        &self,
        service: &str,
        name: &str,
        serving: i32,
    ) -> Result<Option<i32>, Error> {
        let next = serving + 1;
        let result = self
            .run(
                &self.projection_statements().start_rebuild,
                (next, service, name, serving),
                "starting a projection rebuild",
            )
            .await?;
        Ok(applied(result)?.then_some(next))
    }

    /// Serve generation `building` of `name` from now on (if it is still the one building).
    pub async fn switch_generation(
        &self,
        service: &str,
        name: &str,
        building: i32,
    ) -> Result<bool, Error> {
        let result = self
            .run(
                &self.projection_statements().switch,
                (building, service, name, building),
                "switching a projection's generation",
            )
            .await?;
        applied(result)
    }

    /// The rows of `entities` in generation `generation` (absent: no row yet).
    pub async fn read_projection_rows(
        &self,
        service: &str,
        name: &str,
        generation: i32,
        entities: &[&str],
    ) -> Result<BTreeMap<String, ProjectionRow>, Error> {
        let reads: Vec<_> = entities
            .iter()
            .map(|entity| self.read_projection_row(service, name, generation, entity))
            .collect();
        let rows = all(reads).await?;
        Ok(rows
            .into_iter()
            .flatten()
            .map(|r| (r.entity_id.clone(), r))
            .collect())
    }

    async fn read_projection_row(
        &self,
        service: &str,
        name: &str,
        generation: i32,
        entity: &str,
    ) -> Result<Option<ProjectionRow>, Error> {
        let rows = self
            .select::<RowTuple>(
                &self.projection_statements().select_row,
                (service, name, generation, entity),
                "projection_rows",
            )
            .await?;
        Ok(rows
            .into_iter()
            .next()
            .map(|r| row_of(entity.to_string(), r)))
    }

    /// Write rows of generation `generation`, each with its seq as the write timestamp.
    pub async fn write_projection_rows(
        &self,
        service: &str,
        name: &str,
        generation: i32,
        rows: &[ProjectionRow],
    ) -> Result<(), Error> {
        let writes: Vec<_> = rows
            .iter()
            .map(|row| {
                let (type_url, bytes) = match &row.row {
                    Some((type_url, bytes)) => (Some(type_url.as_str()), Some(bytes)),
                    None => (None, None),
                };
                self.run(
                    &self.projection_statements().upsert_row,
                    (
                        service,
                        name,
                        generation,
                        &row.entity_id,
                        row.seq,
                        type_url,
                        bytes,
                        row.row.is_none(),
                        row.seq,
                    ),
                    "writing a projection row",
                )
            })
            .collect();
        all(writes).await?;
        Ok(())
    }

    /// Every row of generation `generation` (a scan of the table: for checks and tools, not
    /// for serving).
    pub async fn scan_projection_rows(
        &self,
        service: &str,
        name: &str,
        generation: i32,
    ) -> Result<Vec<ProjectionRow>, Error> {
        let mut rows = self
            .session()
            .execute_iter(
                self.projection_statements().select_rows.clone(),
                (service, name, generation),
            )
            .await
            .map_err(|e| Error::query("scanning projection rows", e))?
            .rows_stream::<(String, i64, Option<String>, Option<Bytes>, Option<bool>)>()
            .map_err(|e| Error::data("projection_rows", e))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().await {
            let (entity_id, seq, type_url, row, deleted) =
                row.map_err(|e| Error::data("projection_rows", e))?;
            out.push(row_of(entity_id, (seq, type_url, row, deleted)));
        }
        Ok(out)
    }

    /// Generation `generation` has read partition `partition` up to `offset` (the next offset
    /// to read). Never moves back.
    pub async fn write_projection_progress(
        &self,
        service: &str,
        name: &str,
        generation: i32,
        partition: i32,
        offset: i64,
    ) -> Result<(), Error> {
        self.run(
            &self.projection_statements().upsert_progress,
            (
                service,
                name,
                generation,
                partition,
                offset,
                write_timestamp(offset),
            ),
            "writing projection progress",
        )
        .await?;
        Ok(())
    }

    /// The progress of generation `generation`, by partition (partitions never read: absent).
    pub async fn projection_progress(
        &self,
        service: &str,
        name: &str,
        generation: i32,
    ) -> Result<BTreeMap<i32, i64>, Error> {
        let rows = self
            .select::<(i32, i64)>(
                &self.projection_statements().select_progress,
                (service, name, generation),
                "projection_progress",
            )
            .await?;
        Ok(rows.into_iter().collect())
    }

    /// Park an event (once; a parked event stays as first recorded).
    pub async fn park_projection_event(
        &self,
        service: &str,
        name: &str,
        generation: i32,
        parked: &Parked,
    ) -> Result<(), Error> {
        self.run(
            &self.projection_statements().insert_parked,
            (
                service,
                name,
                generation,
                parked.partition,
                parked.offset,
                &parked.entity_id,
                parked.seq,
                &parked.error,
            ),
            "parking a projection event",
        )
        .await?;
        Ok(())
    }

    /// The parked events of generation `generation`.
    pub async fn parked_projection_events(
        &self,
        service: &str,
        name: &str,
        generation: i32,
    ) -> Result<Vec<Parked>, Error> {
        let rows = self
            .select::<(i32, i64, String, i64, String, Option<bool>)>(
                &self.projection_statements().select_parked,
                (service, name, generation),
                "projection_parked",
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|(partition, offset, entity_id, seq, error, skip)| Parked {
                partition,
                offset,
                entity_id,
                seq,
                error,
                skip: skip.unwrap_or(false),
            })
            .collect())
    }

    /// Delete generation `generation` of `name` — its rows, then its progress and parked events —
    /// once another serves. Generations are never reused, and the deletes' timestamps (the
    /// current time) shadow any late row or progress write of the old generation; a late park
    /// could reappear, unread. Returns the rows deleted.
    pub async fn drop_projection_generation(
        &self,
        service: &str,
        name: &str,
        generation: i32,
    ) -> Result<usize, Error> {
        // Paged: the scan may be large.
        let ids: Vec<(String,)> = self
            .session()
            .execute_iter(
                self.projection_statements().select_row_ids.clone(),
                (service, name, generation),
            )
            .await
            .map_err(|e| Error::query("scanning projection rows", e))?
            .rows_stream::<(String,)>()
            .map_err(|e| Error::data("projection_rows", e))?
            .map_err(|e| Error::data("projection_rows", e))
            .try_collect()
            .await?;
        let deletes: Vec<_> = ids
            .iter()
            .map(|(id,)| {
                self.run(
                    &self.projection_statements().delete_row,
                    (service, name, generation, id.as_str()),
                    "deleting a projection row",
                )
            })
            .collect();
        all(deletes).await?;
        let s = self.projection_statements();
        for statement in [&s.delete_progress, &s.delete_parked] {
            self.run(
                statement,
                (service, name, generation),
                "dropping a projection generation",
            )
            .await?;
        }
        Ok(ids.len())
    }

    /// Let the projector pass the parked event at `partition`/`offset`: `false` if there is
    /// none.
    pub async fn skip_parked_projection_event(
        &self,
        service: &str,
        name: &str,
        generation: i32,
        partition: i32,
        offset: i64,
    ) -> Result<bool, Error> {
        let result = self
            .run(
                &self.projection_statements().skip_parked,
                (service, name, generation, partition, offset),
                "skipping a parked projection event",
            )
            .await?;
        applied(result)
    }
}

fn record_of(
    (name, persistence_id, serving, building): (String, String, i32, i32),
) -> ProjectionRecord {
    ProjectionRecord {
        name,
        persistence_id,
        generations: Generations { serving, building },
    }
}
