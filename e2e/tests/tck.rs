//! The official Go SDK's TCK user function (go-support v0.3.0 `tck/cmd/tck_eventsourced`, the
//! Cloudstate TCK models of every entity kind) behind Statehouse — processor, gateway, real
//! Kafka and Cassandra — checked the way the Cloudstate TCK's proxy tests check a proxy:
//! value entities (`EntityTCK`), actions (`ActionTCK`), the event-sourced model over HTTP, and
//! discovery serving everything it registers. CRDTs: `crdt_tck.rs`; event-log subscriptions:
//! `eventing_tck.rs`.

use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use statehouse_core::Topics;
use statehouse_e2e::proto::tck::action::action_tck_model_client::ActionTckModelClient;
use statehouse_e2e::proto::tck::action::{self as action, ProcessGroup, ProcessStep, process_step};
use statehouse_e2e::proto::tck::valueentity::value_entity_configured_client::ValueEntityConfiguredClient;
use statehouse_e2e::proto::tck::valueentity::value_entity_tck_model_client::ValueEntityTckModelClient;
use statehouse_e2e::proto::tck::valueentity::{self as ve, RequestAction, request_action};
use statehouse_kafka::reader::{Isolation, read_to_end};
use statehouse_schemas::avro::{AvroRecord, ValueDeletion, ValueRecord};
use statehouse_test_support::http;
use statehouse_test_support::stack::{Options, Stack};
use statehouse_test_support::user_function::Kind;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

const SERVICE: &str = "tck";

fn ve_request(id: &str, actions: Vec<request_action::Action>) -> ve::Request {
    ve::Request {
        id: id.into(),
        actions: actions
            .into_iter()
            .map(|a| RequestAction { action: Some(a) })
            .collect(),
    }
}

fn update(value: &str) -> request_action::Action {
    request_action::Action::Update(ve::Update {
        value: value.into(),
    })
}

fn groups(groups: Vec<Vec<process_step::Step>>) -> action::Request {
    action::Request {
        groups: groups
            .into_iter()
            .map(|steps| ProcessGroup {
                steps: steps
                    .into_iter()
                    .map(|s| ProcessStep { step: Some(s) })
                    .collect(),
            })
            .collect(),
    }
}

fn reply(message: &str) -> process_step::Step {
    process_step::Step::Reply(action::Reply {
        message: message.into(),
    })
}

fn fail(message: &str) -> process_step::Step {
    process_step::Step::Fail(action::Fail {
        message: message.into(),
    })
}

async fn process(client: &mut ValueEntityTckModelClient<Channel>, request: ve::Request) -> String {
    let mut request = tonic::Request::new(request);
    request.set_timeout(Duration::from_secs(30));
    client.process(request).await.unwrap().into_inner().message
}

fn post(stack: &Stack, path: &str, body: &str) -> http::Response {
    http::request(
        &stack.gateway_addr,
        "POST",
        path,
        &[("Content-Type", "application/json")],
        Some(body),
    )
    .unwrap()
}

/// The value records of one entity in the values topic, as a read_committed consumer sees them:
/// `(seq, Some(value bytes))` for a state, `(seq, None)` for a delete.
async fn value_history(stack: &Stack, key: &str) -> Vec<(i64, Option<Bytes>)> {
    let topic = Topics::new(
        stack.prefix.clone(),
        statehouse_core::ServiceName::new(SERVICE).unwrap(),
    )
    .values();
    let options = statehouse_kafka::Options {
        bootstrap_servers: statehouse_test_support::kafka_bootstrap(),
        ..statehouse_kafka::Options::default()
    };
    let mut history = Vec::new();
    for partition in 0..stack.options.partitions {
        let messages = read_to_end(
            &options,
            &topic,
            partition,
            0,
            Isolation::ReadCommitted,
            Duration::from_secs(30),
        )
        .await
        .unwrap_or_else(|e| panic!("reading {topic}/{partition}: {e}"));
        for m in messages {
            if m.key.as_deref() != Some(key.as_bytes()) {
                continue;
            }
            match &m.value {
                Some(value) => {
                    let record = ValueRecord::decode(value).unwrap();
                    history.push((record.seq, Some(record.payload)));
                }
                None => {
                    let (_, deletion) = m
                        .headers
                        .iter()
                        .find(|(k, _)| k == "statehouse-deletion")
                        .expect("a delete's tombstone names its deletion");
                    history.push((ValueDeletion::decode(deletion).unwrap().seq, None));
                }
            }
        }
    }
    history
}

fn persisted(value: &str) -> Bytes {
    Bytes::from(
        ve::Persisted {
            value: value.into(),
        }
        .encode_to_vec(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_tck_value_entities_actions_and_discovery() {
    let mut options = Options::new(Kind::GoTck);
    options.service = SERVICE.into();
    let mut stack = Stack::start(options);
    stack.wait_ready(0, Duration::from_secs(120));
    let channel = Channel::from_shared(format!("http://{}", stack.gateway_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();

    // Discovery: everything the TCK user function registers is served (entities of every
    // kind, event-log subscriptions): nothing is reported as not served.
    let log = stack.pods[0].processor.log();
    let started = log
        .lines()
        .find(|l| l.contains("processor started"))
        .unwrap_or_else(|| panic!("no start line in the processor log: {log}"));
    // The log may be coloured: drop the escape sequences (ESC [ … m) first.
    let mut plain = String::new();
    let mut chars = started.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|&c| c == 'm');
        } else {
            plain.push(c);
        }
    }
    assert!(
        plain.contains("not_served=0"),
        "the processor reports something as not served: {plain}"
    );
    let uf_log = std::fs::read_to_string(stack.pods[0].user_function.log_path()).unwrap();
    assert!(
        !uf_log.contains("ReportError"),
        "the user function was told of an error at discovery: {uf_log}"
    );

    // Value entities: state changes (EntityTCK "verify state changes").
    let mut model = ValueEntityTckModelClient::new(channel.clone());
    let id = "ve-1";
    assert_eq!(process(&mut model, ve_request(id, vec![])).await, "");
    assert_eq!(
        process(&mut model, ve_request(id, vec![update("one")])).await,
        "one"
    );
    assert_eq!(
        process(&mut model, ve_request(id, vec![update("two")])).await,
        "two"
    );
    assert_eq!(process(&mut model, ve_request(id, vec![])).await, "two");
    let delete = request_action::Action::Delete(ve::Delete {});
    assert_eq!(
        process(&mut model, ve_request(id, vec![delete.clone()])).await,
        ""
    );
    assert_eq!(process(&mut model, ve_request(id, vec![])).await, "");
    assert_eq!(
        process(&mut model, ve_request(id, vec![update("foo")])).await,
        "foo"
    );
    assert_eq!(process(&mut model, ve_request(id, vec![delete])).await, "");
    // Each update and delete is a record of the values topic, keyed by persistence id and
    // entity id, in the partition's transactions; a delete is a tombstone.
    assert_eq!(
        value_history(&stack, "value-entity-tck-model|ve-1").await,
        vec![
            (1, Some(persisted("one"))),
            (2, Some(persisted("two"))),
            (3, None),
            (4, Some(persisted("foo"))),
            (5, None),
        ]
    );

    // Forwards and side effects ("verify forwards and side effects").
    let id = "ve-2";
    assert_eq!(
        process(&mut model, ve_request(id, vec![update("one")])).await,
        "one"
    );
    let forward = request_action::Action::Forward(ve::Forward { id: id.into() });
    assert_eq!(
        process(&mut model, ve_request(id, vec![forward])).await,
        "",
        "the forward's target (ValueEntityTwo) replies"
    );
    let effect = request_action::Action::Effect(ve::Effect {
        id: id.into(),
        synchronous: true,
    });
    assert_eq!(
        process(&mut model, ve_request(id, vec![effect])).await,
        "one"
    );

    // Failures ("verify failures"): UNKNOWN with the description, state unchanged, the entity
    // goes on.
    let failure = request_action::Action::Fail(ve::Fail {
        message: "expected failure".into(),
    });
    let status = model
        .process(ve_request(id, vec![failure]))
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (tonic::Code::Unknown, "expected failure")
    );
    assert_eq!(process(&mut model, ve_request(id, vec![])).await, "one");

    // The HTTP API ("verify HTTP API").
    let path = "/tck/model/entity/ve-3";
    let answer = post(&stack, path, "{}");
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (200, r#"{"message":""}"#)
    );
    assert_eq!(answer.header("content-type"), Some("application/json"));
    let answer = post(
        &stack,
        "/cloudstate.tck.model.valueentity.ValueEntityTwo/Call",
        r#"{"id": "ve-3"}"#,
    );
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (200, r#"{"message":""}"#)
    );
    let answer = post(
        &stack,
        path,
        r#"{"actions": [{"update": {"value": "one"}}]}"#,
    );
    assert_eq!(answer.body, r#"{"message":"one"}"#);
    let answer = post(
        &stack,
        path,
        r#"{"actions": [{"fail": {"message": "expected failure"}}]}"#,
    );
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (500, "expected failure")
    );
    let answer = post(
        &stack,
        path,
        r#"{"actions": [{"update": {"value": "two"}}]}"#,
    );
    assert_eq!(answer.body, r#"{"message":"two"}"#);
    assert_eq!(post(&stack, path, "{}").body, r#"{"message":"two"}"#);

    // Passivation ("verify passivation timeout", 100 ms for ValueEntityConfigured): the entity
    // leaves memory when idle and comes back (a new stream, a new activation).
    let mut configured = ValueEntityConfiguredClient::new(channel.clone());
    let activations = |stack: &Stack| -> f64 {
        stack
            .metrics(0, "statehouse_entity_activations_total")
            .iter()
            .map(|(_, v)| v)
            .sum()
    };
    configured.call(ve_request("conf-1", vec![])).await.unwrap();
    let before = activations(&stack);
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    configured.call(ve_request("conf-1", vec![])).await.unwrap();
    assert_eq!(
        activations(&stack),
        before + 1.0,
        "passivated, then activated again"
    );

    actions(&stack, channel.clone()).await;

    // The event-sourced model over HTTP.
    let answer = post(
        &stack,
        "/tck/model/eventsourced/es-1",
        r#"{"actions": [{"emit": {"value": "x"}}, {"emit": {"value": "y"}}]}"#,
    );
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (200, r#"{"message":"xy"}"#)
    );

    // A value survives `kill -9` of its owner.
    assert_eq!(
        process(&mut model, ve_request("durable", vec![update("kept")])).await,
        "kept"
    );
    stack.pods[0].processor.kill9();
    stack.pods[0].processor.restart();
    stack.wait_ready(0, Duration::from_secs(120));
    assert_eq!(
        process(&mut model, ve_request("durable", vec![])).await,
        "kept"
    );
}

/// ActionTCK's proxy tests.
async fn actions(stack: &Stack, channel: Channel) {
    let mut client = ActionTckModelClient::new(channel);
    // Unary: reply, forward (ActionTwo answers), a side effect, a failure.
    let answer = client
        .process_unary(groups(vec![vec![reply("one")]]))
        .await
        .unwrap();
    assert_eq!(answer.into_inner().message, "one");
    let forward = process_step::Step::Forward(action::Forward { id: "other".into() });
    let answer = client
        .process_unary(groups(vec![vec![forward]]))
        .await
        .unwrap();
    assert_eq!(answer.into_inner().message, "", "ActionTwo's reply");
    let effect = process_step::Step::Effect(action::SideEffect {
        id: "another".into(),
        synchronous: true,
    });
    let answer = client
        .process_unary(groups(vec![vec![reply(""), effect]]))
        .await
        .unwrap();
    assert_eq!(answer.into_inner().message, "");
    let status = client
        .process_unary(groups(vec![vec![fail("expected failure")]]))
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (tonic::Code::Unknown, "expected failure")
    );

    // Streamed-in: one answer for the whole stream.
    let answer = client
        .process_streamed_in(tokio_stream::iter(vec![groups(vec![vec![reply("two")]])]))
        .await
        .unwrap();
    assert_eq!(answer.into_inner().message, "two");

    // Streamed-out: every element, in order, then the end.
    let mut stream = client
        .process_streamed_out(groups(vec![
            vec![reply("A")],
            vec![reply("B")],
            vec![reply("C")],
        ]))
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    while let Some(response) = stream.message().await.unwrap() {
        got.push(response.message);
    }
    assert_eq!(got, ["A", "B", "C"]);

    // Duplex: each message answered as it goes, a forward's reply in its place, nothing for a
    // response without a reply; the client's half-close ends the call.
    let (tx, rx) = mpsc::channel(4);
    let mut stream = client
        .process_streamed(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    for (request, expected) in [
        (groups(vec![vec![reply("X")]]), "X"),
        (groups(vec![vec![reply("Y")]]), "Y"),
        (
            groups(vec![vec![process_step::Step::Forward(action::Forward {
                id: "one".into(),
            })]]),
            "",
        ),
    ] {
        tx.send(request).await.unwrap();
        assert_eq!(stream.message().await.unwrap().unwrap().message, expected);
    }
    tx.send(groups(vec![vec![process_step::Step::Effect(
        action::SideEffect {
            id: "two".into(),
            synchronous: false,
        },
    )]]))
    .await
    .unwrap();
    tx.send(groups(vec![vec![reply("Z")]])).await.unwrap();
    assert_eq!(
        stream.message().await.unwrap().unwrap().message,
        "Z",
        "no element for a response without a reply"
    );
    drop(tx);
    assert!(stream.message().await.unwrap().is_none(), "the call ends");

    // A failure in a stream ends it with UNKNOWN and its description.
    let (tx, rx) = mpsc::channel(4);
    let mut stream = client
        .process_streamed(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    tx.send(groups(vec![vec![fail("expected failure")]]))
        .await
        .unwrap();
    let status = stream.message().await.unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (tonic::Code::Unknown, "expected failure")
    );

    // The HTTP API: unary, and a server stream as newline-delimited JSON or server-sent events.
    let answer = post(
        stack,
        "/tck/model/action/unary",
        r#"{"groups": [{"steps": [{"reply": {"message": "foo"}}]}]}"#,
    );
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (200, r#"{"message":"foo"}"#)
    );
    let answer = post(
        stack,
        "/tck/model/action/unary",
        r#"{"groups": [{"steps": [{"fail": {"message": "boom"}}]}]}"#,
    );
    assert_eq!((answer.status, answer.body.as_str()), (500, "boom"));
    let body = r#"{"groups": [{"steps": [{"reply": {"message": "a"}}]}, {"steps": [{"reply": {"message": "b"}}]}, {"steps": [{"fail": {"message": "late"}}]}]}"#;
    let answer = post(
        stack,
        "/cloudstate.tck.model.action.ActionTckModel/ProcessStreamedOut",
        body,
    );
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("content-type"), Some("application/x-ndjson"));
    assert_eq!(
        answer.body,
        "{\"message\":\"a\"}\n{\"message\":\"b\"}\n{\"error\":{\"code\":2,\"message\":\"late\"}}\n"
    );
    let answer = http::request(
        &stack.gateway_addr,
        "POST",
        "/cloudstate.tck.model.action.ActionTckModel/ProcessStreamedOut",
        &[
            ("Content-Type", "application/json"),
            ("Accept", "text/event-stream"),
        ],
        Some(r#"{"groups": [{"steps": [{"reply": {"message": "a"}}]}]}"#),
    )
    .unwrap();
    assert_eq!(answer.header("content-type"), Some("text/event-stream"));
    assert_eq!(answer.body, "data: {\"message\":\"a\"}\n\n");

    // gRPC-Web (HTTP/1.1): a server stream, its elements then the trailers in the body.
    let request = groups(vec![vec![reply("w1")], vec![reply("w2")]]).encode_to_vec();
    let answer = grpc_web(
        stack,
        "/cloudstate.tck.model.action.ActionTckModel/ProcessStreamedOut",
        &request,
    );
    let messages: Vec<String> = answer
        .0
        .iter()
        .map(|m| action::Response::decode(&m[..]).unwrap().message)
        .collect();
    assert_eq!(messages, ["w1", "w2"]);
    assert!(answer.1.contains("grpc-status:0"), "{:?}", answer.1);
}

/// One gRPC-Web call over HTTP/1.1: the messages and the trailer block of the answer.
fn grpc_web(stack: &Stack, path: &str, message: &[u8]) -> (Vec<Vec<u8>>, String) {
    use std::io::{Read, Write};
    let mut body = vec![0u8];
    body.extend_from_slice(&(message.len() as u32).to_be_bytes());
    body.extend_from_slice(message);
    let mut stream = std::net::TcpStream::connect(&stack.gateway_addr).unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/grpc-web+proto\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(&body).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    let mut payload = raw[split + 4..].to_vec();
    if head.contains("transfer-encoding: chunked") {
        payload = dechunk(&payload);
    }
    let (mut messages, mut trailers) = (Vec::new(), String::new());
    let mut rest = &payload[..];
    while rest.len() >= 5 {
        let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        let frame = &rest[5..5 + len];
        if rest[0] & 0x80 != 0 {
            trailers = String::from_utf8_lossy(frame).into_owned();
        } else {
            messages.push(frame.to_vec());
        }
        rest = &rest[5 + len..];
    }
    (messages, trailers)
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line = raw.windows(2).position(|w| w == b"\r\n").unwrap();
        let size =
            usize::from_str_radix(std::str::from_utf8(&raw[..line]).unwrap().trim(), 16).unwrap();
        raw = &raw[line + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&raw[..size]);
        raw = &raw[size + 2..];
    }
}
