//! The projector (`statehouse projector`) and the carts projection of the Rust sample
//! (`CartsProjection`: one row per cart, the cart's items), on the real Kafka and Cassandra.
//!
//! * **Fold check under kills**: cart commands over many carts while the projector is
//!   `kill -9`ed every 5 s (mid-batch) and one of the two processors is `kill -9`ed once (its
//!   open transactions are aborted); once the projector's lag is 0 the projection table equals
//!   an independent read_committed fold of the journal, row for row (so no event of an aborted
//!   transaction ever appears, and none is folded twice or lost).
//! * **Any language**: the Python journal consumer (`samples/journal-consumer-python`) builds the
//!   same read model as the projector from the same journal.
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
use std::time::{Duration, Instant};

use prost::Message as _;
use statehouse_e2e::carts::{self, Carts};
use statehouse_e2e::clients::{kafka, store};
use statehouse_kafka::reader::{Isolation, read_to_end};
use statehouse_schemas::avro::{AvroRecord, EventRecord};
use statehouse_schemas::shoppingcart::AddLineItem;
use statehouse_schemas::shoppingcart::persistence;
use statehouse_schemas::shoppingcart::shopping_cart_client::ShoppingCartClient;
use statehouse_schemas::statehouse::projection::v1::projections_client::ProjectionsClient;
use statehouse_schemas::statehouse::projection::v1::{GetRequest, Position};
use statehouse_store::Store;
use statehouse_test_support::process::{Statehouse, free_port};
use statehouse_test_support::stack::{Options, Stack};
use statehouse_test_support::user_function::Kind;
use statehouse_test_support::{http, kafka_bootstrap};
use tonic::transport::Channel;

const SERVICE: &str = "shopping-cart";
const PROJECTION: &str = "carts";
const PARTITIONS: u32 = 4;
const CARTS: usize = 500;
/// The entity of the poison event.
const POISON: &str = "poison-1";

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

/// Records between the generation's progress and the journal's last stable offsets (the
/// projector's own measure, as `admin projections status` shows it).
async fn lag(stack: &Stack, store: &Store, generation: i32) -> i64 {
    let service = statehouse_core::ServiceName::new(SERVICE.to_string()).unwrap();
    statehouse_projections::lag(&kafka(stack), store, &service, PROJECTION, generation)
        .await
        .unwrap()
        .iter()
        .map(|p| p.lag())
        .sum()
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

/// The projector's samples of `series`.
fn samples(projector: &Projector, series: &str) -> Vec<(String, f64)> {
    http::metric_samples(&format!("127.0.0.1:{}", projector.metrics), series)
        .expect("the projector's /metrics answers")
}

fn quantiles(projector: &Projector) -> String {
    samples(projector, "statehouse_projection_delay_seconds")
        .iter()
        .map(|(series, value)| format!("{series} {value}"))
        .collect::<Vec<_>>()
        .join("; ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn projections_are_exactly_once_under_kills_rebuild_and_read_your_writes() {
    let mut options = Options::new(Kind::RustShoppingCart);
    options.partitions = PARTITIONS;
    options.processors = 2;
    let mut stack = Stack::start(options);
    stack.wait_ready(0, Duration::from_secs(120));
    stack.wait_ready(1, Duration::from_secs(120));
    let store = store(&stack).await;
    let n = commands();

    // 1. Commands while the projector is killed every 5 s — and one processor is killed too
    //    (its open transactions are aborted: events no reader may see).
    let mut projector = start_projector(&stack);
    let load = {
        let started = Instant::now();
        let gateway = stack.gateway_addr.clone();
        let driving = carts::drive(&gateway, CARTS, 0, n, true);
        tokio::pin!(driving);
        let mut kills: u32 = 0;
        let unavailable = loop {
            tokio::select! {
                unavailable = &mut driving => break unavailable,
                () = tokio::time::sleep(Duration::from_secs(5)) => {
                    projector.process.kill9();
                    projector.process.restart();
                    kills += 1;
                    match kills {
                        1 => stack.pods[1].processor.kill9(),
                        2 => stack.pods[1].processor.restart(),
                        _ => {}
                    }
                }
            }
        };
        assert!(
            kills >= 2,
            "the load ended before the projector was killed twice and the processor killed and restarted ({kills} kills): raise STATEHOUSE_PROJ_COMMANDS"
        );
        eprintln!(
            "{n} commands in {:?} with {kills} projector kills and a processor kill ({unavailable} commands unavailable meanwhile)",
            started.elapsed()
        );
        started.elapsed()
    };
    let caught_up = wait_lag_zero(&stack, &store, 1, "after the kills").await;
    eprintln!(
        "journal records of aborted transactions: {}",
        aborted_records(&stack).await
    );
    let journal = fold_journal(&stack).await;
    assert_eq!(journal.len(), CARTS.min(n));
    let rows = table(&store, 1).await;
    carts::assert_same(&rows, &journal, "generation 1 after the kills");
    eprintln!(
        "load took {load:?}; the projector caught up {caught_up:?} after it; delay: {}",
        quantiles(&projector)
    );

    // 2. A rebuild while queries keep answering.
    let mut client = query(&projector).await;
    let out = admin(&stack, &["reset", PROJECTION]);
    assert!(out.contains("generation 2"), "{out}");
    let rebuild = Instant::now();
    let (mut answered, mut from_old) = (0, 0);
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
        let row = persistence::Cart::decode(&reply.row.unwrap().value[..]).unwrap();
        let items: Vec<(String, i32)> = row
            .items
            .into_iter()
            .map(|i| (i.product_id, i.quantity))
            .collect();
        assert_eq!(
            Some(&items),
            journal.get(&cart),
            "{cart}'s row from generation {}",
            reply.generation
        );
        answered += 1;
        if reply.generation == 1 {
            from_old += 1;
        }
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
    assert!(
        from_old > 0,
        "generation 1 answered no query while generation 2 was rebuilt"
    );
    let rebuilt = table(&store, 2).await;
    let dropped = Instant::now();
    while !store
        .scan_projection_rows(SERVICE, PROJECTION, 1)
        .await
        .unwrap()
        .is_empty()
    {
        assert!(
            dropped.elapsed() < Duration::from_secs(60),
            "generation 1's rows are still there 60 s after the switch"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    carts::assert_same(&rebuilt, &journal, "the rebuilt generation");
    // A consumer outside Rust (the Python sample) builds the same read model.
    assert_eq!(
        python_read_model(&stack),
        rebuilt
            .iter()
            .map(|(cart, items)| (cart.clone(), items.iter().cloned().collect()))
            .collect::<BTreeMap<String, BTreeMap<String, i32>>>(),
        "the Python consumer's read model equals the projection"
    );
    let status = admin(&stack, &["status", PROJECTION]);
    assert!(status.contains("generation 2 (serving): lag 0"), "{status}");

    // 3. Lag while the projector is stopped, and back to 0.
    projector.process.kill9();
    drive(&stack.gateway_addr, n, 1_000).await;
    let behind = lag(&stack, &store, 2).await;
    assert!(behind >= 1_000, "lag {behind} after 1,000 commands");
    let status = admin(&stack, &["status", PROJECTION]);
    assert!(
        status.contains(&format!("generation 2 (serving): lag {behind} records")),
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
    carts::assert_same(
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
            Some(POISON.as_bytes()),
            &poison.encode().unwrap(),
            &[],
        )
        .await
        .unwrap();
    drive(&stack.gateway_addr, n + 1_000, 300).await;
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
    carts::assert_same(
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
    drive(&stack.gateway_addr, n + 2_000, 2_000).await;
    let load = started.elapsed();
    let caught_up = wait_lag_zero(&stack, &store, 2, "steady state").await;
    // The projector's own lag metric agrees: one series per partition, each back to 0.
    let metric_deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let lag: Vec<(String, f64)> = samples(&projector, "statehouse_projection_lag_records")
            .into_iter()
            .filter(|(series, _)| series.contains("generation=\"2\""))
            .collect();
        if lag.len() == PARTITIONS as usize && lag.iter().all(|(_, v)| *v == 0.0) {
            break;
        }
        assert!(
            Instant::now() < metric_deadline,
            "statehouse_projection_lag_records did not show every partition at 0: {lag:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "steady state: 2000 commands in {load:?} ({:.0}/s); lag 0 {caught_up:?} after the last; delay: {}",
        2_000.0 / load.as_secs_f64(),
        quantiles(&projector)
    );
}

/// The carts as an independent fold of the journal, read_committed (without the poison event).
async fn fold_journal(stack: &Stack) -> Carts {
    carts::fold_journal(
        &kafka(stack),
        &format!("{}{SERVICE}.journal", stack.prefix),
        PARTITIONS,
        POISON,
    )
    .await
}

/// Run commands `first..first + n` of the cart mix through the gateway.
async fn drive(gateway: &str, first: usize, n: usize) {
    carts::drive(gateway, CARTS, first, n, false).await;
}

/// Journal records only a read_uncommitted reader sees (of aborted or fenced transactions).
async fn aborted_records(stack: &Stack) -> usize {
    let topic = format!("{}{SERVICE}.journal", stack.prefix);
    let mut aborted = 0;
    for p in 0..PARTITIONS {
        let mut seen = Vec::new();
        for isolation in [Isolation::ReadCommitted, Isolation::ReadUncommitted] {
            seen.push(
                read_to_end(
                    &kafka(stack),
                    &topic,
                    p,
                    0,
                    isolation,
                    Duration::from_secs(60),
                )
                .await
                .unwrap()
                .len(),
            );
        }
        aborted += seen[1] - seen[0];
    }
    aborted
}

/// The read model `samples/journal-consumer-python` builds from the journal.
fn python_read_model(stack: &Stack) -> BTreeMap<String, BTreeMap<String, i32>> {
    let python = statehouse_test_support::user_function::journal_consumer_python();
    let output = std::process::Command::new(python)
        .arg(
            statehouse_test_support::user_function::repo_root()
                .join("samples/journal-consumer-python/consumer.py"),
        )
        .args([
            "--bootstrap",
            &kafka_bootstrap(),
            "--topic",
            &format!("{}{SERVICE}.journal", stack.prefix),
        ])
        .output()
        .expect("running the Python consumer");
    assert!(
        output.status.success(),
        "the Python consumer failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("the consumer prints JSON")
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
