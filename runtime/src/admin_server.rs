//! The metrics and health port of a role: `/metrics` (Prometheus text format), `/healthz`
//! (the process is alive) and `/readyz` (ready to serve: discovery and recovery are done).
//! A role may merge routes of its own ([`serve_with`]: the gateway's web console).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

/// Readiness of a role, shared by the parts that must be done before it serves.
#[derive(Debug, Clone, Default)]
pub struct Health {
    ready: Arc<AtomicBool>,
}

impl Health {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

/// How often the recorder's upkeep drains histogram samples.
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// The process-wide Prometheus recorder (installed on first use), with a thread that runs its
/// upkeep every [`UPKEEP_EVERY`]. Without upkeep, every histogram sample stays buffered until
/// the next scrape: a process nobody scrapes grows without bound (the R15 soak saw the gateway
/// grow ~3.5 KB/s at ~190 calls/s).
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let handle = crate::metrics::buckets(PrometheusBuilder::new())
            .install_recorder()
            .expect("the Prometheus recorder is installed once per process");
        let upkeep = handle.clone();
        if let Err(e) = std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(UPKEEP_EVERY);
                    upkeep.run_upkeep();
                }
            })
        {
            tracing::warn!(error = %e, "cannot start the metrics upkeep thread; histograms drain only when scraped");
        }
        handle
    })
}

/// The router of the metrics and health port.
pub fn router(health: Health) -> Router {
    let metrics = prometheus();
    Router::new()
        .route("/metrics", get(move || async move { metrics.render() }))
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let health = health.clone();
                async move {
                    if health.is_ready() {
                        (StatusCode::OK, "ready")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
                    }
                }
            }),
        )
}

/// Serve the metrics and health port until `shutdown`. Returns the bound address (useful with
/// port 0) once listening.
pub async fn serve(
    addr: SocketAddr,
    health: Health,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    serve_with(addr, health, Router::new(), shutdown).await
}

/// [`serve`], with a role's own routes merged in (the gateway's web console). `extra` must
/// not claim `/metrics`, `/healthz` or `/readyz` (axum panics on overlapping routes).
pub async fn serve_with(
    addr: SocketAddr,
    health: Health,
    extra: Router,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let app = router(health).merge(extra);
    let task = tokio::spawn(async move {
        let result = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "metrics/health server failed");
        }
    });
    tracing::info!(%local, "metrics and health endpoint listening");
    Ok((local, task))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn readiness_follows_health_and_metrics_render() {
        let health = Health::new();
        let shutdown = CancellationToken::new();
        let (addr, task) = serve(
            "127.0.0.1:0".parse().unwrap(),
            health.clone(),
            shutdown.clone(),
        )
        .await
        .unwrap();
        assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 503"));
        health.set_ready(true);
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 200"));
        metrics::counter!("statehouse_test_counter_total").increment(3);
        let body = get(addr, "/metrics").await;
        assert!(body.contains("statehouse_test_counter_total 3"), "{body}");
        shutdown.cancel();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn extra_routes_are_served_next_to_health() {
        let shutdown = CancellationToken::new();
        let extra = Router::new().route("/extra", axum::routing::get(|| async { "extra here" }));
        let (addr, task) = serve_with(
            "127.0.0.1:0".parse().unwrap(),
            Health::new(),
            extra,
            shutdown.clone(),
        )
        .await
        .unwrap();
        let answer = get(addr, "/extra").await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("extra here"), "{answer}");
        assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
        assert!(get(addr, "/nothing").await.starts_with("HTTP/1.1 404"));
        shutdown.cancel();
        task.await.unwrap();
    }
}
