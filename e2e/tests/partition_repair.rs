//! An assigned partition whose writer stops while the group keeps it assigned is recovered by
//! its owner. Here a stray producer with the partitions' transactional ids (a forgotten copy of
//! an old pod, an operator's tool) fences every writer of the only processor. The group sees
//! nothing wrong and reassigns nothing; the processor's supervisor must notice, wait a session
//! timeout (a real new owner would have revoked the partition by then), take the partitions over
//! again — fencing the stray producer — and serve. Afterwards: no acknowledged command lost or
//! duplicated, the stray producer can no longer commit, and the processor reports the recoveries.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use statehouse_e2e::checker;
use statehouse_e2e::driver::{self, Driver};
use statehouse_kafka::Error;
use statehouse_kafka::partition_writer::{Record, Writer};
use statehouse_test_support::stack::{Options, Stack};
use statehouse_test_support::user_function::Kind;
use tokio_util::sync::CancellationToken;

const PARTITIONS: u32 = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fenced_writers_of_assigned_partitions_are_recovered() {
    let mut options = Options::new(Kind::GoShoppingCart);
    options.partitions = PARTITIONS;
    let mut stack = Stack::start(options);
    stack.wait_ready(0, Duration::from_secs(90));
    let driver = Driver::start(&stack.gateway_addr, driver::Options::default(), 23).await;
    driver
        .wait_progress(200, Duration::from_secs(90), "start")
        .await;

    // The stray producers: same transactional ids, so their init_transactions fences the
    // processor's writers.
    let kafka = statehouse_kafka::Options {
        bootstrap_servers: statehouse_test_support::kafka_bootstrap(),
        ..statehouse_kafka::Options::default()
    };
    let stop = CancellationToken::new();
    let mut strays = Vec::new();
    for p in 0..PARTITIONS {
        let tid = format!("{}shopping-cart.p{p}", stack.prefix);
        strays.push(Writer::start(&kafka, tid, p, stop.clone()).await.unwrap());
    }
    let fenced_at = driver.acked();
    driver
        .wait_progress(300, Duration::from_secs(90), "stray fence")
        .await;

    // The processor took every partition back: the strays are fenced now.
    let journal: Arc<str> = Arc::from(format!("{}shopping-cart.journal", stack.prefix));
    for (p, stray) in strays.iter().enumerate() {
        let attempt = stray
            .append(vec![Record {
                topic: Arc::clone(&journal),
                key: Bytes::from(format!("stray#{p}")),
                value: None,
                headers: Vec::new(),
                by_key: false,
            }])
            .await;
        assert!(
            matches!(attempt, Err(Error::Fenced { .. })),
            "the stray producer of partition {p} could still write: {attempt:?}"
        );
    }
    stop.cancel();

    let history = driver.stop().await;
    let report = checker::check_stack(&stack, PARTITIONS, &history).await;
    let recoveries: f64 = stack
        .metrics(0, "statehouse_partition_recoveries_total{cause=\"fenced\"}")
        .iter()
        .map(|(_, v)| v)
        .sum();
    println!(
        "partition repair: {report}; acknowledged before the fence {fenced_at}; fenced recoveries {recoveries}"
    );
    assert!(
        recoveries >= 1.0,
        "no partition was recovered after its writer was fenced"
    );
    assert_eq!(report.definite_failures, 0, "{report}");
    assert_eq!(report.anomalies(), (0, 0, 0, 0, 0, 0), "{report}");
    stack.wait_ready(0, Duration::from_secs(30));
}
