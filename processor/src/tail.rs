//! The in-memory journal tail of a partition: every event committed (or recovered from Kafka)
//! that is not yet backed up to Cassandra, in offset order, indexed by entity.
//!
//! Activation reads an entity's history from Cassandra *plus* this tail, so an event is always
//! found in at least one of them: the backup removes events from the tail only after Cassandra
//! acknowledged them (and activation reads the tail first, then Cassandra).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use statehouse_schemas::avro::EventRecord;

/// One tail entry: an event and its journal offset.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) offset: i64,
    pub(crate) event: Arc<EventRecord>,
}

#[derive(Default)]
struct Inner {
    entries: VecDeque<Entry>,
    by_entity: HashMap<String, Vec<Arc<EventRecord>>>,
}

/// See the module docs.
#[derive(Default)]
pub(crate) struct Tail {
    inner: Mutex<Inner>,
}

pub(crate) use statehouse_core::ids::entity_key;

impl Tail {
    /// Add an event at `offset` (offsets arrive in increasing order).
    pub(crate) fn push(&self, offset: i64, event: Arc<EventRecord>) {
        let mut inner = self.inner.lock().expect("tail lock");
        let key = entity_key(&event.persistence_id, &event.entity_id);
        inner
            .by_entity
            .entry(key)
            .or_default()
            .push(Arc::clone(&event));
        inner.entries.push_back(Entry { offset, event });
    }

    /// The events of one entity still in the tail, in seq order.
    pub(crate) fn events_of(&self, key: &str) -> Vec<Arc<EventRecord>> {
        let inner = self.inner.lock().expect("tail lock");
        inner.by_entity.get(key).cloned().unwrap_or_default()
    }

    /// Up to `max` oldest entries.
    pub(crate) fn oldest(&self, max: usize) -> Vec<Entry> {
        let inner = self.inner.lock().expect("tail lock");
        inner.entries.iter().take(max).cloned().collect()
    }

    /// Drop every entry with an offset up to and including `offset` (they are backed up).
    pub(crate) fn remove_through(&self, offset: i64) {
        let mut inner = self.inner.lock().expect("tail lock");
        while inner.entries.front().is_some_and(|e| e.offset <= offset) {
            let entry = inner.entries.pop_front().expect("checked");
            let key = entity_key(&entry.event.persistence_id, &entry.event.entity_id);
            if let Some(events) = inner.by_entity.get_mut(&key) {
                events.retain(|e| !Arc::ptr_eq(e, &entry.event));
                if events.is_empty() {
                    inner.by_entity.remove(&key);
                }
            }
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.inner.lock().expect("tail lock").entries.len()
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use statehouse_schemas::avro::Writer;

    use super::*;

    fn event(entity: &str, seq: i64) -> Arc<EventRecord> {
        Arc::new(EventRecord {
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
        })
    }

    #[test]
    fn entries_leave_only_when_backed_up() {
        let tail = Tail::default();
        tail.push(10, event("a", 1));
        tail.push(11, event("b", 1));
        tail.push(13, event("a", 2));
        assert_eq!(
            tail.events_of("p|a")
                .iter()
                .map(|e| e.seq)
                .collect::<Vec<_>>(),
            [1, 2]
        );
        assert_eq!(
            tail.oldest(2).iter().map(|e| e.offset).collect::<Vec<_>>(),
            [10, 11]
        );
        tail.remove_through(11);
        assert_eq!(tail.len(), 1);
        assert_eq!(
            tail.events_of("p|a")
                .iter()
                .map(|e| e.seq)
                .collect::<Vec<_>>(),
            [2]
        );
        assert!(tail.events_of("p|b").is_empty());
        tail.remove_through(100);
        assert_eq!(tail.len(), 0);
        assert!(tail.events_of("p|a").is_empty());
    }
}
