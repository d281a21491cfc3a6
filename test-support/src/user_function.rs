//! Real Cloudstate user functions, started as child processes for end-to-end tests.
//!
//! Two shopping carts written with official Cloudstate SDKs (see `e2e/user-functions/`):
//!
//! * [`Kind::GoShoppingCart`]: the example of `github.com/cloudstateio/go-support` v0.3.0
//!   (package `tck/cmd/tck_shoppingcart`), protocol 0.2, entity key option 1080.
//! * [`Kind::PythonShoppingCart`]: our own cart on PyPI `cloudstate==0.1.1`, the legacy
//!   protocol (reports 0.0), entity key option 50002, event sourcing only.
//!
//! Both serve `com.example.shoppingcart.ShoppingCart` as an event-sourced entity over h2c on
//! `HOST`/`PORT`. They are installed under
//! `${STATEHOUSE_CACHE_DIR:-$HOME/.cache/statehouse}/user-functions/` by
//! `bash e2e/user-functions/install.sh` (which `.ci/run` calls). When they are missing or stale,
//! [`UserFunction::start`] fails loudly with that command — it never skips.
//!
//! ```no_run
//! use statehouse_test_support::user_function::{Kind, UserFunction};
//! let uf = UserFunction::start(Kind::GoShoppingCart);
//! let endpoint = uf.endpoint(); // "http://127.0.0.1:<port>"
//! # drop(endpoint);
//! // ... the process is killed when `uf` drops (also when the test panics).
//! ```
//!
//! The child's stdout and stderr go to a log file ([`UserFunction::log_path`]) that every panic
//! message names. On Linux the child is started through `setpriv --pdeathsig KILL`, so it also
//! dies when the thread that started it exits (a test killed by a timeout leaks no process). Do
//! not keep a `UserFunction` in a `static`: start one per test.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime};

/// The command that installs (or refreshes) the user functions, run from the repository root.
pub const INSTALL_COMMAND: &str = "bash e2e/user-functions/install.sh";

/// Env var overriding the cache root (default `$HOME/.cache/statehouse`).
pub const CACHE_DIR_ENV: &str = "STATEHOUSE_CACHE_DIR";

/// The fully qualified gRPC service both shopping carts serve.
pub const SHOPPING_CART_SERVICE: &str = "com.example.shoppingcart.ShoppingCart";

/// The entity type both shopping carts register.
pub const EVENT_SOURCED_ENTITY_TYPE: &str = "cloudstate.eventsourced.EventSourced";

/// How long a user function may take to accept TCP connections after it was spawned.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Which real user function to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// go-support v0.3.0 `tck/cmd/tck_shoppingcart` (the `example/shoppingcart` entity).
    GoShoppingCart,
    /// Our shopping cart (`e2e/user-functions/python/shoppingcart`) on PyPI `cloudstate==0.1.1`.
    PythonShoppingCart,
    /// The Rust sample (`samples/shopping-cart`) on `statehouse-sdk`.
    RustShoppingCart,
    /// go-support v0.3.0 `tck/cmd/tck_eventsourced`: the Cloudstate TCK models of every entity
    /// kind (event-sourced, value, CRDT, actions, eventing) plus the shopping cart, one user
    /// function.
    GoTck,
}

impl Kind {
    /// Every kind, for tests that run against each SDK.
    pub const ALL: [Kind; 2] = [Kind::GoShoppingCart, Kind::PythonShoppingCart];

    /// A short name: `go-shoppingcart` or `python-shoppingcart`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::GoShoppingCart => "go-shoppingcart",
            Kind::PythonShoppingCart => "python-shoppingcart",
            Kind::RustShoppingCart => "rust-shoppingcart",
            Kind::GoTck => "go-tck",
        }
    }

    /// The SDK and version behind it.
    pub fn sdk(self) -> &'static str {
        match self {
            Kind::GoShoppingCart => "github.com/cloudstateio/go-support v0.3.0",
            Kind::PythonShoppingCart => "PyPI cloudstate 0.1.1",
            Kind::RustShoppingCart => "statehouse-sdk (this workspace)",
            Kind::GoTck => "github.com/cloudstateio/go-support v0.3.0 (TCK models)",
        }
    }

    /// `EntitySpec.service_info.(protocol_major_version, protocol_minor_version)` as reported.
    /// The Python SDK speaks the legacy protocol and leaves both unset (0.0).
    pub fn protocol_version(self) -> (i32, i32) {
        match self {
            Kind::GoShoppingCart => (0, 2),
            Kind::PythonShoppingCart => (0, 0),
            Kind::RustShoppingCart | Kind::GoTck => (0, 2),
        }
    }

    /// The `google.protobuf.FieldOptions` extension number marking entity keys in the
    /// descriptors it sends: `cloudstate.entity_key` 1080 (protocol 0.2) or the legacy 50002.
    pub fn entity_key_extension(self) -> u32 {
        match self {
            Kind::GoShoppingCart => 1080,
            Kind::PythonShoppingCart => 50002,
            Kind::RustShoppingCart | Kind::GoTck => 1080,
        }
    }

    /// `Entity.persistence_id` of the shopping cart.
    pub fn persistence_id(self) -> &'static str {
        match self {
            Kind::GoShoppingCart | Kind::GoTck => "ShoppingCart",
            Kind::PythonShoppingCart | Kind::RustShoppingCart => "shopping-cart",
        }
    }

    /// The `Failure.description` for `AddItem` with a quantity <= 0.
    ///
    /// Go: `cannot add negative quantity of to item "<id>"` (the Go example's own text).
    /// Python: the SDK reports `str(list_of_messages)`, e.g.
    /// `['Cannot add negative quantity of to item <id>']`.
    pub fn add_negative_quantity_failure(self, product_id: &str) -> String {
        match self {
            Kind::GoShoppingCart | Kind::RustShoppingCart | Kind::GoTck => {
                format!("cannot add negative quantity of to item \"{product_id}\"")
            }
            Kind::PythonShoppingCart => {
                format!("['Cannot add negative quantity of to item {product_id}']")
            }
        }
    }

    /// The `Failure.description` for `RemoveItem` of a product not in the cart.
    pub fn remove_missing_item_failure(self, product_id: &str) -> String {
        match self {
            Kind::GoShoppingCart | Kind::RustShoppingCart | Kind::GoTck => {
                format!("cannot remove item {product_id} because it is not in the cart")
            }
            Kind::PythonShoppingCart => {
                format!("['Cannot remove item {product_id} because it is not in the cart.']")
            }
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The root of the user-function installation: `$STATEHOUSE_CACHE_DIR/user-functions`, or
/// `$HOME/.cache/statehouse/user-functions`.
pub fn install_dir() -> PathBuf {
    let root = match std::env::var_os(CACHE_DIR_ENV) {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => {
            let home = std::env::var_os("HOME").unwrap_or_else(|| {
                panic!("neither {CACHE_DIR_ENV} nor HOME is set: cannot locate the user functions")
            });
            PathBuf::from(home).join(".cache").join("statehouse")
        }
    };
    root.join("user-functions")
}

/// The repository root (this crate lives in `<root>/test-support`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("test-support has a parent directory")
        .to_path_buf()
}

/// How to launch one kind: program, args, extra env.
struct Launch {
    program: PathBuf,
    args: Vec<PathBuf>,
    env: Vec<(&'static str, std::ffi::OsString)>,
}

/// Checks the installation of `kind` and says how to run it.
///
/// # Panics
/// When an artifact is missing or older than its sources, with the command that fixes it.
fn launch(kind: Kind) -> Launch {
    let dir = install_dir();
    let repo = repo_root();
    let uf_src = repo.join("e2e").join("user-functions");
    match kind {
        Kind::GoShoppingCart | Kind::GoTck => {
            let bin = dir.join("go").join(if kind == Kind::GoTck {
                "go-tck"
            } else {
                "go-shoppingcart"
            });
            require_installed(kind, &bin);
            require_fresh(
                kind,
                &dir.join("go").join(".stamp"),
                &[uf_src.join("go/go.mod"), uf_src.join("go/go.sum")],
            );
            Launch {
                program: bin,
                args: vec![],
                env: vec![],
            }
        }
        Kind::RustShoppingCart => {
            let bin = crate::process::binary().with_file_name("statehouse-sample-shopping-cart");
            assert!(
                bin.is_file(),
                "{} is missing: build it with `cargo build -p statehouse-sample-shopping-cart` (`cargo test --workspace` builds it too)",
                bin.display()
            );
            Launch {
                program: bin,
                args: vec![],
                env: vec![],
            }
        }
        Kind::PythonShoppingCart => {
            let python = dir.join("python").join("venv").join("bin").join("python");
            let gen_dir = dir.join("python").join("gen");
            let main = uf_src.join("python").join("shoppingcart").join("main.py");
            require_installed(kind, &python);
            require_installed(
                kind,
                &gen_dir.join("shoppingcart").join("shoppingcart_pb2.py"),
            );
            assert!(
                main.is_file(),
                "{kind}: {} is missing from the repository",
                main.display()
            );
            let mut inputs = vec![
                uf_src.join("python/requirements.txt"),
                uf_src.join("python/requirements-nodeps.txt"),
            ];
            collect_files(
                &uf_src.join("python/shoppingcart/proto"),
                "proto",
                &mut inputs,
            );
            require_fresh(kind, &dir.join("python").join(".gen-stamp"), &inputs);
            Launch {
                program: python,
                args: vec!["-u".into(), main],
                env: vec![
                    ("PYTHONPATH", gen_dir.into_os_string()),
                    ("PYTHONUNBUFFERED", "1".into()),
                    ("PYTHONDONTWRITEBYTECODE", "1".into()),
                ],
            }
        }
    }
}

fn require_installed(kind: Kind, path: &Path) {
    assert!(
        path.exists(),
        "the {kind} user function ({}) is not installed: {} is missing. \
         Install the e2e user functions from the repository root with `{INSTALL_COMMAND}` \
         (cache: ${CACHE_DIR_ENV} or ~/.cache/statehouse).",
        kind.sdk(),
        path.display()
    );
}

/// The Python of the journal consumer sample's venv (`samples/journal-consumer-python`, built by
/// the install script): panics, saying how to install it, if it is missing or older than the
/// sample's requirements.
pub fn journal_consumer_python() -> PathBuf {
    let dir = install_dir().join("python");
    let python = dir.join("consumer-venv").join("bin").join("python");
    let stamp = dir.join(".consumer-venv-stamp");
    let requirements = repo_root().join("samples/journal-consumer-python/requirements.txt");
    let installed = modified(&stamp);
    assert!(
        python.is_file() && installed.is_some(),
        "the journal consumer sample's venv ({}) is not installed: run `{INSTALL_COMMAND}`",
        python.display()
    );
    assert!(
        modified(&requirements) <= installed,
        "the journal consumer sample's venv is older than {}: run `{INSTALL_COMMAND}` again",
        requirements.display()
    );
    python
}

fn require_fresh(kind: Kind, stamp: &Path, inputs: &[PathBuf]) {
    let stamp_time = modified(stamp).unwrap_or_else(|| {
        panic!(
            "the {kind} user function is not installed completely ({} is missing): run `{INSTALL_COMMAND}`",
            stamp.display()
        )
    });
    for input in inputs {
        if let Some(t) = modified(input)
            && t > stamp_time
        {
            panic!(
                "the installed {kind} user function is older than {}: run `{INSTALL_COMMAND}` again",
                input.display()
            );
        }
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn collect_files(dir: &Path, ext: &str, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect_files(&path, ext, out);
        } else if path.extension().is_some_and(|e| e == ext) {
            out.push(path);
        }
    }
}

/// A running user function. Killed (SIGKILL) when dropped, including while a test unwinds.
pub struct UserFunction {
    kind: Kind,
    /// The address it listens on: 127.0.0.1, or its network namespace's.
    host: Ipv4Addr,
    /// The network namespace it runs in (`crate::netns`), if not the root one.
    netns: Option<String>,
    port: u16,
    child: Option<Child>,
    log_path: PathBuf,
}

impl UserFunction {
    /// Starts `kind` on a free loopback port and waits until it accepts TCP connections.
    ///
    /// # Panics
    /// If it is not installed (with the command that installs it), if it exits early or does
    /// not listen within 60 s (with its log file's path and last lines).
    pub fn start(kind: Kind) -> UserFunction {
        Self::start_in(kind, None)
    }

    /// Like [`UserFunction::start`], inside the network namespace `netns` when given, listening
    /// on its address (reachable from the root namespace through the bridge).
    pub fn start_in(kind: Kind, netns: Option<&crate::netns::Namespace>) -> UserFunction {
        let log_dir = std::env::temp_dir().join("statehouse-user-functions");
        fs::create_dir_all(&log_dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", log_dir.display()));
        let log_path = log_dir.join(format!("{}.log", crate::unique(kind.name())));
        let mut last_failure = String::new();
        // A port picked free can be taken before the child binds it; retry on that only.
        for _ in 0..3 {
            let port = crate::process::free_port();
            let mut uf = UserFunction {
                kind,
                host: netns.map_or(Ipv4Addr::LOCALHOST, |ns| ns.addr()),
                netns: netns.map(|ns| ns.name().to_string()),
                port,
                child: None,
                log_path: log_path.clone(),
            };
            match uf.spawn_and_wait() {
                Ok(()) => return uf,
                Err(failure) if failure.port_taken => last_failure = failure.message,
                Err(failure) => panic!("{}", failure.message),
            }
        }
        panic!("{last_failure}")
    }

    /// Kills the process (if running) and starts it again on the same port, appending to the
    /// same log. For tests of user-function crashes and restarts.
    ///
    /// # Panics
    /// Like [`UserFunction::start`].
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.spawn_and_wait() {
                Ok(()) => return,
                // The old socket may linger for a moment.
                Err(f) if f.port_taken && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(f) => panic!("{}", f.message),
            }
        }
    }

    /// Which user function this is.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The loopback port it serves on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>` (or its namespace's address).
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((self.host, self.port))
    }

    /// The address it listens on.
    pub fn host(&self) -> Ipv4Addr {
        self.host
    }

    /// `http://127.0.0.1:<port>` (h2c; or its namespace's address), for tonic endpoints.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// The process id, or `None` after [`UserFunction::kill`].
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The file holding the process's stdout and stderr.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The log so far (lossy UTF-8).
    pub fn log(&self) -> String {
        read_lossy(&self.log_path)
    }

    /// Kills the process (SIGKILL) and reaps it. Idempotent.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            append_note(&self.log_path, "killed by the test harness");
        }
    }

    fn spawn_and_wait(&mut self) -> Result<(), StartFailure> {
        let launch = launch(self.kind);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", self.log_path.display()));
        let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
        let stderr = log.try_clone().expect("clone log file handle");

        // setpriv --pdeathsig: the child is killed when the starting thread dies, even when
        // the test process is killed without unwinding. setpriv execs, so the pid is the child's.
        let setpriv = Path::new("/usr/bin/setpriv");
        let mut cmd = if setpriv.is_file() {
            let mut c = Command::new(setpriv);
            c.args(["--pdeathsig", "KILL", "--"]);
            c
        } else {
            Command::new("env")
        };
        if let Some(ns) = &self.netns {
            cmd.args(["ip", "netns", "exec", ns]);
        }
        cmd.arg(&launch.program)
            .args(&launch.args)
            .env("HOST", self.host.to_string())
            .env("PORT", self.port.to_string())
            .envs(launch.env.iter().map(|(k, v)| (*k, v)))
            .current_dir(repo_root())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(stderr));
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "{}: cannot spawn {}: {e}",
                self.kind,
                launch.program.display()
            )
        });
        self.child = Some(child);

        let started = Instant::now();
        loop {
            if let Some(status) = self.exited() {
                let tail = read_from(&self.log_path, log_start);
                let port_taken = tail.to_ascii_lowercase().contains("address already in use")
                    || tail.contains("Failed to bind");
                return Err(StartFailure {
                    port_taken,
                    message: self
                        .describe_failure(&format!("exited with {status} before listening"), &tail),
                });
            }
            if TcpStream::connect_timeout(&self.addr(), Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if started.elapsed() > READY_TIMEOUT {
                self.kill();
                let tail = read_from(&self.log_path, log_start);
                return Err(StartFailure {
                    port_taken: false,
                    message: self.describe_failure(
                        &format!("did not accept TCP connections within {READY_TIMEOUT:?}"),
                        &tail,
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => {
                self.child = None;
                Some(status)
            }
            _ => None,
        }
    }

    fn describe_failure(&self, what: &str, log: &str) -> String {
        format!(
            "the {} user function ({}) on port {} {what}. Log: {}\n--- last lines ---\n{}",
            self.kind,
            self.kind.sdk(),
            self.port,
            self.log_path.display(),
            last_lines(log, 40)
        )
    }
}

impl fmt::Debug for UserFunction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserFunction")
            .field("kind", &self.kind)
            .field("port", &self.port)
            .field("pid", &self.pid())
            .field("log", &self.log_path)
            .finish()
    }
}

impl Drop for UserFunction {
    fn drop(&mut self) {
        if std::thread::panicking() && self.child.is_some() {
            eprintln!(
                "{}: killing it; its log is {}",
                self.kind,
                self.log_path.display()
            );
        }
        self.kill();
    }
}

struct StartFailure {
    port_taken: bool,
    message: String,
}

fn read_lossy(path: &Path) -> String {
    read_from(path, 0)
}

fn read_from(path: &Path, offset: u64) -> String {
    let mut buf = Vec::new();
    if let Ok(mut f) = File::open(path) {
        let _ = f.seek(SeekFrom::Start(offset));
        let _ = f.read_to_end(&mut buf);
    }
    String::from_utf8_lossy(&buf).into_owned()
}

fn append_note(path: &Path, note: &str) {
    if let Ok(mut f) = OpenOptions::new().append(true).open(path) {
        let _ = writeln!(f, "[statehouse-test-support] {note}");
    }
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_install_layout_is_found() {
        assert!(install_dir().ends_with("user-functions"));
        assert!(
            repo_root()
                .join("e2e")
                .join("user-functions")
                .join("install.sh")
                .is_file()
        );
    }

    #[test]
    #[should_panic(expected = "bash e2e/user-functions/install.sh")]
    fn a_missing_artifact_fails_loudly_with_the_install_command() {
        require_installed(
            Kind::GoShoppingCart,
            Path::new("/nonexistent/go-shoppingcart"),
        );
    }

    #[test]
    fn failure_texts_follow_each_sdk() {
        assert_eq!(
            Kind::PythonShoppingCart.add_negative_quantity_failure("p1"),
            "['Cannot add negative quantity of to item p1']"
        );
        assert_eq!(
            Kind::GoShoppingCart.remove_missing_item_failure("p1"),
            "cannot remove item p1 because it is not in the cart"
        );
    }

    #[test]
    fn last_lines_keeps_the_tail() {
        assert_eq!(last_lines("a\nb\nc", 2), "b\nc");
        assert_eq!(last_lines("a", 5), "a");
    }
}
