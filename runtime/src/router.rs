//! Routing a command to the processor that may run it, independent of HTTP: the gateway routes
//! client calls with it, processors route forwards and side effects (to any processor of any
//! service) with it.
//!
//! * [`Registry`] — services (method indexes) and partition owners, fed from Kafka by
//!   [`feed::run`] or directly.
//! * [`Router::call`] — computes the entity's partition with Kafka's partitioner
//!   (`statehouse_core::partition_for`), finds the owner in the routing table and calls
//!   `statehouse.processor.v1.Processor/Handle` over a cached h2c channel per endpoint. Commands
//!   of actions (no key) go to any processor of the service, round robin, with partition -1;
//!   so do CRDT commands once their owner turned out unreachable or refused them (a CRDT
//!   replica still catching up).
//! * [`Router::open`] — the same for streamed methods (`Processor/HandleStreamed`): the first
//!   request message picks the processor; the caller's later messages are sent only once that
//!   processor accepted the call, so a refused attempt can be retried elsewhere without losing
//!   any of them.
//!
//! **Retries.** A call is retried, until its deadline, only when it certainly did not run:
//! the processor answered UNAVAILABLE or FAILED_PRECONDITION with a `NotOwner` detail, no owner
//! is known yet, or the connection to the endpoint failed (UNAVAILABLE produced by the client,
//! without any response from a server). Between attempts the router waits for the partition's
//! owner to change in the registry, at most an exponential backoff (20 ms doubling to 500 ms,
//! ±25 % jitter), and gives up a little before the deadline (a tenth of the time left, at most
//! 250 ms) so that its answer reaches the caller in time. Every other outcome — a reply, a user failure, INVALID_ARGUMENT, any other
//! status — is returned as it is.

pub mod feed;
mod registry;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::method_index::{EntityKind, MethodInfo};
use bytes::Bytes;
use futures::StreamExt;
use rand::Rng;
use statehouse_core::{ServiceName, Topics, semconv};
use statehouse_kafka::admin::Admin;
use statehouse_schemas::cloudstate::{Metadata, metadata_entry};
use statehouse_schemas::statehouse::processor::v1::{
    HandleRequest, HandleResponse, NotOwner, processor_client::ProcessorClient,
};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};
use tracing::Instrument as _;

use crate::trace;

pub use registry::{
    Error as RegistryError, Owner, Registry, Route, Routes, SUPPORTED_ENTITY_TYPES, Service,
};

/// Why a command could not be delivered (or what the processor answered instead of a
/// response). Exhaustive on purpose: every role maps each case to a status of its own choice.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The gRPC service of the method belongs to no registered service (any more).
    #[error("no registered service serves {grpc_service}")]
    UnknownService {
        /// The gRPC service.
        grpc_service: String,
    },

    /// The service name cannot name Kafka topics.
    #[error("service {service:?}: {source}")]
    BadServiceName {
        /// The Statehouse service.
        service: String,
        /// Why.
        #[source]
        source: statehouse_core::ids::Error,
    },

    /// No owner of the partition was known before the deadline (or the partition count of the
    /// service was not known).
    #[error("no processor owns partition {partition} of service {service} yet")]
    NoOwner {
        /// The Statehouse service.
        service: String,
        /// The partition (-1: the partition count was unknown).
        partition: i32,
    },

    /// A service without a known processor (actions).
    #[error("no processor of service {service} is known")]
    NoProcessor {
        /// The Statehouse service.
        service: String,
    },

    /// The owner's endpoint could not be reached before the deadline.
    #[error("processor {endpoint} is unreachable: {reason}")]
    Unreachable {
        /// The endpoint.
        endpoint: String,
        /// The last connection error.
        reason: String,
    },

    /// An endpoint that is not a URI.
    #[error("invalid processor endpoint {endpoint:?}: {reason}")]
    BadEndpoint {
        /// The endpoint.
        endpoint: String,
        /// Why.
        reason: String,
    },

    /// The deadline passed while the partition's ownership was moving (or the processor was
    /// slow).
    #[error("deadline exceeded routing to partition {partition} of service {service}: {last}")]
    DeadlineExceeded {
        /// The Statehouse service.
        service: String,
        /// The partition (-1 for actions).
        partition: i32,
        /// The outcome of the last attempt.
        last: String,
    },

    /// The partition count could not be read from Kafka.
    #[error(transparent)]
    Kafka(#[from] statehouse_kafka::Error),

    /// The processor answered with a status that is not retried (it chose the code).
    #[error("processor answered {}: {}", .0.code(), .0.message())]
    Processor(tonic::Status),
}

impl Error {
    /// Whether the caller may retry the same command (nothing ran).
    pub fn is_transient(&self) -> bool {
        match self {
            Error::NoOwner { .. }
            | Error::NoProcessor { .. }
            | Error::Unreachable { .. }
            | Error::DeadlineExceeded { .. } => true,
            Error::Kafka(e) => e.is_transient(),
            Error::Processor(status) => status.code() == Code::Unavailable,
            Error::UnknownService { .. }
            | Error::BadServiceName { .. }
            | Error::BadEndpoint { .. } => false,
        }
    }
}

/// The largest message of an internal call (gateway → processor, processor → processor), both
/// ways: the processors' port decodes at most this, the router's channels too. The gateway's
/// client limits stay below it (`gateway.max-request-bytes`, `max-response-bytes`).
pub const MAX_INTERNAL_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// Tuning of a [`Router`].
#[derive(Debug, Clone)]
pub struct Options {
    /// First wait between attempts.
    pub initial_backoff: Duration,
    /// Longest wait between attempts.
    pub max_backoff: Duration,
    /// Most cached channels (one per processor endpoint); the cache is cleared beyond it.
    pub max_channels: usize,
    /// Largest reply accepted from a processor, bytes.
    pub max_reply_bytes: usize,
    /// Connection timeout of a processor endpoint.
    pub connect_timeout: Duration,
    /// TLS to processors (`[internal-tls]`, `crate::tls::internal_client`); `None`: h2c.
    pub tls: Option<Arc<crate::tls::ClientTls>>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(500),
            max_channels: 1024,
            max_reply_bytes: MAX_INTERNAL_MESSAGE_BYTES,
            connect_timeout: Duration::from_secs(2),
            tls: None,
        }
    }
}

/// One command to route.
#[derive(Debug, Clone)]
pub struct Call<'a> {
    /// The method.
    pub method: &'a MethodInfo,
    /// The entity id (`""` for actions).
    pub entity_id: &'a str,
    /// The request message bytes.
    pub payload: Bytes,
    /// Request metadata for the user function.
    pub metadata: Metadata,
    /// The client's idempotency key (`""` = none).
    pub idempotency_key: &'a str,
    /// W3C trace context (`None`: the `traceparent` metadata entry, if any).
    pub traceparent: Option<&'a str>,
    /// Forward / side-effect hops that led to this command.
    pub hops: u32,
    /// The payload's type URL for a method taking `google.protobuf.Any` (`None`: the method's
    /// input type).
    pub type_url: Option<&'a str>,
    /// When to give up.
    pub deadline: Instant,
}

/// Routes commands to processors. Cheap to clone.
#[derive(Clone)]
pub struct Router {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    options: Options,
    channels: Mutex<HashMap<String, Channel>>,
    kafka: Option<(Admin, String)>,
    /// One partition-count lookup at a time (the first calls of a service all need it).
    lookups: tokio::sync::Mutex<()>,
    next_processor: AtomicUsize,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("registry", &self.inner.registry)
            .field("kafka", &self.inner.kafka.is_some())
            .finish()
    }
}

/// Where one attempt goes.
struct Target {
    endpoint: String,
    partition: i32,
}

/// The outcome of one attempt that is not a final error.
enum Attempt<T> {
    /// The processor answered (unary) or accepted the call (streamed).
    Answered(T),
    /// Nothing ran; try again.
    Retry(Retry),
    /// The deadline passed during the attempt.
    TimedOut(String),
}

/// Why an attempt did not produce an answer, when it may be retried.
enum Retry {
    /// No owner (or partition count) known yet.
    NoOwner(i32),
    /// No processor known (actions).
    NoProcessor,
    /// The endpoint did not answer.
    Unreachable { endpoint: String, reason: String },
    /// The processor does not own the partition.
    NotOwner { partition: i32, message: String },
}

impl Router {
    /// A router over `registry`; partition counts must be set in the registry
    /// ([`Registry::set_partition_count`]).
    pub fn new(registry: Registry, options: Options) -> Self {
        Self::build(registry, options, None)
    }

    /// A router that reads unknown partition counts from Kafka (the partition count of a
    /// service's journal topic under `topic_prefix`) and caches them in the registry.
    pub fn with_kafka(
        registry: Registry,
        options: Options,
        admin: Admin,
        topic_prefix: String,
    ) -> Self {
        Self::build(registry, options, Some((admin, topic_prefix)))
    }

    fn build(registry: Registry, options: Options, kafka: Option<(Admin, String)>) -> Self {
        Self {
            inner: Arc::new(Inner {
                registry,
                options,
                channels: Mutex::new(HashMap::new()),
                kafka,
                lookups: tokio::sync::Mutex::new(()),
                next_processor: AtomicUsize::new(0),
            }),
        }
    }

    /// The registry this router reads.
    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    /// Runs one client command: see [`Router::send`].
    pub async fn call(
        &self,
        method: &MethodInfo,
        entity_id: &str,
        payload: Bytes,
        metadata: Metadata,
        idempotency_key: &str,
        deadline: Instant,
    ) -> Result<HandleResponse, Error> {
        self.send(Call {
            method,
            entity_id,
            payload,
            metadata,
            idempotency_key,
            traceparent: None,
            hops: 0,
            type_url: None,
            deadline,
        })
        .await
    }

    /// Delivers a command to the processor that may run it and returns its response,
    /// retrying (see the module docs) until `call.deadline`.
    pub async fn send(&self, call: Call<'_>) -> Result<HandleResponse, Error> {
        let deadline = call.deadline;
        self.route(
            call,
            deadline,
            |router, target, request, deadline| async move {
                router.attempt(&target, request, deadline).await
            },
        )
        .await
    }

    /// Opens a streamed call (`Processor/HandleStreamed`) on the processor that may run it,
    /// retrying like [`Router::send`] until the call is accepted or `accept_by` passes
    /// (`call.deadline` bounds the whole call: a subscription without a client deadline runs
    /// until either side ends it).
    ///
    /// `call.payload` is the first request message (empty for client-streamed and duplex calls,
    /// whose first message carries no payload); `rest` holds the caller's later messages. They
    /// are read only after a processor accepted the call, so an attempt that was refused loses
    /// none of them. The returned stream yields one response per element for the client; it ends
    /// with the call (a `Status` ends it early). Dropping it cancels the call.
    pub async fn open(
        &self,
        call: Call<'_>,
        rest: mpsc::Receiver<HandleRequest>,
        accept_by: Instant,
    ) -> Result<tonic::Streaming<HandleResponse>, Error> {
        let rest = Arc::new(Mutex::new(Some(rest)));
        let ends_by = call.deadline;
        let accept_by = accept_by.min(ends_by);
        self.route(
            call,
            accept_by,
            move |router, target, request, accept_by| {
                let rest = Arc::clone(&rest);
                async move {
                    router
                        .attempt_stream(&target, request, rest, accept_by, ends_by)
                        .await
                }
            },
        )
        .await
    }

    /// The span of one routed command (`statehouse.route`; none while traces are off): a child
    /// of the caller's current span (the gateway's call), or of `call.traceparent` when given (a
    /// processor's forward or side effect); its context is what the processor continues.
    async fn route<T, F, Fut>(
        &self,
        call: Call<'_>,
        answer_by: Instant,
        attempt: F,
    ) -> Result<T, Error>
    where
        F: FnMut(Router, Target, HandleRequest, Instant) -> Fut,
        Fut: Future<Output = Result<Attempt<T>, Error>>,
    {
        let span = if !trace::enabled() {
            tracing::Span::none()
        } else {
            tracing::info_span!(
                semconv::SPAN_ROUTE,
                { semconv::OTEL_KIND } = "client",
                { semconv::RPC_SYSTEM } = "grpc",
                { semconv::RPC_SERVICE } = %call.method.service,
                { semconv::RPC_METHOD } = %call.method.name,
                { semconv::ENTITY_ID } = call.entity_id,
                { semconv::ENDPOINT } = tracing::field::Empty,
                { semconv::TRACE_ID } = tracing::field::Empty,
            )
        };
        if call.traceparent.is_some() {
            trace::continue_trace(&span, call.traceparent, None);
        }
        self.route_in(call, answer_by, attempt, &span)
            .instrument(span.clone())
            .await
    }

    /// The retry loop shared by unary and streamed calls: find a target, attempt, and on a
    /// retriable outcome wait (backoff, or a registry change) and go again.
    async fn route_in<T, F, Fut>(
        &self,
        call: Call<'_>,
        answer_by: Instant,
        mut attempt: F,
        span: &tracing::Span,
    ) -> Result<T, Error>
    where
        F: FnMut(Router, Target, HandleRequest, Instant) -> Fut,
        Fut: Future<Output = Result<Attempt<T>, Error>>,
    {
        let registry = &self.inner.registry;
        let service = registry
            .routes()
            .service_of(&call.method.service)
            .ok_or_else(|| Error::UnknownService {
                grpc_service: call.method.service.clone(),
            })?
            .to_string();
        let kind = call.method.entity.kind();
        let keyed = kind.is_some_and(|kind| kind.is_keyed());
        // A CRDT whose owner is unreachable may run on any processor.
        let mut avoid: Option<String> = None;
        // The route span's context when traces are on; otherwise the caller's, passed on.
        let traceparent = trace::traceparent(span)
            .or_else(|| call.traceparent.map(str::to_string))
            .or_else(|| metadata_value(&call.metadata, trace::TRACEPARENT))
            .unwrap_or_default();
        let mut request = HandleRequest {
            service: service.clone(),
            method: call.method.path.clone(),
            entity_id: call.entity_id.to_string(),
            payload: call.payload,
            metadata: Some(call.metadata),
            idempotency_key: call.idempotency_key.to_string(),
            deadline_unix_ms: unix_ms(call.deadline),
            partition: -1,
            traceparent,
            hops: call.hops,
            type_url: call.type_url.unwrap_or_default().to_string(),
        };
        let mut changes = registry.subscribe();
        let mut backoff = self.inner.options.initial_backoff;
        let mut last_retry = None;
        let retry_until = retry_until(answer_by);
        loop {
            changes.borrow_and_update();
            let target = self
                .target(
                    &service,
                    keyed,
                    call.entity_id,
                    call.deadline,
                    avoid.as_deref(),
                )
                .await?;
            let mut tried = None;
            let retry = match target {
                Err(retry) => retry,
                Ok(target) => {
                    tried = Some(target.endpoint.clone());
                    span.record(semconv::ENDPOINT, target.endpoint.as_str());
                    request.partition = target.partition;
                    let partition = target.partition;
                    match attempt(self.clone(), target, request.clone(), answer_by).await? {
                        Attempt::Answered(response) => return Ok(response),
                        Attempt::Retry(retry) => retry,
                        Attempt::TimedOut(message) => {
                            // Report why earlier attempts failed, if they did: that is what
                            // kept the command from running.
                            return Err(match last_retry {
                                Some(retry) => give_up(&service, retry),
                                None => Error::DeadlineExceeded {
                                    service,
                                    partition,
                                    last: message,
                                },
                            });
                        }
                    }
                }
            };
            let now = Instant::now();
            if now >= retry_until {
                return Err(give_up(&service, retry));
            }
            let wait = jitter(backoff).min(retry_until - now);
            backoff = (backoff * 2).min(self.inner.options.max_backoff);
            tracing::debug!(service, ?wait, reason = %retry_reason(&retry), "retrying command");
            // Any processor of the service runs CRDTs: after an unreachable or refusing one
            // (catching up, stopping), try another.
            if kind == Some(EntityKind::Crdt)
                && matches!(retry, Retry::Unreachable { .. } | Retry::NotOwner { .. })
            {
                avoid = tried;
            }
            ::metrics::counter!(crate::metrics::ROUTER_RETRIES, "reason" => retry.label())
                .increment(1);
            last_retry = Some(retry);
            // Wake up early when the registry changes (a new owner, a partition count).
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = changes.changed() => {}
            }
        }
    }

    /// Where the next attempt goes, or why there is nowhere to go yet: the partition owner for
    /// keyed commands, any processor (but `avoid`) otherwise.
    async fn target(
        &self,
        service: &str,
        keyed: bool,
        entity_id: &str,
        deadline: Instant,
        avoid: Option<&str>,
    ) -> Result<Result<Target, Retry>, Error> {
        let registry = &self.inner.registry;
        if !keyed || avoid.is_some() {
            let mut processors = registry.processors(service);
            if processors.len() > 1 {
                processors.retain(|p| Some(p.as_str()) != avoid);
            }
            if processors.is_empty() {
                return Ok(Err(Retry::NoProcessor));
            }
            let next = self.inner.next_processor.fetch_add(1, Ordering::Relaxed);
            return Ok(Ok(Target {
                endpoint: processors[next % processors.len()].clone(),
                partition: -1,
            }));
        }
        let Some(partitions) = self.partition_count(service, deadline).await? else {
            return Ok(Err(Retry::NoOwner(-1)));
        };
        let partition = statehouse_core::partition_for(entity_id.as_bytes(), partitions);
        let partition_i32 = i32::try_from(partition).unwrap_or(i32::MAX);
        Ok(match registry.owner(service, partition) {
            Some(owner) => Ok(Target {
                endpoint: owner.endpoint,
                partition: partition_i32,
            }),
            None => Err(Retry::NoOwner(partition_i32)),
        })
    }

    async fn partition_count(
        &self,
        service: &str,
        deadline: Instant,
    ) -> Result<Option<u32>, Error> {
        let registry = &self.inner.registry;
        if let Some(count) = registry.partition_count(service) {
            return Ok(Some(count));
        }
        let Some((admin, prefix)) = &self.inner.kafka else {
            return Ok(None);
        };
        let _one_at_a_time = self.inner.lookups.lock().await;
        if let Some(count) = registry.partition_count(service) {
            return Ok(Some(count));
        }
        let name = ServiceName::new(service).map_err(|source| Error::BadServiceName {
            service: service.to_string(),
            source,
        })?;
        let topic = Topics::new(prefix.clone(), name).journal();
        match tokio::time::timeout_at(deadline, admin.partition_count(&topic)).await {
            Err(_elapsed) => Ok(None),
            Ok(Ok(Some(count))) if count > 0 => {
                registry.set_partition_count(service, count);
                Ok(Some(count))
            }
            Ok(Ok(_)) => {
                tracing::debug!(service, topic, "journal topic does not exist yet");
                Ok(None)
            }
            Ok(Err(e)) if e.is_transient() => {
                tracing::warn!(service, topic, error = %e, "reading the partition count failed; retrying");
                Ok(None)
            }
            Ok(Err(e)) => Err(e.into()),
        }
    }

    /// One `Handle` call.
    async fn attempt(
        &self,
        target: &Target,
        request: HandleRequest,
        deadline: Instant,
    ) -> Result<Attempt<HandleResponse>, Error> {
        let mut client = self.client(&target.endpoint)?;
        // Retrying a command that may already have run is only safe when the processor can
        // recognise it: with an idempotency key.
        let has_key = !request.idempotency_key.is_empty();
        let remaining = deadline.saturating_duration_since(Instant::now());
        let mut grpc_request = tonic::Request::new(request);
        grpc_request.set_timeout(remaining);
        match tokio::time::timeout_at(deadline, client.handle(grpc_request)).await {
            Ok(Ok(response)) => Ok(Attempt::Answered(response.into_inner())),
            Ok(Err(status)) => self.refused(target, status, has_key, deadline),
            Err(_elapsed) => Ok(Attempt::TimedOut(
                "the processor did not answer in time".into(),
            )),
        }
    }

    /// One `HandleStreamed` call: the first message, then — once the processor accepted the
    /// call — the caller's later messages.
    async fn attempt_stream(
        &self,
        target: &Target,
        first: HandleRequest,
        rest: Arc<Mutex<Option<mpsc::Receiver<HandleRequest>>>>,
        deadline: Instant,
        ends_by: Instant,
    ) -> Result<Attempt<tonic::Streaming<HandleResponse>>, Error> {
        let mut client = self.client(&target.endpoint)?;
        let has_key = !first.idempotency_key.is_empty();
        let (accepted, gate) = tokio::sync::oneshot::channel::<()>();
        let later = futures::stream::once(gate).flat_map(move |opened| {
            // Only an accepted call takes the caller's messages; a refused one leaves them for
            // the next attempt.
            let rx = match opened {
                Ok(()) => rest.lock().unwrap_or_else(|e| e.into_inner()).take(),
                Err(_) => None,
            };
            futures::stream::unfold(rx, |rx| async move {
                let mut rx = rx?;
                let next = rx.recv().await?;
                Some((next, Some(rx)))
            })
        });
        let requests = futures::stream::once(std::future::ready(first)).chain(later);
        let mut grpc_request = tonic::Request::new(requests);
        if let Some(remaining) = ends_by.checked_duration_since(Instant::now())
            && remaining < UNBOUNDED
        {
            grpc_request.set_timeout(remaining);
        }
        match tokio::time::timeout_at(deadline, client.handle_streamed(grpc_request)).await {
            Ok(Ok(response)) => {
                let _ = accepted.send(());
                Ok(Attempt::Answered(response.into_inner()))
            }
            Ok(Err(status)) => self.refused(target, status, has_key, deadline),
            Err(_elapsed) => Ok(Attempt::TimedOut(
                "the processor did not accept the call in time".into(),
            )),
        }
    }

    fn client(&self, endpoint: &str) -> Result<ProcessorClient<Channel>, Error> {
        Ok(ProcessorClient::new(self.channel(endpoint)?)
            .max_decoding_message_size(self.inner.options.max_reply_bytes)
            .max_encoding_message_size(self.inner.options.max_reply_bytes))
    }

    /// What a status instead of an answer means: retry (nothing ran), time out, or a final error.
    fn refused<T>(
        &self,
        target: &Target,
        status: tonic::Status,
        has_key: bool,
        deadline: Instant,
    ) -> Result<Attempt<T>, Error> {
        if matches!(status.code(), Code::Unavailable | Code::FailedPrecondition)
            && let Some(not_owner) = NotOwner::from_status(&status)
        {
            self.learn_owner(&not_owner);
            return Ok(Attempt::Retry(Retry::NotOwner {
                partition: target.partition,
                message: status.message().to_string(),
            }));
        }
        // Client-made statuses carry the transport error as their source (a status sent by a
        // processor is parsed from trailers and has none) or no server headers at all.
        let client_made =
            status.metadata().is_empty() || std::error::Error::source(&status).is_some();
        if client_made
            && matches!(
                status.code(),
                Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled
            )
            && !(matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled)
                && Instant::now() >= deadline)
        {
            // Made by the client, not by a processor (no server sent headers): the connection
            // failed. If it never connected, nothing ran and a retry is safe; if it broke
            // mid-call, the command may have been committed, so only a command with an
            // idempotency key is retried — otherwise the caller learns the outcome is unknown.
            self.forget_channel(&target.endpoint);
            if has_key || never_connected(&status) {
                return Ok(Attempt::Retry(Retry::Unreachable {
                    endpoint: target.endpoint.clone(),
                    reason: status.message().to_string(),
                }));
            }
            return Err(Error::Processor(tonic::Status::unavailable(format!(
                "the connection to processor {} broke during the call ({}); the command's outcome is unknown: retry it with an idempotency-key header to make the retry safe",
                target.endpoint,
                status.message()
            ))));
        }
        if matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled)
            && Instant::now() >= deadline
        {
            return Ok(Attempt::TimedOut(status.message().to_string()));
        }
        Err(Error::Processor(status))
    }

    /// A `NotOwner` detail that names a newer owner is as good as a routing record.
    fn learn_owner(&self, not_owner: &NotOwner) {
        if not_owner.owner_endpoint.is_empty() || not_owner.owner_epoch <= 0 {
            return;
        }
        self.inner
            .registry
            .apply_routing(statehouse_schemas::avro::RoutingRecord {
                service: not_owner.service.clone(),
                partition: not_owner.partition,
                owner_processor_id: not_owner.owner_processor_id.clone(),
                owner_endpoint: not_owner.owner_endpoint.clone(),
                epoch: not_owner.owner_epoch,
                updated_at_ms: 0,
            });
    }

    fn channel(&self, endpoint: &str) -> Result<Channel, Error> {
        let mut channels = self
            .inner
            .channels
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(channel) = channels.get(endpoint) {
            return Ok(channel.clone());
        }
        if channels.len() >= self.inner.options.max_channels {
            channels.clear();
        }
        let channel = connect_lazy(
            endpoint,
            self.inner.options.tls.as_ref(),
            self.inner.options.connect_timeout,
        )?;
        channels.insert(endpoint.to_string(), channel.clone());
        Ok(channel)
    }

    fn forget_channel(&self, endpoint: &str) {
        self.inner
            .channels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(endpoint);
    }
}

/// A lazily connecting channel to a processor's endpoint: over TLS when `tls` is given
/// (`https://`, whatever scheme the endpoint was advertised with), else h2c; an `https://`
/// endpoint without TLS configured is refused with the setting to change.
pub fn connect_lazy(
    endpoint: &str,
    tls: Option<&Arc<crate::tls::ClientTls>>,
    connect_timeout: Duration,
) -> Result<Channel, Error> {
    let bad = |reason: String| Error::BadEndpoint {
        endpoint: endpoint.to_string(),
        reason,
    };
    let authority = endpoint
        .split_once("://")
        .map_or(endpoint, |(_, rest)| rest);
    match tls {
        Some(tls) => tls
            .channel(&format!("https://{authority}"), connect_timeout)
            .map_err(|e| bad(e.to_string())),
        None if endpoint.starts_with("https://") => Err(bad(
            "the processor serves TLS; set [internal-tls] (enabled, ca-file, cert-file, key-file) to reach it"
                .into(),
        )),
        None => Ok(Endpoint::from_shared(format!("http://{authority}"))
            .map_err(|e| bad(e.to_string()))?
            .connect_timeout(connect_timeout)
            .tcp_nodelay(true)
            .connect_lazy()),
    }
}

impl Retry {
    fn label(&self) -> &'static str {
        match self {
            Retry::NoOwner(_) => "no-owner",
            Retry::NoProcessor => "no-processor",
            Retry::Unreachable { .. } => "unreachable",
            Retry::NotOwner { .. } => "not-owner",
        }
    }
}

fn give_up(service: &str, retry: Retry) -> Error {
    match retry {
        Retry::NoOwner(partition) => Error::NoOwner {
            service: service.to_string(),
            partition,
        },
        Retry::NoProcessor => Error::NoProcessor {
            service: service.to_string(),
        },
        Retry::Unreachable { endpoint, reason } => Error::Unreachable { endpoint, reason },
        Retry::NotOwner { partition, message } => Error::DeadlineExceeded {
            service: service.to_string(),
            partition,
            last: message,
        },
    }
}

fn retry_reason(retry: &Retry) -> String {
    match retry {
        Retry::NoOwner(p) => format!("no owner of partition {p}"),
        Retry::NoProcessor => "no processor".into(),
        Retry::Unreachable { endpoint, reason } => format!("{endpoint} unreachable: {reason}"),
        Retry::NotOwner { partition, message } => {
            format!("not the owner of partition {partition}: {message}")
        }
    }
}

/// When to stop retrying: a little before the deadline (a tenth of the time left, at most
/// 250 ms), so that the answer — why the command could not run — reaches the caller before its
/// own deadline passes.
fn retry_until(deadline: Instant) -> Instant {
    let remaining = deadline.saturating_duration_since(Instant::now());
    deadline - (remaining / 10).min(Duration::from_millis(250))
}

/// `wait` ±25 %.
fn jitter(wait: Duration) -> Duration {
    wait.mul_f64(rand::rng().random_range(0.75..1.25))
}

/// An `Instant` deadline as Unix epoch milliseconds.
/// A deadline this far away is none: a streamed call without a client deadline (a
/// subscription) runs until either side ends it.
pub const UNBOUNDED: Duration = Duration::from_secs(365 * 24 * 3600);

/// The deadline of a call that has none (see [`UNBOUNDED`]).
pub fn no_deadline() -> Instant {
    Instant::now() + UNBOUNDED
}

/// A deadline as Unix milliseconds (0: none).
fn unix_ms(deadline: Instant) -> i64 {
    let remaining = deadline.saturating_duration_since(Instant::now());
    if remaining >= UNBOUNDED / 2 {
        return 0;
    }
    let at = SystemTime::now() + remaining;
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The string value of metadata entry `key` (case-insensitive), if any.
fn metadata_value(metadata: &Metadata, key: &str) -> Option<String> {
    metadata.entries.iter().find_map(|entry| {
        if !entry.key.eq_ignore_ascii_case(key) {
            return None;
        }
        match &entry.value {
            Some(metadata_entry::Value::StringValue(v)) => Some(v.clone()),
            _ => None,
        }
    })
}

#[cfg(test)]
mod tests;

/// Whether a client-made status says the connection was never established (so the request was
/// never sent).
fn never_connected(status: &tonic::Status) -> bool {
    let mut text = status.message().to_ascii_lowercase();
    let mut source = std::error::Error::source(status);
    while let Some(e) = source {
        text.push(' ');
        text.push_str(&e.to_string().to_ascii_lowercase());
        source = e.source();
    }
    text.contains("connection refused")
        || text.contains("tcp connect error")
        || text.contains("error trying to connect")
        || text.contains("dns error")
        // A refused TLS handshake (`crate::tls`): the processor read no request. Under TLS 1.3
        // the client's side finishes first, so the refusal arrives as an alert on the first
        // read, after the request was written — into a connection the server never served.
        || text.contains("received fatal alert")
        || text.contains("invalid peer certificate")
        || text.contains("tls connect timed out")
}
