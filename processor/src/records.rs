//! The typed records a partition writes — journal events and value-entity states — and their
//! Kafka form.
//!
//! A kind's state machine produces [`Written`] values; the entity mailbox encodes them once
//! ([`Written::to_kafka`]) and hands the typed values to the writer with the encoded records,
//! so the tail and the backup get them from the writer's observer without decoding what was
//! just encoded. Decoding ([`Written::from_kafka`]) is for what is read back from Kafka:
//! recovery at takeover.
//!
//! * [`Written::Event`]: `<prefix><service>.journal`, key `<persistence_id>|<entity_id>#<seq>`,
//!   an `EventRecord`;
//! * [`Written::Value`]: `<prefix><service>.values`, key `<persistence_id>|<entity_id>`, a
//!   `ValueRecord`;
//! * [`Written::Deleted`]: the same key in the values topic, a tombstone whose header
//!   `statehouse-deletion` holds a `ValueDeletion`;
//! * [`Written::Erased`]: a bare tombstone (no value, no deletion header) for one of an
//!   erased entity's keys — `<persistence_id>|<entity_id>#<seq>` in the journal,
//!   `<persistence_id>|<entity_id>` in the values topic (`ARCHITECTURE.md`, "Erasing an
//!   entity"). Read back, it removes the earlier record of its key from the tail, as
//!   compaction will remove it from the topic;
//! * [`Written::Output`]: a reply published to a method's `out` topic (eventing) in the same
//!   transaction as the command's own records — it exists iff they committed. Placed by
//!   Kafka's partitioner on its key (the topic is the user's, not partitioned like the
//!   service); never read back (not in the tail, the backup or recovery).

use std::sync::Arc;

use bytes::Bytes;
use statehouse_core::ids::{entity_key, journal_key, parse_journal_key};
use statehouse_kafka::headers;
use statehouse_kafka::partition_writer::Record;
use statehouse_kafka::reader::Message;
use statehouse_schemas::avro::{self, AvroRecord, EventRecord, ValueDeletion, ValueRecord};

use crate::Error;

/// Which topic of the service a record belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Topic {
    Journal,
    Values,
}

impl Topic {
    /// The `topic` label of the metrics.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Topic::Journal => "journal",
            Topic::Values => "values",
        }
    }

    /// The entity (`<persistence_id>|<entity_id>`) a record of this topic with `key` belongs
    /// to, from the key alone: all that is known of a record whose value does not decode.
    pub(crate) fn entity_of_key(self, key: &[u8]) -> Option<String> {
        let key = std::str::from_utf8(key).ok()?;
        match self {
            Topic::Journal => parse_journal_key(key)
                .ok()
                .map(|(entity, _)| entity.to_string()),
            Topic::Values => key.contains('|').then(|| key.to_string()),
        }
    }
}

/// The names of the topics a partition writes.
#[derive(Debug, Clone)]
pub(crate) struct Topics {
    pub(crate) journal: Arc<str>,
    pub(crate) values: Arc<str>,
}

impl Topics {
    pub(crate) fn name(&self, topic: Topic) -> &Arc<str> {
        match topic {
            Topic::Journal => &self.journal,
            Topic::Values => &self.values,
        }
    }

    pub(crate) fn of(&self, name: &str) -> Option<Topic> {
        if name == &*self.journal {
            Some(Topic::Journal)
        } else if name == &*self.values {
            Some(Topic::Values)
        } else {
            None
        }
    }

    /// Both topics, in the order takeover settles and reads them.
    pub(crate) fn all(&self) -> [(Topic, &Arc<str>); 2] {
        [
            (Topic::Journal, &self.journal),
            (Topic::Values, &self.values),
        ]
    }
}

/// A record a partition writes (or wrote), typed.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Written {
    /// An event of an event-sourced entity.
    Event(EventRecord),
    /// The new state of a value entity.
    Value(ValueRecord),
    /// The delete of a value entity.
    Deleted(ValueDeletion),
    /// A reply published to an output topic.
    Output(Output),
    /// A tombstone for one key of an erased entity.
    Erased(Erased),
}

/// A tombstone for one key of an erased entity: the journal key of event `seq`, or (no seq) the
/// values-topic key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Erased {
    /// `<persistence_id>|<entity_id>`.
    pub(crate) entity_key: String,
    /// `Some`: the journal key of this event; `None`: the values-topic key.
    pub(crate) seq: Option<i64>,
}

impl Erased {
    /// Whether `record` (earlier in the same partition) is what this tombstone removes: the
    /// event of its key, or the entity's value record (or delete).
    pub(crate) fn removes(&self, record: &Written) -> bool {
        match (self.seq, record) {
            (Some(seq), Written::Event(e)) => {
                e.seq == seq && record.entity_key() == self.entity_key
            }
            (None, Written::Value(_) | Written::Deleted(_)) => {
                record.entity_key() == self.entity_key
            }
            _ => false,
        }
    }
}

/// A record for an output topic, as the user's consumers get it (a CloudEvent in Kafka's
/// binary mode: `ce_*` headers, the data as the value).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Output {
    pub(crate) topic: Arc<str>,
    /// `None`: no key (Kafka's partitioner spreads the records).
    pub(crate) key: Option<Bytes>,
    pub(crate) value: Bytes,
    pub(crate) headers: Vec<(&'static str, Bytes)>,
}

/// What a record adds around its variable-length fields, at most: Avro varints and union
/// indexes, the header names, the seq in text and the key's separator.
const RECORD_FRAMING_BYTES: usize = 512;

/// An upper bound of the encoded size of a string or bytes field (Avro: a varint length and
/// the bytes).
fn field(len: usize) -> usize {
    len + 10
}

fn opt(value: &Option<String>) -> usize {
    value.as_ref().map_or(1, |v| field(v.len()))
}

impl Written {
    /// An upper bound of the size of the Kafka record [`Written::to_kafka`] makes (key, value
    /// and headers), without encoding it: the command path refuses a record above
    /// `kafka.max-record-bytes` with this before anything is appended, so a command that can
    /// never be written fails alone and says why (`crate::kinds::journaled`).
    pub(crate) fn record_bound(&self) -> usize {
        let writer = |w: &avro::Writer| field(w.processor_id.len()) + 10;
        let reply = |r: &Option<avro::Reply>| {
            r.as_ref()
                .map_or(1, |r| field(r.type_url.len()) + field(r.payload.len()))
        };
        let recent = |recent: &[avro::RecentReply]| -> usize {
            recent
                .iter()
                .map(|r| field(r.idempotency_key.len()) + reply(&r.reply))
                .sum()
        };
        // The entity id is in the key, the value and a header; the type URL and the trace
        // context in the value and a header.
        let ids = |persistence_id: &str, entity_id: &str| {
            2 * field(persistence_id.len()) + 3 * field(entity_id.len())
        };
        RECORD_FRAMING_BYTES
            + match self {
                Written::Event(e) => {
                    ids(&e.persistence_id, &e.entity_id)
                        + field(e.service.len())
                        + 2 * field(e.type_url.len())
                        + field(e.payload.len())
                        + opt(&e.command_id)
                        + opt(&e.idempotency_key)
                        + writer(&e.writer)
                        + e.snapshot
                            .as_ref()
                            .map_or(1, |s| field(s.type_url.len()) + field(s.payload.len()))
                        + 2 * opt(&e.traceparent)
                        + reply(&e.reply)
                }
                Written::Value(v) => {
                    ids(&v.persistence_id, &v.entity_id)
                        + field(v.service.len())
                        + 2 * field(v.type_url.len())
                        + field(v.payload.len())
                        + opt(&v.command_id)
                        + opt(&v.idempotency_key)
                        + writer(&v.writer)
                        + recent(&v.recent)
                        + 2 * opt(&v.traceparent)
                }
                Written::Deleted(d) => {
                    ids(&d.persistence_id, &d.entity_id)
                        + field(d.service.len())
                        + opt(&d.command_id)
                        + opt(&d.idempotency_key)
                        + writer(&d.writer)
                        + recent(&d.recent)
                        + 2 * opt(&d.traceparent)
                }
                Written::Output(o) => {
                    o.key.as_ref().map_or(0, Bytes::len)
                        + o.value.len()
                        + o.headers
                            .iter()
                            .map(|(k, v)| k.len() + v.len())
                            .sum::<usize>()
                }
                Written::Erased(e) => 2 * field(e.entity_key.len()),
            }
    }
}

impl Written {
    /// The storage key of the entity, `<persistence_id>|<entity_id>`.
    pub(crate) fn entity_key(&self) -> String {
        let (persistence_id, entity_id) = match self {
            Written::Event(e) => (&e.persistence_id, &e.entity_id),
            Written::Value(v) => (&v.persistence_id, &v.entity_id),
            Written::Deleted(d) => (&d.persistence_id, &d.entity_id),
            Written::Output(_) => return String::new(),
            Written::Erased(e) => return e.entity_key.clone(),
        };
        entity_key(persistence_id, entity_id)
    }

    /// The `traceparent` of the command that wrote it (entity records).
    pub(crate) fn traceparent(&self) -> Option<&str> {
        match self {
            Written::Event(e) => e.traceparent.as_deref(),
            Written::Value(v) => v.traceparent.as_deref(),
            Written::Deleted(d) => d.traceparent.as_deref(),
            Written::Output(_) | Written::Erased(_) => None,
        }
    }

    /// The entity's sequence number (event number, or value version).
    pub(crate) fn seq(&self) -> i64 {
        match self {
            Written::Event(e) => e.seq,
            Written::Value(v) => v.seq,
            Written::Deleted(d) => d.seq,
            Written::Output(_) => 0,
            Written::Erased(e) => e.seq.unwrap_or(0),
        }
    }

    /// The Kafka record (key, value, headers) of this record.
    pub(crate) fn to_kafka(&self, topics: &Topics) -> Result<Record, Error> {
        let encode_error = |e: statehouse_schemas::Error| Error::Journal(format!("encoding: {e}"));
        let (topic, entity_id, seq, type_url, traceparent) = match self {
            Written::Event(e) => (
                Topic::Journal,
                &e.entity_id,
                e.seq,
                Some(&e.type_url),
                &e.traceparent,
            ),
            Written::Value(v) => (
                Topic::Values,
                &v.entity_id,
                v.seq,
                Some(&v.type_url),
                &v.traceparent,
            ),
            Written::Deleted(d) => (Topic::Values, &d.entity_id, d.seq, None, &d.traceparent),
            Written::Erased(e) => {
                let (topic, key) = match e.seq {
                    Some(seq) => (Topic::Journal, journal_key(&e.entity_key, seq as u64)),
                    None => (Topic::Values, e.entity_key.clone()),
                };
                return Ok(Record {
                    topic: Arc::clone(topics.name(topic)),
                    key: Bytes::from(key),
                    value: None,
                    headers: Vec::new(),
                    by_key: false,
                });
            }
            Written::Output(o) => {
                return Ok(Record {
                    topic: Arc::clone(&o.topic),
                    // An entity's output is keyed by its entity id.
                    key: o.key.clone().unwrap_or_default(),
                    value: Some(o.value.clone()),
                    headers: o.headers.clone(),
                    by_key: true,
                });
            }
        };
        let mut record_headers = Vec::with_capacity(5);
        record_headers.push((
            headers::ENTITY,
            Bytes::copy_from_slice(entity_id.as_bytes()),
        ));
        record_headers.push((headers::SEQ, Bytes::from(seq.to_string())));
        if let Some(type_url) = type_url {
            record_headers.push((headers::TYPE, Bytes::copy_from_slice(type_url.as_bytes())));
        }
        if let Some(traceparent) = traceparent {
            record_headers.push((
                headers::TRACEPARENT,
                Bytes::copy_from_slice(traceparent.as_bytes()),
            ));
        }
        let key = match self {
            Written::Event(_) => journal_key(&self.entity_key(), seq as u64),
            _ => self.entity_key(),
        };
        let value = match self {
            Written::Event(e) => Some(Bytes::from(e.encode().map_err(encode_error)?)),
            Written::Value(v) => Some(Bytes::from(v.encode().map_err(encode_error)?)),
            Written::Deleted(d) => {
                record_headers.push((
                    headers::DELETION,
                    Bytes::from(d.encode().map_err(encode_error)?),
                ));
                None
            }
            Written::Output(_) | Written::Erased(_) => unreachable!("returned above"),
        };
        Ok(Record {
            topic: Arc::clone(topics.name(topic)),
            key: Bytes::from(key),
            value,
            headers: record_headers,
            by_key: false,
        })
    }

    /// The record a Kafka message of `topic` holds: a bare tombstone (no deletion header) is an
    /// erased key ([`Written::Erased`]); `None` for a tombstone whose key is not an entity's.
    pub(crate) fn from_kafka(topic: Topic, message: &Message) -> Result<Option<Written>, Error> {
        let at = |e: statehouse_schemas::Error| {
            Error::Journal(format!(
                "{topic:?} partition {} offset {}: {e}",
                message.partition, message.offset
            ))
        };
        Ok(match (topic, &message.value) {
            (Topic::Journal, Some(value)) => {
                Some(Written::Event(EventRecord::decode(value).map_err(at)?))
            }
            (Topic::Values, Some(value)) => {
                Some(Written::Value(ValueRecord::decode(value).map_err(at)?))
            }
            (Topic::Journal, None) => message
                .key
                .as_deref()
                .and_then(|key| std::str::from_utf8(key).ok())
                .and_then(|key| parse_journal_key(key).ok())
                .map(|(entity_key, seq)| {
                    Written::Erased(Erased {
                        entity_key: entity_key.to_string(),
                        seq: Some(seq as i64),
                    })
                }),
            (Topic::Values, None) => match message
                .headers
                .iter()
                .find(|(name, _)| name == headers::DELETION)
            {
                Some((_, deletion)) => Some(Written::Deleted(
                    ValueDeletion::decode(deletion).map_err(at)?,
                )),
                None => message
                    .key
                    .as_deref()
                    .and_then(|key| std::str::from_utf8(key).ok())
                    .filter(|key| key.contains('|'))
                    .map(|key| {
                        Written::Erased(Erased {
                            entity_key: key.to_string(),
                            seq: None,
                        })
                    }),
            },
        })
    }
}

/// What a partition hands its writer with each append: the typed records, in the order of the
/// encoded ones.
pub(crate) type Typed = Vec<Arc<Written>>;

#[cfg(test)]
mod tests {
    use statehouse_schemas::avro::{RecentReply, Reply, Writer};

    use super::*;

    fn topics() -> Topics {
        Topics {
            journal: Arc::from("s.journal"),
            values: Arc::from("s.values"),
        }
    }

    fn message(record: &Record) -> Message {
        Message {
            partition: 3,
            offset: 7,
            key: Some(record.key.clone()),
            value: record.value.clone(),
            headers: record
                .headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            timestamp_ms: None,
        }
    }

    fn writer() -> Writer {
        Writer {
            processor_id: "p".into(),
            epoch: 9,
        }
    }

    #[test]
    fn records_round_trip_through_their_kafka_form() {
        let event = Written::Event(EventRecord {
            service: "s".into(),
            persistence_id: "cart".into(),
            entity_id: "u1".into(),
            seq: 4,
            type_url: "type.googleapis.com/x.ItemAdded".into(),
            payload: Bytes::from_static(b"\x0a\x01a"),
            command_id: Some("c".into()),
            idempotency_key: None,
            timestamp_ms: 1,
            writer: writer(),
            snapshot: None,
            traceparent: Some("00-aa-bb-01".into()),
            reply: None,
        });
        let record = event.to_kafka(&topics()).unwrap();
        assert_eq!(&*record.topic, "s.journal");
        assert_eq!(&record.key[..], b"cart|u1#4");
        assert!(
            record
                .headers
                .iter()
                .any(|(k, v)| *k == headers::SEQ && &v[..] == b"4")
        );
        assert_eq!(
            Written::from_kafka(Topic::Journal, &message(&record)).unwrap(),
            Some(event)
        );

        let recent = vec![RecentReply {
            idempotency_key: "k".into(),
            reply: Some(Reply {
                type_url: "t".into(),
                payload: Bytes::new(),
            }),
        }];
        let value = Written::Value(ValueRecord {
            service: "s".into(),
            persistence_id: "ve".into(),
            entity_id: "u1".into(),
            seq: 2,
            type_url: "type.googleapis.com/x.State".into(),
            payload: Bytes::from_static(b"\x0a\x01b"),
            command_id: None,
            idempotency_key: Some("k".into()),
            timestamp_ms: 2,
            writer: writer(),
            recent: recent.clone(),
            traceparent: None,
        });
        let record = value.to_kafka(&topics()).unwrap();
        assert_eq!(
            (&*record.topic, &record.key[..]),
            ("s.values", &b"ve|u1"[..])
        );
        assert_eq!(
            Written::from_kafka(Topic::Values, &message(&record)).unwrap(),
            Some(value)
        );

        let deleted = Written::Deleted(ValueDeletion {
            service: "s".into(),
            persistence_id: "ve".into(),
            entity_id: "u1".into(),
            seq: 3,
            command_id: None,
            idempotency_key: None,
            timestamp_ms: 3,
            writer: writer(),
            recent,
            traceparent: None,
        });
        let record = deleted.to_kafka(&topics()).unwrap();
        assert_eq!(record.value, None, "a delete is a tombstone");
        assert_eq!(
            Written::from_kafka(Topic::Values, &message(&record)).unwrap(),
            Some(deleted)
        );
        // A bare tombstone is an erased key; garbage is an error naming where.
        let bare = Message {
            headers: Vec::new(),
            ..message(&record)
        };
        let erased = Written::Erased(Erased {
            entity_key: "ve|u1".into(),
            seq: None,
        });
        assert_eq!(
            Written::from_kafka(Topic::Values, &bare).unwrap(),
            Some(erased.clone())
        );
        assert_eq!(
            erased.to_kafka(&topics()).unwrap().key,
            bare.key.clone().unwrap()
        );
        let garbage = Message {
            value: Some(Bytes::from_static(b"nope")),
            ..bare
        };
        let err = Written::from_kafka(Topic::Values, &garbage).unwrap_err();
        assert!(err.to_string().contains("offset 7"), "{err}");
    }

    #[test]
    fn erased_keys_round_trip_and_remove_only_their_own_record() {
        let tombstone = Written::Erased(Erased {
            entity_key: "cart|u#1".into(),
            seq: Some(3),
        });
        let record = tombstone.to_kafka(&topics()).unwrap();
        assert_eq!(
            (&*record.topic, &record.key[..]),
            ("s.journal", &b"cart|u#1#3"[..])
        );
        assert_eq!(record.value, None, "a tombstone");
        assert!(record.headers.is_empty(), "bare: no deletion header");
        let read = Written::from_kafka(Topic::Journal, &message(&record)).unwrap();
        assert_eq!(read, Some(tombstone.clone()));
        // A journal tombstone whose key is no journal key is skipped, not an error.
        let odd = Message {
            key: Some(Bytes::from_static(b"statehouse.settle")),
            ..message(&record)
        };
        assert_eq!(Written::from_kafka(Topic::Journal, &odd).unwrap(), None);

        let Written::Erased(erased) = &tombstone else {
            unreachable!()
        };
        let event = |entity: &str, seq| {
            Written::Event(EventRecord {
                service: "s".into(),
                persistence_id: "cart".into(),
                entity_id: entity.into(),
                seq,
                type_url: "t".into(),
                payload: Bytes::new(),
                command_id: None,
                idempotency_key: None,
                timestamp_ms: 0,
                writer: writer(),
                snapshot: None,
                traceparent: None,
                reply: None,
            })
        };
        assert!(erased.removes(&event("u#1", 3)));
        assert!(!erased.removes(&event("u#1", 2)));
        assert!(!erased.removes(&event("u", 3)));
        let values_key = Erased {
            entity_key: "cart|u#1".into(),
            seq: None,
        };
        assert!(
            !values_key.removes(&event("u#1", 3)),
            "a values tombstone keeps the events"
        );
    }

    /// The bound the command path checks against `kafka.max-record-bytes` is never below the
    /// record's real size (else a record could pass it and be refused by Kafka inside a
    /// transaction), and not far above it (else the limit would refuse records that fit).
    #[test]
    fn record_bound_covers_the_encoded_record() {
        let sizes = [0usize, 1, 127, 128, 16_383, 16_384, 300_000];
        for (i, &payload) in sizes.iter().enumerate() {
            let big = |n: usize| "x".repeat(n);
            let id = big(sizes[(i + 2) % sizes.len()].min(2_000));
            let reply = Some(Reply {
                type_url: big(40),
                payload: Bytes::from(vec![7u8; payload / 2]),
            });
            let event = Written::Event(EventRecord {
                service: "shopping-cart".into(),
                persistence_id: "cart".into(),
                entity_id: id.clone(),
                seq: i64::MAX - i as i64,
                type_url: big(60),
                payload: Bytes::from(vec![1u8; payload]),
                command_id: Some(big(36)),
                idempotency_key: Some(big(i * 10)),
                timestamp_ms: i64::MAX,
                writer: Writer {
                    processor_id: big(36),
                    epoch: i64::MAX,
                },
                snapshot: Some(avro::Snapshot {
                    type_url: big(50),
                    payload: Bytes::from(vec![2u8; payload]),
                }),
                traceparent: Some(big(55)),
                reply: reply.clone(),
            });
            let value = Written::Value(ValueRecord {
                service: "shopping-cart".into(),
                persistence_id: "ve".into(),
                entity_id: id.clone(),
                seq: i64::MIN,
                type_url: big(60),
                payload: Bytes::from(vec![3u8; payload]),
                command_id: None,
                idempotency_key: Some(big(36)),
                timestamp_ms: -1,
                writer: writer(),
                recent: (0..i)
                    .map(|k| RecentReply {
                        idempotency_key: big(k * 20),
                        reply: reply.clone(),
                    })
                    .collect(),
                traceparent: None,
            });
            let deleted = Written::Deleted(ValueDeletion {
                service: "s".into(),
                persistence_id: "ve".into(),
                entity_id: id,
                seq: 1,
                command_id: Some(big(36)),
                idempotency_key: None,
                timestamp_ms: 5,
                writer: writer(),
                recent: Vec::new(),
                traceparent: Some(big(55)),
            });
            for written in [event, value, deleted] {
                let record = written.to_kafka(&topics()).unwrap();
                let size = record.key.len()
                    + record.value.as_ref().map_or(0, Bytes::len)
                    + record
                        .headers
                        .iter()
                        .map(|(k, v)| k.len() + v.len())
                        .sum::<usize>();
                let bound = written.record_bound();
                assert!(
                    size <= bound,
                    "record of {size} bytes above its bound {bound}"
                );
                let slack = bound - size;
                assert!(
                    slack <= RECORD_FRAMING_BYTES + 4 * written.entity_key().len() + 400,
                    "bound {bound} is {slack} above the size {size}"
                );
            }
        }
    }
}
