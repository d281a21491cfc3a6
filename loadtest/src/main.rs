//! `statehouse-loadtest`: measures Statehouse from a client's point of view, and the
//! architectures it is compared with. See the library docs and `docs/benchmarks.md`.
//!
//! * `sweep`: closed-loop maximum, open-loop sweep of rates, correctness check → JSON +
//!   Markdown (+ SVG).
//! * `baseline-server`: the stateless read → modify → write service on Cassandra.
//! * `floor`: raw Kafka transactional produce, batched like the partition writer.
//! * `report`: combine the results of one bench round (what `cargo xtask bench` calls).
//! * `rounds`: combine the rounds of one bench into medians and spreads.
//! * `record-sizes`: the mean size of a journal topic's records (the floor's record size).
//! * `activate`, `takeover`: entity lifecycle measurements (memory per entity, recovery,
//!   takeover after a kill), for `cargo xtask bench memory`.
//! * `latency`: one client, sequential `AddItem` and `GetCart` (`--api kinds`: a value-entity
//!   update and a unary action of the Go TCK user function).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;
use statehouse_loadtest::driver::Target;
use statehouse_loadtest::keys::Distribution;
use statehouse_loadtest::report::{self, Bench, Machine, ProcessStat, Rounds};
use statehouse_loadtest::scenario::Op;
use statehouse_loadtest::usage::Probe;
use statehouse_loadtest::{baseline, floor, lifecycle, sweep};
use statehouse_schemas::shoppingcart::shopping_cart_client::ShoppingCartClient;
use statehouse_schemas::shoppingcart::{AddLineItem, GetShoppingCart};

#[derive(Parser)]
#[command(
    name = "statehouse-loadtest",
    about = "Measure Statehouse, its stateless+database baseline and the Kafka floor"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum KeyDist {
    Uniform,
    Zipf,
}

#[derive(Subcommand)]
enum Command {
    /// Closed-loop maximum, then an open-loop sweep of rates, then the correctness check.
    Sweep {
        /// `es-counter`, `shopping-cart` or `cart-large`.
        #[arg(long, default_value = "es-counter")]
        scenario: String,
        /// The gRPC endpoint serving the shopping-cart API (gateway or baseline).
        #[arg(long, default_value = "http://127.0.0.1:9000")]
        target: String,
        /// Name of the target in reports.
        #[arg(long, default_value = "statehouse")]
        name: String,
        /// Number of entities (N).
        #[arg(long, default_value_t = 1000)]
        entities: u64,
        #[arg(long, value_enum, default_value_t = KeyDist::Zipf)]
        keys: KeyDist,
        /// Zipf exponent.
        #[arg(long, default_value_t = 1.1)]
        zipf_s: f64,
        /// Closed-loop clients (C).
        #[arg(long, default_value_t = 64)]
        clients: usize,
        /// HTTP/2 connections to the target.
        #[arg(long, default_value_t = 4)]
        connections: usize,
        #[arg(long, default_value_t = 1.0)]
        warmup_s: f64,
        #[arg(long, default_value_t = 6.0)]
        closed_s: f64,
        #[arg(long, default_value_t = 5.0)]
        step_s: f64,
        /// Open-loop rates as fractions of the closed-loop maximum.
        #[arg(long, value_delimiter = ',', default_value = "0.25,0.5,0.75,0.9,1.1")]
        fractions: Vec<f64>,
        /// Explicit open-loop rates (commands/s), instead of fractions.
        #[arg(long, value_delimiter = ',')]
        rates: Vec<f64>,
        /// Evenly spaced arrivals instead of Poisson.
        #[arg(long)]
        constant: bool,
        /// p99 bound of "maximum throughput at equal p99".
        #[arg(long, default_value_t = 50.0)]
        slo_p99_ms: f64,
        #[arg(long, default_value_t = 4096)]
        max_in_flight: usize,
        #[arg(long, default_value_t = 10_000)]
        timeout_ms: u64,
        /// Also run this scenario at `mix-fraction` of the maximum (GetCart on active entities).
        #[arg(long)]
        mix_scenario: Option<String>,
        #[arg(long, default_value_t = 0.5)]
        mix_fraction: f64,
        /// Skip the correctness check.
        #[arg(long)]
        no_verify: bool,
        #[arg(long)]
        no_progress: bool,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Entity ids are `<run-id>-<k>`; default: unique per invocation.
        #[arg(long)]
        run_id: Option<String>,
        /// Only the closed loop (no open-loop steps, mix or check): an unmeasured warm-up load.
        #[arg(long)]
        closed_only: bool,
        /// Processes whose CPU is sampled around each step: `name=pid,name=pid`.
        #[arg(long, default_value = "")]
        pids: String,
        /// The processor's `/metrics` URL (records and transactions per step).
        #[arg(long)]
        metrics_url: Option<String>,
        /// Write the JSON here (and Markdown next to it, `.md`).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Serve the shopping-cart API statelessly: read → modify → write on Cassandra per command.
    BaselineServer {
        #[arg(long, value_enum, default_value_t = baseline::Variant::Plain)]
        variant: baseline::Variant,
        #[arg(long, default_value = "127.0.0.1:9200")]
        listen: SocketAddr,
        #[arg(long, default_value = "127.0.0.1:9042")]
        cassandra: String,
        #[arg(long, default_value = "statehouse_baseline")]
        keyspace: String,
        /// Compare-and-set attempts per command (lwt).
        #[arg(long, default_value_t = 100)]
        max_attempts: u32,
    },
    /// Raw Kafka transactional produce, batched like the partition writer.
    Floor {
        #[arg(long, default_value = "127.0.0.1:9092")]
        bootstrap_servers: String,
        /// Topic to create (default: unique per invocation).
        #[arg(long)]
        topic: Option<String>,
        #[arg(long, default_value_t = 4)]
        partitions: u32,
        #[arg(long, default_value_t = 64)]
        clients: usize,
        #[arg(long, default_value_t = 1000)]
        entities: u64,
        #[arg(long, default_value_t = 2.0)]
        warmup_s: f64,
        #[arg(long, default_value_t = 10.0)]
        duration_s: f64,
        /// Bytes of each record's value: Statehouse's journal record (the Avro `EventRecord` of
        /// an es-counter `AddItem`) is 264 B; see docs/benchmarks.md.
        #[arg(long, alias = "value-bytes", default_value_t = 264)]
        record_bytes: usize,
        /// Exactly this many records per transaction.
        #[arg(long)]
        batch_records: Option<usize>,
        /// Then also run at each of these fixed batch sizes (e.g. 1,2,4,8,16,32).
        #[arg(long, value_delimiter = ',')]
        batch_sweep: Vec<usize>,
        /// Seconds of each batch-sweep point (after a 1 s warm-up).
        #[arg(long, default_value_t = 4.0)]
        batch_sweep_s: f64,
        #[arg(long, default_value_t = 2000)]
        max_records: usize,
        #[arg(long, default_value_t = 4 * 1024 * 1024)]
        max_bytes: usize,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Measure the records of a journal topic (what the floor's records should weigh): prints
    /// `key=value` figures (records, value_bytes, key_bytes, record_bytes; means).
    RecordSizes {
        #[arg(long, default_value = "127.0.0.1:9092")]
        bootstrap_servers: String,
        /// E.g. `<topic-prefix>shopping-cart.journal`.
        #[arg(long)]
        topic: String,
        /// Records to read at most.
        #[arg(long, default_value_t = 2000)]
        max: u64,
    },
    /// Send one command to each entity `<run-id>-<k>`, k in from..to, retried until answered;
    /// prints `key=value` figures (entities, ok, failed, retries, seconds, per_second).
    Activate {
        #[arg(long, default_value = "http://127.0.0.1:9000")]
        target: String,
        #[arg(long)]
        run_id: String,
        #[arg(long, default_value_t = 0)]
        from: u64,
        #[arg(long)]
        to: u64,
        /// `add` (AddItem: an event, the entity's state grows) or `get` (GetCart).
        #[arg(long, default_value = "add")]
        op: String,
        #[arg(long, default_value_t = 256)]
        concurrency: usize,
        #[arg(long, default_value_t = 4)]
        connections: usize,
        /// Attempts per entity (100 ms apart).
        #[arg(long, default_value_t = 50)]
        attempts: u32,
    },
    /// Kill a processor (`kill -9`) and measure until every entity `<run-id>-<k>`, k < entities,
    /// answers a command again; prints `key=value` figures (max_ms is the takeover time).
    Takeover {
        #[arg(long, default_value = "http://127.0.0.1:9000")]
        target: String,
        #[arg(long)]
        run_id: String,
        /// Entities, enough to cover every partition.
        #[arg(long, default_value_t = 64)]
        entities: u64,
        #[arg(long)]
        kill_pid: u32,
        /// Pause between a client's attempts.
        #[arg(long, default_value_t = 5)]
        interval_ms: u64,
        #[arg(long, default_value_t = 120)]
        timeout_s: u64,
    },
    /// Combine one bench run's results into JSON, Markdown and SVG; print the targets table.
    Report {
        #[arg(long)]
        scenario: String,
        #[arg(long)]
        timestamp: String,
        /// A sweep result (repeatable).
        #[arg(long = "sweep")]
        sweeps: Vec<PathBuf>,
        #[arg(long)]
        floor: Option<PathBuf>,
        /// Tab-separated `phase process cpu_seconds peak_rss_kib` lines.
        #[arg(long)]
        processes: Option<PathBuf>,
        /// The processor's `/metrics` text at the end of its phase.
        #[arg(long)]
        processor_metrics: Option<PathBuf>,
        /// `key=value` settings to print (repeatable).
        #[arg(long = "setting")]
        settings: Vec<String>,
        /// Output stem: writes `<out>.json`, `<out>.md` and `<out>.svg`.
        #[arg(long)]
        out: PathBuf,
    },
    /// Combine the rounds of one bench (each a `report` JSON) into medians and spreads.
    Rounds {
        #[arg(long)]
        scenario: String,
        #[arg(long)]
        timestamp: String,
        /// One round's report JSON (repeatable, in round order).
        #[arg(long = "round")]
        rounds: Vec<PathBuf>,
        /// That round's SVG to show, for the round with the median Statehouse maximum
        /// (repeatable, same order as `--round`).
        #[arg(long = "round-svg")]
        round_svgs: Vec<PathBuf>,
        /// Output stem: writes `<out>.json`, `<out>.md` and `<out>.svg`.
        #[arg(long)]
        out: PathBuf,
    },
    /// The overload run (R10): capacity, unloaded p99, `overload-factor` × capacity, then
    /// `after-fraction` × capacity; refused share, accepted p99, peak memory, recovery time,
    /// and the check that nothing accepted was lost (`docs/security.md`, "Load shedding").
    Overload {
        #[command(flatten)]
        options: statehouse_loadtest::overload::Options,
        /// Processes whose memory is sampled: `name=pid,name=pid`.
        #[arg(long, default_value = "")]
        pids: String,
        /// Write the JSON report here.
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long)]
        no_progress: bool,
    },
    /// One client, sequential commands: latency percentiles of AddItem (and GetCart).
    Latency {
        /// The gateway.
        #[arg(long, default_value = "http://127.0.0.1:9000")]
        target: String,
        /// Measured calls per command type.
        #[arg(long, default_value_t = 3000)]
        calls: u32,
        /// Unmeasured warm-up calls.
        #[arg(long, default_value_t = 200)]
        warmup: u32,
        /// Carts (entities) to spread the commands over.
        #[arg(long, default_value_t = 100)]
        carts: u32,
        /// `cart`: the shopping cart's AddItem and GetCart. `kinds`: the Go TCK user function's
        /// value-entity update, CRDT increments (LOCAL, MAJORITY) and unary action.
        #[arg(long, default_value = "cart")]
        api: String,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Sweep {
            scenario,
            target,
            name,
            entities,
            keys,
            zipf_s,
            clients,
            connections,
            warmup_s,
            closed_s,
            step_s,
            fractions,
            rates,
            constant,
            slo_p99_ms,
            max_in_flight,
            timeout_ms,
            mix_scenario,
            mix_fraction,
            no_verify,
            no_progress,
            seed,
            run_id,
            closed_only,
            pids,
            metrics_url,
            out,
        } => {
            let options = sweep::Options {
                target: name,
                uri: target,
                scenario,
                entities,
                distribution: match keys {
                    KeyDist::Uniform => Distribution::Uniform,
                    KeyDist::Zipf => Distribution::Zipf { s: zipf_s },
                },
                clients,
                connections,
                warmup_s,
                closed_s,
                step_s,
                fractions,
                rates,
                poisson: !constant,
                slo_p99_ms,
                max_in_flight,
                timeout_ms,
                mix_scenario,
                mix_fraction,
                verify: !no_verify,
                progress: !no_progress,
                seed,
                run_id: run_id.unwrap_or_else(unique_run_id),
                closed_only,
                probe: Probe {
                    pids: Probe::parse_pids(&pids)?,
                    metrics_url,
                },
            };
            let result = sweep::run(&options).await?;
            let md = format!(
                "{}\n{}",
                report::summary_table(std::slice::from_ref(&result)),
                report::steps_table(&result)
            );
            println!("{md}");
            if let Some(out) = out {
                write_json(&out, &result)?;
                std::fs::write(out.with_extension("md"), &md)?;
                std::fs::write(
                    out.with_extension("svg"),
                    report::svg(
                        std::slice::from_ref(&result),
                        &format!("{} — {}", result.options.scenario, result.options.target),
                    ),
                )?;
            }
            if let Some(v) = &result.verification
                && !v.ok
            {
                eprintln!("correctness check FAILED: {v:?}");
            }
            Ok(())
        }
        Command::BaselineServer {
            variant,
            listen,
            cassandra,
            keyspace,
            max_attempts,
        } => {
            let server = baseline::Baseline::connect(&baseline::Options {
                variant,
                contact_point: cassandra,
                keyspace,
                max_attempts,
            })
            .await?;
            eprintln!("baseline ({variant:?}) serving on {listen}");
            server
                .serve_on(listen, async {
                    let _ = tokio::signal::ctrl_c().await;
                })
                .await
        }
        Command::Floor {
            bootstrap_servers,
            topic,
            partitions,
            clients,
            entities,
            warmup_s,
            duration_s,
            record_bytes,
            batch_records,
            batch_sweep,
            batch_sweep_s,
            max_records,
            max_bytes,
            out,
        } => {
            let options = floor::Options {
                bootstrap_servers,
                topic: topic.unwrap_or_else(|| format!("bench-floor-{}", unique_run_id())),
                partitions,
                clients,
                entities,
                warmup_s,
                duration_s,
                value_bytes: record_bytes,
                max_records,
                max_bytes,
                batch_records,
                progress: true,
            };
            let mut result = floor::run(&options).await?;
            result.batch_sweep = floor::batch_sweep(&options, &batch_sweep, batch_sweep_s).await?;
            println!("{}", serde_json::to_string_pretty(&result.outcome)?);
            if let Some(out) = out {
                write_json(&out, &result)?;
            }
            Ok(())
        }
        Command::Report {
            scenario,
            timestamp,
            sweeps,
            floor,
            processes,
            processor_metrics,
            settings,
            out,
        } => report_cmd(
            scenario,
            timestamp,
            &sweeps,
            floor.as_deref(),
            processes.as_deref(),
            processor_metrics.as_deref(),
            &settings,
            &out,
        ),
        Command::Activate {
            target,
            run_id,
            from,
            to,
            op,
            concurrency,
            connections,
            attempts,
        } => {
            let op = match op.as_str() {
                "add" => Op::AddOther,
                "get" => Op::Get,
                other => anyhow::bail!("unknown --op {other:?}: add or get"),
            };
            let target = Target::connect(&target, connections).await?;
            let a =
                lifecycle::activate(&target, &run_id, (from, to), op, concurrency, attempts).await;
            println!(
                "entities={} ok={} failed={} retries={} seconds={:.3} per_second={:.1}",
                a.entities,
                a.ok,
                a.failed,
                a.retries,
                a.seconds,
                a.per_second()
            );
            anyhow::ensure!(a.failed == 0, "{} entities never answered", a.failed);
            Ok(())
        }
        Command::Takeover {
            target,
            run_id,
            entities,
            kill_pid,
            interval_ms,
            timeout_s,
        } => {
            let target = Target::connect(&target, 4).await?;
            let kill = || {
                let status = std::process::Command::new("kill")
                    .args(["-9", &kill_pid.to_string()])
                    .status()?;
                anyhow::ensure!(status.success(), "kill -9 {kill_pid} failed");
                Ok(())
            };
            let t = lifecycle::takeover(
                &target,
                &run_id,
                entities,
                kill,
                Duration::from_millis(interval_ms),
                Duration::from_secs(timeout_s),
            )
            .await?;
            println!(
                "entities={} interrupted={} max_ms={:.1} unanswered={}",
                t.entities, t.interrupted, t.max_ms, t.unanswered
            );
            Ok(())
        }
        Command::RecordSizes {
            bootstrap_servers,
            topic,
            max,
        } => {
            let sizes = floor::journal_record_sizes(&bootstrap_servers, &topic, max)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no records in {topic}"))?;
            println!(
                "records={} value_bytes={:.1} key_bytes={:.1} record_bytes={:.1}",
                sizes.records,
                sizes.mean_value_bytes,
                sizes.mean_key_bytes,
                sizes.mean_record_bytes
            );
            Ok(())
        }
        Command::Rounds {
            scenario,
            timestamp,
            rounds,
            round_svgs,
            out,
        } => {
            let benches: Vec<Bench> = rounds
                .iter()
                .map(|p| read_json(p))
                .collect::<Result<_, _>>()?;
            let combined = Rounds::new(scenario, timestamp, benches);
            let svg_path = out.with_extension("svg");
            let svg = round_svgs
                .get(combined.median_round())
                .and_then(|p| std::fs::read(p).ok());
            if let Some(svg) = &svg {
                std::fs::write(&svg_path, svg)?;
            }
            let svg_name = svg.and_then(|_| {
                svg_path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
            });
            let md = combined.markdown(svg_name.as_deref());
            std::fs::write(out.with_extension("md"), &md)?;
            write_json(&out.with_extension("json"), &combined)?;
            println!("{md}");
            anyhow::ensure!(
                combined.valid,
                "the run is invalid: a correctness check failed (see the rounds' notes)"
            );
            Ok(())
        }
        Command::Overload {
            mut options,
            pids,
            out,
            no_progress,
        } => {
            options.run_id = format!("overload-{}", std::process::id());
            options.pids = Probe::parse_pids(&pids)?;
            options.progress = !no_progress;
            let report = statehouse_loadtest::overload::run(&options).await?;
            print!("{}", report.text());
            if let Some(out) = out {
                std::fs::write(&out, serde_json::to_vec_pretty(&report)?)
                    .with_context(|| format!("writing {}", out.display()))?;
            }
            anyhow::ensure!(report.verification.ok, "acknowledged commands were lost");
            Ok(())
        }
        Command::Latency {
            target,
            calls,
            warmup,
            carts,
            api,
        } => match api.as_str() {
            "cart" => latency(&target, calls, warmup, carts).await,
            "kinds" => latency_kinds(&target, calls, warmup, carts).await,
            other => anyhow::bail!("unknown --api {other:?}: cart or kinds"),
        },
    }
}

fn unique_run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("lt{:x}{:x}", std::process::id(), nanos & 0xffff_ffff)
}

fn write_json(path: &Path, value: &impl serde::Serialize) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, serde_json::to_vec_pretty(value)?)
        .with_context(|| format!("writing {}", path.display()))
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> anyhow::Result<T> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))
}

#[allow(clippy::too_many_arguments)]
fn report_cmd(
    scenario: String,
    timestamp: String,
    sweeps: &[PathBuf],
    floor_path: Option<&Path>,
    processes: Option<&Path>,
    processor_metrics: Option<&Path>,
    settings: &[String],
    out: &Path,
) -> anyhow::Result<()> {
    let targets: Vec<sweep::Result> = sweeps
        .iter()
        .map(|p| read_json(p))
        .collect::<Result<_, _>>()?;
    let floor: Option<floor::Result> = floor_path.map(read_json).transpose()?;
    let commands_of = |phase: &str| -> u64 {
        if phase == "floor" {
            return floor.as_ref().map_or(0, |f| f.outcome.records_total);
        }
        targets
            .iter()
            .find(|t| t.options.target == phase)
            // The harness measures the phase's CPU around the fill too.
            .map_or(0, |t| t.summary.commands_sent + t.fill_commands)
    };
    let per_1000 = |cpu: f64, commands: u64| {
        if commands == 0 {
            0.0
        } else {
            cpu * 1000.0 * 1000.0 / commands as f64
        }
    };
    let mut stats = Vec::new();
    if let Some(path) = processes {
        let text = std::fs::read_to_string(path)?;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let f: Vec<&str> = line.split('\t').collect();
            if f.len() < 4 {
                continue;
            }
            let cpu_s: f64 = f[2].parse().unwrap_or(0.0);
            let commands = commands_of(f[0]);
            stats.push(ProcessStat {
                phase: f[0].to_string(),
                process: f[1].to_string(),
                cpu_s,
                peak_rss_kib: f[3].parse().unwrap_or(0),
                commands,
                cpu_ms_per_1000: per_1000(cpu_s, commands),
            });
        }
    }
    for t in &targets {
        let commands = t.summary.commands_sent;
        stats.push(ProcessStat {
            phase: t.options.target.clone(),
            process: "load generator".into(),
            cpu_s: t.loader_cpu_s,
            peak_rss_kib: t.loader_peak_rss_kib,
            commands,
            cpu_ms_per_1000: per_1000(t.loader_cpu_s, commands),
        });
    }
    if let Some(f) = &floor {
        stats.push(ProcessStat {
            phase: "floor".into(),
            process: "floor producer (load generator)".into(),
            cpu_s: f.outcome.loader_cpu_s,
            peak_rss_kib: f.outcome.loader_peak_rss_kib,
            commands: f.outcome.records_total,
            cpu_ms_per_1000: per_1000(f.outcome.loader_cpu_s, f.outcome.records_total),
        });
    }
    let processor_metrics = match processor_metrics {
        Some(p) => report::metrics_of(
            &std::fs::read_to_string(p)?,
            &[
                "statehouse_writer_commit_seconds",
                "statehouse_writer_batch_records",
                "statehouse_writer_transactions_total",
                "statehouse_writer_records_total",
                "statehouse_writer_failures_total",
            ],
        ),
        None => Default::default(),
    };
    let mut bench = Bench {
        scenario,
        timestamp,
        machine: Machine::detect(),
        settings: settings
            .iter()
            .filter_map(|s| s.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        targets,
        floor,
        processes: stats,
        processor_metrics,
        ratios: Default::default(),
        checks: Vec::new(),
        valid: true,
        notes: Vec::new(),
    };
    bench.finish();
    let svg_path = out.with_extension("svg");
    let svg_name = svg_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned());
    std::fs::write(
        &svg_path,
        report::svg(
            &bench.targets,
            &format!(
                "{}: latency vs throughput ({})",
                bench.scenario, bench.timestamp
            ),
        ),
    )?;
    let md = bench.markdown(svg_name.as_deref());
    std::fs::write(out.with_extension("md"), &md)?;
    write_json(&out.with_extension("json"), &bench)?;
    println!("{md}");
    if !bench.valid {
        anyhow::bail!("the run is invalid: {}", bench.notes.join("; "));
    }
    Ok(())
}

/// The latency table of a run, one row per command.
fn print_latency(rows: &[(&str, &Histogram<u64>)]) {
    println!("| command | p50 | p90 | p99 | p99.9 | max |");
    println!("|---|---|---|---|---|---|");
    for (name, h) in rows {
        let ms = |q: f64| Duration::from_micros(h.value_at_quantile(q)).as_secs_f64() * 1000.0;
        println!(
            "| {name} | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms |",
            ms(0.5),
            ms(0.9),
            ms(0.99),
            ms(0.999),
            h.max() as f64 / 1000.0
        );
    }
}

async fn latency_kinds(target: &str, calls: u32, warmup: u32, entities: u32) -> anyhow::Result<()> {
    let mut client = statehouse_loadtest::kinds::Client::connect(target)
        .await
        .with_context(|| format!("connecting to {target}"))?;
    let run = format!("{:x}", std::process::id());
    let mut update = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut action = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut local = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut majority = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let started = Instant::now();
    for i in 0..warmup + calls {
        let value = format!("v{i}");
        let t = Instant::now();
        let answer = client
            .update_value(&format!("lt-{run}-{}", i % entities), &value)
            .await
            .context("value-entity update")?;
        anyhow::ensure!(
            answer == value,
            "the update answered {answer:?}, not {value:?}"
        );
        let update_us = t.elapsed().as_micros() as u64;
        let t = Instant::now();
        client.action("pong").await.context("unary action")?;
        let action_us = t.elapsed().as_micros() as u64;
        let counter = format!("GCounter-lt-{run}-{}", i % entities);
        let t = Instant::now();
        client
            .increment(&counter, 0)
            .await
            .context("CRDT increment (LOCAL)")?;
        let local_us = t.elapsed().as_micros() as u64;
        let t = Instant::now();
        client
            .increment(&counter, 1)
            .await
            .context("CRDT increment (MAJORITY)")?;
        let majority_us = t.elapsed().as_micros() as u64;
        if i >= warmup {
            update.record(update_us.max(1))?;
            action.record(action_us.max(1))?;
            local.record(local_us.max(1))?;
            majority.record(majority_us.max(1))?;
        }
    }
    println!(
        "one client, {calls} measured calls each (after {warmup} warm-up), {entities} value entities and GCounters, {:.1}s",
        started.elapsed().as_secs_f64()
    );
    print_latency(&[
        ("value update", &update),
        ("CRDT increment, LOCAL", &local),
        ("CRDT increment, MAJORITY", &majority),
        ("unary action", &action),
    ]);
    Ok(())
}

async fn latency(target: &str, calls: u32, warmup: u32, carts: u32) -> anyhow::Result<()> {
    let mut client = ShoppingCartClient::connect(target.to_string())
        .await
        .with_context(|| format!("connecting to {target}"))?;
    let run = format!("{:x}", std::process::id());
    let mut add = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut get = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let started = Instant::now();
    for i in 0..warmup + calls {
        let cart = format!("lt-{run}-{}", i % carts);
        let t = Instant::now();
        client
            .add_item(AddLineItem {
                user_id: cart.clone(),
                product_id: format!("p{}", i % 7),
                name: "item".into(),
                quantity: 1,
            })
            .await
            .context("AddItem")?;
        let add_us = t.elapsed().as_micros() as u64;
        let t = Instant::now();
        client
            .get_cart(GetShoppingCart { user_id: cart })
            .await
            .context("GetCart")?;
        let get_us = t.elapsed().as_micros() as u64;
        if i >= warmup {
            add.record(add_us.max(1))?;
            get.record(get_us.max(1))?;
        }
    }
    let elapsed = started.elapsed();
    println!(
        "one client, {calls} measured calls each (after {warmup} warm-up), {carts} carts, {:.1}s",
        elapsed.as_secs_f64()
    );
    print_latency(&[("AddItem", &add), ("GetCart", &get)]);
    Ok(())
}
