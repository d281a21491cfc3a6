//! Discovery (`docs/protocol.md`, "Discovery"): what the user function serves, validated, and
//! what of it this processor serves.
//!
//! The processor asks with the entity types it implements, but SDKs answer with everything
//! they registered (the Go SDK ignores `supported_entity_types`). Entities of a type not built
//! (legacy stateless functions) are **reported, not fatal**: they are logged, told to the user function with `reportError`,
//! and left out of the service record, so clients get UNIMPLEMENTED for them while everything
//! else is served.

use bytes::Bytes;
use statehouse_kafka::publisher::Publisher;
use statehouse_runtime::config::ProcessorOptions;
use statehouse_runtime::method_index::MethodIndex;
use statehouse_schemas::avro::{self, AvroRecord};
use statehouse_schemas::cloudstate::{self as cs, EntitySpec};
use statehouse_schemas::protocol;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::Error;
use crate::user_function::UserFunction;

/// The entity types this processor implements (sent in `ProxyInfo`).
pub(crate) const SUPPORTED_ENTITY_TYPES: &[&str] = &[
    protocol::EVENT_SOURCED,
    protocol::VALUE_ENTITY,
    protocol::CRDT,
    protocol::ACTION,
];

/// What discovery found.
pub(crate) struct Discovered {
    pub(crate) info: cs::ServiceInfo,
    /// The served entities' methods.
    pub(crate) index: MethodIndex,
    /// The served entities, as the user function described them.
    pub(crate) served: Vec<cs::Entity>,
    /// What is not served, one line each (empty when everything is).
    pub(crate) not_served: Vec<String>,
    /// The eventing subscriptions and outputs the methods declare.
    pub(crate) eventing: crate::eventing::plan::Plan,
}

/// Discover the user function (retrying until it answers) and validate what it describes.
pub(crate) async fn discover(
    uf: &UserFunction,
    options: &ProcessorOptions,
    shutdown: &CancellationToken,
) -> Result<Discovered, Error> {
    let spec = uf.discover(SUPPORTED_ENTITY_TYPES, shutdown).await?;
    match validate(spec, options.strict_protocol_version) {
        Ok(discovered) => {
            if !discovered.not_served.is_empty() {
                let message = format!(
                    "Warning: Statehouse does not serve these yet; everything else is served: {}",
                    discovered.not_served.join("; ")
                );
                warn!("{message}");
                uf.report_error(&message).await;
            }
            Ok(discovered)
        }
        Err(message) => {
            uf.report_error(&message).await;
            Err(Error::UserFunction(message))
        }
    }
}

/// Validate a spec: the protocol version, then the served entities (as the reference proxy
/// does); the rest is listed as not served. The error is the text for `reportError`.
fn validate(spec: EntitySpec, strict_version: bool) -> Result<Discovered, String> {
    let info = spec.service_info.clone().unwrap_or_default();
    let version = (info.protocol_major_version, info.protocol_minor_version);
    if version != (protocol::MAJOR_VERSION, protocol::MINOR_VERSION) {
        let message = format!(
            "Incompatible protocol version {}.{}, only {}.{} is supported",
            version.0,
            version.1,
            protocol::MAJOR_VERSION,
            protocol::MINOR_VERSION
        );
        if strict_version || version.0 > protocol::MAJOR_VERSION {
            return Err(message);
        }
        warn!(library = %info.support_library_name, version = %info.support_library_version, "{message}; accepting a legacy SDK (processor.strict-protocol-version = false)");
    }
    let (served, unserved): (Vec<cs::Entity>, Vec<cs::Entity>) = spec
        .entities
        .into_iter()
        .partition(|e| SUPPORTED_ENTITY_TYPES.contains(&e.entity_type.as_str()));
    let not_served: Vec<String> = unserved
        .iter()
        .map(|e| format!("{} ({} entities)", e.service_name, e.entity_type))
        .collect();
    if served.is_empty() && !not_served.is_empty() {
        return Err(format!(
            "Invalid entity spec: none of its entities is of a type Statehouse serves ({}); not served: {}",
            SUPPORTED_ENTITY_TYPES.join(", "),
            not_served.join("; ")
        ));
    }
    let index = MethodIndex::build(&spec.proto, &served, SUPPORTED_ENTITY_TYPES)
        .map_err(|e| format!("Invalid entity spec: {e}"))?;
    let journals = served
        .iter()
        .filter(|e| e.entity_type == protocol::EVENT_SOURCED)
        .map(|e| e.persistence_id.clone())
        .collect();
    let eventing = crate::eventing::plan::plan(&index, &journals)
        .map_err(|e| format!("Invalid eventing configuration: {e}"))?;
    Ok(Discovered {
        info,
        index,
        served,
        not_served,
        eventing,
    })
}

/// Publish the service record: the served entities and this processor's endpoint.
pub(crate) async fn publish(
    publisher: &Publisher,
    topic: &str,
    service: &str,
    discovered: &Discovered,
    processor: avro::Processor,
) -> Result<(), Error> {
    let info = discovered.info.clone();
    let record = avro::ServiceRecord {
        service: service.to_string(),
        descriptor_set: Bytes::copy_from_slice(discovered.index.file_descriptor_set()),
        entities: discovered
            .served
            .iter()
            .map(|e| avro::Entity {
                entity_type: e.entity_type.clone(),
                service_name: e.service_name.clone(),
                persistence_id: e.persistence_id.clone(),
                passivation_timeout_ms: e
                    .passivation_strategy
                    .as_ref()
                    .and_then(|p| p.strategy.as_ref())
                    .map(|cs::entity_passivation_strategy::Strategy::Timeout(t)| t.timeout),
            })
            .collect(),
        processors: vec![processor],
        protocol_major: info.protocol_major_version,
        protocol_minor: info.protocol_minor_version,
        support_library_name: info.support_library_name,
        support_library_version: info.support_library_version,
        updated_at_ms: crate::entity::now_ms(),
    };
    let value = record
        .encode()
        .map_err(|e| Error::Journal(format!("encoding the service record: {e}")))?;
    publisher.publish(topic, service, &value).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entity(entity_type: &str, service: &str) -> cs::Entity {
        cs::Entity {
            entity_type: entity_type.into(),
            service_name: service.into(),
            persistence_id: "p".into(),
            passivation_strategy: None,
        }
    }

    fn spec(entities: Vec<cs::Entity>, version: (i32, i32)) -> EntitySpec {
        EntitySpec {
            proto: statehouse_schemas::FILE_DESCRIPTOR_SET.to_vec().into(),
            entities,
            service_info: Some(cs::ServiceInfo {
                protocol_major_version: version.0,
                protocol_minor_version: version.1,
                ..Default::default()
            }),
        }
    }

    const CART: &str = "com.example.shoppingcart.ShoppingCart";

    #[test]
    fn unsupported_kinds_are_reported_not_fatal() {
        let discovered = validate(
            spec(
                vec![
                    entity(protocol::EVENT_SOURCED, CART),
                    entity(
                        protocol::LEGACY_FUNCTION,
                        "cloudstate.action.ActionProtocol",
                    ),
                ],
                (0, 2),
            ),
            true,
        )
        .unwrap();
        assert_eq!(discovered.served.len(), 1);
        assert!(discovered.index.entity(CART).is_some());
        assert_eq!(
            discovered.not_served,
            ["cloudstate.action.ActionProtocol (cloudstate.function.StatelessFunction entities)"]
        );
        // Nothing servable at all is an error.
        let err = validate(
            spec(vec![entity(protocol::LEGACY_FUNCTION, CART)], (0, 2)),
            true,
        )
        .err()
        .unwrap();
        assert!(err.contains("none of its entities"), "{err}");
    }

    #[test]
    fn the_protocol_version_is_checked() {
        let err = validate(
            spec(vec![entity(protocol::EVENT_SOURCED, CART)], (0, 1)),
            true,
        )
        .err()
        .unwrap();
        assert_eq!(
            err,
            "Incompatible protocol version 0.1, only 0.2 is supported"
        );
        assert!(
            validate(
                spec(vec![entity(protocol::EVENT_SOURCED, CART)], (0, 0)),
                false
            )
            .is_ok()
        );
        assert!(
            validate(
                spec(vec![entity(protocol::EVENT_SOURCED, CART)], (1, 0)),
                false
            )
            .is_err()
        );
    }
}
