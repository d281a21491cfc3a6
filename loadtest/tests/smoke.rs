//! Smoke test of the load generator itself (not a benchmark: no timing is asserted). It runs a
//! short sweep — closed loop, one open-loop step, the shopping-cart mix, the correctness check —
//! against the in-memory variant of the baseline server, in process, and renders the reports.
//! The pure pieces of the bench's arithmetic (medians over rounds, the floor at a batch size,
//! CPU and records per step) are checked on fixed numbers.

use statehouse_loadtest::baseline::{Baseline, Options as BaselineOptions, Variant};
use statehouse_loadtest::floor;
use statehouse_loadtest::keys::Distribution;
use statehouse_loadtest::report::{self, Bench, Machine, Rounds, Spread};
use statehouse_loadtest::sweep;
use statehouse_loadtest::usage::{self, LOAD_GENERATOR, Probe, StepUsage};

/// The in-memory variant of the baseline server, serving in this process on a free port.
struct MemoryServer {
    addr: std::net::SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    serving: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl MemoryServer {
    async fn start() -> Self {
        let server = Baseline::connect(&BaselineOptions {
            variant: Variant::Memory,
            contact_point: String::new(),
            keyspace: String::new(),
            max_attempts: 1,
        })
        .await
        .expect("memory baseline");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = tokio::spawn(server.serve(listener, async {
            let _ = stopped.await;
        }));
        Self {
            addr,
            stop,
            serving,
        }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        self.serving.await.unwrap().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_sweep_against_an_in_memory_target_reports_and_verifies() {
    let server = MemoryServer::start().await;
    let addr = server.addr;

    let options = sweep::Options {
        target: "memory".into(),
        uri: format!("http://{addr}"),
        scenario: "es-counter".into(),
        entities: 50,
        distribution: Distribution::Zipf { s: 1.1 },
        clients: 8,
        connections: 2,
        warmup_s: 0.2,
        closed_s: 0.6,
        step_s: 0.4,
        fractions: vec![0.5],
        rates: Vec::new(),
        poisson: true,
        slo_p99_ms: 1_000.0,
        max_in_flight: 64,
        timeout_ms: 5_000,
        mix_scenario: Some("shopping-cart".into()),
        mix_fraction: 0.2,
        verify: true,
        progress: false,
        seed: 3,
        run_id: "smoke".into(),
        closed_only: false,
        // The server runs in this process: its CPU is sampled under its own name too.
        probe: Probe {
            pids: vec![("memory server".into(), std::process::id())],
            metrics_url: None,
        },
    };
    let result = sweep::run(&options).await.expect("sweep");

    assert!(result.closed.ok > 0, "closed loop completed nothing");
    assert!(
        result.closed.errors.is_empty(),
        "{:?}",
        result.closed.errors
    );
    assert_eq!(result.steps.len(), 1);
    assert_eq!(result.steps[0].mode, "open");
    assert!(result.steps[0].ok > 0);
    let mix = result.mix.as_ref().expect("mix phase");
    assert!(
        mix.methods.contains_key("GetCart"),
        "{:?}",
        mix.methods.keys()
    );
    assert!(mix.methods.contains_key("AddItem"));
    // Only "not in the cart" rejections are possible in the mix.
    assert!(
        mix.errors
            .keys()
            .all(|k| k == "RemoveItem FailedPrecondition"),
        "{:?}",
        mix.errors
    );
    let v = result.verification.as_ref().expect("verified");
    assert!(v.ok, "{v:?}");
    assert!(v.acknowledged_increments > 0);
    assert_eq!(v.acknowledged_increments, v.counted);
    assert!(result.summary.commands_sent >= v.acknowledged_increments);
    // One usage sample per step: the closed loop, the open-loop step, the mix.
    assert_eq!(result.usage.len(), 3, "{:?}", result.usage);
    assert_eq!(result.usage[0].label, result.closed.label);
    for u in &result.usage {
        assert!(u.commands > 0, "{u:?}");
        assert!(u.cpu_s.contains_key(LOAD_GENERATOR), "{u:?}");
        assert!(u.cpu_s.contains_key("memory server"), "{u:?}");
        assert_eq!(u.records_per_transaction(), None);
    }
    assert_eq!(
        result.usage.iter().map(|u| u.commands).sum::<u64>(),
        result.summary.commands_sent
    );

    let mut bench = Bench {
        scenario: "es-counter".into(),
        timestamp: "smoke".into(),
        machine: Machine::detect(),
        settings: Default::default(),
        targets: vec![result],
        floor: None,
        processes: Vec::new(),
        processor_metrics: Default::default(),
        ratios: Default::default(),
        checks: Vec::new(),
        valid: false,
        notes: Vec::new(),
    };
    bench.finish();
    assert!(bench.valid);
    let md = bench.markdown(Some("plot.svg"));
    assert!(md.contains("| memory |"), "{md}");
    let svg = report::svg(&bench.targets, "smoke");
    assert!(
        svg.starts_with("<svg") && svg.contains("<polyline"),
        "{svg}"
    );
    let json = serde_json::to_string(&bench).unwrap();
    let back: Bench = serde_json::from_str(&json).unwrap();
    assert_eq!(back.targets.len(), 1);
    assert!(md.contains("## CPU per step: memory"), "{md}");

    // A closed-loop-only sweep: no steps, no mix, no check.
    let warm = sweep::run(&sweep::Options {
        closed_only: true,
        run_id: "smoke-warm".into(),
        probe: Probe::default(),
        ..options
    })
    .await
    .expect("closed-only sweep");
    assert!(warm.closed.ok > 0);
    assert!(warm.steps.is_empty() && warm.mix.is_none() && warm.verification.is_none());
    assert_eq!(warm.usage.len(), 1);

    // The same sweep as "statehouse" with writer counters (3 records per transaction) against
    // a floor swept at 2 and 4 records per transaction: the floor at its batch is interpolated.
    let mut statehouse = bench.targets[0].clone();
    statehouse.options.target = "statehouse".into();
    statehouse.usage[0].writer_records = Some(300.0);
    statehouse.usage[0].writer_transactions = Some(100.0);
    let closed_max = statehouse.summary.closed_max_throughput;
    let point = |k: usize, rate: f64| floor::Outcome {
        fixed_batch: Some(k),
        records_per_s: rate,
        ..Default::default()
    };
    let floor_result = floor::Result {
        options: floor::Options {
            bootstrap_servers: String::new(),
            topic: "t".into(),
            partitions: 4,
            clients: 64,
            entities: 10,
            warmup_s: 1.0,
            duration_s: 1.0,
            value_bytes: 264,
            max_records: 2000,
            max_bytes: 1 << 22,
            batch_records: None,
            progress: false,
        },
        outcome: floor::Outcome {
            records_per_s: 4000.0,
            ..Default::default()
        },
        batch_sweep: vec![point(2, 1000.0), point(4, 2000.0)],
    };
    let round = |closed: f64| {
        let mut t = statehouse.clone();
        t.summary.closed_max_throughput = closed;
        let mut b = Bench {
            targets: vec![t],
            floor: Some(floor_result.clone()),
            notes: Vec::new(),
            ..bench.clone()
        };
        b.finish();
        b
    };
    let one = round(closed_max);
    assert_eq!(one.ratios.statehouse_records_per_transaction, Some(3.0));
    assert_eq!(one.ratios.floor_at_statehouse_batch, Some(1500.0));
    assert_eq!(one.ratios.vs_floor_same_batch, Some(closed_max / 1500.0));
    assert_eq!(one.ratios.vs_floor, Some(closed_max / 4000.0));
    assert!(
        one.markdown(None)
            .contains("records per transaction | clients")
    );

    // Three rounds: the median and the spread of each figure.
    let rounds = Rounds::new(
        "es-counter".into(),
        "smoke".into(),
        vec![round(3000.0), round(1500.0), round(6000.0)],
    );
    let (_, vs_floor) = rounds
        .spreads
        .iter()
        .find(|(name, _)| name == "Statehouse ÷ Kafka floor (natural batch)")
        .expect("the floor ratio over the rounds");
    assert_eq!(
        *vs_floor,
        Spread {
            median: 0.75,
            min: 0.375,
            max: 1.5,
            n: 3
        }
    );
    assert_eq!(rounds.medians.vs_floor, Some(0.75));
    assert_eq!(rounds.median_round(), 0);
    assert!(rounds.valid);
    let md = rounds.markdown(Some("plot.svg"));
    assert!(md.contains("# Round 3"), "{md}");
    assert!(md.contains("| **0.75** | 0.38 – 1.50 |"), "{md}");
    let back: Rounds = serde_json::from_str(&serde_json::to_string(&rounds).unwrap()).unwrap();
    assert_eq!(back.rounds.len(), 3);

    server.stop().await;
}

#[test]
fn medians_spreads_and_the_floor_between_batch_sizes() {
    assert_eq!(Spread::of(&[]), None);
    let even = Spread::of(&[4.0, 1.0, 3.0, 2.0]).unwrap();
    assert_eq!(
        (even.median, even.min, even.max, even.n),
        (2.5, 1.0, 4.0, 4)
    );

    let points = [(1.0, 100.0), (4.0, 400.0), (2.0, 300.0)];
    assert_eq!(floor::at_batch(&points, 3.0), Some((350.0, false)));
    assert_eq!(floor::at_batch(&points, 1.0), Some((100.0, false)));
    assert_eq!(floor::at_batch(&points, 8.0), Some((400.0, true)));
    assert_eq!(floor::at_batch(&points, 0.5), Some((100.0, true)));
    assert_eq!(floor::at_batch(&[], 2.0), None);

    assert_eq!(floor::clients_for_batch(1, 4, 64), 64);
    assert_eq!(floor::clients_for_batch(32, 4, 64), 256);
}

#[test]
fn cpu_and_records_per_command_of_a_step() {
    let u = StepUsage {
        label: "closed".into(),
        commands: 2000,
        cpu_s: [
            ("processor".to_string(), 1.0),
            ("kafka".to_string(), 0.5),
            (LOAD_GENERATOR.to_string(), 0.4),
        ]
        .into_iter()
        .collect(),
        kernel_s: [("processor".to_string(), 0.25)].into_iter().collect(),
        writer_records: Some(2000.0),
        writer_transactions: Some(500.0),
    };
    assert_eq!(u.records_per_transaction(), Some(4.0));
    assert_eq!(u.kernel_share("processor"), Some(0.25));
    assert_eq!(u.kernel_share("kafka"), Some(0.0));
    assert_eq!(u.kernel_share("gateway"), None);
    assert_eq!(u.server_cpu_ms_per_command(), Some(0.75));
    assert_eq!(u.cpu_ms_per_command(LOAD_GENERATOR), Some(0.2));
    assert_eq!(u.cpu_ms_per_command("gateway"), None);

    let metrics = "# TYPE statehouse_writer_records_total counter\n\
        statehouse_writer_records_total{partition=\"0\"} 30\n\
        statehouse_writer_records_total{partition=\"1\"} 12\n\
        statehouse_writer_transactions_total{partition=\"0\"} 10\n\
        statehouse_writer_transactions_total{partition=\"1\"} 4\n";
    assert_eq!(usage::writer_counters(metrics), Some((42.0, 14.0)));
    assert_eq!(
        usage::writer_counters("other_metric 1\n"),
        Some((0.0, 0.0)),
        "nothing committed yet"
    );

    assert_eq!(
        Probe::parse_pids("user function=12, kafka=7").unwrap(),
        vec![("user function".to_string(), 12), ("kafka".to_string(), 7)]
    );
    assert!(Probe::parse_pids("kafka").is_err());
    assert!(Probe::parse_pids("").unwrap().is_empty());
}

#[tokio::test]
async fn a_probe_reads_the_processor_counters_and_cpu_around_a_step() {
    // A stand-in for the processor's /metrics: two scrapes, before and after the step.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        use std::io::{Read, Write};
        for (records, transactions) in [(10, 5), (40, 10)] {
            let (mut s, _) = listener.accept().unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 256];
            while !request.ends_with(b"\r\n\r\n") {
                let n = s.read(&mut buf).unwrap();
                assert!(n > 0, "{request:?}");
                request.extend_from_slice(&buf[..n]);
            }
            assert!(request.starts_with(b"GET /metrics HTTP/1.0\r\n"));
            let body = format!(
                "statehouse_writer_records_total{{partition=\"0\"}} {records}\nstatehouse_writer_transactions_total{{partition=\"0\"}} {transactions}\n"
            );
            write!(
                s,
                "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .unwrap();
        }
    });
    let probe = Probe {
        pids: vec![("me".into(), std::process::id())],
        metrics_url: Some(format!("http://127.0.0.1:{port}/metrics")),
    };
    let before = probe.sample().await;
    let after = probe.sample().await;
    server.join().unwrap();
    let step = before.until(&after, "step", 30);
    assert_eq!(step.writer_records, Some(30.0));
    assert_eq!(step.writer_transactions, Some(5.0));
    assert_eq!(step.records_per_transaction(), Some(6.0));
    assert!(step.cpu_s.contains_key("me") && step.cpu_s.contains_key(LOAD_GENERATOR));
    assert_eq!(
        usage::http_get(&format!("http://127.0.0.1:{port}/metrics")),
        None
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cart_large_fills_every_cart_before_the_load_and_still_verifies() {
    use statehouse_schemas::shoppingcart::GetShoppingCart;
    use statehouse_schemas::shoppingcart::shopping_cart_client::ShoppingCartClient;

    assert_eq!(
        statehouse_loadtest::scenario::fill_product(7).len(),
        statehouse_loadtest::scenario::FILL_PRODUCT_BYTES
    );
    let server = MemoryServer::start().await;
    let addr = server.addr;
    let result = sweep::run(&sweep::Options {
        target: "memory".into(),
        uri: format!("http://{addr}"),
        scenario: "cart-large".into(),
        entities: 30,
        distribution: Distribution::Uniform,
        clients: 8,
        connections: 2,
        warmup_s: 0.1,
        closed_s: 0.3,
        step_s: 0.2,
        fractions: vec![0.5],
        rates: Vec::new(),
        poisson: true,
        slo_p99_ms: 1_000.0,
        max_in_flight: 64,
        timeout_ms: 5_000,
        mix_scenario: None,
        mix_fraction: 0.5,
        verify: true,
        progress: false,
        seed: 5,
        run_id: "large".into(),
        closed_only: false,
        probe: Probe::default(),
    })
    .await
    .expect("cart-large sweep");
    assert_eq!(result.fill_commands, 30 * 20);
    let v = result.verification.as_ref().expect("verified");
    assert!(v.ok && v.acknowledged_increments > 0, "{v:?}");
    assert!(result.closed.methods.contains_key("GetCart"));
    assert!(result.closed.methods.contains_key("AddItem"));
    let cart = ShoppingCartClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
        .get_cart(GetShoppingCart {
            user_id: statehouse_loadtest::scenario::entity_id("large", 29),
        })
        .await
        .unwrap()
        .into_inner();
    let filled = cart
        .items
        .iter()
        .filter(|i| i.product_id.starts_with("fill-"))
        .count();
    assert_eq!(filled, 20, "{cart:?}");

    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activation_and_takeover_answer_every_entity() {
    use statehouse_loadtest::driver::Target;
    use statehouse_loadtest::lifecycle;
    use statehouse_loadtest::scenario::Op;

    let server = MemoryServer::start().await;
    let addr = server.addr;
    let target = Target::connect(&format!("http://{addr}"), 2).await.unwrap();

    let a = lifecycle::activate(&target, "life", (10, 110), Op::AddOther, 16, 3).await;
    assert_eq!((a.entities, a.ok, a.failed, a.retries), (100, 100, 0, 0));
    let g = lifecycle::activate(&target, "life", (0, 110), Op::Get, 16, 3).await;
    assert_eq!((g.ok, g.failed), (110, 0));

    // The "kill" takes nothing down here: every entity answers again.
    let mut killed = false;
    let t = lifecycle::takeover(
        &target,
        "life",
        20,
        || {
            killed = true;
            Ok(())
        },
        std::time::Duration::from_millis(5),
        std::time::Duration::from_secs(30),
    )
    .await
    .unwrap();
    assert!(killed);
    assert_eq!((t.entities, t.unanswered), (20, 0));

    server.stop().await;
}

#[test]
fn the_takeover_is_the_slowest_first_success() {
    use statehouse_loadtest::lifecycle::summarize;
    use std::time::Duration;
    let times = [
        Some(Duration::from_millis(3)),
        Some(Duration::from_millis(2500)),
        Some(Duration::from_millis(800)),
        None,
    ];
    let t = summarize(&times, 4, 100.0);
    assert_eq!(t.max_ms, 2500.0);
    assert_eq!(t.interrupted, 2);
    assert_eq!(t.unanswered, 1);
}
