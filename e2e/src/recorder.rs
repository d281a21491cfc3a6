//! Clients that read and write shopping carts at a fixed rate and record every operation with
//! its invocation and completion times, for the linearizability checker
//! ([`crate::linearizable`]) and the journal checker ([`crate::checker`]).
//!
//! Each client issues one operation every `1 / rate` s on a random cart: `AddItem` of a unique
//! token (also its idempotency key, retried on an unknown outcome like [`crate::driver`]) or
//! `GetCart`. A read that failed tells nothing and is not recorded.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message as _;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use statehouse_schemas::shoppingcart::GetShoppingCart;
use statehouse_schemas::shoppingcart::shopping_cart_client::ShoppingCartClient;
use statehouse_schemas::statehouse::processor::v1::HandleRequest;
use tokio::sync::Mutex;

use crate::checker::{self, Report};
use crate::driver::{self, Api, Carts, History};
use crate::linearizable::{self, Kind, Op, Verdict};

/// A `GetCart` of `cart` for one processor's internal API (`Processor/Handle`), which it answers
/// itself or refuses — no routing: how the fault tests ask a particular processor.
pub fn direct_get_cart(cart: &str) -> HandleRequest {
    HandleRequest {
        service: "shopping-cart".into(),
        method: "/com.example.shoppingcart.ShoppingCart/GetCart".into(),
        entity_id: cart.into(),
        payload: Bytes::from(
            GetShoppingCart {
                user_id: cart.into(),
            }
            .encode_to_vec(),
        ),
        partition: -1,
        ..HandleRequest::default()
    }
}

/// Settings of a [`Recorder`].
#[derive(Debug, Clone)]
pub struct Options {
    pub clients: usize,
    /// Carts `cart-0 .. cart-<carts-1>`, shared by all clients.
    pub carts: usize,
    /// Operations per second per client.
    pub rate: f64,
    /// The share of reads.
    pub reads: f64,
    /// One attempt's timeout; a write is retried with its key until `give_up`.
    pub attempt_timeout: Duration,
    pub give_up: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            clients: 4,
            carts: 200,
            rate: 10.0,
            reads: 0.5,
            attempt_timeout: Duration::from_secs(2),
            give_up: Duration::from_secs(60),
        }
    }
}

/// What the clients recorded.
#[derive(Default)]
pub struct Recorded {
    /// For the linearizability check.
    pub ops: Vec<Op>,
    /// For the journal checker (writes only).
    pub history: History,
}

impl Recorded {
    /// Take in the writes of another driver that ran (and ended) between `started` and
    /// `ended`, before these clients: each gets that interval (their own times were not kept;
    /// a wider interval only loosens the check).
    pub fn absorb(&mut self, other: History, started: Instant, ended: Instant) {
        for (token, cart) in &other.acked {
            self.ops.push(Op {
                key: cart.clone(),
                kind: Kind::Add(token.clone()),
                invoked: started,
                completed: Some(ended),
            });
        }
        for (cart, tokens) in &other.sent {
            for token in tokens.iter().filter(|t| other.unknown.contains(*t)) {
                self.ops.push(Op {
                    key: cart.clone(),
                    kind: Kind::Add(token.clone()),
                    invoked: started,
                    completed: None,
                });
            }
        }
        self.history.acked.extend(other.acked);
        self.history.failed.extend(other.failed);
        self.history.unknown.extend(other.unknown);
        for (cart, tokens) in other.sent {
            self.history.sent.entry(cart).or_default().extend(tokens);
        }
    }

    /// The journal checker's counters and the linearizability verdict of what was recorded.
    pub async fn check(
        &self,
        stack: &statehouse_test_support::stack::Stack,
        partitions: u32,
    ) -> (Report, Verdict) {
        let report = checker::check_stack(stack, partitions, &self.history).await;
        let verdict = linearizable::check(&self.ops, &self.history.failed);
        (report, verdict)
    }
}

/// Fail unless something was written and read, every journal counter is 0 and every key's
/// history is linearizable.
///
/// # Panics
/// As said.
pub fn assert_clean(report: &Report, verdict: &Verdict) {
    assert!(
        report.acknowledged > 0 && verdict.reads > 0,
        "{report}\n{verdict}"
    );
    assert_eq!(report.anomalies(), (0, 0, 0, 0, 0, 0), "{report}");
    assert_eq!(verdict.violations, 0, "{verdict}");
}

/// Running clients.
pub struct Recorder {
    recorded: Arc<Mutex<Recorded>>,
    acked: Arc<AtomicU64>,
    reads: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Recorder {
    /// Start `options.clients` clients against the gateway at `gateway` (`host:port`).
    pub async fn start(gateway: &str, options: Options, seed: u64) -> Self {
        let recorded = Arc::new(Mutex::new(Recorded::default()));
        let (acked, reads) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for c in 0..options.clients {
            let mut writer = Carts::connect(gateway).await;
            let mut reader = ShoppingCartClient::connect(format!("http://{gateway}"))
                .await
                .expect("connecting to the gateway");
            let (recorded, acked, reads, stop, options) = (
                Arc::clone(&recorded),
                Arc::clone(&acked),
                Arc::clone(&reads),
                Arc::clone(&stop),
                options.clone(),
            );
            let write_options = driver::Options {
                clients: options.clients,
                carts: options.carts,
                attempt_timeout: options.attempt_timeout,
                give_up: options.give_up,
            };
            tasks.push(tokio::spawn(async move {
                let mut rng = StdRng::seed_from_u64(seed ^ ((c as u64 + 1) * 0x9E37_79B9));
                let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / options.rate));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut n: u64 = 0;
                while !stop.load(Ordering::Acquire) {
                    tick.tick().await;
                    n += 1;
                    let cart = format!("cart-{}", rng.random_range(0..options.carts));
                    if rng.random_bool(options.reads) {
                        let invoked = Instant::now();
                        let mut request = tonic::Request::new(GetShoppingCart {
                            user_id: cart.clone(),
                        });
                        request.set_timeout(options.attempt_timeout);
                        if let Ok(answer) = reader.get_cart(request).await {
                            let completed = Instant::now();
                            let set: BTreeSet<String> = answer
                                .into_inner()
                                .items
                                .into_iter()
                                .map(|i| i.product_id)
                                .collect();
                            reads.fetch_add(1, Ordering::Relaxed);
                            recorded.lock().await.ops.push(Op {
                                key: cart,
                                kind: Kind::Read(set),
                                invoked,
                                completed: Some(completed),
                            });
                        }
                        continue;
                    }
                    let token = format!("r{seed}-c{c}-{n}");
                    recorded
                        .lock()
                        .await
                        .history
                        .sent
                        .entry(cart.clone())
                        .or_default()
                        .push(token.clone());
                    let invoked = Instant::now();
                    let outcome = driver::write(&mut writer, &cart, &token, &write_options).await;
                    let completed = Instant::now();
                    let mut r = recorded.lock().await;
                    let completed = match outcome {
                        Ok(true) => {
                            acked.fetch_add(1, Ordering::Relaxed);
                            r.history.acked.insert(token.clone(), cart.clone());
                            Some(completed)
                        }
                        Ok(false) => {
                            r.history.failed.insert(token);
                            continue;
                        }
                        Err(_) => {
                            r.history.unknown.insert(token.clone());
                            None
                        }
                    };
                    r.ops.push(Op {
                        key: cart,
                        kind: Kind::Add(token),
                        invoked,
                        completed,
                    });
                }
            }));
        }
        Self {
            recorded,
            acked,
            reads,
            stop,
            tasks,
        }
    }

    /// Acknowledged writes so far.
    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::Relaxed)
    }

    /// Answered reads so far.
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    /// Add an operation observed elsewhere (e.g. a read asked of one processor directly).
    pub async fn record(&self, op: Op) {
        self.recorded.lock().await.ops.push(op);
    }

    /// Stop the clients (each finishes its operation) and return what they recorded.
    pub async fn stop(self) -> Recorded {
        self.stop.store(true, Ordering::Release);
        for task in self.tasks {
            task.await.expect("a client task panicked");
        }
        Arc::try_unwrap(self.recorded)
            .unwrap_or_else(|_| panic!("no client left"))
            .into_inner()
    }
}
