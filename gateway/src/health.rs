//! `grpc.health.v1.Health` for load balancers and Kubernetes gRPC probes: the gateway (service
//! `""`) is SERVING once the registry routes at least one method, and NOT_SERVING before that and
//! after shutdown starts; a user service is SERVING while it is routable.

use std::pin::Pin;

use futures::Stream;
use statehouse_schemas::grpc::health::v1::health_check_response::ServingStatus;
use statehouse_schemas::grpc::health::v1::{
    HealthCheckRequest, HealthCheckResponse, health_server,
};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::Error;
use statehouse_runtime::router::Registry;

pub(crate) use health_server::HealthServer as Server;

/// The full name of the health service.
pub(crate) const SERVICE: &str = "grpc.health.v1.Health";

/// The health service.
#[derive(Clone)]
pub(crate) struct Health {
    pub(crate) registry: Registry,
    pub(crate) shutdown: CancellationToken,
}

impl Health {
    /// The status of `service` (`""` = the gateway); `None` for a service it does not know.
    pub(crate) fn status(&self, service: &str) -> Option<ServingStatus> {
        let routes = self.registry.routes();
        if service.is_empty() {
            return Some(if self.shutdown.is_cancelled() || routes.is_empty() {
                ServingStatus::NotServing
            } else {
                ServingStatus::Serving
            });
        }
        routes.service_of(service)?;
        Some(if self.shutdown.is_cancelled() {
            ServingStatus::NotServing
        } else {
            ServingStatus::Serving
        })
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

fn response(status: ServingStatus) -> HealthCheckResponse {
    HealthCheckResponse {
        status: status as i32,
    }
}

#[tonic::async_trait]
impl health_server::Health for Health {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        let service = request.into_inner().service;
        match self.status(&service) {
            Some(status) => Ok(Response::new(response(status))),
            None => Err(Error::UnknownService { service }.into()),
        }
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        let service = request.into_inner().service;
        let changes = self.registry.subscribe();
        let health = self.clone();
        // The current status, then each change; ends (NOT_SERVING last) at shutdown.
        let stream = futures::stream::unfold(
            (health, changes, service, None::<ServingStatus>, false),
            |(health, mut changes, service, last, done)| async move {
                if done {
                    return None;
                }
                loop {
                    let current = health
                        .status(&service)
                        .unwrap_or(ServingStatus::ServiceUnknown);
                    if health.shutdown.is_cancelled() {
                        let item = Ok(response(ServingStatus::NotServing));
                        return Some((item, (health, changes, service, last, true)));
                    }
                    if last != Some(current) {
                        let item = Ok(response(current));
                        return Some((item, (health, changes, service, Some(current), false)));
                    }
                    tokio::select! {
                        changed = changes.changed() => if changed.is_err() { return None },
                        _ = health.shutdown.cancelled() => {}
                    }
                }
            },
        );
        Ok(Response::new(Box::pin(stream)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serving_follows_the_registry_and_shutdown() {
        let registry = Registry::new();
        let shutdown = CancellationToken::new();
        let health = Health {
            registry,
            shutdown: shutdown.clone(),
        };
        assert_eq!(health.status(""), Some(ServingStatus::NotServing));
        assert_eq!(health.status("com.example.shoppingcart.ShoppingCart"), None);
        shutdown.cancel();
        assert_eq!(health.status(""), Some(ServingStatus::NotServing));
    }
}
