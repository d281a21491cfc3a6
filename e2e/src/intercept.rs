//! An interceptor between processors and their user function, as the Cloudstate TCK puts one
//! between the proxy and the user function: an h2c proxy that forwards every gRPC call as it is
//! (streams included) and records each call's path and the messages going each way, so a test
//! can check what the user function was sent and answered.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tonic::codegen::Service;
use tonic::transport::Channel;

/// One recorded call.
#[derive(Debug, Clone, Default)]
pub struct Call {
    /// The gRPC path, e.g. `/cloudstate.action.ActionProtocol/handleUnary`.
    pub path: String,
    /// The messages sent to the user function, in order (gRPC frames taken apart).
    pub requests: Vec<Bytes>,
    /// The messages it answered.
    pub responses: Vec<Bytes>,
}

#[derive(Default)]
struct Recorded {
    path: String,
    requests: BytesMut,
    responses: BytesMut,
}

/// The interceptor, listening on [`Interceptor::port`].
pub struct Interceptor {
    port: u16,
    calls: Arc<Mutex<Vec<Arc<Mutex<Recorded>>>>>,
}

impl Interceptor {
    /// Listen on a free local port and forward to the user function at `upstream`. Must be
    /// called inside a Tokio runtime.
    pub fn start(upstream: SocketAddr) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding the interceptor");
        listener
            .set_nonblocking(true)
            .expect("a non-blocking listener");
        let port = listener.local_addr().expect("its address").port();
        let listener = tokio::net::TcpListener::from_std(listener).expect("a Tokio listener");
        let channel = Channel::from_shared(format!("http://{upstream}"))
            .expect("a valid upstream")
            .connect_lazy();
        let calls: Arc<Mutex<Vec<Arc<Mutex<Recorded>>>>> = Arc::default();
        let recorded = Arc::clone(&calls);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let channel = channel.clone();
                let calls = Arc::clone(&recorded);
                let service = service_fn(move |request: http::Request<hyper::body::Incoming>| {
                    let mut channel = channel.clone();
                    let call = Arc::new(Mutex::new(Recorded {
                        path: request.uri().path().to_string(),
                        ..Recorded::default()
                    }));
                    calls.lock().unwrap().push(Arc::clone(&call));
                    async move {
                        let (mut parts, body) = request.into_parts();
                        parts.uri = format!("http://{upstream}{}", parts.uri.path())
                            .parse()
                            .expect("an upstream URI");
                        let sent = Arc::clone(&call);
                        let body = body.map_frame(move |frame| {
                            if let Some(data) = frame.data_ref() {
                                sent.lock().unwrap().requests.extend_from_slice(data);
                            }
                            frame
                        });
                        let request =
                            http::Request::from_parts(parts, tonic::body::Body::new(body));
                        std::future::poll_fn(|cx| channel.poll_ready(cx)).await?;
                        let response = channel.call(request).await?;
                        let (parts, body) = response.into_parts();
                        let got = Arc::clone(&call);
                        let body = body.map_frame(move |frame| {
                            if let Some(data) = frame.data_ref() {
                                got.lock().unwrap().responses.extend_from_slice(data);
                            }
                            frame
                        });
                        Ok::<_, tonic::transport::Error>(http::Response::from_parts(
                            parts,
                            tonic::body::Body::new(body),
                        ))
                    }
                });
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { port, calls }
    }

    /// The port the processor should call the user function at.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Every call so far, in the order they started, with the messages seen so far.
    pub fn calls(&self) -> Vec<Call> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .map(|recorded| {
                let recorded = recorded.lock().unwrap();
                Call {
                    path: recorded.path.clone(),
                    requests: frames(&recorded.requests),
                    responses: frames(&recorded.responses),
                }
            })
            .collect()
    }

    /// Wait (at most `within`) until a call matches `found`, and return it.
    pub async fn wait_for(&self, within: Duration, found: impl Fn(&Call) -> bool) -> Option<Call> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(call) = self.calls().into_iter().find(|c| found(c)) {
                return Some(call);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The messages of a gRPC body (5-byte prefix: compressed flag, big-endian length).
fn frames(body: &[u8]) -> Vec<Bytes> {
    let mut rest = Bytes::copy_from_slice(body);
    let mut out = Vec::new();
    while rest.len() >= 5 {
        let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        if rest.len() < 5 + len {
            break;
        }
        rest.advance(5);
        out.push(rest.split_to(len));
    }
    out
}
