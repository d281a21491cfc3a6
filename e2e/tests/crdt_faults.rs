//! R9 (`docs/reliability.md`): CRDT replicas converge whatever the order, duplication and
//! delay of the broadcast records — 10,000 updates of 100 entities (GCounters, PNCounters,
//! ORSets) through three processors, with records of the topic published again later, out of
//! order (duplicated, reordered, delayed), a broker bounce, and two processors killed with
//! `kill -9` and restarted. Then:
//!
//! * every replica answers the same value for every entity within 5 s of quiet;
//! * no acknowledged update is lost (updates are written at MAJORITY: acknowledged means in
//!   Kafka) and none is counted twice: each value lies between what was acknowledged and what
//!   was attempted;
//! * any Kafka consumer can fold the entities from the topic: joining the records' state
//!   fragments gives the same values.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message;
use rand::{Rng, SeedableRng};
use statehouse_core::{ServiceName, Topics};
use statehouse_crdt::protocol::{View, Voters};
use statehouse_crdt::{ReplicaId, State as Crdt, codec};
use statehouse_e2e::crdt::{Direct, SERVICE};
use statehouse_e2e::proto::tck::crdt::{
    self as model, Request, RequestAction, State, Update, UpdateWriteConsistency, request_action,
    state, update,
};
use statehouse_kafka::reader::{Isolation, read_to_end};
use statehouse_schemas::avro::{AvroRecord, CrdtDeltaRecord, CrdtRecordKind};
use statehouse_test_support::infra::bounce_kafka;
use statehouse_test_support::kafka_bootstrap;
use statehouse_test_support::stack::{Options, Stack};
use statehouse_test_support::user_function::Kind;

const UPDATES: usize = 10_000;
const KEYS: usize = 100;
const WORKERS: usize = 8;

fn key(i: usize) -> String {
    match i % 3 {
        0 => format!("GCounter-r9-{i}"),
        1 => format!("PNCounter-r9-{i}"),
        _ => format!("ORSet-r9-{i}"),
    }
}

/// What the clients know of one entity.
#[derive(Default, Debug)]
struct Known {
    /// Sum of acknowledged changes (counters).
    acked: i64,
    /// Sums of changes whose outcome is unknown, by sign.
    unknown_up: i64,
    unknown_down: i64,
    /// ORSet elements added with an acknowledgement / with an unknown outcome.
    acked_elements: BTreeSet<String>,
    unknown_elements: BTreeSet<String>,
}

fn update_of(i: usize, n: usize) -> (request_action::Action, i64, Option<String>) {
    let (u, change, element) = match i % 3 {
        0 => {
            let by = (n % 5 + 1) as u64;
            (
                update::Update::Gcounter(model::GCounterUpdate { increment: by }),
                by as i64,
                None,
            )
        }
        1 => {
            let by = (n % 7) as i64 - 3;
            (
                update::Update::Pncounter(model::PnCounterUpdate { change: by }),
                by,
                None,
            )
        }
        _ => {
            let element = format!("e{n}");
            (
                update::Update::Orset(model::OrSetUpdate {
                    action: Some(model::or_set_update::Action::Add(element.clone())),
                }),
                0,
                Some(element),
            )
        }
    };
    (
        request_action::Action::Update(Update {
            update: Some(u),
            write_consistency: UpdateWriteConsistency::Majority as i32,
        }),
        change,
        element,
    )
}

/// Republish records of the topic later and out of order until `stop`: every record read is
/// kept; every 100 ms a random few of those kept go out again. Returns how many were
/// republished.
async fn chaos(topic: String, partitions: u32, stop: tokio_util::sync::CancellationToken) -> usize {
    let options = statehouse_kafka::Options {
        bootstrap_servers: kafka_bootstrap(),
        ..statehouse_kafka::Options::default()
    };
    let from: Vec<(&str, u32, i64)> = (0..partitions).map(|p| (topic.as_str(), p, 0)).collect();
    let mut records = statehouse_kafka::reader::follow(&options, &from, stop.clone()).unwrap();
    let producer = statehouse_kafka::broadcast::Broadcast::new(&options, topic.clone()).unwrap();
    let mut kept: Vec<(Bytes, Bytes)> = Vec::new();
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    let mut republished = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return republished,
            Some((_, m)) = records.recv() => {
                if let (Some(k), Some(v)) = (m.key, m.value)
                    && !k.starts_with(b"~heartbeat")
                {
                    kept.push((k, v));
                }
            }
            _ = tick.tick() => {
                for _ in 0..kept.len().min(40) {
                    let (k, v) = &kept[rng.random_range(0..kept.len())];
                    if let Ok(delivery) = producer.send(std::str::from_utf8(k).unwrap(), v) {
                        tokio::spawn(delivery);
                        republished += 1;
                    }
                }
            }
        }
    }
}

/// A model state as the `View` the user function holds.
fn view_of(state: &Option<State>) -> Option<View> {
    match state.as_ref()?.value.as_ref()? {
        state::Value::Gcounter(v) => Some(View::GCounter(v.value)),
        state::Value::Pncounter(v) => Some(View::PNCounter(v.value)),
        state::Value::Orset(v) => Some(View::ORSet(
            v.elements
                .iter()
                .map(|e| {
                    statehouse_crdt::Elem::new(
                        "p.cloudstate.io/string",
                        GoString { value: e.clone() }.encode_to_vec(),
                    )
                })
                .collect(),
        )),
        _ => None,
    }
}

/// The Go SDK's encoding of a string (`p.cloudstate.io/string`).
#[derive(Clone, PartialEq, prost::Message)]
struct GoString {
    #[prost(string, tag = "1")]
    value: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r9_crdt_replicas_converge_under_duplicates_reordering_delays_bounces_and_kills() {
    let mut options = Options::new(Kind::GoTck);
    options.service = SERVICE.into();
    options.processors = 3;
    options.processor_sets.extend([
        "processor.crdt-heartbeat-interval-ms=500".to_string(),
        "processor.crdt-heartbeat-timeout-ms=3000".to_string(),
    ]);
    let mut stack = Stack::start(options);
    for i in 0..3 {
        stack.wait_ready(i, Duration::from_secs(120));
    }
    let processors: Vec<Direct> = (0..3)
        .map(|i| Direct::connect(stack.pods[i].internal_port))
        .collect();
    for (i, p) in processors.iter().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(60);
        while let Err(e) = p
            .process(Request {
                id: key(0),
                actions: vec![],
            })
            .await
        {
            assert!(
                Instant::now() < deadline,
                "processor {i} serves no CRDTs: {e}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let topic = Topics::new(stack.prefix.clone(), ServiceName::new(SERVICE).unwrap()).crdt();
    let stop_chaos = tokio_util::sync::CancellationToken::new();
    let chaos = tokio::spawn(chaos(
        topic.clone(),
        stack.options.partitions,
        stop_chaos.clone(),
    ));

    // The load: WORKERS clients, each update to a random processor.
    let known: Arc<Mutex<HashMap<usize, Known>>> = Arc::new(Mutex::new(HashMap::new()));
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let failures = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let (known, next, failures, processors) = (
                known.clone(),
                next.clone(),
                failures.clone(),
                processors.clone(),
            );
            tokio::spawn(async move {
                let mut rng = rand::rngs::StdRng::seed_from_u64(w as u64);
                loop {
                    let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if n >= UPDATES {
                        return;
                    }
                    let i = rng.random_range(0..KEYS);
                    let (action, change, element) = update_of(i, n);
                    let p = &processors[rng.random_range(0..processors.len())];
                    let outcome = p
                        .process(Request {
                            id: key(i),
                            actions: vec![RequestAction {
                                action: Some(action),
                            }],
                        })
                        .await;
                    let mut known = known.lock().unwrap();
                    let k = known.entry(i).or_default();
                    match outcome {
                        Ok(_) => {
                            k.acked += change;
                            k.acked_elements.extend(element);
                        }
                        Err(_) => {
                            failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            if change > 0 {
                                k.unknown_up += change;
                            } else {
                                k.unknown_down += change;
                            }
                            k.unknown_elements.extend(element);
                        }
                    }
                }
            })
        })
        .collect();

    // The faults, as the load goes.
    let progress = |at: usize| {
        let next = next.clone();
        async move {
            while next.load(std::sync::atomic::Ordering::Relaxed) < at {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    progress(UPDATES / 4).await;
    stack.pods[2].processor.kill9();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stack.pods[2].processor.restart();
    progress(UPDATES / 2).await;
    let down = tokio::task::spawn_blocking(|| bounce_kafka(false))
        .await
        .unwrap();
    eprintln!("the broker was down for {down:?}");
    progress(UPDATES * 3 / 4).await;
    stack.pods[1].processor.kill9();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stack.pods[1].processor.restart();
    for worker in workers {
        worker.await.unwrap();
    }
    stop_chaos.cancel();
    let republished = chaos.await.unwrap();
    eprintln!(
        "{UPDATES} updates ({} failed or unknown), {republished} records republished out of order",
        failures.load(std::sync::atomic::Ordering::Relaxed)
    );
    assert!(
        republished >= 1_000,
        "too few records republished: {republished}"
    );

    // Quiet: the restarted processors serve again, then every replica answers the same.
    for (i, processor) in processors.iter().enumerate() {
        stack.wait_ready(i, Duration::from_secs(120));
        let deadline = Instant::now() + Duration::from_secs(60);
        while let Err(e) = processor
            .process(Request {
                id: key(0),
                actions: vec![],
            })
            .await
        {
            assert!(
                Instant::now() < deadline,
                "processor {i} serves no CRDTs: {e}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let quiet = Instant::now();
    let mut values: BTreeMap<usize, Option<State>> = BTreeMap::new();
    let mut late: Vec<String> = Vec::new();
    for i in 0..KEYS {
        let mut first_differ = None;
        loop {
            let mut answers = Vec::new();
            for p in &processors {
                answers.push(
                    p.process(Request {
                        id: key(i),
                        actions: vec![],
                    })
                    .await,
                );
            }
            if answers.iter().all(|a| a.is_ok() && a == &answers[0]) {
                values.insert(i, answers[0].clone().unwrap());
                break;
            }
            first_differ.get_or_insert_with(|| format!("{answers:?}"));
            // Keep looking past the bound, to tell a slow replica from a lost change.
            assert!(
                quiet.elapsed() < Duration::from_secs(60),
                "{} still differs between replicas 60 s after quiet: {answers:?}",
                key(i)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if quiet.elapsed() > Duration::from_secs(5) {
            late.push(format!(
                "{} agreed {:?} after quiet (first {})",
                key(i),
                quiet.elapsed(),
                first_differ.unwrap_or_default()
            ));
        }
    }
    eprintln!(
        "replicas agreed on {KEYS} entities {:?} after quiet",
        quiet.elapsed()
    );
    // Nothing acknowledged lost, nothing counted twice.
    let known = std::mem::take(&mut *known.lock().unwrap());
    for (i, value) in &values {
        let Some(k) = known.get(i) else { continue };
        match view_of(value) {
            Some(View::GCounter(v)) => {
                let v = v as i64;
                assert!(
                    (k.acked..=k.acked + k.unknown_up).contains(&v),
                    "{}: {v} not in [{}, {}]",
                    key(*i),
                    k.acked,
                    k.acked + k.unknown_up
                );
            }
            Some(View::PNCounter(v)) => assert!(
                (k.acked + k.unknown_down..=k.acked + k.unknown_up).contains(&v),
                "{}: {v} not in [{}, {}]",
                key(*i),
                k.acked + k.unknown_down,
                k.acked + k.unknown_up
            ),
            Some(View::ORSet(_)) => {
                let Some(state::Value::Orset(set)) = value.as_ref().and_then(|s| s.value.clone())
                else {
                    unreachable!()
                };
                let got: BTreeSet<String> = set.elements.into_iter().collect();
                assert!(
                    k.acked_elements.is_subset(&got),
                    "{}: acknowledged adds lost: {:?}",
                    key(*i),
                    k.acked_elements.difference(&got).collect::<Vec<_>>()
                );
                let attempted: BTreeSet<String> = k
                    .acked_elements
                    .union(&k.unknown_elements)
                    .cloned()
                    .collect();
                assert!(
                    got.is_subset(&attempted),
                    "{}: elements nobody added",
                    key(*i)
                );
            }
            other => panic!("{}: unexpected value {other:?}", key(*i)),
        }
    }

    // The topic alone folds to the same values.
    let kafka = statehouse_kafka::Options {
        bootstrap_servers: kafka_bootstrap(),
        ..statehouse_kafka::Options::default()
    };
    let mut folded: HashMap<String, Crdt> = HashMap::new();
    for partition in 0..stack.options.partitions {
        for m in read_to_end(
            &kafka,
            &topic,
            partition,
            0,
            Isolation::ReadCommitted,
            Duration::from_secs(60),
        )
        .await
        .unwrap()
        {
            let record = CrdtDeltaRecord::decode(&m.value.unwrap()).unwrap();
            if !matches!(
                record.kind,
                CrdtRecordKind::Delta | CrdtRecordKind::FullState
            ) {
                continue;
            }
            let fragment = codec::decode(&record.state).unwrap();
            match folded.get_mut(&record.entity_id) {
                Some(state) => state.join(&fragment).unwrap(),
                None => {
                    folded.insert(record.entity_id, fragment);
                }
            }
        }
    }
    let nobody = ReplicaId::new("reader");
    let live = BTreeSet::new();
    for (i, value) in &values {
        let from_topic = folded.get(&key(*i)).map(|s| {
            View::of(
                s,
                &Voters {
                    me: &nobody,
                    live: &live,
                },
            )
        });
        let expected = view_of(value);
        // An entity no record reached has the empty value everywhere.
        let from_topic = from_topic.or_else(|| expected.as_ref().map(|v| View::bottom(v.kind())));
        assert_eq!(from_topic, expected, "{} folded from the topic", key(*i));
    }
    assert!(
        late.is_empty(),
        "replicas agreed later than 5 s after quiet: {late:#?}"
    );
}
