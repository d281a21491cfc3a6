//! A whole Statehouse stack as real processes, for end-to-end and fault tests: a user
//! function, N `statehouse processor`s (its sidecars) and a `statehouse gateway`, on the real
//! Kafka and Cassandra, with topics and keyspace of their own.

use std::time::{Duration, Instant};

use crate::process::{Statehouse, free_port};
use crate::user_function::{Kind, UserFunction};
use crate::{cassandra_contact_point, kafka_bootstrap, unique, unique_keyspace};

/// Settings of a [`Stack`].
#[derive(Debug, Clone)]
pub struct Options {
    pub kind: Kind,
    pub service: String,
    pub partitions: u32,
    pub processors: usize,
    /// Consumer-group session timeout: how fast a killed processor's partitions move.
    pub session_timeout_ms: u32,
    /// Extra `--set` overrides for every processor.
    pub processor_sets: Vec<String>,
    /// Where a processor calls its user function, given the user function's port (default:
    /// that port): e.g. an interceptor in between.
    pub user_function_port: Option<PortMap>,
    /// Run each pod (processor + user function) and the gateway in network namespaces of their
    /// own (`crate::netns`), so tests can cut their links.
    pub netns: bool,
    /// Use the 3-broker cluster (`crate::kafka_cluster_bootstrap`) with replication factor 3
    /// instead of the single broker.
    pub kafka_cluster: bool,
    /// Extra `--set` overrides for every component: processors and the gateway.
    pub common_sets: Vec<String>,
    /// How the harness asks the gateway whether it serves (default: `GET /` over plaintext
    /// HTTP/1.1); a gateway with `[gateway.tls]` needs a probe that speaks TLS.
    pub gateway_probe: Option<Probe>,
    /// Environment variables for every `statehouse` process (secrets: never `--set`, which a
    /// command line shows).
    pub env: Vec<(String, String)>,
}

/// Given the gateway's `host:port`, the HTTP status of its `GET /` (200 once a service is
/// routable) or why there is none.
#[derive(Clone)]
pub struct Probe(pub std::sync::Arc<ProbeFn>);

/// The function of a [`Probe`].
pub type ProbeFn = dyn Fn(&str) -> Result<u16, String> + Send + Sync;

impl std::fmt::Debug for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Probe(..)")
    }
}

/// A map from a user function's port to the port its processor calls.
#[derive(Clone)]
pub struct PortMap(pub std::sync::Arc<dyn Fn(u16) -> u16 + Send + Sync>);

impl std::fmt::Debug for PortMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PortMap(..)")
    }
}

impl Options {
    pub fn new(kind: Kind) -> Self {
        Self {
            kind,
            service: "shopping-cart".into(),
            partitions: 4,
            processors: 1,
            session_timeout_ms: 6_000,
            processor_sets: Vec::new(),
            user_function_port: None,
            netns: false,
            kafka_cluster: false,
            common_sets: Vec::new(),
            gateway_probe: None,
            env: Vec::new(),
        }
    }
}

/// One processor with its own user function (the sidecar pair of a pod).
pub struct Pod {
    pub user_function: UserFunction,
    pub processor: Statehouse,
    /// The address its ports listen on (127.0.0.1, or its namespace's).
    pub host: String,
    pub internal_port: u16,
    pub metrics_port: u16,
    /// Its network namespace ([`Options::netns`]); dropped after the processes.
    pub netns: Option<crate::netns::Namespace>,
}

impl Pod {
    /// `host:port` of its internal (processor) port.
    pub fn internal_addr(&self) -> String {
        format!("{}:{}", self.host, self.internal_port)
    }
}

/// See the module docs. Everything is killed when dropped.
pub struct Stack {
    pub options: Options,
    pub prefix: String,
    pub keyspace: String,
    pub pods: Vec<Pod>,
    pub gateway: Statehouse,
    /// `127.0.0.1:<port>` of the gateway (its namespace's address with [`Options::netns`]).
    pub gateway_addr: String,
    /// The gateway's network namespace ([`Options::netns`]); dropped after the processes.
    pub gateway_netns: Option<crate::netns::Namespace>,
}

impl Stack {
    /// Start the stack and wait until the gateway routes a command.
    pub fn start(options: Options) -> Self {
        let prefix = format!("{}.", unique("e2e"));
        let keyspace = unique_keyspace("e2e");
        let common = common_sets(&prefix, &keyspace, &options);
        let root_sets = common_sets(
            &prefix,
            &keyspace,
            &Options {
                netns: false,
                ..options.clone()
            },
        );
        let status = std::process::Command::new(crate::process::binary())
            .args(
                root_sets
                    .iter()
                    .flat_map(|s| ["--set".to_string(), s.clone()]),
            )
            .args(["admin", "migrate"])
            .envs(options.env.iter().map(|(k, v)| (k, v)))
            .stdout(std::process::Stdio::null())
            .status()
            .expect("running statehouse admin migrate");
        assert!(status.success(), "statehouse admin migrate failed");
        let pods = (0..options.processors)
            .map(|_| start_pod(&common, &options))
            .collect();
        let gateway_port = free_port();
        let gateway_netns = options.netns.then(crate::netns::Namespace::create);
        let host = gateway_netns
            .as_ref()
            .map_or_else(|| "127.0.0.1".to_string(), |ns| ns.addr().to_string());
        let mut sets = common.clone();
        sets.push(format!("gateway.listen=\"{host}:{gateway_port}\""));
        sets.push(format!("gateway.metrics-listen=\"{host}:{}\"", free_port()));
        let gateway =
            Statehouse::start_with("gateway", &sets, &options.env, gateway_netns.as_ref());
        let mut stack = Self {
            options,
            prefix,
            keyspace,
            pods,
            gateway,
            gateway_addr: format!("{host}:{gateway_port}"),
            gateway_netns,
        };
        stack.wait_for_port(&host, gateway_port);
        stack.wait_for_gateway();
        stack
    }

    /// [`Stack::start`], then wait (up to 120 s each) until every processor is ready.
    pub fn start_ready(options: Options) -> Self {
        let mut stack = Self::start(options);
        for i in 0..stack.pods.len() {
            stack.wait_ready(i, Duration::from_secs(120));
        }
        stack
    }

    /// Wait until the gateway has learned a service from the registry (`GET /` answers 200).
    pub fn wait_for_gateway(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let answer = match &self.options.gateway_probe {
                Some(probe) => (probe.0)(&self.gateway_addr),
                None => crate::http::request(&self.gateway_addr, "GET", "/", &[], None)
                    .map(|r| r.status)
                    .map_err(|e| e.to_string()),
            };
            if answer.as_ref().is_ok_and(|status| *status == 200) {
                return;
            }
            if Instant::now() >= deadline {
                let processors: Vec<String> = self
                    .pods
                    .iter_mut()
                    .map(|p| {
                        let state = if p.processor.is_running() {
                            "running"
                        } else {
                            "exited"
                        };
                        format!("{} ({state})", p.processor.log_path().display())
                    })
                    .collect();
                panic!(
                    "the gateway learned no service within 90 s ({answer:?}); logs: gateway {}, processors {}",
                    self.gateway.log_path().display(),
                    processors.join(", ")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The Kafka bootstrap servers as the test process (root namespace) reaches them.
    pub fn kafka_bootstrap(&self) -> String {
        if self.options.kafka_cluster {
            crate::kafka_cluster_bootstrap()
        } else {
            kafka_bootstrap()
        }
    }

    /// The `--set` overrides every component of this stack shares.
    pub fn common_sets(&self) -> Vec<String> {
        common_sets(&self.prefix, &self.keyspace, &self.options)
    }

    /// Add another pod (scale out).
    pub fn add_pod(&mut self) -> usize {
        let pod = start_pod(&self.common_sets(), &self.options);
        self.pods.push(pod);
        self.pods.len() - 1
    }

    fn wait_for_port(&self, host: &str, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect((host, port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "the gateway did not listen on {port}; log: {}",
                self.gateway.log_path().display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether pod `i`'s processor reports ready (`/readyz`).
    pub fn is_ready(&self, i: usize) -> bool {
        crate::http::request(
            &format!("{}:{}", self.pods[i].host, self.pods[i].metrics_port),
            "GET",
            "/readyz",
            &[],
            None,
        )
        .is_ok_and(|r| r.status == 200)
    }

    /// The samples of pod `i`'s processor metrics (`/metrics`) whose series starts with
    /// `series` (a metric name, optionally with the start of its labels, e.g.
    /// `statehouse_partition_recoveries_total{cause="fenced"`), as (series, value).
    ///
    /// # Panics
    /// If the metrics endpoint does not answer.
    pub fn metrics(&self, i: usize, series: &str) -> Vec<(String, f64)> {
        crate::http::metric_samples(
            &format!("{}:{}", self.pods[i].host, self.pods[i].metrics_port),
            series,
        )
        .expect("scraping the processor's /metrics")
    }

    /// Wait until pod `i` is ready.
    pub fn wait_ready(&mut self, i: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.is_ready(i) {
            assert!(
                self.pods[i].processor.is_running(),
                "processor {i} exited; log: {}",
                self.pods[i].processor.log_path().display()
            );
            assert!(
                Instant::now() < deadline,
                "processor {i} not ready within {timeout:?}; log: {}",
                self.pods[i].processor.log_path().display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn common_sets(prefix: &str, keyspace: &str, options: &Options) -> Vec<String> {
    let kafka = match (options.netns, options.kafka_cluster) {
        (false, false) => kafka_bootstrap(),
        (false, true) => crate::kafka_cluster_bootstrap(),
        (true, false) => crate::netns::kafka_bootstrap(),
        (true, true) => {
            crate::kafka_cluster_bootstrap(); // fails loudly when the cluster is down
            crate::netns::kafka_cluster_bootstrap()
        }
    };
    let cassandra = if options.netns {
        crate::netns::cassandra_contact_point()
    } else {
        cassandra_contact_point()
    };
    let (replication, min_isr) = if options.kafka_cluster {
        (3, 2)
    } else {
        (1, 1)
    };
    let mut sets = vec![
        format!("kafka.replication-factor={replication}"),
        format!("kafka.min-insync-replicas={min_isr}"),
        format!("kafka.bootstrap-servers={kafka}"),
        format!("kafka.topic-prefix={prefix}"),
        format!("kafka.session-timeout-ms={}", options.session_timeout_ms),
        format!("cassandra.contact-points=[\"{cassandra}\"]"),
        format!("cassandra.keyspace={keyspace}"),
        format!("processor.partitions={}", options.partitions),
    ];
    sets.extend(options.common_sets.iter().cloned());
    sets
}

fn start_pod(common: &[String], options: &Options) -> Pod {
    let netns = options.netns.then(crate::netns::Namespace::create);
    let user_function = UserFunction::start_in(options.kind, netns.as_ref());
    let host = user_function.host().to_string();
    let internal_port = free_port();
    let metrics_port = free_port();
    let mut sets = common.to_vec();
    sets.extend([
        format!("processor.service={}", options.service),
        format!("processor.listen=\"{host}:{internal_port}\""),
        format!("processor.metrics-listen=\"{host}:{metrics_port}\""),
        format!("processor.user-function-host=\"{host}\""),
        format!(
            "processor.user-function-port={}",
            options
                .user_function_port
                .as_ref()
                .map_or(user_function.port(), |map| (map.0)(user_function.port()))
        ),
        "processor.backup-interval-ms=200".to_string(),
    ]);
    sets.extend(options.processor_sets.iter().cloned());
    let processor = Statehouse::start_with("processor", &sets, &options.env, netns.as_ref());
    Pod {
        user_function,
        processor,
        host,
        internal_port,
        metrics_port,
        netns,
    }
}
