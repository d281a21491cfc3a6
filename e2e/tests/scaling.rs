//! Scaling under load: a service scaled 1 → 3 → 1 processors (the new ones join the ownership
//! group, then leave gracefully and hand their partitions back) fails no command beyond
//! retries, and the checker's counters are all 0.

use std::time::Duration;

use statehouse_e2e::checker;
use statehouse_e2e::driver::{self, Driver, until_all_answer};
use statehouse_test_support::stack::{Options, Stack};
use statehouse_test_support::user_function::Kind;

const SESSION_MS: u32 = 6_000;
const PARTITIONS: u32 = 12;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_1_to_3_to_1_fails_no_command() {
    let mut options = Options::new(Kind::GoShoppingCart);
    options.partitions = PARTITIONS;
    options.session_timeout_ms = SESSION_MS;
    let mut stack = Stack::start(options);
    stack.wait_ready(0, Duration::from_secs(120));
    let driver_options = driver::Options::default();
    until_all_answer(
        &stack.gateway_addr,
        driver_options.carts,
        Duration::from_secs(120),
    )
    .await;
    let driver = Driver::start(&stack.gateway_addr, driver_options, 7).await;
    tokio::time::sleep(Duration::from_secs(4)).await;

    // Scale out: two more processors join; the group hands them partitions.
    let a = stack.add_pod();
    let b = stack.add_pod();
    stack.wait_ready(a, Duration::from_secs(120));
    stack.wait_ready(b, Duration::from_secs(120));
    let before = driver.acked();
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(driver.acked() > before, "no progress with three processors");

    // Scale in: the new ones leave gracefully and hand their partitions back.
    assert!(
        stack.pods[b].processor.terminate(Duration::from_secs(60)),
        "graceful stop failed"
    );
    assert!(
        stack.pods[a].processor.terminate(Duration::from_secs(60)),
        "graceful stop failed"
    );
    let before = driver.acked();
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(driver.acked() > before, "no progress after scaling in");
    let history = driver.stop().await;
    let report = checker::check_stack(&stack, PARTITIONS, &history).await;
    println!("scale 1→3→1 checker: {report}");
    assert_eq!(
        (report.definite_failures, report.unknown),
        (0, 0),
        "{report}"
    );
    assert_eq!(report.anomalies(), (0, 0, 0, 0, 0, 0), "{report}");
}
