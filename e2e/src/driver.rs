//! Clients that write unique tokens to entities through the gateway and record each outcome:
//! the shopping cart's `AddItem` ([`Carts`], the default) or any other [`Api`] (the value
//! entities of `crate::values`).
//!
//! Every command carries a unique token, which is also its idempotency key; a command whose
//! outcome is unknown (UNAVAILABLE, a deadline, a cancelled or broken call, a crashed entity
//! stream) is retried with the same key until it is answered or the client gives up.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use statehouse_schemas::shoppingcart::shopping_cart_client::ShoppingCartClient;
use statehouse_schemas::shoppingcart::{AddLineItem, GetShoppingCart};
use tokio::sync::Mutex;
use tonic::transport::Channel;

/// What the driver knows of each command (token = idempotency key).
#[derive(Debug, Default)]
pub struct History {
    /// Acknowledged commands: token → entity.
    pub acked: HashMap<String, String>,
    /// Commands answered with a definite failure.
    pub failed: HashSet<String>,
    /// Commands whose outcome stayed unknown (every retry failed).
    pub unknown: HashSet<String>,
    /// Per entity, the tokens in the order they were sent.
    pub sent: BTreeMap<String, Vec<String>>,
}

/// Settings of a [`Driver`].
#[derive(Debug, Clone)]
pub struct Options {
    pub clients: usize,
    /// Entities ([`Carts`]: shared by all clients; per client for APIs that own theirs).
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

/// The API a driver writes through.
pub trait Api: Send + Sized + 'static {
    /// A client of the gateway at `gateway` (`host:port`).
    fn connect(gateway: &str) -> impl Future<Output = Self> + Send;
    /// Write `token` to entity `id`, with `token` as the idempotency key.
    fn write(
        &mut self,
        id: &str,
        token: &str,
        timeout: Duration,
    ) -> impl Future<Output = Result<(), tonic::Status>> + Send;
    /// Read entity `id` (is it served?).
    fn read(
        &mut self,
        id: &str,
        timeout: Duration,
    ) -> impl Future<Output = Result<(), tonic::Status>> + Send;
    /// The entity of command `n` of client `client`.
    fn entity(options: &Options, client: usize, n: u64, seed: u64) -> String;
    /// Every entity the clients may write.
    fn entities(options: &Options) -> Vec<String>;
}

/// The shopping cart: `AddItem` of the token as a product; carts shared by all clients.
pub struct Carts(ShoppingCartClient<Channel>);

impl Api for Carts {
    async fn connect(gateway: &str) -> Self {
        Carts(
            ShoppingCartClient::connect(format!("http://{gateway}"))
                .await
                .expect("connecting to the gateway"),
        )
    }

    async fn write(
        &mut self,
        id: &str,
        token: &str,
        timeout: Duration,
    ) -> Result<(), tonic::Status> {
        let mut request = tonic::Request::new(AddLineItem {
            user_id: id.into(),
            product_id: token.into(),
            name: "token".into(),
            quantity: 1,
        });
        request.set_timeout(timeout);
        request
            .metadata_mut()
            .insert("idempotency-key", token.parse().expect("ascii token"));
        self.0.add_item(request).await.map(|_| ())
    }

    async fn read(&mut self, id: &str, timeout: Duration) -> Result<(), tonic::Status> {
        let mut request = tonic::Request::new(GetShoppingCart { user_id: id.into() });
        request.set_timeout(timeout);
        self.0.get_cart(request).await.map(|_| ())
    }

    fn entity(options: &Options, client: usize, n: u64, seed: u64) -> String {
        format!(
            "cart-{}",
            (client as u64 * 7919 + n * 31 + seed) % options.carts as u64
        )
    }

    fn entities(options: &Options) -> Vec<String> {
        (0..options.carts).map(|i| format!("cart-{i}")).collect()
    }
}

/// Whether a failed attempt left the outcome unknown (so the command is retried with its key).
fn is_unknown(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
    ) || (status.code() == tonic::Code::Unknown && status.message().starts_with("Unexpected"))
}

/// One command, retried with the same idempotency key. Ok(true) = acknowledged, Ok(false) =
/// definite failure, Err = unknown.
pub async fn write<A: Api>(
    client: &mut A,
    id: &str,
    token: &str,
    options: &Options,
) -> Result<bool, String> {
    let deadline = Instant::now() + options.give_up;
    let mut last = String::new();
    while Instant::now() < deadline {
        match client.write(id, token, options.attempt_timeout).await {
            Ok(()) => return Ok(true),
            Err(s) if is_unknown(&s) => {
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

/// Running clients.
pub struct Driver {
    history: Arc<Mutex<History>>,
    acked: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Driver {
    /// Start `options.clients` shopping-cart clients against the gateway at `gateway`.
    pub async fn start(gateway: &str, options: Options, seed: u64) -> Self {
        Self::start_with::<Carts>(gateway, options, seed).await
    }

    /// Start `options.clients` clients of `A` against the gateway at `gateway` (`host:port`).
    pub async fn start_with<A: Api>(gateway: &str, options: Options, seed: u64) -> Self {
        let history = Arc::new(Mutex::new(History::default()));
        let acked = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for c in 0..options.clients {
            let mut client = A::connect(gateway).await;
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
                    let id = A::entity(&options, c, n, seed);
                    history
                        .lock()
                        .await
                        .sent
                        .entry(id.clone())
                        .or_default()
                        .push(token.clone());
                    let outcome = write(&mut client, &id, &token, &options).await;
                    let mut h = history.lock().await;
                    match outcome {
                        Ok(true) => {
                            acked.fetch_add(1, Ordering::Relaxed);
                            h.acked.insert(token, id);
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

/// How long until every cart `cart-0 .. cart-<carts-1>` answers a GetCart through the gateway.
///
/// # Panics
/// If some cart does not answer within `limit`.
pub async fn until_all_answer(gateway: &str, carts: usize, limit: Duration) -> Duration {
    let options = Options {
        carts,
        ..Options::default()
    };
    until_all_answer_with::<Carts>(gateway, &Carts::entities(&options), limit).await
}

/// How long until every entity of `ids` answers a read through the gateway.
///
/// # Panics
/// If some entity does not answer within `limit`.
pub async fn until_all_answer_with<A: Api>(
    gateway: &str,
    ids: &[String],
    limit: Duration,
) -> Duration {
    let started = Instant::now();
    let mut client = A::connect(gateway).await;
    let mut pending: Vec<&String> = ids.iter().collect();
    while !pending.is_empty() {
        assert!(
            started.elapsed() < limit,
            "entities {pending:?} did not answer within {limit:?}"
        );
        let mut still = Vec::new();
        for id in pending {
            if client.read(id, Duration::from_secs(2)).await.is_err() {
                still.push(id);
            }
        }
        pending = still;
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    started.elapsed()
}
