//! Graceful shutdown: one token, cancelled by SIGINT or SIGTERM, threaded through every `run`.

use tokio_util::sync::CancellationToken;

/// A token cancelled when the process receives SIGINT (Ctrl-C) or SIGTERM (Kubernetes stop).
/// A second signal while shutting down exits at once.
pub fn on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown requested; finishing in-flight work");
        cancel.cancel();
        wait_for_signal().await;
        tracing::warn!("second signal: exiting now");
        std::process::exit(130);
    });
    token
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Why [`until_done`] gave up.
#[derive(Debug)]
pub enum Interrupted<E> {
    /// Told to stop while waiting to retry.
    Stopped,
    /// An error `transient` does not call passing.
    Failed(E),
}

/// Run a start-up step until it succeeds, retrying errors that `transient` says may pass (a
/// broker or Cassandra still starting, or briefly away) with backoff (0.5 s doubling to 10 s),
/// logging each; gives up at once on any other error, or when `shutdown` is cancelled.
pub async fn until_done<T, E, F, Fut>(
    what: &str,
    shutdown: &CancellationToken,
    transient: impl Fn(&E) -> bool,
    mut step: F,
) -> Result<T, Interrupted<E>>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut backoff = std::time::Duration::from_millis(500);
    loop {
        match step().await {
            Ok(value) => return Ok(value),
            Err(e) if transient(&e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "{what} failed; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return Err(Interrupted::Stopped),
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(std::time::Duration::from_secs(10));
            }
            Err(e) => return Err(Interrupted::Failed(e)),
        }
    }
}
