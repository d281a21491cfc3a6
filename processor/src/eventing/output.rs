//! A reply as a record of a method's `out` topic (`docs/protocol.md`, "Eventing"): a CloudEvent
//! in Kafka's binary mode — `ce_*` headers and `content-type`, the data as the value.
//!
//! The data and the defaults follow the reply's type URL as the reference proxy has them
//! (JSON → `application/json` with the JSON as the value, `p.cloudstate.io/string|bytes` →
//! text or octets, a protobuf → `application/protobuf` with the message bytes); the reply's
//! string metadata overrides each attribute. `ce-id` defaults to an id fixed by the command
//! (its idempotency key, else where its records went), so a consumer can tell a repeat from a
//! new event.

use std::sync::Arc;

use bytes::Bytes;
use statehouse_schemas::cloudstate as cs;
use statehouse_schemas::protocol::{JSON_TYPE_URL_PREFIX, PRIMITIVE_TYPE_URL_PREFIX};

use crate::command::{Command, Reply};
use crate::records::Output;

/// The Kafka header names of the CloudEvent attributes (the Kafka protocol binding).
const ID: &str = "ce_id";
const SOURCE: &str = "ce_source";
const SPECVERSION: &str = "ce_specversion";
const TYPE: &str = "ce_type";
const SUBJECT: &str = "ce_subject";
const TIME: &str = "ce_time";
const DATASCHEMA: &str = "ce_dataschema";
const CONTENT_TYPE: &str = "content-type";

/// The output topic of `command`'s method, if it has one.
pub(crate) fn topic_of(command: &Command) -> Option<Arc<str>> {
    use statehouse_schemas::cloudstate::event_destination::Destination;
    let out = command.method.eventing.as_ref()?.out.as_ref()?;
    match out.destination.as_ref()? {
        Destination::Topic(topic) => Some(Arc::from(topic.as_str())),
    }
}

/// What an output record needs of its command besides the reply.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Origin {
    pub(crate) topic: Arc<str>,
    /// `ce-source` unless the reply sets one: the service's full name.
    pub(crate) source: String,
    /// `ce-id` unless the reply sets one.
    pub(crate) id: String,
    /// `ce-subject` unless the reply sets one (the entity id of an entity's command).
    pub(crate) subject: Option<String>,
    /// The record key: the entity id, or none (spread by Kafka's partitioner).
    pub(crate) key: Option<Bytes>,
}

/// The output record of `reply` (`None`: nothing to publish — forwards, failures and replies
/// without a message publish nothing).
pub(crate) fn record(origin: Origin, reply: &Reply) -> Option<Output> {
    let Reply::Message {
        payload,
        type_url,
        metadata,
    } = reply
    else {
        return None;
    };
    let (ce_type, content_type, data) =
        if let Some(name) = type_url.strip_prefix(JSON_TYPE_URL_PREFIX) {
            (name.to_string(), "application/json", field_one(payload))
        } else if let Some(primitive) = type_url.strip_prefix(PRIMITIVE_TYPE_URL_PREFIX) {
            let content_type = if primitive == "string" {
                "text/plain; charset=utf-8"
            } else {
                "application/octet-stream"
            };
            (String::new(), content_type, field_one(payload))
        } else {
            let name = type_url
                .split_once('/')
                .map_or(type_url.as_str(), |(_, n)| n);
            (name.to_string(), "application/protobuf", payload.clone())
        };
    let mut headers: Vec<(&'static str, Bytes)> = vec![
        (ID, Bytes::from(origin.id)),
        (SOURCE, Bytes::from(origin.source)),
        (SPECVERSION, Bytes::from_static(b"1.0")),
        (TYPE, Bytes::from(ce_type)),
        (CONTENT_TYPE, Bytes::from_static(content_type.as_bytes())),
    ];
    if let Some(subject) = origin.subject {
        headers.push((SUBJECT, Bytes::from(subject)));
    }
    for entry in metadata.iter().flat_map(|m| &m.entries) {
        let Some(cs::metadata_entry::Value::StringValue(value)) = &entry.value else {
            continue;
        };
        let name = match entry.key.to_ascii_lowercase().as_str() {
            "ce-id" => ID,
            "ce-source" => SOURCE,
            "ce-specversion" => SPECVERSION,
            "ce-type" => TYPE,
            "ce-subject" => SUBJECT,
            "ce-time" => TIME,
            "ce-dataschema" => DATASCHEMA,
            "content-type" => CONTENT_TYPE,
            _ => continue,
        };
        let value = Bytes::from(value.clone());
        match headers.iter_mut().find(|(n, _)| *n == name) {
            Some(header) => header.1 = value,
            None => headers.push((name, value)),
        }
    }
    Some(Output {
        topic: origin.topic,
        key: origin.key,
        value: data,
        headers,
    })
}

/// The bytes of field 1 of a message (`JsonValue`/primitive wrappers: `0x0a <len> <bytes>`);
/// empty when the message has no field 1 (or is not such a wrapper).
pub(crate) fn field_one(message: &Bytes) -> Bytes {
    let mut rest = &message[..];
    while !rest.is_empty() {
        let Ok(tag) = prost::encoding::decode_varint(&mut rest) else {
            break;
        };
        let (field, wire) = (tag >> 3, tag & 7);
        let len = match wire {
            0 => {
                if prost::encoding::decode_varint(&mut rest).is_err() {
                    break;
                }
                continue;
            }
            1 => 8,
            5 => 4,
            2 => match prost::encoding::decode_varint(&mut rest) {
                Ok(len) => len as usize,
                Err(_) => break,
            },
            _ => break,
        };
        if len > rest.len() {
            break;
        }
        if field == 1 && wire == 2 {
            let start = message.len() - rest.len();
            return message.slice(start..start + len);
        }
        rest = &rest[len..];
    }
    Bytes::new()
}

/// `data` as field 1 of a wrapper message (`0x0a <len> <bytes>`); empty data is the empty
/// message.
pub(crate) fn wrap_field_one(data: &[u8]) -> Bytes {
    if data.is_empty() {
        return Bytes::new();
    }
    let mut out = Vec::with_capacity(data.len() + 6);
    out.push(0x0a);
    prost::encoding::encode_varint(data.len() as u64, &mut out);
    out.extend_from_slice(data);
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin() -> Origin {
        Origin {
            topic: Arc::from("out"),
            source: "shop.Cart".into(),
            id: "cmd-1".into(),
            subject: Some("cart-7".into()),
            key: Some(Bytes::from_static(b"cart-7")),
        }
    }

    fn header<'a>(output: &'a Output, name: &str) -> Option<&'a [u8]> {
        output
            .headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| &v[..])
    }

    fn message(type_url: &str, payload: Bytes, metadata: Vec<(&str, &str)>) -> Reply {
        Reply::Message {
            payload,
            type_url: type_url.into(),
            metadata: Some(crate::eventing::event::cloud_event(metadata)),
        }
    }

    #[test]
    fn a_protobuf_reply_is_its_bytes_with_its_type() {
        let reply = message(
            "type.googleapis.com/shop.Added",
            Bytes::from_static(b"\x0a\x03abc"),
            vec![],
        );
        let out = record(origin(), &reply).expect("published");
        assert_eq!(&out.value[..], b"\x0a\x03abc");
        assert_eq!(header(&out, ID), Some(&b"cmd-1"[..]));
        assert_eq!(header(&out, SOURCE), Some(&b"shop.Cart"[..]));
        assert_eq!(header(&out, TYPE), Some(&b"shop.Added"[..]));
        assert_eq!(header(&out, SPECVERSION), Some(&b"1.0"[..]));
        assert_eq!(
            header(&out, CONTENT_TYPE),
            Some(&b"application/protobuf"[..])
        );
        assert_eq!(header(&out, SUBJECT), Some(&b"cart-7"[..]));
        assert_eq!(out.key.as_deref(), Some(&b"cart-7"[..]));
    }

    #[test]
    fn json_and_primitives_are_unwrapped() {
        let json = wrap_field_one(br#"{"a":1}"#);
        let out = record(origin(), &message("json.cloudstate.io/Thing", json, vec![]))
            .expect("published");
        assert_eq!(&out.value[..], br#"{"a":1}"#);
        assert_eq!(header(&out, TYPE), Some(&b"Thing"[..]));
        assert_eq!(header(&out, CONTENT_TYPE), Some(&b"application/json"[..]));
        let text = wrap_field_one(b"hello");
        let out =
            record(origin(), &message("p.cloudstate.io/string", text, vec![])).expect("published");
        assert_eq!(&out.value[..], b"hello");
        assert_eq!(
            header(&out, CONTENT_TYPE),
            Some(&b"text/plain; charset=utf-8"[..])
        );
        assert_eq!(header(&out, TYPE), Some(&b""[..]));
    }

    #[test]
    fn reply_metadata_overrides_the_defaults() {
        let reply = message(
            "type.googleapis.com/shop.Added",
            Bytes::new(),
            vec![
                ("ce-id", "in-42"),
                ("Content-Type", "application/x-protobuf"),
                ("ce-time", "2026-12-04T00:00:00Z"),
                ("x-other", "ignored"),
            ],
        );
        let out = record(origin(), &reply).expect("published");
        assert_eq!(header(&out, ID), Some(&b"in-42"[..]));
        assert_eq!(
            header(&out, CONTENT_TYPE),
            Some(&b"application/x-protobuf"[..])
        );
        assert_eq!(header(&out, TIME), Some(&b"2026-12-04T00:00:00Z"[..]));
        assert_eq!(out.headers.len(), 7);
    }

    #[test]
    fn nothing_is_published_for_failures_and_empty_replies() {
        assert_eq!(record(origin(), &Reply::Empty), None);
        assert_eq!(record(origin(), &Reply::failure("no")), None);
    }

    #[test]
    fn field_one_skips_other_fields_and_survives_garbage() {
        // field 2 varint 5, then field 1 "xy"
        let message = Bytes::from_static(b"\x10\x05\x0a\x02xy");
        assert_eq!(&field_one(&message)[..], b"xy");
        assert_eq!(&field_one(&Bytes::from_static(b"\x0a\x09ab"))[..], b"");
        assert_eq!(&field_one(&Bytes::new())[..], b"");
        assert_eq!(field_one(&wrap_field_one(&[7u8; 300])).len(), 300);
    }
}
