//! Eventing with Kafka topics in and out (`docs/protocol.md`, "Eventing"): the pipe
//! (`e2e/proto/pipe.proto`, a Rust SDK event-sourced entity) takes items from
//! `statehouse-e2e-pipe-in` and publishes its replies to `statehouse-e2e-pipe-out` in the same
//! transaction as its events. 1,000 inputs — half CloudEvents in binary mode (`ce_*` headers),
//! half plain protobuf records — give exactly 1,000 read_committed outputs, one per input id,
//! also when the processor is `kill -9`ed in the middle and another takes over: each line's
//! counts are 1..n once each (every input changed its entity once), and every output is a
//! CloudEvent naming its line.
//!
//! The topics are fixed by the proto; every run uses ids of its own and looks only at those.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message as _;
use statehouse_e2e::pipe;
use statehouse_e2e::proto::pipe::{Item, Taken};
use statehouse_kafka::admin::Admin;
use statehouse_kafka::publisher::Publisher;
use statehouse_kafka::reader::{Isolation, Message, read_to_end};
use statehouse_test_support::process::{Statehouse, free_port};
use statehouse_test_support::stack::{Options, Stack};
use statehouse_test_support::user_function::Kind;
use statehouse_test_support::{http, kafka_bootstrap, unique};
use tokio_util::sync::CancellationToken;

const INPUTS: usize = 1_000;
const LINES: usize = 50;

/// A pipe processor with its in-process user function, and its metrics port.
async fn start_pipe(stack: &Stack, stop: &CancellationToken) -> (Statehouse, u16) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let uf_port = listener.local_addr().unwrap().port();
    tokio::spawn(pipe::serve("pipe", listener, stop.clone()));
    let metrics_port = free_port();
    let mut sets = stack.common_sets();
    sets.extend([
        "processor.service=pipe".to_string(),
        format!("processor.listen=\"127.0.0.1:{}\"", free_port()),
        format!("processor.metrics-listen=\"127.0.0.1:{metrics_port}\""),
        format!("processor.user-function-port={uf_port}"),
    ]);
    (Statehouse::start("processor", &sets), metrics_port)
}

fn header<'a>(message: &'a Message, name: &str) -> Option<&'a str> {
    message
        .headers
        .iter()
        .find(|(n, _)| n == name)
        .and_then(|(_, v)| std::str::from_utf8(v).ok())
}

/// This run's outputs, read_committed, from every partition of the output topic.
async fn outputs(kafka: &statehouse_kafka::Options, run: &str) -> Vec<(Taken, Message)> {
    let admin = Admin::new(kafka).unwrap();
    let partitions = admin
        .partition_count(pipe::OUTPUT)
        .await
        .unwrap()
        .unwrap_or(0);
    let mut out = Vec::new();
    for p in 0..partitions {
        for message in read_to_end(
            kafka,
            pipe::OUTPUT,
            p,
            0,
            Isolation::ReadCommitted,
            Duration::from_secs(60),
        )
        .await
        .unwrap()
        {
            let Some(value) = &message.value else {
                continue;
            };
            let taken = Taken::decode(&value[..]).expect("an output is a Taken");
            if taken.id.starts_with(run) {
                out.push((taken, message));
            }
        }
    }
    out
}

/// Publish inputs `range`, `pace` apart.
async fn publish(publisher: &Publisher, run: &str, range: std::ops::Range<usize>, pace: Duration) {
    for i in range {
        tokio::time::sleep(pace).await;
        let item = Item {
            line: format!("{run}-line{}", i % LINES),
            id: format!("{run}-{i:04}"),
        };
        let value = item.encode_to_vec();
        let headers: Vec<(&str, Bytes)> = if i % 2 == 0 {
            // A CloudEvent in Kafka's binary mode.
            vec![
                ("ce_specversion", Bytes::from_static(b"1.0")),
                ("ce_id", Bytes::from(item.id.clone())),
                ("ce_source", Bytes::from_static(b"e2e")),
                ("ce_type", Bytes::from_static(b"statehouse.e2e.pipe.Item")),
                ("content-type", Bytes::from_static(b"application/protobuf")),
            ]
        } else {
            // A plain record: its type in the content type.
            vec![(
                "content-type",
                Bytes::from_static(b"application/x-protobuf; proto=statehouse.e2e.pipe.Item"),
            )]
        };
        publisher
            .publish_record(pipe::INPUT, Some(item.line.as_bytes()), &value, &headers)
            .await
            .unwrap();
    }
}

/// Wait until `n` distinct ids of this run are in the output topic.
async fn wait_for(kafka: &statehouse_kafka::Options, run: &str, n: usize, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let ids: BTreeSet<String> = outputs(kafka, run)
            .await
            .into_iter()
            .map(|(t, _)| t.id)
            .collect();
        if ids.len() >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {} of {n} outputs within 180 s",
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn topic_inputs_give_exactly_one_output_each_across_a_kill() {
    let mut stack = Stack::start(Options::new(Kind::RustShoppingCart));
    stack.wait_ready(0, Duration::from_secs(120));
    let stop = CancellationToken::new();
    let kafka = statehouse_kafka::Options {
        bootstrap_servers: kafka_bootstrap(),
        topic_prefix: stack.prefix.clone(),
        ..statehouse_kafka::Options::default()
    };
    let run = unique("pipe");
    let publisher = Publisher::new(&kafka).unwrap();
    let (mut first, _) = start_pipe(&stack, &stop).await;

    // The first half goes in over ≥ 5 s, so the kill lands while inputs are still coming (each
    // look at the output topic takes a while on a fresh broker: at 2.5 s, a look that started
    // before the 200th output could end after the 500th).
    let first_half = {
        let (publisher, run) = (publisher.clone(), run.clone());
        tokio::spawn(async move {
            publish(&publisher, &run, 0..INPUTS / 2, Duration::from_millis(10)).await;
        })
    };
    // Part of the first half is through: kill the processor in the middle of the stream.
    wait_for(&kafka, &run, INPUTS / 10, "before the kill").await;
    first.kill9();
    let before_takeover = outputs(&kafka, &run).await.len();
    assert!(
        before_takeover < INPUTS / 2,
        "the kill must land mid-stream: {before_takeover} outputs were already out"
    );
    first_half.await.unwrap();
    let (second, second_metrics) = start_pipe(&stack, &stop).await;
    publish(&publisher, &run, INPUTS / 2..INPUTS, Duration::ZERO).await;
    wait_for(&kafka, &run, INPUTS, "after the kill").await;
    // Anything redelivered after the kill has had time to (wrongly) show up.
    tokio::time::sleep(Duration::from_secs(5)).await;
    // What the second processor ran beyond the inputs without an output at the kill were
    // redeliveries (answered from the entities' idempotency windows).
    let ran = http::metric_sum(
        &format!("127.0.0.1:{second_metrics}"),
        "statehouse_eventing_events_total",
    );
    eprintln!(
        "outputs committed before the takeover: {before_takeover}; events the second processor ran: {ran} (redelivered: {})",
        ran - (INPUTS - before_takeover) as f64
    );

    let outputs = outputs(&kafka, &run).await;
    let ids: BTreeSet<&str> = outputs.iter().map(|(t, _)| t.id.as_str()).collect();
    let expected: BTreeSet<String> = (0..INPUTS).map(|i| format!("{run}-{i:04}")).collect();
    assert_eq!(
        ids.len(),
        INPUTS,
        "one output per input id (second processor log: {})",
        second.log_path().display()
    );
    assert!(expected.iter().all(|id| ids.contains(id.as_str())));
    assert_eq!(
        outputs.len(),
        INPUTS,
        "exactly one output per input: no duplicates (second processor log: {})",
        second.log_path().display()
    );
    let mut counts: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
    for (taken, message) in &outputs {
        counts.entry(&taken.line).or_default().push(taken.count);
        assert_eq!(message.key.as_deref(), Some(taken.line.as_bytes()));
        assert_eq!(header(message, "ce_subject"), Some(taken.line.as_str()));
        assert_eq!(
            header(message, "ce_type"),
            Some("statehouse.e2e.pipe.Taken")
        );
        assert_eq!(header(message, "ce_specversion"), Some("1.0"));
        assert_eq!(header(message, "ce_source"), Some(pipe::SERVICE));
        assert_eq!(
            header(message, "content-type"),
            Some("application/protobuf")
        );
        assert!(header(message, "ce_id").is_some_and(|id| !id.is_empty()));
    }
    let ce_ids: BTreeSet<&str> = outputs
        .iter()
        .filter_map(|(_, m)| header(m, "ce_id"))
        .collect();
    assert_eq!(ce_ids.len(), INPUTS, "every output has its own ce_id");
    assert_eq!(counts.len(), LINES);
    for (line, mut seen) in counts {
        seen.sort_unstable();
        let n = seen.len() as u32;
        assert_eq!(
            seen,
            (1..=n).collect::<Vec<_>>(),
            "line {line}: each input counted once"
        );
    }
    stop.cancel();
    drop(second);
}
