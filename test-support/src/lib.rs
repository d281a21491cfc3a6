//! Shared test harness for Statehouse.
//!
//! Integration tests talk to the real Kafka broker and Cassandra node that `cargo xtask infra up`
//! (and `.ci/run`) start. When one of them is not there, the test fails loudly and says how to
//! start it — it never skips.
//!
//! Every test makes its own names ([`unique`]) for topics, groups, transactional ids and
//! keyspaces, so tests run in parallel and repeat without cleaning up.

pub mod http;
pub mod infra;
pub mod netns;
pub mod process;
pub mod proxy;
pub mod stack;
pub mod user_function;

use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Env var naming the Kafka bootstrap server the tests use.
pub const KAFKA_ENV: &str = "STATEHOUSE_TEST_KAFKA";
/// Env var naming the Cassandra contact point the tests use.
pub const CASSANDRA_ENV: &str = "STATEHOUSE_TEST_CASSANDRA";

const HOW_TO_START: &str = "start the test infrastructure with `cargo xtask infra up` (or run the whole suite with `bash .ci/run`)";

/// The Kafka bootstrap server (`STATEHOUSE_TEST_KAFKA`, default `127.0.0.1:9092`).
///
/// # Panics
/// If nothing listens there, with the command that starts it.
pub fn kafka_bootstrap() -> String {
    let addr = std::env::var(KAFKA_ENV).unwrap_or_else(|_| "127.0.0.1:9092".into());
    require_listening("Kafka", &addr, KAFKA_ENV, HOW_TO_START);
    addr
}

/// Env var naming the 3-broker Kafka cluster (replication factor 3) some fault tests use.
pub const KAFKA_CLUSTER_ENV: &str = "STATEHOUSE_TEST_KAFKA_CLUSTER";

/// The 3-broker cluster's bootstrap servers (`STATEHOUSE_TEST_KAFKA_CLUSTER`, default
/// `127.0.0.1:19092,127.0.0.1:19093,127.0.0.1:19094`).
///
/// # Panics
/// If a broker does not listen, with the command that starts the cluster.
pub fn kafka_cluster_bootstrap() -> String {
    let servers = std::env::var(KAFKA_CLUSTER_ENV)
        .unwrap_or_else(|_| "127.0.0.1:19092,127.0.0.1:19093,127.0.0.1:19094".into());
    for addr in servers.split(',') {
        require_listening(
            "the Kafka cluster",
            addr,
            KAFKA_CLUSTER_ENV,
            "start the 3-broker cluster with `cargo xtask infra up --kafka-brokers 3` (`cargo xtask ci` and `bash .ci/run` do)",
        );
    }
    servers
}

/// The Cassandra contact point (`STATEHOUSE_TEST_CASSANDRA`, default `127.0.0.1:9042`).
///
/// # Panics
/// If nothing listens there, with the command that starts it.
pub fn cassandra_contact_point() -> String {
    let addr = std::env::var(CASSANDRA_ENV).unwrap_or_else(|_| "127.0.0.1:9042".into());
    require_listening("Cassandra", &addr, CASSANDRA_ENV, HOW_TO_START);
    addr
}

fn require_listening(what: &str, addr: &str, env: &str, how: &str) {
    let resolved: Vec<_> = match addr.to_socket_addrs() {
        Ok(addrs) => addrs.collect(),
        Err(e) => panic!("{env}={addr} is not a host:port ({e})"),
    };
    let reachable = resolved
        .iter()
        .any(|a| TcpStream::connect_timeout(a, Duration::from_secs(2)).is_ok());
    assert!(
        reachable,
        "{what} is not reachable at {addr} (set by {env}). This test needs the real {what}: {how}."
    );
}

/// A name no other test (or earlier run) uses: `<prefix>-<12 hex digits>`. Safe for Kafka topics,
/// group ids, transactional ids and (with `_` instead of `-`) CQL identifiers.
pub fn unique(prefix: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}-{}", &id[..12])
}

/// Like [`unique`], as a valid CQL keyspace name (lower case, letters, digits, `_`).
pub fn unique_keyspace(prefix: &str) -> String {
    unique(prefix).replace('-', "_").to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_names_differ_and_are_safe() {
        let a = unique("t");
        let b = unique("t");
        assert_ne!(a, b);
        assert!(a.starts_with("t-") && a.len() == 14, "{a}");
        let k = unique_keyspace("Statehouse-Test");
        assert!(
            k.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
            "{k}"
        );
    }

    #[test]
    #[should_panic(expected = "cargo xtask infra up")]
    fn missing_services_fail_loudly_with_the_fix() {
        // Port 1 on loopback is never a Kafka broker.
        require_listening("Kafka", "127.0.0.1:1", KAFKA_ENV, HOW_TO_START);
    }
}
