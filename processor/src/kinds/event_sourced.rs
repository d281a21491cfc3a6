//! Event-sourced entities (`cloudstate.eventsourced.EventSourced`; `docs/protocol.md`,
//! "Event-sourced entities").
//!
//! * **Start:** `init` with the latest snapshot (if any), then every event after it, in order.
//!   The history is the Cassandra backup (snapshot + journal rows) plus the partition's tail,
//!   which holds what the backup has not reached yet; the events after the snapshot must be
//!   contiguous (a gap is refused: the backup or the journal is incomplete).
//! * **Commands** carry ids from 1 per stream and no metadata (the reference proxy sends none
//!   to entities; the TCK checks it).
//! * **Answers:** the reply's events become `EventRecord`s with the next sequence numbers; the
//!   snapshot (only together with events) and the client's reply go on the last one, so a retry
//!   with the same idempotency key gets the original reply even after a restart. A failure with
//!   `restart` persists nothing and drops the stream (the next command replays). A wrong command
//!   id, a stream-level failure or an empty message crash the stream with the reference
//!   proxy's texts.

use std::collections::BTreeMap;

use bytes::Bytes;
use statehouse_schemas::avro::{self, EventRecord};
use statehouse_schemas::cloudstate::eventsourced::{
    EventSourcedEvent, EventSourcedInit, EventSourcedSnapshot, EventSourcedStreamIn,
    EventSourcedStreamOut, event_sourced_stream_in, event_sourced_stream_out,
};
use statehouse_schemas::cloudstate::{self as cs, client_action};
use statehouse_store::{JournalRow, SnapshotRow};
use tokio_stream::wrappers::ReceiverStream;
use tracing::warn;

use crate::Error;
use crate::command::{Reply, Then};
use crate::entity::{EntityRef, Kind, Stamp, Start, Window};
use crate::journal::Journal;
use crate::kinds::journaled::{InFlight, Journaled, Pipeline, Step};
use crate::records::Written;
use crate::user_function::UserFunction;

/// How many earlier events are read back on activation to rebuild the idempotency window.
const IDEMPOTENCY_LOOKBACK: i64 = 200;

/// The machine of one event-sourced stream.
#[derive(Debug)]
pub(crate) struct EventSourced {
    /// The last event written: committed, or in the pipeline (a failed write drops the
    /// stream, and the next one starts from what was committed).
    last_seq: i64,
    pipeline: Pipeline,
}

/// An entity's history as activation found it.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Loaded {
    snapshot: Option<(i64, prost_types::Any)>,
    /// The events after the snapshot, contiguous.
    events: Vec<(i64, prost_types::Any)>,
    last_seq: i64,
    remembered: Vec<(String, Reply)>,
}

/// One event of the history, from Cassandra or the tail.
struct History {
    type_url: String,
    payload: Bytes,
    idempotency_key: Option<String>,
    reply: Option<avro::Reply>,
}

impl Kind for EventSourced {
    type In = EventSourcedStreamIn;
    type Out = EventSourcedStreamOut;
    type Loaded = Loaded;
    crate::kinds::journaled::journaled_kind!();

    const TERMINATED: &'static str = "Unexpected entity termination";

    fn answered(out: &EventSourcedStreamOut) -> Option<i64> {
        match out.message.as_ref()? {
            event_sourced_stream_out::Message::Reply(reply) => Some(reply.command_id),
            event_sourced_stream_out::Message::Failure(failure) => Some(failure.command_id),
        }
    }

    async fn load(ctx: &Journal, entity: &EntityRef) -> Result<Loaded, Error> {
        ctx.tail.refuse_quarantined(&entity.key)?;
        // The tail first: the backup deletes from it only after Cassandra has the events.
        let tail: Vec<EventRecord> = ctx
            .tail
            .records_of(&entity.key)
            .iter()
            .filter_map(|r| match &**r {
                Written::Event(e) => Some(e.clone()),
                _ => None,
            })
            .collect();
        let stored = async {
            let snapshot = ctx
                .env
                .store
                .latest_snapshot(ctx.env.service.as_str(), &entity.key, None)
                .await?;
            let from = snapshot.as_ref().map_or(1, |s| s.seq + 1);
            let rows = ctx
                .env
                .store
                .read_journal(
                    ctx.env.service.as_str(),
                    &entity.key,
                    (from - IDEMPOTENCY_LOOKBACK).max(1),
                )
                .await?;
            Ok::<_, statehouse_store::Error>((snapshot, rows))
        }
        .await;
        let (snapshot, rows) = match stored {
            Ok(found) => found,
            // Without Cassandra the entity can still start if the tail holds its whole history.
            Err(e) if tail.first().is_some_and(|ev| ev.seq == 1) => {
                warn!(entity = %entity.key, error = %e, "Cassandra unavailable; activating from the journal tail");
                (None, Vec::new())
            }
            Err(e) => return Err(Error::Store(e)),
        };
        fold(&entity.key, snapshot, rows, &tail)
    }

    async fn open(
        uf: &UserFunction,
        requests: ReceiverStream<EventSourcedStreamIn>,
    ) -> Result<tonic::Streaming<EventSourcedStreamOut>, tonic::Status> {
        Ok(uf.event_sourced().handle(requests).await?.into_inner())
    }

    fn start(entity: &EntityRef, loaded: Loaded) -> (Self, Start<EventSourcedStreamIn>) {
        let mut messages = Vec::with_capacity(loaded.events.len() + 1);
        messages.push(EventSourcedStreamIn {
            message: Some(event_sourced_stream_in::Message::Init(EventSourcedInit {
                service_name: entity.info.service_name.clone(),
                entity_id: entity.id.clone(),
                snapshot: loaded.snapshot.map(|(seq, any)| EventSourcedSnapshot {
                    snapshot_sequence: seq,
                    snapshot: Some(any),
                }),
            })),
        });
        messages.extend(loaded.events.into_iter().map(|(sequence, payload)| {
            EventSourcedStreamIn {
                message: Some(event_sourced_stream_in::Message::Event(EventSourcedEvent {
                    sequence,
                    payload: Some(payload),
                })),
            }
        }));
        (
            EventSourced {
                last_seq: loaded.last_seq,
                pipeline: Pipeline::default(),
            },
            Start {
                messages,
                remembered: loaded.remembered,
            },
        )
    }
}

impl Journaled for EventSourced {
    fn pipeline(&mut self) -> &mut Pipeline {
        &mut self.pipeline
    }

    fn wrap(command: cs::Command) -> EventSourcedStreamIn {
        EventSourcedStreamIn {
            message: Some(event_sourced_stream_in::Message::Command(command)),
        }
    }

    fn answer(
        &mut self,
        entity: &EntityRef,
        command: &InFlight,
        out: EventSourcedStreamOut,
        _window: &Window,
        stamp: &Stamp<'_>,
    ) -> Step {
        let id = command.id;
        let reply = match out.message {
            Some(event_sourced_stream_out::Message::Reply(reply)) => reply,
            Some(event_sourced_stream_out::Message::Failure(failure)) => {
                warn!(entity = %entity.key, description = %failure.description, "entity failed");
                return crash("Unexpected entity failure", None);
            }
            None => return crash("Unexpected entity failure", None),
        };
        if reply.command_id != id {
            return crash(
                "Unexpected entity reply",
                Some(format!(
                    "entity {} replied to command {} while command {id} was outstanding",
                    entity.key, reply.command_id
                )),
            );
        }
        let action = reply.client_action.and_then(|a| a.action);
        let then = match action {
            // The failed command's events are never persisted; the entity restarts from its
            // journal on the next command.
            Some(client_action::Action::Failure(f)) if f.restart => {
                return Step::Restart(Reply::failure(f.description));
            }
            Some(client_action::Action::Failure(f)) => Then::Reply(Reply::failure(f.description)),
            Some(client_action::Action::Reply(r)) => Then::Reply(Reply::of(r)),
            Some(client_action::Action::Forward(f)) => Then::Forward(f),
            None => Then::Reply(Reply::Empty),
        };
        // A snapshot without events is ignored (as the reference proxy does).
        let n = reply.events.len();
        let mut writes = Vec::with_capacity(n);
        if n > 0 {
            let command_id = stamp.command_id();
            let stored_reply = match &then {
                Then::Reply(Reply::Message {
                    payload, type_url, ..
                }) => Some(avro::Reply {
                    type_url: type_url.clone(),
                    payload: payload.clone(),
                }),
                // No message: stored with an empty type URL (a retry replies without one).
                Then::Reply(Reply::Empty) => Some(avro::Reply {
                    type_url: String::new(),
                    payload: Bytes::new(),
                }),
                Then::Reply(Reply::Failure { .. }) | Then::Forward(_) => None,
            };
            let mut snapshot = reply.snapshot;
            let mut stored_reply = stored_reply;
            for (i, event) in reply.events.into_iter().enumerate() {
                let last = i + 1 == n;
                writes.push(Written::Event(EventRecord {
                    service: stamp.service.to_string(),
                    persistence_id: entity.info.persistence_id.clone(),
                    entity_id: entity.id.clone(),
                    seq: self.last_seq + 1 + i as i64,
                    type_url: event.type_url,
                    payload: Bytes::from(event.value),
                    command_id: Some(command_id.clone()),
                    idempotency_key: command.idempotency_key.clone(),
                    timestamp_ms: stamp.timestamp_ms,
                    writer: stamp.writer.clone(),
                    snapshot: if last {
                        snapshot.take().map(|s| avro::Snapshot {
                            type_url: s.type_url,
                            payload: Bytes::from(s.value),
                        })
                    } else {
                        None
                    },
                    traceparent: command.traceparent.clone(),
                    reply: if last { stored_reply.take() } else { None },
                }));
            }
        }
        self.last_seq += n as i64;
        Step::Done {
            writes,
            then,
            side_effects: reply.side_effects,
        }
    }

    fn unsolicited(entity: &EntityRef, out: &EventSourcedStreamOut) -> String {
        format!(
            "entity {} sent {:?} while no command was outstanding",
            entity.key,
            out.message.as_ref().map(|m| match m {
                event_sourced_stream_out::Message::Reply(r) =>
                    format!("a reply to command {}", r.command_id),
                event_sourced_stream_out::Message::Failure(f) =>
                    format!("a failure ({})", f.description),
            })
        )
    }
}

fn crash(text: &str, report: Option<String>) -> Step {
    Step::crash(text, report)
}

/// The history to replay: the newest snapshot (Cassandra's or one in the tail) and the events
/// after it, from Cassandra rows and the tail (the tail wins for a seq both hold); refused if
/// the events after the snapshot have a gap. The idempotency window comes from every event
/// read (also those before the snapshot) that carries a key and a stored reply.
fn fold(
    key: &str,
    snapshot: Option<SnapshotRow>,
    rows: Vec<JournalRow>,
    tail: &[EventRecord],
) -> Result<Loaded, Error> {
    let mut history: BTreeMap<i64, History> = BTreeMap::new();
    let mut snapshot: Option<(i64, prost_types::Any)> = snapshot.map(|s| {
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
                reply: row
                    .reply
                    .map(|(type_url, payload)| avro::Reply { type_url, payload }),
            },
        );
    }
    for event in tail {
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
                reply: event.reply.clone(),
            },
        );
    }
    let snapshot_seq = snapshot.as_ref().map_or(0, |(seq, _)| *seq);
    // Invariant: the events after the snapshot are contiguous.
    let mut expected = snapshot_seq + 1;
    for &seq in history.keys().filter(|&&s| s > snapshot_seq) {
        if seq != expected {
            return Err(Error::Journal(format!(
                "entity {key}: event {expected} is missing (found {seq}); the backup or journal is incomplete"
            )));
        }
        expected += 1;
    }
    let mut remembered = Vec::new();
    let mut events = Vec::new();
    for (seq, h) in history {
        if let (Some(key), Some(reply)) = (h.idempotency_key, h.reply) {
            remembered.push((key, stored_reply(reply)));
        }
        if seq > snapshot_seq {
            events.push((
                seq,
                prost_types::Any {
                    type_url: h.type_url,
                    value: h.payload.to_vec(),
                },
            ));
        }
    }
    Ok(Loaded {
        snapshot,
        events,
        last_seq: expected - 1,
        remembered,
    })
}

/// A reply stored on an event: an empty type URL stands for "no message".
fn stored_reply(reply: avro::Reply) -> Reply {
    if reply.type_url.is_empty() {
        Reply::Empty
    } else {
        Reply::Message {
            payload: reply.payload,
            type_url: reply.type_url,
            metadata: None,
        }
    }
}

#[cfg(test)]
mod tests;
