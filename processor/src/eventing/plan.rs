//! Which consumers the `(cloudstate.eventing)` options of a user function ask for, validated as
//! the reference proxy does (with its texts), plus what Statehouse adds: an event log must be
//! the persistence id of one of the service's event-sourced entities.
//!
//! Methods whose `in` sources are equal (the same event log or topic and the same consumer
//! group) share one consumer, and each event goes to the method whose input type is the
//! event's type, else to the one taking `google.protobuf.Any`; two methods of one consumer may
//! not take the same type.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use statehouse_runtime::method_index::{EntityKind, MethodIndex, MethodInfo};
use statehouse_schemas::cloudstate::{event_destination, event_source};

/// The input type of a method that takes events of any type.
pub(crate) const ANY: &str = "google.protobuf.Any";

/// Where a consumer's events come from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Source {
    /// The journal of the event-sourced entities with this persistence id.
    EventLog(String),
    /// A Kafka topic.
    Topic(String),
}

impl Source {
    /// How the source appears in group names and logs.
    pub(crate) fn label(&self) -> String {
        match self {
            Source::EventLog(id) => format!("log.{id}"),
            Source::Topic(topic) => format!("topic.{topic}"),
        }
    }
}

/// One consumer: a source, a consumer group, and the methods its events go to.
#[derive(Debug, Clone)]
pub(crate) struct Subscription {
    pub(crate) source: Source,
    /// The `consumer_group` of the source (default: the declaring service's name).
    pub(crate) consumer_group: String,
    /// The methods by input type full name.
    pub(crate) by_type: BTreeMap<String, Arc<MethodInfo>>,
}

impl Subscription {
    /// The method an event of `type_url` goes to: the one taking its type (the text after the
    /// first `/`), else the one taking `google.protobuf.Any`; JSON and primitive events
    /// (`json.cloudstate.io/`, `p.cloudstate.io/`) only the latter.
    pub(crate) fn route(&self, type_url: &str) -> Option<&Arc<MethodInfo>> {
        let generic = type_url.starts_with(statehouse_schemas::protocol::JSON_TYPE_URL_PREFIX)
            || type_url.starts_with(statehouse_schemas::protocol::PRIMITIVE_TYPE_URL_PREFIX);
        if !generic {
            let name = type_url.split_once('/').map_or(type_url, |(_, name)| name);
            if let Some(method) = self.by_type.get(name) {
                return Some(method);
            }
        }
        self.by_type.get(ANY)
    }

    /// The error of an event no method takes (the reference proxy's text).
    pub(crate) fn unroutable(&self, type_url: &str) -> String {
        let source = match &self.source {
            Source::EventLog(id) => format!("EventLog({id})"),
            Source::Topic(topic) => format!("Topic({topic})"),
        };
        format!(
            "No method can be found to handle protobuf type of [{type_url}] on input {source}. Either declare a method for this type, or declare a method that accepts google.protobuf.Any."
        )
    }
}

/// What the options ask for: the consumers, and the topics methods publish to.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    pub(crate) subscriptions: Vec<Subscription>,
    /// The `out` topics.
    pub(crate) outputs: BTreeSet<String>,
}

impl Plan {
    /// The Kafka topics the plan reads (`in.topic`) and writes (`out.topic`), each once.
    pub(crate) fn topics(&self) -> Vec<String> {
        let inputs = self.subscriptions.iter().filter_map(|s| match &s.source {
            Source::Topic(topic) => Some(topic.clone()),
            Source::EventLog(_) => None,
        });
        let all: BTreeSet<String> = inputs.chain(self.outputs.iter().cloned()).collect();
        all.into_iter().collect()
    }
}

/// The plan of `index`, whose event-sourced entities have the persistence ids `journals`.
pub(crate) fn plan(index: &MethodIndex, journals: &BTreeSet<String>) -> Result<Plan, String> {
    let mut plan = Plan::default();
    let mut consumers: BTreeMap<(Source, String), Subscription> = BTreeMap::new();
    let mut methods: Vec<&Arc<MethodInfo>> = index.methods().collect();
    methods.sort_by(|a, b| a.path.cmp(&b.path));
    for method in methods {
        let Some(eventing) = &method.eventing else {
            continue;
        };
        let full_name = format!("{}.{}", method.service, method.name);
        let input = method.input.full_name().to_string();
        if let Some(out) = &eventing.out {
            let Some(event_destination::Destination::Topic(topic)) = &out.destination else {
                return Err(format!(
                    "Service call [{full_name}] has declared an event out with no topic."
                ));
            };
            if let Some(event_source::Source::Topic(input_topic)) =
                eventing.r#in.as_ref().and_then(|i| i.source.as_ref())
                && input_topic == topic
            {
                return Err(format!(
                    "Endpoint [{full_name}] has the same input topic as output topic [{topic}], this is not allowed."
                ));
            }
            plan.outputs.insert(topic.clone());
        }
        let Some(source) = &eventing.r#in else {
            continue;
        };
        // An event is one message: the subscriber takes it unary, or (an action) answers it
        // with a stream.
        let is_action = method.entity.kind() == Some(EntityKind::Action);
        if method.client_streaming || (method.server_streaming && !is_action) {
            return Err(format!(
                "Eventing consumer [{full_name}] streams its input{}: a subscriber takes one event per call (a unary method, or a server-streaming action method).",
                if method.client_streaming {
                    ""
                } else {
                    " from an entity"
                }
            ));
        }
        let source_kind = match &source.source {
            None => {
                return Err(format!(
                    "Eventing consumer [{input}] has declared an input with no source."
                ));
            }
            Some(event_source::Source::EventLog(id)) => {
                if !journals.contains(id) {
                    return Err(format!(
                        "Eventing consumer [{full_name}] subscribes to the event log [{id}], but no event-sourced entity of this service has that persistence id."
                    ));
                }
                Source::EventLog(id.clone())
            }
            Some(event_source::Source::Topic(topic)) => Source::Topic(topic.clone()),
        };
        let group = if source.consumer_group.is_empty() {
            method.service.clone()
        } else {
            source.consumer_group.clone()
        };
        let consumer = consumers
            .entry((source_kind.clone(), group.clone()))
            .or_insert_with(|| Subscription {
                source: source_kind,
                consumer_group: group,
                by_type: BTreeMap::new(),
            });
        if let Some(other) = consumer.by_type.get(&input) {
            return Err(format!(
                "Endpoints [{}.{}] and [{full_name}] both subscribe to the same event source with the same input type. If you wish to define two independent consumers of the same event source, use the consumer_group annotation on the source to identify them.",
                other.service, other.name
            ));
        }
        consumer.by_type.insert(input, Arc::clone(method));
    }
    plan.subscriptions = consumers.into_values().collect();
    Ok(plan)
}

#[cfg(test)]
mod tests;
