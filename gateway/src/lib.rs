//! Statehouse gateway: the client front door (`ARCHITECTURE.md`, "Bird's-eye view", and
//! "Data paths", "A command").
//!
//! One port serves HTTP/1.1 and h2c: gRPC, gRPC-Web and HTTP/JSON transcoding for every user
//! method the service registry knows, plus gRPC server reflection (v1, v1alpha) and
//! `grpc.health.v1.Health` ([`Gateway`], routes in `server`). Each call's entity id is read from
//! the request's key fields, and the command goes to the processor that owns the entity's
//! partition (`statehouse_runtime::router::Router`, shared with the processors), which answers
//! with the user function's reply.
//!
//! * [`run`] — the `statehouse gateway` role: registry fed from Kafka (`router::feed`),
//!   partition counts read from Kafka, the client port and the metrics/health port, with
//!   the web console on it ([`console`]).
//! * [`Gateway::bind`] — the client port alone, over any `Router` (tests,
//!   `statehouse dev`).
//! * [`Error`] — every failure, with the one mapping to gRPC statuses
//!   (`impl From<Error> for tonic::Status`) and HTTP statuses ([`Error::http_status`]).
//!
//! Request messages are never re-encoded on the gRPC path: the frame's bytes go to the
//! processor, and the reply's bytes come back as they are.

mod auth;
pub mod console;
mod error;
#[doc(hidden)]
pub mod fuzzing;
mod grpc;
mod health;
mod limits;
mod metadata;
pub mod metrics;
mod reflection;
mod server;
mod span;
mod streaming;
mod transcode;

use statehouse_kafka::admin::Admin;
use statehouse_runtime::config::Config;
use statehouse_runtime::router;
use statehouse_runtime::{Health, admin_server};
use tokio_util::sync::CancellationToken;

pub use auth::{CLAIM_PREFIX, ISSUER, METADATA_PREFIX, Refusal, SUBJECT};
pub use error::{Error, http_status_of};
pub use server::{DEDUPLICATED_HEADER, Gateway, POSITION_HEADER};

use statehouse_runtime::router::{Registry, Router};

/// Runs the gateway role until `shutdown`: consumes the service registry and routing topics,
/// serves the client port (`gateway.listen`) and the metrics/health port
/// (`gateway.metrics-listen`, ready once a service is routable).
///
/// Fails if a port cannot be bound or the registry consumer cannot be created; otherwise returns
/// after `shutdown` once in-flight calls have finished.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    // Everything started here stops with `stop`: on the caller's shutdown, or when a part
    // fails (without cancelling the caller's token).
    let stop = shutdown.child_token();
    metrics::describe();
    let registry = Registry::new();
    let router = Router::with_kafka(
        registry.clone(),
        router::Options {
            tls: statehouse_runtime::tls::internal_client(&config.internal_tls)?,
            ..router::Options::default()
        },
        Admin::new(&config.kafka)?,
        config.kafka.topic_prefix.clone(),
    );

    let health = Health::new();
    let (console, sampler) = match console::start(&config, registry.clone(), stop.clone())? {
        Some((routes, task)) => (routes, Some(task)),
        None => (axum::Router::new(), None),
    };
    let (_, metrics) = admin_server::serve_with(
        config.gateway.metrics_listen,
        health.clone(),
        console,
        stop.clone(),
    )
    .await
    .map_err(|source| Error::Bind {
        addr: config.gateway.metrics_listen,
        source,
    })?;
    let readiness = tokio::spawn(follow_readiness(registry.clone(), health, stop.clone()));
    let gateway = match Gateway::bind(&config.gateway, router, stop.clone()).await {
        Ok(gateway) => gateway,
        Err(e) => {
            stop.cancel();
            let _ = readiness.await;
            let _ = metrics.await;
            if let Some(sampler) = sampler {
                let _ = sampler.await;
            }
            return Err(e);
        }
    };

    let result = router::feed::run(&config.kafka, registry, stop.clone())
        .await
        .map_err(Error::from);
    if let Err(e) = &result {
        tracing::error!(error = %e, "service registry consumer failed; stopping the gateway");
    }
    // The feed returns Ok only once `stop` is cancelled.
    stop.cancel();
    gateway.stopped().await;
    let _ = readiness.await;
    let _ = metrics.await;
    if let Some(sampler) = sampler {
        let _ = sampler.await;
    }
    result
}

/// Ready while at least one method is routable; not ready from shutdown on.
async fn follow_readiness(registry: Registry, health: Health, shutdown: CancellationToken) {
    let mut changes = registry.subscribe();
    loop {
        health.set_ready(!registry.routes().is_empty());
        tokio::select! {
            _ = shutdown.cancelled() => break,
            changed = changes.changed() => if changed.is_err() { break },
        }
    }
    health.set_ready(false);
}
