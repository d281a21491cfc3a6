//! The values a command carries through the processor, and what it gives back — a leaf module:
//! it imports nothing of the processor but its errors, so every other module can use it.
//!
//! * [`Command`] — one command for an entity or an action, typed (the method's index entry, the
//!   request bytes, the caller's context), carried unchanged from the internal API to the kind
//!   that runs it.
//! * [`Reply`] / [`Outcome`] — what the client gets.
//! * [`Host`] — what the parts below the node need from it (routing, pause verdicts, reporting to
//!   the user function), so that none of them imports the node.

use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use statehouse_runtime::method_index::MethodInfo;
use statehouse_schemas::cloudstate as cs;
use tokio::time::Instant;

use crate::Error;
use crate::records::Output;

/// One command for an entity (keyed) or an action (`entity_id` empty).
#[derive(Debug, Clone)]
pub(crate) struct Command {
    /// The method, as the method index knows it.
    pub(crate) method: Arc<MethodInfo>,
    /// The entity id read from the request's key fields (`""` for actions).
    pub(crate) entity_id: String,
    /// The request message bytes (the `Any` value of the command's payload).
    pub(crate) payload: Bytes,
    /// The payload's type URL when it is not the method's input type: a method taking
    /// `google.protobuf.Any` gets the message as it is (an event of any type, a forward's
    /// payload).
    pub(crate) type_url: Option<String>,
    /// Request metadata (headers); passed to actions only — the reference proxy gives entities
    /// none, and the TCK checks it.
    pub(crate) metadata: Option<cs::Metadata>,
    /// The client's idempotency key.
    pub(crate) idempotency_key: Option<String>,
    /// When the caller gives up.
    pub(crate) deadline: Option<Instant>,
    /// W3C trace context of the command (this processor's span when traces are on, else the
    /// caller's as it came): the parent of its user-function call and commit, and the
    /// `traceparent` of its records.
    pub(crate) traceparent: Option<String>,
    /// The context of its user-function call, set when the call starts (traces on only): the
    /// `traceparent` metadata the user function gets (`spans.rs`).
    pub(crate) call_traceparent: Option<String>,
    /// Forward / side-effect hops that led to this command.
    pub(crate) hops: u32,
}

impl Command {
    /// The payload as the `Any` the user function gets:
    /// `type.googleapis.com/<input type>` (or [`Command::type_url`]) + the request bytes.
    pub(crate) fn payload_any(&self) -> prost_types::Any {
        prost_types::Any {
            type_url: self.type_url.clone().unwrap_or_else(|| {
                format!(
                    "{}{}",
                    statehouse_schemas::protocol::PROTOBUF_TYPE_URL_PREFIX,
                    self.method.input.full_name()
                )
            }),
            value: self.payload.to_vec(),
        }
    }

    /// The key this command's effects derive theirs from ([`Command::effect_key`]): its own
    /// idempotency key scoped by where it ran (`scope`: the entity key, or the action method),
    /// so equal client keys sent to two entities never give their effects equal keys at a
    /// shared target.
    pub(crate) fn effects_key(&self, scope: &str) -> Option<String> {
        self.idempotency_key
            .as_deref()
            .map(|key| format!("{scope}/{key}"))
    }

    /// The idempotency key of side effect `s<i>` (`f`: the forward; a streamed element's
    /// index) of a command whose effects key is `key`: a retried command's effects carry the
    /// same keys, so their targets run them once.
    pub(crate) fn effect_key(key: Option<&str>, effect: impl std::fmt::Display) -> Option<String> {
        key.map(|key| format!("{key}/{effect}"))
    }
}

/// What the client gets.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Reply {
    /// A reply message.
    Message {
        payload: Bytes,
        type_url: String,
        metadata: Option<cs::Metadata>,
    },
    /// The user function sent no reply message.
    Empty,
    /// The command failed (a user-function failure is `UNKNOWN`).
    Failure {
        description: String,
        code: tonic::Code,
    },
}

impl Reply {
    /// The client's reply for a user-function `Reply` (an absent payload sends no message).
    pub(crate) fn of(reply: cs::Reply) -> Reply {
        match reply.payload {
            Some(payload) => Reply::Message {
                payload: Bytes::from(payload.value),
                type_url: payload.type_url,
                metadata: reply.metadata,
            },
            None => Reply::Empty,
        }
    }

    /// A user-function failure: `UNKNOWN` with its description (`docs/protocol.md`, "Errors").
    pub(crate) fn failure(description: impl Into<String>) -> Reply {
        Reply::Failure {
            description: description.into(),
            code: tonic::Code::Unknown,
        }
    }

    pub(crate) fn is_failure(&self) -> bool {
        matches!(self, Reply::Failure { .. })
    }
}

/// A reply, and whether it is the stored reply of an earlier command with the same idempotency
/// key (returned without running the command again).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Outcome {
    pub(crate) reply: Reply,
    pub(crate) deduplicated: bool,
    /// Where the command's last journal event was committed — or, after a forward, the
    /// target's when it reports one (none: no event written, or the reply was the stored one
    /// of an earlier command).
    pub(crate) position: Option<Position>,
}

impl Outcome {
    pub(crate) fn new(reply: Reply) -> Self {
        Self {
            reply,
            deduplicated: false,
            position: None,
        }
    }
}

/// A record's place in the service's journal topic: a command's commit position, which a
/// projection query can wait for (read your writes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Position {
    pub(crate) partition: i32,
    pub(crate) offset: i64,
}

/// What follows the user function's answer to a command, once its writes committed: a reply,
/// or a forward whose reply becomes the client's (`docs/protocol.md`, "Forwards and side
/// effects").
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Then {
    Reply(Reply),
    Forward(cs::Forward),
}

/// What the parts below the node need from it. Implemented by the node; entities, actions and
/// effects hold it as `Arc<dyn Host>`.
pub(crate) trait Host: Send + Sync + 'static {
    /// Whether this processor may serve its partitions now (not within a pause's suspension).
    fn may_serve(&self) -> bool;

    /// "Not served here", naming the owner of `partition` if another one is known.
    fn not_serving(&self, partition: u32) -> Error;

    /// The command a forward or side effect names: `service`/`command` of any service this
    /// processor knows, the entity id read from `payload`.
    fn resolve(
        &self,
        service: &str,
        command: &str,
        payload: Option<prost_types::Any>,
        metadata: Option<cs::Metadata>,
        hops: u32,
        deadline: Option<Instant>,
    ) -> Result<Command, Error>;

    /// Run a command wherever it must run: here (an entity of a partition this processor
    /// owns, an action of its service) or on another processor (through the router).
    fn dispatch(self: Arc<Self>, command: Command) -> BoxFuture<'static, Result<Outcome, Error>>;

    /// Tell the user function it did something wrong (`reportError`, best effort).
    fn report_error(self: Arc<Self>, message: String) -> BoxFuture<'static, ()>;

    /// A new command id (unique per processor instance), for the records of a command.
    fn next_command_id(&self) -> String;

    /// Publish an action's reply to its output topic and wait for Kafka's acknowledgement
    /// (entities write theirs in their own transaction instead).
    fn publish(self: Arc<Self>, record: Output) -> BoxFuture<'static, Result<(), Error>>;
}
