//! The seed corpus: real inputs of each target, made with the project's own encoders (the
//! shopping cart's messages, the Avro records and CRDT states the processor writes, the
//! requests a router and a reflection client send). Each seed starts with the selector byte
//! its target reads first.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use prost::Message as _;
use statehouse_core::partition_for;
use statehouse_crdt::{GCounter, ReplicaId, State, codec};
use statehouse_schemas::avro::{
    AvroRecord as _, CrdtDeltaRecord, CrdtRecordKind, EventRecord, RecentReply, Reply, Snapshot,
    ValueDeletion, ValueRecord, WriteConsistency, Writer,
};
use statehouse_schemas::grpc::reflection::v1;
use statehouse_schemas::grpc::reflection::v1alpha;
use statehouse_schemas::shoppingcart::{AddLineItem, GetShoppingCart, RemoveLineItem};
use statehouse_schemas::statehouse::processor::v1::HandleRequest;

/// Named seeds of one target.
type Seeds = Vec<(&'static str, Vec<u8>)>;

/// Every target's seeds.
pub(crate) fn all() -> Vec<(&'static str, Seeds)> {
    vec![
        ("http_json", http_json()),
        ("grpc_frame", grpc_frame()),
        ("reflection", reflection()),
        ("entity_key", entity_key()),
        ("internal_request", internal_request()),
        ("avro_record", avro_record()),
    ]
}

fn with_selector(selector: u8, bytes: &[u8]) -> Vec<u8> {
    let mut out = vec![selector];
    out.extend_from_slice(bytes);
    out
}

fn add_item() -> AddLineItem {
    AddLineItem {
        user_id: "u1".into(),
        product_id: "p1".into(),
        name: "Sugar".into(),
        quantity: 2,
    }
}

/// A gRPC frame: flags, big-endian length, message.
fn frame(message: &[u8]) -> Vec<u8> {
    let mut out = vec![0];
    out.extend_from_slice(&u32::try_from(message.len()).expect("small").to_be_bytes());
    out.extend_from_slice(message);
    out
}

fn http_json() -> Seeds {
    // Selector: 0 GET, 1 POST (`fuzzing::http_json`'s order).
    let request = |method: u8, target: &str, body: &str| {
        with_selector(method, format!("{target}\n{body}").as_bytes())
    };
    vec![
        (
            "add",
            request(
                1,
                "/cart/u1/items/add",
                r#"{"productId":"p1","name":"Sugar","quantity":2}"#,
            ),
        ),
        ("remove", request(1, "/cart/u%201/items/p1/remove", "")),
        ("get", request(0, "/carts/u1", "")),
        ("get-items", request(0, "/carts/u1/items", "")),
        (
            "default-rule",
            request(
                1,
                "/com.example.shoppingcart.ShoppingCart/AddItem",
                r#"{"user_id":"u1","product_id":"p1","quantity":-3}"#,
            ),
        ),
        (
            "query",
            request(
                1,
                "/com.example.shoppingcart.ShoppingCart/GetCart?userId=u1",
                "",
            ),
        ),
    ]
}

fn grpc_frame() -> Seeds {
    let message = add_item().encode_to_vec();
    let one = frame(&message);
    let mut two = one.clone();
    two.extend_from_slice(&frame(
        &GetShoppingCart {
            user_id: "u1".into(),
        }
        .encode_to_vec(),
    ));
    let text = BASE64.encode(&one);
    vec![
        // Limit 4 KiB (0x0a), chunks of 1 and of 16 bytes.
        ("one-frame", with_selector(0x0a, &one)),
        ("two-frames", with_selector(0xfa, &two)),
        ("web-text", with_selector(0x3a, text.as_bytes())),
        ("empty-frame", with_selector(0x01, &frame(&[]))),
        ("timeout", with_selector(0x00, b"1500m")),
        ("timeout-hours", with_selector(0x00, b"99999999H")),
    ]
}

fn reflection() -> Seeds {
    use v1::server_reflection_request::MessageRequest as Q;
    let v1_request = |message: Q| {
        with_selector(
            0,
            &v1::ServerReflectionRequest {
                host: "localhost".into(),
                message_request: Some(message),
            }
            .encode_to_vec(),
        )
    };
    let alpha = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    vec![
        ("list", v1_request(Q::ListServices(String::new()))),
        (
            "symbol",
            v1_request(Q::FileContainingSymbol(
                "com.example.shoppingcart.ShoppingCart.AddItem".into(),
            )),
        ),
        (
            "file",
            v1_request(Q::FileByFilename("shoppingcart/shoppingcart.proto".into())),
        ),
        (
            "extension",
            v1_request(Q::FileContainingExtension(v1::ExtensionRequest {
                containing_type: "google.protobuf.FieldOptions".into(),
                extension_number: 1080,
            })),
        ),
        (
            "extension-numbers",
            v1_request(Q::AllExtensionNumbersOfType(
                "google.protobuf.MethodOptions".into(),
            )),
        ),
        ("v1alpha-list", with_selector(1, &alpha.encode_to_vec())),
    ]
}

fn entity_key() -> Seeds {
    // The keyed methods sorted by path: AddItem, GetCart, RemoveItem.
    vec![
        ("add", with_selector(0, &add_item().encode_to_vec())),
        (
            "get",
            with_selector(
                1,
                &GetShoppingCart {
                    user_id: "u1".into(),
                }
                .encode_to_vec(),
            ),
        ),
        (
            "remove",
            with_selector(
                2,
                &RemoveLineItem {
                    user_id: "ü-ñ".into(),
                    product_id: "p1".into(),
                }
                .encode_to_vec(),
            ),
        ),
        ("empty-key", with_selector(1, &[])),
    ]
}

fn internal_request() -> Seeds {
    // Selector 15: 16 partitions.
    let request = |method: &str, entity_id: &str, payload: Vec<u8>| HandleRequest {
        service: "shopping-cart".into(),
        method: method.into(),
        entity_id: entity_id.into(),
        partition: if entity_id.is_empty() {
            -1
        } else {
            partition_for(entity_id.as_bytes(), 16) as i32
        },
        payload: Bytes::from(payload),
        idempotency_key: "k-1".into(),
        deadline_unix_ms: 1_700_000_000_000,
        traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
        hops: 1,
        ..HandleRequest::default()
    };
    vec![
        (
            "add",
            with_selector(
                15,
                &request(
                    "/com.example.shoppingcart.ShoppingCart/AddItem",
                    "u1",
                    add_item().encode_to_vec(),
                )
                .encode_to_vec(),
            ),
        ),
        (
            "action",
            with_selector(
                15,
                &request("/cloudstate.EntityDiscovery/Discover", "", Vec::new()).encode_to_vec(),
            ),
        ),
    ]
}

fn writer() -> Writer {
    Writer {
        processor_id: "processor-1".into(),
        epoch: 1_700_000_000_000,
    }
}

fn avro_record() -> Seeds {
    let event = EventRecord {
        service: "shopping-cart".into(),
        persistence_id: "shopping-cart".into(),
        entity_id: "u1".into(),
        seq: 3,
        type_url: "type.googleapis.com/com.example.shoppingcart.persistence.ItemAdded".into(),
        payload: Bytes::from(add_item().encode_to_vec()),
        command_id: Some("c-1".into()),
        idempotency_key: Some("k-1".into()),
        timestamp_ms: 1_700_000_000_000,
        writer: writer(),
        snapshot: Some(Snapshot {
            type_url: "type.googleapis.com/com.example.shoppingcart.persistence.Cart".into(),
            payload: Bytes::from_static(b"\x0a\x02p1"),
        }),
        traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
        reply: Some(Reply {
            type_url: "type.googleapis.com/google.protobuf.Empty".into(),
            payload: Bytes::new(),
        }),
    };
    let recent = vec![RecentReply {
        idempotency_key: "k-1".into(),
        reply: None,
    }];
    let value = ValueRecord {
        service: "shopping-cart".into(),
        persistence_id: "shopping-cart".into(),
        entity_id: "u1".into(),
        seq: 2,
        type_url: "type.googleapis.com/com.example.shoppingcart.Cart".into(),
        payload: Bytes::from_static(b"\x0a\x02p1"),
        command_id: None,
        idempotency_key: Some("k-1".into()),
        timestamp_ms: 1_700_000_000_000,
        writer: writer(),
        recent: recent.clone(),
        traceparent: None,
    };
    let deletion = ValueDeletion {
        service: "shopping-cart".into(),
        persistence_id: "shopping-cart".into(),
        entity_id: "u1".into(),
        seq: 3,
        command_id: None,
        idempotency_key: None,
        timestamp_ms: 1_700_000_000_000,
        writer: writer(),
        recent,
        traceparent: None,
    };
    let counter = codec::encode(&State::GCounter(
        GCounter::default().increment(&ReplicaId::new("processor-1:1"), 5),
    ));
    let delta = CrdtDeltaRecord {
        service: "shopping-cart".into(),
        persistence_id: "shopping-cart".into(),
        entity_id: "u1".into(),
        replica_id: "processor-1:1".into(),
        delta: Bytes::new(),
        deleted: false,
        write_consistency: WriteConsistency::default(),
        timestamp_ms: 1_700_000_000_000,
        kind: CrdtRecordKind::Delta,
        sequence: 1,
        state: counter.clone(),
        pruned_replica: None,
        applied: Vec::new(),
        traceparent: None,
    };
    let encoded = |bytes: Result<Vec<u8>, statehouse_schemas::Error>| bytes.expect("encodes");
    // Selector bit 0: journal (0) or values (1); bits 1-2: 0 value, 2 tombstone key,
    // 3 deletion header.
    vec![
        ("event", with_selector(0, &encoded(event.encode()))),
        ("value", with_selector(1, &encoded(value.encode()))),
        ("deletion", with_selector(7, &encoded(deletion.encode()))),
        ("crdt-delta", with_selector(0, &encoded(delta.encode()))),
        ("crdt-state", with_selector(0, &counter)),
        ("journal-tombstone", with_selector(4, b"shopping-cart|u1#3")),
        ("values-tombstone", with_selector(5, b"shopping-cart|u1")),
    ]
}
