//! Reading and removing everything the backup holds of one entity: its snapshots (all of them,
//! for `statehouse admin entity`) and the rows an erasure removes (`ARCHITECTURE.md`, "Erasing
//! an entity"). The backup calls [`Store::erase_entity`] when it meets the entity's tombstones in
//! the partition's tail, in commit order, so no older row can be written after the delete.

use bytes::Bytes;
use futures::StreamExt;
use scylla::value::CqlTimestamp;

use crate::{Error, SnapshotRow, Store, store::write_timestamp};

/// What the backup holds of one entity (before an erasure removes it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EntityRows {
    /// Journal rows.
    pub journal: u64,
    /// Snapshot rows.
    pub snapshots: u64,
    /// Whether an `entity_values` row exists.
    pub value: bool,
}

impl Store {
    /// Every snapshot of an entity, newest first.
    pub async fn snapshots(
        &self,
        service: &str,
        entity_id: &str,
    ) -> Result<Vec<SnapshotRow>, Error> {
        let mut rows = self
            .session()
            .query_iter(
                "SELECT seq, type_url, snapshot, snapshot_time FROM snapshots \
                 WHERE service = ? AND entity_id = ?",
                (service, entity_id),
            )
            .await
            .map_err(|e| Error::query("reading snapshots", e))?
            .rows_stream::<(i64, String, Bytes, CqlTimestamp)>()
            .map_err(|e| Error::data("snapshots", e))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().await {
            let (seq, type_url, snapshot, at) = row.map_err(|e| Error::data("snapshots", e))?;
            out.push(SnapshotRow {
                service: service.to_string(),
                entity_id: entity_id.to_string(),
                seq,
                type_url,
                snapshot,
                timestamp_ms: at.0,
            });
        }
        Ok(out)
    }

    /// How many rows the backup holds of an entity.
    pub async fn entity_rows(&self, service: &str, entity_id: &str) -> Result<EntityRows, Error> {
        let count = async |table: &str| -> Result<u64, Error> {
            let cql = format!("SELECT COUNT(*) FROM {table} WHERE service = ? AND entity_id = ?");
            let result = self
                .session()
                .query_unpaged(cql, (service, entity_id))
                .await
                .map_err(|e| Error::query(format!("counting {table} rows"), e))?;
            let rows = result
                .into_rows_result()
                .map_err(|e| Error::data(table.to_string(), e))?;
            let (n,) = rows
                .first_row::<(i64,)>()
                .map_err(|e| Error::data(table.to_string(), e))?;
            Ok(n.max(0) as u64)
        };
        Ok(EntityRows {
            journal: count("journal").await?,
            snapshots: count("snapshots").await?,
            value: count("entity_values").await? > 0,
        })
    }

    /// Remove an entity's journal and snapshot rows up to `seq` (inclusive). A row written
    /// later (the entity started again from seq 1) gets a later write time and stays.
    pub async fn erase_journal(
        &self,
        service: &str,
        entity_id: &str,
        seq: i64,
    ) -> Result<(), Error> {
        for table in ["journal", "snapshots"] {
            let cql =
                format!("DELETE FROM {table} WHERE service = ? AND entity_id = ? AND seq <= ?");
            self.session()
                .query_unpaged(cql, (service, entity_id, seq))
                .await
                .map_err(|e| Error::query(format!("erasing {table} rows"), e))?;
        }
        Ok(())
    }

    /// Remove an entity's `entity_values` row as of the values-topic offset of its tombstone:
    /// value rows are written with their offset as the write time (see [`Store::write_value`]),
    /// so the delete uses the same clock — a value written later (a larger offset) stays.
    pub async fn erase_value(
        &self,
        service: &str,
        entity_id: &str,
        offset: i64,
    ) -> Result<(), Error> {
        self.session()
            .query_unpaged(
                "DELETE FROM entity_values USING TIMESTAMP ? WHERE service = ? AND entity_id = ?",
                (write_timestamp(offset), service, entity_id),
            )
            .await
            .map_err(|e| Error::query("erasing a value row", e))?;
        Ok(())
    }
}
