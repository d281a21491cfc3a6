//! Faults of the shared infrastructure for the tests that need them: bouncing the Kafka broker
//! that `cargo xtask infra up` started (hard: SIGKILL; clean: SIGTERM), then starting it again
//! with the very same command line. Only a test binary that runs alone may do this (cargo runs
//! test binaries one after the other).

use std::fs;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The folder `cargo xtask infra up` keeps its services in (`STATEHOUSE_INFRA_DIR`, default
/// `<repo>/.infra`).
pub fn infra_dir() -> PathBuf {
    std::env::var_os("STATEHOUSE_INFRA_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::user_function::repo_root().join(".infra"))
}

/// Stop the Kafka broker (SIGKILL when `hard`, else SIGTERM and wait for its clean shutdown),
/// then start it again and wait until it accepts connections. Returns how long it was down.
///
/// # Panics
/// If the broker was not started by `cargo xtask infra up` (no pid file), or does not come back.
pub fn bounce_kafka(hard: bool) -> Duration {
    bounce(&infra_dir().join("kafka"), &crate::kafka_bootstrap(), hard)
}

/// Like [`bounce_kafka`], for node `node` (from 1) of the cluster that
/// `cargo xtask infra up --kafka-brokers 3` starts (client port 19091 + `node`).
pub fn bounce_kafka_node(node: u16, hard: bool) -> Duration {
    bounce(
        &infra_dir()
            .join("kafka-cluster")
            .join(format!("node-{node}")),
        &format!("127.0.0.1:{}", 19_091 + node),
        hard,
    )
}

fn bounce(dir: &std::path::Path, port: &str, hard: bool) -> Duration {
    let pid_file = dir.join("pid");
    let pid: u32 = fs::read_to_string(&pid_file)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "no Kafka pid in {}: start it with `cargo xtask infra up`",
                pid_file.display()
            )
        });
    let cmdline =
        fs::read(format!("/proc/{pid}/cmdline")).expect("reading the broker's command line");
    let argv: Vec<String> = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let cwd = fs::read_link(format!("/proc/{pid}/cwd")).expect("reading the broker's cwd");
    let started = Instant::now();
    let _ = Command::new("kill")
        .arg(if hard { "-KILL" } else { "-TERM" })
        .arg(pid.to_string())
        .status();
    // Gone when it is dead or a zombie (a broker restarted by an earlier bounce is this
    // process's child and stays a zombie until reaped) and its port is closed.
    let alive = |pid: u32| {
        fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            let state = stat
                .rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().chars().next());
            !matches!(state, Some(Some('Z' | 'X')) | None)
        })
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while alive(pid) || TcpStream::connect(port).is_ok() {
        assert!(Instant::now() < deadline, "the broker did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("logs").join("stdout.log"))
        .expect("opening the broker log");
    let mut child = Command::new("setsid")
        .args(&argv)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log handle"))
        .stderr(log)
        .spawn()
        .expect("restarting the broker");
    fs::write(&pid_file, child.id().to_string()).expect("writing the broker pid");
    // Reap it whenever it exits (a later bounce), so no zombie is left behind.
    std::thread::spawn(move || {
        let _ = child.wait();
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    while TcpStream::connect(port).is_err() {
        assert!(Instant::now() < deadline, "the broker did not come back");
        std::thread::sleep(Duration::from_millis(100));
    }
    started.elapsed()
}
