//! Pruning a departed replica keeps every value, and a late fragment that still names it
//! changes nothing.

use std::collections::BTreeSet;

use statehouse_crdt::protocol::{View, Voters, apply};
use statehouse_crdt::{ReplicaId, State, Type};
use statehouse_schemas::cloudstate::crdt::{
    CrdtDelta, GCounterDelta, OrMapDelta, OrMapEntryDelta, PnCounterDelta, VoteDelta, crdt_delta,
};

fn r(name: &str) -> ReplicaId {
    ReplicaId::new(name)
}

fn delta(d: crdt_delta::Delta) -> CrdtDelta {
    CrdtDelta { delta: Some(d) }
}

/// Replica `who` applies `d` to `state` and the fragment is joined; returns the fragment.
fn step(state: &mut Option<State>, who: &ReplicaId, d: CrdtDelta) -> State {
    let fragment = apply(state.as_ref(), who, &d, 1).expect("a valid delta");
    match state {
        Some(s) => s.join(&fragment).expect("same type"),
        None => *state = Some(fragment.clone()),
    }
    fragment
}

fn view(state: &State, me: &ReplicaId, live: &[&str]) -> View {
    let live: BTreeSet<ReplicaId> = live.iter().map(|n| r(n)).collect();
    View::of(state, &Voters { me, live: &live })
}

#[test]
fn counters_keep_what_a_pruned_replica_counted() {
    let (a, b) = (r("a:1"), r("b:1"));
    let mut g = None;
    let late = step(
        &mut g,
        &a,
        delta(crdt_delta::Delta::Gcounter(GCounterDelta { increment: 5 })),
    );
    step(
        &mut g,
        &b,
        delta(crdt_delta::Delta::Gcounter(GCounterDelta { increment: 3 })),
    );
    let mut g = g.unwrap();
    g.prune(&a);
    assert_eq!(view(&g, &b, &["b:1"]), View::GCounter(8));
    assert_eq!(g.replicas(), BTreeSet::from([b.clone()]));
    // A fragment of `a` arriving after the prune is stripped and changes nothing.
    let mut late = late;
    late.strip(&BTreeSet::from([a.clone()]));
    g.join(&late).unwrap();
    assert_eq!(view(&g, &b, &["b:1"]), View::GCounter(8));
    // A second prune of another replica adds to the same slot.
    step(
        &mut Some(g.clone()),
        &b,
        delta(crdt_delta::Delta::Gcounter(GCounterDelta { increment: 0 })),
    );
    g.prune(&b);
    assert_eq!(view(&g, &r("c:1"), &["c:1"]), View::GCounter(8));
    assert!(g.replicas().is_empty());

    let mut pn = None;
    step(
        &mut pn,
        &a,
        delta(crdt_delta::Delta::Pncounter(PnCounterDelta { change: -7 })),
    );
    step(
        &mut pn,
        &b,
        delta(crdt_delta::Delta::Pncounter(PnCounterDelta { change: 2 })),
    );
    step(
        &mut pn,
        &a,
        delta(crdt_delta::Delta::Pncounter(PnCounterDelta { change: 4 })),
    );
    let mut pn = pn.unwrap();
    pn.prune(&a);
    assert_eq!(view(&pn, &b, &["b:1"]), View::PNCounter(-1));
}

#[test]
fn a_pruned_replica_no_longer_votes_and_maps_prune_their_values() {
    let (a, b) = (r("a:1"), r("b:1"));
    let mut v = None;
    step(
        &mut v,
        &a,
        delta(crdt_delta::Delta::Vote(VoteDelta {
            self_vote: true,
            ..Default::default()
        })),
    );
    let mut v = v.unwrap();
    v.prune(&a);
    assert_eq!(
        view(&v, &b, &["a:1", "b:1"]),
        View::Vote {
            self_vote: false,
            votes_for: 0,
            total_voters: 2
        }
    );

    let key = prost_types::Any {
        type_url: "type.googleapis.com/K".into(),
        value: b"k".to_vec(),
    };
    let inc = |n| OrMapDelta {
        added: vec![OrMapEntryDelta {
            key: Some(key.clone()),
            delta: Some(delta(crdt_delta::Delta::Gcounter(GCounterDelta {
                increment: n,
            }))),
        }],
        ..Default::default()
    };
    let mut m = None;
    step(&mut m, &a, delta(crdt_delta::Delta::Ormap(inc(2))));
    step(&mut m, &b, delta(crdt_delta::Delta::Ormap(inc(5))));
    let mut m = m.unwrap();
    let before = view(&m, &b, &["b:1"]);
    m.prune(&a);
    assert_eq!(view(&m, &b, &["b:1"]), before);
    assert_eq!(m.kind(), Type::ORMap);
}
