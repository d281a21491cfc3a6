//! The fault-test [`Api`] and checker for value entities, with the Go TCK user function's value
//! model (`ValueEntityTckModel`: an update replaces the state with a string and answers it) as a
//! register.
//!
//! Each client owns its entities, so an entity's commands are sequential and the driver knows
//! the order they were sent in (`History::sent`). Every command writes a unique token (also its
//! idempotency key). The checker reads the values topic from offset 0 with read_committed (the test is far shorter
//! than any compaction) and counts, per the reliability plan: acknowledged tokens missing
//! (lost-ack), tokens written twice (duplicate), failed tokens visible (aborted-visible),
//! versions that are not 1, 2, 3… (seq-gap), records out of the order the client sent them
//! (reordered), older writer epochs after newer ones in a partition (writer-interleave), and
//! entities whose answer differs from the last record of the topic (fold-mismatch).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::Duration;

use prost::Message;
use statehouse_kafka::reader::{Isolation, read_to_end};
use statehouse_schemas::avro::{AvroRecord, ValueRecord};
use tonic::transport::Channel;

use crate::checker::tally;
use crate::driver::{Api, History, Options};

use crate::proto::tck::valueentity::value_entity_tck_model_client::ValueEntityTckModelClient;
use crate::proto::tck::valueentity::{Persisted, Request, RequestAction, Update, request_action};

/// The persistence id of the TCK's value model.
pub const PERSISTENCE_ID: &str = "value-entity-tck-model";

/// The value model as a driver [`Api`]: an update writes the token (and must answer it); each
/// client owns `options.carts` entities, so an entity's writes are sequential.
pub struct Values(ValueEntityTckModelClient<Channel>);

impl Api for Values {
    async fn connect(gateway: &str) -> Self {
        Values(
            ValueEntityTckModelClient::connect(format!("http://{gateway}"))
                .await
                .expect("connecting to the gateway"),
        )
    }

    async fn write(
        &mut self,
        id: &str,
        token: &str,
        timeout: Duration,
    ) -> Result<(), tonic::Status> {
        let mut request = tonic::Request::new(update(id, token));
        request.set_timeout(timeout);
        request
            .metadata_mut()
            .insert("idempotency-key", token.parse().expect("ascii token"));
        let answer = self.0.process(request).await?.into_inner().message;
        assert_eq!(answer, token, "an update answers its value");
        Ok(())
    }

    async fn read(&mut self, id: &str, timeout: Duration) -> Result<(), tonic::Status> {
        read(&mut self.0, id, timeout).await.map(|_| ())
    }

    fn entity(options: &Options, client: usize, n: u64, seed: u64) -> String {
        format!("ve-{client}-{}", (n + seed) % options.carts as u64)
    }

    fn entities(options: &Options) -> Vec<String> {
        (0..options.clients)
            .flat_map(|c| (0..options.carts).map(move |k| format!("ve-{c}-{k}")))
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
    timeout: Duration,
) -> Result<String, tonic::Status> {
    let mut request = tonic::Request::new(Request {
        id: id.into(),
        actions: vec![],
    });
    request.set_timeout(timeout);
    client
        .process(request)
        .await
        .map(|r| r.into_inner().message)
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
    (report.lost_ack, report.duplicate, report.aborted_visible) = tally(history, &seen);
    let mut client = ValueEntityTckModelClient::connect(format!("http://{gateway}"))
        .await
        .expect("connecting to the gateway");
    for (id, records) in &by_entity {
        let expected = &records.last().expect("at least one record").1;
        let mut served = None;
        for _ in 0..20 {
            if let Ok(answer) = read(&mut client, id, Duration::from_secs(5)).await {
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
