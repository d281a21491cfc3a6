//! The fault-test driver and checker for value entities, with the Go TCK user function's value
//! model (`ValueEntityTckModel`: an update replaces the state with a string and answers it) as a
//! register.
//!
//! Each client owns its entities, so an entity's commands are sequential and the driver knows
//! the order they were sent in. Every command writes a unique token (also its idempotency key).
//! The checker reads the values topic from offset 0 with read_committed (the test is far shorter
//! than any compaction) and counts, per the reliability plan: acknowledged tokens missing
//! (lost-ack), tokens written twice (duplicate), failed tokens visible (aborted-visible),
//! versions that are not 1, 2, 3… (seq-gap), records out of the order the client sent them
//! (reordered), older writer epochs after newer ones in a partition (writer-interleave), and
//! entities whose answer differs from the last record of the topic (fold-mismatch).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use prost::Message;
use statehouse_kafka::reader::{Isolation, read_to_end};
use statehouse_schemas::avro::{AvroRecord, ValueRecord};
use tokio::sync::Mutex;
use tonic::transport::Channel;

use crate::proto::tck::valueentity::value_entity_tck_model_client::ValueEntityTckModelClient;
use crate::proto::tck::valueentity::{Persisted, Request, RequestAction, Update, request_action};

/// The persistence id of the TCK's value model.
pub const PERSISTENCE_ID: &str = "value-entity-tck-model";

/// What the driver knows of each command.
#[derive(Debug, Default)]
pub struct History {
    pub acked: HashMap<String, String>,
    pub failed: HashSet<String>,
    pub unknown: HashSet<String>,
    /// Per entity, the tokens in the order they were sent.
    pub sent: BTreeMap<String, Vec<String>>,
}

/// Settings of a [`Driver`].
#[derive(Debug, Clone)]
pub struct Options {
    pub clients: usize,
    /// Entities per client.
    pub entities: usize,
    pub attempt_timeout: Duration,
    pub give_up: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            clients: 8,
            entities: 5,
            attempt_timeout: Duration::from_secs(3),
            give_up: Duration::from_secs(60),
        }
    }
}

impl Options {
    /// Every entity id the clients write.
    pub fn entity_ids(&self) -> Vec<String> {
        (0..self.clients)
            .flat_map(|c| (0..self.entities).map(move |k| format!("ve-{c}-{k}")))
            .collect()
    }
}

fn update(id: &str, token: &str) -> Request {
    Request {
        id: id.into(),
        actions: vec![RequestAction {
            action: Some(request_action::Action::Update(Update {
                value: token.into(),
            })),
        }],
    }
}

/// The answer of a read (a request without actions).
pub async fn read(
    client: &mut ValueEntityTckModelClient<Channel>,
    id: &str,
) -> Result<String, tonic::Status> {
    let mut request = tonic::Request::new(Request {
        id: id.into(),
        actions: vec![],
    });
    request.set_timeout(Duration::from_secs(5));
    client
        .process(request)
        .await
        .map(|r| r.into_inner().message)
}

/// One update, retried with the same idempotency key. Ok(true) = acknowledged, Ok(false) =
/// definite failure, Err = unknown.
async fn write(
    client: &mut ValueEntityTckModelClient<Channel>,
    id: &str,
    token: &str,
    options: &Options,
) -> Result<bool, String> {
    let deadline = Instant::now() + options.give_up;
    let mut last = String::new();
    while Instant::now() < deadline {
        let mut request = tonic::Request::new(update(id, token));
        request.set_timeout(options.attempt_timeout);
        request
            .metadata_mut()
            .insert("idempotency-key", token.parse().expect("ascii token"));
        match client.process(request).await {
            Ok(answer) => {
                assert_eq!(
                    answer.into_inner().message,
                    token,
                    "an update answers its value"
                );
                return Ok(true);
            }
            Err(s)
                if matches!(
                    s.code(),
                    tonic::Code::Unavailable
                        | tonic::Code::DeadlineExceeded
                        | tonic::Code::Cancelled
                ) || (s.code() == tonic::Code::Unknown
                    && s.message().starts_with("Unexpected Value entity")) =>
            {
                last = format!("{s:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(s) => {
                eprintln!("definite failure of {token}: {s:?}");
                return Ok(false);
            }
        }
    }
    Err(last)
}

/// Running clients.
pub struct Driver {
    history: Arc<Mutex<History>>,
    acked: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Driver {
    /// Start `options.clients` clients against the gateway at `gateway` (`host:port`).
    pub async fn start(gateway: &str, options: Options, seed: u64) -> Self {
        let history = Arc::new(Mutex::new(History::default()));
        let acked = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for c in 0..options.clients {
            let mut client = ValueEntityTckModelClient::connect(format!("http://{gateway}"))
                .await
                .expect("connecting to the gateway");
            let (history, acked, stop, options) = (
                history.clone(),
                acked.clone(),
                stop.clone(),
                options.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut n: u64 = 0;
                while !stop.load(Ordering::Acquire) {
                    n += 1;
                    let token = format!("s{seed}-c{c}-{n}");
                    let id = format!("ve-{c}-{}", (n + seed) % options.entities as u64);
                    history
                        .lock()
                        .await
                        .sent
                        .entry(id.clone())
                        .or_default()
                        .push(token.clone());
                    let outcome = write(&mut client, &id, &token, &options).await;
                    let mut h = history.lock().await;
                    match outcome {
                        Ok(true) => {
                            acked.fetch_add(1, Ordering::Relaxed);
                            h.acked.insert(token, id);
                        }
                        Ok(false) => {
                            h.failed.insert(token);
                        }
                        Err(_) => {
                            h.unknown.insert(token);
                        }
                    }
                }
            }));
        }
        Self {
            history,
            acked,
            stop,
            tasks,
        }
    }

    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::Relaxed)
    }

    /// Stop the clients (each finishes its command) and return the history.
    pub async fn stop(self) -> History {
        self.stop.store(true, Ordering::Release);
        for task in self.tasks {
            task.await.expect("a client task panicked");
        }
        Arc::try_unwrap(self.history)
            .expect("no client left")
            .into_inner()
    }
}

/// How long until every entity of `ids` answers a read through the gateway.
///
/// # Panics
/// If some entity does not answer within `limit`.
pub async fn until_all_answer(gateway: &str, ids: &[String], limit: Duration) -> Duration {
    let started = Instant::now();
    let mut client = ValueEntityTckModelClient::connect(format!("http://{gateway}"))
        .await
        .expect("connecting to the gateway");
    let mut pending: Vec<&String> = ids.iter().collect();
    while !pending.is_empty() {
        assert!(
            started.elapsed() < limit,
            "entities {pending:?} did not answer within {limit:?}"
        );
        let mut still = Vec::new();
        for id in pending {
            if read(&mut client, id).await.is_err() {
                still.push(id);
            }
        }
        pending = still;
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    started.elapsed()
}

/// The counters. All anomalies must be 0.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    pub acknowledged: usize,
    pub definite_failures: usize,
    pub unknown: usize,
    pub written: usize,
    pub lost_ack: usize,
    pub duplicate: usize,
    pub aborted_visible: usize,
    pub seq_gap: usize,
    pub reordered: usize,
    pub writer_interleave: usize,
    pub fold_mismatch: usize,
}

impl Report {
    /// lost-ack, duplicate, aborted-visible, seq-gap, reordered, writer-interleave,
    /// fold-mismatch.
    pub fn anomalies(&self) -> [usize; 7] {
        [
            self.lost_ack,
            self.duplicate,
            self.aborted_visible,
            self.seq_gap,
            self.reordered,
            self.writer_interleave,
            self.fold_mismatch,
        ]
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "acknowledged={} failed={} unknown={} written={} | lost-ack={} duplicate={} aborted-visible={} seq-gap={} reordered={} writer-interleave={} fold-mismatch={}",
            self.acknowledged,
            self.definite_failures,
            self.unknown,
            self.written,
            self.lost_ack,
            self.duplicate,
            self.aborted_visible,
            self.seq_gap,
            self.reordered,
            self.writer_interleave,
            self.fold_mismatch
        )
    }
}

/// Read the values topic of `service` under `prefix` and read every entity through `gateway`.
pub async fn check(
    kafka_bootstrap: &str,
    prefix: &str,
    service: &str,
    partitions: u32,
    gateway: &str,
    history: &History,
) -> Report {
    let kafka = statehouse_kafka::Options {
        bootstrap_servers: kafka_bootstrap.to_string(),
        ..statehouse_kafka::Options::default()
    };
    let topic = format!("{prefix}{service}.values");
    let mut report = Report {
        acknowledged: history.acked.len(),
        definite_failures: history.failed.len(),
        unknown: history.unknown.len(),
        ..Report::default()
    };
    // Per entity id: (seq, token) in topic order.
    let mut by_entity: BTreeMap<String, Vec<(i64, String)>> = BTreeMap::new();
    for p in 0..partitions {
        let mut newest = i64::MIN;
        for m in read_to_end(
            &kafka,
            &topic,
            p,
            0,
            Isolation::ReadCommitted,
            Duration::from_secs(120),
        )
        .await
        .expect("reading the values topic")
        {
            let Some(value) = &m.value else { continue };
            let record = ValueRecord::decode(value).expect("a ValueRecord");
            if record.persistence_id != PERSISTENCE_ID {
                continue;
            }
            if record.writer.epoch < newest {
                report.writer_interleave += 1;
            }
            newest = newest.max(record.writer.epoch);
            let token = Persisted::decode(record.payload.clone())
                .expect("a Persisted")
                .value;
            by_entity
                .entry(record.entity_id.clone())
                .or_default()
                .push((record.seq, token));
        }
    }
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (id, records) in &by_entity {
        if records
            .iter()
            .enumerate()
            .any(|(i, (seq, _))| *seq != i as i64 + 1)
        {
            report.seq_gap += 1;
        }
        for (_, token) in records {
            *seen.entry(token.as_str()).or_default() += 1;
        }
        // The topic's order must follow the order the client sent the tokens in.
        let sent = history.sent.get(id).map(Vec::as_slice).unwrap_or_default();
        let position: HashMap<&str, usize> = sent
            .iter()
            .enumerate()
            .map(|(i, t)| (t.as_str(), i))
            .collect();
        let order: Vec<usize> = records
            .iter()
            .filter_map(|(_, t)| position.get(t.as_str()).copied())
            .collect();
        if order.windows(2).any(|w| w[0] > w[1]) {
            report.reordered += 1;
        }
    }
    report.written = seen.len();
    report.duplicate = seen.values().filter(|&&n| n > 1).count();
    report.lost_ack = history
        .acked
        .keys()
        .filter(|t| !seen.contains_key(t.as_str()))
        .count();
    report.aborted_visible = history
        .failed
        .iter()
        .filter(|t| seen.contains_key(t.as_str()))
        .count();
    let mut client = ValueEntityTckModelClient::connect(format!("http://{gateway}"))
        .await
        .expect("connecting to the gateway");
    for (id, records) in &by_entity {
        let expected = &records.last().expect("at least one record").1;
        let mut served = None;
        for _ in 0..20 {
            if let Ok(answer) = read(&mut client, id).await {
                served = Some(answer);
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        if served.as_ref() != Some(expected) {
            report.fold_mismatch += 1;
        }
    }
    report
}
