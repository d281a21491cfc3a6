//! TLS and mTLS (`docs/tls.md`) on the whole stack: two processors of the Rust shopping cart
//! and the gateway as real processes on the real Kafka and Cassandra, with certificates minted
//! by `statehouse admin certs dev`.
//!
//! * The gateway's client port speaks TLS only and asks for client certificates of the CA
//!   (`gateway.tls.client-ca-file`); the cart is served over it by gRPC (ALPN h2) and
//!   HTTP/JSON (ALPN http/1.1).
//! * The gateway reaches the processors over mTLS (`[internal-tls]`: client certificates
//!   required, peer names and the server's name checked).
//! * A plaintext caller of either TLS port reads `400` "this port requires TLS"; a client
//!   certificate of another CA — and, on the gateway, none at all — is refused at the
//!   handshake (the TLS alert is what the client sees).
//! * Refused calls persist nothing: the journal topic, read uncommitted, holds records of the
//!   served cart and of none of the refused ones.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use prost::Message as _;
use rustls_pki_types::ServerName;
use statehouse_core::ids::parse_journal_key;
use statehouse_e2e::carts::warm_up;
use statehouse_e2e::clients::kafka;
use statehouse_e2e::tls::{
    cart_client, client, gateway_tls_sets, internal_tls_sets, mint, probe, status_of,
};
use statehouse_kafka::reader::{self, Isolation};
use statehouse_runtime::tls::{ClientTls, ReloadingKey, read_roots};
use statehouse_schemas::grpc::health::v1::HealthCheckRequest;
use statehouse_schemas::grpc::health::v1::health_client::HealthClient;
use statehouse_schemas::shoppingcart::shopping_cart_client::ShoppingCartClient;
use statehouse_schemas::shoppingcart::{AddLineItem, GetShoppingCart, LineItem};
use statehouse_schemas::statehouse::processor::v1::HandleRequest;
use statehouse_schemas::statehouse::processor::v1::processor_client::ProcessorClient;
use statehouse_test_support::stack::{Options, Probe, Stack};
use statehouse_test_support::user_function::Kind;
use statehouse_test_support::{http, unique};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tonic::transport::Channel;

const SERVICE: &str = "shopping-cart";
const SERVED: &str = "tls-served";
const REFUSED: [&str; 4] = [
    "tls-refused-plaintext",
    "tls-refused-stranger",
    "tls-refused-anonymous",
    "tls-refused-internal",
];
const NAME: &str = "statehouse.internal";

/// The same, expecting processors' name.
fn internal_client(ca: &Path, cert: &Path) -> Arc<ClientTls> {
    let key = Arc::new(
        ReloadingKey::read_once(&cert.join("client.pem"), &cert.join("client.key")).unwrap(),
    );
    Arc::new(
        ClientTls::new(
            read_roots("ca", &ca.join("ca.pem")).unwrap(),
            Some(key),
            Some(ServerName::try_from(NAME).unwrap()),
            &[b"h2"],
        )
        .unwrap(),
    )
}

/// One HTTP/1.1 request over TLS: (status, body).
async fn https(
    addr: &str,
    tls: &ClientTls,
    method: &str,
    path: &str,
    body: &str,
) -> std::io::Result<(u16, String)> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = tls.server_name_for("127.0.0.1")?;
    let mut stream = tokio_rustls::TlsConnector::from(tls.config())
        .connect(name, tcp)
        .await?;
    assert_eq!(
        stream.get_ref().1.alpn_protocol(),
        Some(&b"http/1.1"[..]),
        "ALPN"
    );
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: gateway\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut answer = Vec::new();
    if let Err(e) = stream.read_to_end(&mut answer).await
        && answer.is_empty()
    {
        return Err(e);
    }
    let text = String::from_utf8_lossy(&answer).to_string();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    Ok((status_of(head.as_bytes()).unwrap_or(0), body))
}

fn dechunk(mut rest: &str) -> String {
    let mut body = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 || after.len() < size {
            break;
        }
        body.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
    body
}

/// The TLS handshake (and one round trip, where TLS 1.3 reports a refused client
/// certificate) with `tls` at `addr`: the error that ended it, if any.
async fn handshake(addr: &str, tls: &ClientTls, host: &str) -> Result<(), String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = tls.server_name_for(host).map_err(|e| e.to_string())?;
    let mut stream = tokio_rustls::TlsConnector::from(tls.config())
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    match stream.read_to_end(&mut answer).await {
        Err(e) => Err(e.to_string()),
        Ok(_) => Ok(()),
    }
}

/// A call that never reached a server: the connection (its TLS handshake) failed. How the
/// client reports it depends on when the alert arrives (before or after the request was
/// written: a transport error, or the connection closed under the call).
fn assert_connection_refused(status: &tonic::Status, what: &str) {
    assert!(
        matches!(
            status.code(),
            tonic::Code::Unavailable
                | tonic::Code::Unknown
                | tonic::Code::Internal
                | tonic::Code::Cancelled
        ),
        "{what}: {status:?}"
    );
}

fn add(cart: &str, product: &str, quantity: i32) -> AddLineItem {
    AddLineItem {
        user_id: cart.into(),
        product_id: product.into(),
        name: product.to_uppercase(),
        quantity,
    }
}

/// Every entity with a record in the journal (uncommitted records included).
async fn journal_entities(stack: &Stack) -> BTreeSet<String> {
    let topic = format!("{}{SERVICE}.journal", stack.prefix);
    let mut entities = BTreeSet::new();
    for partition in 0..stack.options.partitions {
        for message in reader::read_to_end(
            &kafka(stack),
            &topic,
            partition,
            0,
            Isolation::ReadUncommitted,
            Duration::from_secs(30),
        )
        .await
        .unwrap()
        {
            if let Some((entity, _)) = message
                .key
                .as_deref()
                .and_then(|k| std::str::from_utf8(k).ok())
                .and_then(|k| parse_journal_key(k).ok())
            {
                entities.insert(entity.to_string());
            }
        }
    }
    entities
}

fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(unique("statehouse-e2e-tls"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cart_is_served_over_tls_with_mtls_inside() {
    let base = temp_dir();
    let (ours, theirs) = (base.join("ours"), base.join("theirs"));
    mint(&ours, NAME);
    mint(&theirs, NAME);
    let file = |name: &str| format!("{:?}", ours.join(name).display().to_string());

    let mut options = Options::new(Kind::RustShoppingCart);
    options.processors = 2;
    options.common_sets = gateway_tls_sets(&ours);
    options
        .common_sets
        .push(format!("gateway.tls.client-ca-file={}", file("ca.pem")));
    options.common_sets.extend(internal_tls_sets(&ours, NAME));
    let probe_tls = client(&ours, Some(&ours), b"http/1.1");
    options.gateway_probe = Some(Probe(Arc::new(move |addr| probe(addr, &probe_tls))));
    let stack = Stack::start_ready(options);

    // gRPC over TLS (h2), with our client certificate.
    let grpc_tls = client(&ours, Some(&ours), b"h2");
    let mut cart = cart_client(&stack, &grpc_tls).await;
    warm_up(&mut cart).await;
    cart.add_item(add(SERVED, "apple", 2)).await.unwrap();
    cart.add_item(add(SERVED, "fig", 1)).await.unwrap();
    let items = cart
        .get_cart(GetShoppingCart {
            user_id: SERVED.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .items;
    let item = |id: &str, quantity| LineItem {
        product_id: id.into(),
        name: id.to_uppercase(),
        quantity,
    };
    assert_eq!(items, [item("apple", 2), item("fig", 1)]);

    // HTTP/JSON over TLS (http/1.1).
    let json_tls = client(&ours, Some(&ours), b"http/1.1");
    let added = https(
        &stack.gateway_addr,
        &json_tls,
        "POST",
        &format!("/cart/{SERVED}/items/add"),
        r#"{"productId":"plum","name":"PLUM","quantity":3}"#,
    )
    .await
    .unwrap();
    assert_eq!(added, (200, "{}".to_string()));
    let got = https(
        &stack.gateway_addr,
        &json_tls,
        "GET",
        &format!("/carts/{SERVED}"),
        "",
    )
    .await
    .unwrap();
    assert_eq!(
        got,
        (
            200,
            r#"{"items":[{"productId":"apple","name":"APPLE","quantity":2},{"productId":"fig","name":"FIG","quantity":1},{"productId":"plum","name":"PLUM","quantity":3}]}"#
                .to_string()
        )
    );

    // Plaintext to the gateway's TLS port: HTTP/1.1 reads the 400, h2c gRPC fails.
    let gateway = stack.gateway_addr.clone();
    let plain = tokio::task::spawn_blocking(move || {
        http::request(
            &gateway,
            "POST",
            &format!("/cart/{}/items/add", REFUSED[0]),
            &[("Content-Type", "application/json")],
            Some(r#"{"productId":"x","name":"X","quantity":1}"#),
        )
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(
        (plain.status, plain.body.as_str()),
        (400, "this port requires TLS\n")
    );
    let mut h2c = ShoppingCartClient::new(
        Channel::from_shared(format!("http://{}", stack.gateway_addr))
            .unwrap()
            .connect_lazy(),
    );
    let status = h2c.add_item(add(REFUSED[0], "x", 1)).await.unwrap_err();
    assert_connection_refused(&status, "h2c to the TLS port");

    // A client certificate of another CA, and none at all: refused at the handshake.
    let stranger = client(&ours, Some(&theirs), b"h2");
    let refused = handshake(&stack.gateway_addr, &stranger, "127.0.0.1")
        .await
        .unwrap_err();
    assert!(refused.contains("UnknownCA"), "{refused}");
    let status = cart_client(&stack, &stranger)
        .await
        .add_item(add(REFUSED[1], "x", 1))
        .await
        .unwrap_err();
    assert_connection_refused(&status, "a client certificate of another CA");
    let anonymous = client(&ours, None, b"h2");
    let refused = handshake(&stack.gateway_addr, &anonymous, "127.0.0.1")
        .await
        .unwrap_err();
    assert!(refused.contains("CertificateRequired"), "{refused}");
    let status = cart_client(&stack, &anonymous)
        .await
        .add_item(add(REFUSED[2], "x", 1))
        .await
        .unwrap_err();
    assert_connection_refused(&status, "no client certificate");

    // The processors' internal port: mTLS with our certificate answers; a certificate of
    // another CA is refused at the handshake; plaintext reads the 400.
    for pod in &stack.pods {
        let addr = pod.internal_addr();
        let ours_channel = internal_client(&ours, &ours)
            .channel(&format!("https://{addr}"), Duration::from_secs(5))
            .unwrap();
        HealthClient::new(ours_channel)
            .check(HealthCheckRequest::default())
            .await
            .unwrap_or_else(|s| panic!("health of {addr} over mTLS: {s:?}"));

        let stranger = internal_client(&ours, &theirs);
        let refused = handshake(&addr, &stranger, NAME).await.unwrap_err();
        assert!(refused.contains("UnknownCA"), "{addr}: {refused}");
        let command = HandleRequest {
            service: SERVICE.into(),
            method: "com.example.shoppingcart.ShoppingCart/AddItem".into(),
            entity_id: REFUSED[3].into(),
            payload: add(REFUSED[3], "x", 1).encode_to_vec().into(),
            ..HandleRequest::default()
        };
        let status = ProcessorClient::new(
            stranger
                .channel(&format!("https://{addr}"), Duration::from_secs(5))
                .unwrap(),
        )
        .handle(command)
        .await
        .unwrap_err();
        assert_connection_refused(&status, &addr);

        let plain =
            tokio::task::spawn_blocking(move || http::request(&addr, "GET", "/", &[], None))
                .await
                .unwrap()
                .unwrap();
        assert_eq!(
            (plain.status, plain.body.as_str()),
            (400, "this port requires TLS\n")
        );
    }

    // The processors counted the refusals (plaintext once; a stranger's handshake at least
    // twice: the raw one and the call's).
    for i in 0..stack.pods.len() {
        for (reason, least) in [("plaintext", 1.0), ("handshake", 2.0)] {
            let series = format!("statehouse_tls_refused_total{{reason=\"{reason}\"");
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            loop {
                let value: f64 = stack.metrics(i, &series).iter().map(|(_, v)| v).sum();
                if value >= least {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "processor {i}: {series} is {value}, expected at least {least}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    // Each processor exports when its certificate expires: the notAfter `openssl` reads from
    // the file, as `date` converts it.
    let pem = ours.join("server.pem");
    let run = |program: &str, args: &[&str]| {
        let out = std::process::Command::new(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("running {program}: {e}"));
        assert!(out.status.success(), "{program} {args:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let end = run(
        "openssl",
        &[
            "x509",
            "-noout",
            "-enddate",
            "-in",
            &pem.display().to_string(),
        ],
    );
    let end = end.strip_prefix("notAfter=").expect("openssl's notAfter");
    let expected: f64 = run("date", &["-u", "-d", end, "+%s"]).parse().unwrap();
    let series = format!(
        "statehouse_tls_certificate_expiry_timestamp_seconds{{file=\"{}\"}}",
        pem.display()
    );
    for i in 0..stack.pods.len() {
        let samples = stack.metrics(i, &series);
        assert_eq!(
            samples.iter().map(|(_, v)| *v).collect::<Vec<_>>(),
            [expected],
            "processor {i}: {series}"
        );
    }

    // Nothing of the refused calls reached the journal; the served cart did.
    let entities = journal_entities(&stack).await;
    assert!(
        entities.iter().any(|e| e.ends_with(&format!("|{SERVED}"))),
        "{entities:?}"
    );
    for refused in REFUSED {
        assert!(
            !entities.iter().any(|e| e.ends_with(&format!("|{refused}"))),
            "{refused} reached the journal: {entities:?}"
        );
    }
    // The served cart again, after all the refusals: the stack still serves.
    let items = cart
        .get_cart(GetShoppingCart {
            user_id: SERVED.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .items;
    assert_eq!(items.len(), 3);
}
