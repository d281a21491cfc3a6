//! The relay: a user function on the Rust SDK (`statehouse.e2e.Relay`, an event-sourced entity)
//! that counts its calls and relays side effects and a forward to any method of any service, as
//! each request says — for tests of forwards and side effects across processors and services.

use prost_types::Any;
use statehouse_sdk::{
    CommandContext, EventSourcedEntity, Failure, Forward, Reply, SideEffect, any,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::proto::relay::{Calls, RelayReply, RelayRequest, Relayed, Target};

/// The gRPC service the relay serves.
pub const SERVICE: &str = "statehouse.e2e.Relay";

struct Relay;

impl EventSourcedEntity for Relay {
    type State = Calls;

    fn persistence_id(&self) -> &str {
        "relay"
    }

    fn command(
        &self,
        ctx: &mut CommandContext<'_>,
        calls: &Calls,
        name: &str,
        payload: &Any,
    ) -> Result<Reply, Failure> {
        if name != "Relay" {
            return Err(Failure::new(format!("unknown command {name}")));
        }
        let request: RelayRequest = any::unpack(payload)?;
        ctx.emit(&Relayed {});
        for target in request.side_effects {
            let synchronous = target.synchronous;
            let (service, method, payload) = parts(target)?;
            let effect = SideEffect::from_any(service, method, payload);
            ctx.side_effect(if synchronous {
                effect.synchronous()
            } else {
                effect
            });
        }
        if let Some(target) = request.forward {
            let (service, method, payload) = parts(target)?;
            return Ok(Reply::forward(Forward::from_any(service, method, payload)));
        }
        Ok(Reply::message(&RelayReply {
            message: format!("{}:{}", request.id, calls.count + 1),
        }))
    }

    fn apply(&self, calls: &mut Calls, event: &Any) -> Result<(), Failure> {
        let _: Relayed = any::unpack(event)?;
        calls.count += 1;
        Ok(())
    }
}

fn parts(target: Target) -> Result<(String, String, Any), Failure> {
    let payload = target
        .payload
        .ok_or_else(|| Failure::new("a relay target needs a payload"))?;
    Ok((target.service, target.method, payload))
}

/// A relay target: `method` of `service` with `message`.
pub fn target<M: prost::Name>(
    service: &str,
    method: &str,
    message: &M,
    synchronous: bool,
) -> Target {
    Target {
        service: service.into(),
        method: method.into(),
        payload: Some(any::pack(message)),
        synchronous,
    }
}

/// Serve the relay on `listener` (as deployment `name`) until `stop`.
pub async fn serve(name: &str, listener: TcpListener, stop: CancellationToken) {
    statehouse_sdk::Service::new(name, "1")
        .descriptors(crate::proto::FILE_DESCRIPTOR_SET)
        .event_sourced(SERVICE, Relay)
        .serve_with_incoming_shutdown(listener, stop.cancelled_owned())
        .await
        .expect("the relay user function serves");
}
