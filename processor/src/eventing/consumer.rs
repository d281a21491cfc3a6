//! A subscription's member of its consumer group: every processor of the service is one, so the
//! partitions of the source are spread over them. Each partition's events run one after the
//! other, in order (so an entity's events arrive in order); partitions run side by side, each
//! in its lane (`statehouse_kafka::group`: a stuck partition holds back only itself). An
//! event is done — and the group moves past it — when its command finished, forwards and side
//! effects included; a failed command is retried with backoff until it goes through (a poison
//! event holds its partition back and says why, every time). A reply that is a failure counts
//! as done, as the reference proxy has it.

use std::sync::Arc;
use std::time::Duration;

use statehouse_kafka::group::{GroupConsumer, Item, Lane};
use statehouse_kafka::reader::Message;
use statehouse_schemas::avro::{AvroRecord, EventRecord};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use tracing::{debug, error, info, warn};

use crate::command::{Command, Host, Outcome};
use crate::env::Env;
use crate::eventing::event;
use crate::eventing::plan::{Source, Subscription};
use crate::user_function::UserFunction;
use crate::{Error, action, metrics as m};

/// How long one event's command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// Run `sub` until `shutdown`.
pub(crate) async fn run(
    env: Arc<Env>,
    host: Arc<dyn Host>,
    uf: UserFunction,
    sub: Arc<Subscription>,
    shutdown: CancellationToken,
) {
    let topic = match &sub.source {
        Source::EventLog(_) => env.service_topics.journal(),
        Source::Topic(topic) => topic.clone(),
    };
    let group = env
        .service_topics
        .subscription_group(&sub.consumer_group, &sub.source.label());
    let consumer = loop {
        match GroupConsumer::subscribe(&env.kafka, &group, &[topic.as_str()]) {
            Ok(consumer) => break Arc::new(consumer),
            Err(e) => {
                warn!(group, error = %e, "joining a subscription's consumer group failed; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                }
            }
        }
    };
    info!(
        group,
        topic,
        methods = sub.by_type.len(),
        "subscription consuming"
    );
    let worker = Worker {
        host,
        uf,
        sub,
        consumer: Arc::clone(&consumer),
        shutdown: shutdown.clone(),
    };
    let mut tasks = Vec::new();
    consumer
        .dispatch(&topic, &shutdown, |lane| {
            tasks.push(tokio::spawn(worker.clone().partition(topic.clone(), lane)));
        })
        .await;
    for task in tasks {
        let _ = task.await;
    }
    consumer.commit();
}

#[derive(Clone)]
struct Worker {
    host: Arc<dyn Host>,
    uf: UserFunction,
    sub: Arc<Subscription>,
    consumer: Arc<GroupConsumer>,
    shutdown: CancellationToken,
}

impl Worker {
    /// One partition's events, in order, until the dispatcher or the processor stops.
    async fn partition(self, topic: String, mut lane: Lane) {
        loop {
            let item = tokio::select! {
                _ = self.shutdown.cancelled() => return,
                item = lane.recv() => item,
            };
            let message = match item {
                Some(Item::Record(message)) => message,
                Some(Item::End { .. }) => continue,
                None => return,
            };
            let mut backoff = Duration::from_millis(200);
            loop {
                match self.handle(&message).await {
                    Ok(()) => break,
                    Err(e) => {
                        metrics::counter!(m::EVENTING_RETRIES).increment(1);
                        warn!(group = %self.consumer.group(), partition = message.partition, offset = message.offset, error = %e, retry_in = ?backoff, "an event's command failed; retrying");
                        tokio::select! {
                            _ = self.shutdown.cancelled() => return,
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(10));
                    }
                }
            }
            if let Err(e) = self
                .consumer
                .done(&topic, message.partition, message.offset)
            {
                // The partition moved to another member: it resumes from the last offset done.
                debug!(error = %e, "storing a subscription offset failed");
            }
        }
    }

    /// Run one event's command to its end. `Ok` also for events that are not for this
    /// subscription.
    async fn handle(&self, message: &Message) -> Result<(), String> {
        let Some(value) = &message.value else {
            return Ok(());
        };
        let command = match &self.sub.source {
            Source::EventLog(persistence_id) => {
                let record = EventRecord::decode(value).map_err(|e| {
                    format!(
                        "journal record at offset {} does not decode: {e}",
                        message.offset
                    )
                })?;
                if &record.persistence_id != persistence_id {
                    return Ok(());
                }
                event::from_journal(&self.sub, &record).inspect_err(|e| error!("{e}"))?
            }
            Source::Topic(topic) => match event::from_topic(&self.sub, topic, message) {
                Ok(Some(command)) => command,
                Ok(None) => return Ok(()),
                Err(e) => {
                    error!("{e}");
                    return Err(e);
                }
            },
        };
        metrics::counter!(m::EVENTING_EVENTS).increment(1);
        // A new trace, linked to the one that wrote the event; the command continues it.
        let mut command = command;
        let span = crate::spans::eventing_event(&command, message.partition);
        if let Some(traceparent) = statehouse_runtime::trace::traceparent(&span) {
            command.traceparent = Some(traceparent);
        }
        match self.run(command).instrument(span).await {
            Ok(_) => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Run a command: unary methods through the host (here or wherever it runs), streamed ones
    /// (server streaming actions of this service) here, every element in turn.
    async fn run(&self, mut command: Command) -> Result<Outcome, Error> {
        command.deadline = Some(Instant::now() + COMMAND_TIMEOUT);
        if command.method.is_unary() {
            return Arc::clone(&self.host).dispatch(command).await;
        }
        let (out, mut outcomes) = mpsc::channel(16);
        let (_rest_tx, rest) = mpsc::channel(1);
        tokio::spawn(action::streamed(
            Arc::clone(&self.host),
            self.uf.clone(),
            command,
            rest,
            out,
        ));
        let mut last = Ok(Outcome::new(crate::command::Reply::Empty));
        while let Some(outcome) = outcomes.recv().await {
            last = outcome;
            if last.is_err() {
                break;
            }
        }
        last
    }
}
