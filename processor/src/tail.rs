//! The in-memory tail of a partition: every record committed (or recovered from Kafka) that is
//! not yet backed up to Cassandra — journal events and value-entity states — in commit order,
//! indexed by entity.
//!
//! Activation reads an entity's history from Cassandra *plus* this tail, so a record is always
//! found in at least one of them: the backup removes records from the tail only after Cassandra
//! acknowledged them (and activation reads the tail first, then Cassandra).
//!
//! A tombstone of an erased entity ([`Written::Erased`]) removes the earlier record of its key
//! from the index, as compaction removes it from the topic, so activation never sees it again;
//! the tombstone itself stays in the commit-ordered entries until the backup has removed the
//! entity's rows from Cassandra.
//!
//! A record that did not decode when the partition was recovered is not in the tail: it is
//! *quarantined* ([`Tail::quarantine`]). Its entity (known from the record's key) refuses to
//! activate — serving it without that record would serve a wrong state — and the backup's
//! checkpoint of its topic stays at its offset, so every later owner finds it again instead of
//! recovering past it.
//!
//! Records arrive in commit order: per topic that is offset order, which is what the backup's
//! per-topic checkpoints rely on (a prefix of the tail is a prefix of each topic).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use crate::Error;
use crate::records::{Topic, Written};

/// One tail entry: a record and where it is in Kafka.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) topic: Topic,
    pub(crate) offset: i64,
    pub(crate) record: Arc<Written>,
}

/// A record of the partition that did not decode on recovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Quarantined {
    pub(crate) topic: Topic,
    /// The topic's name, for messages.
    pub(crate) topic_name: String,
    pub(crate) partition: u32,
    pub(crate) offset: i64,
    /// Why it does not decode.
    pub(crate) reason: String,
}

#[derive(Default)]
struct Inner {
    entries: VecDeque<Entry>,
    by_entity: HashMap<String, Vec<Arc<Written>>>,
    /// The first quarantined record of each entity.
    quarantined: HashMap<String, Quarantined>,
    /// Per topic, the lowest offset quarantined (with or without an entity).
    floors: HashMap<Topic, i64>,
}

/// See the module docs.
#[derive(Default)]
pub(crate) struct Tail {
    inner: Mutex<Inner>,
}

impl Tail {
    /// Add a record committed at `offset` of `topic` (per topic, offsets arrive in order).
    pub(crate) fn push(&self, topic: Topic, offset: i64, record: Arc<Written>) {
        let mut inner = self.inner.lock().expect("tail lock");
        let key = record.entity_key();
        if let Written::Erased(erased) = &*record {
            if let Some(records) = inner.by_entity.get_mut(&key) {
                records.retain(|r| !erased.removes(r));
                if records.is_empty() {
                    inner.by_entity.remove(&key);
                }
            }
        } else {
            inner
                .by_entity
                .entry(key)
                .or_default()
                .push(Arc::clone(&record));
        }
        inner.entries.push_back(Entry {
            topic,
            offset,
            record,
        });
    }

    /// The records of one entity (`<persistence_id>|<entity_id>`) still in the tail, in commit
    /// order.
    pub(crate) fn records_of(&self, key: &str) -> Vec<Arc<Written>> {
        let inner = self.inner.lock().expect("tail lock");
        inner.by_entity.get(key).cloned().unwrap_or_default()
    }

    /// Up to `max` oldest entries.
    pub(crate) fn oldest(&self, max: usize) -> Vec<Entry> {
        let inner = self.inner.lock().expect("tail lock");
        inner.entries.iter().take(max).cloned().collect()
    }

    /// Drop the `count` oldest entries (they are backed up).
    pub(crate) fn remove_oldest(&self, count: usize) {
        let mut inner = self.inner.lock().expect("tail lock");
        for _ in 0..count {
            let Some(entry) = inner.entries.pop_front() else {
                break;
            };
            let key = entry.record.entity_key();
            if let Some(records) = inner.by_entity.get_mut(&key) {
                records.retain(|r| !Arc::ptr_eq(r, &entry.record));
                if records.is_empty() {
                    inner.by_entity.remove(&key);
                }
            }
        }
    }

    /// Whether any of `records` (as pushed) is still waiting for the backup.
    pub(crate) fn holds_any(&self, records: &[Arc<Written>]) -> bool {
        let inner = self.inner.lock().expect("tail lock");
        inner
            .entries
            .iter()
            .any(|e| records.iter().any(|r| Arc::ptr_eq(r, &e.record)))
    }

    /// Quarantine a record that does not decode: `entity` (if its key names one) refuses to
    /// activate ([`Tail::refuse_quarantined`]) and no backup checkpoint of the record's topic
    /// passes it ([`Tail::checkpoint_floor`]).
    pub(crate) fn quarantine(&self, entity: Option<String>, record: Quarantined) {
        let mut inner = self.inner.lock().expect("tail lock");
        let floor = inner.floors.entry(record.topic).or_insert(record.offset);
        *floor = (*floor).min(record.offset);
        if let Some(entity) = entity {
            inner.quarantined.entry(entity).or_insert(record);
        }
    }

    /// Fails if a record of the entity `key` is quarantined: its state without that record
    /// would be wrong, so it does not activate (FAILED_PRECONDITION, naming the record).
    pub(crate) fn refuse_quarantined(&self, key: &str) -> Result<(), Error> {
        let inner = self.inner.lock().expect("tail lock");
        match inner.quarantined.get(key) {
            None => Ok(()),
            Some(q) => Err(Error::Quarantined(format!(
                "entity {key} is quarantined: its record at {} partition {} offset {} does not decode ({}); the entity refuses commands until an operator resolves it",
                q.topic_name, q.partition, q.offset, q.reason
            ))),
        }
    }

    /// The highest backup checkpoint `topic` may have: the offset of its first quarantined
    /// record, if any.
    pub(crate) fn checkpoint_floor(&self, topic: Topic) -> Option<i64> {
        self.inner
            .lock()
            .expect("tail lock")
            .floors
            .get(&topic)
            .copied()
    }

    pub(crate) fn len(&self) -> usize {
        self.inner.lock().expect("tail lock").entries.len()
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use statehouse_schemas::avro::{EventRecord, Writer};

    use super::*;
    use crate::records::Erased;

    fn event(entity: &str, seq: i64) -> Arc<Written> {
        Arc::new(Written::Event(EventRecord {
            service: "s".into(),
            persistence_id: "p".into(),
            entity_id: entity.into(),
            seq,
            type_url: "t".into(),
            payload: Bytes::new(),
            command_id: None,
            idempotency_key: None,
            timestamp_ms: 0,
            writer: Writer {
                processor_id: "x".into(),
                epoch: 1,
            },
            snapshot: None,
            traceparent: None,
            reply: None,
        }))
    }

    fn seqs(tail: &Tail, key: &str) -> Vec<i64> {
        tail.records_of(key).iter().map(|r| r.seq()).collect()
    }

    #[test]
    fn entries_leave_only_when_backed_up() {
        let tail = Tail::default();
        tail.push(Topic::Journal, 10, event("a", 1));
        tail.push(Topic::Journal, 11, event("b", 1));
        tail.push(Topic::Journal, 13, event("a", 2));
        assert_eq!(seqs(&tail, "p|a"), [1, 2]);
        assert_eq!(
            tail.oldest(2).iter().map(|e| e.offset).collect::<Vec<_>>(),
            [10, 11]
        );
        tail.remove_oldest(2);
        assert_eq!(tail.len(), 1);
        assert_eq!(seqs(&tail, "p|a"), [2]);
        assert!(tail.records_of("p|b").is_empty());
        tail.remove_oldest(100);
        assert_eq!(tail.len(), 0);
        assert!(tail.records_of("p|a").is_empty());
    }

    #[test]
    fn tombstones_hide_what_they_erase_until_backed_up() {
        let tail = Tail::default();
        tail.push(Topic::Journal, 1, event("a", 1));
        tail.push(Topic::Journal, 2, event("a", 2));
        tail.push(Topic::Journal, 3, event("b", 1));
        let tombstones: Vec<_> = [1, 2]
            .map(|seq| {
                Arc::new(Written::Erased(Erased {
                    entity_key: "p|a".into(),
                    seq: Some(seq),
                }))
            })
            .into();
        for (i, t) in tombstones.iter().enumerate() {
            tail.push(Topic::Journal, 4 + i as i64, Arc::clone(t));
        }
        assert!(
            seqs(&tail, "p|a").is_empty(),
            "activation sees nothing of the erased entity"
        );
        assert_eq!(seqs(&tail, "p|b"), [1], "others keep theirs");
        assert_eq!(tail.len(), 5, "the backup still gets everything, in order");
        assert!(tail.holds_any(&tombstones));
        // Started again from seq 1: the new event is kept.
        tail.push(Topic::Journal, 6, event("a", 1));
        assert_eq!(seqs(&tail, "p|a"), [1]);
        tail.remove_oldest(5);
        assert!(!tail.holds_any(&tombstones));
        assert_eq!(seqs(&tail, "p|a"), [1]);
        assert_eq!(tail.len(), 1);
    }
}
