//! Topic administration and the partitioner, against the real Kafka broker.

use std::time::Duration;

use rdkafka::producer::{FutureProducer, FutureRecord};
use statehouse_core::{ServiceName, Topics, partition_for};
use statehouse_kafka::admin::{Admin, Outcome};
use statehouse_kafka::{Error, Options};
use statehouse_test_support::{kafka_bootstrap, unique};

fn options() -> Options {
    Options {
        bootstrap_servers: kafka_bootstrap(),
        topic_prefix: format!("{}.", unique("t")),
        ..Options::default()
    }
}

#[tokio::test]
async fn service_topics_are_created_once_and_verified_after() {
    let options = options();
    let admin = Admin::new(&options).unwrap();
    let service = ServiceName::new("cart").unwrap();
    let topics = Topics::new(options.topic_prefix.clone(), service.clone());

    let first = admin.ensure_service(&service, 6).await.unwrap();
    assert_eq!(first.len(), 5);
    assert!(
        first.iter().all(|(_, o)| *o == Outcome::Created),
        "{first:?}"
    );
    let second = admin.ensure_service(&service, 6).await.unwrap();
    assert!(
        second.iter().all(|(_, o)| *o == Outcome::AlreadyExists),
        "{second:?}"
    );
    for topic in topics.service_topics() {
        assert_eq!(
            admin.partition_count(&topic).await.unwrap(),
            Some(6),
            "{topic}"
        );
    }
    assert_eq!(
        admin.partition_count(&topics.routing()).await.unwrap(),
        Some(1)
    );
    assert_eq!(
        admin
            .partition_count(&format!("{}nope", options.topic_prefix))
            .await
            .unwrap(),
        None
    );

    // A different partition count for an existing service is refused, not silently accepted.
    let err = admin.ensure_service(&service, 8).await.unwrap_err();
    assert!(
        matches!(
            &err,
            Error::PartitionMismatch {
                expected: 8,
                actual: 6,
                ..
            }
        ),
        "{err}"
    );
    assert!(admin.ensure_service(&service, 0).await.is_err());
}

/// librdkafka's `murmur2_random` partitioner (the Java client's default) puts every key where
/// `statehouse_core::partition_for` says: the gateway and any Kafka producer agree.
#[tokio::test]
async fn partitioner_agrees_with_the_kafka_client() {
    let options = options();
    let admin = Admin::new(&options).unwrap();
    let service = ServiceName::new("p").unwrap();
    admin.ensure_service(&service, 12).await.unwrap();
    let topic = Topics::new(options.topic_prefix.clone(), service).crdt();

    let producer: FutureProducer = options.idempotent_producer_config().create().unwrap();
    for i in 0..200 {
        let key = format!("entity-{i}-{}", "x".repeat(i % 7));
        let delivery = producer
            .send(
                FutureRecord::to(&topic).key(&key).payload("v"),
                Duration::from_secs(15),
            )
            .await
            .unwrap();
        assert_eq!(
            delivery.partition as u32,
            partition_for(key.as_bytes(), 12),
            "key {key:?}"
        );
    }
}
