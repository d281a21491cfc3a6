//! The journal is a public log any language can read: the Python sample
//! (`samples/journal-consumer-python`, confluent-kafka + fastavro) reads a shopping-cart
//! journal with read_committed, decodes the single-object-encoded `EventRecord`s with the
//! `.avsc` files and folds the carts — and its read model equals what the entities answer
//! (`GetCart`) for every cart, after adds, repeated adds and removes spread over partitions.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use statehouse_schemas::shoppingcart::shopping_cart_client::ShoppingCartClient;
use statehouse_schemas::shoppingcart::{AddLineItem, GetShoppingCart, RemoveLineItem};
use statehouse_test_support::kafka_bootstrap;
use statehouse_test_support::stack::{Options, Stack};
use statehouse_test_support::user_function::{Kind, install_dir, repo_root};

const CARTS: usize = 40;
const COMMANDS: usize = 600;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_consumer_folds_the_journal_to_the_entities_state() {
    let python = install_dir()
        .join("python")
        .join("consumer-venv")
        .join("bin")
        .join("python");
    assert!(
        python.is_file(),
        "{} is missing: install the e2e user functions with `bash e2e/user-functions/install.sh`",
        python.display()
    );
    let mut stack = Stack::start(Options::new(Kind::RustShoppingCart));
    stack.wait_ready(0, Duration::from_secs(120));
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", stack.gateway_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = ShoppingCartClient::new(channel);
    // A deterministic mix: adds (repeated products add up), and every seventh command a remove.
    for i in 0..COMMANDS {
        let user_id = format!("cart-{}", i % CARTS);
        let product_id = format!("p{}", (i / CARTS) % 5);
        if i % 7 == 6 {
            client
                .remove_item(RemoveLineItem {
                    user_id,
                    product_id,
                })
                .await
                .map(|_| ())
                .or_else(|status| {
                    // Removing an item the cart does not hold is refused by the entity.
                    if status.code() == tonic::Code::Unknown {
                        Ok(())
                    } else {
                        Err(status)
                    }
                })
                .unwrap();
        } else {
            client
                .add_item(AddLineItem {
                    user_id,
                    product_id: product_id.clone(),
                    name: format!("product {product_id}"),
                    quantity: (i % 3 + 1) as i32,
                })
                .await
                .unwrap();
        }
    }
    let mut entities: BTreeMap<String, BTreeMap<String, i64>> = BTreeMap::new();
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
                .map(|item| (item.product_id, i64::from(item.quantity)))
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
    let folded: BTreeMap<String, BTreeMap<String, i64>> =
        parse(&String::from_utf8(output.stdout).unwrap());
    assert_eq!(folded.len(), CARTS, "every cart has events");
    assert_eq!(
        folded, entities,
        "the Python fold of the journal equals the entities' state"
    );
}

/// The consumer's JSON output, `{"cart": {"product": quantity}}` (flat, no escapes in our ids).
fn parse(json: &str) -> BTreeMap<String, BTreeMap<String, i64>> {
    let value: serde_json::Value = serde_json::from_str(json).expect("the consumer prints JSON");
    value
        .as_object()
        .expect("an object of carts")
        .iter()
        .map(|(cart, items)| {
            let items = items
                .as_object()
                .expect("an object of items")
                .iter()
                .map(|(product, quantity)| {
                    (product.clone(), quantity.as_i64().expect("a quantity"))
                })
                .collect();
            (cart.clone(), items)
        })
        .collect()
}
