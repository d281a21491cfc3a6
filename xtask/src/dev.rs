//! `cargo xtask dev`: the whole of Statehouse on this machine, with its sample service.
//!
//! Starts (or reuses) Kafka and Cassandra, builds the `statehouse` binary and the Rust
//! shopping-cart sample, migrates the keyspace, then runs the sample user function, a processor
//! (its sidecar), a gateway and a projector (the sample's `carts` projection) as child
//! processes, waits until the gateway serves, and prints
//! how to call the cart with grpcurl and curl. Ctrl-C stops everything it started (the infra
//! keeps running; `cargo xtask infra down` stops it).

use std::fs::File;
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::infra;
use crate::layout::Layout;

/// Options of `cargo xtask dev`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Args {
    /// Gateway port (gRPC, gRPC-Web and HTTP/JSON).
    #[arg(long, default_value_t = 9000)]
    port: u16,
    /// Start everything, print the instructions, and exit without waiting (the processes keep
    /// running; for scripted demos).
    #[arg(long)]
    detach: bool,
}

struct Children(Vec<(String, Child)>);

impl Drop for Children {
    fn drop(&mut self) {
        for (name, child) in self.0.iter_mut().rev() {
            if matches!(child.try_wait(), Ok(None)) {
                // SIGTERM first: the processor hands its partitions over and flushes.
                let _ = Command::new("kill").arg(child.id().to_string()).status();
                let deadline = Instant::now() + Duration::from_secs(15);
                while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                    std::thread::sleep(Duration::from_millis(100));
                }
                if matches!(child.try_wait(), Ok(None)) {
                    let _ = child.kill();
                }
                let _ = child.wait();
                eprintln!("stopped {name}");
            }
        }
    }
}

pub(crate) fn run(layout: &Layout, args: &Args) -> Result<()> {
    infra::up(
        layout,
        infra::Extras {
            kafka_brokers: 1,
            jaeger: false,
            secure: false,
        },
    )?;
    let env = infra::test_env()?;
    let kafka = env[0].1.clone();
    let cassandra = env[1].1.clone();

    println!("==> building statehouse and the shopping-cart sample");
    let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args([
            "build",
            "-p",
            "statehouse-cli",
            "-p",
            "statehouse-sample-shopping-cart",
        ])
        .current_dir(&layout.workspace)
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("cargo build failed");
    }
    let bin = layout.workspace.join("target").join("debug");
    let statehouse = bin.join("statehouse");
    let logs = layout.infra.join("dev");
    std::fs::create_dir_all(&logs)?;

    let common = [
        format!("kafka.bootstrap-servers={kafka}"),
        format!("cassandra.contact-points=[\"{cassandra}\"]"),
    ];
    let set_args = |extra: &[String]| -> Vec<String> {
        common
            .iter()
            .chain(extra)
            .flat_map(|s| ["--set".to_string(), s.clone()])
            .collect()
    };

    let status = Command::new(&statehouse)
        .args(set_args(&[]))
        .args(["admin", "migrate"])
        .status()
        .context("running statehouse admin migrate")?;
    if !status.success() {
        bail!("statehouse admin migrate failed");
    }

    let uf_port = 8080;
    ensure_free(uf_port, "the sample user function")?;
    ensure_free(args.port, "the gateway")?;
    ensure_free(9100, "the processor")?;
    ensure_free(9300, "the projector")?;
    ensure_free(9095, "the projector's metrics")?;
    let mut children = Children(Vec::new());
    children.0.push((
        "shopping-cart user function".into(),
        spawn(
            Command::new(bin.join("statehouse-sample-shopping-cart"))
                .env("HOST", "127.0.0.1")
                .env("PORT", uf_port.to_string()),
            &logs.join("user-function.log"),
        )?,
    ));
    wait_for_port(uf_port, Duration::from_secs(30), "the user function")?;
    children.0.push((
        "processor".into(),
        spawn(
            Command::new(&statehouse)
                .args(set_args(&[
                    "processor.service=shopping-cart".into(),
                    "processor.listen=\"127.0.0.1:9100\"".into(),
                    "processor.metrics-listen=\"127.0.0.1:9091\"".into(),
                    format!("processor.user-function-port={uf_port}"),
                ]))
                .arg("processor"),
            &logs.join("processor.log"),
        )?,
    ));
    children.0.push((
        "gateway".into(),
        spawn(
            Command::new(&statehouse)
                .args(set_args(&[
                    format!("gateway.listen=\"127.0.0.1:{}\"", args.port),
                    "gateway.metrics-listen=\"127.0.0.1:9090\"".into(),
                ]))
                .arg("gateway"),
            &logs.join("gateway.log"),
        )?,
    ));
    wait_for_port(args.port, Duration::from_secs(60), "the gateway")?;
    wait_for_ready(9091, Duration::from_secs(120), &mut children, &logs)?;
    // The sample's `carts` projection, once the processor has created the journal topic.
    children.0.push((
        "projector".into(),
        spawn(
            Command::new(&statehouse)
                .args(set_args(&[
                    "projector.service=shopping-cart".into(),
                    format!("projector.handler-port={uf_port}"),
                    "projector.listen=\"127.0.0.1:9300\"".into(),
                    "projector.metrics-listen=\"127.0.0.1:9095\"".into(),
                ]))
                .arg("projector"),
            &logs.join("projector.log"),
        )?,
    ));
    wait_for_port(9300, Duration::from_secs(60), "the projector")?;

    let port = args.port;
    println!(
        r#"
Statehouse is running with the shopping-cart sample:
  gateway        127.0.0.1:{port}  (gRPC, gRPC-Web, HTTP/JSON; reflection)   log {logs}/gateway.log
  processor      127.0.0.1:9100  (metrics and /readyz on :9091)            log {logs}/processor.log
  projector      127.0.0.1:9300  (the `carts` projection; metrics on :9095) log {logs}/projector.log
  user function  127.0.0.1:{uf_port}  (Rust, statehouse-sample-shopping-cart)    log {logs}/user-function.log
  Kafka {kafka}, Cassandra {cassandra}

Try it:
  grpcurl -plaintext 127.0.0.1:{port} list
  grpcurl -plaintext -d '{{"user_id":"alice","product_id":"apple","name":"Apple","quantity":2}}' \
      127.0.0.1:{port} com.example.shoppingcart.ShoppingCart/AddItem
  grpcurl -plaintext -d '{{"user_id":"alice"}}' 127.0.0.1:{port} com.example.shoppingcart.ShoppingCart/GetCart
  curl -s -X POST -H 'Content-Type: application/json' \
      -d '{{"productId":"pear","name":"Pear","quantity":1}}' http://127.0.0.1:{port}/cart/alice/items/add
  curl -s http://127.0.0.1:{port}/carts/alice
  curl -s http://127.0.0.1:{port}/carts/alice/items
  grpcurl -plaintext -import-path schemas/proto -proto statehouse/projection/v1/projection.proto \
      -d '{{"projection":"carts","entity_id":"alice"}}' 127.0.0.1:9300 statehouse.projection.v1.Projections/Get
  cargo run -q -p statehouse-cli -- admin projections status carts --service shopping-cart

Ctrl-C stops the four processes (`cargo xtask infra down` stops Kafka and Cassandra)."#,
        logs = logs.display(),
    );
    if args.detach {
        for (_, child) in &children.0 {
            println!("pid {}", child.id());
        }
        std::mem::forget(children);
        return Ok(());
    }
    loop {
        for (name, child) in children.0.iter_mut() {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "{name} exited ({status}); see its log in {}",
                    logs.display()
                );
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Start `command` with stdin closed and stdout/stderr going to `log`.
pub(crate) fn spawn(command: &mut Command, log: &Path) -> Result<Child> {
    let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let err = out.try_clone()?;
    command
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .with_context(|| format!("starting {:?}", command.get_program()))
}

fn ensure_free(port: u16, what: &str) -> Result<()> {
    if TcpStream::connect(("127.0.0.1", port)).is_ok() {
        bail!("port {port} (for {what}) is already in use; stop whatever listens there");
    }
    Ok(())
}

/// Wait until something accepts TCP connections on 127.0.0.1:`port`.
pub(crate) fn wait_for_port(port: u16, timeout: Duration, what: &str) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("{what} did not listen on port {port} within {timeout:?}")
}

/// Poll the processor's `/readyz` until it answers 200 (discovery and recovery done).
fn wait_for_ready(
    port: u16,
    timeout: Duration,
    children: &mut Children,
    logs: &Path,
) -> Result<()> {
    use std::io::{Read, Write};
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        for (name, child) in children.0.iter_mut() {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "{name} exited ({status}); see its log in {}",
                    logs.display()
                );
            }
        }
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            let mut answer = String::new();
            let _ = s.read_to_string(&mut answer);
            if answer.starts_with("HTTP/1.1 200") {
                return Ok(());
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bail!(
        "the processor was not ready within {timeout:?}; see {}",
        logs.display()
    )
}
