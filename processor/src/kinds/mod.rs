//! The entity kinds and actions, each the protocol logic of one Cloudstate service as a pure
//! state machine (message in → state change + actions out), with unit tests that need no
//! Kafka, no Cassandra and no user function.
//!
//! * [`event_sourced`] and [`value`] implement [`crate::entity::Kind`]: the generic entity
//!   mailbox runs them; [`journaled`] is what the two share (one command at a time, records
//!   committed through the partition's journal before the answer).
//! * [`action`] maps action commands and responses; `crate::action` runs the calls.

pub(crate) mod action;
pub(crate) mod crdt;
pub(crate) mod event_sourced;
pub(crate) mod journaled;
pub(crate) mod value;

#[cfg(test)]
pub(crate) mod testing {
    //! What the kinds' unit tests share: methods from the shopping cart descriptors, entities,
    //! commands and stamps.

    use std::sync::Arc;

    use bytes::Bytes;
    use statehouse_runtime::method_index::{EntityInfo, MethodIndex, MethodInfo};
    use statehouse_schemas::avro;
    use statehouse_schemas::cloudstate::Entity;

    use crate::command::Command;
    use crate::entity::{EntityRef, Stamp};

    pub(crate) const CART: &str = "com.example.shoppingcart.ShoppingCart";

    /// A method of the shopping cart, served as an entity of `entity_type`.
    pub(crate) fn method(name: &str, entity_type: &str, persistence_id: &str) -> Arc<MethodInfo> {
        let index = MethodIndex::build(
            statehouse_schemas::FILE_DESCRIPTOR_SET,
            &[Entity {
                entity_type: entity_type.into(),
                service_name: CART.into(),
                persistence_id: persistence_id.into(),
                passivation_strategy: None,
            }],
            &[entity_type],
        )
        .expect("the cart indexes");
        Arc::clone(index.method_by_name(CART, name).expect("a cart method"))
    }

    pub(crate) fn entity(method: &MethodInfo, id: &str) -> EntityRef {
        EntityRef {
            key: format!("{}|{id}", method.entity.persistence_id),
            id: id.into(),
            info: Arc::<EntityInfo>::clone(&method.entity),
        }
    }

    pub(crate) fn command(method: &Arc<MethodInfo>, id: &str, key: Option<&str>) -> Command {
        Command {
            method: Arc::clone(method),
            entity_id: id.into(),
            payload: Bytes::from(format!("\x0a{}{id}", char::from(id.len() as u8))),
            type_url: None,
            metadata: None,
            idempotency_key: key.map(str::to_string),
            deadline: None,
            traceparent: Some("00-trace-span-01".into()),
            call_traceparent: None,
            hops: 0,
        }
    }

    pub(crate) fn writer() -> avro::Writer {
        avro::Writer {
            processor_id: "proc-1".into(),
            epoch: 7,
        }
    }

    pub(crate) fn command_id() -> String {
        "cmd-1".into()
    }

    /// A stamp at time 1000 by [`writer`], command id `cmd-1`.
    pub(crate) fn stamp(writer: &avro::Writer) -> Stamp<'_> {
        Stamp::new("svc", writer, 1_000, &command_id)
    }
}
