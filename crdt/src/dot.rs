//! Replicas, dots and causal contexts — the vocabulary of the observed-remove types.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

/// A replica: one processor instance (`<processor id>:<incarnation>`). A replica id is never
/// reused, so its dots are never reused either.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReplicaId(Arc<str>);

impl ReplicaId {
    pub fn new(id: impl Into<Arc<str>>) -> Self {
        Self(id.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ReplicaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

impl fmt::Display for ReplicaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The `counter`-th event of `replica` (from 1).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Dot {
    pub replica: ReplicaId,
    pub counter: u64,
}

impl Dot {
    pub fn new(replica: ReplicaId, counter: u64) -> Self {
        Self { replica, counter }
    }
}

/// The dots a state has seen: all of `(replica, 1..=n)` for each `versions` entry, plus the
/// dots of `cloud` beyond them. Kept compact (a cloud dot that closes a gap moves into the
/// version), so equal contexts have equal representations.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CausalContext {
    versions: BTreeMap<ReplicaId, u64>,
    cloud: BTreeSet<Dot>,
}

impl CausalContext {
    /// A context from its parts (compacted).
    pub fn from_parts(
        versions: impl IntoIterator<Item = (ReplicaId, u64)>,
        cloud: impl IntoIterator<Item = Dot>,
    ) -> Self {
        let mut context = Self {
            versions: versions.into_iter().filter(|(_, n)| *n > 0).collect(),
            cloud: BTreeSet::new(),
        };
        for dot in cloud {
            context.insert(dot);
        }
        context
    }

    /// A context that has seen exactly `dots`.
    pub fn of(dots: impl IntoIterator<Item = Dot>) -> Self {
        Self::from_parts([], dots)
    }

    pub fn versions(&self) -> &BTreeMap<ReplicaId, u64> {
        &self.versions
    }

    pub fn cloud(&self) -> &BTreeSet<Dot> {
        &self.cloud
    }

    pub fn is_empty(&self) -> bool {
        self.versions.is_empty() && self.cloud.is_empty()
    }

    pub fn contains(&self, dot: &Dot) -> bool {
        self.versions
            .get(&dot.replica)
            .is_some_and(|n| dot.counter <= *n)
            || self.cloud.contains(dot)
    }

    /// Record `dot` as seen.
    pub fn insert(&mut self, dot: Dot) {
        if dot.counter == 0 || self.contains(&dot) {
            return;
        }
        self.cloud.insert(dot);
        self.compact();
    }

    /// The next dot of `replica`: one past every dot of it this context has seen.
    pub fn next_dot(&self, replica: &ReplicaId) -> Dot {
        let seen = self.versions.get(replica).copied().unwrap_or(0).max(
            self.cloud
                .iter()
                .filter(|d| &d.replica == replica)
                .map(|d| d.counter)
                .max()
                .unwrap_or(0),
        );
        Dot::new(replica.clone(), seen + 1)
    }

    /// Everything either context has seen.
    pub fn join(&mut self, other: &CausalContext) {
        for (replica, n) in &other.versions {
            let mine = self.versions.entry(replica.clone()).or_default();
            *mine = (*mine).max(*n);
        }
        self.cloud.extend(other.cloud.iter().cloned());
        self.compact();
    }

    fn compact(&mut self) {
        // Cloud dots come in order (replica, counter): one pass moves every dot that continues
        // its replica's version into the version.
        let mut cloud = std::mem::take(&mut self.cloud);
        cloud.retain(|dot| {
            let version = self.versions.entry(dot.replica.clone()).or_default();
            if dot.counter <= *version {
                false
            } else if dot.counter == *version + 1 {
                *version += 1;
                false
            } else {
                true
            }
        });
        self.versions.retain(|_, n| *n > 0);
        self.cloud = cloud;
    }
}

/// The dots of an observed-remove entry.
pub type DotSet = BTreeSet<Dot>;

/// The dots both sides keep when joining two observed-remove entries: those both have, and
/// those one has that the other's context has not seen.
pub(crate) fn join_dots(
    mine: &DotSet,
    my_context: &CausalContext,
    theirs: &DotSet,
    their_context: &CausalContext,
) -> DotSet {
    let mut out: DotSet = mine.intersection(theirs).cloned().collect();
    out.extend(mine.iter().filter(|d| !their_context.contains(d)).cloned());
    out.extend(theirs.iter().filter(|d| !my_context.contains(d)).cloned());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(name: &str) -> ReplicaId {
        ReplicaId::new(name)
    }

    #[test]
    fn contexts_stay_compact() {
        let mut c = CausalContext::default();
        c.insert(Dot::new(r("a"), 2));
        c.insert(Dot::new(r("a"), 3));
        assert_eq!(c.cloud().len(), 2);
        assert!(!c.contains(&Dot::new(r("a"), 1)));
        c.insert(Dot::new(r("a"), 1));
        assert!(c.cloud().is_empty(), "{c:?}");
        assert_eq!(c.versions()[&r("a")], 3);
        assert_eq!(c.next_dot(&r("a")), Dot::new(r("a"), 4));
        let mut d = CausalContext::of([Dot::new(r("b"), 5)]);
        assert_eq!(d.next_dot(&r("b")), Dot::new(r("b"), 6));
        d.join(&c);
        assert_eq!(
            d,
            CausalContext::from_parts([(r("a"), 3)], [Dot::new(r("b"), 5)])
        );
        assert_eq!(
            CausalContext::of([Dot::new(r("a"), 1), Dot::new(r("a"), 2)]),
            CausalContext::from_parts([(r("a"), 2)], [])
        );
    }
}
