//! Clients that add unique tokens to carts through the gateway and record each outcome.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use statehouse_schemas::shoppingcart::AddLineItem;
use statehouse_schemas::shoppingcart::shopping_cart_client::ShoppingCartClient;
use tokio::sync::Mutex;
use tonic::transport::Channel;

/// What the driver knows of each command (token = idempotency key = the item's product id).
#[derive(Debug, Default)]
pub struct History {
    /// Acknowledged commands: token → cart.
    pub acked: HashMap<String, String>,
    /// Commands answered with a definite failure.
    pub failed: HashSet<String>,
    /// Commands whose outcome stayed unknown (every retry failed).
    pub unknown: HashSet<String>,
}

/// Settings of a [`Driver`].
#[derive(Debug, Clone)]
pub struct Options {
    pub clients: usize,
    pub carts: usize,
    /// A client gives up on one attempt after this long and retries with the same key.
    pub attempt_timeout: Duration,
    /// A client gives up on a command after this long (outcome unknown).
    pub give_up: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            clients: 8,
            carts: 40,
            attempt_timeout: Duration::from_secs(3),
            give_up: Duration::from_secs(60),
        }
    }
}

/// Running clients.
pub struct Driver {
    history: Arc<Mutex<History>>,
    acked: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// One command, retried with the same idempotency key. Ok(true) = acknowledged, Ok(false) =
/// definite failure, Err = unknown.
pub async fn add_item(
    client: &mut ShoppingCartClient<Channel>,
    cart: &str,
    token: &str,
    options: &Options,
) -> Result<bool, String> {
    let deadline = Instant::now() + options.give_up;
    let mut last = String::new();
    while Instant::now() < deadline {
        let mut request = tonic::Request::new(AddLineItem {
            user_id: cart.into(),
            product_id: token.into(),
            name: "token".into(),
            quantity: 1,
        });
        request.set_timeout(options.attempt_timeout);
        request
            .metadata_mut()
            .insert("idempotency-key", token.parse().expect("ascii token"));
        match client.add_item(request).await {
            Ok(_) => return Ok(true),
            Err(s)
                if matches!(
                    s.code(),
                    tonic::Code::Unavailable
                        | tonic::Code::DeadlineExceeded
                        | tonic::Code::Cancelled
                ) || (s.code() == tonic::Code::Unknown
                    && s.message().starts_with("Unexpected entity")) =>
            {
                last = format!("{s:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(s) => {
                eprintln!("definite failure of {token}: {s:?}");
                return Ok(false);
            }
        }
    }
    Err(last)
}

impl Driver {
    /// Start `options.clients` clients against the gateway at `gateway` (`host:port`).
    pub async fn start(gateway: &str, options: Options, seed: u64) -> Self {
        let history = Arc::new(Mutex::new(History::default()));
        let acked = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for c in 0..options.clients {
            let mut client = ShoppingCartClient::connect(format!("http://{gateway}"))
                .await
                .expect("connecting to the gateway");
            let (history, acked, stop, options) = (
                history.clone(),
                acked.clone(),
                stop.clone(),
                options.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut n: u64 = 0;
                while !stop.load(Ordering::Acquire) {
                    n += 1;
                    let token = format!("s{seed}-c{c}-{n}");
                    let cart = format!(
                        "cart-{}",
                        (c as u64 * 7919 + n * 31 + seed) % options.carts as u64
                    );
                    let outcome = add_item(&mut client, &cart, &token, &options).await;
                    let mut h = history.lock().await;
                    match outcome {
                        Ok(true) => {
                            acked.fetch_add(1, Ordering::Relaxed);
                            h.acked.insert(token, cart);
                        }
                        Ok(false) => {
                            h.failed.insert(token);
                        }
                        Err(_) => {
                            h.unknown.insert(token);
                        }
                    }
                }
            }));
        }
        Self {
            history,
            acked,
            stop,
            tasks,
        }
    }

    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::Relaxed)
    }

    /// Stop the clients (each finishes its command) and return the history.
    pub async fn stop(self) -> History {
        self.stop.store(true, Ordering::Release);
        for task in self.tasks {
            task.await.expect("a client task panicked");
        }
        Arc::try_unwrap(self.history)
            .expect("no client left")
            .into_inner()
    }
}

/// How long until every cart `cart-0 .. cart-<carts-1>` answers a GetCart through the gateway.
///
/// # Panics
/// If some cart does not answer within `limit`.
pub async fn until_all_answer(gateway: &str, carts: usize, limit: Duration) -> Duration {
    use statehouse_schemas::shoppingcart::GetShoppingCart;
    let started = Instant::now();
    let mut client = ShoppingCartClient::connect(format!("http://{gateway}"))
        .await
        .expect("connecting to the gateway");
    let mut pending: Vec<usize> = (0..carts).collect();
    while !pending.is_empty() {
        assert!(
            started.elapsed() < limit,
            "carts {pending:?} did not answer within {limit:?}"
        );
        let mut still = Vec::new();
        for i in pending {
            let mut request = tonic::Request::new(GetShoppingCart {
                user_id: format!("cart-{i}"),
            });
            request.set_timeout(Duration::from_secs(2));
            if client.get_cart(request).await.is_err() {
                still.push(i);
            }
        }
        pending = still;
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    started.elapsed()
}

impl Driver {
    /// Wait until `more` further commands were acknowledged.
    ///
    /// # Panics
    /// If that takes longer than `limit` (`what` names the fault it follows).
    pub async fn wait_progress(&self, more: u64, limit: Duration, what: &str) {
        let target = self.acked() + more;
        let deadline = Instant::now() + limit;
        while self.acked() < target {
            assert!(
                Instant::now() < deadline,
                "no progress within {limit:?} after the {what}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
