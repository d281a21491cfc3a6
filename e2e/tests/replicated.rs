//! The production replication setting: a 3-broker KRaft cluster (`cargo xtask infra up
//! --kafka-brokers 3`), topics with replication factor 3 and `min.insync.replicas` 2.
//!
//! * R1 + R3 under load: one broker at a time is killed (`kill -9`) or stopped cleanly and
//!   started again — the leader of a journal partition, the transaction coordinator of that
//!   partition's writer, the ownership group's coordinator — and a processor is killed too.
//! * R5: a processor in its own network namespace loses its link to one broker at a time (each
//!   of the three, for longer than a session timeout) under reads and writes.
//!
//! Both end with the journal counters at 0 (the journal read to its end with read_committed:
//! no reader stuck behind an open transaction), and R5 with a linearizable history. This
//! binary stops brokers of the cluster only (no other test uses it); its two tests run one
//! after the other.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use statehouse_e2e::checker;
use statehouse_e2e::driver::{self, Driver};
use statehouse_e2e::recorder::{self, Recorder};
use statehouse_test_support::infra::bounce_kafka_node;
use statehouse_test_support::netns::Link;
use statehouse_test_support::stack::{Options, Stack};
use statehouse_test_support::user_function::Kind;

const PARTITIONS: u32 = 6;
const SESSION_MS: u32 = 6_000;
/// `transaction.state.log.num.partitions` and `offsets.topic.num.partitions` of the infra's
/// brokers (`xtask/src/infra/kafka.rs`).
const COORDINATOR_PARTITIONS: i32 = 8;

/// Two processors of the shopping cart on the cluster (in network namespaces with `netns`).
fn cluster_stack(netns: bool) -> Stack {
    let mut options = Options::new(Kind::GoShoppingCart);
    options.partitions = PARTITIONS;
    options.processors = 2;
    options.session_timeout_ms = SESSION_MS;
    options.kafka_cluster = true;
    options.netns = netns;
    Stack::start_ready(options)
}

/// One test at a time in this binary: both stop parts of the shared cluster.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The partition of Kafka's internal coordinator topics that holds `key` (a transactional id or
/// a group id): `abs(Java String.hashCode(key)) % partitions`, as the brokers compute it.
fn coordinator_partition(key: &str) -> i32 {
    let hash = key
        .encode_utf16()
        .fold(0i32, |h, c| h.wrapping_mul(31).wrapping_add(i32::from(c)));
    let abs = if hash == i32::MIN { 0 } else { hash.abs() };
    abs % COORDINATOR_PARTITIONS
}

/// Leader broker id of each partition of `topic`.
fn leaders(bootstrap: &str, topic: &str) -> HashMap<i32, i32> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("a metadata client");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("cluster metadata");
    metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| (p.id(), p.leader())))
        .collect()
}

/// The broker a fault hits, by what it is for journal partition 0.
#[derive(Debug, Clone, Copy)]
enum Role {
    /// The partition's leader.
    Leader,
    /// The transaction coordinator of the partition's writer.
    TransactionCoordinator,
    /// The coordinator of the ownership group.
    GroupCoordinator,
}

fn seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r1_r3_broker_and_processor_faults_on_a_replicated_cluster_lose_nothing() {
    let _serial = SERIAL.lock().await;
    let mut stack = cluster_stack(false);
    let bootstrap = stack.kafka_bootstrap();
    let topics = statehouse_core::Topics::new(
        stack.prefix.clone(),
        statehouse_core::ServiceName::new("shopping-cart").expect("a valid service name"),
    );
    let driver_options = driver::Options {
        give_up: Duration::from_secs(120),
        ..driver::Options::default()
    };
    let driver = Driver::start(&stack.gateway_addr, driver_options, seed()).await;
    driver
        .wait_progress(200, Duration::from_secs(120), "start")
        .await;

    // The brokers that matter for journal partition 0, looked up when each fault starts.
    let journal = topics.journal();
    let txn_partition = coordinator_partition(&topics.transactional_id(0));
    let group_partition = coordinator_partition(&topics.owners_group());
    let broker = |role: Role| match role {
        Role::Leader => leaders(&bootstrap, &journal)[&0],
        Role::TransactionCoordinator => leaders(&bootstrap, "__transaction_state")[&txn_partition],
        Role::GroupCoordinator => leaders(&bootstrap, "__consumer_offsets")[&group_partition],
    };
    let faults = [
        (Role::Leader, true),
        (Role::TransactionCoordinator, false),
        (Role::TransactionCoordinator, true),
        (Role::GroupCoordinator, true),
        (Role::Leader, false),
    ];
    for (i, (role, hard)) in faults.into_iter().enumerate() {
        let broker = broker(role);
        let node = u16::try_from(broker).expect("a broker id 1..=3");
        let down = tokio::task::spawn_blocking(move || bounce_kafka_node(node, hard))
            .await
            .unwrap();
        println!(
            "RF3 fault #{}: broker {broker} ({role:?}) {} and back after {down:?} ({} acknowledged)",
            i + 1,
            if hard {
                "killed (SIGKILL)"
            } else {
                "stopped (SIGTERM)"
            },
            driver.acked()
        );
        driver
            .wait_progress(200, Duration::from_secs(120), "broker fault")
            .await;
        if i == 2 {
            // R1 on top: a processor dies and comes back.
            stack.pods[1].processor.kill9();
            tokio::time::sleep(Duration::from_secs(2)).await;
            stack.pods[1].processor.restart();
            driver
                .wait_progress(200, Duration::from_secs(120), "processor kill")
                .await;
            println!(
                "RF3: processor 1 killed and restarted ({} acknowledged)",
                driver.acked()
            );
        }
    }
    let history = driver.stop().await;
    let report = checker::check_stack(&stack, PARTITIONS, &history).await;
    println!("RF3 R1/R3 checker: {report}");
    assert!(report.acknowledged > 1_000, "{report}");
    assert_eq!(report.anomalies(), (0, 0, 0, 0, 0, 0), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r5_a_processor_cut_from_one_broker_at_a_time_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let stack = cluster_stack(true);
    let carts = 100;
    driver::until_all_answer(&stack.gateway_addr, carts, Duration::from_secs(120)).await;
    let seed = seed();
    let recorder = Recorder::start(
        &stack.gateway_addr,
        recorder::Options {
            carts,
            ..recorder::Options::default()
        },
        seed,
    )
    .await;
    let ns = stack.pods[0].netns.as_ref().expect("netns pod");
    for node in 1..=3u16 {
        let before = recorder.acked();
        ns.cut(Link::KafkaNode(node));
        let cut = Instant::now();
        tokio::time::sleep(Duration::from_millis(u64::from(SESSION_MS) * 3 / 2)).await;
        ns.heal_all();
        println!(
            "RF3 R5: processor 0 cut from broker {node} for {:?} ({} writes acknowledged meanwhile)",
            cut.elapsed(),
            recorder.acked() - before
        );
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    driver::until_all_answer(&stack.gateway_addr, carts, Duration::from_secs(120)).await;
    let (report, verdict) = recorder.stop().await.check(&stack, PARTITIONS).await;
    println!("RF3 R5 checker (seed {seed}): {report}");
    println!("RF3 R5 linearizability: {verdict}");
    // One of the three brokers coordinates the ownership group: cut from it longer than its
    // lease, processor 0 must have seen the lease end (the cuts took effect).
    let lapses = stack.metrics(0, "statehouse_ownership_lease_lapses_total");
    assert!(
        lapses.iter().any(|(_, v)| *v >= 1.0),
        "processor 0 never lost its lease while cut from each broker in turn: {lapses:?}"
    );
    recorder::assert_clean(&report, &verdict);
}

#[test]
fn coordinator_partitions_follow_java_string_hash_codes() {
    // Java: "abc".hashCode() == 96354; 96354 % 8 == 2. "" hashes to 0.
    assert_eq!(coordinator_partition("abc"), 96_354 % 8);
    assert_eq!(coordinator_partition(""), 0);
    // "polygenelubricants".hashCode() == Integer.MIN_VALUE: Kafka's abs maps it to 0.
    assert_eq!(coordinator_partition("polygenelubricants"), 0);
}
