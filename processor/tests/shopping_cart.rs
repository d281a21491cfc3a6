//! The processor against a real user function (the official Go SDK's shopping cart), the real
//! Kafka broker and the real Cassandra node, called through its internal API as the gateway
//! calls it: commands, failures, the journal, idempotent retries and recovery after a restart.

use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use statehouse_kafka::reader::{Isolation, read_to_end};
use statehouse_runtime::config::Config;
use statehouse_schemas::avro::{AvroRecord, EventRecord};
use statehouse_schemas::shoppingcart::{AddLineItem, Cart, GetShoppingCart, RemoveLineItem};
use statehouse_schemas::statehouse::processor::v1::processor_client::ProcessorClient;
use statehouse_schemas::statehouse::processor::v1::{
    HandleRequest, HandleResponse, handle_response,
};
use statehouse_test_support::user_function::{Kind, UserFunction};
use statehouse_test_support::{cassandra_contact_point, kafka_bootstrap, unique, unique_keyspace};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

const SERVICE: &str = "cart";
const PARTITIONS: u32 = 4;

fn config(uf: &UserFunction, prefix: &str, keyspace: &str) -> Config {
    let mut config = Config::default();
    config.kafka.bootstrap_servers = kafka_bootstrap();
    config.kafka.topic_prefix = prefix.to_string();
    config.kafka.session_timeout_ms = 6_000;
    config.cassandra.contact_points = vec![cassandra_contact_point()];
    config.cassandra.keyspace = keyspace.to_string();
    config.processor.service = Some(SERVICE.into());
    config.processor.partitions = PARTITIONS;
    config.processor.listen = "127.0.0.1:0".parse().unwrap();
    config.processor.metrics_listen = "127.0.0.1:0".parse().unwrap();
    config.processor.user_function_port = uf.port();
    config.processor.backup_interval_ms = 100;
    config
}

struct Client {
    grpc: ProcessorClient<Channel>,
}

impl Client {
    async fn call(
        &mut self,
        method: &str,
        user: &str,
        payload: Vec<u8>,
        idempotency_key: &str,
    ) -> Result<HandleResponse, tonic::Status> {
        let request = HandleRequest {
            service: SERVICE.into(),
            method: format!("/com.example.shoppingcart.ShoppingCart/{method}"),
            entity_id: user.into(),
            payload: Bytes::from(payload),
            idempotency_key: idempotency_key.into(),
            partition: -1,
            ..HandleRequest::default()
        };
        // Until the partitions are assigned and recovered the processor answers UNAVAILABLE;
        // retry like the router does.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            match self.grpc.handle(request.clone()).await {
                Err(s)
                    if s.code() == tonic::Code::Unavailable
                        && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                other => return other.map(|r| r.into_inner()),
            }
        }
    }

    async fn add(&mut self, user: &str, product: &str, quantity: i32, key: &str) -> HandleResponse {
        let item = AddLineItem {
            user_id: user.into(),
            product_id: product.into(),
            name: format!("name of {product}"),
            quantity,
        };
        self.call("AddItem", user, item.encode_to_vec(), key)
            .await
            .unwrap()
    }

    async fn cart(&mut self, user: &str) -> Vec<(String, i32)> {
        let get = GetShoppingCart {
            user_id: user.into(),
        };
        let response = self
            .call("GetCart", user, get.encode_to_vec(), "")
            .await
            .unwrap();
        let Some(handle_response::Outcome::Reply(reply)) = response.outcome else {
            panic!("GetCart gave {response:?}")
        };
        assert_eq!(
            reply.type_url,
            "type.googleapis.com/com.example.shoppingcart.Cart"
        );
        Cart::decode(reply.payload)
            .unwrap()
            .items
            .into_iter()
            .map(|i| (i.product_id, i.quantity))
            .collect()
    }
}

async fn connect(addr: std::net::SocketAddr) -> Client {
    Client {
        grpc: ProcessorClient::connect(format!("http://{addr}"))
            .await
            .unwrap(),
    }
}

fn failure(response: &HandleResponse) -> Option<&str> {
    match &response.outcome {
        Some(handle_response::Outcome::Failure(f)) => Some(&f.description),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_shopping_cart_commands_are_durable_idempotent_and_recovered() {
    let uf = UserFunction::start(Kind::GoShoppingCart);
    let prefix = format!("{}.", unique("pt"));
    let keyspace = unique_keyspace("pt");
    let config = config(&uf, &prefix, &keyspace);
    statehouse_store::migrations::run(&config.cassandra)
        .await
        .unwrap();

    let shutdown = CancellationToken::new();
    let running = statehouse_processor::start(config.clone(), shutdown.clone())
        .await
        .unwrap();
    assert_eq!(running.service, SERVICE);
    let mut client = connect(running.internal_addr).await;

    // Commands and their exact replies.
    let ok = client.add("alice", "apple", 2, "").await;
    assert_eq!(failure(&ok), None, "{ok:?}");
    client.add("alice", "pear", 1, "").await;
    client.add("alice", "apple", 3, "").await;
    client.add("bob", "plum", 7, "").await;
    assert_eq!(
        client.cart("alice").await,
        [("apple".to_string(), 5), ("pear".to_string(), 1)]
    );
    assert_eq!(client.cart("bob").await, [("plum".to_string(), 7)]);
    assert!(client.cart("nobody").await.is_empty());

    // gRPC health on the internal port (Kubernetes probes): SERVING once partitions are served;
    // unknown services are NOT_FOUND.
    let mut health = statehouse_schemas::grpc::health::v1::health_client::HealthClient::connect(
        format!("http://{}", running.internal_addr),
    )
    .await
    .unwrap();
    let check = |service: &str| statehouse_schemas::grpc::health::v1::HealthCheckRequest {
        service: service.into(),
    };
    let serving = health.check(check("")).await.unwrap().into_inner().status;
    assert_eq!(
        serving,
        statehouse_schemas::grpc::health::v1::health_check_response::ServingStatus::Serving as i32
    );
    assert_eq!(
        health.check(check("nope")).await.unwrap_err().code(),
        tonic::Code::NotFound
    );

    // A user-function failure reaches the caller with its description, and persists nothing.
    let negative = client.add("alice", "apple", -1, "").await;
    assert_eq!(
        failure(&negative),
        Some(
            Kind::GoShoppingCart
                .add_negative_quantity_failure("apple")
                .as_str()
        )
    );
    let remove = RemoveLineItem {
        user_id: "alice".into(),
        product_id: "kiwi".into(),
    };
    let missing = client
        .call("RemoveItem", "alice", remove.encode_to_vec(), "")
        .await
        .unwrap();
    assert_eq!(
        failure(&missing),
        Some(
            Kind::GoShoppingCart
                .remove_missing_item_failure("kiwi")
                .as_str()
        )
    );

    // An idempotent retry returns the original outcome without a second event.
    let first = client.add("carol", "fig", 1, "idem-1").await;
    let retry = client.add("carol", "fig", 1, "idem-1").await;
    assert!(!first.deduplicated);
    assert!(retry.deduplicated, "{retry:?}");
    assert_eq!(first.outcome, retry.outcome);
    assert_eq!(client.cart("carol").await, [("fig".to_string(), 1)]);

    // The journal holds exactly the committed events, seq contiguous from 1 per entity.
    let journal = format!("{prefix}{SERVICE}.journal");
    let mut events: Vec<EventRecord> = Vec::new();
    for p in 0..PARTITIONS {
        for m in read_to_end(
            &config.kafka,
            &journal,
            p,
            0,
            Isolation::ReadCommitted,
            Duration::from_secs(30),
        )
        .await
        .unwrap()
        {
            events.push(EventRecord::decode(m.value.as_ref().unwrap()).unwrap());
        }
    }
    let seqs = |user: &str| -> Vec<i64> {
        events
            .iter()
            .filter(|e| e.entity_id == user)
            .map(|e| e.seq)
            .collect()
    };
    assert_eq!(seqs("alice"), [1, 2, 3]);
    assert_eq!(seqs("bob"), [1]);
    assert_eq!(seqs("carol"), [1], "the retry added no event");
    assert!(
        events
            .iter()
            .all(|e| e.persistence_id == Kind::GoShoppingCart.persistence_id())
    );
    assert!(
        events.iter().all(|e| e.type_url.ends_with("ItemAdded")),
        "{events:?}"
    );
    let carol = events.iter().find(|e| e.entity_id == "carol").unwrap();
    assert_eq!(carol.idempotency_key.as_deref(), Some("idem-1"));

    // Graceful stop, then a new processor recovers every cart from Kafka and Cassandra, and
    // still recognises the idempotency key.
    shutdown.cancel();
    running.wait().await.unwrap();
    let mut uf = uf;
    uf.restart();
    let config = self::config(&uf, &prefix, &keyspace);
    let shutdown = CancellationToken::new();
    let running = statehouse_processor::start(config, shutdown.clone())
        .await
        .unwrap();
    let mut client = connect(running.internal_addr).await;
    assert_eq!(
        client.cart("alice").await,
        [("apple".to_string(), 5), ("pear".to_string(), 1)]
    );
    assert_eq!(client.cart("bob").await, [("plum".to_string(), 7)]);
    let after_restart = client.add("carol", "fig", 1, "idem-1").await;
    assert!(after_restart.deduplicated, "{after_restart:?}");
    assert_eq!(client.cart("carol").await, [("fig".to_string(), 1)]);
    client.add("alice", "pear", 1, "").await;
    assert_eq!(
        client.cart("alice").await,
        [("apple".to_string(), 5), ("pear".to_string(), 2)]
    );
    shutdown.cancel();
    running.wait().await.unwrap();
}
