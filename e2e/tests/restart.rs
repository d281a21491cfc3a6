//! Restarts under load (`ARCHITECTURE.md`, "Invariants" 1 and 3): a processor is stopped
//! gracefully (SIGTERM: it hands its partitions over) and killed with SIGKILL while clients keep
//! sending commands through the gateway. Afterwards the checker reads the whole journal with
//! read_committed and queries every entity: lost, duplicated, aborted-visible, sequence gaps,
//! interleaved writers and state ≠ fold of the journal must all be 0.

use std::time::Duration;

use statehouse_e2e::checker;
use statehouse_e2e::driver::{self, Driver, until_all_answer};
use statehouse_test_support::stack::{Options, Stack};
use statehouse_test_support::user_function::Kind;

const PARTITIONS: u32 = 4;
const SESSION_MS: u32 = 6_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_acknowledged_command_is_lost_or_duplicated_across_restarts() {
    let mut options = Options::new(Kind::GoShoppingCart);
    options.partitions = PARTITIONS;
    options.session_timeout_ms = SESSION_MS;
    let mut stack = Stack::start(options);
    stack.wait_ready(0, Duration::from_secs(90));
    let driver_options = driver::Options::default();
    let carts = driver_options.carts;
    until_all_answer(&stack.gateway_addr, carts, Duration::from_secs(90)).await;
    let driver = Driver::start(&stack.gateway_addr, driver_options, 11).await;
    driver
        .wait_progress(300, Duration::from_secs(90), "start")
        .await;

    // 1. Graceful restart: the partitions are handed over on SIGTERM.
    assert!(
        stack.pods[0].processor.terminate(Duration::from_secs(30)),
        "graceful stop failed"
    );
    stack.pods[0].processor.restart();
    let graceful = until_all_answer(&stack.gateway_addr, carts, Duration::from_secs(60)).await;
    driver
        .wait_progress(300, Duration::from_secs(90), "graceful restart")
        .await;

    // 2. kill -9 under load, restarted at once: the new processor gets the partitions once the
    //    dead member's session times out, fences it and recovers.
    stack.pods[0].processor.kill9();
    stack.pods[0].processor.restart();
    let bound = Duration::from_millis(u64::from(SESSION_MS) * 2 + 10_000);
    let failover = until_all_answer(&stack.gateway_addr, carts, bound).await;
    driver
        .wait_progress(300, Duration::from_secs(90), "kill -9")
        .await;

    let history = driver.stop().await;
    let report = checker::check_stack(&stack, PARTITIONS, &history).await;
    println!(
        "restart checker: {report}; every cart answered {graceful:?} after the graceful restart, {failover:?} after the kill -9"
    );
    assert!(
        report.acknowledged >= 600,
        "too little load to mean anything: {report}"
    );
    assert_eq!(report.definite_failures, 0, "{report}");
    assert_eq!(report.anomalies(), (0, 0, 0, 0, 0, 0), "{report}");
}
