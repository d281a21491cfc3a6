//! The user function as a whole: registered entities, discovery, the server.

use std::{collections::BTreeMap, future::Future, net::SocketAddr, sync::Arc};

use bytes::Bytes;
use statehouse_schemas::cloudstate::{
    self, EntityPassivationStrategy, EntitySpec, ServiceInfo, TimeoutPassivationStrategy,
    entity_discovery_server::EntityDiscoveryServer, entity_passivation_strategy,
    eventsourced::event_sourced_server::EventSourcedServer,
};
use statehouse_schemas::statehouse::projection::v1::projection_handler_server::ProjectionHandlerServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;

use crate::{
    Error, descriptor,
    discovery::{Discovery, PROTOCOL_VERSION},
    eventsourced::{
        self,
        session::{Factory, Registry},
    },
    projection::{Folder, Handler, Projection},
};

/// The support library name announced at discovery.
pub const SUPPORT_LIBRARY_NAME: &str = "statehouse-sdk";

/// The largest message accepted from the proxy; the reference proxy allows
/// 12 MiB on its side.
const MAX_MESSAGE_SIZE: usize = 12 * 1024 * 1024;

/// A user function: entities served over the Cloudstate protocol 0.2.
///
/// Register entities, give the file descriptor set that declares their gRPC
/// services, then [`serve`](Self::serve). Configuration errors are reported
/// by [`spec`](Self::spec) and by the `serve` methods before anything is bound.
pub struct Service {
    name: String,
    version: String,
    descriptors: Option<Bytes>,
    entities: Vec<cloudstate::Entity>,
    event_sourced: Registry,
    projections: BTreeMap<String, Arc<dyn Folder>>,
    duplicate: Option<String>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("entities", &self.entities)
            .finish_non_exhaustive()
    }
}

impl Service {
    /// A user function called `name` (e.g. `shopping-cart`) at `version`.
    pub fn new(name: impl Into<String>, version: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            version: version.into(),
            descriptors: None,
            entities: Vec::new(),
            event_sourced: Registry::new(),
            projections: BTreeMap::new(),
            duplicate: None,
        }
    }

    /// The encoded `google.protobuf.FileDescriptorSet` declaring the entity
    /// services and everything they import (`protoc --include_imports`), e.g.
    /// `statehouse_schemas::FILE_DESCRIPTOR_SET`. Only the files the
    /// registered services need are sent to the proxy, byte for byte.
    #[must_use]
    pub fn descriptors(mut self, file_descriptor_set: impl Into<Bytes>) -> Self {
        self.descriptors = Some(file_descriptor_set.into());
        self
    }

    /// Serves `entity` as the gRPC service `service_name` (fully qualified,
    /// e.g. `com.example.shoppingcart.ShoppingCart`).
    #[must_use]
    pub fn event_sourced<E: eventsourced::Entity>(
        mut self,
        service_name: impl Into<String>,
        entity: E,
    ) -> Self {
        let service_name = service_name.into();
        let passivation_strategy =
            entity
                .passivation_timeout()
                .map(|timeout| EntityPassivationStrategy {
                    strategy: Some(entity_passivation_strategy::Strategy::Timeout(
                        TimeoutPassivationStrategy {
                            timeout: i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX),
                        },
                    )),
                });
        self.entities.push(cloudstate::Entity {
            entity_type: eventsourced::ENTITY_TYPE.to_owned(),
            service_name: service_name.clone(),
            persistence_id: entity.persistence_id().to_owned(),
            passivation_strategy,
        });
        let factory: Arc<dyn Factory> = Arc::new(entity);
        if self
            .event_sourced
            .insert(service_name.clone(), factory)
            .is_some()
        {
            self.duplicate.get_or_insert(service_name);
        }
        self
    }

    /// Serves `projection` to `statehouse projector` (`statehouse.projection.v1`) on the same
    /// port as the entities.
    #[must_use]
    pub fn projection<P: Projection>(mut self, projection: P) -> Self {
        let name = projection.name().to_string();
        if self
            .projections
            .insert(name.clone(), Arc::new(projection))
            .is_some()
        {
            self.duplicate.get_or_insert(format!("projection {name}"));
        }
        self
    }

    /// What discovery reports about this deployment.
    pub fn info(&self) -> ServiceInfo {
        ServiceInfo {
            service_name: self.name.clone(),
            service_version: self.version.clone(),
            service_runtime: format!("rust {}", env!("STATEHOUSE_SDK_RUSTC_VERSION")),
            support_library_name: SUPPORT_LIBRARY_NAME.to_owned(),
            support_library_version: env!("CARGO_PKG_VERSION").to_owned(),
            protocol_major_version: PROTOCOL_VERSION.0,
            protocol_minor_version: PROTOCOL_VERSION.1,
        }
    }

    /// The discovery answer, after checking the configuration: at least one
    /// entity, no service twice, every service in the descriptor set and
    /// every import present.
    pub fn spec(&self) -> Result<EntitySpec, Error> {
        if self.entities.is_empty() {
            return Err(Error::NoEntities);
        }
        if let Some(service) = &self.duplicate {
            return Err(Error::DuplicateService {
                service: service.clone(),
            });
        }
        let descriptors = self.descriptors.as_ref().ok_or(Error::MissingDescriptors)?;
        let services: Vec<&str> = self
            .entities
            .iter()
            .map(|entity| entity.service_name.as_str())
            .collect();
        Ok(EntitySpec {
            proto: descriptor::prune_for_services(descriptors, &services)?,
            entities: self.entities.clone(),
            service_info: Some(self.info()),
        })
    }

    /// Binds `addr` and serves until the process ends.
    pub async fn serve(self, addr: SocketAddr) -> Result<(), Error> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Bind { addr, source })?;
        self.serve_with_incoming_shutdown(listener, std::future::pending())
            .await
    }

    /// Serves on `listener` until `shutdown` completes. Then it stops
    /// accepting calls, ends every entity stream once its current command is
    /// answered (the proxy restarts the entity on its next command) and
    /// returns when the connections are closed.
    pub async fn serve_with_incoming_shutdown(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), Error> {
        let spec = self.spec()?;
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(
                %addr,
                service = %self.name,
                entities = self.entities.len(),
                "serving the Cloudstate user function"
            );
        }
        let discovery = EntityDiscoveryServer::new(Discovery::new(spec))
            .max_decoding_message_size(MAX_MESSAGE_SIZE);
        let streams = CancellationToken::new();
        let event_sourced = EventSourcedServer::new(eventsourced::server::Server::new(
            self.event_sourced,
            streams.clone(),
        ))
        .max_decoding_message_size(MAX_MESSAGE_SIZE);
        let shutdown = async move {
            shutdown.await;
            streams.cancel();
        };
        let projections = (!self.projections.is_empty()).then(|| {
            ProjectionHandlerServer::new(Handler {
                projections: self.projections,
            })
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
        });
        tonic::transport::Server::builder()
            .add_service(discovery)
            .add_service(event_sourced)
            .add_optional_service(projections)
            .serve_with_incoming_shutdown(
                TcpIncoming::from(listener).with_nodelay(Some(true)),
                shutdown,
            )
            .await?;
        Ok(())
    }
}
