//! The gRPC side of `cloudstate.eventsourced.EventSourced/handle`.

use std::sync::Arc;

use futures::stream::{self, BoxStream};
use statehouse_schemas::cloudstate::eventsourced::{
    EventSourcedStreamIn, EventSourcedStreamOut, event_sourced_server::EventSourced,
};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use super::session::{Registry, Session, Step};

/// Serves every registered event-sourced entity.
pub(crate) struct Server {
    registry: Arc<Registry>,
    shutdown: CancellationToken,
}

impl Server {
    /// Once `shutdown` is cancelled, every stream ends as soon as it is
    /// between two messages, as if the proxy had passivated the entity.
    pub(crate) fn new(registry: Registry, shutdown: CancellationToken) -> Self {
        Self {
            registry: Arc::new(registry),
            shutdown,
        }
    }
}

#[tonic::async_trait]
impl EventSourced for Server {
    type handleStream = BoxStream<'static, Result<EventSourcedStreamOut, Status>>;

    async fn handle(
        &self,
        request: Request<Streaming<EventSourcedStreamIn>>,
    ) -> Result<Response<Self::handleStream>, Status> {
        let stream = EntityStream {
            session: Session::new(Arc::clone(&self.registry)),
            input: request.into_inner(),
            shutdown: self.shutdown.clone(),
        };
        // Messages are handled one at a time, in order, as they are pulled:
        // replies go out in command order and the proxy's flow control applies.
        let output = stream::unfold(Some(stream), |stream| async move {
            let (out, stream) = stream?.next().await?;
            Some((Ok(out), stream))
        });
        Ok(Response::new(Box::pin(output)))
    }
}

/// One `handle` call: the session and where its messages come from.
struct EntityStream {
    session: Session,
    input: Streaming<EventSourcedStreamIn>,
    shutdown: CancellationToken,
}

impl EntityStream {
    /// Reads until there is something to send: the message, and the stream
    /// if it goes on. `None` ends the stream.
    async fn next(mut self) -> Option<(EventSourcedStreamOut, Option<Self>)> {
        loop {
            let next = tokio::select! {
                biased;
                () = self.shutdown.cancelled() => {
                    tracing::debug!("ending an event-sourced stream: shutting down");
                    return None;
                }
                next = self.input.message() => next,
            };
            match next {
                Ok(Some(message)) => match self.session.handle(message) {
                    Step::Quiet => {}
                    Step::Send(out) => return Some((out, Some(self))),
                    Step::Stop(out) => return Some((out, None)),
                },
                // The proxy half-closed (passivation): we close too.
                Ok(None) => return None,
                Err(status) => {
                    tracing::debug!(%status, "event-sourced stream ended by the proxy");
                    return None;
                }
            }
        }
    }
}
