//! Readiness probes that speak each service's own wire protocol, hand-encoded, so xtask
//! needs no Kafka or Cassandra client library.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, ensure};

mod cql;
mod kafka;
mod wire;

/// How long one probe may wait on connect, read or write.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Healthy = `ApiVersions` answers and `Metadata` lists broker `node_id` (and, for a
/// cluster, `expected_brokers` brokers). Returns a one-line description.
pub(crate) fn kafka(port: u16, node_id: i32, expected_brokers: usize) -> Result<String> {
    let probe = kafka::probe(local(port), PROBE_TIMEOUT)?;
    let md = &probe.metadata;
    let me = md
        .brokers
        .iter()
        .find(|b| b.node_id == node_id)
        .with_context(|| format!("broker {node_id} is not (yet) in the metadata"))?;
    ensure!(
        md.brokers.len() >= expected_brokers,
        "{} of {expected_brokers} brokers are up",
        md.brokers.len()
    );
    ensure!(md.controller_id >= 0, "no active controller yet");
    Ok(format!(
        "broker {} at {}:{}, {} broker(s), controller {}, cluster id {}, {} APIs (Metadata v{})",
        me.node_id,
        me.host,
        me.port,
        md.brokers.len(),
        md.controller_id,
        md.cluster_id.as_deref().unwrap_or("?"),
        probe.api_count,
        probe.metadata_version
    ))
}

/// Healthy = a CQL v4 session starts and `system.local` answers; returns the release version.
pub(crate) fn cassandra(port: u16) -> Result<String> {
    cql::release_version(local(port), PROBE_TIMEOUT)
}
