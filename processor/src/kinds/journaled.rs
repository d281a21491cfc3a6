//! What event-sourced and value entities share: one command at a time, its records committed in
//! the partition's next transaction ([`Journal`]) before the caller gets its answer.
//!
//! Each of the two kinds turns the user function's answer to the command in flight into a
//! [`Step`]; [`Serial`] turns the step into the mailbox's actions and keeps the command in
//! flight until its writes committed:
//!
//! ```text
//! command ──▶ in flight ──answer──▶ Step::Done (no writes) ──▶ Answer, End
//!                          │        Step::Done (writes) ─────▶ Write ──committed──▶ Answer (remembered), End
//!                          │                                         └─failed────▶ Fail, Drop
//!                          │        Step::Restart ───────────▶ Answer, Drop
//!                          └──────▶ Step::Crash ─────────────▶ Crash
//! ```
//!
//! A failed write drops the stream: the user function already applied the change, so its state
//! is ahead of what is stored; the next command starts from the stored state.

use std::sync::Arc;

use bytes::Bytes;
use statehouse_core::ids::journal_key;
use statehouse_schemas::cloudstate as cs;
use tracing::warn;

use crate::Error;
use crate::command::{Command, Position, Reply, Then};
use crate::entity::{Action, EntityRef, Kind, Stamp, Turn, Window};
use crate::eventing::output;
use crate::journal::Journal;
use crate::records::Written;

/// What the user function's answer to the command in flight leads to.
#[derive(Debug, PartialEq)]
pub(crate) enum Step {
    /// Commit `writes` (if any) in the partition's next transaction, then run the side effects
    /// and answer (`then`).
    Done {
        writes: Vec<Written>,
        then: Then,
        side_effects: Vec<cs::SideEffect>,
    },
    /// Answer `reply` and drop the stream: the next command starts a new one from the stored
    /// state (an event-sourced failure with `restart`).
    Restart(Reply),
    /// The stream failed or the user function broke the protocol: drop the stream, fail the
    /// command with `text` (UNKNOWN), and tell the user function `report` if set.
    Crash {
        text: String,
        report: Option<String>,
    },
}

impl Step {
    pub(crate) fn crash(text: &str, report: Option<String>) -> Self {
        Step::Crash {
            text: text.to_string(),
            report,
        }
    }
}

/// The command in flight, as far as its records need it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct InFlight {
    /// Its id in the stream.
    pub(crate) id: i64,
    pub(crate) idempotency_key: Option<String>,
    pub(crate) traceparent: Option<String>,
    /// The method's eventing output topic, if it has one.
    pub(crate) out: Option<Arc<str>>,
}

impl InFlight {
    pub(crate) fn of(id: i64, command: &Command) -> Self {
        Self {
            id,
            idempotency_key: command.idempotency_key.clone(),
            traceparent: command.traceparent.clone(),
            out: output::topic_of(command),
        }
    }
}

/// A reply of a method with an `out` topic adds its output record to the command's writes: it
/// commits in the same transaction as the entity's records, or not at all. Its `ce-id` is the
/// command's idempotency key, else the key of the last record written, else a new command id.
fn add_output(entity: &EntityRef, in_flight: &InFlight, step: &mut Step, stamp: &Stamp<'_>) {
    let (Some(topic), Step::Done { writes, then, .. }) = (&in_flight.out, step) else {
        return;
    };
    let Then::Reply(reply) = then else {
        return;
    };
    let id = match (&in_flight.idempotency_key, writes.last()) {
        (Some(key), _) => key.clone(),
        (None, Some(last)) => journal_key(&entity.key, last.seq() as u64),
        (None, None) => stamp.command_id(),
    };
    let origin = output::Origin {
        topic: Arc::clone(topic),
        source: entity.info.service_name.clone(),
        id,
        subject: Some(entity.id.clone()),
        key: Some(Bytes::from(entity.id.clone())),
    };
    if let Some(record) = output::record(origin, reply) {
        writes.push(Written::Output(record));
    }
}

/// An answer waiting for its writes to commit.
#[derive(Debug)]
struct Committing {
    id: i64,
    then: Then,
    side_effects: Vec<cs::SideEffect>,
}

/// The command in flight of a one-at-a-time kind, and its answer while the writes commit.
#[derive(Debug, Default)]
pub(crate) struct Serial {
    in_flight: Option<InFlight>,
    committing: Option<Committing>,
}

impl Serial {
    /// Whether the next command may go to the user function.
    pub(crate) fn accepts(&self) -> bool {
        self.in_flight.is_none() && self.committing.is_none()
    }

    pub(crate) fn begin(&mut self, id: i64, command: &Command) {
        self.in_flight = Some(InFlight::of(id, command));
    }

    /// The command whose answer the user function owes (none: a message now is unsolicited).
    pub(crate) fn take(&mut self) -> Option<InFlight> {
        self.in_flight.take()
    }

    /// The mailbox's actions for the answer to `in_flight`.
    pub(crate) fn step<K: Kind<Write = Vec<Written>>>(
        &mut self,
        in_flight: InFlight,
        step: Step,
    ) -> Vec<Action<K>> {
        let id = in_flight.id;
        match step {
            Step::Crash { text, report } => vec![Action::Crash { text, report }],
            Step::Restart(reply) => vec![
                Action::Answer {
                    id,
                    then: Some(Then::Reply(reply)),
                    side_effects: Vec::new(),
                    remember: false,
                    position: None,
                },
                Action::Drop,
            ],
            Step::Done {
                writes,
                then,
                side_effects,
            } if writes.is_empty() => vec![
                Action::Answer {
                    id,
                    then: Some(then),
                    side_effects,
                    remember: false,
                    position: None,
                },
                Action::End { id },
            ],
            Step::Done {
                writes,
                then,
                side_effects,
            } => {
                self.committing = Some(Committing {
                    id,
                    then,
                    side_effects,
                });
                vec![Action::Write {
                    token: id as u64,
                    write: writes,
                }]
            }
        }
    }

    /// The writes of the answer finished: `true` with the actions if they committed.
    pub(crate) fn written<K: Kind>(
        &mut self,
        result: Result<Option<Position>, Error>,
    ) -> (bool, Vec<Action<K>>) {
        let Some(Committing {
            id,
            then,
            side_effects,
        }) = self.committing.take()
        else {
            return (false, Vec::new());
        };
        match result {
            Ok(position) => (
                true,
                vec![
                    Action::Answer {
                        id,
                        then: Some(then),
                        side_effects,
                        remember: true,
                        position,
                    },
                    Action::End { id },
                ],
            ),
            Err(error) => (false, vec![Action::Fail { id, error }, Action::Drop]),
        }
    }
}

/// What a one-at-a-time kind says of its own protocol; the rest of its [`Kind`] comes from
/// [`journaled_kind!`].
pub(crate) trait Journaled: Kind<Ctx = Journal, Write = Vec<Written>> {
    fn serial(&mut self) -> &mut Serial;

    /// The stream message of command `command` (the protocol's `Command`).
    fn wrap(command: cs::Command) -> Self::In;

    /// The step the user function's answer to `command` (the one in flight) leads to.
    fn answer(
        &mut self,
        entity: &EntityRef,
        command: &InFlight,
        out: Self::Out,
        window: &Window,
        stamp: &Stamp<'_>,
    ) -> Step;

    /// The writes of the last answer committed.
    fn committed(&mut self);

    /// What the user function sent while no command was in flight, for `reportError`.
    fn unsolicited(entity: &EntityRef, out: &Self::Out) -> String;
}

/// [`Kind::message`] of a one-at-a-time kind.
pub(crate) fn message<K: Journaled>(
    machine: &mut K,
    entity: &EntityRef,
    out: K::Out,
    turn: &Turn<'_>,
) -> Vec<Action<K>> {
    let Some(in_flight) = machine.serial().take() else {
        let report = K::unsolicited(entity, &out);
        warn!(entity = %entity.key, report, "message from the user function while no command was in flight");
        return vec![Action::Crash {
            text: K::TERMINATED.to_string(),
            report: Some(report),
        }];
    };
    let mut step = machine.answer(entity, &in_flight, out, turn.window, turn.stamp);
    add_output(entity, &in_flight, &mut step, turn.stamp);
    machine.serial().step(in_flight, step)
}

/// [`Kind::written`] of a one-at-a-time kind.
pub(crate) fn written<K: Journaled>(
    machine: &mut K,
    result: Result<Option<Position>, Error>,
) -> Vec<Action<K>> {
    let (committed, actions) = machine.serial().written(result);
    if committed {
        machine.committed();
    }
    actions
}

/// The [`Kind`] items every one-at-a-time kind shares (a [`Journaled`] kind's context, writes,
/// inputs, mailbox gate, commands, messages and write outcomes).
macro_rules! journaled_kind {
    () => {
        type Ctx = $crate::journal::Journal;
        type Write = Vec<$crate::records::Written>;
        type Input = std::convert::Infallible;

        fn serving(ctx: &$crate::journal::Journal) -> bool {
            ctx.is_serving()
        }

        fn writer(ctx: &$crate::journal::Journal) -> &statehouse_schemas::avro::Writer {
            &ctx.writer_id
        }

        async fn write(
            ctx: std::sync::Arc<$crate::journal::Journal>,
            writes: Vec<$crate::records::Written>,
        ) -> Result<Option<$crate::command::Position>, $crate::Error> {
            ctx.persist(writes).await
        }

        fn merge(_: &mut Self::Input, newer: Self::Input) {
            match newer {}
        }

        fn accepts(&self) -> bool {
            self.serial.accepts()
        }

        fn command(
            &mut self,
            entity: &$crate::entity::EntityRef,
            id: i64,
            command: &$crate::command::Command,
            _streamed: bool,
        ) -> Self::In {
            self.serial.begin(id, command);
            <Self as $crate::kinds::journaled::Journaled>::wrap($crate::entity::protocol_command(
                entity, id, command, false,
            ))
        }

        fn message(
            &mut self,
            entity: &$crate::entity::EntityRef,
            out: Self::Out,
            turn: &$crate::entity::Turn<'_>,
        ) -> Vec<$crate::entity::Action<Self>> {
            $crate::kinds::journaled::message(self, entity, out, turn)
        }

        fn written(
            &mut self,
            _entity: &$crate::entity::EntityRef,
            _token: u64,
            result: Result<Option<$crate::command::Position>, $crate::Error>,
        ) -> Vec<$crate::entity::Action<Self>> {
            $crate::kinds::journaled::written(self, result)
        }
    };
}
pub(crate) use journaled_kind;
