//! R15 of the reliability plan: a soak. Three processors; first their capacity is measured
//! (closed loop, 20 s), then clients read and write carts at half of it while processor 1 or 2
//! (in turn) is killed with `kill -9` every kill interval and started again 2 s later.
//! Processor 0 and the gateway are never killed: their resident anonymous memory (heap) is
//! sampled every 5 s,
//! and its growth after the warm-up (the first half of the run: the entities' idempotency
//! windows fill and the partitions settle after the first kills) is what a leak would show.
//!
//! Checks: the journal counters are 0 and the history is linearizable. The memory growth is
//! printed; the documented run (`STATEHOUSE_R15_SECS=1800`, 30 min, a kill every 60 s) also
//! asserts it is at most 5%, and `STATEHOUSE_R15_PLOT=<file.svg>` draws the samples
//! (`docs/reliability.md`). CI runs 2 min with a kill every 30 s.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use statehouse_e2e::driver::{self, Driver};
use statehouse_e2e::recorder::{self, Recorder};

use statehouse_test_support::stack::{Options, Stack};
use statehouse_test_support::user_function::Kind;

const PARTITIONS: u32 = 12;
const CARTS: usize = 200;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// Resident anonymous memory of process `pid` (heap and anonymous mappings), bytes: where a
/// leak shows. The file-backed part of the resident set (the executable's pages, faulted in as
/// new code paths run — a debug binary is large) grows for a while too, bounded by the file.
fn rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("RssAnon:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Mean of `samples` whose time lies in `[from, to)` (seconds).
fn mean(samples: &[(f64, u64)], from: f64, to: f64) -> f64 {
    let picked: Vec<u64> = samples
        .iter()
        .filter(|(t, _)| *t >= from && *t < to)
        .map(|(_, v)| *v)
        .collect();
    picked.iter().sum::<u64>() as f64 / picked.len().max(1) as f64
}

/// Samples of one process: (seconds since the start, bytes).
type Samples = [(f64, u64)];

/// An SVG line plot of the samples (MiB over minutes), one line per (name, colour, samples).
fn plot(series: &[(&str, &str, &Samples)], seconds: f64) -> String {
    let (w, h, pad) = (720.0, 320.0, 48.0);
    let top = series
        .iter()
        .flat_map(|(_, _, s)| s.iter().map(|(_, v)| *v as f64 / 1_048_576.0))
        .fold(1.0f64, f64::max)
        * 1.1;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    let _ = writeln!(
        svg,
        "<text x=\"{pad}\" y=\"20\">resident anonymous memory (MiB) over {:.0} min of the R15 soak</text>",
        seconds / 60.0
    );
    let _ = writeln!(
        svg,
        "<line x1=\"{pad}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/><line x1=\"{pad}\" y1=\"{pad}\" x2=\"{pad}\" y2=\"{}\" stroke=\"black\"/>",
        h - pad,
        w - pad,
        h - pad,
        h - pad
    );
    let _ = writeln!(
        svg,
        "<text x=\"4\" y=\"{}\">{top:.0}</text><text x=\"4\" y=\"{}\">0</text><text x=\"{}\" y=\"{}\">{:.0} min</text>",
        pad + 4.0,
        h - pad,
        w - pad - 30.0,
        h - pad + 16.0,
        seconds / 60.0
    );
    for (i, (name, colour, samples)) in series.iter().enumerate() {
        let points: Vec<String> = samples
            .iter()
            .map(|(t, v)| {
                let x = pad + (w - 2.0 * pad) * t / seconds.max(1.0);
                let y = h - pad - (h - 2.0 * pad) * (*v as f64 / 1_048_576.0) / top;
                format!("{x:.1},{y:.1}")
            })
            .collect();
        let _ = writeln!(
            svg,
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"1.5\" points=\"{}\"/>",
            points.join(" ")
        );
        let _ = writeln!(
            svg,
            "<text x=\"{}\" y=\"{}\" fill=\"{colour}\">{name}</text>",
            w - 200.0,
            40.0 + 16.0 * i as f64
        );
    }
    svg.push_str("</svg>\n");
    svg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r15_soak_with_kills_loses_nothing_and_memory_stays_flat() {
    let seconds = env_u64("STATEHOUSE_R15_SECS").unwrap_or(120);
    let kill_every = Duration::from_secs(
        env_u64("STATEHOUSE_R15_KILL_EVERY_SECS").unwrap_or(if seconds >= 600 { 60 } else { 30 }),
    );
    let seed = env_u64("STATEHOUSE_R15_SEED").unwrap_or(15);
    let mut options = Options::new(Kind::GoShoppingCart);
    options.partitions = PARTITIONS;
    options.processors = 3;
    let mut stack = Stack::start_ready(options);
    driver::until_all_answer(&stack.gateway_addr, CARTS, Duration::from_secs(120)).await;

    // Capacity: closed loop, 16 clients, 20 s.
    let probe_started = Instant::now();
    let probe = Driver::start(
        &stack.gateway_addr,
        driver::Options {
            clients: 16,
            carts: CARTS,
            ..driver::Options::default()
        },
        seed,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(20)).await;
    let capacity = probe.acked() as f64 / 20.0;
    let probe_history = probe.stop().await;
    let probe_ended = Instant::now();
    let clients = 8;
    let rate = (capacity * 0.5 / clients as f64).max(1.0);
    println!(
        "R15: capacity {capacity:.0} writes/s; soak at {:.0} ops/s for {seconds} s, a kill every {kill_every:?}",
        rate * clients as f64
    );
    let recorder = Recorder::start(
        &stack.gateway_addr,
        recorder::Options {
            clients,
            carts: CARTS,
            rate,
            reads: 0.2,
            ..recorder::Options::default()
        },
        seed,
    )
    .await;

    let started = Instant::now();
    let (mut processor_mem, mut gateway_mem) = (Vec::new(), Vec::new());
    let mut next_kill = started + kill_every;
    let mut kills = 0usize;
    while started.elapsed() < Duration::from_secs(seconds) {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let t = started.elapsed().as_secs_f64();
        processor_mem.push((t, rss(stack.pods[0].processor.pid())));
        gateway_mem.push((t, rss(stack.gateway.pid())));
        if Instant::now() >= next_kill {
            let victim = 1 + kills % 2;
            stack.pods[victim].processor.kill9();
            tokio::time::sleep(Duration::from_secs(2)).await;
            stack.pods[victim].processor.restart();
            kills += 1;
            next_kill += kill_every;
            println!(
                "R15 {t:.0} s: processor {victim} killed and restarted (#{kills}); {} writes acknowledged; processor 0 {:.1} MiB, gateway {:.1} MiB",
                recorder.acked(),
                processor_mem.last().map_or(0, |s| s.1) as f64 / 1_048_576.0,
                gateway_mem.last().map_or(0, |s| s.1) as f64 / 1_048_576.0,
            );
        }
    }
    driver::until_all_answer(&stack.gateway_addr, CARTS, Duration::from_secs(120)).await;
    let mut recorded = recorder.stop().await;
    recorded.absorb(probe_history, probe_started, probe_ended);
    let (report, verdict) = recorded.check(&stack, PARTITIONS).await;

    // Mean memory just after the warm-up (50–60% of the run) and at the end (the last 10%).
    let total = seconds as f64;
    let window = |samples: &Samples| {
        (
            mean(samples, total * 0.5, total * 0.6),
            mean(samples, total * 0.9, total + 1.0),
        )
    };
    let growth = |(after, end): (f64, f64)| (end - after) / after.max(1.0);
    let (processor, gateway) = (window(&processor_mem), window(&gateway_mem));
    println!(
        "R15 ({seconds} s, {kills} kills, seed {seed}): {report}\nR15 linearizability: {verdict}\nR15 memory growth after warm-up: processor 0 {:+.1}% ({:.1} → {:.1} MiB), gateway {:+.1}%",
        growth(processor) * 100.0,
        processor.0 / 1_048_576.0,
        processor.1 / 1_048_576.0,
        growth(gateway) * 100.0
    );
    if let Ok(path) = std::env::var("STATEHOUSE_R15_PLOT") {
        let svg = plot(
            &[
                ("processor 0 (never killed)", "#1f77b4", &processor_mem),
                ("gateway", "#d62728", &gateway_mem),
            ],
            total,
        );
        std::fs::write(&path, svg).expect("writing the memory plot");
        println!("R15 memory plot: {path}");
    }
    assert!(kills >= 2, "only {kills} kills");
    recorder::assert_clean(&report, &verdict);
    if seconds >= 600 {
        // ≤ 5%, or ≤ 1 MiB: a heap of ~9 MiB (the gateway's) swings by about that much
        // between samples minutes apart.
        let flat = |w: (f64, f64)| growth(w) <= 0.05 || w.1 - w.0 <= 1_048_576.0;
        assert!(
            flat(processor) && flat(gateway),
            "memory grew after the warm-up: processor {:+.1}%, gateway {:+.1}%",
            growth(processor) * 100.0,
            growth(gateway) * 100.0
        );
    }
}
