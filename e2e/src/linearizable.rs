//! A per-key linearizability checker for histories of grow-only sets — what a shopping cart is
//! to the fault tests: every `AddItem` adds a unique token, `GetCart` reads the whole set.
//!
//! For such a history the check is exact and cheap. Every add adds a token nobody else adds,
//! and a read returns a set; so a linearization (a total order of the operations that respects
//! real time, in which each read returns exactly the tokens added before it) exists if and only
//! if the "must come before" relation below has no cycle:
//!
//! * real time: `a` completed before `b` was invoked ⇒ `a` before `b`;
//! * a read that returned token `x` ⇒ the add of `x` before the read;
//! * a read that did not return `x` ⇒ the read before the add of `x`.
//!
//! (Any topological order of an acyclic relation is a linearization: the tokens before each read
//! are then exactly those it returned.) Operations whose outcome the client never learned (every
//! attempt timed out) may have taken effect at any time after their invocation, or never: they
//! get no completion (so no real-time successors), and one no read returned is left out. A read
//! returning a token nobody added, or one whose add definitely failed, is a violation by itself.
//!
//! A stale read — an owner cut off from Kafka answering from memory after a new owner acknowledged
//! an add — shows up as the cycle `add → read` (real time) and `read → add` (not returned).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::time::Instant;

/// One operation of the history.
#[derive(Debug, Clone)]
pub struct Op {
    /// The key (entity).
    pub key: String,
    pub kind: Kind,
    pub invoked: Instant,
    /// When the client learned the outcome; `None` = never (outcome unknown).
    pub completed: Option<Instant>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// Added a unique token.
    Add(String),
    /// Read the set (only reads that returned one are recorded).
    Read(BTreeSet<String>),
}

/// What the checker found.
#[derive(Debug, Default, Clone)]
pub struct Verdict {
    pub keys: usize,
    pub operations: usize,
    pub reads: usize,
    /// Keys whose history is not linearizable.
    pub violations: usize,
    /// A few explanations (key: what).
    pub examples: Vec<String>,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} keys, {} operations ({} reads): {} not linearizable",
            self.keys, self.operations, self.reads, self.violations
        )?;
        for e in &self.examples {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

/// Check `ops` key by key; `failed` are tokens whose add definitely failed (never visible).
pub fn check(ops: &[Op], failed: &HashSet<String>) -> Verdict {
    let mut by_key: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for op in ops {
        by_key.entry(&op.key).or_default().push(op);
    }
    let mut verdict = Verdict {
        keys: by_key.len(),
        operations: ops.len(),
        reads: ops
            .iter()
            .filter(|o| matches!(o.kind, Kind::Read(_)))
            .count(),
        ..Verdict::default()
    };
    for (key, ops) in by_key {
        if let Err(why) = check_key(&ops, failed) {
            verdict.violations += 1;
            if verdict.examples.len() < 5 {
                verdict.examples.push(format!("{key}: {why}"));
            }
        }
    }
    verdict
}

/// One key's history: `Ok` if linearizable, else why not.
///
/// Near-linear, so soak-sized histories check in seconds: real-time order goes through a chain
/// of time points (an operation points at the point of its completion, each point at the next
/// and at the operations invoked after it) instead of an edge per pair, and a read gets an
/// edge only to the adds concurrent with it — for the others real time already decides, and
/// the read must agree with it (an add that completed before the read began must be in it; one
/// invoked after the read ended must not be).
fn check_key(ops: &[&Op], failed: &HashSet<String>) -> Result<(), String> {
    let (returned, nodes) = participants(ops);
    let adds: HashMap<&str, usize> = nodes
        .iter()
        .enumerate()
        .filter_map(|(i, o)| match &o.kind {
            Kind::Add(token) => Some((token.as_str(), i)),
            Kind::Read(_) => None,
        })
        .collect();
    for token in &returned {
        if failed.contains(*token) {
            return Err(format!("a read returned {token}, whose add failed"));
        }
        if !adds.contains_key(token) {
            return Err(format!(
                "a read returned {token}, which was never added here"
            ));
        }
    }
    let n = nodes.len();
    // Time points: every invocation and completion, in time order (a completion after an
    // invocation at the same instant: "before" is strict).
    let mut points: Vec<(Instant, bool, usize)> = Vec::with_capacity(2 * n);
    for (i, op) in nodes.iter().enumerate() {
        points.push((op.invoked, false, i));
        if let Some(done) = op.completed {
            points.push((done, true, i));
        }
    }
    points.sort_by_key(|&(at, completion, i)| (at, completion, i));
    // Nodes 0..n are the operations, n.. the time points.
    let mut after: Vec<Vec<usize>> = vec![Vec::new(); n + points.len()];
    for (p, &(_, completion, i)) in points.iter().enumerate() {
        if p + 1 < points.len() {
            after[n + p].push(n + p + 1);
        }
        if completion {
            after[i].push(n + p);
        } else {
            after[n + p].push(i);
        }
    }
    // Reads against adds.
    let mut by_invocation: Vec<usize> = adds.values().copied().collect();
    by_invocation.sort_by_key(|&a| nodes[a].invoked);
    let mut by_completion: Vec<usize> = by_invocation
        .iter()
        .copied()
        .filter(|&a| nodes[a].completed.is_some())
        .collect();
    by_completion.sort_by_key(|&a| nodes[a].completed);
    let longest = by_completion
        .iter()
        .map(|&a| nodes[a].completed.expect("completed") - nodes[a].invoked)
        .max()
        .unwrap_or_default();
    let unknown: Vec<usize> = by_invocation
        .iter()
        .copied()
        .filter(|&a| nodes[a].completed.is_none())
        .collect();
    for (r, op) in nodes.iter().enumerate() {
        let (Kind::Read(set), Some(read_done)) = (&op.kind, op.completed) else {
            continue;
        };
        // Completed before the read began: must be in it.
        let before =
            by_completion.partition_point(|&a| nodes[a].completed.expect("completed") < op.invoked);
        let seen_before = set
            .iter()
            .filter(|t| {
                adds.get(t.as_str())
                    .and_then(|&a| nodes[a].completed)
                    .is_some_and(|done| done < op.invoked)
            })
            .count();
        if seen_before < before {
            let missing = by_completion[..before]
                .iter()
                .find_map(|&a| match &nodes[a].kind {
                    Kind::Add(token) if !set.contains(token) => Some((token, a)),
                    _ => None,
                })
                .expect("a missing token");
            return Err(format!(
                "stale read: {} was acknowledged {:?} before a read that did not return it",
                missing.0,
                op.invoked - nodes[missing.1].completed.expect("completed")
            ));
        }
        // Invoked after the read ended: must not be in it.
        if let Some(token) = set.iter().find(|t| {
            adds.get(t.as_str())
                .is_some_and(|&a| nodes[a].invoked > read_done)
        }) {
            return Err(format!(
                "a read returned {token} before its add was invoked"
            ));
        }
        // Concurrent: ordered by what the read returned.
        let from = by_invocation.partition_point(|&a| nodes[a].invoked + longest < op.invoked);
        let to = by_invocation.partition_point(|&a| nodes[a].invoked <= read_done);
        let concurrent = by_invocation[from..to]
            .iter()
            .copied()
            .filter(|&a| nodes[a].completed.is_some_and(|done| done >= op.invoked))
            .chain(
                unknown
                    .iter()
                    .copied()
                    .filter(|&a| nodes[a].invoked <= read_done),
            );
        for a in concurrent {
            let Kind::Add(token) = &nodes[a].kind else {
                continue;
            };
            if set.contains(token) {
                after[a].push(r);
            } else {
                after[r].push(a);
            }
        }
    }
    if acyclic(&after) {
        Ok(())
    } else {
        Err(explain(&nodes))
    }
}

/// The tokens some read returned, and the operations that take part in the check: every read,
/// every acknowledged add, and the adds of unknown outcome that some read returned (one no read
/// returned may never have happened).
fn participants<'a>(ops: &[&'a Op]) -> (HashSet<&'a str>, Vec<&'a Op>) {
    let returned: HashSet<&str> = ops
        .iter()
        .filter_map(|o| match &o.kind {
            Kind::Read(set) => Some(set.iter().map(String::as_str)),
            Kind::Add(_) => None,
        })
        .flatten()
        .collect();
    let nodes = ops
        .iter()
        .copied()
        .filter(|o| match &o.kind {
            Kind::Read(_) => true,
            Kind::Add(token) => o.completed.is_some() || returned.contains(token.as_str()),
        })
        .collect();
    (returned, nodes)
}

/// Whether the graph (`after[a]`: the nodes after `a`) has no cycle (Kahn's algorithm).
fn acyclic(after: &[Vec<usize>]) -> bool {
    let mut incoming = vec![0usize; after.len()];
    for next in after {
        for &b in next {
            incoming[b] += 1;
        }
    }
    let mut ready: Vec<usize> = (0..after.len()).filter(|&i| incoming[i] == 0).collect();
    let mut ordered = 0;
    while let Some(i) = ready.pop() {
        ordered += 1;
        for &b in &after[i] {
            incoming[b] -= 1;
            if incoming[b] == 0 {
                ready.push(b);
            }
        }
    }
    ordered == after.len()
}

/// Name the simplest pattern behind a cycle: two reads in real-time order where the later lost
/// a token the earlier returned, or reads that disagree on the order of concurrent adds.
fn explain(nodes: &[&Op]) -> String {
    let mut reads: Vec<&Op> = nodes
        .iter()
        .copied()
        .filter(|o| matches!(o.kind, Kind::Read(_)))
        .collect();
    reads.sort_by_key(|o| o.invoked);
    for (i, first) in reads.iter().enumerate() {
        let (Kind::Read(early), Some(done)) = (&first.kind, first.completed) else {
            continue;
        };
        for later in &reads[i + 1..] {
            let Kind::Read(set) = &later.kind else {
                continue;
            };
            if done < later.invoked
                && let Some(lost) = early.difference(set).next()
            {
                return format!("a read lost {lost}, which an earlier read had returned");
            }
        }
    }
    "the reads disagree on the order of concurrent adds (no order explains them all)".into()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    struct History {
        t0: Instant,
        ops: Vec<Op>,
    }

    impl History {
        fn new() -> Self {
            Self {
                t0: Instant::now(),
                ops: Vec::new(),
            }
        }

        fn at(&self, ms: u64) -> Instant {
            self.t0 + Duration::from_millis(ms)
        }

        fn add(&mut self, token: &str, from: u64, to: Option<u64>) -> &mut Self {
            self.ops.push(Op {
                key: "k".into(),
                kind: Kind::Add(token.into()),
                invoked: self.at(from),
                completed: to.map(|t| self.at(t)),
            });
            self
        }

        fn read(&mut self, tokens: &[&str], from: u64, to: u64) -> &mut Self {
            self.ops.push(Op {
                key: "k".into(),
                kind: Kind::Read(tokens.iter().map(|t| t.to_string()).collect()),
                invoked: self.at(from),
                completed: Some(self.at(to)),
            });
            self
        }

        fn violations(&self) -> usize {
            check(&self.ops, &HashSet::new()).violations
        }
    }

    #[test]
    fn sequential_adds_and_reads_are_linearizable() {
        let mut h = History::new();
        h.add("a", 0, Some(10))
            .read(&["a"], 20, 30)
            .add("b", 40, Some(50))
            .read(&["a", "b"], 60, 70);
        assert_eq!(h.violations(), 0);
    }

    #[test]
    fn a_read_concurrent_with_an_add_may_or_may_not_see_it() {
        let mut h = History::new();
        h.add("a", 0, Some(100))
            .read(&[], 10, 20)
            .read(&["a"], 30, 40);
        assert_eq!(h.violations(), 0);
        let mut h = History::new();
        h.add("a", 0, Some(100)).read(&["a"], 10, 20);
        assert_eq!(h.violations(), 0);
    }

    #[test]
    fn a_stale_read_is_caught() {
        let mut h = History::new();
        h.add("a", 0, Some(10)).read(&[], 20, 30);
        let verdict = check(&h.ops, &HashSet::new());
        assert_eq!(verdict.violations, 1);
        assert!(verdict.examples[0].contains("stale read"), "{verdict}");
    }

    #[test]
    fn reads_going_back_in_time_are_caught() {
        // The add is concurrent with both reads, but once one read returned it, a later one
        // must too.
        let mut h = History::new();
        h.add("a", 0, Some(100))
            .read(&["a"], 10, 20)
            .read(&[], 30, 40);
        let verdict = check(&h.ops, &HashSet::new());
        assert_eq!(verdict.violations, 1);
        assert!(verdict.examples[0].contains("lost a"), "{verdict}");
    }

    #[test]
    fn reads_must_agree_on_the_order_of_concurrent_adds() {
        // Two concurrent adds; one read sees only a, a concurrent read only b: no single order
        // of the adds explains both... unless the reads are concurrent too, where it still
        // fails: a before read1 before b, and b before read2 before a.
        let mut h = History::new();
        h.add("a", 0, Some(100))
            .add("b", 0, Some(100))
            .read(&["a"], 10, 90)
            .read(&["b"], 10, 90);
        assert_eq!(h.violations(), 1);
    }

    #[test]
    fn an_add_of_unknown_outcome_may_happen_late_or_never() {
        let mut h = History::new();
        h.add("a", 0, None).read(&[], 50, 60).read(&["a"], 70, 80);
        assert_eq!(h.violations(), 0);
        let mut h = History::new();
        h.add("a", 0, None).read(&[], 50, 60);
        assert_eq!(h.violations(), 0);
    }

    #[test]
    fn phantom_and_failed_tokens_are_caught() {
        let mut h = History::new();
        h.read(&["ghost"], 0, 10);
        assert_eq!(h.violations(), 1);
        let mut h = History::new();
        h.add("a", 0, None).read(&["a"], 20, 30);
        let failed: HashSet<String> = ["a".to_string()].into();
        assert_eq!(check(&h.ops, &failed).violations, 1);
    }

    /// The definition, all pairs: real time and every read against every add.
    fn reference(ops: &[&Op]) -> bool {
        let (_, nodes) = participants(ops);
        let n = nodes.len();
        let mut after = vec![Vec::new(); n];
        for a in 0..n {
            for b in 0..n {
                if a != b && nodes[a].completed.is_some_and(|d| d < nodes[b].invoked) {
                    after[a].push(b);
                }
                if let (Kind::Add(t), Kind::Read(set)) = (&nodes[a].kind, &nodes[b].kind) {
                    if set.contains(t) {
                        after[a].push(b);
                    } else {
                        after[b].push(a);
                    }
                }
            }
        }
        acyclic(&after)
    }

    #[test]
    fn the_fast_check_agrees_with_the_definition_on_random_histories() {
        use rand::rngs::StdRng;
        use rand::{Rng, SeedableRng};
        let mut rng = StdRng::seed_from_u64(7);
        let (mut linearizable, mut not) = (0, 0);
        for _ in 0..3_000 {
            let mut h = History::new();
            let adds = rng.random_range(1..5);
            for i in 0..adds {
                let from = rng.random_range(0..40);
                let to = (!rng.random_bool(0.15)).then(|| from + rng.random_range(0..20));
                h.add(&format!("t{i}"), from, to);
            }
            for _ in 0..rng.random_range(1..4) {
                let from = rng.random_range(0..60);
                let to = from + rng.random_range(0..20);
                let tokens: Vec<String> = (0..adds)
                    .filter(|_| rng.random_bool(0.5))
                    .map(|i| format!("t{i}"))
                    .collect();
                let tokens: Vec<&str> = tokens.iter().map(String::as_str).collect();
                h.read(&tokens, from, to);
            }
            let ops: Vec<&Op> = h.ops.iter().collect();
            let expected = reference(&ops);
            assert_eq!(
                check_key(&ops, &HashSet::new()).is_ok(),
                expected,
                "{:#?}",
                h.ops
            );
            if expected {
                linearizable += 1;
            } else {
                not += 1;
            }
        }
        // Both verdicts were exercised.
        assert!(linearizable > 300 && not > 300, "{linearizable} / {not}");
    }

    #[test]
    fn keys_are_checked_apart() {
        let mut h = History::new();
        h.add("a", 0, Some(10));
        h.ops.push(Op {
            key: "other".into(),
            kind: Kind::Read(BTreeSet::new()),
            invoked: h.at(20),
            completed: Some(h.at(30)),
        });
        let verdict = check(&h.ops, &HashSet::new());
        assert_eq!((verdict.keys, verdict.violations), (2, 0));
    }
}
