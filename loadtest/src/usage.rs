//! What each step of a sweep cost: CPU seconds of every process serving it and of the load
//! generator (`utime + stime` from `/proc/<pid>/stat`), and for Statehouse the processor's
//! records and transactions (its `/metrics` counters), sampled around the step.
//!
//! A whole-phase average hides that the closed loop, the light open-loop steps and the mix
//! batch differently and cost differently per command; sampling each step shows where the CPU
//! per command and the records per transaction were measured.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// The process name under which the load generator's own CPU is reported.
pub const LOAD_GENERATOR: &str = "load generator";

/// What to sample: named pids (the load generator is always added) and the processor's
/// `/metrics` URL, if the target is Statehouse.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Probe {
    pub pids: Vec<(String, u32)>,
    pub metrics_url: Option<String>,
}

/// One sample of the counters.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    cpu_s: BTreeMap<String, f64>,
    kernel_s: BTreeMap<String, f64>,
    writer: Option<(f64, f64)>,
}

/// The cost of one step (its warm-up included: the commands count it too).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct StepUsage {
    /// The phase's label.
    pub label: String,
    /// Commands sent during the step (warm-up included).
    pub commands: u64,
    /// CPU seconds per process, the load generator included.
    pub cpu_s: BTreeMap<String, f64>,
    /// Of which in the kernel (`stime`), per process.
    #[serde(default)]
    pub kernel_s: BTreeMap<String, f64>,
    /// Records and transactions the processor's writers committed during the step.
    pub writer_records: Option<f64>,
    pub writer_transactions: Option<f64>,
}

impl StepUsage {
    /// Records per committed transaction, if the processor was scraped.
    pub fn records_per_transaction(&self) -> Option<f64> {
        let t = self.writer_transactions?;
        (t > 0.0).then(|| self.writer_records.unwrap_or(0.0) / t)
    }

    /// CPU milliseconds per command of the servers: every process but the load generator.
    pub fn server_cpu_ms_per_command(&self) -> Option<f64> {
        let cpu: f64 = self
            .cpu_s
            .iter()
            .filter(|(name, _)| *name != LOAD_GENERATOR)
            .map(|(_, s)| s)
            .sum();
        (self.commands > 0).then(|| cpu * 1000.0 / self.commands as f64)
    }

    /// The share of one process's CPU spent in the kernel.
    pub fn kernel_share(&self, process: &str) -> Option<f64> {
        let total = *self.cpu_s.get(process)?;
        (total > 0.0).then(|| self.kernel_s.get(process).copied().unwrap_or(0.0) / total)
    }

    /// CPU milliseconds per command of one process.
    pub fn cpu_ms_per_command(&self, process: &str) -> Option<f64> {
        let cpu = self.cpu_s.get(process)?;
        (self.commands > 0).then(|| cpu * 1000.0 / self.commands as f64)
    }
}

impl Probe {
    /// Parse `name=pid,name=pid`.
    pub fn parse_pids(spec: &str) -> anyhow::Result<Vec<(String, u32)>> {
        spec.split(',')
            .filter(|s| !s.trim().is_empty())
            .map(|s| {
                let (name, pid) = s
                    .split_once('=')
                    .ok_or_else(|| anyhow::anyhow!("{s:?} is not name=pid"))?;
                Ok((name.trim().to_string(), pid.trim().parse()?))
            })
            .collect()
    }

    /// Read every counter now.
    pub async fn sample(&self) -> Sample {
        let (mut cpu_s, mut kernel_s) = (BTreeMap::new(), BTreeMap::new());
        let named = self
            .pids
            .iter()
            .map(|(name, pid)| (name.clone(), pid.to_string()))
            .chain([(LOAD_GENERATOR.to_string(), "self".to_string())]);
        for (name, pid) in named {
            if let Some((user, system)) = cpu_times(&pid) {
                cpu_s.insert(name.clone(), user + system);
                kernel_s.insert(name, system);
            }
        }
        let writer = match &self.metrics_url {
            Some(url) => {
                let url = url.clone();
                tokio::task::spawn_blocking(move || writer_counters(&http_get(&url)?))
                    .await
                    .ok()
                    .flatten()
            }
            None => None,
        };
        Sample {
            cpu_s,
            kernel_s,
            writer,
        }
    }
}

impl Sample {
    /// The cost of the step between `self` (before) and `after`.
    pub fn until(&self, after: &Sample, label: &str, commands: u64) -> StepUsage {
        let delta = |before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>| {
            after
                .iter()
                .filter_map(|(name, a)| Some((name.clone(), (a - before.get(name)?).max(0.0))))
                .collect()
        };
        let cpu_s = delta(&self.cpu_s, &after.cpu_s);
        let kernel_s = delta(&self.kernel_s, &after.kernel_s);
        let (writer_records, writer_transactions) = match (self.writer, after.writer) {
            (Some((r0, t0)), Some((r1, t1))) => (Some(r1 - r0), Some(t1 - t0)),
            _ => (None, None),
        };
        StepUsage {
            label: label.to_string(),
            commands,
            cpu_s,
            kernel_s,
            writer_records,
            writer_transactions,
        }
    }
}

/// `utime + stime` of `/proc/<pid>/stat` in seconds (`pid` may be `self`).
pub fn cpu_seconds(pid: &str) -> Option<f64> {
    cpu_times(pid).map(|(user, system)| user + system)
}

/// `utime` and `stime` of `/proc/<pid>/stat` in seconds. Clock ticks are 100 per second on
/// every Linux this runs on (`getconf CLK_TCK`).
pub fn cpu_times(pid: &str) -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which is in parentheses and may hold spaces).
    let f: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime / 100.0, stime / 100.0))
}

/// `statehouse_writer_records_total` and `statehouse_writer_transactions_total` (summed over
/// partitions) from a Prometheus text exposition; 0 while absent (a processor exports them from
/// its first transaction on, and the sample before the first step comes earlier).
pub fn writer_counters(metrics: &str) -> Option<(f64, f64)> {
    let m = crate::report::metrics_of(
        metrics,
        &[
            "statehouse_writer_records_total",
            "statehouse_writer_transactions_total",
        ],
    );
    let get = |name: &str| m.get(name).copied().unwrap_or(0.0);
    Some((
        get("statehouse_writer_records_total"),
        get("statehouse_writer_transactions_total"),
    ))
}

/// `GET http://host:port/path` as HTTP/1.0 (so the body is never chunked): the body of a 200
/// answer.
pub fn http_get(url: &str) -> Option<String> {
    let rest = url.strip_prefix("http://")?;
    let (host, path) = rest.split_once('/').map_or((rest, ""), |(h, p)| (h, p));
    let mut s = TcpStream::connect(host).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(format!("GET /{path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
        .ok()?;
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    let (head, body) = answer.split_once("\r\n\r\n")?;
    (head.split_whitespace().nth(1)? == "200").then(|| body.to_string())
}
