//! Network namespaces for the network-partition tests (R5): each processor with its user
//! function, and the gateway, run in a namespace of their own, joined to the root namespace
//! (where Kafka, Cassandra and the test's driver live) by a veth pair on one bridge. The
//! harness cuts, heals and degrades the links of a namespace with nftables rules inside it, so
//! a cut is a real one: packets are dropped, connections hang, nothing is told anything.
//!
//! Topology: bridge [`BRIDGE`] with [`BRIDGE_ADDR`]/16 in the root namespace; Kafka's `NETNS`
//! listener (`cargo xtask infra up` adds it: all interfaces, advertised at the bridge address,
//! port [`kafka_bootstrap`]) and Cassandra's CQL port answer there. A namespace gets
//! `10.77.<p>.<n>` (p from this process's id, n counting up), its veth as `eth0`, and a default
//! route via the bridge.
//!
//! Needs root, `ip` (iproute2) and `nft` (nftables); [`require`] fails with the fix otherwise.
//! The kernel's `netem` is not on every machine (not on ours): delays are not offered; cuts and
//! random packet loss are.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

/// The bridge in the root namespace.
pub const BRIDGE: &str = "shbr0";
/// The bridge's address: the root namespace (Kafka, Cassandra, the driver) as seen from a
/// namespace.
pub const BRIDGE_ADDR: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
/// CQL port of the infra's Cassandra.
const CASSANDRA_PORT: u16 = 9042;

/// Kafka's `NETNS` listener as processes in a namespace reach it
/// (`$STATEHOUSE_TEST_KAFKA_NETNS`, default `10.77.0.1:9094`).
pub fn kafka_bootstrap() -> String {
    std::env::var("STATEHOUSE_TEST_KAFKA_NETNS").unwrap_or_else(|_| format!("{BRIDGE_ADDR}:9094"))
}

/// The 3-broker cluster's `NETNS` listeners as processes in a namespace reach them (node `i`
/// on port 19291 + `i`).
pub fn kafka_cluster_bootstrap() -> String {
    (1..=3)
        .map(|i| format!("{BRIDGE_ADDR}:{}", CLUSTER_NETNS_BASE + i - 1))
        .collect::<Vec<_>>()
        .join(",")
}

/// The first `NETNS` listener port of the 3-broker cluster.
const CLUSTER_NETNS_BASE: u16 = 19_292;

/// Cassandra as processes in a namespace reach it: `127.0.0.1:9042`, as in the root
/// namespace, because drivers connect to the address Cassandra advertises (127.0.0.1). Each
/// namespace translates it to the bridge (DNAT, with `route_localnet` and masquerading).
pub fn cassandra_contact_point() -> String {
    format!("127.0.0.1:{CASSANDRA_PORT}")
}

/// A link of a namespace that can be cut or degraded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Link {
    /// To Kafka (its `NETNS` listener).
    Kafka,
    /// To node `n` (from 1) of the 3-broker cluster.
    KafkaNode(u16),
    /// To Cassandra.
    Cassandra,
    /// To another namespace (e.g. processor ↔ gateway), both ways.
    Peer(Ipv4Addr),
}

impl Link {
    /// The nftables match of this link's outgoing and incoming packets.
    fn matches(self) -> (String, String) {
        match self {
            Link::Kafka => {
                let port = kafka_bootstrap()
                    .rsplit(':')
                    .next()
                    .and_then(|p| p.parse::<u16>().ok())
                    .expect("STATEHOUSE_TEST_KAFKA_NETNS is host:port");
                (
                    format!("ip daddr {BRIDGE_ADDR} tcp dport {port}"),
                    format!("ip saddr {BRIDGE_ADDR} tcp sport {port}"),
                )
            }
            Link::KafkaNode(n) => {
                let port = CLUSTER_NETNS_BASE + n - 1;
                (
                    format!("ip daddr {BRIDGE_ADDR} tcp dport {port}"),
                    format!("ip saddr {BRIDGE_ADDR} tcp sport {port}"),
                )
            }
            Link::Cassandra => (
                format!("ip daddr {BRIDGE_ADDR} tcp dport {CASSANDRA_PORT}"),
                format!("ip saddr {BRIDGE_ADDR} tcp sport {CASSANDRA_PORT}"),
            ),
            Link::Peer(addr) => (format!("ip daddr {addr}"), format!("ip saddr {addr}")),
        }
    }
}

/// Fail (with the fix) unless this process can build namespaces: root, `ip`, `nft`.
///
/// # Panics
/// When something is missing.
pub fn require() {
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    assert_eq!(
        uid, "0",
        "the network-partition tests need root (network namespaces, nftables): run them as root (CI does)"
    );
    for (tool, package) in [("ip", "iproute2"), ("nft", "nftables")] {
        let found = Command::new(tool)
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        assert!(
            found,
            "`{tool}` is missing: install it with `apt-get install {package}` (.ci/run does)"
        );
    }
}

fn run(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn must(args: &[&str]) {
    if let Err(e) = run(args) {
        panic!("{e}");
    }
}

/// Create the bridge once per machine (idempotent; several test processes may race).
fn ensure_bridge() {
    static DONE: Mutex<bool> = Mutex::new(false);
    let mut done = DONE.lock().unwrap_or_else(|e| e.into_inner());
    if *done {
        return;
    }
    if run(&["ip", "link", "show", BRIDGE]).is_err() {
        // Another process may create it at the same moment: check again after a failure.
        if let Err(e) = run(&["ip", "link", "add", BRIDGE, "type", "bridge"])
            && run(&["ip", "link", "show", BRIDGE]).is_err()
        {
            panic!("{e}");
        }
    }
    let cidr = format!("{BRIDGE_ADDR}/16");
    let has_addr = Command::new("ip")
        .args(["-4", "addr", "show", "dev", BRIDGE])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(&cidr))
        .unwrap_or(false);
    if !has_addr && let Err(e) = run(&["ip", "addr", "add", &cidr, "dev", BRIDGE]) {
        assert!(e.contains("File exists"), "{e}");
    }
    must(&["ip", "link", "set", BRIDGE, "up"]);
    remove_stale_namespaces();
    *done = true;
}

/// Namespaces left by test processes that died without cleaning up (`sh-<pid>-<n>`).
fn remove_stale_namespaces() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(pid) = name
            .strip_prefix("sh-")
            .and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = run(&["ip", "netns", "del", name]);
        }
    }
}

/// One network namespace on the bridge. Deleted when dropped (stop its processes first).
pub struct Namespace {
    name: String,
    addr: Ipv4Addr,
    state: Mutex<Faults>,
}

#[derive(Default)]
struct Faults {
    cut: BTreeSet<Link>,
    /// Links dropping a share of their packets (percent).
    lossy: Vec<(Link, u8)>,
}

impl Namespace {
    /// A new namespace on the bridge, with its own address and no faults.
    ///
    /// # Panics
    /// When it cannot be built (see [`require`]).
    pub fn create() -> Self {
        require();
        ensure_bridge();
        static NEXT: AtomicU32 = AtomicU32::new(2);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(n < 255, "at most 253 namespaces per test process");
        let pid = std::process::id();
        let addr = Ipv4Addr::new(10, 77, (pid % 250 + 1) as u8, n as u8);
        let name = format!("sh-{pid}-{n}");
        // veth names: at most 15 bytes.
        let host_side = format!("shv{}x{n}", pid % 100_000);
        let _ = run(&["ip", "netns", "del", &name]);
        must(&["ip", "netns", "add", &name]);
        let ns = Self {
            name,
            addr,
            state: Mutex::new(Faults::default()),
        };
        must(&["ip", "-n", &ns.name, "link", "set", "lo", "up"]);
        must(&[
            "ip", "link", "add", &host_side, "type", "veth", "peer", "name", "eth0", "netns",
            &ns.name,
        ]);
        must(&["ip", "link", "set", &host_side, "master", BRIDGE, "up"]);
        let cidr = format!("{addr}/16");
        must(&["ip", "-n", &ns.name, "addr", "add", &cidr, "dev", "eth0"]);
        must(&["ip", "-n", &ns.name, "link", "set", "eth0", "up"]);
        must(&[
            "ip",
            "netns",
            "exec",
            &ns.name,
            "sh",
            "-c",
            "echo 1 > /proc/sys/net/ipv4/conf/all/route_localnet && echo 1 > /proc/sys/net/ipv4/conf/eth0/route_localnet",
        ]);
        ns.nft(&format!(
            "table ip statehouse_nat {{
  chain out {{ type nat hook output priority -100; ip daddr 127.0.0.1 tcp dport {CASSANDRA_PORT} dnat to {BRIDGE_ADDR}:{CASSANDRA_PORT}; }}
  chain post {{ type nat hook postrouting priority 100; oifname \"eth0\" ip saddr 127.0.0.0/8 masquerade; }}
}}
"
        ));
        ns.apply(&Faults::default());
        ns
    }

    /// Its name (`ip netns exec <name> …`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its address on the bridge.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// Cut `link`: every packet of it is dropped, both ways, until [`Namespace::heal`].
    pub fn cut(&self, link: Link) {
        let mut faults = self.state.lock().unwrap_or_else(|e| e.into_inner());
        faults.cut.insert(link);
        self.apply(&faults);
    }

    /// Drop `percent` of `link`'s packets (at random, both ways) until healed.
    pub fn lossy(&self, link: Link, percent: u8) {
        let mut faults = self.state.lock().unwrap_or_else(|e| e.into_inner());
        faults.lossy.retain(|(l, _)| *l != link);
        faults.lossy.push((link, percent.min(100)));
        self.apply(&faults);
    }

    /// Heal `link` (cut or lossy).
    pub fn heal(&self, link: Link) {
        let mut faults = self.state.lock().unwrap_or_else(|e| e.into_inner());
        faults.cut.remove(&link);
        faults.lossy.retain(|(l, _)| *l != link);
        self.apply(&faults);
    }

    /// Heal every link.
    pub fn heal_all(&self) {
        let mut faults = self.state.lock().unwrap_or_else(|e| e.into_inner());
        *faults = Faults::default();
        self.apply(&faults);
    }

    /// The links cut now.
    pub fn cuts(&self) -> Vec<Link> {
        let faults = self.state.lock().unwrap_or_else(|e| e.into_inner());
        faults.cut.iter().copied().collect()
    }

    /// Replace the namespace's fault rules with `faults`, atomically (one `nft -f`
    /// transaction). Outgoing packets are matched after address translation (postrouting),
    /// incoming ones before it (prerouting, ahead of conntrack).
    fn apply(&self, faults: &Faults) {
        let mut rules = String::from(
            "table inet statehouse_faults\ndelete table inet statehouse_faults\ntable inet statehouse_faults {\n  chain out { type filter hook postrouting priority 300; policy accept;\n",
        );
        let mut inbound = String::from(
            "  chain in { type filter hook prerouting priority -300; policy accept;\n",
        );
        for link in &faults.cut {
            let (out, inc) = link.matches();
            rules.push_str(&format!("    {out} drop\n"));
            inbound.push_str(&format!("    {inc} drop\n"));
        }
        for (link, percent) in &faults.lossy {
            let (out, inc) = link.matches();
            // `numgen random mod 100` ranges 0–99: 100% is a plain drop, 0% no rule at all.
            let share = match percent {
                0 => continue,
                100.. => String::new(),
                p => format!("numgen random mod 100 < {p} "),
            };
            rules.push_str(&format!("    {out} {share}drop\n"));
            inbound.push_str(&format!("    {inc} {share}drop\n"));
        }
        rules.push_str("  }\n");
        inbound.push_str("  }\n}\n");
        rules.push_str(&inbound);
        self.nft(&rules);
    }

    /// Load `rules` into this namespace's nftables.
    fn nft(&self, rules: &str) {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.name, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running nft");
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(rules.as_bytes())
            .expect("writing nft rules");
        let out = child.wait_with_output().expect("waiting for nft");
        assert!(
            out.status.success(),
            "nft in {} refused the rules: {}\n{rules}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `ip netns exec <name> <program>`: a command that runs `program` in this namespace (`ip`
    /// execs it, so the child's pid is the program's).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name]).arg(program);
        command
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = run(&["ip", "netns", "del", &self.name]);
    }
}

impl std::fmt::Debug for Namespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Namespace")
            .field("name", &self.name)
            .field("addr", &self.addr)
            .finish()
    }
}
