//! The projection handler (`statehouse.projection.v1.ProjectionHandler`): a client to the
//! user's code that says what its projections are and folds events into rows.

use std::time::Duration;

use statehouse_schemas::statehouse::projection::v1 as pb;
use statehouse_schemas::statehouse::projection::v1::projection_handler_client::ProjectionHandlerClient;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};
use tracing::warn;

use crate::Error;

/// Largest message to or from the handler.
const MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// A client of the handler. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Handler {
    client: ProjectionHandlerClient<Channel>,
    address: String,
}

impl Handler {
    /// A lazily connecting client of the handler at `host`:`port`.
    pub(crate) fn new(host: &str, port: u16) -> Result<Self, Error> {
        let address = format!("http://{host}:{port}");
        let channel = Endpoint::from_shared(address.clone())
            .map_err(|e| Error::Config(format!("projector.handler-host {host:?}: {e}")))?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .connect_lazy();
        Ok(Self {
            client: ProjectionHandlerClient::new(channel)
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
            address,
        })
    }

    pub(crate) fn address(&self) -> &str {
        &self.address
    }

    /// The handler's projections, asked until it answers (it may start after the projector).
    pub(crate) async fn describe(
        &self,
        shutdown: &CancellationToken,
    ) -> Result<Vec<pb::ProjectionSpec>, Error> {
        let mut backoff = Duration::from_millis(250);
        loop {
            match self.client.clone().describe(pb::DescribeRequest {}).await {
                Ok(reply) => return Ok(reply.into_inner().projections),
                Err(status) if status.code() == tonic::Code::Unimplemented => {
                    return Err(Error::Handler {
                        address: self.address.clone(),
                        reason: format!(
                            "it does not serve statehouse.projection.v1.ProjectionHandler ({})",
                            status.message()
                        ),
                    });
                }
                Err(status) => {
                    warn!(address = %self.address, code = ?status.code(), message = status.message(), retry_in = ?backoff, "asking the projection handler for its projections failed; retrying");
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Err(Error::ShuttingDown),
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
    }

    /// Fold `entities` (each with its row and its next events) into their new rows.
    pub(crate) async fn project(
        &self,
        projection: &str,
        entities: Vec<pb::EntityEvents>,
    ) -> Result<Vec<pb::RowChange>, tonic::Status> {
        let mut request = tonic::Request::new(pb::ProjectRequest {
            projection: projection.to_string(),
            entities,
        });
        request.set_timeout(Duration::from_secs(30));
        Ok(self
            .client
            .clone()
            .project(request)
            .await?
            .into_inner()
            .rows)
    }

    /// Hand a batch to an external projection (it applies it idempotently by entity and seq).
    pub(crate) async fn handle_batch(&self, batch: pb::EventBatch) -> Result<(), tonic::Status> {
        let mut request = tonic::Request::new(batch);
        request.set_timeout(Duration::from_secs(30));
        self.client.clone().handle_batch(request).await?;
        Ok(())
    }
}

/// Whether a failed handler call says nothing about the events (the handler is away or slow):
/// such failures are retried for ever, never parked.
pub(crate) fn is_transport(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Cancelled
            | tonic::Code::ResourceExhausted
            | tonic::Code::Aborted
    )
}
