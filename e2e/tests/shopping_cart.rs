//! The shopping cart of each SDK — the official Go SDK (protocol 0.2), the PyPI Python SDK
//! (legacy protocol) and our Rust SDK — served behind Statehouse: the gateway, a processor and
//! the user function as real processes, on the real Kafka and Cassandra. Every call goes
//! through the gateway over gRPC and over HTTP/JSON, and every reply is checked exactly.

use statehouse_e2e::carts::warm_up;
use statehouse_schemas::shoppingcart::shopping_cart_client::ShoppingCartClient;
use statehouse_schemas::shoppingcart::{AddLineItem, GetShoppingCart, LineItem, RemoveLineItem};
use statehouse_test_support::http;
use statehouse_test_support::stack::{Options, Stack};
use statehouse_test_support::user_function::Kind;
use tonic::transport::Channel;

fn item(product: &str, name: &str, quantity: i32) -> LineItem {
    LineItem {
        product_id: product.into(),
        name: name.into(),
        quantity,
    }
}

async fn grpc(stack: &Stack) -> ShoppingCartClient<Channel> {
    ShoppingCartClient::connect(format!("http://{}", stack.gateway_addr))
        .await
        .unwrap()
}

async fn post(stack: &Stack, path: &str, body: &str) -> http::Response {
    let (addr, path, body) = (
        stack.gateway_addr.clone(),
        path.to_string(),
        body.to_string(),
    );
    tokio::task::spawn_blocking(move || {
        http::request(
            &addr,
            "POST",
            &path,
            &[("Content-Type", "application/json")],
            Some(&body),
        )
        .unwrap()
    })
    .await
    .unwrap()
}

async fn get(stack: &Stack, path: &str) -> http::Response {
    let (addr, path) = (stack.gateway_addr.clone(), path.to_string());
    tokio::task::spawn_blocking(move || http::request(&addr, "GET", &path, &[], None).unwrap())
        .await
        .unwrap()
}

async fn serves_the_cart(kind: Kind) {
    let stack = Stack::start(Options::new(kind));
    let mut client = grpc(&stack).await;
    warm_up(&mut client).await;

    // gRPC: add, add again (quantities add up, order kept), remove, get.
    for (product, name, quantity) in [
        ("apple", "Apple", 2),
        ("pear", "Pear", 1),
        ("apple", "Apple", 3),
        ("fig", "Fig", 4),
    ] {
        client
            .add_item(AddLineItem {
                user_id: "ada".into(),
                product_id: product.into(),
                name: name.into(),
                quantity,
            })
            .await
            .unwrap_or_else(|s| panic!("{kind} AddItem {product}: {s}"));
    }
    client
        .remove_item(RemoveLineItem {
            user_id: "ada".into(),
            product_id: "pear".into(),
        })
        .await
        .unwrap();
    let cart = client
        .get_cart(GetShoppingCart {
            user_id: "ada".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        cart.items,
        [item("apple", "Apple", 5), item("fig", "Fig", 4)],
        "{kind}"
    );

    // A user-function failure is gRPC UNKNOWN with its description.
    let status = client
        .add_item(AddLineItem {
            user_id: "ada".into(),
            product_id: "kiwi".into(),
            name: "Kiwi".into(),
            quantity: -1,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unknown, "{kind}: {status:?}");
    assert_eq!(
        status.message(),
        kind.add_negative_quantity_failure("kiwi"),
        "{kind}"
    );
    let status = client
        .remove_item(RemoveLineItem {
            user_id: "ada".into(),
            product_id: "kiwi".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unknown);
    assert_eq!(
        status.message(),
        kind.remove_missing_item_failure("kiwi"),
        "{kind}"
    );
    // Nothing was persisted by the failures.
    let cart = client
        .get_cart(GetShoppingCart {
            user_id: "ada".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cart.items.len(), 2, "{kind}");

    // HTTP/JSON through the google.api.http rules, exact bodies (defaults included).
    let added = post(
        &stack,
        "/cart/bob/items/add",
        r#"{"productId":"plum","name":"Plum","quantity":3}"#,
    )
    .await;
    assert_eq!((added.status, added.body.as_str()), (200, "{}"), "{kind}");
    assert_eq!(added.header("content-type"), Some("application/json"));
    post(
        &stack,
        "/cart/bob/items/add",
        r#"{"productId":"date","name":"Date","quantity":1}"#,
    )
    .await;
    let cart = get(&stack, "/carts/bob").await;
    assert_eq!(
        (cart.status, cart.body.as_str()),
        (
            200,
            r#"{"items":[{"productId":"plum","name":"Plum","quantity":3},{"productId":"date","name":"Date","quantity":1}]}"#
        ),
        "{kind}"
    );
    let removed = post(&stack, "/cart/bob/items/plum/remove", "").await;
    assert_eq!(removed.status, 200, "{kind}: {removed:?}");
    let items = get(&stack, "/carts/bob/items").await;
    assert_eq!(
        (items.status, items.body.as_str()),
        (200, r#"[{"productId":"date","name":"Date","quantity":1}]"#),
        "{kind}"
    );
    let empty = get(&stack, "/carts/nobody").await;
    assert_eq!(
        (empty.status, empty.body.as_str()),
        (200, r#"{"items":[]}"#),
        "{kind}"
    );

    // Failures over HTTP: 500 with the description as the body; malformed input is a 400.
    let failed = post(
        &stack,
        "/cart/bob/items/add",
        r#"{"productId":"x","name":"X","quantity":0}"#,
    )
    .await;
    assert_eq!(
        (failed.status, failed.body.as_str()),
        (500, kind.add_negative_quantity_failure("x").as_str()),
        "{kind}"
    );
    let malformed = post(&stack, "/cart/bob/items/add", r#"{"productId": "#).await;
    assert_eq!(malformed.status, 400, "{kind}: {malformed:?}");

    // The same cart, read over gRPC after HTTP writes.
    let cart = client
        .get_cart(GetShoppingCart {
            user_id: "bob".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cart.items, [item("date", "Date", 1)], "{kind}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_sdk_shopping_cart() {
    serves_the_cart(Kind::GoShoppingCart).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_shopping_cart() {
    serves_the_cart(Kind::PythonShoppingCart).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_sdk_shopping_cart() {
    serves_the_cart(Kind::RustShoppingCart).await;
}
