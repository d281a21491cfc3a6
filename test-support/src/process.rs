//! The `statehouse` binary as a child process (processor, gateway), for whole-stack and fault
//! tests: start with `--set` overrides, SIGKILL, SIGTERM, SIGSTOP/SIGCONT, restart, read its log.

use std::fs::{self, File};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `statehouse` binary of this workspace (`target/debug/statehouse`).
///
/// # Panics
/// If it is not built, with the command that builds it.
pub fn binary() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::user_function::repo_root().join("target"));
    let bin = target.join("debug").join("statehouse");
    assert!(
        bin.is_file(),
        "{} is missing: build it with `cargo build -p statehouse-cli` (`cargo test --workspace` builds it too)",
        bin.display()
    );
    bin
}

/// A free TCP port on 127.0.0.1 (free when asked; bind it soon), never one this process was
/// given before: the OS may hand a just-released port out again, and two components of one
/// stack given the same port collide when they bind it (a user function and a processor's
/// metrics endpoint did).
///
/// Ports come from below the kernel's ephemeral range (`net.ipv4.ip_local_port_range`, from
/// 32768 by default) and above the infra's fixed ports (all below 20000): a port the kernel
/// handed out for `bind(0)` can be taken meanwhile as the local port of any outgoing
/// connection — the stack's many Kafka and Cassandra connections — and a processor restarted
/// on it then fails with "Address already in use" (seen in `admin.rs`).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let (low, high) = (20_000u32, ephemeral_start().clamp(20_001, 32_768));
    let mut state = u64::from(std::process::id())
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
        | 1;
    for _ in 0..10_000 {
        // xorshift64: a spread of candidates, different per test process.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let port = (low + (state % u64::from(high - low)) as u32) as u16;
        if given.contains(&port) || TcpListener::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        given.push(port);
        return port;
    }
    panic!(
        "no free port on 127.0.0.1 between {low} and {high} that this process was not given before"
    );
}

/// The first port of the kernel's ephemeral range (32768 if it cannot be read).
fn ephemeral_start() -> u32 {
    fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// A running `statehouse <role>`. SIGKILLed when dropped.
pub struct Statehouse {
    role: String,
    sets: Vec<String>,
    /// Environment variables beyond the test's own (e.g. `STATEHOUSE__…` secrets, which must
    /// never be on a command line).
    env: Vec<(String, String)>,
    /// The network namespace it runs in (`crate::netns`), if not the root one.
    netns: Option<String>,
    child: Option<Child>,
    log_path: PathBuf,
    starts: u32,
}

impl Statehouse {
    /// Start `statehouse <role>` with `--set` overrides (`section.key=value`).
    pub fn start(role: &str, sets: &[String]) -> Self {
        Self::start_in(role, sets, None)
    }

    /// Like [`Statehouse::start`], inside the network namespace `netns` when given (restarts
    /// stay in it).
    pub fn start_in(role: &str, sets: &[String], netns: Option<&crate::netns::Namespace>) -> Self {
        Self::start_with(role, sets, &[], netns)
    }

    /// Like [`Statehouse::start_in`], with extra environment variables (kept for restarts).
    pub fn start_with(
        role: &str,
        sets: &[String],
        env: &[(String, String)],
        netns: Option<&crate::netns::Namespace>,
    ) -> Self {
        let dir = std::env::temp_dir().join("statehouse-e2e");
        fs::create_dir_all(&dir).expect("creating the e2e log folder");
        let mut s = Self {
            role: role.to_string(),
            sets: sets.to_vec(),
            env: env.to_vec(),
            netns: netns.map(|ns| ns.name().to_string()),
            child: None,
            log_path: dir.join(format!("{}.log", crate::unique(role))),
            starts: 0,
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("opening the process log");
        let err = log.try_clone().expect("cloning the log handle");
        let mut command = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(binary());
                c
            }
            None => Command::new(binary()),
        };
        for set in &self.sets {
            command.arg("--set").arg(set);
        }
        command.arg(&self.role);
        command.envs(self.env.iter().map(|(k, v)| (k, v)));
        // `RUST_LOG` wins over `telemetry.log-filter`: a test that sets the filter gets it.
        if self
            .sets
            .iter()
            .any(|s| s.starts_with("telemetry.log-filter="))
        {
            command.env_remove("RUST_LOG");
        } else {
            command.env(
                "RUST_LOG",
                std::env::var("STATEHOUSE_E2E_LOG").unwrap_or_else(|_| "info".into()),
            );
        }
        command.stdin(Stdio::null()).stdout(log).stderr(err);
        self.child = Some(
            command
                .spawn()
                .unwrap_or_else(|e| panic!("starting statehouse {}: {e}", self.role)),
        );
        self.starts += 1;
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).expect("running")
    }

    fn signal(&self, signal: &str) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill")
                .arg(format!("-{signal}"))
                .arg(child.id().to_string())
                .status();
        }
    }

    /// `kill -9`: no cleanup at all.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait (bounded) for a graceful exit; returns whether it exited cleanly.
    pub fn terminate(&mut self, timeout: Duration) -> bool {
        self.signal("TERM");
        let Some(mut child) = self.child.take() else {
            return true;
        };
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    pub fn pause(&self) {
        self.signal("STOP");
    }

    pub fn resume(&self) {
        self.signal("CONT");
    }

    /// Start it again with the same arguments (after a kill or terminate).
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    pub fn log_path(&self) -> &std::path::Path {
        &self.log_path
    }

    /// The whole log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for Statehouse {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("statehouse {} log: {}", self.role, self.log_path.display());
        }
        self.kill9();
    }
}
