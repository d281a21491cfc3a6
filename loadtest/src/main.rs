//! `statehouse-loadtest`: measures Statehouse from a client's point of view.
//!
//! Today it has one scenario, `latency`: one client sends `AddItem` commands to the shopping
//! cart through the gateway, one after the other, and prints the latency percentiles
//! (HdrHistogram) — the figure of a single durable command (routing, the user function, the
//! Kafka transaction). The open/closed-loop scenarios, baselines and reports of the benchmark
//! issue build on this binary.

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;
use statehouse_schemas::shoppingcart::shopping_cart_client::ShoppingCartClient;
use statehouse_schemas::shoppingcart::{AddLineItem, GetShoppingCart};

#[derive(Parser)]
#[command(
    name = "statehouse-loadtest",
    about = "Measure Statehouse from a client"
)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// One client, sequential commands: latency percentiles of AddItem (and GetCart).
    Latency {
        /// The gateway.
        #[arg(long, default_value = "http://127.0.0.1:9000")]
        target: String,
        /// Measured calls per command type.
        #[arg(long, default_value_t = 3000)]
        calls: u32,
        /// Unmeasured warm-up calls.
        #[arg(long, default_value_t = 200)]
        warmup: u32,
        /// Carts to spread the commands over.
        #[arg(long, default_value_t = 100)]
        carts: u32,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().scenario {
        Scenario::Latency {
            target,
            calls,
            warmup,
            carts,
        } => latency(&target, calls, warmup, carts).await,
    }
}

async fn latency(target: &str, calls: u32, warmup: u32, carts: u32) -> anyhow::Result<()> {
    let mut client = ShoppingCartClient::connect(target.to_string())
        .await
        .with_context(|| format!("connecting to {target}"))?;
    let run = format!("{:x}", std::process::id());
    let mut add = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut get = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let started = Instant::now();
    for i in 0..warmup + calls {
        let cart = format!("lt-{run}-{}", i % carts);
        let t = Instant::now();
        client
            .add_item(AddLineItem {
                user_id: cart.clone(),
                product_id: format!("p{}", i % 7),
                name: "item".into(),
                quantity: 1,
            })
            .await
            .context("AddItem")?;
        let add_us = t.elapsed().as_micros() as u64;
        let t = Instant::now();
        client
            .get_cart(GetShoppingCart { user_id: cart })
            .await
            .context("GetCart")?;
        let get_us = t.elapsed().as_micros() as u64;
        if i >= warmup {
            add.record(add_us.max(1))?;
            get.record(get_us.max(1))?;
        }
    }
    let elapsed = started.elapsed();
    println!(
        "one client, {calls} measured calls each (after {warmup} warm-up), {carts} carts, {:.1}s",
        elapsed.as_secs_f64()
    );
    println!("| command | p50 | p90 | p99 | p99.9 | max |");
    println!("|---|---|---|---|---|---|");
    for (name, h) in [("AddItem", &add), ("GetCart", &get)] {
        let ms = |q: f64| Duration::from_micros(h.value_at_quantile(q)).as_secs_f64() * 1000.0;
        println!(
            "| {name} | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms |",
            ms(0.5),
            ms(0.9),
            ms(0.99),
            ms(0.999),
            h.max() as f64 / 1000.0
        );
    }
    Ok(())
}
