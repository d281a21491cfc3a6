//! Span names and attribute (field) names of Statehouse's traces and logs, kept in one place so
//! that trace queries, dashboards and log searches can rely on them. `docs/observability.md`
//! lists them with the spans' parents and links.
//!
//! Where OpenTelemetry has a semantic convention (`rpc.*`, `messaging.*`), the attribute uses
//! it; Statehouse's own concepts live under `statehouse.*`.

// --- spans ------------------------------------------------------------------------------------

/// Gateway: one client call, from request head to response (kind server). Its parent is the
/// client's `traceparent`, if it sent one.
pub const SPAN_GATEWAY_CALL: &str = "statehouse.gateway.call";
/// Router: delivering one command to the processor that may run it, retries included (kind
/// client). Its context is the `traceparent` of the internal request.
pub const SPAN_ROUTE: &str = "statehouse.route";
/// Processor: one command received on the internal API, until its answer (kind server).
pub const SPAN_PROCESSOR_HANDLE: &str = "statehouse.processor.handle";
/// Processor: one command at the user function, from sending it on the entity's (or
/// action's) stream to its reply (kind client). The user function gets its context as
/// `traceparent` metadata.
pub const SPAN_USER_FUNCTION_CALL: &str = "statehouse.user_function.call";
/// Processor: one append of records (a command's events, or a group of commands') to the
/// journal / values topic in a Kafka transaction, until committed (kind producer). Its parent
/// is the first command's span; the other commands of the group are links.
pub const SPAN_COMMIT: &str = "statehouse.journal.commit";
/// Processor: reading a partition's journal and values topic at takeover; links to the
/// records' `traceparent` headers (at most [`MAX_LINKS`]).
pub const SPAN_RECOVER: &str = "statehouse.partition.recover";
/// Projector: one batch of journal events handled by a projection (kind consumer); links to
/// the events' `traceparent`s.
pub const SPAN_PROJECTION_BATCH: &str = "statehouse.projection.batch";
/// Processor: one event of an eventing subscription turned into a command (kind consumer);
/// links to the event's `traceparent`.
pub const SPAN_EVENTING_EVENT: &str = "statehouse.eventing.event";

/// Links one reader span records at most (OpenTelemetry's default span link limit is 128).
pub const MAX_LINKS: usize = 64;

// --- attributes ---------------------------------------------------------------------------

/// The span's trace id, recorded on the root span of each process so log lines carry it.
pub const TRACE_ID: &str = "trace_id";
/// OpenTelemetry span kind (`server`, `client`, `producer`, `consumer`), read by the
/// exporter.
pub const OTEL_KIND: &str = "otel.kind";
/// OpenTelemetry status (`error` marks a failed span), read by the exporter.
pub const OTEL_STATUS: &str = "otel.status_code";
/// `grpc`.
pub const RPC_SYSTEM: &str = "rpc.system";
/// The user's gRPC service, e.g. `com.example.shoppingcart.ShoppingCart`.
pub const RPC_SERVICE: &str = "rpc.service";
/// The method name, e.g. `AddItem`.
pub const RPC_METHOD: &str = "rpc.method";
/// The gRPC status code of the outcome (`OK`, `NOT_FOUND`, …).
pub const RPC_CODE: &str = "rpc.grpc.status_code";
/// The client protocol at the gateway: `grpc`, `grpc-web` or `http`.
pub const PROTOCOL: &str = "statehouse.protocol";
/// The Statehouse service (the deployment unit: one user function).
pub const SERVICE: &str = "statehouse.service";
/// The entity key (absent for actions).
pub const ENTITY_ID: &str = "statehouse.entity.id";
/// The command id on the entity's stream.
pub const COMMAND_ID: &str = "statehouse.command.id";
/// Records in one append.
pub const RECORDS: &str = "statehouse.records";
/// The processor a command was routed to.
pub const ENDPOINT: &str = "statehouse.endpoint";
/// The projection.
pub const PROJECTION: &str = "statehouse.projection";
/// Kafka topic.
pub const KAFKA_TOPIC: &str = "messaging.destination.name";
/// Kafka partition.
pub const KAFKA_PARTITION: &str = "messaging.destination.partition.id";
