//! Apache Cassandra 5.0: one node run from the Maven jars, `CassandraDaemon` in the
//! foreground of a detached JVM, tuned to start fast on a small machine.
//!
//! The JVM flags follow Cassandra 5.0's own `conf/jvm-server.options`,
//! `conf/jvm17-server.options` and `conf/cassandra-env.sh` (module exports/opens, netty
//! properties, the jamm agent, local JMX), minus what only matters in production.

use std::fs;
use std::path::Path;

use anyhow::{Context, Result};

use crate::infra::health;
use crate::infra::jvm::{Java, find_jar};
use crate::infra::kafka::escape_xml;
use crate::infra::secure;

/// Env var that moves the CQL native port.
pub(crate) const PORT_ENV: &str = "STATEHOUSE_CASSANDRA_PORT";
const DEFAULT_NATIVE_PORT: u16 = 9042;
const STORAGE_PORT: u16 = 7000;
const JMX_PORT: u16 = 7199;

/// Java 17 module flags from Cassandra 5.0's `conf/jvm17-server.options`.
const JAVA17_MODULE_FLAGS: &[&str] = &[
    "--add-exports=java.base/jdk.internal.misc=ALL-UNNAMED",
    "--add-exports=java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED",
    "--add-exports=java.rmi/sun.rmi.registry=ALL-UNNAMED",
    "--add-exports=java.rmi/sun.rmi.server=ALL-UNNAMED",
    "--add-exports=java.sql/java.sql=ALL-UNNAMED",
    "--add-exports=java.base/java.lang.ref=ALL-UNNAMED",
    "--add-exports=jdk.unsupported/sun.misc=ALL-UNNAMED",
    "--add-exports=jdk.compiler/com.sun.tools.javac.file=ALL-UNNAMED",
    "--add-exports=jdk.attach/sun.tools.attach=ALL-UNNAMED",
    "--add-opens=java.base/java.lang.module=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.loader=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.ref=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.reflect=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.math=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.module=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.util.jar=ALL-UNNAMED",
    "--add-opens=jdk.management/com.sun.management.internal=ALL-UNNAMED",
    "--add-opens=java.base/sun.nio.ch=ALL-UNNAMED",
    "--add-opens=java.base/java.io=ALL-UNNAMED",
    "--add-opens=java.base/java.lang.reflect=ALL-UNNAMED",
    "--add-opens=jdk.compiler/com.sun.tools.javac=ALL-UNNAMED",
    "--add-opens=java.base/java.lang=ALL-UNNAMED",
    "--add-opens=java.base/java.util=ALL-UNNAMED",
    "--add-opens=java.base/java.nio=ALL-UNNAMED",
];

/// GC and general flags (jvm-server.options / jvm17-server.options), heap sized for tests: a
/// CI run creates a keyspace per whole-stack test (dozens, each with its tables), and with 1 GiB
/// the old generation filled to ~75% and young pauses reached 0.6 s.
const JVM_FLAGS: &[&str] = &[
    "-Xms2g",
    "-Xmx2g",
    "-Xss512k",
    "-XX:+UseG1GC",
    "-XX:+ParallelRefProcEnabled",
    "-XX:MaxTenuringThreshold=1",
    "-XX:G1RSetUpdatingPauseTimePercent=5",
    "-XX:MaxGCPauseMillis=300",
    "-XX:InitiatingHeapOccupancyPercent=70",
    "-XX:+UseThreadPriorities",
    "-XX:+UseTLAB",
    "-XX:+ResizeTLAB",
    "-XX:+PerfDisableSharedMem",
    "-XX:+ExitOnOutOfMemoryError",
    "-ea",
    "-da:net.openhft...",
    "-Djava.net.preferIPv4Stack=true",
    "-Djdk.attach.allowAttachSelf=true",
    "-Dio.netty.tryReflectionSetAccessible=true",
    "-Dio.netty.allocator.useCacheForAllThreads=true",
    "-Dio.netty.allocator.maxOrder=11",
    "-Dcom.sun.management.jmxremote.authenticate=false",
    // A fresh single node: nothing to wait for.
    "-Dcassandra.skip_wait_for_gossip_to_settle=0",
    "-Dcassandra.ring_delay_ms=100",
    "-Dcassandra.superuser_setup_delay_ms=0",
    "-Dcassandra-foreground=yes",
];

/// The single Cassandra node.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub(crate) native_port: u16,
    pub(crate) storage_port: u16,
    pub(crate) jmx_port: u16,
    /// `Some` for the TLS + password node of `infra up --secure` ([`secure`]).
    pub(crate) secure: Option<secure::Material>,
}

impl Node {
    /// The node with its ports from the environment.
    pub(crate) fn from_env() -> Result<Self> {
        let native_port = match std::env::var(PORT_ENV) {
            Ok(v) if !v.is_empty() => v
                .parse()
                .with_context(|| format!("{PORT_ENV}={v} is not a port number"))?,
            _ => DEFAULT_NATIVE_PORT,
        };
        Ok(Self {
            native_port,
            storage_port: STORAGE_PORT,
            jmx_port: JMX_PORT,
            secure: None,
        })
    }

    /// The secured node of `infra up --secure` ([`secure`]).
    pub(crate) fn secured(material: secure::Material) -> Self {
        Self {
            native_port: secure::CASSANDRA_PORT,
            storage_port: secure::CASSANDRA_STORAGE_PORT,
            jmx_port: secure::CASSANDRA_JMX_PORT,
            secure: Some(material),
        }
    }

    /// Who may connect: everyone in plaintext, or (secured) TLS clients that log in, with
    /// permissions checked.
    fn access(&self) -> String {
        match &self.secure {
            None => "authenticator: AllowAllAuthenticator
authorizer: AllowAllAuthorizer
role_manager: CassandraRoleManager"
                .to_owned(),
            Some(material) => format!(
                "authenticator: PasswordAuthenticator
authorizer: CassandraAuthorizer
role_manager: CassandraRoleManager
client_encryption_options:
  enabled: true
  optional: false
  require_client_auth: false
  ssl_context_factory:
    class_name: org.apache.cassandra.security.PEMBasedSslContextFactory
  keystore: {keystore}",
                keystore = yaml_string(&material.server_bundle().to_string_lossy()),
            ),
        }
    }

    /// `cassandra.yaml` with every directory under `data`.
    pub(crate) fn yaml(&self, data: &Path) -> String {
        let dir = |sub: &str| yaml_string(&data.join(sub).to_string_lossy());
        format!(
            "# Generated by `cargo xtask infra up`; edits are overwritten.
cluster_name: {cluster}
num_tokens: 1
initial_token: 0
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
auto_bootstrap: false
storage_compatibility_mode: NONE

data_file_directories:
  - {data_files}
commitlog_directory: {commitlog}
saved_caches_directory: {saved_caches}
hints_directory: {hints}
cdc_raw_directory: {cdc_raw}
commitlog_sync: periodic
commitlog_sync_period: 10000ms

seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: \"127.0.0.1:{storage}\"
listen_address: 127.0.0.1
# CQL on every interface (the network-partition tests reach it from their namespaces through
# their bridge), advertised to drivers as 127.0.0.1.
rpc_address: 0.0.0.0
broadcast_rpc_address: 127.0.0.1
storage_port: {storage}
native_transport_port: {native}
start_native_transport: true
endpoint_snitch: SimpleSnitch

{access}

# Tests create and drop many keyspaces: no snapshots, no hints on one node, and room for
# every keyspace's prepared statements (the default cache, ~10 MiB, evicts them mid-test).
prepared_statements_cache_size: 128MiB
auto_snapshot: false
hinted_handoff_enabled: false
dynamic_snitch: false

# Lightweight transactions on Paxos v2 (Cassandra 4.1+): fewer round trips than v1.
paxos_variant: v2
",
            data_files = dir("data"),
            commitlog = dir("commitlog"),
            saved_caches = dir("saved_caches"),
            hints = dir("hints"),
            cdc_raw = dir("cdc_raw"),
            storage = self.storage_port,
            native = self.native_port,
            cluster = if self.secure.is_some() {
                "statehouse-secure"
            } else {
                "statehouse-dev"
            },
            access = self.access(),
        )
    }

    /// Writes `cassandra.yaml` and `logback.xml` into `dir` and returns the JVM arguments.
    pub(crate) fn prepare(&self, _java: &Java, libs: &Path, dir: &Path) -> Result<Vec<String>> {
        let data = dir.join("data");
        let logs = dir.join("logs");
        let triggers = dir.join("triggers");
        for d in [&data, &logs, &triggers] {
            fs::create_dir_all(d)?;
        }
        let yaml = dir.join("cassandra.yaml");
        fs::write(&yaml, self.yaml(&data))?;
        let logback = dir.join("logback.xml");
        fs::write(&logback, logback_xml(&logs))?;

        let mut args: Vec<String> = JVM_FLAGS.iter().map(|s| (*s).to_owned()).collect();
        if self.secure.is_some() {
            // One test's keyspaces only: a smaller heap (the last flag wins). Health is read
            // from this start's log ([`secure::health`]).
            args.extend(["-Xms1g".to_owned(), "-Xmx1g".to_owned()]);
            secure::forget_start(&logs.join("system.log"));
        }
        args.extend(JAVA17_MODULE_FLAGS.iter().map(|s| (*s).to_owned()));
        if let Some(jamm) = find_jar(libs, "jamm-") {
            args.push(format!("-javaagent:{}", jamm.display()));
        }
        args.extend([
            format!("-Dcassandra.jmx.local.port={}", self.jmx_port),
            format!("-Dlogback.configurationFile={}", logback.display()),
            format!("-Dcassandra.logdir={}", logs.display()),
            format!("-Dcassandra.storagedir={}", data.display()),
            format!("-Dcassandra.triggers_dir={}", triggers.display()),
            format!("-Dcassandra.config=file://{}", yaml.display()),
            "-cp".to_owned(),
            format!("{}/*", libs.display()),
            "org.apache.cassandra.service.CassandraDaemon".to_owned(),
        ]);
        Ok(args)
    }

    /// Probes the node (see [`health::cassandra`]).
    pub(crate) fn health(&self, log: &Path) -> Result<String> {
        if self.secure.is_some() {
            return secure::health(
                self.native_port,
                log,
                "Starting listening for CQL clients",
                "CQL over TLS with password authentication",
            );
        }
        health::cassandra(self.native_port).map(|v| format!("Cassandra {v}"))
    }

    /// `(label, port)` pairs this node binds.
    pub(crate) fn ports(&self) -> Vec<(&'static str, u16)> {
        vec![
            ("cql", self.native_port),
            ("storage", self.storage_port),
            ("jmx", self.jmx_port),
        ]
    }
}

/// A double-quoted YAML scalar.
fn yaml_string(value: &str) -> String {
    format!("\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\""))
}

/// A logback config: INFO and above to a size-rolled `system.log`.
fn logback_xml(logs: &Path) -> String {
    let logs = escape_xml(&logs.to_string_lossy());
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<!-- Generated by `cargo xtask infra up`. -->
<configuration scan="false">
  <appender name="SYSTEMLOG" class="ch.qos.logback.core.rolling.RollingFileAppender">
    <file>{logs}/system.log</file>
    <rollingPolicy class="ch.qos.logback.core.rolling.FixedWindowRollingPolicy">
      <fileNamePattern>{logs}/system.log.%i</fileNamePattern>
      <minIndex>1</minIndex>
      <maxIndex>3</maxIndex>
    </rollingPolicy>
    <triggeringPolicy class="ch.qos.logback.core.rolling.SizeBasedTriggeringPolicy">
      <maxFileSize>50MB</maxFileSize>
    </triggeringPolicy>
    <encoder>
      <pattern>%-5level [%thread] %date{{ISO8601}} %logger{{0}} - %msg%n</pattern>
    </encoder>
  </appender>
  <root level="INFO">
    <appender-ref ref="SYSTEMLOG"/>
  </root>
</configuration>
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_puts_everything_under_the_data_dir() {
        let node = Node {
            native_port: 9042,
            storage_port: 7000,
            jmx_port: 7199,
            secure: None,
        };
        let yaml = node.yaml(Path::new("/infra/cassandra/data"));
        assert!(yaml.contains("commitlog_directory: \"/infra/cassandra/data/commitlog\"\n"));
        assert!(yaml.contains("  - \"/infra/cassandra/data/data\"\n"));
        assert!(yaml.contains("native_transport_port: 9042\n"));
        assert!(yaml.contains("seeds: \"127.0.0.1:7000\""));
        assert_eq!(yaml_string(r#"a"b\c"#), r#""a\"b\\c""#);
    }
}
