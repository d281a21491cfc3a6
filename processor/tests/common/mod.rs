//! What the processor's integration tests share.

use statehouse_runtime::config::Config;
use statehouse_schemas::statehouse::processor::v1::processor_client::ProcessorClient;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// Migrate `config`'s keyspace (idempotent), start a processor on it, and connect a client of
/// its internal API. The processor stops when the token is cancelled.
pub(crate) async fn start(
    config: Config,
) -> (
    statehouse_processor::Running,
    ProcessorClient<Channel>,
    CancellationToken,
) {
    statehouse_store::migrations::run(&config.cassandra)
        .await
        .unwrap();
    let shutdown = CancellationToken::new();
    let running = statehouse_processor::start(config, shutdown.clone())
        .await
        .unwrap();
    let client = ProcessorClient::connect(format!("http://{}", running.internal_addr))
        .await
        .unwrap();
    (running, client, shutdown)
}
