//! The client port (`docs/protocol.md`, "Exposing services to clients"): HTTP/1.1 and h2c on
//! one listener — or, with `[gateway.tls]`, HTTP/1.1 and HTTP/2 over TLS only (ALPN `h2`,
//! `http/1.1`; a plaintext caller is answered 400 "this port requires TLS",
//! `statehouse_runtime::tls::accept`, `docs/tls.md`) — routes tried in this order:
//!
//! 1. gRPC (HTTP/2, `application/grpc[+proto]`) for every routable user method, then gRPC
//!    reflection v1 / v1alpha and `grpc.health.v1.Health`; any other gRPC path is UNIMPLEMENTED;
//! 2. gRPC-Web (`application/grpc-web[+proto]`, `application/grpc-web-text[+proto]`, HTTP/1.1
//!    or HTTP/2) for the user methods;
//! 3. HTTP/JSON transcoding ([`crate::transcode`]);
//! 4. `K-Network-Probe: queue` → `queue` (Knative);
//! 5. `GET /` → 200 once a service is routable, else 503 (readiness for the Cloudstate TCK and
//!    plain HTTP probes);
//! 6. 404.
//!
//! With `[gateway.auth]` on, every user method and reflection are checked on the request head
//! before the body is read (`crate::auth`, `docs/security.md`); health and `GET /` stay open.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderMap, HeaderValue, WWW_AUTHENTICATE};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use statehouse_runtime::config::GatewayOptions;
use statehouse_schemas::grpc::health::v1::health_check_response::ServingStatus;
use statehouse_schemas::statehouse::processor::v1::{Reply, handle_response::Outcome};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::body::Body;
use tonic::codegen::Service as _;
use tracing::Instrument as _;

use crate::auth::{self, Auth, Principal};
use crate::error::code_of;
use crate::grpc::{self, Protocol};
use crate::limits::Limits;
use crate::transcode::{self, Binding};
use crate::{Error, health, metadata, reflection, span, streaming};
use statehouse_runtime::admission::{self, Limiter};
use statehouse_runtime::router::{Route, Router};
use statehouse_runtime::tls::{Acceptor, accept::log_refused};

/// How long in-flight calls may take to finish once shutdown starts.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// What every request handler shares.
pub(crate) struct Shared {
    pub(crate) router: Router,
    pub(crate) max_request_bytes: usize,
    pub(crate) limits: Limits,
    /// Adaptive admission of unary calls (`statehouse_runtime::admission`).
    admission: Limiter,
    max_concurrent_streams: u32,
    /// `None`: authentication off.
    auth: Option<Auth>,
    transcoder: transcode::Cache,
    health: health::Health,
    health_server: health::Server<health::Health>,
    reflection_v1: reflection::v1::Server<reflection::v1::Reflection>,
    reflection_v1alpha: reflection::v1alpha::Server<reflection::v1alpha::Reflection>,
}

/// A running client port.
#[derive(Debug)]
pub struct Gateway {
    local_addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Gateway {
    /// Binds `options.listen` (port 0 picks a free port) and serves until `shutdown`, then
    /// stops accepting and lets in-flight calls finish (at most 10 s).
    pub async fn bind(
        options: &GatewayOptions,
        router: Router,
        shutdown: CancellationToken,
    ) -> Result<Gateway, Error> {
        let listener = TcpListener::bind(options.listen)
            .await
            .map_err(|source| Error::Bind {
                addr: options.listen,
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| Error::Bind {
            addr: options.listen,
            source,
        })?;
        let auth = Auth::start(&options.auth, shutdown.clone()).await?;
        let tls = statehouse_runtime::tls::gateway_acceptor(&options.tls)?;
        let registry = router.registry().clone();
        let health = health::Health {
            registry: registry.clone(),
            shutdown: shutdown.clone(),
        };
        let shared = Arc::new(Shared {
            max_request_bytes: options.max_request_bytes,
            limits: Limits::new(options),
            admission: Limiter::new(options.admission.clone(), "gateway"),
            max_concurrent_streams: options.max_concurrent_streams,
            auth,
            transcoder: transcode::Cache::default(),
            health_server: health::Server::new(health.clone()),
            health,
            reflection_v1: reflection::v1::Server::new(reflection::v1::Reflection {
                registry: registry.clone(),
            }),
            reflection_v1alpha: reflection::v1alpha::Server::new(reflection::v1alpha::Reflection {
                registry,
            }),
            router,
        });
        if tls.is_some() {
            tracing::info!(%local_addr, client_certificates = options.tls.client_ca_file.is_some(), "gateway listening (TLS: HTTP/1.1 and HTTP/2)");
        } else {
            tracing::info!(%local_addr, "gateway listening (HTTP/1.1 and h2c)");
        }
        let task = tokio::spawn(serve(listener, shared, tls, shutdown));
        Ok(Gateway { local_addr, task })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Waits until the server has stopped (after shutdown, once calls drained).
    pub async fn stopped(self) {
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "gateway server task failed");
        }
    }
}

async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    tls: Option<Acceptor>,
    shutdown: CancellationToken,
) {
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http2()
        .max_concurrent_streams(shared.max_concurrent_streams);
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // E.g. out of file descriptors: do not spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
        let shared = Arc::clone(&shared);
        let service = service_fn(move |request| handle(Arc::clone(&shared), request));
        let Some(acceptor) = &tls else {
            let connection = builder
                .serve_connection(TokioIo::new(stream), service)
                .into_owned();
            let connection = graceful.watch(connection);
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(%peer, error = %e, "connection closed with an error");
                }
            });
            continue;
        };
        // The handshake runs in the connection's task: a slow or hostile caller holds up no
        // one else's accept.
        let (acceptor, builder, watcher) = (acceptor.clone(), builder.clone(), graceful.watcher());
        tokio::spawn(async move {
            let stream = match acceptor.accept(stream).await {
                Ok(stream) => stream,
                Err(refused) => return log_refused(peer, &refused),
            };
            let connection = watcher.watch(
                builder
                    .serve_connection(TokioIo::new(stream), service)
                    .into_owned(),
            );
            if let Err(e) = connection.await {
                tracing::debug!(%peer, error = %e, "connection closed with an error");
            }
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("gateway stopped"),
        _ = tokio::time::sleep(DRAIN_TIMEOUT) => tracing::warn!("gateway stopped with calls still in flight"),
    }
}

async fn handle(
    shared: Arc<Shared>,
    request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    Ok(match Protocol::of(request.headers()) {
        Some(Protocol::Grpc) if request.version() == Version::HTTP_2 => {
            grpc_call(&shared, request, Protocol::Grpc).await
        }
        Some(protocol @ Protocol::Web { .. }) => grpc_call(&shared, request, protocol).await,
        _ => http_call(&shared, request).await,
    })
}

impl Shared {
    /// Who is calling `service`/`method`, or why the call is refused (always the anonymous
    /// principal with authentication off).
    pub(crate) async fn authorize(
        &self,
        service: &str,
        method: &str,
        headers: &HeaderMap,
    ) -> Result<Principal, Error> {
        match &self.auth {
            None => Ok(Principal::default()),
            Some(auth) => auth.check(service, method, headers).await,
        }
    }
}

/// The response headers of a refused call: the bearer challenge (`www-authenticate`).
pub(crate) fn refusal_headers(error: &Error) -> HeaderMap {
    let mut headers = retry_headers(error);
    if let Some(challenge) = auth::challenge(error) {
        headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
    }
    headers
}

/// The HTTP answer to a failed call: its status and text (plus the bearer challenge of a
/// refusal).
pub(crate) fn http_error(error: &Error) -> Response<Body> {
    let mut response = text(error.http_status(), &error.http_message());
    response.headers_mut().extend(refusal_headers(error));
    response
}

async fn grpc_call(
    shared: &Shared,
    request: Request<Incoming>,
    protocol: Protocol,
) -> Response<Body> {
    let path = request.uri().path().to_string();
    let route = shared.router.registry().routes().method(&path).cloned();
    if let Some(route) = route {
        let started = std::time::Instant::now();
        let principal = match shared
            .authorize(&route.method.service, &route.method.name, request.headers())
            .await
        {
            Ok(principal) => principal,
            Err(e) => {
                record_code(protocol.label(), &route.method, code_of(&e), started);
                let headers = refusal_headers(&e);
                return grpc::respond(protocol, Err(e.into()), headers);
            }
        };
        if route.method.is_unary() {
            return unary_grpc(shared, route, request, protocol, principal).await;
        }
        return streaming::grpc(shared, route, request, protocol, principal).await;
    }
    if protocol == Protocol::Grpc {
        let mut names = path.trim_start_matches('/').split('/');
        let service = names.next().unwrap_or_default();
        let method = names.next().unwrap_or_default();
        if matches!(
            service,
            reflection::v1::SERVICE | reflection::v1alpha::SERVICE
        ) && let Err(e) = shared.authorize(service, method, request.headers()).await
        {
            let headers = refusal_headers(&e);
            return grpc::respond(protocol, Err(e.into()), headers);
        }
        let served = match service {
            reflection::v1::SERVICE => Some(shared.reflection_v1.clone().call(request).await),
            reflection::v1alpha::SERVICE => {
                Some(shared.reflection_v1alpha.clone().call(request).await)
            }
            health::SERVICE => Some(shared.health_server.clone().call(request).await),
            _ => None,
        };
        if let Some(Ok(response)) = served {
            return response;
        }
    }
    crate::metrics::call(
        protocol.label(),
        None,
        tonic::Code::Unimplemented,
        std::time::Instant::now(),
    );
    grpc::respond(
        protocol,
        Err(Error::UnknownMethod { path }.into()),
        HeaderMap::new(),
    )
}

async fn unary_grpc(
    shared: &Shared,
    route: Route,
    request: Request<Incoming>,
    protocol: Protocol,
    principal: Principal,
) -> Response<Body> {
    let started = std::time::Instant::now();
    let (parts, body) = request.into_parts();
    let label = protocol.label();
    let span = span::call(label, &route.method, &parts.headers);
    let outcome = async {
        let mut permit = shared.admission.try_acquire().map_err(Error::Overloaded)?;
        let payload = grpc::read_message(body, protocol, shared.max_request_bytes).await?;
        permit.start();
        let outcome = call(shared, &route, &parts.headers, &principal, payload).await;
        permit.end(admission_outcome(&outcome));
        outcome
    }
    .instrument(span.clone())
    .await;
    span::finish(&span, outcome_code(&outcome));
    record(label, &route.method, &outcome, started);
    match outcome {
        Ok(Some(reply)) => {
            let headers = metadata::to_headers(reply.metadata.as_ref());
            grpc::respond(protocol, Ok(Some(reply.payload)), headers)
        }
        Ok(None) => grpc::respond(protocol, Ok(None), HeaderMap::new()),
        Err(e) => {
            tracing::debug!(method = %route.method.path, error = %e, "call failed");
            let headers = refusal_headers(&e);
            grpc::respond(protocol, Err(e.into()), headers)
        }
    }
}

/// Response header set on the stored reply of a repeated idempotency key.
pub const DEDUPLICATED_HEADER: &str = "statehouse-deduplicated";

/// Response header with the command's commit position in the journal,
/// `<partition>:<offset>` (event-sourced commands that wrote events): a projection query can
/// wait until the projection has read past it (`docs/projections.md`).
pub const POSITION_HEADER: &str = "statehouse-position";

/// Routes one command; `None` when the user function sent no reply message.
async fn call(
    shared: &Shared,
    route: &Route,
    headers: &HeaderMap,
    principal: &Principal,
    payload: Bytes,
) -> Result<Option<Reply>, Error> {
    let entity_id = route.method.entity_id(&payload)?;
    shared.limits.entity_id(&entity_id)?;
    let metadata = shared.limits.metadata(headers, principal)?;
    let deadline = shared.limits.deadline(headers);
    let response = shared
        .router
        .call(
            &route.method,
            &entity_id,
            payload,
            metadata,
            metadata::idempotency_key(headers),
            deadline,
        )
        .await?;
    match response.outcome {
        Some(Outcome::Reply(mut reply)) => {
            shared.limits.response(reply.payload.len())?;
            if let Some(position) = response.position {
                header_entry(
                    &mut reply,
                    POSITION_HEADER,
                    format!("{}:{}", position.partition, position.offset),
                );
            }
            if response.deduplicated {
                // Tell the client this is the stored reply of an earlier call with the same
                // idempotency key (the command did not run again).
                header_entry(&mut reply, DEDUPLICATED_HEADER, "true".into());
            }
            Ok(Some(reply))
        }
        Some(Outcome::Failure(failure)) => Err(Error::Failure {
            // A failure without a code is a user-function failure: UNKNOWN
            // (`docs/protocol.md`, "Errors").
            code: match failure.grpc_code {
                0 => tonic::Code::Unknown,
                code => tonic::Code::from_i32(code),
            },
            description: failure.description,
        }),
        None => Ok(None),
    }
}

/// Add a string entry to a reply's metadata (it becomes a response header).
fn header_entry(reply: &mut Reply, key: &str, value: String) {
    reply
        .metadata
        .get_or_insert_with(Default::default)
        .entries
        .push(statehouse_schemas::cloudstate::MetadataEntry {
            key: key.into(),
            value: Some(statehouse_schemas::cloudstate::metadata_entry::Value::StringValue(value)),
        });
}

async fn http_call(shared: &Shared, request: Request<Incoming>) -> Response<Body> {
    let routes = shared.router.registry().routes();
    let table = shared.transcoder.table(&routes);
    if let Some((binding, variables)) = table.find(request.method(), request.uri().path()) {
        return json_call(shared, binding.clone(), variables, request).await;
    }
    if request
        .headers()
        .get("k-network-probe")
        .is_some_and(|v| v.as_bytes() == b"queue")
    {
        return text(StatusCode::OK, "queue");
    }
    if request.uri().path() == "/" && matches!(*request.method(), Method::GET | Method::HEAD) {
        return match shared.health.status("") {
            Some(ServingStatus::Serving) => text(StatusCode::OK, "ok"),
            _ => text(StatusCode::SERVICE_UNAVAILABLE, "no service discovered yet"),
        };
    }
    text(StatusCode::NOT_FOUND, "Not Found")
}

async fn json_call(
    shared: &Shared,
    binding: Binding,
    variables: transcode::PathVariables,
    request: Request<Incoming>,
) -> Response<Body> {
    let started = std::time::Instant::now();
    let method = &binding.route.method;
    let principal = match shared
        .authorize(&method.service, &method.name, request.headers())
        .await
    {
        Ok(principal) => principal,
        Err(e) => {
            record_code("http", method, code_of(&e), started);
            return http_error(&e);
        }
    };
    if binding.route.method.server_streaming {
        return streaming::json(shared, binding, variables, request, principal).await;
    }
    let (parts, body) = request.into_parts();
    let span = span::call("http", &binding.route.method, &parts.headers);
    let outcome = async {
        let variables = variables?;
        let mut permit = shared.admission.try_acquire().map_err(Error::Overloaded)?;
        let body = json_body(shared, &binding, &parts.headers, body).await?;
        let payload = transcode::request_message(&binding, variables, parts.uri.query(), &body)?;
        permit.start();
        let called = call(shared, &binding.route, &parts.headers, &principal, payload).await;
        permit.end(admission_outcome(&called));
        match called? {
            Some(reply) => {
                let (content_type, body) = transcode::response_body(&binding, &reply.payload)?;
                Ok(Some((
                    content_type,
                    body,
                    metadata::to_headers(reply.metadata.as_ref()),
                )))
            }
            None => Ok(None),
        }
    }
    .instrument(span.clone())
    .await;
    span::finish(&span, outcome_code(&outcome));
    record("http", &binding.route.method, &outcome, started);
    match outcome {
        Ok(Some((content_type, body, headers))) => {
            let mut response = Response::new(Body::new(Full::new(body)));
            response.headers_mut().extend(headers);
            if let Ok(value) = HeaderValue::from_str(&content_type) {
                response.headers_mut().insert(CONTENT_TYPE, value);
            }
            response
        }
        Ok(None) => {
            let mut response = Response::new(Body::empty());
            *response.status_mut() = StatusCode::NO_CONTENT;
            response
        }
        Err(e) => {
            tracing::debug!(method = %binding.route.method.path, error = %e, "HTTP call failed");
            http_error(&e)
        }
    }
}

/// The JSON body of an HTTP request (empty when the binding takes none): `Content-Type` must
/// be JSON; at most `gateway.max-request-bytes`.
pub(crate) async fn json_body(
    shared: &Shared,
    binding: &Binding,
    headers: &HeaderMap,
    body: Incoming,
) -> Result<Bytes, Error> {
    if !binding.expects_body() {
        return Ok(Bytes::new());
    }
    let content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !is_json(content_type) {
        return Err(Error::UnsupportedMediaType(content_type.to_string()));
    }
    let limit = shared.max_request_bytes;
    Ok(Limited::new(body, limit)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                Error::RequestTooLarge { limit }
            } else {
                Error::Body(e.to_string())
            }
        })?
        .to_bytes())
}

/// The gRPC code of a call's outcome.
pub(crate) fn outcome_code<T>(outcome: &Result<T, Error>) -> tonic::Code {
    match outcome {
        Ok(_) => tonic::Code::Ok,
        Err(e) => code_of(e),
    }
}

/// How a call ended, for adaptive admission.
fn admission_outcome<T>(outcome: &Result<T, Error>) -> admission::Outcome {
    match outcome {
        Ok(_) => admission::Outcome::Ran,
        Err(e) if e.ran() => admission::Outcome::Ran,
        Err(_) => admission::Outcome::Dropped,
    }
}

/// `retry-after` (seconds, rounded up: HTTP) and `grpc-retry-pushback-ms` (gRPC's retry
/// policy) for an error that asks the client to come back later.
pub(crate) fn retry_headers(error: &Error) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Some(after) = error.retry_after() {
        let seconds = after.as_millis().div_ceil(1000).max(1);
        headers.insert(http::header::RETRY_AFTER, HeaderValue::from(seconds as u64));
        headers.insert(
            "grpc-retry-pushback-ms",
            HeaderValue::from(after.as_millis() as u64),
        );
    }
    headers
}

/// Counts a finished call of `method` and its duration.
pub(crate) fn record<T>(
    protocol: &'static str,
    method: &statehouse_runtime::method_index::MethodInfo,
    outcome: &Result<T, Error>,
    started: std::time::Instant,
) {
    let code = match outcome {
        Ok(_) => tonic::Code::Ok,
        Err(e) => code_of(e),
    };
    record_code(protocol, method, code, started);
}

/// Counts a finished call of `method` with its code.
pub(crate) fn record_code(
    protocol: &'static str,
    method: &statehouse_runtime::method_index::MethodInfo,
    code: tonic::Code,
    started: std::time::Instant,
) {
    crate::metrics::call(protocol, Some(method), code, started);
}

fn is_json(content_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"))
}

pub(crate) fn text(status: StatusCode, body: &str) -> Response<Body> {
    let mut response = Response::new(Body::new(Full::new(Bytes::copy_from_slice(
        body.as_bytes(),
    ))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
