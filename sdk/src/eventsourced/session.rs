//! One `handle` stream as a state machine: a message in, at most one message
//! out. No I/O here; [`super::server`] feeds it from the gRPC stream.

use std::{
    collections::HashMap,
    panic::{self, AssertUnwindSafe},
    sync::Arc,
};

use prost_types::Any;
use statehouse_schemas::cloudstate::{
    self, ClientAction, Command, client_action,
    eventsourced::{
        EventSourcedEvent, EventSourcedInit, EventSourcedReply, EventSourcedStreamIn,
        EventSourcedStreamOut, event_sourced_stream_in, event_sourced_stream_out,
    },
};

use super::{CommandContext, Effects, Entity};
use crate::reply::Reply;

/// The registered entities by fully qualified gRPC service name.
pub(crate) type Registry = HashMap<String, Arc<dyn Factory>>;

/// Starts instances of one registered entity.
pub(crate) trait Factory: Send + Sync {
    fn start(self: Arc<Self>, init: EventSourcedInit) -> Result<Box<dyn Instance>, Fatal>;
}

/// A running entity instance with its state.
pub(crate) trait Instance: Send {
    fn replay(&mut self, event: EventSourcedEvent) -> Result<(), Fatal>;
    fn command(&mut self, command: Command) -> Result<EventSourcedReply, Fatal>;
}

/// A failure that ends the stream (`EventSourcedStreamOut.failure`). The
/// descriptions follow the reference SDKs ("Protocol error: ...",
/// "Unexpected failure: ...").
#[derive(Debug, thiserror::Error)]
pub(crate) enum Fatal {
    #[error("Protocol error: {description}")]
    Protocol {
        command_id: i64,
        description: String,
    },
    #[error("Unexpected failure: {description}")]
    Unexpected {
        command_id: i64,
        description: String,
    },
}

impl Fatal {
    fn protocol(command_id: i64, description: impl Into<String>) -> Self {
        Self::Protocol {
            command_id,
            description: description.into(),
        }
    }

    fn unexpected(command_id: i64, description: impl Into<String>) -> Self {
        Self::Unexpected {
            command_id,
            description: description.into(),
        }
    }

    fn command_id(&self) -> i64 {
        match self {
            Self::Protocol { command_id, .. } | Self::Unexpected { command_id, .. } => *command_id,
        }
    }
}

/// What to do after one incoming message.
#[derive(Debug, PartialEq)]
pub(crate) enum Step {
    /// Nothing to send (init, replayed event).
    Quiet,
    /// Send this and go on.
    Send(EventSourcedStreamOut),
    /// Send this failure and end the stream.
    Stop(EventSourcedStreamOut),
}

enum Phase {
    AwaitingInit,
    Running(Box<dyn Instance>),
    Stopped,
}

/// The state of one `handle` stream.
pub(crate) struct Session {
    registry: Arc<Registry>,
    phase: Phase,
}

impl Session {
    pub(crate) fn new(registry: Arc<Registry>) -> Self {
        Self {
            registry,
            phase: Phase::AwaitingInit,
        }
    }

    /// Handles one message from the proxy.
    pub(crate) fn handle(&mut self, message: EventSourcedStreamIn) -> Step {
        match self.step(message) {
            Ok(None) => Step::Quiet,
            Ok(Some(reply)) => Step::Send(EventSourcedStreamOut {
                message: Some(event_sourced_stream_out::Message::Reply(reply)),
            }),
            Err(fatal) => {
                tracing::error!(
                    command.id = fatal.command_id(),
                    error = %fatal,
                    "terminating the event-sourced entity stream"
                );
                self.phase = Phase::Stopped;
                Step::Stop(EventSourcedStreamOut {
                    message: Some(event_sourced_stream_out::Message::Failure(
                        cloudstate::Failure {
                            command_id: fatal.command_id(),
                            description: fatal.to_string(),
                            restart: false,
                        },
                    )),
                })
            }
        }
    }

    fn step(&mut self, message: EventSourcedStreamIn) -> Result<Option<EventSourcedReply>, Fatal> {
        use event_sourced_stream_in::Message;

        match (&mut self.phase, message.message) {
            (Phase::Stopped, _) => Err(Fatal::protocol(0, "Stream already terminated")),
            (Phase::AwaitingInit, Some(Message::Init(init))) => {
                let factory = self
                    .registry
                    .get(&init.service_name)
                    .cloned()
                    .ok_or_else(|| {
                        Fatal::protocol(0, format!("Service not found: {}", init.service_name))
                    })?;
                self.phase = Phase::Running(factory.start(init)?);
                Ok(None)
            }
            (Phase::AwaitingInit, Some(Message::Command(command))) => Err(Fatal::protocol(
                command.id,
                "Expected init message, got a command",
            )),
            (Phase::AwaitingInit, Some(Message::Event(_))) => {
                Err(Fatal::protocol(0, "Expected init message, got an event"))
            }
            (Phase::Running(_), Some(Message::Init(_))) => {
                Err(Fatal::protocol(0, "Entity already initialised"))
            }
            (Phase::Running(instance), Some(Message::Event(event))) => {
                instance.replay(event).map(|()| None)
            }
            (Phase::Running(instance), Some(Message::Command(command))) => {
                instance.command(command).map(Some)
            }
            (_, None) => Err(Fatal::protocol(0, "Received an empty or unknown message")),
        }
    }
}

/// Every [`Entity`] can start instances of itself.
impl<E: Entity> Factory for E {
    fn start(self: Arc<Self>, init: EventSourcedInit) -> Result<Box<dyn Instance>, Fatal> {
        let mut instance = Running {
            entity: self,
            entity_id: init.entity_id,
            state: E::State::default(),
            sequence: 0,
        };
        if let Some(snapshot) = init.snapshot
            && let Some(payload) = snapshot.snapshot
        {
            let entity = &instance.entity;
            instance.state = guard(|| entity.restore(&payload))
                .map_err(|panic| {
                    Fatal::unexpected(0, format!("snapshot handler panicked: {panic}"))
                })?
                .map_err(|failure| {
                    Fatal::unexpected(
                        0,
                        format!(
                            "cannot restore snapshot at sequence {} ({}): {failure}",
                            snapshot.snapshot_sequence, payload.type_url
                        ),
                    )
                })?;
            instance.sequence = snapshot.snapshot_sequence;
        }
        tracing::debug!(
            entity.id = %instance.entity_id,
            sequence = instance.sequence,
            "event-sourced entity started"
        );
        Ok(Box::new(instance))
    }
}

struct Running<E: Entity> {
    entity: Arc<E>,
    entity_id: String,
    state: E::State,
    /// The sequence number of the last event applied.
    sequence: i64,
}

impl<E: Entity> Running<E> {
    /// Applies one event; on error the state may be half-updated, so the
    /// caller ends the stream.
    fn apply(&mut self, command_id: i64, sequence: i64, event: &Any) -> Result<(), Fatal> {
        let (entity, state) = (&self.entity, &mut self.state);
        guard(|| entity.apply(state, event))
            .map_err(|panic| {
                Fatal::unexpected(
                    command_id,
                    format!("event handler panicked on event {sequence}: {panic}"),
                )
            })?
            .map_err(|failure| {
                Fatal::unexpected(
                    command_id,
                    format!(
                        "cannot apply event {sequence} ({}): {failure}",
                        event.type_url
                    ),
                )
            })
    }

    fn failure_reply(command_id: i64, description: String) -> EventSourcedReply {
        EventSourcedReply {
            command_id,
            client_action: Some(ClientAction {
                action: Some(client_action::Action::Failure(cloudstate::Failure {
                    command_id,
                    description,
                    restart: false,
                })),
            }),
            ..EventSourcedReply::default()
        }
    }
}

impl<E: Entity> Instance for Running<E> {
    fn replay(&mut self, event: EventSourcedEvent) -> Result<(), Fatal> {
        let payload = event.payload.ok_or_else(|| {
            Fatal::protocol(0, format!("Event {} has no payload", event.sequence))
        })?;
        self.apply(0, event.sequence, &payload)?;
        self.sequence = event.sequence;
        Ok(())
    }

    fn command(&mut self, command: Command) -> Result<EventSourcedReply, Fatal> {
        let id = command.id;
        if command.entity_id != self.entity_id {
            return Err(Fatal::protocol(
                id,
                format!(
                    "Command for entity [{}] received by entity [{}]",
                    command.entity_id, self.entity_id
                ),
            ));
        }
        let payload = command
            .payload
            .as_ref()
            .ok_or_else(|| Fatal::protocol(id, "No command payload"))?;

        let mut ctx = CommandContext::new(
            &self.entity_id,
            id,
            &command.name,
            self.sequence,
            command.metadata.as_ref(),
        );
        let (entity, state) = (&self.entity, &self.state);
        let outcome =
            guard(|| entity.command(&mut ctx, state, &command.name, payload)).map_err(|panic| {
                Fatal::unexpected(
                    id,
                    format!("command handler for {} panicked: {panic}", command.name),
                )
            })?;
        let Effects {
            events,
            side_effects,
            forward,
            failure,
        } = ctx.into_effects();

        let reply = match failure.map_or(outcome, Err) {
            Ok(reply) => reply,
            Err(failure) => {
                tracing::debug!(
                    entity.id = %self.entity_id,
                    command.id = id,
                    command.name = %command.name,
                    failure = %failure,
                    "command failed"
                );
                return Ok(Self::failure_reply(id, failure.into_description()));
            }
        };

        let before = self.sequence;
        for (sequence, event) in (before + 1..).zip(&events) {
            self.apply(id, sequence, event)?;
            self.sequence = sequence;
        }
        let snapshot = if crosses_multiple(before, self.sequence, self.entity.snapshot_every()) {
            let (entity, state) = (&self.entity, &self.state);
            guard(|| entity.snapshot(state)).map_err(|panic| {
                Fatal::unexpected(id, format!("snapshot handler panicked: {panic}"))
            })?
        } else {
            None
        };

        Ok(EventSourcedReply {
            command_id: id,
            client_action: Some(forward.map_or(reply, Reply::forward).into_client_action()),
            side_effects: side_effects.into_iter().map(|e| e.into_proto()).collect(),
            events,
            snapshot,
        })
    }
}

/// Whether going from sequence `before` to `after` passed a multiple of `every`.
fn crosses_multiple(before: i64, after: i64, every: u64) -> bool {
    match i64::try_from(every) {
        Ok(every) if every > 0 => after > before && after / every > before / every,
        _ => false,
    }
}

/// Runs user code, turning a panic into its message.
fn guard<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    panic::catch_unwind(AssertUnwindSafe(f)).map_err(|payload| {
        payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "non-string panic payload".to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_when_a_multiple_is_crossed() {
        assert!(crosses_multiple(4, 5, 5));
        assert!(crosses_multiple(8, 10, 5));
        assert!(crosses_multiple(3, 12, 5));
        assert!(!crosses_multiple(5, 8, 5));
        assert!(!crosses_multiple(5, 5, 5), "no events, no snapshot");
        assert!(!crosses_multiple(0, 100, 0), "0 = never");
    }
}
