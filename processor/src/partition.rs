//! One owned partition: its fenced writer, its journal tail, its backup task and its active
//! entities. Lifecycle (DESIGN §5): fence (`init_transactions`) → settle the journal partition
//! (so that everything it holds is readable, see `Writer::start_observed`) → read the
//! checkpoint → read the partition from the checkpoint to the end (read_committed) into the
//! tail → serve. On revoke:
//! stop taking commands, let the entities finish the command in flight, commit, release.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use statehouse_kafka::partition_writer::{self, Observer, Record, Writer};
use statehouse_kafka::reader::{self, Isolation};
use statehouse_schemas::avro::{AvroRecord, EventRecord};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::entity::{self, Command};
use crate::tail::Tail;
use crate::{Error, Node, backup};

/// Bound of one entity's mailbox.
const MAILBOX: usize = 256;
/// A takeover gives up (and is retried) when reading the journal to its end makes no progress
/// for this long; a long journal may take as long as it needs while it moves.
const RECOVERY_STALL: Duration = Duration::from_secs(30);
/// Bound of the checkpoint read at takeover (without it, recovery starts from offset 0).
const CHECKPOINT_TIMEOUT: Duration = Duration::from_secs(15);

pub(crate) struct Partition {
    pub(crate) id: u32,
    pub(crate) epoch: i64,
    pub(crate) writer: partition_writer::Handle,
    pub(crate) tail: Arc<Tail>,
    pub(crate) journal_topic: Arc<str>,
    entities: Mutex<HashMap<String, (u64, mpsc::Sender<Command>)>>,
    next_entity: std::sync::atomic::AtomicU64,
    serving: AtomicBool,
    /// Cancelled when the partition stops: entities finish their command and end.
    pub(crate) stop: CancellationToken,
    /// Cancelled only on process shutdown; the writer and backup outlive the entities until then
    /// or until the partition is released.
    writer_stop: CancellationToken,
    backup_done: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// Feeds committed journal events into the tail.
struct TailObserver {
    tail: Arc<Tail>,
    journal_topic: Arc<str>,
}

impl Observer for TailObserver {
    fn committed(&self, records: &[Record], offsets: &[i64]) {
        for (record, &offset) in records.iter().zip(offsets) {
            if record.topic != self.journal_topic {
                continue;
            }
            let Some(value) = &record.value else { continue };
            match EventRecord::decode(value) {
                Ok(event) => self.tail.push(offset, Arc::new(event)),
                Err(e) => {
                    warn!(offset, error = %e, "committed a journal record that does not decode")
                }
            }
        }
    }
}

impl Partition {
    /// Take the partition over: fence the previous owner, recover the tail, start the backup.
    pub(crate) async fn take_over(node: &Arc<Node>, id: u32) -> Result<Arc<Self>, Error> {
        let started = std::time::Instant::now();
        let journal_topic: Arc<str> = Arc::from(node.topics.journal());
        let tail = Arc::new(Tail::default());
        let writer_stop = node.shutdown.child_token();
        let observer: Arc<dyn Observer> = Arc::new(TailObserver {
            tail: Arc::clone(&tail),
            journal_topic: Arc::clone(&journal_topic),
        });
        // 1. Fence: from here on no previous owner can commit to this partition.
        let writer = Writer::start_observed(
            &node.config.kafka,
            node.topics.transactional_id(id),
            id,
            Some(observer),
            std::slice::from_ref(&journal_topic),
            writer_stop.clone(),
        )
        .await?;
        let end = writer
            .settled_at(&journal_topic)
            .expect("the journal was settled");
        let epoch = epoch_now();
        // 2. Everything before the checkpoint is in Cassandra; read the rest from Kafka.
        let fenced_in = started.elapsed();
        let checkpoint = match tokio::time::timeout(
            CHECKPOINT_TIMEOUT,
            node.store
                .checkpoint(node.service.as_str(), &journal_topic, id as i32),
        )
        .await
        {
            Ok(Ok(offset)) => offset,
            Ok(Err(e)) => {
                warn!(partition = id, error = %e, "Cassandra unavailable at takeover; recovering the partition from offset 0");
                0
            }
            Err(_) => {
                warn!(partition = id, timeout = ?CHECKPOINT_TIMEOUT, "reading the checkpoint timed out; recovering the partition from offset 0");
                0
            }
        };
        // The checkpoint can only be beyond the end if Kafka lost records it had acknowledged
        // (e.g. an unclean leader election): what is in Cassandra stays; read what Kafka has.
        let from = if checkpoint > end {
            error!(
                partition = id,
                checkpoint,
                end,
                "the backup checkpoint is beyond the end of the journal partition: Kafka lost acknowledged records; recovering from its end"
            );
            end
        } else {
            checkpoint
        };
        let records = reader::read_to_end(
            &node.config.kafka,
            &journal_topic,
            id,
            from,
            Isolation::ReadCommitted,
            RECOVERY_STALL,
        )
        .await?;
        let recovered = records.len();
        for message in records {
            let offset = message.offset;
            let Some(value) = &message.value else {
                continue;
            };
            let event = EventRecord::decode(value)
                .map_err(|e| Error::Journal(format!("partition {id} offset {offset}: {e}")))?;
            tail.push(offset, Arc::new(event));
        }
        // Records of a transaction Kafka left open (and the settle aborted): those the backup
        // holds were committed — the writer saw the commit succeed — so they are written again;
        // the others cannot be proven committed and stay aborted.
        let (rescue, dropped): (Vec<_>, Vec<_>) = writer
            .hanging()
            .iter()
            .filter(|(topic, m)| *topic == journal_topic && m.value.is_some())
            .partition(|(_, m)| m.offset < checkpoint);
        if !dropped.is_empty() {
            error!(
                partition = id,
                records = dropped.len(),
                first = dropped[0].1.offset,
                checkpoint,
                "records of a transaction Kafka left open are not in the backup: they cannot be proven committed and stay aborted"
            );
        }
        if !rescue.is_empty() {
            let records: Vec<Record> = rescue
                .iter()
                .map(|(topic, m)| Record {
                    topic: Arc::clone(topic),
                    key: m.key.clone().unwrap_or_default(),
                    value: m.value.clone(),
                    headers: m
                        .headers
                        .iter()
                        .filter_map(|(k, v)| {
                            Some((statehouse_kafka::headers::known(k)?, v.clone()))
                        })
                        .collect(),
                })
                .collect();
            let offsets = writer.append(records).await?.offsets;
            warn!(partition = id, records = offsets.len(), from = rescue[0].1.offset, to = ?offsets.first(), "Kafka left a committed transaction open (markers skipped); its records were written again");
        }
        info!(
            partition = id,
            checkpoint,
            recovered,
            epoch,
            fenced_in = ?fenced_in,
            took = ?started.elapsed(),
            "partition recovered"
        );
        let partition = Arc::new(Self {
            id,
            epoch,
            writer,
            tail,
            journal_topic,
            entities: Mutex::new(HashMap::new()),
            next_entity: std::sync::atomic::AtomicU64::new(0),
            serving: AtomicBool::new(true),
            stop: node.shutdown.child_token(),
            writer_stop,
            backup_done: Mutex::new(None),
        });
        let task = tokio::spawn(backup::run(Arc::clone(node), Arc::clone(&partition)));
        *partition.backup_done.lock().expect("lock") = Some(task);
        Ok(partition)
    }

    /// Whether the writer was told to stop (revoke or shutdown).
    pub(crate) fn writer_stopped(&self) -> bool {
        self.writer_stop.is_cancelled()
    }

    /// Resolves when the writer is told to stop.
    pub(crate) async fn writer_stopping(&self) {
        self.writer_stop.cancelled().await;
    }

    pub(crate) fn is_serving(&self) -> bool {
        self.serving.load(Ordering::Acquire) && !self.writer.is_stopped()
    }

    /// Hand a command to its entity, activating the entity if needed.
    pub(crate) fn send(
        self: &Arc<Self>,
        node: &Arc<Node>,
        key: String,
        entity_id: String,
        command: Command,
    ) -> Result<(), Error> {
        let mut entities = self.entities.lock().expect("entities lock");
        if !self.is_serving() {
            return Err(node.not_serving(self.id));
        }
        let info = Arc::clone(&command.method.entity);
        let command = match entities.get(&key) {
            Some((_, tx)) => match tx.try_send(command) {
                Ok(()) => return Ok(()),
                Err(mpsc::error::TrySendError::Full(_)) => {
                    return Err(Error::Overloaded(format!(
                        "entity {entity_id} has {MAILBOX} commands waiting; slow down"
                    )));
                }
                // The entity ended (passivated or crashed) after we looked: start a new one.
                Err(mpsc::error::TrySendError::Closed(command)) => command,
            },
            None => command,
        };
        if node.active_entities() >= node.config.processor.max_active_entities {
            return Err(Error::Overloaded(format!(
                "{} entities are active, the limit (processor.max-active-entities)",
                node.config.processor.max_active_entities
            )));
        }
        let (tx, rx) = mpsc::channel(MAILBOX);
        tx.try_send(command).expect("a new mailbox has room");
        let instance = self.next_entity.fetch_add(1, Ordering::Relaxed);
        entities.insert(key.clone(), (instance, tx));
        node.entity_started();
        tokio::spawn(entity::run(
            Arc::clone(node),
            Arc::clone(self),
            key,
            entity_id,
            info,
            instance,
            rx,
        ));
        Ok(())
    }

    /// Called by an idle entity: remove it if no command is waiting. Returns false if a command
    /// arrived meanwhile (the entity must go on).
    pub(crate) fn try_passivate(&self, key: &str, rx: &mpsc::Receiver<Command>) -> bool {
        let mut entities = self.entities.lock().expect("entities lock");
        if !rx.is_empty() {
            return false;
        }
        entities.remove(key);
        true
    }

    /// Called by an entity that ends for any other reason.
    pub(crate) fn forget(&self, key: &str, instance: u64) {
        let mut entities = self.entities.lock().expect("entities lock");
        if entities.get(key).is_some_and(|(i, _)| *i == instance) {
            entities.remove(key);
        }
    }

    /// Stop serving (revoke or shutdown): entities finish the command in flight, then the writer
    /// commits what it holds and the backup flushes (bounded).
    pub(crate) async fn release(&self, node: &Node) {
        self.serving.store(false, Ordering::Release);
        self.stop.cancel();
        // Wait (bounded) for the entities to finish.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !self.entities.lock().expect("entities lock").is_empty()
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
        info!(service = %node.service, partition = self.id, "partition released");
    }

    pub(crate) fn journal_record(
        &self,
        key: String,
        event: &EventRecord,
        value: Vec<u8>,
    ) -> Record {
        let mut headers = vec![
            (
                statehouse_kafka::headers::ENTITY,
                Bytes::copy_from_slice(event.entity_id.as_bytes()),
            ),
            (
                statehouse_kafka::headers::SEQ,
                Bytes::from(event.seq.to_string()),
            ),
            (
                statehouse_kafka::headers::TYPE,
                Bytes::copy_from_slice(event.type_url.as_bytes()),
            ),
        ];
        if let Some(tp) = &event.traceparent {
            headers.push((
                statehouse_kafka::headers::TRACEPARENT,
                Bytes::copy_from_slice(tp.as_bytes()),
            ));
        }
        Record {
            topic: Arc::clone(&self.journal_topic),
            key: Bytes::from(key),
            value: Some(Bytes::from(value)),
            headers,
        }
    }
}

/// The owner epoch: milliseconds at takeover. Monotonic across owners as long as their clocks
/// agree within a takeover interval; the transactional fence does not depend on it.
fn epoch_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
