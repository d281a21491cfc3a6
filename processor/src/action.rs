//! Running action calls against the user function (the mapping is `kinds::action`). Actions
//! are stateless: any processor of the service runs them, with no partition and no mailbox.
//!
//! Streamed calls relay elements as they come: each response's side effects run first, a
//! forward is dispatched and its reply takes the response's place, a response without a reply
//! sends nothing, and a failure is sent and ends the call — the user function's call is
//! dropped (cancelled) and so is the client's request side. When the client goes away, the
//! user function's call is dropped too.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use statehouse_schemas::cloudstate as cs;
use statehouse_schemas::cloudstate::action::ActionResponse;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;

use crate::command::{Command, Host, Outcome, Reply, Then};
use crate::eventing::output;
use crate::kinds::action::{Element, Shape, element, first_command, next_command};
use crate::user_function::UserFunction;
use crate::{Error, effects};
use statehouse_runtime::trace;
use tracing::Instrument as _;

/// A later client message of a streamed-in or duplex call.
pub(crate) type Message = (Bytes, Option<cs::Metadata>);

/// Run a unary action call.
pub(crate) async fn unary(
    host: Arc<dyn Host>,
    uf: &UserFunction,
    mut command: Command,
) -> Result<Outcome, Error> {
    let span = crate::spans::user_function_call(&command);
    command.call_traceparent = trace::traceparent(&span);
    let request = with_deadline(first_command(&command), command.deadline);
    let response = uf
        .action()
        .handle_unary(request)
        .instrument(span)
        .await
        .map_err(Error::UserFunctionCall)?
        .into_inner();
    let Element {
        side_effects, then, ..
    } = element(response);
    let then = then.unwrap_or(Then::Reply(Reply::Empty));
    // A forward's reply is the target's: only the action's own reply is published.
    let own_reply = matches!(then, Then::Reply(_));
    let outcome = effects::run(
        Arc::clone(&host),
        side_effects,
        then,
        command.hops + 1,
        command.deadline,
        command.effects_key(&command.method.path).as_deref(),
    )
    .await?;
    if own_reply {
        publish(
            &host,
            &command,
            command.idempotency_key.as_deref(),
            &outcome,
        )
        .await?;
    }
    Ok(outcome)
}

/// Publish an action's reply to its method's `out` topic (if it has one) before the caller
/// gets it; a failure to publish fails the call. At least once: a retried call publishes
/// again, with the same `ce-id` when it carries the same idempotency key (`docs/protocol.md`,
/// "Eventing").
async fn publish(
    host: &Arc<dyn Host>,
    command: &Command,
    id: Option<&str>,
    outcome: &Outcome,
) -> Result<(), Error> {
    let Some(topic) = output::topic_of(command) else {
        return Ok(());
    };
    let origin = output::Origin {
        topic,
        source: command.method.service.clone(),
        id: id.map_or_else(|| host.next_command_id(), str::to_string),
        subject: None,
        // No key: Kafka's partitioner spreads the records.
        key: None,
    };
    match output::record(origin, &outcome.reply) {
        Some(record) => Arc::clone(host).publish(record).await,
        None => Ok(()),
    }
}

/// Run a streamed action call: `rest` holds the client's later messages (streamed-in and
/// duplex calls), `out` gets one outcome per element for the client. Returns when the call is
/// over; dropping `out` ends the client's stream.
pub(crate) async fn streamed(
    host: Arc<dyn Host>,
    uf: UserFunction,
    mut command: Command,
    rest: mpsc::Receiver<Message>,
    out: mpsc::Sender<Result<Outcome, Error>>,
) {
    let shape = Shape::of(&command.method);
    // A streamed call's span covers the whole call (a unary one's, just the call).
    let span = match shape {
        Shape::Unary => tracing::Span::none(),
        _ => crate::spans::user_function_call(&command),
    };
    command.call_traceparent = trace::traceparent(&span);
    let _in_span = span;
    let first = first_command(&command);
    let method = Arc::clone(&command.method);
    let requests = move || {
        futures::stream::once(std::future::ready(first.clone())).chain(
            ReceiverStream::new(rest)
                .map(move |(payload, metadata)| next_command(&method, &payload, metadata)),
        )
    };
    let mut client = uf.action();
    match shape {
        Shape::Unary => {
            let outcome = unary(host, &uf, command).await;
            let _ = out.send(outcome).await;
        }
        Shape::StreamedIn => {
            let call = client.handle_streamed_in(with_deadline(requests(), command.deadline));
            let response = tokio::select! {
                response = call => response,
                // The client went away: dropping the call cancels it.
                _ = out.closed() => return,
            };
            match response {
                Ok(response) => {
                    relay_one(&host, &command, 0, response.into_inner(), &out).await;
                }
                Err(status) => {
                    let _ = out.send(Err(Error::UserFunctionCall(status))).await;
                }
            }
        }
        Shape::StreamedOut | Shape::Streamed => {
            let call = async {
                if shape == Shape::StreamedOut {
                    let request = with_deadline(first_command(&command), command.deadline);
                    client.handle_streamed_out(request).await
                } else {
                    client
                        .handle_streamed(with_deadline(requests(), command.deadline))
                        .await
                }
            };
            let responses = tokio::select! {
                response = call => response,
                _ = out.closed() => return,
            };
            let mut responses = match responses {
                Ok(responses) => responses.into_inner(),
                Err(status) => {
                    let _ = out.send(Err(Error::UserFunctionCall(status))).await;
                    return;
                }
            };
            for index in 0.. {
                let next = tokio::select! {
                    next = responses.message() => next,
                    _ = out.closed() => return,
                };
                match next {
                    Ok(Some(response)) => {
                        if !relay_one(&host, &command, index, response, &out).await {
                            return;
                        }
                    }
                    Ok(None) => return,
                    Err(status) => {
                        let _ = out.send(Err(Error::UserFunctionCall(status))).await;
                        return;
                    }
                }
            }
        }
    }
}

/// Relay response `index` of a call: its side effects, then its element (if any). Returns
/// whether the call goes on.
async fn relay_one(
    host: &Arc<dyn Host>,
    command: &Command,
    index: u32,
    response: ActionResponse,
    out: &mpsc::Sender<Result<Outcome, Error>>,
) -> bool {
    let Element {
        side_effects,
        then,
        ends,
    } = element(response);
    let hops = command.hops + 1;
    // The element's own key (its output's `ce-id`), and the one its effects derive theirs from.
    let element_key = Command::effect_key(command.idempotency_key.as_deref(), index);
    let effects_key =
        Command::effect_key(command.effects_key(&command.method.path).as_deref(), index);
    let key = effects_key.as_deref();
    let own_reply = matches!(then, Some(Then::Reply(_)));
    let outcome = match then {
        Some(then) => {
            effects::run(
                Arc::clone(host),
                side_effects,
                then,
                hops,
                command.deadline,
                key,
            )
            .await
        }
        None => {
            match effects::run_side_effects(host, side_effects, hops, command.deadline, key).await {
                Ok(()) => return true,
                Err(e) => Err(e),
            }
        }
    };
    let outcome = match outcome {
        Ok(outcome) if own_reply => publish(host, command, element_key.as_deref(), &outcome)
            .await
            .map(|()| outcome),
        outcome => outcome,
    };
    let failed = outcome.is_err();
    out.send(outcome).await.is_ok() && !ends && !failed
}

fn with_deadline<T>(message: T, deadline: Option<Instant>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(deadline) = deadline {
        request.set_timeout(
            deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1)),
        );
    }
    request
}
