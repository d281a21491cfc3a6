//! Statehouse processor: the sidecar of one user function.
//!
//! [`run`] connects to the user function (h2c on localhost), runs discovery and validates the
//! entity spec, makes sure the service's topics exist, publishes the service to the registry
//! topic, joins the service's ownership group and serves the internal `Processor` API. For each
//! partition the group assigns, [`partition::Partition`] fences the previous owner, recovers the
//! journal tail after the Cassandra checkpoint, publishes a routing record and serves; each
//! active entity is an [`entity`] task with a mailbox and one `handle` stream to the user
//! function. Events are committed through the partition's transactional writer (group commit)
//! before a reply is released, and backed up to Cassandra asynchronously ([`backup`]).

mod backup;
mod effects;
mod entity;
mod error;
mod health;
mod metrics;
mod owner;
mod partition;
mod server;
mod tail;
mod user_function;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use statehouse_core::{ServiceName, Topics, partition_for};
use statehouse_kafka::admin::Admin;
use statehouse_kafka::publisher::Publisher;
use statehouse_runtime::config::Config;
use statehouse_runtime::method_index::{MethodIndex, MethodInfo};
use statehouse_runtime::{Health, admin_server};
use statehouse_schemas::avro::{self, AvroRecord};
use statehouse_schemas::cloudstate as cs;
use statehouse_schemas::protocol;
use statehouse_schemas::statehouse::processor::v1::processor_server::ProcessorServer;
use statehouse_store::Store;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use error::Error;

use crate::entity::{Command, Outcome};
use crate::partition::Partition;
use crate::user_function::UserFunction;

/// The entity types this processor implements (sent in `ProxyInfo`).
pub const SUPPORTED_ENTITY_TYPES: &[&str] = &[protocol::EVENT_SOURCED];

/// Forward/side-effect chains longer than this are refused (a loop).
const MAX_HOPS: u32 = 32;

/// State shared by every part of a running processor.
pub(crate) struct Node {
    pub(crate) config: Config,
    pub(crate) service: ServiceName,
    pub(crate) topics: Topics,
    pub(crate) index: MethodIndex,
    pub(crate) processor_id: String,
    pub(crate) endpoint: String,
    pub(crate) store: Store,
    pub(crate) uf: UserFunction,
    pub(crate) partition_count: u32,
    pub(crate) shutdown: CancellationToken,
    partitions: RwLock<HashMap<u32, Arc<Partition>>>,
    /// The owner of each partition per the routing topic: (endpoint, epoch).
    routes: RwLock<HashMap<u32, (String, i64)>>,
    active_entities: AtomicUsize,
    commands: AtomicU64,
    /// Pause detection (see [`Node::may_serve`]): the time base, the last heartbeat of the
    /// ticker (ms since `clock`), and the end of a suspension after a pause (ms since `clock`).
    clock: std::time::Instant,
    last_tick_ms: AtomicU64,
    suspended_until_ms: AtomicU64,
}

/// A command on its way to an entity.
pub(crate) struct Request {
    pub(crate) method: Arc<MethodInfo>,
    pub(crate) entity_id: String,
    pub(crate) payload: Bytes,
    /// Request metadata (not sent to entities: the reference proxy does not; actions will).
    pub(crate) _metadata: Option<cs::Metadata>,
    pub(crate) idempotency_key: Option<String>,
    pub(crate) deadline: Option<Instant>,
    pub(crate) traceparent: Option<String>,
    pub(crate) hops: u32,
}

impl Node {
    fn now_ms(&self) -> u64 {
        self.clock.elapsed().as_millis() as u64
    }

    /// The longest silence of the ticker that still counts as "running": half the group's
    /// session timeout. A longer one means the process was paused (SIGSTOP, a VM freeze): the
    /// group may have given its partitions to another processor meanwhile.
    fn pause_threshold_ms(&self) -> u64 {
        u64::from(self.config.kafka.session_timeout_ms / 2).max(500)
    }

    /// Whether this processor may serve its partitions right now. After a pause it refuses
    /// (reads and writes) until the group has had a full session timeout to tell it which
    /// partitions it lost — so a resumed zombie never serves a stale read. Writes are also
    /// protected by the transactional fence; this closes the gap for reads.
    pub(crate) fn may_serve(&self) -> bool {
        let now = self.now_ms();
        now.saturating_sub(self.last_tick_ms.load(Ordering::Acquire)) < self.pause_threshold_ms()
            && now >= self.suspended_until_ms.load(Ordering::Acquire)
    }

    /// Beat every 50 ms; notice pauses and suspend serving for a session timeout after one.
    async fn pause_detector(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let now = self.now_ms();
            let gap = now.saturating_sub(self.last_tick_ms.swap(now, Ordering::AcqRel));
            if gap >= self.pause_threshold_ms() {
                let until = now + u64::from(self.config.kafka.session_timeout_ms);
                self.suspended_until_ms.store(until, Ordering::Release);
                warn!(
                    paused_ms = gap,
                    suspended_ms = self.config.kafka.session_timeout_ms,
                    "the process was paused; not serving until the group confirms its partitions"
                );
            }
        }
    }

    /// The partition `id`, if this processor holds it.
    pub(crate) fn partition(&self, id: u32) -> Option<Arc<Partition>> {
        self.partitions
            .read()
            .expect("partitions lock")
            .get(&id)
            .cloned()
    }

    /// "Not here", naming the owner if the routing table knows another one.
    pub(crate) fn not_serving(&self, partition: u32) -> Error {
        let owner = self
            .routes
            .read()
            .expect("routes lock")
            .get(&partition)
            .filter(|(endpoint, _)| *endpoint != self.endpoint)
            .cloned();
        let (owner_endpoint, owner_epoch) = owner.unwrap_or_default();
        Error::NotOwner {
            service: self.service.to_string(),
            partition: partition as i32,
            owner_endpoint,
            owner_epoch,
        }
    }

    /// Follow the routing topic: the owner of each partition of this service, newest epoch wins.
    async fn follow_routes(self: Arc<Self>) {
        let mut records = match statehouse_kafka::reader::follow(
            &self.config.kafka,
            &self.topics.routing(),
            0,
            0,
            self.shutdown.clone(),
        ) {
            Ok(rx) => rx,
            Err(e) => {
                warn!(error = %e, "cannot follow the routing topic; not-owner answers will not name the owner");
                return;
            }
        };
        tracing::debug!(topic = %self.topics.routing(), "following the routing topic");
        while let Some(message) = records.recv().await {
            let Some(value) = message.value else { continue };
            let Ok(record) = avro::RoutingRecord::decode(&value) else {
                continue;
            };
            if record.service != self.service.as_str() || record.partition < 0 {
                continue;
            }
            tracing::debug!(partition = record.partition, owner = %record.owner_endpoint, epoch = record.epoch, "route learned");
            let mut routes = self.routes.write().expect("routes lock");
            let entry = routes.entry(record.partition as u32).or_default();
            if record.epoch >= entry.1 {
                *entry = (record.owner_endpoint, record.epoch);
            }
        }
    }

    /// Run a command on the entity it addresses, in the partition this processor owns.
    pub(crate) async fn dispatch(self: &Arc<Self>, request: Request) -> Result<Outcome, Error> {
        if request.hops > MAX_HOPS {
            return Err(Error::InvalidArgument(format!(
                "more than {MAX_HOPS} forwards/side effects in a chain (a loop?)"
            )));
        }
        if request.entity_id.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "{} needs an entity key",
                request.method.path
            )));
        }
        let id = partition_for(request.entity_id.as_bytes(), self.partition_count);
        if !self.may_serve() {
            return Err(self.not_serving(id));
        }
        let partition = self.partition(id).ok_or_else(|| self.not_serving(id))?;
        let key = tail::entity_key(&request.method.entity.persistence_id, &request.entity_id);
        let (reply, rx) = oneshot::channel();
        partition.send(
            self,
            key,
            request.entity_id,
            Command {
                method: request.method,
                payload: request.payload,
                idempotency_key: request.idempotency_key,
                deadline: request.deadline,
                traceparent: request.traceparent,
                hops: request.hops,
                reply,
            },
        )?;
        rx.await
            .unwrap_or_else(|_| Err(Error::EntityFailure("Entity terminated".into())))
    }

    pub(crate) fn next_command_id(&self) -> String {
        let n = self.commands.fetch_add(1, Ordering::Relaxed);
        format!("{}-{n}", self.processor_id)
    }

    pub(crate) fn active_entities(&self) -> usize {
        self.active_entities.load(Ordering::Relaxed)
    }

    pub(crate) fn entity_started(&self) {
        let n = self.active_entities.fetch_add(1, Ordering::Relaxed) + 1;
        ::metrics::gauge!(metrics::ACTIVE_ENTITIES).set(n as f64);
    }

    pub(crate) fn entity_stopped(&self) {
        let n = self.active_entities.fetch_sub(1, Ordering::Relaxed) - 1;
        ::metrics::gauge!(metrics::ACTIVE_ENTITIES).set(n as f64);
    }
}

/// A processor started by [`start`].
pub struct Running {
    /// The internal gRPC address (for routers).
    pub internal_addr: SocketAddr,
    /// The metrics and health address.
    pub metrics_addr: SocketAddr,
    /// The service this processor serves.
    pub service: String,
    task: tokio::task::JoinHandle<Result<(), Error>>,
}

impl Running {
    /// Wait until the processor has stopped (after its shutdown token was cancelled).
    pub async fn wait(self) -> Result<(), Error> {
        self.task
            .await
            .unwrap_or_else(|e| Err(Error::Config(format!("processor task failed: {e}"))))
    }
}

/// Run a processor until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    start(config, shutdown).await?.wait().await
}

/// Start a processor: returns once discovery succeeded and the internal port is bound (the
/// partitions are then assigned and recovered in the background; readiness follows).
pub async fn start(config: Config, shutdown: CancellationToken) -> Result<Running, Error> {
    let health = Health::new();
    let (metrics_addr, _metrics_task) = admin_server::serve(
        config.processor.metrics_listen,
        health.clone(),
        shutdown.clone(),
    )
    .await
    .map_err(|e| {
        Error::Config(format!(
            "binding processor.metrics-listen {}: {e}",
            config.processor.metrics_listen
        ))
    })?;
    let p = &config.processor;
    let uf = UserFunction::new(&p.user_function_host, p.user_function_port)?;
    let spec = uf.discover(&shutdown).await?;
    let info = spec.service_info.clone().unwrap_or_default();
    let version = (info.protocol_major_version, info.protocol_minor_version);
    if version != (protocol::MAJOR_VERSION, protocol::MINOR_VERSION) {
        let message = format!(
            "Incompatible protocol version {}.{}, only {}.{} is supported",
            version.0,
            version.1,
            protocol::MAJOR_VERSION,
            protocol::MINOR_VERSION
        );
        if p.strict_protocol_version || version.0 > protocol::MAJOR_VERSION {
            uf.report_error(&message).await;
            return Err(Error::UserFunction(message));
        }
        warn!(library = %info.support_library_name, version = %info.support_library_version, "{message}; accepting a legacy SDK (processor.strict-protocol-version = false)");
    }
    let index = match MethodIndex::build(&spec.proto, &spec.entities, SUPPORTED_ENTITY_TYPES) {
        Ok(index) => index,
        Err(e) => {
            let message = format!("Invalid entity spec: {e}");
            uf.report_error(&message).await;
            return Err(Error::UserFunction(message));
        }
    };
    let service_name = p
        .service
        .clone()
        .or_else(|| (!info.service_name.is_empty()).then(|| info.service_name.clone()))
        .ok_or_else(|| {
            Error::Config("the user function reports no service name; set processor.service".into())
        })?;
    let service = ServiceName::new(service_name.clone()).map_err(|e| {
        Error::Config(format!(
            "service name {service_name:?} from the user function is not usable ({e}); set processor.service"
        ))
    })?;
    let topics = Topics::new(config.kafka.topic_prefix.clone(), service.clone());
    let admin = Admin::new(&config.kafka)?;
    until_done(
        "creating the service's topics",
        &shutdown,
        statehouse_kafka::Error::is_transient,
        || admin.ensure_service(&service, p.partitions),
    )
    .await?;
    let store = until_done(
        "connecting to Cassandra",
        &shutdown,
        statehouse_store::Error::is_transient,
        || Store::connect(&config.cassandra),
    )
    .await?;

    let listener = tokio::net::TcpListener::bind(p.listen)
        .await
        .map_err(|e| Error::Config(format!("binding processor.listen {}: {e}", p.listen)))?;
    let internal_addr = listener
        .local_addr()
        .map_err(|e| Error::Config(e.to_string()))?;
    let endpoint = match &p.advertise_address {
        Some(a) if a.starts_with("http://") || a.starts_with("https://") => a.clone(),
        Some(a) => format!("http://{a}"),
        None if internal_addr.ip().is_unspecified() => {
            format!("http://127.0.0.1:{}", internal_addr.port())
        }
        None => format!("http://{internal_addr}"),
    };
    let processor_id = format!(
        "{}-{}",
        service,
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let node = Arc::new(Node {
        partition_count: p.partitions,
        config: config.clone(),
        service: service.clone(),
        topics,
        index,
        processor_id,
        endpoint,
        store,
        uf,
        shutdown: shutdown.clone(),
        partitions: RwLock::new(HashMap::new()),
        routes: RwLock::new(HashMap::new()),
        active_entities: AtomicUsize::new(0),
        commands: AtomicU64::new(0),
        clock: std::time::Instant::now(),
        last_tick_ms: AtomicU64::new(0),
        suspended_until_ms: AtomicU64::new(0),
    });
    tokio::spawn(Arc::clone(&node).pause_detector());
    tokio::spawn(Arc::clone(&node).follow_routes());
    let publisher = Publisher::new(&config.kafka)?;
    until_done(
        "publishing the service",
        &shutdown,
        |e: &Error| matches!(e, Error::NotCommitted(_)),
        || publish_service(&node, &publisher, &spec),
    )
    .await?;
    info!(service = %service, processor = %node.processor_id, endpoint = %node.endpoint, partitions = p.partitions, "processor started");

    let server_shutdown = CancellationToken::new();
    let server = {
        let service = ProcessorServer::new(server::Service {
            node: Arc::clone(&node),
        })
        .max_decoding_message_size(16 * 1024 * 1024);
        let health_service = statehouse_schemas::grpc::health::v1::health_server::HealthServer::new(
            health::Service {
                node: Arc::clone(&node),
                readiness: health.clone(),
            },
        );
        let stop = server_shutdown.clone();
        tokio::spawn(async move {
            // Nagle off on every accepted connection (a custom incoming does not inherit the
            // builder's setting): replies are small and must not wait for delayed ACKs.
            let incoming =
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
            tonic::transport::Server::builder()
                .add_service(service)
                .add_service(health_service)
                .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
                .await
        })
    };
    let task = tokio::spawn(owner::own_partitions(
        node,
        publisher,
        health,
        server,
        server_shutdown,
    ));
    Ok(Running {
        internal_addr,
        metrics_addr,
        service: service.to_string(),
        task,
    })
}

/// Run a start-up step until it succeeds, retrying errors that `transient` says may pass (a
/// broker or Cassandra still starting, or briefly away) with backoff, logging each; fails at
/// once on any other error, and with [`Error::ShuttingDown`] when told to stop.
async fn until_done<T, E, F, Fut>(
    what: &str,
    shutdown: &CancellationToken,
    transient: impl Fn(&E) -> bool,
    mut step: F,
) -> Result<T, Error>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut backoff = Duration::from_millis(500);
    loop {
        match step().await {
            Ok(value) => return Ok(value),
            Err(e) if transient(&e) => {
                warn!(error = %e, retry_in = ?backoff, "{what} failed; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return Err(Error::ShuttingDown),
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
            Err(e) => {
                return Err(Error::Startup {
                    what: what.to_string(),
                    reason: e.to_string(),
                });
            }
        }
    }
}

async fn publish_service(
    node: &Node,
    publisher: &Publisher,
    spec: &cs::EntitySpec,
) -> Result<(), Error> {
    let info = spec.service_info.clone().unwrap_or_default();
    let record = avro::ServiceRecord {
        service: node.service.to_string(),
        descriptor_set: Bytes::copy_from_slice(node.index.file_descriptor_set()),
        entities: spec
            .entities
            .iter()
            .map(|e| avro::Entity {
                entity_type: e.entity_type.clone(),
                service_name: e.service_name.clone(),
                persistence_id: e.persistence_id.clone(),
                passivation_timeout_ms: e
                    .passivation_strategy
                    .as_ref()
                    .and_then(|p| p.strategy.as_ref())
                    .map(|cs::entity_passivation_strategy::Strategy::Timeout(t)| t.timeout),
            })
            .collect(),
        processors: vec![avro::Processor {
            processor_id: node.processor_id.clone(),
            endpoint: node.endpoint.clone(),
        }],
        protocol_major: info.protocol_major_version,
        protocol_minor: info.protocol_minor_version,
        support_library_name: info.support_library_name,
        support_library_version: info.support_library_version,
        updated_at_ms: now_ms(),
    };
    let value = record
        .encode()
        .map_err(|e| Error::Journal(format!("encoding the service record: {e}")))?;
    publisher
        .publish(&node.topics.services(), node.service.as_str(), &value)
        .await?;
    Ok(())
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
