//! Entry points for the fuzz targets (`fuzz/`, `docs/fuzzing.md`); not an API.
//!
//! Each function takes the fuzzer's bytes, runs them through the gateway's own decoding of
//! untrusted input — the same functions a request goes through — and panics only when a
//! property the code promises is broken (a round trip that does not give back what went in,
//! two decoders that disagree). Errors are expected answers to bad input, never a finding.
//! They live here, next to the crate-private code they call, so that nothing else of the
//! crate has to be public; `fuzz/src/lib.rs` replays the corpus through them in
//! `cargo test`, without a nightly toolchain.

use std::sync::OnceLock;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method};
use prost::Message as _;
use prost_reflect::{DeserializeOptions, DynamicMessage};
use statehouse_runtime::router::Registry;
use statehouse_schemas::avro::{Entity, ServiceRecord};
use statehouse_schemas::grpc::reflection::{v1, v1alpha};
use statehouse_schemas::{FILE_DESCRIPTOR_SET, protocol};

use crate::{grpc, reflection, transcode};

/// A registry that serves the sample shopping cart (event-sourced) and the discovery service
/// (an action), as the gateway sees them once their service record arrived.
pub fn shopping_cart_registry() -> Registry {
    let registry = Registry::new();
    let entity = |service: &str, entity_type: &str, persistence_id: &str| Entity {
        entity_type: entity_type.into(),
        service_name: service.into(),
        persistence_id: persistence_id.into(),
        passivation_timeout_ms: None,
    };
    registry
        .apply_service(ServiceRecord {
            service: "shopping-cart".into(),
            descriptor_set: Bytes::from_static(FILE_DESCRIPTOR_SET),
            entities: vec![
                entity(
                    "com.example.shoppingcart.ShoppingCart",
                    protocol::EVENT_SOURCED,
                    "shopping-cart",
                ),
                entity("cloudstate.EntityDiscovery", protocol::ACTION, ""),
            ],
            processors: vec![],
            protocol_major: 0,
            protocol_minor: 2,
            support_library_name: "fuzz".into(),
            support_library_version: "0".into(),
            updated_at_ms: 0,
        })
        .expect("the shipped shopping cart descriptors are valid");
    registry
}

fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(shopping_cart_registry)
}

fn table() -> &'static transcode::Table {
    static TABLE: OnceLock<transcode::Table> = OnceLock::new();
    TABLE.get_or_init(|| transcode::Table::build(&registry().routes()))
}

/// The HTTP methods an input's first byte picks from.
const METHODS: [Method; 5] = [
    Method::GET,
    Method::POST,
    Method::PUT,
    Method::DELETE,
    Method::PATCH,
];

/// HTTP/JSON transcoding. Input: one byte picking the HTTP method, the request target
/// (`/path?query`) up to the first newline, then the body.
///
/// Checks: a request message that transcodes decodes with the method's input type, encodes
/// back to the same bytes, and survives proto3 JSON (print, parse, encode) unchanged; a reply
/// (the body bytes taken as the output message) that transcodes is valid JSON.
pub fn http_json(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let method = &METHODS[usize::from(selector) % METHODS.len()];
    let (target, body) = match rest.iter().position(|&b| b == b'\n') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let Ok(target) = std::str::from_utf8(target) else {
        return;
    };
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    };
    let Some((binding, variables)) = table().find(method, path) else {
        return;
    };
    if let Ok(variables) = variables
        && let Ok(message) = transcode::request_message(binding, variables, query, body)
    {
        let input = binding.route.method.input.clone();
        let decoded = DynamicMessage::decode(input.clone(), message.clone())
            .expect("a transcoded request decodes as its input type");
        assert_eq!(
            decoded.encode_to_vec(),
            message,
            "a transcoded request re-encodes to the same bytes"
        );
        let json = transcode::print_message(&decoded).expect("a decoded request prints as JSON");
        let value: serde_json::Value =
            serde_json::from_slice(&json).expect("a printed request is valid JSON");
        let parsed =
            DynamicMessage::deserialize_with_options(input, value, &DeserializeOptions::new())
                .expect("a printed request parses back");
        assert_eq!(
            parsed.encode_to_vec(),
            message,
            "a request survives proto3 JSON unchanged"
        );
    }
    if let Ok((content_type, json)) = transcode::response_body(binding, body)
        && content_type == "application/json"
    {
        serde_json::from_slice::<serde_json::Value>(&json).expect("a transcoded reply is JSON");
    }
}

/// gRPC framing. Input: one byte setting the message limit and the chunk size the streaming
/// deframer is fed in, then a request body.
///
/// Checks: a body `parse_frame` accepts is exactly one frame of its message (framing it again
/// gives the body back) and the streaming deframer reads the same single message from it; the
/// deframer's messages, framed again, are the body's prefix it consumed; gRPC-Web text that
/// decodes decodes again to the same bytes once re-encoded; a `grpc-timeout` header value is
/// either refused or a duration.
pub fn grpc_frame(data: &[u8]) {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let limit = match selector & 0x0f {
        0 => 0,
        n => 1usize << (n + 2),
    };
    let chunk = usize::from(selector >> 4) + 1;
    let body = Bytes::copy_from_slice(body);

    let single = grpc::parse_frame(body.clone(), limit);
    if let Ok(message) = &single {
        assert_eq!(
            grpc::frame(message),
            body,
            "one frame is its message framed"
        );
    }

    let mut decoder = grpc::FrameDecoder::new(limit);
    let mut messages = Vec::new();
    let mut consumed = Vec::new();
    let mut failed = false;
    'feed: for piece in body.chunks(chunk) {
        decoder.push(piece);
        loop {
            match decoder.next_message() {
                Ok(Some(message)) => {
                    consumed.extend_from_slice(&grpc::frame(&message));
                    messages.push(message);
                }
                Ok(None) => break,
                Err(_) => {
                    failed = true;
                    break 'feed;
                }
            }
        }
    }
    assert!(
        body.starts_with(&consumed),
        "the deframer's messages are the body's frames"
    );
    if let Ok(message) = single {
        assert!(!failed, "the deframer reads a body parse_frame accepts");
        assert_eq!(messages, vec![message], "both read the same one message");
        assert!(
            decoder.finish().is_ok(),
            "nothing is left of a single frame"
        );
    } else if !failed && decoder.finish().is_ok() {
        // Whole frames only: parse_frame refused because there is not exactly one.
        assert_ne!(messages.len(), 1, "a lone frame is a unary body");
    }

    if let Ok(decoded) = grpc::decode_base64_chunks(&body) {
        let again = grpc::decode_base64_chunks(&grpc::web_text(&decoded))
            .expect("gRPC-Web text we encode decodes");
        assert_eq!(again, decoded, "gRPC-Web text round trip");
    }

    if let Ok(value) = HeaderValue::from_bytes(&body) {
        let mut headers = HeaderMap::new();
        headers.insert("grpc-timeout", value);
        if grpc::timeout(&headers).is_some() {
            let text = body.as_ref();
            assert!(
                (2..=9).contains(&text.len())
                    && text[..text.len() - 1].iter().all(u8::is_ascii_digit),
                "only well-formed timeouts are taken"
            );
        }
    }
}

/// Server reflection. Input: one byte picking the protocol version, then an encoded
/// `ServerReflectionRequest`.
///
/// Checks: a request that decodes gets exactly one answer, which echoes the request and the
/// host, and every file it returns is a valid `FileDescriptorProto`.
pub fn reflection(data: &[u8]) {
    let Some((&version, request)) = data.split_first() else {
        return;
    };
    let files = if version & 1 == 0 {
        let Ok(request) = v1::ServerReflectionRequest::decode(request) else {
            return;
        };
        let answer = reflection::v1::ask(registry(), request.clone());
        assert_eq!(answer.valid_host, request.host);
        assert_eq!(answer.original_request.as_ref(), Some(&request));
        match answer.message_response {
            Some(v1::server_reflection_response::MessageResponse::FileDescriptorResponse(f)) => {
                f.file_descriptor_proto
            }
            Some(_) => Vec::new(),
            None => panic!("every question gets an answer"),
        }
    } else {
        let Ok(request) = v1alpha::ServerReflectionRequest::decode(request) else {
            return;
        };
        let answer = reflection::v1alpha::ask(registry(), request.clone());
        assert_eq!(answer.valid_host, request.host);
        assert_eq!(answer.original_request.as_ref(), Some(&request));
        match answer.message_response {
            Some(v1alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(
                f,
            )) => f.file_descriptor_proto,
            Some(_) => Vec::new(),
            None => panic!("every question gets an answer"),
        }
    };
    for file in files {
        prost_reflect::prost_types::FileDescriptorProto::decode(file.as_ref())
            .expect("reflection answers valid file descriptors");
    }
}
