//! Jaeger, the trace collector of the tracing tests (`cargo xtask infra up --jaeger`): the
//! all-in-one `jaeger` binary (in-memory storage) built once from the Go module proxy into the
//! cache, then run detached like the JVMs. Statehouse exports to its OTLP/gRPC port; the tests
//! read traces back through its query API (`/api/v3/traces/<id>`).
//!
//! Jaeger listens on several loopback ports besides those two (its own metrics 8888, Zipkin
//! 9411, the legacy Jaeger receivers 14250/14268, health 13133, sampling 5778): none of them is
//! one Statehouse or its infra uses.

use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::process;
use crate::layout::Layout;

/// The release built (the Go module proxy serves it; `cmd/jaeger` is Jaeger v2).
pub(crate) const VERSION: &str = "v1.75.0";
/// OTLP/gRPC receiver.
pub(crate) const OTLP_PORT: u16 = 4317;
/// Query API and UI.
pub(crate) const QUERY_PORT: u16 = 16686;

fn dir(layout: &Layout) -> PathBuf {
    layout.infra.join("jaeger")
}

fn binary(layout: &Layout) -> PathBuf {
    layout
        .cache
        .join(format!("jaeger-{VERSION}"))
        .join("jaeger")
}

/// The `jaeger` binary, built from the Go module proxy when the cache lacks it (a few minutes,
/// once).
fn ensure_binary(layout: &Layout) -> Result<PathBuf> {
    let bin = binary(layout);
    if bin.exists() {
        return Ok(bin);
    }
    let go = process::find_on_path("go")
        .context("building Jaeger needs Go (https://go.dev/dl/, or Debian's golang-go)")?;
    let module = bin.parent().expect("a file in a folder").join("module");
    fs::create_dir_all(&module)?;
    let run = |args: &[&str]| -> Result<()> {
        let status = Command::new(&go)
            .args(args)
            .current_dir(&module)
            .env("GOFLAGS", "-mod=mod")
            .status()
            .with_context(|| format!("running go {}", args.join(" ")))?;
        if !status.success() {
            bail!("go {} failed ({status})", args.join(" "));
        }
        Ok(())
    };
    println!("jaeger: building {VERSION} from the Go module proxy (once; a few minutes)");
    if !module.join("go.mod").exists() {
        run(&["mod", "init", "statehouse.local/jaeger"])?;
    }
    let package = "github.com/jaegertracing/jaeger/cmd/jaeger";
    run(&["get", "-tool", &format!("{package}@{VERSION}")])?;
    let out = bin.to_string_lossy().into_owned();
    run(&["build", "-o", &out, package])?;
    Ok(bin)
}

fn pid_file(layout: &Layout) -> PathBuf {
    dir(layout).join("pid")
}

fn log(layout: &Layout) -> PathBuf {
    dir(layout).join("logs").join("stdout.log")
}

/// The pid of our Jaeger, if it runs.
fn live_pid(layout: &Layout) -> Option<u32> {
    let pid = process::read_pid(&pid_file(layout))?;
    (process::is_alive(pid)
        && process::cmdline(pid).is_some_and(|cmd| cmd.contains(&format!("jaeger-{VERSION}"))))
    .then_some(pid)
}

fn healthy() -> bool {
    process::port_open(OTLP_PORT) && process::port_open(QUERY_PORT)
}

/// Start Jaeger unless it runs; wait until its ports answer.
pub(crate) fn up(layout: &Layout) -> Result<()> {
    if let Some(pid) = live_pid(layout) {
        if healthy() {
            println!("jaeger: already up (pid {pid})");
            return Ok(());
        }
    } else {
        for port in [OTLP_PORT, QUERY_PORT] {
            if process::port_open(port) {
                bail!("jaeger: port {port} is already taken; stop what holds it");
            }
        }
        let bin = ensure_binary(layout)?;
        fs::create_dir_all(dir(layout))?;
        let child = process::spawn_detached(&bin, &[], &dir(layout), &log(layout))?;
        process::write_pid(&pid_file(layout), child.id())?;
        println!(
            "jaeger: starting {VERSION} (pid {}), logs in {}",
            child.id(),
            log(layout).display()
        );
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while !healthy() {
        if Instant::now() > deadline || live_pid(layout).is_none() {
            eprintln!("{}", process::tail(&log(layout), 30));
            bail!("jaeger did not start");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    println!("jaeger: up: OTLP 127.0.0.1:{OTLP_PORT}, query http://127.0.0.1:{QUERY_PORT}");
    Ok(())
}

/// Stop Jaeger if it runs.
pub(crate) fn down(layout: &Layout) -> Result<()> {
    if let Some(pid) = live_pid(layout) {
        println!("jaeger: stopping (pid {pid})");
        process::stop_all(&[pid], Duration::from_secs(10))?;
    }
    let _ = fs::remove_file(pid_file(layout));
    Ok(())
}

/// One status line, when it runs.
pub(crate) fn status(layout: &Layout) -> Option<String> {
    live_pid(layout).map(|pid| {
        format!(
            "jaeger: running (pid {pid}), {}, OTLP {OTLP_PORT}, query {QUERY_PORT}",
            if healthy() {
                "healthy"
            } else {
                "not answering"
            }
        )
    })
}
