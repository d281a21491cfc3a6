//! Partition ownership through a Kafka consumer group (`ARCHITECTURE.md`, "Partition ownership").
//!
//! The processors of a service join the group `<prefix><service>.owners`, subscribed to the
//! service's journal topic with the cooperative-sticky assignor: the group decides which
//! processor owns which partition. Commands do not flow through this consumer — assigned
//! partitions are paused at once, so it never fetches; the group is only the membership and
//! assignment mechanism. Assignments and revocations are reported as [`Event`]s; a revocation
//! waits (bounded) until the owner has stopped and committed its in-flight work, so partitions
//! are handed over cleanly on graceful shutdown and scale-in.
//!
//! The membership also keeps a [`Lease`]: proof, renewed by a probe thread, that the group
//! cannot have given this member's partitions to anyone else yet. A member cut off from Kafka
//! stops serving when its lease ends, before a new owner can serve.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::{Error, Options, metrics as m};

/// A change of this member's partitions.
#[derive(Debug)]
pub enum Event {
    /// These partitions are now ours: fence, recover, then serve.
    Assigned(Vec<u32>),
    /// These partitions are being taken away: stop taking commands, finish and commit the
    /// in-flight batch, release — then send on `done` (the group waits for it, bounded).
    Revoked {
        partitions: Vec<u32>,
        done: std::sync::mpsc::SyncSender<()>,
    },
}

struct Context {
    topic: String,
    events: mpsc::Sender<Event>,
    revoke_timeout: Duration,
    lease: Lease,
}

impl ClientContext for Context {}

fn partitions_of(topic: &str, tpl: &rdkafka::TopicPartitionList) -> Vec<u32> {
    let mut out: Vec<u32> = tpl
        .elements()
        .iter()
        .filter(|e| e.topic() == topic)
        .map(|e| e.partition() as u32)
        .collect();
    out.sort_unstable();
    out
}

impl ConsumerContext for Context {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            if consumer.assignment_lost() {
                // Evicted (the session expired): the partitions may be served elsewhere already.
                self.lease.end();
                self.lease
                    .note_end("the group evicted this member; its partitions are lost");
            }
            let partitions = partitions_of(&self.topic, tpl);
            if partitions.is_empty() {
                return;
            }
            info!(?partitions, "partitions revoked; handing them over");
            let (done, wait) = std::sync::mpsc::sync_channel(1);
            if self
                .events
                .blocking_send(Event::Revoked { partitions, done })
                .is_ok()
                && wait.recv_timeout(self.revoke_timeout).is_err()
            {
                warn!(timeout = ?self.revoke_timeout, "owner did not release revoked partitions in time; releasing anyway (the next owner fences it)");
            }
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                // Never fetch: the group is only for membership and assignment.
                if let Err(e) = consumer.pause(tpl) {
                    warn!(error = %e, "pausing assigned partitions failed");
                }
                let partitions = partitions_of(&self.topic, tpl);
                if !partitions.is_empty() {
                    info!(?partitions, "partitions assigned");
                    let _ = self.events.blocking_send(Event::Assigned(partitions));
                }
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => warn!(error = %e, "rebalance error"),
        }
    }
}

/// This process's membership in a service's ownership group. Dropping it without
/// [`Membership::leave`] leaves the group abruptly (partitions move after the session timeout).
pub struct Membership {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// This member's lease on the partitions the group gave it (`ARCHITECTURE.md`, "The ownership
/// lease"). A cheap handle (`Clone`); the processor asks [`Lease::held`] before it serves a
/// command of an owned partition, reads included.
///
/// Why: the group moves a member's partitions once the coordinator has not heard from it for a
/// session timeout. A member cut off from Kafka (but not from its clients) learns that only when
/// the network heals, and until then it would answer reads from the state in its memory while a
/// new owner already writes. The transactional fence stops its writes; the lease stops its reads.
///
/// How: every [`probe_every`] the membership commits an offset of one assigned partition
/// synchronously. The coordinator accepts a commit only from a current member of the current
/// generation, and in the classic protocol an accepted commit also restarts the member's
/// session timer (as a heartbeat does, in the `Stable` and `PreparingRebalance` states). So a
/// commit sent at `t` (our monotonic clock) and accepted proves the coordinator will not
/// expire this member before `t + session timeout` (its clock). The lease then runs until
/// `t + LEASE_SHARE × session timeout`: the rest of the session absorbs a bounded drift between
/// the two clocks and the moments between the check and the answer; a new owner needs the
/// expiry, a rebalance, its fence and its recovery on top before it answers anything.
#[derive(Clone)]
pub struct Lease {
    inner: Arc<LeaseState>,
}

struct LeaseState {
    /// The time base of `until_ms` (ms since it).
    clock: Instant,
    /// End of the lease, ms since `clock`; 0 = never held.
    until_ms: AtomicU64,
    length: Duration,
    /// The current end was reported (or there was no lease to end): see [`Lease::note_end`].
    end_noted: AtomicBool,
}

/// The share of the session timeout a successful probe lets this member serve for.
pub const LEASE_SHARE: f64 = 0.8;

impl Lease {
    /// A lease (not held yet) for a group with `session_timeout_ms`.
    pub fn new(session_timeout_ms: u32) -> Self {
        Self {
            inner: Arc::new(LeaseState {
                clock: Instant::now(),
                until_ms: AtomicU64::new(0),
                length: Duration::from_millis(session_timeout_ms.into()).mul_f64(LEASE_SHARE),
                end_noted: AtomicBool::new(true),
            }),
        }
    }

    fn ms_since_start(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.inner.clock).as_millis() as u64
    }

    /// Whether the lease runs now.
    pub fn held(&self) -> bool {
        self.ms_since_start(Instant::now()) < self.inner.until_ms.load(Ordering::Acquire)
    }

    /// How long the lease still runs (zero when it ended or was never held).
    pub fn remaining(&self) -> Duration {
        let now = self.ms_since_start(Instant::now());
        Duration::from_millis(
            self.inner
                .until_ms
                .load(Ordering::Acquire)
                .saturating_sub(now),
        )
    }

    /// A probe sent at `sent` succeeded: the lease runs until `sent` + its length (never
    /// shortened by an older probe answering late).
    pub(crate) fn renew(&self, sent: Instant) {
        let until = self.ms_since_start(sent) + self.inner.length.as_millis() as u64;
        self.inner.until_ms.fetch_max(until, Ordering::AcqRel);
        if self.held() {
            self.inner.end_noted.store(false, Ordering::Release);
        }
    }

    /// Count and report the end of the lease once per lease (the probe noticing it and an
    /// eviction may both see it).
    fn note_end(&self, why: &str) {
        if !self.held() && !self.inner.end_noted.swap(true, Ordering::AcqRel) {
            metrics::counter!(m::LEASE_LAPSES).increment(1);
            warn!(
                "the ownership lease ended ({why}); not serving owned partitions until the group confirms this member again"
            );
        }
    }

    /// End the lease now (the member lost its partitions or leaves the group).
    pub(crate) fn end(&self) {
        self.inner.until_ms.store(0, Ordering::Release);
    }
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("held", &self.held())
            .field("remaining", &self.remaining())
            .finish()
    }
}

/// How often the membership probes (renews the lease): an eighth of the session timeout, so
/// several probes may fail before the lease ends.
pub fn probe_every(session_timeout_ms: u32) -> Duration {
    Duration::from_millis(u64::from(session_timeout_ms) / 8).max(Duration::from_millis(100))
}

impl Membership {
    /// Join `group`, subscribed to `topic`. Returns the membership and the stream of ownership
    /// events. `revoke_timeout` bounds how long a revocation waits for the owner to release;
    /// `lease` is renewed while this member provably holds its partitions (see [`Lease`]).
    pub fn join(
        options: &Options,
        group: &str,
        topic: &str,
        member_id: &str,
        revoke_timeout: Duration,
        lease: &Lease,
    ) -> Result<(Self, mpsc::Receiver<Event>), Error> {
        options.validate()?;
        let (tx, rx) = mpsc::channel(64);
        let mut config = options.consumer_config(group);
        config
            // The lease relies on the classic protocol: there an accepted offset commit restarts
            // the member's session timer (see `Lease`).
            .set("group.protocol", "classic")
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("client.id", member_id)
            .set(
                "heartbeat.interval.ms",
                (options.session_timeout_ms / 3).max(100).to_string(),
            );
        let context = Context {
            topic: topic.to_string(),
            events: tx,
            revoke_timeout,
            lease: lease.clone(),
        };
        let consumer: Arc<BaseConsumer<Context>> = Arc::new(
            config
                .create_with_context(context)
                .map_err(|e| Error::kafka(format!("joining group {group}"), e))?,
        );
        consumer
            .subscribe(&[topic])
            .map_err(|e| Error::kafka(format!("subscribing {group} to {topic}"), e))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop_flag = Arc::clone(&stop);
        let group_name = group.to_string();
        let probe = Probe {
            consumer: Arc::clone(&consumer),
            topic: topic.to_string(),
            lease: lease.clone(),
            stop: Arc::clone(&stop),
            every: probe_every(options.session_timeout_ms),
        };
        // Detached: a probe may wait on an unreachable coordinator for a long time; it ends
        // with its next answer once `stop` is set.
        std::thread::Builder::new()
            .name(format!("lease-{group}"))
            .spawn(move || probe.run())
            .map_err(|e| Error::InvalidOption(format!("spawning the lease thread: {e}")))?;
        let thread = std::thread::Builder::new()
            .name(format!("ownership-{group}"))
            .spawn(move || poll_loop(consumer, stop_flag, &group_name, revoke_timeout))
            .map_err(|e| Error::InvalidOption(format!("spawning the ownership thread: {e}")))?;
        Ok((
            Self {
                stop,
                thread: Some(thread),
            },
            rx,
        ))
    }

    /// Leave the group gracefully: revoke (and wait for the release of) every partition, then
    /// close the consumer so the others take over at once.
    pub async fn leave(mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// The lease's renewals: a synchronous offset commit of one assigned partition every
/// `every` (see [`Lease`]).
struct Probe {
    consumer: Arc<BaseConsumer<Context>>,
    topic: String,
    lease: Lease,
    stop: Arc<AtomicBool>,
    every: Duration,
}

impl Probe {
    /// Every `every`: send a probe unless one is still out (a commit to an unreachable
    /// coordinator may take long; it runs on a worker thread so the lease's end is noticed and
    /// reported on time), and take the answers in.
    fn run(self) {
        let (ask, asks) = std::sync::mpsc::sync_channel::<TopicPartitionList>(1);
        let (answer, answers) = std::sync::mpsc::channel::<(Instant, bool)>();
        let consumer = Arc::clone(&self.consumer);
        let worker = std::thread::Builder::new()
            .name("lease-probe".into())
            .spawn(move || {
                for tpl in asks {
                    let sent = Instant::now();
                    let ok = match consumer.commit(&tpl, CommitMode::Sync) {
                        Ok(()) => true,
                        Err(e) => {
                            debug!(error = %e, "lease probe failed");
                            false
                        }
                    };
                    if answer.send((sent, ok)).is_err() {
                        return;
                    }
                }
            });
        if let Err(e) = worker {
            warn!(error = %e, "cannot start the lease probe; owned partitions will not be served");
            return;
        }
        let (mut was_held, mut out) = (false, false);
        while !self.stop.load(Ordering::Acquire) {
            let started = Instant::now();
            let probe = self.probe();
            let assigned = probe.is_some();
            if !out && let Some(tpl) = probe {
                out = ask.try_send(tpl).is_ok();
            }
            while started.elapsed() < self.every && !self.stop.load(Ordering::Acquire) {
                match answers.recv_timeout(Duration::from_millis(20)) {
                    Ok((sent, ok)) => {
                        out = false;
                        if ok {
                            self.lease.renew(sent);
                            metrics::counter!(m::LEASE_RENEWALS).increment(1);
                        } else {
                            metrics::counter!(m::LEASE_PROBE_FAILURES).increment(1);
                        }
                    }
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
                }
            }
            let held = self.lease.held();
            // An end with nothing assigned (every partition handed over) is no lapse.
            if !held && assigned && !self.stop.load(Ordering::Acquire) {
                self.lease
                    .note_end("the group coordinator did not confirm this member in time");
            } else if !was_held && held {
                info!(remaining = ?self.lease.remaining(), "ownership lease held");
            }
            was_held = held;
        }
    }

    /// The probe's commit: offset 0 of the lowest assigned partition of `topic` (the group
    /// never fetches, so the offset means nothing), or `None` with nothing assigned.
    fn probe(&self) -> Option<TopicPartitionList> {
        let partition = self.first_assigned()?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.topic, partition, Offset::Offset(0))
            .ok()?;
        Some(tpl)
    }

    /// The lowest partition of `topic` assigned to this member, if any.
    fn first_assigned(&self) -> Option<i32> {
        let tpl = self.consumer.assignment().ok()?;
        tpl.elements()
            .iter()
            .filter(|e| e.topic() == self.topic)
            .map(|e| e.partition())
            .min()
    }
}

fn poll_loop(
    consumer: Arc<BaseConsumer<Context>>,
    stop: Arc<AtomicBool>,
    group: &str,
    revoke_timeout: Duration,
) {
    while !stop.load(Ordering::Acquire) {
        if let Some(Err(e)) = consumer.poll(Duration::from_millis(100)) {
            if e.rdkafka_error_code()
                == Some(rdkafka::types::RDKafkaErrorCode::InvalidSessionTimeout)
            {
                tracing::error!(
                    group,
                    "the broker refuses kafka.session-timeout-ms: it must lie within the broker's group.min.session.timeout.ms (default 6000) and group.max.session.timeout.ms; this processor cannot join the group"
                );
            } else {
                warn!(group, error = %e, "ownership group consumer error");
            }
        }
    }
    // Graceful leave: unsubscribing revokes every partition through the rebalance callback.
    consumer.context().lease.end();
    consumer.unsubscribe();
    let deadline = Instant::now() + revoke_timeout + Duration::from_secs(1);
    while Instant::now() < deadline {
        let _ = consumer.poll(Duration::from_millis(50));
        match consumer.assignment() {
            Ok(tpl) if tpl.count() == 0 => break,
            Err(_) => break,
            _ => {}
        }
    }
    info!(group, "left the ownership group");
    drop(consumer);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_runs_from_the_probe_that_renewed_it() {
        let lease = Lease::new(10_000);
        assert!(!lease.held(), "never held before a probe");
        assert_eq!(lease.remaining(), Duration::ZERO);
        let sent = Instant::now();
        lease.renew(sent);
        assert!(lease.held());
        let until = lease.inner.until_ms.load(Ordering::Acquire);
        assert_eq!(
            until,
            lease.ms_since_start(sent) + 8_000,
            "80% of the session"
        );
        assert!(lease.remaining() <= Duration::from_millis(8_000));
        // An older probe answering late never shortens it.
        lease.renew(sent - Duration::from_millis(5_000));
        assert_eq!(lease.inner.until_ms.load(Ordering::Acquire), until);
        lease.end();
        assert!(!lease.held());
        // The end is noted once, and again only after a renewal.
        assert!(!lease.inner.end_noted.load(Ordering::Acquire));
        lease.note_end("test");
        assert!(lease.inner.end_noted.load(Ordering::Acquire));
        lease.renew(Instant::now());
        assert!(!lease.inner.end_noted.load(Ordering::Acquire));
    }

    #[test]
    fn a_probe_older_than_the_lease_length_renews_nothing() {
        let lease = Lease::new(1_000);
        std::thread::sleep(Duration::from_millis(900));
        // Sent 900 ms ago: 800 ms of lease ended 100 ms ago.
        lease.renew(lease.inner.clock);
        assert!(!lease.held());
    }

    #[test]
    fn probes_come_several_times_per_lease() {
        assert_eq!(probe_every(10_000), Duration::from_millis(1_250));
        assert_eq!(probe_every(6_000), Duration::from_millis(750));
        assert_eq!(probe_every(500), Duration::from_millis(100));
        let lease_ms = 6_000.0 * LEASE_SHARE;
        assert!(lease_ms / probe_every(6_000).as_millis() as f64 >= 6.0);
    }
}
