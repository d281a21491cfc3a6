//! Avro records: round trips, pinned fingerprints, schema evolution and bad
//! input.

use std::{collections::BTreeSet, fs, path::Path};

use apache_avro::{
    Schema, schema_compatibility::SchemaCompatibility, writer::datum::GenericDatumWriter,
};
use bytes::Bytes;
use serde::Serialize;
use statehouse_schemas::{
    Error,
    avro::{
        self, AnyRecord, AppliedOffset, AvroRecord, CrdtDeltaRecord, CrdtRecordKind, Entity,
        EventRecord, HEADER_LEN, MARKER, Processor, RecentReply, RecordKind, Registry, Reply,
        RoutingRecord, ServiceRecord, Snapshot, ValueDeletion, ValueRecord, WriteConsistency,
        Writer,
    },
    cloudstate::crdt::CrdtWriteConsistency,
};

fn writer() -> Writer {
    Writer {
        processor_id: "processor-0".into(),
        epoch: 3,
    }
}

fn event(seq: i64) -> EventRecord {
    EventRecord {
        service: "shopping-cart".into(),
        persistence_id: "shopping-cart".into(),
        entity_id: "user-1".into(),
        seq,
        type_url: "type.googleapis.com/com.example.shoppingcart.persistence.ItemAdded".into(),
        payload: Bytes::from_static(b"\x0a\x07\x0a\x01p\x18\x02"),
        command_id: Some("cmd-9".into()),
        idempotency_key: None,
        timestamp_ms: 1_700_000_000_123,
        writer: writer(),
        snapshot: Some(Snapshot {
            type_url: "type.googleapis.com/com.example.shoppingcart.persistence.Cart".into(),
            payload: Bytes::from_static(b"\x0a\x00"),
        }),
        traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
        reply: Some(Reply {
            type_url: "type.googleapis.com/google.protobuf.Empty".into(),
            payload: Bytes::new(),
        }),
    }
}

fn value() -> ValueRecord {
    ValueRecord {
        service: "ve-cart".into(),
        persistence_id: "ve-cart".into(),
        entity_id: "user-2".into(),
        seq: 4,
        type_url: "type.googleapis.com/com.example.valueentity.shoppingcart.persistence.Cart"
            .into(),
        payload: Bytes::new(),
        command_id: None,
        idempotency_key: Some("idem-1".into()),
        timestamp_ms: 1,
        writer: writer(),
        recent: vec![
            RecentReply {
                idempotency_key: "idem-0".into(),
                reply: None,
            },
            RecentReply {
                idempotency_key: "idem-1".into(),
                reply: Some(Reply {
                    type_url: "type.googleapis.com/google.protobuf.Empty".into(),
                    payload: Bytes::new(),
                }),
            },
        ],
        traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
    }
}

fn deletion() -> ValueDeletion {
    ValueDeletion {
        service: "ve-cart".into(),
        persistence_id: "ve-cart".into(),
        entity_id: "user-2".into(),
        seq: 5,
        command_id: Some("cmd-9".into()),
        idempotency_key: None,
        timestamp_ms: 2,
        writer: writer(),
        recent: value().recent,
        traceparent: None,
    }
}

fn crdt_delta() -> CrdtDeltaRecord {
    CrdtDeltaRecord {
        service: "presence".into(),
        persistence_id: "presence".into(),
        entity_id: "alice".into(),
        replica_id: "processor-1".into(),
        delta: Bytes::new(),
        deleted: false,
        write_consistency: WriteConsistency::Majority,
        timestamp_ms: 2,
        kind: CrdtRecordKind::Delta,
        sequence: 7,
        state: Bytes::from_static(b"\x0a\x08\x0a\x06\x0a\x01a\x10\x05"),
        pruned_replica: None,
        applied: vec![],
        traceparent: Some("00-trace-span-01".into()),
    }
}

fn service() -> ServiceRecord {
    ServiceRecord {
        service: "shopping-cart".into(),
        descriptor_set: Bytes::from_static(statehouse_schemas::FILE_DESCRIPTOR_SET),
        entities: vec![
            Entity {
                entity_type: "cloudstate.eventsourced.EventSourced".into(),
                service_name: "com.example.shoppingcart.ShoppingCart".into(),
                persistence_id: "shopping-cart".into(),
                passivation_timeout_ms: Some(30_000),
            },
            Entity {
                entity_type: "cloudstate.action.ActionProtocol".into(),
                service_name: "com.example.Notifier".into(),
                persistence_id: String::new(),
                passivation_timeout_ms: None,
            },
        ],
        processors: vec![Processor {
            processor_id: "processor-0".into(),
            endpoint: "http://10.0.0.7:9100".into(),
        }],
        protocol_major: 0,
        protocol_minor: 2,
        support_library_name: "cloudstate-go-support".into(),
        support_library_version: "0.3.0".into(),
        updated_at_ms: 1_700_000_000_000,
    }
}

fn routing() -> RoutingRecord {
    RoutingRecord {
        service: "shopping-cart".into(),
        partition: 11,
        owner_processor_id: "processor-0".into(),
        owner_endpoint: "http://10.0.0.7:9100".into(),
        epoch: i64::MAX,
        updated_at_ms: -1,
    }
}

fn round_trip<T: AvroRecord + PartialEq + std::fmt::Debug + Clone>(record: &T) -> Vec<u8> {
    let bytes = record.encode().unwrap();
    assert_eq!(bytes[..2], MARKER);
    assert_eq!(bytes[2..HEADER_LEN], T::fingerprint().to_le_bytes());
    assert_eq!(avro::fingerprint_of(&bytes).unwrap(), T::fingerprint());
    assert_eq!(&T::decode(&bytes).unwrap(), record);

    let info = avro::writer_schema(&bytes).unwrap();
    assert_eq!(info.kind(), T::KIND);
    assert!(info.is_current());
    assert_eq!(info.name(), T::NAME);

    // encode_into appends.
    let mut buf = b"prefix".to_vec();
    record.encode_into(&mut buf).unwrap();
    assert_eq!(&buf[..6], b"prefix");
    assert_eq!(buf[6..], bytes);
    bytes
}

#[test]
fn every_record_round_trips() {
    let bytes = round_trip(&event(1));
    assert_eq!(
        AnyRecord::decode(&bytes).unwrap(),
        AnyRecord::Event(event(1))
    );

    let bare = EventRecord {
        command_id: None,
        snapshot: None,
        traceparent: None,
        reply: None,
        ..event(2)
    };
    round_trip(&bare);

    let bytes = round_trip(&value());
    assert_eq!(AnyRecord::decode(&bytes).unwrap().kind(), RecordKind::Value);
    let bytes = round_trip(&deletion());
    assert_eq!(
        AnyRecord::decode(&bytes).unwrap(),
        AnyRecord::ValueDeletion(deletion())
    );

    let bytes = round_trip(&crdt_delta());
    assert_eq!(
        AnyRecord::decode(&bytes).unwrap(),
        AnyRecord::CrdtDelta(crdt_delta())
    );
    for consistency in [WriteConsistency::Local, WriteConsistency::All] {
        let deleted = CrdtDeltaRecord {
            delta: Bytes::new(),
            deleted: true,
            write_consistency: consistency,
            ..crdt_delta()
        };
        round_trip(&deleted);
    }
    assert_eq!(
        CrdtWriteConsistency::from(WriteConsistency::Majority),
        CrdtWriteConsistency::Majority
    );
    assert_eq!(
        WriteConsistency::from(CrdtWriteConsistency::All),
        WriteConsistency::All
    );

    let bytes = round_trip(&service());
    assert_eq!(
        AnyRecord::decode(&bytes).unwrap(),
        AnyRecord::Service(service())
    );
    let empty = ServiceRecord {
        entities: vec![],
        processors: vec![],
        ..service()
    };
    round_trip(&empty);

    let bytes = round_trip(&routing());
    assert_eq!(
        AnyRecord::decode(&bytes).unwrap().kind(),
        RecordKind::Routing
    );
}

/// The fingerprints of the shipped schema files, computed once and pinned.
///
/// **If this test fails, a shipped `.avsc` file was changed in a way that
/// changes its canonical form.** Records written with it would become
/// unreadable. Revert the change and add a new version instead (see
/// `schemas/avro/README.md`, "Evolving a schema"). Only a *new* version adds a
/// line here; no existing line ever changes.
#[test]
fn pinned_fingerprints() {
    const PINNED: &[(&str, RecordKind, u32, u64)] = &[
        (
            "history/event_record.v1.avsc",
            RecordKind::Event,
            1,
            0x2599_d1ca_188d_650f,
        ),
        (
            "event_record.avsc",
            RecordKind::Event,
            2,
            0x814b_49c1_7505_9580,
        ),
        (
            "history/value_record.v1.avsc",
            RecordKind::Value,
            1,
            0x308e_fde0_8a14_83fd,
        ),
        (
            "value_record.avsc",
            RecordKind::Value,
            2,
            0x57f0_378e_a64b_c901,
        ),
        (
            "value_deletion.avsc",
            RecordKind::ValueDeletion,
            1,
            0x5605_3185_11a8_21df,
        ),
        (
            "history/crdt_delta_record.v1.avsc",
            RecordKind::CrdtDelta,
            1,
            0xd241_b869_68f5_b59d,
        ),
        (
            "crdt_delta_record.avsc",
            RecordKind::CrdtDelta,
            2,
            0xf89b_e9a2_c398_0c6f,
        ),
        (
            "service_record.avsc",
            RecordKind::Service,
            1,
            0x01e0_56ee_1832_f4ee,
        ),
        (
            "routing_record.avsc",
            RecordKind::Routing,
            1,
            0xcd0e_3c37_25d2_7360,
        ),
    ];
    let shipped: Vec<_> = Registry::global()
        .versions()
        .map(|v| (v.path(), v.kind(), v.version(), v.fingerprint()))
        .collect();
    assert_eq!(shipped, PINNED);
    assert_eq!(EventRecord::fingerprint(), PINNED[1].3);
    assert_eq!(ValueRecord::fingerprint(), PINNED[3].3);
    assert_eq!(CrdtDeltaRecord::fingerprint(), PINNED[6].3);
    assert_eq!(RoutingRecord::fingerprint(), PINNED[8].3);

    // Java's SchemaNormalization reduces a logical-typed primitive to the
    // bare primitive; so do we (apache-avro 0.22 would keep {"type":"long"}).
    let current = EventRecord::schema_version();
    assert!(
        current
            .canonical_form()
            .contains(r#"{"name":"timestamp","type":"long"}"#),
        "{}",
        current.canonical_form()
    );
    assert_eq!(current.header()[..2], MARKER);
    assert_eq!(current.header()[2..], PINNED[1].3.to_le_bytes());
}

#[test]
fn every_shipped_file_is_registered_and_older_versions_resolve_to_current() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("avro");
    let mut on_disk = BTreeSet::new();
    for sub in ["", "history"] {
        for entry in fs::read_dir(dir.join(sub)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "avsc") {
                let relative = path
                    .strip_prefix(&dir)
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .to_owned();
                on_disk.insert(relative);
            }
        }
    }
    let registry = Registry::global();
    let registered: BTreeSet<String> = registry.versions().map(|v| v.path().to_owned()).collect();
    assert_eq!(
        on_disk, registered,
        "every .avsc file must be in SHIPPED, and only those"
    );

    for version in registry.versions() {
        // The compiled-in text is the file on disk.
        let text = fs::read_to_string(dir.join(version.path())).unwrap();
        assert_eq!(text, version.source(), "{}", version.path());
        // Current files live at the top, older versions in history/.
        assert_eq!(
            version.is_current(),
            !version.path().starts_with("history/"),
            "{}",
            version.path()
        );
        assert_eq!(
            registry.lookup(version.fingerprint()).unwrap().path(),
            version.path()
        );

        let current = registry.current(version.kind());
        assert!(current.version() >= version.version());
        SchemaCompatibility::can_read(version.schema(), current.schema()).unwrap_or_else(|e| {
            panic!(
                "{} cannot be read as {}: {e}",
                version.path(),
                current.path()
            )
        });
    }
    assert_eq!(registry.current(RecordKind::Event).version(), 2);
    assert_eq!(registry.current(RecordKind::Value).version(), 2);
    assert!(registry.lookup(0).is_none());
}

/// The shape of EventRecord version 1, as an older Statehouse wrote it.
#[derive(Serialize)]
struct EventRecordV1 {
    service: String,
    persistence_id: String,
    entity_id: String,
    seq: i64,
    type_url: String,
    payload: Bytes,
    command_id: Option<String>,
    idempotency_key: Option<String>,
    timestamp: i64,
    writer: Writer,
}

#[test]
fn records_written_with_version_1_decode_with_the_current_reader() {
    let v1 = Registry::global()
        .versions()
        .find(|v| v.kind() == RecordKind::Event && v.version() == 1)
        .unwrap();
    assert!(!v1.is_current());
    let schema = Schema::parse_str(avro::files::EVENT_RECORD_V1).unwrap();
    let old = EventRecordV1 {
        service: "shopping-cart".into(),
        persistence_id: "shopping-cart".into(),
        entity_id: "user-1".into(),
        seq: 17,
        type_url: "type.googleapis.com/com.example.shoppingcart.persistence.ItemRemoved".into(),
        payload: Bytes::from_static(b"\x0a\x01p"),
        command_id: Some("cmd-1".into()),
        idempotency_key: Some("idem".into()),
        timestamp: 1_600_000_000_000,
        writer: writer(),
    };
    let mut bytes = v1.header().to_vec();
    GenericDatumWriter::builder(&schema)
        .build()
        .unwrap()
        .write_ser(&mut bytes, &old)
        .unwrap();

    assert_eq!(avro::writer_schema(&bytes).unwrap().version(), 1);
    let decoded = EventRecord::decode(&bytes).unwrap();
    assert_eq!(
        decoded,
        EventRecord {
            service: old.service.clone(),
            persistence_id: old.persistence_id.clone(),
            entity_id: old.entity_id.clone(),
            seq: 17,
            type_url: old.type_url.clone(),
            payload: old.payload.clone(),
            command_id: old.command_id.clone(),
            idempotency_key: old.idempotency_key.clone(),
            timestamp_ms: old.timestamp,
            writer: writer(),
            snapshot: None,
            traceparent: None,
            reply: None,
        }
    );
    assert_eq!(
        AnyRecord::decode(&bytes).unwrap(),
        AnyRecord::Event(decoded)
    );

    // A version 1 record is 3 bytes shorter than the same record in version
    // 2 with its three new fields null (one union index byte each).
    let v2 = EventRecord::decode(&bytes).unwrap().encode().unwrap();
    assert_eq!(v2.len(), bytes.len() + 3);
}

#[test]
fn a_plain_avro_reader_decodes_our_bytes_with_the_avsc_file() {
    // What a consumer in another language does: strip the header, look up
    // the fingerprint, decode with the .avsc file.
    let bytes = event(3).encode().unwrap();
    let fingerprint = u64::from_le_bytes(bytes[2..10].try_into().unwrap());
    let schema_text = Registry::global().lookup(fingerprint).unwrap().source();
    let schema = Schema::parse_str(schema_text).unwrap();
    let value = apache_avro::reader::datum::GenericDatumReader::builder(&schema)
        .build()
        .unwrap()
        .read_value(&mut &bytes[10..])
        .unwrap();
    let apache_avro::types::Value::Record(fields) = value else {
        panic!("not a record: {value:?}");
    };
    let field = |name: &str| fields.iter().find(|(n, _)| n == name).unwrap().1.clone();
    assert_eq!(field("seq"), apache_avro::types::Value::Long(3));
    assert_eq!(
        field("timestamp"),
        apache_avro::types::Value::TimestampMillis(1_700_000_000_123)
    );
    assert_eq!(
        field("entity_id"),
        apache_avro::types::Value::String("user-1".into())
    );
}

#[test]
fn bad_input_is_a_clear_error() {
    let good = routing().encode().unwrap();

    let err = RoutingRecord::decode(b"\x00\x01rest").unwrap_err();
    assert!(matches!(err, Error::BadMarker { .. }), "{err:?}");
    assert!(err.to_string().contains("00 01"), "{err}");
    assert!(err.to_string().contains("c3 01"), "{err}");
    let err = RoutingRecord::decode(b"").unwrap_err();
    assert!(matches!(err, Error::BadMarker { .. }), "{err:?}");
    let err = RoutingRecord::decode(b"\xc3").unwrap_err();
    assert!(matches!(err, Error::BadMarker { .. }), "{err:?}");

    let err = RoutingRecord::decode(&good[..7]).unwrap_err();
    assert!(matches!(err, Error::TruncatedHeader { len: 7 }), "{err:?}");

    let mut unknown = good.clone();
    unknown[2..10].copy_from_slice(&0x0123_4567_89ab_cdef_u64.to_le_bytes());
    let err = RoutingRecord::decode(&unknown).unwrap_err();
    assert!(
        matches!(
            err,
            Error::UnknownFingerprint {
                fingerprint: 0x0123_4567_89ab_cdef
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("0x0123456789abcdef"), "{err}");
    assert!(matches!(
        AnyRecord::decode(&unknown),
        Err(Error::UnknownFingerprint { .. })
    ));

    let err = EventRecord::decode(&good).unwrap_err();
    assert!(
        matches!(
            err,
            Error::WrongRecord {
                expected: "dev.statehouse.v1.EventRecord",
                found: "dev.statehouse.v1.RoutingRecord",
                version: 1
            }
        ),
        "{err:?}"
    );

    let mut trailing = good.clone();
    trailing.push(0);
    let err = RoutingRecord::decode(&trailing).unwrap_err();
    assert!(
        matches!(err, Error::TrailingBytes { count: 1, .. }),
        "{err:?}"
    );

    let err = RoutingRecord::decode(&good[..good.len() - 1]).unwrap_err();
    assert!(matches!(err, Error::Decode { version: 1, .. }), "{err:?}");
    assert!(err.to_string().contains("RoutingRecord"), "{err}");
    assert!(std::error::Error::source(&err).is_some());
}

#[test]
fn truncated_or_corrupt_bytes_never_panic() {
    let records = [
        event(1).encode().unwrap(),
        value().encode().unwrap(),
        crdt_delta().encode().unwrap(),
        service().encode().unwrap(),
        routing().encode().unwrap(),
    ];
    let mut errors = 0;
    for bytes in &records {
        // Every truncation of the body is an error.
        for len in HEADER_LEN..bytes.len() {
            assert!(
                AnyRecord::decode(&bytes[..len]).is_err(),
                "truncated at {len}"
            );
            errors += 1;
        }
        // Every single-byte corruption of the body is an error or a record,
        // never a panic (limited to the first 256 bytes of the big one).
        for i in HEADER_LEN..bytes.len().min(256) {
            for flip in [0x01, 0x80, 0xff] {
                let mut corrupt = bytes.clone();
                corrupt[i] ^= flip;
                if AnyRecord::decode(&corrupt).is_err() {
                    errors += 1;
                }
            }
        }
    }
    assert!(errors > 500, "{errors}");
}

/// The shape of ValueRecord version 1, as an older Statehouse wrote it.
#[derive(Serialize)]
struct ValueRecordV1 {
    service: String,
    persistence_id: String,
    entity_id: String,
    seq: i64,
    type_url: String,
    payload: Bytes,
    command_id: Option<String>,
    idempotency_key: Option<String>,
    timestamp: i64,
    writer: Writer,
}

#[test]
fn value_records_written_with_version_1_decode_with_the_current_reader() {
    let v1 = Registry::global()
        .versions()
        .find(|v| v.kind() == RecordKind::Value && v.version() == 1)
        .unwrap();
    let schema = Schema::parse_str(avro::files::VALUE_RECORD_V1).unwrap();
    let old = ValueRecordV1 {
        service: "ve".into(),
        persistence_id: "cart".into(),
        entity_id: "u1".into(),
        seq: 3,
        type_url: "type.googleapis.com/x.Cart".into(),
        payload: Bytes::from_static(b"\x0a\x01p"),
        command_id: Some("cmd".into()),
        idempotency_key: None,
        timestamp: 1_600_000_000_000,
        writer: writer(),
    };
    let mut bytes = v1.header().to_vec();
    GenericDatumWriter::builder(&schema)
        .build()
        .unwrap()
        .write_ser(&mut bytes, &old)
        .unwrap();
    let decoded = ValueRecord::decode(&bytes).unwrap();
    assert_eq!(
        decoded,
        ValueRecord {
            service: old.service.clone(),
            persistence_id: old.persistence_id.clone(),
            entity_id: old.entity_id.clone(),
            seq: 3,
            type_url: old.type_url.clone(),
            payload: old.payload.clone(),
            command_id: old.command_id.clone(),
            idempotency_key: None,
            timestamp_ms: old.timestamp,
            writer: writer(),
            recent: Vec::new(),
            traceparent: None,
        }
    );
}

/// The shape of CrdtDeltaRecord version 1 (a protocol delta; never written by a release).
#[derive(Serialize)]
struct CrdtDeltaRecordV1 {
    service: String,
    persistence_id: String,
    entity_id: String,
    replica_id: String,
    delta: Bytes,
    deleted: bool,
    write_consistency: WriteConsistency,
    timestamp: i64,
}

#[test]
fn crdt_records_written_with_version_1_decode_as_deltas_without_a_state() {
    let v1 = Registry::global()
        .versions()
        .find(|v| v.kind() == RecordKind::CrdtDelta && v.version() == 1)
        .unwrap();
    let schema = Schema::parse_str(avro::files::CRDT_DELTA_RECORD_V1).unwrap();
    let old = CrdtDeltaRecordV1 {
        service: "presence".into(),
        persistence_id: "presence".into(),
        entity_id: "alice".into(),
        replica_id: "p1".into(),
        delta: Bytes::from_static(b"\x0a\x02\x08\x01"),
        deleted: false,
        write_consistency: WriteConsistency::All,
        timestamp: 5,
    };
    let mut bytes = v1.header().to_vec();
    GenericDatumWriter::builder(&schema)
        .build()
        .unwrap()
        .write_ser(&mut bytes, &old)
        .unwrap();
    let decoded = CrdtDeltaRecord::decode(&bytes).unwrap();
    assert_eq!(
        decoded,
        CrdtDeltaRecord {
            service: old.service.clone(),
            persistence_id: old.persistence_id.clone(),
            entity_id: old.entity_id.clone(),
            replica_id: old.replica_id.clone(),
            delta: old.delta.clone(),
            deleted: false,
            write_consistency: WriteConsistency::All,
            timestamp_ms: 5,
            kind: CrdtRecordKind::Delta,
            sequence: 0,
            state: Bytes::new(),
            pruned_replica: None,
            applied: Vec::new(),
            traceparent: None,
        }
    );
}

#[test]
fn crdt_heartbeats_prunes_and_deletes_round_trip() {
    let heartbeat = CrdtDeltaRecord {
        persistence_id: String::new(),
        entity_id: String::new(),
        kind: CrdtRecordKind::Heartbeat,
        state: Bytes::new(),
        applied: vec![
            AppliedOffset {
                partition: 0,
                offset: 12,
            },
            AppliedOffset {
                partition: 3,
                offset: 0,
            },
        ],
        ..crdt_delta()
    };
    round_trip(&heartbeat);
    let prune = CrdtDeltaRecord {
        kind: CrdtRecordKind::Prune,
        state: Bytes::new(),
        pruned_replica: Some("p0:1".into()),
        ..crdt_delta()
    };
    round_trip(&prune);
    for kind in [CrdtRecordKind::FullState, CrdtRecordKind::Delete] {
        round_trip(&CrdtDeltaRecord {
            kind,
            deleted: kind == CrdtRecordKind::Delete,
            ..crdt_delta()
        });
    }
}
