//! `Processor/Erase`: the right to be forgotten for one event-sourced or value entity, run by
//! the owner of its partition because the journal has exactly one (fenced) writer per partition
//! (`ARCHITECTURE.md`, "Erasing an entity").
//!
//! The order, and why:
//! 1. **Hold** the entity's commands at the partition (they wait, bounded): nothing may
//!    activate it from its old history mid-erasure.
//! 2. **Evict** the active instance: its mailbox closes, it finishes what it holds and ends.
//! 3. **Tombstone the values key** through the partition's writer. Its commit also means every
//!    write the evicted instance handed the writer has committed (one writer, in order), so the
//!    tail now holds the entity's whole recent history.
//! 4. **Tombstone every journal key** `<entity_key>#1..=last` (last = the highest seq in the tail
//!    or the backup; seqs are contiguous from 1) **with the audit record** in the same
//!    transaction: the audit record exists iff the tombstones committed. In the tail the
//!    tombstones hide the entity's records at once (as compaction will in the topic).
//! 5. **Wait for the backup** to pass the tombstones: it removes the entity's Cassandra rows in
//!    commit order (`backup.rs`). Only then may activation read Cassandra again.
//! 6. **Let the held commands in**: the entity starts from empty, seq 1, with an empty
//!    idempotency window (its replies were stored on the erased records).
//!
//! An erasure that fails half way leaves whatever committed committed and can be run again
//! (every step is idempotent). If the backup cannot pass the tombstones in time (Cassandra
//! down), the call fails but the hold stays until it has, so the old rows are never read back;
//! a new owner that recovers tombstones the backup has not passed holds the entity the same way
//! (`Partition::take_over`).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use statehouse_core::ids::entity_key;
use statehouse_core::partition_for;
use statehouse_kafka::admin::{Admin, audit_topic_spec};
use statehouse_kafka::partition_writer::Committed;
use statehouse_runtime::method_index::EntityKind;
use statehouse_schemas::statehouse::processor::v1::{EraseRequest, EraseResponse};
use tracing::{info, warn};

use crate::Error;
use crate::command::Host;
use crate::journal::Journal;
use crate::node::Node;
use crate::partition::Hold;
use crate::records::{Erased, Output, Written};

/// How long the call waits for the backup to remove the entity's rows.
const BACKUP_WAIT: Duration = Duration::from_secs(60);

/// Erase the entity the request names (see the module docs).
pub(crate) async fn run(node: &Arc<Node>, request: EraseRequest) -> Result<EraseResponse, Error> {
    check(node, &request)?;
    let env = &node.env;
    let service = env.service.as_str();
    let id = partition_for(request.entity_id.as_bytes(), node.partition_count);
    if !node.may_serve() {
        return Err(node.not_serving(id));
    }
    let partition = node.partition(id).ok_or_else(|| node.not_serving(id))?;
    if !partition.is_serving() {
        return Err(node.not_serving(id));
    }
    let audit = audit_topic_spec(&env.kafka);
    let ensured = match Admin::new(&env.kafka) {
        Ok(admin) => admin.ensure(std::slice::from_ref(&audit)).await.map(drop),
        Err(e) => Err(e),
    };
    ensured.map_err(|e| Error::Erasure(format!("creating the audit topic {}: {e}", audit.name)))?;
    let key = entity_key(&request.persistence_id, &request.entity_id);

    // 1, 2.
    let hold = partition.hold(&key)?;
    let evicted = partition.evict(&key).await;
    let journal = Arc::clone(partition.journal());

    // 3.
    let values = Arc::new(Written::Erased(Erased {
        entity_key: key.clone(),
        seq: None,
    }));
    append(&journal, vec![Arc::clone(&values)]).await?;

    // 4.
    let before = env.store.entity_rows(service, &key).await?;
    let in_tail = journal
        .tail
        .records_of(&key)
        .iter()
        .filter(|r| matches!(***r, Written::Event(_)))
        .map(|r| r.seq())
        .max();
    let in_store = env
        .store
        .read_journal(service, &key, 1)
        .await?
        .last()
        .map(|row| row.seq);
    let last_seq = in_tail.max(in_store).unwrap_or(0);
    let erased_at_ms = crate::entity::now_ms();
    let record = serde_json::json!({
        "action": "erase",
        "service": service,
        "persistence_id": request.persistence_id,
        "entity_id": request.entity_id,
        "entity_key": key,
        "partition": id,
        "requested_by": request.requested_by,
        "reason": request.reason,
        "erased_at_ms": erased_at_ms,
        "processor_id": env.processor_id,
        "journal_tombstones": last_seq,
        "value_tombstone": true,
        "cassandra_rows": {
            "journal": before.journal,
            "snapshots": before.snapshots,
            "value": before.value,
        },
        "evicted": evicted,
    });
    let mut typed: Vec<Arc<Written>> = (1..=last_seq)
        .map(|seq| {
            Arc::new(Written::Erased(Erased {
                entity_key: key.clone(),
                seq: Some(seq),
            }))
        })
        .collect();
    typed.push(Arc::new(Written::Output(Output {
        topic: Arc::from(audit.name.as_str()),
        key: Some(Bytes::from(format!("{service}/{key}"))),
        value: Bytes::from(record.to_string()),
        headers: Vec::new(),
    })));
    let committed = append(&journal, typed.clone()).await?;
    let audit_offset = committed.offsets.last().copied().unwrap_or(-1);
    info!(service, entity = %key, partition = id, last_seq, evicted, requested_by = %request.requested_by, "entity erased in Kafka; waiting for the backup");

    // 5.
    let mut tombstones = typed;
    tombstones.pop();
    tombstones.push(values);
    if !backed_up(&journal, &tombstones, BACKUP_WAIT).await {
        // Keep holding until the backup passed them, then let the commands in.
        tokio::spawn(release_when_backed_up(
            hold,
            journal,
            tombstones,
            key.clone(),
        ));
        return Err(Error::Erasure(format!(
            "the tombstones of {key} are committed, but the backup has not removed its Cassandra rows within {BACKUP_WAIT:?}; its commands wait until it has"
        )));
    }
    let after = env.store.entity_rows(service, &key).await?;
    if after != statehouse_store::EntityRows::default() {
        return Err(Error::Erasure(format!(
            "the backup passed the tombstones of {key} but Cassandra still holds {after:?}"
        )));
    }

    // 6.
    drop(hold);
    Ok(EraseResponse {
        partition: id as i32,
        journal_tombstones: last_seq,
        last_seq,
        value_tombstone: true,
        journal_rows: before.journal as i64,
        snapshot_rows: before.snapshots as i64,
        value_row: before.value,
        evicted,
        audit_topic: audit.name,
        audit_partition: 0,
        audit_offset,
        erased_at_ms,
    })
}

/// The request names this processor's service and one of its event-sourced or value entity
/// types, an entity id and a reason.
fn check(node: &Node, request: &EraseRequest) -> Result<(), Error> {
    if request.service != node.service.as_str() {
        return Err(Error::InvalidArgument(format!(
            "this processor serves {}, not {:?}",
            node.service, request.service
        )));
    }
    if request.entity_id.is_empty() {
        return Err(Error::InvalidArgument(
            "an erasure needs an entity id".into(),
        ));
    }
    if request.reason.trim().is_empty() {
        return Err(Error::InvalidArgument("an erasure needs a reason".into()));
    }
    let kinds: Vec<_> = node
        .index
        .services()
        .filter_map(|s| node.index.entity(s))
        .filter(|e| e.persistence_id == request.persistence_id)
        .filter_map(|e| EntityKind::of(&e.entity_type))
        .collect();
    if !kinds
        .iter()
        .any(|k| matches!(k, EntityKind::EventSourced | EntityKind::ValueEntity))
    {
        return Err(Error::InvalidArgument(format!(
            "{:?} is not the persistence id of an event-sourced or value entity of {}",
            request.persistence_id, node.service
        )));
    }
    Ok(())
}

/// Commit `typed` in the partition's next transaction.
async fn append(journal: &Journal, typed: Vec<Arc<Written>>) -> Result<Committed, Error> {
    let records = typed
        .iter()
        .map(|w| w.to_kafka(&journal.env.topics))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(journal.writer.append_with(records, typed).await?)
}

/// Whether the backup passed `tombstones` (they left the tail) within `wait`.
async fn backed_up(journal: &Journal, tombstones: &[Arc<Written>], wait: Duration) -> bool {
    let passed = async {
        while journal.tail.holds_any(tombstones) {
            if !journal.is_serving() {
                // Released: the backup flushes, the next owner recovers the tombstones.
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(wait, passed).await.is_ok() && !journal.tail.holds_any(tombstones)
}

/// Let the commands of `key` in once the backup passed `tombstones` (or the partition stops).
pub(crate) async fn release_when_backed_up(
    hold: Hold,
    journal: Arc<Journal>,
    tombstones: Vec<Arc<Written>>,
    key: String,
) {
    while !backed_up(&journal, &tombstones, Duration::from_secs(60)).await {
        if !journal.is_serving() {
            break;
        }
        warn!(entity = %key, "the backup has not removed the erased entity's rows yet; its commands keep waiting");
    }
    drop(hold);
}
