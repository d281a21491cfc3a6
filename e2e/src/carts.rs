//! Shopping-cart load and read models for the projection tests: a deterministic command mix
//! through the gateway, and the carts as an independent fold of the journal (read_committed).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use prost::Message as _;
use statehouse_kafka::reader::{Isolation, read_to_end};
use statehouse_schemas::avro::{AvroRecord, EventRecord};
use statehouse_schemas::shoppingcart::persistence;
use statehouse_schemas::shoppingcart::shopping_cart_client::ShoppingCartClient;
use statehouse_schemas::shoppingcart::{AddLineItem, GetShoppingCart, RemoveLineItem};
use statehouse_test_support::user_function::Kind;
use tonic::transport::Channel;

/// How long one command may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Cart → its items in the order first added (product, quantity).
pub type Carts = BTreeMap<String, Vec<(String, i32)>>;

/// Wait until the gateway behind `client` knows the shopping cart and a `GetCart` goes through
/// (it learns the service and its owners from Kafka once the processor published them):
/// UNIMPLEMENTED and UNAVAILABLE are retried for 90 s, anything else fails the test.
pub async fn warm_up(client: &mut ShoppingCartClient<Channel>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let mut request = tonic::Request::new(GetShoppingCart {
            user_id: "warm-up".into(),
        });
        request.set_timeout(Duration::from_secs(30));
        match client.get_cart(request).await {
            Ok(_) => return,
            Err(s)
                if tokio::time::Instant::now() < deadline
                    && matches!(
                        s.code(),
                        tonic::Code::Unimplemented | tonic::Code::Unavailable
                    ) =>
            {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(s) => panic!("the stack does not serve within 90 s: {s:?}"),
        }
    }
}

/// Command `i` of the mix: adds over `carts` carts (repeated products add up), and every
/// seventh a remove (refused when the cart does not hold the product).
fn command(i: usize, carts: usize) -> (String, String, bool) {
    (
        format!("cart-{}", i % carts),
        format!("p{}", (i / carts) % 7),
        i % 7 == 6,
    )
}

/// Run commands `first..first + n` of the mix through the gateway at `gateway` (`host:port`)
/// to the Rust sample cart, 16 at a time. A remove refused for a product the cart does not hold
/// is expected; with `tolerate_unavailable`, so are the failures of a processor going away
/// (the command is not retried: its outcome may be either). Any other failure panics. Returns
/// how many commands were unavailable.
pub async fn drive(
    gateway: &str,
    carts: usize,
    first: usize,
    n: usize,
    tolerate_unavailable: bool,
) -> usize {
    let channel = Channel::from_shared(format!("http://{gateway}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let next = Arc::new(AtomicUsize::new(first));
    let unavailable = Arc::new(AtomicUsize::new(0));
    let end = first + n;
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (next, unavailable) = (Arc::clone(&next), Arc::clone(&unavailable));
        let mut client = ShoppingCartClient::new(channel.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= end {
                    return;
                }
                let (user_id, product_id, remove) = command(i, carts);
                // The one refusal the mix expects: removing a product the cart does not hold.
                let refused = Kind::RustShoppingCart.remove_missing_item_failure(&product_id);
                let result = if remove {
                    let mut request = tonic::Request::new(RemoveLineItem {
                        user_id,
                        product_id,
                    });
                    request.set_timeout(TIMEOUT);
                    client.remove_item(request).await.map(|_| ())
                } else {
                    let mut request = tonic::Request::new(AddLineItem {
                        user_id,
                        product_id: product_id.clone(),
                        name: format!("product {product_id}"),
                        quantity: (i % 3 + 1) as i32,
                    });
                    request.set_timeout(TIMEOUT);
                    client.add_item(request).await.map(|_| ())
                };
                match result {
                    Ok(()) => {}
                    Err(status)
                        if remove
                            && status.code() == tonic::Code::Unknown
                            && status.message() == refused => {}
                    Err(status)
                        if tolerate_unavailable
                            && matches!(
                                status.code(),
                                tonic::Code::Unavailable
                                    | tonic::Code::DeadlineExceeded
                                    // The client's own timeout (a partition moving).
                                    | tonic::Code::Cancelled
                            ) =>
                    {
                        unavailable.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(status) => panic!("command {i} failed: {status:?}"),
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    unavailable.load(Ordering::Relaxed)
}

/// The carts as a fold of journal `topic` (all `partitions`) read with `isolation`, leaving out
/// entity `skip` (e.g. a poison event's). Panics on a gap in an entity's seqs or an unknown
/// event type.
pub async fn fold_journal(
    kafka: &statehouse_kafka::Options,
    topic: &str,
    partitions: u32,
    skip: &str,
) -> Carts {
    let mut events: Vec<EventRecord> = Vec::new();
    for p in 0..partitions {
        for message in read_to_end(
            kafka,
            topic,
            p,
            0,
            Isolation::ReadCommitted,
            Duration::from_secs(60),
        )
        .await
        .unwrap()
        {
            // Records without a value are a writer's settle markers.
            let Some(value) = &message.value else {
                continue;
            };
            let event = EventRecord::decode(value).unwrap_or_else(|e| {
                panic!("journal record {p}@{} does not decode: {e}", message.offset)
            });
            if event.entity_id != skip {
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
        apply(carts.entry(event.entity_id.clone()).or_default(), &event);
    }
    carts
}

/// One cart event applied to a cart's items.
pub fn apply(items: &mut Vec<(String, i32)>, event: &EventRecord) {
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

/// Two read models are equal, cart for cart (the first differences named).
pub fn assert_same(got: &Carts, journal: &Carts, what: &str) {
    let differences: Vec<String> = journal
        .keys()
        .chain(got.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .filter(|cart| got.get(*cart) != journal.get(*cart))
        .map(|cart| {
            format!(
                "{cart}: read model {:?}, journal {:?}",
                got.get(cart),
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
