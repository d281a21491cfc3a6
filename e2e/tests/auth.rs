//! Authentication at the gateway against the real stack (`docs/security.md`): the Rust shopping
//! cart behind a gateway with `[gateway.auth]` on (a JWKS file with an Ed25519 and a P-256 key),
//! real Kafka and Cassandra, an interceptor between the processor and the user function.
//!
//! * every refusal — no token, malformed, expired, not yet valid, wrong audience, wrong issuer,
//!   bad signature, `alg=none`, HS256 with the public key as the secret, an unknown `kid`, a
//!   valid token on a method whose rule it does not meet — gets its documented code over gRPC
//!   (UNAUTHENTICATED / PERMISSION_DENIED) and over HTTP/JSON (401 with the bearer challenge /
//!   403);
//! * nothing of a refused call is persisted: the entity's journal (read_committed from Kafka)
//!   and its Cassandra rows hold only what the accepted call wrote, and the user function never
//!   saw a refused command;
//! * a valid token's claims reach the user function as `statehouse-jwt-*` metadata, a client's
//!   spoofed `statehouse-jwt-*` header and the `authorization` header do not;
//! * no token appears in any log of the gateway or the processor (logged at debug);
//! * the streamed shapes (client, server, bidirectional streaming over gRPC; a server stream
//!   over HTTP/JSON and gRPC-Web) of the Go TCK's actions are checked before the stream opens:
//!   a refused one never reaches the user function, an accepted one carries the claims.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use prost::Message as _;
use serde_json::{Value, json};
use statehouse_e2e::carts::warm_up;
use statehouse_e2e::clients::{journal_seqs, kafka, store};
use statehouse_e2e::intercept::Interceptor;
use statehouse_e2e::jwt::{Keys, b64, mint, now};
use statehouse_schemas::cloudstate::eventsourced::{EventSourcedStreamIn, event_sourced_stream_in};
use statehouse_schemas::cloudstate::metadata_entry;
use statehouse_schemas::shoppingcart::shopping_cart_client::ShoppingCartClient;
use statehouse_schemas::shoppingcart::{AddLineItem, GetShoppingCart, RemoveLineItem};
use statehouse_test_support::http;
use statehouse_test_support::stack::{Options, PortMap, Stack};
use statehouse_test_support::user_function::Kind;
use tonic::Code;
use tonic::transport::Channel;

const SERVICE: &str = "shopping-cart";
const PARTITIONS: u32 = 4;
const ISSUER: &str = "https://issuer.e2e.test";
const AUDIENCE: &str = "shop";
/// The cart every refused call aims at.
const VICTIM: &str = "auth-victim";

fn claims(changes: &[(&str, Value)]) -> Value {
    let mut claims = json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "ada", "exp": now() + 600,
                            "nbf": now() - 10, "role": "user", "tenant": "t-42"});
    for (k, v) in changes {
        claims[*k] = v.clone();
    }
    claims
}

/// The refused tokens: (what, token, the gRPC code, the HTTP status) — for AddItem.
fn refused_tokens(keys: &Keys) -> Vec<(&'static str, Option<String>, Code, u16)> {
    let unauth = |what, token: String| (what, Some(token), Code::Unauthenticated, 401);
    let good = keys.ed_token("ed1", &claims(&[]));
    let mut forged = good.clone();
    let cut = forged.rfind('.').unwrap() + 1;
    forged.replace_range(
        cut..cut + 4,
        if &good[cut..cut + 4] == "AAAA" {
            "BBBB"
        } else {
            "AAAA"
        },
    );
    // The Ed25519 public key as an HMAC secret.
    let secret = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, keys.ed_public_key());
    vec![
        ("no token", None, Code::Unauthenticated, 401),
        unauth("malformed", "not-a-jwt".into()),
        unauth(
            "expired",
            keys.ed_token("ed1", &claims(&[("exp", json!(now() - 3600))])),
        ),
        unauth(
            "not yet valid",
            keys.ed_token("ed1", &claims(&[("nbf", json!(now() + 3600))])),
        ),
        unauth(
            "wrong audience",
            keys.ed_token("ed1", &claims(&[("aud", json!("someone-else"))])),
        ),
        unauth(
            "wrong issuer",
            keys.ed_token("ed1", &claims(&[("iss", json!("https://evil.test"))])),
        ),
        unauth("bad signature", forged),
        unauth(
            "alg=none",
            format!(
                "{}.{}.",
                b64(json!({"alg": "none"}).to_string().as_bytes()),
                b64(claims(&[]).to_string().as_bytes())
            ),
        ),
        unauth(
            "HS256 with the public key as secret",
            mint(&json!({"alg": "HS256", "kid": "ed1"}), &claims(&[]), |m| {
                ring::hmac::sign(&secret, m).as_ref().to_vec()
            }),
        ),
        unauth("unknown kid", keys.ed_token("ed9", &claims(&[]))),
    ]
}

async fn grpc_client(stack: &Stack) -> ShoppingCartClient<Channel> {
    ShoppingCartClient::connect(format!("http://{}", stack.gateway_addr))
        .await
        .unwrap()
}

fn authorized<T>(message: T, token: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    request.set_timeout(Duration::from_secs(30));
    request
}

fn add(user: &str) -> AddLineItem {
    AddLineItem {
        user_id: user.into(),
        product_id: "apple".into(),
        name: "Apple".into(),
        quantity: 1,
    }
}

async fn http_call(
    stack: &Stack,
    method: &'static str,
    path: String,
    token: Option<String>,
    body: Option<&'static str>,
) -> http::Response {
    let addr = stack.gateway_addr.clone();
    tokio::task::spawn_blocking(move || {
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut headers = vec![("Content-Type", "application/json")];
        if let Some(auth) = &auth {
            headers.push(("Authorization", auth.as_str()));
        }
        http::request(&addr, method, &path, &headers, body).unwrap()
    })
    .await
    .unwrap()
}

/// The journal records of cart `user` (read_committed, from offset 0).
async fn journal_of(stack: &Stack, user: &str) -> Vec<u64> {
    journal_seqs(
        &kafka(stack),
        &format!("{}{SERVICE}.journal", stack.prefix),
        statehouse_core::partition_for(user.as_bytes(), PARTITIONS),
        &format!("{SERVICE}|{user}"),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_authenticates_and_refused_calls_leave_no_trace() {
    let keys = Keys::new();
    let dir = std::env::temp_dir().join(format!("statehouse-e2e-auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let jwks = dir.join("jwks.json");
    std::fs::write(&jwks, keys.jwks()).unwrap();

    let interceptor: Arc<Mutex<Option<Arc<Interceptor>>>> = Arc::default();
    let slot = Arc::clone(&interceptor);
    let mut options = Options::new(Kind::RustShoppingCart);
    options.partitions = PARTITIONS;
    options.user_function_port = Some(PortMap(Arc::new(move |port| {
        let started = Arc::new(Interceptor::start(([127, 0, 0, 1], port).into()));
        let port = started.port();
        *slot.lock().unwrap() = Some(started);
        port
    })));
    options.common_sets = vec![
        "telemetry.log-filter=\"info,statehouse_gateway=debug,statehouse_runtime=debug,statehouse_processor=debug\"".into(),
        "gateway.auth.enabled=true".into(),
        format!("gateway.auth.jwks-file=\"{}\"", jwks.display()),
        format!("gateway.auth.issuers=[\"{ISSUER}\"]"),
        format!("gateway.auth.audiences=[\"{AUDIENCE}\"]"),
        "gateway.auth.rules=[{method=\"com.example.shoppingcart.ShoppingCart/GetCart\", access=\"anonymous\"}, {method=\"com.example.shoppingcart.ShoppingCart/RemoveItem\", access=\"claim\", claim=\"role\", any-of=[\"admin\"]}]".into(),
    ];
    let mut stack = Stack::start(options);
    stack.wait_ready(0, Duration::from_secs(120));
    let interceptor = interceptor
        .lock()
        .unwrap()
        .clone()
        .expect("the interceptor");
    let mut client = grpc_client(&stack).await;
    warm_up(&mut client).await;

    // The victim's cart gets one item with a valid token (ES256), and a second cart one with
    // an Ed25519 token and a spoofed claim header.
    let ec_token = keys.ec_token(&claims(&[]));
    client
        .add_item(authorized(add(VICTIM), Some(&ec_token)))
        .await
        .unwrap_or_else(|s| panic!("a valid ES256 token: {s:?}"));
    let ed_token = keys.ed_token("ed1", &claims(&[]));
    let mut spoofed = authorized(add("auth-claims"), Some(&ed_token));
    spoofed
        .metadata_mut()
        .insert("statehouse-jwt-claim-role", "admin".parse().unwrap());
    client.add_item(spoofed).await.unwrap();
    assert_eq!(journal_of(&stack, VICTIM).await, [1]);

    // Every refusal, over gRPC and over HTTP/JSON.
    let mut used_tokens = vec![ec_token.clone(), ed_token.clone()];
    for (what, token, code, status) in refused_tokens(&keys) {
        let refused = client
            .add_item(authorized(add(VICTIM), token.as_deref()))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), code, "gRPC, {what}: {refused:?}");
        let answer = http_call(
            &stack,
            "POST",
            format!("/cart/{VICTIM}/items/add"),
            token.clone(),
            Some(r#"{"productId":"apple","name":"Apple","quantity":1}"#),
        )
        .await;
        assert_eq!(answer.status, status, "HTTP, {what}: {answer:?}");
        let challenge = answer.header("www-authenticate").unwrap_or_default();
        if token.is_some() {
            assert_eq!(challenge, "Bearer error=\"invalid_token\"", "{what}");
        } else {
            assert_eq!(challenge, "Bearer", "{what}");
        }
        assert!(
            answer.body.starts_with("unauthenticated: "),
            "{what}: {answer:?}"
        );
        used_tokens.extend(token);
    }
    // A valid token on a method whose rule it does not meet (RemoveItem wants role admin).
    let refused = client
        .remove_item(authorized(
            RemoveLineItem {
                user_id: VICTIM.into(),
                product_id: "apple".into(),
            },
            Some(&ed_token),
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let answer = http_call(
        &stack,
        "POST",
        format!("/cart/{VICTIM}/items/apple/remove"),
        Some(ed_token.clone()),
        None,
    )
    .await;
    assert_eq!(answer.status, 403, "{answer:?}");
    assert_eq!(
        answer.header("www-authenticate"),
        Some("Bearer error=\"insufficient_scope\"")
    );
    // With admin in its role claim, the same call goes through.
    let admin = keys.ed_token("ed1", &claims(&[("role", json!(["user", "admin"]))]));
    used_tokens.push(admin.clone());
    client
        .add_item(authorized(add("auth-admin"), Some(&admin)))
        .await
        .unwrap();
    let answer = http_call(
        &stack,
        "POST",
        "/cart/auth-admin/items/apple/remove".into(),
        Some(admin),
        None,
    )
    .await;
    assert!(matches!(answer.status, 200 | 204), "{answer:?}");

    // GetCart is anonymous: the victim's cart holds exactly the one accepted item.
    let cart = client
        .get_cart(authorized(
            GetShoppingCart {
                user_id: VICTIM.into(),
            },
            None,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cart.items.len(), 1, "{cart:?}");
    assert_eq!(cart.items[0].quantity, 1, "{cart:?}");
    let answer = http_call(&stack, "GET", format!("/carts/{VICTIM}"), None, None).await;
    assert_eq!(answer.status, 200, "{answer:?}");

    // Nothing of a refused call is persisted: one event in the journal, and once the backup
    // has it, one row in Cassandra.
    assert_eq!(journal_of(&stack, VICTIM).await, [1]);
    let store = store(&stack).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let rows = loop {
        let rows = store
            .read_journal(SERVICE, &format!("{SERVICE}|{VICTIM}"), 1)
            .await
            .unwrap();
        if !rows.is_empty() || tokio::time::Instant::now() >= deadline {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        rows.iter().map(|r| r.seq).collect::<Vec<_>>(),
        [1],
        "the backup holds the accepted event only"
    );

    // The user function got exactly one command for the victim (the accepted one); the claims
    // of a valid token reach it, the spoofed header and the token do not.
    let commands: Vec<_> = interceptor
        .calls()
        .into_iter()
        .filter(|call| call.path.ends_with("EventSourced/handle"))
        .flat_map(|call| call.requests)
        .filter_map(|bytes| EventSourcedStreamIn::decode(bytes).ok())
        .filter_map(|message| match message.message {
            Some(event_sourced_stream_in::Message::Command(command)) => Some(command),
            _ => None,
        })
        .collect();
    let of = |entity: &str, name: &str| {
        commands
            .iter()
            .filter(|c| c.entity_id == entity && c.name == name)
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(of(VICTIM, "AddItem").len(), 1, "{commands:?}");
    assert!(of(VICTIM, "RemoveItem").is_empty(), "{commands:?}");
    let [claimed] = <[_; 1]>::try_from(of("auth-claims", "AddItem")).unwrap();
    let entries = claimed.metadata.unwrap().entries;
    let strings = |key: &str| -> Vec<String> {
        entries
            .iter()
            .filter(|e| e.key == key)
            .filter_map(|e| match &e.value {
                Some(metadata_entry::Value::StringValue(s)) => Some(s.clone()),
                _ => None,
            })
            .collect()
    };
    assert_eq!(strings("statehouse-jwt-subject"), ["ada"], "{entries:?}");
    assert_eq!(strings("statehouse-jwt-issuer"), [ISSUER], "{entries:?}");
    assert_eq!(
        strings("statehouse-jwt-claim-role"),
        ["user"],
        "{entries:?}"
    );
    assert_eq!(
        strings("statehouse-jwt-claim-tenant"),
        ["t-42"],
        "{entries:?}"
    );
    assert!(
        entries.iter().all(|e| e.key != "authorization"),
        "{entries:?}"
    );

    // No token in any log (at debug): the gateway's, the processor's, the user function's.
    let mut logs = vec![("gateway", stack.gateway.log())];
    logs.push(("processor", stack.pods[0].processor.log()));
    logs.push(("user function", stack.pods[0].user_function.log()));
    assert!(
        logs[0].1.contains("call refused"),
        "the gateway logs refusals at debug"
    );
    for (name, log) in &logs {
        for token in &used_tokens {
            let signature = token.rsplit('.').next().unwrap_or_default();
            assert!(
                !log.contains(token.as_str()),
                "a token is in the {name} log"
            );
            assert!(
                signature.len() < 8 || !log.contains(signature),
                "a token's signature is in the {name} log"
            );
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A TCK action request: one group replying `message`.
fn tck_request(message: &str) -> statehouse_e2e::proto::tck::action::Request {
    use statehouse_e2e::proto::tck::action::{self as a, process_step};
    a::Request {
        groups: vec![a::ProcessGroup {
            steps: vec![a::ProcessStep {
                step: Some(process_step::Step::Reply(a::Reply {
                    message: message.into(),
                })),
            }],
        }],
    }
}

/// The streamed shapes (client, server, bidirectional) of the Go TCK's actions over gRPC, and a
/// server stream over HTTP/JSON and gRPC-Web: refused calls get their codes and never reach the
/// user function; an accepted one carries the claims.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_calls_are_checked_before_they_open() {
    use statehouse_e2e::proto::tck::action::action_tck_model_client::ActionTckModelClient;
    use statehouse_schemas::cloudstate::action::ActionCommand;

    let keys = Keys::new();
    let dir = std::env::temp_dir().join(format!("statehouse-e2e-auth-s-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let jwks = dir.join("jwks.json");
    std::fs::write(&jwks, keys.jwks()).unwrap();
    let interceptor: Arc<Mutex<Option<Arc<Interceptor>>>> = Arc::default();
    let slot = Arc::clone(&interceptor);
    let mut options = Options::new(Kind::GoTck);
    options.service = "tck".into();
    options.user_function_port = Some(PortMap(Arc::new(move |port| {
        let started = Arc::new(Interceptor::start(([127, 0, 0, 1], port).into()));
        let port = started.port();
        *slot.lock().unwrap() = Some(started);
        port
    })));
    options.common_sets = vec![
        "gateway.auth.enabled=true".into(),
        format!("gateway.auth.jwks-file=\"{}\"", jwks.display()),
        format!("gateway.auth.issuers=[\"{ISSUER}\"]"),
        format!("gateway.auth.audiences=[\"{AUDIENCE}\"]"),
        "gateway.auth.rules=[{method=\"cloudstate.tck.model.action.ActionTckModel/ProcessStreamed\", access=\"claim\", claim=\"role\", any-of=[\"admin\"]}]".into(),
    ];
    let mut stack = Stack::start(options);
    stack.wait_ready(0, Duration::from_secs(120));
    let interceptor = interceptor
        .lock()
        .unwrap()
        .clone()
        .expect("the interceptor");
    let channel = Channel::from_shared(format!("http://{}", stack.gateway_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = ActionTckModelClient::new(channel);
    let action_calls = || {
        interceptor
            .calls()
            .into_iter()
            .filter(|c| c.path.starts_with("/cloudstate.action.ActionProtocol/"))
            .count()
    };
    let user = keys.ed_token("ed1", &claims(&[]));
    let expired = keys.ed_token("ed1", &claims(&[("exp", json!(now() - 3600))]));

    // Refused: client streaming, server streaming, bidirectional — no token, a bad one, and a
    // valid one on a method whose rule it does not meet.
    for token in [None, Some(expired.as_str())] {
        let status = client
            .process_streamed_in(authorized(
                tokio_stream::iter(vec![tck_request("in")]),
                token,
            ))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
        let status = client
            .process_streamed_out(authorized(tck_request("out"), token))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
        let status = client
            .process_streamed(authorized(
                tokio_stream::iter(vec![tck_request("duplex")]),
                token,
            ))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    }
    let status = client
        .process_streamed(authorized(
            tokio_stream::iter(vec![tck_request("duplex")]),
            Some(&user),
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let body = r#"{"groups": [{"steps": [{"reply": {"message": "a"}}]}]}"#;
    let path = "/cloudstate.tck.model.action.ActionTckModel/ProcessStreamedOut";
    let answer = http_call(&stack, "POST", path.into(), None, Some(body)).await;
    assert_eq!(answer.status, 401, "{answer:?}");
    let answer = http_call(
        &stack,
        "POST",
        path.into(),
        Some(expired.clone()),
        Some(body),
    )
    .await;
    assert_eq!(answer.status, 401, "{answer:?}");
    let mut web = tck_request("web").encode_to_vec();
    let mut framed = vec![0];
    framed.extend_from_slice(&(web.len() as u32).to_be_bytes());
    framed.append(&mut web);
    let addr = stack.gateway_addr.clone();
    let web_answer = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(&addr).unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: gw\r\nContent-Type: application/grpc-web+proto\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
            framed.len()
        );
        stream.write_all(head.as_bytes()).unwrap();
        stream.write_all(&framed).unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).unwrap();
        String::from_utf8_lossy(&raw).to_ascii_lowercase()
    })
    .await
    .unwrap();
    assert!(web_answer.contains("grpc-status: 16"), "{web_answer}");
    assert_eq!(
        action_calls(),
        0,
        "a refused call reached the user function"
    );

    // Accepted: a server stream with a valid token; the action gets the claims.
    let mut stream = client
        .process_streamed_out(authorized(tck_request("ok"), Some(&user)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stream.message().await.unwrap().unwrap().message, "ok");
    let call = interceptor
        .wait_for(Duration::from_secs(10), |c| {
            c.path == "/cloudstate.action.ActionProtocol/handleStreamedOut"
        })
        .await
        .expect("the accepted call reached the user function");
    let command = ActionCommand::decode(call.requests[0].clone()).unwrap();
    let entries = command.metadata.unwrap().entries;
    assert!(
        entries.iter().any(|e| e.key == "statehouse-jwt-subject"
            && e.value == Some(metadata_entry::Value::StringValue("ada".into()))),
        "{entries:?}"
    );
    assert!(
        entries.iter().all(|e| e.key != "authorization"),
        "{entries:?}"
    );
    for (name, log) in [
        ("gateway", stack.gateway.log()),
        ("processor", stack.pods[0].processor.log()),
    ] {
        assert!(
            !log.contains(&user) && !log.contains(&expired),
            "a token is in the {name} log"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
