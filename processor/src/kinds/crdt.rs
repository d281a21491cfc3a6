//! CRDT entities (`cloudstate.crdt.Crdt`; `docs/protocol.md`, "CRDT entities"): the processor
//! owns the real CRDT ([`statehouse_crdt`]), the user function holds a plain value and speaks
//! the protocol's deltas.
//!
//! * **Start:** `init` carries the replica's state as one delta ([`diff`] from nothing), absent
//!   when the entity has none yet.
//! * **Commands** go to the user function as they arrive (ids from 1 per stream, no metadata);
//!   replies match by command id. A reply's `state_action` is turned into a state fragment
//!   ([`apply`]), joined here at once, and written ([`Publish`]: the processor's replicas and
//!   the broadcast topic) at the requested consistency; the caller gets its answer once the
//!   write is done. An invalid update (a GCounter decrement, a Flag switched off, another
//!   type, an empty delta) crashes the stream with the reference proxy's text.
//! * **Remote changes** ([`Changed`]) wait while any of the user function's commands,
//!   cancellations or writes is in flight; then they join the state and go as one delta, the
//!   difference between what it holds ([`View`]) and the state. The user function's updates
//!   apply to the state it was told about, so a remove removes only what it had seen (a
//!   concurrent add elsewhere survives). Its own changes are never echoed (what it holds
//!   already includes them).
//! * **Streamed calls:** a reply with `streamed` keeps the call open, each streamed message is
//!   an element, `end_stream` (or a reply without `streamed`) ends it. When the client goes
//!   away, `stream_cancelled` goes to the user function exactly once, and only for a call it
//!   holds open (the Go SDK crashes on any other); its response's state action and side
//!   effects apply.
//! * **Delete:** a delete action answers the caller once written, then half-closes the stream;
//!   the entity refuses every later command with `Entity deleted` (here, on every replica, and
//!   after restarts). A delete from another replica sends `delete` and half-closes too.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use statehouse_crdt::protocol::{self, View, Voters, diff};
use statehouse_crdt::{ReplicaId, State};
use statehouse_schemas::avro;
use statehouse_schemas::cloudstate::crdt::{
    CrdtDelete, CrdtInit, CrdtStateAction, CrdtStreamIn, CrdtStreamOut, CrdtWriteConsistency,
    crdt_state_action, crdt_stream_in, crdt_stream_out,
};
use statehouse_schemas::cloudstate::{self as cs, ClientAction, StreamCancelled, client_action};
use tokio_stream::wrappers::ReceiverStream;
use tracing::warn;

use crate::Error;
use crate::command::{Command, Position, Reply, Then};
use crate::entity::{Action, EntityRef, Kind, Start, Turn, protocol_command};
use crate::replicas::Replicas;
use crate::user_function::UserFunction;

/// What a caller in flight gets when the stream fails under it (the reference proxy's text).
pub(crate) const TERMINATING: &str = "Entity terminating";
/// What every command of a deleted entity gets.
pub(crate) const DELETED: &str = "Entity deleted";
/// What a command gets when its write did not reach the requested consistency.
pub(crate) const WRITE_FAILED: &str = "Failed to update CRDT at requested write consistency";

/// The machine of one CRDT stream.
#[derive(Debug)]
pub(crate) struct Crdt {
    me: ReplicaId,
    /// The other replicas that are alive (a Vote counts them).
    live: Arc<BTreeSet<ReplicaId>>,
    /// The state the user function's value stands for: what it was told (init, deltas) plus
    /// its own changes. Its updates apply to this state, so a remove removes what the user
    /// function had seen, not a concurrent add it has not been told about.
    state: Option<State>,
    /// Remote fragments (joined) and prunes not told to the user function yet: they join
    /// `state` when it is next told.
    pending: Option<State>,
    pending_pruned: Vec<ReplicaId>,
    /// What the user function holds (`None`: what its SDK starts with, nothing told yet).
    held: Option<View>,
    /// Commands sent and not answered yet, with whether they are streamed.
    commands: HashMap<i64, bool>,
    /// Streamed calls the user function holds open (its reply said `streamed`).
    open: HashSet<i64>,
    /// Streamed calls whose client went away before the user function's reply.
    gone: HashSet<i64>,
    /// `stream_cancelled` sent, its response not yet in.
    cancelling: HashSet<i64>,
    /// Writes in flight, by token: what to do when each is done.
    writes: HashMap<u64, After>,
    next_token: u64,
    deleted: bool,
}

/// What a write is waiting to do.
#[derive(Debug)]
enum After {
    /// Answer command `id`; then end its call (`end`), and close the stream (`close`, a
    /// delete).
    Answer {
        id: i64,
        then: Option<Then>,
        side_effects: Vec<cs::SideEffect>,
        end: bool,
        close: bool,
    },
    /// A cancelled stream's state action: nothing to answer.
    Cancelled,
}

/// What a CRDT entity writes: a fragment or a delete, at a consistency.
#[derive(Debug)]
pub(crate) struct Publish {
    pub(crate) entity: EntityRef,
    pub(crate) change: Change,
    pub(crate) consistency: avro::WriteConsistency,
    pub(crate) traceparent: Option<String>,
}

#[derive(Debug, PartialEq)]
pub(crate) enum Change {
    Fragment(State),
    Delete,
}

/// The replicated state changed under an active entity (inputs coalesce: see
/// [`Kind::merge`]).
#[derive(Debug, Default)]
pub(crate) struct Changed {
    /// Fragments of other replicas, joined (already stripped of pruned replicas).
    pub(crate) fragment: Option<State>,
    /// Replicas pruned meanwhile.
    pub(crate) pruned: Vec<ReplicaId>,
    /// Another replica deleted the entity.
    pub(crate) deleted: bool,
    /// The live replicas changed.
    pub(crate) live: Option<Arc<BTreeSet<ReplicaId>>>,
}

/// An entity's replica as activation found it.
#[derive(Debug)]
pub(crate) struct Loaded {
    pub(crate) me: ReplicaId,
    pub(crate) live: Arc<BTreeSet<ReplicaId>>,
    pub(crate) state: Option<State>,
}

impl Kind for Crdt {
    type In = CrdtStreamIn;
    type Out = CrdtStreamOut;
    type Loaded = Loaded;
    type Ctx = Replicas;
    type Write = Publish;
    type Input = Changed;

    const TERMINATED: &'static str = TERMINATING;

    fn serving(ctx: &Replicas) -> bool {
        ctx.is_serving()
    }

    fn writer(ctx: &Replicas) -> &avro::Writer {
        ctx.writer()
    }

    async fn load(ctx: &Replicas, entity: &EntityRef) -> Result<Loaded, Error> {
        ctx.load(entity)
    }

    async fn open(
        uf: &UserFunction,
        requests: ReceiverStream<CrdtStreamIn>,
    ) -> Result<tonic::Streaming<CrdtStreamOut>, tonic::Status> {
        Ok(uf.crdt().handle(requests).await?.into_inner())
    }

    async fn write(ctx: Arc<Replicas>, write: Publish) -> Result<Option<Position>, Error> {
        // CRDT changes are not in the journal: no position.
        ctx.publish(write).await.map(|()| None)
    }

    fn start(entity: &EntityRef, loaded: Loaded) -> (Self, Start<CrdtStreamIn>) {
        let mut machine = Crdt {
            me: loaded.me,
            live: loaded.live,
            state: loaded.state,
            pending: None,
            pending_pruned: Vec::new(),
            held: None,
            commands: HashMap::new(),
            open: HashSet::new(),
            gone: HashSet::new(),
            cancelling: HashSet::new(),
            writes: HashMap::new(),
            next_token: 0,
            deleted: false,
        };
        let view = machine
            .state
            .as_ref()
            .map(|state| View::of(state, &machine.voters()));
        let delta = view.as_ref().and_then(|view| diff(None, view));
        machine.held = view;
        let init = CrdtStreamIn {
            message: Some(crdt_stream_in::Message::Init(CrdtInit {
                service_name: entity.info.service_name.clone(),
                entity_id: entity.id.clone(),
                delta,
            })),
        };
        (
            machine,
            Start {
                messages: vec![init],
                remembered: Vec::new(),
            },
        )
    }

    fn accepts(&self) -> bool {
        true
    }

    fn command(
        &mut self,
        entity: &EntityRef,
        id: i64,
        command: &Command,
        streamed: bool,
    ) -> CrdtStreamIn {
        self.commands.insert(id, streamed);
        CrdtStreamIn {
            message: Some(crdt_stream_in::Message::Command(protocol_command(
                entity, id, command, streamed,
            ))),
        }
    }

    fn message(
        &mut self,
        entity: &EntityRef,
        out: CrdtStreamOut,
        turn: &Turn<'_>,
    ) -> Vec<Action<Self>> {
        let mut actions = match out.message {
            Some(crdt_stream_out::Message::Reply(reply)) => {
                let Some(streamed) = self.commands.remove(&reply.command_id) else {
                    return crash(format!(
                        "Received reply for entity id {} for unknown command {}",
                        entity.id, reply.command_id
                    ));
                };
                if reply.streamed && !streamed {
                    return crash(format!(
                        "Streamed reply to non streamed command {}",
                        reply.command_id
                    ));
                }
                let id = reply.command_id;
                let then = then_of(reply.client_action);
                let failed = matches!(&then, Some(Then::Reply(r)) if r.is_failure());
                // A streamed call stays open while the user function keeps it open.
                let end = streamed && (!reply.streamed || failed);
                let mut actions = Vec::new();
                if streamed && !end {
                    self.open.insert(id);
                    if self.gone.remove(&id) {
                        actions.extend(self.cancel(entity, id));
                    }
                } else {
                    self.gone.remove(&id);
                }
                let after = After::Answer {
                    id,
                    then,
                    side_effects: reply.side_effects,
                    end,
                    close: false,
                };
                match self.state_action(entity, reply.state_action, after, turn) {
                    Ok(more) => {
                        actions.extend(more);
                        actions
                    }
                    Err(crashed) => crashed,
                }
            }
            Some(crdt_stream_out::Message::StreamedMessage(message)) => {
                let id = message.command_id;
                if !self.open.contains(&id) {
                    return vec![Action::Report(format!(
                        "Received streamed message for unknown command id: {id}"
                    ))];
                }
                let then = then_of(message.client_action);
                let failed = matches!(&then, Some(Then::Reply(r)) if r.is_failure());
                let mut actions = vec![Action::Answer {
                    id,
                    then,
                    side_effects: message.side_effects,
                    remember: false,
                    position: None,
                }];
                if message.end_stream {
                    self.open.remove(&id);
                    actions.push(Action::End { id });
                } else if failed {
                    // The failure ended the client's call; the user function still holds it.
                    actions.push(Action::End { id });
                    actions.extend(self.cancel(entity, id));
                }
                actions
            }
            Some(crdt_stream_out::Message::StreamCancelledResponse(response)) => {
                if !self.cancelling.remove(&response.command_id) {
                    return vec![Action::Report(format!(
                        "Received stream cancelled response for stream that's not closing: {}",
                        response.command_id
                    ))];
                }
                let mut actions = Vec::new();
                if !response.side_effects.is_empty() {
                    actions.push(Action::Effects(response.side_effects));
                }
                match self.state_action(entity, response.state_action, After::Cancelled, turn) {
                    Ok(more) => {
                        actions.extend(more);
                        actions
                    }
                    Err(crashed) => crashed,
                }
            }
            Some(crdt_stream_out::Message::Failure(failure)) => {
                if failure.command_id == 0 {
                    // Not about a command: the SDK ends the stream next (and the crash follows).
                    warn!(entity = %entity.key, description = %failure.description, "the user function failed the entity stream");
                    return Vec::new();
                }
                let id = failure.command_id;
                let streamed = self.commands.remove(&id);
                self.gone.remove(&id);
                match streamed {
                    Some(_) => vec![Action::Fail {
                        id,
                        error: Error::EntityFailure(failure.description),
                    }],
                    None => vec![Action::Report(format!(
                        "Received failure for entity id {} for unknown command {id}",
                        entity.id
                    ))],
                }
            }
            None => return crash("Empty message from the entity output stream".to_string()),
        };
        actions.extend(self.catch_up());
        actions
    }

    fn written(
        &mut self,
        _entity: &EntityRef,
        token: u64,
        result: Result<Option<Position>, Error>,
    ) -> Vec<Action<Self>> {
        let Some(after) = self.writes.remove(&token) else {
            return Vec::new();
        };
        if let Err(e) = result {
            warn!(error = %e, "a CRDT write did not reach its consistency");
            let mut actions = Vec::new();
            if let After::Answer { id, .. } = after {
                actions.push(Action::Fail {
                    id,
                    error: Error::EntityFailure(WRITE_FAILED.to_string()),
                });
            }
            actions.push(Action::Crash {
                text: TERMINATING.to_string(),
                report: Some(WRITE_FAILED.to_string()),
            });
            return actions;
        }
        let mut actions = Vec::new();
        if let After::Answer {
            id,
            then,
            side_effects,
            end,
            close,
        } = after
        {
            actions.push(Action::Answer {
                id,
                then,
                side_effects,
                remember: false,
                position: None,
            });
            if end {
                actions.push(Action::End { id });
            }
            if close {
                actions.push(Action::Close {
                    refuse: DELETED.to_string(),
                });
                return actions;
            }
        }
        actions.extend(self.catch_up());
        actions
    }

    fn merge(into: &mut Changed, newer: Changed) {
        match (&mut into.fragment, newer.fragment) {
            (Some(mine), Some(theirs)) => {
                // Fragments of another type than the entity's are left out (the first type
                // written wins on every replica).
                let _ = mine.join(&theirs);
            }
            (mine @ None, theirs) => *mine = theirs,
            (Some(_), None) => {}
        }
        into.pruned.extend(newer.pruned);
        into.deleted |= newer.deleted;
        if newer.live.is_some() {
            into.live = newer.live;
        }
    }

    fn input(&mut self, entity: &EntityRef, input: Changed, _turn: &Turn<'_>) -> Vec<Action<Self>> {
        if self.deleted {
            return Vec::new();
        }
        if input.deleted {
            self.deleted = true;
            return vec![
                Action::Send(CrdtStreamIn {
                    message: Some(crdt_stream_in::Message::Delete(CrdtDelete {})),
                }),
                Action::Close {
                    refuse: DELETED.to_string(),
                },
            ];
        }
        if let Some(fragment) = input.fragment {
            match &mut self.pending {
                Some(pending) => {
                    if let Err(e) = pending.join(&fragment) {
                        warn!(entity = %entity.key, error = ?e, "a remote fragment of another CRDT type was left out");
                    }
                }
                None => self.pending = Some(fragment),
            }
        }
        self.pending_pruned.extend(input.pruned);
        if let Some(live) = input.live {
            self.live = live;
        }
        self.catch_up()
    }

    fn cancelled(&mut self, entity: &EntityRef, id: i64) -> Vec<Action<Self>> {
        if self.open.contains(&id) {
            return self.cancel(entity, id);
        }
        if self.commands.get(&id) == Some(&true) {
            // Told once the user function's reply says whether it holds the call open.
            self.gone.insert(id);
        }
        Vec::new()
    }
}

impl Crdt {
    fn voters(&self) -> Voters<'_> {
        Voters {
            me: &self.me,
            live: &self.live,
        }
    }

    /// `stream_cancelled` for an open call (exactly once).
    fn cancel(&mut self, entity: &EntityRef, id: i64) -> Vec<Action<Self>> {
        if !self.open.remove(&id) {
            return Vec::new();
        }
        self.cancelling.insert(id);
        vec![Action::Send(CrdtStreamIn {
            message: Some(crdt_stream_in::Message::StreamCancelled(StreamCancelled {
                entity_id: entity.id.clone(),
                id,
            })),
        })]
    }

    /// Perform a state action (none: `after` at once). `Err`: the update is invalid and the
    /// stream crashes.
    fn state_action(
        &mut self,
        entity: &EntityRef,
        action: Option<CrdtStateAction>,
        after: After,
        turn: &Turn<'_>,
    ) -> Result<Vec<Action<Self>>, Vec<Action<Self>>> {
        let (action, consistency) = match action {
            Some(CrdtStateAction {
                action: Some(action),
                write_consistency,
            }) => (
                action,
                avro::WriteConsistency::from(
                    CrdtWriteConsistency::try_from(write_consistency)
                        .unwrap_or(CrdtWriteConsistency::Local),
                ),
            ),
            _ => return Ok(self.now(after)),
        };
        let change = match action {
            crdt_state_action::Action::Update(delta) => {
                let fragment = match protocol::apply(
                    self.state.as_ref(),
                    &self.me,
                    &delta,
                    turn.stamp.timestamp_ms,
                ) {
                    Ok(fragment) => fragment,
                    Err(invalid) => return Err(crash(invalid.to_string())),
                };
                match &mut self.state {
                    Some(state) => {
                        state.join(&fragment).map_err(|e| crash(format!("{e:?}")))?;
                    }
                    None => self.state = Some(fragment.clone()),
                }
                let kind = fragment.kind();
                let held = self.held.take().unwrap_or_else(|| View::bottom(kind));
                self.held = Some(held.applied(&delta).unwrap_or(held));
                Change::Fragment(fragment)
            }
            crdt_state_action::Action::Delete(_) => {
                self.deleted = true;
                Change::Delete
            }
        };
        let after = match after {
            After::Answer {
                id,
                then,
                side_effects,
                end,
                ..
            } => After::Answer {
                id,
                then,
                side_effects,
                end,
                close: change == Change::Delete,
            },
            // A delete from a cancellation: nobody to answer, the stream closes.
            After::Cancelled if change == Change::Delete => {
                self.next_token += 1;
                return Ok(vec![
                    Action::Write {
                        token: self.next_token,
                        write: Publish {
                            entity: entity.clone(),
                            change,
                            consistency,
                            traceparent: None,
                        },
                    },
                    Action::Close {
                        refuse: DELETED.to_string(),
                    },
                ]);
            }
            After::Cancelled => After::Cancelled,
        };
        self.next_token += 1;
        let token = self.next_token;
        self.writes.insert(token, after);
        Ok(vec![Action::Write {
            token,
            write: Publish {
                entity: entity.clone(),
                change,
                consistency,
                traceparent: None,
            },
        }])
    }

    /// What `after` does without a write.
    fn now(&mut self, after: After) -> Vec<Action<Self>> {
        match after {
            After::Answer {
                id,
                then,
                side_effects,
                end,
                ..
            } => {
                let mut actions = vec![Action::Answer {
                    id,
                    then,
                    side_effects,
                    remember: false,
                    position: None,
                }];
                if end {
                    actions.push(Action::End { id });
                }
                actions
            }
            After::Cancelled => Vec::new(),
        }
    }

    /// Whether the user function has nothing in flight that a delta could cross.
    fn idle(&self) -> bool {
        self.commands.is_empty() && self.cancelling.is_empty() && self.writes.is_empty()
    }

    /// When idle: tell the user function what changed since what it holds, if anything.
    fn catch_up(&mut self) -> Vec<Action<Self>> {
        if self.deleted || !self.idle() {
            return Vec::new();
        }
        if let Some(pending) = self.pending.take() {
            match &mut self.state {
                Some(state) => {
                    if let Err(e) = state.join(&pending) {
                        warn!(error = ?e, "a remote fragment of another CRDT type was left out");
                    }
                }
                None => self.state = Some(pending),
            }
        }
        if let Some(state) = &mut self.state {
            for replica in self.pending_pruned.drain(..) {
                state.prune(&replica);
            }
        }
        let Some(state) = &self.state else {
            return Vec::new();
        };
        let view = View::of(state, &self.voters());
        if self.held.as_ref() == Some(&view) {
            return Vec::new();
        }
        let delta = diff(self.held.as_ref(), &view);
        self.held = Some(view);
        match delta {
            Some(delta) => vec![Action::Send(CrdtStreamIn {
                message: Some(crdt_stream_in::Message::Delta(delta)),
            })],
            None => Vec::new(),
        }
    }
}

/// The stream crashes: every caller in flight gets [`TERMINATING`], the user function `report`.
fn crash(report: String) -> Vec<Action<Crdt>> {
    vec![Action::Crash {
        text: TERMINATING.to_string(),
        report: Some(report),
    }]
}

/// The caller's answer for a client action (`None`: no element / an empty reply).
fn then_of(action: Option<ClientAction>) -> Option<Then> {
    match action.and_then(|a| a.action)? {
        client_action::Action::Reply(reply) => Some(Then::Reply(Reply::of(reply))),
        client_action::Action::Failure(failure) => {
            Some(Then::Reply(Reply::failure(failure.description)))
        }
        client_action::Action::Forward(forward) => Some(Then::Forward(forward)),
    }
}

#[cfg(test)]
mod tests;
