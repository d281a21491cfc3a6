//! Streamed methods: client-, server- and bidirectional streaming over gRPC, gRPC-Web and (server
//! streaming) HTTP/JSON, relayed to the processor over `Processor/HandleStreamed`.
//!
//! * **gRPC (HTTP/2).** The call to the processor opens at once — the first request carries the
//!   method, metadata, deadline and (server streaming) the one request message — and response
//!   headers go to the client at once, so a client that waits for them before sending works.
//!   Client messages are relayed as they arrive; the client's half-close half-closes the call.
//!   Each processor response is one message for the client; a failure ends the call with its
//!   status (a user-function failure is `UNKNOWN` with its description), the end of the
//!   processor's stream ends it with `OK`.
//! * **gRPC-Web.** The same, but the request body is read whole first (browsers cannot stream a
//!   request); trailers travel in the body.
//! * **HTTP/JSON (server streaming).** The request is transcoded as for unary calls. The answer
//!   is `application/x-ndjson` — one JSON object per line — or, with `Accept:
//!   text/event-stream`, server-sent events (`data: <json>` per element). Before the first
//!   element, an error is an HTTP error status with its text as for unary calls; after it, an
//!   error is a last line `{"error":{"code":<gRPC code>,"message":"…"}}` (SSE: `event: error`).
//!
//! Deadlines: a client's `grpc-timeout` travels with the call to the processor and the user
//! function; without one, a streamed call runs until either side ends it (a subscription) and
//! the gateway's default timeout bounds only opening it. When the client goes away, the relay
//! stops and dropping the processor call cancels it down to the user function.

use std::convert::Infallible;

use bytes::{Bytes, BytesMut};
use http::header::{ACCEPT, CONTENT_TYPE, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Incoming;
use statehouse_runtime::router::{self, Call, Route};
use statehouse_schemas::statehouse::processor::v1::{
    HandleRequest, HandleResponse, handle_response,
};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::body::Body;

use crate::auth::Principal;
use crate::error::code_of;
use crate::grpc::{self, FrameDecoder, Protocol};
use crate::server::{Shared, record_code, text};
use crate::transcode::{self, Binding};
use crate::{Error, metadata, span};
use tracing::Instrument as _;

/// Client messages waiting to be relayed (bounded: a slow processor slows the client).
const RELAY: usize = 16;
/// Response frames waiting for the client.
const OUT: usize = 16;

type Frames = mpsc::Sender<Result<Frame<Bytes>, Infallible>>;

/// A streamed gRPC or gRPC-Web call.
pub(crate) async fn grpc(
    shared: &Shared,
    route: Route,
    request: Request<Incoming>,
    protocol: Protocol,
    principal: Principal,
) -> Response<Body> {
    let started = std::time::Instant::now();
    let (parts, body) = request.into_parts();
    let method = &route.method;
    let limit = shared.max_request_bytes;
    let (rest_tx, rest) = mpsc::channel(RELAY);
    // The first request message (server streaming), and the relay of later ones.
    let first = match (protocol, method.client_streaming) {
        (Protocol::Grpc, false) => grpc::read_message(body, protocol, limit).await.map(Some),
        (Protocol::Grpc, true) => {
            tokio::spawn(relay_body(body, limit, rest_tx));
            Ok(None)
        }
        (Protocol::Web { .. }, client_streaming) => {
            match grpc::read_body(body, protocol, limit)
                .await
                .and_then(|bytes| {
                    let mut decoder = FrameDecoder::new(limit);
                    decoder.push(&bytes);
                    let mut messages = Vec::new();
                    while let Some(message) = decoder.next_message()? {
                        messages.push(message);
                    }
                    decoder.finish()?;
                    Ok(messages)
                }) {
                Err(e) => Err(e),
                Ok(messages) if !client_streaming => match <[Bytes; 1]>::try_from(messages) {
                    Ok([message]) => Ok(Some(message)),
                    Err(_) => Err(Error::BadFrame {
                        reason: "a server-streaming call takes exactly one request message",
                    }),
                },
                Ok(messages) => {
                    tokio::spawn(async move {
                        for payload in messages {
                            if rest_tx.send(later(payload)).await.is_err() {
                                break;
                            }
                        }
                    });
                    Ok(None)
                }
            }
        }
    };
    let opened = match first {
        Ok(first) => {
            open(
                shared,
                protocol.label(),
                &route,
                &parts.headers,
                &principal,
                first.unwrap_or_default(),
                rest,
            )
            .await
        }
        Err(e) => Err(e),
    };
    let label = protocol.label();
    let (upstream, deadline) = match opened {
        Ok(opened) => opened,
        Err(e) => {
            record_code(label, &route.method, code_of(&e), started);
            return grpc::respond(protocol, Err(e.into()), HeaderMap::new());
        }
    };
    record_code(label, &route.method, tonic::Code::Ok, started);
    let (frames, body) = mpsc::channel(OUT);
    tokio::spawn(relay_grpc(upstream, deadline, protocol, frames));
    let mut response = grpc::response_head(protocol, HeaderMap::new());
    *response.body_mut() = Body::new(StreamBody::new(ReceiverStream::new(body)));
    response
}

/// A server-streaming call over HTTP/JSON.
pub(crate) async fn json(
    shared: &Shared,
    binding: Binding,
    variables: transcode::PathVariables,
    request: Request<Incoming>,
    principal: Principal,
) -> Response<Body> {
    let started = std::time::Instant::now();
    let (parts, body) = request.into_parts();
    let sse = parts
        .headers
        .get(ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    let opened = async {
        let body = crate::server::json_body(shared, &binding, &parts.headers, body).await?;
        let payload = transcode::request_message(&binding, variables?, parts.uri.query(), &body)?;
        let (_, no_rest) = mpsc::channel(1);
        let (mut upstream, deadline) = open(
            shared,
            "http",
            &binding.route,
            &parts.headers,
            &principal,
            payload,
            no_rest,
        )
        .await?;
        // Wait for the first element: an error before it is an HTTP error status.
        let first = next(&mut upstream, deadline).await?;
        Ok((upstream, deadline, first))
    }
    .await;
    let (upstream, deadline, first) = match opened {
        Ok(opened) => {
            record_code("http", &binding.route.method, tonic::Code::Ok, started);
            opened
        }
        Err(e) => {
            record_code("http", &binding.route.method, code_of(&e), started);
            return text(e.http_status(), &e.http_message());
        }
    };
    let (frames, body): (Frames, _) = mpsc::channel(OUT);
    tokio::spawn(async move {
        let mut upstream = upstream;
        let mut item = first;
        loop {
            let line = match item {
                None => break,
                Some(response) => match response.outcome {
                    Some(handle_response::Outcome::Reply(reply)) => {
                        match transcode::response_body(&binding, &reply.payload) {
                            Ok((_, json)) => json,
                            Err(e) => {
                                let _ = frames.send(Ok(Frame::data(error_line(&e, sse)))).await;
                                break;
                            }
                        }
                    }
                    Some(handle_response::Outcome::Failure(failure)) => {
                        let e = Error::Failure {
                            code: code_of_failure(failure.grpc_code),
                            description: failure.description,
                        };
                        let _ = frames.send(Ok(Frame::data(error_line(&e, sse)))).await;
                        break;
                    }
                    None => {
                        item = match next(&mut upstream, deadline).await {
                            Ok(item) => item,
                            Err(e) => {
                                let _ = frames.send(Ok(Frame::data(error_line(&e, sse)))).await;
                                break;
                            }
                        };
                        continue;
                    }
                },
            };
            let mut chunk = BytesMut::with_capacity(line.len() + 8);
            if sse {
                chunk.extend_from_slice(b"data: ");
                chunk.extend_from_slice(&line);
                chunk.extend_from_slice(b"\n\n");
            } else {
                chunk.extend_from_slice(&line);
                chunk.extend_from_slice(b"\n");
            }
            if frames.send(Ok(Frame::data(chunk.freeze()))).await.is_err() {
                // The client went away: dropping the call cancels it.
                break;
            }
            item = match next(&mut upstream, deadline).await {
                Ok(item) => item,
                Err(e) => {
                    let _ = frames.send(Ok(Frame::data(error_line(&e, sse)))).await;
                    break;
                }
            };
        }
    });
    let mut response = Response::new(Body::new(StreamBody::new(ReceiverStream::new(body))));
    *response.status_mut() = StatusCode::OK;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static(if sse {
            "text/event-stream"
        } else {
            "application/x-ndjson"
        }),
    );
    response
}

/// Open the call on the processor that runs it. Its span (`statehouse.gateway.call`) covers
/// the opening: a stream may run for hours.
async fn open(
    shared: &Shared,
    protocol: &'static str,
    route: &Route,
    headers: &HeaderMap,
    principal: &Principal,
    payload: Bytes,
    rest: mpsc::Receiver<HandleRequest>,
) -> Result<(tonic::Streaming<HandleResponse>, Instant), Error> {
    let entity_id = if route.method.key_fields.is_empty() {
        String::new()
    } else {
        route.method.entity_id(&payload)?
    };
    shared.limits.entity_id(&entity_id)?;
    let metadata = shared.limits.metadata(headers, principal)?;
    // A streamed call without a client deadline runs until either side ends it (a
    // subscription); the default timeout bounds only finding a processor that accepts it.
    let deadline = shared
        .limits
        .client_deadline(headers)
        .unwrap_or_else(router::no_deadline);
    let accept_by = shared.limits.deadline(headers);
    let call = Call {
        method: &route.method,
        entity_id: &entity_id,
        payload,
        metadata,
        idempotency_key: metadata::idempotency_key(headers),
        traceparent: None,
        hops: 0,
        type_url: None,
        deadline,
    };
    let span = span::call(protocol, &route.method, headers);
    let upstream = shared
        .router
        .open(call, rest, accept_by)
        .instrument(span.clone())
        .await
        .map_err(Error::from);
    span::finish(
        &span,
        upstream.as_ref().map_or_else(code_of, |_| tonic::Code::Ok),
    );
    Ok((upstream?, deadline))
}

/// The next response of the processor (`None`: the call ended), bounded by the deadline.
async fn next(
    upstream: &mut tonic::Streaming<HandleResponse>,
    deadline: Instant,
) -> Result<Option<HandleResponse>, Error> {
    match tokio::time::timeout_at(deadline, upstream.message()).await {
        Err(_) => Err(Error::Failure {
            code: tonic::Code::DeadlineExceeded,
            description: "the call's deadline passed".into(),
        }),
        Ok(Ok(item)) => Ok(item),
        Ok(Err(status)) => Err(Error::Failure {
            code: status.code(),
            description: status.message().to_string(),
        }),
    }
}

/// Relay the processor's responses to a gRPC(-Web) client, then the status.
async fn relay_grpc(
    mut upstream: tonic::Streaming<HandleResponse>,
    deadline: Instant,
    protocol: Protocol,
    frames: Frames,
) {
    let status = loop {
        let item = tokio::select! {
            item = next(&mut upstream, deadline) => item,
            // The client went away: dropping the call cancels it.
            _ = frames.closed() => return,
        };
        match item {
            Ok(None) => break tonic::Status::ok(""),
            Ok(Some(response)) => match response.outcome {
                Some(handle_response::Outcome::Reply(reply)) => {
                    let message = grpc::frame(&reply.payload);
                    if !send(&frames, protocol, message).await {
                        return;
                    }
                }
                Some(handle_response::Outcome::Failure(failure)) => {
                    break tonic::Status::new(
                        code_of_failure(failure.grpc_code),
                        failure.description,
                    );
                }
                None => {}
            },
            Err(e) => break e.into(),
        }
    };
    let trailers = grpc::status_trailers(&status);
    match protocol {
        Protocol::Grpc => {
            let _ = frames.send(Ok(Frame::trailers(trailers))).await;
        }
        Protocol::Web { .. } => {
            send(&frames, protocol, grpc::web_trailers(&trailers)).await;
        }
    }
}

/// Send a data frame (base64 for gRPC-Web text); false when the client went away.
async fn send(frames: &Frames, protocol: Protocol, bytes: Bytes) -> bool {
    let bytes = match protocol {
        Protocol::Web { text: true } => grpc::web_text(&bytes),
        _ => bytes,
    };
    frames.send(Ok(Frame::data(bytes))).await.is_ok()
}

/// Relay the messages of a native gRPC request body to the processor call.
async fn relay_body(mut body: Incoming, limit: usize, rest: mpsc::Sender<HandleRequest>) {
    let mut decoder = FrameDecoder::new(limit);
    loop {
        let frame = tokio::select! {
            frame = body.frame() => frame,
            // The call ended (a failure, or the processor's stream ended): stop reading.
            _ = rest.closed() => return,
        };
        match frame {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    decoder.push(data);
                }
                loop {
                    match decoder.next_message() {
                        Ok(Some(payload)) => {
                            if rest.send(later(payload)).await.is_err() {
                                return;
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            // A bad message ends the call: the processor sees a cancel.
                            tracing::debug!(error = %e, "streamed request refused");
                            return;
                        }
                    }
                }
            }
            // The client half-closed: so does the call (dropping `rest`).
            None => return,
            // The client went away or broke the stream.
            Some(Err(_)) => return,
        }
    }
}

/// A later request of a streamed call: the payload only.
fn later(payload: Bytes) -> HandleRequest {
    HandleRequest {
        payload,
        partition: -1,
        ..HandleRequest::default()
    }
}

fn code_of_failure(code: i32) -> tonic::Code {
    match code {
        0 => tonic::Code::Unknown,
        code => tonic::Code::from_i32(code),
    }
}

/// The last line of an HTTP/JSON stream that ended with an error.
fn error_line(error: &Error, sse: bool) -> Bytes {
    let code = code_of(error) as i32;
    let json = serde_json::json!({"error": {"code": code, "message": error.http_message()}});
    let mut line = Vec::new();
    if sse {
        line.extend_from_slice(b"event: error\ndata: ");
    }
    line.extend_from_slice(json.to_string().as_bytes());
    line.extend_from_slice(if sse { b"\n\n" } else { b"\n" });
    Bytes::from(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_across_chunks_are_reassembled() {
        let mut decoder = FrameDecoder::new(10);
        let two = [grpc::frame(b"abc"), grpc::frame(b"de")].concat();
        decoder.push(&two[..4]);
        assert_eq!(decoder.next_message().unwrap(), None);
        decoder.push(&two[4..9]);
        assert_eq!(
            decoder.next_message().unwrap(),
            Some(Bytes::from_static(b"abc"))
        );
        assert_eq!(decoder.next_message().unwrap(), None);
        assert!(decoder.finish().is_err(), "half a message is left");
        decoder.push(&two[9..]);
        assert_eq!(
            decoder.next_message().unwrap(),
            Some(Bytes::from_static(b"de"))
        );
        decoder.finish().unwrap();
        decoder.push(&grpc::frame(&[0; 11]));
        assert!(matches!(
            decoder.next_message(),
            Err(Error::RequestTooLarge { limit: 10 })
        ));
    }

    #[test]
    fn stream_errors_are_a_last_json_line() {
        let e = Error::Failure {
            code: tonic::Code::Unknown,
            description: "boom".into(),
        };
        assert_eq!(
            &error_line(&e, false)[..],
            b"{\"error\":{\"code\":2,\"message\":\"boom\"}}\n"
        );
        assert!(error_line(&e, true).starts_with(b"event: error\ndata: {"));
    }
}
