//! Plans of hand-made descriptor sets: an event-sourced entity and an action whose methods carry
//! `(cloudstate.eventing)` options.

use prost::Message;
use statehouse_schemas::cloudstate::{
    Entity, EventDestination, EventSource, Eventing, event_destination, event_source,
};
use statehouse_schemas::protocol;

use super::*;

// The parts of descriptor.proto the tests need, with the method options as raw extension
// bytes (prost_types drops unknown fields).
#[derive(Clone, PartialEq, prost::Message)]
struct Fds {
    #[prost(message, repeated, tag = "1")]
    file: Vec<File>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct File {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(string, tag = "2")]
    package: String,
    #[prost(string, repeated, tag = "3")]
    dependency: Vec<String>,
    #[prost(message, repeated, tag = "4")]
    message_type: Vec<Msg>,
    #[prost(message, repeated, tag = "6")]
    service: Vec<Service>,
    #[prost(string, tag = "12")]
    syntax: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Service {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(message, repeated, tag = "2")]
    method: Vec<Method>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Method {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(string, tag = "2")]
    input_type: String,
    #[prost(string, tag = "3")]
    output_type: String,
    #[prost(message, optional, tag = "4")]
    options: Option<Options>,
    #[prost(bool, tag = "5")]
    client_streaming: bool,
    #[prost(bool, tag = "6")]
    server_streaming: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Options {
    #[prost(bytes = "vec", tag = "1081")]
    eventing: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Msg {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(message, repeated, tag = "2")]
    field: Vec<Field>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Field {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(int32, tag = "3")]
    number: i32,
    #[prost(int32, tag = "4")]
    label: i32,
    #[prost(int32, tag = "5")]
    r#type: i32,
    #[prost(message, optional, tag = "8")]
    options: Option<FieldOptions>,
    #[prost(string, tag = "10")]
    json_name: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct FieldOptions {
    /// `(cloudstate.entity_key)`.
    #[prost(bool, tag = "1080")]
    entity_key: bool,
}

/// A message with one string field `id` (the entity key).
fn message(name: &str) -> Msg {
    Msg {
        name: name.into(),
        field: vec![Field {
            name: "id".into(),
            number: 1,
            label: prost_types::field_descriptor_proto::Label::Optional as i32,
            r#type: prost_types::field_descriptor_proto::Type::String as i32,
            options: Some(FieldOptions { entity_key: true }),
            json_name: "id".into(),
        }],
    }
}

fn log(id: &str, group: &str) -> Eventing {
    Eventing {
        r#in: Some(EventSource {
            consumer_group: group.into(),
            source: Some(event_source::Source::EventLog(id.into())),
        }),
        out: None,
    }
}

fn topic(input: Option<&str>, output: Option<&str>) -> Eventing {
    Eventing {
        r#in: input.map(|t| EventSource {
            consumer_group: String::new(),
            source: Some(event_source::Source::Topic(t.into())),
        }),
        out: output.map(|t| EventDestination {
            destination: Some(event_destination::Destination::Topic(t.into())),
        }),
    }
}

/// An index of `t.Events` (event-sourced, persistence id `things`) and the action `t.Sub`
/// with `methods`: (name, input type, eventing option); a name starting with `StreamedIn` /
/// `StreamedOut` streams from the client / to it.
fn index(methods: &[(&str, &str, Option<Eventing>)]) -> MethodIndex {
    let file = File {
        name: "t.proto".into(),
        package: "t".into(),
        dependency: vec!["google/protobuf/any.proto".into()],
        message_type: vec![message("A"), message("B"), message("R")],
        service: vec![
            Service {
                name: "Events".into(),
                method: vec![Method {
                    name: "Emit".into(),
                    input_type: ".t.A".into(),
                    output_type: ".t.R".into(),
                    options: None,
                    client_streaming: false,
                    server_streaming: false,
                }],
            },
            Service {
                name: "Sub".into(),
                method: methods
                    .iter()
                    .map(|(name, input, eventing)| Method {
                        name: (*name).into(),
                        input_type: (*input).into(),
                        output_type: ".t.R".into(),
                        options: eventing.as_ref().map(|e| Options {
                            eventing: e.encode_to_vec(),
                        }),
                        client_streaming: name.starts_with("StreamedIn"),
                        server_streaming: name.starts_with("StreamedOut"),
                    })
                    .collect(),
            },
        ],
        syntax: "proto3".into(),
    };
    let fds = Fds { file: vec![file] }.encode_to_vec();
    let entity = |service: &str, kind: &str, persistence_id: &str| Entity {
        entity_type: kind.into(),
        service_name: service.into(),
        persistence_id: persistence_id.into(),
        passivation_strategy: None,
    };
    MethodIndex::build(
        &fds,
        &[
            entity("t.Events", protocol::EVENT_SOURCED, "things"),
            entity("t.Sub", protocol::ACTION, ""),
        ],
        &[protocol::EVENT_SOURCED, protocol::ACTION],
    )
    .expect("the test descriptors index")
}

fn journals() -> BTreeSet<String> {
    BTreeSet::from(["things".to_string()])
}

#[test]
fn methods_of_one_source_share_a_consumer_and_events_go_by_type() {
    let both = index(&[
        ("OnA", ".t.A", Some(log("things", ""))),
        ("OnAny", ".google.protobuf.Any", Some(log("things", ""))),
        ("Elsewhere", ".t.A", Some(log("things", "audit"))),
        ("Plain", ".t.B", None),
    ]);
    let plan = plan(&both, &journals()).unwrap();
    assert_eq!(plan.subscriptions.len(), 2, "{plan:?}");
    let main = &plan.subscriptions[0];
    assert_eq!(
        (main.source.clone(), main.consumer_group.as_str()),
        (Source::EventLog("things".into()), "audit")
    );
    let main = &plan.subscriptions[1];
    assert_eq!(
        main.consumer_group, "t.Sub",
        "the default group is the service name"
    );
    assert_eq!(main.route("type.googleapis.com/t.A").unwrap().name, "OnA");
    assert_eq!(main.route("type.googleapis.com/t.B").unwrap().name, "OnAny");
    assert_eq!(main.route("json.cloudstate.io/t.A").unwrap().name, "OnAny");
    assert!(plan.outputs.is_empty());

    let only_a = index(&[("OnA", ".t.A", Some(log("things", "")))]);
    let plan = super::plan(&only_a, &journals()).unwrap();
    let only = &plan.subscriptions[0];
    assert!(only.route("type.googleapis.com/t.B").is_none());
    assert_eq!(
        only.unroutable("type.googleapis.com/t.B"),
        "No method can be found to handle protobuf type of [type.googleapis.com/t.B] on input EventLog(things). Either declare a method for this type, or declare a method that accepts google.protobuf.Any."
    );
}

#[test]
fn invalid_combinations_are_refused_with_the_reference_texts() {
    let err = |methods: &[(&str, &str, Option<Eventing>)]| {
        plan(&index(methods), &journals()).unwrap_err()
    };
    assert_eq!(
        err(&[
            ("One", ".t.A", Some(log("things", ""))),
            ("Two", ".t.A", Some(log("things", ""))),
        ]),
        "Endpoints [t.Sub.One] and [t.Sub.Two] both subscribe to the same event source with the same input type. If you wish to define two independent consumers of the same event source, use the consumer_group annotation on the source to identify them."
    );
    assert_eq!(
        err(&[("Echo", ".t.A", Some(topic(Some("x"), Some("x"))))]),
        "Endpoint [t.Sub.Echo] has the same input topic as output topic [x], this is not allowed."
    );
    assert_eq!(
        err(&[("Lost", ".t.A", Some(log("nobody", "")))]),
        "Eventing consumer [t.Sub.Lost] subscribes to the event log [nobody], but no event-sourced entity of this service has that persistence id."
    );
    let no_source = Eventing {
        r#in: Some(EventSource::default()),
        out: None,
    };
    assert_eq!(
        err(&[("Nothing", ".t.A", Some(no_source))]),
        "Eventing consumer [t.A] has declared an input with no source."
    );
    let no_topic = Eventing {
        r#in: None,
        out: Some(EventDestination::default()),
    };
    assert_eq!(
        err(&[("Out", ".t.A", Some(no_topic))]),
        "Service call [t.Sub.Out] has declared an event out with no topic."
    );
    let plan = plan(
        &index(&[("Pipe", ".t.A", Some(topic(Some("in"), Some("out"))))]),
        &journals(),
    )
    .unwrap();
    assert!(plan.outputs.contains("out"), "{plan:?}");
    assert_eq!(plan.topics(), ["in", "out"]);
    assert_eq!(plan.subscriptions[0].source, Source::Topic("in".into()));
    // An event is one message: a client-streaming subscriber is refused, a server-streaming
    // action is fine.
    assert_eq!(
        err(&[("StreamedInA", ".t.A", Some(log("things", "")))]),
        "Eventing consumer [t.Sub.StreamedInA] streams its input: a subscriber takes one event per call (a unary method, or a server-streaming action method)."
    );
    let streamed = super::plan(
        &index(&[("StreamedOutA", ".t.A", Some(log("things", "")))]),
        &journals(),
    )
    .unwrap();
    assert_eq!(streamed.subscriptions.len(), 1);
}
