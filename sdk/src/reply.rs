//! What a command handler answers: a [`Reply`] (a message, no message, or a
//! [`Forward`]), [`SideEffect`]s, or a [`Failure`].
//!
//! These are the SDK's own types, converted to the protocol's `ClientAction`
//! and `SideEffect` messages when the reply is sent
//! (`schemas/proto/cloudstate/entity.proto`; `docs/protocol.md`, "Forwards and side effects").

use prost::Name;
use prost_types::Any;
use statehouse_schemas::cloudstate::{self, Metadata, client_action};

use crate::any;

/// The successful answer to a command.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    action: Action,
}

#[derive(Debug, Clone, PartialEq)]
enum Action {
    Message {
        payload: Any,
        metadata: Option<Metadata>,
    },
    NoMessage,
    Forward(Forward),
}

impl Reply {
    /// Reply with `message`; it should be the method's output type.
    pub fn message<M: Name>(message: &M) -> Self {
        Self::from_any(any::pack(message))
    }

    /// Reply with an already packed message.
    pub fn from_any(payload: Any) -> Self {
        Self {
            action: Action::Message {
                payload,
                metadata: None,
            },
        }
    }

    /// Reply with `google.protobuf.Empty`, the output of e.g. `AddItem`.
    pub fn empty() -> Self {
        Self::message(&())
    }

    /// Reply without a message ("no reply"; the protocol's `Reply` without a
    /// payload). For unary gRPC methods prefer [`Reply::empty`].
    pub fn no_message() -> Self {
        Self {
            action: Action::NoMessage,
        }
    }

    /// Hand the command on: the forwarded call's reply becomes the client's.
    pub fn forward(forward: Forward) -> Self {
        Self {
            action: Action::Forward(forward),
        }
    }

    /// Attach metadata to a message reply (the proxy may turn it into
    /// response headers). Ignored for forwards and [`Reply::no_message`].
    #[must_use]
    pub fn with_metadata(mut self, metadata: Metadata) -> Self {
        if let Action::Message { metadata: slot, .. } = &mut self.action {
            *slot = Some(metadata);
        }
        self
    }

    pub(crate) fn into_client_action(self) -> cloudstate::ClientAction {
        let action = match self.action {
            Action::Message { payload, metadata } => {
                client_action::Action::Reply(cloudstate::Reply {
                    payload: Some(payload),
                    metadata,
                })
            }
            Action::NoMessage => client_action::Action::Reply(cloudstate::Reply::default()),
            Action::Forward(forward) => client_action::Action::Forward(forward.into_proto()),
        };
        cloudstate::ClientAction {
            action: Some(action),
        }
    }
}

/// A call of another service method: the target of a forward.
#[derive(Debug, Clone, PartialEq)]
pub struct Forward {
    service_name: String,
    command_name: String,
    payload: Any,
    metadata: Option<Metadata>,
}

impl Forward {
    /// Call `command_name` (the short method name, e.g. `GetCart`) of the
    /// fully qualified gRPC service `service_name` with `payload`.
    pub fn new<M: Name>(
        service_name: impl Into<String>,
        command_name: impl Into<String>,
        payload: &M,
    ) -> Self {
        Self::from_any(service_name, command_name, any::pack(payload))
    }

    /// Like [`Forward::new`], with an already packed payload.
    pub fn from_any(
        service_name: impl Into<String>,
        command_name: impl Into<String>,
        payload: Any,
    ) -> Self {
        Self {
            service_name: service_name.into(),
            command_name: command_name.into(),
            payload,
            metadata: None,
        }
    }

    /// Attach metadata to the call.
    #[must_use]
    pub fn with_metadata(mut self, metadata: Metadata) -> Self {
        self.metadata = Some(metadata);
        self
    }

    fn into_proto(self) -> cloudstate::Forward {
        cloudstate::Forward {
            service_name: self.service_name,
            command_name: self.command_name,
            payload: Some(self.payload),
            metadata: self.metadata,
        }
    }
}

/// A call the proxy makes after the command's events are persisted; its
/// result is discarded. Asynchronous unless made [`synchronous`](Self::synchronous).
#[derive(Debug, Clone, PartialEq)]
pub struct SideEffect {
    call: Forward,
    synchronous: bool,
}

impl SideEffect {
    /// Call `command_name` of `service_name` with `payload`, fire-and-forget.
    pub fn new<M: Name>(
        service_name: impl Into<String>,
        command_name: impl Into<String>,
        payload: &M,
    ) -> Self {
        Self::from_any(service_name, command_name, any::pack(payload))
    }

    /// Like [`SideEffect::new`], with an already packed payload.
    pub fn from_any(
        service_name: impl Into<String>,
        command_name: impl Into<String>,
        payload: Any,
    ) -> Self {
        Self {
            call: Forward::from_any(service_name, command_name, payload),
            synchronous: false,
        }
    }

    /// Make the proxy wait for this call before answering the client.
    #[must_use]
    pub fn synchronous(mut self) -> Self {
        self.synchronous = true;
        self
    }

    /// Attach metadata to the call.
    #[must_use]
    pub fn with_metadata(mut self, metadata: Metadata) -> Self {
        self.call.metadata = Some(metadata);
        self
    }

    pub(crate) fn into_proto(self) -> cloudstate::SideEffect {
        let call = self.call.into_proto();
        cloudstate::SideEffect {
            service_name: call.service_name,
            command_name: call.command_name,
            payload: call.payload,
            synchronous: self.synchronous,
            metadata: call.metadata,
        }
    }
}

/// A command failed: the client gets gRPC `UNKNOWN` with this description,
/// and nothing the command emitted is kept.
///
/// Returned from [`apply`](crate::eventsourced::Entity::apply) or
/// [`restore`](crate::eventsourced::Entity::restore) it means the entity
/// cannot go on: the stream fails and the proxy restarts the entity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{description}")]
pub struct Failure {
    description: String,
}

impl Failure {
    /// A failure with the description the client will see.
    pub fn new(description: impl Into<String>) -> Self {
        Self {
            description: description.into(),
        }
    }

    /// The description the client will see.
    pub fn description(&self) -> &str {
        &self.description
    }

    pub(crate) fn into_description(self) -> String {
        self.description
    }
}

impl From<String> for Failure {
    fn from(description: String) -> Self {
        Self::new(description)
    }
}

impl From<&str> for Failure {
    fn from(description: &str) -> Self {
        Self::new(description)
    }
}

/// Lets handlers `?` a payload that does not unpack.
impl From<any::Error> for Failure {
    fn from(error: any::Error) -> Self {
        Self::new(error.to_string())
    }
}
