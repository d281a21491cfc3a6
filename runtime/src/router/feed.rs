//! Feeds a [`Registry`] from Kafka: the `<prefix>services` topic (Avro `ServiceRecord`s keyed
//! by service name) and the `<prefix>routing` topic (Avro `RoutingRecord`s keyed
//! `<service>/<partition>`), both compacted.
//!
//! One reader (`statehouse_kafka::reader::follow`, its own group id, `read_committed`, never
//! committing offsets) follows every partition of both topics from the beginning: every gateway
//! and processor (and every restart) rebuilds the whole registry from the compacted topics. A
//! tombstone removes the service or the partition owner. Records that do not decode or validate
//! are logged and skipped (a bad service record leaves the previous version of the service in
//! place).

use std::time::Duration;

use statehouse_core::topics::{routing_topic, services_topic};
use statehouse_kafka::admin::Admin;
use statehouse_schemas::avro::{AvroRecord, RoutingRecord, ServiceRecord};
use tokio_util::sync::CancellationToken;

use super::Registry;

/// How long to wait before looking again for topics that do not exist yet.
const TOPIC_POLL: Duration = Duration::from_secs(1);

/// The errors of the feed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The reader could not be created, or topic metadata could not be read.
    #[error("service registry reader: {0}")]
    Kafka(#[from] statehouse_kafka::Error),
}

/// Consumes the registry topics into `registry` until `shutdown`. Waits for the topics to
/// exist (a gateway may start before the first processor).
pub async fn run(
    options: &statehouse_kafka::Options,
    registry: Registry,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let services = services_topic(&options.topic_prefix);
    let routing = routing_topic(&options.topic_prefix);
    let admin = Admin::new(options)?;
    let mut assignment = Vec::new();
    for topic in [&services, &routing] {
        let partitions = loop {
            match admin.partition_count(topic).await {
                Ok(Some(n)) if n > 0 => break n,
                Ok(_) => tracing::info!(topic, "waiting for the registry topic to exist"),
                Err(e) => {
                    tracing::warn!(topic, error = %e, "reading registry topic metadata failed; retrying")
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(TOPIC_POLL) => {}
            }
        };
        assignment.extend((0..partitions).map(|p| (topic.as_str(), p, 0)));
    }
    let mut records = statehouse_kafka::reader::follow(options, &assignment, shutdown.clone())?;
    tracing::info!(services, routing, "consuming the service registry");
    loop {
        let (topic, message) = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            message = records.recv() => match message {
                Some(message) => message,
                None => return Ok(()),
            },
        };
        let key = message
            .key
            .as_deref()
            .and_then(|k| std::str::from_utf8(k).ok());
        if *topic == *services {
            apply_service(&registry, key, message.value.as_deref());
        } else if *topic == *routing {
            apply_routing(&registry, key, message.value.as_deref());
        }
    }
}

/// Applies one record of the services topic.
pub fn apply_service(registry: &Registry, key: Option<&str>, payload: Option<&[u8]>) {
    match payload {
        None => match key {
            Some(service) => registry.remove_service(service),
            None => tracing::warn!("services tombstone without a key ignored"),
        },
        Some(bytes) => match ServiceRecord::decode(bytes) {
            Ok(record) => {
                if let Err(e) = registry.apply_service(record) {
                    tracing::error!(error = %e, "service record refused; the previous version (if any) stays");
                }
            }
            Err(e) => tracing::error!(?key, error = %e, "undecodable service record skipped"),
        },
    }
}

/// Applies one record of the routing topic.
pub fn apply_routing(registry: &Registry, key: Option<&str>, payload: Option<&[u8]>) {
    match payload {
        None => match key.and_then(parse_routing_key) {
            Some((service, partition)) => registry.remove_routing(service, partition),
            None => tracing::warn!(?key, "routing tombstone with a bad key ignored"),
        },
        Some(bytes) => match RoutingRecord::decode(bytes) {
            Ok(record) => {
                if !registry.apply_routing(record) {
                    tracing::debug!(?key, "stale routing record ignored");
                }
            }
            Err(e) => tracing::error!(?key, error = %e, "undecodable routing record skipped"),
        },
    }
}

/// `<service>/<partition>`.
fn parse_routing_key(key: &str) -> Option<(&str, u32)> {
    let (service, partition) = key.rsplit_once('/')?;
    Some((service, partition.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_keys_and_tombstones() {
        assert_eq!(parse_routing_key("cart/3"), Some(("cart", 3)));
        assert_eq!(parse_routing_key("a/b/12"), Some(("a/b", 12)));
        assert_eq!(parse_routing_key("cart"), None);
        assert_eq!(parse_routing_key("cart/x"), None);

        let registry = Registry::new();
        let record = RoutingRecord {
            service: "cart".into(),
            partition: 3,
            owner_processor_id: "p0".into(),
            owner_endpoint: "http://127.0.0.1:9100".into(),
            epoch: 2,
            updated_at_ms: 0,
        };
        apply_routing(&registry, Some("cart/3"), Some(&record.encode().unwrap()));
        assert_eq!(registry.owner("cart", 3).unwrap().epoch, 2);
        apply_routing(&registry, Some("cart/3"), Some(b"garbage"));
        assert_eq!(
            registry.owner("cart", 3).unwrap().epoch,
            2,
            "garbage is skipped"
        );
        apply_routing(&registry, Some("cart/3"), None);
        assert_eq!(
            registry.owner("cart", 3),
            None,
            "a tombstone removes the owner"
        );
        apply_service(&registry, Some("cart"), Some(b"garbage"));
        assert!(registry.routes().is_empty());
    }
}
