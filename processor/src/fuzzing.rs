//! Entry points for the fuzz targets (`fuzz/`, `docs/fuzzing.md`); not an API.
//!
//! Each function takes the fuzzer's bytes through what the processor decodes of untrusted or
//! stored input — the internal request a router sends, the records it reads back from Kafka on
//! recovery and replay, the CRDT states of the broadcast topic and the backup — and panics only
//! when a property the code promises breaks (a decoded record that does not survive its own
//! encoding, a command that does not say what its request said). Errors are expected answers.
//! `fuzz/src/lib.rs` replays the corpus through them in `cargo test`.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use prost::Message as _;
use statehouse_core::partition_for;
use statehouse_crdt::codec;
use statehouse_kafka::headers;
use statehouse_kafka::reader::Message;
use statehouse_runtime::method_index::{EntityKind, MethodIndex};
use statehouse_schemas::avro::{
    AnyRecord, AvroRecord as _, CrdtDeltaRecord, EventRecord, ValueDeletion, ValueRecord,
};
use statehouse_schemas::cloudstate::Entity;
use statehouse_schemas::statehouse::processor::v1::HandleRequest;
use statehouse_schemas::{FILE_DESCRIPTOR_SET, protocol};

use crate::discovery::SUPPORTED_ENTITY_TYPES;
use crate::records::{Topic, Topics, Written};
use crate::server::command_of;

/// The service the fuzzed processor serves.
const SERVICE: &str = "shopping-cart";

/// The shopping cart's method index, as a processor of the sample builds it from discovery:
/// the cart (event-sourced) and a value-entity and an action view of the same service.
pub fn shopping_cart_index() -> &'static MethodIndex {
    static INDEX: OnceLock<MethodIndex> = OnceLock::new();
    INDEX.get_or_init(|| {
        let entity = |entity_type: &str, service_name: &str| Entity {
            entity_type: entity_type.into(),
            service_name: service_name.into(),
            persistence_id: "shopping-cart".into(),
            ..Entity::default()
        };
        MethodIndex::build(
            FILE_DESCRIPTOR_SET,
            &[
                entity(
                    protocol::EVENT_SOURCED,
                    "com.example.shoppingcart.ShoppingCart",
                ),
                entity(protocol::ACTION, "cloudstate.EntityDiscovery"),
            ],
            SUPPORTED_ENTITY_TYPES,
        )
        .expect("the shipped shopping cart descriptors are valid")
    })
}

/// The internal request decode. Input: one byte setting the partition count, then an encoded
/// `HandleRequest`.
///
/// Checks: a request that decodes re-encodes to a request that decodes equal; a request the
/// processor accepts becomes a command for exactly the method and entity it names, and a keyed
/// command's entity is in the partition the request claims (when it claims one).
pub fn internal_request(data: &[u8]) {
    let Some((&partitions, bytes)) = data.split_first() else {
        return;
    };
    let partition_count = u32::from(partitions) + 1;
    let Ok(request) = HandleRequest::decode(bytes) else {
        return;
    };
    let again = HandleRequest::decode(request.encode_to_vec().as_slice())
        .expect("an encoded request decodes");
    assert_eq!(again, request, "a request survives its own encoding");
    let Ok(command) = command_of(
        SERVICE,
        shopping_cart_index(),
        partition_count,
        request.clone(),
    ) else {
        return;
    };
    assert_eq!(command.method.path, request.method);
    assert_eq!(command.entity_id, request.entity_id);
    assert_eq!(command.payload, request.payload);
    assert_eq!(command.hops, request.hops);
    if command
        .method
        .entity
        .kind()
        .is_some_and(EntityKind::is_keyed)
    {
        assert!(
            !command.entity_id.is_empty(),
            "a keyed command has an entity"
        );
        let partition = partition_for(command.entity_id.as_bytes(), partition_count);
        assert!(partition < partition_count);
        if request.partition >= 0 {
            assert_eq!(i64::from(request.partition), i64::from(partition));
        }
    } else {
        assert!(command.entity_id.is_empty(), "an action has no entity");
    }
}

/// Record decoding on the replay path. Input: one byte choosing how the rest arrives as a
/// Kafka message (which topic, a value or a tombstone, a deletion header), then the bytes.
///
/// Checks: every Avro record type that decodes the bytes encodes back to something that decodes
/// equal (also through [`AnyRecord`], which must agree with the typed decoder); a CRDT state
/// that decodes survives its canonical encoding; a Kafka message the partition's recovery turns
/// into a record gives the same record again from that record's own Kafka form.
pub fn avro_record(data: &[u8]) {
    let Some((&selector, bytes)) = data.split_first() else {
        return;
    };
    let any = AnyRecord::decode(bytes);
    if let Ok(record) = &any {
        let encoded = match record {
            AnyRecord::Event(r) => r.encode(),
            AnyRecord::Value(r) => r.encode(),
            AnyRecord::ValueDeletion(r) => r.encode(),
            AnyRecord::CrdtDelta(r) => r.encode(),
            AnyRecord::Service(r) => r.encode(),
            AnyRecord::Routing(r) => r.encode(),
        }
        .expect("a decoded record encodes");
        assert_eq!(
            AnyRecord::decode(&encoded).as_ref().ok(),
            Some(record),
            "a record survives its own encoding"
        );
    }
    fn typed<T: statehouse_schemas::avro::AvroRecord + PartialEq + std::fmt::Debug>(
        bytes: &[u8],
    ) -> Option<T> {
        let record = T::decode(bytes).ok()?;
        let encoded = record.encode().expect("a decoded record encodes");
        assert_eq!(T::decode(&encoded).ok().as_ref(), Some(&record));
        Some(record)
    }
    let event = typed::<EventRecord>(bytes);
    let value = typed::<ValueRecord>(bytes);
    let deletion = typed::<ValueDeletion>(bytes);
    let delta = typed::<CrdtDeltaRecord>(bytes);
    match &any {
        Ok(AnyRecord::Event(r)) => assert_eq!(event.as_ref(), Some(r)),
        Ok(AnyRecord::Value(r)) => assert_eq!(value.as_ref(), Some(r)),
        Ok(AnyRecord::ValueDeletion(r)) => assert_eq!(deletion.as_ref(), Some(r)),
        Ok(AnyRecord::CrdtDelta(r)) => assert_eq!(delta.as_ref(), Some(r)),
        _ => {}
    }
    if let Some(delta) = delta {
        crdt_state(&delta.state);
    }
    crdt_state(bytes);

    let bytes = Bytes::copy_from_slice(bytes);
    let topic = if selector & 1 == 0 {
        Topic::Journal
    } else {
        Topic::Values
    };
    let message = match (selector >> 1) & 3 {
        // A record with a value.
        0 | 1 => kafka_message(None, Some(bytes), Vec::new()),
        // A tombstone whose key is the bytes.
        2 => kafka_message(Some(bytes), None, Vec::new()),
        // A value deletion: a tombstone with the bytes as its deletion header.
        _ => kafka_message(
            Some(Bytes::from_static(b"shopping-cart|u1")),
            None,
            vec![(headers::DELETION.to_string(), bytes)],
        ),
    };
    replay(topic, &message);
}

/// A CRDT state's decoding: what decodes survives the canonical encoding.
fn crdt_state(bytes: &[u8]) {
    if let Ok(state) = codec::decode(bytes) {
        let again = codec::decode(&codec::encode(&state)).expect("an encoded state decodes");
        assert_eq!(again, state, "a CRDT state survives its canonical encoding");
    }
}

fn kafka_message(
    key: Option<Bytes>,
    value: Option<Bytes>,
    headers: Vec<(String, Bytes)>,
) -> Message {
    Message {
        partition: 0,
        offset: 0,
        key,
        value,
        headers,
        timestamp_ms: None,
    }
}

/// A message as the partition's recovery reads it: a record it yields comes back the same from
/// its own Kafka form.
fn replay(topic: Topic, message: &Message) {
    let Ok(Some(written)) = Written::from_kafka(topic, message) else {
        return;
    };
    let topics = Topics {
        journal: Arc::from("shopping-cart.journal"),
        values: Arc::from("shopping-cart.values"),
    };
    let record = written
        .to_kafka(&topics)
        .expect("a decoded record has a Kafka form");
    let topic = topics
        .of(&record.topic)
        .expect("one of the partition's topics");
    let again = kafka_message(
        Some(record.key),
        record.value,
        record
            .headers
            .iter()
            .map(|(name, value)| (name.to_string(), value.clone()))
            .collect(),
    );
    assert_eq!(
        Written::from_kafka(topic, &again).ok().flatten(),
        Some(written),
        "a replayed record survives its own Kafka form"
    );
}
