//! Write Cloudstate user functions in Rust.
//!
//! A user function is the gRPC server a Cloudstate proxy — the Statehouse
//! processor — calls: it answers discovery (`cloudstate.EntityDiscovery`) and
//! runs entities over the entity protocols (protocol 0.2). This crate
//! implements that side of the protocol; you write the business logic.
//!
//! Event-sourced entities are supported ([`eventsourced`]); value entities,
//! CRDTs and actions would be further modules registered on the same
//! [`Service`].
//!
//! # Example
//!
//! A shopping cart that only counts items (see
//! `samples/shopping-cart` for the complete one):
//!
//! ```no_run
//! use prost_types::Any;
//! use statehouse_schemas::shoppingcart::{AddLineItem, Cart, LineItem, persistence};
//! use statehouse_sdk::{CommandContext, EventSourcedEntity, Failure, Reply, Service, any};
//!
//! struct Counter;
//!
//! impl EventSourcedEntity for Counter {
//!     type State = i32;
//!
//!     fn persistence_id(&self) -> &str { "counter" }
//!
//!     fn command(&self, ctx: &mut CommandContext<'_>, total: &i32, name: &str, payload: &Any)
//!         -> Result<Reply, Failure> {
//!         match name {
//!             "AddItem" => {
//!                 let add: AddLineItem = any::unpack(payload)?;
//!                 let item = persistence::LineItem { quantity: add.quantity, ..Default::default() };
//!                 ctx.emit(&persistence::ItemAdded { item: Some(item) });
//!                 Ok(Reply::empty())
//!             }
//!             "GetCart" => {
//!                 let items = vec![LineItem { quantity: *total, ..Default::default() }];
//!                 Ok(Reply::message(&Cart { items }))
//!             }
//!             other => Err(Failure::new(format!("unknown command {other}"))),
//!         }
//!     }
//!
//!     fn apply(&self, total: &mut i32, event: &Any) -> Result<(), Failure> {
//!         let added: persistence::ItemAdded = any::unpack(event)?;
//!         *total += added.item.map_or(0, |item| item.quantity);
//!         Ok(())
//!     }
//! }
//!
//! # async fn run() -> Result<(), statehouse_sdk::Error> {
//! Service::new("counter", "1.0.0")
//!     .descriptors(statehouse_schemas::FILE_DESCRIPTOR_SET)
//!     .event_sourced("com.example.shoppingcart.ShoppingCart", Counter)
//!     .serve("127.0.0.1:8080".parse().expect("a socket address"))
//!     .await
//! # }
//! ```
//!
//! Payloads travel as `google.protobuf.Any` with `type.googleapis.com/` type
//! URLs; [`any`] packs and unpacks them from `prost` messages.

pub mod any;
mod descriptor;
mod discovery;
mod error;
pub mod eventsourced;
pub mod projection;
mod reply;
mod service;

pub use error::Error;
pub use eventsourced::{CommandContext, Entity as EventSourcedEntity};
pub use projection::Projection;
pub use reply::{Failure, Forward, Reply, SideEffect};
pub use service::{SUPPORT_LIBRARY_NAME, Service};
/// Metadata on commands, replies, forwards and side effects.
pub use statehouse_schemas::cloudstate::{Metadata, MetadataEntry, metadata_entry};
