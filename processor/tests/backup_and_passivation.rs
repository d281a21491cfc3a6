//! Backup, recovery and passivation of the processor, with the Rust shopping-cart sample as the
//! user function, against the real Kafka and Cassandra. Cassandra is made unreachable for the
//! processor alone through a TCP proxy (the node keeps running for every other test).

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use statehouse_kafka::reader::{Isolation, read_to_end};
use statehouse_runtime::config::Config;
use statehouse_schemas::avro::{AvroRecord, EventRecord};
use statehouse_schemas::shoppingcart::persistence::{self as domain};
use statehouse_schemas::shoppingcart::{AddLineItem, Cart, GetShoppingCart, RemoveLineItem};
use statehouse_schemas::statehouse::processor::v1::processor_client::ProcessorClient;
use statehouse_schemas::statehouse::processor::v1::{HandleRequest, handle_response};
use statehouse_store::Store;
use statehouse_test_support::proxy::Proxy;
use statehouse_test_support::{cassandra_contact_point, kafka_bootstrap, unique, unique_keyspace};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

const SERVICE: &str = "rust-cart";
const PARTITIONS: u32 = 3;
const PERSISTENCE_ID: &str = "shopping-cart";

/// The Rust sample, in this process, on a free port.
async fn start_user_function(shutdown: CancellationToken) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        statehouse_sample_shopping_cart::service()
            .serve_with_incoming_shutdown(listener, shutdown.cancelled_owned())
            .await
            .unwrap();
    });
    port
}

fn config(uf_port: u16, prefix: &str, keyspace: &str, cassandra: &str) -> Config {
    let mut config = Config::default();
    config.kafka.bootstrap_servers = kafka_bootstrap();
    config.kafka.topic_prefix = prefix.to_string();
    config.kafka.session_timeout_ms = 6_000;
    config.cassandra.contact_points = vec![cassandra.to_string()];
    config.cassandra.keyspace = keyspace.to_string();
    config.cassandra.request_timeout_ms = 2_000;
    config.processor.service = Some(SERVICE.into());
    config.processor.partitions = PARTITIONS;
    config.processor.listen = "127.0.0.1:0".parse().unwrap();
    config.processor.metrics_listen = "127.0.0.1:0".parse().unwrap();
    config.processor.user_function_port = uf_port;
    config.processor.backup_interval_ms = 100;
    config
}

async fn call(
    client: &mut ProcessorClient<Channel>,
    method: &str,
    user: &str,
    payload: Vec<u8>,
) -> handle_response::Outcome {
    let request = HandleRequest {
        service: SERVICE.into(),
        method: format!("/com.example.shoppingcart.ShoppingCart/{method}"),
        entity_id: user.into(),
        payload: Bytes::from(payload),
        partition: -1,
        ..HandleRequest::default()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match client.handle(request.clone()).await {
            Ok(r) => return r.into_inner().outcome.expect("a reply"),
            Err(s)
                if s.code() == tonic::Code::Unavailable
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(s) => panic!("{method} for {user}: {s}"),
        }
    }
}

async fn add(client: &mut ProcessorClient<Channel>, user: &str, product: &str, quantity: i32) {
    let item = AddLineItem {
        user_id: user.into(),
        product_id: product.into(),
        name: product.into(),
        quantity,
    };
    let outcome = call(client, "AddItem", user, item.encode_to_vec()).await;
    assert!(
        matches!(outcome, handle_response::Outcome::Reply(_)),
        "{outcome:?}"
    );
}

async fn remove(client: &mut ProcessorClient<Channel>, user: &str, product: &str) {
    let item = RemoveLineItem {
        user_id: user.into(),
        product_id: product.into(),
    };
    let outcome = call(client, "RemoveItem", user, item.encode_to_vec()).await;
    assert!(
        matches!(outcome, handle_response::Outcome::Reply(_)),
        "{outcome:?}"
    );
}

type Items = Vec<(String, i32)>;

async fn cart(client: &mut ProcessorClient<Channel>, user: &str) -> Items {
    let get = GetShoppingCart {
        user_id: user.into(),
    };
    match call(client, "GetCart", user, get.encode_to_vec()).await {
        handle_response::Outcome::Reply(r) => Cart::decode(r.payload)
            .unwrap()
            .items
            .into_iter()
            .map(|i| (i.product_id, i.quantity))
            .collect(),
        other => panic!("GetCart: {other:?}"),
    }
}

/// The state of a cart as the fold of its journal events (independent of the user function).
fn fold(events: &[EventRecord]) -> Items {
    let mut items: Items = Vec::new();
    for e in events {
        if e.type_url.ends_with("persistence.ItemAdded") {
            let item = domain::ItemAdded::decode(e.payload.clone())
                .unwrap()
                .item
                .unwrap();
            match items.iter_mut().find(|(p, _)| *p == item.product_id) {
                Some((_, q)) => *q += item.quantity,
                None => items.push((item.product_id, item.quantity)),
            }
        } else if e.type_url.ends_with("persistence.ItemRemoved") {
            let removed = domain::ItemRemoved::decode(e.payload.clone()).unwrap();
            items.retain(|(p, _)| *p != removed.product_id);
        } else {
            panic!("unexpected event {}", e.type_url);
        }
    }
    items
}

async fn journal(config: &Config) -> BTreeMap<String, Vec<EventRecord>> {
    let topic = format!("{}{SERVICE}.journal", config.kafka.topic_prefix);
    let mut by_entity: BTreeMap<String, Vec<EventRecord>> = BTreeMap::new();
    for p in 0..PARTITIONS {
        for m in read_to_end(
            &config.kafka,
            &topic,
            p,
            0,
            Isolation::ReadCommitted,
            Duration::from_secs(30),
        )
        .await
        .unwrap()
        {
            let e = EventRecord::decode(m.value.as_ref().unwrap()).unwrap();
            by_entity.entry(e.entity_id.clone()).or_default().push(e);
        }
    }
    for events in by_entity.values() {
        let seqs: Vec<i64> = events.iter().map(|e| e.seq).collect();
        assert_eq!(
            seqs,
            (1..=events.len() as i64).collect::<Vec<_>>(),
            "seq contiguous from 1"
        );
    }
    by_entity
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_survive_a_cassandra_outage_and_recovery_equals_replay() {
    let uf_stop = CancellationToken::new();
    let uf_port = start_user_function(uf_stop.clone()).await;
    let prefix = format!("{}.", unique("bk"));
    let keyspace = unique_keyspace("bk");
    let cassandra = Proxy::start(&cassandra_contact_point());
    let config = config(uf_port, &prefix, &keyspace, cassandra.addr());
    let (running, mut client, shutdown) = common::start(config.clone()).await;
    let users: Vec<String> = (0..8).map(|i| format!("user-{i}")).collect();
    for (i, user) in users.iter().enumerate() {
        add(&mut client, user, "warm", i as i32 + 1).await;
    }

    // Cassandra goes away for the processor: commands on active entities keep succeeding.
    cassandra.cut();
    for round in 0..6 {
        for user in &users {
            add(&mut client, user, &format!("p{}", round % 4), 1).await;
        }
        remove(&mut client, &users[round], "warm").await;
    }
    // The backup really was failing meanwhile (the outage is not a no-op).
    until_passivated(running.metrics_addr).await;
    cassandra.restore();

    // The backup catches up: every event ends up in Cassandra, checkpoints cover the journal.
    let truth = journal(&config).await;
    let store = Store::connect(&statehouse_store::Options {
        contact_points: vec![cassandra_contact_point()],
        keyspace: keyspace.clone(),
        ..statehouse_store::Options::default()
    })
    .await
    .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    for (user, events) in &truth {
        let key = format!("{PERSISTENCE_ID}|{user}");
        loop {
            let rows = store.read_journal(SERVICE, &key, 1).await.unwrap();
            if rows.len() == events.len() {
                assert!(
                    rows.iter()
                        .zip(events)
                        .all(|(r, e)| r.seq == e.seq && r.payload == e.payload)
                );
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "backup of {user} stuck at {} of {} events",
                rows.len(),
                events.len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Every snapshot in Cassandra equals the fold of the journal up to its seq.
        if let Some(snapshot) = store.latest_snapshot(SERVICE, &key, None).await.unwrap() {
            let state = domain::Cart::decode(snapshot.snapshot).unwrap();
            let at: Items = state
                .items
                .into_iter()
                .map(|i| (i.product_id, i.quantity))
                .collect();
            assert_eq!(
                at,
                fold(&events[..snapshot.seq as usize]),
                "snapshot of {user} at {}",
                snapshot.seq
            );
        }
    }
    let snapshots = carts_with_snapshots(&store, &truth).await;
    assert!(
        snapshots > 0,
        "the sample snapshots every 5 events; some cart must have one"
    );

    // A new processor recovers every cart from snapshot + journal: equal to the full replay.
    shutdown.cancel();
    running.wait().await.unwrap();
    let config = self::config(uf_port, &prefix, &keyspace, &cassandra_contact_point());
    let (running, mut client, shutdown) = common::start(config).await;
    for (user, events) in &truth {
        assert_eq!(
            cart(&mut client, user).await,
            fold(events),
            "cart of {user}"
        );
    }
    shutdown.cancel();
    running.wait().await.unwrap();
    uf_stop.cancel();
}

async fn carts_with_snapshots(store: &Store, truth: &BTreeMap<String, Vec<EventRecord>>) -> usize {
    let mut n = 0;
    for user in truth.keys() {
        let key = format!("{PERSISTENCE_ID}|{user}");
        n += usize::from(
            store
                .latest_snapshot(SERVICE, &key, None)
                .await
                .unwrap()
                .is_some(),
        );
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_entities_are_passivated_and_reactivated_with_their_state() {
    let uf_stop = CancellationToken::new();
    let uf_port = start_user_function(uf_stop.clone()).await;
    let (running, mut client, shutdown) = passivating_processor(uf_port, "pv").await;

    for q in 1..=7 {
        add(&mut client, "pat", &format!("item-{}", q % 3), q).await;
    }
    let before = cart(&mut client, "pat").await;
    let activations = || async {
        let body = metrics(running.metrics_addr).await;
        (
            gauge(&body, "statehouse_active_entities"),
            gauge(&body, "statehouse_entity_activations_total"),
        )
    };
    let (active, first_activations) = activations().await;
    assert!(active >= 1.0, "the entity is active after its commands");
    // Idle past the timeout: the stream is closed and the entity leaves memory.
    until_passivated(running.metrics_addr).await;
    // The next command reactivates it from the journal (and snapshot) with the same state.
    assert_eq!(cart(&mut client, "pat").await, before);
    let (_, after_activations) = activations().await;
    assert!(
        after_activations > first_activations,
        "{first_activations} -> {after_activations}"
    );
    shutdown.cancel();
    running.wait().await.unwrap();
    uf_stop.cancel();
}

/// The sample's cart without snapshots: reactivation replays the whole journal.
struct CartWithoutSnapshots;

impl statehouse_sdk::EventSourcedEntity for CartWithoutSnapshots {
    type State = domain::Cart;

    fn persistence_id(&self) -> &str {
        PERSISTENCE_ID
    }

    fn command(
        &self,
        ctx: &mut statehouse_sdk::CommandContext<'_>,
        cart: &domain::Cart,
        name: &str,
        payload: &prost_types::Any,
    ) -> Result<statehouse_sdk::Reply, statehouse_sdk::Failure> {
        statehouse_sample_shopping_cart::ShoppingCart.command(ctx, cart, name, payload)
    }

    fn apply(
        &self,
        cart: &mut domain::Cart,
        event: &prost_types::Any,
    ) -> Result<(), statehouse_sdk::Failure> {
        statehouse_sample_shopping_cart::ShoppingCart.apply(cart, event)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reactivation_replaying_a_long_journal_takes_its_next_command_with_the_whole_state() {
    // More events than the entity's stream holds in the usual bound (`entity::MAILBOX`, 256),
    // and no snapshot: the whole journal is replayed before the next command.
    const EVENTS: i32 = 300;
    let uf_stop = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let uf_port = listener.local_addr().unwrap().port();
    let uf = statehouse_sdk::Service::new("cart-without-snapshots", "0")
        .descriptors(statehouse_schemas::FILE_DESCRIPTOR_SET)
        .event_sourced(
            statehouse_sample_shopping_cart::SERVICE_NAME,
            CartWithoutSnapshots,
        );
    let serving = uf_stop.clone();
    tokio::spawn(async move {
        uf.serve_with_incoming_shutdown(listener, serving.cancelled_owned())
            .await
            .unwrap();
    });
    let (running, mut client, shutdown) = passivating_processor(uf_port, "rp").await;
    for q in 1..=EVENTS {
        add(&mut client, "long", &format!("item-{}", q % 7), 1).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while gauge(
        &metrics(running.metrics_addr).await,
        "statehouse_active_entities",
    ) > 0.0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the idle entity was never passivated"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The next command reactivates it: init and every event, then the command itself.
    add(&mut client, "long", "item-last", 1).await;
    let items = cart(&mut client, "long").await;
    let total: i32 = items.iter().map(|(_, q)| q).sum();
    assert_eq!(total, EVENTS + 1, "{items:?}");
    shutdown.cancel();
    running.wait().await.unwrap();
    uf_stop.cancel();
}

/// A processor that passivates entities idle for 300 ms, on topics and a keyspace of its own,
/// and a client of its internal API.
async fn passivating_processor(
    uf_port: u16,
    tag: &str,
) -> (
    statehouse_processor::Running,
    ProcessorClient<Channel>,
    CancellationToken,
) {
    let prefix = format!("{}.", unique(tag));
    let keyspace = unique_keyspace(tag);
    let mut config = config(uf_port, &prefix, &keyspace, &cassandra_contact_point());
    config.processor.passivation_timeout_ms = 300;
    common::start(config).await
}

/// Wait (bounded) until no entity is active.
async fn until_passivated(metrics_addr: std::net::SocketAddr) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while gauge(&metrics(metrics_addr).await, "statehouse_active_entities") > 0.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the idle entity was never passivated"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn metrics(addr: std::net::SocketAddr) -> String {
    let addr = addr.to_string();
    tokio::task::spawn_blocking(move || {
        statehouse_test_support::http::request(&addr, "GET", "/metrics", &[], None)
            .unwrap()
            .body
    })
    .await
    .unwrap()
}

fn gauge(body: &str, name: &str) -> f64 {
    body.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
