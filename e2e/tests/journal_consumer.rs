//! The journal is a public log any language can read: the Python sample
//! (`samples/journal-consumer-python`, confluent-kafka + fastavro) reads a shopping-cart
//! journal with read_committed, decodes the single-object-encoded `EventRecord`s with the
//! `.avsc` files and folds the carts — and its read model equals what the entities answer
//! (`GetCart`) for every cart, after adds, repeated adds and removes spread over partitions.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use statehouse_e2e::carts;
use statehouse_schemas::shoppingcart::GetShoppingCart;
use statehouse_schemas::shoppingcart::shopping_cart_client::ShoppingCartClient;
use statehouse_test_support::kafka_bootstrap;
use statehouse_test_support::stack::{Options, Stack};
use statehouse_test_support::user_function::{Kind, journal_consumer_python, repo_root};

const CARTS: usize = 40;
const COMMANDS: usize = 600;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_consumer_folds_the_journal_to_the_entities_state() {
    let python = journal_consumer_python();
    let mut stack = Stack::start(Options::new(Kind::RustShoppingCart));
    stack.wait_ready(0, Duration::from_secs(120));
    // The cart mix: adds (repeated products add up), and every seventh command a remove.
    carts::drive(&stack.gateway_addr, CARTS, 0, COMMANDS, false).await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", stack.gateway_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = ShoppingCartClient::new(channel);
    let mut entities: BTreeMap<String, BTreeMap<String, i32>> = BTreeMap::new();
    for c in 0..CARTS {
        let user_id = format!("cart-{c}");
        let cart = client
            .get_cart(GetShoppingCart {
                user_id: user_id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        entities.insert(
            user_id,
            cart.items
                .into_iter()
                .map(|item| (item.product_id, item.quantity))
                .collect(),
        );
    }

    let topic = format!("{}shopping-cart.journal", stack.prefix);
    let output = Command::new(&python)
        .arg(repo_root().join("samples/journal-consumer-python/consumer.py"))
        .args(["--bootstrap", &kafka_bootstrap(), "--topic", &topic])
        .output()
        .expect("running the Python journal consumer");
    assert!(
        output.status.success(),
        "the Python consumer failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let folded: BTreeMap<String, BTreeMap<String, i32>> =
        serde_json::from_slice(&output.stdout).expect("the consumer prints JSON");
    assert_eq!(folded.len(), CARTS, "every cart has events");
    assert_eq!(
        folded, entities,
        "the Python fold of the journal equals the entities' state"
    );
}
