//! What event-sourced and value entities share: their records committed in the partition's
//! transactions ([`Journal`]) before the caller gets its answer, answers released in command
//! order, several commands of one entity in flight between the user function and the commit.
//!
//! Each of the two kinds turns the user function's answer to the command in flight into a
//! [`Step`]; [`Pipeline`] turns the step into the mailbox's actions and holds the answer until
//! its writes (and every write before them) committed:
//!
//! ```text
//! command ──▶ in flight ──answer──▶ Step::Done (no writes) ──▶ Answer, End (after the writes before it)
//!                          │        Step::Done (writes) ─────▶ Write ──committed──▶ Answer (remembered), End
//!                          │                                         └─failed────▶ Fail (and every later one), Drop
//!                          │        Step::Done (a record above kafka.max-record-bytes)
//!                          │            = Step::Restart (INVALID_ARGUMENT naming the limit)
//!                          │        Step::Restart ───────────▶ Answer, Drop (after the writes before it)
//!                          └──────▶ Step::Crash ─────────────▶ Crash
//! ```
//!
//! The user function gets one command at a time (the protocol matches answers by command id,
//! and the reference proxy sends the next command only after the answer); the next goes as
//! soon as it answered, not after the commit. A failed write drops the stream: the user
//! function already applied the change (and those after it), so its state is ahead of what is
//! stored; the next command starts from the stored state.

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

/// Answers that may wait for their commit, per entity: beyond it the entity takes no new
/// command until a group committed.
pub(crate) const PIPELINE: usize = 64;

/// An answer waiting for the writes before it (and its own) to commit.
#[derive(Debug)]
struct Waiting {
    id: i64,
    then: Then,
    side_effects: Vec<cs::SideEffect>,
    /// The command's idempotency key: a retry with it waits until this answer is released.
    key: Option<String>,
    /// Whether the answer wrote records (its reply is remembered once they committed).
    wrote: bool,
    /// A failure with `restart`: the stream is dropped once this answer went out.
    restart: bool,
}

/// The commands of one entity between the user function and their commit.
///
/// The user function gets the next command as soon as it answered the previous one; the
/// answer's writes do not wait for the commit of the ones before. Answers are released in
/// command order, each once every write up to its own committed:
///
/// ```text
///             ┌──────────── writing (one append in the partition writer) ─────────────┐
/// answers ──▶ │ waiting answers of the group in flight, in command order              │ ──committed──▶ Answer…, End…
///             └───────────────────────────────────────────────────────────────────────┘
///             ┌──────────── queued (the next append) ─────────────────────────────────┐
///             │ answers that came while a group was in flight, and their writes       │ ──▶ the next group
///             └───────────────────────────────────────────────────────────────────────┘
/// ```
///
/// One append per entity is in the writer at a time, so an entity's records reach the log in
/// order and never with a gap: the commands answered while a group commits go together in the
/// next append (several commands of a hot entity share one transaction). A read (an answer
/// without writes) waits behind uncommitted writes, since the user function answered it from
/// their state. When a group fails, nothing after it is committed either: its commands and
/// every later one fail, and the stream is dropped (the next command starts from the stored
/// state). With nothing waiting, an answer without writes goes out at once and one with
/// writes is appended at once — the one-command-at-a-time behaviour.
#[derive(Debug, Default)]
pub(crate) struct Pipeline {
    in_flight: Option<InFlight>,
    /// The group whose append is in the writer (its token is `groups`).
    writing: Vec<Waiting>,
    /// The answers of the next group, and its writes.
    queued: Vec<Waiting>,
    queued_writes: Vec<Written>,
    /// A restart is waiting: no new command until it went out.
    restarting: bool,
    /// Groups started; the last one's number is its append's token.
    groups: u64,
}

impl Pipeline {
    /// Whether the next command may go to the user function.
    pub(crate) fn accepts(&self) -> bool {
        self.in_flight.is_none()
            && !self.restarting
            && self.writing.len() + self.queued.len() < PIPELINE
    }

    /// Whether `command` may go to the user function now: not while an earlier command with its
    /// idempotency key waits for its commit (the retry then gets that command's stored reply).
    pub(crate) fn admits(&self, command: &Command) -> bool {
        let Some(key) = command.idempotency_key.as_deref() else {
            return true;
        };
        !self
            .writing
            .iter()
            .chain(&self.queued)
            .any(|w| w.key.as_deref() == Some(key))
    }

    pub(crate) fn begin(&mut self, id: i64, command: &Command) {
        self.in_flight = Some(InFlight::of(id, command));
    }

    /// The command whose answer the user function owes (none: a message now is unsolicited).
    pub(crate) fn take(&mut self) -> Option<InFlight> {
        self.in_flight.take()
    }

    fn idle(&self) -> bool {
        self.writing.is_empty() && self.queued.is_empty()
    }

    /// The mailbox's actions for the answer to `in_flight`.
    pub(crate) fn step<K: Kind<Write = Vec<Written>>>(
        &mut self,
        in_flight: InFlight,
        step: Step,
    ) -> Vec<Action<K>> {
        let id = in_flight.id;
        let (writes, waiting) = match step {
            Step::Crash { text, report } => return vec![Action::Crash { text, report }],
            Step::Restart(reply) => (
                Vec::new(),
                Waiting {
                    id,
                    then: Then::Reply(reply),
                    side_effects: Vec::new(),
                    key: None,
                    wrote: false,
                    restart: true,
                },
            ),
            Step::Done {
                writes,
                then,
                side_effects,
            } => {
                let wrote = !writes.is_empty();
                (
                    writes,
                    Waiting {
                        id,
                        then,
                        side_effects,
                        key: in_flight.idempotency_key,
                        wrote,
                        restart: false,
                    },
                )
            }
        };
        if self.idle() {
            if writes.is_empty() {
                // Nothing uncommitted before it: answer now.
                let mut actions = Vec::new();
                release(waiting, None, &mut actions);
                return actions;
            }
            self.writing.push(waiting);
            return vec![self.start_group(writes)];
        }
        self.restarting |= waiting.restart;
        self.queued.push(waiting);
        self.queued_writes.extend(writes);
        Vec::new()
    }

    fn start_group<K: Kind<Write = Vec<Written>>>(&mut self, writes: Vec<Written>) -> Action<K> {
        self.groups += 1;
        Action::Write {
            token: self.groups,
            write: writes,
        }
    }

    /// The append `token` finished: the answers it releases, and the next group's append.
    pub(crate) fn written<K: Kind<Write = Vec<Written>>>(
        &mut self,
        token: u64,
        result: Result<Option<Position>, Error>,
    ) -> Vec<Action<K>> {
        if token != self.groups || self.writing.is_empty() {
            return Vec::new();
        }
        let mut actions = Vec::new();
        match result {
            Ok(position) => {
                for waiting in std::mem::take(&mut self.writing) {
                    if release(waiting, position, &mut actions) {
                        return actions;
                    }
                }
                let queued = std::mem::take(&mut self.queued);
                let writes = std::mem::take(&mut self.queued_writes);
                if writes.is_empty() {
                    // Only answers without writes (or a restart) were waiting: they go now.
                    for waiting in queued {
                        if release(waiting, None, &mut actions) {
                            return actions;
                        }
                    }
                } else {
                    self.writing = queued;
                    actions.push(self.start_group(writes));
                }
            }
            Err(error) => {
                // Nothing after the failed group may commit: its commands and the later ones
                // fail, and the stream goes (the user function's state is ahead of the log).
                let reason = error.to_string();
                let mut first = Some(error);
                for waiting in std::mem::take(&mut self.writing)
                    .into_iter()
                    .chain(std::mem::take(&mut self.queued))
                {
                    let error = first
                        .take()
                        .unwrap_or_else(|| Error::EarlierNotCommitted(reason.clone()));
                    actions.push(Action::Fail {
                        id: waiting.id,
                        error,
                    });
                }
                self.queued_writes.clear();
                actions.push(Action::Drop);
            }
        }
        actions
    }
}

/// Answer `waiting` (its writes committed at `position`); true when it restarts the stream
/// (nothing may follow it).
fn release<K: Kind>(
    waiting: Waiting,
    position: Option<Position>,
    actions: &mut Vec<Action<K>>,
) -> bool {
    let Waiting {
        id,
        then,
        side_effects,
        wrote,
        restart,
        ..
    } = waiting;
    actions.push(Action::Answer {
        id,
        then: Some(then),
        side_effects,
        remember: wrote,
        position: if wrote { position } else { None },
    });
    if restart {
        actions.push(Action::Drop);
    } else {
        actions.push(Action::End { id });
    }
    restart
}

/// What a journaled kind says of its own protocol; the rest of its [`Kind`] comes from
/// [`journaled_kind!`].
pub(crate) trait Journaled: Kind<Ctx = Journal, Write = Vec<Written>> {
    fn pipeline(&mut self) -> &mut Pipeline;

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

    /// What the user function sent while no command was in flight, for `reportError`.
    fn unsolicited(entity: &EntityRef, out: &Self::Out) -> String;
}

/// [`Kind::message`] of a journaled kind.
pub(crate) fn message<K: Journaled>(
    machine: &mut K,
    entity: &EntityRef,
    out: K::Out,
    turn: &Turn<'_>,
) -> Vec<Action<K>> {
    let Some(in_flight) = machine.pipeline().take() else {
        let report = K::unsolicited(entity, &out);
        warn!(entity = %entity.key, report, "message from the user function while no command was in flight");
        return vec![Action::Crash {
            text: K::TERMINATED.to_string(),
            report: Some(report),
        }];
    };
    let mut step = machine.answer(entity, &in_flight, out, turn.window, turn.stamp);
    add_output(entity, &in_flight, &mut step, turn.stamp);
    refuse_oversized(entity, &mut step, turn.stamp.max_record_bytes);
    machine.pipeline().step(in_flight, step)
}

/// A command whose record would exceed `kafka.max-record-bytes` fails alone, before anything
/// is appended: Kafka would refuse the record inside the partition's transaction and abort
/// the other commands sharing it, and a retry can never succeed. The answer is
/// INVALID_ARGUMENT naming the limit; the stream restarts after the writes before it, since
/// the user function already applied the change it was refused.
fn refuse_oversized(entity: &EntityRef, step: &mut Step, max_record_bytes: usize) {
    let Step::Done { writes, .. } = &*step else {
        return;
    };
    let Some(bytes) = writes
        .iter()
        .map(Written::record_bound)
        .find(|&bytes| bytes > max_record_bytes)
    else {
        return;
    };
    let description = format!(
        "the command's record for entity {} would be about {bytes} bytes, above the record limit kafka.max-record-bytes ({max_record_bytes} bytes); nothing was written",
        entity.id
    );
    warn!(entity = %entity.key, bytes, limit = max_record_bytes, "command refused: its record is too large");
    metrics::counter!(crate::metrics::RECORDS_REFUSED).increment(1);
    *step = Step::Restart(Reply::Failure {
        description,
        code: tonic::Code::InvalidArgument,
    });
}

/// The [`Kind`] items every journaled kind shares (a [`Journaled`] kind's context, writes,
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
            self.pipeline.accepts()
        }

        fn admits(&self, command: &$crate::command::Command) -> bool {
            self.pipeline.admits(command)
        }

        fn command(
            &mut self,
            entity: &$crate::entity::EntityRef,
            id: i64,
            command: &$crate::command::Command,
            _streamed: bool,
        ) -> Self::In {
            self.pipeline.begin(id, command);
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
            token: u64,
            result: Result<Option<$crate::command::Position>, $crate::Error>,
        ) -> Vec<$crate::entity::Action<Self>> {
            self.pipeline.written(token, result)
        }
    };
}
pub(crate) use journaled_kind;
