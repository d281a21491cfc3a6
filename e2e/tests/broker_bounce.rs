//! R3 of the reliability plan: the Kafka broker is bounced — hard (SIGKILL), clean (SIGTERM),
//! hard again — while clients keep sending commands. Afterwards: no duplicates, every
//! acknowledged command is in the journal, and each client's commands to a cart are journaled
//! in the order they were acknowledged. (This test stops the broker every other test uses, so it
//! lives alone in its own test binary; cargo runs test binaries one at a time.)

use std::collections::BTreeMap;
use std::time::Duration;

use statehouse_e2e::checker;
use statehouse_e2e::driver::{self, Driver};
use statehouse_kafka::reader::{Isolation, read_to_end};
use statehouse_schemas::avro::{AvroRecord, EventRecord};
use statehouse_test_support::infra::bounce_kafka;
use statehouse_test_support::stack::{Options, Stack};
use statehouse_test_support::user_function::Kind;

const PARTITIONS: u32 = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_bounces_lose_duplicate_and_reorder_nothing() {
    let mut options = Options::new(Kind::GoShoppingCart);
    options.partitions = PARTITIONS;
    // The product default (10 s): a short bounce leaves the group's assignment as it is (the
    // processor itself must then recover partitions whose writers stopped), a long one makes
    // the group revoke and reassign everything (takeovers race the returning broker).
    options.session_timeout_ms = 10_000;
    // Transactional requests time out well within an outage, so commits in flight end with an
    // unknown outcome: the writer stops and the processor recovers the partition.
    options.processor_sets = vec!["kafka.request-timeout-ms=4000".into()];
    let mut stack = Stack::start(options);
    stack.wait_ready(0, Duration::from_secs(120));
    let driver_options = driver::Options {
        give_up: Duration::from_secs(120),
        ..driver::Options::default()
    };
    let driver = Driver::start(&stack.gateway_addr, driver_options, 3).await;
    driver
        .wait_progress(200, Duration::from_secs(120), "start")
        .await;

    for (i, hard) in [true, false, true].into_iter().enumerate() {
        let down = tokio::task::spawn_blocking(move || bounce_kafka(hard))
            .await
            .unwrap();
        println!(
            "R3 bounce #{} ({}): broker back after {down:?}",
            i + 1,
            if hard { "SIGKILL" } else { "SIGTERM" }
        );
        driver
            .wait_progress(200, Duration::from_secs(120), "bounce")
            .await;
    }
    let history = driver.stop().await;
    let report = checker::check_stack(&stack, PARTITIONS, &history).await;

    // Order: each client's commands to one cart appear in the order it sent them (a client
    // sends one command at a time and only moves on once it is acknowledged).
    let kafka = statehouse_kafka::Options {
        bootstrap_servers: statehouse_test_support::kafka_bootstrap(),
        ..statehouse_kafka::Options::default()
    };
    let topic = format!("{}shopping-cart.journal", stack.prefix);
    let mut reordered = 0;
    for p in 0..PARTITIONS {
        let mut last: BTreeMap<(String, String), u64> = BTreeMap::new();
        for m in read_to_end(
            &kafka,
            &topic,
            p,
            0,
            Isolation::ReadCommitted,
            Duration::from_secs(60),
        )
        .await
        .unwrap()
        {
            let e = EventRecord::decode(m.value.as_ref().unwrap()).unwrap();
            let token = e.idempotency_key.clone().unwrap_or_default();
            // Tokens are s<seed>-c<client>-<n>.
            let mut parts = token.rsplitn(2, '-');
            let n: u64 = parts.next().and_then(|n| n.parse().ok()).unwrap_or(0);
            let client = parts.next().unwrap_or_default().to_string();
            let key = (e.entity_id.clone(), client);
            if last.get(&key).is_some_and(|&prev| prev >= n) {
                reordered += 1;
            }
            last.insert(key, n);
        }
    }
    let recoveries = stack.metrics(0, "statehouse_partition_recoveries_total");
    println!("R3 checker: {report} reordered={reordered}; partition recoveries: {recoveries:?}");
    assert_eq!(report.anomalies(), (0, 0, 0, 0, 0, 0), "{report}");
    assert_eq!(reordered, 0);
    assert_eq!(report.definite_failures, 0, "{report}");
    stack.wait_ready(0, Duration::from_secs(60));
}
