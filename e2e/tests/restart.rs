//! Restarts under load (DESIGN §9, invariants 1 and 3): a processor is stopped gracefully and
//! killed with SIGKILL while clients keep sending commands through the gateway. Afterwards a
//! checker reads the whole journal with read_committed and queries every entity, and counts:
//! acknowledged commands missing from the journal (lost), commands journaled twice
//! (duplicated), sequence gaps, and entities whose state differs from the fold of their journal
//! (mismatched). All must be 0.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use prost::Message;
use statehouse_kafka::reader::{Isolation, read_to_end};
use statehouse_schemas::avro::{AvroRecord, EventRecord};
use statehouse_schemas::shoppingcart::persistence::ItemAdded;
use statehouse_schemas::shoppingcart::shopping_cart_client::ShoppingCartClient;
use statehouse_schemas::shoppingcart::{AddLineItem, GetShoppingCart};
use statehouse_test_support::stack::{Options, Stack};
use statehouse_test_support::user_function::Kind;
use tokio::sync::Mutex;
use tonic::transport::Channel;

const CARTS: usize = 40;
const CLIENTS: usize = 8;
const PARTITIONS: u32 = 4;

/// What the driver knows of each command.
#[derive(Debug, Default)]
struct History {
    acked: HashMap<String, String>,
    failed: HashSet<String>,
    unknown: HashSet<String>,
}

async fn client(stack: &Stack) -> ShoppingCartClient<Channel> {
    ShoppingCartClient::connect(format!("http://{}", stack.gateway_addr))
        .await
        .unwrap()
}

/// Send one command (token = idempotency key), retrying UNAVAILABLE / DEADLINE_EXCEEDED with
/// the same key for up to 40 s. Ok(true) = acknowledged, Ok(false) = definitely failed,
/// Err = outcome unknown.
async fn send(
    client: &mut ShoppingCartClient<Channel>,
    cart: &str,
    token: &str,
) -> Result<bool, String> {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let mut request = tonic::Request::new(AddLineItem {
            user_id: cart.into(),
            product_id: token.into(),
            name: "token".into(),
            quantity: 1,
        });
        request.set_timeout(Duration::from_secs(15));
        request
            .metadata_mut()
            .insert("idempotency-key", token.parse().unwrap());
        match client.add_item(request).await {
            Ok(_) => return Ok(true),
            // Retryable: the owner moved or is recovering, the deadline passed, or the entity's
            // stream broke (nothing was committed then). The same key makes retries safe.
            Err(s)
                if matches!(
                    s.code(),
                    tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
                ) || (s.code() == tonic::Code::Unknown
                    && s.message().starts_with("Unexpected entity")) =>
            {
                if Instant::now() > deadline {
                    return Err(format!("{s:?}"));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(s) => {
                eprintln!("definite failure of {token}: {s:?}");
                return Ok(false);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_acknowledged_command_is_lost_or_duplicated_across_restarts() {
    let mut options = Options::new(Kind::GoShoppingCart);
    options.partitions = PARTITIONS;
    let mut stack = Stack::start(options);
    stack.wait_ready(0, Duration::from_secs(90));
    let mut warm = client(&stack).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while send(&mut warm, "warm", "warm-0").await != Ok(true) {
        assert!(Instant::now() < deadline, "the stack never served");
    }

    let history = Arc::new(Mutex::new(History::default()));
    let stop = Arc::new(AtomicBool::new(false));
    // The first success of a command *sent* after the kill, ms since the start (0 = none yet).
    let killed_at_ms = Arc::new(AtomicU64::new(u64::MAX));
    let first_ok_after_kill_ms = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut drivers = Vec::new();
    for c in 0..CLIENTS {
        let (history, stop) = (history.clone(), stop.clone());
        let (killed_at_ms, first_ok_after_kill_ms) =
            (killed_at_ms.clone(), first_ok_after_kill_ms.clone());
        let mut grpc = client(&stack).await;
        drivers.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Acquire) {
                n += 1;
                let token = format!("c{c}-{n}");
                let cart = format!("cart-{}", (c * 7919 + n as usize * 31) % CARTS);
                let invoked_ms = started.elapsed().as_millis() as u64;
                let outcome = send(&mut grpc, &cart, &token).await;
                let mut h = history.lock().await;
                match outcome {
                    Ok(true) => {
                        if invoked_ms > killed_at_ms.load(Ordering::Acquire) {
                            let now = started.elapsed().as_millis() as u64;
                            let _ = first_ok_after_kill_ms.compare_exchange(
                                0,
                                now,
                                Ordering::AcqRel,
                                Ordering::Acquire,
                            );
                        }
                        h.acked.insert(token, cart);
                    }
                    Ok(false) => {
                        h.failed.insert(token);
                    }
                    Err(_) => {
                        h.unknown.insert(token);
                    }
                }
            }
        }));
    }

    let acked = || async { history.lock().await.acked.len() };
    tokio::time::sleep(Duration::from_secs(4)).await;
    // 1. Graceful restart: the partitions are handed over on SIGTERM.
    let before = acked().await;
    assert!(
        stack.pods[0].processor.terminate(Duration::from_secs(30)),
        "graceful stop failed"
    );
    stack.pods[0].processor.restart();
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(
        acked().await > before,
        "no progress after the graceful restart"
    );

    // 2. kill -9 under load, restarted at once: the new processor gets the partitions once the
    //    dead member's session times out, fences it and recovers.
    let killed_at = started.elapsed().as_millis() as u64;
    stack.pods[0].processor.kill9();
    killed_at_ms.store(killed_at, Ordering::Release);
    stack.pods[0].processor.restart();
    let deadline = Instant::now() + Duration::from_secs(60);
    while first_ok_after_kill_ms.load(Ordering::Acquire) == 0 {
        assert!(
            Instant::now() < deadline,
            "no command succeeded within 60 s of the kill"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let failover_ms = first_ok_after_kill_ms.load(Ordering::Acquire) - killed_at;
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, Ordering::Release);
    for d in drivers {
        d.await.unwrap();
    }
    let history = history.lock().await;

    // The checker: the journal as any read_committed consumer sees it.
    let kafka = statehouse_kafka::Options {
        bootstrap_servers: statehouse_test_support::kafka_bootstrap(),
        topic_prefix: stack.prefix.clone(),
        ..statehouse_kafka::Options::default()
    };
    let topic = format!("{}shopping-cart.journal", stack.prefix);
    let mut journal: BTreeMap<String, Vec<EventRecord>> = BTreeMap::new();
    for p in 0..PARTITIONS {
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
            journal.entry(e.entity_id.clone()).or_default().push(e);
        }
    }
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut seq_gaps = 0;
    for events in journal.values() {
        for (i, e) in events.iter().enumerate() {
            if e.seq != i as i64 + 1 {
                seq_gaps += 1;
            }
            let token = ItemAdded::decode(e.payload.clone())
                .unwrap()
                .item
                .unwrap()
                .product_id;
            *seen.entry(token).or_default() += 1;
        }
    }
    let lost = history
        .acked
        .keys()
        .filter(|t| !seen.contains_key(*t))
        .count();
    let duplicated = seen.values().filter(|&&n| n > 1).count();
    let failed_visible = history
        .failed
        .iter()
        .filter(|t| seen.contains_key(*t))
        .count();
    let mut grpc = client(&stack).await;
    let mut mismatched = 0;
    for (cart, events) in &journal {
        let expected: Vec<String> = events
            .iter()
            .map(|e| {
                ItemAdded::decode(e.payload.clone())
                    .unwrap()
                    .item
                    .unwrap()
                    .product_id
            })
            .collect();
        let mut request = tonic::Request::new(GetShoppingCart {
            user_id: cart.clone(),
        });
        request.set_timeout(Duration::from_secs(30));
        let actual: Vec<String> = grpc
            .get_cart(request)
            .await
            .unwrap()
            .into_inner()
            .items
            .into_iter()
            .map(|i| i.product_id)
            .collect();
        if actual != expected {
            mismatched += 1;
        }
    }
    let unknown_in_journal = history
        .unknown
        .iter()
        .filter(|t| seen.contains_key(*t))
        .count();
    println!(
        "restart checker: acknowledged={} failed={} unknown={} (in journal: {unknown_in_journal}) journaled={} \
         lost={lost} duplicated={duplicated} failed-visible={failed_visible} seq-gaps={seq_gaps} mismatched={mismatched} \
         failover-after-kill={failover_ms}ms",
        history.acked.len(),
        history.failed.len(),
        history.unknown.len(),
        seen.len(),
    );
    assert!(
        history.acked.len() >= 200,
        "too little load to mean anything: {}",
        history.acked.len()
    );
    assert_eq!(
        (lost, duplicated, failed_visible, seq_gaps, mismatched),
        (0, 0, 0, 0, 0)
    );
}
