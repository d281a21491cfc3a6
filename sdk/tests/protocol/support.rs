//! Plays the proxy: starts a `Service` on loopback and talks to it with the
//! generated Cloudstate clients.

use std::time::Duration;

use anyhow::{Context as _, bail};
use futures::channel::mpsc;
use prost_types::Any;
use statehouse_schemas::cloudstate::{
    self, ClientAction, Command, client_action,
    entity_discovery_client::EntityDiscoveryClient,
    eventsourced::{
        EventSourcedEvent, EventSourcedInit, EventSourcedReply, EventSourcedSnapshot,
        EventSourcedStreamIn, EventSourcedStreamOut, event_sourced_client::EventSourcedClient,
        event_sourced_stream_in, event_sourced_stream_out,
    },
};
use statehouse_sdk::{Error, Service};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::{Streaming, transport::Channel};

/// A guard against a hung test, not a synchronisation point.
const PATIENCE: Duration = Duration::from_secs(10);

/// A user function running on an ephemeral loopback port.
pub(crate) struct UserFunction {
    endpoint: String,
    shutdown: oneshot::Sender<()>,
    server: JoinHandle<Result<(), Error>>,
}

impl UserFunction {
    pub(crate) async fn start(service: Service) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let (shutdown, stop) = oneshot::channel::<()>();
        let server = tokio::spawn(service.serve_with_incoming_shutdown(listener, async {
            let _ = stop.await;
        }));
        Ok(Self {
            endpoint,
            shutdown,
            server,
        })
    }

    pub(crate) async fn discovery(&self) -> anyhow::Result<EntityDiscoveryClient<Channel>> {
        Ok(EntityDiscoveryClient::connect(self.endpoint.clone()).await?)
    }

    /// Opens a `handle` stream.
    pub(crate) async fn open(&self) -> anyhow::Result<EntityStream> {
        let mut client = EventSourcedClient::connect(self.endpoint.clone()).await?;
        let (to_entity, outgoing) = mpsc::unbounded();
        let incoming = tokio::time::timeout(PATIENCE, client.handle(outgoing))
            .await
            .context("timed out opening the stream")??
            .into_inner();
        Ok(EntityStream {
            to_entity: Some(to_entity),
            incoming,
        })
    }

    /// Stops the server and checks it ended cleanly.
    pub(crate) async fn stop(self) -> anyhow::Result<()> {
        let _ = self.shutdown.send(());
        tokio::time::timeout(PATIENCE, self.server)
            .await
            .context("server did not stop")???;
        Ok(())
    }
}

/// One `handle` stream, seen from the proxy.
pub(crate) struct EntityStream {
    to_entity: Option<mpsc::UnboundedSender<EventSourcedStreamIn>>,
    incoming: Streaming<EventSourcedStreamOut>,
}

impl EntityStream {
    fn send(&self, message: event_sourced_stream_in::Message) -> anyhow::Result<()> {
        self.to_entity
            .as_ref()
            .context("stream already half-closed")?
            .unbounded_send(EventSourcedStreamIn {
                message: Some(message),
            })?;
        Ok(())
    }

    pub(crate) fn init(
        &self,
        service_name: &str,
        entity_id: &str,
        snapshot: Option<(i64, Any)>,
    ) -> anyhow::Result<()> {
        self.send(event_sourced_stream_in::Message::Init(EventSourcedInit {
            service_name: service_name.into(),
            entity_id: entity_id.into(),
            snapshot: snapshot.map(|(snapshot_sequence, snapshot)| EventSourcedSnapshot {
                snapshot_sequence,
                snapshot: Some(snapshot),
            }),
        }))
    }

    pub(crate) fn event(&self, sequence: i64, payload: Any) -> anyhow::Result<()> {
        self.send(event_sourced_stream_in::Message::Event(EventSourcedEvent {
            sequence,
            payload: Some(payload),
        }))
    }

    /// Sends a command the way the proxy does: no metadata.
    pub(crate) fn command(
        &self,
        id: i64,
        entity_id: &str,
        name: &str,
        payload: Any,
    ) -> anyhow::Result<()> {
        self.send(event_sourced_stream_in::Message::Command(Command {
            entity_id: entity_id.into(),
            id,
            name: name.into(),
            payload: Some(payload),
            ..Command::default()
        }))
    }

    /// Half-closes, as the proxy does to passivate.
    pub(crate) fn half_close(&mut self) {
        self.to_entity = None;
    }

    /// The next message, or `None` once the user function closed the stream.
    pub(crate) async fn next(&mut self) -> anyhow::Result<Option<EventSourcedStreamOut>> {
        Ok(tokio::time::timeout(PATIENCE, self.incoming.message())
            .await
            .context("no message from the user function")??)
    }

    pub(crate) async fn reply(&mut self) -> anyhow::Result<EventSourcedReply> {
        match self.next().await?.and_then(|out| out.message) {
            Some(event_sourced_stream_out::Message::Reply(reply)) => Ok(reply),
            other => bail!("expected a reply, got {other:?}"),
        }
    }

    /// A stream-level failure, after which the stream must end.
    pub(crate) async fn stream_failure(&mut self) -> anyhow::Result<cloudstate::Failure> {
        let failure = match self.next().await?.and_then(|out| out.message) {
            Some(event_sourced_stream_out::Message::Failure(failure)) => failure,
            other => bail!("expected a stream failure, got {other:?}"),
        };
        if let Some(more) = self.next().await? {
            bail!("the stream went on after a failure: {more:?}");
        }
        Ok(failure)
    }
}

/// The reply payload of a message reply.
pub(crate) fn reply_payload(reply: &EventSourcedReply) -> Option<&Any> {
    match reply.client_action.as_ref()?.action.as_ref()? {
        client_action::Action::Reply(reply) => reply.payload.as_ref(),
        _ => None,
    }
}

/// The failure of a failure reply.
pub(crate) fn reply_failure(reply: &EventSourcedReply) -> Option<&cloudstate::Failure> {
    match reply.client_action.as_ref()? {
        ClientAction {
            action: Some(client_action::Action::Failure(failure)),
        } => Some(failure),
        _ => None,
    }
}
