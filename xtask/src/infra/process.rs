//! Detached JVM processes: spawning them in their own session, pid files, liveness through
//! `/proc`, signals (through `kill`, so no `unsafe`), and who holds a TCP port.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Starts `program args…` detached from this process: in a new session (`setsid`, or a new
/// process group where `setsid` is missing), stdin closed, stdout and stderr written to
/// `log` (the previous run's file is kept as `<log>.1`). The child outlives xtask; the returned handle lets the caller notice an early exit.
pub(crate) fn spawn_detached(
    program: &Path,
    args: &[String],
    cwd: &Path,
    log: &Path,
) -> Result<Child> {
    if let Some(parent) = log.parent() {
        fs::create_dir_all(parent)?;
    }
    if log.exists() {
        // Keep the previous run's console output, but start this run's file afresh.
        let mut previous = log.as_os_str().to_owned();
        previous.push(".1");
        fs::rename(log, previous)?;
    }
    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("cannot open {}", log.display()))?;
    let err = out.try_clone()?;
    let mut cmd = match find_on_path("setsid") {
        // Spawned children are never process-group leaders, so `setsid` calls setsid(2)
        // directly and execs the program: the pid we get is the JVM's pid.
        Some(setsid) => {
            let mut cmd = Command::new(setsid);
            cmd.arg(program);
            cmd
        }
        None => {
            use std::os::unix::process::CommandExt as _;
            let mut cmd = Command::new(program);
            cmd.process_group(0);
            cmd
        }
    };
    cmd.args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    cmd.spawn()
        .with_context(|| format!("cannot start {}", program.display()))
}

/// The first executable named `name` on `PATH`.
pub(crate) fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The pid stored in `file`, if any.
pub(crate) fn read_pid(file: &Path) -> Option<u32> {
    fs::read_to_string(file).ok()?.trim().parse().ok()
}

/// Writes `pid` to `file`.
pub(crate) fn write_pid(file: &Path, pid: u32) -> Result<()> {
    fs::write(file, format!("{pid}\n")).with_context(|| format!("cannot write {}", file.display()))
}

/// Whether `pid` is a live process. A zombie whose threads are all gone is dead (nobody may
/// reap it here); a "zombie" main thread whose other threads still run (a JVM while it exits)
/// is alive, as it still holds its files and sockets.
pub(crate) fn is_alive(pid: u32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // Format: `pid (comm) state …`; comm may hold spaces and parentheses.
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next());
    match state {
        None => false,
        Some("Z" | "X") => fs::read_dir(format!("/proc/{pid}/task")).is_ok_and(|t| t.count() > 1),
        Some(_) => true,
    }
}

/// The command line of `pid`, arguments joined by spaces.
pub(crate) fn cmdline(pid: u32) -> Option<String> {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<String> = raw
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    Some(args.join(" "))
}

/// The pid in `pid_file` if it is a live process whose command line mentions a path under
/// the folder `marker`
/// (so a recycled pid is never mistaken for our service).
pub(crate) fn live_pid(pid_file: &Path, marker: &Path) -> Option<u32> {
    let pid = read_pid(pid_file)?;
    let marker = format!("{}/", marker.display());
    (is_alive(pid) && cmdline(pid).is_some_and(|c| c.contains(&marker))).then_some(pid)
}

/// Every live java process whose command line mentions a path under `dir`, as
/// `(pid, cmdline)`.
pub(crate) fn java_processes_under(dir: &Path) -> Vec<(u32, String)> {
    let dir = format!("{}/", dir.display());
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found: Vec<(u32, String)> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != std::process::id() && is_alive(*pid))
        .filter_map(|pid| Some((pid, cmdline(pid)?)))
        .filter(|(_, cmd)| {
            let program = cmd.split(' ').next().unwrap_or_default();
            program.ends_with("java") && cmd.contains(&dir)
        })
        .collect();
    found.sort();
    found
}

/// Sends `signal` (`TERM`, `KILL`) to `pid` through the shell's `kill`.
pub(crate) fn signal(pid: u32, signal: &str) -> Result<()> {
    let status = Command::new("sh")
        .args([
            "-c",
            "kill -s \"$1\" \"$2\" 2>/dev/null",
            "sh",
            signal,
            &pid.to_string(),
        ])
        .status()
        .context("cannot run sh to send a signal")?;
    if !status.success() && is_alive(pid) {
        bail!("could not send SIG{signal} to pid {pid}");
    }
    Ok(())
}

/// Waits until every pid in `pids` is gone or `deadline` passes; returns those still alive.
pub(crate) fn wait_gone(pids: &[u32], deadline: Instant) -> Vec<u32> {
    loop {
        let alive: Vec<u32> = pids.iter().copied().filter(|p| is_alive(*p)).collect();
        if alive.is_empty() || Instant::now() >= deadline {
            return alive;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Stops `pids`: SIGTERM to all, wait up to `grace`, then SIGKILL whatever is left.
/// Returns the pids that had to be killed.
pub(crate) fn stop_all(pids: &[u32], grace: Duration) -> Result<Vec<u32>> {
    for pid in pids {
        signal(*pid, "TERM")?;
    }
    let stubborn = wait_gone(pids, Instant::now() + grace);
    for pid in &stubborn {
        signal(*pid, "KILL")?;
    }
    let left = wait_gone(&stubborn, Instant::now() + Duration::from_secs(10));
    if !left.is_empty() {
        bail!("processes {left:?} survived SIGKILL");
    }
    Ok(stubborn)
}

/// Whether something accepts TCP connections on `127.0.0.1:port`.
pub(crate) fn port_open(port: u16) -> bool {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok()
}

/// The process listening on TCP `port` (any address), as `(pid, cmdline)`, if `/proc` tells.
pub(crate) fn port_owner(port: u16) -> Option<(u32, String)> {
    let inodes: Vec<String> = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|f| fs::read_to_string(f).ok())
        .flat_map(|table| listening_inodes(&table, port))
        .collect();
    if inodes.is_empty() {
        return None;
    }
    for entry in fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(target) = fs::read_link(fd.path()) else {
                continue;
            };
            let target = target.to_string_lossy();
            if inodes.iter().any(|i| target == format!("socket:[{i}]")) {
                return Some((pid, cmdline(pid).unwrap_or_default()));
            }
        }
    }
    None
}

/// Inodes of the sockets in a `/proc/net/tcp{,6}` table that LISTEN on `port`.
fn listening_inodes(table: &str, port: u16) -> Vec<String> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let local_port = cols.get(1)?.rsplit(':').next()?;
            let listening = *cols.get(3)? == "0A";
            (listening && u16::from_str_radix(local_port, 16).ok()? == port)
                .then(|| cols.get(9).map(|s| (*s).to_owned()))
                .flatten()
        })
        .collect()
}

/// The last `lines` lines of `path` (reads at most the last 256 KiB).
pub(crate) fn tail(path: &Path, lines: usize) -> String {
    let Ok(mut file) = File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(256 * 1024)));
    let mut buf = Vec::new();
    let _ = file.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_listening_sockets_by_port() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   \
            0: 0100007F:2384 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0\n   \
            1: 0100007F:2384 0100007F:D0A2 01 00000000:00000000 00:00000000 00000000     0        0 4343 1 0000000000000000 100 0 0 10 0\n";
        assert_eq!(listening_inodes(table, 9092), vec!["4242".to_owned()]);
        assert!(listening_inodes(table, 9093).is_empty());
    }

    #[test]
    fn this_process_is_alive_and_has_a_cmdline() {
        let me = std::process::id();
        assert!(is_alive(me));
        assert!(cmdline(me).is_some_and(|c| !c.is_empty()));
        assert!(!is_alive(u32::MAX));
    }
}
