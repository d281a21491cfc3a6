//! One generation of one projection: a member of its consumer group on the service's journal
//! (`<prefix><service>.proj.<name>.g<generation>`, read_committed, partitions spread over the
//! projector's replicas by Kafka) with one task per partition.
//!
//! A partition's task takes batches of records (up to `batch-size`, waiting `batch-linger-ms`
//! for more), keeps the events of the projection's persistence id, and per batch:
//!
//! 1. reads the rows of the batch's entities;
//! 2. drops the events a row already holds (seq ≤ the row's seq: a replay after a crash);
//! 3. has the handler fold each entity's row and remaining events (`Project`), or hands the
//!    batch to an external projection (`HandleBatch`, idempotent on its side);
//! 4. writes the rows, each with its last event's seq as the write timestamp;
//! 5. only then writes the partition's progress and stores the consumer offset.
//!
//! A crash anywhere replays from the last stored offset: step 2 makes the replay change
//! nothing, step 4 keeps an older fold (a replay, or a member that lost the partition and does
//! not know yet) from replacing a newer row. A handler error retries the batch with backoff;
//! after three failures the batch goes one event at a time, and an event that still fails
//! alone (not for want of the handler: those retry for ever) is **parked**: recorded with its
//! error, holding its partition until `statehouse admin projections skip` passes it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use statehouse_core::semconv;
use statehouse_kafka::group::{GroupConsumer, Item, Lane};
use statehouse_kafka::reader::Message;
use statehouse_runtime::trace;
use statehouse_schemas::avro::{AvroRecord, EventRecord};
use statehouse_schemas::statehouse::projection::v1 as pb;
use statehouse_store::projections::{Parked, ProjectionRow};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::handler::is_transport;
use crate::{Ctx, Spec, metrics as m};

/// Failures of a whole batch before it goes one event at a time.
const BATCH_ATTEMPTS: u32 = 3;

/// Run generation `generation` of `spec` until `stop`.
pub(crate) async fn run(ctx: Arc<Ctx>, spec: Arc<Spec>, generation: i32, stop: CancellationToken) {
    let topic = ctx.topics.journal();
    let group = ctx.topics.projection_group(&spec.name, generation);
    let consumer = loop {
        match GroupConsumer::subscribe_with_ends(&ctx.kafka, &group, &[topic.as_str()]) {
            Ok(consumer) => break Arc::new(consumer),
            Err(e) => {
                warn!(group, error = %e, "joining a projection's consumer group failed; retrying");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                }
            }
        }
    };
    info!(projection = %spec.name, generation, group, "projection generation consuming");
    let partition = Partition {
        ctx: Arc::clone(&ctx),
        spec: Arc::clone(&spec),
        generation,
        topic: topic.clone(),
        consumer: Arc::clone(&consumer),
        stop: stop.clone(),
    };
    let mut tasks = Vec::new();
    consumer
        .dispatch(&topic, &stop, |lane| {
            tasks.push(tokio::spawn(partition.clone().run(lane)));
        })
        .await;
    for task in tasks {
        let _ = task.await;
    }
    consumer.commit();
    info!(projection = %spec.name, generation, "projection generation stopped");
}

#[derive(Clone)]
struct Partition {
    ctx: Arc<Ctx>,
    spec: Arc<Spec>,
    generation: i32,
    topic: String,
    consumer: Arc<GroupConsumer>,
    stop: CancellationToken,
}

/// A journal event with where it was read.
struct Read {
    offset: i64,
    event: EventRecord,
}

impl Partition {
    async fn run(self, mut lane: Lane) {
        let id = lane.partition;
        let linger = Duration::from_millis(self.ctx.options.batch_linger_ms);
        let poll = Duration::from_millis(self.ctx.options.poll_interval_ms);
        let labels = [
            ("projection", self.spec.name.clone()),
            ("generation", self.generation.to_string()),
            ("partition", id.to_string()),
        ];
        // The next offset to read, as far as this task knows; the age of its last event.
        let mut next: Option<i64> = None;
        // The consumer's position at the last end of the partition seen.
        let mut end: Option<i64> = None;
        let mut last_event_ms: Option<i64> = None;
        let mut lag_at = Instant::now();
        loop {
            let first = tokio::select! {
                _ = self.stop.cancelled() => break,
                item = lane.recv() => match item {
                    Some(item) => Some(item),
                    None => break,
                },
                _ = tokio::time::sleep_until(lag_at) => None,
            };
            let mut batch = Vec::new();
            match first {
                Some(Item::Record(message)) => batch.push(message),
                Some(Item::End { position }) => end = end.max(position),
                None => {}
            }
            if !batch.is_empty() {
                let deadline = Instant::now() + linger;
                while batch.len() < self.ctx.options.batch_size {
                    match tokio::time::timeout_at(deadline, lane.recv()).await {
                        Ok(Some(Item::Record(message))) => batch.push(message),
                        Ok(Some(Item::End { position })) => end = end.max(position),
                        Ok(None) | Err(_) => break,
                    }
                }
            }
            if let Some(last) = batch.last() {
                let after = last.offset + 1;
                if let Some(newest) = self.apply(id, &batch).await {
                    last_event_ms = Some(newest);
                }
                if self.stop.is_cancelled() {
                    break;
                }
                self.progress(id, after).await;
                next = Some(next.map_or(after, |n| n.max(after)));
            }
            if Instant::now() >= lag_at {
                lag_at = Instant::now() + poll;
                // Read to the end: the progress passes the transaction markers (and aborted
                // records) after the last event too. Written at most once per poll interval:
                // under load every fetch ends in a marker.
                if let Some(position) = end.take()
                    && next.is_none_or(|n| position > n)
                {
                    self.progress(id, position).await;
                    next = Some(position);
                }
                let consumer = Arc::clone(&self.consumer);
                let topic = self.topic.clone();
                let end = tokio::task::spawn_blocking(move || {
                    consumer.end_offset(&topic, id, Duration::from_secs(5))
                })
                .await;
                if let (Ok(Ok(end)), Some(next)) = (end, next) {
                    let lag = (end - next).max(0);
                    metrics::gauge!(m::LAG_RECORDS, &labels).set(lag as f64);
                    let seconds = match (lag, last_event_ms) {
                        (0, _) | (_, None) => 0.0,
                        (_, Some(ms)) => ((now_ms() - ms).max(0) as f64) / 1000.0,
                    };
                    metrics::gauge!(m::LAG_SECONDS, &labels).set(seconds);
                }
            }
        }
        // The partition is not this task's any more: its lag is someone else's to report.
        metrics::gauge!(m::LAG_RECORDS, &labels).set(0.0);
        metrics::gauge!(m::LAG_SECONDS, &labels).set(0.0);
    }

    /// Write the partition's progress (after its rows) and store the consumer offset, retrying
    /// the write until it succeeds or the task stops.
    async fn progress(&self, id: i32, next: i64) {
        let mut backoff = Duration::from_millis(200);
        loop {
            match self
                .ctx
                .store
                .write_projection_progress(
                    self.ctx.service.as_str(),
                    &self.spec.name,
                    self.generation,
                    id,
                    next,
                )
                .await
            {
                Ok(()) => break,
                Err(e) => {
                    warn!(projection = %self.spec.name, partition = id, error = %e, "writing projection progress failed; retrying");
                    if !self.pause(&mut backoff).await {
                        return;
                    }
                }
            }
        }
        if let Err(e) = self.consumer.done_before(&self.topic, id, next) {
            // The partition moved to another member: it resumes from the last offset stored.
            tracing::debug!(error = %e, "storing a projection offset failed");
        }
    }

    /// Sleep `backoff` (doubling it, up to 10 s): `false` if the task was stopped meanwhile.
    async fn pause(&self, backoff: &mut Duration) -> bool {
        tokio::select! {
            _ = self.stop.cancelled() => return false,
            _ = tokio::time::sleep(*backoff) => {}
        }
        *backoff = (*backoff * 2).min(Duration::from_secs(10));
        true
    }

    /// Fold one batch of records into the rows (returns when it is done, or the task stops).
    /// Returns the commit time of its newest event.
    async fn apply(&self, id: i32, batch: &[Message]) -> Option<i64> {
        let mut events = Vec::with_capacity(batch.len());
        for message in batch {
            let Some(value) = &message.value else {
                continue; // a writer's settle marker, or a tombstone
            };
            match EventRecord::decode(value) {
                Ok(event) if event.persistence_id == self.spec.persistence_id => {
                    events.push(Read {
                        offset: message.offset,
                        event,
                    });
                }
                Ok(_) => {}
                Err(e) => {
                    let parked = Parked {
                        partition: id,
                        offset: message.offset,
                        entity_id: String::new(),
                        seq: 0,
                        error: format!("the journal record does not decode: {e}"),
                        skip: false,
                    };
                    // Nothing can fold it: it waits for a skip like any poison event.
                    if !self.park_and_wait(&parked).await {
                        return None;
                    }
                }
            }
        }
        if events.is_empty() {
            return None;
        }
        let newest = events.iter().map(|r| r.event.timestamp_ms).max();
        // Open until the batch is folded (retries included); linked to the commands that wrote
        // its events.
        let _span = self.batch_span(id, &events);
        let mut backoff = Duration::from_millis(200);
        let mut attempts = 0;
        loop {
            match self.fold_until_stopped(&events, id).await? {
                Ok(()) => break,
                Err(Failure::Store(e)) => {
                    warn!(projection = %self.spec.name, partition = id, error = %e, "projection rows: Cassandra failed; retrying");
                }
                Err(Failure::Handler(status)) => {
                    metrics::counter!(m::RETRIES, "projection" => self.spec.name.clone())
                        .increment(1);
                    // An unavailable handler says nothing about the events.
                    if !is_transport(&status) {
                        attempts += 1;
                    }
                    warn!(projection = %self.spec.name, partition = id, code = ?status.code(), message = status.message(), attempts, "the projection handler failed on a batch; retrying");
                    if attempts >= BATCH_ATTEMPTS {
                        if !self.one_by_one(&events, id).await {
                            return None;
                        }
                        break;
                    }
                }
            }
            if !self.pause(&mut backoff).await {
                return None;
            }
        }
        newest
    }

    /// The span of one batch (`statehouse.projection.batch`): a new trace, linked to the
    /// events' `traceparent`s (at most `semconv::MAX_LINKS`).
    fn batch_span(&self, partition: i32, events: &[Read]) -> tracing::Span {
        if !trace::enabled() {
            return tracing::Span::none();
        }
        let span = tracing::info_span!(
            parent: None,
            semconv::SPAN_PROJECTION_BATCH,
            { semconv::OTEL_KIND } = "consumer",
            { semconv::PROJECTION } = %self.spec.name,
            { semconv::KAFKA_PARTITION } = partition,
            { semconv::RECORDS } = events.len(),
            { semconv::TRACE_ID } = tracing::field::Empty,
        );
        trace::continue_trace(&span, None, None);
        for traceparent in events
            .iter()
            .filter_map(|r| r.event.traceparent.as_deref())
            .take(semconv::MAX_LINKS)
        {
            trace::link(&span, traceparent);
        }
        span
    }

    /// After repeated failures: each event alone; one that keeps failing is parked until skipped.
    async fn one_by_one(&self, events: &[Read], id: i32) -> bool {
        for read in events {
            let mut backoff = Duration::from_millis(200);
            let mut attempts = 0;
            loop {
                let Some(result) = self
                    .fold_until_stopped(std::slice::from_ref(read), id)
                    .await
                else {
                    return false;
                };
                match result {
                    Ok(()) => break,
                    Err(Failure::Store(e)) => {
                        warn!(projection = %self.spec.name, error = %e, "projection rows: Cassandra failed; retrying");
                    }
                    Err(Failure::Handler(status)) if is_transport(&status) => {
                        warn!(projection = %self.spec.name, code = ?status.code(), "the projection handler is unavailable; retrying");
                    }
                    Err(Failure::Handler(status)) => {
                        attempts += 1;
                        if attempts >= BATCH_ATTEMPTS {
                            let parked = Parked {
                                partition: id,
                                offset: read.offset,
                                entity_id: read.event.entity_id.clone(),
                                seq: read.event.seq,
                                error: format!("{:?}: {}", status.code(), status.message()),
                                skip: false,
                            };
                            if !self.park_and_wait(&parked).await {
                                return false;
                            }
                            // Skipped: the row passes the event without folding it.
                            if !self.pass(read).await {
                                return false;
                            }
                            break;
                        }
                    }
                }
                if !self.pause(&mut backoff).await {
                    return false;
                }
            }
        }
        true
    }

    /// Record `parked` and wait until an admin skips it: `false` if the task stopped first.
    async fn park_and_wait(&self, parked: &Parked) -> bool {
        let service = self.ctx.service.as_str();
        error!(projection = %self.spec.name, generation = self.generation, partition = parked.partition, offset = parked.offset, entity = %parked.entity_id, seq = parked.seq, error = %parked.error, "event parked: its partition waits until `statehouse admin projections skip` passes it");
        let gauge = metrics::gauge!(m::PARKED, "projection" => self.spec.name.clone(), "generation" => self.generation.to_string());
        gauge.increment(1.0);
        let poll = Duration::from_millis(self.ctx.options.poll_interval_ms);
        let mut recorded = false;
        loop {
            if !recorded {
                recorded = self
                    .ctx
                    .store
                    .park_projection_event(service, &self.spec.name, self.generation, parked)
                    .await
                    .inspect_err(|e| warn!(error = %e, "recording a parked event failed; retrying"))
                    .is_ok();
            }
            if recorded
                && let Ok(all) = self
                    .ctx
                    .store
                    .parked_projection_events(service, &self.spec.name, self.generation)
                    .await
                && all
                    .iter()
                    .any(|p| p.partition == parked.partition && p.offset == parked.offset && p.skip)
            {
                info!(projection = %self.spec.name, partition = parked.partition, offset = parked.offset, "parked event skipped by an admin");
                gauge.decrement(1.0);
                return true;
            }
            tokio::select! {
                _ = self.stop.cancelled() => {
                    gauge.decrement(1.0);
                    return false;
                }
                _ = tokio::time::sleep(poll) => {}
            }
        }
    }

    /// Move the entity's row past a skipped event without folding it.
    async fn pass(&self, read: &Read) -> bool {
        if self.spec.external {
            // The handler's database holds no row of ours: the skip is the offset moving on.
            return true;
        }
        let service = self.ctx.service.as_str();
        let mut backoff = Duration::from_millis(200);
        loop {
            let result = async {
                let rows = self
                    .ctx
                    .store
                    .read_projection_rows(
                        service,
                        &self.spec.name,
                        self.generation,
                        &[read.event.entity_id.as_str()],
                    )
                    .await?;
                let row = rows.get(&read.event.entity_id);
                if row.is_some_and(|r| r.seq >= read.event.seq) {
                    return Ok(());
                }
                let passed = ProjectionRow {
                    entity_id: read.event.entity_id.clone(),
                    seq: read.event.seq,
                    row: row.and_then(|r| r.row.clone()),
                };
                self.ctx
                    .store
                    .write_projection_rows(service, &self.spec.name, self.generation, &[passed])
                    .await
            }
            .await;
            match result {
                Ok(()) => return true,
                Err(e) => {
                    warn!(error = %e, "passing a skipped event failed; retrying");
                    if !self.pause(&mut backoff).await {
                        return false;
                    }
                }
            }
        }
    }

    /// [`Partition::fold`], given up (`None`) when the task is stopped: a generation being
    /// replaced or a shutdown does not wait for a slow handler (what was written stays valid).
    async fn fold_until_stopped(
        &self,
        events: &[Read],
        partition: i32,
    ) -> Option<Result<(), Failure>> {
        tokio::select! {
            _ = self.stop.cancelled() => None,
            result = self.fold(events, partition) => Some(result),
        }
    }

    /// Fold `events` (in offset order) into their entities' rows and write them.
    async fn fold(&self, events: &[Read], partition: i32) -> Result<(), Failure> {
        if self.spec.external {
            return self.hand_over(events, partition).await;
        }
        let service = self.ctx.service.as_str();
        let mut by_entity: BTreeMap<&str, Vec<&Read>> = BTreeMap::new();
        for read in events {
            by_entity
                .entry(read.event.entity_id.as_str())
                .or_default()
                .push(read);
        }
        let ids: Vec<&str> = by_entity.keys().copied().collect();
        let rows = self
            .ctx
            .store
            .read_projection_rows(service, &self.spec.name, self.generation, &ids)
            .await
            .map_err(Failure::Store)?;
        let mut requests = Vec::new();
        let mut committed = Vec::new();
        // The rows to write: each entity's row as held, at the seq of its last new event (an
        // entity the handler leaves out keeps its row).
        let mut out: BTreeMap<String, ProjectionRow> = BTreeMap::new();
        for (entity, entity_events) in by_entity {
            let row = rows.get(entity);
            let held = row.map_or(0, |r| r.seq);
            let fresh: Vec<pb::Event> = entity_events
                .iter()
                .filter(|r| r.event.seq > held)
                .map(|r| event_of(&r.event, partition, r.offset))
                .collect();
            let Some(last) = fresh.last() else {
                continue; // a replay: the row holds all of them
            };
            committed.extend(fresh.iter().map(|e| e.timestamp_unix_ms));
            let held_row = row.and_then(|r| r.row.clone());
            out.insert(
                entity.to_string(),
                ProjectionRow {
                    entity_id: entity.to_string(),
                    seq: last.seq,
                    row: held_row.clone(),
                },
            );
            requests.push(pb::EntityEvents {
                entity_id: entity.to_string(),
                row: held_row.map(|(type_url, bytes)| prost_types::Any {
                    type_url,
                    value: bytes.to_vec(),
                }),
                events: fresh,
            });
        }
        if requests.is_empty() {
            return Ok(());
        }
        let changes = self
            .ctx
            .handler
            .project(&self.spec.name, requests)
            .await
            .map_err(Failure::Handler)?;
        for change in changes {
            let Some(row) = out.get_mut(&change.entity_id) else {
                warn!(projection = %self.spec.name, entity = %change.entity_id, "the handler answered for an entity it was not asked about; ignored");
                continue;
            };
            if change.delete {
                row.row = None;
            } else if let Some(new) = change.row {
                row.row = Some((new.type_url, bytes::Bytes::from(new.value)));
            }
            // Neither a row nor `delete`: the entity keeps its row, as if left out.
        }
        let rows: Vec<ProjectionRow> = out.into_values().collect();
        self.ctx
            .store
            .write_projection_rows(service, &self.spec.name, self.generation, &rows)
            .await
            .map_err(Failure::Store)?;
        self.folded(&committed);
        Ok(())
    }

    /// Count events folded (not the replayed ones a row already held) and their delay from
    /// commit to row.
    fn folded(&self, committed_ms: &[i64]) {
        let now = now_ms();
        let delay = metrics::histogram!(m::DELAY, "projection" => self.spec.name.clone());
        for ms in committed_ms {
            delay.record(((now - ms).max(0) as f64) / 1000.0);
        }
        metrics::counter!(m::EVENTS, "projection" => self.spec.name.clone())
            .increment(committed_ms.len() as u64);
    }

    /// An external projection: the batch goes to the handler, which applies it idempotently.
    async fn hand_over(&self, events: &[Read], partition: i32) -> Result<(), Failure> {
        let batch = pb::EventBatch {
            projection: self.spec.name.clone(),
            generation: self.generation,
            topic: self.topic.clone(),
            partition,
            events: events
                .iter()
                .map(|r| event_of(&r.event, partition, r.offset))
                .collect(),
        };
        self.ctx
            .handler
            .handle_batch(batch)
            .await
            .map_err(Failure::Handler)?;
        let committed: Vec<i64> = events.iter().map(|r| r.event.timestamp_ms).collect();
        self.folded(&committed);
        Ok(())
    }
}

/// Why a batch did not go through.
enum Failure {
    Store(statehouse_store::Error),
    Handler(tonic::Status),
}

fn event_of(event: &EventRecord, partition: i32, offset: i64) -> pb::Event {
    pb::Event {
        service: event.service.clone(),
        persistence_id: event.persistence_id.clone(),
        entity_id: event.entity_id.clone(),
        seq: event.seq,
        type_url: event.type_url.clone(),
        payload: event.payload.clone(),
        partition,
        offset,
        timestamp_unix_ms: event.timestamp_ms,
        traceparent: event.traceparent.clone().unwrap_or_default(),
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
