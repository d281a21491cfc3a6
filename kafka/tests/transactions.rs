//! Transactional guarantees of the partition writer, against the real Kafka broker.
//!
//! (a) a second writer with the same transactional id fences the first: it can never commit again;
//! (b) a `read_committed` reader never sees records of aborted or fenced transactions;
//! (c) appends are committed atomically and in order, many per transaction (group commit).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use statehouse_core::{ServiceName, Topics};
use statehouse_kafka::admin::Admin;
use statehouse_kafka::partition_writer::{Record, Writer};
use statehouse_kafka::reader::{Isolation, Message, read_to_end};
use statehouse_kafka::{Error, Options, headers};
use statehouse_test_support::{kafka_bootstrap, unique};
use tokio_util::sync::CancellationToken;

const READ_DEADLINE: Duration = Duration::from_secs(30);

/// Options with a prefix of their own, and a service with `partitions` partitions created.
async fn setup(partitions: u32) -> (Options, Topics) {
    let options = Options {
        bootstrap_servers: kafka_bootstrap(),
        topic_prefix: format!("{}.", unique("t")),
        transaction_timeout_ms: 10_000,
        request_timeout_ms: 15_000,
        ..Options::default()
    };
    let service = ServiceName::new("svc").unwrap();
    Admin::new(&options)
        .unwrap()
        .ensure_service(&service, partitions)
        .await
        .unwrap();
    (options.clone(), Topics::new(options.topic_prefix, service))
}

fn record(topic: &str, key: &str, value: &str) -> Record {
    Record {
        topic: Arc::from(topic),
        key: Bytes::copy_from_slice(key.as_bytes()),
        value: Some(Bytes::copy_from_slice(value.as_bytes())),
        headers: vec![(headers::ENTITY, Bytes::from_static(b"e"))],
        by_key: false,
    }
}

fn keys(messages: &[Message]) -> Vec<String> {
    messages
        .iter()
        .map(|m| String::from_utf8(m.key.clone().unwrap().to_vec()).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_writer_fences_the_first() {
    let (options, topics) = setup(2).await;
    let journal = topics.journal();
    let tid = topics.transactional_id(1);
    let shutdown = CancellationToken::new();

    let first = Writer::start(&options, tid.clone(), 1, shutdown.clone())
        .await
        .unwrap();
    let ok = first
        .append(vec![record(&journal, "a#1", "first-1")])
        .await
        .unwrap();
    assert_eq!(ok.transaction, 1);

    // The new owner's init_transactions bumps the epoch: the first writer is now a zombie.
    let second = Writer::start(&options, tid.clone(), 1, shutdown.clone())
        .await
        .unwrap();
    let zombie = first
        .append(vec![record(&journal, "a#2", "zombie-2")])
        .await;
    assert!(
        matches!(zombie, Err(Error::Fenced { .. })),
        "a fenced writer must not commit, got {zombie:?}"
    );
    assert!(first.is_fenced());
    // It stays fenced: later appends fail at once, nothing is retried behind the caller's back.
    let again = first
        .append(vec![record(&journal, "a#3", "zombie-3")])
        .await;
    assert!(matches!(again, Err(Error::Fenced { .. })), "{again:?}");
    tokio::time::timeout(Duration::from_secs(10), first.stopped())
        .await
        .expect("a fenced writer stops");

    second
        .append(vec![record(&journal, "a#2", "second-2")])
        .await
        .unwrap();

    let visible = read_to_end(
        &options,
        &journal,
        1,
        0,
        Isolation::ReadCommitted,
        READ_DEADLINE,
    )
    .await
    .unwrap();
    let values: Vec<_> = visible
        .iter()
        .map(|m| String::from_utf8(m.value.clone().unwrap().to_vec()).unwrap())
        .collect();
    assert_eq!(values, ["first-1", "second-2"]);
    // The other partition saw nothing.
    let other = read_to_end(
        &options,
        &journal,
        0,
        0,
        Isolation::ReadCommitted,
        READ_DEADLINE,
    )
    .await
    .unwrap();
    assert!(other.is_empty());
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_committed_never_sees_aborted_or_fenced_records() {
    let (options, topics) = setup(1).await;
    let journal = topics.journal();
    let tid = topics.transactional_id(0);
    let timeout = Duration::from_secs(15);

    // 1. An explicitly aborted transaction.
    let raw: FutureProducer = options
        .transactional_producer_config(&tid)
        .create()
        .unwrap();
    raw.init_transactions(timeout).unwrap();
    raw.begin_transaction().unwrap();
    for i in 0..5 {
        raw.send_result(
            FutureRecord::to(&journal)
                .partition(0)
                .key(&format!("aborted#{i}"))
                .payload("x"),
        )
        .unwrap();
    }
    raw.flush(timeout).unwrap();
    raw.abort_transaction(timeout).unwrap();

    // 2. A transaction left open by an owner that is then fenced: its records reach the log,
    //    the new owner's init_transactions aborts them, and its commit fails.
    raw.begin_transaction().unwrap();
    for i in 0..5 {
        raw.send_result(
            FutureRecord::to(&journal)
                .partition(0)
                .key(&format!("zombie#{i}"))
                .payload("x"),
        )
        .unwrap();
    }
    raw.flush(timeout).unwrap();
    let shutdown = CancellationToken::new();
    let owner = Writer::start(&options, tid.clone(), 0, shutdown.clone())
        .await
        .unwrap();
    let zombie_commit = raw.commit_transaction(timeout);
    assert!(zombie_commit.is_err(), "the fenced producer committed");

    // 3. The new owner commits.
    for i in 0..3 {
        owner
            .append(vec![record(&journal, &format!("committed#{i}"), "ok")])
            .await
            .unwrap();
    }

    let committed = read_to_end(
        &options,
        &journal,
        0,
        0,
        Isolation::ReadCommitted,
        READ_DEADLINE,
    )
    .await
    .unwrap();
    assert_eq!(
        keys(&committed),
        ["committed#0", "committed#1", "committed#2"]
    );
    // The aborted and fenced records are really in the log: only the isolation level hides them.
    let everything = read_to_end(
        &options,
        &journal,
        0,
        0,
        Isolation::ReadUncommitted,
        READ_DEADLINE,
    )
    .await
    .unwrap();
    let all = keys(&everything);
    assert_eq!(all.iter().filter(|k| k.starts_with("aborted#")).count(), 5);
    assert_eq!(all.iter().filter(|k| k.starts_with("zombie#")).count(), 5);
    assert_eq!(
        all.iter().filter(|k| k.starts_with("committed#")).count(),
        3
    );
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_commit_atomically_in_shared_transactions() {
    let (mut options, topics) = setup(1).await;
    options.writer.linger_ms = 20;
    let (journal, values) = (topics.journal(), topics.values());
    let shutdown = CancellationToken::new();
    let writer = Writer::start(&options, topics.transactional_id(0), 0, shutdown.clone())
        .await
        .unwrap();

    const APPENDS: usize = 200;
    let mut tasks = Vec::new();
    for i in 0..APPENDS {
        let writer = writer.clone();
        let (journal, values) = (journal.clone(), values.clone());
        tasks.push(tokio::spawn(async move {
            let records = vec![
                record(&journal, &format!("e{i}#1"), &format!("{i}-1")),
                record(&journal, &format!("e{i}#2"), &format!("{i}-2")),
                record(&values, &format!("e{i}"), &format!("{i}-state")),
            ];
            (i, writer.append(records).await.unwrap())
        }));
    }
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.unwrap());
    }
    let stats = writer.stats();
    assert_eq!(stats.appends, APPENDS as u64);
    assert_eq!(stats.records, 3 * APPENDS as u64);
    assert!(
        stats.transactions < APPENDS as u64,
        "group commit should share transactions between appends: {stats:?}"
    );

    let journal_msgs = read_to_end(
        &options,
        &journal,
        0,
        0,
        Isolation::ReadCommitted,
        READ_DEADLINE,
    )
    .await
    .unwrap();
    let values_msgs = read_to_end(
        &options,
        &values,
        0,
        0,
        Isolation::ReadCommitted,
        READ_DEADLINE,
    )
    .await
    .unwrap();
    assert_eq!(journal_msgs.len(), 2 * APPENDS);
    assert_eq!(values_msgs.len(), APPENDS);
    for (i, committed) in &results {
        // The offsets the writer reported hold exactly this append's records, in order.
        let [o1, o2, o3] = committed.offsets[..] else {
            panic!("three offsets expected, got {:?}", committed.offsets)
        };
        assert_eq!(o2, o1 + 1, "an append's journal records are contiguous");
        let at = |msgs: &[Message], offset: i64| {
            let m = msgs.iter().find(|m| m.offset == offset).unwrap();
            String::from_utf8(m.key.clone().unwrap().to_vec()).unwrap()
        };
        assert_eq!(at(&journal_msgs, o1), format!("e{i}#1"));
        assert_eq!(at(&journal_msgs, o2), format!("e{i}#2"));
        assert_eq!(at(&values_msgs, o3), format!("e{i}"));
    }
    // Headers travel with the records.
    assert_eq!(
        journal_msgs[0].header(headers::ENTITY).map(|v| &v[..]),
        Some(&b"e"[..])
    );
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), writer.stopped())
        .await
        .expect("the writer stops on shutdown");
    let after = writer.append(vec![record(&journal, "late#1", "x")]).await;
    assert!(matches!(after, Err(Error::Closed { .. })), "{after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settling_a_takeover_marks_the_end_and_stays_invisible_to_read_committed() {
    let (options, topics) = setup(1).await;
    let journal: Arc<str> = Arc::from(topics.journal());
    let shutdown = CancellationToken::new();
    let first = Writer::start(&options, topics.transactional_id(0), 0, shutdown.clone())
        .await
        .unwrap();
    let mut last = -1;
    for i in 0..3 {
        let c = first
            .append(vec![record(&journal, &format!("a#{i}"), "v")])
            .await
            .unwrap();
        last = c.offsets[0];
    }
    assert_eq!(
        first.settled_at(&journal),
        None,
        "a plain start settles nothing"
    );

    // The next owner settles the journal partition as it takes over.
    let next = Writer::<()>::start_observed(
        &options,
        topics.transactional_id(0),
        0,
        None,
        std::slice::from_ref(&journal),
        shutdown.clone(),
    )
    .await
    .unwrap();
    let end = next.settled_at(&journal).expect("the journal was settled");
    assert!(
        end > last,
        "the settle record ({end}) lies after every earlier record ({last})"
    );
    let c = next
        .append(vec![record(&journal, "b#0", "v")])
        .await
        .unwrap();
    assert!(c.offsets[0] > end);

    let committed = read_to_end(
        &options,
        &journal,
        0,
        0,
        Isolation::ReadCommitted,
        READ_DEADLINE,
    )
    .await
    .unwrap();
    assert_eq!(keys(&committed), ["a#0", "a#1", "a#2", "b#0"]);
    let everything = read_to_end(
        &options,
        &journal,
        0,
        0,
        Isolation::ReadUncommitted,
        READ_DEADLINE,
    )
    .await
    .unwrap();
    let settle = everything
        .iter()
        .find(|m| m.offset == end)
        .expect("the settle record is in the log");
    assert_eq!(
        settle.key.as_deref(),
        Some(statehouse_kafka::partition_writer::SETTLE_KEY)
    );
    assert_eq!(settle.value, None);
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settling_writer_reports_a_transaction_left_open_in_its_partition() {
    let (options, topics) = setup(1).await;
    let journal: Arc<str> = Arc::from(topics.journal());
    let timeout = Duration::from_secs(15);
    let shutdown = CancellationToken::new();
    let owner = Writer::start(&options, topics.transactional_id(0), 0, shutdown.clone())
        .await
        .unwrap();
    owner
        .append(vec![record(&journal, "done#0", "v")])
        .await
        .unwrap();

    // Another producer keeps a transaction open in the partition (as one whose markers Kafka
    // never wrote would stay): the last stable offset stops at its first record.
    let other: FutureProducer = options
        .transactional_producer_config(&format!("{}other", options.topic_prefix))
        .create()
        .unwrap();
    other.init_transactions(timeout).unwrap();
    other.begin_transaction().unwrap();
    for i in 0..2 {
        other
            .send_result(
                FutureRecord::to(&journal)
                    .partition(0)
                    .key(&format!("open#{i}"))
                    .payload("x"),
            )
            .unwrap();
    }
    other.flush(timeout).unwrap();
    let (stable, high) = statehouse_kafka::reader::end_offsets(&options, &journal, 0, timeout)
        .await
        .unwrap();
    assert!(
        stable < high,
        "an open transaction holds the stable offset back: {stable} {high}"
    );

    let next = Writer::<()>::start_observed(
        &options,
        topics.transactional_id(0),
        0,
        None,
        std::slice::from_ref(&journal),
        shutdown.clone(),
    )
    .await
    .unwrap();
    let hanging: Vec<String> = next
        .hanging()
        .iter()
        .map(|(topic, m)| {
            assert_eq!(topic, &journal);
            String::from_utf8(m.key.clone().unwrap().to_vec()).unwrap()
        })
        .collect();
    assert_eq!(hanging, ["open#0", "open#1"]);
    assert!(next.settled_at(&journal).unwrap() >= high);
    other.abort_transaction(timeout).unwrap();
    shutdown.cancel();
}
