//! The Cloudstate shopping cart sample: serves the user function on
//! `HOST`:`PORT` (default `127.0.0.1:8080`, like the reference SDKs).
//! Without `PORT`, `USER_FUNCTION_PORT` (the proxy's name for the same port)
//! is used, so one environment can configure both. Stops on Ctrl-C / SIGTERM.

use anyhow::Context as _;
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

const DEFAULT_HOST: &str = "127.0.0.1";
const DEFAULT_PORT: u16 = 8080;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();

    let (host, port) = listen_addr()?;
    let listener = TcpListener::bind((host.as_str(), port))
        .await
        .with_context(|| format!("cannot listen on {host}:{port}"))?;
    statehouse_sample_shopping_cart::service()
        .serve_with_incoming_shutdown(listener, shutdown_signal())
        .await?;
    Ok(())
}

/// The interface (an IP address or a host name) and port to listen on.
fn listen_addr() -> anyhow::Result<(String, u16)> {
    let host = std::env::var("HOST")
        .ok()
        .filter(|host| !host.is_empty())
        .unwrap_or_else(|| DEFAULT_HOST.to_owned());
    let port = match std::env::var("PORT").or_else(|_| std::env::var("USER_FUNCTION_PORT")) {
        Ok(port) => port
            .parse::<u16>()
            .with_context(|| format!("port {port} is not a port number"))?,
        Err(_) => DEFAULT_PORT,
    };
    Ok((host, port))
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
    tracing::info!("shutting down");
}
