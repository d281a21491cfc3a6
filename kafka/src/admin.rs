//! Topic administration: create a service's topics (and the shared registry and routing topics)
//! with the policies of `ARCHITECTURE.md` ("Topics of a service"), idempotently, and verify
//! existing ones.

use std::collections::BTreeMap;
use std::sync::Arc;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;
use statehouse_core::topics::{audit_topic, routing_topic, services_topic};
use statehouse_core::{ServiceName, Topics};

use crate::options::MIN_TOPIC_SLACK_BYTES;
use crate::{Error, Options};

/// What happened to one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Created,
    /// It existed with the right partition count and cleanup policy.
    AlreadyExists,
}

/// A topic Statehouse needs, with its policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: u32,
    /// Topic-level configs; `cleanup.policy` is verified on existing topics too.
    pub config: BTreeMap<&'static str, String>,
}

/// The topics of one service: journal and values (compacted; the journal's keys are unique per
/// event so compaction never drops one), CRDT deltas (deleted after the retention).
pub fn service_topic_specs(
    options: &Options,
    service: &ServiceName,
    partitions: u32,
) -> Vec<TopicSpec> {
    let topics = Topics::new(options.topic_prefix.clone(), service.clone());
    let compacted = |name: String| TopicSpec {
        name,
        partitions,
        config: with_isr(options, [("cleanup.policy", "compact".to_string())]),
    };
    vec![
        compacted(topics.journal()),
        compacted(topics.values()),
        TopicSpec {
            name: topics.crdt(),
            partitions,
            config: with_isr(
                options,
                [
                    ("cleanup.policy", "delete".to_string()),
                    ("retention.ms", options.crdt_retention_ms.to_string()),
                ],
            ),
        },
    ]
}

/// The topics every service shares: the service registry and the routing table (compacted, one
/// partition each so readers see one total order).
pub fn shared_topic_specs(options: &Options) -> Vec<TopicSpec> {
    [
        services_topic(&options.topic_prefix),
        routing_topic(&options.topic_prefix),
    ]
    .into_iter()
    .map(|name| TopicSpec {
        name,
        partitions: 1,
        config: with_isr(options, [("cleanup.policy", "compact".to_string())]),
    })
    .collect()
}

/// The audit topic (`<prefix>audit`): one JSON record per erasure, kept for ever (delete
/// policy without retention), one partition so it reads in one order.
pub fn audit_topic_spec(options: &Options) -> TopicSpec {
    TopicSpec {
        name: audit_topic(&options.topic_prefix),
        partitions: 1,
        config: with_isr(
            options,
            [
                ("cleanup.policy", "delete".to_string()),
                ("retention.ms", "-1".to_string()),
            ],
        ),
    }
}

fn with_isr<const N: usize>(
    options: &Options,
    entries: [(&'static str, String); N],
) -> BTreeMap<&'static str, String> {
    let mut config: BTreeMap<_, _> = entries.into_iter().collect();
    // Every record `kafka.max-record-bytes` lets through fits (`Options::max_record_bytes`).
    config.insert(
        "max.message.bytes",
        options.producer_max_message_bytes().to_string(),
    );
    if let Some(min) = options.min_insync_replicas {
        config.insert("min.insync.replicas", min.to_string());
    }
    config
}

/// Kafka topic administration.
pub struct Admin {
    client: Arc<AdminClient<DefaultClientContext>>,
    options: Options,
}

impl Admin {
    pub fn new(options: &Options) -> Result<Self, Error> {
        options.validate()?;
        let client = options
            .client_config()
            .create()
            .map_err(|e| Error::kafka("creating the admin client", e))?;
        Ok(Self {
            client: Arc::new(client),
            options: options.clone(),
        })
    }

    /// Create (or verify) the shared topics and the topics of `service` with `partitions`.
    pub async fn ensure_service(
        &self,
        service: &ServiceName,
        partitions: u32,
    ) -> Result<Vec<(String, Outcome)>, Error> {
        if partitions == 0 {
            return Err(Error::InvalidOption(
                "a service needs at least one partition".into(),
            ));
        }
        let mut specs = shared_topic_specs(&self.options);
        specs.extend(service_topic_specs(&self.options, service, partitions));
        self.ensure(&specs).await
    }

    /// Create every topic in `specs` that is missing; verify the partition count and cleanup
    /// policy of those that exist. Safe to run any number of times, also concurrently.
    pub async fn ensure(&self, specs: &[TopicSpec]) -> Result<Vec<(String, Outcome)>, Error> {
        self.create(specs, true).await
    }

    /// Create each of `topics` that is missing, with `partitions` partitions and the delete
    /// policy; topics that exist are taken as they are (they are the user's: eventing inputs
    /// and outputs).
    pub async fn ensure_exist(
        &self,
        topics: &[String],
        partitions: u32,
    ) -> Result<Vec<(String, Outcome)>, Error> {
        let specs: Vec<TopicSpec> = topics
            .iter()
            .map(|name| TopicSpec {
                name: name.clone(),
                partitions,
                config: with_isr(&self.options, [("cleanup.policy", "delete".to_string())]),
            })
            .collect();
        self.create(&specs, false).await
    }

    async fn create(
        &self,
        specs: &[TopicSpec],
        verify: bool,
    ) -> Result<Vec<(String, Outcome)>, Error> {
        let opts = AdminOptions::new().operation_timeout(Some(self.options.request_timeout()));
        let config_pairs: Vec<Vec<(&str, &str)>> = specs
            .iter()
            .map(|s| s.config.iter().map(|(k, v)| (*k, v.as_str())).collect())
            .collect();
        let new_topics: Vec<NewTopic<'_>> = specs
            .iter()
            .zip(&config_pairs)
            .map(|(spec, config)| NewTopic {
                name: &spec.name,
                num_partitions: spec.partitions as i32,
                replication: TopicReplication::Fixed(i32::from(self.options.replication_factor)),
                config: config.clone(),
            })
            .collect();
        let results = self
            .client
            .create_topics(&new_topics, &opts)
            .await
            .map_err(|e| Error::kafka("creating topics", e))?;
        let mut outcomes = Vec::with_capacity(specs.len());
        for (spec, result) in specs.iter().zip(results) {
            match result {
                Ok(_) => outcomes.push((spec.name.clone(), Outcome::Created)),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {
                    if verify {
                        self.verify(spec).await?;
                    }
                    outcomes.push((spec.name.clone(), Outcome::AlreadyExists));
                }
                Err((name, code)) => {
                    return Err(Error::kafka(
                        format!("creating topic {name}"),
                        rdkafka::error::KafkaError::AdminOp(code),
                    ));
                }
            }
        }
        Ok(outcomes)
    }

    /// The partition count of `topic`, or `None` if it does not exist.
    pub async fn partition_count(&self, topic: &str) -> Result<Option<u32>, Error> {
        let client = Arc::clone(&self.client);
        let topic_name = topic.to_string();
        let timeout = self.options.request_timeout();
        let metadata = tokio::task::spawn_blocking(move || {
            client.inner().fetch_metadata(Some(&topic_name), timeout)
        })
        .await
        .expect("metadata task panicked")
        .map_err(|e| Error::kafka(format!("reading metadata of {topic}"), e))?;
        let Some(t) = metadata.topics().iter().find(|t| t.name() == topic) else {
            return Ok(None);
        };
        match t.error() {
            None => Ok(Some(t.partitions().len() as u32)),
            Some(e) if RDKafkaErrorCode::from(e) == RDKafkaErrorCode::UnknownTopicOrPartition => {
                Ok(None)
            }
            Some(e) => Err(Error::kafka(
                format!("reading metadata of {topic}"),
                rdkafka::error::KafkaError::MetadataFetch(e.into()),
            )),
        }
    }

    async fn verify(&self, spec: &TopicSpec) -> Result<(), Error> {
        // A topic created a moment ago (e.g. by a concurrent `ensure`) may not be in the
        // metadata of every broker yet: give it a few seconds before calling it a mismatch.
        let mut actual = 0;
        for _ in 0..50 {
            actual = self.partition_count(&spec.name).await?.unwrap_or(0);
            if actual != 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        if actual != spec.partitions {
            return Err(Error::PartitionMismatch {
                topic: spec.name.clone(),
                expected: spec.partitions,
                actual,
            });
        }
        let opts = AdminOptions::new().request_timeout(Some(self.options.request_timeout()));
        let described = self
            .client
            .describe_configs([&ResourceSpecifier::Topic(&spec.name)], &opts)
            .await
            .map_err(|e| Error::kafka(format!("describing {}", spec.name), e))?;
        let least_message_bytes = self.options.max_record_bytes + MIN_TOPIC_SLACK_BYTES;
        for resource in described {
            let resource = resource.map_err(|code| {
                Error::kafka(
                    format!("describing {}", spec.name),
                    rdkafka::error::KafkaError::AdminOp(code),
                )
            })?;
            if let Some(expected_policy) = spec.config.get("cleanup.policy")
                && let Some(actual) = resource.get("cleanup.policy").and_then(|e| e.value.clone())
                && &actual != expected_policy
            {
                return Err(Error::TopicConfigMismatch {
                    topic: spec.name.clone(),
                    key: "cleanup.policy".into(),
                    expected: expected_policy.clone(),
                    actual,
                });
            }
            // A topic made before `kafka.max-record-bytes` was raised (or by hand) must take
            // every record the limit lets through, or Kafka would refuse one mid-transaction.
            if let Some(actual) = resource
                .get("max.message.bytes")
                .and_then(|e| e.value.as_deref())
                .and_then(|v| v.parse::<usize>().ok())
                && actual < least_message_bytes
            {
                return Err(Error::TopicConfigMismatch {
                    topic: spec.name.clone(),
                    key: "max.message.bytes".into(),
                    expected: format!(
                        "at least {least_message_bytes} (kafka.max-record-bytes + {MIN_TOPIC_SLACK_BYTES}); raise it with kafka-configs.sh --alter --add-config max.message.bytes={}, or lower kafka.max-record-bytes",
                        self.options.producer_max_message_bytes()
                    ),
                    actual: actual.to_string(),
                });
            }
        }
        Ok(())
    }

    /// Delete the records of `topic` before `offsets` (per partition), as retention would
    /// (tests and `admin` tooling only).
    pub async fn truncate(&self, topic: &str, offsets: &[(u32, i64)]) -> Result<(), Error> {
        let mut tpl = rdkafka::TopicPartitionList::new();
        for &(partition, offset) in offsets {
            tpl.add_partition_offset(topic, partition as i32, rdkafka::Offset::Offset(offset))
                .map_err(|e| Error::kafka("building the truncation", e))?;
        }
        let opts = AdminOptions::new().operation_timeout(Some(self.options.request_timeout()));
        let done = self
            .client
            .delete_records(&tpl, &opts)
            .await
            .map_err(|e| Error::kafka(format!("deleting records of {topic}"), e))?;
        for element in done.elements() {
            if let Err(e) = element.error() {
                return Err(Error::kafka(format!("deleting records of {topic}"), e));
            }
        }
        Ok(())
    }

    /// Delete topics (tests and `admin` tooling only).
    pub async fn delete(&self, topics: &[&str]) -> Result<(), Error> {
        let opts = AdminOptions::new().operation_timeout(Some(self.options.request_timeout()));
        let results = self
            .client
            .delete_topics(topics, &opts)
            .await
            .map_err(|e| Error::kafka("deleting topics", e))?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
                Err((name, code)) => {
                    return Err(Error::kafka(
                        format!("deleting topic {name}"),
                        rdkafka::error::KafkaError::AdminOp(code),
                    ));
                }
            }
        }
        Ok(())
    }
}
