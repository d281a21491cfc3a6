//! Names of a service's Kafka topics, transactional ids and consumer groups
//! (`ARCHITECTURE.md`, "Data paths": "Topics of a service", "Partition ownership").

use crate::ids::ServiceName;

/// The default prefix of every Statehouse topic, group and transactional id.
pub const DEFAULT_PREFIX: &str = "statehouse.";

/// Topic, group and transactional-id names for one service under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    prefix: String,
    service: ServiceName,
}

impl Topics {
    pub fn new(prefix: impl Into<String>, service: ServiceName) -> Self {
        Self {
            prefix: prefix.into(),
            service,
        }
    }

    pub fn service(&self) -> &ServiceName {
        &self.service
    }

    /// `<prefix><service>.journal`: the event journal, compacted with unique keys.
    pub fn journal(&self) -> String {
        format!("{}{}.journal", self.prefix, self.service)
    }

    /// `<prefix><service>.values`: value-entity state, compacted by entity id.
    pub fn values(&self) -> String {
        format!("{}{}.values", self.prefix, self.service)
    }

    /// `<prefix><service>.crdt`: CRDT deltas, broadcast to every processor of the service.
    pub fn crdt(&self) -> String {
        format!("{}{}.crdt", self.prefix, self.service)
    }

    /// `<prefix>services`: the service registry (shared by all services).
    pub fn services(&self) -> String {
        services_topic(&self.prefix)
    }

    /// `<prefix>routing`: partition owners (shared by all services).
    pub fn routing(&self) -> String {
        routing_topic(&self.prefix)
    }

    /// `<prefix><service>.owners`: the consumer group that assigns partitions to processors.
    pub fn owners_group(&self) -> String {
        format!("{}{}.owners", self.prefix, self.service)
    }

    /// `<prefix><service>.sub.<consumer group>.<source>`: the consumer group of an eventing
    /// subscription (`source`: `log.<persistence id>` or `topic.<topic>`).
    pub fn subscription_group(&self, consumer_group: &str, source: &str) -> String {
        format!(
            "{}{}.sub.{consumer_group}.{source}",
            self.prefix, self.service
        )
    }

    /// The consumer group of generation `generation` of projection `name`:
    /// `<prefix><service>.proj.<name>.g<generation>` (a rebuild reads from offset 0 in a group
    /// of its own while the served generation keeps its place).
    pub fn projection_group(&self, name: &str, generation: i32) -> String {
        format!("{}{}.proj.{name}.g{generation}", self.prefix, self.service)
    }

    /// `<prefix><service>.p<partition>`: the transactional id of a partition's writer. Every owner
    /// of the partition uses the same id, which is what fences the previous owner.
    pub fn transactional_id(&self, partition: u32) -> String {
        format!("{}{}.p{}", self.prefix, self.service, partition)
    }

    /// The per-service topics (journal, values, crdt), in a stable order.
    pub fn service_topics(&self) -> [String; 3] {
        [self.journal(), self.values(), self.crdt()]
    }
}

/// The service registry topic under `prefix`.
pub fn services_topic(prefix: &str) -> String {
    format!("{prefix}services")
}

/// The audit topic under `prefix`: one record per administrative erasure (`statehouse admin
/// erase`), JSON, keyed `<service>/<entity_key>`, kept for ever (delete policy, no retention).
pub fn audit_topic(prefix: &str) -> String {
    format!("{prefix}audit")
}

/// The routing topic under `prefix`.
pub fn routing_topic(prefix: &str) -> String {
    format!("{prefix}routing")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_design() {
        let t = Topics::new(DEFAULT_PREFIX, ServiceName::new("shopping-cart").unwrap());
        assert_eq!(t.journal(), "statehouse.shopping-cart.journal");
        assert_eq!(t.values(), "statehouse.shopping-cart.values");
        assert_eq!(t.crdt(), "statehouse.shopping-cart.crdt");
        assert_eq!(t.services(), "statehouse.services");
        assert_eq!(t.routing(), "statehouse.routing");
        assert_eq!(t.owners_group(), "statehouse.shopping-cart.owners");
        assert_eq!(t.transactional_id(7), "statehouse.shopping-cart.p7");
        let custom = Topics::new("acme.", ServiceName::new("cart").unwrap());
        assert_eq!(custom.service_topics()[0], "acme.cart.journal");
    }
}
