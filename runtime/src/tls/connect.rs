//! The client side: tonic channels to `https://` endpoints over rustls (tonic's own TLS is not
//! compiled in; this connector keeps one TLS stack and lets the router's client certificate
//! reload like the servers' do). The processor's certificate must chain to
//! `internal-tls.ca-file` and be valid for `internal-tls.server-name` — or, unset, for the
//! host of the endpoint (so an endpoint advertised as an IP address needs that IP in the
//! certificate).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::rt::TokioIo;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::{Error, ReloadingKey, provider};

/// What the router (and any other internal client) connects with. See the module docs.
pub struct ClientTls {
    config: Arc<ClientConfig>,
    server_name: Option<ServerName<'static>>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl ClientTls {
    /// Servers must chain to `roots`; `key` (if any) is the client certificate presented;
    /// `server_name` overrides the endpoint's host as the name checked.
    pub fn new(
        roots: Arc<RootCertStore>,
        key: Option<Arc<ReloadingKey>>,
        server_name: Option<ServerName<'static>>,
        alpn: &[&[u8]],
    ) -> Result<Self, Error> {
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots);
        let mut config = match key {
            Some(key) => builder.with_client_cert_resolver(key),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Self {
            config: Arc::new(config),
            server_name,
        })
    }

    /// The rustls configuration (e.g. for a raw [`TlsConnector`]).
    pub fn config(&self) -> Arc<ClientConfig> {
        Arc::clone(&self.config)
    }

    /// The name checked for `host`.
    pub fn server_name_for(&self, host: &str) -> Result<ServerName<'static>, io::Error> {
        if let Some(name) = &self.server_name {
            return Ok(name.clone());
        }
        let host = host.trim_start_matches('[').trim_end_matches(']');
        ServerName::try_from(host.to_string()).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{host:?} is not a TLS server name: {e}"),
            )
        })
    }

    /// A lazily connecting tonic channel to `uri` (`https://host:port`) over this TLS.
    pub fn channel(
        self: &Arc<Self>,
        uri: &str,
        connect_timeout: Duration,
    ) -> Result<tonic::transport::Channel, tonic::transport::Error> {
        Ok(
            tonic::transport::Endpoint::from_shared(uri.to_string())?.connect_with_connector_lazy(
                Connector {
                    tls: Arc::clone(self),
                    connect_timeout,
                },
            ),
        )
    }
}

/// A tonic connector: TCP, then the TLS handshake. See the module docs.
#[derive(Clone)]
pub struct Connector {
    tls: Arc<ClientTls>,
    connect_timeout: Duration,
}

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, io::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), io::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let tls = Arc::clone(&self.tls);
        let timeout = self.connect_timeout;
        Box::pin(async move {
            let host = uri
                .host()
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no host"))?
                .to_string();
            let port = uri.port_u16().unwrap_or(443);
            let name = tls.server_name_for(&host)?;
            let connect = async {
                let tcp =
                    TcpStream::connect((host.trim_start_matches('[').trim_end_matches(']'), port))
                        .await?;
                tcp.set_nodelay(true)?;
                TlsConnector::from(tls.config()).connect(name, tcp).await
            };
            let stream = tokio::time::timeout(timeout, connect)
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS connect timed out"))??;
            Ok(TokioIo::new(stream))
        })
    }
}
