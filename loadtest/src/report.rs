//! Reports: the combined bench report (JSON + Markdown), per-sweep Markdown, and the
//! latency-vs-throughput SVG (written by hand: a few polylines need no plotting library).
//!
//! One round on a shared machine can be disturbed (a GC pause, another job), and the peer that
//! runs first pays for cold caches; so a bench runs several rounds in rotated order and
//! [`Rounds`] reports each ratio's median over the rounds with its spread (min–max).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::driver::Phase;
use crate::usage::{LOAD_GENERATOR, StepUsage};
use crate::{floor, sweep};

/// CPU and memory of one process during one phase (measured by the bench harness from
/// `/proc/<pid>/stat` and `/proc/<pid>/status`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ProcessStat {
    pub phase: String,
    pub process: String,
    pub cpu_s: f64,
    /// VmHWM (peak resident set) at the end of the phase, KiB; for the shared JVMs it covers
    /// their whole life.
    pub peak_rss_kib: u64,
    /// Commands the phase sent (all of them, warm-up included).
    pub commands: u64,
    pub cpu_ms_per_1000: f64,
}

/// The machine the run was on.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Machine {
    pub cores: usize,
    pub memory_gib: f64,
    pub cpu: String,
    pub kernel: String,
}

impl Machine {
    pub fn detect() -> Self {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let meminfo = read("/proc/meminfo");
        let mem_kib: f64 = meminfo
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0.0);
        let cpu = read("/proc/cpuinfo")
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default();
        Self {
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            memory_gib: mem_kib / 1024.0 / 1024.0,
            cpu,
            kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
        }
    }
}

/// The headline ratios.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Ratios {
    /// Statehouse ÷ baseline, maximum open-loop throughput with p99 ≤ the SLO.
    pub vs_plain_at_slo: Option<f64>,
    pub vs_lwt_at_slo: Option<f64>,
    /// Statehouse ÷ baseline, closed-loop maximum with the same C clients.
    pub vs_plain_closed: Option<f64>,
    pub vs_lwt_closed: Option<f64>,
    /// Statehouse closed-loop maximum ÷ the Kafka floor's records/s.
    pub vs_floor: Option<f64>,
    pub half_p50_ms: Option<f64>,
    pub half_p99_ms: Option<f64>,
    pub get_cart_p50_ms: Option<f64>,
    /// Statehouse's records per transaction in its closed loop (the processor's counters).
    pub statehouse_records_per_transaction: Option<f64>,
    /// The floor's records/s at that batch size (interpolated in the floor's batch sweep).
    pub floor_at_statehouse_batch: Option<f64>,
    /// Statehouse closed-loop maximum ÷ the floor at the same records per transaction.
    pub vs_floor_same_batch: Option<f64>,
    /// Server CPU per command in the closed loop (every process but the load generator).
    pub statehouse_cpu_ms_per_command: Option<f64>,
    pub lwt_cpu_ms_per_command: Option<f64>,
    /// Statehouse ÷ LWT server CPU per command in the closed loop.
    pub cpu_per_command_vs_lwt: Option<f64>,
    /// The floor's mean records per transaction in its natural-batch closed loop (same clients
    /// and partitions), and Statehouse's ÷ it.
    pub floor_records_per_transaction: Option<f64>,
    pub batch_vs_floor: Option<f64>,
    /// The share of the processor's CPU spent in the kernel (closed loop).
    pub processor_kernel_share: Option<f64>,
    /// The LWT baseline's p99 at 50% of its own maximum, and Statehouse's ÷ it.
    pub lwt_half_p99_ms: Option<f64>,
    pub half_p99_vs_lwt: Option<f64>,
    /// The LWT baseline's GetCart p50 under the mix (a plain read of its row), and
    /// Statehouse's ÷ it.
    pub lwt_get_cart_p50_ms: Option<f64>,
    pub get_cart_vs_lwt: Option<f64>,
    /// The closed-loop maxima (commands/s) and the floor's records/s the ratios come from.
    pub statehouse_closed: Option<f64>,
    pub plain_closed: Option<f64>,
    pub lwt_closed: Option<f64>,
    pub floor_records_per_s: Option<f64>,
}

impl Ratios {
    /// Every figure with its name, in report order (the rows of [`Rounds`]).
    pub fn named(&self) -> Vec<(&'static str, Option<f64>)> {
        let mut r = self.clone();
        r.fields_mut().into_iter().map(|(n, v)| (n, *v)).collect()
    }

    /// Every figure with its name, to be set.
    pub fn fields_mut(&mut self) -> Vec<(&'static str, &mut Option<f64>)> {
        vec![
            (
                "Statehouse ÷ baseline-plain, max at p99 ≤ SLO",
                &mut self.vs_plain_at_slo,
            ),
            (
                "Statehouse ÷ baseline-lwt, max at p99 ≤ SLO",
                &mut self.vs_lwt_at_slo,
            ),
            (
                "Statehouse ÷ baseline-plain, closed-loop max",
                &mut self.vs_plain_closed,
            ),
            (
                "Statehouse ÷ baseline-lwt, closed-loop max",
                &mut self.vs_lwt_closed,
            ),
            (
                "Statehouse ÷ Kafka floor (natural batch)",
                &mut self.vs_floor,
            ),
            (
                "Statehouse ÷ Kafka floor at Statehouse's batch size",
                &mut self.vs_floor_same_batch,
            ),
            (
                "Statehouse records per transaction (closed loop)",
                &mut self.statehouse_records_per_transaction,
            ),
            (
                "floor records/s at that batch size",
                &mut self.floor_at_statehouse_batch,
            ),
            (
                "Kafka floor records per transaction (natural batch)",
                &mut self.floor_records_per_transaction,
            ),
            (
                "Statehouse ÷ floor, records per transaction",
                &mut self.batch_vs_floor,
            ),
            (
                "processor kernel share of its CPU (closed loop)",
                &mut self.processor_kernel_share,
            ),
            (
                "Statehouse server CPU ms per command (closed loop)",
                &mut self.statehouse_cpu_ms_per_command,
            ),
            (
                "LWT server CPU ms per command (closed loop)",
                &mut self.lwt_cpu_ms_per_command,
            ),
            (
                "Statehouse ÷ LWT CPU per command (closed loop)",
                &mut self.cpu_per_command_vs_lwt,
            ),
            (
                "Statehouse closed-loop max (commands/s)",
                &mut self.statehouse_closed,
            ),
            (
                "baseline-plain closed-loop max (commands/s)",
                &mut self.plain_closed,
            ),
            (
                "baseline-lwt closed-loop max (commands/s)",
                &mut self.lwt_closed,
            ),
            (
                "Kafka floor, natural batch (records/s)",
                &mut self.floor_records_per_s,
            ),
            ("Statehouse p50 at 50% of max (ms)", &mut self.half_p50_ms),
            ("Statehouse p99 at 50% of max (ms)", &mut self.half_p99_ms),
            ("LWT p99 at 50% of its max (ms)", &mut self.lwt_half_p99_ms),
            (
                "Statehouse ÷ LWT, p99 at 50% of each max",
                &mut self.half_p99_vs_lwt,
            ),
            ("Statehouse GetCart p50 (ms)", &mut self.get_cart_p50_ms),
            ("LWT GetCart p50 (ms)", &mut self.lwt_get_cart_p50_ms),
            ("Statehouse ÷ LWT, GetCart p50", &mut self.get_cart_vs_lwt),
        ]
    }
}

/// What a run measured, for the targets that depend on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// `es-counter` or `shopping-cart`, uniform keys.
    Uniform,
    /// Hot keys (Zipf).
    Zipf,
    /// `cart-large`.
    CartLarge,
}

impl Workload {
    pub fn of(scenario: &str, settings: &BTreeMap<String, String>) -> Self {
        if scenario == "cart-large" {
            Workload::CartLarge
        } else if settings.get("keys").is_some_and(|k| k.starts_with("zipf")) {
            Workload::Zipf
        } else {
            Workload::Uniform
        }
    }
}

impl Ratios {
    /// The targets of performance round 2 (issue 12) that this workload measures, checked
    /// against these figures.
    pub fn checks(&self, workload: Workload) -> Vec<Check> {
        let r = self;
        let f2 = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v:.2}"));
        let at_least = |figure: &str, value: Option<f64>, bound: f64| Check {
            figure: figure.into(),
            value: f2(value),
            target: format!("≥ {bound}"),
            met: value.is_some_and(|v| v >= bound),
        };
        let at_most = |figure: &str, value: Option<f64>, bound: f64| Check {
            figure: figure.into(),
            value: f2(value),
            target: format!("≤ {bound}"),
            met: value.is_some_and(|v| v <= bound),
        };
        let mut checks = match workload {
            Workload::Uniform => vec![at_least(
                "closed-loop max, Statehouse ÷ LWT baseline",
                r.vs_lwt_closed,
                1.5,
            )],
            Workload::Zipf => vec![at_least(
                "Zipf 1.1 closed-loop max, Statehouse ÷ LWT baseline",
                r.vs_lwt_closed,
                3.0,
            )],
            Workload::CartLarge => vec![
                at_least(
                    "cart-large closed-loop max, Statehouse ÷ LWT baseline",
                    r.vs_lwt_closed,
                    3.0,
                ),
                at_least(
                    "cart-large closed-loop max, Statehouse ÷ plain baseline",
                    r.vs_plain_closed,
                    1.0,
                ),
            ],
        };
        checks.extend([
            at_least(
                "max ÷ Kafka floor (same record size, clients, partitions)",
                r.vs_floor,
                0.6,
            ),
            at_least(
                "records per transaction ÷ the floor's at the same clients",
                r.batch_vs_floor,
                0.8,
            ),
            at_most(
                "total CPU per command (all processes), Statehouse ÷ LWT",
                r.cpu_per_command_vs_lwt,
                0.7,
            ),
            at_most(
                "processor kernel share of its CPU",
                r.processor_kernel_share,
                0.35,
            ),
            at_most(
                "p99 at 50% of max, Statehouse ÷ LWT at its own 50%",
                r.half_p99_vs_lwt,
                0.5,
            ),
            at_most(
                "GetCart p50 under the mix, Statehouse ÷ baseline read",
                r.get_cart_vs_lwt,
                0.6,
            ),
        ]);
        checks
    }
}

/// The targets table under the heading `title`.
fn write_checks(md: &mut String, title: &str, checks: &[Check]) {
    let _ = writeln!(
        md,
        "\n## {title}\n\n| figure | value | target | met |\n|---|---|---|---|"
    );
    for c in checks {
        let met = if c.met { "yes" } else { "**no**" };
        let _ = writeln!(md, "| {} | {} | {} | {met} |", c.figure, c.value, c.target);
    }
}

/// The median of some values and their range.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// How many values (rounds that measured the figure).
    pub n: usize,
}

impl Spread {
    /// `None` for no values; the median of an even count is the mean of the middle two.
    pub fn of(values: &[f64]) -> Option<Self> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Self {
            median,
            min: v[0],
            max: v[n - 1],
            n,
        })
    }
}

/// One target of the issue and whether it was met.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Check {
    pub figure: String,
    pub value: String,
    pub target: String,
    pub met: bool,
}

/// Everything `cargo xtask bench` measured in one run.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Bench {
    pub scenario: String,
    pub timestamp: String,
    pub machine: Machine,
    pub settings: BTreeMap<String, String>,
    pub targets: Vec<sweep::Result>,
    pub floor: Option<floor::Result>,
    pub processes: Vec<ProcessStat>,
    /// Selected figures from the processor's `/metrics` at the end of its phase.
    pub processor_metrics: BTreeMap<String, f64>,
    pub ratios: Ratios,
    pub checks: Vec<Check>,
    /// False when a correctness check of Statehouse or the LWT baseline failed.
    pub valid: bool,
    pub notes: Vec<String>,
}

fn target<'a>(targets: &'a [sweep::Result], name: &str) -> Option<&'a sweep::Result> {
    targets.iter().find(|t| t.options.target == name)
}

fn div(a: f64, b: f64) -> Option<f64> {
    (b > 0.0).then(|| a / b)
}

impl Bench {
    /// Compute the ratios, checks and validity from the measurements.
    pub fn finish(&mut self) {
        let sh = target(&self.targets, "statehouse").map(|t| t.summary.clone());
        let plain = target(&self.targets, "baseline-plain").map(|t| t.summary.clone());
        let lwt = target(&self.targets, "baseline-lwt").map(|t| t.summary.clone());
        let mut r = Ratios {
            statehouse_closed: sh.as_ref().map(|s| s.closed_max_throughput),
            plain_closed: plain.as_ref().map(|s| s.closed_max_throughput),
            lwt_closed: lwt.as_ref().map(|s| s.closed_max_throughput),
            floor_records_per_s: self.floor.as_ref().map(|f| f.outcome.records_per_s),
            ..Ratios::default()
        };
        if let Some(sh) = &sh {
            if let Some(p) = &plain {
                r.vs_plain_at_slo = div(sh.max_throughput_at_slo, p.max_throughput_at_slo);
                r.vs_plain_closed = div(sh.closed_max_throughput, p.closed_max_throughput);
            }
            if let Some(l) = &lwt {
                r.vs_lwt_at_slo = div(sh.max_throughput_at_slo, l.max_throughput_at_slo);
                r.vs_lwt_closed = div(sh.closed_max_throughput, l.closed_max_throughput);
            }
            if let Some(f) = &self.floor {
                r.vs_floor = div(sh.closed_max_throughput, f.outcome.records_per_s);
            }
            r.half_p50_ms = Some(sh.half_p50_ms);
            r.half_p99_ms = Some(sh.half_p99_ms);
            r.get_cart_p50_ms = sh.get_cart_p50_ms;
            if let Some(l) = &lwt {
                r.lwt_half_p99_ms = Some(l.half_p99_ms);
                r.half_p99_vs_lwt = div(sh.half_p99_ms, l.half_p99_ms);
                r.lwt_get_cart_p50_ms = l.get_cart_p50_ms;
                r.get_cart_vs_lwt = sh
                    .get_cart_p50_ms
                    .zip(l.get_cart_p50_ms)
                    .and_then(|(a, b)| div(a, b));
            }
        }
        let closed = |name: &str| target(&self.targets, name).and_then(sweep::Result::closed_usage);
        if let Some(u) = closed("statehouse") {
            r.statehouse_records_per_transaction = u.records_per_transaction();
            r.statehouse_cpu_ms_per_command = u.server_cpu_ms_per_command();
            r.processor_kernel_share = u.kernel_share("processor");
        }
        r.floor_records_per_transaction = self.floor.as_ref().map(|f| f.outcome.mean_batch_records);
        r.batch_vs_floor = r
            .statehouse_records_per_transaction
            .zip(r.floor_records_per_transaction)
            .and_then(|(a, b)| div(a, b));
        r.lwt_cpu_ms_per_command =
            closed("baseline-lwt").and_then(StepUsage::server_cpu_ms_per_command);
        r.cpu_per_command_vs_lwt = r
            .statehouse_cpu_ms_per_command
            .zip(r.lwt_cpu_ms_per_command)
            .and_then(|(a, b)| div(a, b));
        if let (Some(f), Some(batch)) = (&self.floor, r.statehouse_records_per_transaction) {
            let points: Vec<(f64, f64)> = f
                .batch_sweep
                .iter()
                .filter_map(|p| Some((p.fixed_batch? as f64, p.records_per_s)))
                .collect();
            if let Some((at, outside)) = floor::at_batch(&points, batch) {
                r.floor_at_statehouse_batch = Some(at);
                if outside {
                    self.notes.push(format!(
                        "Statehouse's {batch:.1} records per transaction is outside the floor's batch sweep; the nearest point was used"
                    ));
                }
                if let Some(sh) = &sh {
                    r.vs_floor_same_batch = div(sh.closed_max_throughput, at);
                }
            }
        }
        let checks = r.checks(Workload::of(&self.scenario, &self.settings));
        self.ratios = r;
        self.checks = checks;
        self.valid = true;
        for t in &self.targets {
            if let Some(v) = &t.verification
                && !v.ok
            {
                if t.options.target == "baseline-plain" {
                    self.notes.push(format!(
                        "baseline-plain lost {} acknowledged increments (expected: plain read-modify-write has lost updates under concurrency)",
                        v.lost
                    ));
                } else {
                    self.valid = false;
                    self.notes.push(format!(
                        "INVALID: {} failed its correctness check: {} acknowledged increments lost, {} entities over-counted, {} unreadable",
                        t.options.target, v.lost, v.phantom_entities, v.read_errors
                    ));
                }
            }
        }
    }

    /// The Markdown summary.
    pub fn markdown(&self, svg_name: Option<&str>) -> String {
        let mut md = String::new();
        let _ = writeln!(md, "# Benchmark `{}` — {}\n", self.scenario, self.timestamp);
        if !self.valid {
            let _ = writeln!(
                md,
                "**This run is INVALID** (a correctness check failed).\n"
            );
        }
        let m = &self.machine;
        let _ = writeln!(
            md,
            "Machine: {} cores ({}), {:.1} GiB, Linux {}. Everything (Kafka, Cassandra, Statehouse, baselines, load generator) shares these cores.\n",
            m.cores, m.cpu, m.memory_gib, m.kernel
        );
        let _ = writeln!(md, "Settings:\n");
        for (k, v) in &self.settings {
            let _ = writeln!(md, "* {k}: {v}");
        }
        write_checks(&mut md, "Targets", &self.checks);
        let r = &self.ratios;
        let f2 = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v:.2}×"));
        let _ = writeln!(
            md,
            "\n## Ratios\n\n| ratio | at p99 ≤ SLO (open loop) | closed loop, same C |\n|---|---|---|\n| Statehouse ÷ baseline-plain | {} | {} |\n| Statehouse ÷ baseline-lwt | {} | {} |\n| Statehouse ÷ Kafka floor | — | {} |",
            f2(r.vs_plain_at_slo),
            f2(r.vs_plain_closed),
            f2(r.vs_lwt_at_slo),
            f2(r.vs_lwt_closed),
            f2(r.vs_floor)
        );
        if let Some(v) = r.vs_floor_same_batch {
            let _ = writeln!(
                md,
                "| Statehouse ÷ Kafka floor at Statehouse's batch ({:.2} records per transaction: floor {:.0} records/s) | — | {v:.2}× |",
                r.statehouse_records_per_transaction.unwrap_or(0.0),
                r.floor_at_statehouse_batch.unwrap_or(0.0)
            );
        }
        if let Some(v) = r.cpu_per_command_vs_lwt {
            let _ = writeln!(
                md,
                "| Statehouse ÷ baseline-lwt, server CPU per command (closed loop: {:.3} vs {:.3} ms) | — | {v:.2}× |",
                r.statehouse_cpu_ms_per_command.unwrap_or(0.0),
                r.lwt_cpu_ms_per_command.unwrap_or(0.0)
            );
        }
        let _ = writeln!(md, "\n## Per target\n");
        md.push_str(&summary_table(&self.targets));
        if let Some(f) = &self.floor {
            let o = &f.outcome;
            let _ = writeln!(
                md,
                "\n## Kafka floor\n\n{} partitions, {} clients, {} B records, max-records {}: **{:.0} records/s**, {} transactions, mean batch {:.1} records; per record p50 {:.2} / p99 {:.2} ms; commit p50 {:.2} / p99 {:.2} ms; failed transactions {}.",
                f.options.partitions,
                f.options.clients,
                o.record_bytes,
                f.options.max_records,
                o.records_per_s,
                o.transactions,
                o.mean_batch_records,
                o.command_latency.p50_ms,
                o.command_latency.p99_ms,
                o.commit_latency.p50_ms,
                o.commit_latency.p99_ms,
                o.failed_transactions
            );
            md.push_str(&floor_sweep_table(f));
        }
        md.push_str(&usage_tables(&self.targets));
        if !self.processes.is_empty() {
            let _ = writeln!(
                md,
                "\n## CPU and memory per process\n\n| phase | process | CPU s | CPU ms / 1,000 commands | peak RSS (MiB) |\n|---|---|---|---|---|"
            );
            for p in &self.processes {
                let _ = writeln!(
                    md,
                    "| {} | {} | {:.2} | {:.1} | {:.0} |",
                    p.phase,
                    p.process,
                    p.cpu_s,
                    p.cpu_ms_per_1000,
                    p.peak_rss_kib as f64 / 1024.0
                );
            }
        }
        if !self.processor_metrics.is_empty() {
            let _ = writeln!(md, "\n## Processor metrics at the end of its phase\n");
            for (k, v) in &self.processor_metrics {
                let _ = writeln!(md, "* `{k}` = {v:.4}");
            }
        }
        for t in &self.targets {
            let _ = writeln!(md, "\n## Sweep: {}\n", t.options.target);
            md.push_str(&steps_table(t));
        }
        if let Some(svg) = svg_name {
            let _ = writeln!(md, "\n![latency vs throughput]({svg})");
        }
        for t in &self.targets {
            if t.summary.max_throughput_at_slo == 0.0 {
                let _ = writeln!(
                    md,
                    "\n{}: no open-loop step kept up with p99 ≤ {} ms, so its throughput at equal p99 is 0 (ratios against it are not meaningful; see the closed-loop column).",
                    t.options.target, t.summary.slo_p99_ms
                );
            }
        }
        if !self.notes.is_empty() {
            let _ = writeln!(md, "\n## Notes\n");
            for n in &self.notes {
                let _ = writeln!(md, "* {n}");
            }
        }
        md
    }
}

/// Several rounds of one bench, the peers in a rotated order each round.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Rounds {
    pub scenario: String,
    pub timestamp: String,
    pub rounds: Vec<Bench>,
    /// Per figure of [`Ratios::named`] that some round measured: median and spread.
    pub spreads: Vec<(String, Spread)>,
    /// The medians, as ratios (what the targets are checked against).
    pub medians: Ratios,
    pub checks: Vec<Check>,
    /// False when any round is invalid.
    pub valid: bool,
}

impl Rounds {
    /// Combine finished rounds.
    pub fn new(scenario: String, timestamp: String, rounds: Vec<Bench>) -> Self {
        let mut medians = Ratios::default();
        let mut spreads = Vec::new();
        for (i, (name, slot)) in medians.fields_mut().into_iter().enumerate() {
            let values: Vec<f64> = rounds
                .iter()
                .filter_map(|b| b.ratios.named()[i].1)
                .collect();
            if let Some(spread) = Spread::of(&values) {
                *slot = Some(spread.median);
                spreads.push((name.to_string(), spread));
            }
        }
        let workload = Workload::of(
            &scenario,
            rounds.first().map_or(&BTreeMap::new(), |b| &b.settings),
        );
        Self {
            checks: medians.checks(workload),
            scenario,
            timestamp,
            valid: rounds.iter().all(|b| b.valid),
            rounds,
            spreads,
            medians,
        }
    }

    /// The round whose Statehouse closed-loop maximum is the median (lower middle), the one
    /// whose plot stands for the run; 0 without Statehouse.
    pub fn median_round(&self) -> usize {
        let mut by: Vec<(usize, f64)> = self
            .rounds
            .iter()
            .enumerate()
            .filter_map(|(i, b)| {
                Some((
                    i,
                    target(&b.targets, "statehouse")?
                        .summary
                        .closed_max_throughput,
                ))
            })
            .collect();
        by.sort_by(|a, b| a.1.total_cmp(&b.1));
        by.get(by.len().saturating_sub(1) / 2)
            .map_or(0, |(i, _)| *i)
    }

    /// The Markdown report: targets and ratios over the rounds, then every round in full.
    pub fn markdown(&self, svg_name: Option<&str>) -> String {
        let mut md = String::new();
        let n = self.rounds.len();
        let _ = writeln!(
            md,
            "# Benchmark `{}` — {} ({n} round{})\n",
            self.scenario,
            self.timestamp,
            if n == 1 { "" } else { "s" }
        );
        if !self.valid {
            let _ = writeln!(
                md,
                "**This run is INVALID** (a correctness check failed in some round).\n"
            );
        }
        if let Some(first) = self.rounds.first() {
            let m = &first.machine;
            let _ = writeln!(
                md,
                "Machine: {} cores ({}), {:.1} GiB, Linux {}. Everything (Kafka, Cassandra, Statehouse, baselines, load generator) shares these cores.\n\nSettings:\n",
                m.cores, m.cpu, m.memory_gib, m.kernel
            );
            for (k, v) in first.settings.iter().filter(|(k, _)| *k != PEER_ORDER) {
                let _ = writeln!(md, "* {k}: {v}");
            }
        }
        let _ = writeln!(md, "\nOrder of the peers:\n");
        for (i, b) in self.rounds.iter().enumerate() {
            let order = b.settings.get(PEER_ORDER).map_or("—", String::as_str);
            let _ = writeln!(md, "* round {}: {order}", i + 1);
        }
        write_checks(&mut md, "Targets (median over the rounds)", &self.checks);
        let rounds_header: String = (1..=n).map(|i| format!(" round {i} |")).collect();
        let _ = writeln!(
            md,
            "\n## Ratios over the rounds\n\n| figure | median | min – max |{rounds_header}\n|---|---|---|{}",
            "---|".repeat(n)
        );
        for (name, spread) in &self.spreads {
            let per_round: String = self
                .rounds
                .iter()
                .map(|b| {
                    let v = b.ratios.named().into_iter().find(|(k, _)| k == name);
                    format!(
                        " {} |",
                        v.and_then(|(_, v)| v).map_or("—".into(), fmt_figure)
                    )
                })
                .collect();
            let _ = writeln!(
                md,
                "| {name} | **{}** | {} – {} |{per_round}",
                fmt_figure(spread.median),
                fmt_figure(spread.min),
                fmt_figure(spread.max)
            );
        }
        if let Some(svg) = svg_name {
            let _ = writeln!(
                md,
                "\n![latency vs throughput, round {}]({svg})",
                self.median_round() + 1
            );
        }
        for (i, b) in self.rounds.iter().enumerate() {
            let _ = writeln!(md, "\n# Round {}\n", i + 1);
            for line in b.markdown(None).lines().skip(1) {
                // One heading level down, under the round's.
                if line.starts_with('#') {
                    let _ = writeln!(md, "#{line}");
                } else {
                    let _ = writeln!(md, "{line}");
                }
            }
        }
        md
    }
}

/// The setting that records the order in which a round ran the peers.
pub const PEER_ORDER: &str = "peer order";

fn fmt_figure(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// The floor at fixed records per transaction.
pub fn floor_sweep_table(f: &floor::Result) -> String {
    if f.batch_sweep.is_empty() {
        return String::new();
    }
    let mut md = String::from(
        "\nAt a fixed batch size (every transaction exactly k records, closed loop):\n\n| records per transaction | clients | records/s | transactions | commit p50 | commit p99 | record p50 | record p99 |\n|---|---|---|---|---|---|---|---|\n",
    );
    for p in &f.batch_sweep {
        let _ = writeln!(
            md,
            "| {} | {} | {:.0} | {} | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms |",
            p.fixed_batch.unwrap_or(0),
            p.clients,
            p.records_per_s,
            p.transactions,
            p.commit_latency.p50_ms,
            p.commit_latency.p99_ms,
            p.command_latency.p50_ms,
            p.command_latency.p99_ms
        );
    }
    md
}

/// Per target, one row per step: commands, records per transaction and CPU per command of
/// each process (milliseconds), sampled around the step.
pub fn usage_tables(targets: &[sweep::Result]) -> String {
    let mut md = String::new();
    for t in targets.iter().filter(|t| !t.usage.is_empty()) {
        let processes: Vec<&String> = {
            let mut p: Vec<&String> = t
                .usage
                .iter()
                .flat_map(|u| u.cpu_s.keys())
                .filter(|n| *n != LOAD_GENERATOR)
                .collect();
            p.sort();
            p.dedup();
            p
        };
        let _ = writeln!(
            md,
            "\n## CPU per step: {} (ms of CPU per command, warm-up included)\n",
            t.options.target
        );
        let _ = writeln!(
            md,
            "| step | commands | records / transaction | {} | **servers** | {LOAD_GENERATOR} |",
            processes
                .iter()
                .map(|p| p.as_str())
                .collect::<Vec<_>>()
                .join(" | ")
        );
        let _ = writeln!(
            md,
            "|---|---|---|{}---|---|",
            "---|".repeat(processes.len())
        );
        let ms = |v: Option<f64>| v.map_or("—".to_string(), |v| format!("{v:.3}"));
        for u in &t.usage {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | **{}** | {} |",
                u.label,
                u.commands,
                u.records_per_transaction()
                    .map_or("—".to_string(), |v| format!("{v:.2}")),
                processes
                    .iter()
                    .map(|p| ms(u.cpu_ms_per_command(p)))
                    .collect::<Vec<_>>()
                    .join(" | "),
                ms(u.server_cpu_ms_per_command()),
                ms(u.cpu_ms_per_command(LOAD_GENERATOR))
            );
        }
    }
    md
}

/// One row per target: the headline figures of each sweep.
pub fn summary_table(targets: &[sweep::Result]) -> String {
    let mut md = String::from(
        "| target | closed max (C) | closed p99 | max at p99 ≤ SLO | 50% rate | p50 @50% | p99 @50% | GetCart p50 | errors | correctness |\n|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for t in targets {
        let s = &t.summary;
        let errors: u64 = std::iter::once(&t.closed)
            .chain(&t.steps)
            .chain(&t.mix)
            .map(Phase::error_count)
            .sum();
        let verification = t.verification.as_ref().map_or("not checked".into(), |v| {
            format!(
                "{} ({} acked, {} counted, {} lost)",
                if v.ok { "ok" } else { "FAILED" },
                v.acknowledged_increments,
                v.counted,
                v.lost
            )
        });
        let _ = writeln!(
            md,
            "| {} | {:.0}/s ({}) | {:.2} ms | {:.0}/s (≤ {:.0} ms) | {:.0}/s | {:.2} ms | {:.2} ms | {} | {} | {} |",
            t.options.target,
            s.closed_max_throughput,
            t.options.clients,
            s.closed_p99_ms,
            s.max_throughput_at_slo,
            s.slo_p99_ms,
            s.half_rate,
            s.half_p50_ms,
            s.half_p99_ms,
            s.get_cart_p50_ms
                .map_or("—".into(), |v| format!("{v:.2} ms")),
            errors,
            verification
        );
    }
    md
}

/// Every phase of one sweep.
pub fn steps_table(t: &sweep::Result) -> String {
    let mut md = String::from(
        "| phase | offered | achieved | p50 | p90 | p99 | p99.9 | max | errors |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    for p in std::iter::once(&t.closed).chain(&t.steps).chain(&t.mix) {
        let errors = if p.errors.is_empty() {
            "0".to_string()
        } else {
            p.errors
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(
            md,
            "| {} | {} | {:.0}/s | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {} |",
            p.label,
            p.offered_rate
                .map_or(format!("C={}", p.clients.unwrap_or(0)), |r| format!(
                    "{r:.0}/s"
                )),
            p.throughput,
            p.latency.p50_ms,
            p.latency.p90_ms,
            p.latency.p99_ms,
            p.latency.p999_ms,
            p.latency.max_ms,
            errors
        );
        if p.methods.len() > 1 {
            for (name, m) in &p.methods {
                let _ = writeln!(
                    md,
                    "| ↳ {name} | | {} ok | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | |",
                    m.count, m.p50_ms, m.p90_ms, m.p99_ms, m.p999_ms, m.max_ms
                );
            }
        }
    }
    md
}

const COLORS: &[&str] = &["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"];

/// Latency (p50 solid, p99 dashed; log scale) against achieved throughput of each target's
/// open-loop sweep.
pub fn svg(targets: &[sweep::Result], title: &str) -> String {
    let (w, h) = (860.0, 520.0);
    let (left, right, top, bottom) = (80.0, 200.0, 50.0, 60.0);
    let pw = w - left - right;
    let ph = h - top - bottom;
    let points = |t: &sweep::Result| -> Vec<(f64, f64, f64)> {
        let mut v: Vec<_> = t
            .steps
            .iter()
            .filter(|p| p.ok > 0)
            .map(|p| (p.throughput, p.latency.p50_ms, p.latency.p99_ms))
            .collect();
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        v
    };
    let all: Vec<(f64, f64, f64)> = targets.iter().flat_map(points).collect();
    let xmax = nice_ceiling(all.iter().map(|p| p.0).fold(1.0, f64::max) * 1.05);
    let ymax_raw = all.iter().map(|p| p.2).fold(1.0, f64::max);
    let ymin_raw = all
        .iter()
        .map(|p| p.1)
        .fold(f64::INFINITY, f64::min)
        .min(1.0);
    let (lo, hi) = (
        ymin_raw.max(0.01).log10().floor(),
        ymax_raw.log10().ceil().max(1.0),
    );
    let x = |v: f64| left + v / xmax * pw;
    let y = |ms: f64| top + ph - (ms.max(10f64.powf(lo)).log10() - lo) / (hi - lo) * ph;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="24" font-size="15" text-anchor="middle">{}</text>"#,
        left + pw / 2.0,
        xml(title)
    );
    // Grid and ticks.
    for i in 0..=5 {
        let v = xmax * f64::from(i) / 5.0;
        let _ = writeln!(
            s,
            r##"<line x1="{0:.1}" y1="{1:.1}" x2="{0:.1}" y2="{2:.1}" stroke="#ddd"/><text x="{0:.1}" y="{3:.1}" text-anchor="middle">{4:.0}</text>"##,
            x(v),
            top,
            top + ph,
            top + ph + 18.0,
            v
        );
    }
    let mut e = lo;
    while e <= hi {
        for m in [1.0, 2.0, 5.0] {
            let v = m * 10f64.powf(e);
            if v < 10f64.powf(lo) || v > 10f64.powf(hi) {
                continue;
            }
            let _ = writeln!(
                s,
                r##"<line x1="{left}" y1="{0:.1}" x2="{1:.1}" y2="{0:.1}" stroke="{2}"/><text x="{3:.1}" y="{4:.1}" text-anchor="end">{5}</text>"##,
                y(v),
                left + pw,
                if m == 1.0 { "#ccc" } else { "#eee" },
                left - 6.0,
                y(v) + 4.0,
                fmt_ms(v)
            );
        }
        e += 1.0;
    }
    let _ = writeln!(
        s,
        r##"<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>"##
    );
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">achieved throughput (commands/s)</text>"#,
        left + pw / 2.0,
        h - 15.0
    );
    let _ = writeln!(
        s,
        r#"<text transform="translate(20 {}) rotate(-90)" text-anchor="middle">latency (ms, log scale): p50 solid, p99 dashed</text>"#,
        top + ph / 2.0
    );
    for (i, t) in targets.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let pts = points(t);
        for (idx, dash) in [(1usize, ""), (2, r#" stroke-dasharray="6 4""#)] {
            let path: Vec<String> = pts
                .iter()
                .map(|p| {
                    let v = if idx == 1 { p.1 } else { p.2 };
                    format!("{:.1},{:.1}", x(p.0), y(v))
                })
                .collect();
            let _ = writeln!(
                s,
                r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"{dash}/>"#,
                path.join(" ")
            );
            for p in &pts {
                let v = if idx == 1 { p.1 } else { p.2 };
                let _ = writeln!(
                    s,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{color}"/>"#,
                    x(p.0),
                    y(v)
                );
            }
        }
        let ly = top + 20.0 + 22.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<line x1="{0:.1}" y1="{1:.1}" x2="{2:.1}" y2="{1:.1}" stroke="{color}" stroke-width="3"/><text x="{3:.1}" y="{4:.1}">{5}</text>"#,
            left + pw + 15.0,
            ly,
            left + pw + 40.0,
            left + pw + 46.0,
            ly + 4.0,
            xml(&t.options.target)
        );
    }
    s.push_str("</svg>\n");
    s
}

fn nice_ceiling(v: f64) -> f64 {
    let e = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if m * e >= v {
            return m * e;
        }
    }
    10.0 * e
}

fn fmt_ms(v: f64) -> String {
    if v >= 1.0 {
        format!("{v:.0}")
    } else {
        format!("{v}")
    }
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Selected figures from a Prometheus text exposition: every sample whose name starts with one
/// of `prefixes` (labels dropped, values of the same name summed).
pub fn metrics_of(text: &str, prefixes: &[&str]) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    // Histogram buckets (cumulative counts by upper bound), summed over the series of a name.
    let mut buckets: BTreeMap<String, BTreeMap<OrderedBound, f64>> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((name_labels, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = match name_labels.split_once('{') {
            Some((n, l)) => (n, l.trim_end_matches('}')),
            None => (name_labels, ""),
        };
        if !prefixes.iter().any(|p| name.starts_with(p)) {
            continue;
        }
        if let Some(base) = name.strip_suffix("_bucket") {
            let le = labels
                .split(',')
                .find_map(|l| l.strip_prefix("le="))
                .map(|v| v.trim_matches('"'));
            let bound = match le {
                Some("+Inf") => f64::INFINITY,
                Some(v) => match v.parse::<f64>() {
                    Ok(b) => b,
                    Err(_) => continue,
                },
                None => continue,
            };
            *buckets
                .entry(base.to_string())
                .or_default()
                .entry(OrderedBound(bound))
                .or_insert(0.0) += value;
            continue;
        }
        // Keep quantile labels apart; sum everything else (e.g. over partitions).
        match labels.split(',').find_map(|l| l.strip_prefix("quantile=")) {
            // Quantiles of several series cannot be added: keep the largest.
            Some(q) => {
                let e = out
                    .entry(format!("{name}{{quantile={q}}}"))
                    .or_insert(f64::MIN);
                *e = e.max(value);
            }
            None => *out.entry(name.to_string()).or_insert(0.0) += value,
        }
    }
    // Summed buckets can be added (unlike quantiles): estimate p50 and p99 from them.
    for (name, cumulative) in buckets {
        for q in [0.5, 0.99] {
            if let Some(v) = bucket_quantile(&cumulative, q) {
                out.insert(format!("{name}{{quantile=\"{q}\"}}"), v);
            }
        }
    }
    out
}

/// A histogram bucket's upper bound, ordered (bounds are never NaN).
#[derive(Debug, Clone, Copy, PartialEq)]
struct OrderedBound(f64);

impl Eq for OrderedBound {}

impl PartialOrd for OrderedBound {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for OrderedBound {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// Quantile `q` of cumulative bucket counts, interpolated linearly inside its bucket (as
/// Prometheus' `histogram_quantile` does); the highest finite bound if it falls in `+Inf`.
fn bucket_quantile(cumulative: &BTreeMap<OrderedBound, f64>, q: f64) -> Option<f64> {
    let total = *cumulative.values().last()?;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for (&OrderedBound(upper), &count) in cumulative {
        if count >= rank {
            if upper.is_infinite() {
                return Some(lower);
            }
            let inside = count - below;
            return Some(if inside > 0.0 {
                lower + (upper - lower) * (rank - below) / inside
            } else {
                upper
            });
        }
        lower = upper;
        below = count;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_come_from_buckets_summed_over_series() {
        let text = "\
# TYPE statehouse_writer_commit_seconds histogram
statehouse_writer_commit_seconds_bucket{partition=\"0\",le=\"0.01\"} 50
statehouse_writer_commit_seconds_bucket{partition=\"0\",le=\"0.1\"} 100
statehouse_writer_commit_seconds_bucket{partition=\"0\",le=\"+Inf\"} 100
statehouse_writer_commit_seconds_bucket{partition=\"1\",le=\"0.01\"} 0
statehouse_writer_commit_seconds_bucket{partition=\"1\",le=\"0.1\"} 97
statehouse_writer_commit_seconds_bucket{partition=\"1\",le=\"+Inf\"} 100
statehouse_writer_commit_seconds_sum{partition=\"0\"} 2
statehouse_writer_commit_seconds_count{partition=\"0\"} 100
statehouse_writer_commit_seconds_count{partition=\"1\"} 100
";
        let m = metrics_of(text, &["statehouse_writer_commit_seconds"]);
        // 200 samples: 50 ≤ 10 ms, 147 more ≤ 100 ms, 3 above (in +Inf).
        let p50 = m["statehouse_writer_commit_seconds{quantile=\"0.5\"}"];
        assert!((p50 - (0.01 + 0.09 * 50.0 / 147.0)).abs() < 1e-9, "{p50}");
        let p99 = m["statehouse_writer_commit_seconds{quantile=\"0.99\"}"];
        assert_eq!(p99, 0.1, "in +Inf: the highest finite bound");
        assert_eq!(m["statehouse_writer_commit_seconds_count"], 200.0);
        assert!(!m.keys().any(|k| k.contains("_bucket")));
    }
}
