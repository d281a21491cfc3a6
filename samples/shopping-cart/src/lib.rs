//! The Cloudstate shopping cart sample, written with `statehouse-sdk`.
//!
//! It behaves like the official samples (Cloudstate `samples/js-shopping-cart`
//! and go-support `example/shoppingcart`): the event-sourced service
//! `com.example.shoppingcart.ShoppingCart`, persistence id `shopping-cart`,
//! a snapshot every 5 events.
//!
//! * `AddItem` fails for a quantity `<= 0`; otherwise it emits `ItemAdded`.
//!   Adding a product already in the cart raises its quantity in place.
//! * `RemoveItem` fails if the product is not in the cart; otherwise it emits
//!   `ItemRemoved`.
//! * `GetCart` returns the items in the order they were first added.
//!
//! Events and snapshots use `com.example.shoppingcart.persistence`; the API
//! uses `com.example.shoppingcart`. The failure texts are go-support's
//! ([`negative_quantity`], [`not_in_cart`]).
//!
//! It also serves the projection [`CARTS`] (`statehouse projector`): every
//! cart's items as a read model in Cassandra, folded by the entity's own
//! event handler.
//!
//! ```no_run
//! # async fn run() -> Result<(), statehouse_sdk::Error> {
//! statehouse_sample_shopping_cart::service()
//!     .serve("127.0.0.1:8080".parse().expect("a socket address"))
//!     .await
//! # }
//! ```

use prost_types::Any;
use statehouse_schemas::shoppingcart::{
    AddLineItem, Cart, GetShoppingCart, LineItem, RemoveLineItem, persistence,
};
use statehouse_sdk::{
    CommandContext, EventSourcedEntity, Failure, Projection, Reply, Service, any,
};

/// The gRPC service the cart is served as.
pub const SERVICE_NAME: &str = "com.example.shoppingcart.ShoppingCart";
/// The persistence id of the official samples.
pub const PERSISTENCE_ID: &str = "shopping-cart";
/// Snapshot every 5 events, as the official samples do.
pub const SNAPSHOT_EVERY: u64 = 5;

/// The failure text for adding a quantity `<= 0`: go-support
/// `example/shoppingcart/entity.go`,
/// `fmt.Errorf("cannot add negative quantity of to item %q", productId)`.
///
/// The product id is quoted like Go's `%q` (identical for printable text).
pub fn negative_quantity(product_id: &str) -> String {
    format!("cannot add negative quantity of to item {product_id:?}")
}

/// The failure text for removing a product that is not in the cart:
/// go-support `example/shoppingcart/entity.go`,
/// `fmt.Errorf("cannot remove item %s because it is not in the cart", productId)`.
pub fn not_in_cart(product_id: &str) -> String {
    format!("cannot remove item {product_id} because it is not in the cart")
}

/// The shopping cart entity. Its state is the domain `Cart`, items in
/// insertion order, which is also its snapshot.
#[derive(Debug, Clone, Copy, Default)]
pub struct ShoppingCart;

/// The name of the carts' projection.
pub const CARTS: &str = "carts";

/// The carts' read model: one row per cart, the domain `Cart` (items in the order first
/// added), folded from the cart's events exactly as the entity folds them.
#[derive(Debug, Clone, Copy, Default)]
pub struct CartsProjection;

impl Projection for CartsProjection {
    type Row = persistence::Cart;

    fn name(&self) -> &str {
        CARTS
    }

    fn persistence_id(&self) -> &str {
        PERSISTENCE_ID
    }

    fn apply(
        &self,
        row: Option<persistence::Cart>,
        event: &Any,
    ) -> Result<Option<persistence::Cart>, Failure> {
        let mut cart = row.unwrap_or_default();
        ShoppingCart.apply(&mut cart, event)?;
        Ok(Some(cart))
    }
}

/// The user function: the cart over the descriptors in `statehouse-schemas`, and its
/// projection.
pub fn service() -> Service {
    Service::new("shopping-cart", env!("CARGO_PKG_VERSION"))
        .descriptors(statehouse_schemas::FILE_DESCRIPTOR_SET)
        .event_sourced(SERVICE_NAME, ShoppingCart)
        .projection(CartsProjection)
}

impl EventSourcedEntity for ShoppingCart {
    type State = persistence::Cart;

    fn persistence_id(&self) -> &str {
        PERSISTENCE_ID
    }

    fn snapshot_every(&self) -> u64 {
        SNAPSHOT_EVERY
    }

    fn command(
        &self,
        ctx: &mut CommandContext<'_>,
        cart: &persistence::Cart,
        name: &str,
        payload: &Any,
    ) -> Result<Reply, Failure> {
        match name {
            "AddItem" => add_item(ctx, any::unpack(payload)?),
            "RemoveItem" => remove_item(ctx, cart, any::unpack(payload)?),
            "GetCart" => {
                let _: GetShoppingCart = any::unpack(payload)?;
                Ok(Reply::message(&get_cart(cart)))
            }
            other => Err(Failure::new(format!("unknown command {other}"))),
        }
    }

    fn apply(&self, cart: &mut persistence::Cart, event: &Any) -> Result<(), Failure> {
        if let Some(added) = any::unpack_if::<persistence::ItemAdded>(event)? {
            let item = added
                .item
                .ok_or_else(|| Failure::new("ItemAdded without an item"))?;
            match cart
                .items
                .iter_mut()
                .find(|existing| existing.product_id == item.product_id)
            {
                Some(existing) => existing.quantity += item.quantity,
                None => cart.items.push(item),
            }
        } else if let Some(removed) = any::unpack_if::<persistence::ItemRemoved>(event)? {
            cart.items
                .retain(|item| item.product_id != removed.product_id);
        } else {
            return Err(any::Error::unknown_type(event).into());
        }
        Ok(())
    }

    fn snapshot(&self, cart: &persistence::Cart) -> Option<Any> {
        Some(any::pack(cart))
    }

    fn restore(&self, snapshot: &Any) -> Result<persistence::Cart, Failure> {
        Ok(any::unpack(snapshot)?)
    }
}

fn add_item(ctx: &mut CommandContext<'_>, add: AddLineItem) -> Result<Reply, Failure> {
    if add.quantity <= 0 {
        return Err(Failure::new(negative_quantity(&add.product_id)));
    }
    ctx.emit(&persistence::ItemAdded {
        item: Some(persistence::LineItem {
            product_id: add.product_id,
            name: add.name,
            quantity: add.quantity,
        }),
    });
    Ok(Reply::empty())
}

fn remove_item(
    ctx: &mut CommandContext<'_>,
    cart: &persistence::Cart,
    remove: RemoveLineItem,
) -> Result<Reply, Failure> {
    if !cart
        .items
        .iter()
        .any(|item| item.product_id == remove.product_id)
    {
        return Err(Failure::new(not_in_cart(&remove.product_id)));
    }
    ctx.emit(&persistence::ItemRemoved {
        product_id: remove.product_id,
    });
    Ok(Reply::empty())
}

fn get_cart(cart: &persistence::Cart) -> Cart {
    Cart {
        items: cart
            .items
            .iter()
            .map(|item| LineItem {
                product_id: item.product_id.clone(),
                name: item.name.clone(),
                quantity: item.quantity,
            })
            .collect(),
    }
}
