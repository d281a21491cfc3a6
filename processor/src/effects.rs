//! Side effects and forwards (`docs/protocol.md`, "Forwards and side effects"): after a
//! command's writes committed, run its side effects in order — synchronous ones awaited (their
//! results discarded), the others started and not awaited — then the client action: a reply
//! goes back as it is, a forward becomes a new command whose reply is the client's. Targets may
//! be any method of any service the processor knows (its own, or another service through the
//! router); a target that does not exist is reported to the user function and fails the call.

use std::sync::Arc;

use statehouse_schemas::cloudstate as cs;
use tokio::time::Instant;
use tracing::warn;

use crate::Error;
use crate::command::{Command, Host, Outcome, Then};

/// Run `side_effects`, then `then`: the client's outcome. `key`: the command's effects key
/// ([`Command::effects_key`]); each side effect and the forward get one derived from it
/// (`<key>/s<i>`, `<key>/f`), so a command that runs again (redelivered from a topic or a
/// journal) has its effects run once by targets that keep an idempotency window (entities;
/// actions run them again).
pub(crate) async fn run(
    host: Arc<dyn Host>,
    side_effects: Vec<cs::SideEffect>,
    then: Then,
    hops: u32,
    deadline: Option<Instant>,
    key: Option<&str>,
) -> Result<Outcome, Error> {
    run_side_effects(&host, side_effects, hops, deadline, key).await?;
    match then {
        Then::Reply(reply) => Ok(Outcome::new(reply)),
        Then::Forward(forward) => {
            let command = host.resolve(
                &forward.service_name,
                &forward.command_name,
                forward.payload,
                forward.metadata,
                hops,
                deadline,
            );
            match command {
                Ok(mut command) => {
                    command.idempotency_key = Command::effect_key(key, "f");
                    host.dispatch(command).await
                }
                Err(e) => {
                    Arc::clone(&host).report_error(e.to_string()).await;
                    Err(e)
                }
            }
        }
    }
}

/// Run side effects in order. Fails (and tells the user function) only when a target does not
/// exist; a side effect that runs and fails is logged, as the reference proxy does.
pub(crate) async fn run_side_effects(
    host: &Arc<dyn Host>,
    side_effects: Vec<cs::SideEffect>,
    hops: u32,
    deadline: Option<Instant>,
    key: Option<&str>,
) -> Result<(), Error> {
    for (i, effect) in side_effects.into_iter().enumerate() {
        let mut command = match host.resolve(
            &effect.service_name,
            &effect.command_name,
            effect.payload,
            effect.metadata,
            hops,
            deadline,
        ) {
            Ok(command) => command,
            Err(e) => {
                Arc::clone(host).report_error(e.to_string()).await;
                return Err(e);
            }
        };
        command.idempotency_key = Command::effect_key(key, format_args!("s{i}"));
        let target = command.method.path.clone();
        if effect.synchronous {
            if let Err(e) = Arc::clone(host).dispatch(command).await {
                warn!(error = %e, %target, "synchronous side effect failed");
            }
        } else {
            let dispatched = Arc::clone(host).dispatch(command);
            tokio::spawn(async move {
                if let Err(e) = dispatched.await {
                    warn!(error = %e, %target, "side effect failed");
                }
            });
        }
    }
    Ok(())
}
