//! Who is alive among the replicas of a service, and how far each has read the broadcast topic:
//! heartbeats in, the live set and `ALL` acknowledgements out. Pure (time comes in as
//! arguments), so its tests need no Kafka.
//!
//! * A replica is **live** while its latest heartbeat is younger than the heartbeat timeout
//!   (the heartbeat's own timestamp counts, so heartbeats read back at start-up that are
//!   already old do not make a dead replica live).
//! * An **`ALL` write** of the record at `(partition, offset)` is acknowledged once every live
//!   replica reported a next offset beyond it for that partition; a replica that stops being
//!   live stops being waited for.
//! * A replica is **departed** once it has been gone for the prune delay, counted from its
//!   last heartbeat or, for one never heard from, from this replica's start.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use statehouse_crdt::ReplicaId;
use statehouse_schemas::avro::AppliedOffset;
use tokio::sync::oneshot;
use tokio::time::Instant;

pub(crate) struct Members {
    me: ReplicaId,
    timeout: Duration,
    started: Instant,
    others: HashMap<ReplicaId, Seen>,
    live: Arc<BTreeSet<ReplicaId>>,
    waiters: Vec<Waiter>,
}

struct Seen {
    last: Instant,
    applied: HashMap<i32, i64>,
}

struct Waiter {
    partition: i32,
    offset: i64,
    done: oneshot::Sender<()>,
}

impl Members {
    pub(crate) fn new(me: ReplicaId, timeout: Duration, now: Instant) -> Self {
        Self {
            me,
            timeout,
            started: now,
            others: HashMap::new(),
            live: Arc::new(BTreeSet::new()),
            waiters: Vec::new(),
        }
    }

    /// The other live replicas.
    pub(crate) fn live(&self) -> Arc<BTreeSet<ReplicaId>> {
        Arc::clone(&self.live)
    }

    /// A heartbeat of `replica`, `age` old. Returns whether the live set changed.
    pub(crate) fn heartbeat(
        &mut self,
        replica: ReplicaId,
        age: Duration,
        applied: &[AppliedOffset],
        now: Instant,
    ) -> bool {
        if replica == self.me {
            return false;
        }
        let at = now.checked_sub(age).unwrap_or(now);
        let seen = self.others.entry(replica).or_insert_with(|| Seen {
            last: at,
            applied: HashMap::new(),
        });
        seen.last = seen.last.max(at);
        for a in applied {
            let offset = seen.applied.entry(a.partition).or_insert(a.offset);
            *offset = (*offset).max(a.offset);
        }
        self.refresh(now)
    }

    /// Expire replicas not heard from in time. Returns whether the live set changed.
    pub(crate) fn refresh(&mut self, now: Instant) -> bool {
        let live: BTreeSet<ReplicaId> = self
            .others
            .iter()
            .filter(|(_, seen)| now.saturating_duration_since(seen.last) < self.timeout)
            .map(|(replica, _)| replica.clone())
            .collect();
        let changed = live != *self.live;
        if changed {
            self.live = Arc::new(live);
        }
        self.settle();
        changed
    }

    /// Wait until every live replica applied the record at `partition`/`offset` (at once when
    /// none has to).
    pub(crate) fn wait_all(&mut self, partition: i32, offset: i64) -> oneshot::Receiver<()> {
        let (done, rx) = oneshot::channel();
        self.waiters.push(Waiter {
            partition,
            offset,
            done,
        });
        self.settle();
        rx
    }

    fn settle(&mut self) {
        let (live, others) = (&self.live, &self.others);
        self.waiters.retain_mut(|w| {
            if w.done.is_closed() {
                return false;
            }
            let acked = live.iter().all(|r| {
                others
                    .get(r)
                    .and_then(|s| s.applied.get(&w.partition))
                    .is_some_and(|next| *next > w.offset)
            });
            if acked {
                let (done, _) = oneshot::channel();
                let _ = std::mem::replace(&mut w.done, done).send(());
            }
            !acked
        });
    }

    /// How long `replica` has been gone (`None`: it is live, or it is this replica).
    pub(crate) fn gone_for(&self, replica: &ReplicaId, now: Instant) -> Option<Duration> {
        if *replica == self.me || self.live.contains(replica) {
            return None;
        }
        let since = self.others.get(replica).map_or(self.started, |s| s.last);
        Some(now.saturating_duration_since(since.max(self.started)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(name: &str) -> ReplicaId {
        ReplicaId::new(name)
    }

    fn at(partition: i32, offset: i64) -> AppliedOffset {
        AppliedOffset { partition, offset }
    }

    #[test]
    fn replicas_are_live_until_their_heartbeats_stop() {
        let t0 = Instant::now();
        let mut m = Members::new(r("me"), Duration::from_secs(5), t0);
        assert!(
            !m.heartbeat(r("me"), Duration::ZERO, &[], t0),
            "itself is not a member"
        );
        assert!(m.heartbeat(r("a"), Duration::ZERO, &[], t0));
        assert!(!m.heartbeat(r("a"), Duration::ZERO, &[], t0 + Duration::from_secs(1)));
        // An old heartbeat read back at start does not make a replica live.
        assert!(!m.heartbeat(r("b"), Duration::from_secs(60), &[], t0));
        assert_eq!(*m.live(), BTreeSet::from([r("a")]));
        assert!(!m.refresh(t0 + Duration::from_millis(5_999)));
        assert!(m.refresh(t0 + Duration::from_secs(6)));
        assert!(m.live().is_empty());
        assert_eq!(
            m.gone_for(&r("a"), t0 + Duration::from_secs(16)),
            Some(Duration::from_secs(15))
        );
        // Never heard from: gone since this replica started.
        assert_eq!(
            m.gone_for(&r("z"), t0 + Duration::from_secs(16)),
            Some(Duration::from_secs(16))
        );
        assert_eq!(m.gone_for(&r("me"), t0), None);
    }

    #[test]
    fn all_writes_wait_for_every_live_replica_and_not_for_dead_ones() {
        let t0 = Instant::now();
        let mut m = Members::new(r("me"), Duration::from_secs(5), t0);
        let mut alone = m.wait_all(0, 10);
        assert!(alone.try_recv().is_ok(), "nobody else to wait for");

        m.heartbeat(r("a"), Duration::ZERO, &[at(0, 3)], t0);
        m.heartbeat(r("b"), Duration::ZERO, &[at(0, 11)], t0);
        let mut w = m.wait_all(0, 10);
        assert!(w.try_recv().is_err(), "a has not read offset 10");
        m.heartbeat(r("a"), Duration::ZERO, &[at(0, 10), at(1, 50)], t0);
        assert!(
            w.try_recv().is_err(),
            "offset 10 itself is not applied until next = 11"
        );
        m.heartbeat(r("a"), Duration::ZERO, &[at(0, 11)], t0);
        assert!(w.try_recv().is_ok());

        let mut w = m.wait_all(1, 60);
        m.heartbeat(
            r("b"),
            Duration::ZERO,
            &[at(1, 70)],
            t0 + Duration::from_secs(3),
        );
        assert!(w.try_recv().is_err(), "a lags on partition 1");
        // a dies: it is no longer waited for.
        m.refresh(t0 + Duration::from_secs(6));
        assert_eq!(*m.live(), BTreeSet::from([r("b")]));
        assert!(w.try_recv().is_ok());
    }
}
