//! The value-entity state machine, without Kafka, Cassandra or a user function.

use statehouse_schemas::cloudstate::valueentity::{
    ValueEntityAction, ValueEntityDelete, ValueEntityReply, ValueEntityUpdate,
};
use statehouse_schemas::cloudstate::{self as cs, ClientAction, SideEffect};
use statehouse_schemas::protocol;

use super::*;
use crate::kinds::testing::{command, entity, method, stamp, writer};

fn any(value: &[u8]) -> prost_types::Any {
    prost_types::Any {
        type_url: "type.googleapis.com/x.Persisted".into(),
        value: value.to_vec(),
    }
}

fn reply(
    id: i64,
    action: Option<client_action::Action>,
    state: Option<value_entity_action::Action>,
) -> ValueEntityStreamOut {
    ValueEntityStreamOut {
        message: Some(value_entity_stream_out::Message::Reply(ValueEntityReply {
            command_id: id,
            client_action: action.map(|action| ClientAction {
                action: Some(action),
            }),
            side_effects: vec![SideEffect {
                service_name: "s".into(),
                command_name: "c".into(),
                payload: None,
                synchronous: false,
                metadata: None,
            }],
            state_action: state.map(|action| ValueEntityAction {
                action: Some(action),
            }),
        })),
    }
}

fn message(text: &[u8]) -> Option<client_action::Action> {
    Some(client_action::Action::Reply(cs::Reply {
        payload: Some(prost_types::Any {
            type_url: "type.googleapis.com/x.Response".into(),
            value: text.to_vec(),
        }),
        metadata: None,
    }))
}

fn update(value: &[u8]) -> Option<value_entity_action::Action> {
    Some(value_entity_action::Action::Update(ValueEntityUpdate {
        value: Some(any(value)),
    }))
}

#[test]
fn init_always_carries_a_state_empty_for_a_new_entity() {
    let m = method("AddItem", protocol::VALUE_ENTITY, "ve");
    let e = entity(&m, "u1");
    let (machine, start) = Value::start(&e, Loaded::default());
    assert_eq!(machine.seq, 0);
    assert_eq!(start.messages.len(), 1);
    let Some(value_entity_stream_in::Message::Init(init)) = &start.messages[0].message else {
        panic!("not an init");
    };
    assert_eq!(init.entity_id, "u1");
    assert_eq!(init.state, Some(ValueEntityInitState { value: None }));
    // On the wire: field 3 present and empty (1a 00), as the TCK expects.
    let bytes = prost::Message::encode_to_vec(init);
    assert!(bytes.ends_with(&[0x1a, 0x00]), "{bytes:02x?}");

    let (machine, start) = Value::start(
        &e,
        Loaded {
            seq: 4,
            state: Some(any(b"four")),
            recent: vec![RecentReply {
                idempotency_key: "k".into(),
                reply: None,
            }],
        },
    );
    assert_eq!(machine.seq, 4);
    let Some(value_entity_stream_in::Message::Init(init)) = &start.messages[0].message else {
        panic!("not an init");
    };
    assert_eq!(init.state.as_ref().unwrap().value, Some(any(b"four")));
    assert_eq!(start.remembered, vec![("k".to_string(), Reply::Empty)]);
}

#[test]
fn updates_and_deletes_are_written_with_the_next_version() {
    let m = method("AddItem", protocol::VALUE_ENTITY, "ve");
    let e = entity(&m, "u1");
    let (mut machine, _) = Value::start(&e, Loaded::default());
    let cmd = command(&m, "u1", None);
    let w = writer();
    let window = Window::default();

    let command_message = machine.command(&e, 1, &cmd, false);
    let Some(value_entity_stream_in::Message::Command(c)) = command_message.message else {
        panic!("not a command");
    };
    assert_eq!((c.id, c.metadata), (1, None));

    let step = machine.answer(
        &e,
        &InFlight::of(1, &cmd),
        reply(1, message(b"one"), update(b"one")),
        &window,
        &stamp(&w),
    );
    let Step::Done {
        writes,
        then,
        side_effects,
    } = step
    else {
        panic!("{step:?}")
    };
    assert_eq!(side_effects.len(), 1, "side effects of a success run");
    assert!(matches!(then, Then::Reply(Reply::Message { .. })));
    let [Written::Value(v)] = &writes[..] else {
        panic!("{writes:?}")
    };
    assert_eq!(
        (v.seq, &v.payload[..], v.persistence_id.as_str()),
        (1, &b"one"[..], "ve")
    );
    assert_eq!(v.type_url, "type.googleapis.com/x.Persisted");
    assert_eq!(machine.seq, 1);

    // A read writes nothing and keeps the version.
    let step = machine.answer(
        &e,
        &InFlight::of(2, &cmd),
        reply(2, message(b"one"), None),
        &window,
        &stamp(&w),
    );
    assert!(
        matches!(&step, Step::Done { writes, .. } if writes.is_empty()),
        "{step:?}"
    );
    assert_eq!(machine.seq, 1);

    // A delete is a deletion record (a tombstone on the topic); the stream stays.
    let delete = Some(value_entity_action::Action::Delete(ValueEntityDelete {}));
    let step = machine.answer(
        &e,
        &InFlight::of(3, &cmd),
        reply(3, message(b""), delete),
        &window,
        &stamp(&w),
    );
    let Step::Done { writes, .. } = step else {
        panic!("{step:?}")
    };
    let [Written::Deleted(d)] = &writes[..] else {
        panic!("{writes:?}")
    };
    assert_eq!(d.seq, 2);
    assert_eq!(machine.seq, 2, "the version continues after a delete");
}

#[test]
fn a_failure_persists_nothing_and_runs_no_side_effects() {
    let m = method("AddItem", protocol::VALUE_ENTITY, "ve");
    let e = entity(&m, "u1");
    let (mut machine, _) = Value::start(&e, Loaded::default());
    let cmd = command(&m, "u1", Some("k"));
    let w = writer();
    let failure = Some(client_action::Action::Failure(cs::Failure {
        command_id: 1,
        description: "expected failure".into(),
        restart: false,
    }));
    let step = machine.answer(
        &e,
        &InFlight::of(1, &cmd),
        reply(1, failure, update(b"x")),
        &Window::default(),
        &stamp(&w),
    );
    assert_eq!(
        step,
        Step::Done {
            writes: Vec::new(),
            then: Then::Reply(Reply::failure("expected failure")),
            side_effects: Vec::new(),
        }
    );
}

#[test]
fn protocol_violations_crash_with_the_reference_texts() {
    let m = method("AddItem", protocol::VALUE_ENTITY, "ve");
    let e = entity(&m, "u1");
    let (mut machine, _) = Value::start(&e, Loaded::default());
    let cmd = command(&m, "u1", None);
    let w = writer();
    let window = Window::default();

    let Step::Crash { text, report } = machine.answer(
        &e,
        &InFlight::of(2, &cmd),
        reply(1, message(b""), None),
        &window,
        &stamp(&w),
    ) else {
        panic!("not a crash")
    };
    assert_eq!(text, "Unexpected Value entity reply");
    assert!(report.unwrap().contains("(expected id 2 but got 1)"));

    let failure = ValueEntityStreamOut {
        message: Some(value_entity_stream_out::Message::Failure(cs::Failure {
            command_id: 2,
            description: "boom".into(),
            restart: false,
        })),
    };
    assert_eq!(
        machine.answer(&e, &InFlight::of(2, &cmd), failure, &window, &stamp(&w)),
        Step::Crash {
            text: "Unexpected Value entity failure".into(),
            report: None
        }
    );
    let Step::Crash { text, report } = machine.answer(
        &e,
        &InFlight::of(2, &cmd),
        ValueEntityStreamOut { message: None },
        &window,
        &stamp(&w),
    ) else {
        panic!("not a crash")
    };
    assert_eq!(text, "Unexpected Value entity failure");
    assert!(report.unwrap().contains("empty or unknown message"));

    let no_value = Some(value_entity_action::Action::Update(ValueEntityUpdate {
        value: None,
    }));
    let Step::Crash { text, .. } = machine.answer(
        &e,
        &InFlight::of(2, &cmd),
        reply(2, message(b""), no_value),
        &window,
        &stamp(&w),
    ) else {
        panic!("not a crash")
    };
    assert_eq!(text, "Unexpected Value entity reply");
    assert!(
        <Value as Journaled>::unsolicited(&e, &reply(9, None, None))
            .contains("a reply to command 9"),
        "unsolicited replies are reported"
    );
}

#[test]
fn records_carry_the_recent_idempotent_replies_bounded() {
    let m = method("AddItem", protocol::VALUE_ENTITY, "ve");
    let e = entity(&m, "u1");
    let (mut machine, _) = Value::start(&e, Loaded::default());
    let w = writer();
    let mut window = Window::default();
    for i in 0..RECENT + 5 {
        window.remember(format!("old{i}"), Reply::Empty);
    }
    let cmd = command(&m, "u1", Some("new"));
    let step = machine.answer(
        &e,
        &InFlight::of(1, &cmd),
        reply(1, message(b"n"), update(b"n")),
        &window,
        &stamp(&w),
    );
    let Step::Done { writes, .. } = step else {
        panic!("{step:?}")
    };
    let [Written::Value(v)] = &writes[..] else {
        panic!("{writes:?}")
    };
    assert_eq!(v.recent.len(), RECENT);
    assert_eq!(v.recent.last().unwrap().idempotency_key, "new");
    assert_eq!(
        v.recent.last().unwrap().reply.as_ref().unwrap().payload,
        Bytes::from_static(b"n")
    );
    assert_eq!(v.recent[0].idempotency_key, format!("old{}", 6));
    // A command without a key carries the same replies on (nothing is forgotten by a write
    // without a key), including those of commands not committed yet: the topic keeps only the
    // latest record.
    let plain = command(&m, "u1", None);
    let mut next = |id: i64, window: &Window| {
        let step = machine.answer(
            &e,
            &InFlight::of(id, &plain),
            reply(id, message(b"p"), update(b"p")),
            window,
            &stamp(&w),
        );
        let Step::Done { mut writes, .. } = step else {
            panic!("{step:?}")
        };
        let Some(Written::Value(v)) = writes.pop() else {
            panic!("{writes:?}")
        };
        v.recent
            .into_iter()
            .map(|r| r.idempotency_key)
            .collect::<Vec<_>>()
    };
    let expected: Vec<String> = (6..RECENT + 5)
        .map(|i| format!("old{i}"))
        .chain(["new".to_string()])
        .collect();
    assert_eq!(
        next(2, &window),
        expected,
        "\"new\" is still in the pipeline"
    );
    window.remember("new".into(), Reply::Empty);
    assert_eq!(next(3, &window), expected, "\"new\" committed");
}

#[test]
fn the_backed_up_row_gives_state_and_recent_replies() {
    let record = Written::Value(ValueRecord {
        service: "svc".into(),
        persistence_id: "ve".into(),
        entity_id: "u1".into(),
        seq: 3,
        type_url: "type.googleapis.com/x.Persisted".into(),
        payload: Bytes::from_static(b"three"),
        command_id: None,
        idempotency_key: None,
        timestamp_ms: 0,
        writer: writer(),
        recent: vec![RecentReply {
            idempotency_key: "k".into(),
            reply: None,
        }],
        traceparent: None,
    });
    let row = row_of("svc", &record, 2, 40).unwrap().unwrap();
    assert_eq!(
        (row.entity_id.as_str(), row.seq, row.offset, row.partition),
        ("ve|u1", 3, 40, 2)
    );
    let loaded = loaded_from_row("ve|u1", row).unwrap();
    assert_eq!(loaded, loaded_from_record(&record));
    assert_eq!(loaded.state.unwrap().value, b"three");

    let bad = ValueRow {
        record: Some(Bytes::from_static(b"garbage")),
        ..row_of("svc", &record, 2, 40).unwrap().unwrap()
    };
    assert!(loaded_from_row("ve|u1", bad).is_err());
}
