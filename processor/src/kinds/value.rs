//! Value entities (`cloudstate.valueentity.ValueEntity`; `docs/protocol.md`, "Value entities"):
//! the user function keeps the state and replaces or deletes it with each command.
//!
//! * **Start:** `init` always carries `state` — the stored value, or an empty
//!   `ValueEntityInitState` for an entity without one (the TCK checks the field is present).
//!   The stored value is the newer of the Cassandra backup's row and the partition's tail.
//! * **Commands** one at a time, ids from 1 per stream, no metadata.
//! * **Answers:** `update` becomes a `ValueRecord` and `delete` a tombstone (a `ValueDeletion`
//!   in its header), with the next version number, written to `<prefix><service>.values`
//!   (keyed `<persistence_id>|<entity_id>`) in the partition's transaction before the reply;
//!   the stream stays open after a delete. A failure persists nothing and runs no side effects.
//!   Every record carries the replies of the entity's recent commands with an idempotency key,
//!   so retries get their original reply also after a restart (the topic is compacted: only
//!   the latest record of an entity stays). Protocol violations crash the stream with the
//!   reference proxy's texts (`Unexpected Value entity reply` / `failure` / `termination`).

use bytes::Bytes;
use statehouse_schemas::avro::{self, AvroRecord, RecentReply, ValueDeletion, ValueRecord};
use statehouse_schemas::cloudstate::valueentity::{
    ValueEntityInit, ValueEntityInitState, ValueEntityStreamIn, ValueEntityStreamOut,
    value_entity_action, value_entity_stream_in, value_entity_stream_out,
};
use statehouse_schemas::cloudstate::{self as cs, client_action};
use statehouse_store::ValueRow;
use tokio_stream::wrappers::ReceiverStream;
use tracing::warn;

use crate::Error;
use crate::command::{Reply, Then};
use crate::entity::{EntityRef, Kind, Stamp, Start, Window};
use crate::journal::Journal;
use crate::kinds::journaled::{InFlight, Journaled, Pipeline, Step};
use crate::records::Written;
use crate::user_function::UserFunction;

/// Most recent idempotent replies a value record carries.
pub(crate) const RECENT: usize = 16;

/// The machine of one value-entity stream.
#[derive(Debug)]
pub(crate) struct Value {
    /// The version of the last state written: committed, or in the pipeline (a failed write
    /// drops the stream, and the next one starts from what was committed). 0: never written.
    seq: i64,
    /// Replies of keyed commands written but maybe not committed yet, newest last: a later
    /// record of the pipeline carries them too (the topic keeps only the latest record).
    unconfirmed: std::collections::VecDeque<RecentReply>,
    pipeline: Pipeline,
}

/// The stored state of an entity, as activation found it.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Loaded {
    seq: i64,
    state: Option<prost_types::Any>,
    recent: Vec<RecentReply>,
}

impl Kind for Value {
    type In = ValueEntityStreamIn;
    type Out = ValueEntityStreamOut;
    type Loaded = Loaded;
    crate::kinds::journaled::journaled_kind!();

    const TERMINATED: &'static str = "Unexpected Value entity termination";

    fn answered(out: &ValueEntityStreamOut) -> Option<i64> {
        match out.message.as_ref()? {
            value_entity_stream_out::Message::Reply(reply) => Some(reply.command_id),
            value_entity_stream_out::Message::Failure(failure) => Some(failure.command_id),
        }
    }

    async fn load(ctx: &Journal, entity: &EntityRef) -> Result<Loaded, Error> {
        ctx.tail.refuse_quarantined(&entity.key)?;
        // The tail first: the backup deletes from it only after Cassandra has the record.
        let newest_in_tail = ctx
            .tail
            .records_of(&entity.key)
            .into_iter()
            .filter(|r| matches!(**r, Written::Value(_) | Written::Deleted(_)))
            .max_by_key(|r| r.seq());
        let service = ctx.env.service.as_str();
        let stored = match ctx.env.store.read_value(service, &entity.key).await {
            Ok(row) => row,
            Err(e) if newest_in_tail.is_some() => {
                warn!(entity = %entity.key, error = %e, "Cassandra unavailable; activating from the values tail");
                None
            }
            Err(e) => return Err(Error::Store(e)),
        };
        match newest_in_tail {
            Some(record) if stored.as_ref().is_none_or(|row| row.seq <= record.seq()) => {
                Ok(loaded_from_record(&record))
            }
            _ => stored.map_or(Ok(Loaded::default()), |row| {
                loaded_from_row(&entity.key, row)
            }),
        }
    }

    async fn open(
        uf: &UserFunction,
        requests: ReceiverStream<ValueEntityStreamIn>,
    ) -> Result<tonic::Streaming<ValueEntityStreamOut>, tonic::Status> {
        Ok(uf.value_entity().handle(requests).await?.into_inner())
    }

    fn start(entity: &EntityRef, loaded: Loaded) -> (Self, Start<ValueEntityStreamIn>) {
        let init = ValueEntityStreamIn {
            message: Some(value_entity_stream_in::Message::Init(ValueEntityInit {
                service_name: entity.info.service_name.clone(),
                entity_id: entity.id.clone(),
                // Always present, empty for an entity without state.
                state: Some(ValueEntityInitState {
                    value: loaded.state,
                }),
            })),
        };
        let remembered = loaded
            .recent
            .into_iter()
            .map(|r| (r.idempotency_key, reply_of_recent(r.reply)))
            .collect();
        (
            Value {
                seq: loaded.seq,
                unconfirmed: std::collections::VecDeque::new(),
                pipeline: Pipeline::default(),
            },
            Start {
                messages: vec![init],
                remembered,
            },
        )
    }
}

impl Journaled for Value {
    fn pipeline(&mut self) -> &mut Pipeline {
        &mut self.pipeline
    }

    fn wrap(command: cs::Command) -> ValueEntityStreamIn {
        ValueEntityStreamIn {
            message: Some(value_entity_stream_in::Message::Command(command)),
        }
    }

    fn answer(
        &mut self,
        entity: &EntityRef,
        command: &InFlight,
        out: ValueEntityStreamOut,
        window: &Window,
        stamp: &Stamp<'_>,
    ) -> Step {
        let id = command.id;
        let reply = match out.message {
            Some(value_entity_stream_out::Message::Reply(reply)) => reply,
            Some(value_entity_stream_out::Message::Failure(failure)) => {
                let details = if failure.command_id == 0 {
                    format!("(not command specific) - {}", failure.description)
                } else if failure.command_id != id {
                    format!(
                        "(expected id {id} but got {}) - {}",
                        failure.command_id, failure.description
                    )
                } else {
                    failure.description
                };
                warn!(entity = %entity.key, details, "Unexpected Value entity failure");
                return crash("Unexpected Value entity failure", None);
            }
            None => {
                return crash(
                    "Unexpected Value entity failure",
                    Some(format!(
                        "entity {}: empty or unknown message from entity output stream",
                        entity.key
                    )),
                );
            }
        };
        if reply.command_id != id {
            return crash(
                "Unexpected Value entity reply",
                Some(format!(
                    "entity {}: (expected id {id} but got {}) - a value entity replied to the wrong command",
                    entity.key, reply.command_id
                )),
            );
        }
        let then = match reply.client_action.and_then(|a| a.action) {
            // A failure persists nothing and runs no side effects.
            Some(client_action::Action::Failure(f)) => {
                return Step::Done {
                    writes: Vec::new(),
                    then: Then::Reply(Reply::failure(f.description)),
                    side_effects: Vec::new(),
                };
            }
            Some(client_action::Action::Reply(r)) => Then::Reply(Reply::of(r)),
            Some(client_action::Action::Forward(f)) => Then::Forward(f),
            None => Then::Reply(Reply::Empty),
        };
        let write = match reply.state_action.and_then(|a| a.action) {
            None => None,
            Some(value_entity_action::Action::Update(update)) => match update.value {
                Some(value) => Some(Some(value)),
                None => {
                    return crash(
                        "Unexpected Value entity reply",
                        Some(format!(
                            "entity {}: the reply to command {id} updates the state without a value",
                            entity.key
                        )),
                    );
                }
            },
            Some(value_entity_action::Action::Delete(_)) => Some(None),
        };
        let writes = match write {
            None => Vec::new(),
            Some(state) => {
                let recent = recent_with(window, &mut self.unconfirmed, command, &then);
                self.seq += 1;
                let seq = self.seq;
                let written = match state {
                    Some(value) => Written::Value(ValueRecord {
                        service: stamp.service.to_string(),
                        persistence_id: entity.info.persistence_id.clone(),
                        entity_id: entity.id.clone(),
                        seq,
                        type_url: value.type_url,
                        payload: Bytes::from(value.value),
                        command_id: Some(stamp.command_id()),
                        idempotency_key: command.idempotency_key.clone(),
                        timestamp_ms: stamp.timestamp_ms,
                        writer: stamp.writer.clone(),
                        recent,
                        traceparent: command.traceparent.clone(),
                    }),
                    None => Written::Deleted(ValueDeletion {
                        service: stamp.service.to_string(),
                        persistence_id: entity.info.persistence_id.clone(),
                        entity_id: entity.id.clone(),
                        seq,
                        command_id: Some(stamp.command_id()),
                        idempotency_key: command.idempotency_key.clone(),
                        timestamp_ms: stamp.timestamp_ms,
                        writer: stamp.writer.clone(),
                        recent,
                        traceparent: command.traceparent.clone(),
                    }),
                };
                vec![written]
            }
        };
        Step::Done {
            writes,
            then,
            side_effects: reply.side_effects,
        }
    }

    fn unsolicited(entity: &EntityRef, out: &ValueEntityStreamOut) -> String {
        let what = match &out.message {
            Some(value_entity_stream_out::Message::Reply(r)) => {
                format!("a reply to command {}", r.command_id)
            }
            Some(value_entity_stream_out::Message::Failure(f)) => {
                format!("a failure ({})", f.description)
            }
            None => "an empty message".into(),
        };
        format!(
            "Unexpected Value entity reply: entity {} sent {what} while no command was outstanding",
            entity.key
        )
    }
}

fn crash(text: &str, report: Option<String>) -> Step {
    Step::crash(text, report)
}

/// The recent replies a new record carries, oldest first: the window's newest (committed),
/// then those of earlier commands still in the pipeline, then this command's if it has a key and
/// its answer is a reply (a forward's reply is not known here).
fn recent_with(
    window: &Window,
    unconfirmed: &mut std::collections::VecDeque<RecentReply>,
    command: &InFlight,
    then: &Then,
) -> Vec<RecentReply> {
    if let (Some(key), Then::Reply(reply)) = (&command.idempotency_key, then)
        && window.get(key).is_none()
    {
        unconfirmed.push_back(RecentReply {
            idempotency_key: key.clone(),
            reply: stored(reply),
        });
    }
    // Those the window holds by now committed; at most RECENT are carried.
    unconfirmed.retain(|r| window.get(&r.idempotency_key).is_none());
    while unconfirmed.len() > RECENT {
        unconfirmed.pop_front();
    }
    let keep = RECENT - unconfirmed.len();
    let mut recent: Vec<RecentReply> = window
        .recent(keep)
        .map(|(key, reply)| RecentReply {
            idempotency_key: key.to_string(),
            reply: stored(reply),
        })
        .collect();
    recent.extend(unconfirmed.iter().cloned());
    recent
}

/// A reply as a record carries it (none: no message).
fn stored(reply: &Reply) -> Option<avro::Reply> {
    match reply {
        Reply::Message {
            payload, type_url, ..
        } => Some(avro::Reply {
            type_url: type_url.clone(),
            payload: payload.clone(),
        }),
        _ => None,
    }
}

fn reply_of_recent(reply: Option<avro::Reply>) -> Reply {
    match reply {
        Some(r) => Reply::Message {
            payload: r.payload,
            type_url: r.type_url,
            metadata: None,
        },
        None => Reply::Empty,
    }
}

fn loaded_from_record(record: &Written) -> Loaded {
    match record {
        Written::Value(v) => Loaded {
            seq: v.seq,
            state: Some(prost_types::Any {
                type_url: v.type_url.clone(),
                value: v.payload.to_vec(),
            }),
            recent: v.recent.clone(),
        },
        Written::Deleted(d) => Loaded {
            seq: d.seq,
            state: None,
            recent: d.recent.clone(),
        },
        Written::Event(_) | Written::Output(_) | Written::Erased(_) => Loaded::default(),
    }
}

/// The state a Cassandra row holds; its `record` (the whole latest record) gives the recent
/// replies.
fn loaded_from_row(key: &str, row: ValueRow) -> Result<Loaded, Error> {
    let recent = match &row.record {
        None => Vec::new(),
        Some(bytes) => match avro::AnyRecord::decode(bytes) {
            Ok(avro::AnyRecord::Value(v)) => v.recent,
            Ok(avro::AnyRecord::ValueDeletion(d)) => d.recent,
            Ok(other) => {
                return Err(Error::Journal(format!(
                    "entity {key}: the backed-up value record is a {}",
                    other.kind()
                )));
            }
            Err(e) => {
                return Err(Error::Journal(format!(
                    "entity {key}: the backed-up value record does not decode: {e}"
                )));
            }
        },
    };
    Ok(Loaded {
        seq: row.seq,
        state: row.value.map(|value| prost_types::Any {
            type_url: row.type_url,
            value: value.to_vec(),
        }),
        recent,
    })
}

/// The Cassandra row of a committed value record (the backup's job).
pub(crate) fn row_of(
    service: &str,
    record: &Written,
    partition: u32,
    offset: i64,
) -> Option<Result<ValueRow, statehouse_schemas::Error>> {
    let (key, seq, type_url, value, encoded) = match record {
        Written::Value(v) => (
            record.entity_key(),
            v.seq,
            v.type_url.clone(),
            Some(v.payload.clone()),
            v.encode(),
        ),
        Written::Deleted(d) => (record.entity_key(), d.seq, String::new(), None, d.encode()),
        Written::Event(_) | Written::Output(_) | Written::Erased(_) => return None,
    };
    Some(encoded.map(|encoded| ValueRow {
        service: service.to_string(),
        entity_id: key,
        seq,
        type_url,
        value,
        partition: partition as i32,
        offset,
        record: Some(Bytes::from(encoded)),
    }))
}

#[cfg(test)]
mod tests;
