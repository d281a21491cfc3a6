use prost::Message;
use prost_reflect::{DescriptorPool, Value as Reflected};
use prost_types::FileDescriptorSet;
use statehouse_schemas::cloudstate::{
    ProxyInfo, UserFunctionError, entity_passivation_strategy::Strategy,
};
use statehouse_sdk::{Error, Service};

use crate::{
    model::{self, Model},
    support::UserFunction,
};

fn proxy_info() -> ProxyInfo {
    ProxyInfo {
        protocol_major_version: 0,
        protocol_minor_version: 2,
        proxy_name: "statehouse-processor".into(),
        proxy_version: "0.1.0".into(),
        supported_entity_types: vec!["cloudstate.eventsourced.EventSourced".into()],
    }
}

#[tokio::test]
async fn discovery_returns_the_entity_spec() -> anyhow::Result<()> {
    let uf = UserFunction::start(model::service()).await?;
    let mut client = uf.discovery().await?;

    let spec = client.discover(proxy_info()).await?.into_inner();

    let [entity] = spec.entities.as_slice() else {
        anyhow::bail!("expected one entity, got {:?}", spec.entities);
    };
    assert_eq!(entity.entity_type, "cloudstate.eventsourced.EventSourced");
    assert_eq!(entity.service_name, model::SERVICE);
    assert_eq!(entity.persistence_id, model::PERSISTENCE_ID);
    assert_eq!(
        entity
            .passivation_strategy
            .as_ref()
            .and_then(|p| p.strategy),
        Some(Strategy::Timeout(
            statehouse_schemas::cloudstate::TimeoutPassivationStrategy { timeout: 100 }
        ))
    );

    let info = spec.service_info.clone().unwrap_or_default();
    assert_eq!(
        (info.protocol_major_version, info.protocol_minor_version),
        (0, 2)
    );
    assert_eq!(info.service_name, "sdk-model");
    assert_eq!(info.service_version, "1.2.3");
    assert_eq!(info.support_library_name, "statehouse-sdk");
    assert_eq!(info.support_library_version, env!("CARGO_PKG_VERSION"));
    assert!(
        info.service_runtime.starts_with("rust 1."),
        "{}",
        info.service_runtime
    );

    // Only the service's file and its imports, in dependency order.
    let set = FileDescriptorSet::decode(spec.proto.as_ref())?;
    let files: Vec<&str> = set.file.iter().map(|f| f.name()).collect();
    assert!(
        files.contains(&"shoppingcart/shoppingcart.proto"),
        "{files:?}"
    );
    assert!(files.contains(&"cloudstate/entity_key.proto"), "{files:?}");
    assert!(files.contains(&"google/protobuf/empty.proto"), "{files:?}");
    assert!(files.contains(&"google/api/annotations.proto"), "{files:?}");
    assert!(
        !files.iter().any(|f| f.starts_with("statehouse/")),
        "unrelated files sent: {files:?}"
    );

    // The proxy must still find the entity key: custom options survive.
    let pool = DescriptorPool::decode(spec.proto.as_ref())?;
    assert!(pool.get_service_by_name(model::SERVICE).is_some());
    let entity_key = pool
        .get_extension_by_name("cloudstate.entity_key")
        .ok_or_else(|| anyhow::anyhow!("entity_key extension missing"))?;
    let add = pool
        .get_message_by_name("com.example.shoppingcart.AddLineItem")
        .ok_or_else(|| anyhow::anyhow!("AddLineItem missing"))?;
    let keys: Vec<String> = add
        .fields()
        .filter(|f| f.options().get_extension(&entity_key).as_ref() == &Reflected::Bool(true))
        .map(|f| f.name().to_owned())
        .collect();
    assert_eq!(keys, ["user_id"]);

    // reportError is only logged; a proxy speaking another version still
    // gets the spec (it owns the compatibility check).
    client
        .report_error(UserFunctionError {
            message: "Service [x] unknown".into(),
        })
        .await?;
    let old = client
        .discover(ProxyInfo {
            protocol_minor_version: 1,
            supported_entity_types: vec![],
            ..proxy_info()
        })
        .await?
        .into_inner();
    assert_eq!(old, spec);

    uf.stop().await
}

#[tokio::test]
async fn invalid_configurations_are_rejected_before_serving() -> anyhow::Result<()> {
    let descriptors = statehouse_schemas::FILE_DESCRIPTOR_SET;

    assert!(matches!(
        Service::new("s", "1").descriptors(descriptors).spec(),
        Err(Error::NoEntities)
    ));
    assert!(matches!(
        Service::new("s", "1")
            .event_sourced(model::SERVICE, Model)
            .spec(),
        Err(Error::MissingDescriptors)
    ));
    assert!(matches!(
        Service::new("s", "1")
            .descriptors(descriptors)
            .event_sourced("com.example.Nope", Model)
            .spec(),
        Err(Error::ServiceNotFound { service }) if service == "com.example.Nope"
    ));
    assert!(matches!(
        Service::new("s", "1")
            .descriptors(descriptors)
            .event_sourced(model::SERVICE, Model)
            .event_sourced(model::SERVICE, Model)
            .spec(),
        Err(Error::DuplicateService { .. })
    ));
    assert!(matches!(
        Service::new("s", "1")
            .descriptors(&b"\xff\xff"[..])
            .event_sourced(model::SERVICE, Model)
            .spec(),
        Err(Error::InvalidDescriptors(_))
    ));

    // serve reports the same error instead of binding.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let served = Service::new("s", "1")
        .event_sourced(model::SERVICE, Model)
        .serve_with_incoming_shutdown(listener, async {})
        .await;
    assert!(matches!(served, Err(Error::MissingDescriptors)));
    Ok(())
}
