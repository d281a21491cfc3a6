//! CRDT entities with the official Go SDK's TCK user function (go-support v0.3.0
//! `tck/cmd/tck_eventsourced`, model `tck/crdt2`) behind Statehouse — processor, gateway, real
//! Kafka and Cassandra — checked through what clients see, the way the Cloudstate TCK's CRDT
//! proxy tests drive a proxy:
//!
//! * all eight types over gRPC: the values after updates (every write consistency), the same
//!   values after passivation (init carries the full state as a delta: the SDK rebuilds from
//!   it) and after `kill -9` and restart of the processor (bootstrap from Cassandra + topic);
//! * "verify state changes" / "failures" / "forwards and side effects" / "HTTP API": replies,
//!   UNKNOWN and HTTP 500 with the user function's text, the entity staying up after a
//!   failure, forwards answered by the other service, delete then `Entity deleted` (also after
//!   the restart);
//! * "streamed responses for connection tracking" (Vote): a monitor stream sees 1 of 1 when a
//!   connection votes and 0 of 1 when that connection's client cancels — the cancellation goes
//!   to the user function exactly once (the Go SDK crashes on a second) and its state action
//!   applies; nothing the user function changed itself is echoed back (it would double count);
//! * "passivation timeout": the configured entity passivates and rehydrates.

use std::time::{Duration, Instant};

use statehouse_e2e::proto::tck::crdt::crdt_configured_client::CrdtConfiguredClient;
use statehouse_e2e::proto::tck::crdt::crdt_tck_model_client::CrdtTckModelClient;
use statehouse_e2e::proto::tck::crdt::crdt_two_client::CrdtTwoClient;
use statehouse_e2e::proto::tck::crdt::{
    self as model, Request, RequestAction, Response, State, StreamedRequest, Update,
    UpdateWriteConsistency, request_action, state, update,
};
use statehouse_test_support::http;
use statehouse_test_support::stack::{Options, Stack};
use statehouse_test_support::user_function::Kind;
use tonic::transport::Channel;

const SERVICE: &str = "tck";

fn request(id: &str, actions: Vec<request_action::Action>) -> Request {
    Request {
        id: id.into(),
        actions: actions
            .into_iter()
            .map(|a| RequestAction { action: Some(a) })
            .collect(),
    }
}

fn up(u: update::Update) -> request_action::Action {
    up_at(u, UpdateWriteConsistency::Local)
}

fn up_at(u: update::Update, consistency: UpdateWriteConsistency) -> request_action::Action {
    request_action::Action::Update(Update {
        update: Some(u),
        write_consistency: consistency as i32,
    })
}

fn delete() -> request_action::Action {
    request_action::Action::Delete(model::Delete {})
}

fn gcounter(n: u64) -> update::Update {
    update::Update::Gcounter(model::GCounterUpdate { increment: n })
}

fn pncounter(n: i64) -> update::Update {
    update::Update::Pncounter(model::PnCounterUpdate { change: n })
}

fn orset(action: model::or_set_update::Action) -> update::Update {
    update::Update::Orset(model::OrSetUpdate {
        action: Some(action),
    })
}

fn vote(v: bool) -> Update {
    Update {
        update: Some(update::Update::Vote(model::VoteUpdate { self_vote: v })),
        write_consistency: 0,
    }
}

fn value(s: state::Value) -> Option<State> {
    Some(State { value: Some(s) })
}

fn vote_state(self_vote: bool, votes_for: i32, total_voters: i32) -> Option<State> {
    value(state::Value::Vote(model::VoteValue {
        self_vote,
        votes_for,
        total_voters,
    }))
}

async fn process(
    mut client: CrdtTckModelClient<Channel>,
    r: Request,
) -> Result<Response, tonic::Status> {
    let mut r = tonic::Request::new(r);
    r.set_timeout(Duration::from_secs(30));
    client.process(r).await.map(tonic::Response::into_inner)
}

async fn state_of(client: &CrdtTckModelClient<Channel>, r: Request) -> Option<State> {
    let id = r.id.clone();
    process(client.clone(), r)
        .await
        .unwrap_or_else(|e| panic!("{id}: {e:?}"))
        .state
}

/// An entity, its requests (each a list of actions) and the value they lead to.
type Case = (
    &'static str,
    Vec<Vec<request_action::Action>>,
    Option<State>,
);

/// The eight types. The model takes the CRDT type from the entity id's prefix.
fn all_types() -> Vec<Case> {
    use model::or_map_update::Action as MapAction;
    use model::or_set_update::Action as SetAction;
    let s = |v: &str| v.to_string();
    vec![
        (
            "GCounter-t1",
            vec![
                vec![up(gcounter(1)), up(gcounter(2))],
                vec![up_at(gcounter(4), UpdateWriteConsistency::Majority)],
                vec![up_at(gcounter(8), UpdateWriteConsistency::All)],
            ],
            value(state::Value::Gcounter(model::GCounterValue { value: 15 })),
        ),
        (
            "PNCounter-t2",
            vec![
                vec![up(pncounter(5)), up(pncounter(-7))],
                vec![up(pncounter(1))],
            ],
            value(state::Value::Pncounter(model::PnCounterValue { value: -1 })),
        ),
        (
            "GSet-t3",
            vec![
                vec![up(update::Update::Gset(model::GSetUpdate { add: s("b") }))],
                vec![
                    up(update::Update::Gset(model::GSetUpdate { add: s("a") })),
                    up(update::Update::Gset(model::GSetUpdate { add: s("b") })),
                ],
            ],
            value(state::Value::Gset(model::GSetValue {
                elements: vec![s("a"), s("b")],
            })),
        ),
        (
            "ORSet-t4",
            vec![
                vec![
                    up(orset(SetAction::Add(s("a")))),
                    up(orset(SetAction::Add(s("b")))),
                    up(orset(SetAction::Add(s("c")))),
                ],
                vec![up(orset(SetAction::Remove(s("a"))))],
                vec![
                    up(orset(SetAction::Clear(true))),
                    up(orset(SetAction::Add(s("d")))),
                ],
                vec![up(orset(SetAction::Add(s("e"))))],
            ],
            value(state::Value::Orset(model::OrSetValue {
                elements: vec![s("d"), s("e")],
            })),
        ),
        (
            "LWWRegister-t5",
            vec![
                vec![up(update::Update::Lwwregister(model::LwwRegisterUpdate {
                    value: s("one"),
                    clock: None,
                }))],
                vec![up(update::Update::Lwwregister(model::LwwRegisterUpdate {
                    value: s("two"),
                    clock: Some(model::LwwRegisterClock {
                        clock_type: model::LwwRegisterClockType::CustomAutoIncrement as i32,
                        custom_clock_value: 7,
                    }),
                }))],
            ],
            value(state::Value::Lwwregister(model::LwwRegisterValue {
                value: s("two"),
            })),
        ),
        (
            "Flag-t6",
            vec![vec![], vec![up(update::Update::Flag(model::FlagUpdate {}))]],
            value(state::Value::Flag(model::FlagValue { value: true })),
        ),
        (
            "ORMap-t7",
            vec![
                vec![
                    up(update::Update::Ormap(Box::new(model::OrMapUpdate {
                        action: Some(MapAction::Update(Box::new(model::OrMapEntryUpdate {
                            key: s("PNCounter-k1"),
                            update: Some(Box::new(Update {
                                update: Some(pncounter(3)),
                                write_consistency: 0,
                            })),
                        }))),
                    }))),
                    up(update::Update::Ormap(Box::new(model::OrMapUpdate {
                        action: Some(MapAction::Update(Box::new(model::OrMapEntryUpdate {
                            key: s("GSet-k2"),
                            update: Some(Box::new(Update {
                                update: Some(update::Update::Gset(model::GSetUpdate {
                                    add: s("x"),
                                })),
                                write_consistency: 0,
                            })),
                        }))),
                    }))),
                    up(update::Update::Ormap(Box::new(model::OrMapUpdate {
                        action: Some(MapAction::Add(s("Flag-k3"))),
                    }))),
                ],
                vec![
                    up(update::Update::Ormap(Box::new(model::OrMapUpdate {
                        action: Some(MapAction::Update(Box::new(model::OrMapEntryUpdate {
                            key: s("PNCounter-k1"),
                            update: Some(Box::new(Update {
                                update: Some(pncounter(-1)),
                                write_consistency: 0,
                            })),
                        }))),
                    }))),
                    up(update::Update::Ormap(Box::new(model::OrMapUpdate {
                        action: Some(MapAction::Remove(s("Flag-k3"))),
                    }))),
                ],
            ],
            value(state::Value::Ormap(model::OrMapValue {
                entries: vec![
                    model::OrMapEntryValue {
                        key: s("GSet-k2"),
                        value: value(state::Value::Gset(model::GSetValue {
                            elements: vec![s("x")],
                        })),
                    },
                    model::OrMapEntryValue {
                        key: s("PNCounter-k1"),
                        value: value(state::Value::Pncounter(model::PnCounterValue { value: 2 })),
                    },
                ],
            })),
        ),
        (
            "Vote-t8",
            vec![vec![up(update::Update::Vote(model::VoteUpdate {
                self_vote: true,
            }))]],
            vote_state(true, 1, 1),
        ),
    ]
}

/// The next element of a stream (within 10 s).
async fn next(stream: &mut tonic::Streaming<Response>) -> Option<State> {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("a stream element within 10 s")
        .expect("the stream is ok")
        .expect("the stream is open")
        .state
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

/// Retry `f` until it gives `Ok` (a processor that just restarted serves CRDTs once it caught
/// up with the topic).
async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) if Instant::now() < deadline => {
                eprintln!("{what}: {e:?}; retrying");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Err(e) => panic!("{what}: {e:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_tck_crdt_entities() {
    let mut options = Options::new(Kind::GoTck);
    options.service = SERVICE.into();
    // Passivate idle entities after 1.5 s (the model's entity types name no timeout), so
    // rehydration is exercised; streams keep their entity active.
    options
        .processor_sets
        .push("processor.passivation-timeout-ms=1500".into());
    let mut stack = Stack::start(options);
    stack.wait_ready(0, Duration::from_secs(120));
    let channel = Channel::from_shared(format!("http://{}", stack.gateway_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut tck = CrdtTckModelClient::new(channel.clone());

    // All eight types: the value after each type's updates.
    let types = all_types();
    for (id, requests, expected) in &types {
        let mut last = None;
        for actions in requests {
            last = eventually(id, || process(tck.clone(), request(id, actions.clone())))
                .await
                .state;
        }
        assert_eq!(&last, expected, "{id}");
    }
    // After passivation the entities start again from the replicated state: the init's delta
    // rebuilds the value in the SDK.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for (id, _, expected) in &types {
        assert_eq!(
            &state_of(&tck, request(id, vec![])).await,
            expected,
            "{id} after passivation"
        );
    }

    // The same values over HTTP/JSON (proto3 JSON, as the TCK's HTTP test reads them).
    for (id, json) in [
        ("GCounter-t1", r#"{"state":{"gcounter":{"value":"15"}}}"#),
        ("PNCounter-t2", r#"{"state":{"pncounter":{"value":"-1"}}}"#),
        ("GSet-t3", r#"{"state":{"gset":{"elements":["a","b"]}}}"#),
        ("ORSet-t4", r#"{"state":{"orset":{"elements":["d","e"]}}}"#),
        (
            "LWWRegister-t5",
            r#"{"state":{"lwwregister":{"value":"two"}}}"#,
        ),
        ("Flag-t6", r#"{"state":{"flag":{"value":true}}}"#),
        (
            "ORMap-t7",
            r#"{"state":{"ormap":{"entries":[{"key":"GSet-k2","value":{"gset":{"elements":["x"]}}},{"key":"PNCounter-k1","value":{"pncounter":{"value":"2"}}}]}}}"#,
        ),
        (
            "Vote-t8",
            r#"{"state":{"vote":{"selfVote":true,"votesFor":1,"totalVoters":1}}}"#,
        ),
    ] {
        let answer = post(&stack, &format!("/tck/model/crdt/{id}"), "{}");
        assert_eq!(
            (answer.status, answer.body.as_str()),
            (200, json),
            "{id}: {answer:?}"
        );
    }

    // "verify state changes" and delete.
    let id = "PNCounter-81";
    let pn = |v| value(state::Value::Pncounter(model::PnCounterValue { value: v }));
    assert_eq!(state_of(&tck, request(id, vec![])).await, pn(0));
    assert_eq!(
        state_of(
            &tck,
            request(
                id,
                vec![up(pncounter(1)), up(pncounter(-2)), up(pncounter(3))]
            )
        )
        .await,
        pn(2)
    );
    assert_eq!(
        state_of(
            &tck,
            request(
                id,
                vec![up(pncounter(4)), up(pncounter(-5)), up(pncounter(6))]
            )
        )
        .await,
        pn(7)
    );
    assert_eq!(state_of(&tck, request(id, vec![delete()])).await, pn(7));
    for _ in 0..2 {
        let deleted = process(tck.clone(), request(id, vec![])).await.unwrap_err();
        assert_eq!(
            (deleted.code(), deleted.message()),
            (tonic::Code::Unknown, "Entity deleted")
        );
    }

    // "verify forwards and side effects".
    let id = "GSet-82";
    let one = value(state::Value::Gset(model::GSetValue {
        elements: vec!["one".into()],
    }));
    assert_eq!(
        state_of(
            &tck,
            request(
                id,
                vec![up(update::Update::Gset(model::GSetUpdate {
                    add: "one".into()
                }))]
            )
        )
        .await,
        one
    );
    let forwarded = process(
        tck.clone(),
        request(
            id,
            vec![request_action::Action::Forward(model::Forward {
                id: id.into(),
            })],
        ),
    )
    .await
    .unwrap();
    assert_eq!(forwarded, Response { state: None }, "CrdtTwo's answer");
    assert_eq!(
        state_of(
            &tck,
            request(
                id,
                vec![request_action::Action::Effect(model::Effect {
                    id: id.into(),
                    synchronous: false,
                })]
            )
        )
        .await,
        one
    );
    assert_eq!(state_of(&tck, request(id, vec![delete()])).await, one);
    let mut two = CrdtTwoClient::new(channel.clone());
    assert_eq!(
        two.call(request(id, vec![delete()]))
            .await
            .unwrap()
            .into_inner(),
        Response { state: None }
    );

    // "verify failures": UNKNOWN with the user function's text; the entity stays up.
    let id = "GCounter-83";
    let g = |v| value(state::Value::Gcounter(model::GCounterValue { value: v }));
    assert_eq!(
        state_of(&tck, request(id, vec![up(gcounter(42))])).await,
        g(42)
    );
    let failed = process(
        tck.clone(),
        request(
            id,
            vec![request_action::Action::Fail(model::Fail {
                message: "expected failure".into(),
            })],
        ),
    )
    .await
    .unwrap_err();
    assert_eq!(
        (failed.code(), failed.message()),
        (tonic::Code::Unknown, "expected failure")
    );
    assert_eq!(state_of(&tck, request(id, vec![])).await, g(42));
    assert_eq!(state_of(&tck, request(id, vec![delete()])).await, g(42));

    // "verify streamed responses for connection tracking" (Vote).
    let id = "Vote-84";
    let mut monitor = tck
        .process_streamed(StreamedRequest {
            id: id.into(),
            ..StreamedRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next(&mut monitor).await, vote_state(false, 0, 1));
    let mut connect_client = tck.clone();
    let mut connect = connect_client
        .process_streamed(StreamedRequest {
            id: id.into(),
            initial_update: Some(vote(true)),
            cancel_update: Some(vote(false)),
            empty: true,
            ..StreamedRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next(&mut monitor).await, vote_state(true, 1, 1));
    assert!(
        tokio::time::timeout(Duration::from_millis(300), connect.message())
            .await
            .is_err(),
        "the connection's call stays open without elements"
    );
    drop(connect);
    assert_eq!(next(&mut monitor).await, vote_state(false, 0, 1));
    drop(monitor);
    // The cancellations were sent once each (a second would crash the Go SDK): the entity
    // still answers, and the connection's cancel update applied.
    assert_eq!(
        eventually("the vote after the cancellations", || process(
            tck.clone(),
            request(id, vec![])
        ))
        .await
        .state,
        vote_state(false, 0, 1)
    );
    assert_eq!(
        state_of(&tck, request(id, vec![delete()])).await,
        vote_state(false, 0, 1)
    );

    // "verify HTTP API".
    let path = "/tck/model/crdt/PNCounter-85";
    let answer = post(&stack, path, "{}");
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (200, r#"{"state":{"pncounter":{"value":"0"}}}"#),
        "{answer:?}"
    );
    let answer = post(
        &stack,
        "/cloudstate.tck.model.crdt.CrdtTwo/Call",
        r#"{"id": "PNCounter-85"}"#,
    );
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (200, "{}"),
        "{answer:?}"
    );
    let answer = post(
        &stack,
        path,
        r#"{"actions": [{"update": {"pncounter": {"change": 42} }}]}"#,
    );
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (200, r#"{"state":{"pncounter":{"value":"42"}}}"#),
        "{answer:?}"
    );
    let answer = post(
        &stack,
        path,
        r#"{"actions": [{"fail": {"message": "expected failure"}}]}"#,
    );
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (500, "expected failure"),
        "{answer:?}"
    );
    let answer = post(
        &stack,
        path,
        r#"{"actions": [{"update": {"pncounter": {"change": -123} }}]}"#,
    );
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (200, r#"{"state":{"pncounter":{"value":"-81"}}}"#),
        "{answer:?}"
    );
    let answer = post(&stack, path, r#"{"actions": [{"delete": {}}]}"#);
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (200, r#"{"state":{"pncounter":{"value":"-81"}}}"#),
        "{answer:?}"
    );
    let answer = post(&stack, path, "{}");
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (500, "Entity deleted"),
        "{answer:?}"
    );

    // "verify passivation timeout": the configured entity (100 ms) passivates and comes back.
    let mut configured = CrdtConfiguredClient::new(channel.clone());
    let id = "Configured-86";
    assert_eq!(
        configured
            .call(request(id, vec![]))
            .await
            .unwrap()
            .into_inner(),
        Response { state: None }
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        configured
            .call(request(id, vec![]))
            .await
            .unwrap()
            .into_inner(),
        Response { state: None }
    );
    let activations = stack.metrics(0, "statehouse_entity_activations_total");
    assert!(
        activations.iter().map(|(_, v)| v).sum::<f64>() >= 2.0,
        "{activations:?}"
    );

    // kill -9 and restart: the processor bootstraps from Cassandra and the topic; every value
    // is the same, and the deleted entities stay deleted.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stack.pods[0].processor.kill9();
    stack.pods[0].processor.restart();
    stack.wait_ready(0, Duration::from_secs(120));
    for (id, _, expected) in &types {
        let got = eventually(id, || process(tck.clone(), request(id, vec![])))
            .await
            .state;
        // A vote belongs to a replica: the restarted processor is a new replica that has not
        // voted, and the old one is not live.
        let expected = if id.starts_with("Vote") {
            &vote_state(false, 0, 1)
        } else {
            expected
        };
        assert_eq!(&got, expected, "{id} after kill -9 and restart");
    }
    for id in [
        "PNCounter-81",
        "GSet-82",
        "GCounter-83",
        "Vote-84",
        "PNCounter-85",
    ] {
        let deleted = eventually(id, || async {
            match process(tck.clone(), request(id, vec![])).await {
                Err(e) if e.code() == tonic::Code::Unknown => Ok(e),
                Err(e) => Err(e),
                Ok(r) => panic!("{id} is deleted, but answered {r:?}"),
            }
        })
        .await;
        assert_eq!(deleted.message(), "Entity deleted", "{id}");
    }
}
