//! `cargo xtask infra up|down|status|logs`: a local Apache Kafka (KRaft) and Apache
//! Cassandra for development and the integration tests, run as detached JVMs from jars
//! resolved from Maven Central (no Docker).
//!
//! Everything a service owns lives in `<infra>/<service>/`: generated configs, `data/`,
//! `logs/` (the service's own log plus `stdout.log` for the JVM's console) and `pid`.
//! `up` is idempotent; `down` leaves no process behind.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::layout::Layout;

mod cassandra;
mod health;
mod jaeger;
mod jvm;
mod kafka;
mod process;
mod secure;

/// Env var overriding how long `up` waits for each service to become healthy (seconds).
const START_TIMEOUT_ENV: &str = "STATEHOUSE_INFRA_START_TIMEOUT";
/// How long `down` waits after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(30);

/// What a service is.
#[derive(Debug, Clone)]
enum Kind {
    Kafka(kafka::Node),
    Cassandra(cassandra::Node),
}

/// One managed JVM process and its folder.
#[derive(Debug, Clone)]
struct Service {
    name: String,
    dir: PathBuf,
    kind: Kind,
}

impl Service {
    fn pid_file(&self) -> PathBuf {
        self.dir.join("pid")
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn stdout_log(&self) -> PathBuf {
        self.dir.join("logs").join("stdout.log")
    }

    fn main_log(&self) -> PathBuf {
        let file = match self.kind {
            Kind::Kafka(_) => "server.log",
            Kind::Cassandra(_) => "system.log",
        };
        self.dir.join("logs").join(file)
    }

    fn artifact(&self) -> &'static str {
        match self.kind {
            Kind::Kafka(_) => "kafka",
            Kind::Cassandra(_) => "cassandra",
        }
    }

    fn ports(&self) -> Vec<(&'static str, u16)> {
        match &self.kind {
            Kind::Kafka(node) => node.ports(),
            Kind::Cassandra(node) => node.ports(),
        }
    }

    fn health(&self) -> Result<String> {
        let log = self.main_log();
        match &self.kind {
            Kind::Kafka(node) => node.health(&log),
            Kind::Cassandra(node) => node.health(&log),
        }
    }

    fn prepare(&self, java: &jvm::Java, libs: &Path) -> Result<Vec<String>> {
        match &self.kind {
            Kind::Kafka(node) => node.prepare(java, libs, &self.dir),
            Kind::Cassandra(node) => node.prepare(java, libs, &self.dir),
        }
    }

    /// The pid of this service's JVM if it runs (its command line names our folder).
    fn live_pid(&self) -> Option<u32> {
        process::live_pid(&self.pid_file(), &self.dir)
    }

    fn start_timeout(&self) -> Duration {
        let default = match self.kind {
            Kind::Kafka(_) => 120,
            Kind::Cassandra(_) => 240,
        };
        let secs = std::env::var(START_TIMEOUT_ENV)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default);
        Duration::from_secs(secs)
    }

    fn print_log_tails(&self, lines: usize) {
        for log in [self.stdout_log(), self.main_log()] {
            let tail = process::tail(&log, lines);
            if !tail.trim().is_empty() {
                eprintln!("----- {} (last {lines} lines) -----", log.display());
                eprintln!("{tail}");
            }
        }
    }
}

/// The single Kafka node, then Cassandra.
fn core_services(layout: &Layout) -> Result<Vec<Service>> {
    let kafka_dir = layout.infra.join("kafka");
    Ok(vec![
        Service {
            name: "kafka".to_owned(),
            kind: Kind::Kafka(kafka::Node::single(&kafka_dir)?),
            dir: kafka_dir,
        },
        Service {
            name: "cassandra".to_owned(),
            dir: layout.infra.join("cassandra"),
            kind: Kind::Cassandra(cassandra::Node::from_env()?),
        },
    ])
}

/// The `SASL_SSL` Kafka node and the TLS + password Cassandra node of `--secure`.
fn secure_services(layout: &Layout) -> Vec<Service> {
    let material = secure::Material::at(layout);
    let kafka_dir = layout.infra.join("kafka-secure");
    vec![
        Service {
            name: "kafka-secure".to_owned(),
            kind: Kind::Kafka(kafka::Node::secured(&kafka_dir, material.clone())),
            dir: kafka_dir,
        },
        Service {
            name: "cassandra-secure".to_owned(),
            dir: layout.infra.join("cassandra-secure"),
            kind: Kind::Cassandra(cassandra::Node::secured(material)),
        },
    ]
}

fn cluster_dir(layout: &Layout) -> PathBuf {
    layout.infra.join("kafka-cluster")
}

/// The nodes of an `n`-node Kafka cluster.
fn cluster_services(layout: &Layout, n: u16) -> Vec<Service> {
    let dir = cluster_dir(layout);
    (1..=n)
        .map(|i| Service {
            name: format!("kafka-cluster-{i}"),
            dir: dir.join(format!("node-{i}")),
            kind: Kind::Kafka(kafka::Node::cluster_member(&dir, i, n)),
        })
        .collect()
}

/// The cluster nodes that exist on disk (the size is the number of `node-*` folders).
fn existing_cluster(layout: &Layout) -> Vec<Service> {
    let count = fs::read_dir(cluster_dir(layout))
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("node-"))
                .count()
        })
        .unwrap_or(0);
    cluster_services(layout, u16::try_from(count).unwrap_or(0))
}

/// Every service `down`, `status` and `logs` know about.
fn known_services(layout: &Layout) -> Result<Vec<Service>> {
    let mut all = core_services(layout)?;
    all.extend(existing_cluster(layout));
    all.extend(
        secure_services(layout)
            .into_iter()
            .filter(|service| service.dir.exists()),
    );
    Ok(all)
}

/// The environment the integration tests read to find the services.
pub(crate) fn test_env() -> Result<Vec<(&'static str, String)>> {
    let cassandra = cassandra::Node::from_env()?;
    Ok(vec![
        (
            "STATEHOUSE_TEST_KAFKA",
            format!("127.0.0.1:{}", kafka::client_port()?),
        ),
        (
            "STATEHOUSE_TEST_CASSANDRA",
            format!("127.0.0.1:{}", cassandra.native_port),
        ),
        // The single broker's listener for the network-partition tests' namespaces.
        (
            "STATEHOUSE_TEST_KAFKA_NETNS",
            format!("{}:{}", kafka::NETNS_BRIDGE, kafka::client_port()? + 2),
        ),
    ])
}

/// Where the tracing tests find Jaeger (`--jaeger`): its OTLP/gRPC receiver and query API.
pub(crate) fn jaeger_env() -> Vec<(&'static str, String)> {
    vec![
        (
            "STATEHOUSE_TEST_OTLP",
            format!("http://127.0.0.1:{}", jaeger::OTLP_PORT),
        ),
        (
            "STATEHOUSE_TEST_JAEGER",
            format!("http://127.0.0.1:{}", jaeger::QUERY_PORT),
        ),
    ]
}

/// Where the secured-infrastructure tests find `--secure`'s services and material.
pub(crate) fn secure_env(layout: &Layout) -> Vec<(&'static str, String)> {
    secure::env(layout)
}

/// The bootstrap servers of the `n`-node cluster (`--kafka-brokers n`).
pub(crate) fn cluster_bootstrap(n: u16) -> String {
    (0..n)
        .map(|i| format!("127.0.0.1:{}", kafka::CLUSTER_CLIENT_BASE + i))
        .collect::<Vec<_>>()
        .join(",")
}

/// A service `up` waits for.
struct Pending {
    service: Service,
    pid: u32,
    /// Set when this `up` started it, so an early exit is noticed at once.
    child: Option<Child>,
    since: Instant,
}

/// What `infra up` runs beyond the single Kafka node and Cassandra.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Extras {
    /// Nodes of the fault tests' Kafka cluster (1 = none).
    pub(crate) kafka_brokers: u16,
    /// Jaeger, the trace collector of the tracing tests.
    pub(crate) jaeger: bool,
    /// The secured Kafka and Cassandra nodes ([`secure`]).
    pub(crate) secure: bool,
}

/// Starts whatever is not running and waits until everything is healthy.
pub(crate) fn up(layout: &Layout, extras: Extras) -> Result<()> {
    let Extras {
        kafka_brokers,
        jaeger: with_jaeger,
        secure: with_secure,
    } = extras;
    let started = Instant::now();
    if !(1..=9).contains(&kafka_brokers) {
        bail!("--kafka-brokers must be between 1 and 9");
    }
    let mut wanted = core_services(layout)?;
    if kafka_brokers > 1 {
        let existing = existing_cluster(layout);
        if !existing.is_empty() && existing.len() != usize::from(kafka_brokers) {
            bail!(
                "a {}-node Kafka cluster already exists in {}; run `cargo xtask infra down --wipe` first",
                existing.len(),
                cluster_dir(layout).display()
            );
        }
        wanted.extend(cluster_services(layout, kafka_brokers));
    }
    if with_secure {
        secure::Material::at(layout)
            .ensure()
            .context("cannot make the secured services' certificates and passwords")?;
        wanted.extend(secure_services(layout));
    }

    let mut pending = Vec::new();
    let mut to_start = Vec::new();
    for service in wanted {
        if let Some(pid) = service.live_pid() {
            match service.health() {
                Ok(desc) => println!("{}: already up (pid {pid}): {desc}", service.name),
                Err(_) => {
                    println!(
                        "{}: running (pid {pid}), waiting for it to be healthy",
                        service.name
                    );
                    pending.push(Pending {
                        service,
                        pid,
                        child: None,
                        since: Instant::now(),
                    });
                }
            }
            continue;
        }
        let _ = fs::remove_file(service.pid_file());
        for (label, port) in service.ports() {
            if process::port_open(port) {
                let owner = process::port_owner(port)
                    .map(|(pid, cmd)| format!(" by pid {pid}: {}", truncate(&cmd, 160)))
                    .unwrap_or_default();
                bail!(
                    "{}: port {port} ({label}) is already taken{owner}. Stop that process, or \
                     move the service (env {} / {}), or if it is an earlier infra run from \
                     another folder, stop it there",
                    service.name,
                    kafka::PORT_ENV,
                    cassandra::PORT_ENV
                );
            }
        }
        to_start.push(service);
    }

    if !to_start.is_empty() {
        let java = jvm::find_java()?;
        println!("java: {} (Java {})", java.bin.display(), java.major);
        // Cassandra is the slowest to start: launch it first, the Kafka nodes meanwhile.
        to_start.sort_by_key(|s| matches!(s.kind, Kind::Kafka(_)));
        let mut libs = std::collections::HashMap::new();
        let mut versions = std::collections::HashMap::new();
        for service in &to_start {
            if !libs.contains_key(service.artifact()) {
                let artifact = jvm::Artifact::load(layout, service.artifact())?;
                libs.insert(service.artifact(), artifact.ensure_libs(layout)?);
                versions.insert(service.artifact(), artifact.version);
            }
        }
        for service in to_start {
            let since = Instant::now();
            let args = service
                .prepare(&java, &libs[service.artifact()])
                .with_context(|| format!("cannot prepare {}", service.name))?;
            let child =
                process::spawn_detached(&java.bin, &args, &service.dir, &service.stdout_log())?;
            let pid = child.id();
            process::write_pid(&service.pid_file(), pid)?;
            println!(
                "{}: starting {} {} (pid {pid}), logs in {}",
                service.name,
                service.artifact(),
                versions[service.artifact()],
                service.main_log().display()
            );
            pending.push(Pending {
                service,
                pid,
                child: Some(child),
                since,
            });
        }
    }

    let failures = wait_healthy(pending);
    if !failures.is_empty() {
        bail!("infra up failed: {}", failures.join("; "));
    }
    if with_secure {
        let java = jvm::find_java()?;
        let libs = jvm::Artifact::load(layout, "kafka")?.ensure_libs(layout)?;
        let dir = layout.infra.join("kafka-secure");
        secure::grant_acls(
            &java.bin,
            &libs,
            &secure::Material::at(layout),
            &dir,
            secure::KAFKA_PORT,
        )
        .context("kafka-secure: granting the statehouse user's ACLs")?;
        println!("kafka-secure: the statehouse user's ACLs are granted (docs/security.md)");
    }
    if with_jaeger {
        jaeger::up(layout)?;
    }
    println!(
        "infra up: all healthy in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    for (key, value) in test_env()? {
        println!("  {key}={value}");
    }
    if kafka_brokers > 1 {
        println!(
            "  STATEHOUSE_TEST_KAFKA_CLUSTER={}",
            cluster_bootstrap(kafka_brokers)
        );
    }
    if with_jaeger {
        for (key, value) in jaeger_env() {
            println!("  {key}={value}");
        }
    }
    if with_secure {
        for (key, value) in secure_env(layout) {
            println!("  {key}={value}");
        }
    }
    Ok(())
}

/// Polls until every pending service is healthy, dead or out of time; returns the failures.
fn wait_healthy(mut pending: Vec<Pending>) -> Vec<String> {
    let mut failures = Vec::new();
    while !pending.is_empty() {
        pending.retain_mut(|p| {
            let name = &p.service.name;
            let exited = match p.child.as_mut() {
                Some(child) => child.try_wait().ok().flatten().map(|s| s.to_string()),
                None => (!process::is_alive(p.pid)).then(|| "exited".to_owned()),
            };
            if let Some(status) = exited {
                eprintln!("{name}: died during start ({status})");
                p.service.print_log_tails(40);
                let _ = fs::remove_file(p.service.pid_file());
                failures.push(format!("{name} died during start"));
                return false;
            }
            match p.service.health() {
                Ok(desc) => {
                    println!(
                        "{name}: healthy in {:.1}s: {desc}",
                        p.since.elapsed().as_secs_f64()
                    );
                    false
                }
                Err(err) if p.since.elapsed() > p.service.start_timeout() => {
                    eprintln!(
                        "{name}: not healthy after {}s ({err:#}); stopping it",
                        p.service.start_timeout().as_secs()
                    );
                    p.service.print_log_tails(40);
                    if let Err(e) = process::stop_all(&[p.pid], Duration::from_secs(10)) {
                        eprintln!("{name}: {e:#}");
                    }
                    if let Some(child) = p.child.as_mut() {
                        let _ = child.wait();
                    }
                    let _ = fs::remove_file(p.service.pid_file());
                    failures.push(format!("{name} timed out"));
                    false
                }
                Err(_) => true,
            }
        });
        if !pending.is_empty() {
            thread::sleep(Duration::from_millis(250));
        }
    }
    failures
}

/// Stops every service (and any stray java process started from the infra folder);
/// `wipe` also deletes their data.
pub(crate) fn down(layout: &Layout, wipe: bool) -> Result<()> {
    let started = Instant::now();
    jaeger::down(layout)?;
    let services = known_services(layout)?;
    let mut pids = Vec::new();
    for service in &services {
        if let Some(pid) = service.live_pid() {
            println!("{}: stopping (pid {pid})", service.name);
            pids.push(pid);
        }
    }
    for (pid, cmd) in process::java_processes_under(&layout.infra) {
        if !pids.contains(&pid) {
            println!(
                "stray java process {pid} in {}: stopping ({})",
                layout.infra.display(),
                truncate(&cmd, 120)
            );
            pids.push(pid);
        }
    }
    let killed = process::stop_all(&pids, STOP_GRACE)?;
    for service in &services {
        let _ = fs::remove_file(service.pid_file());
    }
    let left = process::java_processes_under(&layout.infra);
    if !left.is_empty() {
        bail!(
            "java processes still running from {}: {left:?}",
            layout.infra.display()
        );
    }
    if pids.is_empty() {
        println!("infra down: nothing was running");
    } else {
        println!(
            "infra down: {} process(es) stopped in {:.1}s{}",
            pids.len(),
            started.elapsed().as_secs_f64(),
            if killed.is_empty() {
                String::new()
            } else {
                format!(" (SIGKILL after {}s for {killed:?})", STOP_GRACE.as_secs())
            }
        );
    }
    if wipe {
        for service in &services {
            remove_dir(&service.data_dir())?;
            let _ = fs::remove_file(service.dir.join("cluster.id"));
        }
        remove_dir(&cluster_dir(layout))?;
        println!("infra down: data wiped (logs kept, except the Kafka cluster's)");
    }
    Ok(())
}

fn remove_dir(dir: &Path) -> Result<()> {
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("cannot delete {}", dir.display()))
        }
        _ => Ok(()),
    }
}

/// Prints each service's state; returns whether all of them are healthy.
pub(crate) fn status(layout: &Layout) -> Result<bool> {
    let mut all_healthy = true;
    println!("infra folder: {}", layout.infra.display());
    for service in known_services(layout)? {
        let pid = service.live_pid();
        let is_cluster = service.name.starts_with("kafka-cluster");
        if is_cluster && pid.is_none() && !service.pid_file().exists() {
            continue;
        }
        let state = match (pid, service.health()) {
            (Some(pid), Ok(desc)) => format!("running (pid {pid}), healthy: {desc}"),
            (Some(pid), Err(e)) => {
                all_healthy = false;
                format!("running (pid {pid}), NOT healthy: {e:#}")
            }
            (None, Ok(desc)) => {
                all_healthy = false;
                format!("NOT started by xtask, yet something healthy answers: {desc}")
            }
            (None, Err(_)) => {
                all_healthy = false;
                "stopped".to_owned()
            }
        };
        let ports: Vec<String> = service
            .ports()
            .iter()
            .map(|(label, port)| format!("{port} ({label})"))
            .collect();
        let version = jvm::Artifact::load(layout, service.artifact())
            .map(|a| {
                format!(
                    "{} {} (jars in {})",
                    service.artifact(),
                    a.version,
                    a.cache_dir(layout).join("libs").display()
                )
            })
            .unwrap_or_else(|e| format!("unknown ({e:#})"));
        println!("{}: {state}", service.name);
        println!("    version: {version}");
        println!("    ports:   {}", ports.join(", "));
        println!("    data:    {}", service.data_dir().display());
        println!("    log:     {}", service.main_log().display());
    }
    if let Some(line) = jaeger::status(layout) {
        println!("{line}");
    }
    Ok(all_healthy)
}

/// Prints the last `lines` lines of every service's logs.
pub(crate) fn logs(layout: &Layout, lines: usize) -> Result<()> {
    for service in known_services(layout)? {
        for log in [service.main_log(), service.stdout_log()] {
            if log.exists() {
                println!(
                    "----- {}: {} (last {lines} lines) -----",
                    service.name,
                    log.display()
                );
                println!("{}", process::tail(&log, lines));
            }
        }
    }
    Ok(())
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}
