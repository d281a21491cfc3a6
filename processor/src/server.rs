//! The internal gRPC API (`statehouse.processor.v1.Processor`): routers — the gateway, and other
//! processors running forwards and side effects — hand commands to the processor that runs
//! them. `Handle` runs one unary command; `HandleStreamed` runs a streamed call (the first
//! request names the method and carries the context; later requests carry payloads only).
//! `Erase` erases one entity of a partition this processor owns (`crate::erase`).

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use statehouse_core::{partition_for, semconv};
use statehouse_runtime::admission::{self, Limiter};
use statehouse_runtime::method_index::{EntityKind, MethodIndex};
use statehouse_runtime::trace;
use statehouse_schemas::statehouse::processor::v1::processor_server::Processor;
use statehouse_schemas::statehouse::processor::v1::{
    EraseRequest, EraseResponse, Failure, HandleRequest, HandleResponse, JournalPosition,
    Reply as ProtoReply, handle_response,
};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request as GrpcRequest, Response, Status, Streaming};
use tracing::Instrument as _;

use crate::command::{Command, Host, Outcome, Reply};
use crate::entity::Caller;
use crate::node::Node;
use crate::{Error, action, metrics as m};

/// Client messages of a streamed call waiting for the user function.
const STREAM_BUFFER: usize = 16;

pub(crate) struct Service {
    pub(crate) node: Arc<Node>,
    /// Adaptive admission of unary commands (`processor.admission`): the processor's own guard,
    /// whatever the number of gateways (`statehouse_runtime::admission`).
    pub(crate) admission: Limiter,
}

impl Service {
    /// The command a request describes, checked against this processor's service and method
    /// index ([`command_of`]).
    fn command(&self, request: HandleRequest) -> Result<Command, Error> {
        let node = &self.node;
        command_of(
            node.service.as_str(),
            &node.index,
            node.partition_count,
            request,
        )
    }
}

/// The command a request describes, checked against the processor's `service`, its method
/// `index` and its partition count. The router already read the entity id from the key fields;
/// only the partition is recomputed (a cheap hash) to catch a router that disagrees. This is
/// all the internal API decodes of a request: the payload stays opaque bytes for the user
/// function.
pub(crate) fn command_of(
    service: &str,
    index: &MethodIndex,
    partition_count: u32,
    request: HandleRequest,
) -> Result<Command, Error> {
    if request.service != service {
        return Err(Error::InvalidArgument(format!(
            "this processor serves {service}, not {:?}",
            request.service
        )));
    }
    let method = index
        .method(&request.method)
        .cloned()
        .ok_or_else(|| Error::UnknownMethod(request.method.clone()))?;
    let keyed = method.entity.kind().is_some_and(EntityKind::is_keyed);
    if keyed {
        if request.entity_id.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "{} needs an entity key",
                method.path
            )));
        }
        let partition = partition_for(request.entity_id.as_bytes(), partition_count) as i32;
        if request.partition >= 0 && request.partition != partition {
            return Err(Error::InvalidArgument(format!(
                "entity {:?} is in partition {partition}, not {}",
                request.entity_id, request.partition
            )));
        }
    } else if !request.entity_id.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "{} is an action method: it takes no entity id",
            method.path
        )));
    }
    let deadline = (request.deadline_unix_ms > 0).then(|| {
        let remaining = request
            .deadline_unix_ms
            .saturating_sub(crate::entity::now_ms());
        Instant::now() + Duration::from_millis(remaining.max(0) as u64)
    });
    Ok(Command {
        method,
        entity_id: request.entity_id,
        payload: request.payload,
        type_url: (!request.type_url.is_empty()).then_some(request.type_url),
        metadata: request.metadata,
        idempotency_key: (!request.idempotency_key.is_empty()).then_some(request.idempotency_key),
        deadline,
        // What the user function and the records continue: this processor's span, or
        // (traces off) the caller's context as it came.
        traceparent: trace::traceparent(&tracing::Span::current())
            .or_else(|| (!request.traceparent.is_empty()).then_some(request.traceparent)),
        call_traceparent: None,
        hops: request.hops,
    })
}

#[tonic::async_trait]
impl Processor for Service {
    async fn handle(
        &self,
        request: GrpcRequest<HandleRequest>,
    ) -> Result<Response<HandleResponse>, Status> {
        let mut permit = self.admission.try_acquire().map_err(|refused| {
            metrics::counter!(m::COMMANDS, "outcome" => "error").increment(1);
            Status::from(Error::Overloaded(refused.to_string()))
        })?;
        let request = request.into_inner();
        let span = handle_span(&request);
        let outcome = async {
            match self.command(request) {
                Ok(command) => self.node.run_here(command).await,
                Err(e) => Err(e),
            }
        }
        .instrument(span.clone())
        .await;
        permit.end(match &outcome {
            // Not run here: no sign of how long commands take.
            Err(
                Error::NotOwner { .. }
                | Error::Overloaded(_)
                | Error::ShuttingDown
                | Error::UnknownMethod(_)
                | Error::InvalidArgument(_),
            ) => admission::Outcome::Dropped,
            _ => admission::Outcome::Ran,
        });
        if outcome.as_ref().is_err() {
            span.record(semconv::OTEL_STATUS, "error");
        }
        let outcome = outcome.inspect_err(|_| {
            metrics::counter!(m::COMMANDS, "outcome" => "error").increment(1);
        })?;
        let label = if outcome.reply.is_failure() {
            "failure"
        } else {
            "ok"
        };
        metrics::counter!(m::COMMANDS, "outcome" => label).increment(1);
        Ok(Response::new(response_of(outcome)))
    }

    type HandleStreamedStream =
        Pin<Box<dyn Stream<Item = Result<HandleResponse, Status>> + Send + 'static>>;

    async fn handle_streamed(
        &self,
        request: GrpcRequest<Streaming<HandleRequest>>,
    ) -> Result<Response<Self::HandleStreamedStream>, Status> {
        let mut requests = request.into_inner();
        let first = match requests.message().await? {
            Some(first) => first,
            None => {
                return Err(Error::InvalidArgument(
                    "a streamed call without its first request".into(),
                )
                .into());
            }
        };
        let span = handle_span(&first);
        let command = span.in_scope(|| self.command(first))?;
        let method = &command.method;
        if method.is_unary() {
            return Err(
                Error::InvalidArgument(format!("{} is unary: call Handle", method.path)).into(),
            );
        }
        if method.entity.kind() == Some(EntityKind::Crdt) {
            // A server-streaming CRDT call: elements as the entity gives them; the entity learns
            // when the client goes away (the response stream is dropped).
            let (out, outcomes) = mpsc::channel(STREAM_BUFFER);
            self.node.crdt_call(command, Caller::Stream(out))?;
            let responses = ReceiverStream::new(outcomes).map(|outcome: Result<Outcome, Error>| {
                outcome.map(response_of).map_err(Status::from)
            });
            return Ok(Response::new(Box::pin(responses)));
        }
        if method.entity.kind() != Some(EntityKind::Action) {
            return Err(Error::UnknownMethod(format!(
                "{} (streamed methods of this entity kind are not served)",
                method.path
            ))
            .into());
        }
        let shape = crate::kinds::action::Shape::of(method);
        let shape_label = match shape {
            crate::kinds::action::Shape::Unary => "unary",
            crate::kinds::action::Shape::StreamedIn => "streamed-in",
            crate::kinds::action::Shape::StreamedOut => "streamed-out",
            crate::kinds::action::Shape::Streamed => "streamed",
        };
        metrics::counter!(m::ACTION_CALLS, "shape" => shape_label).increment(1);
        // The client's later messages, as they come (bounded: a slow user function slows the
        // client). The reader ends when the call ends or the client half-closes.
        let (rest_tx, rest) = mpsc::channel(STREAM_BUFFER);
        if shape.streams_in() {
            tokio::spawn(async move {
                // Ends when the client half-closes (the user function's request side is closed
                // too) or cancels (the call is dropped with the response stream).
                while let Ok(Some(request)) = requests.message().await {
                    if rest_tx
                        .send((request.payload, request.metadata))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            });
        }
        let (out, outcomes) = mpsc::channel(STREAM_BUFFER);
        let host: Arc<dyn Host> = Arc::clone(&self.node) as Arc<dyn Host>;
        tokio::spawn(action::streamed(
            host,
            self.node.uf.clone(),
            command,
            rest,
            out,
        ));
        let responses = ReceiverStream::new(outcomes)
            .map(|outcome: Result<Outcome, Error>| outcome.map(response_of).map_err(Status::from));
        Ok(Response::new(Box::pin(responses)))
    }

    async fn erase(
        &self,
        request: GrpcRequest<EraseRequest>,
    ) -> Result<Response<EraseResponse>, Status> {
        let erased = crate::erase::run(&self.node, request.into_inner()).await?;
        Ok(Response::new(erased))
    }
}

/// The span of one command received (`statehouse.processor.handle`), continuing the router's
/// `traceparent`; none while traces are off.
fn handle_span(request: &HandleRequest) -> tracing::Span {
    if !trace::enabled() {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(
        semconv::SPAN_PROCESSOR_HANDLE,
        { semconv::OTEL_KIND } = "server",
        { semconv::RPC_SYSTEM } = "grpc",
        { semconv::RPC_METHOD } = %request.method,
        { semconv::SERVICE } = %request.service,
        { semconv::ENTITY_ID } = %request.entity_id,
        { semconv::KAFKA_PARTITION } = request.partition,
        { semconv::OTEL_STATUS } = tracing::field::Empty,
        { semconv::TRACE_ID } = tracing::field::Empty,
    );
    trace::continue_trace(
        &span,
        (!request.traceparent.is_empty()).then_some(request.traceparent.as_str()),
        None,
    );
    span
}

fn response_of(outcome: Outcome) -> HandleResponse {
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
        Reply::Failure { description, code } => Some(handle_response::Outcome::Failure(Failure {
            description,
            grpc_code: code as i32,
        })),
    };
    HandleResponse {
        outcome: result,
        deduplicated: outcome.deduplicated,
        position: outcome.position.map(|p| JournalPosition {
            partition: p.partition,
            offset: p.offset,
        }),
    }
}
