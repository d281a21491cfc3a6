//! `statehouse projector`: read models built from a service's journal (`ARCHITECTURE.md`,
//! "Projections").
//!
//! The projector asks the projection handler (`projector.handler-host`/`-port`, usually the
//! user function's own port; `statehouse.projection.v1.ProjectionHandler`) which projections
//! it implements, records each in Cassandra, and runs every generation of each as a consumer
//! group on the journal — scale by adding replicas. It serves the rows of Cassandra projections
//! on `projector.listen` (`statehouse.projection.v1.Projections`) and its metrics and health on
//! `projector.metrics-listen`.
//!
//! * [`handler`] — the client of the user's handler.
//! * [`worker`] — one generation: partitions in order, batches folded, rows written, exactly
//!   once in effect; poison events parked.
//! * [`supervisor`] — which generations run; the switch after a rebuild.
//! * [`query`] — the query API, with waits for journal positions (read your writes).

mod error;
mod handler;
pub mod metrics;
mod query;
mod supervisor;
mod worker;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

pub use error::Error;
use statehouse_core::{ServiceName, Topics};
use statehouse_runtime::config::{Config, ProjectorOptions};
use statehouse_runtime::{Health, admin_server};
use statehouse_schemas::statehouse::projection::v1 as pb;
use statehouse_schemas::statehouse::projection::v1::projections_server::ProjectionsServer;
use statehouse_store::Store;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// What every part of the projector shares.
pub(crate) struct Ctx {
    pub(crate) kafka: statehouse_kafka::Options,
    pub(crate) topics: Topics,
    pub(crate) service: ServiceName,
    pub(crate) store: Store,
    pub(crate) handler: handler::Handler,
    pub(crate) options: ProjectorOptions,
    /// Partitions of the journal topic.
    pub(crate) journal_partitions: u32,
}

/// How far a projection generation has read one partition of the journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionLag {
    pub partition: i32,
    /// Its progress: the next offset it reads (0: not read yet).
    pub read: i64,
    /// The partition's last stable offset now.
    pub end: i64,
}

impl PartitionLag {
    /// Offsets behind (transaction markers count as records).
    pub fn lag(&self) -> i64 {
        (self.end - self.read).max(0)
    }
}

/// Generation `generation` of projection `name` of `service` against the journal's last stable
/// offsets, partition by partition: what `admin projections status` shows, also while no
/// projector runs.
pub async fn lag(
    kafka: &statehouse_kafka::Options,
    store: &Store,
    service: &ServiceName,
    name: &str,
    generation: i32,
) -> Result<Vec<PartitionLag>, Error> {
    let journal = Topics::new(kafka.topic_prefix.clone(), service.clone()).journal();
    let partitions = statehouse_kafka::admin::Admin::new(kafka)?
        .partition_count(&journal)
        .await?
        .ok_or_else(|| Error::NoJournal(journal.clone()))?;
    let progress = store
        .projection_progress(service.as_str(), name, generation)
        .await?;
    let mut out = Vec::with_capacity(partitions as usize);
    for partition in 0..partitions {
        let (end, _) = statehouse_kafka::reader::end_offsets(
            kafka,
            &journal,
            partition,
            Duration::from_secs(10),
        )
        .await?;
        let partition = partition as i32;
        out.push(PartitionLag {
            partition,
            read: progress.get(&partition).copied().unwrap_or(0),
            end,
        });
    }
    Ok(out)
}

/// A projection the handler implements.
#[derive(Debug, Clone)]
pub(crate) struct Spec {
    pub(crate) name: String,
    pub(crate) persistence_id: String,
    /// Kept by the handler in its own database (`HandleBatch`), not in Cassandra.
    pub(crate) external: bool,
}

/// Run the projector until `shutdown`.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    let p = config.projector.clone();
    let service = p
        .service
        .clone()
        .ok_or_else(|| Error::Config("projector.service must be set".into()))?;
    let service = ServiceName::new(service).map_err(|e| Error::Config(e.to_string()))?;
    metrics::describe();
    let health = Health::new();
    let (_, metrics_task) = admin_server::serve(p.metrics_listen, health.clone(), shutdown.clone())
        .await
        .map_err(|source| Error::Bind {
            addr: p.metrics_listen,
            source,
        })?;
    let topics = Topics::new(config.kafka.topic_prefix.clone(), service.clone());
    let store = retry("connecting to Cassandra", &shutdown, || {
        Store::connect(&config.cassandra)
    })
    .await?;
    let admin = statehouse_kafka::admin::Admin::new(&config.kafka)?;
    let journal = topics.journal();
    let journal_partitions = loop {
        match admin.partition_count(&journal).await {
            Ok(Some(n)) => break n,
            Ok(None) => {
                warn!(topic = %journal, "the journal topic does not exist yet (no processor of the service has started); waiting")
            }
            Err(e) => {
                warn!(topic = %journal, error = %e, "reading the journal's partitions failed; retrying")
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Err(Error::ShuttingDown),
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    };
    let handler = handler::Handler::new(&p.handler_host, p.handler_port)?;
    let specs = specs(handler.describe(&shutdown).await?, handler.address())?;
    for spec in &specs {
        retry("recording a projection", &shutdown, || {
            store.ensure_projection(service.as_str(), &spec.name, &spec.persistence_id)
        })
        .await?;
    }
    info!(service = %service, handler = %handler.address(), projections = ?specs.iter().map(|s| &s.name).collect::<Vec<_>>(), journal_partitions, "projector starting");
    let ctx = Arc::new(Ctx {
        kafka: config.kafka.clone(),
        topics,
        service,
        store,
        handler,
        options: p.clone(),
        journal_partitions,
    });
    let serving = Arc::new(supervisor::Serving::default());
    let specs: BTreeMap<String, Arc<Spec>> = specs
        .into_iter()
        .map(|s| (s.name.clone(), Arc::new(s)))
        .collect();
    let mut tasks = Vec::new();
    for spec in specs.values() {
        tasks.push(tokio::spawn(supervisor::run(
            Arc::clone(&ctx),
            Arc::clone(spec),
            Arc::clone(&serving),
            shutdown.child_token(),
        )));
    }
    let listener = tokio::net::TcpListener::bind(p.listen)
        .await
        .map_err(|source| Error::Bind {
            addr: p.listen,
            source,
        })?;
    let query = ProjectionsServer::new(query::Query {
        ctx: Arc::clone(&ctx),
        specs,
        serving,
    });
    let server = {
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let incoming =
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
            tonic::transport::Server::builder()
                .add_service(query)
                .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
                .await
        })
    };
    health.set_ready(true);
    info!(listen = %p.listen, "projector serving queries");
    shutdown.cancelled().await;
    health.set_ready(false);
    for task in tasks {
        let _ = task.await;
    }
    let _ = server.await;
    let _ = metrics_task.await;
    Ok(())
}

/// The handler's projections, checked: names of lowercase letters, digits and `-`, each once,
/// each with a persistence id.
fn specs(described: Vec<pb::ProjectionSpec>, address: &str) -> Result<Vec<Spec>, Error> {
    let invalid = |reason: String| Error::Handler {
        address: address.to_string(),
        reason,
    };
    if described.is_empty() {
        return Err(invalid("it implements no projection".into()));
    }
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::with_capacity(described.len());
    for spec in described {
        let valid_name = !spec.name.is_empty()
            && spec.name.len() <= 64
            && spec
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !valid_name {
            return Err(invalid(format!(
                "projection name {:?} is not 1-64 lowercase letters, digits and '-'",
                spec.name
            )));
        }
        if spec.persistence_id.is_empty() {
            return Err(invalid(format!(
                "projection {} names no persistence id",
                spec.name
            )));
        }
        if !seen.insert(spec.name.clone()) {
            return Err(invalid(format!(
                "projection {} is declared twice",
                spec.name
            )));
        }
        let external = match pb::Target::try_from(spec.target) {
            Ok(pb::Target::Cassandra) => false,
            Ok(pb::Target::External) => true,
            Err(_) => {
                return Err(invalid(format!(
                    "projection {} has an unknown target {}",
                    spec.name, spec.target
                )));
            }
        };
        out.push(Spec {
            name: spec.name,
            persistence_id: spec.persistence_id,
            external,
        });
    }
    Ok(out)
}

/// Run a Cassandra start-up step until it succeeds (Cassandra may still be starting), or
/// shutdown.
async fn retry<T, F, Fut>(what: &str, shutdown: &CancellationToken, step: F) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, statehouse_store::Error>>,
{
    use statehouse_runtime::shutdown::{Interrupted, until_done};
    until_done(what, shutdown, statehouse_store::Error::is_transient, step)
        .await
        .map_err(|e| match e {
            Interrupted::Stopped => Error::ShuttingDown,
            Interrupted::Failed(e) => e.into(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, persistence_id: &str, target: pb::Target) -> pb::ProjectionSpec {
        pb::ProjectionSpec {
            name: name.into(),
            persistence_id: persistence_id.into(),
            target: target as i32,
        }
    }

    #[test]
    fn handler_specs_are_checked() {
        let ok = specs(
            vec![
                spec("carts", "shopping-cart", pb::Target::Cassandra),
                spec("cart-audit-2", "shopping-cart", pb::Target::External),
            ],
            "h",
        )
        .unwrap();
        assert_eq!(ok.len(), 2);
        assert!(!ok[0].external && ok[1].external);
        for (bad, why) in [
            (vec![], "no projection"),
            (vec![spec("Carts", "c", pb::Target::Cassandra)], "lowercase"),
            (
                vec![spec("carts", "", pb::Target::Cassandra)],
                "persistence id",
            ),
            (
                vec![
                    spec("carts", "c", pb::Target::Cassandra),
                    spec("carts", "c", pb::Target::Cassandra),
                ],
                "twice",
            ),
        ] {
            let err = specs(bad, "h").unwrap_err().to_string();
            assert!(err.contains(why), "{err}");
        }
    }
}
