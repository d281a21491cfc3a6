//! The Cloudstate protocol's side: what a user function holds of a CRDT ([`View`]), the
//! protocol delta that brings it up to date ([`diff`]), and what a user function's delta means
//! for the real CRDT ([`apply`]: the state fragment to merge and replicate).
//!
//! The protocol is value-based — "increment by 5", "remove x" — and a user function keeps only
//! a plain value; the processor owns the real CRDT. An operation becomes a state fragment at
//! the replica that received it (so duplicates and reordering of fragments are harmless), and
//! the user function is told about changes as the difference between what it holds and the
//! current state.

use std::collections::{BTreeMap, BTreeSet};

use statehouse_schemas::cloudstate::crdt::{
    CrdtClock, CrdtDelta, FlagDelta, GCounterDelta, GSetDelta, LwwRegisterDelta, OrMapDelta,
    OrMapEntryDelta, OrSetDelta, PnCounterDelta, VoteDelta, crdt_delta,
};

use crate::Elem;
use crate::dot::ReplicaId;
use crate::state::{Flag, GSet, LwwRegister, Mismatch, ORMap, ORSet, State, Type, Vote};

/// A user function's delta that the CRDT cannot take: the entity fails, with the reference
/// proxy's text (`Display`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("Empty delta")]
    Empty,
    /// A delta of another type than the entity's CRDT.
    #[error("{delta}Delta is incompatible with CRDT {state}")]
    Mismatch {
        state: &'static str,
        delta: &'static str,
    },
    /// An increment above `i64::MAX`: a negative number sent as unsigned.
    #[error("Cannot decrement a GCounter, requested amount was {0}")]
    NegativeGCounter(i64),
    #[error("Cannot switch off already enabled flag")]
    FlagOff,
    #[error("ORMap entry delta without a key or a delta")]
    BadEntry,
}

impl From<Mismatch> for Invalid {
    fn from(m: Mismatch) -> Self {
        Invalid::Mismatch {
            state: m.mine,
            delta: m.theirs,
        }
    }
}

/// The type a protocol delta is of.
pub fn type_of(delta: &CrdtDelta) -> Option<Type> {
    Some(match delta.delta.as_ref()? {
        crdt_delta::Delta::Gcounter(_) => Type::GCounter,
        crdt_delta::Delta::Pncounter(_) => Type::PNCounter,
        crdt_delta::Delta::Gset(_) => Type::GSet,
        crdt_delta::Delta::Orset(_) => Type::ORSet,
        crdt_delta::Delta::Lwwregister(_) => Type::LwwRegister,
        crdt_delta::Delta::Flag(_) => Type::Flag,
        crdt_delta::Delta::Ormap(_) => Type::ORMap,
        crdt_delta::Delta::Vote(_) => Type::Vote,
    })
}

/// What `delta`, sent by the user function of replica `me`, means for `state` (absent: the
/// entity has no state yet, and the delta's type becomes its type): the state fragment to merge
/// and replicate. `now_ms` drives the LWWRegister's default clocks.
pub fn apply(
    state: Option<&State>,
    me: &ReplicaId,
    delta: &CrdtDelta,
    now_ms: i64,
) -> Result<State, Invalid> {
    let kind = type_of(delta).ok_or(Invalid::Empty)?;
    let bottom;
    let current = match state {
        Some(state) if state.kind() != kind => {
            return Err(Invalid::Mismatch {
                state: state.kind().name(),
                delta: kind.name(),
            });
        }
        Some(state) => state,
        None => {
            bottom = State::bottom(kind);
            &bottom
        }
    };
    let op = delta.delta.as_ref().expect("typed above");
    Ok(match (current, op) {
        (State::GCounter(c), crdt_delta::Delta::Gcounter(d)) => {
            // A uint64 above i64::MAX is a negative number sent as unsigned.
            if d.increment > i64::MAX as u64 {
                return Err(Invalid::NegativeGCounter(d.increment as i64));
            }
            State::GCounter(c.increment(me, d.increment))
        }
        (State::PNCounter(c), crdt_delta::Delta::Pncounter(d)) => {
            State::PNCounter(c.change(me, d.change))
        }
        (State::GSet(_), crdt_delta::Delta::Gset(d)) => State::GSet(GSet {
            elements: d.added.iter().cloned().map(Elem::from).collect(),
        }),
        (State::ORSet(s), crdt_delta::Delta::Orset(d)) => State::ORSet(apply_orset(s, me, d)),
        (State::LwwRegister(r), crdt_delta::Delta::Lwwregister(d)) => {
            State::LwwRegister(apply_lww(r, me, d, now_ms))
        }
        (State::Flag(f), crdt_delta::Delta::Flag(d)) => {
            if f.value && !d.value {
                return Err(Invalid::FlagOff);
            }
            State::Flag(Flag { value: d.value })
        }
        (State::ORMap(m), crdt_delta::Delta::Ormap(d)) => {
            State::ORMap(apply_ormap(m, me, d, now_ms)?)
        }
        (State::Vote(v), crdt_delta::Delta::Vote(d)) => State::Vote(
            if v.vote_of(me) == d.self_vote && v.votes.contains_key(me) {
                Vote::default()
            } else {
                v.set(me, d.self_vote)
            },
        ),
        _ => unreachable!("the delta's type is the state's"),
    })
}

fn apply_orset(set: &ORSet, me: &ReplicaId, d: &OrSetDelta) -> ORSet {
    // The steps apply in order (clear, remove, add), each against the state the earlier ones
    // left; the fragment is the join of the steps.
    let mut working = set.clone();
    let mut fragment = ORSet::default();
    let mut steps = Vec::new();
    if d.cleared {
        steps.push(Step::Clear);
    }
    if !d.removed.is_empty() {
        steps.push(Step::Remove(
            d.removed.iter().cloned().map(Elem::from).collect(),
        ));
    }
    if !d.added.is_empty() {
        steps.push(Step::Add(d.added.iter().cloned().map(Elem::from).collect()));
    }
    for step in steps {
        let f = match step {
            Step::Clear => working.clear(),
            Step::Remove(elements) => working.remove(elements.iter()),
            Step::Add(elements) => working.add_all(me, elements),
        };
        working.join(&f);
        fragment.join(&f);
    }
    fragment
}

enum Step {
    Clear,
    Remove(Vec<Elem>),
    Add(Vec<Elem>),
}

/// The register's clock for a write: DEFAULT the wall clock (at least one past the current),
/// REVERSE its negation (at most one below), CUSTOM the user function's value,
/// CUSTOM_AUTO_INCREMENT the user function's value but at least one past the current.
fn apply_lww(r: &LwwRegister, me: &ReplicaId, d: &LwwRegisterDelta, now_ms: i64) -> LwwRegister {
    let current = r.value.as_ref().map(|(_, c, _)| *c);
    let clock = match CrdtClock::try_from(d.clock).unwrap_or(CrdtClock::Default) {
        CrdtClock::Default => current.map_or(now_ms, |c| now_ms.max(c.saturating_add(1))),
        CrdtClock::Reverse => current.map_or(-now_ms, |c| (-now_ms).min(c.saturating_sub(1))),
        CrdtClock::Custom => d.custom_clock_value,
        CrdtClock::CustomAutoIncrement => current.map_or(d.custom_clock_value, |c| {
            d.custom_clock_value.max(c.saturating_add(1))
        }),
    };
    let value = d
        .value
        .clone()
        .map(Elem::from)
        .unwrap_or_else(|| Elem::new("", Vec::new()));
    LwwRegister::set(me, value, clock)
}

fn apply_ormap(map: &ORMap, me: &ReplicaId, d: &OrMapDelta, now_ms: i64) -> Result<ORMap, Invalid> {
    // As for ORSet: clear, remove, then each added and updated entry, in order.
    let mut working = map.clone();
    let mut fragment = ORMap::default();
    if d.cleared {
        let f = working.clear();
        working.join(&f);
        fragment.join(&f);
    }
    if !d.removed.is_empty() {
        let removed: Vec<Elem> = d.removed.iter().cloned().map(Elem::from).collect();
        let f = working.remove(removed.iter());
        working.join(&f);
        fragment.join(&f);
    }
    for entry in d.added.iter().chain(&d.updated) {
        let (Some(key), Some(nested)) = (&entry.key, &entry.delta) else {
            return Err(Invalid::BadEntry);
        };
        let key = Elem::from(key.clone());
        let current = working.get(&key);
        let nested_fragment = apply(current.as_ref(), me, nested, now_ms)?;
        let f = working.update(me, key, nested_fragment)?;
        working.join(&f);
        fragment.join(&f);
    }
    Ok(fragment)
}

/// What a user function holds of a CRDT: its value, as the protocol's deltas build it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum View {
    GCounter(u64),
    PNCounter(i64),
    GSet(BTreeSet<Elem>),
    ORSet(BTreeSet<Elem>),
    LwwRegister(Option<Elem>),
    Flag(bool),
    ORMap(BTreeMap<Elem, View>),
    Vote {
        self_vote: bool,
        votes_for: u32,
        total_voters: u32,
    },
}

/// Who counts for a Vote: this replica, and the replicas that are alive.
#[derive(Clone, Debug)]
pub struct Voters<'a> {
    pub me: &'a ReplicaId,
    pub live: &'a BTreeSet<ReplicaId>,
}

impl View {
    /// The value of `state`, as its user function at replica `voters.me` should hold it.
    pub fn of(state: &State, voters: &Voters<'_>) -> View {
        match state {
            State::GCounter(c) => View::GCounter(c.value()),
            State::PNCounter(c) => View::PNCounter(c.value()),
            State::GSet(s) => View::GSet(s.elements.clone()),
            State::ORSet(s) => View::ORSet(s.elements().cloned().collect()),
            State::LwwRegister(r) => View::LwwRegister(r.value.as_ref().map(|(v, _, _)| v.clone())),
            State::Flag(f) => View::Flag(f.value),
            State::ORMap(m) => View::ORMap(
                m.keys()
                    .filter_map(|k| Some((k.clone(), View::of(&m.get(k)?, voters))))
                    .collect(),
            ),
            State::Vote(v) => {
                let mut live = voters.live.clone();
                live.insert(voters.me.clone());
                View::Vote {
                    self_vote: v.vote_of(voters.me),
                    votes_for: v.votes_for(&live) as u32,
                    total_voters: live.len() as u32,
                }
            }
        }
    }

    /// The empty value of a type.
    pub fn bottom(kind: Type) -> View {
        match kind {
            Type::GCounter => View::GCounter(0),
            Type::PNCounter => View::PNCounter(0),
            Type::GSet => View::GSet(BTreeSet::new()),
            Type::ORSet => View::ORSet(BTreeSet::new()),
            Type::LwwRegister => View::LwwRegister(None),
            Type::Flag => View::Flag(false),
            Type::ORMap => View::ORMap(BTreeMap::new()),
            // What a user function's fresh Vote holds: it counts itself.
            Type::Vote => View::Vote {
                self_vote: false,
                votes_for: 0,
                total_voters: 1,
            },
        }
    }

    pub fn kind(&self) -> Type {
        match self {
            View::GCounter(_) => Type::GCounter,
            View::PNCounter(_) => Type::PNCounter,
            View::GSet(_) => Type::GSet,
            View::ORSet(_) => Type::ORSet,
            View::LwwRegister(_) => Type::LwwRegister,
            View::Flag(_) => Type::Flag,
            View::ORMap(_) => Type::ORMap,
            View::Vote { .. } => Type::Vote,
        }
    }

    /// Whether a protocol delta can take a user function from this value to `new` (grow-only
    /// values cannot go back).
    pub fn grows_to(&self, new: &View) -> bool {
        match (self, new) {
            (View::GCounter(a), View::GCounter(b)) => a <= b,
            (View::GSet(a), View::GSet(b)) => a.is_subset(b),
            (View::Flag(a), View::Flag(b)) => !a || *b,
            (a, b) => a.kind() == b.kind(),
        }
    }

    /// What the user function holds after applying `delta` (its own update, or one the
    /// processor sent it). `None`: the delta does not fit the view (`apply` refuses those).
    pub fn applied(&self, delta: &CrdtDelta) -> Option<View> {
        let op = delta.delta.as_ref()?;
        Some(match (self, op) {
            (View::GCounter(n), crdt_delta::Delta::Gcounter(d)) => {
                View::GCounter(n.saturating_add(d.increment))
            }
            (View::PNCounter(n), crdt_delta::Delta::Pncounter(d)) => {
                View::PNCounter(n.saturating_add(d.change))
            }
            (View::GSet(s), crdt_delta::Delta::Gset(d)) => {
                let mut s = s.clone();
                s.extend(d.added.iter().cloned().map(Elem::from));
                View::GSet(s)
            }
            (View::ORSet(s), crdt_delta::Delta::Orset(d)) => {
                let mut s = if d.cleared {
                    BTreeSet::new()
                } else {
                    s.clone()
                };
                for e in &d.removed {
                    s.remove(&Elem::from(e.clone()));
                }
                s.extend(d.added.iter().cloned().map(Elem::from));
                View::ORSet(s)
            }
            (View::LwwRegister(_), crdt_delta::Delta::Lwwregister(d)) => {
                View::LwwRegister(d.value.clone().map(Elem::from))
            }
            (View::Flag(f), crdt_delta::Delta::Flag(d)) => View::Flag(*f || d.value),
            (View::ORMap(m), crdt_delta::Delta::Ormap(d)) => {
                let mut m = if d.cleared {
                    BTreeMap::new()
                } else {
                    m.clone()
                };
                for k in &d.removed {
                    m.remove(&Elem::from(k.clone()));
                }
                for entry in d.added.iter().chain(&d.updated) {
                    let key = Elem::from(entry.key.clone()?);
                    let nested = entry.delta.as_ref()?;
                    let base = match m.get(&key) {
                        Some(v) => v.clone(),
                        None => View::bottom(type_of(nested)?),
                    };
                    m.insert(key, base.applied(nested)?);
                }
                View::ORMap(m)
            }
            // The processor's deltas carry all three fields (total_voters is at least 1); a
            // user function's own vote carries only `self_vote`, and it counts the change
            // itself, as the SDKs do.
            (
                View::Vote {
                    self_vote,
                    votes_for,
                    total_voters,
                },
                crdt_delta::Delta::Vote(d),
            ) => {
                if d.total_voters > 0 {
                    View::Vote {
                        self_vote: d.self_vote,
                        votes_for: d.votes_for.max(0) as u32,
                        total_voters: d.total_voters as u32,
                    }
                } else {
                    let votes_for = match (*self_vote, d.self_vote) {
                        (false, true) => votes_for.saturating_add(1),
                        (true, false) => votes_for.saturating_sub(1),
                        _ => *votes_for,
                    };
                    View::Vote {
                        self_vote: d.self_vote,
                        votes_for,
                        total_voters: *total_voters,
                    }
                }
            }
            _ => return None,
        })
    }
}

fn delta(d: crdt_delta::Delta) -> CrdtDelta {
    CrdtDelta { delta: Some(d) }
}

/// The protocol delta that takes a user function holding `old` (`None`: nothing, e.g. at
/// init) to `new`; `None` when there is nothing to tell.
pub fn diff(old: Option<&View>, new: &View) -> Option<CrdtDelta> {
    // Nothing held (or another type): the whole value, even an empty one.
    let is_init = !matches!(old, Some(old) if old.kind() == new.kind());
    let bottom;
    let old = match old {
        Some(old) if !is_init => old,
        _ => {
            bottom = View::bottom(new.kind());
            &bottom
        }
    };
    Some(match (old, new) {
        (View::GCounter(a), View::GCounter(b)) => {
            if a == b && !is_init {
                return None;
            }
            delta(crdt_delta::Delta::Gcounter(GCounterDelta {
                increment: b.saturating_sub(*a),
            }))
        }
        (View::PNCounter(a), View::PNCounter(b)) => {
            if a == b && !is_init {
                return None;
            }
            delta(crdt_delta::Delta::Pncounter(PnCounterDelta {
                change: b.saturating_sub(*a),
            }))
        }
        (View::GSet(a), View::GSet(b)) => {
            if a == b && !is_init {
                return None;
            }
            delta(crdt_delta::Delta::Gset(GSetDelta {
                added: b.difference(a).map(prost_types::Any::from).collect(),
            }))
        }
        (View::ORSet(a), View::ORSet(b)) => {
            if a == b && !is_init {
                return None;
            }
            let cleared = !a.is_empty() && b.is_empty();
            delta(crdt_delta::Delta::Orset(OrSetDelta {
                cleared,
                removed: if cleared {
                    Vec::new()
                } else {
                    a.difference(b).map(prost_types::Any::from).collect()
                },
                added: b.difference(a).map(prost_types::Any::from).collect(),
            }))
        }
        (View::LwwRegister(a), View::LwwRegister(b)) => {
            if a == b && !is_init {
                return None;
            }
            delta(crdt_delta::Delta::Lwwregister(LwwRegisterDelta {
                value: b.as_ref().map(prost_types::Any::from),
                ..LwwRegisterDelta::default()
            }))
        }
        (View::Flag(a), View::Flag(b)) => {
            if a == b && !is_init {
                return None;
            }
            delta(crdt_delta::Delta::Flag(FlagDelta { value: *b }))
        }
        (View::ORMap(a), View::ORMap(b)) => {
            if a == b && !is_init {
                return None;
            }
            let cleared = !a.is_empty() && b.is_empty();
            let mut removed = Vec::new();
            if !cleared {
                removed = a
                    .keys()
                    .filter(|k| !b.contains_key(*k))
                    .map(prost_types::Any::from)
                    .collect();
            }
            let mut updated = Vec::new();
            let mut added = Vec::new();
            for (key, value) in b {
                match a.get(key) {
                    // A value that went back where the protocol cannot say so (a removal
                    // concurrent with another replica's update keeps only that update): the
                    // key is removed and added again with its value.
                    Some(old) if old.kind() == value.kind() && !old.grows_to(value) => {
                        removed.push(prost_types::Any::from(key));
                        added.push(OrMapEntryDelta {
                            key: Some(prost_types::Any::from(key)),
                            delta: diff(None, value),
                        });
                    }
                    Some(old) if old.kind() == value.kind() => {
                        if let Some(d) = diff(Some(old), value) {
                            updated.push(OrMapEntryDelta {
                                key: Some(prost_types::Any::from(key)),
                                delta: Some(d),
                            });
                        }
                    }
                    _ => added.push(OrMapEntryDelta {
                        key: Some(prost_types::Any::from(key)),
                        delta: diff(None, value),
                    }),
                }
            }
            delta(crdt_delta::Delta::Ormap(OrMapDelta {
                cleared,
                removed,
                updated,
                added,
            }))
        }
        (
            View::Vote {
                self_vote: a1,
                votes_for: a2,
                total_voters: a3,
            },
            View::Vote {
                self_vote: b1,
                votes_for: b2,
                total_voters: b3,
            },
        ) => {
            if (a1, a2, a3) == (b1, b2, b3) && !is_init {
                return None;
            }
            delta(crdt_delta::Delta::Vote(VoteDelta {
                self_vote: *b1,
                votes_for: *b2 as i32,
                total_voters: *b3 as i32,
            }))
        }
        _ => unreachable!("old was made the same type as new"),
    })
}

/// The state of `kind` as a whole, for tests and tools: the fold of the fragments.
pub fn fold<'a>(
    kind: Type,
    fragments: impl IntoIterator<Item = &'a State>,
) -> Result<State, Mismatch> {
    let mut state = State::bottom(kind);
    for f in fragments {
        state.join(f)?;
    }
    Ok(state)
}
