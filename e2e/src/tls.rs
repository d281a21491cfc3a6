//! TLS clients of a stack whose gateway serves TLS (`docs/tls.md`), with certificates minted by
//! `statehouse admin certs dev`.

use std::io::{Read as _, Write as _};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use statehouse_runtime::tls::{ClientTls, ReloadingKey, read_roots};
use statehouse_schemas::shoppingcart::shopping_cart_client::ShoppingCartClient;
use statehouse_test_support::process;
use statehouse_test_support::stack::Stack;
use tonic::transport::Channel;

/// `statehouse admin certs dev --out <dir> --names <name>`: a CA, server and client
/// certificates in `dir`.
pub fn mint(dir: &Path, name: &str) {
    let out = Command::new(process::binary())
        .args(["admin", "certs", "dev", "--out"])
        .arg(dir)
        .args(["--names", name])
        .output()
        .expect("running statehouse admin certs dev");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The summary names the keys to set.
    for key in ["[gateway.tls]", "cert-file", "[internal-tls]", "ca-file"] {
        assert!(stdout.contains(key), "{key} missing from:\n{stdout}");
    }
}

/// A client of `ca`'s servers presenting `cert` (`client.pem`/`client.key` of a folder).
pub fn client(ca: &Path, cert: Option<&Path>, alpn: &[u8]) -> Arc<ClientTls> {
    let key = cert.map(|dir| {
        Arc::new(ReloadingKey::read_once(&dir.join("client.pem"), &dir.join("client.key")).unwrap())
    });
    Arc::new(
        ClientTls::new(
            read_roots("ca", &ca.join("ca.pem")).unwrap(),
            key,
            None,
            &[alpn],
        )
        .unwrap(),
    )
}

/// Status and body of `GET /` over TLS (blocking: the harness's readiness probe).
pub fn probe(addr: &str, tls: &ClientTls) -> Result<u16, String> {
    let tcp = std::net::TcpStream::connect(addr).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let conn = rustls::ClientConnection::new(
        tls.config(),
        tls.server_name_for("127.0.0.1")
            .map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;
    let mut stream = rustls::StreamOwned::new(conn, tcp);
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: gateway\r\nconnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    let read = stream.read_to_end(&mut answer);
    status_of(&answer).ok_or_else(|| format!("no HTTP answer ({read:?})"))
}

/// The status code of a raw HTTP/1.1 answer.
pub fn status_of(answer: &[u8]) -> Option<u16> {
    let text = String::from_utf8_lossy(answer);
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// A shopping-cart client of the stack's gateway over TLS.
pub async fn cart_client(stack: &Stack, tls: &Arc<ClientTls>) -> ShoppingCartClient<Channel> {
    ShoppingCartClient::new(
        tls.channel(
            &format!("https://{}", stack.gateway_addr),
            Duration::from_secs(5),
        )
        .unwrap(),
    )
}

/// The `--set`s of `[internal-tls]` with the certificates `mint` put in `dir` for `name`:
/// mTLS between the gateway and the processors and among the processors, client certificates
/// required, `name` the peers must carry.
pub fn internal_tls_sets(dir: &Path, name: &str) -> Vec<String> {
    let file = |f: &str| format!("{:?}", dir.join(f).display().to_string());
    vec![
        "internal-tls.enabled=true".into(),
        format!("internal-tls.ca-file={}", file("ca.pem")),
        format!("internal-tls.cert-file={}", file("server.pem")),
        format!("internal-tls.key-file={}", file("server.key")),
        format!("internal-tls.allowed-peer-names=[\"{name}\"]"),
        format!("internal-tls.server-name=\"{name}\""),
    ]
}

/// The `--set`s of `[gateway.tls]` with the server certificate `mint` put in `dir`.
pub fn gateway_tls_sets(dir: &Path) -> Vec<String> {
    let file = |f: &str| format!("{:?}", dir.join(f).display().to_string());
    vec![
        format!("gateway.tls.cert-file={}", file("server.pem")),
        format!("gateway.tls.key-file={}", file("server.key")),
    ]
}
