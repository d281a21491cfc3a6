//! The physical floor: raw Kafka transactional produce, with the partition writer's settings
//! (`statehouse_kafka::Options::transactional_producer_config`), record shape and batching.
//!
//! C closed-loop clients each submit one record (one "command") to a partition and wait until
//! its transaction committed. Each partition has one transactional producer that commits one
//! transaction at a time; the next batch is whatever arrived while the previous one committed
//! (up to `max-records`/`max-bytes`), like the writer with `linger-ms = 0`. As in the writer,
//! every delivery is awaited and the producer's in-flight count drained before
//! `commit_transaction`, whose internal flush otherwise polls in 100 ms slices.
//!
//! The natural batch depends on how fast commits are, so comparing Statehouse with the floor
//! mixes two effects: per-record cost and batching. [`batch_sweep`] separates them: with
//! `batch_records = k` every transaction holds exactly k records (enough clients keep k queued),
//! and [`at_batch`] interpolates the floor at Statehouse's own records per transaction.
//!
//! The floor's record values are as large as Statehouse's journal records;
//! [`journal_record_sizes`] reads a journal topic back to measure them.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::join_all;
use hdrhistogram::Histogram;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use tokio::sync::{mpsc, oneshot};

use crate::Rng;
use crate::driver::Percentiles;

/// The type URL the processor writes for the cart's `ItemAdded` event (a header of each record).
pub const EVENT_TYPE: &str = "type.googleapis.com/com.example.shoppingcart.persistence.ItemAdded";

/// Settings of the floor measurement.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Options {
    pub bootstrap_servers: String,
    pub topic: String,
    pub partitions: u32,
    pub clients: usize,
    pub entities: u64,
    pub warmup_s: f64,
    pub duration_s: f64,
    /// Bytes of each record's value (the encoded event envelope).
    pub value_bytes: usize,
    pub max_records: usize,
    pub max_bytes: usize,
    /// Exactly this many records per transaction (the writer waits for them), instead of
    /// whatever queued while the previous transaction committed.
    #[serde(default)]
    pub batch_records: Option<usize>,
    pub progress: bool,
}

/// What the floor measured.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Outcome {
    pub records_per_s: f64,
    pub records: u64,
    /// Records committed including the warm-up (for CPU per command).
    pub records_total: u64,
    pub transactions: u64,
    pub mean_batch_records: f64,
    /// Bytes of one record (key + value + headers).
    pub record_bytes: usize,
    /// From submit to committed, per record.
    pub command_latency: Percentiles,
    /// From `begin_transaction` to a completed commit.
    pub commit_latency: Percentiles,
    pub failed_transactions: u64,
    pub loader_cpu_s: f64,
    pub loader_peak_rss_kib: u64,
    /// The fixed batch size of a [`batch_sweep`] point.
    #[serde(default)]
    pub fixed_batch: Option<usize>,
    #[serde(default)]
    pub clients: usize,
}

/// Options and outcome.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Result {
    pub options: Options,
    pub outcome: Outcome,
    /// One point per fixed batch size (see [`batch_sweep`]).
    #[serde(default)]
    pub batch_sweep: Vec<Outcome>,
}

/// The records of a journal topic, measured.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct RecordSizes {
    pub records: u64,
    pub mean_value_bytes: f64,
    pub mean_key_bytes: f64,
    /// Key, value, header keys and values.
    pub mean_record_bytes: f64,
}

/// Read up to `max` committed records of every partition of `topic` from the start (no
/// consumer group) and average their sizes; `None` if the topic holds none.
pub async fn journal_record_sizes(
    bootstrap_servers: &str,
    topic: &str,
    max: u64,
) -> anyhow::Result<Option<RecordSizes>> {
    use rdkafka::Message;
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::message::Headers;
    let kafka = statehouse_kafka::Options {
        bootstrap_servers: bootstrap_servers.to_string(),
        ..statehouse_kafka::Options::default()
    };
    let consumer: StreamConsumer = kafka
        .consumer_config(&format!("statehouse-loadtest-sizes-{topic}"))
        .set("enable.partition.eof", "false")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let partitions = metadata
        .topics()
        .first()
        .map_or(0, |t| t.partitions().len());
    anyhow::ensure!(partitions > 0, "topic {topic} has no partitions");
    let mut assignment = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        assignment.add_partition_offset(topic, i32::try_from(p)?, rdkafka::Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let (mut n, mut values, mut keys, mut all) = (0u64, 0usize, 0usize, 0usize);
    // Until `max` records, or until nothing more arrives for a second.
    while n < max {
        let Ok(message) = tokio::time::timeout(Duration::from_secs(1), consumer.recv()).await
        else {
            break;
        };
        let message = message?;
        let (key, value) = (
            message.key().map_or(0, <[u8]>::len),
            message.payload().map_or(0, <[u8]>::len),
        );
        let headers: usize = message.headers().map_or(0, |h| {
            h.iter()
                .map(|h| h.key.len() + h.value.map_or(0, <[u8]>::len))
                .sum()
        });
        n += 1;
        values += value;
        keys += key;
        all += key + value + headers;
    }
    Ok((n > 0).then(|| RecordSizes {
        records: n,
        mean_value_bytes: values as f64 / n as f64,
        mean_key_bytes: keys as f64 / n as f64,
        mean_record_bytes: all as f64 / n as f64,
    }))
}

/// Clients for transactions of exactly `k` records: two full batches queued per partition, so
/// the next batch is ready when a commit ends (and never fewer than `clients`).
pub fn clients_for_batch(k: usize, partitions: u32, clients: usize) -> usize {
    (2 * k * partitions.max(1) as usize).max(clients)
}

/// Run the floor at exactly `k` records per transaction, for each `k` (closed loop, each point
/// `duration_s` after a 1 s warm-up), on `o`'s topic.
pub async fn batch_sweep(
    o: &Options,
    ks: &[usize],
    duration_s: f64,
) -> anyhow::Result<Vec<Outcome>> {
    let mut points = Vec::new();
    for &k in ks {
        let point = Options {
            batch_records: Some(k.max(1)),
            clients: clients_for_batch(k, o.partitions, o.clients),
            warmup_s: 1.0,
            duration_s,
            ..o.clone()
        };
        points.push(run(&point).await?.outcome);
    }
    Ok(points)
}

/// Records/s of the floor at `batch` records per transaction, linearly interpolated between the
/// two sweep points around it (`points`: batch size, records/s). Outside the swept range it is
/// the nearest end point, and the flag says so.
pub fn at_batch(points: &[(f64, f64)], batch: f64) -> Option<(f64, bool)> {
    let mut p: Vec<(f64, f64)> = points.iter().copied().filter(|(b, _)| *b > 0.0).collect();
    p.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (first, last) = (*p.first()?, *p.last()?);
    if batch <= first.0 {
        return Some((first.1, batch < first.0));
    }
    if batch >= last.0 {
        return Some((last.1, batch > last.0));
    }
    let i = p.partition_point(|(b, _)| *b <= batch);
    let ((b0, r0), (b1, r1)) = (p[i - 1], p[i]);
    Some((r0 + (r1 - r0) * (batch - b0) / (b1 - b0), false))
}

struct Command {
    key: String,
    reply: oneshot::Sender<bool>,
}

#[derive(Default)]
struct Totals {
    transactions: u64,
    records: u64,
    failed: u64,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid histogram bounds")
}

/// Run the floor measurement (creates its topic).
pub async fn run(o: &Options) -> anyhow::Result<Result> {
    let kafka = statehouse_kafka::Options {
        bootstrap_servers: o.bootstrap_servers.clone(),
        ..statehouse_kafka::Options::default()
    };
    let admin: AdminClient<DefaultClientContext> = kafka.client_config().create()?;
    let created = admin
        .create_topics(
            [&NewTopic::new(
                &o.topic,
                o.partitions as i32,
                TopicReplication::Fixed(1),
            )],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await?;
    for r in created {
        if let Err((topic, code)) = r
            && code != rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists
        {
            anyhow::bail!("creating topic {topic}: {code}");
        }
    }
    let value = vec![0x5a_u8; o.value_bytes];
    let sample_key = format!("{}-{}", o.topic, o.entities.saturating_sub(1));
    let record_bytes = sample_key.len()
        + value.len()
        + "statehouse-entity".len()
        + sample_key.len()
        + "statehouse-seq".len()
        + 3
        + "statehouse-type".len()
        + EVENT_TYPE.len();
    let totals = Arc::new(Mutex::new(Totals::default()));
    let commits = Arc::new(Mutex::new(histogram()));
    let mut producers = Vec::new();
    for p in 0..o.partitions {
        let producer: FutureProducer = kafka
            .transactional_producer_config(&format!("{}.p{p}", o.topic))
            .create()?;
        let producer = Arc::new(producer);
        let pr = Arc::clone(&producer);
        tokio::task::spawn_blocking(move || pr.init_transactions(Duration::from_secs(30)))
            .await??;
        producers.push(producer);
    }
    // The clock starts once every producer is ready.
    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(o.warmup_s);
    let end = measure_from + Duration::from_secs_f64(o.duration_s);
    let mut senders = Vec::new();
    let mut writers = Vec::new();
    for (p, producer) in producers.into_iter().enumerate() {
        let queue = o.max_records.max(o.batch_records.unwrap_or(1)).max(1) * 2;
        let (tx, rx) = mpsc::channel::<Command>(queue);
        senders.push(tx);
        writers.push(tokio::spawn(writer(
            producer,
            o.topic.clone(),
            i32::try_from(p)?,
            rx,
            value.clone(),
            o.max_records.max(1),
            o.max_bytes.max(1),
            o.batch_records,
            end,
            Arc::clone(&totals),
            Arc::clone(&commits),
        )));
    }

    let latencies = Arc::new(Mutex::new(histogram()));
    let measured = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let clients: Vec<_> = (0..o.clients.max(1))
        .map(|c| {
            let tx = senders[c % senders.len()].clone();
            let (latencies, measured) = (Arc::clone(&latencies), Arc::clone(&measured));
            let (topic, entities) = (o.topic.clone(), o.entities.max(1));
            let mut rng = Rng::new(c as u64 + 17);
            tokio::spawn(async move {
                while Instant::now() < end {
                    let (reply, rx) = oneshot::channel();
                    let key = format!("{topic}-{}", rng.below(entities));
                    let sent = Instant::now();
                    if tx.send(Command { key, reply }).await.is_err() {
                        return;
                    }
                    let ok = rx.await.unwrap_or(false);
                    if ok && sent >= measure_from && sent < end {
                        let us = (sent.elapsed().as_micros() as u64).max(1);
                        latencies.lock().expect("lock").saturating_record(us);
                        measured.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    if o.progress {
        eprintln!(
            "kafka floor: {} partitions, {} clients, {:.0}s warm-up + {:.0}s …",
            o.partitions, o.clients, o.warmup_s, o.duration_s
        );
    }
    let warm_totals = loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if Instant::now() >= measure_from {
            let t = totals.lock().expect("lock");
            commits.lock().expect("lock").reset();
            break (t.transactions, t.records);
        }
    };
    tokio::time::sleep_until(end.into()).await;
    let end_totals = {
        let t = totals.lock().expect("lock");
        (t.transactions, t.records)
    };
    for c in clients {
        let _ = c.await;
    }
    drop(senders);
    for w in writers {
        let _ = w.await;
    }
    let t = totals.lock().expect("lock");
    let transactions = end_totals.0 - warm_totals.0;
    let records = end_totals.1 - warm_totals.1;
    let measured = measured.load(std::sync::atomic::Ordering::Relaxed);
    let (loader_cpu_s, loader_peak_rss_kib) = crate::self_usage();
    let outcome = Outcome {
        records_per_s: measured as f64 / o.duration_s,
        records: measured,
        records_total: t.records,
        transactions,
        mean_batch_records: records as f64 / transactions.max(1) as f64,
        record_bytes,
        command_latency: Percentiles::of(&latencies.lock().expect("lock")),
        commit_latency: Percentiles::of(&commits.lock().expect("lock")),
        failed_transactions: t.failed,
        loader_cpu_s,
        loader_peak_rss_kib,
        fixed_batch: o.batch_records,
        clients: o.clients,
    };
    if o.progress {
        eprintln!(
            "kafka floor: {:.0} records/s, commit p50 {:.2} ms, batch {:.1}",
            outcome.records_per_s, outcome.commit_latency.p50_ms, outcome.mean_batch_records
        );
    }
    Ok(Result {
        options: o.clone(),
        outcome,
        batch_sweep: Vec::new(),
    })
}

#[allow(clippy::too_many_arguments)]
async fn writer(
    producer: Arc<FutureProducer>,
    topic: String,
    partition: i32,
    mut rx: mpsc::Receiver<Command>,
    value: Vec<u8>,
    max_records: usize,
    max_bytes: usize,
    fixed: Option<usize>,
    end: Instant,
    totals: Arc<Mutex<Totals>>,
    commits: Arc<Mutex<Histogram<u64>>>,
) {
    while let Some(first) = rx.recv().await {
        let mut bytes = first.key.len() * 2 + value.len();
        let mut batch = vec![first];
        match fixed {
            // Exactly k records; after the end a partial batch lets the last clients finish.
            Some(k) => {
                while batch.len() < k {
                    tokio::select! {
                        c = rx.recv() => match c {
                            Some(c) => batch.push(c),
                            None => break,
                        },
                        () = tokio::time::sleep_until(end.into()) => break,
                    }
                }
            }
            // The batch is what queued while the previous transaction committed.
            None => {
                while batch.len() < max_records && bytes < max_bytes {
                    match rx.try_recv() {
                        Ok(c) => {
                            bytes += c.key.len() * 2 + value.len();
                            batch.push(c);
                        }
                        Err(_) => break,
                    }
                }
            }
        }
        let started = Instant::now();
        let ok = transaction(&producer, &topic, partition, &batch, &value).await;
        {
            let mut t = totals.lock().expect("lock");
            if ok {
                t.transactions += 1;
                t.records += batch.len() as u64;
                if started < end {
                    commits
                        .lock()
                        .expect("lock")
                        .saturating_record((started.elapsed().as_micros() as u64).max(1));
                }
            } else {
                t.failed += 1;
            }
        }
        for c in batch {
            let _ = c.reply.send(ok);
        }
    }
}

async fn transaction(
    producer: &Arc<FutureProducer>,
    topic: &str,
    partition: i32,
    batch: &[Command],
    value: &[u8],
) -> bool {
    let timeout = Duration::from_secs(30);
    let p = Arc::clone(producer);
    if !matches!(
        tokio::task::spawn_blocking(move || p.begin_transaction()).await,
        Ok(Ok(()))
    ) {
        return false;
    }
    let mut deliveries = Vec::with_capacity(batch.len());
    for (i, c) in batch.iter().enumerate() {
        let seq = (i % 1000).to_string();
        let headers = OwnedHeaders::new_with_capacity(3)
            .insert(Header {
                key: "statehouse-entity",
                value: Some(c.key.as_bytes()),
            })
            .insert(Header {
                key: "statehouse-seq",
                value: Some(seq.as_bytes()),
            })
            .insert(Header {
                key: "statehouse-type",
                value: Some(EVENT_TYPE.as_bytes()),
            });
        let record = FutureRecord::to(topic)
            .partition(partition)
            .key(c.key.as_bytes())
            .payload(value)
            .headers(headers);
        match producer.send_result(record) {
            Ok(d) => deliveries.push(d),
            Err(_) => {
                let p = Arc::clone(producer);
                let _ = tokio::task::spawn_blocking(move || p.abort_transaction(timeout)).await;
                return false;
            }
        }
    }
    let delivered = join_all(deliveries)
        .await
        .into_iter()
        .all(|d| matches!(d, Ok(Ok(_))));
    // Drain librdkafka's in-flight count so that the flush inside the commit is free.
    let settle = Instant::now();
    while producer.in_flight_count() > 0 && settle.elapsed() < Duration::from_millis(50) {
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    let p = Arc::clone(producer);
    if !delivered {
        let _ = tokio::task::spawn_blocking(move || p.abort_transaction(timeout)).await;
        return false;
    }
    matches!(
        tokio::task::spawn_blocking(move || p.commit_transaction(timeout)).await,
        Ok(Ok(()))
    )
}
