//! Side effects and forwards (protocol §2.8): after the reply's events are committed, run the
//! side effects in order (synchronous ones are awaited, the others fire and forget), then the
//! client action — a forward becomes a new command whose reply is the client's reply.

use std::sync::Arc;

use bytes::Bytes;
use statehouse_schemas::cloudstate::{self as cs, client_action};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::warn;

use crate::entity::{Outcome, Reply, reply_message};
use crate::{Error, Node, Request};

pub(crate) async fn run(
    node: Arc<Node>,
    side_effects: Vec<cs::SideEffect>,
    action: Option<client_action::Action>,
    hops: u32,
    deadline: Option<Instant>,
    reply: oneshot::Sender<Result<Outcome, Error>>,
) {
    for effect in side_effects {
        let request = match request(
            &node,
            &effect.service_name,
            &effect.command_name,
            effect.payload,
            effect.metadata,
            hops,
            deadline,
        ) {
            Ok(r) => r,
            Err(e) => {
                node.uf.report_error(&e.to_string()).await;
                let _ = reply.send(Err(e));
                return;
            }
        };
        if effect.synchronous {
            if let Err(e) = node.dispatch(request).await {
                warn!(error = %e, service = %effect.service_name, command = %effect.command_name, "synchronous side effect failed");
            }
        } else {
            let node = Arc::clone(&node);
            tokio::spawn(async move {
                if let Err(e) = node.dispatch(request).await {
                    warn!(error = %e, "side effect failed");
                }
            });
        }
    }
    let result = match action {
        Some(client_action::Action::Reply(r)) => Ok(Outcome::new(reply_message(&r))),
        Some(client_action::Action::Failure(f)) => Ok(Outcome::new(Reply::Failure {
            description: f.description,
            code: tonic::Code::Unknown,
        })),
        Some(client_action::Action::Forward(f)) => {
            match request(
                &node,
                &f.service_name,
                &f.command_name,
                f.payload,
                f.metadata,
                hops,
                deadline,
            ) {
                Ok(request) => node.dispatch(request).await,
                Err(e) => {
                    node.uf.report_error(&e.to_string()).await;
                    Err(e)
                }
            }
        }
        None => Ok(Outcome::new(Reply::Empty)),
    };
    let _ = reply.send(result);
}

fn request(
    node: &Node,
    service: &str,
    command: &str,
    payload: Option<prost_types::Any>,
    metadata: Option<cs::Metadata>,
    hops: u32,
    deadline: Option<Instant>,
) -> Result<Request, Error> {
    let method = node
        .index
        .method_by_name(service, command)
        .cloned()
        .ok_or_else(|| {
            Error::UnknownMethod(format!(
                "service [{service}] unknown or it has no command named [{command}]"
            ))
        })?;
    let payload = Bytes::from(payload.map(|p| p.value).unwrap_or_default());
    let entity_id = method
        .entity_id(&payload)
        .map_err(|e| Error::InvalidArgument(e.to_string()))?;
    Ok(Request {
        method,
        entity_id,
        payload,
        _metadata: metadata,
        idempotency_key: None,
        deadline,
        traceparent: None,
        hops,
    })
}
