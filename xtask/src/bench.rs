//! `cargo xtask bench <scenario>`: one benchmark run, every peer in the same run.
//!
//! Builds the release binaries, starts (or reuses) Kafka and Cassandra, then measures in turn:
//! 1. **Statehouse**: the Rust shopping-cart user function, a processor and a gateway (release
//!    builds, topics and keyspace of their own), swept by `statehouse-loadtest sweep`;
//! 2. **baseline-plain** and 3. **baseline-lwt**: `statehouse-loadtest baseline-server`, the
//!    stateless read → modify → write service on Cassandra, swept the same way;
//! 4. **the Kafka floor**: `statehouse-loadtest floor`, raw transactional produce.
//!
//! Around each phase it reads the CPU time (`/proc/<pid>/stat`) and peak RSS (`VmHWM`) of every
//! process involved, and after the Statehouse phase it saves the processor's `/metrics`. Each
//! sweep ends with the correctness check (every acknowledged increment is in the final state).
//! `statehouse-loadtest report` then writes `target/bench/<scenario>-<timestamp>.{json,md,svg}`
//! and prints the table of ratios and targets.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::dev::{spawn, wait_for_port};
use crate::infra;
use crate::layout::Layout;

/// Options of `cargo xtask bench`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Args {
    /// The workload: `es-counter` or `shopping-cart`.
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
    /// Entities (N).
    #[arg(long, default_value_t = 1000)]
    entities: u64,
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

pub(crate) fn run(layout: &Layout, args: &Args) -> Result<()> {
    if !["es-counter", "shopping-cart"].contains(&args.scenario.as_str()) {
        bail!(
            "unknown scenario {:?}; scenarios: es-counter, shopping-cart",
            args.scenario
        );
    }
    for part in &args.only {
        if !["statehouse", "plain", "lwt", "floor"].contains(&part.as_str()) {
            bail!("--only takes statehouse, plain, lwt, floor; not {part:?}");
        }
    }
    let wants = |part: &str| args.only.iter().any(|p| p == part);
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
    infra::up(layout, 1)?;
    let env = infra::test_env()?;
    let kafka = env[0].1.clone();
    let cassandra = env[1].1.clone();
    let bin = layout.workspace.join("target").join("release");
    let loadtest = bin.join("statehouse-loadtest");
    let ts = utc_timestamp()?;
    let out_dir = layout.workspace.join("target").join("bench");
    let work = out_dir.join(format!("{}-{ts}.d", args.scenario));
    std::fs::create_dir_all(&work)?;
    let clk_tck = clock_ticks();
    let jvm_pids: Vec<(String, u32)> = ["kafka", "cassandra"]
        .iter()
        .filter_map(|s| {
            let pid = std::fs::read_to_string(layout.infra.join(s).join("pid")).ok()?;
            Some((s.to_string(), pid.trim().parse().ok()?))
        })
        .collect();
    let load_at_start = std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ");
    let mut processes = String::new();
    let mut sweeps: Vec<PathBuf> = Vec::new();
    let mut metrics_path = None;
    let sweep_args = |name: &str, uri: &str, out: &Path| -> Vec<String> {
        let mut a: Vec<String> = [
            "sweep",
            "--scenario",
            &args.scenario,
            "--target",
            uri,
            "--name",
            name,
            "--entities",
            &args.entities.to_string(),
            "--keys",
            &args.keys,
            "--clients",
            &args.clients.to_string(),
            "--closed-s",
            &args.closed_s.to_string(),
            "--step-s",
            &args.step_s.to_string(),
            "--slo-p99-ms",
            &args.slo_p99_ms.to_string(),
            "--out",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.push(out.display().to_string());
        if args.scenario == "es-counter" {
            // GetCart on active entities, and the sample's mix, at half the maximum.
            a.extend(["--mix-scenario".into(), "shopping-cart".into()]);
        }
        a
    };

    if wants("statehouse") {
        println!("==> Statehouse: user function, processor, gateway");
        let mut stack = Children(Vec::new());
        let prefix = format!("bench-{ts}.");
        let keyspace = format!("bench_{ts}");
        let common = [
            format!("kafka.bootstrap-servers={kafka}"),
            format!("kafka.topic-prefix={prefix}"),
            format!("cassandra.contact-points=[\"{cassandra}\"]"),
            format!("cassandra.keyspace={keyspace}"),
            format!("processor.partitions={}", args.partitions),
            format!("kafka.writer.linger-ms={}", args.linger_ms),
            format!("kafka.writer.max-records={}", args.max_records),
            format!("kafka.writer.max-bytes={}", args.max_bytes),
        ];
        let sets = |extra: &[String]| -> Vec<String> {
            common
                .iter()
                .chain(extra)
                .flat_map(|s| ["--set".to_string(), s.clone()])
                .collect()
        };
        let statehouse = bin.join("statehouse");
        let status = Command::new(&statehouse)
            .args(sets(&[]))
            .args(["admin", "migrate"])
            .stdout(Stdio::null())
            .status()
            .context("running statehouse admin migrate")?;
        if !status.success() {
            bail!("statehouse admin migrate failed");
        }
        let (uf_port, internal, metrics, gw_port, gw_metrics) = (
            free_port()?,
            free_port()?,
            free_port()?,
            free_port()?,
            free_port()?,
        );
        stack.0.push((
            "user function".into(),
            spawn(
                Command::new(bin.join("statehouse-sample-shopping-cart"))
                    .env("HOST", "127.0.0.1")
                    .env("PORT", uf_port.to_string()),
                &work.join("user-function.log"),
            )?,
        ));
        wait_for_port(uf_port, Duration::from_secs(30), "the user function")?;
        stack.0.push((
            "processor".into(),
            spawn(
                Command::new(&statehouse)
                    .args(sets(&[
                        "processor.service=shopping-cart".into(),
                        format!("processor.listen=\"127.0.0.1:{internal}\""),
                        format!("processor.metrics-listen=\"127.0.0.1:{metrics}\""),
                        format!("processor.user-function-port={uf_port}"),
                    ]))
                    .arg("processor"),
                &work.join("processor.log"),
            )?,
        ));
        stack.0.push((
            "gateway".into(),
            spawn(
                Command::new(&statehouse)
                    .args(sets(&[
                        format!("gateway.listen=\"127.0.0.1:{gw_port}\""),
                        format!("gateway.metrics-listen=\"127.0.0.1:{gw_metrics}\""),
                    ]))
                    .arg("gateway"),
                &work.join("gateway.log"),
            )?,
        ));
        wait_until(
            Duration::from_secs(120),
            "the processor to be ready",
            || {
                stack.check_running(&work)?;
                Ok(http_get(metrics, "/readyz").is_some_and(|(s, _)| s == 200))
            },
        )?;
        wait_until(Duration::from_secs(90), "the gateway to route", || {
            stack.check_running(&work)?;
            Ok(http_get(gw_port, "/").is_some_and(|(s, _)| s == 200))
        })?;
        let mut pids: Vec<(String, u32)> = ["user function", "processor", "gateway"]
            .iter()
            .filter_map(|n| Some((n.to_string(), stack.pid(n)?)))
            .collect();
        pids.extend(jvm_pids.iter().cloned());
        let out = work.join("statehouse.json");
        measure("statehouse", &pids, clk_tck, &mut processes, || {
            loader(
                &loadtest,
                &sweep_args("statehouse", &format!("http://127.0.0.1:{gw_port}"), &out),
            )
        })?;
        if let Some((_, body)) = http_get(metrics, "/metrics") {
            let path = work.join("processor-metrics.txt");
            std::fs::write(&path, body)?;
            metrics_path = Some(path);
        }
        sweeps.push(out);
        drop(stack);
    }

    for (part, variant) in [("plain", "plain"), ("lwt", "lwt")] {
        if !wants(part) {
            continue;
        }
        let name = format!("baseline-{variant}");
        println!("==> {name}: stateless service, read → modify → write on Cassandra");
        let port = free_port()?;
        let mut server = Children(vec![(
            name.clone(),
            spawn(
                Command::new(&loadtest).args([
                    "baseline-server",
                    "--variant",
                    variant,
                    "--listen",
                    &format!("127.0.0.1:{port}"),
                    "--cassandra",
                    &cassandra,
                    "--keyspace",
                    &format!("bench_{ts}_{variant}"),
                ]),
                &work.join(format!("{name}.log")),
            )?,
        )]);
        wait_until(Duration::from_secs(60), "the baseline server", || {
            server.check_running(&work)?;
            Ok(TcpStream::connect(("127.0.0.1", port)).is_ok())
        })?;
        let mut pids = vec![(name.clone(), server.pid(&name).unwrap_or(0))];
        pids.extend(jvm_pids.iter().cloned());
        let out = work.join(format!("{name}.json"));
        measure(&name, &pids, clk_tck, &mut processes, || {
            loader(
                &loadtest,
                &sweep_args(&name, &format!("http://127.0.0.1:{port}"), &out),
            )
        })?;
        sweeps.push(out);
        drop(server);
    }

    let mut floor_path = None;
    if wants("floor") {
        println!("==> Kafka floor: raw transactional produce");
        let out = work.join("floor.json");
        let floor_args: Vec<String> = [
            "floor",
            "--bootstrap-servers",
            &kafka,
            "--topic",
            &format!("bench-{ts}-floor"),
            "--partitions",
            &args.partitions.to_string(),
            "--clients",
            &args.clients.to_string(),
            "--entities",
            &args.entities.to_string(),
            "--duration-s",
            "10",
            "--max-records",
            &args.max_records.to_string(),
            "--max-bytes",
            &args.max_bytes.to_string(),
            "--out",
            &out.display().to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        measure("floor", &jvm_pids, clk_tck, &mut processes, || {
            loader(&loadtest, &floor_args)
        })?;
        floor_path = Some(out);
    }

    let processes_path = work.join("processes.tsv");
    std::fs::write(&processes_path, &processes)?;
    let stem = out_dir.join(format!("{}-{ts}", args.scenario));
    let mut report: Vec<String> = vec![
        "report".into(),
        "--scenario".into(),
        args.scenario.clone(),
        "--timestamp".into(),
        ts.clone(),
        "--processes".into(),
        processes_path.display().to_string(),
        "--out".into(),
        stem.display().to_string(),
    ];
    for s in &sweeps {
        report.extend(["--sweep".into(), s.display().to_string()]);
    }
    if let Some(f) = &floor_path {
        report.extend(["--floor".into(), f.display().to_string()]);
    }
    if let Some(m) = &metrics_path {
        report.extend(["--processor-metrics".into(), m.display().to_string()]);
    }
    for (k, v) in [
        ("partitions", args.partitions.to_string()),
        ("kafka.writer.linger-ms", args.linger_ms.to_string()),
        ("kafka.writer.max-records", args.max_records.to_string()),
        ("kafka.writer.max-bytes", args.max_bytes.to_string()),
        ("acks", "all (transactional, idempotent)".into()),
        (
            "replication factor",
            "1 (Kafka and Cassandra, one node each)".into(),
        ),
        ("closed-loop clients (C)", args.clients.to_string()),
        ("entities (N)", args.entities.to_string()),
        ("keys", args.keys.clone()),
        ("open-loop arrivals", "Poisson".into()),
        (
            "p99 SLO for equal-p99 ratios",
            format!("{} ms", args.slo_p99_ms),
        ),
        (
            "phase lengths",
            format!(
                "closed {} s, steps {} s, warm-up 1 s each",
                args.closed_s, args.step_s
            ),
        ),
        ("load average at start (1, 5, 15 min)", load_at_start),
        ("command", format!("cargo xtask bench {}", args.scenario)),
    ] {
        report.extend(["--setting".into(), format!("{k}={v}")]);
    }
    let result = loader(&loadtest, &report);
    println!(
        "==> bench took {:.0} s; results in {}.{{json,md,svg}} (raw files in {})",
        started.elapsed().as_secs_f64(),
        stem.display(),
        work.display()
    );
    result
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
    let status = Command::new(bin)
        .args(args)
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
