//! `cargo xtask ci`: the whole local verification, in order, failing fast: formatting,
//! clippy, the infra (reused when healthy), a short run of every fuzz target, then every test
//! of the workspace (doc tests included) against the real Kafka and Cassandra. `.ci/run` calls
//! this.
//!
//! To add a check, add a [`Step`] to [`steps`].

use std::ffi::OsString;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::layout::Layout;
use crate::{digest, fuzz, infra};

/// Seconds each fuzz target runs in CI: a smoke test (longer runs: `docs/fuzzing.md`).
const FUZZ_SECONDS: u32 = 10;

/// Where a failed test run leaves its digest (relative to the workspace).
pub(crate) const DIGEST: &str = "target/ci-failures.txt";

/// Options of `cargo xtask ci`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Args {
    /// Skip a step by name (repeatable); see `--list`.
    #[arg(long, value_name = "STEP")]
    skip: Vec<String>,
    /// List the steps and exit.
    #[arg(long)]
    list: bool,
}

/// One named check.
pub(crate) struct Step {
    name: &'static str,
    what: String,
    run: Box<dyn Fn() -> Result<()>>,
}

impl Step {
    fn new(
        name: &'static str,
        what: impl Into<String>,
        run: impl Fn() -> Result<()> + 'static,
    ) -> Self {
        Self {
            name,
            what: what.into(),
            run: Box::new(run),
        }
    }

    /// A `cargo …` invocation in the workspace, with extra environment.
    fn cargo(name: &'static str, args: &[&str], env: Vec<(&'static str, String)>) -> Self {
        let (what, command) = cargo_command(args, env);
        Self::new(name, what.clone(), move || {
            let status = command()?
                .status()
                .with_context(|| format!("cannot run `{what}`"))?;
            if !status.success() {
                bail!("`{what}` failed ({status})");
            }
            Ok(())
        })
    }
}

/// `cargo <args>` in the workspace with extra environment: its description and a builder of the
/// command (the workspace is found when the step runs).
fn cargo_command(
    args: &[&str],
    env: Vec<(&'static str, String)>,
) -> (String, impl Fn() -> Result<Command> + 'static) {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let what = format!("cargo {}", args.join(" "));
    let layout = Layout::from_env();
    let build = move || {
        let layout = layout.as_ref().map_err(|e| anyhow::anyhow!("{e:#}"))?;
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
        let mut command = Command::new(cargo);
        command
            .args(&args)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .current_dir(&layout.workspace);
        Ok(command)
    };
    (what, build)
}

impl Step {
    /// `cargo test …` with its output echoed and kept: when tests fail, a digest of the failures
    /// and of the logs they name is printed and written to [`DIGEST`] (`.ci/run` shows it again
    /// at the very end of the log).
    fn cargo_test(name: &'static str, args: &[&str], env: Vec<(&'static str, String)>) -> Self {
        let (what, command) = cargo_command(args, env);
        let layout = Layout::from_env();
        Self::new(name, what.clone(), move || {
            let layout = layout.as_ref().map_err(|e| anyhow::anyhow!("{e:#}"))?;
            let command = command()?;
            let (status, output) =
                digest::run_captured(command).with_context(|| format!("cannot run `{what}`"))?;
            if !status.success() {
                let digest = digest::of_test_output(&output);
                if !digest.is_empty() {
                    println!("\n==> failed tests (digest):\n{digest}");
                    let path = layout.workspace.join(DIGEST);
                    if let Err(e) = std::fs::write(&path, &digest) {
                        eprintln!("cannot write {}: {e}", path.display());
                    }
                }
                bail!("`{what}` failed ({status})");
            }
            Ok(())
        })
    }

    /// `bash <script>` from the workspace root.
    fn script(name: &'static str, script: &'static str, about: &str) -> Self {
        let layout = Layout::from_env();
        Self::new(name, format!("bash {script} ({about})"), move || {
            let layout = layout.as_ref().map_err(|e| anyhow::anyhow!("{e:#}"))?;
            let status = Command::new("bash")
                .arg(script)
                .current_dir(&layout.workspace)
                .status()
                .with_context(|| format!("cannot run `bash {script}`"))?;
            if !status.success() {
                bail!("`bash {script}` failed ({status})");
            }
            Ok(())
        })
    }
}

/// The CI steps, in order.
fn steps(layout: &Layout) -> Result<Vec<Step>> {
    let infra_layout = layout.clone();
    let fuzz_layout = layout.clone();
    Ok(vec![
        Step::cargo("fmt", &["fmt", "--all", "--", "--check"], Vec::new()),
        Step::cargo(
            "clippy",
            &[
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ],
            Vec::new(),
        ),
        // The single broker, Cassandra, the 3-broker cluster of the replication tests, Jaeger
        // for the tracing tests, and the secured Kafka and Cassandra of the secure tests.
        Step::new(
            "infra",
            "cargo xtask infra up --kafka-brokers 3 --jaeger --secure",
            move || {
                infra::up(
                    &infra_layout,
                    infra::Extras {
                        kafka_brokers: 3,
                        jaeger: true,
                        secure: true,
                    },
                )
            },
        ),
        Step::script(
            "sdks",
            "e2e/user-functions/install.sh",
            "the Go and Python SDK user functions",
        ),
        // The binaries the whole-stack tests start as processes.
        Step::cargo(
            "build",
            &[
                "build",
                "-p",
                "statehouse-cli",
                "-p",
                "statehouse-sample-shopping-cart",
            ],
            Vec::new(),
        ),
        // Every fuzz target for a few seconds (`cargo xtask fuzz`, `docs/fuzzing.md`).
        Step::new(
            "fuzz",
            format!("cargo xtask fuzz --dev --seconds {FUZZ_SECONDS}"),
            move || {
                fuzz::run(
                    &fuzz_layout,
                    &fuzz::Args {
                        seconds: FUZZ_SECONDS,
                        build_only: false,
                        dev: true,
                        targets: Vec::new(),
                    },
                )
            },
        ),
        Step::cargo_test("test", &["test", "--workspace", "--no-fail-fast"], {
            let mut env = infra::test_env()?;
            env.push(("STATEHOUSE_TEST_KAFKA_CLUSTER", infra::cluster_bootstrap(3)));
            env.extend(infra::jaeger_env());
            env.extend(infra::secure_env(layout));
            env
        }),
        Step::script("helm", "helm/ci.sh", "the Helm chart checks"),
    ])
}

/// Runs the steps, printing the wall time of each and a summary.
pub(crate) fn run(layout: &Layout, args: &Args) -> Result<()> {
    let steps = steps(layout)?;
    for name in &args.skip {
        if !steps.iter().any(|s| s.name == name) {
            let names: Vec<&str> = steps.iter().map(|s| s.name).collect();
            bail!("unknown step `{name}`; steps are: {}", names.join(", "));
        }
    }
    if args.list {
        for step in &steps {
            println!("{:<8} {}", step.name, step.what);
        }
        return Ok(());
    }
    if let Ok(layout) = Layout::from_env() {
        let _ = std::fs::remove_file(layout.workspace.join(DIGEST));
    }
    let started = Instant::now();
    let mut report: Vec<(&str, String)> = Vec::new();
    let mut failed = None;
    for step in &steps {
        if args.skip.iter().any(|s| s == step.name) {
            report.push((step.name, "skipped".to_owned()));
            continue;
        }
        println!("\n==> ci step `{}`: {}", step.name, step.what);
        let step_started = Instant::now();
        let result = (step.run)();
        let secs = step_started.elapsed().as_secs_f64();
        match result {
            Ok(()) => {
                println!("==> ci step `{}` ok in {secs:.1}s", step.name);
                report.push((step.name, format!("ok      {secs:>7.1}s")));
            }
            Err(err) => {
                eprintln!("==> ci step `{}` FAILED in {secs:.1}s: {err:#}", step.name);
                report.push((step.name, format!("FAILED  {secs:>7.1}s")));
                failed = Some((step.name, err));
                break;
            }
        }
    }
    println!("\nci summary:");
    for (name, outcome) in &report {
        println!("  {name:<8} {outcome}");
    }
    println!("  total    {:.1}s", started.elapsed().as_secs_f64());
    match failed {
        Some((name, err)) => Err(err.context(format!("ci step `{name}` failed"))),
        None => Ok(()),
    }
}
