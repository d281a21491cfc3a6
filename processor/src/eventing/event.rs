//! An event as a command (`docs/protocol.md`, "Eventing"): the method its type goes to, its
//! payload as it is (a method taking `google.protobuf.Any` gets the event's own type), the
//! CloudEvent metadata the reference proxy sends, and an idempotency key that is the same every
//! time the event is delivered — so the command's forwards and side effects (keys derived from
//! it) run once in effect at their targets however often the event comes.

use bytes::Bytes;
use statehouse_core::ids::{entity_key, journal_key};
use statehouse_kafka::reader::Message;
use statehouse_schemas::avro::EventRecord;
use statehouse_schemas::cloudstate as cs;
use statehouse_schemas::protocol::{JSON_TYPE_URL_PREFIX, PRIMITIVE_TYPE_URL_PREFIX};

use crate::command::Command;
use crate::eventing::output::wrap_field_one;
use crate::eventing::plan::Subscription;

/// The content type of an event that is a protobuf `Any` (as the reference proxy names it).
pub(crate) const ANY_CONTENT_TYPE: &str = "application/vnd.cloudstate.protobuf.any";

/// The command of journal event `record` for subscription `sub` (`Err`: no method takes it, or
/// its payload has no entity key for an entity method).
pub(crate) fn from_journal(sub: &Subscription, record: &EventRecord) -> Result<Command, String> {
    let method = sub
        .route(&record.type_url)
        .ok_or_else(|| sub.unroutable(&record.type_url))?;
    let key = journal_key(
        &entity_key(&record.persistence_id, &record.entity_id),
        u64::try_from(record.seq).unwrap_or_default(),
    );
    let metadata = cloud_event([
        ("ce-id", key.as_str()),
        ("ce-source", record.persistence_id.as_str()),
        ("ce-specversion", "1.0"),
        ("ce-type", record.type_url.as_str()),
        ("Content-Type", ANY_CONTENT_TYPE),
        ("ce-subject", record.entity_id.as_str()),
    ]);
    let entity_id = if method.key_fields.is_empty() {
        String::new()
    } else {
        method
            .entity_id(&record.payload)
            .map_err(|e| format!("event {key} for {}: {e}", method.path))?
    };
    Ok(Command {
        method: std::sync::Arc::clone(method),
        entity_id,
        payload: record.payload.clone(),
        type_url: Some(record.type_url.clone()),
        metadata: Some(metadata),
        idempotency_key: Some(format!(
            "sub/{}/{}/{key}",
            sub.consumer_group,
            sub.source.label()
        )),
        deadline: None,
        traceparent: record.traceparent.clone(),
        call_traceparent: None,
        hops: 0,
    })
}

/// The command of record `message` of topic `topic` for subscription `sub`: a CloudEvent in
/// Kafka's binary mode (`ce_*` headers, `content-type`) or a plain record (`ce-id` =
/// `<topic>/<partition>/<offset>`, `ce-source` = the topic). `Ok(None)`: a tombstone, nothing to
/// run.
pub(crate) fn from_topic(
    sub: &Subscription,
    topic: &str,
    message: &Message,
) -> Result<Option<Command>, String> {
    let Some(data) = &message.value else {
        return Ok(None);
    };
    let header = |name: &str| {
        message
            .headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    };
    let position = format!("{topic}/{}/{}", message.partition, message.offset);
    let binary = header("ce_specversion").is_some();
    let (id, source, specversion, ce_type) = if binary {
        (
            header("ce_id").unwrap_or(&position),
            header("ce_source").unwrap_or(topic),
            header("ce_specversion").unwrap_or("1.0"),
            header("ce_type").unwrap_or(""),
        )
    } else {
        (position.as_str(), topic, "1.0", "")
    };
    let content_type = header("content-type")
        .or_else(|| header("ce_datacontenttype"))
        .unwrap_or("application/octet-stream");
    let (type_url, payload) =
        payload_of(content_type, ce_type, data).map_err(|e| format!("record {position}: {e}"))?;
    let method = sub
        .route(&type_url)
        .ok_or_else(|| sub.unroutable(&type_url))?;
    let mut entries = vec![
        ("ce-id", id),
        ("ce-source", source),
        ("ce-specversion", specversion),
        ("ce-type", ce_type),
        ("Content-Type", content_type),
    ];
    if binary {
        for (header_name, key) in [
            ("ce_subject", "ce-subject"),
            ("ce_time", "ce-time"),
            ("ce_dataschema", "ce-dataschema"),
        ] {
            if let Some(value) = header(header_name) {
                entries.push((key, value));
            }
        }
    }
    let entity_id = if method.key_fields.is_empty() {
        String::new()
    } else {
        method
            .entity_id(&payload)
            .map_err(|e| format!("record {position} for {}: {e}", method.path))?
    };
    // The same event (same source and id) has the same key however often it comes: a
    // producer's retry or a redelivery runs once in effect.
    let idempotency_key = if binary && header("ce_id").is_some() {
        format!(
            "sub/{}/{}/{source}/{id}",
            sub.consumer_group,
            sub.source.label()
        )
    } else {
        format!(
            "sub/{}/{}/{position}",
            sub.consumer_group,
            sub.source.label()
        )
    };
    Ok(Some(Command {
        method: std::sync::Arc::clone(method),
        entity_id,
        payload,
        type_url: Some(type_url),
        metadata: Some(cloud_event(entries)),
        idempotency_key: Some(idempotency_key),
        deadline: None,
        traceparent: header("traceparent").map(str::to_string),
        call_traceparent: None,
        hops: 0,
    }))
}

/// A record's data as a protobuf `Any` (type URL and value), by its content type: protobuf
/// (`application/protobuf`, `application/x-protobuf`, `application/vnd.google.protobuf`; the
/// type from the `proto` or `messageType` parameter, else `ce-type`), an `Any`
/// (`application/vnd.cloudstate.protobuf.any`, typed by `ce-type`), JSON (`application/json`,
/// `application/*+json` → `json.cloudstate.io/<ce-type>`), UTF-8 text (`text/*` →
/// `p.cloudstate.io/string`), anything else bytes (`p.cloudstate.io/bytes`); the last three
/// wrap the data as field 1.
pub(crate) fn payload_of(
    content_type: &str,
    ce_type: &str,
    data: &Bytes,
) -> Result<(String, Bytes), String> {
    let mut parts = content_type.split(';').map(str::trim);
    let media = parts.next().unwrap_or_default().to_ascii_lowercase();
    let params: Vec<(String, &str)> = parts
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().trim_matches('"')))
        .collect();
    let param = |name: &str| params.iter().find(|(k, _)| k == name).map(|(_, v)| *v);
    match media.as_str() {
        "application/protobuf" | "application/x-protobuf" | "application/vnd.google.protobuf" => {
            let name = param("proto")
                .or_else(|| param("messagetype"))
                .unwrap_or(ce_type);
            if name.is_empty() {
                return Err(format!(
                    "a protobuf record ({content_type}) needs its message type: a proto= parameter or a ce_type header"
                ));
            }
            Ok((format!("type.googleapis.com/{name}"), data.clone()))
        }
        ANY_CONTENT_TYPE => {
            if ce_type.is_empty() {
                return Err(format!(
                    "a record of {ANY_CONTENT_TYPE} needs a ce_type header"
                ));
            }
            Ok((ce_type.to_string(), data.clone()))
        }
        "application/cloudevents+json" => Err("structured CloudEvents (application/cloudevents+json) are not supported: send them in binary mode (ce_* headers)".into()),
        json if json == "application/json"
            || (json.starts_with("application/") && json.ends_with("+json")) =>
        {
            Ok((
                format!("{JSON_TYPE_URL_PREFIX}{ce_type}"),
                wrap_field_one(data),
            ))
        }
        text if text.starts_with("text/") => {
            let charset = param("charset").unwrap_or("utf-8");
            if !charset.eq_ignore_ascii_case("utf-8") && !charset.eq_ignore_ascii_case("utf8") {
                return Err(format!(
                    "text in charset {charset} is not supported (UTF-8 only)"
                ));
            }
            if std::str::from_utf8(data).is_err() {
                return Err("the text is not UTF-8".into());
            }
            Ok((
                format!("{PRIMITIVE_TYPE_URL_PREFIX}string"),
                wrap_field_one(data),
            ))
        }
        _ => Ok((
            format!("{PRIMITIVE_TYPE_URL_PREFIX}bytes"),
            wrap_field_one(data),
        )),
    }
}

/// CloudEvent attributes as metadata, in the order given.
pub(crate) fn cloud_event<'a>(
    entries: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> cs::Metadata {
    cs::Metadata {
        entries: entries
            .into_iter()
            .map(|(key, value)| cs::MetadataEntry {
                key: key.to_string(),
                value: Some(cs::metadata_entry::Value::StringValue(value.to_string())),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types_become_any_payloads() {
        let data = Bytes::from_static(b"\x0a\x01x");
        assert_eq!(
            payload_of("application/protobuf; proto=shop.Item", "", &data),
            Ok(("type.googleapis.com/shop.Item".into(), data.clone()))
        );
        assert_eq!(
            payload_of("application/x-protobuf", "shop.Item", &data),
            Ok(("type.googleapis.com/shop.Item".into(), data.clone()))
        );
        assert!(payload_of("application/protobuf", "", &data).is_err());
        assert_eq!(
            payload_of(ANY_CONTENT_TYPE, "type.googleapis.com/shop.Item", &data),
            Ok(("type.googleapis.com/shop.Item".into(), data.clone()))
        );
        let json = Bytes::from_static(br#"{"a":1}"#);
        let (type_url, payload) =
            payload_of("application/cloudevent-ish+json", "Thing", &json).expect("json");
        assert_eq!(type_url, "json.cloudstate.io/Thing");
        assert_eq!(crate::eventing::output::field_one(&payload), json);
        assert!(payload_of("application/cloudevents+json", "", &json).is_err());
        let (type_url, payload) =
            payload_of("text/plain; charset=UTF-8", "", &Bytes::from_static(b"hi")).expect("text");
        assert_eq!(type_url, "p.cloudstate.io/string");
        assert_eq!(&payload[..], b"\x0a\x02hi");
        assert!(payload_of("text/plain; charset=latin1", "", &json).is_err());
        let (type_url, _) = payload_of("image/png", "", &json).expect("bytes");
        assert_eq!(type_url, "p.cloudstate.io/bytes");
    }
}
