//! Apache Kafka in KRaft mode: combined broker+controller nodes run from the Maven jars.
//!
//! The single dev/test node listens on 127.0.0.1:9092 (controller 9093) and formats its
//! storage once as a standalone dynamic quorum. `--kafka-brokers N` (N > 1) also runs an
//! N-node cluster with a static quorum on 19092.. (controllers 19192..) for fault tests.
//!
//! Every node has a second client listener, `NETNS`, bound on all interfaces and advertised at
//! the network-partition tests' bridge address ([`NETNS_BRIDGE`], port client + 2 for the single
//! node, 19292.. for the cluster): processes in the tests' network namespaces reach Kafka
//! through it (127.0.0.1 is a different host inside a namespace). Nothing else uses it.

use std::fs;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::infra::health;
use crate::infra::jvm::Java;
use crate::infra::secure;

/// Env var that moves the single node's client port (its controller port is the next one).
pub(crate) const PORT_ENV: &str = "STATEHOUSE_KAFKA_PORT";
const DEFAULT_PORT: u16 = 9092;
/// The first client port of the multi-node cluster; node `i` (from 1) uses `base + i - 1`.
pub(crate) const CLUSTER_CLIENT_BASE: u16 = 19092;
/// The first controller port of the multi-node cluster.
pub(crate) const CLUSTER_CONTROLLER_BASE: u16 = 19192;
/// The first `NETNS` listener port of the multi-node cluster.
pub(crate) const CLUSTER_NETNS_BASE: u16 = 19292;
/// The address of the network-partition tests' bridge in the root namespace (the tests create
/// the bridge; `test-support/src/netns.rs`).
pub(crate) const NETNS_BRIDGE: &str = "10.77.0.1";

/// One combined broker+controller.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub(crate) node_id: i32,
    pub(crate) client_port: u16,
    pub(crate) controller_port: u16,
    /// The `NETNS` listener's port (see the module docs).
    pub(crate) netns_port: u16,
    /// Controller ports of every voter, for a static quorum; empty for a standalone node.
    pub(crate) voters: Vec<(i32, u16)>,
    /// Where the cluster id shared by all nodes of this cluster is kept.
    pub(crate) cluster_id_file: PathBuf,
    /// `Some` for the `SASL_SSL`-only node of `infra up --secure` ([`secure`]).
    pub(crate) secure: Option<secure::Material>,
}

/// The client port of the single node (`$STATEHOUSE_KAFKA_PORT` or 9092).
pub(crate) fn client_port() -> Result<u16> {
    match std::env::var(PORT_ENV) {
        Ok(v) if !v.is_empty() => v
            .parse()
            .with_context(|| format!("{PORT_ENV}={v} is not a port number")),
        _ => Ok(DEFAULT_PORT),
    }
}

impl Node {
    /// The single development node, living in `dir`.
    pub(crate) fn single(dir: &Path) -> Result<Self> {
        let client_port = client_port()?;
        let controller_port = client_port.checked_add(1).with_context(|| {
            format!("{PORT_ENV}={client_port} leaves no room for the controller port")
        })?;
        let netns_port = controller_port.checked_add(1).with_context(|| {
            format!("{PORT_ENV}={client_port} leaves no room for the NETNS listener port")
        })?;
        Ok(Self {
            node_id: 1,
            client_port,
            controller_port,
            netns_port,
            voters: Vec::new(),
            cluster_id_file: dir.join("cluster.id"),
            secure: None,
        })
    }

    /// The secured single node of `infra up --secure`, living in `dir` ([`secure`]).
    pub(crate) fn secured(dir: &Path, material: secure::Material) -> Self {
        Self {
            node_id: 1,
            client_port: secure::KAFKA_PORT,
            controller_port: secure::KAFKA_CONTROLLER_PORT,
            netns_port: 0,
            voters: Vec::new(),
            cluster_id_file: dir.join("cluster.id"),
            secure: Some(material),
        }
    }

    /// Node `index` (from 1) of a `size`-node cluster whose nodes live under `cluster_dir`.
    pub(crate) fn cluster_member(cluster_dir: &Path, index: u16, size: u16) -> Self {
        Self {
            node_id: i32::from(index),
            client_port: CLUSTER_CLIENT_BASE + index - 1,
            controller_port: CLUSTER_CONTROLLER_BASE + index - 1,
            netns_port: CLUSTER_NETNS_BASE + index - 1,
            voters: (1..=size)
                .map(|i| (i32::from(i), CLUSTER_CONTROLLER_BASE + i - 1))
                .collect(),
            cluster_id_file: cluster_dir.join("cluster.id"),
            secure: None,
        }
    }

    fn cluster_size(&self) -> usize {
        self.voters.len().max(1)
    }

    /// The listener lines of a plain node: `PLAINTEXT` clients, the controller, and `NETNS`.
    fn plain_listeners(&self) -> String {
        format!(
            "listeners=PLAINTEXT://127.0.0.1:{client},CONTROLLER://127.0.0.1:{controller},NETNS://0.0.0.0:{netns}
advertised.listeners=PLAINTEXT://127.0.0.1:{client},CONTROLLER://127.0.0.1:{controller},NETNS://{bridge}:{netns}
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,NETNS:PLAINTEXT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT",
            client = self.client_port,
            controller = self.controller_port,
            netns = self.netns_port,
            bridge = NETNS_BRIDGE,
        )
    }

    /// The listener lines of the secured node: clients and the broker itself over `SASL_SSL`
    /// (SCRAM-SHA-512 or PLAIN, the PEM material of [`secure::Material`]), the controller on
    /// loopback.
    fn secure_listeners(&self, material: &secure::Material) -> Result<String> {
        let admin = material.kafka_admin_password()?;
        let user = material.kafka_password()?;
        let path = |p: PathBuf| escape_property(&p.to_string_lossy());
        Ok(format!(
            "listeners=SECURE://127.0.0.1:{client},CONTROLLER://127.0.0.1:{controller}
advertised.listeners=SECURE://127.0.0.1:{client},CONTROLLER://127.0.0.1:{controller}
listener.security.protocol.map=SECURE:SASL_SSL,CONTROLLER:PLAINTEXT
controller.listener.names=CONTROLLER
inter.broker.listener.name=SECURE
sasl.enabled.mechanisms=SCRAM-SHA-512,PLAIN
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
listener.name.secure.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username=\"{admin_user}\" password=\"{admin}\";
listener.name.secure.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required username=\"{admin_user}\" password=\"{admin}\" user_{admin_user}=\"{admin}\" user_{user_name}=\"{user}\";
ssl.keystore.type=PEM
ssl.keystore.location={keystore}
ssl.truststore.type=PEM
ssl.truststore.location={truststore}
ssl.client.auth=none
# Authorization: `admin` (the broker itself) and the loopback controller listener's ANONYMOUS
# principal are super users; everyone else needs ACLs (`secure::grant_acls`).
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
allow.everyone.if.no.acl.found=false
super.users=User:{admin_user};User:ANONYMOUS",
            client = self.client_port,
            controller = self.controller_port,
            admin_user = secure::KAFKA_ADMIN,
            user_name = secure::KAFKA_USER,
            keystore = path(material.server_bundle()),
            truststore = path(material.ca()),
        ))
    }

    /// `server.properties` for this node, with its data in `data`.
    pub(crate) fn properties(&self, data: &Path) -> Result<String> {
        let listeners = match &self.secure {
            Some(material) => self.secure_listeners(material)?,
            None => self.plain_listeners(),
        };
        let replication = self.cluster_size().min(3);
        let min_isr = if replication > 1 { 2 } else { 1 };
        let quorum = if self.voters.is_empty() {
            format!(
                "controller.quorum.bootstrap.servers=127.0.0.1:{}",
                self.controller_port
            )
        } else {
            let voters: Vec<String> = self
                .voters
                .iter()
                .map(|(id, port)| format!("{id}@127.0.0.1:{port}"))
                .collect();
            format!("controller.quorum.voters={}", voters.join(","))
        };
        let data = escape_property(&data.to_string_lossy());
        Ok(format!(
            "# Generated by `cargo xtask infra up`; edits are overwritten.
process.roles=broker,controller
node.id={node}
{quorum}
{listeners}
log.dirs={data}

# Topics: created explicitly by the code under test.
auto.create.topics.enable=false
num.partitions=1
default.replication.factor={replication}
min.insync.replicas={min_isr}
log.segment.bytes=16777216
log.retention.check.interval.ms=60000
log.cleaner.dedupe.buffer.size=33554432

# Consumer groups and transactions on a small cluster.
offsets.topic.replication.factor={replication}
offsets.topic.num.partitions=8
transaction.state.log.replication.factor={replication}
transaction.state.log.min.isr={min_isr}
transaction.state.log.num.partitions=8
share.coordinator.state.topic.replication.factor={replication}
share.coordinator.state.topic.min.isr={min_isr}
group.initial.rebalance.delay.ms=0

# Two cores: fewer threads.
num.network.threads=2
num.io.threads=4
background.threads=4
num.recovery.threads.per.data.dir=1
",
            node = self.node_id,
        ))
    }

    /// Writes the configs into `dir`, formats the storage on first use, and returns the JVM
    /// arguments that run the node.
    pub(crate) fn prepare(&self, java: &Java, libs: &Path, dir: &Path) -> Result<Vec<String>> {
        let data = dir.join("data");
        let logs = dir.join("logs");
        fs::create_dir_all(&data)?;
        fs::create_dir_all(&logs)?;
        let properties = dir.join("server.properties");
        fs::write(&properties, self.properties(&data)?)?;
        if self.secure.is_some() {
            // Health is read from this start's log ([`secure::health`]).
            secure::forget_start(&logs.join("server.log"));
        }
        let log4j = dir.join("log4j2.xml");
        fs::write(&log4j, log4j2_xml(&logs))?;
        let classpath = format!("{}/*", libs.display());
        let log_props = [
            format!("-Dlog4j2.configurationFile={}", log4j.display()),
            format!("-Dkafka.logs.dir={}", logs.display()),
        ];
        if !data.join("meta.properties").exists() {
            let cluster_id = self.cluster_id()?;
            let mut format = Command::new(&java.bin);
            format
                .args(&log_props)
                .args(["-cp", &classpath, "kafka.tools.StorageTool", "format"])
                .args(["--ignore-formatted", "--cluster-id", &cluster_id])
                .arg("--config")
                .arg(&properties);
            if self.voters.is_empty() {
                format.arg("--standalone");
            }
            if let Some(material) = &self.secure {
                for (user, password) in [
                    (secure::KAFKA_ADMIN, material.kafka_admin_password()?),
                    (secure::KAFKA_USER, material.kafka_password()?),
                ] {
                    format
                        .arg("--add-scram")
                        .arg(format!("SCRAM-SHA-512=[name={user},password={password}]"));
                }
            }
            let out = format
                .output()
                .context("cannot run the Kafka storage tool")?;
            if !out.status.success() {
                bail!(
                    "formatting Kafka storage in {} failed:\n{}{}",
                    data.display(),
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        let heap: [&str; 2] = if self.voters.is_empty() {
            ["-Xms512m", "-Xmx1g"]
        } else {
            ["-Xms256m", "-Xmx768m"]
        };
        let mut args: Vec<String> = heap.iter().map(|s| (*s).to_owned()).collect();
        args.extend(
            [
                "-XX:+UseG1GC",
                "-XX:MaxGCPauseMillis=20",
                "-XX:InitiatingHeapOccupancyPercent=35",
                "-XX:+ExplicitGCInvokesConcurrent",
                "-XX:+ExitOnOutOfMemoryError",
                "-Djava.awt.headless=true",
            ]
            .map(String::from),
        );
        args.extend(log_props);
        args.extend(["-cp".to_owned(), classpath, "kafka.Kafka".to_owned()]);
        args.push(properties.to_string_lossy().into_owned());
        Ok(args)
    }

    /// The cluster id, created (random, Kafka's base64url UUID form) on first use.
    fn cluster_id(&self) -> Result<String> {
        if let Ok(id) = fs::read_to_string(&self.cluster_id_file) {
            let id = id.trim();
            if !id.is_empty() {
                return Ok(id.to_owned());
            }
        }
        let mut bytes = [0u8; 16];
        fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
        let id = kafka_uuid(bytes);
        if let Some(parent) = self.cluster_id_file.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::write(&self.cluster_id_file, format!("{id}\n"))?;
        Ok(id)
    }

    /// Probes the node (see [`health::kafka`]).
    pub(crate) fn health(&self, log: &Path) -> Result<String> {
        if self.secure.is_some() {
            return secure::health(self.client_port, log, "Kafka Server started", "SASL_SSL");
        }
        health::kafka(self.client_port, self.node_id, self.cluster_size())
    }

    /// `(label, port)` pairs this node binds.
    pub(crate) fn ports(&self) -> Vec<(&'static str, u16)> {
        vec![
            ("client", self.client_port),
            ("controller", self.controller_port),
        ]
    }
}

/// A Kafka UUID string: 16 bytes as unpadded base64url, avoiding a leading `-` (as Kafka's
/// own generator does, so the id is never mistaken for a command-line flag).
pub(crate) fn kafka_uuid(mut bytes: [u8; 16]) -> String {
    // Version 4 / IETF variant bits, like java.util.UUID.randomUUID.
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    if bytes[0] >> 2 == 62 {
        bytes[0] &= 0x7f;
    }
    base64url(&bytes)
}

fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            let index = (n >> (18 - 6 * i)) & 0x3f;
            out.push(char::from(ALPHABET[index as usize]));
        }
    }
    out
}

/// Escapes a value for a Java `.properties` file.
fn escape_property(value: &str) -> String {
    value.replace('\\', "\\\\")
}

/// Escapes text for an XML attribute.
pub(crate) fn escape_xml(value: &str) -> String {
    value
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A log4j2 config: everything to a size-rolled `server.log`, chatty loggers quieter.
fn log4j2_xml(logs: &Path) -> String {
    let logs = escape_xml(&logs.to_string_lossy());
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<!-- Generated by `cargo xtask infra up`. -->
<Configuration status="WARN">
  <Appenders>
    <RollingFile name="server" fileName="{logs}/server.log" filePattern="{logs}/server.log.%i">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
      <Policies><SizeBasedTriggeringPolicy size="50 MB"/></Policies>
      <DefaultRolloverStrategy max="3"/>
    </RollingFile>
  </Appenders>
  <Loggers>
    <Root level="INFO"><AppenderRef ref="server"/></Root>
    <Logger name="kafka.request.logger" level="WARN"/>
    <Logger name="kafka.authorizer.logger" level="WARN"/>
    <Logger name="state.change.logger" level="WARN"/>
  </Loggers>
</Configuration>
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_matches_known_vectors() {
        assert_eq!(base64url(b""), "");
        assert_eq!(base64url(b"f"), "Zg");
        assert_eq!(base64url(b"fo"), "Zm8");
        assert_eq!(base64url(b"foo"), "Zm9v");
        assert_eq!(base64url(&[0xfb, 0xff]), "-_8");
    }

    #[test]
    fn uuids_look_like_kafka_ids() {
        let id = kafka_uuid([0xff; 16]);
        assert_eq!(id.len(), 22);
        assert!(!id.starts_with('-'));
        assert!(
            id.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        );
    }

    #[test]
    fn single_node_and_cluster_properties() {
        let dir = Path::new("/tmp/x");
        let single = Node {
            node_id: 1,
            client_port: 9092,
            controller_port: 9093,
            netns_port: 9094,
            voters: Vec::new(),
            cluster_id_file: dir.join("cluster.id"),
            secure: None,
        };
        let props = single.properties(Path::new("/tmp/x/data")).unwrap();
        assert!(props.contains("controller.quorum.bootstrap.servers=127.0.0.1:9093\n"));
        assert!(props.contains("transaction.state.log.replication.factor=1\n"));
        assert!(props.contains("transaction.state.log.min.isr=1\n"));
        assert!(props.contains("log.dirs=/tmp/x/data\n"));

        let member = Node::cluster_member(dir, 2, 3);
        let props = member.properties(Path::new("/tmp/x/n2")).unwrap();
        assert!(props.contains("node.id=2\n"));
        assert!(props.contains(
            "controller.quorum.voters=1@127.0.0.1:19192,2@127.0.0.1:19193,3@127.0.0.1:19194\n"
        ));
        assert!(props.contains(
            "listeners=PLAINTEXT://127.0.0.1:19093,CONTROLLER://127.0.0.1:19193,NETNS://0.0.0.0:19293\n"
        ));
        assert!(props.contains(
            "advertised.listeners=PLAINTEXT://127.0.0.1:19093,CONTROLLER://127.0.0.1:19193,NETNS://10.77.0.1:19293\n"
        ));
        assert!(props.contains("min.insync.replicas=2\n"));
    }

    #[test]
    fn the_secured_node_takes_only_sasl_ssl_clients() {
        let dir = std::env::temp_dir().join(format!("xtask-secure-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let material = secure::Material { dir: dir.clone() };
        fs::write(dir.join("kafka-password"), "user-pw\n").unwrap();
        fs::write(dir.join("kafka-admin-password"), "admin-pw\n").unwrap();
        let node = Node::secured(&dir, material);
        let props = node.properties(Path::new("/tmp/x/data")).unwrap();
        assert!(props.contains("listeners=SECURE://127.0.0.1:9096,CONTROLLER://127.0.0.1:9097\n"));
        assert!(
            props.contains("listener.security.protocol.map=SECURE:SASL_SSL,CONTROLLER:PLAINTEXT\n")
        );
        assert!(props.contains("inter.broker.listener.name=SECURE\n"));
        assert!(props.contains("user_statehouse=\"user-pw\""));
        assert!(props.contains("username=\"admin\" password=\"admin-pw\""));
        assert!(
            !props.contains("PLAINTEXT://"),
            "no plaintext client listener"
        );
        let _ = fs::remove_dir_all(dir);
    }
}
