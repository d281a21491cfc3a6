//! `cargo xtask bench <scenario>`: one benchmark run, every peer in the same run.
//!
//! Builds the release binaries, starts (or reuses) Kafka and Cassandra, sets Cassandra's Paxos
//! to v2 (over JMX, at run time) and warms both JVMs with an unmeasured load (the Kafka floor,
//! then the LWT baseline), so that the first measured peer does not pay for cold JVMs. Then it
//! runs `--rounds` rounds, the peers in an order rotated by one each round:
//! * **Statehouse**: the Rust shopping-cart user function, a processor and a gateway (release
//!   builds, topics and keyspace of their own per round), swept by `statehouse-loadtest sweep`;
//! * **baseline-plain** and **baseline-lwt**: `statehouse-loadtest baseline-server`, the
//!   stateless read → modify → write service on Cassandra, swept the same way;
//! * **the Kafka floor**: `statehouse-loadtest floor`, raw transactional produce of records as
//!   large as Statehouse's journal records, with the writer's natural batching and then at fixed
//!   records per transaction (the batch sweep).
//!
//! Each sweep samples the CPU of every process involved (and the processor's records per
//! transaction) around each of its steps; around each phase the harness also reads CPU time and
//! peak RSS (`VmHWM`) of every process, and after the Statehouse phase it saves the processor's
//! `/metrics`. Each sweep ends with the correctness check. `statehouse-loadtest report` writes
//! each round's report into `<scenario>-<timestamp>.d/round-<n>/`, and `statehouse-loadtest
//! rounds` combines them into `target/bench/<scenario>-<timestamp>.{json,md,svg}`: each ratio's
//! median over the rounds and its spread.
//!
//! `cargo xtask bench memory` measures Statehouse alone: processor RSS growth per active entity
//! (`--memory-entities`), recovery after `kill -9` and a restart (time until every entity
//! answered again), and the takeover time by a second processor after `kill -9` of the first;
//! it writes `target/bench/memory-<timestamp>.md`.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::dev::{spawn, wait_for_port};
use crate::infra;
use crate::layout::Layout;

/// The peers, in the order of round 1.
const PEERS: [&str; 4] = ["statehouse", "plain", "lwt", "floor"];

/// The report setting naming a round's peer order (`statehouse_loadtest::report::PEER_ORDER`).
const PEER_ORDER: &str = "peer order";

/// Cassandra's JMX port (`infra up` binds it on 127.0.0.1).
const CASSANDRA_JMX_PORT: u16 = 7199;

/// Options of `cargo xtask bench`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Args {
    /// The workload: `es-counter`, `shopping-cart` or `cart-large` (carts of ~2 KB, filled
    /// before the measurement; 50% AddItem, 50% GetCart). `memory` instead measures Statehouse
    /// alone: memory per active entity, recovery after `kill -9` and takeover by a second
    /// processor.
    scenario: String,
    /// Partitions of the Statehouse service (and of the floor's topic).
    #[arg(long, default_value_t = 4)]
    partitions: u32,
    /// `kafka.writer.linger-ms` of the processor.
    #[arg(long, default_value_t = 0)]
    linger_ms: u64,
    /// `kafka.writer.max-records` (also the floor's batch bound).
    #[arg(long, default_value_t = 2000)]
    max_records: usize,
    /// `kafka.writer.max-bytes` (also the floor's).
    #[arg(long, default_value_t = 4 * 1024 * 1024)]
    max_bytes: usize,
    /// Closed-loop clients (C), for every target and the floor.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Entities (N); default 1000, and 20,000 for `cart-large` (whose fill of 20 items per
    /// cart, 400,000 commands, takes about two minutes per peer on two cores).
    #[arg(long)]
    entities: Option<u64>,
    /// Key distribution: `uniform` or `zipf` (s = 1.1; hot keys).
    #[arg(long, default_value = "uniform")]
    keys: String,
    /// Seconds of the closed-loop phase.
    #[arg(long, default_value_t = 6.0)]
    closed_s: f64,
    /// Seconds of each open-loop step (after a 1 s warm-up).
    #[arg(long, default_value_t = 5.0)]
    step_s: f64,
    /// The p99 bound of "maximum throughput at equal p99".
    #[arg(long, default_value_t = 50.0)]
    slo_p99_ms: f64,
    /// What to run, comma separated: statehouse, plain, lwt, floor.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "statehouse,plain,lwt,floor"
    )]
    only: Vec<String>,
    /// Use the release binaries as they are.
    #[arg(long)]
    skip_build: bool,
    #[command(flatten)]
    more: Box<More>,
}

/// Rounds, warm-up, the floor's record size and batch sweep, Paxos, and the options of
/// `memory` (boxed, so that `Args` stays small).
#[derive(Debug, Clone, clap::Args)]
struct More {
    /// Rounds of the whole comparison, the peers' order rotated by one each round; the report
    /// gives each ratio's median over the rounds and its spread.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Seconds of unmeasured load on Kafka (the floor) and on Cassandra (the LWT baseline)
    /// before the first round; 0 skips the warm-up.
    #[arg(long, default_value_t = 10.0)]
    jvm_warmup_s: f64,
    /// Bytes of the floor's record values: Statehouse's journal record (the Avro
    /// `EventRecord` of an es-counter `AddItem`) is 264 B.
    #[arg(long, default_value_t = 264)]
    record_bytes: usize,
    /// The floor's fixed batch sizes (records per transaction), for "Statehouse ÷ floor at the
    /// same batch size".
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16,32")]
    floor_batches: Vec<usize>,
    /// Seconds of each fixed-batch floor point (after a 1 s warm-up); 0 skips the batch sweep.
    #[arg(long, default_value_t = 4.0)]
    floor_batch_s: f64,
    /// Cassandra's `paxos_variant` for the LWT baseline (`v1`, `v2`), set over JMX before the
    /// first round; `keep` leaves the node's setting (the report shows it either way).
    #[arg(long, default_value = "v2")]
    paxos_variant: String,
    /// `memory`: active entities at which the processor's RSS is read (cumulative).
    #[arg(long, value_delimiter = ',', default_value = "10000,100000")]
    memory_entities: Vec<u64>,
    /// `memory`: entities whose first command after the kill times the takeover (enough to
    /// cover every partition).
    #[arg(long, default_value_t = 64)]
    takeover_entities: u64,
    /// Kafka brokers Statehouse runs on: 1 (the single node, replication factor 1) or 3 (the
    /// cluster of `infra up --kafka-brokers 3`: replication factor 3, `min.insync.replicas`
    /// 2) — for the cost of replication. The floor and the baselines are unchanged.
    #[arg(long, default_value_t = 1)]
    kafka_brokers: u16,
}

impl Args {
    fn entities(&self) -> u64 {
        self.entities.unwrap_or(if self.scenario == "cart-large" {
            20_000
        } else {
            1000
        })
    }
}

/// Child processes, stopped (SIGTERM, then SIGKILL) when dropped.
struct Children(Vec<(String, Child)>);

impl Children {
    fn pid(&self, name: &str) -> Option<u32> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, c)| c.id())
    }

    fn check_running(&mut self, logs: &Path) -> Result<()> {
        for (name, child) in self.0.iter_mut() {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "{name} exited ({status}); see its log in {}",
                    logs.display()
                );
            }
        }
        Ok(())
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for (_, child) in self.0.iter_mut().rev() {
            if matches!(child.try_wait(), Ok(None)) {
                let _ = Command::new("kill").arg(child.id().to_string()).status();
                let deadline = Instant::now() + Duration::from_secs(15);
                while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                    std::thread::sleep(Duration::from_millis(100));
                }
                if matches!(child.try_wait(), Ok(None)) {
                    let _ = child.kill();
                }
                let _ = child.wait();
            }
        }
    }
}

/// The peers of round `round` (0-based): the wanted ones in [`PEERS`] order, rotated left by
/// `round`.
fn round_order(wanted: &[&str], round: usize) -> Vec<String> {
    let peers: Vec<&str> = PEERS
        .iter()
        .copied()
        .filter(|p| wanted.contains(p))
        .collect();
    if peers.is_empty() {
        return Vec::new();
    }
    let shift = round % peers.len();
    peers[shift..]
        .iter()
        .chain(&peers[..shift])
        .map(|p| (*p).to_string())
        .collect()
}

/// `--set` arguments: the common settings, then `extra`.
fn sets(common: &[String], extra: &[String]) -> Vec<String> {
    common
        .iter()
        .chain(extra)
        .flat_map(|s| ["--set".to_string(), s.clone()])
        .collect()
}

/// A running Statehouse: the user function, processors and a gateway.
struct Stack {
    children: Children,
    /// Settings every process gets, and the processors' own.
    common: Vec<String>,
    extra: Vec<String>,
    statehouse: PathBuf,
    uf_port: u16,
    gw_port: u16,
    /// The first processor's metrics port.
    metrics: u16,
}

impl Stack {
    /// Start a processor named `name` (next to the same user function) and return its
    /// metrics port.
    fn start_processor(&mut self, dir: &Path, name: &str) -> Result<u16> {
        let (internal, metrics) = (free_port()?, free_port()?);
        let mut own = vec![
            "processor.service=shopping-cart".to_string(),
            format!("processor.listen=\"127.0.0.1:{internal}\""),
            format!("processor.metrics-listen=\"127.0.0.1:{metrics}\""),
            format!("processor.user-function-port={}", self.uf_port),
        ];
        own.extend(self.extra.iter().cloned());
        self.children.0.push((
            name.to_string(),
            spawn(
                Command::new(&self.statehouse)
                    .args(sets(&self.common, &own))
                    .arg("processor"),
                &dir.join(format!("{}.log", name.replace(' ', "-"))),
            )?,
        ));
        Ok(metrics)
    }

    fn wait_ready(&mut self, dir: &Path, metrics: u16) -> Result<()> {
        wait_until(
            Duration::from_secs(120),
            "the processor to be ready",
            || {
                self.children.check_running(dir)?;
                Ok(http_get(metrics, "/readyz").is_some_and(|(s, _)| s == 200))
            },
        )
    }
}

/// What one round measured, for its report.
#[derive(Default)]
struct Round {
    /// Statehouse's journal records as read back after its phase.
    journal_records: Option<String>,
    sweeps: Vec<PathBuf>,
    floor: Option<PathBuf>,
    metrics: Option<PathBuf>,
    processes: String,
}

/// What every phase of the run shares.
struct Bench<'a> {
    args: &'a Args,
    bin: PathBuf,
    loadtest: PathBuf,
    kafka: String,
    cassandra: String,
    ts: String,
    jvm_pids: Vec<(String, u32)>,
    clk_tck: f64,
}

pub(crate) fn run(layout: &Layout, args: &Args) -> Result<()> {
    if !["es-counter", "shopping-cart", "cart-large", "memory"].contains(&args.scenario.as_str()) {
        bail!(
            "unknown scenario {:?}; scenarios: es-counter, shopping-cart, cart-large, memory",
            args.scenario
        );
    }
    for part in &args.only {
        if !PEERS.contains(&part.as_str()) {
            bail!("--only takes statehouse, plain, lwt, floor; not {part:?}");
        }
    }
    if args.more.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    let started = Instant::now();
    if !args.skip_build {
        println!("==> building release binaries");
        let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .args([
                "build",
                "--release",
                "-p",
                "statehouse-cli",
                "-p",
                "statehouse-sample-shopping-cart",
                "-p",
                "statehouse-loadtest",
            ])
            .current_dir(&layout.workspace)
            .status()
            .context("running cargo build")?;
        if !status.success() {
            bail!("cargo build --release failed");
        }
    }
    if ![1, 3].contains(&args.more.kafka_brokers) {
        bail!("--kafka-brokers takes 1 or 3");
    }
    if args.more.kafka_brokers > 1 && args.only.iter().any(|p| p == "floor") {
        bail!(
            "--kafka-brokers 3 measures Statehouse on the replicated cluster; leave the floor out (--only statehouse,plain,lwt)"
        );
    }
    infra::up(
        layout,
        infra::Extras {
            kafka_brokers: args.more.kafka_brokers,
            jaeger: false,
            secure: false,
        },
    )?;
    let env = infra::test_env()?;
    let bin = layout.workspace.join("target").join("release");
    let ts = utc_timestamp()?;
    let out_dir = layout.workspace.join("target").join("bench");
    let work = out_dir.join(format!("{}-{ts}.d", args.scenario));
    std::fs::create_dir_all(&work)?;
    let bench = Bench {
        args,
        loadtest: bin.join("statehouse-loadtest"),
        bin,
        kafka: if args.more.kafka_brokers > 1 {
            infra::cluster_bootstrap(args.more.kafka_brokers)
        } else {
            env[0].1.clone()
        },
        cassandra: env[1].1.clone(),
        ts: ts.clone(),
        // The JVMs whose CPU counts: the Kafka Statehouse uses (the cluster's nodes with
        // --kafka-brokers 3) and Cassandra.
        jvm_pids: {
            let kafka: Vec<(String, PathBuf)> = if args.more.kafka_brokers > 1 {
                (1..=args.more.kafka_brokers)
                    .map(|i| {
                        (
                            format!("kafka-{i}"),
                            layout.infra.join("kafka-cluster").join(format!("node-{i}")),
                        )
                    })
                    .collect()
            } else {
                vec![("kafka".into(), layout.infra.join("kafka"))]
            };
            kafka
                .into_iter()
                .chain([("cassandra".to_string(), layout.infra.join("cassandra"))])
                .filter_map(|(name, dir)| {
                    let pid = std::fs::read_to_string(dir.join("pid")).ok()?;
                    Some((name, pid.trim().parse().ok()?))
                })
                .collect()
        },
        clk_tck: clock_ticks(),
    };
    let load_at_start = std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ");
    if args.scenario == "memory" {
        let result = bench.memory(&work, &out_dir.join(format!("memory-{ts}.md")));
        println!(
            "==> bench took {:.0} s (raw files in {})",
            started.elapsed().as_secs_f64(),
            work.display()
        );
        return result;
    }
    let wanted: Vec<&str> = args.only.iter().map(String::as_str).collect();
    let paxos = paxos_variant(&work, &args.more.paxos_variant);
    println!("==> Cassandra paxos_variant: {paxos}");
    if args.more.jvm_warmup_s > 0.0 {
        bench.warm_up(&work)?;
    }

    let mut round_reports = Vec::new();
    let mut failures = Vec::new();
    for round in 0..args.more.rounds {
        let order = round_order(&wanted, round);
        let dir = work.join(format!("round-{}", round + 1));
        std::fs::create_dir_all(&dir)?;
        println!(
            "==> round {} of {}: {}",
            round + 1,
            args.more.rounds,
            order.join(", ")
        );
        let mut r = Round::default();
        for peer in &order {
            match peer.as_str() {
                "statehouse" => bench.statehouse(&dir, round, &mut r)?,
                "floor" => bench.floor(&dir, round, &mut r)?,
                variant => bench.baseline(&dir, round, variant, &mut r)?,
            }
        }
        let processes_path = dir.join("processes.tsv");
        std::fs::write(&processes_path, &r.processes)?;
        let stem = dir.join("report");
        let mut report: Vec<String> = vec![
            "report".into(),
            "--scenario".into(),
            args.scenario.clone(),
            "--timestamp".into(),
            format!("{ts} round {}", round + 1),
            "--processes".into(),
            processes_path.display().to_string(),
            "--out".into(),
            stem.display().to_string(),
        ];
        for s in &r.sweeps {
            report.extend(["--sweep".into(), s.display().to_string()]);
        }
        if let Some(f) = &r.floor {
            report.extend(["--floor".into(), f.display().to_string()]);
        }
        if let Some(m) = &r.metrics {
            report.extend(["--processor-metrics".into(), m.display().to_string()]);
        }
        for (k, v) in bench.settings(&load_at_start, &paxos, &order) {
            report.extend(["--setting".into(), format!("{k}={v}")]);
        }
        if let Some(sizes) = &r.journal_records {
            report.extend([
                "--setting".into(),
                format!("Statehouse journal records (read back after its phase)={sizes}"),
            ]);
        }
        // An invalid round still writes its report; the combined report fails at the end.
        if let Err(e) = loader_quiet(&bench.loadtest, &report) {
            failures.push(format!("round {}: {e:#}", round + 1));
        }
        round_reports.push(stem);
    }

    let stem = out_dir.join(format!("{}-{ts}", args.scenario));
    let mut combine: Vec<String> = vec![
        "rounds".into(),
        "--scenario".into(),
        args.scenario.clone(),
        "--timestamp".into(),
        ts.clone(),
        "--out".into(),
        stem.display().to_string(),
    ];
    for r in &round_reports {
        combine.extend([
            "--round".into(),
            r.with_extension("json").display().to_string(),
            "--round-svg".into(),
            r.with_extension("svg").display().to_string(),
        ]);
    }
    let result = loader(&bench.loadtest, &combine);
    println!(
        "==> bench took {:.0} s; results in {}.{{json,md,svg}} (raw files in {})",
        started.elapsed().as_secs_f64(),
        stem.display(),
        work.display()
    );
    for f in &failures {
        eprintln!("{f}");
    }
    result
}

impl Bench<'_> {
    /// The settings every round's report lists.
    fn settings(&self, load: &str, paxos: &str, order: &[String]) -> Vec<(&'static str, String)> {
        let a = self.args;
        vec![
            ("partitions", a.partitions.to_string()),
            ("kafka.writer.linger-ms", a.linger_ms.to_string()),
            ("kafka.writer.max-records", a.max_records.to_string()),
            ("kafka.writer.max-bytes", a.max_bytes.to_string()),
            ("acks", "all (transactional, idempotent)".into()),
            (
                "replication factor",
                if a.more.kafka_brokers > 1 {
                    "Kafka 3 (3 brokers, min.insync.replicas 2), Cassandra 1".into()
                } else {
                    "1 (Kafka and Cassandra, one node each)".into()
                },
            ),
            ("closed-loop clients (C)", a.clients.to_string()),
            ("entities (N)", a.entities().to_string()),
            ("keys", a.keys.clone()),
            ("open-loop arrivals", "Poisson".into()),
            (
                "p99 SLO for equal-p99 ratios",
                format!("{} ms", a.slo_p99_ms),
            ),
            (
                "phase lengths",
                format!(
                    "closed {} s, steps {} s, warm-up 1 s each (2 s before the closed loop)",
                    a.closed_s, a.step_s
                ),
            ),
            (
                "floor record value",
                format!("{} B (Statehouse's journal record)", a.more.record_bytes),
            ),
            (
                "floor batch sweep",
                if a.more.floor_batch_s > 0.0 {
                    format!(
                        "{} records per transaction, {} s each",
                        a.more
                            .floor_batches
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(", "),
                        a.more.floor_batch_s
                    )
                } else {
                    "not run".into()
                },
            ),
            (
                "Cassandra paxos_variant (LWT), serial consistency",
                format!("{paxos}, LOCAL_SERIAL"),
            ),
            (
                "JVM warm-up before round 1",
                if a.more.jvm_warmup_s > 0.0 {
                    format!(
                        "{} s floor + {} s LWT closed loop, unmeasured",
                        a.more.jvm_warmup_s, a.more.jvm_warmup_s
                    )
                } else {
                    "none".into()
                },
            ),
            ("rounds", a.more.rounds.to_string()),
            (PEER_ORDER, order.join(", ")),
            ("load average at start (1, 5, 15 min)", load.to_string()),
            (
                "command",
                format!(
                    "cargo xtask {}",
                    std::env::args().skip(1).collect::<Vec<_>>().join(" ")
                ),
            ),
        ]
    }

    /// Unmeasured load on both JVMs: the floor on Kafka, the LWT baseline's closed loop on
    /// Cassandra (reads, Paxos and writes).
    fn warm_up(&self, work: &Path) -> Result<()> {
        let s = self.args.more.jvm_warmup_s.to_string();
        println!("==> warming the JVMs: Kafka floor {s} s, then the LWT baseline {s} s");
        let dir = work.join("warm-up");
        std::fs::create_dir_all(&dir)?;
        let mut floor = self.floor_args(&dir.join("floor.json"), "warm-up");
        floor.extend(
            ["--duration-s", &s, "--warmup-s", "0"]
                .iter()
                .map(|a| a.to_string()),
        );
        loader_quiet(&self.loadtest, &floor)?;
        let (server, port) = self.start_baseline(&dir, "lwt", "warm_up")?;
        let mut sweep = self.sweep_args(
            "baseline-lwt",
            &format!("http://127.0.0.1:{port}"),
            &dir.join("lwt.json"),
        );
        if let Some(i) = sweep.iter().position(|a| a == "--closed-s") {
            sweep[i + 1] = s;
        }
        sweep.push("--closed-only".into());
        loader_quiet(&self.loadtest, &sweep)?;
        drop(server);
        Ok(())
    }

    fn sweep_args(&self, name: &str, uri: &str, out: &Path) -> Vec<String> {
        let a = self.args;
        let mut v: Vec<String> = [
            "sweep",
            "--scenario",
            &a.scenario,
            "--target",
            uri,
            "--name",
            name,
            "--entities",
            &a.entities().to_string(),
            "--keys",
            &a.keys,
            "--clients",
            &a.clients.to_string(),
            "--closed-s",
            &a.closed_s.to_string(),
            "--step-s",
            &a.step_s.to_string(),
            "--slo-p99-ms",
            &a.slo_p99_ms.to_string(),
            "--out",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.push(out.display().to_string());
        if a.scenario == "es-counter" {
            // GetCart on active entities, and the sample's mix, at half the maximum.
            v.extend(["--mix-scenario".into(), "shopping-cart".into()]);
        }
        v
    }

    /// `--pids` of a sweep: the peer's processes and the JVMs.
    fn pids_arg(&self, own: &[(String, u32)]) -> Vec<String> {
        let list: Vec<String> = own
            .iter()
            .chain(&self.jvm_pids)
            .map(|(n, p)| format!("{n}={p}"))
            .collect();
        vec!["--pids".into(), list.join(",")]
    }

    /// Start the user function, a processor and a gateway on topics `prefix` and keyspace
    /// `keyspace`, with `extra` settings for the processor, and wait until they route.
    fn start_statehouse(
        &self,
        dir: &Path,
        prefix: &str,
        keyspace: &str,
        extra: &[String],
    ) -> Result<Stack> {
        let a = self.args;
        let common = vec![
            format!("kafka.bootstrap-servers={}", self.kafka),
            format!("kafka.topic-prefix={prefix}"),
            format!("cassandra.contact-points=[\"{}\"]", self.cassandra),
            format!("cassandra.keyspace={keyspace}"),
            format!("processor.partitions={}", a.partitions),
            format!("kafka.writer.linger-ms={}", a.linger_ms),
            format!("kafka.writer.max-records={}", a.max_records),
            format!("kafka.writer.max-bytes={}", a.max_bytes),
            format!("kafka.replication-factor={}", a.more.kafka_brokers.min(3)),
            format!(
                "kafka.min-insync-replicas={}",
                if a.more.kafka_brokers > 1 { 2 } else { 1 }
            ),
        ];
        let statehouse = self.bin.join("statehouse");
        let status = Command::new(&statehouse)
            .args(sets(&common, &[]))
            .args(["admin", "migrate"])
            .stdout(Stdio::null())
            .status()
            .context("running statehouse admin migrate")?;
        if !status.success() {
            bail!("statehouse admin migrate failed");
        }
        let (uf_port, gw_port, gw_metrics) = (free_port()?, free_port()?, free_port()?);
        let mut stack = Stack {
            children: Children(Vec::new()),
            common,
            extra: extra.to_vec(),
            statehouse,
            uf_port,
            gw_port,
            metrics: 0,
        };
        stack.children.0.push((
            "user function".into(),
            spawn(
                Command::new(self.bin.join("statehouse-sample-shopping-cart"))
                    .env("HOST", "127.0.0.1")
                    .env("PORT", uf_port.to_string()),
                &dir.join("user-function.log"),
            )?,
        ));
        wait_for_port(uf_port, Duration::from_secs(30), "the user function")?;
        stack.metrics = stack.start_processor(dir, "processor")?;
        stack.children.0.push((
            "gateway".into(),
            spawn(
                Command::new(&stack.statehouse)
                    .args(sets(
                        &stack.common,
                        &[
                            format!("gateway.listen=\"127.0.0.1:{gw_port}\""),
                            format!("gateway.metrics-listen=\"127.0.0.1:{gw_metrics}\""),
                        ],
                    ))
                    .arg("gateway"),
                &dir.join("gateway.log"),
            )?,
        ));
        stack.wait_ready(dir, stack.metrics)?;
        wait_until(Duration::from_secs(90), "the gateway to route", || {
            stack.children.check_running(dir)?;
            Ok(http_get(gw_port, "/").is_some_and(|(s, _)| s == 200))
        })?;
        Ok(stack)
    }

    fn statehouse(&self, dir: &Path, round: usize, r: &mut Round) -> Result<()> {
        println!("==> Statehouse: user function, processor, gateway");
        let prefix = format!("bench-{}-r{}.", self.ts, round + 1);
        let keyspace = format!("bench_{}_r{}", self.ts, round + 1);
        let stack = self.start_statehouse(dir, &prefix, &keyspace, &[])?;
        let (gw_port, metrics) = (stack.gw_port, stack.metrics);
        let own: Vec<(String, u32)> = ["user function", "processor", "gateway"]
            .iter()
            .filter_map(|n| Some((n.to_string(), stack.children.pid(n)?)))
            .collect();
        let mut pids = own.clone();
        pids.extend(self.jvm_pids.iter().cloned());
        let out = dir.join("statehouse.json");
        let mut sweep = self.sweep_args("statehouse", &format!("http://127.0.0.1:{gw_port}"), &out);
        sweep.extend(self.pids_arg(&own));
        sweep.extend([
            "--metrics-url".into(),
            format!("http://127.0.0.1:{metrics}/metrics"),
        ]);
        measure("statehouse", &pids, self.clk_tck, &mut r.processes, || {
            loader(&self.loadtest, &sweep)
        })?;
        if let Some((_, body)) = http_get(metrics, "/metrics") {
            let path = dir.join("processor-metrics.txt");
            std::fs::write(&path, body)?;
            r.metrics = Some(path);
        }
        // What the floor's records should weigh: the journal's, read back.
        r.journal_records = Some(match self.journal_record_sizes(&prefix) {
            Ok(out) => {
                let get = |k: &str| kv(&out, k).unwrap_or(0.0);
                format!(
                    "value {:.0} B, key {:.0} B, whole record {:.0} B (mean of {:.0} records)",
                    get("value_bytes"),
                    get("key_bytes"),
                    get("record_bytes"),
                    get("records")
                )
            }
            Err(e) => format!("not measured ({e:#})"),
        });
        r.sweeps.push(out);
        Ok(())
    }

    /// `statehouse-loadtest record-sizes` of the Statehouse journal under `prefix`: its
    /// `key=value` line (mean value, key and whole-record bytes).
    fn journal_record_sizes(&self, prefix: &str) -> Result<String> {
        loadtest_output(
            &self.loadtest,
            &[
                "record-sizes",
                "--bootstrap-servers",
                &self.kafka,
                "--topic",
                &format!("{prefix}shopping-cart.journal"),
            ],
        )
    }

    /// Start `baseline-server --variant <variant>` on a keyspace of its own.
    fn start_baseline(&self, dir: &Path, variant: &str, tag: &str) -> Result<(Children, u16)> {
        let name = format!("baseline-{variant}");
        let port = free_port()?;
        let mut server = Children(vec![(
            name.clone(),
            spawn(
                Command::new(&self.loadtest).args([
                    "baseline-server",
                    "--variant",
                    variant,
                    "--listen",
                    &format!("127.0.0.1:{port}"),
                    "--cassandra",
                    &self.cassandra,
                    "--keyspace",
                    &format!("bench_{}_{tag}_{variant}", self.ts),
                ]),
                &dir.join(format!("{name}.log")),
            )?,
        )]);
        wait_until(Duration::from_secs(60), "the baseline server", || {
            server.check_running(dir)?;
            Ok(TcpStream::connect(("127.0.0.1", port)).is_ok())
        })?;
        Ok((server, port))
    }

    fn baseline(&self, dir: &Path, round: usize, variant: &str, r: &mut Round) -> Result<()> {
        let name = format!("baseline-{variant}");
        println!("==> {name}: stateless service, read → modify → write on Cassandra");
        let (server, port) = self.start_baseline(dir, variant, &format!("r{}", round + 1))?;
        let own = vec![(name.clone(), server.pid(&name).unwrap_or(0))];
        let mut pids = own.clone();
        pids.extend(self.jvm_pids.iter().cloned());
        let out = dir.join(format!("{name}.json"));
        let mut sweep = self.sweep_args(&name, &format!("http://127.0.0.1:{port}"), &out);
        sweep.extend(self.pids_arg(&own));
        measure(&name, &pids, self.clk_tck, &mut r.processes, || {
            loader(&self.loadtest, &sweep)
        })?;
        r.sweeps.push(out);
        drop(server);
        Ok(())
    }

    /// `floor` with the bench's topic, partitions, clients, record size and batch bounds.
    fn floor_args(&self, out: &Path, tag: &str) -> Vec<String> {
        let a = self.args;
        [
            "floor",
            "--bootstrap-servers",
            &self.kafka,
            "--topic",
            &format!("bench-{}-{tag}-floor", self.ts),
            "--partitions",
            &a.partitions.to_string(),
            "--clients",
            &a.clients.to_string(),
            "--entities",
            &a.entities().to_string(),
            "--record-bytes",
            &a.more.record_bytes.to_string(),
            "--max-records",
            &a.max_records.to_string(),
            "--max-bytes",
            &a.max_bytes.to_string(),
            "--out",
            &out.display().to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    fn floor(&self, dir: &Path, round: usize, r: &mut Round) -> Result<()> {
        println!("==> Kafka floor: raw transactional produce");
        let a = self.args;
        let out = dir.join("floor.json");
        let mut args = self.floor_args(&out, &format!("r{}", round + 1));
        args.extend(["--duration-s".into(), "10".into()]);
        if a.more.floor_batch_s > 0.0 && !a.more.floor_batches.is_empty() {
            args.extend([
                "--batch-sweep".into(),
                a.more
                    .floor_batches
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
                "--batch-sweep-s".into(),
                a.more.floor_batch_s.to_string(),
            ]);
        }
        measure(
            "floor",
            &self.jvm_pids,
            self.clk_tck,
            &mut r.processes,
            || loader(&self.loadtest, &args),
        )?;
        r.floor = Some(out);
        Ok(())
    }
}

impl Bench<'_> {
    /// `cargo xtask bench memory`: one Statehouse stack; activate `--memory-entities` entities
    /// (RSS growth ÷ active entities), `kill -9` the processor and restart it (time until every
    /// entity answered again), then start a second processor and kill the first (takeover
    /// time). Writes the Markdown report to `md`.
    fn memory(&self, work: &Path, md: &Path) -> Result<()> {
        let a = self.args;
        let mut levels = a.more.memory_entities.clone();
        levels.sort_unstable();
        levels.dedup();
        let most = levels.last().copied().unwrap_or(0);
        if most == 0 {
            bail!("--memory-entities needs at least one positive count");
        }
        println!("==> Statehouse for memory, recovery and takeover");
        let extra = [
            // Nothing is passivated during the measurement.
            "processor.passivation-timeout-ms=86400000".to_string(),
            format!("processor.max-active-entities={}", most * 2),
        ];
        let prefix = format!("bench-{}-mem.", self.ts);
        let mut stack =
            self.start_statehouse(work, &prefix, &format!("bench_{}_mem", self.ts), &extra)?;
        let target = format!("http://127.0.0.1:{}", stack.gw_port);
        let run_id = format!("mem{}", self.ts);
        let activate = |from: u64, to: u64, op: &str| -> Result<String> {
            let text = loadtest_output(
                &self.loadtest,
                &[
                    "activate",
                    "--target",
                    &target,
                    "--run-id",
                    &run_id,
                    "--from",
                    &from.to_string(),
                    "--to",
                    &to.to_string(),
                    "--op",
                    op,
                ],
            )?;
            println!("    {op} {from}..{to}: {text}");
            Ok(text)
        };
        let processor = |stack: &Stack| stack.children.pid("processor").unwrap_or(0);
        let mut report = format!(
            "# Memory, recovery and takeover — {}\n\nOne processor, {} partitions, the Rust shopping-cart sample; entities are carts with one `AddItem` each (one ~264 B event). Passivation is off for the run.\n\n## Memory per active entity\n\n| active entities (metric) | processor RSS | RSS growth | per active entity | activation rate |\n|---|---|---|---|---|\n",
            self.ts, a.partitions
        );
        let (rss0, active0) = (
            vm_rss_kib(processor(&stack)),
            active_entities(stack.metrics),
        );
        writeln_str(
            &mut report,
            &format!(
                "| {active0:.0} (before) | {:.1} MiB | — | — | — |",
                rss0 as f64 / 1024.0
            ),
        );
        let mut from = 0;
        for &n in &levels {
            let text = activate(from, n, "add")?;
            from = n;
            std::thread::sleep(Duration::from_secs(2));
            let (rss, active) = (
                vm_rss_kib(processor(&stack)),
                active_entities(stack.metrics),
            );
            let growth = rss.saturating_sub(rss0) as f64 * 1024.0;
            writeln_str(
                &mut report,
                &format!(
                    "| {active:.0} | {:.1} MiB | {:.1} MiB | {} | {:.0}/s |",
                    rss as f64 / 1024.0,
                    growth / 1024.0 / 1024.0,
                    if active > active0 {
                        format!("{:.0} B", growth / (active - active0))
                    } else {
                        "—".into()
                    },
                    kv(&text, "per_second").unwrap_or(0.0)
                ),
            );
        }

        println!("==> recovery: kill -9 the processor, restart it, GetCart every entity");
        let record_bytes = self
            .journal_record_sizes(&prefix)
            .ok()
            .and_then(|out| kv(&out, "record_bytes"))
            .unwrap_or(0.0);
        kill_9(&mut stack.children, "processor")?;
        let restarted = Instant::now();
        stack.metrics = stack.start_processor(work, "processor")?;
        stack.wait_ready(work, stack.metrics)?;
        let ready_s = restarted.elapsed().as_secs_f64();
        let text = activate(0, most, "get")?;
        let total_s = restarted.elapsed().as_secs_f64();
        let get_s = kv(&text, "seconds").unwrap_or(0.0);
        let history_mb = most as f64 * record_bytes / 1e6;
        writeln_str(
            &mut report,
            &format!(
                "\n## Recovery after `kill -9`\n\nThe processor was killed and restarted; then `GetCart` on all {most} carts (256 in flight, each retried until answered).\n\n| figure | value |\n|---|---|\n| restart to ready | {ready_s:.1} s |\n| GetCart of every cart after ready | {get_s:.1} s ({:.0} entities/s) |\n| restart to every cart answered | {total_s:.1} s ({:.0} entities/s) |\n| histories re-activated (one event per cart, {record_bytes:.0} B per record) | {history_mb:.1} MB, {:.2} MB/s after ready |",
                most as f64 / get_s.max(1e-9),
                most as f64 / total_s.max(1e-9),
                history_mb / get_s.max(1e-9)
            ),
        );

        println!("==> takeover: a second processor, then kill -9 the first");
        let second = stack.start_processor(work, "second processor")?;
        stack.wait_ready(work, second)?;
        // Let the group rebalance so that both own partitions.
        std::thread::sleep(Duration::from_secs(15));
        let text = loadtest_output(
            &self.loadtest,
            &[
                "takeover",
                "--target",
                &target,
                "--run-id",
                &run_id,
                "--entities",
                &a.more.takeover_entities.to_string(),
                "--kill-pid",
                &processor(&stack).to_string(),
            ],
        )?;
        println!("    {text}");
        writeln_str(
            &mut report,
            &format!(
                "\n## Takeover after `kill -9`\n\nTwo processors; {} carts answered once, then the first processor was killed and each cart was sent `AddItem` every 5 ms until it succeeded.\n\n| figure | value |\n|---|---|\n| kill to the last cart's first success (takeover) | **{:.0} ms** |\n| carts interrupted (> 100 ms) | {:.0} of {} |\n| carts never answered (120 s) | {:.0} |",
                a.more.takeover_entities,
                kv(&text, "max_ms").unwrap_or(0.0),
                kv(&text, "interrupted").unwrap_or(0.0),
                a.more.takeover_entities,
                kv(&text, "unanswered").unwrap_or(0.0)
            ),
        );
        std::fs::write(md, &report)?;
        println!("{report}\n==> written to {}", md.display());
        Ok(())
    }
}

fn writeln_str(s: &mut String, line: &str) {
    s.push_str(line);
    s.push('\n');
}

/// The value of `key=value` in a line of such pairs.
fn kv(text: &str, key: &str) -> Option<f64> {
    text.split_whitespace()
        .find_map(|p| p.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

/// Run `statehouse-loadtest <args>` to its end: its standard output (one `key=value` line).
fn loadtest_output(loadtest: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new(loadtest)
        .args(args)
        .output()
        .with_context(|| format!("running statehouse-loadtest {}", args[0]))?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() {
        bail!(
            "statehouse-loadtest {} failed: {text} {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(text)
}

/// `kill -9` the child `name`, reap it and forget it (the running ones are still checked).
fn kill_9(children: &mut Children, name: &str) -> Result<()> {
    let at = children
        .0
        .iter()
        .position(|(n, _)| n == name)
        .with_context(|| format!("no {name} to kill"))?;
    let (_, mut child) = children.0.remove(at);
    child.kill().with_context(|| format!("killing {name}"))?;
    child.wait()?;
    Ok(())
}

/// `statehouse_active_entities` summed over its series, from the processor's `/metrics`.
fn active_entities(metrics_port: u16) -> f64 {
    http_get(metrics_port, "/metrics").map_or(0.0, |(_, body)| {
        body.lines()
            .filter(|l| l.starts_with("statehouse_active_entities"))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum()
    })
}

/// Resident set size (`VmRSS`) of a process, KiB.
fn vm_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// A small Java program that reads (and, given a value, first sets) the `PaxosVariant`
/// attribute of Cassandra's `StorageProxy` MBean: Cassandra 5.0 switches Paxos v1/v2 at run
/// time this way (nodetool has no command for it), and `java File.java` runs it without a
/// build step.
const PAXOS_VARIANT_JAVA: &str = r#"import javax.management.Attribute;
import javax.management.MBeanServerConnection;
import javax.management.ObjectName;
import javax.management.remote.JMXConnector;
import javax.management.remote.JMXConnectorFactory;
import javax.management.remote.JMXServiceURL;

public class PaxosVariant {
    public static void main(String[] args) throws Exception {
        JMXServiceURL url = new JMXServiceURL(
            "service:jmx:rmi:///jndi/rmi://127.0.0.1:" + args[0] + "/jmxrmi");
        try (JMXConnector connector = JMXConnectorFactory.connect(url)) {
            MBeanServerConnection server = connector.getMBeanServerConnection();
            ObjectName proxy = new ObjectName("org.apache.cassandra.db:type=StorageProxy");
            if (args.length > 1) {
                server.setAttribute(proxy, new Attribute("PaxosVariant", args[1]));
            }
            System.out.println(server.getAttribute(proxy, "PaxosVariant"));
        }
    }
}
"#;

/// Set Cassandra's `paxos_variant` to `wanted` (unless `keep`) and return the node's value,
/// or why it could not be read.
fn paxos_variant(work: &Path, wanted: &str) -> String {
    let source = work.join("PaxosVariant.java");
    if let Err(e) = std::fs::write(&source, PAXOS_VARIANT_JAVA) {
        return format!("unknown ({e})");
    }
    let java = std::env::var_os("STATEHOUSE_JAVA")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("JAVA_HOME").map(|h| PathBuf::from(h).join("bin/java")))
        .unwrap_or_else(|| "java".into());
    let mut command = Command::new(java);
    command.arg(&source).arg(CASSANDRA_JMX_PORT.to_string());
    if wanted != "keep" {
        command.arg(wanted);
    }
    match command.output() {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        Ok(o) => format!(
            "unknown (JMX: {})",
            String::from_utf8_lossy(&o.stderr)
                .lines()
                .next()
                .unwrap_or("failed")
        ),
        Err(e) => format!("unknown (java: {e})"),
    }
}

/// Run `phase`, recording the CPU seconds and peak RSS of `pids` around it.
fn measure(
    phase: &str,
    pids: &[(String, u32)],
    clk_tck: f64,
    processes: &mut String,
    body: impl FnOnce() -> Result<()>,
) -> Result<()> {
    let before: Vec<f64> = pids.iter().map(|(_, p)| cpu_seconds(*p, clk_tck)).collect();
    body()?;
    for ((name, pid), before) in pids.iter().zip(before) {
        let cpu = cpu_seconds(*pid, clk_tck) - before;
        processes.push_str(&format!(
            "{phase}\t{name}\t{cpu:.3}\t{}\n",
            peak_rss_kib(*pid)
        ));
    }
    Ok(())
}

fn loader(bin: &Path, args: &[String]) -> Result<()> {
    run_loader(Command::new(bin).args(args), bin, args)
}

/// [`loader`] with its standard output (tables already in the report) kept out of the log.
fn loader_quiet(bin: &Path, args: &[String]) -> Result<()> {
    run_loader(
        Command::new(bin).args(args).stdout(Stdio::null()),
        bin,
        args,
    )
}

fn run_loader(command: &mut Command, bin: &Path, args: &[String]) -> Result<()> {
    let status = command
        .status()
        .with_context(|| format!("running {}", bin.display()))?;
    if !status.success() {
        bail!(
            "statehouse-loadtest {} failed ({status})",
            args.first().map_or("", String::as_str)
        );
    }
    Ok(())
}

/// utime + stime of a process, seconds.
fn cpu_seconds(pid: u32, clk_tck: f64) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let f: Vec<&str> = s.rsplit_once(')')?.1.split_whitespace().collect();
            let utime: f64 = f.get(11)?.parse().ok()?;
            let stime: f64 = f.get(12)?.parse().ok()?;
            Some((utime + stime) / clk_tck)
        })
        .unwrap_or(0.0)
}

fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

fn utc_timestamp() -> Result<String> {
    let out = Command::new("date")
        .args(["-u", "+%Y%m%dt%H%M%S"])
        .output()
        .context("running date")?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn wait_until(
    timeout: Duration,
    what: &str,
    mut ready: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if ready()? {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bail!("timed out after {timeout:?} waiting for {what}")
}

/// `GET path` on 127.0.0.1:port: the status code and body.
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    let status = answer.split_whitespace().nth(1)?.parse().ok()?;
    let body = answer
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    Some((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_round_rotates_the_wanted_peers_by_one() {
        let all = ["floor", "lwt", "plain", "statehouse"];
        assert_eq!(
            round_order(&all, 0),
            ["statehouse", "plain", "lwt", "floor"]
        );
        assert_eq!(
            round_order(&all, 1),
            ["plain", "lwt", "floor", "statehouse"]
        );
        assert_eq!(
            round_order(&all, 4),
            ["statehouse", "plain", "lwt", "floor"]
        );
        assert_eq!(
            round_order(&["lwt", "statehouse"], 1),
            ["lwt", "statehouse"]
        );
        assert_eq!(round_order(&["floor"], 2), ["floor"]);
    }

    #[test]
    fn figures_are_read_from_key_value_lines() {
        let line = "entities=10 ok=10 failed=0 seconds=1.250 per_second=8.0";
        assert_eq!(kv(line, "seconds"), Some(1.25));
        assert_eq!(kv(line, "ok"), Some(10.0));
        assert_eq!(kv(line, "second"), None);
        assert_eq!(kv(line, "missing"), None);
    }
}
