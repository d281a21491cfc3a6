//! The registry: which services exist (with their method indexes) and which processor owns
//! which partition. Fed from the `<prefix>services` and `<prefix>routing` topics by
//! [`feed`](super::feed), or directly ([`Registry::apply_service`],
//! [`Registry::apply_routing`]) in tests and embedded setups.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use crate::method_index::{self, MethodIndex, MethodInfo};
use statehouse_core::ServiceName;
use statehouse_schemas::avro::{self, RoutingRecord, ServiceRecord};
use statehouse_schemas::cloudstate::{
    Entity, EntityPassivationStrategy, TimeoutPassivationStrategy, entity_passivation_strategy,
};
use statehouse_schemas::protocol;
use tokio::sync::watch;

/// The entity types the gateway routes (every type a processor may support).
pub const SUPPORTED_ENTITY_TYPES: &[&str] = &[
    protocol::EVENT_SOURCED,
    protocol::VALUE_ENTITY,
    protocol::CRDT,
    protocol::ACTION,
    protocol::LEGACY_FUNCTION,
];

/// Why a service record was not applied.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The record's service name is not a valid Statehouse service name.
    #[error("service record for {service:?}: {source}")]
    BadServiceName {
        /// The name in the record.
        service: String,
        /// Why it is invalid.
        #[source]
        source: statehouse_core::ids::Error,
    },
    /// Its descriptor set and entities do not validate.
    #[error("service record for {service}: {source}")]
    Invalid {
        /// The Statehouse service.
        service: String,
        /// What is wrong.
        #[source]
        source: method_index::Error,
    },
}

/// A service as the registry knows it.
#[derive(Debug, Clone)]
pub struct Service {
    /// The Statehouse service name.
    pub name: String,
    /// Its methods.
    pub index: MethodIndex,
    /// The processors the newest record listed (their internal endpoints).
    pub processors: Vec<avro::Processor>,
    /// `updated_at` of that record.
    pub updated_at_ms: i64,
}

/// The owner of a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// Id of the owning processor instance.
    pub processor_id: String,
    /// Its internal gRPC endpoint.
    pub endpoint: String,
    /// Its epoch for the partition.
    pub epoch: i64,
}

/// A user method and the Statehouse service that serves it.
#[derive(Debug, Clone)]
pub struct Route {
    /// The Statehouse service.
    pub service: String,
    /// The method.
    pub method: Arc<MethodInfo>,
}

/// Every routable method, rebuilt when a service changes. Readers hold an `Arc` to one
/// version while the registry moves on.
#[derive(Debug, Default)]
pub struct Routes {
    version: u64,
    methods: HashMap<String, Route>,
    /// gRPC service → Statehouse service, sorted by gRPC service.
    grpc_services: BTreeMap<String, String>,
    /// The method index of every service, sorted by Statehouse service.
    indexes: Vec<MethodIndex>,
}

impl Routes {
    /// Increases whenever the set of services changes.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The method with gRPC path `/pkg.Service/Method`.
    pub fn method(&self, path: &str) -> Option<&Route> {
        self.methods.get(path)
    }

    /// Every routable method.
    pub fn methods(&self) -> impl Iterator<Item = &Route> {
        self.methods.values()
    }

    /// The user gRPC services, sorted.
    pub fn grpc_services(&self) -> impl Iterator<Item = &str> {
        self.grpc_services.keys().map(String::as_str)
    }

    /// The Statehouse service that serves gRPC service `grpc_service`.
    pub fn service_of(&self, grpc_service: &str) -> Option<&str> {
        self.grpc_services.get(grpc_service).map(String::as_str)
    }

    /// The method indexes of all services, sorted by Statehouse service name.
    pub fn indexes(&self) -> &[MethodIndex] {
        &self.indexes
    }

    /// Whether no method is routable.
    pub fn is_empty(&self) -> bool {
        self.methods.is_empty()
    }
}

/// Services and partition owners. Cheap to clone; every clone sees the same state.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

struct Inner {
    state: RwLock<State>,
    /// Bumped on every change (services, owners, partition counts): routers waiting for a new
    /// owner wake up on it.
    changes: watch::Sender<u64>,
}

#[derive(Default)]
struct State {
    services: BTreeMap<String, Service>,
    owners: HashMap<String, HashMap<u32, Owner>>,
    partitions: HashMap<String, u32>,
    routes: Arc<Routes>,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.read();
        f.debug_struct("Registry")
            .field("services", &state.services.keys().collect::<Vec<_>>())
            .field(
                "owned_partitions",
                &state.owners.values().map(HashMap::len).sum::<usize>(),
            )
            .finish()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                state: RwLock::new(State::default()),
                changes: watch::channel(0).0,
            }),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        // A panic while holding the lock leaves consistent data (every update is one
        // assignment), so a poisoned lock is still usable.
        self.inner.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.inner.state.write().unwrap_or_else(|e| e.into_inner())
    }

    fn changed(&self) {
        self.inner.changes.send_modify(|v| *v += 1);
    }

    /// Adds or replaces a service from its registry record (the newest record wins). A record
    /// that does not validate is refused and the previous version of the service stays.
    pub fn apply_service(&self, record: ServiceRecord) -> Result<(), Error> {
        ServiceName::new(record.service.clone()).map_err(|source| Error::BadServiceName {
            service: record.service.clone(),
            source,
        })?;
        let entities: Vec<Entity> = record.entities.iter().map(entity_of).collect();
        let index = MethodIndex::build(&record.descriptor_set, &entities, SUPPORTED_ENTITY_TYPES)
            .map_err(|source| Error::Invalid {
            service: record.service.clone(),
            source,
        })?;
        let service = Service {
            name: record.service,
            index,
            processors: record.processors,
            updated_at_ms: record.updated_at_ms,
        };
        tracing::info!(
            service = %service.name,
            grpc_services = ?service.index.services().collect::<Vec<_>>(),
            processors = service.processors.len(),
            "service registered"
        );
        {
            let mut state = self.write();
            state.services.insert(service.name.clone(), service);
            state.rebuild_routes();
        }
        self.changed();
        Ok(())
    }

    /// Removes a service (a tombstone in the services topic).
    pub fn remove_service(&self, service: &str) {
        let removed = {
            let mut state = self.write();
            let removed = state.services.remove(service).is_some();
            if removed {
                state.rebuild_routes();
            }
            removed
        };
        if removed {
            tracing::info!(service, "service removed");
            self.changed();
        }
    }

    /// Records a partition owner. A record with an older epoch than the known owner's is
    /// ignored (returns false): it was published before the current owner took over.
    pub fn apply_routing(&self, record: RoutingRecord) -> bool {
        let Ok(partition) = u32::try_from(record.partition) else {
            tracing::warn!(service = %record.service, partition = record.partition, "routing record with a negative partition ignored");
            return false;
        };
        let owner = Owner {
            processor_id: record.owner_processor_id,
            endpoint: record.owner_endpoint,
            epoch: record.epoch,
        };
        {
            let mut state = self.write();
            let owners = state.owners.entry(record.service.clone()).or_default();
            match owners.get(&partition) {
                Some(known) if known.epoch > owner.epoch => return false,
                Some(known) if *known == owner => return true,
                _ => {}
            }
            tracing::debug!(service = %record.service, partition, endpoint = %owner.endpoint, epoch = owner.epoch, "partition owner");
            owners.insert(partition, owner);
        }
        self.changed();
        true
    }

    /// Forgets the owner of a partition (a tombstone in the routing topic).
    pub fn remove_routing(&self, service: &str, partition: u32) {
        let removed = {
            let mut state = self.write();
            state
                .owners
                .get_mut(service)
                .and_then(|o| o.remove(&partition))
                .is_some()
        };
        if removed {
            self.changed();
        }
    }

    /// Sets the partition count of a service (the partition count of its journal topic).
    pub fn set_partition_count(&self, service: &str, partitions: u32) {
        let changed = {
            let mut state = self.write();
            state.partitions.insert(service.to_string(), partitions) != Some(partitions)
        };
        if changed {
            self.changed();
        }
    }

    /// The partition count of a service, if known.
    pub fn partition_count(&self, service: &str) -> Option<u32> {
        self.read().partitions.get(service).copied()
    }

    /// The owner of a partition, if known.
    pub fn owner(&self, service: &str, partition: u32) -> Option<Owner> {
        self.read()
            .owners
            .get(service)
            .and_then(|o| o.get(&partition))
            .cloned()
    }

    /// The endpoints of the processors of a service: those its newest record lists (each
    /// processor publishes a record naming itself) and every partition owner. Sorted, without
    /// duplicates.
    pub fn processors(&self, service: &str) -> Vec<String> {
        let state = self.read();
        let mut endpoints: Vec<String> = state
            .services
            .get(service)
            .map(|s| s.processors.iter().map(|p| p.endpoint.clone()).collect())
            .unwrap_or_default();
        if let Some(owners) = state.owners.get(service) {
            endpoints.extend(owners.values().map(|o| o.endpoint.clone()));
        }
        endpoints.sort();
        endpoints.dedup();
        endpoints
    }

    /// A service, by Statehouse name.
    pub fn service(&self, service: &str) -> Option<Service> {
        self.read().services.get(service).cloned()
    }

    /// The current routes.
    pub fn routes(&self) -> Arc<Routes> {
        Arc::clone(&self.read().routes)
    }

    /// A receiver that sees every change of the registry.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }
}

impl State {
    fn rebuild_routes(&mut self) {
        let mut routes = Routes {
            version: self.routes.version + 1,
            ..Routes::default()
        };
        // Oldest record first, so that when two services claim the same gRPC service (it moved
        // to a new deployment), the newest wins.
        let mut services: Vec<&Service> = self.services.values().collect();
        services.sort_by_key(|s| (s.updated_at_ms, s.name.clone()));
        for service in services {
            for grpc_service in service.index.services() {
                if let Some(previous) = routes
                    .grpc_services
                    .insert(grpc_service.to_string(), service.name.clone())
                {
                    tracing::warn!(grpc_service, previous, service = %service.name, "gRPC service served by two Statehouse services; the newest record wins");
                }
            }
            for method in service.index.methods() {
                routes.methods.insert(
                    method.path.clone(),
                    Route {
                        service: service.name.clone(),
                        method: Arc::clone(method),
                    },
                );
            }
        }
        routes.indexes = self.services.values().map(|s| s.index.clone()).collect();
        self.routes = Arc::new(routes);
    }
}

/// The Cloudstate `Entity` of a registry record's entity.
fn entity_of(entity: &avro::Entity) -> Entity {
    Entity {
        entity_type: entity.entity_type.clone(),
        service_name: entity.service_name.clone(),
        persistence_id: entity.persistence_id.clone(),
        passivation_strategy: entity.passivation_timeout_ms.map(|timeout| {
            EntityPassivationStrategy {
                strategy: Some(entity_passivation_strategy::Strategy::Timeout(
                    TimeoutPassivationStrategy { timeout },
                )),
            }
        }),
    }
}
