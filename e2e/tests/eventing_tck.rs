//! Event-log subscriptions with the official Go SDK's TCK user function (go-support v0.3.0
//! `tck/cmd/tck_eventsourced`, model `tck/eventlogeventing`), checked the way the Cloudstate
//! TCK's eventing tests check a proxy: through an interceptor between the processor and the
//! user function that sees every call and message.
//!
//! * "consume an event": an event emitted by `EventSourcedEntityOne` reaches
//!   `ProcessEventOne` (by its type) with the CloudEvent metadata — `ce-subject` the entity id —
//!   and the subscriber answers with the entity id and the event's message;
//! * "forward a consumed event": the subscriber's forward is followed (`Effect` is called);
//! * "process json events": a JSON event of `EventSourcedEntityTwo` goes to the method taking
//!   `google.protobuf.Any`;
//! * each event is delivered once, and not again after a graceful restart of the processor.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use prost::Message;
use statehouse_e2e::intercept::{Call, Interceptor};
use statehouse_e2e::proto::tck::eventlogeventing::event_sourced_entity_one_client::EventSourcedEntityOneClient;
use statehouse_e2e::proto::tck::eventlogeventing::event_sourced_entity_two_client::EventSourcedEntityTwoClient;
use statehouse_e2e::proto::tck::eventlogeventing::{
    EffectRequest, EmitEventRequest, EventOne, Forward, JsonEvent, ProcessStep, Reply, Response,
    emit_event_request, process_step,
};
use statehouse_schemas::cloudstate::action::{ActionCommand, ActionResponse, action_response};
use statehouse_schemas::cloudstate::metadata_entry;
use statehouse_test_support::stack::{Options, PortMap, Stack};
use statehouse_test_support::user_function::Kind;
use tonic::transport::Channel;

const UNARY: &str = "/cloudstate.action.ActionProtocol/handleUnary";
const SUBSCRIBER: &str = "cloudstate.tck.model.eventlogeventing.EventLogSubscriberModel";

/// The unary action calls of `name`, with their command and response.
fn unary(calls: &[Call], name: &str) -> Vec<(ActionCommand, ActionResponse)> {
    calls
        .iter()
        .filter(|c| c.path == UNARY)
        .filter_map(|c| {
            let command = ActionCommand::decode(c.requests.first()?.clone()).ok()?;
            let response = ActionResponse::decode(c.responses.first()?.clone()).ok()?;
            (command.name == name).then_some((command, response))
        })
        .collect()
}

/// Every unary action command of `name` sent to the user function, answered or not.
fn commands(calls: &[Call], name: &str) -> Vec<ActionCommand> {
    calls
        .iter()
        .filter(|c| c.path == UNARY)
        .filter_map(|c| ActionCommand::decode(c.requests.first()?.clone()).ok())
        .filter(|command| command.name == name)
        .collect()
}

/// The value of metadata entry `key` of `command`.
fn entry(command: &ActionCommand, key: &str) -> Option<String> {
    metadata(command)
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
}

fn metadata(command: &ActionCommand) -> Vec<(String, String)> {
    command
        .metadata
        .iter()
        .flat_map(|m| &m.entries)
        .filter_map(|e| match &e.value {
            Some(metadata_entry::Value::StringValue(v)) => Some((e.key.clone(), v.clone())),
            _ => None,
        })
        .collect()
}

fn emit(id: &str, step: process_step::Step) -> EmitEventRequest {
    EmitEventRequest {
        id: id.into(),
        event: Some(emit_event_request::Event::EventOne(EventOne {
            step: Some(ProcessStep { step: Some(step) }),
        })),
    }
}

/// Wait until `count` calls of `name` were answered.
async fn answered(
    interceptor: &Interceptor,
    name: &str,
    count: usize,
) -> Vec<(ActionCommand, ActionResponse)> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let calls = unary(&interceptor.calls(), name);
        if calls.len() >= count {
            return calls;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{count} answered calls of {name} expected, got {}: {:?}",
            calls.len(),
            interceptor
                .calls()
                .iter()
                .map(|c| &c.path)
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_tck_event_log_subscriptions() {
    let interceptor: Arc<Mutex<Option<Arc<Interceptor>>>> = Arc::default();
    let mut options = Options::new(Kind::GoTck);
    options.service = "tck".into();
    let slot = Arc::clone(&interceptor);
    options.user_function_port = Some(PortMap(Arc::new(move |port| {
        let started = Arc::new(Interceptor::start(([127, 0, 0, 1], port).into()));
        let port = started.port();
        *slot.lock().unwrap() = Some(started);
        port
    })));
    let mut stack = Stack::start(options);
    stack.wait_ready(0, Duration::from_secs(120));
    let interceptor = interceptor
        .lock()
        .unwrap()
        .clone()
        .expect("the interceptor");
    let channel = Channel::from_shared(format!("http://{}", stack.gateway_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut one = EventSourcedEntityOneClient::new(channel.clone());
    let mut two = EventSourcedEntityTwoClient::new(channel.clone());

    // "consume an event".
    let id = "eventlogeventing:1";
    one.emit_event(emit(
        id,
        process_step::Step::Reply(Reply {
            message: "some message".into(),
        }),
    ))
    .await
    .unwrap();
    let calls = answered(&interceptor, "ProcessEventOne", 1).await;
    let (command, response) = &calls[0];
    assert_eq!(command.service_name, SUBSCRIBER);
    let payload = command.payload.as_ref().unwrap();
    assert_eq!(
        payload.type_url,
        "type.googleapis.com/cloudstate.tck.model.eventlogeventing.EventOne"
    );
    assert_eq!(
        EventOne::decode(payload.value.as_slice()).unwrap().step,
        Some(ProcessStep {
            step: Some(process_step::Step::Reply(Reply {
                message: "some message".into()
            }))
        })
    );
    let journal_key = "eventlogeventing-one|eventlogeventing:1#1";
    assert_eq!(
        metadata(command),
        [
            ("ce-id", journal_key),
            ("ce-source", "eventlogeventing-one"),
            ("ce-specversion", "1.0"),
            (
                "ce-type",
                "type.googleapis.com/cloudstate.tck.model.eventlogeventing.EventOne"
            ),
            ("Content-Type", "application/vnd.cloudstate.protobuf.any"),
            ("ce-subject", id),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
    );
    let Some(action_response::Response::Reply(reply)) = &response.response else {
        panic!("not a reply: {response:?}");
    };
    assert_eq!(
        Response::decode(reply.payload.as_ref().unwrap().value.as_slice()).unwrap(),
        Response {
            id: id.into(),
            message: "some message".into()
        }
    );

    // "forward a consumed event": the subscriber forwards to Effect, which is called.
    let id = "eventlogeventing:2";
    one.emit_event(emit(
        id,
        process_step::Step::Forward(Forward {
            message: "some message".into(),
        }),
    ))
    .await
    .unwrap();
    let calls = answered(&interceptor, "ProcessEventOne", 2).await;
    let (_, response) = &calls[1];
    let Some(action_response::Response::Forward(forward)) = &response.response else {
        panic!("not a forward: {response:?}");
    };
    assert_eq!(forward.command_name, "Effect");
    let effects = answered(&interceptor, "Effect", 1).await;
    assert_eq!(
        EffectRequest::decode(effects[0].0.payload.as_ref().unwrap().value.as_slice()).unwrap(),
        EffectRequest {
            id: id.into(),
            message: "some message".into()
        }
    );

    // "process json events": to the method taking google.protobuf.Any.
    let id = "eventlogeventing:3";
    two.emit_json_event(JsonEvent {
        id: id.into(),
        message: "some json message".into(),
    })
    .await
    .unwrap();
    let calls = answered(&interceptor, "ProcessAnyEvent", 1).await;
    let (command, response) = &calls[0];
    assert!(
        command
            .payload
            .as_ref()
            .unwrap()
            .type_url
            .starts_with("json.cloudstate.io/"),
        "{command:?}"
    );
    let Some(action_response::Response::Reply(reply)) = &response.response else {
        panic!("not a reply: {response:?}");
    };
    assert_eq!(
        Response::decode(reply.payload.as_ref().unwrap().value.as_slice()).unwrap(),
        Response {
            id: id.into(),
            message: "some json message".into()
        }
    );

    // Each event once — counting every command sent, answered or not; a graceful restart
    // resumes after the events done (no redelivery).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let calls = interceptor.calls();
    assert_eq!(commands(&calls, "ProcessEventOne").len(), 2);
    assert_eq!(commands(&calls, "ProcessAnyEvent").len(), 1);
    assert_eq!(commands(&calls, "Effect").len(), 1);
    assert!(stack.pods[0].processor.terminate(Duration::from_secs(30)));
    stack.pods[0].processor.restart();
    stack.wait_ready(0, Duration::from_secs(120));
    one.emit_event(emit(
        "eventlogeventing:4",
        process_step::Step::Reply(Reply {
            message: "after the restart".into(),
        }),
    ))
    .await
    .unwrap();
    // The event after the restart arrives and is answered ...
    let after = interceptor
        .wait_for(Duration::from_secs(30), |c| {
            c.path == UNARY
                && !c.responses.is_empty()
                && c.requests
                    .first()
                    .and_then(|r| ActionCommand::decode(r.clone()).ok())
                    .is_some_and(|command| {
                        command.name == "ProcessEventOne"
                            && entry(&command, "ce-subject").as_deref()
                                == Some("eventlogeventing:4")
                    })
        })
        .await;
    assert!(
        after.is_some(),
        "the event emitted after the restart was not delivered"
    );
    // ... and none of the earlier ones came again.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let calls = interceptor.calls();
    let delivered = commands(&calls, "ProcessEventOne");
    let ids: std::collections::BTreeSet<Option<String>> =
        delivered.iter().map(|c| entry(c, "ce-id")).collect();
    assert_eq!(
        (delivered.len(), ids.len()),
        (3, 3),
        "each event delivered once: {:?}",
        delivered
            .iter()
            .map(|c| entry(c, "ce-id"))
            .collect::<Vec<_>>()
    );
    assert_eq!(commands(&calls, "ProcessAnyEvent").len(), 1);
}
