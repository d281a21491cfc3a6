//! The internal gRPC API (`statehouse.processor.v1.Processor`): the gateway, and other
//! processors running forwards and side effects, hand commands to the partition owner here.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use statehouse_core::partition_for;
use statehouse_schemas::statehouse::processor::v1::processor_server::Processor;
use statehouse_schemas::statehouse::processor::v1::{
    Failure, HandleRequest, HandleResponse, Reply as ProtoReply, handle_response,
};
use tokio::time::Instant;
use tonic::{Request as GrpcRequest, Response, Status, Streaming};

use crate::entity::Reply;
use crate::{Error, Node, Request};

pub(crate) struct Service {
    pub(crate) node: Arc<Node>,
}

#[tonic::async_trait]
impl Processor for Service {
    async fn handle(
        &self,
        request: GrpcRequest<HandleRequest>,
    ) -> Result<Response<HandleResponse>, Status> {
        let request = request.into_inner();
        let node = &self.node;
        if request.service != node.service.as_str() {
            return Err(Error::InvalidArgument(format!(
                "this processor serves {}, not {:?}",
                node.service, request.service
            ))
            .into());
        }
        let method = node
            .index
            .method(&request.method)
            .cloned()
            .ok_or_else(|| Error::UnknownMethod(request.method.clone()))?;
        let entity_id = method
            .entity_id(&request.payload)
            .map_err(|e| Error::InvalidArgument(e.to_string()))?;
        if entity_id != request.entity_id {
            return Err(Error::InvalidArgument(format!(
                "entity id {:?} does not match the request's key fields ({entity_id:?})",
                request.entity_id
            ))
            .into());
        }
        let partition = partition_for(entity_id.as_bytes(), node.partition_count) as i32;
        if request.partition >= 0 && request.partition != partition {
            return Err(Error::InvalidArgument(format!(
                "entity {entity_id:?} is in partition {partition}, not {}",
                request.partition
            ))
            .into());
        }
        let deadline = (request.deadline_unix_ms > 0).then(|| {
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64);
            Instant::now()
                + Duration::from_millis(
                    request.deadline_unix_ms.saturating_sub(now_ms).max(0) as u64
                )
        });
        let outcome = node
            .dispatch(Request {
                method,
                entity_id,
                payload: request.payload,
                _metadata: request.metadata,
                idempotency_key: (!request.idempotency_key.is_empty())
                    .then_some(request.idempotency_key),
                deadline,
                traceparent: (!request.traceparent.is_empty()).then_some(request.traceparent),
                hops: request.hops,
            })
            .await;
        let outcome = match outcome {
            Ok(o) => o,
            Err(e) => {
                metrics::counter!(crate::metrics::COMMANDS, "outcome" => "error").increment(1);
                return Err(e.into());
            }
        };
        let label = match &outcome.reply {
            Reply::Failure { .. } => "failure",
            _ => "ok",
        };
        metrics::counter!(crate::metrics::COMMANDS, "outcome" => label).increment(1);
        let result = match outcome.reply {
            Reply::Message {
                payload,
                type_url,
                metadata,
            } => Some(handle_response::Outcome::Reply(ProtoReply {
                payload,
                type_url,
                metadata,
            })),
            Reply::Empty => None,
            Reply::Failure { description, code } => {
                Some(handle_response::Outcome::Failure(Failure {
                    description,
                    grpc_code: code as i32,
                }))
            }
        };
        Ok(Response::new(HandleResponse {
            outcome: result,
            deduplicated: outcome.deduplicated,
        }))
    }

    type HandleStreamedStream =
        Pin<Box<dyn Stream<Item = Result<HandleResponse, Status>> + Send + 'static>>;

    async fn handle_streamed(
        &self,
        _request: GrpcRequest<Streaming<HandleRequest>>,
    ) -> Result<Response<Self::HandleStreamedStream>, Status> {
        Err(Status::unimplemented(
            "streamed methods arrive with CRDT entities and actions",
        ))
    }
}
