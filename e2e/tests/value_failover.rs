//! R1 with value entities: three processors own twelve partitions; a random one is SIGKILLed
//! every 10 s and restarted 1–3 s later while clients keep writing unique tokens to value
//! entities of the Go TCK user function (with idempotency keys, retried after faults). Then the
//! value checker's counters must all be 0 — every acknowledged write is in the values topic, no
//! write twice, nothing failed visible, versions contiguous and in the clients' order, the last
//! record of every entity equal to what the entity answers — and every entity must answer again
//! within 2 × session timeout + 10 s after each kill.
//!
//! `STATEHOUSE_R1V_COMMANDS` sets how many acknowledged writes to wait for (default 4,000);
//! `STATEHOUSE_R1V_SEED` replays a fault schedule.

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use statehouse_e2e::driver::{self, Api, Driver};
use statehouse_e2e::values::{self, Values};
use statehouse_test_support::stack::{Options, Stack};
use statehouse_test_support::user_function::Kind;

const SESSION_MS: u32 = 6_000;
const PARTITIONS: u32 = 12;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r1_value_entities_lose_and_duplicate_nothing_under_kills() {
    let target: u64 = std::env::var("STATEHOUSE_R1V_COMMANDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4_000);
    let seed: u64 = std::env::var("STATEHOUSE_R1V_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs()
        });
    println!("R1 (values) seed {seed} (replay with STATEHOUSE_R1V_SEED={seed}), target {target}");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut options = Options::new(Kind::GoTck);
    options.service = "tck".into();
    options.partitions = PARTITIONS;
    options.processors = 3;
    options.session_timeout_ms = SESSION_MS;
    let mut stack = Stack::start(options);
    for i in 0..3 {
        stack.wait_ready(i, Duration::from_secs(120));
    }
    // Twelve clients, five value entities each.
    let driver_options = driver::Options {
        clients: 12,
        carts: 5,
        ..driver::Options::default()
    };
    let ids = Values::entities(&driver_options);
    let answer = driver::until_all_answer_with::<Values>;
    answer(&stack.gateway_addr, &ids, Duration::from_secs(120)).await;
    let driver = Driver::start_with::<Values>(&stack.gateway_addr, driver_options, seed).await;

    let bound = Duration::from_millis(u64::from(SESSION_MS) * 2 + 10_000);
    let started = Instant::now();
    let mut kills = Vec::new();
    while driver.acked() < target || kills.len() < 3 {
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "only {} writes acknowledged in 10 min",
            driver.acked()
        );
        tokio::time::sleep(Duration::from_secs(10)).await;
        let victim = rng.random_range(0..3usize);
        let down_for = Duration::from_millis(rng.random_range(1_000..3_000));
        stack.pods[victim].processor.kill9();
        let killed = Instant::now();
        tokio::time::sleep(down_for).await;
        stack.pods[victim].processor.restart();
        let recovered = answer(&stack.gateway_addr, &ids, bound).await + down_for;
        println!(
            "R1 (values) kill #{}: processor {victim} down {down_for:?}; every entity answered {:?} after the kill ({} acknowledged)",
            kills.len() + 1,
            killed.elapsed().min(recovered),
            driver.acked()
        );
        kills.push(recovered);
    }
    let history = driver.stop().await;
    let report = values::check(
        &statehouse_test_support::kafka_bootstrap(),
        &stack.prefix,
        &stack.options.service,
        PARTITIONS,
        &stack.gateway_addr,
        &history,
    )
    .await;
    println!(
        "R1 (values) checker (seed {seed}, {} kills, recovery max {:?}): {report}",
        kills.len(),
        kills.iter().max().unwrap()
    );
    assert!(report.acknowledged as u64 >= target, "{report}");
    assert_eq!(report.anomalies(), [0; 7], "{report}");
    assert!(
        kills.iter().all(|d| *d <= bound),
        "recovery bound {bound:?} missed: {kills:?}"
    );
}
