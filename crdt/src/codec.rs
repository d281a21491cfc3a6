//! The canonical encoding of states: `statehouse.crdt.v1.State` (`schemas/proto/statehouse/crdt/
//! v1/state.proto`) with every repeated field sorted and without duplicates, so equal states
//! have equal bytes.

use std::collections::BTreeMap;

use bytes::Bytes;
use prost::Message;
use statehouse_schemas::statehouse::crdt::v1 as pb;

use crate::dot::{CausalContext, Dot, ReplicaId};
use crate::state::{Elem, Flag, GCounter, GSet, LwwRegister, ORMap, ORSet, PNCounter, State, Vote};

/// A state's bytes that do not decode.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("not a statehouse.crdt.v1.State: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("a CRDT state without a type")]
    Empty,
    #[error("a dot without a replica or with counter 0")]
    BadDot,
}

/// The canonical bytes of `state`.
pub fn encode(state: &State) -> Bytes {
    Bytes::from(to_proto(state).encode_to_vec())
}

/// The state `bytes` hold.
pub fn decode(bytes: &[u8]) -> Result<State, Error> {
    from_proto(pb::State::decode(bytes)?)
}

fn any(elem: &Elem) -> prost_types::Any {
    prost_types::Any::from(elem)
}

fn counts(counter: &GCounter) -> Vec<pb::ReplicaCount> {
    counter
        .counts
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(r, n)| pb::ReplicaCount {
            replica: r.to_string(),
            count: *n,
        })
        .collect()
}

fn dot(d: &Dot) -> pb::Dot {
    pb::Dot {
        replica: d.replica.to_string(),
        counter: d.counter,
    }
}

fn context(c: &CausalContext) -> Option<pb::CausalContext> {
    (!c.is_empty()).then(|| pb::CausalContext {
        versions: c
            .versions()
            .iter()
            .map(|(r, n)| pb::ReplicaCount {
                replica: r.to_string(),
                count: *n,
            })
            .collect(),
        dots: c.cloud().iter().map(dot).collect(),
    })
}

/// The proto form of `state` (canonical).
pub fn to_proto(state: &State) -> pb::State {
    use pb::state::State as S;
    let inner = match state {
        State::GCounter(c) => S::Gcounter(pb::GCounter { counts: counts(c) }),
        State::PNCounter(c) => S::Pncounter(pb::PnCounter {
            increments: counts(&c.increments),
            decrements: counts(&c.decrements),
        }),
        State::GSet(s) => S::Gset(pb::GSet {
            elements: s.elements.iter().map(any).collect(),
        }),
        State::ORSet(s) => S::Orset(pb::OrSet {
            entries: s
                .entries
                .iter()
                .map(|(e, dots)| pb::OrSetEntry {
                    element: Some(any(e)),
                    dots: dots.iter().map(dot).collect(),
                })
                .collect(),
            context: context(&s.context),
        }),
        State::LwwRegister(r) => S::Lwwregister(match &r.value {
            None => pb::LwwRegister::default(),
            Some((value, clock, replica)) => pb::LwwRegister {
                value: Some(any(value)),
                clock: *clock,
                replica: replica.to_string(),
            },
        }),
        State::Flag(f) => S::Flag(pb::Flag { value: f.value }),
        State::ORMap(m) => S::Ormap(pb::OrMap {
            entries: m
                .entries
                .iter()
                .map(|(key, values)| pb::OrMapEntry {
                    key: Some(any(key)),
                    values: values
                        .iter()
                        .map(|(d, v)| pb::OrMapValue {
                            dot: Some(dot(d)),
                            value: Some(to_proto(v)),
                        })
                        .collect(),
                })
                .collect(),
            context: context(&m.context),
        }),
        State::Vote(v) => S::Vote(pb::Vote {
            votes: v
                .votes
                .iter()
                .map(|(r, (version, vote))| pb::ReplicaVote {
                    replica: r.to_string(),
                    version: *version,
                    vote: *vote,
                })
                .collect(),
        }),
    };
    pb::State { state: Some(inner) }
}

fn elem(any: Option<prost_types::Any>) -> Elem {
    any.map(Elem::from)
        .unwrap_or_else(|| Elem::new("", Bytes::new()))
}

fn replica(id: String) -> ReplicaId {
    ReplicaId::new(id)
}

fn from_dot(d: pb::Dot) -> Result<Dot, Error> {
    if d.replica.is_empty() || d.counter == 0 {
        return Err(Error::BadDot);
    }
    Ok(Dot::new(replica(d.replica), d.counter))
}

fn from_counts(counts: Vec<pb::ReplicaCount>) -> GCounter {
    let mut counter = GCounter::default();
    for c in counts {
        let n = counter.counts.entry(replica(c.replica)).or_default();
        *n = (*n).max(c.count);
    }
    counter.counts.retain(|_, n| *n > 0);
    counter
}

fn from_context(c: Option<pb::CausalContext>) -> Result<CausalContext, Error> {
    let Some(c) = c else {
        return Ok(CausalContext::default());
    };
    let dots = c
        .dots
        .into_iter()
        .map(from_dot)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(CausalContext::from_parts(
        c.versions
            .into_iter()
            .map(|v| (replica(v.replica), v.count)),
        dots,
    ))
}

/// The state a proto holds.
pub fn from_proto(state: pb::State) -> Result<State, Error> {
    use pb::state::State as S;
    Ok(match state.state.ok_or(Error::Empty)? {
        S::Gcounter(c) => State::GCounter(from_counts(c.counts)),
        S::Pncounter(c) => State::PNCounter(PNCounter {
            increments: from_counts(c.increments),
            decrements: from_counts(c.decrements),
        }),
        S::Gset(s) => State::GSet(GSet {
            elements: s.elements.into_iter().map(|e| elem(Some(e))).collect(),
        }),
        S::Orset(s) => {
            let mut set = ORSet {
                context: from_context(s.context)?,
                ..ORSet::default()
            };
            for entry in s.entries {
                let dots = entry
                    .dots
                    .into_iter()
                    .map(from_dot)
                    .collect::<Result<Vec<_>, _>>()?;
                if !dots.is_empty() {
                    set.entries
                        .entry(elem(entry.element))
                        .or_default()
                        .extend(dots);
                }
            }
            State::ORSet(set)
        }
        S::Lwwregister(r) => State::LwwRegister(LwwRegister {
            value: r
                .value
                .map(|v| (Elem::from(v), r.clock, replica(r.replica))),
        }),
        S::Flag(f) => State::Flag(Flag { value: f.value }),
        S::Ormap(m) => {
            let mut map = ORMap {
                context: from_context(m.context)?,
                ..ORMap::default()
            };
            for entry in m.entries {
                let mut values = BTreeMap::new();
                for v in entry.values {
                    let d = from_dot(v.dot.ok_or(Error::BadDot)?)?;
                    let value = from_proto(v.value.ok_or(Error::Empty)?)?;
                    values.insert(d, value);
                }
                if !values.is_empty() {
                    map.entries
                        .entry(elem(entry.key))
                        .or_default()
                        .extend(values);
                }
            }
            State::ORMap(map)
        }
        S::Vote(v) => {
            let mut vote = Vote::default();
            for r in v.votes {
                let entry = vote.votes.entry(replica(r.replica)).or_insert((0, false));
                if (r.version, r.vote) > *entry {
                    *entry = (r.version, r.vote);
                }
            }
            State::Vote(vote)
        }
    })
}
