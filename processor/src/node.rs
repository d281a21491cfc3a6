//! The running processor: what every part of it shares, and where a command runs.
//!
//! * Commands that arrive on the internal API ([`Node::run_here`]) run here or are refused with
//!   `NotOwner`: an entity command only in a partition this processor serves, an action on any
//!   processor of the service. The router that sent it learns the owner and retries.
//! * Commands that the processor itself starts — forwards and side effects — run wherever they
//!   must ([`Host::dispatch`]): here when this processor can (its own service's actions, entities
//!   of partitions it serves), otherwise through the shared router to the processor that owns
//!   the entity, of any service in the registry.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use statehouse_core::{ServiceName, partition_for};
use statehouse_kafka::publisher::Publisher;
use statehouse_runtime::config::Config;
use statehouse_runtime::method_index::{EntityKind, MethodIndex, MethodInfo};
use statehouse_runtime::router::{self, Router};
use statehouse_schemas::cloudstate as cs;
use statehouse_schemas::protocol;
use statehouse_schemas::statehouse::processor::v1::handle_response;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::command::{Command, Host, Outcome, Reply};
use crate::entity::{Caller, EntityRef, Home};
use crate::env::Env;
use crate::kinds::crdt::Crdt;
use crate::partition::Partition;
use crate::pause::Detector;
use crate::records::Output;
use crate::user_function::UserFunction;
use crate::{Error, action};

/// Forward/side-effect chains longer than this are refused (a loop).
const MAX_HOPS: u32 = 32;
/// How long a forward or side effect may take when its command has no deadline.
const DEFAULT_EFFECT_TIMEOUT: Duration = Duration::from_secs(60);

/// State shared by every part of a running processor.
pub(crate) struct Node {
    pub(crate) config: Config,
    pub(crate) service: ServiceName,
    pub(crate) index: MethodIndex,
    pub(crate) processor_id: String,
    pub(crate) endpoint: String,
    pub(crate) uf: UserFunction,
    pub(crate) partition_count: u32,
    pub(crate) shutdown: CancellationToken,
    /// What partitions are taken over with.
    pub(crate) env: Arc<Env>,
    /// The registry (services, partition owners) and the router to other processors.
    pub(crate) router: Router,
    pub(crate) pause: Arc<Detector>,
    pub(crate) partitions: RwLock<HashMap<u32, Arc<Partition>>>,
    /// The CRDT entities (any processor of the service runs them), when the service has any.
    pub(crate) crdts: OnceLock<Arc<Home<Crdt>>>,
    /// The producer of actions' eventing outputs, when a method has an `out` topic.
    outputs: Option<Publisher>,
    commands: AtomicU64,
}

/// What [`Node::new`] is built from.
pub(crate) struct Parts {
    pub(crate) config: Config,
    pub(crate) service: ServiceName,
    pub(crate) index: MethodIndex,
    pub(crate) processor_id: String,
    pub(crate) endpoint: String,
    pub(crate) uf: UserFunction,
    pub(crate) env: Arc<Env>,
    pub(crate) router: Router,
    pub(crate) shutdown: CancellationToken,
    pub(crate) outputs: Option<Publisher>,
}

impl Node {
    pub(crate) fn new(parts: Parts) -> Arc<Self> {
        Arc::new(Node {
            partition_count: parts.config.processor.partitions,
            pause: Detector::new(parts.config.kafka.session_timeout_ms),
            config: parts.config,
            service: parts.service,
            index: parts.index,
            processor_id: parts.processor_id,
            endpoint: parts.endpoint,
            uf: parts.uf,
            env: parts.env,
            router: parts.router,
            shutdown: parts.shutdown,
            partitions: RwLock::new(HashMap::new()),
            crdts: OnceLock::new(),
            outputs: parts.outputs,
            commands: AtomicU64::new(0),
        })
    }

    /// The partition `id`, if this processor holds it.
    pub(crate) fn partition(&self, id: u32) -> Option<Arc<Partition>> {
        self.partitions
            .read()
            .expect("partitions lock")
            .get(&id)
            .cloned()
    }

    /// The owner of `partition` per the routing table, if it is another processor.
    pub(crate) fn other_owner(&self, partition: u32) -> Option<router::Owner> {
        self.router
            .registry()
            .owner(self.service.as_str(), partition)
            .filter(|owner| owner.endpoint != self.endpoint)
    }

    /// Run a command that arrived on the internal API: here, or refused with `NotOwner`.
    pub(crate) async fn run_here(self: &Arc<Self>, command: Command) -> Result<Outcome, Error> {
        check_hops(&command)?;
        match command.method.entity.kind() {
            Some(EntityKind::Action) => self.run_action(command).await,
            Some(EntityKind::EventSourced | EntityKind::ValueEntity) => {
                self.run_entity(command).await
            }
            Some(EntityKind::Crdt) => self.run_crdt(command).await,
            _ => Err(Error::UnknownMethod(format!(
                "{} (its entity type is not served by this processor)",
                command.method.path
            ))),
        }
    }

    async fn run_action(self: &Arc<Self>, command: Command) -> Result<Outcome, Error> {
        if !command.method.is_unary() {
            return Err(Error::InvalidArgument(format!(
                "{} is a streamed method: call it as a stream",
                command.method.path
            )));
        }
        metrics::counter!(crate::metrics::ACTION_CALLS, "shape" => "unary").increment(1);
        let host: Arc<dyn Host> = Arc::clone(self) as Arc<dyn Host>;
        action::unary(host, &self.uf, command).await
    }

    async fn run_entity(&self, command: Command) -> Result<Outcome, Error> {
        if command.entity_id.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "{} needs an entity key",
                command.method.path
            )));
        }
        let id = partition_for(command.entity_id.as_bytes(), self.partition_count);
        if !self.pause.may_serve() {
            return Err(self.not_serving(id));
        }
        let partition = self.partition(id).ok_or_else(|| self.not_serving(id))?;
        let (reply, rx) = oneshot::channel();
        partition.send(command, Caller::Unary(reply));
        rx.await
            .unwrap_or_else(|_| Err(Error::EntityFailure("Entity terminated".into())))
    }

    async fn run_crdt(&self, command: Command) -> Result<Outcome, Error> {
        let (reply, rx) = oneshot::channel();
        self.crdt_call(command, Caller::Unary(reply))?;
        rx.await
            .unwrap_or_else(|_| Err(Error::EntityFailure(crate::kinds::crdt::TERMINATING.into())))
    }

    /// Hand a CRDT command to its entity (any processor of the service runs CRDTs).
    pub(crate) fn crdt_call(&self, command: Command, caller: Caller) -> Result<(), Error> {
        if command.entity_id.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "{} needs an entity key",
                command.method.path
            )));
        }
        let Some(home) = self.crdts.get() else {
            return Err(Error::UnknownMethod(format!(
                "{} (no CRDT entities are served here)",
                command.method.path
            )));
        };
        if !self.pause.may_serve() {
            return Err(Error::elsewhere(self.service.as_str()));
        }
        home.send(EntityRef::of(&command), command, caller);
        Ok(())
    }

    /// Stop the CRDT entities (shutdown): they finish their commands, streamed calls end,
    /// queued broadcast records are flushed (bounded).
    pub(crate) async fn release_crdts(&self) {
        let Some(home) = self.crdts.get() else { return };
        home.ctx.stop_serving();
        home.stop();
        let deadline = Instant::now() + Duration::from_secs(10);
        while home.active() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let replicas = Arc::clone(&home.ctx);
        let _ = tokio::task::spawn_blocking(move || replicas.flush()).await;
    }

    /// Whether a command of `method` can run here: an action of this service, or an entity of a
    /// partition this processor serves.
    fn runs_here(&self, method: &MethodInfo, entity_id: &str) -> bool {
        if self.index.entity(&method.service).is_none() || !self.pause.may_serve() {
            return false;
        }
        match method.entity.kind() {
            Some(EntityKind::Action) => method.is_unary(),
            Some(EntityKind::EventSourced | EntityKind::ValueEntity) => {
                let id = partition_for(entity_id.as_bytes(), self.partition_count);
                self.partition(id).is_some_and(|p| p.is_serving())
            }
            Some(EntityKind::Crdt) => {
                method.is_unary() && self.crdts.get().is_some_and(|h| h.ctx.is_serving())
            }
            _ => false,
        }
    }

    /// Run a command on the processor that may run it, through the router.
    async fn route(&self, command: Command) -> Result<Outcome, Error> {
        let deadline = command
            .deadline
            .unwrap_or_else(|| Instant::now() + DEFAULT_EFFECT_TIMEOUT);
        let call = router::Call {
            method: &command.method,
            entity_id: &command.entity_id,
            payload: command.payload.clone(),
            metadata: command.metadata.clone().unwrap_or_default(),
            idempotency_key: command.idempotency_key.as_deref().unwrap_or_default(),
            traceparent: command.traceparent.as_deref(),
            hops: command.hops,
            type_url: command.type_url.as_deref(),
            deadline,
        };
        let response = self.router.send(call).await.map_err(Error::Route)?;
        let reply = match response.outcome {
            Some(handle_response::Outcome::Reply(reply)) => Reply::Message {
                payload: reply.payload,
                type_url: reply.type_url,
                metadata: reply.metadata,
            },
            Some(handle_response::Outcome::Failure(failure)) => Reply::Failure {
                description: failure.description,
                code: match failure.grpc_code {
                    0 => tonic::Code::Unknown,
                    code => tonic::Code::from_i32(code),
                },
            },
            None => Reply::Empty,
        };
        Ok(Outcome {
            position: response.position.map(|p| crate::command::Position {
                partition: p.partition,
                offset: p.offset,
            }),
            reply,
            deduplicated: response.deduplicated,
        })
    }

    /// A method of any service this processor knows, by service and method name.
    fn method(&self, service: &str, command: &str) -> Result<Arc<MethodInfo>, Error> {
        if let Some(method) = self.index.method_by_name(service, command) {
            return Ok(Arc::clone(method));
        }
        let routes = self.router.registry().routes();
        if let Some(route) = routes.method(&protocol::grpc_path(service, command)) {
            return Ok(Arc::clone(&route.method));
        }
        let known = self.index.entity(service).is_some() || routes.service_of(service).is_some();
        Err(Error::UnknownMethod(if known {
            format!("Service [{service}] does not have a command named: [{command}]")
        } else {
            format!("Service [{service}] unknown")
        }))
    }

    pub(crate) fn next_command_id(&self) -> String {
        let n = self.commands.fetch_add(1, Ordering::Relaxed);
        format!("{}-{n}", self.processor_id)
    }
}

fn check_hops(command: &Command) -> Result<(), Error> {
    if command.hops > MAX_HOPS {
        return Err(Error::InvalidArgument(format!(
            "more than {MAX_HOPS} forwards/side effects in a chain (a loop?)"
        )));
    }
    Ok(())
}

impl Host for Node {
    fn may_serve(&self) -> bool {
        self.pause.may_serve()
    }

    fn not_serving(&self, partition: u32) -> Error {
        let (owner_endpoint, owner_epoch) = self
            .other_owner(partition)
            .map(|o| (o.endpoint, o.epoch))
            .unwrap_or_default();
        Error::NotOwner {
            service: self.service.to_string(),
            partition: partition as i32,
            owner_endpoint,
            owner_epoch,
        }
    }

    fn resolve(
        &self,
        service: &str,
        command: &str,
        payload: Option<prost_types::Any>,
        metadata: Option<cs::Metadata>,
        hops: u32,
        deadline: Option<Instant>,
    ) -> Result<Command, Error> {
        let method = self.method(service, command)?;
        // A target taking `google.protobuf.Any` gets the payload with its own type.
        let type_url = payload
            .as_ref()
            .filter(|_| method.input.full_name() == crate::eventing::plan::ANY)
            .map(|p| p.type_url.clone());
        let payload = bytes::Bytes::from(payload.map(|p| p.value).unwrap_or_default());
        let entity_id = method
            .entity_id(&payload)
            .map_err(|e| Error::InvalidArgument(e.to_string()))?;
        Ok(Command {
            method,
            entity_id,
            payload,
            type_url,
            metadata,
            idempotency_key: None,
            deadline,
            traceparent: None,
            call_traceparent: None,
            hops,
        })
    }

    fn dispatch(self: Arc<Self>, command: Command) -> BoxFuture<'static, Result<Outcome, Error>> {
        async move {
            check_hops(&command)?;
            if self.runs_here(&command.method, &command.entity_id) {
                match self.run_here(command.clone()).await {
                    // Moved away meanwhile: the router finds the new owner.
                    Err(Error::NotOwner { .. }) => {}
                    other => return other,
                }
            }
            self.route(command).await
        }
        .boxed()
    }

    fn report_error(self: Arc<Self>, message: String) -> BoxFuture<'static, ()> {
        async move { self.uf.report_error(&message).await }.boxed()
    }

    fn next_command_id(&self) -> String {
        Node::next_command_id(self)
    }

    fn publish(self: Arc<Self>, record: Output) -> BoxFuture<'static, Result<(), Error>> {
        async move {
            let Some(outputs) = &self.outputs else {
                return Err(Error::Config(format!(
                    "no producer for the output topic {}",
                    record.topic
                )));
            };
            outputs
                .publish_record(
                    &record.topic,
                    record.key.as_deref(),
                    &record.value,
                    &record.headers,
                )
                .await?;
            metrics::counter!(crate::metrics::EVENTING_OUTPUTS).increment(1);
            Ok(())
        }
        .boxed()
    }
}
