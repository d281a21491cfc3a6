//! `statehouse admin services | partitions | entity | erase` against the whole stack (two
//! processors of the Rust shopping cart, the gateway, the real Kafka and Cassandra):
//!
//! * the partitions and owners it prints are the routing table a router (`Registry` fed by
//!   `router::feed`, as in the gateway) sees;
//! * `entity` shows a cart's events decoded to JSON, its snapshot and its state;
//! * `erase --dry-run` changes nothing; `erase` leaves no Cassandra row, no record of the
//!   entity readable with read_committed (the latest record of each of its keys is a tombstone),
//!   an audit record, and a fresh command starts the cart empty (seq 1) — also for the Python
//!   journal consumer;
//! * with the journal topic set to compact eagerly, the broker's cleaner removes the erased
//!   records physically (polled, at most 90 s);
//! * bad input (unknown service, a key of no entity type, no reason) fails with a clear error.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, AlterConfig, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use serde_json::Value;
use statehouse_core::ids::parse_journal_key;
use statehouse_core::partition_for;
use statehouse_e2e::clients::{kafka, store};
use statehouse_kafka::reader::{self, Isolation, Message};
use statehouse_runtime::router::{Registry, feed};
use statehouse_schemas::shoppingcart::shopping_cart_client::ShoppingCartClient;
use statehouse_schemas::shoppingcart::{AddLineItem, GetShoppingCart};
use statehouse_test_support::stack::{Options, Stack};
use statehouse_test_support::user_function::{Kind, journal_consumer_python, repo_root};
use statehouse_test_support::{kafka_bootstrap, process};
use tokio::time::Instant;
use tonic::transport::Channel;

const SERVICE: &str = "shopping-cart";
const PARTITIONS: u32 = 4;
const CART: &str = "admin-erase-me";
const ENTITY_KEY: &str = "shopping-cart|admin-erase-me";

/// Runs `statehouse admin <args>` against the stack: (success, stdout, stderr).
async fn admin(stack: &Stack, args: &[&str]) -> (bool, String, String) {
    // Logs go to stderr (admin is a command): stdout is the answer, JSON with `--json`.
    let sets = stack.common_sets();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let output = Command::new(process::binary())
            .args(sets.iter().flat_map(|s| ["--set".to_string(), s.clone()]))
            .arg("admin")
            .args(&args)
            .output()
            .expect("running statehouse admin");
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

/// `statehouse admin <args> --json`, which must succeed.
async fn admin_json(stack: &Stack, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let (ok, out, err) = admin(stack, &all).await;
    assert!(ok, "statehouse admin {args:?} failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

/// Compact the journal topic eagerly: roll segments after 100 ms, clean at any dirt, keep
/// tombstones briefly. (AlterConfigs replaces the topic's configuration: the policy is
/// restated.)
async fn compact_eagerly(topic: &str) {
    let client: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", kafka_bootstrap())
        .create()
        .unwrap();
    let config = AlterConfig::new(ResourceSpecifier::Topic(topic))
        .set("cleanup.policy", "compact")
        .set("min.insync.replicas", "1")
        .set("segment.ms", "100")
        .set("min.cleanable.dirty.ratio", "0.01")
        .set("min.compaction.lag.ms", "0")
        .set("delete.retention.ms", "100");
    let results = client
        .alter_configs(&[config], &AdminOptions::new())
        .await
        .expect("altering the journal topic's configuration");
    for result in results {
        result.unwrap_or_else(|(_, code)| panic!("altering {topic}: {code:?}"));
    }
}

async fn cart_client(stack: &Stack) -> ShoppingCartClient<Channel> {
    ShoppingCartClient::connect(format!("http://{}", stack.gateway_addr))
        .await
        .unwrap()
}

async fn add(client: &mut ShoppingCartClient<Channel>, cart: &str, product: &str, quantity: i32) {
    let mut request = tonic::Request::new(AddLineItem {
        user_id: cart.into(),
        product_id: product.into(),
        name: format!("name of {product}"),
        quantity,
    });
    request.set_timeout(Duration::from_secs(30));
    client.add_item(request).await.unwrap();
}

async fn items(client: &mut ShoppingCartClient<Channel>, cart: &str) -> BTreeMap<String, i32> {
    let mut request = tonic::Request::new(GetShoppingCart {
        user_id: cart.into(),
    });
    request.set_timeout(Duration::from_secs(30));
    client
        .get_cart(request)
        .await
        .unwrap()
        .into_inner()
        .items
        .into_iter()
        .map(|i| (i.product_id, i.quantity))
        .collect()
}

/// The records of the entity in the journal partition, read_committed from offset 0.
async fn records_of_entity(stack: &Stack, partition: u32) -> Vec<Message> {
    let topic = format!("{}{SERVICE}.journal", stack.prefix);
    reader::read_to_end(
        &kafka(stack),
        &topic,
        partition,
        0,
        Isolation::ReadCommitted,
        Duration::from_secs(30),
    )
    .await
    .unwrap()
    .into_iter()
    .filter(|m| {
        m.key
            .as_deref()
            .and_then(|k| std::str::from_utf8(k).ok())
            .and_then(|k| parse_journal_key(k).ok())
            .is_some_and(|(entity, _)| entity == ENTITY_KEY)
    })
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_inspects_and_erases_an_entity() {
    let python = journal_consumer_python();
    let mut options = Options::new(Kind::RustShoppingCart);
    options.processors = 2;
    options.partitions = PARTITIONS;
    let stack = Stack::start_ready(options);
    let journal_topic = format!("{}{SERVICE}.journal", stack.prefix);
    compact_eagerly(&journal_topic).await;

    // Services: the cart and its entity type.
    let services = admin_json(&stack, &["services"]).await;
    let cart = services
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == SERVICE)
        .unwrap_or_else(|| panic!("{SERVICE} is not listed: {services}"));
    assert_eq!(cart["partitions"], PARTITIONS);
    assert!(
        cart["entities"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "event-sourced"
                && e["persistence_id"] == SERVICE
                && e["grpc_service"] == "com.example.shoppingcart.ShoppingCart"),
        "{cart}"
    );

    // Partitions: the owners are the routing table the router sees, every partition owned
    // by one of the two processors (polled: the group may still be balancing).
    let registry = Registry::new();
    let stop = tokio_util::sync::CancellationToken::new();
    let feed = tokio::spawn({
        let (options, registry, stop) = (kafka(&stack), registry.clone(), stop.clone());
        async move { feed::run(&options, registry, stop).await }
    });
    let endpoints: Vec<String> = stack
        .pods
        .iter()
        .map(|p| format!("http://{}", p.internal_addr()))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let partitions = loop {
        let partitions = admin_json(&stack, &["partitions", SERVICE]).await;
        let rows = partitions.as_array().unwrap();
        let agrees = rows.len() == PARTITIONS as usize
            && rows.iter().all(|p| {
                let id = p["partition"].as_u64().unwrap() as u32;
                match (registry.owner(SERVICE, id), p["owner"].as_object()) {
                    (Some(seen), Some(shown)) => {
                        shown["processor_id"] == seen.processor_id.as_str()
                            && shown["endpoint"] == seen.endpoint.as_str()
                            && shown["epoch"] == seen.epoch
                            && endpoints.contains(&seen.endpoint)
                    }
                    _ => false,
                }
            });
        if agrees {
            break partitions;
        }
        assert!(
            Instant::now() < deadline,
            "the partitions never matched the router's routing table: {partitions}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    for p in partitions.as_array().unwrap() {
        for field in ["journal_end", "journal_checkpoint", "backup_lag"] {
            assert!(p[field].as_i64().unwrap() >= 0, "{p}");
        }
    }
    let (ok, human, _) = admin(&stack, &["partitions", SERVICE]).await;
    assert!(
        ok && human.contains("PARTITION") && human.contains("BACKUP-LAG"),
        "{human}"
    );

    // A cart with six items: a snapshot at seq 5 (every 5 events), one event after it.
    let mut client = cart_client(&stack).await;
    for i in 1..=6 {
        add(&mut client, CART, &format!("p{i}"), i).await;
    }
    let expected: BTreeMap<String, i32> = (1..=6).map(|i| (format!("p{i}"), i)).collect();
    assert_eq!(items(&mut client, CART).await, expected);
    let partition = partition_for(CART.as_bytes(), PARTITIONS);

    let report = admin_json(&stack, &["entity", SERVICE, CART]).await;
    assert_eq!(report["kind"], "event-sourced");
    assert_eq!(report["partition"], partition);
    let events = report["events"].as_array().unwrap();
    assert_eq!(
        events
            .iter()
            .map(|e| e["seq"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        [1, 2, 3, 4, 5, 6]
    );
    assert_eq!(
        events[0]["type_url"],
        "type.googleapis.com/com.example.shoppingcart.persistence.ItemAdded"
    );
    assert_eq!(
        events[0]["event"]["item"]["productId"], "p1",
        "{}",
        events[0]
    );
    assert_eq!(events[5]["event"]["item"]["quantity"], 6, "{}", events[5]);
    assert!(
        events
            .iter()
            .all(|e| e["offset"].as_i64().unwrap() >= 0 && e["time_ms"].as_i64().unwrap() > 0)
    );
    let snapshots = report["snapshots"].as_array().unwrap();
    assert_eq!(snapshots[0]["seq"], 5, "{report}");
    assert_eq!(
        snapshots[0]["snapshot"]["items"].as_array().unwrap().len(),
        5
    );
    assert_eq!(report["state"]["kind"], "event-sourced");
    assert_eq!(report["state"]["snapshot_seq"], 5);
    assert_eq!(report["state"]["events_after"], serde_json::json!([6]));
    let (ok, human, _) = admin(&stack, &["entity", SERVICE, CART]).await;
    assert!(
        ok && human.contains("journal: 6 event(s)") && human.contains("\"p6\""),
        "{human}"
    );

    // The dry run, once the backup holds the cart (so the erasure must remove rows).
    let deadline = Instant::now() + Duration::from_secs(60);
    let plan = loop {
        let plan = admin_json(
            &stack,
            &["erase", SERVICE, CART, "--dry-run", "--reason", "test"],
        )
        .await;
        if plan["journal_rows"] == 6 && plan["snapshot_rows"] == 1 {
            break plan;
        }
        assert!(
            Instant::now() < deadline,
            "the backup never held the cart: {plan}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(plan["journal_keys"].as_array().unwrap().len(), 6, "{plan}");
    assert_eq!(plan["journal_keys"][0], format!("{ENTITY_KEY}#1"));
    let (ok, human, _) = admin(
        &stack,
        &["erase", SERVICE, CART, "--dry-run", "--reason", "test"],
    )
    .await;
    assert!(
        ok && human.contains("dry run: nothing was changed"),
        "{human}"
    );
    assert_eq!(
        items(&mut client, CART).await,
        expected,
        "the dry run changed nothing"
    );
    let unchanged = admin_json(&stack, &["entity", SERVICE, CART]).await;
    assert_eq!(unchanged["events"].as_array().unwrap().len(), 6);
    assert!(
        records_of_entity(&stack, partition)
            .await
            .iter()
            .all(|m| m.value.is_some())
    );

    // Bad input: clear errors, nothing erased.
    let (ok, _, err) = admin(&stack, &["entity", "no-such-service", CART]).await;
    assert!(
        !ok && err.contains("unknown service \"no-such-service\"") && err.contains(SERVICE),
        "{err}"
    );
    let (ok, _, err) = admin(&stack, &["erase", SERVICE, "", "--reason", "x"]).await;
    assert!(!ok && err.contains("bad entity key"), "{err}");
    let (ok, _, err) = admin(&stack, &["erase", SERVICE, CART, "--reason", " "]).await;
    assert!(!ok && err.contains("--reason"), "{err}");
    assert_eq!(items(&mut client, CART).await, expected);

    // The erasure.
    let erased = admin_json(
        &stack,
        &[
            "erase",
            SERVICE,
            CART,
            "--reason",
            "GDPR request 42",
            "--requested-by",
            "e2e@admin-test",
        ],
    )
    .await;
    assert_eq!(erased["journal_tombstones"], 6, "{erased}");
    assert_eq!(erased["value_tombstone"], true);
    assert_eq!(erased["journal_rows_removed"], 6);
    assert_eq!(erased["snapshot_rows_removed"], 1);
    assert_eq!(erased["partition"], partition);
    let owner = registry.owner(SERVICE, partition).unwrap();
    assert_eq!(erased["owner"]["endpoint"], owner.endpoint.as_str());

    // No Cassandra row.
    let store = store(&stack).await;
    assert!(
        store
            .read_journal(SERVICE, ENTITY_KEY, 1)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .snapshots(SERVICE, ENTITY_KEY)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.read_value(SERVICE, ENTITY_KEY).await.unwrap(), None);
    assert_eq!(
        store.entity_rows(SERVICE, ENTITY_KEY).await.unwrap(),
        statehouse_store::EntityRows::default()
    );

    // No record of the entity readable with read_committed: the latest of each key is a
    // tombstone, for every one of its six keys.
    let records = records_of_entity(&stack, partition).await;
    let mut latest: BTreeMap<String, Option<bytes::Bytes>> = BTreeMap::new();
    for m in &records {
        latest.insert(
            String::from_utf8(m.key.clone().unwrap().to_vec()).unwrap(),
            m.value.clone(),
        );
    }
    assert_eq!(latest.len(), 6, "{:?}", latest.keys());
    assert!(
        latest.values().all(Option::is_none),
        "the latest record of every key is a tombstone"
    );
    let values = reader::read_to_end(
        &kafka(&stack),
        &format!("{}{SERVICE}.values", stack.prefix),
        partition,
        0,
        Isolation::ReadCommitted,
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    let last_value = values
        .iter()
        .rfind(|m| m.key.as_deref() == Some(ENTITY_KEY.as_bytes()))
        .expect("the values key was tombstoned");
    assert_eq!(last_value.value, None);

    // The audit record.
    let audit = reader::read_to_end(
        &kafka(&stack),
        &format!("{}audit", stack.prefix),
        0,
        0,
        Isolation::ReadCommitted,
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    let record: Value = audit
        .iter()
        .filter_map(|m| serde_json::from_slice(m.value.as_deref()?).ok())
        .find(|r: &Value| r["entity_key"] == ENTITY_KEY)
        .expect("an audit record of the erasure");
    assert_eq!(record["action"], "erase");
    assert_eq!(record["service"], SERVICE);
    assert_eq!(record["reason"], "GDPR request 42");
    assert_eq!(record["requested_by"], "e2e@admin-test");
    assert_eq!(record["journal_tombstones"], 6);
    assert_eq!(record["cassandra_rows"]["journal"], 6);
    assert!(record["erased_at_ms"].as_i64().unwrap() > 0);
    assert_eq!(
        audit.last().unwrap().offset,
        erased["audit_offset"].as_i64().unwrap()
    );

    // Physical removal: the cleaner compacts the partition once its segments roll (writes to
    // another cart of the same partition roll them). Bounded at 90 s.
    let neighbour = (0..)
        .map(|i| format!("neighbour-{i}"))
        .find(|id| partition_for(id.as_bytes(), PARTITIONS) == partition)
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut rolls = 0;
    let compacted = loop {
        let left: Vec<_> = records_of_entity(&stack, partition)
            .await
            .into_iter()
            .filter(|m| m.value.is_some())
            .map(|m| m.offset)
            .collect();
        if left.is_empty() {
            break true;
        }
        if Instant::now() >= deadline {
            eprintln!(
                "the cleaner did not remove the erased records within 90 s (left at {left:?})"
            );
            break false;
        }
        rolls += 1;
        add(&mut client, &neighbour, &format!("roll-{rolls}"), 1).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    eprintln!("compaction: {rolls} segment roll(s) until no erased record was left");
    assert!(
        compacted,
        "the erased events are still in the log: the broker's cleaner did not compact in time"
    );

    // A fresh command starts the cart from empty, at seq 1.
    add(&mut client, CART, "fresh", 1).await;
    assert_eq!(
        items(&mut client, CART).await,
        BTreeMap::from([("fresh".to_string(), 1)])
    );
    let report = admin_json(&stack, &["entity", SERVICE, CART]).await;
    let events = report["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{report}");
    assert_eq!(events[0]["seq"], 1);
    assert_eq!(events[0]["event"]["item"]["productId"], "fresh");
    assert!(report["snapshots"].as_array().unwrap().is_empty());

    // The Python consumer folds the journal with the tombstones to the same carts.
    let output = Command::new(&python)
        .arg(repo_root().join("samples/journal-consumer-python/consumer.py"))
        .args(["--bootstrap", &kafka_bootstrap(), "--topic", &journal_topic])
        .output()
        .expect("running the Python journal consumer");
    assert!(
        output.status.success(),
        "the Python consumer failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let folded: BTreeMap<String, BTreeMap<String, i32>> =
        serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(folded[CART], BTreeMap::from([("fresh".to_string(), 1)]));
    assert_eq!(folded.get(&neighbour).map_or(0, BTreeMap::len), rolls);

    stop.cancel();
    feed.await.unwrap().unwrap();
}

/// A value entity (the Go TCK's `ValueEntityTckModel`, one of several entity types of the
/// service, so its key names the persistence id): its state shown, erased (values tombstone,
/// Cassandra row gone), not brought back by a processor restart, and written again from
/// version 1 — the new value is backed up (the erasure's delete does not shadow it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_entity_is_erased_and_starts_again_empty() {
    use statehouse_e2e::proto::tck::valueentity::value_entity_tck_model_client::ValueEntityTckModelClient;
    use statehouse_e2e::proto::tck::valueentity::{self as ve, RequestAction, request_action};

    const TCK: &str = "tck";
    const ID: &str = "ve-erase";
    let mut options = Options::new(Kind::GoTck);
    options.service = TCK.into();
    let mut stack = Stack::start_ready(options);

    let services = admin_json(&stack, &["services"]).await;
    let persistence_id = services
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == TCK)
        .and_then(|s| {
            s["entities"].as_array().unwrap().iter().find(|e| {
                e["grpc_service"] == "cloudstate.tck.model.valueentity.ValueEntityTckModel"
            })
        })
        .unwrap_or_else(|| panic!("no value entity model: {services}"))["persistence_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        services
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == TCK)
            .unwrap()["entities"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["persistence_id"] == persistence_id.as_str())
            .unwrap()["kind"],
        "value"
    );
    let key = format!("{persistence_id}|{ID}");

    let channel = Channel::from_shared(format!("http://{}", stack.gateway_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut model = ValueEntityTckModelClient::new(channel);
    // Retried while the processor (re)starts; the answer is the entity's value.
    async fn process(
        model: &mut ValueEntityTckModelClient<Channel>,
        update: Option<&str>,
    ) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut request = tonic::Request::new(ve::Request {
                id: ID.into(),
                actions: update
                    .map(|value| RequestAction {
                        action: Some(request_action::Action::Update(ve::Update {
                            value: value.into(),
                        })),
                    })
                    .into_iter()
                    .collect(),
            });
            request.set_timeout(Duration::from_secs(20));
            match model.process(request).await {
                Ok(reply) => return reply.into_inner().message,
                Err(s) if Instant::now() < deadline && s.code() == tonic::Code::Unavailable => {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                Err(s) => panic!("the value entity does not answer: {s:?}"),
            }
        }
    }
    assert_eq!(process(&mut model, Some("one")).await, "one");
    assert_eq!(process(&mut model, Some("two")).await, "two");

    // Bad keys: a bare id is ambiguous here; an unknown persistence id too.
    let (ok, _, err) = admin(&stack, &["entity", TCK, ID]).await;
    assert!(!ok && err.contains("several entity types"), "{err}");

    let report = admin_json(&stack, &["entity", TCK, &key]).await;
    assert_eq!(report["kind"], "value");
    assert_eq!(report["state"]["kind"], "value");
    assert_eq!(report["state"]["seq"], 2, "{report}");
    assert_eq!(report["state"]["value"]["value"], "two", "{report}");
    assert!(report["events"].as_array().unwrap().is_empty());

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let plan = admin_json(&stack, &["erase", TCK, &key, "--dry-run", "--reason", "t"]).await;
        if plan["value_row"] == true {
            assert_eq!(plan["value_record"], true);
            assert!(plan["journal_keys"].as_array().unwrap().is_empty());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the backup never held the value: {plan}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let erased = admin_json(&stack, &["erase", TCK, &key, "--reason", "test erasure"]).await;
    assert_eq!(erased["value_tombstone"], true, "{erased}");
    assert_eq!(erased["value_row_removed"], true);
    assert_eq!(erased["journal_tombstones"], 0);

    let store = store(&stack).await;
    assert_eq!(store.read_value(TCK, &key).await.unwrap(), None);
    let partition = partition_for(ID.as_bytes(), stack.options.partitions);
    let values = reader::read_to_end(
        &kafka(&stack),
        &format!("{}{TCK}.values", stack.prefix),
        partition,
        0,
        Isolation::ReadCommitted,
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    let last = values
        .iter()
        .rfind(|m| m.key.as_deref() == Some(key.as_bytes()))
        .unwrap();
    assert_eq!(
        last.value, None,
        "the latest record of the key is a tombstone"
    );
    assert!(
        last.headers.is_empty(),
        "a bare tombstone: no deletion header"
    );

    // A restart takes the partition over again from Kafka and Cassandra: nothing comes back.
    stack.pods[0].processor.restart();
    stack.wait_ready(0, Duration::from_secs(120));
    assert_eq!(process(&mut model, None).await, "", "erased: no state");
    assert_eq!(process(&mut model, Some("three")).await, "three");
    let report = admin_json(&stack, &["entity", TCK, &key]).await;
    assert_eq!(
        report["state"]["seq"], 1,
        "the versions start again: {report}"
    );
    assert_eq!(report["state"]["value"]["value"], "three");
    // The backup stores the new value although the erasure deleted the row.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(row) = store.read_value(TCK, &key).await.unwrap() {
            assert_eq!(row.seq, 1);
            assert!(row.value.is_some());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new value never reached Cassandra"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
