//! The producer of a CRDT broadcast topic (`<prefix><service>.crdt`): idempotent, `acks=all`,
//! keyed by entity id (Kafka's murmur2, so an entity's records land in the partition its
//! commands are routed by, in one total order).
//!
//! Why not the transactional partition writer: every processor writes every partition of the
//! topic (a CRDT may be changed on any replica), so there is no single writer to fence, and
//! duplicates are harmless (records are join-semilattice fragments). What matters is that
//! sending never blocks the entity (the record is queued in librdkafka and [`Broadcast::send`]
//! returns at once) and that the caller learns the delivery's outcome when it wants to
//! (`MAJORITY` and `ALL` writes wait for it; `LOCAL` writes only watch for failures, after
//! which the replica publishes the entity's full state).

use std::future::Future;
use std::time::Duration;

use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use crate::{Error, Options};

/// Where a record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    pub partition: i32,
    pub offset: i64,
}

/// The broadcast producer of one topic. Cheap to clone.
#[derive(Clone)]
pub struct Broadcast {
    producer: FutureProducer,
    topic: String,
}

impl Broadcast {
    pub fn new(options: &Options, topic: impl Into<String>) -> Result<Self, Error> {
        options.validate()?;
        let producer = options
            .idempotent_producer_config()
            .create()
            .map_err(|e| Error::kafka("creating the CRDT broadcast producer", e))?;
        Ok(Self {
            producer,
            topic: topic.into(),
        })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Queue `value` under `key` (never waits). The future resolves when Kafka acknowledged the
    /// record on all in-sync replicas, or the delivery failed (after librdkafka's own retries,
    /// within `message.timeout.ms`).
    pub fn send(
        &self,
        key: &str,
        value: &[u8],
    ) -> Result<impl Future<Output = Result<Delivered, Error>> + Send + 'static + use<>, Error>
    {
        let delivery = self
            .producer
            .send_result(FutureRecord::to(&self.topic).key(key).payload(value))
            .map_err(|(e, _)| Error::kafka(format!("queueing a record for {}", self.topic), e))?;
        let topic = self.topic.clone();
        Ok(async move {
            match delivery.await {
                Ok(Ok(delivery)) => Ok(Delivered {
                    partition: delivery.partition,
                    offset: delivery.offset,
                }),
                Ok(Err((e, _))) => Err(Error::kafka(format!("delivering a record to {topic}"), e)),
                Err(_) => Err(Error::Indefinite {
                    reason: format!("the producer of {topic} went away before the delivery report"),
                }),
            }
        })
    }

    /// The producer's fatal error, if it had one: it must then be replaced.
    pub fn fatal_error(&self) -> Option<String> {
        self.producer
            .client()
            .fatal_error()
            .map(|(code, reason)| format!("{code:?}: {reason}"))
    }

    /// Wait (bounded) until queued records are delivered.
    pub fn flush(&self, timeout: Duration) {
        let _ = self.producer.flush(timeout);
    }
}
