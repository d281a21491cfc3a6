//! Smoke test of the load generator itself (not a benchmark: no timing is asserted). It runs a
//! short sweep — closed loop, one open-loop step, the shopping-cart mix, the correctness check —
//! against the in-memory variant of the baseline server, in process, and renders the reports.

use statehouse_loadtest::baseline::{Baseline, Options as BaselineOptions, Variant};
use statehouse_loadtest::keys::Distribution;
use statehouse_loadtest::report::{self, Bench, Machine};
use statehouse_loadtest::sweep;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_sweep_against_an_in_memory_target_reports_and_verifies() {
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

    let _ = stop.send(());
    serving.await.unwrap().unwrap();
}
