//! The limits of issue 13, tried as a new user would (`docs/security.md`, "Limits"), on the real
//! stack: a command whose event exceeds `kafka.max-record-bytes` (a 3 MB product id under a
//! 4 MB request limit) fails alone with INVALID_ARGUMENT naming the limit while the commands
//! around it commit; requests over the gateway's limits are refused with codes that name them;
//! an entity id that is not UTF-8 in an HTTP path is a 400, never a lossily decoded entity.
//! Nothing refused reaches the journal.

use statehouse_e2e::carts::warm_up;
use statehouse_e2e::carts::{self, Carts};
use statehouse_schemas::shoppingcart::shopping_cart_client::ShoppingCartClient;
use statehouse_schemas::shoppingcart::{AddLineItem, GetShoppingCart};
use statehouse_test_support::http;
use statehouse_test_support::stack::{Options, Stack};
use statehouse_test_support::user_function::Kind;
use tonic::transport::Channel;

const PARTITIONS: u32 = 2;

async fn client(stack: &Stack) -> ShoppingCartClient<Channel> {
    let client = ShoppingCartClient::connect(format!("http://{}", stack.gateway_addr))
        .await
        .unwrap();
    // Larger than tonic's 4 MB default: the gateway, not the client, must refuse.
    client.max_decoding_message_size(64 * 1024 * 1024)
}

fn add(user: &str, product: &str, quantity: i32) -> AddLineItem {
    AddLineItem {
        user_id: user.into(),
        product_id: product.into(),
        name: "Thing".into(),
        quantity,
    }
}

async fn http_request(
    stack: &Stack,
    method: &'static str,
    path: String,
    body: Option<String>,
) -> http::Response {
    let addr = stack.gateway_addr.clone();
    tokio::task::spawn_blocking(move || {
        http::request(
            &addr,
            method,
            &path,
            &[("Content-Type", "application/json")],
            body.as_deref(),
        )
        .unwrap()
    })
    .await
    .unwrap()
}

async fn journal(stack: &Stack) -> Carts {
    let kafka = statehouse_e2e::clients::kafka(stack);
    carts::fold_journal(
        &kafka,
        &format!("{}shopping-cart.journal", stack.prefix),
        PARTITIONS,
        "",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn limits_refuse_early_name_themselves_and_lose_nothing() {
    let mut options = Options::new(Kind::GoShoppingCart);
    options.partitions = PARTITIONS;
    // The request limit the issue's user had: a 3 MB command passes it, its event cannot.
    options.common_sets = vec!["gateway.max-request-bytes=4194304".into()];
    let stack = Stack::start(options);
    let mut client = client(&stack).await;
    warm_up(&mut client).await;

    // A 3 MB product id among small commands sent at the same time (many share the partition
    // writer's transactions): it alone fails, with a code no retry loop takes for "later".
    let huge = "p".repeat(3 * 1024 * 1024);
    let mut tasks = Vec::new();
    for i in 0..24 {
        let mut c = client.clone();
        tasks.push(tokio::spawn(async move {
            c.add_item(add(&format!("small-{}", i % 6), &format!("item-{i}"), 1))
                .await
                .map(|_| ())
        }));
    }
    let mut c = client.clone();
    let big = tokio::spawn(async move { c.add_item(add("ada", &huge, 1)).await.map(|_| ()) });
    for task in tasks {
        task.await
            .unwrap()
            .unwrap_or_else(|s| panic!("a small command failed beside the big one: {s:?}"));
    }
    let status = big.await.unwrap().unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("kafka.max-record-bytes"),
        "the error names the limit: {}",
        status.message()
    );

    // The entity restarted from what is stored: the refused item is not in it, and it goes on.
    client.add_item(add("ada", "apple", 2)).await.unwrap();
    let cart = client
        .get_cart(GetShoppingCart {
            user_id: "ada".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let items: Vec<(String, i32)> = cart
        .items
        .into_iter()
        .map(|i| (i.product_id, i.quantity))
        .collect();
    assert_eq!(items, [("apple".to_string(), 2)]);

    // Over the gateway's request limit (4 MiB here): RESOURCE_EXHAUSTED, 413 over HTTP.
    let status = client
        .add_item(add("ada", &"q".repeat(5 * 1024 * 1024), 1))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("4194304"), "{status:?}");
    let body = format!(
        r#"{{"product_id":"{}","name":"x","quantity":1}}"#,
        "q".repeat(5 * 1024 * 1024)
    );
    let response = http_request(&stack, "POST", "/cart/ada/items/add".into(), Some(body)).await;
    assert_eq!(response.status, 413, "{}", response.body);

    // An entity id above gateway.max-entity-id-bytes (1024).
    let long_id = "u".repeat(2_000);
    let status = client.add_item(add(&long_id, "fig", 1)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("gateway.max-entity-id-bytes"),
        "{status:?}"
    );
    let response = http_request(&stack, "GET", format!("/carts/{long_id}"), None).await;
    assert_eq!(response.status, 400, "{}", response.body);
    assert!(
        response.body.contains("gateway.max-entity-id-bytes"),
        "{}",
        response.body
    );

    // More metadata entries than gateway.max-metadata-entries (64).
    let mut request = tonic::Request::new(add("ada", "fig", 1));
    for i in 0..70 {
        request.metadata_mut().insert(
            format!("x-extra-{i}")
                .parse::<tonic::metadata::MetadataKey<_>>()
                .unwrap(),
            "v".parse().unwrap(),
        );
    }
    let status = client.add_item(request).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("gateway.max-metadata-entries"),
        "{status:?}"
    );

    // Entity ids that are not UTF-8 once percent-decoded: refused, and two different raw ids
    // never meet in one entity (a lossy decoding would make both U+FFFD U+FFFD).
    for raw in ["%FF%FE", "%FE%FF"] {
        let body = r#"{"product_id":"pear","name":"Pear","quantity":1}"#.to_string();
        let response =
            http_request(&stack, "POST", format!("/cart/{raw}/items/add"), Some(body)).await;
        assert_eq!(response.status, 400, "{raw}: {}", response.body);
        assert!(response.body.contains("UTF-8"), "{}", response.body);
    }

    // The journal holds exactly the accepted commands.
    let mut expected = Carts::new();
    for i in 0..24 {
        expected
            .entry(format!("small-{}", i % 6))
            .or_default()
            .push((format!("item-{i}"), 1));
    }
    expected.insert("ada".into(), vec![("apple".into(), 2)]);
    let mut got = journal(&stack).await;
    got.remove("warm-up");
    for items in got.values_mut().chain(expected.values_mut()) {
        items.sort();
    }
    carts::assert_same(&got, &expected, "the journal after the refused commands");
    assert_eq!(got.len(), expected.len(), "no other entity was written");
}
