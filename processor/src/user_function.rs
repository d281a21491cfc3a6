//! The connection to the user function (the sidecar model: plaintext HTTP/2 to localhost) and
//! discovery (`docs/protocol.md`, "Discovery").

use std::time::Duration;

use statehouse_schemas::cloudstate::action::action_protocol_client::ActionProtocolClient;
use statehouse_schemas::cloudstate::crdt::crdt_client::CrdtClient;
use statehouse_schemas::cloudstate::entity_discovery_client::EntityDiscoveryClient;
use statehouse_schemas::cloudstate::eventsourced::event_sourced_client::EventSourcedClient;
use statehouse_schemas::cloudstate::valueentity::value_entity_client::ValueEntityClient;
use statehouse_schemas::cloudstate::{EntitySpec, ProxyInfo, UserFunctionError};
use statehouse_schemas::protocol;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};
use tracing::{info, warn};

use crate::Error;

/// Largest message accepted from the user function (the reference proxy allows 12 MiB).
const MAX_MESSAGE_BYTES: usize = 12 * 1024 * 1024;

/// Clients of the user function's services over one HTTP/2 connection.
#[derive(Clone)]
pub(crate) struct UserFunction {
    channel: Channel,
    address: String,
}

impl UserFunction {
    /// A lazily connecting channel to `host:port`.
    ///
    /// No HTTP/2 keepalive pings: the user function is on localhost, and grpc-go servers (the
    /// Go SDK) answer pings more frequent than every 5 minutes with `GOAWAY too_many_pings`.
    pub(crate) fn new(host: &str, port: u16) -> Result<Self, Error> {
        let address = format!("http://{host}:{port}");
        let channel = Endpoint::from_shared(address.clone())
            .map_err(|e| Error::Config(format!("user function address {address}: {e}")))?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .connect_lazy();
        Ok(Self { channel, address })
    }

    pub(crate) fn address(&self) -> &str {
        &self.address
    }

    pub(crate) fn event_sourced(&self) -> EventSourcedClient<Channel> {
        EventSourcedClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    pub(crate) fn value_entity(&self) -> ValueEntityClient<Channel> {
        ValueEntityClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    pub(crate) fn crdt(&self) -> CrdtClient<Channel> {
        CrdtClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    pub(crate) fn action(&self) -> ActionProtocolClient<Channel> {
        ActionProtocolClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    fn discovery(&self) -> EntityDiscoveryClient<Channel> {
        EntityDiscoveryClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// Call `discover` until it answers, backing off from 1 s to 10 s (`docs/protocol.md`,
    /// "Discovery"), telling
    /// the user function the entity types this processor supports.
    pub(crate) async fn discover(
        &self,
        supported_entity_types: &[&str],
        shutdown: &CancellationToken,
    ) -> Result<EntitySpec, Error> {
        let info = ProxyInfo {
            protocol_major_version: protocol::MAJOR_VERSION,
            protocol_minor_version: protocol::MINOR_VERSION,
            proxy_name: "statehouse".into(),
            proxy_version: env!("CARGO_PKG_VERSION").into(),
            supported_entity_types: supported_entity_types
                .iter()
                .map(|s| s.to_string())
                .collect(),
        };
        let mut backoff = Duration::from_millis(250);
        loop {
            match self.discovery().discover(info.clone()).await {
                Ok(spec) => {
                    info!(address = %self.address, "user function discovered");
                    return Ok(spec.into_inner());
                }
                Err(status) => {
                    warn!(address = %self.address, code = ?status.code(), message = status.message(), retry_in = ?backoff, "discovery failed; retrying");
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Err(Error::ShuttingDown),
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).clamp(Duration::from_secs(1), Duration::from_secs(10));
        }
    }

    /// Tell the user function it did something wrong (best effort).
    pub(crate) async fn report_error(&self, message: &str) {
        let request = UserFunctionError {
            message: message.to_string(),
        };
        if let Err(status) = self.discovery().report_error(request).await {
            warn!(code = ?status.code(), "reportError failed: {}", status.message());
        }
    }
}
