//! Partition ownership through a Kafka consumer group (`ARCHITECTURE.md`, "Partition ownership").
//!
//! The processors of a service join the group `<prefix><service>.owners`, subscribed to the
//! service's journal topic with the cooperative-sticky assignor: the group decides which
//! processor owns which partition. Commands do not flow through this consumer — assigned
//! partitions are paused at once, so it never fetches; the group is only the membership and
//! assignment mechanism. Assignments and revocations are reported as [`Event`]s; a revocation
//! waits (bounded) until the owner has stopped and committed its in-flight work, so partitions
//! are handed over cleanly on graceful shutdown and scale-in.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::{Error, Options};

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
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
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

impl Membership {
    /// Join `group`, subscribed to `topic`. Returns the membership and the stream of ownership
    /// events. `revoke_timeout` bounds how long a revocation waits for the owner to release.
    pub fn join(
        options: &Options,
        group: &str,
        topic: &str,
        member_id: &str,
        revoke_timeout: Duration,
    ) -> Result<(Self, mpsc::Receiver<Event>), Error> {
        options.validate()?;
        let (tx, rx) = mpsc::channel(64);
        let mut config = options.consumer_config(group);
        config
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
        };
        let consumer: BaseConsumer<Context> = config
            .create_with_context(context)
            .map_err(|e| Error::kafka(format!("joining group {group}"), e))?;
        consumer
            .subscribe(&[topic])
            .map_err(|e| Error::kafka(format!("subscribing {group} to {topic}"), e))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop_flag = Arc::clone(&stop);
        let group_name = group.to_string();
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

fn poll_loop(
    consumer: BaseConsumer<Context>,
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
