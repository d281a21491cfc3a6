//! `cargo xtask fuzz [--seconds N] [TARGET…]`: builds the fuzz targets of `fuzz/` with
//! cargo-fuzz and runs each for a few seconds from its committed corpus (`docs/fuzzing.md`).
//!
//! CI runs this as a smoke test (`ci` step `fuzz`): a crash, a leak of memory past
//! [`RSS_LIMIT_MB`] or an input slower than [`INPUT_TIMEOUT_S`] fails it, with the input
//! left in `fuzz/artifacts/<target>/`. Longer runs are the same command with more seconds.
//!
//! cargo-fuzz passes nightly-only flags (`-Z`); `RUSTC_BOOTSTRAP=1` lets the stable toolchain
//! take them, so CI needs no nightly. Targets are built without a sanitizer: Statehouse has no
//! `unsafe` code of its own, the panics and hangs are what the runs look for, and an ASan build
//! of every dependency would cost CI minutes for little.
//!
//! New inputs a run finds go to a scratch corpus under the target directory, never into
//! `fuzz/corpus/` (what is committed there stays small and reviewed).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::layout::Layout;

/// Memory a run may use (libFuzzer's `-rss_limit_mb`; also the limit of one allocation).
pub(crate) const RSS_LIMIT_MB: u32 = 2048;
/// Seconds one input may take (libFuzzer's `-timeout`): beyond it is a hang.
pub(crate) const INPUT_TIMEOUT_S: u32 = 10;

/// Options of `cargo xtask fuzz`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Args {
    /// Seconds each target runs.
    #[arg(long, default_value_t = 10)]
    pub(crate) seconds: u32,
    /// Only build the targets.
    #[arg(long)]
    pub(crate) build_only: bool,
    /// Build without optimizations (cargo-fuzz `--dev`): a cold build takes about half as long
    /// and runs several times fewer executions per second — what a short CI smoke run wants;
    /// long runs use the default optimized build.
    #[arg(long)]
    pub(crate) dev: bool,
    /// Targets to run (default: every target of `cargo fuzz list`).
    pub(crate) targets: Vec<String>,
}

/// What one run reported (libFuzzer's `-print_final_stats`).
#[derive(Debug, Default)]
struct Stats {
    executions: u64,
    per_second: u64,
    peak_rss_mb: u64,
}

impl Stats {
    fn parse(output: &str) -> Stats {
        let mut stats = Stats::default();
        for line in output.lines() {
            let Some((name, value)) = line.strip_prefix("stat::").and_then(|l| l.split_once(':'))
            else {
                continue;
            };
            let value = value.trim().parse().unwrap_or(0);
            match name.trim() {
                "number_of_executed_units" => stats.executions = value,
                "average_exec_per_sec" => stats.per_second = value,
                "peak_rss_mb" => stats.peak_rss_mb = value,
                _ => {}
            }
        }
        stats
    }
}

fn cargo_fuzz(layout: &Layout) -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .arg("fuzz")
        .env("RUSTC_BOOTSTRAP", "1")
        // The workspace's release profile links with thin LTO: minutes per target binary on a
        // small machine, for nothing a fuzz run needs.
        .env("CARGO_PROFILE_RELEASE_LTO", "false")
        .current_dir(&layout.workspace);
    command
}

/// The flags every `cargo fuzz build` / `run` gets: no sanitizer, debug assertions (overflow
/// checks) on.
const BUILD_FLAGS: [&str; 3] = ["--sanitizer", "none", "--debug-assertions"];

/// Builds the targets, then runs each for `args.seconds`; prints executions per second.
pub(crate) fn run(layout: &Layout, args: &Args) -> Result<()> {
    let targets = if args.targets.is_empty() {
        list(layout)?
    } else {
        args.targets.clone()
    };
    let started = Instant::now();
    let status = cargo_fuzz(layout)
        .arg("build")
        .args(BUILD_FLAGS)
        .args(args.dev.then_some("--dev"))
        .status()
        .context("cannot run `cargo fuzz` (install it: cargo install cargo-fuzz --locked)")?;
    if !status.success() {
        bail!("`cargo fuzz build` failed ({status})");
    }
    println!(
        "==> fuzz targets built in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    if args.build_only {
        return Ok(());
    }
    let scratch = scratch_dir(layout);
    let mut report = Vec::new();
    for target in &targets {
        let stats = run_one(layout, &scratch, target, args)?;
        report.push((target.as_str(), stats));
    }
    println!("\nfuzz summary ({} s each):", args.seconds);
    for (target, stats) in &report {
        println!(
            "  {target:<18} {:>10} execs  {:>7} exec/s  peak {:>5} MB",
            stats.executions, stats.per_second, stats.peak_rss_mb
        );
    }
    Ok(())
}

/// The targets `cargo fuzz list` names.
fn list(layout: &Layout) -> Result<Vec<String>> {
    let output = cargo_fuzz(layout)
        .arg("list")
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run `cargo fuzz list` (install it: cargo install cargo-fuzz --locked)")?;
    if !output.status.success() {
        bail!("`cargo fuzz list` failed ({})", output.status);
    }
    let targets: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    if targets.is_empty() {
        bail!("`cargo fuzz list` names no target");
    }
    Ok(targets)
}

/// Where runs put the inputs they find: under the Cargo target directory, not in the repo.
fn scratch_dir(layout: &Layout) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| layout.workspace.join("target"))
        .join("fuzz-corpus")
}

fn run_one(layout: &Layout, scratch: &std::path::Path, target: &str, args: &Args) -> Result<Stats> {
    let seconds = args.seconds;
    let work = scratch.join(target);
    std::fs::create_dir_all(&work).with_context(|| format!("cannot create {}", work.display()))?;
    let seeds = layout.workspace.join("fuzz").join("corpus").join(target);
    println!("\n==> fuzz {target} for {seconds}s");
    let output = cargo_fuzz(layout)
        .arg("run")
        .args(BUILD_FLAGS)
        .args(args.dev.then_some("--dev"))
        .arg(target)
        .arg(&work)
        .arg(&seeds)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-rss_limit_mb={RSS_LIMIT_MB}"))
        .arg(format!("-malloc_limit_mb={RSS_LIMIT_MB}"))
        .arg(format!("-timeout={INPUT_TIMEOUT_S}"))
        .arg("-print_final_stats=1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("cannot run `cargo fuzz run {target}`"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if !output.status.success() {
        let tail: Vec<&str> = text.lines().rev().take(60).collect();
        for line in tail.into_iter().rev() {
            eprintln!("{line}");
        }
        bail!(
            "fuzz target {target} failed ({}): the input is in fuzz/artifacts/{target}/; add it to fuzz/corpus/{target}/ once fixed (docs/fuzzing.md)",
            output.status
        );
    }
    let stats = Stats::parse(&text);
    println!(
        "{target}: {} executions, {} exec/s, peak RSS {} MB",
        stats.executions, stats.per_second, stats.peak_rss_mb
    );
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::Stats;

    #[test]
    fn final_stats_are_read() {
        let stats = Stats::parse(
            "#1234 DONE cov: 10\nstat::number_of_executed_units: 52311\nstat::average_exec_per_sec:     5231\nstat::new_units_added:          3\nstat::peak_rss_mb:              61\n",
        );
        assert_eq!(stats.executions, 52311);
        assert_eq!(stats.per_second, 5231);
        assert_eq!(stats.peak_rss_mb, 61);
    }
}
