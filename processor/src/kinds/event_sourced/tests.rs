//! The event-sourced state machine, without Kafka, Cassandra or a user function.

use bytes::Bytes;
use statehouse_schemas::avro::{self, EventRecord};
use statehouse_schemas::cloudstate::eventsourced::{
    EventSourcedReply, EventSourcedStreamOut, event_sourced_stream_in, event_sourced_stream_out,
};
use statehouse_schemas::cloudstate::{self as cs, ClientAction, client_action};
use statehouse_schemas::protocol;
use statehouse_store::{JournalRow, SnapshotRow};

use super::*;
use crate::kinds::testing::{self, command, entity, method, stamp, writer};

fn any(type_url: &str, value: &[u8]) -> prost_types::Any {
    prost_types::Any {
        type_url: type_url.into(),
        value: value.to_vec(),
    }
}

fn reply(id: i64, action: Option<client_action::Action>, events: usize) -> EventSourcedStreamOut {
    EventSourcedStreamOut {
        message: Some(event_sourced_stream_out::Message::Reply(
            EventSourcedReply {
                command_id: id,
                client_action: action.map(|action| ClientAction {
                    action: Some(action),
                }),
                side_effects: Vec::new(),
                events: (0..events)
                    .map(|i| any("type.googleapis.com/e.Added", &[i as u8]))
                    .collect(),
                snapshot: (events > 0).then(|| any("type.googleapis.com/e.Cart", b"snap")),
            },
        )),
    }
}

fn message_reply(payload: &[u8]) -> client_action::Action {
    client_action::Action::Reply(cs::Reply {
        payload: Some(any("type.googleapis.com/google.protobuf.Empty", payload)),
        metadata: None,
    })
}

fn event(seq: i64, key: Option<&str>, reply: Option<&str>) -> EventRecord {
    EventRecord {
        service: "svc".into(),
        persistence_id: "cart".into(),
        entity_id: "u1".into(),
        seq,
        type_url: "type.googleapis.com/e.Added".into(),
        payload: Bytes::from(vec![seq as u8]),
        command_id: None,
        idempotency_key: key.map(str::to_string),
        timestamp_ms: 0,
        writer: writer(),
        snapshot: None,
        traceparent: None,
        reply: reply.map(|r| avro::Reply {
            type_url: r.into(),
            payload: Bytes::from_static(b"r"),
        }),
    }
}

fn row(seq: i64) -> JournalRow {
    JournalRow {
        service: "svc".into(),
        entity_id: "cart|u1".into(),
        seq,
        type_url: "type.googleapis.com/e.Added".into(),
        payload: Bytes::from(vec![seq as u8]),
        command_id: None,
        idempotency_key: (seq == 2).then(|| "k2".into()),
        timestamp_ms: 0,
        writer_id: "p".into(),
        writer_epoch: 1,
        reply: (seq == 2).then(|| ("type.googleapis.com/x.R".into(), Bytes::from_static(b"two"))),
        partition: 0,
        offset: seq,
    }
}

#[test]
fn start_sends_init_with_the_snapshot_then_the_events_after_it() {
    let m = method("AddItem", protocol::EVENT_SOURCED, "cart");
    let e = entity(&m, "u1");
    let snapshot = SnapshotRow {
        service: "svc".into(),
        entity_id: "cart|u1".into(),
        seq: 2,
        type_url: "type.googleapis.com/e.Cart".into(),
        snapshot: Bytes::from_static(b"s2"),
        timestamp_ms: 0,
    };
    // Cassandra has 1..=3 and a snapshot at 2; the tail has 3 (again) and 4.
    let loaded = fold(
        &e.key,
        Some(snapshot),
        vec![row(1), row(2), row(3)],
        &[event(3, None, None), event(4, Some("k4"), Some(""))],
    )
    .unwrap();
    assert_eq!(loaded.last_seq, 4);
    assert_eq!(
        loaded.remembered,
        vec![
            (
                "k2".to_string(),
                Reply::Message {
                    payload: Bytes::from_static(b"two"),
                    type_url: "type.googleapis.com/x.R".into(),
                    metadata: None
                }
            ),
            // An empty type URL is a reply without a message.
            ("k4".to_string(), Reply::Empty),
        ]
    );
    let (machine, start) = EventSourced::start(&e, loaded);
    assert_eq!(machine.last_seq, 4);
    let kinds: Vec<String> = start
        .messages
        .iter()
        .map(|m| match m.message.as_ref().unwrap() {
            event_sourced_stream_in::Message::Init(init) => format!(
                "init {} {} snapshot@{}",
                init.service_name,
                init.entity_id,
                init.snapshot.as_ref().map_or(0, |s| s.snapshot_sequence)
            ),
            event_sourced_stream_in::Message::Event(e) => format!("event {}", e.sequence),
            event_sourced_stream_in::Message::Command(_) => "command".into(),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            format!("init {} u1 snapshot@2", testing::CART),
            "event 3".into(),
            "event 4".into()
        ]
    );
}

#[test]
fn a_gap_after_the_snapshot_is_refused() {
    let m = method("AddItem", protocol::EVENT_SOURCED, "cart");
    let e = entity(&m, "u1");
    let err = fold(&e.key, None, vec![row(1), row(3)], &[]).unwrap_err();
    assert!(err.to_string().contains("event 2 is missing"), "{err}");
    // A new entity starts at 0 with a bare init.
    let loaded = fold(&e.key, None, Vec::new(), &[]).unwrap();
    let (_, start) = EventSourced::start(&e, loaded);
    assert_eq!(start.messages.len(), 1);
}

#[test]
fn events_are_persisted_with_the_next_sequence_numbers_then_committed() {
    let m = method("AddItem", protocol::EVENT_SOURCED, "cart");
    let e = entity(&m, "u1");
    let (mut machine, _) = EventSourced::start(
        &e,
        Loaded {
            last_seq: 5,
            ..Loaded::default()
        },
    );
    let cmd = command(&m, "u1", Some("idem"));
    let message = machine.command(&e, 1, &cmd, false);
    let Some(event_sourced_stream_in::Message::Command(c)) = message.message else {
        panic!("not a command");
    };
    assert_eq!(
        (c.id, c.name.as_str(), c.entity_id.as_str()),
        (1, "AddItem", "u1")
    );
    assert_eq!(c.metadata, None, "entities get no metadata");
    assert_eq!(
        c.payload.unwrap().type_url,
        "type.googleapis.com/com.example.shoppingcart.AddLineItem"
    );

    let w = writer();
    let step = machine.answer(
        &e,
        &InFlight::of(1, &cmd),
        reply(1, Some(message_reply(b"ok")), 2),
        &Window::default(),
        &stamp(&w),
    );
    let Step::Done { writes, then, .. } = step else {
        panic!("not done: {step:?}");
    };
    assert_eq!(
        then,
        Then::Reply(Reply::Message {
            payload: Bytes::from_static(b"ok"),
            type_url: "type.googleapis.com/google.protobuf.Empty".into(),
            metadata: None
        })
    );
    let events: Vec<&EventRecord> = writes
        .iter()
        .map(|w| match w {
            Written::Event(e) => e,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), [6, 7]);
    assert!(events[0].snapshot.is_none() && events[0].reply.is_none());
    assert_eq!(
        events[1].snapshot.as_ref().unwrap().payload,
        Bytes::from_static(b"snap")
    );
    assert_eq!(
        events[1].reply.as_ref().unwrap().payload,
        Bytes::from_static(b"ok")
    );
    assert_eq!(events[1].idempotency_key.as_deref(), Some("idem"));
    assert_eq!(events[1].command_id.as_deref(), Some("cmd-1"));
    assert_eq!(events[1].writer, w);
    assert_eq!(events[1].traceparent.as_deref(), Some("00-trace-span-01"));
    // The next answer continues after them even before they committed (a failed write drops
    // the stream, and with it this machine).
    assert_eq!(machine.last_seq, 7);

    // A reply without events writes nothing, and committing it changes nothing.
    let step = machine.answer(
        &e,
        &InFlight::of(2, &cmd),
        reply(2, None, 0),
        &Window::default(),
        &stamp(&w),
    );
    assert_eq!(
        step,
        Step::Done {
            writes: Vec::new(),
            then: Then::Reply(Reply::Empty),
            side_effects: Vec::new()
        }
    );
    assert_eq!(machine.last_seq, 7);
}

#[test]
fn failures_restarts_and_protocol_violations() {
    let m = method("AddItem", protocol::EVENT_SOURCED, "cart");
    let e = entity(&m, "u1");
    let (mut machine, _) = EventSourced::start(&e, Loaded::default());
    let cmd = command(&m, "u1", None);
    let w = writer();
    let window = Window::default();
    let failure = |restart| {
        Some(client_action::Action::Failure(cs::Failure {
            command_id: 1,
            description: "boom".into(),
            restart,
        }))
    };
    // A failure with restart: answered, nothing persisted, the stream goes.
    let step = machine.answer(
        &e,
        &InFlight::of(1, &cmd),
        reply(1, failure(true), 1),
        &window,
        &stamp(&w),
    );
    assert_eq!(step, Step::Restart(Reply::failure("boom")));
    // Without restart it is an ordinary answer (the reference keeps events sent with it).
    let step = machine.answer(
        &e,
        &InFlight::of(1, &cmd),
        reply(1, failure(false), 1),
        &window,
        &stamp(&w),
    );
    let Step::Done { writes, then, .. } = step else {
        panic!("{step:?}")
    };
    assert_eq!(
        (writes.len(), then),
        (1, Then::Reply(Reply::failure("boom")))
    );
    match &writes[0] {
        Written::Event(e) => assert_eq!(e.reply, None, "a failure is never stored as the reply"),
        other => panic!("{other:?}"),
    }

    // Wrong command id: crash with the reference text, and tell the user function.
    let step = machine.answer(
        &e,
        &InFlight::of(2, &cmd),
        reply(1, None, 0),
        &window,
        &stamp(&w),
    );
    let Step::Crash { text, report } = step else {
        panic!("{step:?}")
    };
    assert_eq!(text, "Unexpected entity reply");
    assert!(
        report
            .unwrap()
            .contains("replied to command 1 while command 2")
    );
    // A stream-level failure or an empty message.
    let failed = EventSourcedStreamOut {
        message: Some(event_sourced_stream_out::Message::Failure(cs::Failure {
            command_id: 2,
            description: "bad".into(),
            restart: false,
        })),
    };
    for out in [failed, EventSourcedStreamOut { message: None }] {
        assert_eq!(
            machine.answer(&e, &InFlight::of(2, &cmd), out, &window, &stamp(&w)),
            Step::Crash {
                text: "Unexpected entity failure".into(),
                report: None
            }
        );
    }
    // A forward: nothing stored as the reply.
    let forward = cs::Forward {
        service_name: "s".into(),
        command_name: "c".into(),
        payload: None,
        metadata: None,
    };
    let step = machine.answer(
        &e,
        &InFlight::of(3, &cmd),
        reply(3, Some(client_action::Action::Forward(forward.clone())), 1),
        &window,
        &stamp(&w),
    );
    let Step::Done { writes, then, .. } = step else {
        panic!("{step:?}")
    };
    assert_eq!(then, Then::Forward(forward));
    match &writes[0] {
        Written::Event(e) => assert_eq!(e.reply, None),
        other => panic!("{other:?}"),
    }
}

/// A method of the cart with an eventing output topic.
fn with_output(topic: &str) -> std::sync::Arc<statehouse_runtime::method_index::MethodInfo> {
    use statehouse_schemas::cloudstate::{EventDestination, Eventing, event_destination};
    let m = method("AddItem", protocol::EVENT_SOURCED, "cart");
    let mut info = (*m).clone();
    info.eventing = Some(Eventing {
        r#in: None,
        out: Some(EventDestination {
            destination: Some(event_destination::Destination::Topic(topic.into())),
        }),
    });
    std::sync::Arc::new(info)
}

/// The writes of the answer to the command in flight, through the path the mailbox takes.
fn writes_of(
    machine: &mut EventSourced,
    e: &crate::entity::EntityRef,
    out: EventSourcedStreamOut,
) -> Option<Vec<Written>> {
    let w = writer();
    let stamp = stamp(&w);
    let window = Window::default();
    let turn = crate::entity::Turn {
        window: &window,
        stamp: &stamp,
    };
    let actions = crate::kinds::journaled::message(machine, e, out, &turn);
    actions.into_iter().find_map(|a| match a {
        crate::entity::Action::Write { write, .. } => Some(write),
        _ => None,
    })
}

fn header<'a>(output: &'a crate::records::Output, name: &str) -> &'a [u8] {
    output
        .headers
        .iter()
        .find(|(n, _)| *n == name)
        .map_or(&b""[..], |(_, v)| &v[..])
}

#[test]
fn a_reply_to_an_output_topic_is_written_with_the_events() {
    let m = with_output("carts-out");
    let e = entity(&m, "u1");
    let (mut machine, _) = EventSourced::start(&e, Loaded::default());

    // With an idempotency key: the output's ce-id is the key; it follows the events.
    let cmd = command(&m, "u1", Some("idem-1"));
    machine.command(&e, 1, &cmd, false);
    let writes = writes_of(&mut machine, &e, reply(1, Some(message_reply(b"ok")), 2))
        .expect("events and the output are written");
    assert_eq!(writes.len(), 3);
    assert!(matches!(writes[0], Written::Event(_)) && matches!(writes[1], Written::Event(_)));
    let Written::Output(output) = &writes[2] else {
        panic!("the output comes last: {:?}", writes[2]);
    };
    assert_eq!(&*output.topic, "carts-out");
    assert_eq!(output.key.as_deref(), Some(&b"u1"[..]));
    assert_eq!(&output.value[..], b"ok");
    assert_eq!(header(output, "ce_id"), b"idem-1");
    assert_eq!(header(output, "ce_subject"), b"u1");
    assert_eq!(header(output, "ce_type"), b"google.protobuf.Empty");
    assert_eq!(header(output, "ce_source"), testing::CART.as_bytes());
    let _ = machine.written(&e, 1, Ok(None));

    // Without a key: the ce-id names the last event written.
    let cmd = command(&m, "u1", None);
    machine.command(&e, 2, &cmd, false);
    let writes = writes_of(&mut machine, &e, reply(2, Some(message_reply(b"ok")), 1)).unwrap();
    let Written::Output(output) = &writes[1] else {
        panic!("{writes:?}");
    };
    assert_eq!(header(output, "ce_id"), b"cart|u1#3");
    let _ = machine.written(&e, 2, Ok(None));

    // No events: the output alone is written (in a transaction of its own), with a new id.
    machine.command(&e, 3, &cmd, false);
    let writes = writes_of(&mut machine, &e, reply(3, Some(message_reply(b"ok")), 0)).unwrap();
    let [Written::Output(output)] = &writes[..] else {
        panic!("{writes:?}");
    };
    assert_eq!(header(output, "ce_id"), b"cmd-1");
    let _ = machine.written(&e, 3, Ok(None));
    assert_eq!(machine.last_seq, 3);

    // A failure or an empty reply publishes nothing.
    machine.command(&e, 4, &cmd, false);
    let failure = client_action::Action::Failure(cs::Failure {
        command_id: 4,
        description: "no".into(),
        restart: false,
    });
    assert_eq!(
        writes_of(&mut machine, &e, reply(4, Some(failure), 0)),
        None
    );
    machine.command(&e, 5, &cmd, false);
    assert_eq!(writes_of(&mut machine, &e, reply(5, None, 0)), None);
}

#[test]
fn the_answer_carries_the_commit_position_of_the_events() {
    let m = method("AddItem", protocol::EVENT_SOURCED, "cart");
    let e = entity(&m, "u1");
    let (mut machine, _) = EventSourced::start(&e, Loaded::default());
    let cmd = command(&m, "u1", None);
    machine.command(&e, 1, &cmd, false);
    assert!(writes_of(&mut machine, &e, reply(1, Some(message_reply(b"ok")), 1)).is_some());
    let position = crate::command::Position {
        partition: 3,
        offset: 41,
    };
    let actions = machine.written(&e, 1, Ok(Some(position)));
    let answered = actions.iter().find_map(|a| match a {
        crate::entity::Action::Answer { position, .. } => Some(*position),
        _ => None,
    });
    assert_eq!(answered, Some(Some(position)));
}

/// What the mailbox is asked to do, in short: `A<id>` answer (`+`: remembered), `E<id>` end,
/// `F<id>` fail, `W<token>:<records>` write, `D` drop, `C` crash.
fn short(actions: &[crate::entity::Action<EventSourced>]) -> Vec<String> {
    use crate::entity::Action;
    actions
        .iter()
        .map(|a| match a {
            Action::Answer { id, remember, .. } => {
                format!("A{id}{}", if *remember { "+" } else { "" })
            }
            Action::End { id } => format!("E{id}"),
            Action::Fail { id, .. } => format!("F{id}"),
            Action::Write { token, write } => format!("W{token}:{}", write.len()),
            Action::Drop => "D".into(),
            Action::Crash { .. } => "C".into(),
            _ => "?".into(),
        })
        .collect()
}

/// Send command `id` (with `key`) and feed the machine the user function's answer `out`.
fn run(
    machine: &mut EventSourced,
    e: &EntityRef,
    id: i64,
    key: Option<&str>,
    out: EventSourcedStreamOut,
) -> Vec<String> {
    let m = method("AddItem", protocol::EVENT_SOURCED, "cart");
    let cmd = command(&m, "u1", key);
    assert!(machine.accepts(), "command {id} may go");
    assert!(machine.admits(&cmd));
    machine.command(e, id, &cmd, false);
    assert!(
        !machine.accepts(),
        "one command at a time at the user function"
    );
    let w = writer();
    let window = Window::default();
    let stamp = stamp(&w);
    let turn = crate::entity::Turn {
        window: &window,
        stamp: &stamp,
    };
    short(&machine.message(e, out, &turn))
}

#[test]
fn commands_run_ahead_of_their_commit_and_are_answered_in_order() {
    let m = method("AddItem", protocol::EVENT_SOURCED, "cart");
    let e = entity(&m, "u1");
    let (mut machine, _) = EventSourced::start(&e, Loaded::default());
    // Nothing waits: the first answer's events are appended at once.
    assert_eq!(
        run(&mut machine, &e, 1, Some("k1"), reply(1, None, 1)),
        ["W1:1"]
    );
    // While they commit, the next commands run; their answers wait, their writes gather.
    assert_eq!(
        run(&mut machine, &e, 2, Some("k2"), reply(2, None, 2)),
        Vec::<String>::new()
    );
    // A read waits behind the uncommitted writes it was answered from.
    assert_eq!(
        run(&mut machine, &e, 3, None, reply(3, None, 0)),
        Vec::<String>::new()
    );
    assert_eq!(
        run(&mut machine, &e, 4, None, reply(4, None, 1)),
        Vec::<String>::new()
    );
    assert_eq!(
        machine.last_seq, 4,
        "sequence numbers continue across the pipeline"
    );
    // A retry of an idempotency key still in the pipeline waits for its reply.
    assert!(!machine.admits(&command(&m, "u1", Some("k2"))));
    assert!(machine.admits(&command(&m, "u1", Some("k9"))));
    // The first group committed: its answer goes, the next group is one append.
    assert_eq!(
        short(&machine.written(&e, 1, Ok(None))),
        ["A1+", "E1", "W2:3"]
    );
    // A stale token changes nothing.
    assert!(machine.written(&e, 1, Ok(None)).is_empty());
    let position = crate::command::Position {
        partition: 0,
        offset: 9,
    };
    let actions = machine.written(&e, 2, Ok(Some(position)));
    assert_eq!(short(&actions), ["A2+", "E2", "A3", "E3", "A4+", "E4"]);
    let positions: Vec<_> = actions
        .iter()
        .filter_map(|a| match a {
            crate::entity::Action::Answer { position, .. } => Some(*position),
            _ => None,
        })
        .collect();
    assert_eq!(positions, [Some(position), None, Some(position)]);
    assert!(machine.admits(&command(&m, "u1", Some("k2"))));
    // Idle again: a read is answered at once.
    assert_eq!(
        run(&mut machine, &e, 5, None, reply(5, None, 0)),
        ["A5", "E5"]
    );
}

#[test]
fn a_failed_group_fails_every_later_command_and_drops_the_stream() {
    let m = method("AddItem", protocol::EVENT_SOURCED, "cart");
    let e = entity(&m, "u1");
    let (mut machine, _) = EventSourced::start(&e, Loaded::default());
    assert_eq!(run(&mut machine, &e, 1, None, reply(1, None, 1)), ["W1:1"]);
    assert!(run(&mut machine, &e, 2, None, reply(2, None, 1)).is_empty());
    assert!(run(&mut machine, &e, 3, None, reply(3, None, 0)).is_empty());
    let failed = Error::EntityFailure("aborted".into());
    let actions = machine.written(&e, 1, Err(failed));
    assert_eq!(short(&actions), ["F1", "F2", "F3", "D"]);
    let errors: Vec<String> = actions
        .iter()
        .filter_map(|a| match a {
            crate::entity::Action::Fail { error, .. } => Some(error.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(errors[0], "aborted");
    assert!(
        errors[1].contains("earlier command") && errors[1].contains("aborted"),
        "{errors:?}"
    );
    assert_eq!(
        tonic::Status::from(Error::EarlierNotCommitted("x".into())).code(),
        tonic::Code::Unavailable,
        "retryable"
    );
}

#[test]
fn a_restart_waits_for_the_writes_before_it_and_stops_the_pipeline() {
    let m = method("AddItem", protocol::EVENT_SOURCED, "cart");
    let e = entity(&m, "u1");
    let (mut machine, _) = EventSourced::start(&e, Loaded::default());
    assert_eq!(run(&mut machine, &e, 1, None, reply(1, None, 1)), ["W1:1"]);
    let restart = client_action::Action::Failure(cs::Failure {
        command_id: 2,
        description: "boom".into(),
        restart: true,
    });
    assert!(run(&mut machine, &e, 2, None, reply(2, Some(restart), 0)).is_empty());
    assert!(!machine.accepts(), "nothing runs after a restart");
    assert_eq!(
        short(&machine.written(&e, 1, Ok(None))),
        ["A1+", "E1", "A2", "D"]
    );
}

#[test]
fn the_pipeline_is_bounded() {
    let m = method("AddItem", protocol::EVENT_SOURCED, "cart");
    let e = entity(&m, "u1");
    let (mut machine, _) = EventSourced::start(&e, Loaded::default());
    let mut id = 0;
    while machine.accepts() {
        id += 1;
        run(&mut machine, &e, id, None, reply(id, None, 1));
    }
    assert_eq!(id as usize, crate::kinds::journaled::PIPELINE);
    assert_eq!(
        short(&machine.written(&e, 1, Ok(None))),
        ["A1+", "E1", &format!("W2:{}", id - 1)]
    );
    assert!(machine.accepts());
}

/// Feed the machine the answer `out` to command `id` under a record limit of `limit` bytes.
fn run_limited(
    machine: &mut EventSourced,
    e: &EntityRef,
    id: i64,
    out: EventSourcedStreamOut,
    limit: usize,
) -> Vec<crate::entity::Action<EventSourced>> {
    let m = method("AddItem", protocol::EVENT_SOURCED, "cart");
    machine.command(e, id, &command(&m, "u1", None), false);
    let w = writer();
    let window = Window::default();
    let stamp = stamp(&w).with_max_record_bytes(limit);
    let turn = crate::entity::Turn {
        window: &window,
        stamp: &stamp,
    };
    machine.message(e, out, &turn)
}

fn big_event(id: i64, bytes: usize) -> EventSourcedStreamOut {
    let mut out = reply(id, Some(message_reply(b"ok")), 1);
    if let Some(event_sourced_stream_out::Message::Reply(r)) = &mut out.message {
        r.events[0].value = vec![0; bytes];
    }
    out
}

/// A command whose event exceeds `kafka.max-record-bytes` fails alone with INVALID_ARGUMENT
/// naming the limit: nothing of it is written, the commands before it commit and are answered
/// first, and the stream restarts (the user function applied the refused event).
#[test]
fn an_event_above_the_record_limit_fails_its_command_alone() {
    let m = method("AddItem", protocol::EVENT_SOURCED, "cart");
    let e = entity(&m, "u1");
    let limit = 4_096;

    // Alone: refused at once, nothing written.
    let (mut machine, _) = EventSourced::start(&e, Loaded::default());
    let actions = run_limited(&mut machine, &e, 1, big_event(1, limit), limit);
    assert_eq!(short(&actions), ["A1", "D"]);
    let refused = actions.iter().find_map(|a| match a {
        crate::entity::Action::Answer {
            then: Some(Then::Reply(Reply::Failure { description, code })),
            ..
        } => Some((description.clone(), *code)),
        _ => None,
    });
    let (description, code) = refused.expect("a failure answer");
    assert_eq!(code, tonic::Code::InvalidArgument);
    assert!(
        description.contains("kafka.max-record-bytes") && description.contains("4096"),
        "{description}"
    );

    // Behind a group that commits: that group is answered first, then the refusal.
    let (mut machine, _) = EventSourced::start(&e, Loaded::default());
    assert_eq!(
        short(&run_limited(&mut machine, &e, 1, reply(1, None, 1), limit)),
        ["W1:1"]
    );
    assert!(run_limited(&mut machine, &e, 2, big_event(2, 2 * limit), limit).is_empty());
    assert!(!machine.accepts(), "nothing runs after the refused command");
    assert_eq!(
        short(&machine.written(&e, 1, Ok(None))),
        ["A1+", "E1", "A2", "D"]
    );

    // Just under the limit (with room for the record's framing): written.
    let (mut machine, _) = EventSourced::start(&e, Loaded::default());
    assert_eq!(
        short(&run_limited(
            &mut machine,
            &e,
            1,
            big_event(1, limit - 1_500),
            limit
        )),
        ["W1:1"]
    );
}
