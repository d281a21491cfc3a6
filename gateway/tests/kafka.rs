//! The registry follows the real Kafka topics: service and routing records written by a plain
//! idempotent producer show up in the gateway's registry, stale epochs are ignored, tombstones
//! remove, and the router reads a service's partition count from its journal topic.

use std::time::Duration;

use bytes::Bytes;
use rdkafka::producer::{FutureProducer, FutureRecord};
use statehouse_core::{ServiceName, Topics};
use statehouse_kafka::Options;
use statehouse_kafka::admin::Admin;
use statehouse_runtime::router::{self, Registry, Router, feed};
use statehouse_schemas::avro::{AvroRecord, Entity, RoutingRecord, ServiceRecord};
use statehouse_schemas::cloudstate::Metadata;
use statehouse_schemas::{FILE_DESCRIPTOR_SET, protocol};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

async fn poll_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn send(producer: &FutureProducer, topic: &str, key: &str, value: Option<Vec<u8>>) {
    let mut record = FutureRecord::<str, Vec<u8>>::to(topic).key(key);
    if let Some(value) = value.as_ref() {
        record = record.payload(value);
    }
    producer
        .send(record, Duration::from_secs(10))
        .await
        .map_err(|(e, _)| e)
        .expect("the record is acknowledged");
}

fn routing(service: &str, partition: i32, endpoint: &str, epoch: i64) -> Vec<u8> {
    RoutingRecord {
        service: service.into(),
        partition,
        owner_processor_id: format!("processor-{epoch}"),
        owner_endpoint: endpoint.into(),
        epoch,
        updated_at_ms: 1_700_000_000_000,
    }
    .encode()
    .unwrap()
}

#[tokio::test]
async fn registry_follows_the_service_and_routing_topics() {
    let options = Options {
        bootstrap_servers: statehouse_test_support::kafka_bootstrap(),
        topic_prefix: format!("{}.", statehouse_test_support::unique("gw")),
        ..Options::default()
    };
    let service = "cart";
    let admin = Admin::new(&options).unwrap();
    admin
        .ensure_service(&ServiceName::new(service).unwrap(), 3)
        .await
        .unwrap();
    let topics = Topics::new(
        options.topic_prefix.clone(),
        ServiceName::new(service).unwrap(),
    );

    let registry = Registry::new();
    let shutdown = CancellationToken::new();
    let feed = tokio::spawn({
        let options = options.clone();
        let registry = registry.clone();
        let shutdown = shutdown.clone();
        async move { feed::run(&options, registry, shutdown).await }
    });

    let producer: FutureProducer = options.idempotent_producer_config().create().unwrap();
    let record = ServiceRecord {
        service: service.into(),
        descriptor_set: Bytes::from_static(FILE_DESCRIPTOR_SET),
        entities: vec![Entity {
            entity_type: protocol::EVENT_SOURCED.into(),
            service_name: "com.example.shoppingcart.ShoppingCart".into(),
            persistence_id: "shopping-cart".into(),
            passivation_timeout_ms: Some(60_000),
        }],
        processors: vec![statehouse_schemas::avro::Processor {
            processor_id: "processor-2".into(),
            endpoint: "http://127.0.0.1:9100".into(),
        }],
        protocol_major: 0,
        protocol_minor: 2,
        support_library_name: "test".into(),
        support_library_version: "0".into(),
        updated_at_ms: 1_700_000_000_000,
    };
    send(
        &producer,
        &topics.services(),
        service,
        Some(record.encode().unwrap()),
    )
    .await;
    // Epoch 2 then a stale epoch 1 for partition 1, then partition 2 as a marker.
    send(
        &producer,
        &topics.routing(),
        "cart/1",
        Some(routing(service, 1, "http://new:9100", 2)),
    )
    .await;
    send(
        &producer,
        &topics.routing(),
        "cart/1",
        Some(routing(service, 1, "http://old:9100", 1)),
    )
    .await;
    send(
        &producer,
        &topics.routing(),
        "cart/2",
        Some(routing(service, 2, "http://other:9100", 1)),
    )
    .await;

    poll_until("the service and the routing marker", || {
        registry
            .routes()
            .method("/com.example.shoppingcart.ShoppingCart/AddItem")
            .is_some()
            && registry.owner(service, 2).is_some()
    })
    .await;
    let owner = registry.owner(service, 1).unwrap();
    assert_eq!(
        (owner.endpoint.as_str(), owner.epoch),
        ("http://new:9100", 2),
        "stale epoch ignored"
    );
    assert_eq!(
        registry.processors(service),
        [
            "http://127.0.0.1:9100",
            "http://new:9100",
            "http://other:9100"
        ]
    );
    let routes = registry.routes();
    let route = routes
        .method("/com.example.shoppingcart.ShoppingCart/GetCart")
        .unwrap();
    assert_eq!(route.service, service);
    assert_eq!(
        route.method.entity.passivation_timeout,
        Some(Duration::from_secs(60))
    );

    // The router learns the partition count (3) from the journal topic: an entity of a
    // partition without an owner fails UNAVAILABLE naming that partition.
    let router = Router::with_kafka(
        registry.clone(),
        router::Options::default(),
        Admin::new(&options).unwrap(),
        options.topic_prefix.clone(),
    );
    let entity = (0..)
        .map(|i| format!("user-{i}"))
        .find(|id| statehouse_core::partition_for(id.as_bytes(), 3) == 0)
        .unwrap();
    let err = router
        .call(
            &route.method,
            &entity,
            Bytes::new(),
            Metadata::default(),
            "",
            Instant::now() + Duration::from_millis(300),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, router::Error::NoOwner { partition: 0, .. }),
        "expected no owner of partition 0, got {err}"
    );
    assert_eq!(registry.partition_count(service), Some(3));

    // Tombstones remove the owner and the service.
    send(&producer, &topics.routing(), "cart/2", None).await;
    send(&producer, &topics.services(), service, None).await;
    poll_until("the tombstones", || {
        registry.routes().is_empty() && registry.owner(service, 2).is_none()
    })
    .await;
    assert!(
        registry.owner(service, 1).is_some(),
        "other partitions stay"
    );

    shutdown.cancel();
    feed.await.unwrap().unwrap();
    admin
        .delete(&[
            &topics.services(),
            &topics.routing(),
            &topics.journal(),
            &topics.values(),
            &topics.crdt(),
        ])
        .await
        .unwrap();
}
