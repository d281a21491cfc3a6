//! R2 of the reliability plan: an owner is paused (SIGSTOP) past its session timeout, its
//! partitions move to the other processor, then it resumes (SIGCONT). The zombie must not
//! commit (it is fenced), none of its records may be visible to read_committed readers, and
//! after resuming it must not serve a single read or write for a partition it lost.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use prost::Message;
use statehouse_kafka::reader::{Isolation, read_to_end};
use statehouse_schemas::avro::{AvroRecord, EventRecord};
use statehouse_schemas::shoppingcart::shopping_cart_client::ShoppingCartClient;
use statehouse_schemas::shoppingcart::{AddLineItem, Cart, GetShoppingCart};
use statehouse_schemas::statehouse::processor::v1::processor_client::ProcessorClient;
use statehouse_schemas::statehouse::processor::v1::{NotOwner, handle_response};
use statehouse_test_support::stack::{Options, Stack};
use statehouse_test_support::user_function::Kind;
use tonic::transport::Channel;

const PARTITIONS: u32 = 4;
const SESSION_MS: u32 = 6_000; // the broker's group.min.session.timeout.ms
/// Rounds in CI; `STATEHOUSE_R2_ROUNDS` sets more for the long run (20).
const REPETITIONS: usize = 5;

fn rounds() -> usize {
    std::env::var("STATEHOUSE_R2_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(REPETITIONS)
}

/// Add an item, retrying with the same idempotency key (a client that gives up on a slow call
/// after 3 s, as a call to a paused owner never answers) for up to 40 s.
async fn add(client: &mut ShoppingCartClient<Channel>, cart: &str, token: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(40);
    while Instant::now() < deadline {
        let mut request = tonic::Request::new(AddLineItem {
            user_id: cart.into(),
            product_id: token.into(),
            name: "t".into(),
            quantity: 1,
        });
        request.set_timeout(Duration::from_secs(3));
        request
            .metadata_mut()
            .insert("idempotency-key", token.parse().unwrap());
        if client.add_item(request).await.is_ok() {
            return true;
        }
    }
    false
}

/// Ask a processor directly (bypassing routing) for a cart. `Err` = it refused (not owner), with
/// the owner it named, if any.
async fn direct_get(
    processor: &mut ProcessorClient<Channel>,
    cart: &str,
) -> Result<Vec<String>, String> {
    let request = statehouse_e2e::recorder::direct_get_cart(cart);
    match processor.handle(request).await {
        Ok(r) => match r.into_inner().outcome {
            Some(handle_response::Outcome::Reply(reply)) => Ok(Cart::decode(reply.payload)
                .unwrap()
                .items
                .into_iter()
                .map(|i| i.product_id)
                .collect()),
            other => panic!("unexpected answer {other:?}"),
        },
        Err(status) => {
            assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
            let detail = NotOwner::from_status(&status).expect("a NotOwner detail");
            Err(detail.owner_endpoint)
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_owner_is_fenced_and_serves_nothing_after_it_resumes() {
    let mut options = Options::new(Kind::GoShoppingCart);
    options.partitions = PARTITIONS;
    options.processors = 2;
    options.session_timeout_ms = SESSION_MS;
    let mut stack = Stack::start(options);
    stack.wait_ready(0, Duration::from_secs(90));
    stack.wait_ready(1, Duration::from_secs(90));
    let mut client = ShoppingCartClient::connect(format!("http://{}", stack.gateway_addr))
        .await
        .unwrap();
    let mut tokens = 0usize;
    let mut acked: Vec<(String, String)> = Vec::new();

    let rounds = rounds();
    for round in 0..rounds {
        // Find a cart whose partition pod 0 owns right now.
        let mut zombie =
            ProcessorClient::connect(format!("http://127.0.0.1:{}", stack.pods[0].internal_port))
                .await
                .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        let cart = loop {
            let candidate = format!("r{round}-cart-{}", tokens);
            tokens += 1;
            if direct_get(&mut zombie, &candidate).await.is_ok() {
                break candidate;
            }
            assert!(Instant::now() < deadline, "pod 0 owns no partition");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        for _ in 0..5 {
            let token = format!("tok-{tokens}");
            tokens += 1;
            assert!(add(&mut client, &cart, &token).await);
            acked.push((cart.clone(), token));
        }

        // Pause the owner past twice its session timeout; the cart keeps working elsewhere.
        stack.pods[0].processor.pause();
        let paused = Instant::now();
        while paused.elapsed() < Duration::from_millis(u64::from(SESSION_MS) * 2 + 2_000) {
            let token = format!("tok-{tokens}");
            tokens += 1;
            if add(&mut client, &cart, &token).await {
                acked.push((cart.clone(), token));
            }
        }
        let truth: Vec<String> = acked
            .iter()
            .filter(|(c, _)| *c == cart)
            .map(|(_, t)| t.clone())
            .collect();
        assert!(
            truth.len() > 5,
            "no command succeeded while the owner was paused"
        );

        // Resume the zombie and hammer it directly: it must refuse, never answer stale.
        stack.pods[0].processor.resume();
        let resumed = Instant::now();
        let mut refusals = 0;
        let mut named_owner = false;
        let new_owner = format!("http://127.0.0.1:{}", stack.pods[1].internal_port);
        // Probe for 3 s, and on until it names the new owner (its routing follower catches up
        // after the pause), for at most 15 s.
        while resumed.elapsed() < Duration::from_secs(3)
            || (!named_owner && resumed.elapsed() < Duration::from_secs(15))
        {
            match direct_get(&mut zombie, &cart).await {
                Err(owner) => {
                    refusals += 1;
                    named_owner |= owner == new_owner;
                }
                Ok(items) => assert_eq!(
                    items, truth,
                    "round {round}: the resumed zombie served a stale read"
                ),
            }
        }
        assert!(
            refusals > 0,
            "round {round}: the zombie was never asked while resuming"
        );
        // Its refusals name the new owner (from the routing topic), so routers go there at once.
        assert!(
            named_owner,
            "round {round}: the zombie never named the new owner {new_owner}"
        );
        // The system still serves the cart, with every acknowledged item.
        let mut request = tonic::Request::new(GetShoppingCart {
            user_id: cart.clone(),
        });
        request.set_timeout(Duration::from_secs(30));
        let items: Vec<String> = client
            .get_cart(request)
            .await
            .unwrap()
            .into_inner()
            .items
            .into_iter()
            .map(|i| i.product_id)
            .collect();
        assert_eq!(items, truth, "round {round}");
        stack.wait_ready(0, Duration::from_secs(60));
    }

    // No zombie record is visible: per partition, writer epochs never go back, and every
    // entity's events are contiguous with no duplicates.
    let kafka = statehouse_kafka::Options {
        bootstrap_servers: statehouse_test_support::kafka_bootstrap(),
        ..statehouse_kafka::Options::default()
    };
    let topic = format!("{}shopping-cart.journal", stack.prefix);
    let mut interleaved = 0;
    let mut by_entity: BTreeMap<String, Vec<EventRecord>> = BTreeMap::new();
    for p in 0..PARTITIONS {
        let mut newest_epoch = i64::MIN;
        for m in read_to_end(
            &kafka,
            &topic,
            p,
            0,
            Isolation::ReadCommitted,
            Duration::from_secs(60),
        )
        .await
        .unwrap()
        {
            let e = EventRecord::decode(m.value.as_ref().unwrap()).unwrap();
            if e.writer.epoch < newest_epoch {
                interleaved += 1;
            }
            newest_epoch = newest_epoch.max(e.writer.epoch);
            by_entity.entry(e.entity_id.clone()).or_default().push(e);
        }
    }
    let gaps = by_entity
        .values()
        .filter(|events| {
            events
                .iter()
                .enumerate()
                .any(|(i, e)| e.seq != i as i64 + 1)
        })
        .count();
    let journaled: Vec<String> = by_entity
        .values()
        .flatten()
        .map(|e| {
            statehouse_schemas::shoppingcart::persistence::ItemAdded::decode(e.payload.clone())
                .unwrap()
                .item
                .unwrap()
                .product_id
        })
        .collect();
    let lost = acked.iter().filter(|(_, t)| !journaled.contains(t)).count();
    let mut unique = journaled.clone();
    unique.sort();
    unique.dedup();
    let duplicated = journaled.len() - unique.len();
    println!(
        "zombie checker: rounds={rounds} acknowledged={} lost={lost} duplicated={duplicated} seq-gaps={gaps} writer-interleave={interleaved}",
        acked.len()
    );
    assert_eq!((lost, duplicated, gaps, interleaved), (0, 0, 0, 0));
}
