//! The projector (`statehouse projector`) and the carts projection of the Rust sample
//! (`CartsProjection`: one row per cart, the cart's items), on the real Kafka and Cassandra.
//!
//! * **Fold check under kills**: cart commands over many carts while the projector is
//!   `kill -9`ed every 5 s (mid-batch); once its lag is 0 the projection table equals an
//!   independent read_committed fold of the journal, row for row (so no event of an aborted
//!   transaction ever appears, and none is folded twice or lost).
//! * **Rebuild**: `statehouse admin projections reset` rebuilds into generation 2 from offset 0
//!   while queries keep answering from generation 1; after the switch, generation 2 is the same
//!   table.
//! * **Lag**: with the projector stopped, 1,000 commands show as ≥ 1,000 records of lag
//!   (`admin projections status` computes it the same way); back to 0 after a restart.
//! * **Read your writes**: a command's reply carries its commit position
//!   (`statehouse-position`); a query naming it waits until the projection has read past it,
//!   then answers with the command's change.
//! * **Poison events**: an event the handler refuses is parked with its error, holds its
//!   partition, and is passed (not folded) only after `statehouse admin projections skip`.
//!
//! The command count is `STATEHOUSE_PROJ_COMMANDS` (default 20,000 over 500 carts).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use prost::Message as _;
use statehouse_kafka::reader::{Isolation, end_offsets, read_to_end};
use statehouse_schemas::avro::{AvroRecord, EventRecord};
use statehouse_schemas::shoppingcart::persistence;
use statehouse_schemas::shoppingcart::shopping_cart_client::ShoppingCartClient;
use statehouse_schemas::shoppingcart::{AddLineItem, RemoveLineItem};
use statehouse_schemas::statehouse::projection::v1::projections_client::ProjectionsClient;
use statehouse_schemas::statehouse::projection::v1::{GetRequest, Position};
use statehouse_store::Store;
use statehouse_test_support::process::{Statehouse, free_port};
use statehouse_test_support::stack::{Options, Stack};
use statehouse_test_support::user_function::Kind;
use statehouse_test_support::{cassandra_contact_point, http, kafka_bootstrap};
use tonic::transport::Channel;

const SERVICE: &str = "shopping-cart";
const PROJECTION: &str = "carts";
const PARTITIONS: u32 = 4;
const CARTS: usize = 500;
/// The entity of the poison event.
const POISON: &str = "poison-1";

/// Cart → its items in the order first added (product, quantity).
type Carts = BTreeMap<String, Vec<(String, i32)>>;

fn commands() -> usize {
    std::env::var("STATEHOUSE_PROJ_COMMANDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000)
}

struct Projector {
    process: Statehouse,
    query: String,
    metrics: u16,
}

fn start_projector(stack: &Stack) -> Projector {
    let (query, metrics) = (free_port(), free_port());
    let mut sets = stack.common_sets();
    sets.extend([
        format!("projector.service={SERVICE}"),
        format!(
            "projector.handler-port={}",
            stack.pods[0].user_function.port()
        ),
        format!("projector.listen=\"127.0.0.1:{query}\""),
        format!("projector.metrics-listen=\"127.0.0.1:{metrics}\""),
        "projector.poll-interval-ms=300".to_string(),
    ]);
    Projector {
        process: Statehouse::start("projector", &sets),
        query: format!("http://127.0.0.1:{query}"),
        metrics,
    }
}

/// Run `n` commands (numbered from `first`) through the gateway, 16 at a time: adds, and
/// every seventh a remove (refused when the cart does not hold the product).
async fn drive(stack: &Stack, first: usize, n: usize) {
    let channel = Channel::from_shared(format!("http://{}", stack.gateway_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let next = Arc::new(AtomicUsize::new(first));
    let end = first + n;
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let next = Arc::clone(&next);
        let mut client = ShoppingCartClient::new(channel.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= end {
                    return;
                }
                let user_id = format!("cart-{}", i % CARTS);
                let product_id = format!("p{}", (i / CARTS) % 7);
                let result = if i % 7 == 6 {
                    client
                        .remove_item(RemoveLineItem {
                            user_id,
                            product_id,
                        })
                        .await
                        .map(|_| ())
                } else {
                    client
                        .add_item(AddLineItem {
                            user_id,
                            product_id: product_id.clone(),
                            name: format!("product {product_id}"),
                            quantity: (i % 3 + 1) as i32,
                        })
                        .await
                        .map(|_| ())
                };
                if let Err(status) = result {
                    assert_eq!(
                        status.code(),
                        tonic::Code::Unknown,
                        "command {i} failed: {status:?}"
                    );
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

fn kafka(stack: &Stack) -> statehouse_kafka::Options {
    statehouse_kafka::Options {
        bootstrap_servers: kafka_bootstrap(),
        topic_prefix: stack.prefix.clone(),
        ..statehouse_kafka::Options::default()
    }
}

async fn store(stack: &Stack) -> Store {
    Store::connect(&statehouse_store::Options {
        contact_points: vec![cassandra_contact_point()],
        keyspace: stack.keyspace.clone(),
        ..statehouse_store::Options::default()
    })
    .await
    .unwrap()
}

/// The carts as an independent fold of the journal, read_committed.
async fn fold_journal(stack: &Stack) -> Carts {
    let topic = format!("{}{SERVICE}.journal", stack.prefix);
    let mut events: Vec<EventRecord> = Vec::new();
    for p in 0..PARTITIONS {
        for message in read_to_end(
            &kafka(stack),
            &topic,
            p,
            0,
            Isolation::ReadCommitted,
            Duration::from_secs(60),
        )
        .await
        .unwrap()
        {
            if let Some(value) = &message.value
                && let Ok(event) = EventRecord::decode(value)
                && event.entity_id != POISON
            {
                events.push(event);
            }
        }
    }
    events.sort_by(|a, b| (&a.entity_id, a.seq).cmp(&(&b.entity_id, b.seq)));
    let mut carts = Carts::new();
    let mut last: BTreeMap<String, i64> = BTreeMap::new();
    for event in events {
        let seq = last.entry(event.entity_id.clone()).or_insert(0);
        assert_eq!(
            event.seq,
            *seq + 1,
            "journal of {} has a gap",
            event.entity_id
        );
        *seq = event.seq;
        let items = carts.entry(event.entity_id.clone()).or_default();
        match event.type_url.rsplit('/').next() {
            Some("com.example.shoppingcart.persistence.ItemAdded") => {
                let added = persistence::ItemAdded::decode(&event.payload[..]).unwrap();
                let item = added.item.unwrap();
                match items.iter_mut().find(|(p, _)| *p == item.product_id) {
                    Some((_, quantity)) => *quantity += item.quantity,
                    None => items.push((item.product_id, item.quantity)),
                }
            }
            Some("com.example.shoppingcart.persistence.ItemRemoved") => {
                let removed = persistence::ItemRemoved::decode(&event.payload[..]).unwrap();
                items.retain(|(p, _)| *p != removed.product_id);
            }
            other => panic!("unexpected event type {other:?}"),
        }
    }
    carts
}

/// The rows of generation `generation`, as carts.
async fn table(store: &Store, generation: i32) -> Carts {
    store
        .scan_projection_rows(SERVICE, PROJECTION, generation)
        .await
        .unwrap()
        .into_iter()
        .filter(|row| row.entity_id != POISON)
        .map(|row| {
            let (type_url, bytes) = row.row.expect("no cart row is deleted");
            assert!(type_url.ends_with("com.example.shoppingcart.persistence.Cart"));
            let cart = persistence::Cart::decode(&bytes[..]).unwrap();
            (
                row.entity_id,
                cart.items
                    .into_iter()
                    .map(|i| (i.product_id, i.quantity))
                    .collect(),
            )
        })
        .collect()
}

/// Records between the generation's progress and the journal's last stable offsets.
async fn lag(stack: &Stack, store: &Store, generation: i32) -> i64 {
    let topic = format!("{}{SERVICE}.journal", stack.prefix);
    let progress = store
        .projection_progress(SERVICE, PROJECTION, generation)
        .await
        .unwrap();
    let mut lag = 0;
    for p in 0..PARTITIONS {
        let (end, _) = end_offsets(&kafka(stack), &topic, p, Duration::from_secs(10))
            .await
            .unwrap();
        lag += (end - progress.get(&(p as i32)).copied().unwrap_or(0)).max(0);
    }
    lag
}

async fn wait_lag_zero(stack: &Stack, store: &Store, generation: i32, what: &str) -> Duration {
    let started = Instant::now();
    loop {
        let lag = lag(stack, store, generation).await;
        if lag == 0 {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "{what}: generation {generation} still {lag} records behind after 180 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn admin(stack: &Stack, args: &[&str]) -> String {
    let output = std::process::Command::new(statehouse_test_support::process::binary())
        .args(
            stack
                .common_sets()
                .iter()
                .flat_map(|s| ["--set".to_string(), s.clone()]),
        )
        .args(["admin", "projections", "--service", SERVICE])
        .args(args)
        .output()
        .expect("running statehouse admin projections");
    assert!(
        output.status.success(),
        "statehouse admin projections {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

async fn query(projector: &Projector) -> ProjectionsClient<Channel> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(channel) = Channel::from_shared(projector.query.clone())
            .unwrap()
            .connect()
            .await
        {
            return ProjectionsClient::new(channel);
        }
        assert!(
            Instant::now() < deadline,
            "the projector's query port never opened"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn quantiles(projector: &Projector) -> String {
    let body = http::request(
        &format!("127.0.0.1:{}", projector.metrics),
        "GET",
        "/metrics",
        &[],
        None,
    )
    .map(|a| a.body)
    .unwrap_or_default();
    body.lines()
        .filter(|l| l.starts_with("statehouse_projection_delay_seconds{"))
        .map(str::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn projections_are_exactly_once_under_kills_rebuild_and_read_your_writes() {
    let mut options = Options::new(Kind::RustShoppingCart);
    options.partitions = PARTITIONS;
    let mut stack = Stack::start(options);
    stack.wait_ready(0, Duration::from_secs(120));
    let store = store(&stack).await;
    let n = commands();

    // 1. Commands while the projector is killed every 5 s.
    let mut projector = start_projector(&stack);
    let load = {
        let started = Instant::now();
        let driving = drive(&stack, 0, n);
        tokio::pin!(driving);
        let mut kills = 0;
        loop {
            tokio::select! {
                () = &mut driving => break,
                () = tokio::time::sleep(Duration::from_secs(5)) => {
                    projector.process.kill9();
                    projector.process.restart();
                    kills += 1;
                }
            }
        }
        eprintln!(
            "{n} commands in {:?} with {kills} projector kills",
            started.elapsed()
        );
        started.elapsed()
    };
    let caught_up = wait_lag_zero(&stack, &store, 1, "after the kills").await;
    let journal = fold_journal(&stack).await;
    assert_eq!(journal.len(), CARTS.min(n));
    let rows = table(&store, 1).await;
    assert_same(&rows, &journal, "generation 1 after the kills");
    eprintln!(
        "load took {load:?}; the projector caught up {caught_up:?} after it; delay: {}",
        quantiles(&projector)
    );

    // 2. A rebuild while queries keep answering.
    let mut client = query(&projector).await;
    let events: usize = journal.values().map(Vec::len).sum();
    let out = admin(&stack, &["reset", PROJECTION]);
    assert!(out.contains("generation 2"), "{out}");
    let rebuild = Instant::now();
    let mut answered = 0;
    loop {
        let cart = format!("cart-{}", answered % CARTS);
        let reply = client
            .get(GetRequest {
                projection: PROJECTION.into(),
                entity_id: cart.clone(),
                after: Vec::new(),
                wait_ms: 0,
            })
            .await
            .expect("queries answer during the rebuild")
            .into_inner();
        assert!(reply.found, "{cart} has a row during the rebuild");
        answered += 1;
        let record = store
            .projection(SERVICE, PROJECTION)
            .await
            .unwrap()
            .unwrap();
        if record.generations.serving == 2 {
            break;
        }
        assert!(
            rebuild.elapsed() < Duration::from_secs(240),
            "the rebuild did not switch within 240 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rebuilt_in = rebuild.elapsed();
    eprintln!(
        "rebuild of {} carts from offset 0 switched after {rebuilt_in:?} ({answered} queries answered meanwhile; journal events {})",
        journal.len(),
        fold_journal_events(&stack).await
    );
    let _ = events;
    assert_same(&table(&store, 2).await, &journal, "the rebuilt generation");
    let status = admin(&stack, &["status", PROJECTION]);
    assert!(status.contains("generation 2 (serving): lag 0"), "{status}");

    // 3. Lag while the projector is stopped, and back to 0.
    projector.process.kill9();
    drive(&stack, n, 1_000).await;
    let behind = lag(&stack, &store, 2).await;
    assert!(behind >= 1_000, "lag {behind} after 1,000 commands");
    let status = admin(&stack, &["status", PROJECTION]);
    assert!(
        status.contains(&format!("generation 2 (serving): lag {behind}")),
        "{status}"
    );

    // 4. Read your writes: a command's reply carries its commit position; a query naming it
    //    waits until the projection has read past it, then answers with the command's change.
    let channel = Channel::from_shared(format!("http://{}", stack.gateway_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let reply = ShoppingCartClient::new(channel)
        .add_item(AddLineItem {
            user_id: "cart-7".into(),
            product_id: "ryw".into(),
            name: "read your writes".into(),
            quantity: 42,
        })
        .await
        .unwrap();
    let position = reply
        .metadata()
        .get(statehouse_gateway::POSITION_HEADER)
        .and_then(|v| v.to_str().ok())
        .expect("the reply carries its commit position")
        .to_string();
    let (partition, offset) = position.split_once(':').expect("<partition>:<offset>");
    let after = vec![Position {
        partition: partition.parse().unwrap(),
        offset: offset.parse().unwrap(),
    }];
    projector.process.restart();
    let mut client = query(&projector).await;
    let reply = client
        .get(GetRequest {
            projection: PROJECTION.into(),
            entity_id: "cart-7".into(),
            after,
            wait_ms: 30_000,
        })
        .await
        .expect("the projection reads past the command's position within 30 s")
        .into_inner();
    let row = persistence::Cart::decode(&reply.row.unwrap().value[..]).unwrap();
    assert!(
        row.items
            .iter()
            .any(|i| i.product_id == "ryw" && i.quantity == 42),
        "the row after waiting holds the command's change: {row:?}"
    );
    let journal = fold_journal(&stack).await;
    wait_lag_zero(&stack, &store, 2, "after the restart").await;
    assert_same(
        &table(&store, 2).await,
        &journal,
        "generation 2 after the restart",
    );

    // 5. A poison event (a type the handler refuses) is parked, holds its partition, and is
    //    passed only by `admin projections skip`.
    let poison = EventRecord {
        service: SERVICE.into(),
        persistence_id: "shopping-cart".into(),
        entity_id: POISON.into(),
        seq: 1,
        type_url: "type.googleapis.com/statehouse.e2e.NotACartEvent".into(),
        payload: bytes::Bytes::from_static(b"\x0a\x01x"),
        command_id: None,
        idempotency_key: None,
        timestamp_ms: 0,
        writer: statehouse_schemas::avro::Writer {
            processor_id: "e2e".into(),
            epoch: 0,
        },
        snapshot: None,
        traceparent: None,
        reply: None,
    };
    statehouse_kafka::publisher::Publisher::new(&kafka(&stack))
        .unwrap()
        .publish_record(
            &format!("{}{SERVICE}.journal", stack.prefix),
            POISON.as_bytes(),
            &poison.encode().unwrap(),
            &[],
        )
        .await
        .unwrap();
    drive(&stack, n + 1_000, 300).await;
    let parked = {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let parked = store
                .parked_projection_events(SERVICE, PROJECTION, 2)
                .await
                .unwrap();
            if let Some(parked) = parked.into_iter().next() {
                break parked;
            }
            assert!(
                Instant::now() < deadline,
                "the poison event was not parked within 90 s"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    assert_eq!((parked.entity_id.as_str(), parked.seq), (POISON, 1));
    assert!(parked.error.contains("NotACartEvent"), "{}", parked.error);
    let status = admin(&stack, &["status", PROJECTION]);
    assert!(status.contains("parked: partition"), "{status}");
    // It holds its partition: still behind a while later.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        lag(&stack, &store, 2).await > 0,
        "the parked partition waits"
    );
    let out = admin(
        &stack,
        &[
            "skip",
            PROJECTION,
            "--partition",
            &parked.partition.to_string(),
            "--offset",
            &parked.offset.to_string(),
        ],
    );
    assert!(out.contains("skipped"), "{out}");
    wait_lag_zero(&stack, &store, 2, "after the skip").await;
    assert_same(
        &table(&store, 2).await,
        &fold_journal(&stack).await,
        "generation 2 after the skip",
    );
    let poisoned = store
        .read_projection_rows(SERVICE, PROJECTION, 2, &[POISON])
        .await
        .unwrap();
    let row = &poisoned[POISON];
    assert_eq!(
        (row.seq, row.row.is_none()),
        (1, true),
        "passed, not folded"
    );

    // 6. Steady state (measured, not asserted): a fresh projector, caught up, under load.
    assert!(
        projector.process.terminate(Duration::from_secs(30)),
        "the projector stops gracefully on SIGTERM"
    );
    let projector = start_projector(&stack);
    wait_lag_zero(&stack, &store, 2, "after a graceful restart").await;
    let started = Instant::now();
    drive(&stack, n + 2_000, 2_000).await;
    let load = started.elapsed();
    let caught_up = wait_lag_zero(&stack, &store, 2, "steady state").await;
    eprintln!(
        "steady state: 2000 commands in {load:?} ({:.0}/s); lag 0 {caught_up:?} after the last; delay: {}",
        2_000.0 / load.as_secs_f64(),
        quantiles(&projector)
    );
}

/// The projection table equals the journal's fold, row for row (the first differences named).
fn assert_same(table: &Carts, journal: &Carts, what: &str) {
    let differences: Vec<String> = journal
        .keys()
        .chain(table.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .filter(|cart| table.get(*cart) != journal.get(*cart))
        .map(|cart| {
            format!(
                "{cart}: table {:?}, journal {:?}",
                table.get(cart),
                journal.get(cart)
            )
        })
        .collect();
    assert!(
        differences.is_empty(),
        "{what}: {} of {} carts differ from the journal's fold, e.g. {}",
        differences.len(),
        journal.len(),
        differences[..differences.len().min(5)].join("; ")
    );
}

async fn fold_journal_events(stack: &Stack) -> usize {
    let topic = format!("{}{SERVICE}.journal", stack.prefix);
    let mut n = 0;
    for p in 0..PARTITIONS {
        n += read_to_end(
            &kafka(stack),
            &topic,
            p,
            0,
            Isolation::ReadCommitted,
            Duration::from_secs(60),
        )
        .await
        .unwrap()
        .iter()
        .filter(|m| m.value.is_some())
        .count();
    }
    n
}
