//! Statehouse processor: the sidecar of one user function.
//!
//! [`run`] connects to the user function (h2c on localhost), runs discovery and validates the
//! entity spec (reporting what it does not serve yet), makes sure the service's topics exist,
//! publishes the service to the registry topic, follows the registry (for the shared router),
//! joins the service's ownership group and serves the internal `Processor` API. For each
//! partition the group assigns, `partition::Partition` fences the previous owner, recovers the
//! journal and values tails after the Cassandra checkpoints, publishes a routing record and
//! serves. Each active entity is a task of the generic entity mailbox (`entity`) over its kind's
//! state machine (`kinds`); actions run on any processor of the service (`action`). Records are
//! committed through the partition's transactional writer (group commit) before a reply is
//! released, and backed up to Cassandra asynchronously (`backup`). `ARCHITECTURE.md` has the
//! module map.

mod action;
mod backup;
mod command;
mod discovery;
mod effects;
mod entity;
mod env;
mod erase;
mod error;
mod eventing;
#[doc(hidden)]
pub mod fuzzing;
mod health;
mod journal;
mod kinds;
mod lso;
mod metrics;
mod node;
mod owner;
mod partition;
mod pause;
mod records;
mod replicas;
mod server;
mod spans;
mod tail;
mod user_function;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use statehouse_core::{ServiceName, Topics};
use statehouse_kafka::admin::Admin;
use statehouse_kafka::publisher::Publisher;
use statehouse_runtime::config::Config;
use statehouse_runtime::router::{self, Registry, Router};
use statehouse_runtime::{Health, admin_server};
use statehouse_schemas::avro;
use statehouse_schemas::statehouse::processor::v1::processor_server::ProcessorServer;
use statehouse_store::Store;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use error::Error;

use crate::env::Env;
use crate::node::Node;
use crate::user_function::UserFunction;

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
    let discovered = discovery::discover(&uf, p, &shutdown).await?;
    let info = &discovered.info;
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
    // The user's topics eventing reads and writes: created if missing (the service's partition
    // count, the delete policy), taken as they are if they exist.
    let eventing_topics = discovered.eventing.topics();
    if !eventing_topics.is_empty() {
        until_done(
            "creating the eventing topics",
            &shutdown,
            statehouse_kafka::Error::is_transient,
            || admin.ensure_exist(&eventing_topics, p.partitions),
        )
        .await?;
    }
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
    // With `[internal-tls]` the port speaks TLS only (mTLS unless require-client-cert is
    // off) and the advertised endpoint says so (`https://`): routers must not try h2c.
    let tls = statehouse_runtime::tls::internal_acceptor(&config.internal_tls)
        .map_err(|e| Error::Config(format!("internal-tls: {e}")))?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let endpoint = match &p.advertise_address {
        Some(a) if a.starts_with("http://") || a.starts_with("https://") => a.clone(),
        Some(a) => format!("{scheme}://{a}"),
        None if internal_addr.ip().is_unspecified() => {
            format!("{scheme}://127.0.0.1:{}", internal_addr.port())
        }
        None => format!("{scheme}://{internal_addr}"),
    };
    let processor_id = format!(
        "{}-{}",
        service,
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    // The registry of every service and partition owner, and the router to other processors
    // (forwards and side effects), the same the gateway uses.
    let registry = Registry::new();
    registry.set_partition_count(service.as_str(), p.partitions);
    let router = Router::with_kafka(
        registry.clone(),
        router::Options {
            tls: statehouse_runtime::tls::internal_client(&config.internal_tls)
                .map_err(|e| Error::Config(format!("internal-tls: {e}")))?,
            ..router::Options::default()
        },
        Admin::new(&config.kafka)?,
        config.kafka.topic_prefix.clone(),
    );
    {
        let kafka = config.kafka.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            if let Err(e) = router::feed::run(&kafka, registry, shutdown).await {
                warn!(error = %e, "cannot follow the service registry; forwards to other services and not-owner answers will not find their processors");
            }
        });
    }
    let env = Arc::new(Env {
        kafka: config.kafka.clone(),
        service: service.clone(),
        service_topics: topics.clone(),
        topics: records::Topics {
            journal: Arc::from(topics.journal()),
            values: Arc::from(topics.values()),
        },
        processor_id: processor_id.clone(),
        store,
        lease: statehouse_kafka::ownership::Lease::new(config.kafka.session_timeout_ms),
        uf: uf.clone(),
        passivation: Duration::from_millis(p.passivation_timeout_ms),
        max_active: p.max_active_entities,
        mailbox: p.max_commands_per_entity,
        backup_interval: Duration::from_millis(p.backup_interval_ms),
        active: Arc::new(AtomicUsize::new(0)),
        seen_committed: env::SeenCommitted::new(p.partitions),
        shutdown: shutdown.clone(),
    });
    let node = Node::new(node::Parts {
        config: config.clone(),
        service: service.clone(),
        index: discovered.index.clone(),
        processor_id,
        endpoint,
        uf,
        env,
        router,
        shutdown: shutdown.clone(),
        outputs: if discovered.eventing.outputs.is_empty() {
            None
        } else {
            Some(Publisher::new(&config.kafka)?)
        },
    });
    tokio::spawn(Arc::clone(&node.pause).run(shutdown.clone()));
    metrics::describe(service.as_str(), p.partitions);
    tokio::spawn(lso::watch(Arc::clone(&node)));
    // Subscriptions: every processor of the service is a member of each one's group.
    for sub in &discovered.eventing.subscriptions {
        tokio::spawn(eventing::consumer::run(
            Arc::clone(&node.env),
            Arc::clone(&node) as Arc<dyn command::Host>,
            node.uf.clone(),
            Arc::new(sub.clone()),
            shutdown.clone(),
        ));
    }
    if discovered
        .served
        .iter()
        .any(|e| e.entity_type == statehouse_schemas::protocol::CRDT)
    {
        let replicas = replicas::Replicas::new(
            Arc::clone(&node.env),
            replicas::Options {
                heartbeat_interval: Duration::from_millis(p.crdt_heartbeat_interval_ms),
                heartbeat_timeout: Duration::from_millis(p.crdt_heartbeat_timeout_ms),
                write_timeout: Duration::from_millis(p.crdt_write_timeout_ms),
                prune_after: Duration::from_millis(p.crdt_prune_after_ms),
                backup_interval: Duration::from_millis(p.backup_interval_ms),
            },
            p.partitions,
        )?;
        let home = entity::Home::new(
            Arc::clone(&replicas),
            Arc::clone(&node.env),
            Arc::clone(&node) as Arc<dyn command::Host>,
            None,
            shutdown.child_token(),
        );
        replicas.attach(&home);
        let owned_by = Arc::downgrade(&node);
        replicas.start(
            Arc::new(move || {
                owned_by.upgrade().map_or_else(Vec::new, |node| {
                    node.partitions
                        .read()
                        .expect("partitions lock")
                        .keys()
                        .copied()
                        .collect()
                })
            }),
            shutdown.clone(),
        );
        info!(replica = %replicas.replica_id(), "CRDT replicas starting");
        let _ = node.crdts.set(home);
    }
    let publisher = Publisher::new(&config.kafka)?;
    let processor = avro::Processor {
        processor_id: node.processor_id.clone(),
        endpoint: node.endpoint.clone(),
    };
    let services_topic = topics.services();
    until_done(
        "publishing the service",
        &shutdown,
        |e: &Error| matches!(e, Error::NotCommitted(_)),
        || {
            discovery::publish(
                &publisher,
                &services_topic,
                service.as_str(),
                &discovered,
                processor.clone(),
            )
        },
    )
    .await?;
    info!(service = %service, processor = %node.processor_id, endpoint = %node.endpoint, partitions = p.partitions, not_served = discovered.not_served.len(), "processor started");

    let server_shutdown = CancellationToken::new();
    let server = {
        let service = ProcessorServer::new(server::Service {
            node: Arc::clone(&node),
            admission: statehouse_runtime::admission::Limiter::new(
                config.processor.admission.clone(),
                "processor",
            ),
        })
        .max_decoding_message_size(statehouse_runtime::router::MAX_INTERNAL_MESSAGE_BYTES)
        .max_encoding_message_size(statehouse_runtime::router::MAX_INTERNAL_MESSAGE_BYTES);
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
            let server = tonic::transport::Server::builder()
                .add_service(service)
                .add_service(health_service);
            match tls {
                Some(acceptor) => {
                    server
                        .serve_with_incoming_shutdown(
                            acceptor.incoming(listener),
                            stop.cancelled_owned(),
                        )
                        .await
                }
                None => {
                    let incoming = tonic::transport::server::TcpIncoming::from(listener)
                        .with_nodelay(Some(true));
                    server
                        .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
                        .await
                }
            }
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

/// [`statehouse_runtime::shutdown::until_done`] with the processor's errors: a step that fails
/// for good is [`Error::Startup`], a stop while waiting [`Error::ShuttingDown`].
async fn until_done<T, E, F, Fut>(
    what: &str,
    shutdown: &CancellationToken,
    transient: impl Fn(&E) -> bool,
    step: F,
) -> Result<T, Error>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    use statehouse_runtime::shutdown::{Interrupted, until_done};
    until_done(what, shutdown, transient, step)
        .await
        .map_err(|e| match e {
            Interrupted::Stopped => Error::ShuttingDown,
            Interrupted::Failed(e) => Error::Startup {
                what: what.to_string(),
                reason: e.to_string(),
            },
        })
}
