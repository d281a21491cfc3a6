//! Forwards and side effects (`docs/protocol.md`, "Forwards and side effects"), with a user
//! function written for the test on the Rust SDK: the shopping-cart API where `AddItem` named
//! "forward" replies with a forward to `GetCart`, and `AddItem` named "copy" adds the same item
//! to `<user>-copy` through a synchronous side effect. Real Kafka and Cassandra.

mod common;

use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use prost_types::Any;
use statehouse_runtime::config::Config;
use statehouse_schemas::shoppingcart::persistence::{self as domain};
use statehouse_schemas::shoppingcart::{AddLineItem, Cart, GetShoppingCart, LineItem};
use statehouse_schemas::statehouse::processor::v1::processor_client::ProcessorClient;
use statehouse_schemas::statehouse::processor::v1::{HandleRequest, handle_response};
use statehouse_sdk::{
    CommandContext, EventSourcedEntity, Failure, Forward, Reply, Service, SideEffect, any,
};
use statehouse_test_support::{cassandra_contact_point, kafka_bootstrap, unique, unique_keyspace};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

const API: &str = "com.example.shoppingcart.ShoppingCart";

struct Effects;

impl EventSourcedEntity for Effects {
    type State = domain::Cart;

    fn persistence_id(&self) -> &str {
        "effects"
    }

    fn command(
        &self,
        ctx: &mut CommandContext<'_>,
        cart: &domain::Cart,
        name: &str,
        payload: &Any,
    ) -> Result<Reply, Failure> {
        match name {
            "AddItem" => {
                let add: AddLineItem = any::unpack(payload)?;
                ctx.emit(&domain::ItemAdded {
                    item: Some(domain::LineItem {
                        product_id: add.product_id.clone(),
                        name: add.name.clone(),
                        quantity: add.quantity,
                    }),
                });
                match add.name.as_str() {
                    "forward" => Ok(Reply::forward(Forward::new(
                        API,
                        "GetCart",
                        &GetShoppingCart {
                            user_id: add.user_id,
                        },
                    ))),
                    "copy" => {
                        let copy = AddLineItem {
                            user_id: format!("{}-copy", add.user_id),
                            name: "copied".into(),
                            ..add
                        };
                        ctx.side_effect(SideEffect::new(API, "AddItem", &copy).synchronous());
                        Ok(Reply::empty())
                    }
                    "nowhere" => Ok(Reply::forward(Forward::new(
                        API,
                        "NoSuchMethod",
                        &GetShoppingCart {
                            user_id: add.user_id,
                        },
                    ))),
                    _ => Ok(Reply::empty()),
                }
            }
            "GetCart" => Ok(Reply::message(&Cart {
                items: cart
                    .items
                    .iter()
                    .map(|i| LineItem {
                        product_id: i.product_id.clone(),
                        name: i.name.clone(),
                        quantity: i.quantity,
                    })
                    .collect(),
            })),
            other => Err(Failure::new(format!("unknown command {other}"))),
        }
    }

    fn apply(&self, cart: &mut domain::Cart, event: &Any) -> Result<(), Failure> {
        let added: domain::ItemAdded = any::unpack(event)?;
        cart.items.extend(added.item);
        Ok(())
    }
}

async fn call(
    client: &mut ProcessorClient<Channel>,
    method: &str,
    user: &str,
    payload: Vec<u8>,
) -> Result<Option<handle_response::Outcome>, tonic::Status> {
    let request = HandleRequest {
        service: "effects".into(),
        method: format!("/{API}/{method}"),
        entity_id: user.into(),
        payload: Bytes::from(payload),
        partition: -1,
        ..HandleRequest::default()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match client.handle(request.clone()).await {
            Err(s)
                if s.code() == tonic::Code::Unavailable
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => return other.map(|r| r.into_inner().outcome),
        }
    }
}

fn add(user: &str, product: &str, name: &str) -> Vec<u8> {
    AddLineItem {
        user_id: user.into(),
        product_id: product.into(),
        name: name.into(),
        quantity: 1,
    }
    .encode_to_vec()
}

fn products(outcome: Option<handle_response::Outcome>) -> Vec<String> {
    match outcome {
        Some(handle_response::Outcome::Reply(r)) => {
            assert_eq!(
                r.type_url,
                "type.googleapis.com/com.example.shoppingcart.Cart"
            );
            Cart::decode(r.payload)
                .unwrap()
                .items
                .into_iter()
                .map(|i| i.product_id)
                .collect()
        }
        other => panic!("expected a cart, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_and_side_effects_run_after_the_commit() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let uf_port = listener.local_addr().unwrap().port();
    let uf_stop = CancellationToken::new();
    let stop = uf_stop.clone();
    tokio::spawn(async move {
        Service::new("effects", "1")
            .descriptors(statehouse_schemas::FILE_DESCRIPTOR_SET)
            .event_sourced(API, Effects)
            .serve_with_incoming_shutdown(listener, stop.cancelled_owned())
            .await
            .unwrap();
    });
    let mut config = Config::default();
    config.kafka.bootstrap_servers = kafka_bootstrap();
    config.kafka.topic_prefix = format!("{}.", unique("fx"));
    config.cassandra.contact_points = vec![cassandra_contact_point()];
    config.cassandra.keyspace = unique_keyspace("fx");
    config.processor.partitions = 3;
    config.processor.listen = "127.0.0.1:0".parse().unwrap();
    config.processor.metrics_listen = "127.0.0.1:0".parse().unwrap();
    config.processor.user_function_port = uf_port;
    let (running, mut client, shutdown) = common::start(config).await;
    // The service name comes from the user function's ServiceInfo ("effects").
    assert_eq!(running.service, "effects");

    // A forward: the reply of AddItem is the reply of the forwarded GetCart, which already sees
    // the event AddItem committed.
    call(&mut client, "AddItem", "ann", add("ann", "a1", "plain"))
        .await
        .unwrap();
    let forwarded = call(&mut client, "AddItem", "ann", add("ann", "a2", "forward"))
        .await
        .unwrap();
    assert_eq!(products(forwarded), ["a1", "a2"]);

    // A synchronous side effect: another entity's command ran before the reply.
    let replied = call(&mut client, "AddItem", "ben", add("ben", "b1", "copy"))
        .await
        .unwrap();
    assert!(
        matches!(replied, Some(handle_response::Outcome::Reply(_))),
        "{replied:?}"
    );
    let get = GetShoppingCart {
        user_id: "ben-copy".into(),
    }
    .encode_to_vec();
    assert_eq!(
        products(call(&mut client, "GetCart", "ben-copy", get).await.unwrap()),
        ["b1"]
    );
    let get = GetShoppingCart {
        user_id: "ben".into(),
    }
    .encode_to_vec();
    assert_eq!(
        products(call(&mut client, "GetCart", "ben", get).await.unwrap()),
        ["b1"]
    );

    // A forward to a method the service does not have fails the call with a clear status.
    let err = call(&mut client, "AddItem", "cat", add("cat", "c1", "nowhere"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unimplemented, "{err:?}");
    assert!(err.message().contains("NoSuchMethod"), "{err:?}");

    shutdown.cancel();
    running.wait().await.unwrap();
    uf_stop.cancel();
}
