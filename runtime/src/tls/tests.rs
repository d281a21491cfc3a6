//! The reloading resolver, peer names and plaintext detection, over real TCP handshakes on
//! localhost (no Kafka needed).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use super::accept::{PLAINTEXT_ANSWER, Refused, looks_like_tls};
use super::dev::{DevFiles, mint, write_file};
use super::peer::check_peer_name;
use super::reload::Reload;
use super::*;
use crate::config::InternalTlsOptions;

fn dir(test: &str) -> PathBuf {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let dir = std::env::temp_dir().join(format!(
        "statehouse-tls-{test}-{}-{nanos}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn names(n: &[&str]) -> Vec<String> {
    n.iter().map(|s| s.to_string()).collect()
}

fn leaf(path: &Path) -> CertificateDer<'static> {
    read_certs("test", path).unwrap().remove(0)
}

/// Replaces `to` with `from`'s bytes and gives it a modification time of its own (two writes
/// within one timestamp tick must still count as a change).
fn replace(from: &Path, to: &Path, age_s: u64) {
    write_file(to, &std::fs::read(from).unwrap(), false).unwrap();
    let file = std::fs::File::options().write(true).open(to).unwrap();
    file.set_modified(SystemTime::now() - Duration::from_secs(age_s))
        .unwrap();
}

/// A server on localhost with `acceptor`; each connection's outcome is sent back.
async fn serve(acceptor: Acceptor) -> (String, tokio::sync::mpsc::Receiver<Result<(), Refused>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                match acceptor.accept(tcp).await {
                    Ok(mut tls) => {
                        let _ = tx.send(Ok(())).await;
                        // Echo one byte, then hold the connection until the client leaves.
                        let mut buf = [0u8; 1];
                        if tls.read_exact(&mut buf).await.is_ok() {
                            let _ = tls.write_all(&buf).await;
                            let _ = tls.read(&mut buf).await;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                    }
                }
            });
        }
    });
    (addr, rx)
}

/// Connects with `client` to `addr` as `name`; returns the server's leaf certificate once the
/// connection carried a byte both ways or the error that ended it.
async fn handshake(
    client: &ClientTls,
    addr: &str,
    name: &str,
) -> Result<CertificateDer<'static>, std::io::Error> {
    let tcp = TcpStream::connect(addr).await?;
    // A full handshake each time: a resumed session shows the certificate it started with.
    let mut config = (*client.config()).clone();
    config.resumption = rustls::client::Resumption::disabled();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let mut tls = connector
        .connect(ServerName::try_from(name.to_string()).unwrap(), tcp)
        .await?;
    // TLS 1.3: the server judges the client certificate after the client's side finished;
    // a refusal arrives as an alert on the first read.
    tls.write_all(b"x").await?;
    let mut buf = [0u8; 1];
    tokio::time::timeout(Duration::from_secs(10), tls.read_exact(&mut buf))
        .await
        .map_err(|_| std::io::Error::other("no echo within 10 s"))??;
    Ok(tls.get_ref().1.peer_certificates().unwrap()[0].clone())
}

fn client(ca: &Path, cert: Option<(&Path, &Path)>) -> ClientTls {
    let key = cert.map(|(c, k)| Arc::new(ReloadingKey::read_once(c, k).unwrap()));
    ClientTls::new(read_roots("ca", ca).unwrap(), key, None, &ALPN_INTERNAL).unwrap()
}

#[tokio::test]
async fn a_changed_certificate_is_served_and_a_broken_one_is_not() {
    let live = dir("reload-live");
    let first = mint(&live, &names(&["gw.test"])).unwrap();
    let second = mint(&dir("reload-next"), &names(&["gw.test"])).unwrap();
    // The served pair lives in files of their own, replaced like a mounted secret.
    let (cert, key) = (live.join("served.pem"), live.join("served.key"));
    replace(&first.server_cert, &cert, 100);
    replace(&first.server_key, &key, 100);
    let resolver = Arc::new(ReloadingKey::read_once(&cert, &key).unwrap());
    let acceptor = Acceptor::new(Arc::clone(&resolver), None, &ALPN_CLIENT_PORT).unwrap();
    let (addr, _outcomes) = serve(acceptor).await;

    // Trusts both CAs: what is served is seen, whichever it is.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(leaf(&first.ca_cert)).unwrap();
    roots.add(leaf(&second.ca_cert)).unwrap();
    let both = ClientTls::new(Arc::new(roots), None, None, &ALPN_CLIENT_PORT).unwrap();

    assert_eq!(
        handshake(&both, &addr, "gw.test").await.unwrap(),
        leaf(&first.server_cert)
    );
    assert!(matches!(resolver.check(), Reload::Unchanged));

    // Swap in the second pair: the next handshake gets it.
    replace(&second.server_cert, &cert, 50);
    replace(&second.server_key, &key, 50);
    assert!(matches!(resolver.check(), Reload::Reloaded));
    assert_eq!(
        handshake(&both, &addr, "gw.test").await.unwrap(),
        leaf(&second.server_cert)
    );

    // A broken certificate file: refused, the second pair still served.
    write_file(&cert, b"-----BEGIN CERTIFICATE-----\nnot base64\n", false).unwrap();
    let refused = resolver.check();
    assert!(
        matches!(&refused, Reload::Refused(Error::Invalid { .. })),
        "{refused:?}"
    );
    assert!(
        matches!(resolver.check(), Reload::Unchanged),
        "one error per change"
    );
    assert_eq!(
        handshake(&both, &addr, "gw.test").await.unwrap(),
        leaf(&second.server_cert)
    );

    // Half a rotation (the first certificate with the second key): refused as a mismatch.
    replace(&first.server_cert, &cert, 20);
    let mismatch = resolver.check();
    assert!(
        matches!(&mismatch, Reload::Refused(Error::Invalid { reason, .. }) if reason.contains("does not belong")),
        "{mismatch:?}"
    );
    assert_eq!(
        handshake(&both, &addr, "gw.test").await.unwrap(),
        leaf(&second.server_cert)
    );
    // ...and taken once its key arrives.
    replace(&first.server_key, &key, 10);
    assert!(matches!(resolver.check(), Reload::Reloaded));
    assert_eq!(
        handshake(&both, &addr, "gw.test").await.unwrap(),
        leaf(&first.server_cert)
    );
}

#[test]
fn unreadable_files_are_named() {
    let missing = ReloadingKey::read_once(Path::new("/nonexistent/c.pem"), Path::new("/x.key"))
        .unwrap_err()
        .to_string();
    assert!(missing.contains("/nonexistent/c.pem"), "{missing}");
}

#[test]
fn peer_names_are_checked_against_the_certificate() {
    let files = mint(
        &dir("names"),
        &names(&["processor.internal", "*.pods.internal"]),
    )
    .unwrap();
    let cert = leaf(&files.client_cert);
    let allowed = |n: &[&str]| server_names("test", &names(n)).unwrap();
    check_peer_name(&cert, &allowed(&["processor.internal"])).unwrap();
    check_peer_name(&cert, &allowed(&["gateway.internal", "p-1.pods.internal"])).unwrap();
    check_peer_name(&cert, &[]).unwrap();
    let refused = check_peer_name(&cert, &allowed(&["gateway.internal"])).unwrap_err();
    assert_eq!(
        refused,
        rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName)
    );
    assert!(server_names("k", &names(&["not a name"])).is_err());
}

fn internal(files: &DevFiles, allowed: &[&str]) -> InternalTlsOptions {
    InternalTlsOptions {
        enabled: true,
        ca_file: Some(files.ca_cert.clone()),
        cert_file: Some(files.server_cert.clone()),
        key_file: Some(files.server_key.clone()),
        allowed_peer_names: names(allowed),
        ..InternalTlsOptions::default()
    }
}

#[tokio::test]
async fn the_internal_port_takes_only_named_peers_of_its_ca() {
    let ours = mint(&dir("mtls-ours"), &names(&["processor.internal"])).unwrap();
    let theirs = mint(&dir("mtls-theirs"), &names(&["processor.internal"])).unwrap();
    let acceptor = internal_acceptor(&internal(&ours, &["processor.internal"]))
        .unwrap()
        .unwrap();
    let (addr, mut outcomes) = serve(acceptor).await;

    let good = client(&ours.ca_cert, Some((&ours.client_cert, &ours.client_key)));
    handshake(&good, &addr, "processor.internal").await.unwrap();
    assert!(outcomes.recv().await.unwrap().is_ok());

    // No client certificate.
    let anonymous = client(&ours.ca_cert, None);
    let _ = handshake(&anonymous, &addr, "processor.internal").await;
    assert!(matches!(
        outcomes.recv().await.unwrap(),
        Err(Refused::Handshake(_))
    ));

    // A client certificate of another CA: refused at the handshake, the client told so.
    let stranger = client(
        &ours.ca_cert,
        Some((&theirs.client_cert, &theirs.client_key)),
    );
    let err = handshake(&stranger, &addr, "processor.internal")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("UnknownCA"), "{err}");
    let Err(Refused::Handshake(server_side)) = outcomes.recv().await.unwrap() else {
        panic!("the server accepted a certificate of another CA");
    };
    assert!(
        server_side.to_string().contains("UnknownIssuer"),
        "{server_side}"
    );

    // The right CA, a name not allowed.
    let strict = internal_acceptor(&internal(&ours, &["gateway.internal"]))
        .unwrap()
        .unwrap();
    let (strict_addr, mut strict_outcomes) = serve(strict).await;
    let _ = handshake(&good, &strict_addr, "processor.internal").await;
    let Err(Refused::Handshake(e)) = strict_outcomes.recv().await.unwrap() else {
        panic!("a peer name outside allowed-peer-names was accepted");
    };
    assert!(e.to_string().contains("NotValidForName"), "{e}");

    // The router's side: a server certificate not valid for the name it expects.
    let err = handshake(&good, &addr, "other.internal").await.unwrap_err();
    assert!(err.to_string().contains("not valid for name"), "{err}");
}

#[test]
fn the_first_byte_tells_tls_from_plaintext() {
    assert!(looks_like_tls(0x16));
    for plaintext in [b'G', b'P', b'H', 0x00] {
        assert!(!looks_like_tls(plaintext), "{plaintext:#x}");
    }
}

#[tokio::test]
async fn a_plaintext_caller_is_told_the_port_requires_tls() {
    let files = mint(&dir("plaintext"), &names(&[])).unwrap();
    let key = Arc::new(ReloadingKey::read_once(&files.server_cert, &files.server_key).unwrap());
    let acceptor = Acceptor::new(key, None, &ALPN_CLIENT_PORT).unwrap();
    let (addr, mut outcomes) = serve(acceptor).await;

    for request in [
        &b"GET / HTTP/1.1\r\nhost: x\r\n\r\n"[..],
        // An h2c (prior knowledge) client's preface.
        &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..],
    ] {
        let mut tcp = TcpStream::connect(&addr).await.unwrap();
        tcp.write_all(request).await.unwrap();
        let mut answer = Vec::new();
        tcp.read_to_end(&mut answer).await.unwrap();
        assert_eq!(answer, PLAINTEXT_ANSWER);
        assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 400 "));
        assert!(matches!(
            outcomes.recv().await.unwrap(),
            Err(Refused::Plaintext)
        ));
    }
}

#[tokio::test]
async fn the_client_port_verifies_client_certificates_when_given_a_ca() {
    let ours = mint(&dir("gw-ours"), &names(&[])).unwrap();
    let theirs = mint(&dir("gw-theirs"), &names(&[])).unwrap();
    let options = |require| crate::config::GatewayTlsOptions {
        cert_file: Some(ours.server_cert.clone()),
        key_file: Some(ours.server_key.clone()),
        client_ca_file: Some(ours.ca_cert.clone()),
        require_client_cert: require,
        ..crate::config::GatewayTlsOptions::default()
    };
    let good = client(&ours.ca_cert, Some((&ours.client_cert, &ours.client_key)));
    let anonymous = client(&ours.ca_cert, None);
    let stranger = client(
        &ours.ca_cert,
        Some((&theirs.client_cert, &theirs.client_key)),
    );

    for require in [true, false] {
        let acceptor = gateway_acceptor(&options(require)).unwrap().unwrap();
        let (addr, _) = serve(acceptor).await;
        handshake(&good, &addr, "localhost").await.unwrap();
        let err = handshake(&stranger, &addr, "localhost").await.unwrap_err();
        assert!(err.to_string().contains("UnknownCA"), "{err}");
        let anonymous = handshake(&anonymous, &addr, "localhost").await;
        if require {
            let err = anonymous.unwrap_err();
            assert!(err.to_string().contains("CertificateRequired"), "{err}");
        } else {
            anonymous.unwrap();
        }
    }
    // Off without a certificate file.
    assert!(
        gateway_acceptor(&crate::config::GatewayTlsOptions::default())
            .unwrap()
            .is_none()
    );
}

/// A `grpc.health.v1` server answering SERVING, for gRPC over the TLS pieces.
struct Serving;

#[tonic::async_trait]
impl statehouse_schemas::grpc::health::v1::health_server::Health for Serving {
    async fn check(
        &self,
        _request: tonic::Request<statehouse_schemas::grpc::health::v1::HealthCheckRequest>,
    ) -> Result<
        tonic::Response<statehouse_schemas::grpc::health::v1::HealthCheckResponse>,
        tonic::Status,
    > {
        Ok(tonic::Response::new(
            statehouse_schemas::grpc::health::v1::HealthCheckResponse { status: 1 },
        ))
    }

    type WatchStream = std::pin::Pin<
        Box<
            dyn futures::Stream<
                    Item = Result<
                        statehouse_schemas::grpc::health::v1::HealthCheckResponse,
                        tonic::Status,
                    >,
                > + Send,
        >,
    >;

    async fn watch(
        &self,
        _request: tonic::Request<statehouse_schemas::grpc::health::v1::HealthCheckRequest>,
    ) -> Result<tonic::Response<Self::WatchStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("watch"))
    }
}

#[tokio::test]
async fn grpc_runs_over_the_internal_port_and_the_routers_connector() {
    use statehouse_schemas::grpc::health::v1::HealthCheckRequest;
    use statehouse_schemas::grpc::health::v1::health_client::HealthClient;
    use statehouse_schemas::grpc::health::v1::health_server::HealthServer;

    let ours = mint(&dir("grpc-ours"), &names(&["processor.internal"])).unwrap();
    let theirs = mint(&dir("grpc-theirs"), &names(&["processor.internal"])).unwrap();
    let acceptor = internal_acceptor(&internal(&ours, &["processor.internal"]))
        .unwrap()
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(HealthServer::new(Serving))
            .serve_with_incoming_shutdown(
                acceptor.incoming(listener),
                stop.clone().cancelled_owned(),
            ),
    );

    // The router's side, as `internal_client` builds it from the configuration.
    let router_side = internal_client(&InternalTlsOptions {
        cert_file: Some(ours.client_cert.clone()),
        key_file: Some(ours.client_key.clone()),
        server_name: Some("processor.internal".into()),
        ..internal(&ours, &[])
    })
    .unwrap()
    .unwrap();
    // The endpoint as a processor advertises it; `connect_lazy` is what the router calls.
    let endpoint = format!("https://{addr}");
    let channel =
        crate::router::connect_lazy(&endpoint, Some(&router_side), Duration::from_secs(5)).unwrap();
    let answer = HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.status, 1);

    // A router with a stranger's certificate: the call fails, nothing answered.
    let stranger = internal_client(&InternalTlsOptions {
        cert_file: Some(theirs.client_cert.clone()),
        key_file: Some(theirs.client_key.clone()),
        server_name: Some("processor.internal".into()),
        ..internal(&ours, &[])
    })
    .unwrap()
    .unwrap();
    let status = HealthClient::new(
        crate::router::connect_lazy(&endpoint, Some(&stranger), Duration::from_secs(5)).unwrap(),
    )
    .check(HealthCheckRequest::default())
    .await
    .unwrap_err();
    assert_ne!(status.code(), tonic::Code::Ok);
    eprintln!("a stranger's call: {status:?}");

    stop.cancel();
    server.await.unwrap().unwrap();
}
