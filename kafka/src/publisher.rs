//! Publishes records with an idempotent producer, waiting for the broker's acknowledgement
//! (`acks=all`): registry records (`<prefix>services`, `<prefix>routing`), and the replies of
//! actions with an eventing output topic.

use std::time::Duration;

use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::{Error, Options};

/// An idempotent producer that waits for each record's acknowledgement.
#[derive(Clone)]
pub struct Publisher {
    producer: FutureProducer,
    timeout: Duration,
}

impl Publisher {
    pub fn new(options: &Options) -> Result<Self, Error> {
        options.validate()?;
        let producer = options
            .idempotent_producer_config()
            .create()
            .map_err(|e| Error::kafka("creating an idempotent publisher", e))?;
        Ok(Self {
            producer,
            timeout: options.request_timeout(),
        })
    }

    /// Write `value` under `key` to `topic` and wait until it is acknowledged. Returns
    /// `(partition, offset)`.
    pub async fn publish(&self, topic: &str, key: &str, value: &[u8]) -> Result<(i32, i64), Error> {
        self.publish_record(topic, Some(key.as_bytes()), value, &[])
            .await
    }

    /// Write `value` with `headers` to `topic`, placed by Kafka's partitioner on `key` (no key:
    /// spread), and wait until it is acknowledged. Returns `(partition, offset)`.
    pub async fn publish_record(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        value: &[u8],
        headers: &[(&str, bytes::Bytes)],
    ) -> Result<(i32, i64), Error> {
        let mut record = FutureRecord::to(topic)
            .payload(value)
            .headers(crate::headers::owned(headers));
        if let Some(key) = key {
            record = record.key(key);
        }
        let delivery = self
            .producer
            .send(record, self.timeout)
            .await
            .map_err(|(e, _)| Error::kafka(format!("publishing a record to {topic}"), e))?;
        Ok((delivery.partition, delivery.offset))
    }
}
