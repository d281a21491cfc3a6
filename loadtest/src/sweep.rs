//! A whole measurement of one target: the closed-loop maximum with C clients, an open-loop
//! sweep of rates (fractions of that maximum), an optional read/write mix at one rate, and the
//! correctness check. Around each step it samples what the step cost ([`crate::usage`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::driver::{self, Mode, Phase, Spec, Target, Workload};
use crate::keys::{Distribution, Keys};
use crate::scenario::{self, Acks, Verification};
use crate::usage::{Probe, StepUsage};

/// Settings of a sweep.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Options {
    /// Name of the target in reports (`statehouse`, `baseline-plain`, …).
    pub target: String,
    pub uri: String,
    pub scenario: String,
    pub entities: u64,
    pub distribution: Distribution,
    pub clients: usize,
    pub connections: usize,
    pub warmup_s: f64,
    pub closed_s: f64,
    pub step_s: f64,
    /// Open-loop rates as fractions of the closed-loop maximum (ignored when `rates` is set).
    pub fractions: Vec<f64>,
    /// Explicit open-loop rates (commands/s).
    pub rates: Vec<f64>,
    pub poisson: bool,
    /// The p99 bound of "maximum throughput at equal p99".
    pub slo_p99_ms: f64,
    pub max_in_flight: usize,
    pub timeout_ms: u64,
    /// Also run this scenario open-loop at `mix_fraction` of the maximum (e.g. the shopping-cart
    /// mix, for GetCart on active entities).
    pub mix_scenario: Option<String>,
    pub mix_fraction: f64,
    pub verify: bool,
    pub progress: bool,
    pub seed: u64,
    pub run_id: String,
    /// Only the closed loop: no open-loop steps, no mix, no check (a warm-up load).
    #[serde(default)]
    pub closed_only: bool,
    /// Processes whose CPU is sampled around each step, and the processor's `/metrics`.
    #[serde(default)]
    pub probe: Probe,
}

/// The headline figures of a sweep.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Summary {
    pub closed_max_throughput: f64,
    pub closed_p99_ms: f64,
    /// Highest open-loop throughput whose p99 ≤ `slo_p99_ms`, that kept up with its offered
    /// rate (≥ 90%) and had < 1% errors; 0 if no step qualified.
    pub max_throughput_at_slo: f64,
    pub slo_p99_ms: f64,
    /// The step at 50% of the closed-loop maximum.
    pub half_rate: f64,
    pub half_p50_ms: f64,
    pub half_p99_ms: f64,
    pub get_cart_p50_ms: Option<f64>,
    pub get_cart_p99_ms: Option<f64>,
    pub commands_sent: u64,
}

/// Everything one sweep measured.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Result {
    pub options: Options,
    pub closed: Phase,
    pub steps: Vec<Phase>,
    pub mix: Option<Phase>,
    pub summary: Summary,
    pub verification: Option<Verification>,
    pub loader_cpu_s: f64,
    pub loader_peak_rss_kib: u64,
    /// What each step cost, in the order closed loop, open-loop steps, mix.
    #[serde(default)]
    pub usage: Vec<StepUsage>,
    /// Commands of the unmeasured fill (`cart-large`), and its seconds.
    #[serde(default)]
    pub fill_commands: u64,
    #[serde(default)]
    pub fill_s: f64,
}

impl Result {
    /// The usage of the closed loop (the first step).
    pub fn closed_usage(&self) -> Option<&StepUsage> {
        self.usage.first()
    }
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

/// Run the sweep.
pub async fn run(o: &Options) -> anyhow::Result<Result> {
    let scenario: Arc<dyn scenario::Scenario> = scenario::by_name(&o.scenario)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "unknown scenario {:?}; known: {:?}",
                o.scenario,
                scenario::NAMES
            )
        })?
        .into();
    let target = Target::connect(&o.uri, o.connections).await?;
    let keys = Arc::new(Keys::new(o.entities, o.distribution));
    let acks = Arc::new(Acks::new(keys.len()));
    let sent = Arc::new(AtomicU64::new(0));
    let workload = Workload {
        scenario,
        keys: Arc::clone(&keys),
        run_id: o.run_id.as_str().into(),
        acks: Arc::clone(&acks),
        sent: Arc::clone(&sent),
    };
    let spec = |label: String, mode: Mode, warmup: f64, duration: f64, seed: u64| Spec {
        label,
        mode,
        warmup: secs(warmup),
        duration: secs(duration),
        max_in_flight: o.max_in_flight,
        timeout: Duration::from_millis(o.timeout_ms),
        seed,
        progress: o.progress,
    };

    // Large state first (unmeasured; a warm-up load does without).
    let items = workload.scenario.fill_items();
    let (mut fill_commands, mut fill_s) = (0, 0.0);
    if items > 0 && !o.closed_only {
        let started = std::time::Instant::now();
        if o.progress {
            eprintln!(
                "{}: filling {} entities with {items} line items each …",
                o.target, o.entities
            );
        }
        fill_commands = scenario::fill(
            |k| target.channel(k),
            &o.run_id,
            keys.len(),
            items,
            o.clients.max(1) * 4,
        )
        .await?;
        fill_s = started.elapsed().as_secs_f64();
        if o.progress {
            eprintln!(
                "{}: filled in {fill_s:.1} s ({:.0} commands/s)",
                o.target,
                fill_commands as f64 / fill_s.max(1e-9)
            );
        }
    }
    let mut steps_run = Steps {
        probe: &o.probe,
        sent: &sent,
        target: &target,
        usage: Vec::new(),
    };
    let closed = steps_run
        .run(
            &workload,
            spec(
                format!("{} closed C={}", o.target, o.clients),
                Mode::Closed { clients: o.clients },
                o.warmup_s.max(2.0),
                o.closed_s,
                o.seed,
            ),
        )
        .await?;
    let max = closed.throughput.max(1.0);
    let rates: Vec<(f64, Option<f64>)> = if o.rates.is_empty() {
        o.fractions.iter().map(|f| (f * max, Some(*f))).collect()
    } else {
        o.rates.iter().map(|r| (*r, None)).collect()
    };
    let rates = if o.closed_only { Vec::new() } else { rates };
    let mut steps = Vec::new();
    for (i, (rate, _)) in rates.iter().enumerate() {
        let phase = steps_run
            .run(
                &workload,
                spec(
                    format!("{} open {:.0}/s", o.target, rate),
                    Mode::Open {
                        rate: *rate,
                        poisson: o.poisson,
                    },
                    o.warmup_s,
                    o.step_s,
                    o.seed.wrapping_add(i as u64 + 1),
                ),
            )
            .await?;
        steps.push(phase);
    }
    let mix = match &o.mix_scenario {
        Some(name) if !o.closed_only => {
            let mix_scenario: Arc<dyn scenario::Scenario> = scenario::by_name(name)
                .ok_or_else(|| anyhow::anyhow!("unknown mix scenario {name:?}"))?
                .into();
            let w = Workload {
                scenario: mix_scenario,
                ..workload.clone()
            };
            let rate = (o.mix_fraction * max).max(1.0);
            Some(
                steps_run
                    .run(
                        &w,
                        spec(
                            format!("{} {name} {rate:.0}/s", o.target),
                            Mode::Open {
                                rate,
                                poisson: o.poisson,
                            },
                            o.warmup_s,
                            o.step_s,
                            o.seed.wrapping_add(1000),
                        ),
                    )
                    .await?,
            )
        }
        _ => None,
    };
    let verification = if o.verify && !o.closed_only {
        Some(scenario::verify(target.channel(0), &o.run_id, &acks).await)
    } else {
        None
    };
    let summary = summarize(
        o,
        &closed,
        &steps,
        &rates,
        mix.as_ref(),
        sent.load(Ordering::Relaxed),
    );
    let (loader_cpu_s, loader_peak_rss_kib) = crate::self_usage();
    Ok(Result {
        options: o.clone(),
        closed,
        steps,
        mix,
        summary,
        verification,
        loader_cpu_s,
        loader_peak_rss_kib,
        usage: steps_run.usage,
        fill_commands,
        fill_s,
    })
}

/// Runs the sweep's steps against one target, sampling what each cost around it.
struct Steps<'a> {
    probe: &'a Probe,
    sent: &'a AtomicU64,
    target: &'a Target,
    usage: Vec<StepUsage>,
}

impl Steps<'_> {
    async fn run(&mut self, workload: &Workload, spec: Spec) -> anyhow::Result<Phase> {
        let (before, sent_before) = (self.probe.sample().await, self.sent.load(Ordering::Relaxed));
        let phase = driver::run(self.target, workload, &spec).await?;
        let after = self.probe.sample().await;
        self.usage.push(before.until(
            &after,
            &phase.label,
            self.sent.load(Ordering::Relaxed) - sent_before,
        ));
        Ok(phase)
    }
}

fn summarize(
    o: &Options,
    closed: &Phase,
    steps: &[Phase],
    rates: &[(f64, Option<f64>)],
    mix: Option<&Phase>,
    commands_sent: u64,
) -> Summary {
    let qualifies = |p: &Phase| {
        let offered = p.offered_rate.unwrap_or(0.0);
        // Business rejections are answers: they count as completed, not as errors.
        let rejected = p.rejections();
        let answered = p.throughput * (p.ok + rejected) as f64 / p.ok.max(1) as f64;
        p.latency.p99_ms <= o.slo_p99_ms
            && answered >= 0.9 * offered
            && ((p.error_count() - rejected) as f64) < 0.01 * p.measured.max(1) as f64
    };
    let max_at_slo = steps
        .iter()
        .filter(|p| qualifies(p))
        .map(|p| p.throughput)
        .fold(0.0, f64::max);
    // The step nearest to 50% of the maximum.
    let half = steps
        .iter()
        .zip(rates)
        .min_by(|(_, (ra, fa)), (_, (rb, fb))| {
            let d = |r: f64, f: Option<f64>| match f {
                Some(f) => (f - 0.5).abs(),
                None => (r / closed.throughput.max(1.0) - 0.5).abs(),
            };
            d(*ra, *fa).total_cmp(&d(*rb, *fb))
        })
        .map(|(p, _)| p);
    // GetCart from the mix, else (a scenario with reads of its own) from the 50% step.
    let get = mix.or(half).and_then(|m| m.methods.get("GetCart"));
    Summary {
        closed_max_throughput: closed.throughput,
        closed_p99_ms: closed.latency.p99_ms,
        max_throughput_at_slo: max_at_slo,
        slo_p99_ms: o.slo_p99_ms,
        half_rate: half.and_then(|p| p.offered_rate).unwrap_or(0.0),
        half_p50_ms: half.map_or(0.0, |p| p.latency.p50_ms),
        half_p99_ms: half.map_or(0.0, |p| p.latency.p99_ms),
        get_cart_p50_ms: get.map(|g| g.p50_ms),
        get_cart_p99_ms: get.map(|g| g.p99_ms),
        commands_sent,
    }
}
