//! What a client sends. A scenario picks the next [`Op`] on an entity; the [`driver`] carries it
//! out against the shopping-cart API (Statehouse's gateway or a baseline, which serve the same
//! API) and the [`Acks`] remember every acknowledged increment for the correctness check.
//!
//! `es-counter` is the shopping cart's `AddItem` used as a counter increment: every command adds
//! quantity 1 of product [`COUNTED`] to the entity, so the entity's count of that product is the
//! counter and each command is one small event. (No separate counter entity is needed: the event
//! and the command path are the same as a dedicated event-sourced counter's.)
//!
//! `cart-large` measures large state: every cart is first filled ([`Scenario::fill_items`])
//! with 20 line items of ~100-byte product ids (~2 KB of state), then the load is half
//! increments, half `GetCart` of the whole cart. The fill is not measured.
//!
//! To add a scenario, implement [`Scenario`] and register it in [`by_name`].
//!
//! [`driver`]: crate::driver

use std::sync::atomic::{AtomicU64, Ordering};

use statehouse_schemas::shoppingcart::shopping_cart_client::ShoppingCartClient;
use statehouse_schemas::shoppingcart::{AddLineItem, GetShoppingCart, RemoveLineItem};
use tonic::transport::Channel;

use crate::Rng;

/// The product whose quantity is the counter; the correctness check reads it.
pub const COUNTED: &str = "counter";
/// The product the shopping-cart mix adds and removes (not counted).
pub const OTHER: &str = "other";

/// One command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `AddItem` of one [`COUNTED`] (an increment; checked at the end).
    Increment,
    /// `AddItem` of one [`OTHER`].
    AddOther,
    /// `RemoveItem` of [`OTHER`] (fails with the sample's "not in the cart" when absent).
    RemoveOther,
    /// `GetCart` (read-only).
    Get,
}

impl Op {
    /// The gRPC method, as the report names it.
    pub fn method(self) -> &'static str {
        match self {
            Self::Increment | Self::AddOther => "AddItem",
            Self::RemoveOther => "RemoveItem",
            Self::Get => "GetCart",
        }
    }
}

/// A workload: which command comes next.
pub trait Scenario: Send + Sync + std::fmt::Debug + 'static {
    fn name(&self) -> &'static str;
    fn next_op(&self, rng: &mut Rng) -> Op;
    /// Line items ([`fill_product`]) added to every entity before the measured load.
    fn fill_items(&self) -> u32 {
        0
    }
}

/// Every command is an increment of the entity's counter.
#[derive(Debug)]
pub struct EsCounter;

impl Scenario for EsCounter {
    fn name(&self) -> &'static str {
        "es-counter"
    }
    fn next_op(&self, _: &mut Rng) -> Op {
        Op::Increment
    }
}

/// The Cloudstate sample's mix: 45% `AddItem` (half of them counted), 10% `RemoveItem`,
/// 45% `GetCart`.
#[derive(Debug)]
pub struct ShoppingCart;

impl Scenario for ShoppingCart {
    fn name(&self) -> &'static str {
        "shopping-cart"
    }
    fn next_op(&self, rng: &mut Rng) -> Op {
        match rng.below(1000) {
            0..225 => Op::Increment,
            225..450 => Op::AddOther,
            450..550 => Op::RemoveOther,
            _ => Op::Get,
        }
    }
}

/// Large carts: 20 items of ~100-byte product ids filled first, then 50% increments and 50%
/// `GetCart` (which returns the whole ~2 KB cart).
#[derive(Debug)]
pub struct CartLarge;

impl Scenario for CartLarge {
    fn name(&self) -> &'static str {
        "cart-large"
    }
    fn next_op(&self, rng: &mut Rng) -> Op {
        if rng.below(2) == 0 {
            Op::Increment
        } else {
            Op::Get
        }
    }
    fn fill_items(&self) -> u32 {
        20
    }
}

/// Bytes of a filled line item's product id.
pub const FILL_PRODUCT_BYTES: usize = 100;

/// The product id of filled line item `i`: unique per item, [`FILL_PRODUCT_BYTES`] long.
pub fn fill_product(i: u32) -> String {
    let head = format!("fill-{i:03}-");
    format!(
        "{head}{}",
        "x".repeat(FILL_PRODUCT_BYTES.saturating_sub(head.len()))
    )
}

/// The registered scenarios.
pub const NAMES: &[&str] = &["es-counter", "shopping-cart", "cart-large"];

/// A scenario by name.
pub fn by_name(name: &str) -> Option<Box<dyn Scenario>> {
    match name {
        "es-counter" => Some(Box::new(EsCounter)),
        "shopping-cart" => Some(Box::new(ShoppingCart)),
        "cart-large" => Some(Box::new(CartLarge)),
        _ => None,
    }
}

/// Add `items` filled line items to each of the `n` entities of run `run`, `concurrency`
/// commands at a time (item by item across all entities, so concurrent commands go to
/// different entities). A failed command is retried (its outcome unknown, it may add the item
/// twice: the size stays about the same). Returns the commands sent.
pub async fn fill(
    channel: impl Fn(u64) -> Channel,
    run: &str,
    n: u64,
    items: u32,
    concurrency: usize,
) -> anyhow::Result<u64> {
    use futures::StreamExt;
    let sent = AtomicU64::new(0);
    let pairs = (0..items).flat_map(|i| (0..n).map(move |k| (i, k)));
    let results: Vec<Result<(), tonic::Status>> = futures::stream::iter(pairs)
        .map(|(i, k)| {
            let mut client = ShoppingCartClient::new(channel(k));
            let (entity, product, sent) = (entity_id(run, k), fill_product(i), &sent);
            async move {
                let mut last = Ok(());
                for attempt in 0..5 {
                    if attempt > 0 {
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                    sent.fetch_add(1, Ordering::Relaxed);
                    last = client
                        .add_item(AddLineItem {
                            user_id: entity.clone(),
                            product_id: product.clone(),
                            name: "filler".into(),
                            quantity: 1,
                        })
                        .await
                        .map(drop);
                    if last.is_ok() {
                        break;
                    }
                }
                last
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let failed = results.iter().filter(|r| r.is_err()).count();
    anyhow::ensure!(
        failed == 0,
        "filling: {failed} line items could not be added: {:?}",
        results.into_iter().find_map(Result::err)
    );
    Ok(sent.load(Ordering::Relaxed))
}

/// The entity id of key index `k` in run `run`.
pub fn entity_id(run: &str, k: u64) -> String {
    format!("{run}-{k}")
}

/// Carry out `op` on `entity`.
pub async fn call(
    client: &mut ShoppingCartClient<Channel>,
    op: Op,
    entity: String,
) -> Result<(), tonic::Status> {
    match op {
        Op::Increment | Op::AddOther => {
            let product = if op == Op::Increment { COUNTED } else { OTHER };
            client
                .add_item(AddLineItem {
                    user_id: entity,
                    product_id: product.into(),
                    name: product.into(),
                    quantity: 1,
                })
                .await
                .map(drop)
        }
        Op::RemoveOther => client
            .remove_item(RemoveLineItem {
                user_id: entity,
                product_id: OTHER.into(),
            })
            .await
            .map(drop),
        Op::Get => client
            .get_cart(GetShoppingCart { user_id: entity })
            .await
            .map(drop),
    }
}

/// Acknowledged and failed (outcome unknown) increments per entity.
#[derive(Debug)]
pub struct Acks {
    acked: Vec<AtomicU64>,
    uncertain: Vec<AtomicU64>,
}

impl Acks {
    pub fn new(n: u64) -> Self {
        Self {
            acked: (0..n).map(|_| AtomicU64::new(0)).collect(),
            uncertain: (0..n).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    pub fn record(&self, k: u64, ok: bool) {
        let v = if ok { &self.acked } else { &self.uncertain };
        if let Some(c) = v.get(k as usize) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn total_acked(&self) -> u64 {
        self.acked.iter().map(|a| a.load(Ordering::Relaxed)).sum()
    }
}

/// The outcome of the correctness check.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Verification {
    pub entities_checked: u64,
    pub acknowledged_increments: u64,
    pub counted: u64,
    /// Acknowledged increments missing from the final state (must be 0).
    pub lost: u64,
    /// Entities whose count exceeds acknowledged + failed increments (must be 0).
    pub phantom_entities: u64,
    /// Entities that could not be read.
    pub read_errors: u64,
    pub ok: bool,
}

/// Read every entity's counter and compare it with the acknowledgements: each entity must hold
/// at least its acknowledged increments and at most those plus the failed ones (whose outcome
/// the client cannot know).
pub async fn verify(channel: Channel, run: &str, acks: &Acks) -> Verification {
    use futures::StreamExt;
    let n = acks.acked.len() as u64;
    let results = futures::stream::iter(0..n)
        .map(|k| {
            let mut client = ShoppingCartClient::new(channel.clone());
            let entity = entity_id(run, k);
            async move {
                let mut last = None;
                for _ in 0..5 {
                    match client
                        .get_cart(GetShoppingCart {
                            user_id: entity.clone(),
                        })
                        .await
                    {
                        Ok(cart) => {
                            let q: i64 = cart
                                .into_inner()
                                .items
                                .iter()
                                .filter(|i| i.product_id == COUNTED)
                                .map(|i| i64::from(i.quantity))
                                .sum();
                            return (k, Ok(q.max(0) as u64));
                        }
                        Err(e) => last = Some(e),
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
                (k, Err(last))
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    let mut v = Verification {
        entities_checked: n,
        ..Verification::default()
    };
    for (k, result) in results {
        let acked = acks.acked[k as usize].load(Ordering::Relaxed);
        let uncertain = acks.uncertain[k as usize].load(Ordering::Relaxed);
        v.acknowledged_increments += acked;
        match result {
            Ok(q) => {
                v.counted += q;
                v.lost += acked.saturating_sub(q);
                if q > acked + uncertain {
                    v.phantom_entities += 1;
                }
            }
            Err(_) => v.read_errors += 1,
        }
    }
    v.ok = v.lost == 0 && v.phantom_entities == 0 && v.read_errors == 0;
    v
}
