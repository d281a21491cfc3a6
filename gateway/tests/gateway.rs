//! The gateway in process, in front of fake processors (tonic `Processor` servers scripted by
//! the test), with a registry fed directly: gRPC, gRPC-Web and HTTP/JSON clients get exactly
//! what the processor answered, and "not owner" answers are retried at the new owner.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use statehouse_gateway::Gateway;
use statehouse_runtime::config::{Access, AccessRule, AuthOptions, GatewayOptions};
use statehouse_runtime::router::{self, Registry, Router};
use statehouse_schemas::avro::{
    Entity, Processor as ProcessorRecord, RoutingRecord, ServiceRecord,
};
use statehouse_schemas::cloudstate::{Metadata, MetadataEntry, metadata_entry};
use statehouse_schemas::grpc::health::v1::{HealthCheckRequest, health_client::HealthClient};
use statehouse_schemas::grpc::reflection::v1alpha::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};
use statehouse_schemas::shoppingcart::shopping_cart_client::ShoppingCartClient;
use statehouse_schemas::shoppingcart::{
    AddLineItem, Cart, GetShoppingCart, LineItem, RemoveLineItem,
};
use statehouse_schemas::statehouse::processor::v1::processor_server::{Processor, ProcessorServer};
use statehouse_schemas::statehouse::processor::v1::{
    Failure, HandleRequest, HandleResponse, NotOwner, Reply, handle_response::Outcome,
};
use statehouse_schemas::{FILE_DESCRIPTOR_SET, protocol};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status, Streaming};

const SERVICE: &str = "cart";
const ADD_ITEM: &str = "/com.example.shoppingcart.ShoppingCart/AddItem";

/// How a fake processor answers.
#[derive(Clone)]
enum Mode {
    /// Runs the shopping cart in memory.
    Serve,
    /// Refuses every command: not the owner (optionally naming the new owner).
    NotOwner { hint: Option<(String, i64)> },
}

/// A scripted `statehouse.processor.v1.Processor`.
struct FakeProcessor {
    mode: Mode,
    requests: Mutex<Vec<HandleRequest>>,
    carts: Mutex<HashMap<String, Cart>>,
}

impl FakeProcessor {
    fn requests(&self) -> Vec<HandleRequest> {
        self.requests.lock().unwrap().clone()
    }

    fn run(&self, request: &HandleRequest) -> Result<HandleResponse, Status> {
        let reply = |message: &dyn Fn() -> Vec<u8>, entries: Vec<MetadataEntry>| HandleResponse {
            outcome: Some(Outcome::Reply(Reply {
                payload: message().into(),
                type_url: String::new(),
                metadata: Some(Metadata { entries }),
            })),
            deduplicated: false,
            position: None,
        };
        let mut carts = self.carts.lock().unwrap();
        Ok(
            match request.method.rsplit('/').next().unwrap_or_default() {
                "AddItem" => {
                    let add = AddLineItem::decode(request.payload.clone())
                        .map_err(|e| Status::invalid_argument(e.to_string()))?;
                    if add.user_id == "fail" {
                        return Ok(HandleResponse {
                            outcome: Some(Outcome::Failure(Failure {
                                description: "boom".into(),
                                grpc_code: 0,
                            })),
                            deduplicated: false,
                            position: None,
                        });
                    }
                    carts.entry(add.user_id).or_default().items.push(LineItem {
                        product_id: add.product_id,
                        name: add.name,
                        quantity: add.quantity,
                    });
                    reply(
                        &Vec::new,
                        vec![MetadataEntry {
                            key: "x-cart".into(),
                            value: Some(metadata_entry::Value::StringValue("updated".into())),
                        }],
                    )
                }
                "GetCart" => {
                    let get = GetShoppingCart::decode(request.payload.clone())
                        .map_err(|e| Status::invalid_argument(e.to_string()))?;
                    let cart = carts.get(&get.user_id).cloned().unwrap_or_default();
                    reply(&|| cart.encode_to_vec(), vec![])
                }
                // No reply message at all.
                _ => HandleResponse::default(),
            },
        )
    }
}

#[tonic::async_trait]
impl Processor for FakeProcessor {
    async fn handle(
        &self,
        request: Request<HandleRequest>,
    ) -> Result<Response<HandleResponse>, Status> {
        let request = request.into_inner();
        self.requests.lock().unwrap().push(request.clone());
        match &self.mode {
            Mode::Serve => self.run(&request).map(Response::new),
            Mode::NotOwner { hint } => {
                let (owner_endpoint, owner_epoch) = hint.clone().unwrap_or_default();
                Err(NotOwner {
                    service: request.service.clone(),
                    partition: request.partition,
                    owner_endpoint,
                    owner_epoch,
                    owner_processor_id: "someone-else".into(),
                }
                .into_status(Code::FailedPrecondition, "not the owner"))
            }
        }
    }

    type HandleStreamedStream = futures::stream::Empty<Result<HandleResponse, Status>>;

    async fn handle_streamed(
        &self,
        _request: Request<Streaming<HandleRequest>>,
    ) -> Result<Response<Self::HandleStreamedStream>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn erase(
        &self,
        _request: Request<statehouse_schemas::statehouse::processor::v1::EraseRequest>,
    ) -> Result<Response<statehouse_schemas::statehouse::processor::v1::EraseResponse>, Status>
    {
        Err(Status::unimplemented("not in this test"))
    }
}

/// Starts a fake processor on a free port; returns it and its endpoint.
async fn start_processor(mode: Mode, shutdown: &CancellationToken) -> (Arc<FakeProcessor>, String) {
    let fake = Arc::new(FakeProcessor {
        mode,
        requests: Mutex::new(Vec::new()),
        carts: Mutex::new(HashMap::new()),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let server = tonic::transport::Server::builder()
        .add_service(ProcessorServer::from_arc(Arc::clone(&fake)))
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener),
            shutdown.clone().cancelled_owned(),
        );
    tokio::spawn(server);
    (fake, endpoint)
}

fn cart_record(processors: &[&str]) -> ServiceRecord {
    ServiceRecord {
        service: SERVICE.into(),
        descriptor_set: Bytes::from_static(FILE_DESCRIPTOR_SET),
        entities: vec![Entity {
            entity_type: protocol::EVENT_SOURCED.into(),
            service_name: "com.example.shoppingcart.ShoppingCart".into(),
            persistence_id: "shopping-cart".into(),
            passivation_timeout_ms: None,
        }],
        processors: processors
            .iter()
            .enumerate()
            .map(|(i, endpoint)| ProcessorRecord {
                processor_id: format!("p{i}"),
                endpoint: endpoint.to_string(),
            })
            .collect(),
        protocol_major: 0,
        protocol_minor: 2,
        support_library_name: "fake".into(),
        support_library_version: "0".into(),
        updated_at_ms: 1,
    }
}

fn route(partition: u32, endpoint: &str, epoch: i64) -> RoutingRecord {
    RoutingRecord {
        service: SERVICE.into(),
        partition: partition as i32,
        owner_processor_id: format!("owner-{epoch}"),
        owner_endpoint: endpoint.into(),
        epoch,
        updated_at_ms: 0,
    }
}

async fn start_gateway(registry: &Registry, shutdown: &CancellationToken) -> SocketAddr {
    start_gateway_with(registry, shutdown, AuthOptions::default()).await
}

async fn start_gateway_with(
    registry: &Registry,
    shutdown: &CancellationToken,
    auth: AuthOptions,
) -> SocketAddr {
    let options = GatewayOptions {
        auth,
        listen: "127.0.0.1:0".parse().unwrap(),
        metrics_listen: "127.0.0.1:0".parse().unwrap(),
        default_timeout_ms: 10_000,
        max_request_bytes: 64 * 1024,
        ..GatewayOptions::default()
    };
    let router = Router::new(registry.clone(), router::Options::default());
    Gateway::bind(&options, router, shutdown.clone())
        .await
        .unwrap()
        .local_addr()
}

async fn cart_client(addr: SocketAddr) -> ShoppingCartClient<Channel> {
    ShoppingCartClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
}

/// A plain HTTP/1.1 exchange: (status, headers, body).
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String, Vec<u8>) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete response");
    let head = String::from_utf8(response[..split].to_vec()).unwrap();
    let status = head[9..12].parse().unwrap();
    (
        status,
        head.to_ascii_lowercase(),
        response[split + 4..].to_vec(),
    )
}

fn text(body: Vec<u8>) -> String {
    String::from_utf8(body).unwrap()
}

fn frame(message: &[u8]) -> Vec<u8> {
    let mut out = vec![0];
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    out
}

async fn poll_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn grpc_grpc_web_and_http_calls_reach_the_owner_and_replies_come_back_exactly() {
    let shutdown = CancellationToken::new();
    let (processor, endpoint) = start_processor(Mode::Serve, &shutdown).await;
    let registry = Registry::new();
    registry.apply_service(cart_record(&[&endpoint])).unwrap();
    registry.set_partition_count(SERVICE, 4);
    for partition in 0..4 {
        registry.apply_routing(route(partition, &endpoint, 1));
    }
    let addr = start_gateway(&registry, &shutdown).await;
    let mut client = cart_client(addr).await;

    // gRPC: the request bytes, key, metadata and partition reach the processor.
    let add = AddLineItem {
        user_id: "u1".into(),
        product_id: "p".into(),
        name: "n".into(),
        quantity: 2,
    };
    let mut request = Request::new(add.clone());
    request
        .metadata_mut()
        .insert("x-user", "alice".parse().unwrap());
    request
        .metadata_mut()
        .insert("idempotency-key", "k-1".parse().unwrap());
    let response = client.add_item(request).await.unwrap();
    assert_eq!(
        response.metadata().get("x-cart").unwrap(),
        "updated",
        "reply metadata → headers"
    );
    let seen = processor.requests();
    assert_eq!(seen.len(), 1);
    let seen = &seen[0];
    assert_eq!(seen.service, SERVICE);
    assert_eq!(seen.method, ADD_ITEM);
    assert_eq!(seen.entity_id, "u1");
    assert_eq!(
        seen.payload,
        Bytes::from(add.encode_to_vec()),
        "bytes passed through"
    );
    assert_eq!(seen.idempotency_key, "k-1");
    assert_eq!(
        seen.partition,
        statehouse_core::partition_for(b"u1", 4) as i32
    );
    assert_eq!(seen.hops, 0);
    assert!(seen.deadline_unix_ms > 0);
    let entries = &seen.metadata.as_ref().unwrap().entries;
    assert!(entries.iter().any(|e| e.key == "x-user"
        && e.value == Some(metadata_entry::Value::StringValue("alice".into()))));
    assert!(
        !entries.iter().any(|e| e.key == "te"),
        "hop-by-hop headers stay out"
    );

    let cart = client
        .get_cart(GetShoppingCart {
            user_id: "u1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        cart.items,
        [LineItem {
            product_id: "p".into(),
            name: "n".into(),
            quantity: 2
        }]
    );

    // A user failure is UNKNOWN with its description; an empty key never reaches a processor.
    let failure = client
        .add_item(AddLineItem {
            user_id: "fail".into(),
            ..AddLineItem::default()
        })
        .await
        .unwrap_err();
    assert_eq!((failure.code(), failure.message()), (Code::Unknown, "boom"));
    let before = processor.requests().len();
    let empty_key = client.add_item(AddLineItem::default()).await.unwrap_err();
    assert_eq!(empty_key.code(), Code::InvalidArgument, "{empty_key:?}");
    assert!(empty_key.message().contains("user_id"), "{empty_key:?}");
    assert_eq!(processor.requests().len(), before);

    // HTTP/JSON, exact bodies.
    let json = [("Content-Type", "application/json")];
    let (status, head, body) = http(
        addr,
        "POST",
        "/cart/u2/items/add",
        &json,
        br#"{"productId":"p","name":"n","quantity":2}"#,
    )
    .await;
    assert_eq!((status, text(body)), (200, "{}".to_string()));
    assert!(head.contains("content-type: application/json"), "{head}");
    assert!(head.contains("x-cart: updated"), "{head}");
    let (status, _, body) = http(addr, "GET", "/carts/u2", &[], b"").await;
    assert_eq!(
        (status, text(body)),
        (
            200,
            r#"{"items":[{"productId":"p","name":"n","quantity":2}]}"#.to_string()
        )
    );
    let (status, _, body) = http(addr, "GET", "/carts/u2/items", &[], b"").await;
    assert_eq!(
        (status, text(body)),
        (
            200,
            r#"[{"productId":"p","name":"n","quantity":2}]"#.to_string()
        )
    );
    let (status, _, body) = http(addr, "GET", "/carts/nobody", &[], b"").await;
    assert_eq!((status, text(body)), (200, r#"{"items":[]}"#.to_string()));
    let (status, _, body) = http(addr, "POST", "/cart/fail/items/add", &json, b"{}").await;
    assert_eq!((status, text(body)), (500, "boom".to_string()));
    let (status, _, body) = http(addr, "POST", "/cart/u2/items/add", &json, b"{oops").await;
    assert_eq!(status, 400);
    assert!(text(body).starts_with("Malformed request"));
    let (status, _, _) = http(
        addr,
        "POST",
        "/cart/u2/items/add",
        &[("Content-Type", "text/plain")],
        b"{}",
    )
    .await;
    assert_eq!(status, 400, "a body must be JSON");
    let (status, _, body) = http(addr, "POST", "/cart/u2/items/p/remove", &[], b"").await;
    assert_eq!((status, body.len()), (204, 0), "no reply message");
    let removed = processor.requests().pop().unwrap();
    assert_eq!(
        RemoveLineItem::decode(removed.payload).unwrap(),
        RemoveLineItem {
            user_id: "u2".into(),
            product_id: "p".into()
        }
    );

    // gRPC-Web over HTTP/1.1: message frame, then the trailer frame.
    let request = frame(
        &GetShoppingCart {
            user_id: "u2".into(),
        }
        .encode_to_vec(),
    );
    let (status, head, body) = http(
        addr,
        "POST",
        "/com.example.shoppingcart.ShoppingCart/GetCart",
        &[("Content-Type", "application/grpc-web+proto")],
        &request,
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        head.contains("content-type: application/grpc-web+proto"),
        "{head}"
    );
    let cart = Cart {
        items: vec![LineItem {
            product_id: "p".into(),
            name: "n".into(),
            quantity: 2,
        }],
    };
    let mut expected = frame(&cart.encode_to_vec());
    let trailer = b"grpc-status:0\r\n";
    expected.push(0x80);
    expected.extend_from_slice(&(trailer.len() as u32).to_be_bytes());
    expected.extend_from_slice(trailer);
    assert_eq!(body, expected);

    // Readiness, the Knative probe, and nothing else.
    assert_eq!(http(addr, "GET", "/", &[], b"").await.0, 200);
    let (status, _, body) = http(addr, "GET", "/", &[("K-Network-Probe", "queue")], b"").await;
    assert_eq!((status, text(body)), (200, "queue".to_string()));
    assert_eq!(http(addr, "GET", "/nothing/here", &[], b"").await.0, 404);

    // Reflection and health over gRPC.
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut reflection = ServerReflectionClient::new(channel.clone());
    let question = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = reflection
        .server_reflection_info(futures::stream::iter([question]))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        answers.message().await.unwrap().unwrap().message_response
    else {
        panic!("not a service list");
    };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    assert_eq!(
        names,
        [
            "grpc.reflection.v1alpha.ServerReflection",
            "com.example.shoppingcart.ShoppingCart"
        ]
    );
    let health = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(health.status, 1, "SERVING");

    shutdown.cancel();
}

#[tokio::test]
async fn not_owner_answers_are_retried_at_the_new_owner() {
    let shutdown = CancellationToken::new();
    let (owner, owner_endpoint) = start_processor(Mode::Serve, &shutdown).await;
    let (stale, stale_endpoint) = start_processor(Mode::NotOwner { hint: None }, &shutdown).await;
    let (hinting, hinting_endpoint) = start_processor(
        Mode::NotOwner {
            hint: Some((owner_endpoint.clone(), 4)),
        },
        &shutdown,
    )
    .await;
    let registry = Registry::new();
    registry
        .apply_service(cart_record(&[&owner_endpoint]))
        .unwrap();
    registry.set_partition_count(SERVICE, 1);
    registry.apply_routing(route(0, &stale_endpoint, 1));
    let addr = start_gateway(&registry, &shutdown).await;
    let client = cart_client(addr).await;

    // The stale owner refuses; the call waits until the routing table names the new owner.
    let call = tokio::spawn({
        let mut client = client.clone();
        async move {
            client
                .get_cart(GetShoppingCart {
                    user_id: "u1".into(),
                })
                .await
        }
    });
    poll_until("the stale owner's refusal", || !stale.requests().is_empty()).await;
    registry.apply_routing(route(0, &owner_endpoint, 2));
    let cart = call.await.unwrap().unwrap().into_inner();
    assert_eq!(cart, Cart::default());
    assert_eq!(owner.requests().len(), 1);
    assert_eq!(owner.requests()[0].partition, 0);
    let refused = stale.requests().len();

    // An older epoch does not move the partition back.
    assert!(!registry.apply_routing(route(0, &stale_endpoint, 1)));
    client
        .clone()
        .get_cart(GetShoppingCart {
            user_id: "u1".into(),
        })
        .await
        .unwrap();
    assert_eq!(stale.requests().len(), refused);
    assert_eq!(owner.requests().len(), 2);

    // A NotOwner that names the new owner is followed at once.
    registry.apply_routing(route(0, &hinting_endpoint, 3));
    client
        .clone()
        .get_cart(GetShoppingCart {
            user_id: "u1".into(),
        })
        .await
        .unwrap();
    assert_eq!(hinting.requests().len(), 1);
    assert_eq!(owner.requests().len(), 3);
    let learned = registry.owner(SERVICE, 0).unwrap();
    assert_eq!(
        (learned.endpoint.as_str(), learned.epoch),
        (owner_endpoint.as_str(), 4)
    );

    // An owner nobody listens at: UNAVAILABLE (HTTP 503) once the deadline passes; a
    // refusal until the deadline: DEADLINE_EXCEEDED (HTTP 504). (Over HTTP, so that no
    // client-side timer races the gateway's answer.)
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    registry.apply_routing(route(0, &dead, 5));
    let timeout = [("grpc-timeout", "300m")];
    let (status, _, body) = http(addr, "GET", "/carts/u1", &timeout, b"").await;
    assert_eq!(status, 503, "{}", text(body.clone()));
    assert!(text(body).contains("unreachable"));
    registry.apply_routing(route(0, &stale_endpoint, 6));
    let (status, _, body) = http(addr, "GET", "/carts/u1", &timeout, b"").await;
    assert_eq!(status, 504, "{}", text(body.clone()));
    assert!(text(body).contains("not the owner"));

    // The method of no service.
    registry.remove_service(SERVICE);
    let err = client
        .clone()
        .get_cart(GetShoppingCart {
            user_id: "u1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented, "{err:?}");

    shutdown.cancel();
}

#[tokio::test]
async fn crdt_commands_fall_back_to_any_processor_when_the_owner_is_unreachable() {
    let shutdown = CancellationToken::new();
    let (replica, replica_endpoint) = start_processor(Mode::Serve, &shutdown).await;
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let registry = Registry::new();
    let mut record = cart_record(&[&dead, &replica_endpoint]);
    record.entities[0].entity_type = protocol::CRDT.into();
    registry.apply_service(record).unwrap();
    registry.set_partition_count(SERVICE, 1);
    registry.apply_routing(route(0, &dead, 1));
    let addr = start_gateway(&registry, &shutdown).await;

    let cart = cart_client(addr)
        .await
        .get_cart(GetShoppingCart {
            user_id: "u1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cart, Cart::default());
    let seen = replica.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].partition, -1, "run by a replica, not as the owner");
    assert_eq!(seen[0].entity_id, "u1");
    shutdown.cancel();
}

/// A token signed with `key` (EdDSA, kid `k1`) carrying `claims`.
fn token(key: &ring::signature::Ed25519KeyPair, claims: &serde_json::Value) -> String {
    use base64::Engine as _;
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let header = serde_json::json!({"alg": "EdDSA", "kid": "k1", "typ": "JWT"});
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let signature = key.sign(input.as_bytes());
    format!("{input}.{}", b64(signature.as_ref()))
}

#[tokio::test]
async fn with_auth_on_refused_calls_never_reach_a_processor_on_any_protocol() {
    use base64::Engine as _;
    use ring::signature::{Ed25519KeyPair, KeyPair as _};

    let shutdown = CancellationToken::new();
    let (processor, endpoint) = start_processor(Mode::Serve, &shutdown).await;
    let registry = Registry::new();
    registry.apply_service(cart_record(&[&endpoint])).unwrap();
    registry.set_partition_count(SERVICE, 4);
    for partition in 0..4 {
        registry.apply_routing(route(partition, &endpoint, 1));
    }
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
    let key = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key.public_key().as_ref());
    let dir = std::env::temp_dir().join(format!("statehouse-gw-auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let jwks = dir.join("jwks.json");
    std::fs::write(
        &jwks,
        serde_json::json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "k1", "x": x}]})
            .to_string(),
    )
    .unwrap();
    let auth = AuthOptions {
        enabled: true,
        jwks_file: Some(jwks),
        issuers: vec!["https://issuer.test".into()],
        audiences: vec!["shop".into()],
        rules: vec![
            AccessRule {
                method: "com.example.shoppingcart.ShoppingCart/GetCart".into(),
                access: Access::Anonymous,
                claim: None,
                any_of: vec![],
            },
            AccessRule {
                method: "com.example.shoppingcart.ShoppingCart/RemoveItem".into(),
                access: Access::Claim,
                claim: Some("role".into()),
                any_of: vec!["admin".into()],
            },
        ],
        ..AuthOptions::default()
    };
    let addr = start_gateway_with(&registry, &shutdown, auth).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = |exp: u64| {
        serde_json::json!({"iss": "https://issuer.test", "aud": "shop", "sub": "ada",
                           "exp": exp, "role": "user", "tenant": "t1"})
    };
    let good = token(&key, &claims(now + 300));
    let expired = token(&key, &claims(now - 3600));
    let bearer = |t: &str| format!("Bearer {t}");
    let mut client = cart_client(addr).await;
    let add = || AddLineItem {
        user_id: "u1".into(),
        product_id: "p".into(),
        name: "n".into(),
        quantity: 1,
    };
    let with_token = |t: Option<&str>| {
        let mut request = Request::new(add());
        if let Some(t) = t {
            request
                .metadata_mut()
                .insert("authorization", bearer(t).parse().unwrap());
        }
        request
            .metadata_mut()
            .insert("statehouse-jwt-subject", "root".parse().unwrap());
        request
    };

    // gRPC.
    let status = client.add_item(with_token(None)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert_eq!(
        status.message(),
        "unauthenticated: a bearer token is required"
    );
    let status = client
        .add_item(with_token(Some(&expired)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert_eq!(
        status.metadata().get("www-authenticate").unwrap(),
        "Bearer error=\"invalid_token\""
    );
    let mut remove = Request::new(RemoveLineItem {
        user_id: "u1".into(),
        product_id: "p".into(),
    });
    remove
        .metadata_mut()
        .insert("authorization", bearer(&good).parse().unwrap());
    let status = client.remove_item(remove).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(
        processor.requests().is_empty(),
        "nothing reached the processor"
    );

    // gRPC-Web (trailers-only answer) and HTTP/JSON.
    let message = frame(&add().encode_to_vec());
    let (status, head, _) = http(
        addr,
        "POST",
        ADD_ITEM,
        &[("Content-Type", "application/grpc-web+proto")],
        &message,
    )
    .await;
    assert_eq!(status, 200);
    assert!(head.contains("grpc-status: 16"), "{head}");
    let json = ("Content-Type", "application/json");
    let body = br#"{"productId":"p","name":"n","quantity":1}"#;
    let (status, head, text_body) = http(addr, "POST", "/cart/u1/items/add", &[json], body).await;
    assert_eq!(status, 401);
    assert!(
        head.lines()
            .any(|l| l.trim_end() == "www-authenticate: bearer"),
        "{head}"
    );
    assert_eq!(
        text(text_body),
        "unauthenticated: a bearer token is required"
    );
    let mut forged = good.clone();
    forged.replace_range(forged.len() - 4.., "AAAA");
    let forged_header = bearer(&forged);
    let (status, head, _) = http(
        addr,
        "POST",
        "/cart/u1/items/add",
        &[json, ("Authorization", &forged_header)],
        body,
    )
    .await;
    assert_eq!(status, 401);
    assert!(
        head.contains("www-authenticate: bearer error=\"invalid_token\""),
        "{head}"
    );
    let good_header = bearer(&good);
    let (status, head, _) = http(
        addr,
        "POST",
        "/cart/u1/items/p/remove",
        &[("Authorization", &good_header)],
        b"",
    )
    .await;
    assert_eq!(status, 403);
    assert!(head.contains("insufficient_scope"), "{head}");
    assert!(
        processor.requests().is_empty(),
        "nothing reached the processor"
    );

    // Anonymous access, health and readiness stay open; reflection needs a caller.
    let (status, _, _) = http(addr, "GET", "/carts/u1", &[], b"").await;
    assert_eq!(status, 200);
    assert_eq!(processor.requests().len(), 1);
    assert_eq!(http(addr, "GET", "/", &[], b"").await.0, 200);
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let health = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(health.status, 1, "SERVING");
    let question = || ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let refused = ServerReflectionClient::new(channel.clone())
        .server_reflection_info(futures::stream::iter([question()]))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    let mut request = Request::new(futures::stream::iter([question()]));
    request
        .metadata_mut()
        .insert("authorization", bearer(&good).parse().unwrap());
    let mut answers = ServerReflectionClient::new(channel)
        .server_reflection_info(request)
        .await
        .unwrap()
        .into_inner();
    assert!(answers.message().await.unwrap().is_some());

    // A valid token: the call goes through with the claims as metadata, without the token or
    // the client's spoofed claim header.
    client.add_item(with_token(Some(&good))).await.unwrap();
    let seen = processor.requests().pop().unwrap();
    let entries = seen.metadata.unwrap().entries;
    let value = |key: &str| {
        entries
            .iter()
            .filter(|e| e.key == key)
            .map(|e| e.value.clone())
            .collect::<Vec<_>>()
    };
    let string = |s: &str| vec![Some(metadata_entry::Value::StringValue(s.into()))];
    assert_eq!(value("statehouse-jwt-subject"), string("ada"));
    assert_eq!(value("statehouse-jwt-claim-role"), string("user"));
    assert_eq!(value("statehouse-jwt-claim-tenant"), string("t1"));
    assert!(value("authorization").is_empty(), "{entries:?}");

    shutdown.cancel();
    std::fs::remove_dir_all(&dir).unwrap();
}
