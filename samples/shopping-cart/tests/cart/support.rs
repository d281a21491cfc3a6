//! Plays the proxy against the sample on a loopback port.

use std::time::Duration;

use anyhow::{Context as _, bail};
use futures::channel::mpsc;
use prost_types::Any;
use statehouse_schemas::cloudstate::{
    self, Command, client_action,
    entity_discovery_client::EntityDiscoveryClient,
    eventsourced::{
        EventSourcedEvent, EventSourcedInit, EventSourcedReply, EventSourcedSnapshot,
        EventSourcedStreamIn, EventSourcedStreamOut, event_sourced_client::EventSourcedClient,
        event_sourced_stream_in::Message, event_sourced_stream_out,
    },
};
use statehouse_sdk::Error;
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::{Streaming, transport::Channel};

/// A guard against a hung test, not a synchronisation point.
const PATIENCE: Duration = Duration::from_secs(10);

/// The sample running on an ephemeral loopback port.
pub(crate) struct UserFunction {
    endpoint: String,
    shutdown: oneshot::Sender<()>,
    server: JoinHandle<Result<(), Error>>,
}

impl UserFunction {
    pub(crate) async fn start() -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let (shutdown, stop) = oneshot::channel::<()>();
        let server = tokio::spawn(
            statehouse_sample_shopping_cart::service().serve_with_incoming_shutdown(
                listener,
                async {
                    let _ = stop.await;
                },
            ),
        );
        Ok(Self {
            endpoint,
            shutdown,
            server,
        })
    }

    pub(crate) async fn discovery(&self) -> anyhow::Result<EntityDiscoveryClient<Channel>> {
        Ok(EntityDiscoveryClient::connect(self.endpoint.clone()).await?)
    }

    /// Opens a stream and initialises cart `user_id`.
    pub(crate) async fn cart(
        &self,
        user_id: &str,
        snapshot: Option<(i64, Any)>,
    ) -> anyhow::Result<Cart> {
        let mut client = EventSourcedClient::connect(self.endpoint.clone()).await?;
        let (to_entity, outgoing) = mpsc::unbounded();
        let incoming = tokio::time::timeout(PATIENCE, client.handle(outgoing))
            .await
            .context("timed out opening the stream")??
            .into_inner();
        let cart = Cart {
            user_id: user_id.to_owned(),
            next_command_id: 1,
            to_entity,
            incoming,
        };
        cart.send(Message::Init(EventSourcedInit {
            service_name: statehouse_sample_shopping_cart::SERVICE_NAME.into(),
            entity_id: user_id.into(),
            snapshot: snapshot.map(|(snapshot_sequence, snapshot)| EventSourcedSnapshot {
                snapshot_sequence,
                snapshot: Some(snapshot),
            }),
        }))?;
        Ok(cart)
    }

    pub(crate) async fn stop(self) -> anyhow::Result<()> {
        let _ = self.shutdown.send(());
        tokio::time::timeout(PATIENCE, self.server)
            .await
            .context("server did not stop")???;
        Ok(())
    }
}

/// One cart's stream, seen from the proxy: command ids count from 1.
pub(crate) struct Cart {
    user_id: String,
    next_command_id: i64,
    to_entity: mpsc::UnboundedSender<EventSourcedStreamIn>,
    incoming: Streaming<EventSourcedStreamOut>,
}

impl Cart {
    fn send(&self, message: Message) -> anyhow::Result<()> {
        self.to_entity.unbounded_send(EventSourcedStreamIn {
            message: Some(message),
        })?;
        Ok(())
    }

    /// Replays a journaled event (before any command).
    pub(crate) fn event(&self, sequence: i64, payload: Any) -> anyhow::Result<()> {
        self.send(Message::Event(EventSourcedEvent {
            sequence,
            payload: Some(payload),
        }))
    }

    /// Sends a command and waits for its reply.
    pub(crate) async fn command(
        &mut self,
        name: &str,
        payload: Any,
    ) -> anyhow::Result<EventSourcedReply> {
        let id = self.next_command_id;
        self.next_command_id += 1;
        self.send(Message::Command(Command {
            entity_id: self.user_id.clone(),
            id,
            name: name.into(),
            payload: Some(payload),
            ..Command::default()
        }))?;
        let out = tokio::time::timeout(PATIENCE, self.incoming.message())
            .await
            .context("no reply from the user function")??;
        match out.and_then(|out| out.message) {
            Some(event_sourced_stream_out::Message::Reply(reply)) if reply.command_id == id => {
                Ok(reply)
            }
            other => bail!("expected the reply to command {id}, got {other:?}"),
        }
    }
}

/// The payload of a message reply.
pub(crate) fn reply_payload(reply: &EventSourcedReply) -> Option<&Any> {
    match reply.client_action.as_ref()?.action.as_ref()? {
        client_action::Action::Reply(reply) => reply.payload.as_ref(),
        _ => None,
    }
}

/// The failure of a failure reply.
pub(crate) fn reply_failure(reply: &EventSourcedReply) -> Option<&cloudstate::Failure> {
    match reply.client_action.as_ref()?.action.as_ref()? {
        client_action::Action::Failure(failure) => Some(failure),
        _ => None,
    }
}
