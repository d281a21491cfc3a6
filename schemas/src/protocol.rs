//! Constants of the Cloudstate protocol that are not in the generated code.

/// The protocol version Statehouse speaks (and sends in `ProxyInfo`).
pub const MAJOR_VERSION: i32 = 0;
/// See [`MAJOR_VERSION`].
pub const MINOR_VERSION: i32 = 2;

/// Entity type of event-sourced entities (`Entity.entity_type`).
pub const EVENT_SOURCED: &str = "cloudstate.eventsourced.EventSourced";
/// Entity type of value entities.
pub const VALUE_ENTITY: &str = "cloudstate.valueentity.ValueEntity";
/// Entity type of CRDT entities.
pub const CRDT: &str = "cloudstate.crdt.Crdt";
/// Entity type of actions.
pub const ACTION: &str = "cloudstate.action.ActionProtocol";
/// Entity type of legacy (0.1) stateless functions.
pub const LEGACY_FUNCTION: &str = "cloudstate.function.StatelessFunction";

/// `google.protobuf.FieldOptions` extension `cloudstate.entity_key`.
pub const ENTITY_KEY_EXTENSION: u32 = 1080;
/// `google.protobuf.FieldOptions` extension `cloudstate.legacy_entity_key`
/// (the entity key's number before protocol 0.2).
pub const LEGACY_ENTITY_KEY_EXTENSION: u32 = 50002;
/// `google.protobuf.MethodOptions` extension `cloudstate.eventing`.
pub const EVENTING_EXTENSION: u32 = 1081;
/// `google.protobuf.MethodOptions` extension `google.api.http`.
pub const HTTP_EXTENSION: u32 = 72_295_728;

/// Type URL prefix of protobuf messages in an `Any`.
pub const PROTOBUF_TYPE_URL_PREFIX: &str = "type.googleapis.com/";
/// Type URL prefix of Cloudstate-encoded primitives (`p.cloudstate.io/string`…).
pub const PRIMITIVE_TYPE_URL_PREFIX: &str = "p.cloudstate.io/";
/// Type URL prefix of Cloudstate-encoded JSON (`json.cloudstate.io/<type>`).
pub const JSON_TYPE_URL_PREFIX: &str = "json.cloudstate.io/";

/// The `Any` type URL of a protobuf message type given by full name.
pub fn type_url(full_name: &str) -> String {
    format!("{PROTOBUF_TYPE_URL_PREFIX}{full_name}")
}

/// The gRPC path `/<service>/<method>` of a method.
pub fn grpc_path(full_service_name: &str, method: &str) -> String {
    format!("/{full_service_name}/{method}")
}
