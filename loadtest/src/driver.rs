//! Runs one phase of load: open-loop (constant or Poisson arrivals) or closed-loop (C clients),
//! with warm-up, HdrHistogram latencies per method, throughput and errors by gRPC code.
//!
//! Open loop avoids coordinated omission: a pacer thread computes each command's *intended*
//! send time from the arrival process alone, and latency is measured from that time, so a slow
//! reply that delays later sends (the in-flight bound, a busy client) shows up in their latency
//! instead of silently thinning the load.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use statehouse_schemas::shoppingcart::shopping_cart_client::ShoppingCartClient;
use tokio::sync::Semaphore;
use tonic::transport::{Channel, Endpoint};

use crate::Rng;
use crate::keys::Keys;
use crate::scenario::{self, Acks, Op, Scenario};

/// How load is offered.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    /// `rate` commands per second, evenly spaced or as a Poisson process.
    Open { rate: f64, poisson: bool },
    /// `clients` clients, each sending its next command when the previous one answered.
    Closed { clients: usize },
}

/// One phase.
#[derive(Debug, Clone)]
pub struct Spec {
    pub label: String,
    pub mode: Mode,
    pub warmup: Duration,
    pub duration: Duration,
    /// Bound of commands in flight (open loop): the pacer waits for a slot, and the wait counts
    /// in the latency.
    pub max_in_flight: usize,
    /// Per-command client deadline.
    pub timeout: Duration,
    pub seed: u64,
    pub progress: bool,
}

/// The service under test: a few HTTP/2 connections to one gRPC endpoint.
#[derive(Debug, Clone)]
pub struct Target {
    pub uri: String,
    channels: Vec<Channel>,
}

impl Target {
    pub async fn connect(uri: &str, connections: usize) -> anyhow::Result<Self> {
        let mut channels = Vec::new();
        for _ in 0..connections.max(1) {
            let channel = Endpoint::from_shared(uri.to_string())?
                .tcp_nodelay(true)
                .connect_timeout(Duration::from_secs(5))
                .connect()
                .await
                .map_err(|e| anyhow::anyhow!("connecting to {uri}: {e}"))?;
            channels.push(channel);
        }
        Ok(Self {
            uri: uri.to_string(),
            channels,
        })
    }

    pub fn channel(&self, i: u64) -> Channel {
        self.channels[(i % self.channels.len() as u64) as usize].clone()
    }

    pub fn client(&self, i: u64) -> ShoppingCartClient<Channel> {
        ShoppingCartClient::new(self.channel(i))
    }
}

/// What the phase sends, and where the acknowledgements go.
#[derive(Debug, Clone)]
pub struct Workload {
    pub scenario: Arc<dyn Scenario>,
    pub keys: Arc<Keys>,
    pub run_id: Arc<str>,
    pub acks: Arc<Acks>,
    /// Every command sent (warm-up included), for CPU per command.
    pub sent: Arc<AtomicU64>,
}

/// Latency percentiles of one histogram, in milliseconds.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Percentiles {
    /// From a histogram of microseconds.
    pub fn of(h: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        if h.is_empty() {
            return Self::default();
        }
        Self {
            count: h.len(),
            mean_ms: h.mean() / 1000.0,
            p50_ms: ms(h.value_at_quantile(0.5)),
            p90_ms: ms(h.value_at_quantile(0.9)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

/// The result of one phase.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Phase {
    pub label: String,
    pub scenario: String,
    /// `open` or `closed`.
    pub mode: String,
    /// `constant` or `poisson` (open loop).
    pub arrival: Option<String>,
    pub offered_rate: Option<f64>,
    pub clients: Option<usize>,
    pub warmup_s: f64,
    pub duration_s: f64,
    /// Successful commands per second in the measured window.
    pub throughput: f64,
    /// Commands (any outcome) whose intended send time fell in the measured window.
    pub measured: u64,
    pub ok: u64,
    /// Failed commands by `<method> <gRPC code>`.
    pub errors: BTreeMap<String, u64>,
    /// Every successful command.
    pub latency: Percentiles,
    /// Per method.
    pub methods: BTreeMap<String, Percentiles>,
    /// Second by second (by intended send time, from the start of the measured window).
    #[serde(default)]
    pub timeline: Vec<Second>,
}

/// One second of a phase.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Second {
    /// Successful commands.
    pub ok: u64,
    /// Commands refused as overload (`RESOURCE_EXHAUSTED`).
    pub shed: u64,
    /// Other failures.
    pub failed: u64,
    /// p99 of the successful commands, ms (0 without any).
    pub p99_ms: f64,
}

impl Phase {
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// The sample's business rejection of `RemoveItem` on a cart without the item (gRPC
    /// `UNKNOWN` through Statehouse, `FAILED_PRECONDITION` from the baseline): an answer, not a
    /// failure of the service.
    pub fn rejections(&self) -> u64 {
        self.errors
            .iter()
            .filter(|(k, _)| *k == "RemoveItem Unknown" || *k == "RemoveItem FailedPrecondition")
            .map(|(_, v)| v)
            .sum()
    }
}

struct Recorder {
    measure_from: Instant,
    measure_to: Instant,
    all: Histogram<u64>,
    methods: BTreeMap<&'static str, Histogram<u64>>,
    errors: BTreeMap<String, u64>,
    ok: u64,
    measured: u64,
    last_done: Instant,
    /// Per second of the measured window: ok, shed, failed and the successes' latencies.
    seconds: Vec<(u64, u64, u64, Histogram<u64>)>,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid histogram bounds")
}

impl Recorder {
    fn new(measure_from: Instant, measure_to: Instant) -> Self {
        Self {
            measure_from,
            measure_to,
            all: histogram(),
            methods: BTreeMap::new(),
            errors: BTreeMap::new(),
            ok: 0,
            measured: 0,
            last_done: measure_from,
            seconds: Vec::new(),
        }
    }

    fn record(&mut self, op: Op, intended: Instant, done: Instant, code: Option<String>) {
        if intended < self.measure_from || intended >= self.measure_to {
            return;
        }
        self.measured += 1;
        self.last_done = self.last_done.max(done);
        let second = intended
            .saturating_duration_since(self.measure_from)
            .as_secs() as usize;
        while self.seconds.len() <= second {
            self.seconds.push((0, 0, 0, histogram()));
        }
        let bucket = &mut self.seconds[second];
        match code.as_deref() {
            None => bucket.0 += 1,
            Some("ResourceExhausted") => bucket.1 += 1,
            Some(_) => bucket.2 += 1,
        }
        match code {
            None => {
                self.ok += 1;
                let us = done.saturating_duration_since(intended).as_micros() as u64;
                let us = us.clamp(1, 120_000_000);
                bucket.3.saturating_record(us);
                self.all.saturating_record(us);
                self.methods
                    .entry(op.method())
                    .or_insert_with(histogram)
                    .saturating_record(us);
            }
            Some(code) => {
                *self
                    .errors
                    .entry(format!("{} {code}", op.method()))
                    .or_default() += 1
            }
        }
    }
}

#[derive(Default)]
struct Live {
    ok: AtomicU64,
    failed: AtomicU64,
    in_flight: AtomicU64,
}

/// Run one phase of `workload` against `target`.
pub async fn run(target: &Target, workload: &Workload, spec: &Spec) -> anyhow::Result<Phase> {
    let start = Instant::now() + Duration::from_millis(20);
    let measure_from = start + spec.warmup;
    let measure_to = measure_from + spec.duration;
    let recorder = Arc::new(Mutex::new(Recorder::new(measure_from, measure_to)));
    let live = Arc::new(Live::default());
    let done = Arc::new(AtomicBool::new(false));
    let progress = spec.progress.then(|| {
        tokio::spawn(progress(
            spec.label.clone(),
            start,
            spec.warmup,
            spec.warmup + spec.duration,
            Arc::clone(&live),
            Arc::clone(&done),
        ))
    });

    match spec.mode {
        Mode::Open { rate, poisson } => {
            anyhow::ensure!(rate > 0.0, "the open-loop rate must be positive");
            open_loop(
                target, workload, spec, rate, poisson, start, measure_to, &recorder, &live,
            )
            .await?;
        }
        Mode::Closed { clients } => {
            closed_loop(
                target, workload, spec, clients, start, measure_to, &recorder, &live,
            )
            .await;
        }
    }
    done.store(true, Ordering::Relaxed);
    if let Some(p) = progress {
        let _ = p.await;
    }

    let r = recorder.lock().expect("recorder lock");
    let window = r
        .last_done
        .saturating_duration_since(r.measure_from)
        .max(spec.duration)
        .as_secs_f64();
    let (mode, arrival, offered_rate, clients) = match spec.mode {
        Mode::Open { rate, poisson } => (
            "open",
            Some(if poisson { "poisson" } else { "constant" }.to_string()),
            Some(rate),
            None,
        ),
        Mode::Closed { clients } => ("closed", None, None, Some(clients)),
    };
    let throughput = match spec.mode {
        // Commands intended in the window, over the time they took to complete: an overloaded
        // target finishes late and shows its real capacity.
        Mode::Open { .. } => r.ok as f64 / window,
        Mode::Closed { .. } => r.ok as f64 / spec.duration.as_secs_f64(),
    };
    Ok(Phase {
        label: spec.label.clone(),
        scenario: workload.scenario.name().to_string(),
        mode: mode.into(),
        arrival,
        offered_rate,
        clients,
        warmup_s: spec.warmup.as_secs_f64(),
        duration_s: spec.duration.as_secs_f64(),
        throughput,
        measured: r.measured,
        ok: r.ok,
        errors: r.errors.clone(),
        latency: Percentiles::of(&r.all),
        methods: r
            .methods
            .iter()
            .map(|(k, h)| ((*k).to_string(), Percentiles::of(h)))
            .collect(),
        timeline: r
            .seconds
            .iter()
            .map(|(ok, shed, failed, h)| Second {
                ok: *ok,
                shed: *shed,
                failed: *failed,
                p99_ms: Percentiles::of(h).p99_ms,
            })
            .collect(),
    })
}

/// Send one command and record it.
#[allow(clippy::too_many_arguments)]
async fn one(
    mut client: ShoppingCartClient<Channel>,
    workload: Workload,
    op: Op,
    k: u64,
    intended: Instant,
    timeout: Duration,
    recorder: Arc<Mutex<Recorder>>,
    live: Arc<Live>,
) {
    let entity = scenario::entity_id(&workload.run_id, k);
    workload.sent.fetch_add(1, Ordering::Relaxed);
    let result = tokio::time::timeout(timeout, scenario::call(&mut client, op, entity)).await;
    let now = Instant::now();
    let code = match result {
        Ok(Ok(())) => None,
        Ok(Err(status)) => Some(format!("{:?}", status.code())),
        Err(_) => Some("ClientTimeout".to_string()),
    };
    if op == Op::Increment {
        workload.acks.record(k, code.is_none());
    }
    if code.is_none() {
        live.ok.fetch_add(1, Ordering::Relaxed);
    } else {
        live.failed.fetch_add(1, Ordering::Relaxed);
    }
    recorder
        .lock()
        .expect("recorder lock")
        .record(op, intended, now, code);
}

#[allow(clippy::too_many_arguments)]
async fn open_loop(
    target: &Target,
    workload: &Workload,
    spec: &Spec,
    rate: f64,
    poisson: bool,
    start: Instant,
    measure_to: Instant,
    recorder: &Arc<Mutex<Recorder>>,
    live: &Arc<Live>,
) -> anyhow::Result<()> {
    let slots = spec.max_in_flight.max(1);
    let semaphore = Arc::new(Semaphore::new(slots));
    let handle = tokio::runtime::Handle::current();
    // Commands intended before `measure_to` but not sent by then + this grace count as failed.
    let send_deadline = measure_to + Duration::from_secs(10);
    let (target, workload, recorder, live, sem) = (
        target.clone(),
        workload.clone(),
        Arc::clone(recorder),
        Arc::clone(live),
        Arc::clone(&semaphore),
    );
    let (timeout, seed) = (spec.timeout, spec.seed);
    tokio::task::spawn_blocking(move || {
        let mut rng = Rng::new(seed);
        let mut intended = start;
        let mut i = 0u64;
        while intended < measure_to {
            let now = Instant::now();
            if intended > now {
                std::thread::sleep(intended - now);
            }
            let op = workload.scenario.next_op(&mut rng);
            let k = workload.keys.sample(&mut rng);
            if Instant::now() > send_deadline {
                recorder.lock().expect("recorder lock").record(
                    op,
                    intended,
                    Instant::now(),
                    Some("NotSent".into()),
                );
            } else {
                let Ok(permit) = handle.block_on(Arc::clone(&sem).acquire_owned()) else {
                    break;
                };
                live.in_flight.fetch_add(1, Ordering::Relaxed);
                let fut = one(
                    target.client(i),
                    workload.clone(),
                    op,
                    k,
                    intended,
                    timeout,
                    Arc::clone(&recorder),
                    Arc::clone(&live),
                );
                let live = Arc::clone(&live);
                handle.spawn(async move {
                    fut.await;
                    live.in_flight.fetch_sub(1, Ordering::Relaxed);
                    drop(permit);
                });
            }
            i += 1;
            let gap = if poisson {
                -(1.0 - rng.next_f64()).ln() / rate
            } else {
                1.0 / rate
            };
            intended += Duration::from_secs_f64(gap);
        }
    })
    .await?;
    // Wait for the commands in flight (each is bounded by its timeout).
    let _all = semaphore.acquire_many(slots as u32).await?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn closed_loop(
    target: &Target,
    workload: &Workload,
    spec: &Spec,
    clients: usize,
    start: Instant,
    measure_to: Instant,
    recorder: &Arc<Mutex<Recorder>>,
    live: &Arc<Live>,
) {
    let tasks: Vec<_> = (0..clients.max(1) as u64)
        .map(|c| {
            let (client, workload, recorder, live) = (
                target.client(c),
                workload.clone(),
                Arc::clone(recorder),
                Arc::clone(live),
            );
            let timeout = spec.timeout;
            let mut rng = Rng::new(spec.seed.wrapping_add(c.wrapping_mul(0x5851_F42D)));
            tokio::spawn(async move {
                tokio::time::sleep_until(tokio::time::Instant::from_std(start)).await;
                while Instant::now() < measure_to {
                    let op = workload.scenario.next_op(&mut rng);
                    let k = workload.keys.sample(&mut rng);
                    live.in_flight.fetch_add(1, Ordering::Relaxed);
                    one(
                        client.clone(),
                        workload.clone(),
                        op,
                        k,
                        Instant::now(),
                        timeout,
                        Arc::clone(&recorder),
                        Arc::clone(&live),
                    )
                    .await;
                    live.in_flight.fetch_sub(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
}

/// A progress bar on stderr (a line every 5 s when stderr is not a terminal).
async fn progress(
    label: String,
    start: Instant,
    warmup: Duration,
    total: Duration,
    live: Arc<Live>,
    done: Arc<AtomicBool>,
) {
    let tty = std::io::stderr().is_terminal();
    let tick = if tty { 250 } else { 5000 };
    let mut last_ok = 0;
    let mut last_at = Instant::now();
    loop {
        let stop = done.load(Ordering::Relaxed);
        let elapsed = Instant::now().saturating_duration_since(start);
        let ok = live.ok.load(Ordering::Relaxed);
        let rate = (ok - last_ok) as f64 / last_at.elapsed().as_secs_f64().max(1e-3);
        (last_ok, last_at) = (ok, Instant::now());
        let frac = (elapsed.as_secs_f64() / total.as_secs_f64()).min(1.0);
        let width = 30;
        let filled = (frac * width as f64) as usize;
        let bar: String = "#".repeat(filled) + &"-".repeat(width - filled);
        let stage = if elapsed < warmup {
            "warm-up"
        } else {
            "measure"
        };
        let line = format!(
            "{label:<28} [{bar}] {:>5.1}/{:.0}s {stage:<7} ok {ok:>8} err {:>6} in-flight {:>5} {rate:>8.0}/s",
            elapsed.as_secs_f64().min(total.as_secs_f64()),
            total.as_secs_f64(),
            live.failed.load(Ordering::Relaxed),
            live.in_flight.load(Ordering::Relaxed),
        );
        {
            let mut err = std::io::stderr().lock();
            if tty {
                let _ = write!(err, "\r{line}");
                if stop {
                    let _ = writeln!(err);
                }
            } else {
                let _ = writeln!(err, "{line}");
            }
        }
        if stop {
            return;
        }
        tokio::time::sleep(Duration::from_millis(tick)).await;
    }
}
