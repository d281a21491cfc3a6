//! A one-shot HTTP/1.1 GET of a JWKS URL over plain TCP or TLS (rustls with the ring
//! provider, roots from `gateway.auth.ca-file`), on hyper's client connection API: one GET every
//! few minutes needs no pooled client, and the dependency tree stays small.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use rustls_pki_types::pem::PemObject as _;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Largest JWKS document read.
const MAX_DOCUMENT: usize = 1024 * 1024;
/// Bound of one fetch, connect to last byte.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Fetches one URL.
#[derive(Clone)]
pub(crate) struct Fetcher {
    uri: Uri,
    host: String,
    port: u16,
    tls: Option<TlsConnector>,
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetcher")
            .field("uri", &self.uri)
            .finish_non_exhaustive()
    }
}

impl Fetcher {
    /// A fetcher of `url`; for `https`, trusting the CAs of the PEM bundle `ca_file`.
    pub(crate) fn new(url: &str, ca_file: &std::path::Path) -> Result<Self, String> {
        let uri: Uri = url.parse().map_err(|e| format!("jwks-url {url:?}: {e}"))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(format!("jwks-url {url:?} must be http:// or https://")),
        };
        let host = uri
            .host()
            .ok_or_else(|| format!("jwks-url {url:?} has no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tls = if https {
            let mut roots = rustls::RootCertStore::empty();
            let certs = rustls_pki_types::CertificateDer::pem_file_iter(ca_file)
                .map_err(|e| format!("ca-file {}: {e}", ca_file.display()))?
                .filter_map(Result::ok);
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(format!(
                    "ca-file {} holds no usable CA certificate",
                    ca_file.display()
                ));
            }
            // The workspace's TLS provider is ring (no aws-lc build); rustls deprecates it only
            // for its lack of post-quantum key exchange.
            #[allow(deprecated)]
            let provider = rustls::crypto::ring::default_provider();
            let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
                .with_safe_default_protocol_versions()
                .map_err(|e| format!("TLS setup: {e}"))?
                .with_root_certificates(roots)
                .with_no_client_auth();
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            Some(TlsConnector::from(Arc::new(config)))
        } else {
            None
        };
        Ok(Self {
            uri,
            host,
            port,
            tls,
        })
    }

    /// GETs the URL: the body of a 200 answer.
    pub(crate) async fn get(&self) -> Result<Bytes, String> {
        tokio::time::timeout(TIMEOUT, self.get_unbounded())
            .await
            .map_err(|_| format!("no answer within {TIMEOUT:?}"))?
    }

    async fn get_unbounded(&self) -> Result<Bytes, String> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        match &self.tls {
            None => self.send(TokioIo::new(tcp)).await,
            Some(tls) => {
                let name = ServerName::try_from(self.host.clone())
                    .map_err(|e| format!("server name: {e}"))?;
                let stream = tls
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("TLS: {e}"))?;
                self.send(TokioIo::new(stream)).await
            }
        }
    }

    async fn send<IO>(&self, io: IO) -> Result<Bytes, String>
    where
        IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
        let driver = tokio::spawn(connection);
        let path = self
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        let authority = self
            .uri
            .authority()
            .map_or_else(|| self.host.clone(), |a| a.to_string());
        let request = Request::get(path)
            .header(http::header::HOST, authority)
            .header(http::header::ACCEPT, "application/json")
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("request: {e}"))?;
        let result = async {
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| format!("HTTP: {e}"))?;
            if response.status() != StatusCode::OK {
                return Err(format!("HTTP status {}", response.status()));
            }
            Limited::new(response.into_body(), MAX_DOCUMENT)
                .collect()
                .await
                .map(|body| body.to_bytes())
                .map_err(|e| format!("reading the body: {e}"))
        }
        .await;
        driver.abort();
        result
    }
}
