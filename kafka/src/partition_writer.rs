//! The transactional writer of one partition, with group commit
//! (`ARCHITECTURE.md`, "Append (the partition writer)").
//!
//! A [`Writer`] owns a transactional producer whose `transactional.id` is the partition's
//! (`statehouse.<service>.p<partition>`). Starting it calls `init_transactions`, which bumps the
//! producer epoch, aborts the previous owner's open transaction and fences that owner: it can
//! never commit again. Callers [`Handle::append`] groups of records (the events of one command,
//! which may go to the journal and the values topic of the same partition, and records of
//! other topics placed by their key — eventing outputs — that must commit with them); the
//! writer gathers the appends of many callers into one transaction — bounded by a linger, a
//! record count and a byte count — and answers every caller only after that transaction
//! committed. While one transaction commits, the next batch fills (pipelining). The linger
//! adapts: a writer whose last transaction served one caller starts the next at once
//! (`linger-ms`, 0 by default: low latency at low load); one whose last transaction served
//! several waits `busy-linger-ms` for company, so that under load Kafka's fixed cost per
//! transaction is shared by more commands.
//!
//! Failure handling, per librdkafka's transactional API and its missing KIP-890:
//! * abortable error → the transaction is aborted, its callers get [`Error::Aborted`]; the
//!   writer goes on (nothing of the transaction is in the log);
//! * fatal error (fenced, or any fatal producer error) → the callers get [`Error::Fenced`], the
//!   writer stops ([`Stop::Fenced`]);
//! * indefinite error (e.g. a commit timeout while the broker is away) → the outcome is unknown:
//!   the callers get [`Error::Indefinite`] — never OK — and the writer stops
//!   ([`Stop::Unknown`]). It does not re-create its producer and carry on: the transaction may
//!   have committed after all, and whoever writes next must first know what is in the log. The
//!   owner recovers the partition instead — a new writer's `init_transactions` settles the
//!   in-doubt transaction (completes or aborts it) and fences this producer, then the partition is
//!   read to its end before anything new is written.
//!
//! A stopped writer answers every later append with the error of its stop. It never calls
//! `init_transactions` again, so a writer that outlives its ownership can never fence the
//! partition's next owner.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::join_all;
use rdkafka::error::KafkaError;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::{Error, Options, WriterOptions, metrics as m};

/// One Kafka record to write in the writer's partition.
#[derive(Debug, Clone)]
pub struct Record {
    /// Topic name (the journal or the values topic of the writer's service, or an output topic
    /// written in the same transaction).
    pub topic: Arc<str>,
    pub key: Bytes,
    /// `None` writes a tombstone.
    pub value: Option<Bytes>,
    pub headers: Vec<(&'static str, Bytes)>,
    /// `false`: the record goes to the writer's partition of `topic` (the service's own
    /// topics). `true`: Kafka's partitioner places it by its key (a topic outside the service,
    /// e.g. an eventing output topic, whose partitions are not the service's).
    pub by_key: bool,
}

impl Record {
    fn size(&self) -> usize {
        self.key.len()
            + self.value.as_ref().map_or(0, Bytes::len)
            + self
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
    }
}

/// The result of a committed append: the offset of each record, in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub offsets: Vec<i64>,
    /// Number of the transaction (1 = the first this writer committed).
    pub transaction: u64,
}

/// Sees every committed append, in commit (= offset) order, before its caller is answered.
/// The processor uses it to feed the asynchronous backup and the in-memory journal tail.
///
/// `M` is what the caller attached to the append ([`Handle::append_with`]): the typed values
/// the records were encoded from, so an observer never decodes what was just encoded.
pub trait Observer<M = ()>: Send + Sync + 'static {
    /// `records` were committed at `offsets` (same order, same length).
    fn committed(&self, records: &[Record], offsets: &[i64], meta: &M);
}

/// Counters of one writer.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub transactions: u64,
    pub records: u64,
    pub appends: u64,
    pub aborted: u64,
    pub indefinite: u64,
}

#[derive(Debug, Default)]
struct Counters {
    transactions: AtomicU64,
    records: AtomicU64,
    appends: AtomicU64,
    aborted: AtomicU64,
    indefinite: AtomicU64,
}

/// Why a writer stopped for good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// Told to stop (shutdown or the partition was released).
    Closed,
    /// Fenced by a newer producer with the same transactional id, or another fatal producer
    /// error: the partition may belong to someone else now.
    Fenced(String),
    /// A transaction's outcome is unknown: the partition must be recovered (fence, read to the
    /// end) before anything more is written to it.
    Unknown(String),
}

struct Shared {
    transactional_id: String,
    counters: Counters,
    terminal: OnceLock<Stop>,
}

impl Shared {
    fn terminal_error(&self) -> Error {
        match self.terminal.get() {
            Some(Stop::Fenced(reason)) => Error::Fenced {
                transactional_id: self.transactional_id.clone(),
                reason: reason.clone(),
            },
            Some(Stop::Unknown(reason)) => Error::Closed {
                transactional_id: self.transactional_id.clone(),
                reason: format!("stopped after a transaction of unknown outcome ({reason})"),
            },
            Some(Stop::Closed) | None => Error::Closed {
                transactional_id: self.transactional_id.clone(),
                reason: "stopped".into(),
            },
        }
    }
}

struct Append<M> {
    records: Vec<Record>,
    meta: M,
    reply: oneshot::Sender<Result<Committed, Error>>,
}

/// A cheap-to-clone handle on a running writer. `M` is the typed value callers attach to each
/// append for the [`Observer`] (`()` when nothing observes).
pub struct Handle<M = ()> {
    tx: mpsc::Sender<Append<M>>,
    shared: Arc<Shared>,
    limits: WriterOptions,
    /// `kafka.max-record-bytes`.
    max_record_bytes: usize,
    stopped: CancellationToken,
    settled: Arc<[(Arc<str>, i64)]>,
    hanging: Arc<[(Arc<str>, crate::reader::Message)]>,
}

impl<M> Clone for Handle<M> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            shared: Arc::clone(&self.shared),
            limits: self.limits.clone(),
            max_record_bytes: self.max_record_bytes,
            stopped: self.stopped.clone(),
            settled: Arc::clone(&self.settled),
            hanging: Arc::clone(&self.hanging),
        }
    }
}

impl<M: Default + Send + 'static> Handle<M> {
    /// Append `records` in the next transaction; resolves once it committed.
    ///
    /// The records of one append for the writer's partition are contiguous and in order in
    /// their topics' partition; all are committed atomically with the rest of their transaction.
    /// (The offset of a record placed `by_key` is in a partition this does not report.)
    pub async fn append(&self, records: Vec<Record>) -> Result<Committed, Error> {
        self.append_with(records, M::default()).await
    }
}

impl<M: Send + 'static> Handle<M> {
    /// [`Handle::append`], handing `meta` to the observer with the committed records.
    ///
    /// An append the limits refuse ([`Error::RecordTooLarge`], [`Error::TooLarge`]) never
    /// reaches the transaction: a record Kafka would refuse must not abort the other callers'
    /// appends that share it.
    pub async fn append_with(&self, records: Vec<Record>, meta: M) -> Result<Committed, Error> {
        let mut bytes = 0;
        for record in &records {
            let size = record.size();
            if size > self.max_record_bytes {
                return Err(Error::RecordTooLarge {
                    topic: record.topic.to_string(),
                    bytes: size,
                    limit: self.max_record_bytes,
                });
            }
            bytes += size;
        }
        if records.len() > self.limits.max_records || bytes > self.limits.max_bytes {
            return Err(Error::TooLarge {
                records: records.len(),
                bytes,
                max_records: self.limits.max_records,
                max_bytes: self.limits.max_bytes,
            });
        }
        let (reply, rx) = oneshot::channel();
        if self
            .tx
            .send(Append {
                records,
                meta,
                reply,
            })
            .await
            .is_err()
        {
            return Err(self.shared.terminal_error());
        }
        match rx.await {
            Ok(result) => result,
            Err(_) => Err(self.shared.terminal_error()),
        }
    }

    pub fn transactional_id(&self) -> &str {
        &self.shared.transactional_id
    }

    /// The records of transactions found open (and then aborted by the settle) when the writer
    /// started: Kafka acknowledged their commit or abort but never wrote the markers. Whoever
    /// knows from elsewhere that they were committed must write them again.
    pub fn hanging(&self) -> &[(Arc<str>, crate::reader::Message)] {
        &self.hanging
    }

    /// The offset of the settle record in `topic` (see [`Writer::start_observed`]): every record
    /// before it is readable, and nothing after it was written by an earlier owner.
    pub fn settled_at(&self, topic: &str) -> Option<i64> {
        self.settled
            .iter()
            .find(|(t, _)| &**t == topic)
            .map(|(_, offset)| *offset)
    }

    /// Whether the writer was fenced by a newer owner.
    pub fn is_fenced(&self) -> bool {
        matches!(self.shared.terminal.get(), Some(Stop::Fenced(_)))
    }

    /// Whether the writer stopped (for whatever reason): it writes nothing more.
    pub fn is_stopped(&self) -> bool {
        self.shared.terminal.get().is_some()
    }

    /// Why the writer stopped, once it has (it writes nothing more then).
    pub fn stop_reason(&self) -> Option<Stop> {
        self.shared.terminal.get().cloned()
    }

    /// Resolves when the writer has stopped (shutdown, fenced, or failed for good).
    pub async fn stopped(&self) {
        self.stopped.cancelled().await;
    }

    pub fn stats(&self) -> Stats {
        let c = &self.shared.counters;
        Stats {
            transactions: c.transactions.load(Ordering::Relaxed),
            records: c.records.load(Ordering::Relaxed),
            appends: c.appends.load(Ordering::Relaxed),
            aborted: c.aborted.load(Ordering::Relaxed),
            indefinite: c.indefinite.load(Ordering::Relaxed),
        }
    }
}

/// The writer of one partition. See the module docs.
pub struct Writer<M = ()> {
    options: Options,
    partition: i32,
    observer: Option<Arc<dyn Observer<M>>>,
    shared: Arc<Shared>,
    producer: Arc<FutureProducer>,
    rx: mpsc::Receiver<Append<M>>,
    shutdown: CancellationToken,
    stopped: CancellationToken,
}

/// How a transaction ended.
enum Outcome {
    Committed(Vec<Vec<i64>>),
    Aborted(String),
    Fatal(String),
    Indefinite(String),
}

impl Writer {
    /// Create the producer, fence every previous owner (`init_transactions`) and start the
    /// writer task. Returns once this writer is the only one that can commit to the partition.
    pub async fn start(
        options: &Options,
        transactional_id: String,
        partition: u32,
        shutdown: CancellationToken,
    ) -> Result<Handle, Error> {
        Self::start_observed(options, transactional_id, partition, None, &[], shutdown).await
    }
}

impl<M: Send + Sync + 'static> Writer<M> {
    /// Like [`Writer::start`], with an [`Observer`] of every committed append, and settling
    /// the writer's partition of each topic in `settle` before it takes appends.
    ///
    /// Settling makes everything the partition holds readable: after a broker restarts
    /// uncleanly its high watermark can lag behind the records it has (it is restored from a
    /// periodic checkpoint and only moves on with the next write), so a reader would stop short
    /// of records that were acknowledged, or wait forever past the watermark. The writer
    /// produces one record (key [`SETTLE_KEY`], no value) to each topic in a transaction it
    /// then aborts: the acknowledged produce moves the watermark to the end of the log, and the
    /// aborted record is invisible to every `read_committed` reader. Its offset —
    /// [`Handle::settled_at`] — is then the partition's end as of the takeover.
    pub async fn start_observed(
        options: &Options,
        transactional_id: String,
        partition: u32,
        observer: Option<Arc<dyn Observer<M>>>,
        settle: &[Arc<str>],
        shutdown: CancellationToken,
    ) -> Result<Handle<M>, Error> {
        options.validate()?;
        let producer = create_producer(options, &transactional_id).await?;
        // A transaction Kafka left open in a partition (its coordinator skipped the markers,
        // e.g. for a partition that had no leader right after an unclean restart) keeps the last
        // stable offset back for good; `init_transactions` does not close it, the settle
        // transaction below aborts it. Keep its records for the caller to judge.
        let mut hanging = Vec::new();
        for topic in settle {
            let (stable, high) =
                crate::reader::end_offsets(options, topic, partition, options.request_timeout())
                    .await?;
            if stable < high {
                let records = crate::reader::read_to_end(
                    options,
                    topic,
                    partition,
                    stable,
                    crate::reader::Isolation::ReadUncommitted,
                    options.request_timeout(),
                )
                .await?;
                warn!(%transactional_id, topic = %topic, partition, stable, high, records = records.len(), "a transaction was left open in the partition");
                hanging.extend(records.into_iter().map(|m| (Arc::clone(topic), m)));
            }
        }
        let settled = if settle.is_empty() {
            Vec::new()
        } else {
            settle_partition(
                &producer,
                partition as i32,
                settle,
                options.request_timeout(),
            )
            .await
            .map_err(|e| {
                Error::kafka(
                    format!("settling partition {partition} for {transactional_id}"),
                    e,
                )
            })?
        };
        let (tx, rx) = mpsc::channel(options.writer.queue_capacity);
        let shared = Arc::new(Shared {
            transactional_id,
            counters: Counters::default(),
            terminal: OnceLock::new(),
        });
        let stopped = CancellationToken::new();
        let writer = Writer {
            options: options.clone(),
            partition: partition as i32,
            observer,
            shared: Arc::clone(&shared),
            producer,
            rx,
            shutdown,
            stopped: stopped.clone(),
        };
        info!(transactional_id = %shared.transactional_id, partition, ?settled, "partition writer started");
        tokio::spawn(writer.run());
        Ok(Handle {
            tx,
            shared,
            limits: options.writer.clone(),
            max_record_bytes: options.max_record_bytes,
            stopped,
            settled: Arc::from(settled),
            hanging: Arc::from(hanging),
        })
    }

    async fn run(mut self) {
        let limits = self.options.writer.clone();
        let idle_linger = Duration::from_millis(limits.linger_ms);
        let busy_linger = Duration::from_millis(limits.busy_linger_ms.max(limits.linger_ms));
        // Whether the last transaction carried more than one caller's appends.
        let mut busy = false;
        let mut pending: Vec<Append<M>> = Vec::new();
        let (mut pending_records, mut pending_bytes) = (0usize, 0usize);
        let mut first_at: Option<Instant> = None;
        let mut inflight: Option<JoinHandle<(Vec<Append<M>>, Outcome)>> = None;
        let mut closing = false;
        let mut input_done = false;

        loop {
            let linger = if busy { busy_linger } else { idle_linger };
            let room = pending_records < limits.max_records && pending_bytes < limits.max_bytes;
            let linger_at = first_at.map(|t| tokio::time::Instant::from_std(t + linger));
            tokio::select! {
                biased;
                joined = async { inflight.as_mut().expect("guarded").await }, if inflight.is_some() => {
                    inflight = None;
                    let (batch, outcome) = joined.expect("commit task panicked");
                    if !self.finish(batch, outcome).await {
                        break;
                    }
                }
                _ = self.shutdown.cancelled(), if !closing => {
                    closing = true;
                    self.rx.close();
                }
                append = self.rx.recv(), if room && !input_done => match append {
                    Some(append) => {
                        pending_records += append.records.len();
                        pending_bytes += append.records.iter().map(Record::size).sum::<usize>();
                        pending.push(append);
                        first_at.get_or_insert_with(Instant::now);
                    }
                    None => input_done = true,
                },
                _ = tokio::time::sleep_until(linger_at.unwrap_or_else(tokio::time::Instant::now)),
                    if linger_at.is_some() && inflight.is_none() => {}
            }
            let due =
                first_at.is_some_and(|t| t.elapsed() >= linger) || !room || closing || input_done;
            if inflight.is_none() && !pending.is_empty() && due {
                let batch = std::mem::take(&mut pending);
                busy = batch.len() > 1;
                pending_records = 0;
                pending_bytes = 0;
                first_at = None;
                inflight = Some(tokio::spawn(commit(
                    Arc::clone(&self.producer),
                    self.partition,
                    batch,
                    self.options.request_timeout(),
                )));
            }
            if input_done && inflight.is_none() && pending.is_empty() {
                break;
            }
        }
        // Whatever is left (only when fenced or failed) is answered with the terminal error.
        let _ = self.shared.terminal.set(Stop::Closed);
        self.rx.close();
        let err_of = |shared: &Shared| shared.terminal_error();
        for append in pending {
            let _ = append.reply.send(Err(err_of(&self.shared)));
        }
        while let Ok(append) = self.rx.try_recv() {
            let _ = append.reply.send(Err(err_of(&self.shared)));
        }
        if let Some(task) = inflight
            && let Ok((batch, _)) = task.await
        {
            for append in batch {
                let _ = append.reply.send(Err(err_of(&self.shared)));
            }
        }
        info!(transactional_id = %self.shared.transactional_id, "partition writer stopped");
        self.stopped.cancel();
    }

    /// Answer a finished batch. Returns false when the writer must stop.
    async fn finish(&mut self, batch: Vec<Append<M>>, outcome: Outcome) -> bool {
        let c = &self.shared.counters;
        let tid = &self.shared.transactional_id;
        match outcome {
            Outcome::Committed(offsets) => {
                let transaction = c.transactions.fetch_add(1, Ordering::Relaxed) + 1;
                let records: usize = offsets.iter().map(Vec::len).sum();
                c.records.fetch_add(records as u64, Ordering::Relaxed);
                c.appends.fetch_add(batch.len() as u64, Ordering::Relaxed);
                metrics::counter!(m::WRITER_TRANSACTIONS).increment(1);
                metrics::counter!(m::WRITER_RECORDS).increment(records as u64);
                metrics::histogram!(m::WRITER_BATCH_RECORDS).record(records as f64);
                for (append, offsets) in batch.into_iter().zip(offsets) {
                    if let Some(observer) = &self.observer {
                        observer.committed(&append.records, &offsets, &append.meta);
                    }
                    let _ = append.reply.send(Ok(Committed {
                        offsets,
                        transaction,
                    }));
                }
                true
            }
            Outcome::Aborted(reason) => {
                c.aborted.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(m::WRITER_FAILURES, "outcome" => "aborted").increment(1);
                warn!(transactional_id = %tid, %reason, "transaction aborted");
                for append in batch {
                    let _ = append.reply.send(Err(Error::Aborted {
                        reason: reason.clone(),
                    }));
                }
                true
            }
            Outcome::Fatal(reason) => {
                metrics::counter!(m::WRITER_FAILURES, "outcome" => "fenced").increment(1);
                warn!(transactional_id = %tid, %reason, "partition writer fenced or fatally failed; giving up the partition");
                let _ = self.shared.terminal.set(Stop::Fenced(reason));
                for append in batch {
                    let _ = append.reply.send(Err(self.shared.terminal_error()));
                }
                false
            }
            Outcome::Indefinite(reason) => {
                c.indefinite.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(m::WRITER_FAILURES, "outcome" => "indefinite").increment(1);
                warn!(transactional_id = %tid, %reason, "transaction outcome unknown; the writer stops and the partition must be recovered");
                let _ = self.shared.terminal.set(Stop::Unknown(reason.clone()));
                for append in batch {
                    let _ = append.reply.send(Err(Error::Indefinite {
                        reason: reason.clone(),
                    }));
                }
                false
            }
        }
    }
}

/// Key of the records a settling writer produces (in a transaction it aborts).
pub const SETTLE_KEY: &[u8] = b"statehouse.settle";

/// One aborted transaction with a record in `partition` of each topic; returns their offsets.
async fn settle_partition(
    producer: &Arc<FutureProducer>,
    partition: i32,
    topics: &[Arc<str>],
    timeout: Duration,
) -> Result<Vec<(Arc<str>, i64)>, KafkaError> {
    let p = Arc::clone(producer);
    tokio::task::spawn_blocking(move || p.begin_transaction())
        .await
        .expect("begin task panicked")?;
    let mut deliveries = Vec::with_capacity(topics.len());
    for topic in topics {
        let record: FutureRecord<'_, [u8], [u8]> =
            FutureRecord::to(topic).partition(partition).key(SETTLE_KEY);
        deliveries.push(producer.send_result(record).map_err(|(e, _)| e)?);
    }
    let mut settled = Vec::with_capacity(topics.len());
    for (topic, delivery) in topics.iter().zip(join_all(deliveries).await) {
        match delivery {
            Ok(Ok(d)) => settled.push((Arc::clone(topic), d.offset)),
            Ok(Err((e, _))) => return Err(e),
            Err(_) => return Err(KafkaError::Canceled),
        }
    }
    let p = Arc::clone(producer);
    tokio::task::spawn_blocking(move || p.abort_transaction(timeout))
        .await
        .expect("abort task panicked")?;
    Ok(settled)
}

async fn create_producer(
    options: &Options,
    transactional_id: &str,
) -> Result<Arc<FutureProducer>, Error> {
    let producer: FutureProducer = options
        .transactional_producer_config(transactional_id)
        .create()
        .map_err(|e| Error::kafka(format!("creating producer {transactional_id}"), e))?;
    let producer = Arc::new(producer);
    let p = Arc::clone(&producer);
    let timeout = options.request_timeout();
    tokio::task::spawn_blocking(move || p.init_transactions(timeout))
        .await
        .expect("init_transactions task panicked")
        .map_err(|e| Error::kafka(format!("init_transactions for {transactional_id}"), e))?;
    debug!(
        transactional_id,
        "transactions initialised (previous owner fenced)"
    );
    Ok(producer)
}

/// Run one transaction holding every record of `batch`.
async fn commit<M>(
    producer: Arc<FutureProducer>,
    partition: i32,
    batch: Vec<Append<M>>,
    timeout: Duration,
) -> (Vec<Append<M>>, Outcome) {
    let started = Instant::now();
    // Beginning is local to the producer (no request goes out before the first record), so it
    // runs here rather than costing a hand-off to a blocking thread.
    if let Err(e) = producer.begin_transaction() {
        let outcome = classify(&producer, e, timeout).await;
        return (batch, outcome);
    }
    let mut deliveries: Vec<Vec<DeliveryFuture>> = Vec::with_capacity(batch.len());
    for append in &batch {
        let mut futures = Vec::with_capacity(append.records.len());
        for record in &append.records {
            let mut fr = FutureRecord::to(&record.topic)
                .key(&record.key[..])
                .headers(crate::headers::owned(&record.headers));
            if !record.by_key {
                fr = fr.partition(partition);
            }
            if let Some(value) = &record.value {
                fr = fr.payload(&value[..]);
            }
            match producer.send_result(fr) {
                Ok(delivery) => futures.push(delivery),
                Err((e, _)) => {
                    let reason = format!("enqueueing a record failed: {e}");
                    let outcome = abort(&producer, reason, timeout).await;
                    return (batch, outcome);
                }
            }
        }
        deliveries.push(futures);
    }
    // Wait for every produce acknowledgement *before* committing. rdkafka's
    // `commit_transaction` first flushes, and its flush polls in slices of up to 100 ms while
    // anything is in flight (the FutureProducer's own thread serves the delivery reports): a
    // commit issued right after the sends would cost 100 ms every time.
    let mut offsets = Vec::with_capacity(deliveries.len());
    for futures in deliveries {
        let mut these = Vec::with_capacity(futures.len());
        for result in join_all(futures).await {
            match result {
                Ok(Ok(delivery)) => these.push(delivery.offset),
                Ok(Err((e, _))) => {
                    let outcome = classify(&producer, e, timeout).await;
                    return (batch, outcome);
                }
                Err(_) => {
                    let outcome = abort(&producer, "delivery report lost".into(), timeout).await;
                    return (batch, outcome);
                }
            }
        }
        offsets.push(these);
    }
    let p = Arc::clone(&producer);
    let committed = tokio::task::spawn_blocking(move || {
        settle_in_flight(&p);
        p.commit_transaction(timeout)
    })
    .await
    .expect("commit task panicked");
    if let Err(e) = committed {
        let outcome = classify(&producer, e, timeout).await;
        return (batch, outcome);
    }
    metrics::histogram!(m::WRITER_COMMIT_SECONDS).record(started.elapsed().as_secs_f64());
    (batch, Outcome::Committed(offsets))
}

/// A delivery report resolves its future a moment before librdkafka forgets the message; wait
/// (bounded) until nothing is in flight, so that the flush inside the commit is free. Usually a
/// few microseconds: yield first, then sleep in short slices — on the blocking thread that
/// commits next, not with the async timer (whose 1 ms ticks would add a millisecond to every
/// transaction).
fn settle_in_flight(producer: &FutureProducer) {
    let started = Instant::now();
    let mut spins = 0u32;
    while producer.in_flight_count() > 0 && started.elapsed() < Duration::from_millis(50) {
        if spins < 64 {
            spins += 1;
            std::thread::yield_now();
        } else {
            std::thread::sleep(Duration::from_micros(50));
        }
    }
}

/// Turn a transactional error into an outcome, aborting where the API asks for it.
async fn classify(producer: &Arc<FutureProducer>, err: KafkaError, timeout: Duration) -> Outcome {
    match &err {
        KafkaError::Transaction(e) if e.is_fatal() => Outcome::Fatal(e.to_string()),
        KafkaError::Transaction(e) if e.txn_requires_abort() => {
            abort(producer, e.to_string(), timeout).await
        }
        KafkaError::Transaction(e) if e.is_retriable() => Outcome::Indefinite(e.to_string()),
        _ => abort(producer, err.to_string(), timeout).await,
    }
}

async fn abort(producer: &Arc<FutureProducer>, reason: String, timeout: Duration) -> Outcome {
    let p = Arc::clone(producer);
    match tokio::task::spawn_blocking(move || p.abort_transaction(timeout))
        .await
        .expect("abort task panicked")
    {
        Ok(()) => Outcome::Aborted(reason),
        Err(KafkaError::Transaction(e)) if e.is_fatal() => {
            Outcome::Fatal(format!("{reason}; abort: {e}"))
        }
        Err(e) => Outcome::Indefinite(format!("{reason}; abort failed: {e}")),
    }
}
