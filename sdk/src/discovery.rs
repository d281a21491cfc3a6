//! `cloudstate.EntityDiscovery`: tells the proxy what this user function serves.

use statehouse_schemas::{
    cloudstate::{
        EntitySpec, ProxyInfo, UserFunctionError, entity_discovery_server::EntityDiscovery,
    },
    protocol,
};
use tonic::{Request, Response, Status};

/// The protocol version this SDK speaks.
pub(crate) const PROTOCOL_VERSION: (i32, i32) = (protocol::MAJOR_VERSION, protocol::MINOR_VERSION);

/// Answers discovery with a spec computed once at start.
pub(crate) struct Discovery {
    spec: EntitySpec,
}

impl Discovery {
    pub(crate) fn new(spec: EntitySpec) -> Self {
        Self { spec }
    }
}

#[tonic::async_trait]
impl EntityDiscovery for Discovery {
    async fn discover(&self, request: Request<ProxyInfo>) -> Result<Response<EntitySpec>, Status> {
        let proxy = request.into_inner();
        tracing::info!(
            proxy.name = %proxy.proxy_name,
            proxy.version = %proxy.proxy_version,
            protocol.major = proxy.protocol_major_version,
            protocol.minor = proxy.protocol_minor_version,
            "discovery call from the proxy"
        );
        // Like the reference SDKs we answer anyway: the proxy owns the
        // compatibility check and reports what it rejects via reportError.
        let version = (proxy.protocol_major_version, proxy.protocol_minor_version);
        if version != PROTOCOL_VERSION {
            tracing::warn!(
                protocol.major = version.0,
                protocol.minor = version.1,
                "the proxy speaks another Cloudstate protocol version than 0.2"
            );
        }
        for entity in &self.spec.entities {
            if !proxy.supported_entity_types.contains(&entity.entity_type) {
                tracing::error!(
                    service = %entity.service_name,
                    entity_type = %entity.entity_type,
                    supported = ?proxy.supported_entity_types,
                    "the proxy does not support this entity type"
                );
            }
        }
        Ok(Response::new(self.spec.clone()))
    }

    async fn report_error(
        &self,
        request: Request<UserFunctionError>,
    ) -> Result<Response<()>, Status> {
        tracing::error!(
            message = %request.get_ref().message,
            "the proxy reported an error in this user function"
        );
        Ok(Response::new(()))
    }
}
