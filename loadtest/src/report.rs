//! Reports: the combined bench report (JSON + Markdown), per-sweep Markdown, and the
//! latency-vs-throughput SVG (written by hand: a few polylines need no plotting library).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::driver::Phase;
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
        let mut r = Ratios::default();
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
        }
        let f2 = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v:.2}"));
        let mut checks = Vec::new();
        let baseline_best = [r.vs_plain_at_slo, r.vs_lwt_at_slo]
            .into_iter()
            .flatten()
            .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.min(v))));
        checks.push(Check {
            figure: "max throughput at equal p99, Statehouse ÷ baseline (worst of plain, LWT)"
                .into(),
            value: f2(baseline_best),
            target: "≥ 5×".into(),
            met: baseline_best.is_some_and(|v| v >= 5.0),
        });
        checks.push(Check {
            figure: "Statehouse ÷ Kafka transactional floor (max throughput)".into(),
            value: f2(r.vs_floor),
            target: "≥ 0.7".into(),
            met: r.vs_floor.is_some_and(|v| v >= 0.7),
        });
        checks.push(Check {
            figure: "latency at 50% of max, p50".into(),
            value: format!("{} ms", f2(r.half_p50_ms)),
            target: "≤ 3 ms".into(),
            met: r.half_p50_ms.is_some_and(|v| v <= 3.0),
        });
        checks.push(Check {
            figure: "latency at 50% of max, p99".into(),
            value: format!("{} ms", f2(r.half_p99_ms)),
            target: "≤ 15 ms".into(),
            met: r.half_p99_ms.is_some_and(|v| v <= 15.0),
        });
        checks.push(Check {
            figure: "GetCart on an active entity, p50".into(),
            value: format!("{} ms", f2(r.get_cart_p50_ms)),
            target: "≤ 1 ms".into(),
            met: r.get_cart_p50_ms.is_some_and(|v| v <= 1.0),
        });
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
        let _ = writeln!(
            md,
            "\n## Targets\n\n| figure | value | target | met |\n|---|---|---|---|"
        );
        for c in &self.checks {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} |",
                c.figure,
                c.value,
                c.target,
                if c.met { "yes" } else { "**no**" }
            );
        }
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
        }
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
    out
}
