//! One owned partition: its fenced writer, its tail, its backup task and its active entities.
//!
//! Lifecycle. **Take over:** fence (`init_transactions`) → settle the journal and values
//! partitions (so everything they hold is readable, see `Writer::start_observed`) → read each
//! topic's backup checkpoint → read each partition from its checkpoint to the end
//! (read_committed) into the tail → write again the records of a transaction Kafka left open
//! that the backup proves were committed → serve. **Release** (revoke or shutdown): stop taking
//! commands, let the entities finish the command in flight, let the writer commit, flush the
//! backup (bounded). **Erase** one entity (`crate::erase`): [`Partition::hold`] its commands,
//! [`Partition::evict`] its active instance, write its tombstones through the partition's writer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use statehouse_kafka::partition_writer::{self, Observer, Record, Writer};
use statehouse_kafka::reader::{self, Isolation, Message};
use statehouse_runtime::method_index::EntityKind;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::Error;
use crate::backup::Backup;
use crate::command::{Command, Host};
use crate::entity::{Caller, EntityRef, Home};
use crate::env::Env;
use crate::journal::Journal;
use crate::kinds::event_sourced::EventSourced;
use crate::kinds::value::Value;
use crate::records::{Topic, Typed, Written};
use crate::tail::{Quarantined, Tail};

/// A takeover gives up (and is retried) when reading a topic to its end makes no progress for
/// this long; a long journal may take as long as it needs while it moves.
const RECOVERY_STALL: Duration = Duration::from_secs(30);
/// Bound of the checkpoint read at takeover (without it, recovery starts from offset 0).
const CHECKPOINT_TIMEOUT: Duration = Duration::from_secs(15);

pub(crate) struct Partition {
    pub(crate) id: u32,
    /// The owner epoch: milliseconds at takeover (the transactional fence does not depend on
    /// it; routers use it to order routing records).
    pub(crate) epoch: i64,
    pub(crate) writer: partition_writer::Handle<Typed>,
    journal: Arc<Journal>,
    event_sourced: Arc<Home<EventSourced>>,
    values: Arc<Home<Value>>,
    /// Cancelled only on release or process shutdown; the writer and backup outlive the
    /// entities until then.
    writer_stop: CancellationToken,
    backup_done: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Entities being erased, with the commands that came for them meanwhile (they run once
    /// the erasure ended, on the emptied entity).
    held: Mutex<HashMap<String, Vec<(Command, Caller)>>>,
}

/// Most commands that wait for one entity's erasure; more are refused (`RESOURCE_EXHAUSTED`).
const HELD_MAX: usize = 256;
/// How long an evicted instance may take to finish what it holds.
const EVICT_TIMEOUT: Duration = Duration::from_secs(30);

/// An entity's commands held while it is erased; dropping it lets them in, in arrival order.
pub(crate) struct Hold {
    partition: Arc<Partition>,
    key: String,
}

impl Drop for Hold {
    fn drop(&mut self) {
        let waiting = self
            .partition
            .held
            .lock()
            .expect("held lock")
            .remove(&self.key)
            .unwrap_or_default();
        for (command, caller) in waiting {
            self.partition.send(command, caller);
        }
    }
}

/// Feeds committed records into the tail, typed, and notes the highest offsets committed.
struct TailObserver {
    tail: Arc<Tail>,
    env: Arc<Env>,
    partition: u32,
}

impl Observer<Typed> for TailObserver {
    fn committed(&self, records: &[Record], offsets: &[i64], typed: &Typed) {
        for ((record, &offset), written) in records.iter().zip(offsets).zip(typed) {
            if matches!(**written, Written::Output(_)) {
                continue;
            }
            match self.env.topics.of(&record.topic) {
                Some(topic) => {
                    self.tail.push(topic, offset, Arc::clone(written));
                    self.env.seen_committed.note(topic, self.partition, offset);
                }
                None => {
                    warn!(topic = %record.topic, offset, "committed a record of an unknown topic")
                }
            }
        }
    }
}

impl Partition {
    /// Take the partition over: fence the previous owner, recover the tail, start the backup.
    pub(crate) async fn take_over(
        env: &Arc<Env>,
        host: Arc<dyn Host>,
        id: u32,
    ) -> Result<Arc<Self>, Error> {
        let started = std::time::Instant::now();
        // A new trace (recovery runs for its own reasons), linked to the commands whose records
        // it reads back.
        let span = crate::spans::recover(id);
        let mut linked = 0;
        let tail = Arc::new(Tail::default());
        let writer_stop = env.shutdown.child_token();
        let observer: Arc<dyn Observer<Typed>> = Arc::new(TailObserver {
            tail: Arc::clone(&tail),
            env: Arc::clone(env),
            partition: id,
        });
        let settle = [
            Arc::clone(&env.topics.journal),
            Arc::clone(&env.topics.values),
        ];
        // 1. Fence: from here on no previous owner can commit to this partition.
        let writer = Writer::start_observed(
            &env.kafka,
            env.service_topics.transactional_id(id),
            id,
            Some(observer),
            &settle,
            writer_stop.clone(),
        )
        .await?;
        let epoch = epoch_now();
        let fenced_in = started.elapsed();
        // 2. Everything before a topic's checkpoint is in Cassandra; read the rest from Kafka.
        let mut checkpoints = [0i64; 2];
        let mut recovered = 0usize;
        // Tombstones of erasures the backup has not passed yet, by entity.
        let mut erased = HashMap::new();
        for (i, (topic, name)) in env.topics.all().into_iter().enumerate() {
            let end = writer.settled_at(name).expect("every topic was settled");
            let checkpoint = checkpoint(env, name, id).await;
            checkpoints[i] = checkpoint;
            // A checkpoint beyond the end can only mean Kafka lost records it had acknowledged
            // (e.g. an unclean leader election): what is in Cassandra stays; read what Kafka has.
            let from = if checkpoint > end {
                error!(
                    partition = id,
                    topic = %name,
                    checkpoint,
                    end,
                    "the backup checkpoint is beyond the end of the partition: Kafka lost acknowledged records; recovering from its end"
                );
                end
            } else {
                checkpoint
            };
            let messages = reader::read_to_end(
                &env.kafka,
                name,
                id,
                from,
                Isolation::ReadCommitted,
                RECOVERY_STALL,
            )
            .await?;
            for message in messages {
                let written = match Written::from_kafka(topic, &message) {
                    Ok(written) => written,
                    Err(e) => {
                        quarantine(&tail, topic, name, &message, &e);
                        continue;
                    }
                };
                if let Some(written) = written {
                    if let Some(traceparent) = written.traceparent()
                        && linked < statehouse_core::semconv::MAX_LINKS
                    {
                        statehouse_runtime::trace::link(&span, traceparent);
                        linked += 1;
                    }
                    let written = Arc::new(written);
                    note_erased(&mut erased, &written);
                    tail.push(topic, message.offset, written);
                    recovered += 1;
                }
            }
        }
        rescue_hanging(&writer, env, &tail, id, checkpoints).await?;
        info!(
            partition = id,
            journal_checkpoint = checkpoints[0],
            values_checkpoint = checkpoints[1],
            recovered,
            epoch,
            fenced_in = ?fenced_in,
            took = ?started.elapsed(),
            "partition recovered"
        );
        span.record(statehouse_core::semconv::RECORDS, recovered);
        drop(span);
        let journal = Arc::new(Journal::new(
            Arc::clone(env),
            epoch,
            writer.clone(),
            Arc::clone(&tail),
            id,
        ));
        let stop = env.shutdown.child_token();
        let event_sourced = Home::new(
            Arc::clone(&journal),
            Arc::clone(env),
            Arc::clone(&host),
            Some(id),
            stop.clone(),
        );
        let values = Home::new(Arc::clone(&journal), Arc::clone(env), host, Some(id), stop);
        let backup = Backup {
            service: env.service.to_string(),
            partition: id,
            topics: env.topics.clone(),
            tail,
            store: env.store.clone(),
            interval: env.backup_interval,
            stopping: writer_stop.clone(),
        };
        let task = tokio::spawn(backup.run());
        let partition = Arc::new(Self {
            id,
            epoch,
            writer,
            journal,
            event_sourced,
            values,
            writer_stop,
            backup_done: Mutex::new(Some(task)),
            held: Mutex::new(HashMap::new()),
        });
        partition.hold_erased(erased);
        Ok(partition)
    }

    /// An erasure the previous owner did not finish (its tombstones are past the backup
    /// checkpoint): Cassandra may still hold the entity's rows, so its commands wait until the
    /// backup has passed the tombstones and removed them (`crate::erase`).
    fn hold_erased(self: &Arc<Self>, erased: HashMap<String, Vec<Arc<Written>>>) {
        for (key, tombstones) in erased {
            if let Ok(hold) = self.hold(&key) {
                warn!(partition = self.id, entity = %key, "an erasure is not backed up yet; the entity's commands wait for the backup");
                tokio::spawn(crate::erase::release_when_backed_up(
                    hold,
                    Arc::clone(&self.journal),
                    tombstones,
                    key,
                ));
            }
        }
    }

    pub(crate) fn is_serving(&self) -> bool {
        self.journal.is_serving()
    }

    /// Hand a command to its entity, activating the entity if needed.
    /// A command that cannot be taken is answered with the error at once.
    pub(crate) fn send(&self, command: Command, caller: Caller) {
        let entity = EntityRef::of(&command);
        let caller = {
            let mut held = self.held.lock().expect("held lock");
            match held.get_mut(&entity.key) {
                Some(waiting) if waiting.len() < HELD_MAX => {
                    waiting.push((command, caller));
                    return;
                }
                Some(_) => Err(caller),
                None => Ok(caller),
            }
        };
        let caller = match caller {
            Ok(caller) => caller,
            Err(caller) => {
                return caller.fail(Error::Overloaded(format!(
                    "entity {} is being erased and {HELD_MAX} commands wait for it; slow down",
                    entity.id
                )));
            }
        };
        match entity.info.kind() {
            Some(EntityKind::EventSourced) => self.event_sourced.send(entity, command, caller),
            Some(EntityKind::ValueEntity) => self.values.send(entity, command, caller),
            _ => caller.fail(Error::InvalidArgument(format!(
                "{} is not a method of an entity kind this processor runs in partitions",
                command.method.path
            ))),
        }
    }

    /// Hold the commands of entity `key` (`<persistence_id>|<entity_id>`) until the returned
    /// guard is dropped. Fails if an erasure of it is already running.
    pub(crate) fn hold(self: &Arc<Self>, key: &str) -> Result<Hold, Error> {
        let mut held = self.held.lock().expect("held lock");
        if held.contains_key(key) {
            return Err(Error::Overloaded(format!(
                "an erasure of {key} is already running"
            )));
        }
        held.insert(key.to_string(), Vec::new());
        Ok(Hold {
            partition: Arc::clone(self),
            key: key.to_string(),
        })
    }

    /// Evict the active instance of entity `key`, whatever its kind; returns once it ended.
    /// True if one was active.
    pub(crate) async fn evict(&self, key: &str) -> bool {
        let event_sourced = self.event_sourced.evict(key, EVICT_TIMEOUT).await;
        let value = self.values.evict(key, EVICT_TIMEOUT).await;
        event_sourced || value
    }

    /// What the partition's entities write through.
    pub(crate) fn journal(&self) -> &Arc<Journal> {
        &self.journal
    }

    /// Stop serving (revoke or shutdown): entities finish the command in flight, then the writer
    /// commits what it holds and the backup flushes (bounded).
    pub(crate) async fn release(&self, service: &str) {
        self.journal.stop_serving();
        self.event_sourced.stop();
        self.values.stop();
        // Wait (bounded) for the entities to finish.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.event_sourced.active() + self.values.active() > 0
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.writer_stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.writer.stopped()).await;
        let task = self.backup_done.lock().expect("lock").take();
        if let Some(task) = task {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
        info!(service, partition = self.id, "partition released");
    }
}

/// Notes a recovered tombstone of an erased entity.
fn note_erased(erased: &mut HashMap<String, Vec<Arc<Written>>>, written: &Arc<Written>) {
    if matches!(**written, Written::Erased(_)) {
        erased
            .entry(written.entity_key())
            .or_default()
            .push(Arc::clone(written));
    }
}

/// The backup checkpoint of `topic`/`partition`: 0 if Cassandra does not answer in time.
async fn checkpoint(env: &Env, topic: &str, partition: u32) -> i64 {
    let read = env
        .store
        .checkpoint(env.service.as_str(), topic, partition as i32);
    match tokio::time::timeout(CHECKPOINT_TIMEOUT, read).await {
        Ok(Ok(offset)) => offset,
        Ok(Err(e)) => {
            warn!(partition, topic, error = %e, "Cassandra unavailable at takeover; recovering the partition from offset 0");
            0
        }
        Err(_) => {
            warn!(partition, topic, timeout = ?CHECKPOINT_TIMEOUT, "reading the checkpoint timed out; recovering the partition from offset 0");
            0
        }
    }
}

/// A record that does not decode on recovery: skipped — failing the takeover would only fail
/// it again, forever — and quarantined in the tail (its entity refuses commands, the backup
/// checkpoint stays at it), with an error naming it and a count.
fn quarantine(tail: &Tail, topic: Topic, name: &str, message: &Message, error: &Error) {
    let entity = message
        .key
        .as_deref()
        .and_then(|key| topic.entity_of_key(key));
    let key = message
        .key
        .as_deref()
        .map(|key| String::from_utf8_lossy(key).into_owned());
    error!(
        topic = %name,
        partition = message.partition,
        offset = message.offset,
        key = key.as_deref().unwrap_or(""),
        entity = entity.as_deref().unwrap_or(""),
        error = %error,
        "a record does not decode: skipped and quarantined; its entity refuses commands, and the backup checkpoint stays at this offset until an operator resolves it (docs/runbooks.md)"
    );
    metrics::counter!(crate::metrics::RECORDS_QUARANTINED, "topic" => topic.label()).increment(1);
    tail.quarantine(
        entity,
        Quarantined {
            topic,
            topic_name: name.to_string(),
            partition: u32::try_from(message.partition).unwrap_or_default(),
            offset: message.offset,
            reason: error.to_string(),
        },
    );
}

/// Records of a transaction Kafka left open (and the settle aborted): those below the backup
/// checkpoint, and those this process's own writer saw committed (a takeover repairing a
/// partition it owned), were committed — the writer saw the commit succeed — so they are
/// written again; the others cannot be proven committed and stay aborted.
async fn rescue_hanging(
    writer: &partition_writer::Handle<Typed>,
    env: &Env,
    tail: &Tail,
    partition: u32,
    checkpoints: [i64; 2],
) -> Result<(), Error> {
    let mut records = Vec::new();
    let mut typed = Vec::new();
    for (i, (topic, name)) in env.topics.all().into_iter().enumerate() {
        let checkpoint = checkpoints[i];
        let seen = env.seen_committed.get(topic, partition);
        let hanging: Vec<_> = writer
            .hanging()
            .iter()
            .filter(|(t, _)| t == name)
            .map(|(_, m)| m)
            .collect();
        let (rescue, dropped): (Vec<_>, Vec<_>) = hanging
            .into_iter()
            .partition(|m| proven_committed(m.offset, checkpoint, seen));
        if !dropped.is_empty() {
            error!(
                partition,
                topic = %name,
                records = dropped.len(),
                first = dropped[0].offset,
                checkpoint,
                seen_committed = ?seen,
                "records of a transaction Kafka left open are neither in the backup nor seen committed by this process: they cannot be proven committed and stay aborted"
            );
        }
        for message in rescue {
            let written = match Written::from_kafka(topic, message) {
                Ok(Some(written)) => written,
                Ok(None) => continue,
                Err(e) => {
                    quarantine(tail, topic, name, message, &e);
                    continue;
                }
            };
            records.push(Record {
                topic: Arc::clone(name),
                key: message.key.clone().unwrap_or_default(),
                value: message.value.clone(),
                headers: message
                    .headers
                    .iter()
                    .filter_map(|(k, v)| Some((statehouse_kafka::headers::known(k)?, v.clone())))
                    .collect(),
                by_key: false,
            });
            typed.push(Arc::new(written));
        }
    }
    if !records.is_empty() {
        let n = records.len();
        let offsets = writer.append_with(records, typed).await?.offsets;
        warn!(partition, records = n, to = ?offsets.first(), "Kafka left a committed transaction open (markers skipped); its records were written again");
    }
    Ok(())
}

/// Whether a record of an open transaction at `offset` was committed: the backup holds it
/// (below its `checkpoint`), or this process's writer saw a commit up to `seen` (offsets grow,
/// so a record of a transaction whose commit the writer never saw lies above every offset it
/// saw committed).
fn proven_committed(offset: i64, checkpoint: i64, seen: Option<i64>) -> bool {
    offset < checkpoint || seen.is_some_and(|seen| offset <= seen)
}

/// The owner epoch: milliseconds at takeover. Monotonic across owners as long as their clocks
/// agree within a takeover interval; the transactional fence does not depend on it.
fn epoch_now() -> i64 {
    crate::entity::now_ms()
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn garbage(key: &str, offset: i64) -> Message {
        Message {
            partition: 3,
            offset,
            key: Some(Bytes::copy_from_slice(key.as_bytes())),
            value: Some(Bytes::from_static(b"\xc3\x01not an avro record")),
            headers: Vec::new(),
            timestamp_ms: None,
        }
    }

    /// A record that does not decode on recovery is skipped, not fatal: only its own entity
    /// refuses (FAILED_PRECONDITION naming the record), every other entity of the partition
    /// activates, and no backup checkpoint passes the record, so the next owner finds it again.
    #[test]
    fn an_undecodable_record_quarantines_its_entity_only() {
        let tail = Tail::default();
        let bad = garbage("cart|u1#4", 120);
        let error = Written::from_kafka(Topic::Journal, &bad).unwrap_err();
        quarantine(&tail, Topic::Journal, "cart.journal", &bad, &error);

        let refused = tail.refuse_quarantined("cart|u1").unwrap_err();
        let status = tonic::Status::from(refused);
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        for part in [
            "cart|u1",
            "cart.journal",
            "partition 3",
            "offset 120",
            "does not decode",
        ] {
            assert!(
                status.message().contains(part),
                "{part}: {}",
                status.message()
            );
        }
        tail.refuse_quarantined("cart|u2").unwrap();
        assert_eq!(tail.checkpoint_floor(Topic::Journal), Some(120));
        assert_eq!(tail.checkpoint_floor(Topic::Values), None);
        assert_eq!(tail.len(), 0, "nothing of it reaches the tail");

        // A later bad record of the same entity keeps the first one named; a values record
        // whose key names no entity still holds the checkpoint back.
        let later = garbage("cart|u1#5", 130);
        quarantine(&tail, Topic::Journal, "cart.journal", &later, &error);
        assert!(
            tail.refuse_quarantined("cart|u1")
                .unwrap_err()
                .to_string()
                .contains("offset 120")
        );
        assert_eq!(tail.checkpoint_floor(Topic::Journal), Some(120));
        let keyless = garbage("no entity here", 7);
        quarantine(&tail, Topic::Values, "cart.values", &keyless, &error);
        assert_eq!(tail.checkpoint_floor(Topic::Values), Some(7));
        tail.refuse_quarantined("no entity here").unwrap();
    }

    #[test]
    fn open_records_are_rescued_when_the_backup_or_this_process_saw_them_committed() {
        // Below the backup checkpoint: committed, whatever this process saw.
        assert!(proven_committed(9, 10, None));
        // Above the checkpoint, at or below what this process's writer saw committed.
        assert!(proven_committed(15, 10, Some(15)));
        assert!(proven_committed(12, 10, Some(15)));
        // Above both (a transaction whose commit nobody saw succeed): stays aborted.
        assert!(!proven_committed(16, 10, Some(15)));
        assert!(!proven_committed(10, 10, None));
    }
}
