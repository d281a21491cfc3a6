use prost_types::Any;
use statehouse_sample_shopping_cart::{PERSISTENCE_ID, SERVICE_NAME};
use statehouse_schemas::{
    cloudstate::ProxyInfo,
    shoppingcart::{AddLineItem, Cart, GetShoppingCart, LineItem, RemoveLineItem, persistence},
};
use statehouse_sdk::any;

use crate::support::{Cart as CartStream, UserFunction, reply_failure, reply_payload};

const USER: &str = "user-1";

fn add(product_id: &str, name: &str, quantity: i32) -> Any {
    any::pack(&AddLineItem {
        user_id: USER.into(),
        product_id: product_id.into(),
        name: name.into(),
        quantity,
    })
}

fn remove(product_id: &str) -> Any {
    any::pack(&RemoveLineItem {
        user_id: USER.into(),
        product_id: product_id.into(),
    })
}

fn item(product_id: &str, name: &str, quantity: i32) -> LineItem {
    LineItem {
        product_id: product_id.into(),
        name: name.into(),
        quantity,
    }
}

fn added(product_id: &str, name: &str, quantity: i32) -> Any {
    any::pack(&persistence::ItemAdded {
        item: Some(persistence::LineItem {
            product_id: product_id.into(),
            name: name.into(),
            quantity,
        }),
    })
}

fn removed(product_id: &str) -> Any {
    any::pack(&persistence::ItemRemoved {
        product_id: product_id.into(),
    })
}

async fn get_cart(cart: &mut CartStream) -> anyhow::Result<Vec<LineItem>> {
    let reply = cart
        .command(
            "GetCart",
            any::pack(&GetShoppingCart {
                user_id: USER.into(),
            }),
        )
        .await?;
    assert!(reply.events.is_empty(), "GetCart emits nothing");
    let payload = reply_payload(&reply)
        .ok_or_else(|| anyhow::anyhow!("GetCart did not reply with a message: {reply:?}"))?;
    Ok(any::unpack::<Cart>(payload)?.items)
}

#[tokio::test]
async fn add_add_same_remove_and_get() -> anyhow::Result<()> {
    let uf = UserFunction::start().await?;

    let spec = uf
        .discovery()
        .await?
        .discover(ProxyInfo {
            protocol_major_version: 0,
            protocol_minor_version: 2,
            supported_entity_types: vec!["cloudstate.eventsourced.EventSourced".into()],
            ..ProxyInfo::default()
        })
        .await?
        .into_inner();
    let entity = spec.entities.first().cloned().unwrap_or_default();
    assert_eq!(spec.entities.len(), 1);
    assert_eq!(entity.service_name, SERVICE_NAME);
    assert_eq!(entity.persistence_id, "shopping-cart");
    assert_eq!(PERSISTENCE_ID, "shopping-cart");

    let mut cart = uf.cart(USER, None).await?;
    assert_eq!(get_cart(&mut cart).await?, []);

    let reply = cart.command("AddItem", add("apple", "Apple", 1)).await?;
    assert_eq!(reply.events, [added("apple", "Apple", 1)]);
    assert_eq!(reply_payload(&reply), Some(&any::pack(&())), "Empty reply");
    assert_eq!(
        reply_payload(&reply).map(|p| p.type_url.as_str()),
        Some("type.googleapis.com/google.protobuf.Empty")
    );

    let reply = cart.command("AddItem", add("banana", "Banana", 2)).await?;
    assert_eq!(reply.events, [added("banana", "Banana", 2)]);

    // The same product again: the event carries the added quantity, the
    // item keeps its place and its first name.
    let reply = cart
        .command("AddItem", add("apple", "Green apple", 3))
        .await?;
    assert_eq!(reply.events, [added("apple", "Green apple", 3)]);
    assert_eq!(
        get_cart(&mut cart).await?,
        [item("apple", "Apple", 4), item("banana", "Banana", 2)]
    );

    let reply = cart.command("RemoveItem", remove("apple")).await?;
    assert_eq!(reply.events, [removed("apple")]);
    assert_eq!(reply_payload(&reply), Some(&any::pack(&())));
    assert_eq!(get_cart(&mut cart).await?, [item("banana", "Banana", 2)]);

    // Re-adding a removed product appends it.
    cart.command("AddItem", add("apple", "Apple", 1)).await?;
    assert_eq!(
        get_cart(&mut cart).await?,
        [item("banana", "Banana", 2), item("apple", "Apple", 1)]
    );

    uf.stop().await
}

#[tokio::test]
async fn invalid_commands_fail_with_the_samples_texts() -> anyhow::Result<()> {
    let uf = UserFunction::start().await?;
    let mut cart = uf.cart(USER, None).await?;
    cart.command("AddItem", add("apple", "Apple", 2)).await?;

    for quantity in [0, -1] {
        let reply = cart
            .command("AddItem", add("pear", "Pear", quantity))
            .await?;
        let failure = reply_failure(&reply).cloned().unwrap_or_default();
        assert_eq!(
            failure.description,
            r#"cannot add negative quantity of to item "pear""#
        );
        assert_eq!(failure.command_id, reply.command_id);
        assert!(!failure.restart);
        assert!(reply.events.is_empty());
    }

    let reply = cart.command("RemoveItem", remove("pear")).await?;
    let failure = reply_failure(&reply).cloned().unwrap_or_default();
    assert_eq!(
        failure.description,
        "cannot remove item pear because it is not in the cart"
    );
    assert!(reply.events.is_empty());

    // Nothing changed.
    assert_eq!(get_cart(&mut cart).await?, [item("apple", "Apple", 2)]);
    Ok(())
}

#[tokio::test]
async fn snapshot_at_five_events_restores_the_same_cart() -> anyhow::Result<()> {
    let uf = UserFunction::start().await?;
    let mut cart = uf.cart(USER, None).await?;

    // Events 1..=5; the fifth reply carries the snapshot.
    let commands = [
        ("AddItem", add("apple", "Apple", 1)),
        ("AddItem", add("banana", "Banana", 2)),
        ("AddItem", add("cherry", "Cherry", 3)),
        ("AddItem", add("apple", "Apple", 4)),
        ("RemoveItem", remove("banana")),
    ];
    let mut snapshot = None;
    for (sequence, (name, payload)) in (1..).zip(commands) {
        let reply = cart.command(name, payload).await?;
        assert_eq!(reply.events.len(), 1);
        if sequence < 5 {
            assert_eq!(reply.snapshot, None, "event {sequence}");
        } else {
            snapshot = reply.snapshot;
        }
    }
    let snapshot = snapshot.ok_or_else(|| anyhow::anyhow!("no snapshot at event 5"))?;
    assert_eq!(
        any::unpack::<persistence::Cart>(&snapshot)?,
        persistence::Cart {
            items: vec![
                persistence::LineItem {
                    product_id: "apple".into(),
                    name: "Apple".into(),
                    quantity: 5,
                },
                persistence::LineItem {
                    product_id: "cherry".into(),
                    name: "Cherry".into(),
                    quantity: 3,
                },
            ],
        }
    );

    // Events 6 and 7, then no snapshot until 10.
    let mut later = Vec::new();
    for payload in [add("date", "Date", 1), add("apple", "Apple", 1)] {
        let reply = cart.command("AddItem", payload).await?;
        assert_eq!(reply.snapshot, None);
        later.extend(reply.events);
    }
    let expected = get_cart(&mut cart).await?;
    assert_eq!(
        expected,
        [
            item("apple", "Apple", 6),
            item("cherry", "Cherry", 3),
            item("date", "Date", 1)
        ]
    );

    // A new stream from the snapshot plus the later events: the same cart,
    // and the sequence goes on from 7 (three more events make a snapshot).
    let mut restored = uf.cart(USER, Some((5, snapshot))).await?;
    for (sequence, event) in (6..).zip(&later) {
        restored.event(sequence, event.clone())?;
    }
    assert_eq!(get_cart(&mut restored).await?, expected);
    restored.command("AddItem", add("egg", "Egg", 1)).await?;
    restored.command("AddItem", add("fig", "Fig", 1)).await?;
    let tenth = restored.command("RemoveItem", remove("egg")).await?;
    assert!(tenth.snapshot.is_some(), "event 10 snapshots");

    uf.stop().await
}
