//! Stateless actions (`cloudstate.action.ActionProtocol`; `docs/protocol.md`, "Actions"): the
//! messages sent to the user function and what each response means for the client.
//!
//! * The rpc follows the method's shape: unary → `handleUnary`, client streaming →
//!   `handleStreamedIn`, server streaming → `handleStreamedOut`, both → `handleStreamed`.
//! * Unary and streamed-out calls send one command with service, name, payload and metadata.
//!   Streamed-in and duplex calls first send service, name and metadata without a payload, then
//!   one payload-only command per client message.
//! * Each response is one element for the client: a reply, a forward (its target's reply takes
//!   its place), nothing (no response set), or a failure — `UNKNOWN` with the description, which
//!   ends the call and cancels its request side. Side effects of every response run first.

use statehouse_runtime::method_index::MethodInfo;
use statehouse_schemas::cloudstate::action::{ActionCommand, ActionResponse, action_response};
use statehouse_schemas::cloudstate::{self as cs};

use crate::command::{Command, Reply, Then};

/// Which rpc of `ActionProtocol` a method uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shape {
    Unary,
    StreamedIn,
    StreamedOut,
    Streamed,
}

impl Shape {
    pub(crate) fn of(method: &MethodInfo) -> Shape {
        match (method.client_streaming, method.server_streaming) {
            (false, false) => Shape::Unary,
            (true, false) => Shape::StreamedIn,
            (false, true) => Shape::StreamedOut,
            (true, true) => Shape::Streamed,
        }
    }

    /// Whether the client sends a stream (the first command then carries no payload).
    pub(crate) fn streams_in(self) -> bool {
        matches!(self, Shape::StreamedIn | Shape::Streamed)
    }
}

/// The first (for unary and streamed-out calls, the only) command of a call.
pub(crate) fn first_command(command: &Command) -> ActionCommand {
    let shape = Shape::of(&command.method);
    ActionCommand {
        service_name: command.method.service.clone(),
        name: command.method.name.clone(),
        payload: (!shape.streams_in()).then(|| command.payload_any()),
        metadata: Some(crate::spans::action_metadata(command)),
    }
}

/// A later message of a streamed-in or duplex call: the payload only.
pub(crate) fn next_command(
    method: &MethodInfo,
    payload: &[u8],
    metadata: Option<cs::Metadata>,
) -> ActionCommand {
    ActionCommand {
        service_name: String::new(),
        name: String::new(),
        payload: Some(prost_types::Any {
            type_url: format!(
                "{}{}",
                statehouse_schemas::protocol::PROTOBUF_TYPE_URL_PREFIX,
                method.input.full_name()
            ),
            value: payload.to_vec(),
        }),
        metadata,
    }
}

/// What one response is for the client.
#[derive(Debug, PartialEq)]
pub(crate) struct Element {
    /// Run first.
    pub(crate) side_effects: Vec<cs::SideEffect>,
    /// The element (`None`: no reply, nothing reaches the client).
    pub(crate) then: Option<Then>,
    /// A failure: the call ends after this element.
    pub(crate) ends: bool,
}

pub(crate) fn element(response: ActionResponse) -> Element {
    let (then, ends) = match response.response {
        Some(action_response::Response::Reply(reply)) => {
            (Some(Then::Reply(Reply::of(reply))), false)
        }
        Some(action_response::Response::Forward(forward)) => (Some(Then::Forward(forward)), false),
        Some(action_response::Response::Failure(failure)) => {
            (Some(Then::Reply(Reply::failure(failure.description))), true)
        }
        None => (None, false),
    };
    Element {
        side_effects: response.side_effects,
        then,
        ends,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use statehouse_schemas::protocol;

    use super::*;
    use crate::kinds::testing::{command, method};

    fn streaming(client: bool, server: bool) -> Arc<MethodInfo> {
        let mut m = (*method("GetCart", protocol::ACTION, "")).clone();
        m.client_streaming = client;
        m.server_streaming = server;
        Arc::new(m)
    }

    #[test]
    fn commands_follow_the_shape() {
        let metadata = cs::Metadata {
            entries: vec![cs::MetadataEntry {
                key: "x-user".into(),
                value: Some(cs::metadata_entry::Value::StringValue("ada".into())),
            }],
        };
        for (client, server, shape, with_payload) in [
            (false, false, Shape::Unary, true),
            (true, false, Shape::StreamedIn, false),
            (false, true, Shape::StreamedOut, true),
            (true, true, Shape::Streamed, false),
        ] {
            let m = streaming(client, server);
            assert_eq!(Shape::of(&m), shape);
            let mut c = command(&m, "", None);
            c.metadata = Some(metadata.clone());
            let first = first_command(&c);
            assert_eq!(first.service_name, "com.example.shoppingcart.ShoppingCart");
            assert_eq!(first.name, "GetCart");
            assert_eq!(first.payload.is_some(), with_payload, "{shape:?}");
            assert_eq!(
                first.metadata.as_ref(),
                Some(&metadata),
                "actions get the metadata"
            );
        }
        let next = next_command(&streaming(true, true), b"\x0a\x01a", None);
        assert_eq!((next.service_name.as_str(), next.name.as_str()), ("", ""));
        let payload = next.payload.unwrap();
        assert_eq!(
            payload.type_url,
            "type.googleapis.com/com.example.shoppingcart.GetShoppingCart"
        );
        assert_eq!(payload.value, b"\x0a\x01a");
    }

    #[test]
    fn each_response_is_one_element() {
        let effect = cs::SideEffect {
            service_name: "s".into(),
            command_name: "c".into(),
            payload: None,
            synchronous: true,
            metadata: None,
        };
        let reply = ActionResponse {
            response: Some(action_response::Response::Reply(cs::Reply {
                payload: Some(prost_types::Any {
                    type_url: "t".into(),
                    value: b"r".to_vec(),
                }),
                metadata: None,
            })),
            side_effects: vec![effect.clone()],
        };
        let e = element(reply);
        assert_eq!(e.side_effects, vec![effect.clone()]);
        assert!(!e.ends);
        assert_eq!(
            e.then,
            Some(Then::Reply(Reply::Message {
                payload: Bytes::from_static(b"r"),
                type_url: "t".into(),
                metadata: None
            }))
        );
        let failure = element(ActionResponse {
            response: Some(action_response::Response::Failure(cs::Failure {
                command_id: 0,
                description: "boom".into(),
                restart: false,
            })),
            side_effects: vec![effect.clone()],
        });
        assert_eq!(
            failure,
            Element {
                side_effects: vec![effect],
                then: Some(Then::Reply(Reply::failure("boom"))),
                ends: true
            }
        );
        let nothing = element(ActionResponse::default());
        assert_eq!((nothing.then, nothing.ends), (None, false));
    }
}
