//! R10 (`docs/security.md`, "Load shedding"), short: twice the measured capacity, then half of
//! it, against the real stack, with the overload driver of `statehouse-loadtest overload`.
//! The test checks behaviour — the excess is refused with RESOURCE_EXHAUSTED (not left to time
//! out), nothing acknowledged is lost, and once the load dropped the system answers everything
//! again — and prints the figures. The long run of `docs/security.md` (60 s of overload, 30 s
//! after) is this test with `STATEHOUSE_OVERLOAD_S=60 STATEHOUSE_AFTER_S=30`; against a release
//! build, `statehouse-loadtest overload`.

use statehouse_loadtest::overload;
use statehouse_test_support::stack::{Options, Stack};
use statehouse_test_support::user_function::Kind;

/// Seconds from `var`, else `default`.
fn seconds(var: &str, default: f64) -> f64 {
    std::env::var(var)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{var}={v:?} is not a number of seconds"))
        })
        .unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overload_is_shed_early_loses_nothing_and_recovers() {
    let mut options = Options::new(Kind::RustShoppingCart);
    options.partitions = 4;
    let stack = Stack::start(options);
    let mut pids = vec![("gateway".to_string(), stack.gateway.pid())];
    for (i, pod) in stack.pods.iter().enumerate() {
        pids.push((format!("processor-{i}"), pod.processor.pid()));
    }
    let report = overload::run(&overload::Options {
        uri: format!("http://{}", stack.gateway_addr),
        scenario: "es-counter".into(),
        entities: 200,
        clients: 64,
        connections: 4,
        closed_s: 5.0,
        unloaded_fraction: 0.3,
        unloaded_s: 5.0,
        overload_factor: 2.0,
        overload_s: seconds("STATEHOUSE_OVERLOAD_S", 15.0),
        after_fraction: 0.5,
        after_s: seconds("STATEHOUSE_AFTER_S", 90.0),
        max_in_flight: 8192,
        timeout_ms: 10_000,
        seed: 7,
        run_id: "overload".into(),
        pids,
        progress: false,
    })
    .await
    .expect("the overload run");
    eprint!("{}", report.text());

    let refused = |phase: &statehouse_loadtest::driver::Phase| -> u64 {
        phase
            .errors
            .iter()
            .filter(|(k, _)| k.ends_with("ResourceExhausted"))
            .map(|(_, v)| v)
            .sum()
    };
    let overloaded = &report.overload;
    assert!(
        refused(overloaded) > 0,
        "twice the capacity was offered and nothing was refused: {:?}",
        overloaded.errors
    );
    assert!(overloaded.ok > 0, "the accepted commands went on");
    // The excess is refused early, not left to time out in queues.
    let timed_out: u64 = overloaded
        .errors
        .iter()
        .filter(|(k, _)| k.ends_with("ClientTimeout") || k.ends_with("DeadlineExceeded"))
        .map(|(_, v)| v)
        .sum();
    assert!(
        timed_out < refused(overloaded),
        "more commands timed out ({timed_out}) than were refused: {:?}",
        overloaded.errors
    );
    assert!(
        report.verification.ok && report.verification.lost == 0,
        "acknowledged commands were lost: {:?}",
        report.verification
    );
    // Healthy again at half the capacity: the last seconds refuse nothing and fail nothing.
    let tail = &report.after.timeline[report.after.timeline.len().saturating_sub(3)..];
    assert!(
        tail.iter()
            .all(|s| s.shed == 0 && s.failed == 0 && s.ok > 0),
        "not healthy at the end of the light phase: {tail:?}"
    );
}
