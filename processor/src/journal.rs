//! What the event-sourced and value entities of one partition write through: the partition's
//! transactional writer, its tail, and who writes (this processor, with the partition's owner
//! epoch). A leaf below the kinds and the partition.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use statehouse_kafka::partition_writer;
use statehouse_schemas::avro;
use tracing::Instrument as _;

use crate::Error;
use crate::command::Position;
use crate::env::Env;
use crate::metrics as m;
use crate::records::{Typed, Written};
use crate::tail::Tail;

pub(crate) struct Journal {
    pub(crate) env: Arc<Env>,
    /// Who writes: this processor instance, with the partition's owner epoch.
    pub(crate) writer_id: avro::Writer,
    pub(crate) writer: partition_writer::Handle<Typed>,
    pub(crate) tail: Arc<Tail>,
    /// The partition's number.
    partition: i32,
    serving: AtomicBool,
}

impl Journal {
    pub(crate) fn new(
        env: Arc<Env>,
        epoch: i64,
        writer: partition_writer::Handle<Typed>,
        tail: Arc<Tail>,
        partition: u32,
    ) -> Self {
        Self {
            writer_id: avro::Writer {
                processor_id: env.processor_id.clone(),
                epoch,
            },
            env,
            writer,
            tail,
            partition: partition as i32,
            serving: AtomicBool::new(true),
        }
    }

    /// Whether the partition serves: not stopping, its writer still running, and the ownership
    /// lease running (a member cut off from Kafka may have lost the partition without knowing).
    pub(crate) fn is_serving(&self) -> bool {
        self.serving.load(Ordering::Acquire) && !self.writer.is_stopped() && self.env.lease.held()
    }

    pub(crate) fn stop_serving(&self) {
        self.serving.store(false, Ordering::Release);
    }

    /// Commit `writes` in the partition's next transaction: encoded once, the typed records
    /// handed to the tail through the writer's observer. Returns where the last event went in the journal topic (if the writes hold events).
    pub(crate) async fn persist(&self, writes: Vec<Written>) -> Result<Option<Position>, Error> {
        let mut records = Vec::with_capacity(writes.len());
        let mut typed = Vec::with_capacity(writes.len());
        let (mut outputs, mut last_event) = (0, None);
        for written in writes {
            match written {
                Written::Output(_) => outputs += 1,
                Written::Event(_) => last_event = Some(records.len()),
                Written::Value(_) | Written::Deleted(_) | Written::Erased(_) => {}
            }
            records.push(written.to_kafka(&self.env.topics)?);
            typed.push(Arc::new(written));
        }
        let n = records.len();
        let span = crate::spans::commit(n, typed.iter().filter_map(|w| w.traceparent()));
        let committed = self
            .writer
            .append_with(records, typed)
            .instrument(span)
            .await?;
        metrics::counter!(m::RECORDS_PERSISTED).increment((n - outputs) as u64);
        if outputs > 0 {
            metrics::counter!(m::EVENTING_OUTPUTS).increment(outputs as u64);
        }
        Ok(last_event
            .and_then(|i| committed.offsets.get(i))
            .map(|&offset| Position {
                partition: self.partition,
                offset,
            }))
    }
}
