//! R7 of the reliability plan: the reply of 1% of the commands is lost after the commit (the
//! client never sees it) and the client retries with the same idempotency key. Every retry must
//! return the original reply, marked as the stored one (`statehouse-deduplicated: true`), and
//! the journal must hold each command exactly once.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use statehouse_e2e::checker;
use statehouse_e2e::driver::History;
use statehouse_schemas::shoppingcart::AddLineItem;
use statehouse_schemas::shoppingcart::shopping_cart_client::ShoppingCartClient;
use statehouse_test_support::stack::{Options, Stack};
use statehouse_test_support::user_function::Kind;
use tokio::sync::Mutex;

const COMMANDS_PER_CLIENT: usize = 600;
const CLIENTS: usize = 8;
const PARTITIONS: u32 = 4;

fn request(cart: &str, token: &str) -> tonic::Request<AddLineItem> {
    let mut request = tonic::Request::new(AddLineItem {
        user_id: cart.into(),
        product_id: token.into(),
        name: "token".into(),
        quantity: 1,
    });
    request.set_timeout(Duration::from_secs(30));
    request
        .metadata_mut()
        .insert("idempotency-key", token.parse().unwrap());
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_after_lost_replies_return_the_original_reply_once() {
    let mut options = Options::new(Kind::GoShoppingCart);
    options.partitions = PARTITIONS;
    let stack = Stack::start(options);
    let history = Arc::new(Mutex::new(History::default()));
    let lost = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let mut client = ShoppingCartClient::connect(format!("http://{}", stack.gateway_addr))
            .await
            .unwrap();
        let (history, lost) = (history.clone(), lost.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(c as u64);
            for n in 0..COMMANDS_PER_CLIENT {
                let token = format!("c{c}-{n}");
                let cart = format!("cart-{}", (c * 13 + n) % 30);
                let first = client.add_item(request(&cart, &token)).await.unwrap();
                assert!(
                    first.metadata().get("statehouse-deduplicated").is_none(),
                    "{token}: a first call deduplicated"
                );
                if rng.random_bool(0.01) {
                    // The reply was "lost": the client cannot tell whether the command ran, so it
                    // sends it again with the same key.
                    lost.fetch_add(1, Ordering::Relaxed);
                    let again = client.add_item(request(&cart, &token)).await.unwrap();
                    assert_eq!(
                        again
                            .metadata()
                            .get("statehouse-deduplicated")
                            .map(|v| v.to_str().unwrap()),
                        Some("true"),
                        "{token}: the retry ran the command again"
                    );
                    assert_eq!(
                        again.get_ref(),
                        first.get_ref(),
                        "{token}: a different reply"
                    );
                }
                history.lock().await.acked.insert(token, cart);
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let history = Arc::try_unwrap(history).unwrap().into_inner();
    let report = checker::check_stack(&stack, PARTITIONS, &history).await;
    let lost = lost.load(Ordering::Relaxed);
    println!("R7 checker: lost replies retried={lost} {report}");
    assert!(lost > 10, "too few lost replies to mean anything: {lost}");
    assert_eq!(report.acknowledged, CLIENTS * COMMANDS_PER_CLIENT);
    assert_eq!(report.anomalies(), (0, 0, 0, 0, 0, 0), "{report}");
}
