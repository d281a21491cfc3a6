//! A test entity in the spirit of the Cloudstate TCK model: its state is the
//! concatenation of its events, each a one-character `Value`.

use std::time::Duration;

use prost_types::Any;
use statehouse_sdk::{
    CommandContext, EventSourcedEntity, Failure, Forward, Reply, Service, SideEffect, any,
};

/// The registered gRPC service (any service in the descriptor set will do).
pub(crate) const SERVICE: &str = "com.example.shoppingcart.ShoppingCart";
pub(crate) const PERSISTENCE_ID: &str = "sdk-model";

/// `statehouse.sdk.test.Value`: the payload of every command, reply, event
/// and snapshot of the model.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Value {
    #[prost(string, tag = "1")]
    pub(crate) value: String,
}

impl prost::Name for Value {
    const NAME: &'static str = "Value";
    const PACKAGE: &'static str = "statehouse.sdk.test";
}

pub(crate) fn value(value: &str) -> Any {
    any::pack(&Value {
        value: value.to_owned(),
    })
}

/// Commands (the argument is a `Value`):
/// * `Get`: reply with the state;
/// * `Emit`: one event per character, reply with the state after them;
/// * `Fail`: emit, add a side effect, then `ctx.fail(arg)`;
/// * `Reject`: return `Err(Failure(arg))`;
/// * `Forward`: emit `F`, a synchronous side effect and a forward to `Get`;
/// * `Poison`: emit an event `apply` rejects;
/// * `Panic`: panic with `arg`.
pub(crate) struct Model;

impl EventSourcedEntity for Model {
    type State = String;

    fn persistence_id(&self) -> &str {
        PERSISTENCE_ID
    }

    fn snapshot_every(&self) -> u64 {
        5
    }

    fn passivation_timeout(&self) -> Option<Duration> {
        Some(Duration::from_millis(100))
    }

    fn command(
        &self,
        ctx: &mut CommandContext<'_>,
        state: &String,
        name: &str,
        payload: &Any,
    ) -> Result<Reply, Failure> {
        let arg = any::unpack::<Value>(payload)?.value;
        let one = |value: &str| Value {
            value: value.to_owned(),
        };
        match name {
            "Get" => Ok(Reply::message(&one(state))),
            "Emit" => {
                for c in arg.chars() {
                    ctx.emit(&one(&c.to_string()));
                }
                Ok(Reply::message(&one(&format!("{state}{arg}"))))
            }
            "Fail" => {
                ctx.emit(&one("X"));
                ctx.side_effect(SideEffect::new(SERVICE, "Get", &one("")));
                ctx.fail(arg);
                ctx.emit(&one("Y"));
                Ok(Reply::empty())
            }
            "Reject" => {
                ctx.emit(&one("X"));
                Err(Failure::new(arg))
            }
            "Forward" => {
                ctx.emit(&one("F"));
                ctx.side_effect(SideEffect::new(SERVICE, "Get", &one("effect")).synchronous());
                ctx.forward(Forward::new(SERVICE, "Get", &one(&arg)));
                Ok(Reply::empty())
            }
            "Poison" => {
                ctx.emit(&one("!"));
                Ok(Reply::empty())
            }
            "Panic" => panic!("{arg}"),
            other => Err(Failure::new(format!("unknown command {other}"))),
        }
    }

    fn apply(&self, state: &mut String, event: &Any) -> Result<(), Failure> {
        let event = any::unpack::<Value>(event)?.value;
        if event == "!" {
            return Err(Failure::new("poisoned event"));
        }
        state.push_str(&event);
        Ok(())
    }

    fn snapshot(&self, state: &String) -> Option<Any> {
        Some(value(state))
    }

    fn restore(&self, snapshot: &Any) -> Result<String, Failure> {
        Ok(any::unpack::<Value>(snapshot)?.value)
    }
}

pub(crate) fn service() -> Service {
    Service::new("sdk-model", "1.2.3")
        .descriptors(statehouse_schemas::FILE_DESCRIPTOR_SET)
        .event_sourced(SERVICE, Model)
}
