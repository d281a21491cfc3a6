//! The processor's spans past the internal API's (`server.rs`): the user-function call and the
//! commit. Names and attributes from `statehouse_core::semconv`; context handed on as W3C
//! strings (`statehouse_runtime::trace`), so nothing here costs anything while traces are off.

use statehouse_core::semconv;
use statehouse_runtime::trace;
use statehouse_schemas::cloudstate as cs;
use tracing::Span;

use crate::command::Command;

/// The span of `command` at the user function (`statehouse.user_function.call`), a child of
/// the command's span; its context goes to the user function as `traceparent` metadata
/// ([`Command::call_traceparent`]).
pub(crate) fn user_function_call(command: &Command) -> Span {
    if !trace::enabled() {
        return Span::none();
    }
    let span = tracing::info_span!(
        semconv::SPAN_USER_FUNCTION_CALL,
        { semconv::OTEL_KIND } = "client",
        { semconv::RPC_SYSTEM } = "grpc",
        { semconv::RPC_SERVICE } = %command.method.service,
        { semconv::RPC_METHOD } = %command.method.name,
        { semconv::ENTITY_ID } = %command.entity_id,
    );
    trace::continue_trace(&span, command.traceparent.as_deref(), None);
    span
}

/// The span of one append (`statehouse.journal.commit`): a child of the first record's
/// command, linked to the other commands of the group.
pub(crate) fn commit<'a>(records: usize, mut traceparents: impl Iterator<Item = &'a str>) -> Span {
    if !trace::enabled() {
        return Span::none();
    }
    let span = tracing::info_span!(
        semconv::SPAN_COMMIT,
        { semconv::OTEL_KIND } = "producer",
        { semconv::RECORDS } = records,
    );
    let first = traceparents.next();
    trace::continue_trace(&span, first, None);
    let mut linked = 0;
    for other in traceparents {
        if Some(other) != first && linked < semconv::MAX_LINKS {
            trace::link(&span, other);
            linked += 1;
        }
    }
    span
}

/// The span of one eventing event turned into a command (`statehouse.eventing.event`): a new
/// trace, linked to the span that wrote the event (its `traceparent`).
pub(crate) fn eventing_event(command: &Command, partition: i32) -> Span {
    if !trace::enabled() {
        return Span::none();
    }
    let span = tracing::info_span!(
        parent: None,
        semconv::SPAN_EVENTING_EVENT,
        { semconv::OTEL_KIND } = "consumer",
        { semconv::RPC_METHOD } = %command.method.path,
        { semconv::KAFKA_PARTITION } = partition,
        { semconv::TRACE_ID } = tracing::field::Empty,
    );
    trace::continue_trace(&span, None, None);
    if let Some(traceparent) = &command.traceparent {
        trace::link(&span, traceparent);
    }
    span
}

/// The span of a partition's recovery at takeover (`statehouse.partition.recover`): a new
/// trace; the caller links it to the records it reads back (at most [`semconv::MAX_LINKS`]).
pub(crate) fn recover(partition: u32) -> Span {
    if !trace::enabled() {
        return Span::none();
    }
    let span = tracing::info_span!(
        parent: None,
        semconv::SPAN_RECOVER,
        { semconv::OTEL_KIND } = "consumer",
        { semconv::KAFKA_PARTITION } = partition,
        { semconv::RECORDS } = tracing::field::Empty,
        { semconv::TRACE_ID } = tracing::field::Empty,
    );
    trace::continue_trace(&span, None, None);
    span
}

/// The metadata an entity command carries to the user function: the caller's verified claims
/// (`statehouse-jwt-*`, set by the gateway with `[gateway.auth]` on; `docs/security.md`) and
/// its call's `traceparent` when traces are on, otherwise none (entities get no request
/// metadata: the reference proxy sends none and the TCK compares the messages exactly).
pub(crate) fn entity_metadata(command: &Command) -> Option<cs::Metadata> {
    let mut entries: Vec<cs::MetadataEntry> = command
        .metadata
        .iter()
        .flat_map(|m| &m.entries)
        .filter(|e| statehouse_core::metadata::is_jwt_entry(&e.key))
        .cloned()
        .collect();
    if let Some(traceparent) = &command.call_traceparent {
        entries.push(entry(traceparent));
    }
    (!entries.is_empty()).then_some(cs::Metadata { entries })
}

/// An action's metadata: the request's, with `traceparent` replaced by its call's when traces
/// are on.
pub(crate) fn action_metadata(command: &Command) -> cs::Metadata {
    let mut metadata = command.metadata.clone().unwrap_or_default();
    if let Some(traceparent) = &command.call_traceparent {
        metadata
            .entries
            .retain(|e| !e.key.eq_ignore_ascii_case(trace::TRACEPARENT));
        metadata.entries.push(entry(traceparent));
    }
    metadata
}

fn entry(traceparent: &str) -> cs::MetadataEntry {
    cs::MetadataEntry {
        key: trace::TRACEPARENT.into(),
        value: Some(cs::metadata_entry::Value::StringValue(traceparent.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_carries_the_call_traceparent_only_when_there_is_one() {
        use crate::kinds::testing;
        let method = testing::method("AddItem", "cloudstate.eventsourced.EventSourced", "cart");
        let mut command = testing::command(&method, "c1", None);
        assert_eq!(entity_metadata(&command), None, "entities get no metadata");
        command.metadata = Some(cs::Metadata {
            entries: vec![
                cs::MetadataEntry {
                    key: "traceparent".into(),
                    value: Some(cs::metadata_entry::Value::StringValue("client".into())),
                },
                cs::MetadataEntry {
                    key: "x-user".into(),
                    value: Some(cs::metadata_entry::Value::StringValue("ada".into())),
                },
            ],
        });
        assert_eq!(
            entity_metadata(&command),
            None,
            "entities get no request metadata"
        );
        let claim = cs::MetadataEntry {
            key: "statehouse-jwt-subject".into(),
            value: Some(cs::metadata_entry::Value::StringValue("ada".into())),
        };
        let mut with_claim = command.clone();
        with_claim
            .metadata
            .as_mut()
            .unwrap()
            .entries
            .push(claim.clone());
        assert_eq!(
            entity_metadata(&with_claim).unwrap().entries,
            [claim],
            "but the gateway's verified claims"
        );
        assert_eq!(
            action_metadata(&command),
            command.metadata.clone().unwrap(),
            "traces off: the request's metadata as it came"
        );
        command.call_traceparent =
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into());
        let entity = entity_metadata(&command).unwrap();
        assert_eq!(entity.entries.len(), 1);
        assert_eq!(entity.entries[0].key, "traceparent");
        let action = action_metadata(&command);
        let keys: Vec<_> = action.entries.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["x-user", "traceparent"]);
        assert_eq!(
            action.entries[1].value,
            Some(cs::metadata_entry::Value::StringValue(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()
            ))
        );
    }
}
