//! The CRDT state machine, without Kafka, Cassandra or a user function: what goes to the user
//! function and to callers for each message, input, write outcome and cancellation.

use statehouse_crdt::protocol::{View, Voters};
use statehouse_schemas::cloudstate::crdt::{
    CrdtDelta, CrdtReply, CrdtStreamCancelledResponse, CrdtStreamedMessage, FlagDelta,
    GCounterDelta, PnCounterDelta, VoteDelta, crdt_delta,
};
use statehouse_schemas::protocol;

use super::*;
use crate::entity::Window;
use crate::kinds::testing::{command, entity, method, stamp, writer};

fn me() -> ReplicaId {
    ReplicaId::new("p1:1")
}

fn fresh(state: Option<State>) -> (Crdt, EntityRef, Start<CrdtStreamIn>) {
    let m = method("AddItem", protocol::CRDT, "cart");
    let e = entity(&m, "c1");
    let (machine, start) = Crdt::start(
        &e,
        Loaded {
            me: me(),
            live: Arc::new(BTreeSet::new()),
            state,
        },
    );
    (machine, e, start)
}

fn delta(d: crdt_delta::Delta) -> CrdtDelta {
    CrdtDelta { delta: Some(d) }
}

fn pn(change: i64) -> CrdtDelta {
    delta(crdt_delta::Delta::Pncounter(PnCounterDelta { change }))
}

fn update(d: CrdtDelta, consistency: CrdtWriteConsistency) -> Option<CrdtStateAction> {
    Some(CrdtStateAction {
        action: Some(crdt_state_action::Action::Update(d)),
        write_consistency: consistency as i32,
    })
}

fn deleting() -> Option<CrdtStateAction> {
    Some(CrdtStateAction {
        action: Some(crdt_state_action::Action::Delete(CrdtDelete {})),
        write_consistency: 0,
    })
}

fn payload(text: &str) -> Option<ClientAction> {
    Some(ClientAction {
        action: Some(client_action::Action::Reply(cs::Reply {
            payload: Some(prost_types::Any {
                type_url: "type.googleapis.com/x.Response".into(),
                value: text.as_bytes().to_vec(),
            }),
            metadata: None,
        })),
    })
}

fn reply(
    id: i64,
    action: Option<ClientAction>,
    state: Option<CrdtStateAction>,
    streamed: bool,
) -> CrdtStreamOut {
    CrdtStreamOut {
        message: Some(crdt_stream_out::Message::Reply(CrdtReply {
            command_id: id,
            client_action: action,
            side_effects: Vec::new(),
            state_action: state,
            streamed,
        })),
    }
}

/// Feed a user-function message.
fn on(machine: &mut Crdt, e: &EntityRef, out: CrdtStreamOut) -> Vec<Action<Crdt>> {
    let w = writer();
    let s = stamp(&w);
    let window = Window::default();
    machine.message(
        e,
        out,
        &Turn {
            window: &window,
            stamp: &s,
        },
    )
}

fn input(machine: &mut Crdt, e: &EntityRef, changed: Changed) -> Vec<Action<Crdt>> {
    let w = writer();
    let s = stamp(&w);
    let window = Window::default();
    machine.input(
        e,
        changed,
        &Turn {
            window: &window,
            stamp: &s,
        },
    )
}

/// Send command `id` (streamed or not).
fn send(machine: &mut Crdt, e: &EntityRef, id: i64, streamed: bool) -> CrdtStreamIn {
    let m = method("AddItem", protocol::CRDT, "cart");
    machine.command(e, id, &command(&m, "c1", None), streamed)
}

/// The fragment written and the token, from actions that hold exactly one write.
fn the_write(actions: &[Action<Crdt>]) -> (u64, &Publish) {
    let writes: Vec<_> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Write { token, write } => Some((*token, write)),
            _ => None,
        })
        .collect();
    assert_eq!(writes.len(), 1, "{actions:?}");
    writes[0]
}

fn sent_delta(actions: &[Action<Crdt>]) -> Option<CrdtDelta> {
    actions.iter().find_map(|a| match a {
        Action::Send(CrdtStreamIn {
            message: Some(crdt_stream_in::Message::Delta(d)),
        }) => Some(d.clone()),
        _ => None,
    })
}

/// A remote replica's PNCounter fragment: it counted `total` in all.
fn remote_pn(total: i64) -> State {
    statehouse_crdt::protocol::apply(None, &ReplicaId::new("p2:1"), &pn(total), 1).unwrap()
}

impl std::fmt::Debug for Action<Crdt> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Action::Send(m) => write!(f, "Send({m:?})"),
            Action::Write { token, write } => write!(f, "Write({token}, {write:?})"),
            Action::Answer { id, then, .. } => write!(f, "Answer({id}, {then:?})"),
            Action::End { id } => write!(f, "End({id})"),
            Action::Fail { id, error } => write!(f, "Fail({id}, {error})"),
            Action::Effects(e) => write!(f, "Effects({})", e.len()),
            Action::Report(r) => write!(f, "Report({r})"),
            Action::Crash { text, report } => write!(f, "Crash({text}, {report:?})"),
            Action::Drop => write!(f, "Drop"),
            Action::Close { refuse } => write!(f, "Close({refuse})"),
        }
    }
}

#[test]
fn init_carries_the_state_as_one_delta_and_nothing_for_a_new_entity() {
    let (_, _, start) = fresh(None);
    let Some(crdt_stream_in::Message::Init(init)) = &start.messages[0].message else {
        panic!("not an init");
    };
    assert_eq!((init.entity_id.as_str(), init.delta.as_ref()), ("c1", None));

    let (machine, _, start) = fresh(Some(remote_pn(-4)));
    let Some(crdt_stream_in::Message::Init(init)) = &start.messages[0].message else {
        panic!("not an init");
    };
    assert_eq!(init.delta, Some(pn(-4)));
    assert_eq!(machine.held, Some(View::PNCounter(-4)));
}

#[test]
fn an_update_is_written_then_answered_and_never_echoed() {
    let (mut machine, e, _) = fresh(None);
    assert!(machine.accepts());
    let Some(crdt_stream_in::Message::Command(c)) = send(&mut machine, &e, 1, false).message else {
        panic!("not a command");
    };
    assert_eq!((c.id, c.streamed, c.metadata), (1, false, None));
    // Commands go as they come.
    send(&mut machine, &e, 2, false);

    let actions = on(
        &mut machine,
        &e,
        reply(
            1,
            payload("two"),
            update(pn(2), CrdtWriteConsistency::Majority),
            false,
        ),
    );
    let (token, write) = the_write(&actions);
    assert_eq!(write.consistency, avro::WriteConsistency::Majority);
    let Change::Fragment(fragment) = &write.change else {
        panic!("not a fragment");
    };
    assert_eq!(
        View::of(
            fragment,
            &Voters {
                me: &me(),
                live: &BTreeSet::new()
            }
        ),
        View::PNCounter(2)
    );
    assert_eq!(
        actions.len(),
        1,
        "the caller waits for the write: {actions:?}"
    );

    let actions = machine.written(&e, token, Ok(None));
    assert!(
        matches!(
            &actions[..],
            [Action::Answer {
                id: 1,
                then: Some(_),
                ..
            }]
        ),
        "{actions:?}"
    );
    // Command 2 answers without a state action: nothing in flight, nothing to tell (the user
    // function holds its own change).
    let actions = on(&mut machine, &e, reply(2, payload("two"), None, false));
    assert!(
        matches!(&actions[..], [Action::Answer { id: 2, .. }]),
        "{actions:?}"
    );
    assert_eq!(machine.held, Some(View::PNCounter(2)));
}

#[test]
fn remote_changes_wait_for_the_commands_in_flight_then_go_as_one_delta() {
    let (mut machine, e, _) = fresh(None);
    send(&mut machine, &e, 1, false);
    // +3 then +6 from another replica while command 1 is in flight: nothing goes yet.
    assert!(
        input(
            &mut machine,
            &e,
            Changed {
                fragment: Some(remote_pn(3)),
                ..Changed::default()
            }
        )
        .is_empty()
    );
    assert!(
        input(
            &mut machine,
            &e,
            Changed {
                fragment: Some(remote_pn(9)),
                ..Changed::default()
            }
        )
        .is_empty()
    );
    let actions = on(
        &mut machine,
        &e,
        reply(
            1,
            payload("x"),
            update(pn(1), CrdtWriteConsistency::Local),
            false,
        ),
    );
    assert!(
        sent_delta(&actions).is_none(),
        "a write is in flight: {actions:?}"
    );
    let (token, _) = the_write(&actions);
    let actions = machine.written(&e, token, Ok(None));
    assert_eq!(sent_delta(&actions), Some(pn(9)), "{actions:?}");
    assert_eq!(machine.held, Some(View::PNCounter(10)));
    // Idle: a remote change goes at once.
    let actions = input(
        &mut machine,
        &e,
        Changed {
            fragment: Some(remote_pn(10)),
            ..Changed::default()
        },
    );
    assert_eq!(sent_delta(&actions), Some(pn(1)));
}

#[test]
fn invalid_updates_crash_the_stream_with_the_reference_texts() {
    let cases: Vec<(CrdtDelta, &str)> = vec![
        (
            delta(crdt_delta::Delta::Gcounter(GCounterDelta {
                increment: u64::MAX,
            })),
            "Cannot decrement a GCounter, requested amount was -1",
        ),
        (CrdtDelta { delta: None }, "Empty delta"),
    ];
    for (d, text) in cases {
        let (mut machine, e, _) = fresh(None);
        send(&mut machine, &e, 1, false);
        let actions = on(
            &mut machine,
            &e,
            reply(1, None, update(d, CrdtWriteConsistency::Local), false),
        );
        assert!(
            matches!(&actions[..], [Action::Crash { text: t, report: Some(r) }] if t == TERMINATING && r == text),
            "{actions:?}"
        );
    }
    let (mut machine, e, _) = fresh(None);
    send(&mut machine, &e, 1, false);
    let on_flag = delta(crdt_delta::Delta::Flag(FlagDelta { value: true }));
    let actions = on(
        &mut machine,
        &e,
        reply(1, None, update(on_flag, CrdtWriteConsistency::Local), false),
    );
    let (token, _) = the_write(&actions);
    machine.written(&e, token, Ok(None));
    send(&mut machine, &e, 2, false);
    let off = delta(crdt_delta::Delta::Flag(FlagDelta { value: false }));
    let actions = on(
        &mut machine,
        &e,
        reply(2, None, update(off, CrdtWriteConsistency::Local), false),
    );
    assert!(
        matches!(&actions[..], [Action::Crash { report: Some(r), .. }] if r == "Cannot switch off already enabled flag"),
        "{actions:?}"
    );
    send(&mut machine, &e, 3, false);
    let actions = on(
        &mut machine,
        &e,
        reply(3, None, update(pn(1), CrdtWriteConsistency::Local), false),
    );
    assert!(
        matches!(&actions[..], [Action::Crash { report: Some(r), .. }] if r == "PNCounterDelta is incompatible with CRDT Flag"),
        "{actions:?}"
    );
    // A reply to a command that was never sent.
    let actions = on(&mut machine, &e, reply(99, None, None, false));
    assert!(
        matches!(&actions[..], [Action::Crash { report: Some(r), .. }] if r == "Received reply for entity id c1 for unknown command 99"),
        "{actions:?}"
    );
}

#[test]
fn a_write_that_misses_its_consistency_fails_the_command_and_the_stream() {
    let (mut machine, e, _) = fresh(None);
    send(&mut machine, &e, 1, false);
    let actions = on(
        &mut machine,
        &e,
        reply(
            1,
            payload("x"),
            update(pn(1), CrdtWriteConsistency::All),
            false,
        ),
    );
    let (token, _) = the_write(&actions);
    let actions = machine.written(&e, token, Err(Error::Overloaded("timeout".into())));
    assert!(
        matches!(&actions[..], [Action::Fail { id: 1, error: Error::EntityFailure(t) }, Action::Crash { .. }] if t == WRITE_FAILED),
        "{actions:?}"
    );
}

#[test]
fn streamed_calls_stay_open_relay_elements_and_are_cancelled_exactly_once() {
    let (mut machine, e, _) = fresh(None);
    let Some(crdt_stream_in::Message::Command(c)) = send(&mut machine, &e, 1, true).message else {
        panic!("not a command");
    };
    assert!(c.streamed);
    // The first element, and the call stays open.
    let actions = on(&mut machine, &e, reply(1, payload("state0"), None, true));
    assert!(
        matches!(
            &actions[..],
            [Action::Answer {
                id: 1,
                then: Some(_),
                ..
            }]
        ),
        "{actions:?}"
    );
    let streamed = |id, end_stream| CrdtStreamOut {
        message: Some(crdt_stream_out::Message::StreamedMessage(
            CrdtStreamedMessage {
                command_id: id,
                client_action: payload("state1"),
                side_effects: Vec::new(),
                end_stream,
            },
        )),
    };
    let actions = on(&mut machine, &e, streamed(1, false));
    assert!(
        matches!(&actions[..], [Action::Answer { id: 1, .. }]),
        "{actions:?}"
    );
    // The client goes away: one stream_cancelled, then nothing more for it.
    let actions = machine.cancelled(&e, 1);
    assert!(
        matches!(
            &actions[..],
            [Action::Send(CrdtStreamIn {
                message: Some(crdt_stream_in::Message::StreamCancelled(StreamCancelled {
                    id: 1,
                    ..
                }))
            })]
        ),
        "{actions:?}"
    );
    assert!(machine.cancelled(&e, 1).is_empty());
    // The cancellation's state action applies; its response ends the operation.
    let response = CrdtStreamOut {
        message: Some(crdt_stream_out::Message::StreamCancelledResponse(
            CrdtStreamCancelledResponse {
                command_id: 1,
                side_effects: Vec::new(),
                state_action: update(
                    delta(crdt_delta::Delta::Vote(VoteDelta {
                        self_vote: true,
                        ..VoteDelta::default()
                    })),
                    CrdtWriteConsistency::Local,
                ),
            },
        )),
    };
    let actions = on(&mut machine, &e, response.clone());
    let (token, _) = the_write(&actions);
    assert!(
        machine.written(&e, token, Ok(None)).is_empty(),
        "nothing to answer, nothing to tell"
    );
    // A second response for it is reported, not obeyed.
    assert!(matches!(
        &on(&mut machine, &e, response)[..],
        [Action::Report(_)]
    ));

    // A call the user function ended is not cancelled; one whose client left before the reply
    // is cancelled once the reply says it is open.
    send(&mut machine, &e, 2, true);
    on(&mut machine, &e, reply(2, None, None, true));
    let actions = on(&mut machine, &e, streamed(2, true));
    assert!(
        matches!(
            &actions[..],
            [Action::Answer { id: 2, .. }, Action::End { id: 2 }]
        ),
        "{actions:?}"
    );
    assert!(machine.cancelled(&e, 2).is_empty());
    send(&mut machine, &e, 3, true);
    assert!(machine.cancelled(&e, 3).is_empty());
    let actions = on(&mut machine, &e, reply(3, None, None, true));
    assert!(
        actions.iter().any(|a| matches!(
            a,
            Action::Send(CrdtStreamIn {
                message: Some(crdt_stream_in::Message::StreamCancelled(StreamCancelled {
                    id: 3,
                    ..
                }))
            })
        )),
        "{actions:?}"
    );
    // A reply without `streamed` ends a streamed call.
    send(&mut machine, &e, 4, true);
    let actions = on(&mut machine, &e, reply(4, payload("x"), None, false));
    assert!(
        matches!(
            &actions[..],
            [Action::Answer { id: 4, .. }, Action::End { id: 4 }]
        ),
        "{actions:?}"
    );
    // Streamed messages for calls that are not open are reported.
    assert!(matches!(
        &on(&mut machine, &e, streamed(4, false))[..],
        [Action::Report(_)]
    ));
}

#[test]
fn a_delete_answers_then_closes_and_a_remote_delete_tells_the_user_function() {
    let (mut machine, e, _) = fresh(Some(remote_pn(7)));
    send(&mut machine, &e, 1, false);
    let actions = on(
        &mut machine,
        &e,
        reply(1, payload("seven"), deleting(), false),
    );
    let (token, write) = the_write(&actions);
    assert_eq!(write.change, Change::Delete);
    let actions = machine.written(&e, token, Ok(None));
    assert!(
        matches!(&actions[..], [Action::Answer { id: 1, .. }, Action::Close { refuse }] if refuse == DELETED),
        "{actions:?}"
    );

    let (mut machine, e, _) = fresh(Some(remote_pn(7)));
    let actions = input(
        &mut machine,
        &e,
        Changed {
            deleted: true,
            ..Changed::default()
        },
    );
    assert!(
        matches!(
            &actions[..],
            [
                Action::Send(CrdtStreamIn {
                    message: Some(crdt_stream_in::Message::Delete(_))
                }),
                Action::Close { .. }
            ]
        ),
        "{actions:?}"
    );
    assert!(
        input(
            &mut machine,
            &e,
            Changed {
                fragment: Some(remote_pn(9)),
                ..Changed::default()
            }
        )
        .is_empty()
    );
}

#[test]
fn a_vote_counts_the_live_replicas() {
    let (mut machine, e, _) = fresh(None);
    send(&mut machine, &e, 1, false);
    let vote = delta(crdt_delta::Delta::Vote(VoteDelta {
        self_vote: true,
        ..VoteDelta::default()
    }));
    let actions = on(
        &mut machine,
        &e,
        reply(1, None, update(vote, CrdtWriteConsistency::Local), false),
    );
    let (token, _) = the_write(&actions);
    // Alone: the user function's own bookkeeping (1 of 1) is right; nothing to tell.
    assert!(sent_delta(&machine.written(&e, token, Ok(None))).is_none());
    // Another replica comes alive: 1 of 2.
    let live = Arc::new(BTreeSet::from([ReplicaId::new("p2:1")]));
    let actions = input(
        &mut machine,
        &e,
        Changed {
            live: Some(live),
            ..Changed::default()
        },
    );
    assert_eq!(
        sent_delta(&actions),
        Some(delta(crdt_delta::Delta::Vote(VoteDelta {
            self_vote: true,
            votes_for: 1,
            total_voters: 2
        })))
    );
    // It dies: 1 of 1 again.
    let actions = input(
        &mut machine,
        &e,
        Changed {
            live: Some(Arc::new(BTreeSet::new())),
            ..Changed::default()
        },
    );
    assert_eq!(
        sent_delta(&actions),
        Some(delta(crdt_delta::Delta::Vote(VoteDelta {
            self_vote: true,
            votes_for: 1,
            total_voters: 1
        })))
    );
}

#[test]
fn inputs_merge_while_the_entity_has_not_taken_them() {
    let mut first = Changed {
        fragment: Some(remote_pn(3)),
        ..Changed::default()
    };
    Crdt::merge(
        &mut first,
        Changed {
            fragment: Some(remote_pn(5)),
            deleted: false,
            pruned: vec![ReplicaId::new("gone:1")],
            live: None,
        },
    );
    assert_eq!(first.fragment, Some(remote_pn(5)));
    assert_eq!(first.pruned, vec![ReplicaId::new("gone:1")]);
}

#[test]
fn a_remove_removes_what_the_user_function_had_seen_not_a_concurrent_add() {
    use statehouse_schemas::cloudstate::crdt::OrSetDelta;
    let x = prost_types::Any {
        type_url: "p.cloudstate.io/string".into(),
        value: b"x".to_vec(),
    };
    let add_x = delta(crdt_delta::Delta::Orset(OrSetDelta {
        added: vec![x.clone()],
        ..OrSetDelta::default()
    }));
    let there = ReplicaId::new("p2:1");
    let seen = statehouse_crdt::protocol::apply(None, &there, &add_x, 1).unwrap();
    let (mut machine, e, _) = fresh(Some(seen.clone()));
    assert_eq!(machine.held, Some(View::ORSet([x.clone().into()].into())));
    send(&mut machine, &e, 1, false);
    // Meanwhile a third replica adds x again (a new dot).
    let again =
        statehouse_crdt::protocol::apply(Some(&seen), &ReplicaId::new("p3:1"), &add_x, 2).unwrap();
    assert!(
        input(
            &mut machine,
            &e,
            Changed {
                fragment: Some(again),
                ..Changed::default()
            }
        )
        .is_empty()
    );
    // The user function clears the set it holds.
    let clear = delta(crdt_delta::Delta::Orset(OrSetDelta {
        cleared: true,
        ..OrSetDelta::default()
    }));
    let actions = on(
        &mut machine,
        &e,
        reply(1, None, update(clear, CrdtWriteConsistency::Local), false),
    );
    let (token, write) = the_write(&actions);
    let Change::Fragment(fragment) = &write.change else {
        panic!("not a fragment")
    };
    let mut everywhere = seen.clone();
    everywhere.join(fragment).unwrap();
    assert_eq!(
        View::of(
            &everywhere,
            &Voters {
                me: &me(),
                live: &BTreeSet::new()
            }
        ),
        View::ORSet(BTreeSet::new()),
        "the remove takes the element the user function had seen"
    );
    // Once written, the concurrent add reaches the user function: x is back.
    let actions = machine.written(&e, token, Ok(None));
    assert_eq!(
        sent_delta(&actions),
        Some(delta(crdt_delta::Delta::Orset(OrSetDelta {
            added: vec![x],
            ..OrSetDelta::default()
        })))
    );
}
