//! Publishes records with an idempotent producer, waiting for the broker's acknowledgement
//! (`acks=all`): registry records (`<prefix>services`, `<prefix>routing`), and the replies of
//! actions with an eventing output topic.

use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::{Error, Options};

/// An idempotent producer for small, keyed, compacted records.
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
            .map_err(|e| Error::kafka("creating the registry publisher", e))?;
        Ok(Self {
            producer,
            timeout: options.request_timeout(),
        })
    }

    /// Write `value` under `key` to `topic` and wait until it is acknowledged. Returns
    /// `(partition, offset)`.
    pub async fn publish(&self, topic: &str, key: &str, value: &[u8]) -> Result<(i32, i64), Error> {
        let delivery = self
            .producer
            .send(
                FutureRecord::to(topic).key(key).payload(value),
                self.timeout,
            )
            .await
            .map_err(|(e, _)| Error::kafka(format!("publishing {key} to {topic}"), e))?;
        Ok((delivery.partition, delivery.offset))
    }

    /// Write `value` with `headers` to `topic`, placed by Kafka's partitioner on `key` (an
    /// empty key spreads), and wait until it is acknowledged. Returns `(partition, offset)`.
    pub async fn publish_record(
        &self,
        topic: &str,
        key: &[u8],
        value: &[u8],
        headers: &[(&str, bytes::Bytes)],
    ) -> Result<(i32, i64), Error> {
        let mut owned = OwnedHeaders::new_with_capacity(headers.len());
        for (name, value) in headers {
            owned = owned.insert(Header {
                key: name,
                value: Some(&value[..]),
            });
        }
        let delivery = self
            .producer
            .send(
                FutureRecord::to(topic)
                    .key(key)
                    .payload(value)
                    .headers(owned),
                self.timeout,
            )
            .await
            .map_err(|(e, _)| Error::kafka(format!("publishing a record to {topic}"), e))?;
        Ok((delivery.partition, delivery.offset))
    }
}
