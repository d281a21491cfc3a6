//! The entity mailbox: one task per active entity, generic over its [`Kind`].
//!
//! The task owns everything that does not depend on the kind:
//! * **ordering** — commands run one at a time, in arrival order, from a bounded mailbox;
//! * **the stream session** with the user function — opened on the first command (the kind
//!   loads the entity from Cassandra plus the partition's tail and says what starts the stream:
//!   init, replay), dropped on a crash or restart (the next command opens a new one), half-closed
//!   on passivation;
//! * **the idempotency window** ([`window`]) — a retry with a known key gets the stored reply;
//! * **writes** — what the kind's answer asks to persist is encoded once, appended through the
//!   partition's transactional writer with the typed records attached, and the reply waits for
//!   the commit;
//! * **effects** — side effects and forwards run after the commit, off the entity task;
//! * **passivation and drain** — an idle entity leaves its partition's registry (unless a command
//!   arrived meanwhile); when the partition stops, queued commands go back to their router.
//!
//! The kind is a pure state machine ([`Kind`]): a user-function message in, a [`Step`] out
//! (writes + reply/forward + side effects, a restart, or a crash with the reference proxy's
//! text). Its I/O — loading, opening its stream — is two small async functions next to it.

pub(crate) mod window;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use statehouse_kafka::partition_writer;
use statehouse_runtime::method_index::EntityInfo;
use statehouse_schemas::avro;
use statehouse_schemas::cloudstate as cs;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::command::{Command, Host, Outcome, Reply, ReplyTo, Then};
use crate::env::Env;
use crate::records::{Typed, Written};
use crate::tail::Tail;
use crate::user_function::UserFunction;
use crate::{Error, effects, metrics as m};

pub(crate) use window::Window;

/// Bound of one entity's mailbox.
pub(crate) const MAILBOX: usize = 256;
/// How long a command waits for the user function when the caller set no deadline.
const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// One active entity, as its kind sees it.
#[derive(Debug, Clone)]
pub(crate) struct EntityRef {
    /// `<persistence_id>|<entity_id>`: the key of its records and its mailbox.
    pub(crate) key: String,
    /// The entity id.
    pub(crate) id: String,
    /// Its entity type.
    pub(crate) info: Arc<EntityInfo>,
}

/// A command and where its outcome goes.
type Envelope = (Command, ReplyTo);

/// An active entity's mailbox, with the number of its instance (a restarted entity is another
/// instance with the same key).
type Mailbox = (u64, mpsc::Sender<Envelope>);

/// What a kind needs to build its records: who writes, when, and the command's id.
pub(crate) struct Stamp<'a> {
    pub(crate) service: &'a str,
    pub(crate) writer: &'a avro::Writer,
    pub(crate) timestamp_ms: i64,
    command_id: &'a (dyn Fn() -> String + Sync),
}

impl<'a> Stamp<'a> {
    pub(crate) fn new(
        service: &'a str,
        writer: &'a avro::Writer,
        timestamp_ms: i64,
        command_id: &'a (dyn Fn() -> String + Sync),
    ) -> Self {
        Self {
            service,
            writer,
            timestamp_ms,
            command_id,
        }
    }

    /// A new id for the records of this command.
    pub(crate) fn command_id(&self) -> String {
        (self.command_id)()
    }
}

/// How a kind's stream starts.
pub(crate) struct Start<In> {
    /// Sent first, in order (init, then the replay).
    pub(crate) messages: Vec<In>,
    /// The idempotency window as stored with the entity's records, oldest first.
    pub(crate) remembered: Vec<(String, Reply)>,
}

/// What the user function's answer to a command leads to.
#[derive(Debug, PartialEq)]
pub(crate) enum Step {
    /// Commit `writes` (if any) in the partition's next transaction, then run the side effects
    /// and answer (`then`).
    Done {
        writes: Vec<Written>,
        then: Then,
        side_effects: Vec<cs::SideEffect>,
    },
    /// Answer `reply` and drop the stream: the next command starts a new one from the stored
    /// state (an event-sourced failure with `restart`).
    Restart(Reply),
    /// The stream failed or the user function broke the protocol: drop the stream, fail the
    /// command with `text` (UNKNOWN), and tell the user function `report` if set.
    Crash {
        text: String,
        report: Option<String>,
    },
}

/// One entity kind's protocol with the user function, as a pure state machine: it lives as long
/// as one stream session.
pub(crate) trait Kind: Sized + Send + 'static {
    /// Messages to the user function.
    type In: prost::Message + Send + 'static;
    /// Messages from the user function.
    type Out: prost::Message + Send + 'static;
    /// What activation loads.
    type Loaded: Send + 'static;

    /// The text a command in flight gets when the stream ends or fails under it.
    const TERMINATED: &'static str;

    /// Load the entity: its stored state from Cassandra plus the partition's tail.
    fn load(
        ctx: &Context,
        entity: &EntityRef,
    ) -> impl Future<Output = Result<Self::Loaded, Error>> + Send;

    /// Open the entity's stream to the user function.
    fn open(
        uf: &UserFunction,
        requests: ReceiverStream<Self::In>,
    ) -> impl Future<Output = Result<tonic::Streaming<Self::Out>, tonic::Status>> + Send;

    /// The machine of a new stream, and what starts the stream.
    fn start(entity: &EntityRef, loaded: Self::Loaded) -> (Self, Start<Self::In>);

    /// The stream message of command `id`.
    fn command(&mut self, entity: &EntityRef, id: i64, command: &Command) -> Self::In;

    /// The user function's answer to command `id` (the one in flight).
    fn answer(
        &mut self,
        entity: &EntityRef,
        id: i64,
        command: &Command,
        out: Self::Out,
        window: &Window,
        stamp: &Stamp<'_>,
    ) -> Step;

    /// The writes of the last [`Step::Done`] committed.
    fn committed(&mut self);

    /// A message from the user function while no command is in flight (a protocol
    /// violation): what to tell the user function.
    fn unsolicited(entity: &EntityRef, out: &Self::Out) -> String;
}

/// What the entities of one partition share: the processor's [`Env`], the partition's writer
/// and tail, and the registry of active mailboxes.
pub(crate) struct Context {
    pub(crate) env: Arc<Env>,
    pub(crate) host: Arc<dyn Host>,
    pub(crate) partition: u32,
    /// Who writes: this processor instance, with the partition's owner epoch.
    pub(crate) writer_id: avro::Writer,
    pub(crate) writer: partition_writer::Handle<Typed>,
    pub(crate) tail: Arc<Tail>,
    serving: AtomicBool,
    /// Cancelled when the partition stops: entities finish their command and end.
    pub(crate) stop: CancellationToken,
    mailboxes: std::sync::Mutex<HashMap<String, Mailbox>>,
    next_instance: AtomicU64,
}

impl Context {
    /// The entities of partition `partition`, owned since `epoch`, writing through `writer`.
    pub(crate) fn new(
        env: Arc<Env>,
        host: Arc<dyn Host>,
        partition: u32,
        epoch: i64,
        writer: partition_writer::Handle<Typed>,
        tail: Arc<Tail>,
    ) -> Arc<Self> {
        Arc::new(Self {
            writer_id: avro::Writer {
                processor_id: env.processor_id.clone(),
                epoch,
            },
            stop: env.shutdown.child_token(),
            env,
            host,
            partition,
            writer,
            tail,
            serving: AtomicBool::new(true),
            mailboxes: std::sync::Mutex::new(HashMap::new()),
            next_instance: AtomicU64::new(0),
        })
    }

    /// Whether the partition serves: not stopping, its writer still running.
    pub(crate) fn is_serving(&self) -> bool {
        self.serving.load(Ordering::Acquire) && !self.writer.is_stopped()
    }

    /// Stop taking commands (revoke or shutdown); entities finish the command in flight.
    pub(crate) fn stop_serving(&self) {
        self.serving.store(false, Ordering::Release);
        self.stop.cancel();
    }

    /// Active mailboxes of this partition.
    pub(crate) fn active_here(&self) -> usize {
        self.mailboxes.lock().expect("mailboxes lock").len()
    }

    /// Hand a command to its entity's mailbox, starting the entity (of kind `K`) if it is not
    /// active.
    pub(crate) fn send<K: Kind>(
        self: &Arc<Self>,
        entity: EntityRef,
        command: Command,
        reply: ReplyTo,
    ) -> Result<(), (Error, ReplyTo)> {
        let mut mailboxes = self.mailboxes.lock().expect("mailboxes lock");
        if !self.is_serving() {
            return Err((self.host.not_serving(self.partition), reply));
        }
        let envelope = match mailboxes.get(&entity.key) {
            Some((_, tx)) => match tx.try_send((command, reply)) {
                Ok(()) => return Ok(()),
                Err(mpsc::error::TrySendError::Full((_, reply))) => {
                    return Err((
                        Error::Overloaded(format!(
                            "entity {} has {MAILBOX} commands waiting; slow down",
                            entity.id
                        )),
                        reply,
                    ));
                }
                // The entity ended (passivated or crashed) after we looked: start a new one.
                Err(mpsc::error::TrySendError::Closed(envelope)) => envelope,
            },
            None => (command, reply),
        };
        let max_active = self.env.max_active;
        if self.env.active.load(Ordering::Relaxed) >= max_active {
            return Err((
                Error::Overloaded(format!(
                    "{max_active} entities are active, the limit (processor.max-active-entities)"
                )),
                envelope.1,
            ));
        }
        let (tx, rx) = mpsc::channel(MAILBOX);
        tx.try_send(envelope).expect("a new mailbox has room");
        let instance = self.next_instance.fetch_add(1, Ordering::Relaxed);
        mailboxes.insert(entity.key.clone(), (instance, tx));
        let active = self.env.active.fetch_add(1, Ordering::Relaxed) + 1;
        metrics::gauge!(m::ACTIVE_ENTITIES).set(active as f64);
        tokio::spawn(run::<K>(Arc::clone(self), entity, instance, rx));
        Ok(())
    }

    /// Called by an idle entity: remove it if no command is waiting. Returns false if a command
    /// arrived meanwhile (the entity must go on).
    fn try_passivate(&self, key: &str, rx: &mpsc::Receiver<Envelope>) -> bool {
        let mut mailboxes = self.mailboxes.lock().expect("mailboxes lock");
        if !rx.is_empty() {
            return false;
        }
        mailboxes.remove(key);
        true
    }

    /// Called by an entity that ends for any other reason.
    fn forget(&self, key: &str, instance: u64) {
        let mut mailboxes = self.mailboxes.lock().expect("mailboxes lock");
        if mailboxes.get(key).is_some_and(|(i, _)| *i == instance) {
            mailboxes.remove(key);
        }
    }
}

/// An open stream with the user function, and the kind's machine for it. The call itself runs
/// in its own task: some SDKs (Go) send their response headers only with the first reply, so
/// awaiting the call before sending anything would deadlock.
struct Session<K: Kind> {
    machine: K,
    tx: mpsc::Sender<K::In>,
    rx: mpsc::Receiver<Result<K::Out, tonic::Status>>,
    last_command_id: i64,
}

struct Entity<K: Kind> {
    ctx: Arc<Context>,
    entity: EntityRef,
    session: Option<Session<K>>,
    window: Window,
}

/// The entity task. Ends when passivated, when its partition stops, or when its mailbox closes.
async fn run<K: Kind>(
    ctx: Arc<Context>,
    entity: EntityRef,
    instance: u64,
    mut rx: mpsc::Receiver<Envelope>,
) {
    let idle = entity
        .info
        .passivation_timeout
        .unwrap_or(ctx.env.passivation);
    let mut mailbox = Entity::<K> {
        ctx: Arc::clone(&ctx),
        entity,
        session: None,
        window: Window::default(),
    };
    let mut passivated = false;
    loop {
        let (command, reply) = tokio::select! {
            biased;
            _ = ctx.stop.cancelled() => break,
            envelope = rx.recv() => match envelope {
                Some(envelope) => envelope,
                None => break,
            },
            // The user function spoke while no command was in flight, or closed the stream.
            message = next_message(&mut mailbox.session) => {
                mailbox.unsolicited(message);
                continue;
            }
            _ = tokio::time::sleep(idle) => {
                if ctx.try_passivate(&mailbox.entity.key, &rx) {
                    passivated = true;
                    debug!(entity = %mailbox.entity.key, "passivated");
                    break;
                }
                continue;
            }
        };
        mailbox.handle(command, reply).await;
    }
    if !passivated {
        ctx.forget(&mailbox.entity.key, instance);
    }
    // Commands that arrived after the decision to stop go back to their router to retry.
    rx.close();
    while let Ok((_, reply)) = rx.try_recv() {
        let _ = reply.send(Err(ctx.host.not_serving(ctx.partition)));
    }
    mailbox.close_session().await;
    let active = ctx.env.active.fetch_sub(1, Ordering::Relaxed) - 1;
    metrics::gauge!(m::ACTIVE_ENTITIES).set(active as f64);
}

/// The next message of the session, if there is one (pending forever otherwise).
async fn next_message<K: Kind>(
    session: &mut Option<Session<K>>,
) -> Option<Result<K::Out, tonic::Status>> {
    match session {
        Some(session) => session.rx.recv().await,
        None => std::future::pending().await,
    }
}

impl<K: Kind> Entity<K> {
    async fn handle(&mut self, command: Command, reply: ReplyTo) {
        let ctx = &self.ctx;
        // Queued before a pause? Then the partition may be someone else's by now.
        if !ctx.host.may_serve() || !ctx.is_serving() {
            let _ = reply.send(Err(ctx.host.not_serving(ctx.partition)));
            return;
        }
        if command.deadline.is_some_and(|d| d <= Instant::now()) {
            let _ = reply.send(Err(Error::DeadlineExceeded));
            return;
        }
        if self.session.is_none()
            && let Err(e) = self.activate().await
        {
            warn!(entity = %self.entity.key, error = %e, "activation failed");
            let _ = reply.send(Err(e));
            return;
        }
        if let Some(stored) = command
            .idempotency_key
            .as_deref()
            .and_then(|k| self.window.get(k))
        {
            let _ = reply.send(Ok(Outcome {
                reply: stored.clone(),
                deduplicated: true,
            }));
            return;
        }
        match self.run_command(&command).await {
            Ok(step) => self.finish(command, reply, step).await,
            Err(e) => {
                // The stream is no longer usable for this entity: the next command starts a
                // new one from the stored state.
                self.session = None;
                let _ = reply.send(Err(e));
            }
        }
    }

    /// Send one command and turn the user function's answer into a step.
    async fn run_command(&mut self, command: &Command) -> Result<Step, Error> {
        let terminated = || Error::EntityFailure(K::TERMINATED.to_string());
        let session = self.session.as_mut().expect("activated");
        session.last_command_id += 1;
        let id = session.last_command_id;
        let message = session.machine.command(&self.entity, id, command);
        if session.tx.send(message).await.is_err() {
            return Err(terminated());
        }
        let deadline = command
            .deadline
            .unwrap_or_else(|| Instant::now() + DEFAULT_COMMAND_TIMEOUT);
        let out = match tokio::time::timeout_at(deadline, session.rx.recv()).await {
            // The user function is too slow: its later answer can no longer be trusted to
            // belong to this command.
            Err(_) => return Err(Error::DeadlineExceeded),
            Ok(Some(Ok(out))) => out,
            Ok(Some(Err(status))) => {
                warn!(entity = %self.entity.key, %status, "entity stream failed");
                return Err(terminated());
            }
            Ok(None) => return Err(terminated()),
        };
        let ctx = &self.ctx;
        let host = &ctx.host;
        let next_id = || host.next_command_id();
        let stamp = Stamp::new(ctx.env.service.as_str(), &ctx.writer_id, now_ms(), &next_id);
        Ok(session
            .machine
            .answer(&self.entity, id, command, out, &self.window, &stamp))
    }

    async fn finish(&mut self, command: Command, reply: ReplyTo, step: Step) {
        let (writes, then, side_effects) = match step {
            Step::Crash { text, report } => {
                self.session = None;
                if let Some(report) = report {
                    tokio::spawn(Arc::clone(&self.ctx.host).report_error(report));
                }
                let _ = reply.send(Err(Error::EntityFailure(text)));
                return;
            }
            Step::Restart(answer) => {
                self.session = None;
                let _ = reply.send(Ok(Outcome::new(answer)));
                return;
            }
            Step::Done {
                writes,
                then,
                side_effects,
            } => (writes, then, side_effects),
        };
        let wrote = !writes.is_empty();
        if wrote {
            if let Err(e) = persist(&self.ctx, writes).await {
                // The user function already applied the change: its state is ahead of what is
                // stored. Drop the stream so the next command starts from the stored state.
                self.session = None;
                let _ = reply.send(Err(e));
                return;
            }
            if let Some(session) = &mut self.session {
                session.machine.committed();
            }
        }
        if let (true, Some(key), Then::Reply(answer)) = (wrote, &command.idempotency_key, &then)
            && !answer.is_failure()
        {
            self.window.remember(key.clone(), answer.clone());
        }
        match then {
            Then::Reply(answer) if side_effects.is_empty() => {
                let _ = reply.send(Ok(Outcome::new(answer)));
            }
            then => {
                let host = Arc::clone(&self.ctx.host);
                tokio::spawn(async move {
                    let outcome =
                        effects::run(host, side_effects, then, command.hops + 1, command.deadline)
                            .await;
                    let _ = reply.send(outcome);
                });
            }
        }
    }

    /// Load the entity, open its stream and send what starts it.
    async fn activate(&mut self) -> Result<(), Error> {
        let loaded = K::load(&self.ctx, &self.entity).await?;
        let (machine, start) = K::start(&self.entity, loaded);
        self.window.clear();
        for (key, reply) in start.remembered {
            self.window.remember(key, reply);
        }
        let (tx, requests) = mpsc::channel(64);
        let (answers, rx) = mpsc::channel(16);
        let uf = self.ctx.env.uf.clone();
        tokio::spawn(async move {
            let mut stream = match K::open(&uf, ReceiverStream::new(requests)).await {
                Ok(stream) => stream,
                Err(status) => {
                    warn!(address = %uf.address(), %status, "opening an entity stream failed");
                    let _ = answers.send(Err(status)).await;
                    return;
                }
            };
            loop {
                match stream.message().await {
                    Ok(Some(message)) => {
                        if answers.send(Ok(message)).await.is_err() {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(status) => {
                        let _ = answers.send(Err(status)).await;
                        break;
                    }
                }
            }
        });
        let replayed = start.messages.len().saturating_sub(1);
        for message in start.messages {
            if tx.send(message).await.is_err() {
                return Err(Error::UserFunction(format!(
                    "the entity stream to {} closed during activation",
                    self.ctx.env.uf.address()
                )));
            }
        }
        self.session = Some(Session {
            machine,
            tx,
            rx,
            last_command_id: 0,
        });
        metrics::counter!(m::ACTIVATIONS).increment(1);
        debug!(entity = %self.entity.key, replayed, "activated");
        Ok(())
    }

    /// A message (or the end of the stream) while no command is in flight.
    fn unsolicited(&mut self, message: Option<Result<K::Out, tonic::Status>>) {
        self.session = None;
        match message {
            None => debug!(entity = %self.entity.key, "the user function closed the entity stream"),
            Some(Err(status)) => {
                warn!(entity = %self.entity.key, %status, "entity stream failed while idle")
            }
            Some(Ok(out)) => {
                let report = K::unsolicited(&self.entity, &out);
                warn!(entity = %self.entity.key, report, "message from the user function while no command was in flight");
                tokio::spawn(Arc::clone(&self.ctx.host).report_error(report));
            }
        }
    }

    /// Half-close the stream and wait (bounded) for the user function to close it too.
    async fn close_session(&mut self) {
        if let Some(mut session) = self.session.take() {
            drop(session.tx);
            let _ = tokio::time::timeout(Duration::from_secs(5), async {
                while let Some(Ok(_)) = session.rx.recv().await {}
            })
            .await;
        }
    }
}

/// Commit `writes` in the partition's next transaction.
async fn persist(ctx: &Context, writes: Vec<Written>) -> Result<(), Error> {
    let mut records = Vec::with_capacity(writes.len());
    let mut typed = Vec::with_capacity(writes.len());
    for written in writes {
        records.push(written.to_kafka(&ctx.env.topics)?);
        typed.push(Arc::new(written));
    }
    let n = records.len();
    ctx.writer.append_with(records, typed).await?;
    metrics::counter!(m::RECORDS_PERSISTED).increment(n as u64);
    Ok(())
}

/// The protocol `Command` of an entity command: id `id` of the stream, the method name, the
/// payload, and no metadata (entities get none: the reference proxy sends none, and the TCK
/// compares the messages exactly).
pub(crate) fn protocol_command(entity: &EntityRef, id: i64, command: &Command) -> cs::Command {
    cs::Command {
        entity_id: entity.id.clone(),
        id,
        name: command.method.name.clone(),
        payload: Some(command.payload_any()),
        streamed: false,
        metadata: None,
    }
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
