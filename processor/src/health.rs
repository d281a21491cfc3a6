//! `grpc.health.v1.Health` on the internal port, for Kubernetes gRPC probes: SERVING once
//! discovery and the recovery of the assigned partitions are done (the same readiness as
//! `/readyz`), NOT_SERVING before that, while paused or shutting down.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use statehouse_runtime::Health as Readiness;
use statehouse_schemas::grpc::health::v1::health_check_response::ServingStatus;
use statehouse_schemas::grpc::health::v1::health_server::Health;
use statehouse_schemas::grpc::health::v1::{HealthCheckRequest, HealthCheckResponse};
use tonic::{Request, Response, Status};

use crate::node::Node;

pub(crate) struct Service {
    pub(crate) node: Arc<Node>,
    pub(crate) readiness: Readiness,
}

impl Service {
    fn status(&self, service: &str) -> Result<ServingStatus, Status> {
        if !service.is_empty() && service != "statehouse.processor.v1.Processor" {
            return Err(Status::not_found(format!("unknown service {service:?}")));
        }
        let serving = self.readiness.is_ready()
            && self.node.pause.may_serve()
            && !self.node.shutdown.is_cancelled();
        Ok(if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        })
    }
}

#[tonic::async_trait]
impl Health for Service {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        let status = self.status(&request.get_ref().service)?;
        Ok(Response::new(HealthCheckResponse {
            status: status as i32,
        }))
    }

    type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let service = request.into_inner().service;
        self.status(&service)?;
        let this = Service {
            node: Arc::clone(&self.node),
            readiness: self.readiness.clone(),
        };
        // Send the status now and whenever it changes (checked every 500 ms).
        let stream = futures::stream::unfold((this, None), move |(this, last)| {
            let service = service.clone();
            async move {
                loop {
                    let now = this
                        .status(&service)
                        .unwrap_or(ServingStatus::ServiceUnknown);
                    if Some(now) != last {
                        let item = Ok(HealthCheckResponse { status: now as i32 });
                        return Some((item, (this, Some(now))));
                    }
                    if this.node.shutdown.is_cancelled() {
                        return None;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }
}
