//! The laws every CRDT type must keep, on states reached by random histories: user-function
//! deltas applied at three replicas through `protocol::apply`, with random merges in between.
//!
//! * joins are commutative, associative and idempotent;
//! * a fragment joined into the state it was computed from gives the state the user function
//!   expects (its view after its own delta);
//! * the protocol delta `diff(old, new)` applied to `old` gives `new`;
//! * the encoding is canonical: equal states, equal bytes; decoding gives the state back.
//!
//! 10,000 cases per type (`PROPTEST_CASES` overrides).

use std::collections::BTreeSet;

use proptest::prelude::*;
use statehouse_crdt::protocol::{View, Voters, apply, diff};
use statehouse_crdt::{ReplicaId, State, Type, codec};
use statehouse_schemas::cloudstate::crdt::{
    CrdtClock, CrdtDelta, FlagDelta, GCounterDelta, GSetDelta, LwwRegisterDelta, OrMapDelta,
    OrMapEntryDelta, OrSetDelta, PnCounterDelta, VoteDelta, crdt_delta,
};

const REPLICAS: usize = 3;

fn replica(i: usize) -> ReplicaId {
    ReplicaId::new(format!("r{i}"))
}

fn elem(i: u8) -> prost_types::Any {
    prost_types::Any {
        type_url: "p.cloudstate.io/string".into(),
        value: vec![0x0a, 1, b'a' + i],
    }
}

fn delta(d: crdt_delta::Delta) -> CrdtDelta {
    CrdtDelta { delta: Some(d) }
}

/// One step of a history.
#[derive(Clone, Debug)]
enum Action {
    /// The user function at `replica` sends `delta`.
    Op { replica: usize, delta: CrdtDelta },
    /// `to` merges everything `from` has.
    Sync { from: usize, to: usize },
}

fn op_of(kind: Type) -> BoxedStrategy<CrdtDelta> {
    let e = 0u8..4;
    match kind {
        Type::GCounter => (0u64..10)
            .prop_map(|n| delta(crdt_delta::Delta::Gcounter(GCounterDelta { increment: n })))
            .boxed(),
        Type::PNCounter => (-10i64..10)
            .prop_map(|n| delta(crdt_delta::Delta::Pncounter(PnCounterDelta { change: n })))
            .boxed(),
        Type::GSet => proptest::collection::vec(e, 0..3)
            .prop_map(|v| {
                delta(crdt_delta::Delta::Gset(GSetDelta {
                    added: v.into_iter().map(elem).collect(),
                }))
            })
            .boxed(),
        Type::ORSet => (
            any::<bool>(),
            proptest::collection::vec(e.clone(), 0..3),
            proptest::collection::vec(e, 0..3),
        )
            .prop_map(|(cleared, removed, added)| {
                delta(crdt_delta::Delta::Orset(OrSetDelta {
                    cleared: cleared && removed.is_empty(),
                    removed: removed.into_iter().map(elem).collect(),
                    added: added.into_iter().map(elem).collect(),
                }))
            })
            .boxed(),
        Type::LwwRegister => (e, 0i32..4, -5i64..5)
            .prop_map(|(v, clock, custom)| {
                delta(crdt_delta::Delta::Lwwregister(LwwRegisterDelta {
                    value: Some(elem(v)),
                    clock: CrdtClock::try_from(clock).unwrap() as i32,
                    custom_clock_value: custom,
                }))
            })
            .boxed(),
        Type::Flag => Just(delta(crdt_delta::Delta::Flag(FlagDelta { value: true }))).boxed(),
        Type::ORMap => {
            // Keys 0 and 1 hold GCounters, keys 2 and 3 ORSets (a key keeps its type).
            let entry = (0u8..4, op_of(Type::GCounter), op_of(Type::ORSet)).prop_map(
                |(k, counter, set)| OrMapEntryDelta {
                    key: Some(elem(k)),
                    delta: Some(if k < 2 { counter } else { set }),
                },
            );
            (
                any::<bool>(),
                proptest::collection::vec(0u8..4, 0..2),
                proptest::collection::vec(entry, 0..3),
            )
                .prop_map(|(cleared, removed, updated)| {
                    delta(crdt_delta::Delta::Ormap(OrMapDelta {
                        cleared: cleared && removed.is_empty(),
                        removed: removed.into_iter().map(elem).collect(),
                        updated,
                        added: Vec::new(),
                    }))
                })
                .boxed()
        }
        Type::Vote => any::<bool>()
            .prop_map(|v| {
                delta(crdt_delta::Delta::Vote(VoteDelta {
                    self_vote: v,
                    ..VoteDelta::default()
                }))
            })
            .boxed(),
    }
}

fn history(kind: Type) -> impl Strategy<Value = Vec<Action>> {
    let action = prop_oneof![
        3 => (0..REPLICAS, op_of(kind)).prop_map(|(replica, delta)| Action::Op { replica, delta }),
        1 => (0..REPLICAS, 0..REPLICAS).prop_map(|(from, to)| Action::Sync { from, to }),
    ];
    proptest::collection::vec(action, 1..24)
}

/// What a history leaves: every replica's state, and every (state before, fragment, delta,
/// replica) of the user-function deltas applied.
struct Run {
    states: Vec<State>,
    steps: Vec<(State, State, CrdtDelta, usize)>,
}

fn run(kind: Type, actions: &[Action]) -> Run {
    let mut states = vec![State::bottom(kind); REPLICAS];
    let mut steps = Vec::new();
    for (t, action) in actions.iter().enumerate() {
        match action {
            Action::Op { replica: r, delta } => {
                let before = states[*r].clone();
                let fragment = apply(Some(&before), &replica(*r), delta, 1_000 + t as i64)
                    .expect("the generated deltas are valid");
                states[*r].join(&fragment).unwrap();
                steps.push((before, fragment, delta.clone(), *r));
            }
            Action::Sync { from, to } => {
                let from = states[*from].clone();
                states[*to].join(&from).unwrap();
            }
        }
    }
    Run { states, steps }
}

fn join(a: &State, b: &State) -> State {
    let mut out = a.clone();
    out.join(b).unwrap();
    out
}

fn live() -> BTreeSet<ReplicaId> {
    (0..REPLICAS).map(replica).collect()
}

fn laws(kind: Type, actions: &[Action]) -> Result<(), TestCaseError> {
    let Run { states, steps } = run(kind, actions);
    let (a, b, c) = (&states[0], &states[1], &states[2]);
    // Merge laws.
    prop_assert_eq!(join(a, b), join(b, a), "commutative");
    prop_assert_eq!(join(&join(a, b), c), join(a, &join(b, c)), "associative");
    prop_assert_eq!(join(a, a), a.clone(), "idempotent");
    // Full exchange converges, and encodes the same.
    let all = join(&join(a, b), c);
    let other_order = join(&join(c, a), b);
    prop_assert_eq!(
        codec::encode(&all),
        codec::encode(&other_order),
        "canonical bytes"
    );
    prop_assert_eq!(
        codec::decode(&codec::encode(&all)).unwrap(),
        all.clone(),
        "round trip"
    );
    let live = live();
    for (before, fragment, delta, r) in &steps {
        // delta ⊔ state = the state the user function expects.
        let after = join(before, fragment);
        let me = replica(*r);
        let voters = Voters {
            me: &me,
            live: &live,
        };
        let expected = View::of(before, &voters)
            .applied(delta)
            .expect("a fitting delta");
        let got = View::of(&after, &voters);
        match (&got, &expected, delta.delta.as_ref()) {
            // A write whose clock is not past the register's (REVERSE: the earliest write wins;
            // CUSTOM: the user function's clock may go back) leaves the register as it was:
            // the user function is then told the value that won.
            (_, _, Some(crdt_delta::Delta::Lwwregister(d)))
                if matches!(
                    CrdtClock::try_from(d.clock),
                    Ok(CrdtClock::Reverse | CrdtClock::Custom)
                ) =>
            {
                let before_view = View::of(before, &voters);
                prop_assert!(got == expected || got == before_view, "{got:?}");
            }
            // votes_for and total_voters are the processor's to tell.
            (
                View::Vote { self_vote, .. },
                View::Vote {
                    self_vote: expected,
                    ..
                },
                _,
            ) => prop_assert_eq!(self_vote, expected, "own vote"),
            _ => prop_assert_eq!(got, expected, "fragment ⊔ state"),
        }
        prop_assert_eq!(
            join(&after, fragment),
            after.clone(),
            "a fragment joins once"
        );
        // Fragments are states too: they merge in any order with the same result.
        prop_assert_eq!(
            join(&join(before, fragment), &all),
            join(&all, &join(fragment, before))
        );
    }
    // The difference told to a user function brings what it holds up to date (states only
    // grow: what it holds is an earlier state of the replica).
    for x in &states {
        for y in &states {
            let me = replica(0);
            let voters = Voters {
                me: &me,
                live: &live,
            };
            let (old, new) = (View::of(x, &voters), View::of(&join(x, y), &voters));
            match diff(Some(&old), &new) {
                Some(d) => prop_assert_eq!(old.applied(&d).expect("fits"), new.clone(), "diff"),
                None => prop_assert_eq!(old.clone(), new.clone(), "no diff only for equal views"),
            }
            // At init (nothing held), the delta is the whole state.
            let init = diff(None, &new).expect("init always tells the type");
            prop_assert_eq!(
                View::bottom(kind).applied(&init).expect("fits"),
                new,
                "init"
            );
        }
    }
    Ok(())
}

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(10_000);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

macro_rules! laws_of {
    ($($name:ident => $kind:expr),* $(,)?) => {$(
        proptest! {
            #![proptest_config(config())]
            #[test]
            fn $name(actions in history($kind)) {
                laws($kind, &actions)?;
            }
        }
    )*};
}

laws_of! {
    gcounter => Type::GCounter,
    pncounter => Type::PNCounter,
    gset => Type::GSet,
    orset => Type::ORSet,
    lwwregister => Type::LwwRegister,
    flag => Type::Flag,
    ormap => Type::ORMap,
    vote => Type::Vote,
}
