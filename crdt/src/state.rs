//! The eight CRDT types as join-semilattices, and [`State`], one of them.
//!
//! A state and a delta are the same thing: a delta is a (small) state, and applying it is a
//! join. Every join is commutative, associative and idempotent (`tests/laws.rs` checks it), so
//! replicas may receive each other's deltas in any order, any number of times.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;

use crate::dot::{CausalContext, Dot, DotSet, ReplicaId, join_dots};

/// A set element or map key: an `Any`, compared by its type URL and bytes (user functions
/// encode their elements stably; the protocol makes that their job).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Elem {
    pub type_url: String,
    pub value: Bytes,
}

impl Elem {
    pub fn new(type_url: impl Into<String>, value: impl Into<Bytes>) -> Self {
        Self {
            type_url: type_url.into(),
            value: value.into(),
        }
    }
}

impl From<prost_types::Any> for Elem {
    fn from(any: prost_types::Any) -> Self {
        Self {
            type_url: any.type_url,
            value: Bytes::from(any.value),
        }
    }
}

impl From<&Elem> for prost_types::Any {
    fn from(elem: &Elem) -> Self {
        prost_types::Any {
            type_url: elem.type_url.clone(),
            value: elem.value.to_vec(),
        }
    }
}

/// The eight types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Type {
    GCounter,
    PNCounter,
    GSet,
    ORSet,
    LwwRegister,
    Flag,
    ORMap,
    Vote,
}

impl Type {
    pub fn name(self) -> &'static str {
        match self {
            Type::GCounter => "GCounter",
            Type::PNCounter => "PNCounter",
            Type::GSet => "GSet",
            Type::ORSet => "ORSet",
            Type::LwwRegister => "LWWRegister",
            Type::Flag => "Flag",
            Type::ORMap => "ORMap",
            Type::Vote => "Vote",
        }
    }
}

/// Two states of different types were joined.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a {theirs} cannot be merged into a {mine}")]
pub struct Mismatch {
    pub mine: &'static str,
    pub theirs: &'static str,
}

/// Grow-only counter: per replica, the total it added.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct GCounter {
    pub counts: BTreeMap<ReplicaId, u64>,
}

/// The replica slot of counters that holds what pruned (departed) replicas counted.
pub const DEPARTED: &str = "~departed";

impl GCounter {
    fn prune(&mut self, departed: &ReplicaId) {
        if let Some(n) = self.counts.remove(departed) {
            let slot = self.counts.entry(ReplicaId::new(DEPARTED)).or_default();
            *slot = slot.saturating_add(n);
        }
    }

    pub fn value(&self) -> u64 {
        self.counts.values().fold(0u64, |a, b| a.saturating_add(*b))
    }

    pub fn join(&mut self, other: &GCounter) {
        for (replica, n) in other.counts.iter().filter(|(_, n)| **n > 0) {
            let mine = self.counts.entry(replica.clone()).or_default();
            *mine = (*mine).max(*n);
        }
    }

    /// The delta of adding `by` at `replica` (empty for 0).
    pub fn increment(&self, replica: &ReplicaId, by: u64) -> GCounter {
        if by == 0 {
            return GCounter::default();
        }
        let now = self
            .counts
            .get(replica)
            .copied()
            .unwrap_or(0)
            .saturating_add(by);
        GCounter {
            counts: BTreeMap::from([(replica.clone(), now)]),
        }
    }
}

/// Counter: per replica, the totals it added and subtracted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct PNCounter {
    pub increments: GCounter,
    pub decrements: GCounter,
}

impl PNCounter {
    pub fn value(&self) -> i64 {
        let up = i128::from(self.increments.value());
        let down = i128::from(self.decrements.value());
        (up - down).clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
    }

    pub fn join(&mut self, other: &PNCounter) {
        self.increments.join(&other.increments);
        self.decrements.join(&other.decrements);
    }

    /// The delta of changing the value by `by` at `replica`.
    pub fn change(&self, replica: &ReplicaId, by: i64) -> PNCounter {
        let mut delta = PNCounter::default();
        if by > 0 {
            delta.increments = self.increments.increment(replica, by.unsigned_abs());
        } else if by < 0 {
            delta.decrements = self.decrements.increment(replica, by.unsigned_abs());
        }
        delta
    }
}

/// Grow-only set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct GSet {
    pub elements: BTreeSet<Elem>,
}

impl GSet {
    pub fn join(&mut self, other: &GSet) {
        self.elements.extend(other.elements.iter().cloned());
    }
}

/// Observed-remove set (add wins): each element with the dots of the adds not yet observed
/// removed, and the causal context of everything seen.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct ORSet {
    pub entries: BTreeMap<Elem, DotSet>,
    pub context: CausalContext,
}

impl ORSet {
    pub fn elements(&self) -> impl Iterator<Item = &Elem> {
        self.entries.keys()
    }

    pub fn join(&mut self, other: &ORSet) {
        let keys: BTreeSet<Elem> = self
            .entries
            .keys()
            .chain(other.entries.keys())
            .cloned()
            .collect();
        let empty = DotSet::new();
        let mut entries = BTreeMap::new();
        for key in keys {
            let dots = join_dots(
                self.entries.get(&key).unwrap_or(&empty),
                &self.context,
                other.entries.get(&key).unwrap_or(&empty),
                &other.context,
            );
            if !dots.is_empty() {
                entries.insert(key, dots);
            }
        }
        self.entries = entries;
        self.context.join(&other.context);
    }

    /// The delta of adding `element` at `replica` (replacing the element's dots this state has).
    pub fn add(&self, replica: &ReplicaId, element: Elem) -> ORSet {
        self.add_all(replica, [element])
    }

    /// The delta of adding every element of `elements` at `replica`.
    pub fn add_all(&self, replica: &ReplicaId, elements: impl IntoIterator<Item = Elem>) -> ORSet {
        let mut delta = ORSet::default();
        let first = self.context.next_dot(replica).counter;
        for (i, element) in (0u64..).zip(elements) {
            let dot = Dot::new(replica.clone(), first + i);
            for old in self.entries.get(&element).into_iter().flatten() {
                delta.context.insert(old.clone());
            }
            delta.context.insert(dot.clone());
            delta.entries.insert(element, DotSet::from([dot]));
        }
        delta
    }

    /// The delta of removing `elements` (the adds this state has observed).
    pub fn remove<'a>(&self, elements: impl IntoIterator<Item = &'a Elem>) -> ORSet {
        let mut delta = ORSet::default();
        for element in elements {
            for dot in self.entries.get(element).into_iter().flatten() {
                delta.context.insert(dot.clone());
            }
        }
        delta
    }

    /// The delta of removing every element.
    pub fn clear(&self) -> ORSet {
        self.remove(self.entries.keys())
    }
}

/// Last-writer-wins register: the value with the largest (clock, replica, value bytes).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct LwwRegister {
    pub value: Option<(Elem, i64, ReplicaId)>,
}

impl LwwRegister {
    pub fn join(&mut self, other: &LwwRegister) {
        if let Some((value, clock, replica)) = &other.value {
            let newer = match &self.value {
                None => true,
                Some((v, c, r)) => (clock, replica, value) > (c, r, v),
            };
            if newer {
                self.value = other.value.clone();
            }
        }
    }

    /// The delta of setting `value` at `replica` with `clock`.
    pub fn set(replica: &ReplicaId, value: Elem, clock: i64) -> LwwRegister {
        LwwRegister {
            value: Some((value, clock, replica.clone())),
        }
    }
}

/// A flag that can only be switched on.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Flag {
    pub value: bool,
}

/// Observed-remove map (updates win): each key with the dots of the updates not yet observed
/// removed; each dot carries the nested state the update (with the updating replica's earlier
/// updates of the key) left; the key's value is the join of them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct ORMap {
    pub entries: BTreeMap<Elem, BTreeMap<Dot, State>>,
    pub context: CausalContext,
}

impl ORMap {
    /// The value of `key`: the join of the nested states of its dots.
    pub fn get(&self, key: &Elem) -> Option<State> {
        let values = self.entries.get(key)?;
        let mut iter = values.values();
        let mut value = iter.next()?.clone();
        for other in iter {
            // Nested states of one key always have the type the key was first updated with;
            // a corrupt fragment of another type is left out.
            let _ = value.join(other);
        }
        Some(value)
    }

    pub fn keys(&self) -> impl Iterator<Item = &Elem> {
        self.entries.keys()
    }

    pub fn join(&mut self, other: &ORMap) {
        let keys: BTreeSet<Elem> = self
            .entries
            .keys()
            .chain(other.entries.keys())
            .cloned()
            .collect();
        let empty = BTreeMap::new();
        let mut entries = BTreeMap::new();
        for key in keys {
            let mine = self.entries.get(&key).unwrap_or(&empty);
            let theirs = other.entries.get(&key).unwrap_or(&empty);
            let dots = join_dots(
                &mine.keys().cloned().collect(),
                &self.context,
                &theirs.keys().cloned().collect(),
                &other.context,
            );
            let mut values = BTreeMap::new();
            for dot in dots {
                let value = match (mine.get(&dot), theirs.get(&dot)) {
                    (Some(a), Some(b)) => {
                        let mut joined = a.clone();
                        let _ = joined.join(b);
                        joined
                    }
                    (Some(a), None) => a.clone(),
                    (None, Some(b)) => b.clone(),
                    (None, None) => unreachable!("a kept dot comes from one side"),
                };
                values.insert(dot, value);
            }
            if !values.is_empty() {
                entries.insert(key, values);
            }
        }
        self.entries = entries;
        self.context.join(&other.context);
    }

    /// The delta of updating `key` at `replica` with the nested delta `nested` (computed
    /// against [`ORMap::get`]): a new dot carrying this replica's earlier updates of the key
    /// joined with `nested`, replacing those earlier dots.
    pub fn update(&self, replica: &ReplicaId, key: Elem, nested: State) -> Result<ORMap, Mismatch> {
        let dot = self.context.next_dot(replica);
        let mut delta = ORMap::default();
        let mut value = nested;
        if let Some(values) = self.entries.get(&key) {
            for (old, state) in values.iter().filter(|(d, _)| &d.replica == replica) {
                value.join(state)?;
                delta.context.insert(old.clone());
            }
        }
        delta.context.insert(dot.clone());
        delta.entries.insert(key, BTreeMap::from([(dot, value)]));
        Ok(delta)
    }

    /// The delta of removing `keys` (the updates this state has observed).
    pub fn remove<'a>(&self, keys: impl IntoIterator<Item = &'a Elem>) -> ORMap {
        let mut delta = ORMap::default();
        for key in keys {
            for dot in self.entries.get(key).into_iter().flat_map(BTreeMap::keys) {
                delta.context.insert(dot.clone());
            }
        }
        delta
    }

    /// The delta of removing every key.
    pub fn clear(&self) -> ORMap {
        self.remove(self.entries.keys())
    }
}

/// Votes: per replica, its vote and how many times it voted (the larger version wins).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Vote {
    pub votes: BTreeMap<ReplicaId, (u64, bool)>,
}

impl Vote {
    pub fn join(&mut self, other: &Vote) {
        for (replica, (version, vote)) in &other.votes {
            let newer = self
                .votes
                .get(replica)
                .is_none_or(|(v, b)| (*version, *vote) > (*v, *b));
            if newer {
                self.votes.insert(replica.clone(), (*version, *vote));
            }
        }
    }

    /// The vote of `replica` (false if it never voted).
    pub fn vote_of(&self, replica: &ReplicaId) -> bool {
        self.votes.get(replica).is_some_and(|(_, v)| *v)
    }

    /// The delta of `replica` voting `vote`.
    pub fn set(&self, replica: &ReplicaId, vote: bool) -> Vote {
        let version = self.votes.get(replica).map_or(0, |(v, _)| *v) + 1;
        Vote {
            votes: BTreeMap::from([(replica.clone(), (version, vote))]),
        }
    }

    /// How many of the `live` replicas vote for.
    pub fn votes_for(&self, live: &BTreeSet<ReplicaId>) -> usize {
        live.iter().filter(|r| self.vote_of(r)).count()
    }
}

/// A CRDT state of one of the eight types.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum State {
    GCounter(GCounter),
    PNCounter(PNCounter),
    GSet(GSet),
    ORSet(ORSet),
    LwwRegister(LwwRegister),
    Flag(Flag),
    ORMap(ORMap),
    Vote(Vote),
}

impl State {
    /// The empty state of a type (the bottom of its lattice).
    pub fn bottom(kind: Type) -> State {
        match kind {
            Type::GCounter => State::GCounter(GCounter::default()),
            Type::PNCounter => State::PNCounter(PNCounter::default()),
            Type::GSet => State::GSet(GSet::default()),
            Type::ORSet => State::ORSet(ORSet::default()),
            Type::LwwRegister => State::LwwRegister(LwwRegister::default()),
            Type::Flag => State::Flag(Flag::default()),
            Type::ORMap => State::ORMap(ORMap::default()),
            Type::Vote => State::Vote(Vote::default()),
        }
    }

    pub fn kind(&self) -> Type {
        match self {
            State::GCounter(_) => Type::GCounter,
            State::PNCounter(_) => Type::PNCounter,
            State::GSet(_) => Type::GSet,
            State::ORSet(_) => Type::ORSet,
            State::LwwRegister(_) => Type::LwwRegister,
            State::Flag(_) => Type::Flag,
            State::ORMap(_) => Type::ORMap,
            State::Vote(_) => Type::Vote,
        }
    }

    /// Merge `other` into this state.
    pub fn join(&mut self, other: &State) -> Result<(), Mismatch> {
        match (self, other) {
            (State::GCounter(a), State::GCounter(b)) => a.join(b),
            (State::PNCounter(a), State::PNCounter(b)) => a.join(b),
            (State::GSet(a), State::GSet(b)) => a.join(b),
            (State::ORSet(a), State::ORSet(b)) => a.join(b),
            (State::LwwRegister(a), State::LwwRegister(b)) => a.join(b),
            (State::Flag(a), State::Flag(b)) => a.value |= b.value,
            (State::ORMap(a), State::ORMap(b)) => a.join(b),
            (State::Vote(a), State::Vote(b)) => a.join(b),
            (mine, theirs) => {
                return Err(Mismatch {
                    mine: mine.kind().name(),
                    theirs: theirs.kind().name(),
                });
            }
        }
        Ok(())
    }

    /// Whether this state is the bottom of its lattice (joining it changes nothing).
    pub fn is_bottom(&self) -> bool {
        match self {
            State::GCounter(c) => c.counts.is_empty(),
            State::PNCounter(c) => c.increments.counts.is_empty() && c.decrements.counts.is_empty(),
            State::GSet(s) => s.elements.is_empty(),
            State::ORSet(s) => s.entries.is_empty() && s.context.is_empty(),
            State::LwwRegister(r) => r.value.is_none(),
            State::Flag(f) => !f.value,
            State::ORMap(m) => m.entries.is_empty() && m.context.is_empty(),
            State::Vote(v) => v.votes.is_empty(),
        }
    }

    /// Forget replica `departed` (gone for good), keeping the value: what it counted moves to
    /// the [`DEPARTED`] slot of counters, its vote goes (only live replicas vote), and nested
    /// states of maps are pruned alike. Sets, maps and registers keep their dots and clocks.
    /// Every replica applies a prune at the same place of an entity's totally ordered records,
    /// so all fold the same counts into the slot; fragments that still name `departed` later
    /// are [`State::strip`]ped first.
    pub fn prune(&mut self, departed: &ReplicaId) {
        if departed.as_str() == DEPARTED {
            return;
        }
        match self {
            State::GCounter(c) => c.prune(departed),
            State::PNCounter(c) => {
                c.increments.prune(departed);
                c.decrements.prune(departed);
            }
            State::Vote(v) => {
                v.votes.remove(departed);
            }
            State::ORMap(m) => {
                for values in m.entries.values_mut() {
                    for value in values.values_mut() {
                        value.prune(departed);
                    }
                }
            }
            State::GSet(_) | State::ORSet(_) | State::LwwRegister(_) | State::Flag(_) => {}
        }
    }

    /// Leave out of a fragment what replicas pruned earlier counted (it is in the
    /// [`DEPARTED`] slot already).
    pub fn strip(&mut self, pruned: &BTreeSet<ReplicaId>) {
        if pruned.is_empty() {
            return;
        }
        match self {
            State::GCounter(c) => c.counts.retain(|r, _| !pruned.contains(r)),
            State::PNCounter(c) => {
                c.increments.counts.retain(|r, _| !pruned.contains(r));
                c.decrements.counts.retain(|r, _| !pruned.contains(r));
            }
            State::Vote(v) => v.votes.retain(|r, _| !pruned.contains(r)),
            State::ORMap(m) => {
                for values in m.entries.values_mut() {
                    for value in values.values_mut() {
                        value.strip(pruned);
                    }
                }
            }
            State::GSet(_) | State::ORSet(_) | State::LwwRegister(_) | State::Flag(_) => {}
        }
    }

    /// Every replica this state names (counts, dots, registers, votes): what pruning a
    /// departed replica looks at.
    pub fn replicas(&self) -> BTreeSet<ReplicaId> {
        let mut out = BTreeSet::new();
        self.collect_replicas(&mut out);
        out.retain(|r| r.as_str() != DEPARTED);
        out
    }

    fn collect_replicas(&self, out: &mut BTreeSet<ReplicaId>) {
        match self {
            State::GCounter(c) => out.extend(c.counts.keys().cloned()),
            State::PNCounter(c) => {
                out.extend(c.increments.counts.keys().cloned());
                out.extend(c.decrements.counts.keys().cloned());
            }
            State::GSet(_) | State::Flag(_) => {}
            State::ORSet(s) => {
                out.extend(s.entries.values().flatten().map(|d| d.replica.clone()));
            }
            State::LwwRegister(r) => out.extend(r.value.iter().map(|(_, _, r)| r.clone())),
            State::ORMap(m) => {
                for values in m.entries.values() {
                    for (dot, value) in values {
                        out.insert(dot.replica.clone());
                        value.collect_replicas(out);
                    }
                }
            }
            State::Vote(v) => out.extend(v.votes.keys().cloned()),
        }
    }
}
