//! The pipe: a user function on the Rust SDK (`statehouse.e2e.pipe.Pipe`, an event-sourced
//! entity) whose `Take` is fed from the Kafka topic [`INPUT`] and publishes its replies to
//! [`OUTPUT`] (`e2e/proto/pipe.proto`) — for tests of eventing with topics.

use prost_types::Any;
use statehouse_sdk::{CommandContext, EventSourcedEntity, Failure, Reply, any};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::proto::pipe::{Count, Item, Taken, Took};

/// The gRPC service the pipe serves.
pub const SERVICE: &str = "statehouse.e2e.pipe.Pipe";
/// The topic `Take` is fed from (as `pipe.proto` declares it).
pub const INPUT: &str = "statehouse-e2e-pipe-in";
/// The topic `Take`'s replies go to.
pub const OUTPUT: &str = "statehouse-e2e-pipe-out";

struct Pipe;

impl EventSourcedEntity for Pipe {
    type State = Count;

    fn persistence_id(&self) -> &str {
        "pipe"
    }

    fn command(
        &self,
        ctx: &mut CommandContext<'_>,
        count: &Count,
        name: &str,
        payload: &Any,
    ) -> Result<Reply, Failure> {
        if name != "Take" {
            return Err(Failure::new(format!("unknown command {name}")));
        }
        let item: Item = any::unpack(payload)?;
        ctx.emit(&Took {
            id: item.id.clone(),
        });
        Ok(Reply::message(&Taken {
            line: item.line,
            id: item.id,
            count: count.items + 1,
        }))
    }

    fn apply(&self, count: &mut Count, event: &Any) -> Result<(), Failure> {
        let _: Took = any::unpack(event)?;
        count.items += 1;
        Ok(())
    }
}

/// Serve the pipe on `listener` (as deployment `name`) until `stop`.
pub async fn serve(name: &str, listener: TcpListener, stop: CancellationToken) {
    statehouse_sdk::Service::new(name, "1")
        .descriptors(crate::proto::FILE_DESCRIPTOR_SET)
        .event_sourced(SERVICE, Pipe)
        .serve_with_incoming_shutdown(listener, stop.cancelled_owned())
        .await
        .expect("the pipe user function serves");
}
