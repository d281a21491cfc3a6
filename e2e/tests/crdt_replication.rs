//! CRDT entities replicated between three processors (each with its own Go TCK user function)
//! through the broadcast topic, with real Kafka and Cassandra. Commands go straight to chosen
//! processors (their internal API), as a gateway that picked them would send them:
//!
//! * concurrent increments on different processors converge to the sum everywhere;
//! * an ORSet add concurrent with a remove of an element the remover had seen keeps the add;
//! * a Vote: connected on A, watched on B, B sees 1 of 3; after `kill -9` of A, 0 of 2 within
//!   the heartbeat timeout (+ 1 s);
//! * a delete on A ends B's streams of the entity and B refuses it with `Entity deleted`;
//! * the service stays writable through the gateway while a processor is dead.

use std::time::{Duration, Instant};

use statehouse_e2e::crdt::{
    Direct, SERVICE, gcounter, next, orset as set, pncounter, request, up, up_at, vote,
};
use statehouse_e2e::proto::tck::crdt::{
    self as model, State, StreamedRequest, Update, UpdateWriteConsistency, request_action, update,
};
use statehouse_test_support::stack::{Options, Stack};
use statehouse_test_support::user_function::Kind;
use tonic::transport::Channel;

const HEARTBEAT_TIMEOUT: Duration = Duration::from_millis(3_000);

fn orset(action: model::or_set_update::Action) -> request_action::Action {
    up(update::Update::Orset(model::OrSetUpdate {
        action: Some(action),
    }))
}

fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal} {pid}");
}

/// Poll `processor` until `id`'s state is `expected` (at most 20 s).
async fn converges(processor: &Direct, id: &str, expected: &Option<State>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = processor.process(request(id, vec![])).await;
        if got.as_ref() == Ok(expected) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{id} did not converge to {expected:?}: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crdts_replicate_between_processors() {
    let mut options = Options::new(Kind::GoTck);
    options.service = SERVICE.into();
    options.processors = 3;
    options.processor_sets.extend([
        "processor.crdt-heartbeat-interval-ms=500".to_string(),
        format!(
            "processor.crdt-heartbeat-timeout-ms={}",
            HEARTBEAT_TIMEOUT.as_millis()
        ),
    ]);
    let mut stack = Stack::start(options);
    for i in 0..3 {
        stack.wait_ready(i, Duration::from_secs(120));
    }
    let p: Vec<Direct> = (0..3)
        .map(|i| Direct::connect(stack.pods[i].internal_port))
        .collect();
    // Every processor serves CRDTs once it caught up with the topic.
    for (i, processor) in p.iter().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(60);
        while let Err(e) = processor.process(request("GCounter-warmup", vec![])).await {
            assert!(
                Instant::now() < deadline,
                "processor {i} serves no CRDTs: {e}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    // Concurrent increments on every processor converge to the sum.
    let id = "GCounter-sum";
    let rounds = 20u64;
    let tasks: Vec<_> = p
        .iter()
        .enumerate()
        .map(|(i, processor)| {
            let processor = processor.clone();
            tokio::spawn(async move {
                for _ in 0..rounds {
                    processor
                        .process(request(
                            id,
                            vec![up(update::Update::Gcounter(model::GCounterUpdate {
                                increment: i as u64 + 1,
                            }))],
                        ))
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let sum = gcounter(rounds * (1 + 2 + 3));
    for processor in &p {
        converges(processor, id, &sum).await;
    }

    // MAJORITY and ALL: once answered, the change is in Kafka; with ALL every live replica
    // applied it before the answer, so the others have it at once.
    let id = "GCounter-all";
    for (n, consistency) in [
        (1u64, UpdateWriteConsistency::Majority),
        (2, UpdateWriteConsistency::All),
        (3, UpdateWriteConsistency::All),
    ] {
        p[0].process(request(
            id,
            vec![up_at(
                update::Update::Gcounter(model::GCounterUpdate { increment: n }),
                consistency,
            )],
        ))
        .await
        .unwrap();
    }
    for processor in &p[1..] {
        assert_eq!(
            processor.process(request(id, vec![])).await,
            Ok(gcounter(6))
        );
    }

    // An add concurrent with a remove of an element the remover had seen keeps the add. To
    // make them concurrent for sure, B's user function is paused while its remove is in
    // flight: B's replica then tells it nothing (no remote change goes to a user function
    // with a command in flight), so its remove is of what it had seen, whatever B's replica
    // receives meanwhile.
    use model::or_set_update::Action as SetAction;
    let id = "ORSet-race";
    p[0].process(request(id, vec![orset(SetAction::Add("x".into()))]))
        .await
        .unwrap();
    for processor in &p {
        converges(processor, id, &set(&["x"])).await;
    }
    let b_uf = stack.pods[1]
        .user_function
        .pid()
        .expect("B's user function runs");
    signal(b_uf, "STOP");
    let remover = p[1].clone();
    let removed = tokio::spawn(async move {
        remover
            .process(request(id, vec![orset(SetAction::Remove("x".into()))]))
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // C adds x anew (its user function holds x, so it clears and adds: a new dot).
    let added = p[2]
        .process(request(
            id,
            vec![
                orset(SetAction::Clear(true)),
                orset(SetAction::Add("x".into())),
            ],
        ))
        .await
        .unwrap();
    assert_eq!(added, set(&["x"]));
    tokio::time::sleep(Duration::from_secs(1)).await;
    signal(b_uf, "CONT");
    assert_eq!(
        removed.await.unwrap().unwrap(),
        set(&[]),
        "B's user function removed x"
    );
    for processor in &p {
        converges(processor, id, &set(&["x"])).await;
    }

    // A delete on A ends B's streams of the entity, and B refuses it afterwards.
    let id = "GCounter-deleted";
    let mut watching = p[1]
        .subscribe(StreamedRequest {
            id: id.into(),
            ..StreamedRequest::default()
        })
        .await;
    assert_eq!(
        next(&mut watching, Duration::from_secs(10)).await,
        Some(gcounter(0))
    );
    p[0].process(request(
        id,
        vec![up(update::Update::Gcounter(model::GCounterUpdate {
            increment: 5,
        }))],
    ))
    .await
    .unwrap();
    assert_eq!(
        next(&mut watching, Duration::from_secs(10)).await,
        Some(gcounter(5))
    );
    p[0].process(request(
        id,
        vec![request_action::Action::Delete(model::Delete {})],
    ))
    .await
    .unwrap();
    assert_eq!(
        next(&mut watching, Duration::from_secs(10)).await,
        None,
        "B's stream ends with the delete"
    );
    for processor in &p {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match processor.process(request(id, vec![])).await {
                Err(e) if e == "Entity deleted" => break,
                other => assert!(
                    Instant::now() < deadline,
                    "{id} not deleted everywhere: {other:?}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // A Vote connected on A and watched on B: 1 of 3; A dies: 0 of 2.
    let id = "Vote-presence";
    let mut monitor = p[1]
        .subscribe(StreamedRequest {
            id: id.into(),
            ..StreamedRequest::default()
        })
        .await;
    // A Vote nobody voted in has no state yet: the user function starts from its own default
    // (itself alone); the first vote brings the replicated state and the live count.
    assert_eq!(
        next(&mut monitor, Duration::from_secs(10)).await,
        Some(vote(false, 0, 1))
    );
    let _connection = p[0]
        .subscribe(StreamedRequest {
            id: id.into(),
            initial_update: Some(Update {
                update: Some(update::Update::Vote(model::VoteUpdate { self_vote: true })),
                write_consistency: 0,
            }),
            empty: true,
            ..StreamedRequest::default()
        })
        .await;
    assert_eq!(
        next(&mut monitor, Duration::from_secs(10)).await,
        Some(vote(false, 1, 3))
    );
    let killed = Instant::now();
    stack.pods[0].processor.kill9();
    let bound = HEARTBEAT_TIMEOUT + Duration::from_secs(1);
    assert_eq!(next(&mut monitor, bound).await, Some(vote(false, 0, 2)));
    eprintln!(
        "A's vote stopped counting {:?} after kill -9",
        killed.elapsed()
    );

    // The service stays writable through the gateway with A dead (A may have owned the
    // partitions of these entities).
    let channel = Channel::from_shared(format!("http://{}", stack.gateway_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut gateway =
        statehouse_e2e::proto::tck::crdt::crdt_tck_model_client::CrdtTckModelClient::new(channel);
    for n in 0..12 {
        let id = format!("PNCounter-alive-{n}");
        let mut r = tonic::Request::new(request(
            &id,
            vec![up(update::Update::Pncounter(model::PnCounterUpdate {
                change: n,
            }))],
        ));
        r.set_timeout(Duration::from_secs(30));
        let state = gateway
            .process(r)
            .await
            .unwrap_or_else(|e| panic!("{id}: {e:?}"));
        assert_eq!(state.into_inner().state, pncounter(n));
    }
}
