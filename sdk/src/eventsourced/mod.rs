//! Event-sourced entities (`cloudstate.eventsourced.EventSourced`).
//!
//! An [`Entity`] decides: a command handler looks at the current state and
//! emits events; [`Entity::apply`] folds events into the state. The SDK runs
//! one stream per entity instance (`schemas/proto/cloudstate/event_sourced.proto`;
//! `docs/protocol.md`, "Event-sourced entities"):
//!
//! * `init` creates the state with `State::default()`, or with
//!   [`Entity::restore`] from the snapshot it carries;
//! * replayed `event`s are applied in order;
//! * each `command` runs the handler against the current state. If it
//!   succeeds, the events it emitted are applied and sent with the reply,
//!   together with a snapshot when the event count crosses a multiple of
//!   [`Entity::snapshot_every`]. If it fails, the reply is a failure with no
//!   events and no side effects, and the state is untouched.
//!
//! A protocol violation (a command before `init`, a second `init`, an unknown
//! service), an event that does not apply, or a panicking handler ends the
//! stream with a stream-level failure; the proxy then fails the pending call
//! and restarts the entity from its journal.

use std::time::Duration;

use prost::Name;
use prost_types::Any;
use statehouse_schemas::cloudstate::Metadata;

use crate::{
    any,
    reply::{Failure, Forward, Reply, SideEffect},
};

pub(crate) mod server;
pub(crate) mod session;

/// The protocol service an event-sourced entity is served through: the
/// `entity_type` announced at discovery.
pub const ENTITY_TYPE: &str = statehouse_schemas::protocol::EVENT_SOURCED;

/// An event-sourced entity: its command handlers and its event handler.
///
/// One value serves every instance (every entity id); each instance's state
/// lives in its own [`State`](Entity::State), owned by the SDK. Handlers are
/// synchronous and should not block: they decide, the proxy does the I/O
/// (use [`SideEffect`]s and [`Forward`]s to call other services).
pub trait Entity: Send + Sync + 'static {
    /// The state of one entity instance; `Default` is the state before any event.
    type State: Default + Send + 'static;

    /// Groups this entity's journal and snapshots, e.g. `shopping-cart`.
    fn persistence_id(&self) -> &str;

    /// Snapshot after every this many events; 0 never snapshots (the default).
    fn snapshot_every(&self) -> u64 {
        0
    }

    /// Passivate an instance after this idle time; `None` leaves it to the
    /// proxy's default (30 s in the reference proxy).
    fn passivation_timeout(&self) -> Option<Duration> {
        None
    }

    /// Handles the command `name` (the short gRPC method name, e.g.
    /// `AddItem`) with its request `payload`, given the current `state`.
    ///
    /// Emit events with [`CommandContext::emit`]; they are applied to the
    /// state only after this returns `Ok`.
    fn command(
        &self,
        ctx: &mut CommandContext<'_>,
        state: &Self::State,
        name: &str,
        payload: &Any,
    ) -> Result<Reply, Failure>;

    /// Applies one event to the state: an event this entity emitted, or one
    /// replayed from the journal. It must be deterministic.
    fn apply(&self, state: &mut Self::State, event: &Any) -> Result<(), Failure>;

    /// Encodes the state as a snapshot; `None` skips this snapshot.
    fn snapshot(&self, state: &Self::State) -> Option<Any> {
        let _ = state;
        None
    }

    /// Rebuilds the state from a snapshot made by [`Entity::snapshot`].
    fn restore(&self, snapshot: &Any) -> Result<Self::State, Failure> {
        Err(Failure::new(format!(
            "entity '{}' cannot restore snapshots (got {})",
            self.persistence_id(),
            snapshot.type_url
        )))
    }
}

/// What a command handler can do besides answering: emit events, request
/// side effects, forward, or fail.
#[derive(Debug)]
pub struct CommandContext<'a> {
    entity_id: &'a str,
    command_id: i64,
    command_name: &'a str,
    sequence: i64,
    metadata: Option<&'a Metadata>,
    events: Vec<Any>,
    side_effects: Vec<SideEffect>,
    forward: Option<Forward>,
    failure: Option<Failure>,
}

/// What a handler left in its context.
pub(crate) struct Effects {
    pub(crate) events: Vec<Any>,
    pub(crate) side_effects: Vec<SideEffect>,
    pub(crate) forward: Option<Forward>,
    pub(crate) failure: Option<Failure>,
}

impl<'a> CommandContext<'a> {
    pub(crate) fn new(
        entity_id: &'a str,
        command_id: i64,
        command_name: &'a str,
        sequence: i64,
        metadata: Option<&'a Metadata>,
    ) -> Self {
        Self {
            entity_id,
            command_id,
            command_name,
            sequence,
            metadata,
            events: Vec::new(),
            side_effects: Vec::new(),
            forward: None,
            failure: None,
        }
    }

    /// The id of the entity instance, e.g. the cart's user id.
    pub fn entity_id(&self) -> &str {
        self.entity_id
    }

    /// The command's id on this stream.
    pub fn command_id(&self) -> i64 {
        self.command_id
    }

    /// The command's name (the short gRPC method name).
    pub fn command_name(&self) -> &str {
        self.command_name
    }

    /// The sequence number of the last event applied before this command.
    pub fn sequence(&self) -> i64 {
        self.sequence
    }

    /// The command's metadata, if the proxy sent any.
    pub fn metadata(&self) -> Option<&Metadata> {
        self.metadata
    }

    /// Emits an event; it is persisted and applied if the command succeeds.
    /// Ignored once the command has [failed](Self::fail).
    pub fn emit<M: Name>(&mut self, event: &M) {
        self.emit_any(any::pack(event));
    }

    /// Emits an already packed event.
    pub fn emit_any(&mut self, event: Any) {
        if self.failure.is_none() {
            self.events.push(event);
        }
    }

    /// Asks the proxy to make a call once the events are persisted. Dropped if
    /// the command fails.
    pub fn side_effect(&mut self, effect: SideEffect) {
        self.side_effects.push(effect);
    }

    /// Forwards the command instead of replying; this wins over the reply the
    /// handler returns (same as returning [`Reply::forward`]).
    pub fn forward(&mut self, forward: Forward) {
        self.forward = Some(forward);
    }

    /// Fails the command with `description`, whatever the handler returns
    /// (same as returning `Err(Failure)`). The first failure wins.
    pub fn fail(&mut self, description: impl Into<String>) {
        if self.failure.is_none() {
            self.failure = Some(Failure::new(description));
        }
    }

    pub(crate) fn into_effects(self) -> Effects {
        Effects {
            events: self.events,
            side_effects: self.side_effects,
            forward: self.forward,
            failure: self.failure,
        }
    }
}
