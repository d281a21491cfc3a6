//! Registry and router behaviour that needs no processor.

use std::time::Duration;

use bytes::Bytes;
use statehouse_schemas::avro::{Entity, Processor, RoutingRecord, ServiceRecord};
use statehouse_schemas::cloudstate::Metadata;
use statehouse_schemas::{FILE_DESCRIPTOR_SET, protocol};
use tokio::time::Instant;

use super::*;

const CART: &str = "com.example.shoppingcart.ShoppingCart";

fn cart_record(service: &str, updated_at_ms: i64) -> ServiceRecord {
    ServiceRecord {
        service: service.into(),
        descriptor_set: Bytes::from_static(FILE_DESCRIPTOR_SET),
        entities: vec![Entity {
            entity_type: protocol::EVENT_SOURCED.into(),
            service_name: CART.into(),
            persistence_id: "cart".into(),
            passivation_timeout_ms: Some(100),
        }],
        processors: vec![Processor {
            processor_id: "p0".into(),
            endpoint: "http://127.0.0.1:1".into(),
        }],
        protocol_major: 0,
        protocol_minor: 2,
        support_library_name: "test".into(),
        support_library_version: "0".into(),
        updated_at_ms,
    }
}

fn routing(partition: i32, endpoint: &str, epoch: i64) -> RoutingRecord {
    RoutingRecord {
        service: "cart".into(),
        partition,
        owner_processor_id: format!("p-{epoch}"),
        owner_endpoint: endpoint.into(),
        epoch,
        updated_at_ms: 0,
    }
}

#[test]
fn services_replace_and_bad_records_keep_the_previous_version() {
    let registry = Registry::new();
    let mut changes = registry.subscribe();
    registry.apply_service(cart_record("cart", 1)).unwrap();
    assert!(changes.has_changed().unwrap());
    changes.borrow_and_update();
    let routes = registry.routes();
    let route = routes
        .method("/com.example.shoppingcart.ShoppingCart/AddItem")
        .unwrap();
    assert_eq!(route.service, "cart");
    assert_eq!(
        route.method.entity.passivation_timeout,
        Some(Duration::from_millis(100))
    );
    assert_eq!(routes.grpc_services().collect::<Vec<_>>(), [CART]);
    assert_eq!(routes.service_of(CART), Some("cart"));
    let version = routes.version();

    let mut bad = cart_record("cart", 2);
    bad.entities[0].service_name = "com.example.Missing".into();
    let err = registry.apply_service(bad).unwrap_err();
    assert!(err.to_string().contains("com.example.Missing"), "{err}");
    assert_eq!(registry.routes().version(), version, "the old index stays");
    assert!(!changes.has_changed().unwrap());
    assert!(registry.apply_service(cart_record("bad name!", 3)).is_err());

    // The gRPC service moves to a newer deployment.
    registry.apply_service(cart_record("cart-v2", 5)).unwrap();
    assert_eq!(registry.routes().service_of(CART), Some("cart-v2"));
    registry.remove_service("cart-v2");
    assert_eq!(registry.routes().service_of(CART), Some("cart"));
    registry.remove_service("cart");
    assert!(registry.routes().is_empty());
}

#[test]
fn routing_keeps_the_newest_epoch() {
    let registry = Registry::new();
    assert!(registry.apply_routing(routing(3, "http://a:9100", 5)));
    assert!(
        !registry.apply_routing(routing(3, "http://old:9100", 4)),
        "older epoch"
    );
    assert_eq!(registry.owner("cart", 3).unwrap().endpoint, "http://a:9100");
    assert!(registry.apply_routing(routing(3, "http://b:9100", 6)));
    assert_eq!(registry.owner("cart", 3).unwrap().endpoint, "http://b:9100");
    assert!(
        !registry.apply_routing(routing(-1, "http://c:9100", 9)),
        "negative partition"
    );
    assert_eq!(
        registry.processors("cart"),
        ["http://b:9100"],
        "owners when no record lists processors"
    );
    registry.apply_service(cart_record("cart", 1)).unwrap();
    assert_eq!(
        registry.processors("cart"),
        ["http://127.0.0.1:1", "http://b:9100"],
        "the record's processors and the owners"
    );
    registry.remove_routing("cart", 3);
    assert_eq!(registry.owner("cart", 3), None);
}

#[tokio::test(start_paused = true)]
async fn without_an_owner_the_call_fails_unavailable_at_the_deadline() {
    let registry = Registry::new();
    registry.apply_service(cart_record("cart", 1)).unwrap();
    let router = Router::new(registry.clone(), Options::default());
    let method = Arc::clone(
        &registry
            .routes()
            .method("/com.example.shoppingcart.ShoppingCart/AddItem")
            .unwrap()
            .method,
    );
    let started = Instant::now();
    let err = router
        .call(
            &method,
            "u1",
            Bytes::new(),
            Metadata::default(),
            "",
            started + Duration::from_secs(2),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::NoOwner { partition: -1, .. }),
        "partition count unknown: {err}"
    );
    assert!(err.is_transient());

    registry.set_partition_count("cart", 12);
    let err = router
        .call(
            &method,
            "u1",
            Bytes::new(),
            Metadata::default(),
            "",
            Instant::now() + Duration::from_secs(2),
        )
        .await
        .unwrap_err();
    let expected = statehouse_core::partition_for(b"u1", 12) as i32;
    match err {
        Error::NoOwner { service, partition } => {
            assert_eq!((service.as_str(), partition), ("cart", expected))
        }
        other => panic!("expected NoOwner, got {other}"),
    }
}

#[test]
fn an_https_endpoint_without_internal_tls_names_the_setting() {
    let err =
        super::connect_lazy("https://10.0.0.7:9100", None, Duration::from_secs(1)).unwrap_err();
    assert!(matches!(err, super::Error::BadEndpoint { .. }), "{err:?}");
    assert!(err.to_string().contains("[internal-tls]"), "{err}");
    assert!(!err.is_transient());
}

#[test]
fn a_refused_tls_handshake_never_ran_anything() {
    for message in [
        "transport error: received fatal alert: UnknownCA",
        "invalid peer certificate: certificate not valid for name \"p\"",
        "TLS connect timed out",
    ] {
        assert!(
            super::never_connected(&tonic::Status::unknown(message)),
            "{message}"
        );
    }
    assert!(!super::never_connected(&tonic::Status::unknown(
        "connection reset by peer"
    )));
}
