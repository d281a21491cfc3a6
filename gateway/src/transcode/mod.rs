//! HTTP/JSON transcoding (`docs/protocol.md`, "Exposing services to clients"):
//! `google.api.http` rules turn HTTP requests with JSON bodies into request messages, and reply
//! messages into JSON.
//!
//! * **Rules.** Every unary or server-streaming method has the bindings of its
//!   `MethodInfo::http_rules` (its
//!   `google.api.http` rule with one level of `additional_bindings`, or the default
//!   `POST /pkg.Service/Method` with body `*`). Verbs get, put, post, delete, patch and custom
//!   (`*` = any method). Bindings are tried most specific first (more literal segments, a verb,
//!   fewer `**`).
//! * **Requests.** The message is assembled as proto3 JSON — the body (`"*"`: the whole
//!   message; a field name: that field; `""`: none), then query parameters (not with `"*"`),
//!   then path variables (which win) — and parsed once with the method's input descriptor. A
//!   body needs `Content-Type: application/json`.
//! * **Responses.** Proto3 JSON with default values included, lowerCamel names, 64-bit integers
//!   as strings and no insignificant whitespace; `response_body` selects one field; an output of
//!   type `google.api.HttpBody` is sent raw with its own content type.

mod template;

use std::sync::Arc;

use bytes::Bytes;
use http::Method;
use percent_encoding::percent_decode_str;
use prost::Message as _;
use prost_reflect::{
    DeserializeOptions, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, SerializeOptions,
    Value as ProtoValue,
};
use serde_json::{Map, Value};
use statehouse_schemas::google::api::{HttpRule, http_rule::Pattern};

use crate::Error;
use statehouse_runtime::router::{Route, Routes};

pub(crate) use template::Template;

/// The full name of the raw-body output type.
const HTTP_BODY: &str = "google.api.HttpBody";

/// Which part of the request message the HTTP body holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BodyRule {
    /// `body: ""`: no body; query parameters and path variables only.
    None,
    /// `body: "*"`: the whole message.
    All,
    /// `body: "field"`: that field of the message.
    Field(FieldDescriptor),
}

/// One HTTP binding of a method.
#[derive(Debug, Clone)]
pub(crate) struct Binding {
    /// The method and its service.
    pub(crate) route: Route,
    /// `None` = any method (custom kind `*`).
    method: Option<Method>,
    template: Template,
    body: BodyRule,
    response_body: Option<FieldDescriptor>,
}

impl Binding {
    fn from_rule(route: &Route, rule: &HttpRule) -> Result<Binding, String> {
        let (method, path) =
            match rule.pattern.as_ref().ok_or("the rule has no pattern")? {
                Pattern::Get(p) => (Some(Method::GET), p),
                Pattern::Put(p) => (Some(Method::PUT), p),
                Pattern::Post(p) => (Some(Method::POST), p),
                Pattern::Delete(p) => (Some(Method::DELETE), p),
                Pattern::Patch(p) => (Some(Method::PATCH), p),
                Pattern::Custom(custom) if custom.kind == "*" => (None, &custom.path),
                Pattern::Custom(custom) => (
                    Some(Method::from_bytes(custom.kind.as_bytes()).map_err(|_| {
                        format!("custom kind {:?} is not an HTTP method", custom.kind)
                    })?),
                    &custom.path,
                ),
            };
        let template = Template::parse(path).map_err(|e| e.to_string())?;
        let input = &route.method.input;
        for field_path in template.field_paths() {
            resolve_path(input, field_path)?;
        }
        let body = match rule.body.as_str() {
            "" => BodyRule::None,
            "*" => BodyRule::All,
            name => BodyRule::Field(input.get_field_by_name(name).ok_or_else(|| {
                format!(
                    "body field {name:?} is not a field of {}",
                    input.full_name()
                )
            })?),
        };
        let response_body = match rule.response_body.as_str() {
            "" => None,
            name => Some(route.method.output.get_field_by_name(name).ok_or_else(|| {
                format!(
                    "response_body field {name:?} is not a field of {}",
                    route.method.output.full_name()
                )
            })?),
        };
        Ok(Binding {
            route: route.clone(),
            method,
            template,
            body,
            response_body,
        })
    }

    /// Whether the request must have a JSON body.
    pub(crate) fn expects_body(&self) -> bool {
        self.body != BodyRule::None
    }
}

/// The HTTP bindings of every routable method, most specific first.
#[derive(Debug, Default)]
pub(crate) struct Table {
    version: u64,
    bindings: Vec<Binding>,
}

impl Table {
    /// The bindings of `routes`; rules that do not make sense are logged and skipped.
    pub(crate) fn build(routes: &Routes) -> Table {
        let mut bindings = Vec::new();
        let mut methods: Vec<&Route> = routes.methods().collect();
        methods.sort_by(|a, b| a.method.path.cmp(&b.method.path));
        for route in methods {
            // Client streams have no HTTP/JSON form; server streams answer a JSON stream.
            if route.method.client_streaming {
                continue;
            }
            for rule in &route.method.http_rules {
                match Binding::from_rule(route, rule) {
                    Ok(binding) => bindings.push(binding),
                    Err(reason) => {
                        tracing::warn!(method = %route.method.path, reason, "HTTP rule skipped")
                    }
                }
            }
        }
        // Stable: equally specific bindings keep their method-path order.
        bindings.sort_by_key(|b| std::cmp::Reverse(b.template.specificity()));
        Table {
            version: routes.version(),
            bindings,
        }
    }

    /// The routes version this table was built from.
    pub(crate) fn version(&self) -> u64 {
        self.version
    }

    /// The first binding that matches, with its path variables (an error if one is not UTF-8
    /// once percent-decoded).
    pub(crate) fn find(&self, method: &Method, path: &str) -> Option<(&Binding, PathVariables)> {
        self.bindings.iter().find_map(|binding| {
            if binding.method.as_ref().is_some_and(|m| m != method) {
                return None;
            }
            binding.template.matches(path).map(|vars| {
                let vars = vars.map_err(|raw| {
                    Error::MalformedRequest(format!(
                        "the path segment {raw:?} is not UTF-8 once percent-decoded (path values such as entity ids must be UTF-8)"
                    ))
                });
                (binding, vars)
            })
        })
    }
}

/// The path variables of a matched binding, by field path — or why they cannot be used (a
/// value that is not UTF-8 once percent-decoded).
pub(crate) type PathVariables = Result<Vec<(String, String)>, Error>;

/// A cached [`Table`], rebuilt when the routes change.
#[derive(Debug, Default)]
pub(crate) struct Cache {
    table: std::sync::RwLock<Arc<Table>>,
}

impl Cache {
    /// The table for `routes`.
    pub(crate) fn table(&self, routes: &Routes) -> Arc<Table> {
        {
            let table = self.table.read().unwrap_or_else(|e| e.into_inner());
            if table.version() == routes.version() {
                return Arc::clone(&table);
            }
        }
        let table = Arc::new(Table::build(routes));
        *self.table.write().unwrap_or_else(|e| e.into_inner()) = Arc::clone(&table);
        table
    }
}

/// The encoded request message of an HTTP request.
pub(crate) fn request_message(
    binding: &Binding,
    variables: Vec<(String, String)>,
    query: Option<&str>,
    body: &[u8],
) -> Result<Bytes, Error> {
    let input = &binding.route.method.input;
    let mut root = Map::new();
    let parse_body = || -> Result<Value, Error> {
        serde_json::from_slice(body)
            .map_err(|e| Error::MalformedRequest(format!("invalid JSON body: {e}")))
    };
    match &binding.body {
        BodyRule::None => {}
        BodyRule::All => {
            if !body.is_empty() {
                match parse_body()? {
                    Value::Object(object) => root = object,
                    _ => {
                        return Err(Error::MalformedRequest(format!(
                            "the body must be a JSON object ({})",
                            input.full_name()
                        )));
                    }
                }
            }
        }
        BodyRule::Field(field) => {
            if !body.is_empty() {
                root.insert(field.name().to_string(), parse_body()?);
            }
        }
    }
    if binding.body != BodyRule::All
        && let Some(query) = query
    {
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let key = form_decode(key)?;
            let field = resolve_path(input, &key).map_err(Error::MalformedRequest)?;
            if let BodyRule::Field(body_field) = &binding.body
                && key.split('.').next() == Some(body_field.name())
            {
                return Err(Error::MalformedRequest(format!(
                    "query parameter {key:?} sets a field of the body"
                )));
            }
            set_path(&mut root, input, &key, &field, &form_decode(value)?)?;
        }
    }
    for (path, value) in variables {
        let field = resolve_path(input, &path).map_err(Error::MalformedRequest)?;
        set_path(&mut root, input, &path, &field, &value)?;
    }
    let message = DynamicMessage::deserialize_with_options(
        input.clone(),
        Value::Object(root),
        &DeserializeOptions::new(),
    )
    .map_err(|e| Error::MalformedRequest(e.to_string()))?;
    Ok(message.encode_to_vec().into())
}

/// The HTTP body of a reply: its content type and bytes.
pub(crate) fn response_body(binding: &Binding, reply: &[u8]) -> Result<(String, Bytes), Error> {
    let output = &binding.route.method.output;
    let bad_reply = |reason: String| Error::BadReply {
        message: output.full_name().to_string(),
        reason,
    };
    let message =
        DynamicMessage::decode(output.clone(), reply).map_err(|e| bad_reply(e.to_string()))?;
    if output.full_name() == HTTP_BODY {
        let content_type = match message.get_field_by_name("content_type").as_deref() {
            Some(ProtoValue::String(s)) if !s.is_empty() => s.clone(),
            _ => "application/octet-stream".to_string(),
        };
        let data = match message.get_field_by_name("data").as_deref() {
            Some(ProtoValue::Bytes(b)) => b.clone(),
            _ => Bytes::new(),
        };
        return Ok((content_type, data));
    }
    let json = match &binding.response_body {
        None => print_message(&message),
        Some(field) => print_field(&message, field),
    }
    .map_err(|e| bad_reply(e.to_string()))?;
    Ok(("application/json".to_string(), json.into()))
}

fn print_options() -> SerializeOptions {
    SerializeOptions::new().skip_default_fields(false)
}

/// Proto3 JSON of a message: defaults included, no whitespace, fields in declaration order.
pub(crate) fn print_message(message: &DynamicMessage) -> Result<Vec<u8>, serde_json::Error> {
    let mut out = Vec::with_capacity(128);
    let mut serializer = serde_json::Serializer::new(&mut out);
    message.serialize_with_options(&mut serializer, &print_options())?;
    Ok(out)
}

/// Proto3 JSON of one field of a message.
fn print_field(
    message: &DynamicMessage,
    field: &FieldDescriptor,
) -> Result<Vec<u8>, serde_json::Error> {
    let value = message.get_field(field);
    match value.as_ref() {
        ProtoValue::Message(inner) => print_message(inner),
        ProtoValue::List(items) if matches!(field.kind(), Kind::Message(_)) => {
            let mut out = vec![b'['];
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                if let ProtoValue::Message(inner) = item {
                    out.extend(print_message(inner)?);
                }
            }
            out.push(b']');
            Ok(out)
        }
        _ => {
            // Scalars, lists of scalars and maps: take the field from the message's JSON.
            let json: Value =
                message.serialize_with_options(serde_json::value::Serializer, &print_options())?;
            serde_json::to_vec(json.get(field.json_name()).unwrap_or(&Value::Null))
        }
    }
}

/// `application/x-www-form-urlencoded` decoding of a query key or value; never lossy (two
/// different raw values must not become the same one).
fn form_decode(s: &str) -> Result<String, Error> {
    percent_decode_str(&s.replace('+', " "))
        .decode_utf8()
        .map(std::borrow::Cow::into_owned)
        .map_err(|_| {
            Error::MalformedRequest(format!(
                "the query parameter {s:?} is not UTF-8 once percent-decoded"
            ))
        })
}

/// The field a dotted path (proto or JSON names) names in `message`; every step but the last
/// must be a singular message field.
fn resolve_path(message: &MessageDescriptor, path: &str) -> Result<FieldDescriptor, String> {
    let mut current = message.clone();
    let mut segments = path.split('.').peekable();
    while let Some(segment) = segments.next() {
        let field = current
            .get_field_by_name(segment)
            .or_else(|| current.get_field_by_json_name(segment))
            .ok_or_else(|| format!("{path:?}: {} has no field {segment:?}", current.full_name()))?;
        if segments.peek().is_none() {
            return Ok(field);
        }
        match field.kind() {
            Kind::Message(inner) if !field.is_list() && !field.is_map() => current = inner,
            _ => {
                return Err(format!(
                    "{path:?}: {} is not a message field",
                    field.full_name()
                ));
            }
        }
    }
    Err(format!("empty field path {path:?}"))
}

/// Sets (or, for repeated fields, appends) the value of a path variable or query parameter in
/// the JSON object being assembled. Proto names are used as keys; a JSON-name key for the same
/// field (from the body) is replaced.
fn set_path(
    root: &mut Map<String, Value>,
    message: &MessageDescriptor,
    path: &str,
    leaf: &FieldDescriptor,
    value: &str,
) -> Result<(), Error> {
    let mut object = root;
    let mut current = message.clone();
    let segments: Vec<&str> = path.split('.').collect();
    for segment in &segments[..segments.len() - 1] {
        let field = current
            .get_field_by_name(segment)
            .or_else(|| current.get_field_by_json_name(segment))
            .ok_or_else(|| Error::MalformedRequest(format!("unknown field {path:?}")))?;
        let existing = object.remove(field.json_name());
        let entry = object
            .entry(field.name().to_string())
            .or_insert_with(|| existing.unwrap_or_else(|| Value::Object(Map::new())));
        object = match entry {
            Value::Object(inner) => inner,
            _ => {
                return Err(Error::MalformedRequest(format!(
                    "{path:?}: {} is not an object in the body",
                    field.name()
                )));
            }
        };
        current = match field.kind() {
            Kind::Message(inner) => inner,
            _ => return Err(Error::MalformedRequest(format!("unknown field {path:?}"))),
        };
    }
    let json = scalar_json(leaf, value)
        .map_err(|reason| Error::MalformedRequest(format!("{path:?}: {reason}")))?;
    if leaf.json_name() != leaf.name() {
        object.remove(leaf.json_name());
    }
    if leaf.is_list() {
        match object
            .entry(leaf.name().to_string())
            .or_insert_with(|| Value::Array(Vec::new()))
        {
            Value::Array(items) => items.push(json),
            other => *other = Value::Array(vec![json]),
        }
    } else {
        object.insert(leaf.name().to_string(), json);
    }
    Ok(())
}

/// The proto3 JSON form of a textual value for a field.
fn scalar_json(field: &FieldDescriptor, value: &str) -> Result<Value, String> {
    let kind = match field.kind() {
        // Wrappers (google.protobuf.Int32Value …) take their wrapped value's JSON.
        Kind::Message(m) if m.full_name().starts_with("google.protobuf.") => {
            match m.get_field_by_name("value") {
                Some(inner) if m.full_name().ends_with("Value") => inner.kind(),
                // Timestamp, Duration, FieldMask: JSON strings.
                _ => return Ok(Value::String(value.to_string())),
            }
        }
        Kind::Message(m) => return Err(format!("cannot set message {} from text", m.full_name())),
        kind => kind,
    };
    Ok(match kind {
        Kind::Bool => match value {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => return Err(format!("{value:?} is not a bool")),
        },
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 | Kind::Uint32 | Kind::Fixed32 => {
            let n: i64 = value
                .parse()
                .map_err(|_| format!("{value:?} is not an integer"))?;
            Value::from(n)
        }
        Kind::Float | Kind::Double => match value.parse::<f64>() {
            Ok(n) if n.is_finite() => Value::from(n),
            // "NaN", "Infinity", "-Infinity" are valid proto3 JSON strings.
            _ => Value::String(value.to_string()),
        },
        Kind::Enum(_) => match value.parse::<i32>() {
            Ok(n) => Value::from(n),
            Err(_) => Value::String(value.to_string()),
        },
        // 64-bit integers, strings and bytes (base64) as strings.
        _ => Value::String(value.to_string()),
    })
}

#[cfg(test)]
mod tests;
