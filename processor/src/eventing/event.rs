//! An event as a command (`docs/protocol.md`, "Eventing"): the method its type goes to, its
//! payload as it is (a method taking `google.protobuf.Any` gets the event's own type), the
//! CloudEvent metadata the reference proxy sends, and an idempotency key that is the same every
//! time the event is delivered — so the command's forwards and side effects (keys derived from
//! it) run once in effect at their targets however often the event comes.

use statehouse_core::ids::{entity_key, journal_key};
use statehouse_schemas::avro::EventRecord;
use statehouse_schemas::cloudstate as cs;

use crate::command::Command;
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
        hops: 0,
    })
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
