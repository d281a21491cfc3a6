//! One active event-sourced entity: a task with a mailbox that owns the entity's `handle`
//! stream to the user function (protocol §2.4). Commands run one at a time, in arrival order;
//! the events of a command are committed to Kafka before its reply is released.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use statehouse_runtime::method_index::{EntityInfo, MethodInfo};
use statehouse_schemas::avro::{self, AvroRecord, EventRecord};
use statehouse_schemas::cloudstate::eventsourced::{
    EventSourcedEvent, EventSourcedInit, EventSourcedReply, EventSourcedSnapshot,
    EventSourcedStreamIn, EventSourcedStreamOut, event_sourced_stream_in, event_sourced_stream_out,
};
use statehouse_schemas::cloudstate::{self as cs, client_action};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tracing::{debug, warn};

use crate::partition::Partition;
use crate::{Error, Node, effects};

/// How many earlier events are read back on activation to rebuild the idempotency window.
const IDEMPOTENCY_LOOKBACK: i64 = 200;
/// Idempotency keys remembered per active entity.
const IDEMPOTENCY_WINDOW: usize = 1_000;
/// How long a command waits for the user function when the caller set no deadline.
const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// A command for an entity.
pub(crate) struct Command {
    pub(crate) method: Arc<MethodInfo>,
    pub(crate) payload: Bytes,
    pub(crate) idempotency_key: Option<String>,
    pub(crate) deadline: Option<Instant>,
    pub(crate) traceparent: Option<String>,
    pub(crate) hops: u32,
    pub(crate) reply: oneshot::Sender<Result<Outcome, Error>>,
}

/// What the client gets.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Reply {
    Message {
        payload: Bytes,
        type_url: String,
        metadata: Option<cs::Metadata>,
    },
    /// The user function sent no reply message.
    Empty,
    Failure {
        description: String,
        code: tonic::Code,
    },
}

/// A reply, and whether it is the stored reply of an earlier command with the same
/// idempotency key.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Outcome {
    pub(crate) reply: Reply,
    pub(crate) deduplicated: bool,
}

impl Outcome {
    pub(crate) fn new(reply: Reply) -> Self {
        Self {
            reply,
            deduplicated: false,
        }
    }
}

/// An open `handle` stream. The call itself runs in its own task, because some SDKs (Go) send
/// their response headers only with the first reply: awaiting the call before sending a
/// command would deadlock.
struct Session {
    tx: mpsc::Sender<EventSourcedStreamIn>,
    rx: mpsc::Receiver<Result<EventSourcedStreamOut, tonic::Status>>,
    last_command_id: i64,
}

struct Entity {
    node: Arc<Node>,
    partition: Arc<Partition>,
    key: String,
    entity_id: String,
    info: Arc<EntityInfo>,
    session: Option<Session>,
    last_seq: i64,
    idempotency: HashMap<String, Reply>,
    idempotency_order: VecDeque<String>,
}

/// What a command leaves to do after the user function answered.
enum Next {
    Done(Result<Outcome, Error>),
    /// Side effects and/or a forward: run off the entity task so the entity is not blocked.
    Effects {
        side_effects: Vec<cs::SideEffect>,
        action: Option<client_action::Action>,
    },
}

/// The entity task. Ends when passivated, when its partition stops, or when its mailbox closes.
pub(crate) async fn run(
    node: Arc<Node>,
    partition: Arc<Partition>,
    key: String,
    entity_id: String,
    info: Arc<EntityInfo>,
    instance: u64,
    mut rx: mpsc::Receiver<Command>,
) {
    let idle = info.passivation_timeout.unwrap_or(Duration::from_millis(
        node.config.processor.passivation_timeout_ms,
    ));
    let mut entity = Entity {
        node: Arc::clone(&node),
        partition: Arc::clone(&partition),
        key,
        entity_id,
        info,
        session: None,
        last_seq: 0,
        idempotency: HashMap::new(),
        idempotency_order: VecDeque::new(),
    };
    let mut passivated = false;
    loop {
        let command = tokio::select! {
            biased;
            _ = partition.stop.cancelled() => break,
            command = rx.recv() => match command {
                Some(command) => command,
                None => break,
            },
            _ = tokio::time::sleep(idle) => {
                if partition.try_passivate(&entity.key, &rx) {
                    passivated = true;
                    debug!(entity = %entity.key, "passivated");
                    break;
                }
                continue;
            }
        };
        entity.handle(command).await;
    }
    if !passivated {
        partition.forget(&entity.key, instance);
    }
    // Commands that arrived after the decision to stop go back to their router to retry.
    rx.close();
    while let Ok(command) = rx.try_recv() {
        let _ = command.reply.send(Err(node.not_serving(partition.id)));
    }
    entity.close_session().await;
    node.entity_stopped();
}

impl Entity {
    async fn handle(&mut self, command: Command) {
        // Queued before a pause? Then the partition may be someone else's by now.
        if !self.node.may_serve() || !self.partition.is_serving() {
            let _ = command
                .reply
                .send(Err(self.node.not_serving(self.partition.id)));
            return;
        }
        let deadline = command.deadline;
        if deadline.is_some_and(|d| d <= Instant::now()) {
            let _ = command.reply.send(Err(Error::DeadlineExceeded));
            return;
        }
        if self.session.is_none()
            && let Err(e) = self.activate().await
        {
            warn!(entity = %self.key, error = %e, "activation failed");
            let _ = command.reply.send(Err(e));
            return;
        }
        if let Some(reply) = command
            .idempotency_key
            .as_ref()
            .and_then(|k| self.idempotency.get(k))
        {
            let _ = command.reply.send(Ok(Outcome {
                reply: reply.clone(),
                deduplicated: true,
            }));
            return;
        }
        match self.run_command(&command).await {
            Next::Done(result) => {
                let _ = command.reply.send(result);
            }
            Next::Effects {
                side_effects,
                action,
            } => {
                tokio::spawn(effects::run(
                    Arc::clone(&self.node),
                    side_effects,
                    action,
                    command.hops + 1,
                    command.deadline,
                    command.reply,
                ));
            }
        }
    }

    /// Send one command and handle the user function's answer.
    async fn run_command(&mut self, command: &Command) -> Next {
        let session = self.session.as_mut().expect("activated");
        session.last_command_id += 1;
        let id = session.last_command_id;
        let message = EventSourcedStreamIn {
            message: Some(event_sourced_stream_in::Message::Command(cs::Command {
                entity_id: self.entity_id.clone(),
                id,
                name: command.method.name.clone(),
                payload: Some(prost_types::Any {
                    type_url: format!(
                        "{}{}",
                        statehouse_schemas::protocol::PROTOBUF_TYPE_URL_PREFIX,
                        command.method.input.full_name()
                    ),
                    value: command.payload.to_vec(),
                }),
                streamed: false,
                // The reference proxy sends no metadata to entities (the TCK checks it).
                metadata: None,
            })),
        };
        if session.tx.send(message).await.is_err() {
            return self.crash("Unexpected entity termination");
        }
        let deadline = command
            .deadline
            .unwrap_or_else(|| Instant::now() + DEFAULT_COMMAND_TIMEOUT);
        let answer = match tokio::time::timeout_at(deadline, session.rx.recv()).await {
            Err(_) => {
                // The user function is too slow: its later answer can no longer be trusted to
                // belong to this command. Restart the entity.
                self.session = None;
                return Next::Done(Err(Error::DeadlineExceeded));
            }
            Ok(Some(Err(status))) => {
                warn!(entity = %self.key, %status, "entity stream failed");
                return self.crash("Unexpected entity termination");
            }
            Ok(None) => return self.crash("Unexpected entity termination"),
            Ok(Some(Ok(answer))) => answer,
        };
        let reply = match answer.message {
            Some(event_sourced_stream_out::Message::Reply(reply)) => reply,
            Some(event_sourced_stream_out::Message::Failure(failure)) => {
                warn!(entity = %self.key, description = %failure.description, "entity failed");
                return self.crash("Unexpected entity failure");
            }
            None => return self.crash("Unexpected entity failure"),
        };
        if reply.command_id != id {
            let message = format!(
                "entity {} replied to command {} while command {id} was outstanding",
                self.key, reply.command_id
            );
            self.node.uf.report_error(&message).await;
            return self.crash("Unexpected entity reply");
        }
        self.finish(command, reply).await
    }

    async fn finish(&mut self, command: &Command, mut reply: EventSourcedReply) -> Next {
        let action = reply.client_action.take().and_then(|a| a.action);
        if let Some(client_action::Action::Failure(failure)) = &action
            && failure.restart
        {
            // The failed command's events are never persisted; the entity restarts from its
            // journal on the next command.
            self.session = None;
            return Next::Done(Ok(Outcome::new(Reply::Failure {
                description: failure.description.clone(),
                code: tonic::Code::Unknown,
            })));
        }
        let direct = match &action {
            Some(client_action::Action::Reply(r)) => Some(reply_message(r)),
            Some(client_action::Action::Failure(f)) => Some(Reply::Failure {
                description: f.description.clone(),
                code: tonic::Code::Unknown,
            }),
            Some(client_action::Action::Forward(_)) => None,
            None => Some(Reply::Empty),
        };
        let had_events = !reply.events.is_empty();
        if had_events && let Err(e) = self.persist(command, &mut reply, direct.as_ref()).await {
            // The user function already applied the events: its state is ahead of the journal.
            // Drop the stream so the next command replays the journal.
            self.session = None;
            return Next::Done(Err(e));
        }
        if let (Some(key), Some(Reply::Message { .. } | Reply::Empty)) =
            (&command.idempotency_key, &direct)
            && had_events
        {
            self.remember(key.clone(), direct.clone().expect("checked"));
        }
        if reply.side_effects.is_empty()
            && let Some(direct) = direct
        {
            return Next::Done(Ok(Outcome::new(direct)));
        }
        Next::Effects {
            side_effects: reply.side_effects,
            action,
        }
    }

    /// Commit the reply's events (and snapshot) in the partition's next transaction.
    async fn persist(
        &mut self,
        command: &Command,
        reply: &mut EventSourcedReply,
        client_reply: Option<&Reply>,
    ) -> Result<(), Error> {
        let node = &self.node;
        let n = reply.events.len();
        let command_id = node.next_command_id();
        let timestamp_ms = now_ms();
        let stored_reply = match client_reply {
            Some(Reply::Message {
                payload, type_url, ..
            }) => Some(avro::Reply {
                type_url: type_url.clone(),
                payload: payload.clone(),
            }),
            _ => None,
        };
        let mut snapshot = reply.snapshot.take();
        let mut records = Vec::with_capacity(n);
        for (i, event) in reply.events.drain(..).enumerate() {
            let seq = self.last_seq + 1 + i as i64;
            let last = i + 1 == n;
            let record = EventRecord {
                service: node.service.to_string(),
                persistence_id: self.info.persistence_id.clone(),
                entity_id: self.entity_id.clone(),
                seq,
                type_url: event.type_url,
                payload: Bytes::from(event.value),
                command_id: Some(command_id.clone()),
                idempotency_key: command.idempotency_key.clone(),
                timestamp_ms,
                writer: avro::Writer {
                    processor_id: node.processor_id.clone(),
                    epoch: self.partition.epoch,
                },
                snapshot: if last {
                    snapshot.take().map(|s| avro::Snapshot {
                        type_url: s.type_url,
                        payload: Bytes::from(s.value),
                    })
                } else {
                    None
                },
                traceparent: command.traceparent.clone(),
                reply: if last { stored_reply.clone() } else { None },
            };
            let value = record
                .encode()
                .map_err(|e| Error::Journal(format!("encoding an event: {e}")))?;
            records.push(self.partition.journal_record(
                statehouse_core::ids::journal_key(&self.key, seq as u64),
                &record,
                value,
            ));
        }
        self.partition.writer.append(records).await?;
        self.last_seq += n as i64;
        metrics::counter!(crate::metrics::EVENTS_PERSISTED).increment(n as u64);
        Ok(())
    }

    fn remember(&mut self, key: String, reply: Reply) {
        if self.idempotency.insert(key.clone(), reply).is_none() {
            self.idempotency_order.push_back(key);
            if self.idempotency_order.len() > IDEMPOTENCY_WINDOW
                && let Some(old) = self.idempotency_order.pop_front()
            {
                self.idempotency.remove(&old);
            }
        }
    }

    /// The stream broke or the user function violated the protocol: drop the stream (the next
    /// command starts a fresh one from the journal) and fail the current command.
    fn crash(&mut self, text: &str) -> Next {
        self.session = None;
        Next::Done(Err(Error::EntityFailure(text.to_string())))
    }

    /// Load the entity (snapshot + journal from Cassandra, plus the in-memory tail), open its
    /// stream, and send init and the events after the snapshot.
    async fn activate(&mut self) -> Result<(), Error> {
        // The tail first: the backup deletes from it only after Cassandra has the events.
        let tail = self.partition.tail.events_of(&self.key);
        let service = self.node.service.as_str();
        let store = &self.node.store;
        let stored = async {
            let snapshot = store.latest_snapshot(service, &self.key, None).await?;
            let from = snapshot.as_ref().map_or(1, |s| s.seq + 1);
            let rows = store
                .read_journal(service, &self.key, (from - IDEMPOTENCY_LOOKBACK).max(1))
                .await?;
            Ok::<_, statehouse_store::Error>((snapshot, rows))
        }
        .await;
        let (stored_snapshot, rows) = match stored {
            Ok(found) => found,
            // Without Cassandra the entity can still start if the tail holds its whole history.
            Err(e) if tail.first().is_some_and(|ev| ev.seq == 1) => {
                warn!(entity = %self.key, error = %e, "Cassandra unavailable; activating from the journal tail");
                (None, Vec::new())
            }
            Err(e) => return Err(Error::Store(e)),
        };
        let mut history: BTreeMap<i64, History> = BTreeMap::new();
        let mut snapshot: Option<(i64, prost_types::Any)> = stored_snapshot.map(|s| {
            (
                s.seq,
                prost_types::Any {
                    type_url: s.type_url,
                    value: s.snapshot.to_vec(),
                },
            )
        });
        for row in rows {
            history.insert(
                row.seq,
                History {
                    type_url: row.type_url,
                    payload: row.payload,
                    idempotency_key: row.idempotency_key,
                    reply: row.reply.map(|(type_url, payload)| Reply::Message {
                        payload,
                        type_url,
                        metadata: None,
                    }),
                },
            );
        }
        for event in &tail {
            if let Some(s) = &event.snapshot
                && snapshot.as_ref().is_none_or(|(seq, _)| *seq < event.seq)
            {
                snapshot = Some((
                    event.seq,
                    prost_types::Any {
                        type_url: s.type_url.clone(),
                        value: s.payload.to_vec(),
                    },
                ));
            }
            history.insert(
                event.seq,
                History {
                    type_url: event.type_url.clone(),
                    payload: event.payload.clone(),
                    idempotency_key: event.idempotency_key.clone(),
                    reply: event.reply.as_ref().map(|r| Reply::Message {
                        payload: r.payload.clone(),
                        type_url: r.type_url.clone(),
                        metadata: None,
                    }),
                },
            );
        }
        let snapshot_seq = snapshot.as_ref().map_or(0, |(seq, _)| *seq);
        // Invariant: the events after the snapshot are contiguous.
        let mut expected = snapshot_seq + 1;
        for &seq in history.keys().filter(|&&s| s > snapshot_seq) {
            if seq != expected {
                return Err(Error::Journal(format!(
                    "entity {}: event {expected} is missing (found {seq}); the backup or journal is incomplete",
                    self.key
                )));
            }
            expected += 1;
        }
        self.last_seq = expected - 1;
        self.idempotency.clear();
        self.idempotency_order.clear();
        for h in history.values() {
            if let (Some(key), Some(reply)) = (&h.idempotency_key, &h.reply) {
                self.remember(key.clone(), reply.clone());
            }
        }
        let mut messages = Vec::with_capacity(history.len() + 1);
        messages.push(EventSourcedStreamIn {
            message: Some(event_sourced_stream_in::Message::Init(EventSourcedInit {
                service_name: self.info.service_name.clone(),
                entity_id: self.entity_id.clone(),
                snapshot: snapshot.map(|(seq, any)| EventSourcedSnapshot {
                    snapshot_sequence: seq,
                    snapshot: Some(any),
                }),
            })),
        });
        for (seq, h) in history.into_iter().filter(|(s, _)| *s > snapshot_seq) {
            messages.push(EventSourcedStreamIn {
                message: Some(event_sourced_stream_in::Message::Event(EventSourcedEvent {
                    sequence: seq,
                    payload: Some(prost_types::Any {
                        type_url: h.type_url,
                        value: h.payload.to_vec(),
                    }),
                })),
            });
        }
        let replayed = messages.len() - 1;
        let (tx, requests) = mpsc::channel(64);
        let (answers, rx) = mpsc::channel(16);
        let mut client = self.node.uf.event_sourced();
        let address = self.node.uf.address().to_string();
        tokio::spawn(async move {
            let mut stream = match client.handle(ReceiverStream::new(requests)).await {
                Ok(response) => response.into_inner(),
                Err(status) => {
                    warn!(%address, %status, "opening an entity stream failed");
                    let _ = answers.send(Err(status)).await;
                    return;
                }
            };
            loop {
                match stream.message().await {
                    Ok(Some(message)) => {
                        if answers.send(Ok(message)).await.is_err() {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(status) => {
                        let _ = answers.send(Err(status)).await;
                        break;
                    }
                }
            }
        });
        for message in messages {
            if tx.send(message).await.is_err() {
                return Err(Error::UserFunction(format!(
                    "the entity stream to {} closed during replay",
                    self.node.uf.address()
                )));
            }
        }
        self.session = Some(Session {
            tx,
            rx,
            last_command_id: 0,
        });
        metrics::counter!(crate::metrics::ACTIVATIONS).increment(1);
        debug!(entity = %self.key, snapshot_seq, replayed, last_seq = self.last_seq, "activated");
        Ok(())
    }

    /// Half-close the stream and wait (bounded) for the user function to close it too.
    async fn close_session(&mut self) {
        if let Some(mut session) = self.session.take() {
            drop(session.tx);
            let _ = tokio::time::timeout(Duration::from_secs(5), async {
                while let Some(Ok(_)) = session.rx.recv().await {}
            })
            .await;
        }
    }
}

struct History {
    type_url: String,
    payload: Bytes,
    idempotency_key: Option<String>,
    reply: Option<Reply>,
}

/// The client's reply for a user-function `Reply` (an absent payload sends no message).
pub(crate) fn reply_message(reply: &cs::Reply) -> Reply {
    match &reply.payload {
        Some(payload) => Reply::Message {
            payload: Bytes::copy_from_slice(&payload.value),
            type_url: payload.type_url.clone(),
            metadata: reply.metadata.clone(),
        },
        None => Reply::Empty,
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
