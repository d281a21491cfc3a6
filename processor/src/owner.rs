//! The partitions this processor owns: follows the ownership group (assign → take over,
//! revoke → release) and keeps every assigned partition served.
//!
//! An assigned partition can stop being served while the group still gives it to us: taking it
//! over failed (the broker was away, its transaction coordinator was still loading), or its
//! writer stopped — a transaction of unknown outcome, or fenced. The group sees nothing wrong
//! and will not reassign it, so without a repair it would stay dark until the next rebalance.
//! The supervisor here notices such partitions and recovers them: release the broken one, take
//! it over again (a new `init_transactions` settles the in-doubt transaction and fences every
//! older producer, then the partition is read to its end), publish the route. It backs off per
//! partition, never repairs while the process may have been paused or its ownership lease is
//! not held (such a process may have lost the partition without knowing yet), and after a
//! fence waits a session timeout first and gives up when the routing table names a newer owner:
//! a fence by a real new owner is followed by the revocation, which ends the repair.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use statehouse_kafka::ownership::{Event, Membership};
use statehouse_kafka::partition_writer::Stop;
use statehouse_kafka::publisher::Publisher;
use statehouse_runtime::Health;
use statehouse_schemas::avro::{self, AvroRecord};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::command::Host;
use crate::node::Node;
use crate::partition::Partition;
use crate::{Error, metrics};

/// How often the supervisor looks at the assigned partitions.
const CHECK_EVERY: Duration = Duration::from_millis(500);
/// First and longest wait between two repairs of one partition.
const FIRST_RETRY: Duration = Duration::from_millis(500);
const MAX_RETRY: Duration = Duration::from_secs(10);

/// What is wrong with an assigned partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Broken {
    /// Taking it over failed: nothing serves it.
    Missing,
    /// Its writer stopped after a transaction of unknown outcome (or was told to stop).
    Stopped,
    /// Its writer was fenced: maybe by a new owner (then the revocation follows), maybe by a
    /// stale producer.
    Fenced,
}

/// The repair state of one broken partition.
struct Repair {
    attempts: u32,
    next_at: Instant,
}

/// Follow the ownership group until shutdown, then hand every partition over.
pub(crate) async fn own_partitions(
    node: Arc<Node>,
    publisher: Publisher,
    health: Health,
    server: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    server_shutdown: CancellationToken,
) -> Result<(), Error> {
    let (membership, mut events) = Membership::join(
        &node.config.kafka,
        &node.env.service_topics.owners_group(),
        &node.env.service_topics.journal(),
        &node.processor_id,
        Duration::from_secs(30),
        &node.env.lease,
    )?;
    let mut leaving: Option<tokio::task::JoinHandle<()>> = None;
    let mut membership = Some(membership);
    let mut owner = Owner {
        node: Arc::clone(&node),
        publisher,
        assigned: BTreeSet::new(),
        repairs: HashMap::new(),
        unpublished: BTreeSet::new(),
    };
    let mut check = tokio::time::interval(CHECK_EVERY);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let event = tokio::select! {
            event = events.recv() => event,
            _ = node.shutdown.cancelled(), if membership.is_some() => {
                // Leave the group: the revocations arrive as events while it runs.
                health.set_ready(false);
                let m = membership.take().expect("checked");
                leaving = Some(tokio::spawn(m.leave()));
                continue;
            }
            _ = check.tick(), if membership.is_some() => {
                owner.report();
                owner.supervise().await;
                continue;
            }
        };
        let Some(event) = event else { break };
        match event {
            Event::Assigned(ids) => {
                owner.assigned.extend(ids.iter().copied());
                owner.report();
                let started = std::time::Instant::now();
                // Each partition serves as soon as its own takeover is done: a slow one does
                // not hold the others back.
                let mut takeovers: FuturesUnordered<_> = ids
                    .iter()
                    .map(|&id| {
                        let node = &node;
                        async move { (id, take_over(node, id).await) }
                    })
                    .collect();
                while let Some((id, result)) = takeovers.next().await {
                    match result {
                        Ok(partition) => {
                            owner.insert(partition);
                            // Ready as soon as a partition serves (commands to it succeed).
                            health.set_ready(true);
                        }
                        Err(e) => {
                            error!(partition = id, error = %e, "taking the partition over failed; retrying");
                            owner.failed(id, Broken::Missing);
                        }
                    }
                }
                drop(takeovers);
                owner.publish_routes().await;
                owner.report();
                info!(partitions = ?ids, owned = owner.owned(), took = ?started.elapsed(), "partitions serving");
                health.set_ready(true);
            }
            Event::Revoked { partitions, done } => {
                for id in &partitions {
                    owner.assigned.remove(id);
                    owner.repairs.remove(id);
                    owner.unpublished.remove(id);
                }
                let released: Vec<Arc<Partition>> = {
                    let mut map = node.partitions.write().expect("partitions lock");
                    partitions.iter().filter_map(|id| map.remove(id)).collect()
                };
                futures::future::join_all(
                    released.iter().map(|p| p.release(node.service.as_str())),
                )
                .await;
                let _ = done.send(());
                owner.report();
            }
        }
        if leaving.as_ref().is_some_and(|t| t.is_finished()) {
            break;
        }
    }
    if let Some(task) = leaving {
        let _ = task.await;
    }
    // Whatever is left (e.g. the group never assigned, or leave timed out) is released now.
    let rest: Vec<Arc<Partition>> = node
        .partitions
        .write()
        .expect("partitions lock")
        .drain()
        .map(|(_, p)| p)
        .collect();
    futures::future::join_all(rest.iter().map(|p| p.release(node.service.as_str()))).await;
    node.release_crdts().await;
    server_shutdown.cancel();
    let _ = server.await;
    info!(service = %node.service, "processor stopped");
    Ok(())
}

struct Owner {
    node: Arc<Node>,
    publisher: Publisher,
    /// What the group assigned to this member (and has not revoked).
    assigned: BTreeSet<u32>,
    repairs: HashMap<u32, Repair>,
    /// Served partitions whose routing record is not published yet.
    unpublished: BTreeSet<u32>,
}

impl Owner {
    fn owned(&self) -> usize {
        self.node.partitions.read().expect("partitions lock").len()
    }

    /// Export the partition gauges: owned (assigned), serving (taken over, writer running,
    /// lease held), recovering (a takeover or repair to do or under way).
    fn report(&self) {
        let lease = self.node.env.lease.held();
        let (mut serving, mut recovering) = (0, 0);
        {
            let held = self.node.partitions.read().expect("partitions lock");
            for id in &self.assigned {
                match held.get(id) {
                    Some(p) if !p.writer.is_stopped() => serving += usize::from(lease),
                    _ => recovering += 1,
                }
            }
        }
        metrics::partitions(
            self.node.service.as_str(),
            self.assigned.len(),
            serving,
            recovering,
        );
    }

    /// Serve a partition just taken over; its route is published next.
    fn insert(&mut self, partition: Arc<Partition>) {
        let id = partition.id;
        self.node
            .partitions
            .write()
            .expect("partitions lock")
            .insert(id, partition);
        self.repairs.remove(&id);
        self.unpublished.insert(id);
    }

    /// Publish the routing records not published yet; what fails is retried by the supervisor.
    async fn publish_routes(&mut self) {
        for id in std::mem::take(&mut self.unpublished) {
            let partition = self.node.partition(id);
            if let Some(partition) = partition
                && let Err(e) = publish_route(&self.node, &self.publisher, &partition).await
            {
                warn!(partition = id, error = %e, "publishing the routing record failed; retrying");
                self.unpublished.insert(id);
            }
        }
    }

    /// A takeover or repair of `id` failed: schedule the next attempt, backing off.
    fn failed(&mut self, id: u32, broken: Broken) {
        let now = Instant::now();
        match self.repairs.get_mut(&id) {
            Some(repair) => {
                repair.attempts += 1;
                let wait = FIRST_RETRY
                    .saturating_mul(1 << repair.attempts.min(6))
                    .min(MAX_RETRY);
                repair.next_at = now + wait;
            }
            None => {
                self.repairs.insert(
                    id,
                    Repair {
                        attempts: 0,
                        next_at: now + first_wait(&self.node, broken).max(FIRST_RETRY),
                    },
                );
            }
        }
    }

    /// Find the assigned partitions nobody serves, and recover those that are due.
    async fn supervise(&mut self) {
        if self.node.shutdown.is_cancelled()
            || !self.node.pause.may_serve()
            || !self.node.env.lease.held()
        {
            return;
        }
        let now = Instant::now();
        let mut due: Vec<(u32, Broken, Option<Arc<Partition>>)> = Vec::new();
        for &id in &self.assigned {
            let current = self.node.partition(id);
            let broken = match &current {
                None => Broken::Missing,
                Some(p) => match p.writer.stop_reason() {
                    None => continue,
                    Some(Stop::Fenced(_)) => Broken::Fenced,
                    Some(Stop::Unknown(_) | Stop::Closed) => Broken::Stopped,
                },
            };
            let repair = self.repairs.entry(id).or_insert_with(|| {
                warn!(
                    partition = id,
                    ?broken,
                    "an assigned partition is not served; recovering it"
                );
                Repair {
                    attempts: 0,
                    next_at: now + first_wait(&self.node, broken),
                }
            });
            if now < repair.next_at {
                continue;
            }
            if broken == Broken::Fenced && self.newer_owner(id, current.as_deref()) {
                // Someone else took it over; the revocation will follow.
                continue;
            }
            due.push((id, broken, current));
        }
        if !due.is_empty() {
            self.repair(due).await;
        }
        self.publish_routes().await;
    }

    /// Whether the routing table names another owner newer than our partition.
    fn newer_owner(&self, id: u32, current: Option<&Partition>) -> bool {
        let ours = current.map_or(0, |p| p.epoch);
        self.node
            .other_owner(id)
            .is_some_and(|owner| owner.epoch > ours)
    }

    /// Release the broken partitions, take them over again (concurrently), serve what worked.
    async fn repair(&mut self, due: Vec<(u32, Broken, Option<Arc<Partition>>)>) {
        let started = std::time::Instant::now();
        let old: Vec<Arc<Partition>> = {
            let mut map = self.node.partitions.write().expect("partitions lock");
            due.iter()
                .filter_map(|(id, _, current)| {
                    map.remove(id);
                    current.clone()
                })
                .collect()
        };
        let service = self.node.service.as_str();
        futures::future::join_all(old.iter().map(|p| p.release(service))).await;
        let node = Arc::clone(&self.node);
        let mut takeovers: FuturesUnordered<_> = due
            .iter()
            .map(|&(id, broken, _)| {
                let node = &node;
                ::metrics::counter!(metrics::PARTITION_RECOVERIES, "cause" => broken.label())
                    .increment(1);
                async move { (id, broken, take_over(node, id).await) }
            })
            .collect();
        while let Some((id, broken, result)) = takeovers.next().await {
            match result {
                Ok(partition) => {
                    self.insert(partition);
                    info!(partition = id, ?broken, took = ?started.elapsed(), "partition recovered and serving again");
                }
                Err(e) => {
                    warn!(partition = id, ?broken, error = %e, "recovering the partition failed; retrying");
                    self.failed(id, broken);
                }
            }
        }
        self.report();
    }
}

impl Broken {
    fn label(self) -> &'static str {
        match self {
            Broken::Missing => "takeover-failed",
            Broken::Stopped => "writer-stopped",
            Broken::Fenced => "fenced",
        }
    }
}

/// How long to wait before the first repair: at once for a failed takeover or an unknown
/// outcome, a whole session timeout after a fence (time for the group to revoke the partition
/// if a new owner fenced us).
fn first_wait(node: &Node, broken: Broken) -> Duration {
    match broken {
        Broken::Missing | Broken::Stopped => Duration::ZERO,
        Broken::Fenced => Duration::from_millis(u64::from(node.config.kafka.session_timeout_ms)),
    }
}

async fn publish_route(
    node: &Node,
    publisher: &Publisher,
    partition: &Partition,
) -> Result<(), Error> {
    let record = avro::RoutingRecord {
        service: node.service.to_string(),
        partition: partition.id as i32,
        owner_processor_id: node.processor_id.clone(),
        owner_endpoint: node.endpoint.clone(),
        epoch: partition.epoch,
        updated_at_ms: crate::entity::now_ms(),
    };
    let value = record
        .encode()
        .map_err(|e| Error::Journal(format!("encoding a routing record: {e}")))?;
    publisher
        .publish(
            &node.env.service_topics.routing(),
            &format!("{}/{}", node.service, partition.id),
            &value,
        )
        .await?;
    Ok(())
}

async fn take_over(node: &Arc<Node>, id: u32) -> Result<Arc<Partition>, Error> {
    let host: Arc<dyn Host> = Arc::clone(node) as Arc<dyn Host>;
    Partition::take_over(&node.env, host, id).await
}
