//! The methods of a discovered service, indexed for routing (`docs/protocol.md`, "Discovery"
//! and "Entity keys and routing").
//!
//! A user function describes itself with a `FileDescriptorSet` and a list of entities
//! (`EntitySpec`). [`MethodIndex::build`] validates both the way the reference proxy does and
//! indexes every method of every entity service by its gRPC path: input and output descriptors,
//! streaming shape, entity key fields and HTTP rules. Gateways use it to accept client calls,
//! processors to run forwards and side effects ([`MethodIndex::method_by_name`]).
//!
//! * **Incomplete descriptor sets are completed.** Real SDKs send sets that lack some imports
//!   (the Python SDK omits `google/api/annotations.proto`, `cloudstate/entity_key.proto`, …). A
//!   missing import is taken from [`statehouse_schemas::FILE_DESCRIPTOR_SET`] (the Cloudstate
//!   annotations, `google.api` and the well-known types) or from prost-reflect's well-known
//!   types; any other missing file is an error that names it. Files may come in any order; an
//!   import cycle is an error.
//! * **Options are read from their encoding.** Entity keys (`cloudstate.entity_key` = 1080, the
//!   legacy 50002) and `google.api.http` (72295728) are found by number in the encoded options,
//!   so they are recognised whether or not the set holds the files that define them (a set
//!   without `entity_key.proto` still carries the option bytes, as an unknown field).
//! * **Entity ids** follow `docs/protocol.md`, "Entity keys and routing": the key fields in
//!   declaration order; one key gives its value (strings raw, numbers in decimal), several are
//!   joined with `-`; actions have no key (`""`).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use prost_reflect::{
    DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, ServiceDescriptor,
    Value,
};
use statehouse_schemas::cloudstate::{Entity, Eventing, entity_passivation_strategy};
use statehouse_schemas::google::api::{HttpRule, http_rule};
use statehouse_schemas::protocol;

/// Why a service description is refused, or an entity id cannot be read from a request.
///
/// The texts are written for the user function's author: the processor sends them to the user
/// function with `reportError`, the gateway returns the request-time ones as
/// `INVALID_ARGUMENT`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `EntitySpec.proto` is not an encoded `FileDescriptorSet`.
    #[error(
        "the descriptor set (EntitySpec.proto) is not an encoded google.protobuf.FileDescriptorSet: {0}"
    )]
    DescriptorSet(#[source] prost::DecodeError),

    /// A file of the set has no name.
    #[error("file #{index} of the descriptor set has no name")]
    UnnamedFile {
        /// Its position in the set.
        index: usize,
    },

    /// A file imports a file that is neither in the set nor one Statehouse ships.
    #[error(
        "{file} imports {dependency}, which is not in the descriptor set (and is not a \
         well-known, google.api or Cloudstate annotation file Statehouse could add); send the \
         set with all imports (protoc --include_imports)"
    )]
    MissingDependency {
        /// The importing file.
        file: String,
        /// The missing import.
        dependency: String,
    },

    /// Files import each other in a cycle.
    #[error("the descriptor set has an import cycle: {cycle}")]
    ImportCycle {
        /// The files of the cycle, `a.proto -> b.proto -> a.proto`.
        cycle: String,
    },

    /// The files do not form a valid set of descriptors (unresolved types, duplicates, …).
    #[error("the descriptor set is invalid: {0}")]
    Descriptors(#[source] Box<prost_reflect::DescriptorError>),

    /// The spec lists no entity.
    #[error(
        "the entity spec lists no entities: a user function must serve at least one entity or action"
    )]
    NoEntities,

    /// An entity names a service that the descriptor set does not define.
    #[error("entity service {service:?} is not defined in the descriptor set")]
    UnknownService {
        /// The `Entity.service_name`.
        service: String,
    },

    /// Two entities name the same service.
    #[error("entity service {service:?} is listed twice in the entity spec")]
    DuplicateService {
        /// The `Entity.service_name`.
        service: String,
    },

    /// An entity type this role does not support.
    #[error(
        "entity service {service} has entity type {entity_type:?}, which is not supported; supported types: {supported}"
    )]
    UnsupportedEntityType {
        /// The `Entity.service_name`.
        service: String,
        /// The `Entity.entity_type`.
        entity_type: String,
        /// The supported types, comma separated.
        supported: String,
    },

    /// A streaming method on an entity type that does not allow it.
    #[error("{method} is {shape}, but {entity_type} entities do not support {shape} methods")]
    StreamingNotAllowed {
        /// The gRPC path of the method.
        method: String,
        /// `client-streaming` or `server-streaming`.
        shape: &'static str,
        /// The entity type.
        entity_type: String,
    },

    /// An entity method whose input has no key field.
    #[error(
        "{method}: its input type {input} has no entity key field; mark the field that \
         identifies the entity with [(.cloudstate.entity_key) = true]"
    )]
    MissingEntityKey {
        /// The gRPC path of the method.
        method: String,
        /// The input message type.
        input: String,
    },

    /// A key field whose type cannot be an id (a message, a list or a map).
    #[error(
        "{method}: entity key field {field} is {kind}; a key field must be a single string, number, bool, enum or bytes value"
    )]
    BadKeyField {
        /// The gRPC path of the method.
        method: String,
        /// The full name of the field.
        field: String,
        /// What the field is.
        kind: String,
    },

    /// A `cloudstate.eventing` option that does not decode.
    #[error(
        "{method}: the cloudstate.eventing option does not decode as cloudstate.Eventing: {source}"
    )]
    BadEventing {
        /// The gRPC path of the method.
        method: String,
        /// What prost reported.
        #[source]
        source: prost::DecodeError,
    },

    /// A `google.api.http` option that does not decode.
    #[error(
        "{method}: the google.api.http option does not decode as google.api.HttpRule: {source}"
    )]
    BadHttpRule {
        /// The gRPC path of the method.
        method: String,
        /// What prost reported.
        #[source]
        source: prost::DecodeError,
    },

    /// `additional_bindings` inside an additional binding.
    #[error(
        "{method}: google.api.http additional_bindings may not have additional_bindings themselves (only one level is allowed)"
    )]
    NestedAdditionalBindings {
        /// The gRPC path of the method.
        method: String,
    },

    /// A request that does not decode as the method's input type.
    #[error("the request is not a valid {message} message: {source}")]
    MalformedRequest {
        /// The input message type.
        message: String,
        /// What prost reported.
        #[source]
        source: prost::DecodeError,
    },

    /// A request to an entity whose key fields are all empty.
    #[error("the entity key of the request is empty: set {fields} of {message}")]
    EmptyEntityKey {
        /// The input message type.
        message: String,
        /// The key fields, comma separated.
        fields: String,
    },

    /// A `bytes` key field whose value is not UTF-8.
    #[error("entity key field {field} holds bytes that are not UTF-8 text")]
    NonUtf8Key {
        /// The full name of the field.
        field: String,
    },
}

/// The Cloudstate entity types, by their `Entity.entity_type` string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EntityKind {
    /// `cloudstate.eventsourced.EventSourced`.
    EventSourced,
    /// `cloudstate.valueentity.ValueEntity`.
    ValueEntity,
    /// `cloudstate.crdt.Crdt`.
    Crdt,
    /// `cloudstate.action.ActionProtocol`.
    Action,
    /// `cloudstate.function.StatelessFunction` (legacy 0.1 actions).
    LegacyFunction,
}

impl EntityKind {
    /// The kind of an `Entity.entity_type` string, if it is one of the Cloudstate types.
    pub fn of(entity_type: &str) -> Option<Self> {
        Some(match entity_type {
            protocol::EVENT_SOURCED => Self::EventSourced,
            protocol::VALUE_ENTITY => Self::ValueEntity,
            protocol::CRDT => Self::Crdt,
            protocol::ACTION => Self::Action,
            protocol::LEGACY_FUNCTION => Self::LegacyFunction,
            _ => return None,
        })
    }

    /// Whether commands are routed by entity key (every kind but actions).
    pub fn is_keyed(self) -> bool {
        !matches!(self, Self::Action | Self::LegacyFunction)
    }
}

/// One entity (or action) service of a user function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntityInfo {
    /// The full gRPC service name, e.g. `com.example.shoppingcart.ShoppingCart`.
    pub service_name: String,
    /// The protocol service of the entity, e.g. `cloudstate.eventsourced.EventSourced`.
    pub entity_type: String,
    /// The persistence id of the entity type.
    pub persistence_id: String,
    /// The passivation timeout the user function asked for, if any.
    pub passivation_timeout: Option<Duration>,
}

impl EntityInfo {
    /// The entity kind (always known: [`MethodIndex::build`] refuses other types).
    pub fn kind(&self) -> Option<EntityKind> {
        EntityKind::of(&self.entity_type)
    }
}

/// One method of an entity service.
#[derive(Debug, Clone)]
pub struct MethodInfo {
    /// The gRPC path, `/pkg.Service/Method`.
    pub path: String,
    /// The full service name, `pkg.Service`.
    pub service: String,
    /// The method name as declared, `Method`.
    pub name: String,
    /// The request message type.
    pub input: MessageDescriptor,
    /// The response message type.
    pub output: MessageDescriptor,
    /// The client sends a stream.
    pub client_streaming: bool,
    /// The server sends a stream.
    pub server_streaming: bool,
    /// The entity key fields of the input, in declaration order; empty for actions.
    pub key_fields: Vec<FieldDescriptor>,
    /// The entity (or action) service the method belongs to.
    pub entity: Arc<EntityInfo>,
    /// The HTTP bindings: the `google.api.http` rule followed by its additional bindings
    /// (flattened, each with `additional_bindings` empty), or — without the option — the
    /// default `POST /pkg.Service/Method` with body `*`.
    pub http_rules: Vec<HttpRule>,
    /// The method's `(cloudstate.eventing)` option (extension 1081), if it has one: an input
    /// (`in.topic`, `in.event_log`) and/or an output (`out.topic`).
    pub eventing: Option<Eventing>,
}

impl MethodInfo {
    /// The entity id of a request (`docs/protocol.md`, "Entity keys and routing"): the key
    /// fields' values in declaration order, joined with `-`; `""` for actions (the request is
    /// then not decoded at all).
    ///
    /// Fails if the request does not decode as the input type, or if an entity method's key
    /// is empty.
    ///
    /// Only the key fields are read: the request's top level is scanned on the wire and every
    /// other field is skipped undecoded (the rest of the request is the user function's to
    /// decode). Anything the scan does not take at face value — a malformed or truncated
    /// request, a group, a key field with an unexpected wire type — goes through a full decode,
    /// which gives the precise error.
    pub fn entity_id(&self, request: &[u8]) -> Result<String, Error> {
        if self.key_fields.is_empty() {
            return Ok(String::new());
        }
        let values = match scan_key_values(&self.key_fields, request) {
            Some(values) => values,
            None => self.decoded_key_values(request)?,
        };
        self.id_of(&values)
    }

    /// The key fields' values from a full decode of `request` (what the wire scan of
    /// [`MethodInfo::entity_id`] must agree with).
    pub(crate) fn decoded_key_values(&self, request: &[u8]) -> Result<Vec<Value>, Error> {
        let message = DynamicMessage::decode(self.input.clone(), request).map_err(|source| {
            Error::MalformedRequest {
                message: self.input.full_name().to_string(),
                source,
            }
        })?;
        Ok(self
            .key_fields
            .iter()
            .map(|field| message.get_field(field).into_owned())
            .collect())
    }

    /// The entity id of the key fields' `values`: joined with `-`, never all empty.
    pub(crate) fn id_of(&self, values: &[Value]) -> Result<String, Error> {
        let mut id = String::new();
        let mut all_empty = true;
        for (i, (field, value)) in self.key_fields.iter().zip(values).enumerate() {
            if i > 0 {
                id.push('-');
            }
            let before = id.len();
            push_key_value(&mut id, field, value)?;
            all_empty &= id.len() == before;
        }
        if all_empty {
            return Err(Error::EmptyEntityKey {
                message: self.input.full_name().to_string(),
                fields: self
                    .key_fields
                    .iter()
                    .map(|f| f.name())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        Ok(id)
    }

    /// Whether the method is unary (neither side streams).
    pub fn is_unary(&self) -> bool {
        !self.client_streaming && !self.server_streaming
    }
}

/// The values of the key fields of an encoded request, read from its top-level fields on the
/// wire (the last occurrence wins; an absent field has its default); `None` when the request is
/// not plainly well-formed at the top level or a key field's wire type does not fit its type.
fn scan_key_values(fields: &[FieldDescriptor], request: &[u8]) -> Option<Vec<Value>> {
    let mut found: Vec<Option<Value>> = vec![None; fields.len()];
    let complete = wire::each_field(request, |number, raw| {
        let Some(i) = fields.iter().position(|f| f.number() == number) else {
            return true;
        };
        match key_value(&fields[i], raw) {
            Some(value) => {
                found[i] = Some(value);
                true
            }
            None => false,
        }
    });
    complete.then(|| {
        found
            .into_iter()
            .zip(fields)
            .map(|(value, field)| value.unwrap_or_else(|| Value::default_value_for_field(field)))
            .collect()
    })
}

/// A key field's value from its wire encoding, as a full decode would give it.
fn key_value(field: &FieldDescriptor, raw: wire::Field<'_>) -> Option<Value> {
    use wire::Field;
    if field.is_list() || field.is_map() {
        return None;
    }
    Some(match (field.kind(), raw) {
        (Kind::Int32, Field::Varint(v)) => Value::I32(v as i32),
        (Kind::Int64, Field::Varint(v)) => Value::I64(v as i64),
        (Kind::Uint32, Field::Varint(v)) => Value::U32(v as u32),
        (Kind::Uint64, Field::Varint(v)) => Value::U64(v),
        (Kind::Sint32, Field::Varint(v)) => {
            let v = v as u32;
            Value::I32((v >> 1) as i32 ^ -((v & 1) as i32))
        }
        (Kind::Sint64, Field::Varint(v)) => Value::I64((v >> 1) as i64 ^ -((v & 1) as i64)),
        (Kind::Bool, Field::Varint(v)) => Value::Bool(v != 0),
        (Kind::Enum(_), Field::Varint(v)) => Value::EnumNumber(v as i32),
        (Kind::Fixed64, Field::Fixed64(b)) => Value::U64(u64::from_le_bytes(b)),
        (Kind::Sfixed64, Field::Fixed64(b)) => Value::I64(i64::from_le_bytes(b)),
        (Kind::Double, Field::Fixed64(b)) => Value::F64(f64::from_le_bytes(b)),
        (Kind::Fixed32, Field::Fixed32(b)) => Value::U32(u32::from_le_bytes(b)),
        (Kind::Sfixed32, Field::Fixed32(b)) => Value::I32(i32::from_le_bytes(b)),
        (Kind::Float, Field::Fixed32(b)) => Value::F32(f32::from_le_bytes(b)),
        (Kind::String, Field::Bytes(b)) => Value::String(std::str::from_utf8(b).ok()?.to_owned()),
        (Kind::Bytes, Field::Bytes(b)) => Value::Bytes(Bytes::copy_from_slice(b)),
        _ => return None,
    })
}

fn push_key_value(out: &mut String, field: &FieldDescriptor, value: &Value) -> Result<(), Error> {
    use std::fmt::Write as _;
    match value {
        Value::String(s) => out.push_str(s),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::I32(n) => write!(out, "{n}").expect("writing to a String"),
        Value::I64(n) => write!(out, "{n}").expect("writing to a String"),
        Value::U32(n) => write!(out, "{n}").expect("writing to a String"),
        Value::U64(n) => write!(out, "{n}").expect("writing to a String"),
        Value::F32(n) => write!(out, "{n}").expect("writing to a String"),
        Value::F64(n) => write!(out, "{n}").expect("writing to a String"),
        Value::EnumNumber(n) => match field.kind() {
            Kind::Enum(e) => match e.get_value(*n) {
                Some(v) => out.push_str(v.name()),
                None => write!(out, "{n}").expect("writing to a String"),
            },
            _ => write!(out, "{n}").expect("writing to a String"),
        },
        Value::Bytes(b) => match std::str::from_utf8(b) {
            Ok(s) => out.push_str(s),
            Err(_) => {
                return Err(Error::NonUtf8Key {
                    field: field.full_name().to_string(),
                });
            }
        },
        // Refused by `MethodIndex::build`; a message or list never is a key.
        Value::Message(_) | Value::List(_) | Value::Map(_) => {}
    }
    Ok(())
}

/// The validated methods of one user function, by gRPC path. Cheap to clone.
#[derive(Clone)]
pub struct MethodIndex {
    inner: Arc<Inner>,
}

struct Inner {
    pool: DescriptorPool,
    /// The completed set, every file once (what reflection and processors hand on).
    descriptor_set: Bytes,
    methods: HashMap<String, Arc<MethodInfo>>,
    /// Entity services by name, sorted.
    services: BTreeMap<String, Arc<EntityInfo>>,
}

impl fmt::Debug for MethodIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MethodIndex")
            .field("services", &self.inner.services.keys().collect::<Vec<_>>())
            .field("methods", &self.inner.methods.len())
            .finish()
    }
}

impl MethodIndex {
    /// Validates a user function's description (`docs/protocol.md`, "Discovery") and indexes
    /// its methods.
    ///
    /// `supported_entity_types` are the `Entity.entity_type` strings the caller accepts.
    pub fn build(
        descriptor_set: &[u8],
        entities: &[Entity],
        supported_entity_types: &[&str],
    ) -> Result<Self, Error> {
        let descriptor_set = complete_descriptor_set(descriptor_set)?;
        let pool = DescriptorPool::decode(descriptor_set.clone())
            .map_err(|e| Error::Descriptors(Box::new(e)))?;
        if entities.is_empty() {
            return Err(Error::NoEntities);
        }
        let mut services = BTreeMap::new();
        let mut methods = HashMap::new();
        for entity in entities {
            let service = pool
                .get_service_by_name(&entity.service_name)
                .ok_or_else(|| Error::UnknownService {
                    service: entity.service_name.clone(),
                })?;
            if !supported_entity_types.contains(&entity.entity_type.as_str()) {
                return Err(Error::UnsupportedEntityType {
                    service: entity.service_name.clone(),
                    entity_type: entity.entity_type.clone(),
                    supported: supported_entity_types.join(", "),
                });
            }
            let info = Arc::new(EntityInfo {
                service_name: entity.service_name.clone(),
                entity_type: entity.entity_type.clone(),
                persistence_id: entity.persistence_id.clone(),
                passivation_timeout: passivation_timeout(entity),
            });
            if services
                .insert(entity.service_name.clone(), Arc::clone(&info))
                .is_some()
            {
                return Err(Error::DuplicateService {
                    service: entity.service_name.clone(),
                });
            }
            for method in index_service(&service, &info)? {
                methods.insert(method.path.clone(), Arc::new(method));
            }
        }
        Ok(Self {
            inner: Arc::new(Inner {
                pool,
                descriptor_set,
                methods,
                services,
            }),
        })
    }

    /// The method with gRPC path `/pkg.Service/Method`.
    pub fn method(&self, path: &str) -> Option<&Arc<MethodInfo>> {
        self.inner.methods.get(path)
    }

    /// The method `method` of the full service name `service` (forwards and side effects name
    /// their target this way).
    pub fn method_by_name(&self, service: &str, method: &str) -> Option<&Arc<MethodInfo>> {
        self.inner
            .methods
            .get(&protocol::grpc_path(service, method))
    }

    /// Every indexed method, in no particular order.
    pub fn methods(&self) -> impl Iterator<Item = &Arc<MethodInfo>> {
        self.inner.methods.values()
    }

    /// The entity services, sorted by name.
    pub fn services(&self) -> impl Iterator<Item = &str> {
        self.inner.services.keys().map(String::as_str)
    }

    /// The entity service `service`.
    pub fn entity(&self, service: &str) -> Option<&Arc<EntityInfo>> {
        self.inner.services.get(service)
    }

    /// The descriptors of every file of the (completed) set.
    pub fn pool(&self) -> &DescriptorPool {
        &self.inner.pool
    }

    /// The completed `FileDescriptorSet`, encoded: the user function's files (options as
    /// sent) plus the imports Statehouse had to add.
    pub fn file_descriptor_set(&self) -> &[u8] {
        &self.inner.descriptor_set
    }
}

fn passivation_timeout(entity: &Entity) -> Option<Duration> {
    let strategy = entity.passivation_strategy.as_ref()?.strategy.as_ref()?;
    match strategy {
        entity_passivation_strategy::Strategy::Timeout(t) if t.timeout > 0 => {
            Some(Duration::from_millis(t.timeout as u64))
        }
        entity_passivation_strategy::Strategy::Timeout(_) => None,
    }
}

fn index_service(
    service: &ServiceDescriptor,
    entity: &Arc<EntityInfo>,
) -> Result<Vec<MethodInfo>, Error> {
    let kind = entity.kind();
    let mut out = Vec::with_capacity(service.methods().len());
    for method in service.methods() {
        let path = protocol::grpc_path(service.full_name(), method.name());
        let client_streaming = method.is_client_streaming();
        let server_streaming = method.is_server_streaming();
        let refuse = |shape: &'static str| Error::StreamingNotAllowed {
            method: path.clone(),
            shape,
            entity_type: entity.entity_type.clone(),
        };
        match kind {
            Some(EntityKind::EventSourced | EntityKind::ValueEntity) => {
                if client_streaming {
                    return Err(refuse("client-streaming"));
                }
                if server_streaming {
                    return Err(refuse("server-streaming"));
                }
            }
            Some(EntityKind::Crdt) if client_streaming => return Err(refuse("client-streaming")),
            _ => {}
        }
        let input = method.input();
        let key_fields = if kind.is_some_and(EntityKind::is_keyed) {
            let keys = key_fields(&input);
            if keys.is_empty() {
                return Err(Error::MissingEntityKey {
                    method: path,
                    input: input.full_name().to_string(),
                });
            }
            if let Some(bad) = keys
                .iter()
                .find(|f| f.is_list() || f.is_map() || matches!(f.kind(), Kind::Message(_)))
            {
                return Err(Error::BadKeyField {
                    method: path,
                    field: bad.full_name().to_string(),
                    kind: describe_kind(bad),
                });
            }
            keys
        } else {
            Vec::new()
        };
        let options = method.options().encode_to_vec();
        let http_rules = http_rules(&options, &path)?;
        let eventing = wire::last_bytes_field(&options, protocol::EVENTING_EXTENSION)
            .map(Eventing::decode)
            .transpose()
            .map_err(|source| Error::BadEventing {
                method: path.clone(),
                source,
            })?;
        out.push(MethodInfo {
            service: service.full_name().to_string(),
            name: method.name().to_string(),
            input,
            output: method.output(),
            client_streaming,
            server_streaming,
            key_fields,
            entity: Arc::clone(entity),
            http_rules,
            eventing,
            path,
        });
    }
    Ok(out)
}

fn describe_kind(field: &FieldDescriptor) -> String {
    if field.is_map() {
        "a map".into()
    } else if field.is_list() {
        "a repeated field".into()
    } else {
        match field.kind() {
            Kind::Message(m) => format!("a message ({})", m.full_name()),
            other => format!("{other:?}"),
        }
    }
}

/// The fields of `input` whose options set `entity_key` (1080) or `legacy_entity_key` (50002).
fn key_fields(input: &MessageDescriptor) -> Vec<FieldDescriptor> {
    // `fields()` is sorted by number; the descriptor proto keeps the declaration order.
    input
        .descriptor_proto()
        .field
        .iter()
        .filter_map(|proto| input.get_field(u32::try_from(proto.number()).ok()?))
        .filter(|field| {
            let options = field.options().encode_to_vec();
            wire::bool_field(&options, protocol::ENTITY_KEY_EXTENSION)
                || wire::bool_field(&options, protocol::LEGACY_ENTITY_KEY_EXTENSION)
        })
        .collect()
}

fn http_rules(options: &[u8], path: &str) -> Result<Vec<HttpRule>, Error> {
    let Some(encoded) = wire::last_bytes_field(options, protocol::HTTP_EXTENSION) else {
        return Ok(vec![HttpRule {
            pattern: Some(http_rule::Pattern::Post(path.to_string())),
            body: "*".into(),
            ..HttpRule::default()
        }]);
    };
    let mut rule = HttpRule::decode(encoded).map_err(|source| Error::BadHttpRule {
        method: path.to_string(),
        source,
    })?;
    let additional = std::mem::take(&mut rule.additional_bindings);
    if additional.iter().any(|b| !b.additional_bindings.is_empty()) {
        return Err(Error::NestedAdditionalBindings {
            method: path.to_string(),
        });
    }
    let mut rules = Vec::with_capacity(1 + additional.len());
    rules.push(rule);
    rules.extend(additional);
    Ok(rules)
}

/// The encoded files of a `FileDescriptorSet`, without decoding their contents (so options,
/// extensions and unknown fields stay byte-exact).
#[derive(Clone, PartialEq, prost::Message)]
struct RawSet {
    #[prost(bytes = "bytes", repeated, tag = "1")]
    file: Vec<Bytes>,
}

/// The two fields of a `FileDescriptorProto` that dependency resolution needs.
#[derive(Clone, PartialEq, prost::Message)]
struct RawFile {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(string, repeated, tag = "3")]
    dependency: Vec<String>,
}

/// A file of a set: its name, imports and encoding.
struct FileEntry {
    name: String,
    dependencies: Vec<String>,
    encoded: Bytes,
}

fn parse_set(bytes: Bytes) -> Result<Vec<FileEntry>, Error> {
    let set = RawSet::decode(bytes).map_err(Error::DescriptorSet)?;
    set.file
        .into_iter()
        .enumerate()
        .map(|(index, encoded)| {
            let raw = RawFile::decode(encoded.clone()).map_err(Error::DescriptorSet)?;
            if raw.name.is_empty() {
                return Err(Error::UnnamedFile { index });
            }
            Ok(FileEntry {
                name: raw.name,
                dependencies: raw.dependency,
                encoded,
            })
        })
        .collect()
}

/// The files Statehouse can add to an incomplete set: everything in `schemas/proto` and its
/// imports, by name.
fn shipped_files() -> &'static HashMap<String, FileEntry> {
    static FILES: OnceLock<HashMap<String, FileEntry>> = OnceLock::new();
    FILES.get_or_init(|| {
        parse_set(Bytes::from_static(statehouse_schemas::FILE_DESCRIPTOR_SET))
            .expect("the shipped descriptor set decodes")
            .into_iter()
            .map(|f| (f.name.clone(), f))
            .collect()
    })
}

/// A missing import from what Statehouse ships, else from prost-reflect's well-known types.
fn fallback_file(name: &str) -> Option<FileEntry> {
    if let Some(f) = shipped_files().get(name) {
        return Some(FileEntry {
            name: f.name.clone(),
            dependencies: f.dependencies.clone(),
            encoded: f.encoded.clone(),
        });
    }
    let file = DescriptorPool::global().get_file_by_name(name)?;
    Some(FileEntry {
        name: name.to_string(),
        dependencies: file.dependencies().map(|d| d.name().to_string()).collect(),
        encoded: Bytes::from(file.encode_to_vec()),
    })
}

/// The user's set plus every missing import Statehouse can supply, each file once, checked for
/// missing imports and cycles; re-encoded as a `FileDescriptorSet`.
fn complete_descriptor_set(bytes: &[u8]) -> Result<Bytes, Error> {
    let mut files: Vec<FileEntry> = Vec::new();
    let mut by_name: HashMap<String, usize> = HashMap::new();
    for file in parse_set(Bytes::copy_from_slice(bytes))? {
        // A file sent twice: the first copy wins (prost-reflect would skip the second too).
        if !by_name.contains_key(&file.name) {
            by_name.insert(file.name.clone(), files.len());
            files.push(file);
        }
    }
    // Add missing imports (and theirs) breadth first.
    let mut next = 0;
    while next < files.len() {
        let dependencies = files[next].dependencies.clone();
        for dependency in dependencies {
            if by_name.contains_key(&dependency) {
                continue;
            }
            let Some(file) = fallback_file(&dependency) else {
                return Err(Error::MissingDependency {
                    file: files[next].name.clone(),
                    dependency,
                });
            };
            by_name.insert(file.name.clone(), files.len());
            files.push(file);
        }
        next += 1;
    }
    check_acyclic(&files, &by_name)?;
    let set = RawSet {
        file: files.into_iter().map(|f| f.encoded).collect(),
    };
    Ok(Bytes::from(set.encode_to_vec()))
}

fn check_acyclic(files: &[FileEntry], by_name: &HashMap<String, usize>) -> Result<(), Error> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    let mut marks = vec![Mark::New; files.len()];
    for start in 0..files.len() {
        if marks[start] != Mark::New {
            continue;
        }
        // Iterative depth-first search: (file, next dependency to visit).
        let mut stack = vec![(start, 0usize)];
        marks[start] = Mark::Open;
        while let Some((file, dep)) = stack.last_mut() {
            let file = *file;
            let Some(name) = files[file].dependencies.get(*dep) else {
                marks[file] = Mark::Done;
                stack.pop();
                continue;
            };
            *dep += 1;
            let target = by_name[name];
            match marks[target] {
                Mark::Done => {}
                Mark::New => {
                    marks[target] = Mark::Open;
                    stack.push((target, 0));
                }
                Mark::Open => {
                    let mut cycle: Vec<&str> = stack
                        .iter()
                        .skip_while(|(f, _)| *f != target)
                        .map(|(f, _)| files[*f].name.as_str())
                        .collect();
                    cycle.push(&files[target].name);
                    return Err(Error::ImportCycle {
                        cycle: cycle.join(" -> "),
                    });
                }
            }
        }
    }
    Ok(())
}

/// Just enough of the protobuf wire format to find options and key fields by number.
mod wire {
    /// One field of an encoded message.
    pub(super) enum Field<'a> {
        Varint(u64),
        Fixed64([u8; 8]),
        Bytes(&'a [u8]),
        Fixed32([u8; 4]),
    }

    fn varint(buf: &mut &[u8]) -> Option<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = buf.split_first()?;
            *buf = rest;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    }

    /// The next field of `buf` (not empty); `None` if it is malformed or a group.
    fn field<'a>(buf: &mut &'a [u8]) -> Option<(u32, Field<'a>)> {
        let key = varint(buf)?;
        let number = u32::try_from(key >> 3).ok()?;
        let field = match key & 7 {
            0 => Field::Varint(varint(buf)?),
            1 => {
                let (value, rest) = buf.split_first_chunk::<8>()?;
                *buf = rest;
                Field::Fixed64(*value)
            }
            2 => {
                let len = usize::try_from(varint(buf)?).ok()?;
                let (value, rest) = (buf.get(..len)?, buf.get(len..)?);
                *buf = rest;
                Field::Bytes(value)
            }
            5 => {
                let (value, rest) = buf.split_first_chunk::<4>()?;
                *buf = rest;
                Field::Fixed32(*value)
            }
            // Groups never occur in options Statehouse reads (a request with one takes the
            // full decode).
            _ => return None,
        };
        Some((number, field))
    }

    /// The fields of `buf`, stopping at the first malformed one.
    fn fields(mut buf: &[u8]) -> impl Iterator<Item = (u32, Field<'_>)> {
        std::iter::from_fn(move || {
            if buf.is_empty() {
                return None;
            }
            field(&mut buf)
        })
    }

    /// Hand every field of `buf` to `f` until it returns false; true when `buf` is well-formed
    /// (no field number 0, no group, nothing truncated) and `f` took every field.
    pub(super) fn each_field(mut buf: &[u8], mut f: impl FnMut(u32, Field<'_>) -> bool) -> bool {
        while !buf.is_empty() {
            match field(&mut buf) {
                Some((number, value)) if number > 0 => {
                    if !f(number, value) {
                        return false;
                    }
                }
                _ => return false,
            }
        }
        true
    }

    /// The value of bool field `number` (the last occurrence wins, as in protobuf).
    pub(super) fn bool_field(buf: &[u8], number: u32) -> bool {
        fields(buf)
            .filter(|(n, _)| *n == number)
            .filter_map(|(_, f)| match f {
                Field::Varint(v) => Some(v != 0),
                _ => None,
            })
            .last()
            .unwrap_or(false)
    }

    /// The last length-delimited occurrence of field `number`.
    pub(super) fn last_bytes_field(buf: &[u8], number: u32) -> Option<&[u8]> {
        fields(buf)
            .filter(|(n, _)| *n == number)
            .filter_map(|(_, f)| match f {
                Field::Bytes(b) => Some(b),
                _ => None,
            })
            .last()
    }
}

#[cfg(test)]
mod tests;
