//! The overload run (R10, `docs/security.md`, "Load shedding"): what adaptive admission does
//! when clients send twice what the system can take, and how fast it is healthy again.
//!
//! 1. closed loop with C clients: the capacity (commands/s);
//! 2. open loop at a light rate (`unloaded-fraction` of it): the unloaded p99;
//! 3. open loop at `overload-factor` × capacity: how many commands are refused
//!    (RESOURCE_EXHAUSTED), the accepted ones' p99 against the unloaded one, the servers' peak
//!    memory (sampled every 200 ms);
//! 4. open loop at `after-fraction` × capacity, in 5 s steps until its last three seconds are
//!    healthy (at most `after-s`): the recovery time — the seconds after the load dropped until
//!    the first second from which on nothing is refused or fails and the p99 stays within twice
//!    the unloaded one;
//! 5. the correctness check: every acknowledged increment is in its counter (nothing accepted
//!    was lost).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::driver::{self, Mode, Phase, Second, Spec, Target, Workload};
use crate::keys::{Distribution, Keys};
use crate::scenario::{self, Acks, Verification};

/// Seconds of each step of the light phase.
const AFTER_STEP_S: f64 = 5.0;

/// Settings of an overload run (also the arguments of `statehouse-loadtest overload`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, clap::Args)]
pub struct Options {
    /// The gateway.
    #[arg(long = "target", default_value = "http://127.0.0.1:9000")]
    pub uri: String,
    /// The scenario (`scenario::by_name`).
    #[arg(long, default_value = "es-counter")]
    pub scenario: String,
    #[arg(long, default_value_t = 1000)]
    pub entities: u64,
    /// Clients of the closed-loop phase that measures capacity.
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    #[arg(long, default_value_t = 10.0)]
    pub closed_s: f64,
    /// The unloaded phase's rate, a fraction of the measured capacity.
    #[arg(long, default_value_t = 0.3)]
    pub unloaded_fraction: f64,
    #[arg(long, default_value_t = 10.0)]
    pub unloaded_s: f64,
    /// The overload phase's rate, a multiple of the measured capacity.
    #[arg(long, default_value_t = 2.0)]
    pub overload_factor: f64,
    #[arg(long, default_value_t = 60.0)]
    pub overload_s: f64,
    /// The rate after the overload, a fraction of the measured capacity.
    #[arg(long, default_value_t = 0.5)]
    pub after_fraction: f64,
    #[arg(long, default_value_t = 30.0)]
    pub after_s: f64,
    #[arg(long, default_value_t = 8192)]
    pub max_in_flight: usize,
    #[arg(long, default_value_t = 10_000)]
    pub timeout_ms: u64,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    #[arg(skip)]
    pub run_id: String,
    /// Processes whose memory is sampled: `(name, pid)`.
    #[arg(skip)]
    pub pids: Vec<(String, u32)>,
    #[arg(skip)]
    pub progress: bool,
}

/// What an overload run measured.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Report {
    pub options: Options,
    pub closed: Phase,
    pub unloaded: Phase,
    pub overload: Phase,
    pub after: Phase,
    /// Share of the overload phase's commands refused as overload.
    pub refused_share: f64,
    /// Accepted p99 under overload / unloaded p99.
    pub p99_ratio: f64,
    /// Seconds after the load dropped until the system was healthy (see the module docs);
    /// `None` if it never was within the phase.
    pub recovery_s: Option<u64>,
    /// Highest resident memory of each sampled process during the overload, KiB.
    pub peak_rss_kib: BTreeMap<String, u64>,
    /// Resident memory of each before the overload, KiB.
    pub before_rss_kib: BTreeMap<String, u64>,
    pub verification: Verification,
}

impl Report {
    /// The figures, one per line, for people.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let mut line = |s: String| {
            out.push_str(&s);
            out.push('\n');
        };
        line(format!(
            "capacity (closed loop, C={}): {:.0} commands/s, p99 {:.1} ms",
            self.options.clients, self.closed.throughput, self.closed.latency.p99_ms
        ));
        line(format!(
            "unloaded ({:.0}/s): p99 {:.1} ms",
            self.unloaded.offered_rate.unwrap_or(0.0),
            self.unloaded.latency.p99_ms
        ));
        let o = &self.overload;
        line(format!(
            "overload ({:.0}/s for {:.0} s): {:.0} accepted/s, {:.1} % refused, accepted p99 {:.1} ms = {:.2}× unloaded, other errors {}",
            o.offered_rate.unwrap_or(0.0),
            o.duration_s,
            o.throughput,
            100.0 * self.refused_share,
            o.latency.p99_ms,
            self.p99_ratio,
            o.error_count() - refused(o)
        ));
        for (name, peak) in &self.peak_rss_kib {
            line(format!(
                "peak memory {name}: {:.1} MiB (before: {:.1} MiB)",
                *peak as f64 / 1024.0,
                self.before_rss_kib.get(name).copied().unwrap_or(0) as f64 / 1024.0
            ));
        }
        line(match self.recovery_s {
            Some(s) => format!(
                "after the load dropped to {:.0}/s: healthy after {s} s",
                self.after.offered_rate.unwrap_or(0.0)
            ),
            None => "after the load dropped: not healthy within the phase".into(),
        });
        line(format!(
            "check: {} counters, {} acknowledged increments, {} lost, {} phantom, {} unreadable",
            self.verification.entities_checked,
            self.verification.acknowledged_increments,
            self.verification.lost,
            self.verification.phantom_entities,
            self.verification.read_errors
        ));
        out
    }
}

fn refused(phase: &Phase) -> u64 {
    phase
        .errors
        .iter()
        .filter(|(k, _)| k.ends_with(" ResourceExhausted"))
        .map(|(_, v)| v)
        .sum()
}

/// The first second from which every later second of `timeline` is healthy: nothing refused
/// or failed, and a p99 within `p99_bound_ms`.
pub fn recovery(timeline: &[Second], p99_bound_ms: f64) -> Option<u64> {
    let healthy = |s: &Second| s.shed == 0 && s.failed == 0 && s.p99_ms <= p99_bound_ms;
    let unhealthy_until = timeline.iter().rposition(|s| !healthy(s));
    match unhealthy_until {
        None => Some(0),
        Some(i) if i + 1 < timeline.len() => Some(i as u64 + 1),
        Some(_) => None,
    }
}

/// Resident memory of `pid`, KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Run the overload measurement.
pub async fn run(o: &Options) -> anyhow::Result<Report> {
    let scenario: Arc<dyn scenario::Scenario> = scenario::by_name(&o.scenario)
        .ok_or_else(|| anyhow::anyhow!("unknown scenario {:?}", o.scenario))?
        .into();
    let target = Target::connect(&o.uri, o.connections).await?;
    let keys = Arc::new(Keys::new(o.entities, Distribution::Uniform));
    let acks = Arc::new(Acks::new(keys.len()));
    let workload = Workload {
        scenario,
        keys: Arc::clone(&keys),
        run_id: o.run_id.as_str().into(),
        acks: Arc::clone(&acks),
        sent: Arc::new(AtomicU64::new(0)),
    };
    let spec = |label: &str, mode: Mode, warmup: f64, duration: f64, seed: u64| Spec {
        label: label.to_string(),
        mode,
        warmup: Duration::from_secs_f64(warmup),
        duration: Duration::from_secs_f64(duration),
        max_in_flight: o.max_in_flight,
        timeout: Duration::from_millis(o.timeout_ms),
        seed,
        progress: o.progress,
    };
    let open = |rate: f64| Mode::Open {
        rate: rate.max(1.0),
        poisson: true,
    };
    let closed = driver::run(
        &target,
        &workload,
        &spec(
            "closed",
            Mode::Closed { clients: o.clients },
            2.0,
            o.closed_s,
            o.seed,
        ),
    )
    .await?;
    let capacity = closed.throughput.max(1.0);
    let unloaded = driver::run(
        &target,
        &workload,
        &spec(
            "unloaded",
            open(o.unloaded_fraction * capacity),
            1.0,
            o.unloaded_s,
            o.seed + 1,
        ),
    )
    .await?;

    let before_rss_kib: BTreeMap<String, u64> = o
        .pids
        .iter()
        .filter_map(|(name, pid)| Some((name.clone(), rss_kib(*pid)?)))
        .collect();
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (pids, sampling) = (o.pids.clone(), Arc::clone(&sampling));
        tokio::spawn(async move {
            let mut peak: BTreeMap<String, u64> = BTreeMap::new();
            while sampling.load(Ordering::Relaxed) {
                for (name, pid) in &pids {
                    if let Some(kib) = rss_kib(*pid) {
                        let p = peak.entry(name.clone()).or_default();
                        *p = (*p).max(kib);
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            peak
        })
    };
    let overload = driver::run(
        &target,
        &workload,
        &spec(
            "overload",
            open(o.overload_factor * capacity),
            0.0,
            o.overload_s,
            o.seed + 2,
        ),
    )
    .await;
    sampling.store(false, Ordering::Relaxed);
    let peak_rss_kib = sampler.await?;
    let overload = overload?;
    // The light load runs in steps of `AFTER_STEP_S` until its last seconds are healthy (or
    // `after-s` passed): how long that took is the recovery, measured, not assumed.
    let bound = 2.0 * unloaded.latency.p99_ms.max(1.0);
    let mut after: Option<Phase> = None;
    let mut step = 0;
    while after.as_ref().is_none_or(|a| a.duration_s < o.after_s) {
        let phase = driver::run(
            &target,
            &workload,
            &spec(
                "after",
                open(o.after_fraction * capacity),
                0.0,
                AFTER_STEP_S.min(o.after_s),
                o.seed + 3 + step,
            ),
        )
        .await?;
        step += 1;
        let merged = match after.take() {
            None => phase,
            Some(mut a) => {
                a.duration_s += phase.duration_s;
                a.measured += phase.measured;
                a.ok += phase.ok;
                for (k, v) in phase.errors {
                    *a.errors.entry(k).or_default() += v;
                }
                a.timeline.extend(phase.timeline);
                a.throughput = a.ok as f64 / a.duration_s.max(1e-9);
                // The light phase's latency figures are its last step's.
                a.latency = phase.latency;
                a
            }
        };
        let healthy_tail = merged.timeline.len() >= 3
            && recovery(&merged.timeline, bound)
                .is_some_and(|r| (r as usize) + 3 <= merged.timeline.len());
        after = Some(merged);
        if healthy_tail {
            break;
        }
    }
    let after = after.expect("at least one step ran");
    let verification = scenario::verify(target.channel(0), &o.run_id, &acks).await;
    let refused_share = refused(&overload) as f64 / overload.measured.max(1) as f64;
    let p99_ratio = overload.latency.p99_ms / unloaded.latency.p99_ms.max(1e-3);
    let recovery_s = recovery(&after.timeline, bound);
    Ok(Report {
        options: o.clone(),
        closed,
        unloaded,
        overload,
        after,
        refused_share,
        p99_ratio,
        recovery_s,
        peak_rss_kib,
        before_rss_kib,
        verification,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn second(shed: u64, failed: u64, p99_ms: f64) -> Second {
        Second {
            ok: 10,
            shed,
            failed,
            p99_ms,
        }
    }

    #[test]
    fn recovery_is_the_first_second_from_which_all_are_healthy() {
        let ok = second(0, 0, 5.0);
        assert_eq!(recovery(&[ok.clone(), ok.clone()], 10.0), Some(0));
        assert_eq!(
            recovery(
                &[
                    second(3, 0, 5.0),
                    ok.clone(),
                    second(0, 0, 50.0),
                    ok.clone()
                ],
                10.0
            ),
            Some(3)
        );
        assert_eq!(recovery(&[ok.clone(), second(0, 1, 5.0)], 10.0), None);
        assert_eq!(recovery(&[], 10.0), Some(0));
    }
}
