//! The entity mailbox: one task per active entity, generic over its [`Kind`].
//!
//! The task owns everything that does not depend on the kind:
//! * **the mailbox** — commands arrive in order through a bounded queue; the kind says when the
//!   next one may go to the user function (event-sourced and value entities: one at a time;
//!   CRDTs: as they come, answered by command id);
//! * **the stream session** with the user function — opened on the first command (the kind
//!   loads the entity and says what starts the stream: init, replay), dropped on a crash or
//!   restart (the next command opens a new one), half-closed on passivation or when the kind
//!   closes it;
//! * **the calls in flight** — unary callers get one outcome; streamed callers get elements
//!   (through a bounded relay task each, so a slow client never blocks the entity) until the
//!   kind ends the call or the client goes away, which the kind is told about;
//! * **deadlines** — a unary command not answered in time fails, and the stream is dropped (a
//!   late answer could no longer be matched with confidence);
//! * **the idempotency window** ([`window`]) — a retry with a known key gets the stored reply;
//! * **writes** — the kind's writes (partition records, CRDT fragments) run off the loop and
//!   their outcome comes back to the kind;
//! * **effects** — side effects and forwards run after the kind answered, off the entity task;
//! * **passivation and drain** — an idle entity leaves its home's registry (unless a command
//!   arrived meanwhile); when the home stops, queued commands go back to their router.
//!
//! The kind is a pure state machine ([`Kind`]): a user-function message (or a command, a write's
//! outcome, an outside input, a cancelled call) in, [`Action`]s out. Its I/O — loading, opening
//! its stream, writing — is three small async functions next to it.

pub(crate) mod window;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use statehouse_runtime::method_index::EntityInfo;
use statehouse_runtime::trace;
use statehouse_schemas::avro;
use statehouse_schemas::cloudstate as cs;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::command::{Command, Host, Outcome, Position, Reply, Then};
use crate::env::Env;
use crate::user_function::UserFunction;
use crate::{Error, effects, metrics as m};

pub(crate) use window::Window;

/// Bound of the channels around one entity stream (cancels, messages to the user function);
/// the mailbox itself is bounded by `processor.max-commands-per-entity`.
pub(crate) const MAILBOX: usize = 256;
/// Elements of one streamed call waiting for its client; a client that falls further behind
/// loses its call.
const STREAM_BUFFER: usize = 64;
/// How long a unary command waits for the user function when the caller set no deadline.
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

impl EntityRef {
    /// The entity a command is for.
    pub(crate) fn of(command: &Command) -> Self {
        let info = Arc::clone(&command.method.entity);
        Self {
            key: statehouse_core::ids::entity_key(&info.persistence_id, &command.entity_id),
            id: command.entity_id.clone(),
            info,
        }
    }
}

/// Where a command's outcome goes.
pub(crate) enum Caller {
    /// One outcome.
    Unary(oneshot::Sender<Result<Outcome, Error>>),
    /// Elements until the call ends (the sender is dropped), or an error that ends it.
    Stream(mpsc::Sender<Result<Outcome, Error>>),
}

impl Caller {
    /// Answer an error (a streamed caller's call ends with it).
    pub(crate) fn fail(self, error: Error) {
        match self {
            Caller::Unary(tx) => {
                let _ = tx.send(Err(error));
            }
            Caller::Stream(tx) => {
                let _ = tx.try_send(Err(error));
            }
        }
    }
}

/// A command and where its outcome goes.
pub(crate) type Envelope = (Command, Caller);

/// What a kind needs to build its records: who writes, when, and the command's id.
pub(crate) struct Stamp<'a> {
    pub(crate) service: &'a str,
    pub(crate) writer: &'a avro::Writer,
    pub(crate) timestamp_ms: i64,
    /// `kafka.max-record-bytes`: a command whose record would be larger fails alone.
    pub(crate) max_record_bytes: usize,
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
            max_record_bytes: statehouse_kafka::DEFAULT_MAX_RECORD_BYTES,
            command_id,
        }
    }

    /// The record limit (`kafka.max-record-bytes`) commands are checked against.
    pub(crate) fn with_max_record_bytes(mut self, max_record_bytes: usize) -> Self {
        self.max_record_bytes = max_record_bytes;
        self
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

/// What a kind asks the mailbox to do.
pub(crate) enum Action<K: Kind> {
    /// Send a message to the user function.
    Send(K::In),
    /// Run a write; [`Kind::written`] gets its outcome with `token`.
    Write { token: u64, write: K::Write },
    /// Answer command `id`: run `side_effects`, then `then` — a unary caller's outcome
    /// (`None`: a reply without a message), a streamed caller's next element (`None`: no
    /// element). `remember`: store the reply for the command's idempotency key.
    Answer {
        id: i64,
        then: Option<Then>,
        side_effects: Vec<cs::SideEffect>,
        remember: bool,
        /// The command's commit position, for the caller.
        position: Option<Position>,
    },
    /// End streamed call `id` (after its answers).
    End { id: i64 },
    /// Fail command `id` with `error`.
    Fail { id: i64, error: Error },
    /// Run side effects that answer nobody.
    Effects(Vec<cs::SideEffect>),
    /// Tell the user function about a protocol error that does not end the stream.
    Report(String),
    /// The stream failed or the user function broke the protocol: drop the stream, fail every
    /// call in flight with `text` (UNKNOWN), tell the user function `report` if set.
    Crash {
        text: String,
        report: Option<String>,
    },
    /// Drop the stream after its answers; any call still in flight fails with
    /// [`Kind::TERMINATED`]. The next command starts a new stream.
    Drop,
    /// Half-close the stream for good: the entity stays active and refuses every later command
    /// with `refuse` (a deleted CRDT); unary calls still in flight fail with it, streamed calls
    /// end.
    Close { refuse: String },
}

/// One entity kind's protocol with the user function, as a pure state machine living as long as
/// one stream session, plus its I/O (`load`, `open`, `write`).
pub(crate) trait Kind: Sized + Send + 'static {
    /// Messages to the user function.
    type In: prost::Message + Send + 'static;
    /// Messages from the user function.
    type Out: prost::Message + Send + 'static;
    /// What activation loads.
    type Loaded: Send + 'static;
    /// What the kind's entities share (a partition's journal; the processor's CRDT replicas).
    type Ctx: Send + Sync + 'static;
    /// What the kind writes, off the entity loop.
    type Write: Send + 'static;
    /// Inputs from outside the stream (CRDTs: the replicated state changed). They coalesce: a
    /// newer input [`Kind::merge`]s into one the entity has not taken yet, so an entity that
    /// falls behind holds one input, never a queue.
    type Input: Send + 'static;

    /// The text a call in flight gets when the stream ends or fails under it.
    const TERMINATED: &'static str;

    /// Whether the home still takes commands.
    fn serving(ctx: &Self::Ctx) -> bool;

    /// The stamp of the records of commands in `ctx`.
    fn writer(ctx: &Self::Ctx) -> &avro::Writer;

    /// Load the entity.
    fn load(
        ctx: &Self::Ctx,
        entity: &EntityRef,
    ) -> impl Future<Output = Result<Self::Loaded, Error>> + Send;

    /// Open the entity's stream to the user function.
    fn open(
        uf: &UserFunction,
        requests: ReceiverStream<Self::In>,
    ) -> impl Future<Output = Result<tonic::Streaming<Self::Out>, tonic::Status>> + Send;

    /// Run a write: where its last journal event went, if it wrote one.
    fn write(
        ctx: Arc<Self::Ctx>,
        write: Self::Write,
    ) -> impl Future<Output = Result<Option<Position>, Error>> + Send + 'static;

    /// The machine of a new stream, and what starts the stream.
    fn start(entity: &EntityRef, loaded: Self::Loaded) -> (Self, Start<Self::In>);

    /// Whether another command may go to the user function now.
    fn accepts(&self) -> bool;

    /// Whether `command` (the next in the mailbox) may go now; if not, it waits at the head of
    /// the mailbox until it may (a retry behind the uncommitted original of its idempotency
    /// key).
    fn admits(&self, command: &Command) -> bool {
        let _ = command;
        true
    }

    /// The stream message of command `id` (`streamed`: the caller takes a stream).
    fn command(
        &mut self,
        entity: &EntityRef,
        id: i64,
        command: &Command,
        streamed: bool,
    ) -> Self::In;

    /// The command a message from the user function answers, if it answers one (`None`:
    /// unknown, or not an answer). Only ends the call's span early (`spans.rs`); a kind that
    /// does not say has its calls' spans end with the answer to the caller.
    fn answered(out: &Self::Out) -> Option<i64> {
        let _ = out;
        None
    }

    /// A message from the user function.
    fn message(&mut self, entity: &EntityRef, out: Self::Out, turn: &Turn<'_>)
    -> Vec<Action<Self>>;

    /// A write finished.
    fn written(
        &mut self,
        entity: &EntityRef,
        token: u64,
        result: Result<Option<Position>, Error>,
    ) -> Vec<Action<Self>>;

    /// Merge `newer` into an input not taken yet.
    fn merge(into: &mut Self::Input, newer: Self::Input);

    /// An input from outside the stream.
    fn input(
        &mut self,
        entity: &EntityRef,
        input: Self::Input,
        turn: &Turn<'_>,
    ) -> Vec<Action<Self>> {
        let _ = (entity, input, turn);
        Vec::new()
    }

    /// The client of streamed call `id` went away.
    fn cancelled(&mut self, entity: &EntityRef, id: i64) -> Vec<Action<Self>> {
        let _ = (entity, id);
        Vec::new()
    }

    /// Whether the entity may be passivated when idle (no call in flight).
    fn may_passivate(&self) -> bool {
        true
    }
}

/// What the kind may read while it handles a message.
pub(crate) struct Turn<'a> {
    pub(crate) window: &'a Window,
    pub(crate) stamp: &'a Stamp<'a>,
}

/// The active entities of one kind in one home (a partition, the processor's CRDT replicas):
/// their mailboxes.
pub(crate) struct Home<K: Kind> {
    pub(crate) ctx: Arc<K::Ctx>,
    env: Arc<Env>,
    host: Arc<dyn Host>,
    /// The partition, for "not served here" answers (`None`: any processor serves).
    partition: Option<u32>,
    /// Cancelled when the home stops: entities finish their commands and end.
    stop: CancellationToken,
    mailboxes: std::sync::Mutex<HashMap<String, Mailbox<K>>>,
    next_instance: AtomicU64,
}

/// An active entity's mailbox: its instance number (a restarted entity is another instance
/// with the same key), the command queue and the outside inputs.
struct Mailbox<K: Kind> {
    instance: u64,
    commands: mpsc::Sender<Envelope>,
    inputs: Arc<Inbox<K::Input>>,
}

/// The input an entity has not taken yet (newer ones merge into it) and its wake-up.
struct Inbox<T> {
    slot: std::sync::Mutex<Option<T>>,
    notify: tokio::sync::Notify,
}

impl<T> Inbox<T> {
    fn new() -> Self {
        Self {
            slot: std::sync::Mutex::new(None),
            notify: tokio::sync::Notify::new(),
        }
    }

    fn take(&self) -> Option<T> {
        self.slot.lock().expect("inbox lock").take()
    }
}

impl<K: Kind> Home<K> {
    pub(crate) fn new(
        ctx: Arc<K::Ctx>,
        env: Arc<Env>,
        host: Arc<dyn Host>,
        partition: Option<u32>,
        stop: CancellationToken,
    ) -> Arc<Self> {
        Arc::new(Self {
            ctx,
            env,
            host,
            partition,
            stop,
            mailboxes: std::sync::Mutex::new(HashMap::new()),
            next_instance: AtomicU64::new(0),
        })
    }

    fn not_serving(&self) -> Error {
        match self.partition {
            Some(p) => self.host.not_serving(p),
            None => Error::elsewhere(self.env.service.as_str()),
        }
    }

    /// Stop: entities finish their commands and end.
    pub(crate) fn stop(&self) {
        self.stop.cancel();
    }

    /// Active entities of this home.
    pub(crate) fn active(&self) -> usize {
        self.mailboxes.lock().expect("mailboxes lock").len()
    }

    /// Hand an input to the entity `key`, if it is active (false: it is not).
    pub(crate) fn input(&self, key: &str, input: K::Input) -> bool {
        let inbox = {
            let mailboxes = self.mailboxes.lock().expect("mailboxes lock");
            match mailboxes.get(key) {
                Some(mailbox) => Arc::clone(&mailbox.inputs),
                None => return false,
            }
        };
        {
            let mut slot = inbox.slot.lock().expect("inbox lock");
            match slot.as_mut() {
                Some(waiting) => K::merge(waiting, input),
                None => *slot = Some(input),
            }
        }
        inbox.notify.notify_one();
        true
    }

    /// The keys of the active entities.
    pub(crate) fn keys(&self) -> Vec<String> {
        self.mailboxes
            .lock()
            .expect("mailboxes lock")
            .keys()
            .cloned()
            .collect()
    }

    /// Hand a command to its entity's mailbox, starting the entity if it is not active; a
    /// command that cannot be taken is answered with the error at once.
    pub(crate) fn send(self: &Arc<Self>, entity: EntityRef, command: Command, caller: Caller) {
        if let Err((error, caller)) = self.try_send(entity, command, caller) {
            caller.fail(error);
        }
    }

    #[allow(
        clippy::result_large_err,
        reason = "the caller comes back to be answered"
    )]
    fn try_send(
        self: &Arc<Self>,
        entity: EntityRef,
        command: Command,
        caller: Caller,
    ) -> Result<(), (Error, Caller)> {
        let mut mailboxes = self.mailboxes.lock().expect("mailboxes lock");
        if self.stop.is_cancelled() || !K::serving(&self.ctx) {
            return Err((self.not_serving(), caller));
        }
        let envelope = match mailboxes.get(&entity.key) {
            Some(mailbox) => match mailbox.commands.try_send((command, caller)) {
                Ok(()) => return Ok(()),
                Err(mpsc::error::TrySendError::Full((_, caller))) => {
                    return Err((
                        Error::Overloaded(format!(
                            "entity {} has {} commands waiting, the limit (processor.max-commands-per-entity); slow down",
                            entity.id, self.env.mailbox
                        )),
                        caller,
                    ));
                }
                // The entity ended (passivated or crashed) after we looked: start a new one.
                Err(mpsc::error::TrySendError::Closed(envelope)) => envelope,
            },
            None => (command, caller),
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
        let (commands, rx) = mpsc::channel(self.env.mailbox);
        commands.try_send(envelope).expect("a new mailbox has room");
        let inputs = Arc::new(Inbox::new());
        let inputs_rx = Arc::clone(&inputs);
        let instance = self.next_instance.fetch_add(1, Ordering::Relaxed);
        mailboxes.insert(
            entity.key.clone(),
            Mailbox {
                instance,
                commands,
                inputs,
            },
        );
        let active = self.env.active.fetch_add(1, Ordering::Relaxed) + 1;
        metrics::gauge!(m::ACTIVE_ENTITIES).set(active as f64);
        tokio::spawn(run(Arc::clone(self), entity, instance, rx, inputs_rx));
        Ok(())
    }

    /// Evict the active instance of `key` (an erasure, `crate::erase`): its mailbox leaves the
    /// registry and closes, so the instance finishes what it holds and ends; returns once it
    /// ended (at most `timeout`). False if none was active.
    pub(crate) async fn evict(&self, key: &str, timeout: Duration) -> bool {
        let Some(Mailbox {
            commands, inputs, ..
        }) = self.mailboxes.lock().expect("mailboxes lock").remove(key)
        else {
            return false;
        };
        drop(commands);
        // The instance holds the other reference to its inbox until it ends.
        let ended = async {
            while Arc::strong_count(&inputs) > 1 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        let _ = tokio::time::timeout(timeout, ended).await;
        true
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
        if mailboxes.get(key).is_some_and(|m| m.instance == instance) {
            mailboxes.remove(key);
        }
    }
}

/// An open stream with the user function, and the kind's machine for it.
struct Session<K: Kind> {
    machine: K,
    tx: mpsc::Sender<K::In>,
    answers: Answers<K::Out>,
    last_command_id: i64,
}

/// The user function's side of a session's stream, read by the entity task itself (no relay
/// task between the stream and the entity: one hand-off less per answer).
///
/// The call is opened in a task of its own: some SDKs (Go) send their response headers only
/// with the first reply, so awaiting the call before sending anything would deadlock. Once
/// the headers came, the task hands the stream over.
#[allow(
    clippy::large_enum_variant,
    reason = "one per session, which spends its life in the large variant"
)]
enum Answers<Out> {
    Opening(oneshot::Receiver<Result<tonic::Streaming<Out>, tonic::Status>>),
    Open(tonic::Streaming<Out>),
    Ended,
}

impl<Out> Answers<Out> {
    /// The next answer; `None` once the stream ended. Cancel safe: a dropped call loses nothing.
    async fn next(&mut self) -> Option<Result<Out, tonic::Status>> {
        loop {
            match self {
                Answers::Opening(opened) => match opened.await {
                    Ok(Ok(stream)) => *self = Answers::Open(stream),
                    Ok(Err(status)) => {
                        *self = Answers::Ended;
                        return Some(Err(status));
                    }
                    Err(_) => {
                        *self = Answers::Ended;
                        return None;
                    }
                },
                Answers::Open(stream) => {
                    let next = stream.message().await.transpose();
                    if !matches!(next, Some(Ok(_))) {
                        *self = Answers::Ended;
                    }
                    return next;
                }
                Answers::Ended => return None,
            }
        }
    }

    /// Read the rest of a half-closed stream (bounded), so the user function's side completes.
    async fn drain(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while let Some(Ok(_)) = self.next().await {}
        })
        .await;
    }
}

/// A call in flight.
struct Call {
    command: Command,
    /// Its span at the user function: ends when the user function answers
    /// ([`Kind::answered`]) or when the call leaves the map.
    span: tracing::Span,
    /// Unary: the caller until answered. Streamed: the relay of its elements.
    target: Target,
    /// Unary calls only.
    deadline: Option<Instant>,
}

enum Target {
    Unary(oneshot::Sender<Result<Outcome, Error>>),
    Stream(mpsc::Sender<Relayed>),
}

/// What the relay task of a streamed call does next.
enum Relayed {
    /// Run the side effects, then send the element (if any).
    Element {
        side_effects: Vec<cs::SideEffect>,
        then: Option<Then>,
    },
    Fail(Error),
}

type Pending<T> = FuturesUnordered<Pin<Box<dyn Future<Output = T> + Send>>>;

struct Entity<K: Kind> {
    home: Arc<Home<K>>,
    entity: EntityRef,
    session: Option<Session<K>>,
    window: Window,
    calls: HashMap<i64, Call>,
    writes: Pending<(u64, Result<Option<Position>, Error>)>,
    /// Streamed calls whose client went away.
    cancels: (mpsc::Sender<i64>, mpsc::Receiver<i64>),
    /// Refusing every command (a deleted CRDT).
    refuse: Option<String>,
}

/// The entity task. Ends when passivated, when its home stops, or when its mailbox closes.
async fn run<K: Kind>(
    home: Arc<Home<K>>,
    entity: EntityRef,
    instance: u64,
    mut rx: mpsc::Receiver<Envelope>,
    inputs: Arc<Inbox<K::Input>>,
) {
    let idle = entity
        .info
        .passivation_timeout
        .unwrap_or(home.env.passivation);
    let mut this = Entity::<K> {
        home: Arc::clone(&home),
        entity,
        session: None,
        window: Window::default(),
        calls: HashMap::new(),
        writes: FuturesUnordered::new(),
        cancels: mpsc::channel(MAILBOX),
        refuse: None,
    };
    let mut passivated = false;
    // The command taken from the mailbox, until the machine admits it.
    let mut held: Option<Envelope> = None;
    loop {
        let accepts = this.session.as_ref().is_none_or(|s| s.machine.accepts());
        if accepts
            && let Some((command, _)) = &held
            && this
                .session
                .as_ref()
                .is_none_or(|s| s.machine.admits(command))
        {
            let (command, caller) = held.take().expect("checked");
            this.on_command(command, caller).await;
            continue;
        }
        let idle_now = held.is_none()
            && this.calls.is_empty()
            && this.writes.is_empty()
            && this
                .session
                .as_ref()
                .is_none_or(|s| s.machine.may_passivate());
        let deadline = this.calls.values().filter_map(|c| c.deadline).min();
        tokio::select! {
            biased;
            // Stopping: once only streamed calls are left (they end with the entity).
            _ = home.stop.cancelled(), if this.only_streams() && this.writes.is_empty() => break,
            Some((token, result)) = this.writes.next(), if !this.writes.is_empty() => {
                this.on_written(token, result);
            }
            message = next_message(&mut this.session) => this.on_message(message),
            Some(id) = this.cancels.1.recv() => this.on_cancelled(id),
            _ = inputs.notify.notified() => {
                if let Some(input) = inputs.take() {
                    this.on_input(input);
                }
            }
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                this.on_deadline();
            }
            // Taken into `held`: the top of the loop runs it once the machine admits it.
            envelope = rx.recv(), if accepts && held.is_none() && !home.stop.is_cancelled() => match envelope {
                Some(envelope) => held = Some(envelope),
                None => break,
            },
            _ = tokio::time::sleep(idle), if idle_now => {
                if home.try_passivate(&this.entity.key, &rx) {
                    passivated = true;
                    debug!(entity = %this.entity.key, "passivated");
                    break;
                }
            }
        }
    }
    if !passivated {
        home.forget(&this.entity.key, instance);
    }
    // Commands that arrived after the decision to stop go back to their router to retry.
    if let Some((_, caller)) = held {
        caller.fail(home.not_serving());
    }
    rx.close();
    while let Ok((_, caller)) = rx.try_recv() {
        caller.fail(home.not_serving());
    }
    // Streamed calls end with the entity (their clients see the end of the stream).
    this.calls
        .retain(|_, c| matches!(c.target, Target::Unary(_)));
    this.fail_all(|| Error::EntityFailure(K::TERMINATED.to_string()));
    this.close_session().await;
    let active = home.env.active.fetch_sub(1, Ordering::Relaxed) - 1;
    metrics::gauge!(m::ACTIVE_ENTITIES).set(active as f64);
}

/// The next message of the session, if there is one (pending forever otherwise).
async fn next_message<K: Kind>(
    session: &mut Option<Session<K>>,
) -> Option<Result<K::Out, tonic::Status>> {
    match session {
        Some(session) => session.answers.next().await,
        None => std::future::pending().await,
    }
}

impl<K: Kind> Entity<K> {
    fn only_streams(&self) -> bool {
        self.calls
            .values()
            .all(|c| matches!(c.target, Target::Stream(_)))
    }

    async fn on_command(&mut self, mut command: Command, caller: Caller) {
        let home = &self.home;
        // Queued before a pause? Then the partition may be someone else's by now.
        if !home.host.may_serve() || !K::serving(&home.ctx) {
            caller.fail(home.not_serving());
            return;
        }
        if let Some(text) = &self.refuse {
            caller.fail(Error::EntityFailure(text.clone()));
            return;
        }
        if command.deadline.is_some_and(|d| d <= Instant::now()) {
            caller.fail(Error::DeadlineExceeded);
            return;
        }
        if self.session.is_none()
            // Boxed: loading (Cassandra reads) is a large future, and held inline it would make
            // every entity task that large for its whole life.
            && let Err(e) = Box::pin(self.activate()).await
        {
            warn!(entity = %self.entity.key, error = %e, "activation failed");
            caller.fail(e);
            return;
        }
        if let (Caller::Unary(_), Some(stored)) = (
            &caller,
            command
                .idempotency_key
                .as_deref()
                .and_then(|k| self.window.get(k)),
        ) {
            let stored = stored.clone();
            if let Caller::Unary(tx) = caller {
                let _ = tx.send(Ok(Outcome {
                    reply: stored,
                    deduplicated: true,
                    position: None,
                }));
            }
            return;
        }
        let session = self.session.as_mut().expect("activated");
        session.last_command_id += 1;
        let id = session.last_command_id;
        let streamed = matches!(caller, Caller::Stream(_));
        let span = crate::spans::user_function_call(&command);
        command.call_traceparent = trace::traceparent(&span);
        let message = session
            .machine
            .command(&self.entity, id, &command, streamed);
        let (target, deadline) = match caller {
            Caller::Unary(tx) => (
                Target::Unary(tx),
                Some(
                    command
                        .deadline
                        .unwrap_or_else(|| Instant::now() + DEFAULT_COMMAND_TIMEOUT),
                ),
            ),
            Caller::Stream(out) => (
                Target::Stream(relay(
                    Arc::clone(&self.home.host),
                    &command,
                    out,
                    id,
                    self.cancels.0.clone(),
                )),
                None,
            ),
        };
        self.calls.insert(
            id,
            Call {
                command,
                span,
                target,
                deadline,
            },
        );
        // Never wait here: the entity task also reads the answers, and a user function blocked
        // on writing them would stop reading these. A full stream (MAILBOX messages the user
        // function has not read) means it stopped keeping up: start over.
        if session.tx.try_send(message).is_err() {
            warn!(entity = %self.entity.key, "the user function does not read its entity stream");
            self.crash(K::TERMINATED.to_string(), None);
        }
    }

    fn turn_actions(&mut self, f: impl FnOnce(&mut K, &EntityRef, &Turn<'_>) -> Vec<Action<K>>) {
        let Some(session) = self.session.as_mut() else {
            return;
        };
        let home = &self.home;
        let host = &home.host;
        let next_id = || host.next_command_id();
        let stamp = Stamp::new(
            home.env.service.as_str(),
            K::writer(&home.ctx),
            now_ms(),
            &next_id,
        )
        .with_max_record_bytes(home.env.kafka.max_record_bytes);
        let turn = Turn {
            window: &self.window,
            stamp: &stamp,
        };
        let actions = f(&mut session.machine, &self.entity, &turn);
        self.perform(actions);
    }

    fn on_message(&mut self, message: Option<Result<K::Out, tonic::Status>>) {
        match message {
            Some(Ok(out)) => {
                if let Some(call) = K::answered(&out).and_then(|id| self.calls.get_mut(&id)) {
                    // The user function answered: its span ends (the commit has its own).
                    call.span = tracing::Span::none();
                }
                self.turn_actions(|machine, entity, turn| machine.message(entity, out, turn))
            }
            Some(Err(status)) => {
                warn!(entity = %self.entity.key, %status, "entity stream failed");
                self.crash(K::TERMINATED.to_string(), None);
            }
            None => {
                debug!(entity = %self.entity.key, "the user function closed the entity stream");
                self.crash(K::TERMINATED.to_string(), None);
            }
        }
    }

    fn on_written(&mut self, token: u64, result: Result<Option<Position>, Error>) {
        if let Some(session) = self.session.as_mut() {
            let actions = session.machine.written(&self.entity, token, result);
            self.perform(actions);
        }
    }

    fn on_input(&mut self, input: K::Input) {
        self.turn_actions(|machine, entity, turn| machine.input(entity, input, turn));
    }

    fn on_cancelled(&mut self, id: i64) {
        if !self.calls.contains_key(&id) {
            return;
        }
        if let Some(session) = self.session.as_mut() {
            let actions = session.machine.cancelled(&self.entity, id);
            self.perform(actions);
        }
        // Nothing more goes to that client.
        self.calls.remove(&id);
    }

    fn on_deadline(&mut self) {
        let now = Instant::now();
        let late: Vec<i64> = self
            .calls
            .iter()
            .filter(|(_, c)| c.deadline.is_some_and(|d| d <= now))
            .map(|(id, _)| *id)
            .collect();
        if late.is_empty() {
            return;
        }
        for id in late {
            if let Some(call) = self.calls.remove(&id) {
                fail(call.target, Error::DeadlineExceeded);
            }
        }
        // The user function is too slow: its later answers can no longer be trusted to belong
        // to their commands. Start over with the next command.
        self.drop_session();
    }

    fn perform(&mut self, actions: Vec<Action<K>>) {
        for action in actions {
            match action {
                Action::Send(message) => {
                    let sent = self
                        .session
                        .as_ref()
                        .is_some_and(|s| s.tx.try_send(message).is_ok());
                    if !sent {
                        self.crash(K::TERMINATED.to_string(), None);
                        return;
                    }
                }
                Action::Write { token, write } => {
                    let ctx = Arc::clone(&self.home.ctx);
                    self.writes
                        .push(Box::pin(async move { (token, K::write(ctx, write).await) }));
                }
                Action::Answer {
                    id,
                    then,
                    side_effects,
                    remember,
                    position,
                } => self.answer(id, then, side_effects, remember, position),
                Action::End { id } => {
                    // Dropping the relay's sender ends the call once its elements went out.
                    self.calls.remove(&id);
                }
                Action::Fail { id, error } => {
                    if let Some(call) = self.calls.remove(&id) {
                        fail(call.target, error);
                    }
                }
                Action::Report(report) => {
                    warn!(entity = %self.entity.key, report, "protocol error of the user function");
                    tokio::spawn(Arc::clone(&self.home.host).report_error(report));
                }
                Action::Effects(side_effects) => {
                    if !side_effects.is_empty() {
                        let host = Arc::clone(&self.home.host);
                        tokio::spawn(async move {
                            let _ =
                                effects::run_side_effects(&host, side_effects, 1, None, None).await;
                        });
                    }
                }
                Action::Crash { text, report } => {
                    self.crash(text, report);
                    return;
                }
                Action::Drop => {
                    self.drop_session();
                    return;
                }
                Action::Close { refuse } => {
                    for (_, call) in self.calls.drain() {
                        match call.target {
                            target @ Target::Unary(_) => {
                                fail(target, Error::EntityFailure(refuse.clone()))
                            }
                            // Dropping the relay's sender ends the stream.
                            Target::Stream(_) => {}
                        }
                    }
                    self.refuse = Some(refuse);
                    if let Some(session) = self.session.take() {
                        // Half-close; the user function ends its side.
                        drop(session.tx);
                        tokio::spawn(session.answers.drain());
                    }
                    return;
                }
            }
        }
    }

    fn answer(
        &mut self,
        id: i64,
        then: Option<Then>,
        side_effects: Vec<cs::SideEffect>,
        remember: bool,
        position: Option<Position>,
    ) {
        let Some(call) = self.calls.get(&id) else {
            return;
        };
        match &call.target {
            Target::Stream(relay) => {
                if relay
                    .try_send(Relayed::Element { side_effects, then })
                    .is_err()
                {
                    // The client reads too slowly (or is gone): its call ends.
                    if let Some(call) = self.calls.remove(&id) {
                        fail(
                            call.target,
                            Error::Overloaded("the client does not keep up with its stream".into()),
                        );
                    }
                }
            }
            Target::Unary(_) => {
                let Some(Call {
                    command,
                    target: Target::Unary(tx),
                    ..
                }) = self.calls.remove(&id)
                else {
                    unreachable!("checked above");
                };
                let then = then.unwrap_or(Then::Reply(Reply::Empty));
                if let (true, Some(key), Then::Reply(reply)) =
                    (remember, &command.idempotency_key, &then)
                    && !reply.is_failure()
                {
                    self.window.remember(key.clone(), reply.clone());
                }
                match then {
                    Then::Reply(reply) if side_effects.is_empty() => {
                        let _ = tx.send(Ok(Outcome {
                            position,
                            ..Outcome::new(reply)
                        }));
                    }
                    then => {
                        let host = Arc::clone(&self.home.host);
                        let key = command.effects_key(&self.entity.key);
                        tokio::spawn(async move {
                            let outcome = effects::run(
                                host,
                                side_effects,
                                then,
                                command.hops + 1,
                                command.deadline,
                                key.as_deref(),
                            )
                            .await
                            .map(|mut outcome| {
                                // A forward's target may report its own position; otherwise
                                // (and for this entity's reply) the command's.
                                outcome.position = outcome.position.or(position);
                                outcome
                            });
                            let _ = tx.send(outcome);
                        });
                    }
                }
            }
        }
    }

    /// Fail every call in flight, drop the stream.
    fn crash(&mut self, text: String, report: Option<String>) {
        if let Some(report) = report {
            tokio::spawn(Arc::clone(&self.home.host).report_error(report));
        }
        self.fail_all(|| Error::EntityFailure(text.clone()));
        self.session = None;
    }

    /// Drop the stream after the answers; calls still in flight fail.
    fn drop_session(&mut self) {
        self.fail_all(|| Error::EntityFailure(K::TERMINATED.to_string()));
        self.session = None;
    }

    fn fail_all(&mut self, error: impl Fn() -> Error) {
        for (_, call) in self.calls.drain() {
            fail(call.target, error());
        }
    }

    /// Load the entity, open its stream and send what starts it.
    async fn activate(&mut self) -> Result<(), Error> {
        // Writes of a dropped stream finish first: what the new stream starts from must
        // include them (or know they failed).
        while self.writes.next().await.is_some() {}
        let loaded = K::load(&self.home.ctx, &self.entity).await?;
        let (machine, start) = K::start(&self.entity, loaded);
        self.window.clear();
        for (key, reply) in start.remembered {
            self.window.remember(key, reply);
        }
        // Room for the whole start on top of the usual bound: the start is queued without
        // waiting, and the first command finds room however long the replay is (commands are
        // never awaited into the stream, see `on_command`).
        let (tx, requests) = mpsc::channel(MAILBOX + start.messages.len());
        let (opened, answers) = oneshot::channel();
        let uf = self.home.env.uf.clone();
        tokio::spawn(async move {
            let result = K::open(&uf, ReceiverStream::new(requests)).await;
            if let Err(status) = &result {
                warn!(address = %uf.address(), %status, "opening an entity stream failed");
            }
            let _ = opened.send(result);
        });
        let replayed = start.messages.len().saturating_sub(1);
        for message in start.messages {
            if tx.try_send(message).is_err() {
                return Err(Error::UserFunction(format!(
                    "the entity stream to {} closed during activation",
                    self.home.env.uf.address()
                )));
            }
        }
        self.session = Some(Session {
            machine,
            tx,
            answers: Answers::Opening(answers),
            last_command_id: 0,
        });
        metrics::counter!(m::ACTIVATIONS).increment(1);
        debug!(entity = %self.entity.key, replayed, "activated");
        Ok(())
    }

    /// Half-close the stream and wait (bounded) for the user function to close it too.
    async fn close_session(&mut self) {
        if let Some(session) = self.session.take() {
            drop(session.tx);
            session.answers.drain().await;
        }
    }
}

fn fail(target: Target, error: Error) {
    match target {
        Target::Unary(tx) => {
            let _ = tx.send(Err(error));
        }
        Target::Stream(relay) => {
            let _ = relay.try_send(Relayed::Fail(error));
        }
    }
}

/// The relay task of a streamed call: runs each element's side effects and forward in order,
/// sends the element, and tells the entity when the client went away.
fn relay(
    host: Arc<dyn Host>,
    command: &Command,
    out: mpsc::Sender<Result<Outcome, Error>>,
    id: i64,
    cancels: mpsc::Sender<i64>,
) -> mpsc::Sender<Relayed> {
    let (tx, mut rx) = mpsc::channel::<Relayed>(STREAM_BUFFER);
    let hops = command.hops + 1;
    tokio::spawn(async move {
        loop {
            let next = tokio::select! {
                next = rx.recv() => next,
                _ = out.closed() => {
                    let _ = cancels.send(id).await;
                    return;
                }
            };
            match next {
                // The entity ended the call.
                None => return,
                Some(Relayed::Fail(error)) => {
                    let _ = out.send(Err(error)).await;
                    return;
                }
                Some(Relayed::Element { side_effects, then }) => {
                    let outcome = match then {
                        Some(then) => Some(
                            effects::run(Arc::clone(&host), side_effects, then, hops, None, None)
                                .await,
                        ),
                        None => effects::run_side_effects(&host, side_effects, hops, None, None)
                            .await
                            .err()
                            .map(Err),
                    };
                    if let Some(outcome) = outcome {
                        let failed =
                            outcome.is_err() || matches!(&outcome, Ok(o) if o.reply.is_failure());
                        if out.send(outcome).await.is_err() {
                            let _ = cancels.send(id).await;
                            return;
                        }
                        if failed {
                            return;
                        }
                    }
                }
            }
        }
    });
    tx
}

/// The protocol `Command` of an entity command: id `id` of the stream, the method name, the
/// payload, and no request metadata (entities get none: the reference proxy sends none, and the
/// TCK compares the messages exactly) — except the caller's verified claims (`statehouse-jwt-*`,
/// only with `[gateway.auth]` on) and the call's `traceparent` when traces are on.
pub(crate) fn protocol_command(
    entity: &EntityRef,
    id: i64,
    command: &Command,
    streamed: bool,
) -> cs::Command {
    cs::Command {
        entity_id: entity.id.clone(),
        id,
        name: command.method.name.clone(),
        payload: Some(command.payload_any()),
        streamed,
        metadata: crate::spans::entity_metadata(command),
    }
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
