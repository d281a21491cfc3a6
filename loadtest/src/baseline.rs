//! The architecture Statehouse replaces: a stateless gRPC service with the same shopping-cart
//! API that reads the entity from Cassandra, modifies it and writes it back on every command.
//!
//! * [`Variant::Plain`]: `SELECT` → modify → `INSERT`. Concurrent commands on one entity can
//!   overwrite each other (lost updates): fast, but not correct under concurrency.
//! * [`Variant::Lwt`]: `SELECT` → modify → `UPDATE … IF version = ?` (or `INSERT … IF NOT
//!   EXISTS`), a Paxos compare-and-set, retried on conflict: correct, and what a careful team
//!   would deploy.
//! * [`Variant::Memory`]: a mutex-guarded map, for tests of the load generator.
//!
//! The cart is stored as one row per entity: the encoded `Cart` message and a version.
//! Statements run at `LOCAL_QUORUM`, the compare-and-set at `LOCAL_SERIAL`; which Paxos
//! implementation serves it (`paxos_variant` v1 or v2) is the node's setting, which
//! `cargo xtask bench` sets to v2 and reports.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use prost::Message;
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::{Consistency, SerialConsistency};
use scylla::value::{CqlValue, Row};
use statehouse_schemas::shoppingcart::shopping_cart_server::{ShoppingCart, ShoppingCartServer};
use statehouse_schemas::shoppingcart::{
    AddLineItem, Cart, GetShoppingCart, LineItem, RemoveLineItem,
};
use tonic::{Request, Response, Status};

/// How state is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum Variant {
    Plain,
    Lwt,
    Memory,
}

/// Settings of the baseline server.
#[derive(Debug, Clone)]
pub struct Options {
    pub variant: Variant,
    pub contact_point: String,
    pub keyspace: String,
    /// Compare-and-set attempts per command (LWT) before answering `ABORTED`.
    pub max_attempts: u32,
}

/// Why a command failed.
#[derive(Debug)]
pub enum Error {
    InvalidQuantity(String),
    NotInCart(String),
    Database(String),
    /// LWT: every compare-and-set attempt lost to a concurrent writer.
    Contended(u32),
    Corrupt(String),
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        match e {
            Error::InvalidQuantity(p) => {
                Status::invalid_argument(format!("cannot add negative quantity of to item {p:?}"))
            }
            Error::NotInCart(p) => Status::failed_precondition(format!(
                "cannot remove item {p} because it is not in the cart"
            )),
            Error::Database(m) => Status::unavailable(format!("database: {m}")),
            Error::Contended(n) => Status::aborted(format!(
                "{n} compare-and-set attempts lost to concurrent writers"
            )),
            Error::Corrupt(m) => Status::data_loss(m),
        }
    }
}

fn db(e: impl std::fmt::Display) -> Error {
    Error::Database(e.to_string())
}

struct Cql {
    session: Session,
    select: PreparedStatement,
    insert: PreparedStatement,
    insert_if_absent: PreparedStatement,
    update_if: PreparedStatement,
}

enum Store {
    Memory(Mutex<HashMap<String, Vec<LineItem>>>),
    Cassandra(Box<Cql>),
}

/// The baseline service.
pub struct Baseline {
    variant: Variant,
    max_attempts: u32,
    store: Store,
}

impl Baseline {
    /// Connect (creating the keyspace and table if needed) and prepare the statements.
    pub async fn connect(options: &Options) -> anyhow::Result<Self> {
        let store = match options.variant {
            Variant::Memory => Store::Memory(Mutex::new(HashMap::new())),
            Variant::Plain | Variant::Lwt => {
                anyhow::ensure!(
                    options
                        .keyspace
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_'),
                    "keyspace {:?} must be letters, digits and _",
                    options.keyspace
                );
                // Reads and writes at LOCAL_QUORUM; the compare-and-set's Paxos rounds at
                // LOCAL_SERIAL (one data centre: linearizable, without cross-DC round trips).
                let profile = ExecutionProfile::builder()
                    .consistency(Consistency::LocalQuorum)
                    .serial_consistency(Some(SerialConsistency::LocalSerial))
                    .request_timeout(Some(Duration::from_secs(10)))
                    .build();
                let session = SessionBuilder::new()
                    .known_node(&options.contact_point)
                    .default_execution_profile_handle(profile.into_handle())
                    .build()
                    .await?;
                let ks = &options.keyspace;
                session
                    .query_unpaged(
                        format!(
                            "CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = \
                             {{'class': 'SimpleStrategy', 'replication_factor': 1}}"
                        ),
                        (),
                    )
                    .await?;
                session
                    .query_unpaged(
                        format!(
                            "CREATE TABLE IF NOT EXISTS {ks}.carts \
                             (user_id text PRIMARY KEY, items blob, version bigint)"
                        ),
                        (),
                    )
                    .await?;
                session.await_schema_agreement().await?;
                let select = session
                    .prepare(format!(
                        "SELECT items, version FROM {ks}.carts WHERE user_id = ?"
                    ))
                    .await?;
                let insert = session
                    .prepare(format!(
                        "INSERT INTO {ks}.carts (user_id, items, version) VALUES (?, ?, ?)"
                    ))
                    .await?;
                let insert_if_absent = session
                    .prepare(format!(
                        "INSERT INTO {ks}.carts (user_id, items, version) VALUES (?, ?, ?) IF NOT EXISTS"
                    ))
                    .await?;
                let update_if = session
                    .prepare(format!(
                        "UPDATE {ks}.carts SET items = ?, version = ? WHERE user_id = ? IF version = ?"
                    ))
                    .await?;
                Store::Cassandra(Box::new(Cql {
                    session,
                    select,
                    insert,
                    insert_if_absent,
                    update_if,
                }))
            }
        };
        Ok(Self {
            variant: options.variant,
            max_attempts: options.max_attempts.max(1),
            store,
        })
    }

    /// Serve until `shutdown` resolves.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> anyhow::Result<()> {
        tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .concurrency_limit_per_connection(1024)
            .add_service(ShoppingCartServer::new(self))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                shutdown,
            )
            .await?;
        Ok(())
    }

    /// Bind `addr` and serve until `shutdown` resolves.
    pub async fn serve_on(
        self,
        addr: SocketAddr,
        shutdown: impl Future<Output = ()> + Send,
    ) -> anyhow::Result<()> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        self.serve(listener, shutdown).await
    }

    async fn read(&self, user: &str) -> Result<(Vec<LineItem>, Option<i64>), Error> {
        match &self.store {
            Store::Memory(map) => Ok((
                map.lock()
                    .map_err(|_| db("poisoned"))?
                    .get(user)
                    .cloned()
                    .unwrap_or_default(),
                None,
            )),
            Store::Cassandra(cql) => {
                let rows = cql
                    .session
                    .execute_unpaged(&cql.select, (user,))
                    .await
                    .map_err(db)?
                    .into_rows_result()
                    .map_err(db)?;
                let row = rows
                    .maybe_first_row::<(Option<Vec<u8>>, Option<i64>)>()
                    .map_err(db)?;
                match row {
                    None => Ok((Vec::new(), None)),
                    Some((items, version)) => {
                        let cart = Cart::decode(items.unwrap_or_default().as_slice())
                            .map_err(|e| Error::Corrupt(format!("cart {user}: {e}")))?;
                        Ok((cart.items, Some(version.unwrap_or(0))))
                    }
                }
            }
        }
    }

    /// Read → modify → write, once (plain) or until the compare-and-set wins (LWT).
    async fn modify(
        &self,
        user: &str,
        change: impl Fn(&mut Vec<LineItem>) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let cql = match &self.store {
            Store::Memory(map) => {
                let mut map = map.lock().map_err(|_| db("poisoned"))?;
                let items = map.entry(user.to_string()).or_default();
                let mut next = items.clone();
                change(&mut next)?;
                *items = next;
                return Ok(());
            }
            Store::Cassandra(cql) => cql,
        };
        for attempt in 0..self.max_attempts {
            let (mut items, version) = self.read(user).await?;
            change(&mut items)?;
            let blob = Cart { items }.encode_to_vec();
            let next = version.unwrap_or(0) + 1;
            if self.variant == Variant::Plain {
                cql.session
                    .execute_unpaged(&cql.insert, (user, blob, next))
                    .await
                    .map_err(db)?;
                return Ok(());
            }
            let result = match version {
                None => cql
                    .session
                    .execute_unpaged(&cql.insert_if_absent, (user, blob, next))
                    .await
                    .map_err(db)?,
                Some(v) => cql
                    .session
                    .execute_unpaged(&cql.update_if, (blob, next, user, v))
                    .await
                    .map_err(db)?,
            };
            let row = result
                .into_rows_result()
                .map_err(db)?
                .maybe_first_row::<Row>()
                .map_err(db)?;
            let applied = row
                .and_then(|r| r.columns.into_iter().next().flatten())
                .is_some_and(|c| c == CqlValue::Boolean(true));
            if applied {
                return Ok(());
            }
            // Lost the race: back off a little (growing, jittered by the attempt) and retry.
            let micros = 200 * u64::from(attempt + 1) + u64::from(attempt * 37 % 200);
            tokio::time::sleep(Duration::from_micros(micros)).await;
        }
        Err(Error::Contended(self.max_attempts))
    }
}

#[tonic::async_trait]
impl ShoppingCart for Baseline {
    async fn add_item(&self, request: Request<AddLineItem>) -> Result<Response<()>, Status> {
        let add = request.into_inner();
        if add.quantity <= 0 {
            return Err(Error::InvalidQuantity(add.product_id).into());
        }
        self.modify(&add.user_id, |items| {
            match items.iter_mut().find(|i| i.product_id == add.product_id) {
                Some(item) => item.quantity = item.quantity.saturating_add(add.quantity),
                None => items.push(LineItem {
                    product_id: add.product_id.clone(),
                    name: add.name.clone(),
                    quantity: add.quantity,
                }),
            }
            Ok(())
        })
        .await?;
        Ok(Response::new(()))
    }

    async fn remove_item(&self, request: Request<RemoveLineItem>) -> Result<Response<()>, Status> {
        let remove = request.into_inner();
        self.modify(&remove.user_id, |items| {
            let before = items.len();
            items.retain(|i| i.product_id != remove.product_id);
            if items.len() == before {
                return Err(Error::NotInCart(remove.product_id.clone()));
            }
            Ok(())
        })
        .await?;
        Ok(Response::new(()))
    }

    async fn get_cart(&self, request: Request<GetShoppingCart>) -> Result<Response<Cart>, Status> {
        let (items, _) = self.read(&request.into_inner().user_id).await?;
        Ok(Response::new(Cart { items }))
    }
}
