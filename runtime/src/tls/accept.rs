//! The server side of a TLS port.
//!
//! Before the handshake the first byte is peeked: a TLS connection starts with a handshake
//! record (content type 22). Anything else is a plaintext caller — typically `http://` or
//! h2c pointed at a TLS port — which would otherwise see the connection reset and guess. It
//! gets a short `HTTP/1.1 400` whose body says the port requires TLS, the connection is closed
//! (after draining what it sent, so the answer is not lost to a reset), and the refusal is
//! logged at debug. A TLS handshake that fails (a client certificate from an unknown CA, a
//! name not allowed) is refused by rustls with an alert and logged at debug as well: neither
//! reaches a request handler. Both are bounded by [`HANDSHAKE_TIMEOUT`].

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::ServerConfig;
use rustls::server::danger::ClientCertVerifier;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use super::{Error, ReloadingKey, provider};

/// Longest wait for a caller's first byte and handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The first byte of a TLS connection: a handshake record.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// What a plaintext caller reads.
pub const PLAINTEXT_ANSWER: &[u8] = b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\nconnection: close\r\ncontent-length: 23\r\n\r\nthis port requires TLS\n";

/// Whether a connection's first byte starts a TLS handshake.
pub fn looks_like_tls(first: u8) -> bool {
    first == TLS_HANDSHAKE_RECORD
}

/// Why a connection was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// The caller spoke plaintext; it was told the port requires TLS.
    #[error("plaintext caller on a TLS port (answered 400 \"this port requires TLS\")")]
    Plaintext,
    /// The caller left before sending anything (e.g. a TCP probe).
    #[error("closed before the TLS handshake")]
    Closed,
    /// The handshake failed (certificate refused, protocol error).
    #[error("TLS handshake failed: {0}")]
    Handshake(io::Error),
    /// No first byte or handshake within [`HANDSHAKE_TIMEOUT`].
    #[error("no TLS handshake within {HANDSHAKE_TIMEOUT:?}")]
    TimedOut,
}

/// Accepts TLS connections on a port (see the module docs). Cheap to clone.
#[derive(Clone)]
pub struct Acceptor {
    tls: TlsAcceptor,
}

impl std::fmt::Debug for Acceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acceptor").finish_non_exhaustive()
    }
}

impl Acceptor {
    /// Serves `key`'s current certificate; `client_certs` verifies client certificates (none:
    /// none are asked for); `alpn` in order of preference.
    pub fn new(
        key: Arc<ReloadingKey>,
        client_certs: Option<Arc<dyn ClientCertVerifier>>,
        alpn: &[&[u8]],
    ) -> Result<Self, Error> {
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?;
        let builder = match client_certs {
            Some(verifier) => builder.with_client_cert_verifier(verifier),
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_cert_resolver(key);
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Self {
            tls: TlsAcceptor::from(Arc::new(config)),
        })
    }

    /// Sniffs, answers a plaintext caller, and runs the handshake.
    pub async fn accept(&self, tcp: TcpStream) -> Result<TlsStream<TcpStream>, Refused> {
        tokio::time::timeout(HANDSHAKE_TIMEOUT, self.accept_inner(tcp))
            .await
            .unwrap_or(Err(Refused::TimedOut))
    }

    async fn accept_inner(&self, mut tcp: TcpStream) -> Result<TlsStream<TcpStream>, Refused> {
        let mut first = [0u8; 1];
        match tcp.peek(&mut first).await {
            Ok(0) | Err(_) => return Err(Refused::Closed),
            Ok(_) => {}
        }
        if !looks_like_tls(first[0]) {
            answer_plaintext(&mut tcp).await;
            return Err(Refused::Plaintext);
        }
        self.tls.accept(tcp).await.map_err(Refused::Handshake)
    }

    /// TLS connections from `listener` for tonic's `serve_with_incoming*`: each handshake runs
    /// in a task of its own (a slow caller holds no one up); refusals are logged and left out.
    /// Stops accepting once the stream is dropped.
    pub fn incoming(
        &self,
        listener: TcpListener,
    ) -> impl futures::Stream<Item = Result<TlsConn, io::Error>> + Send + 'static {
        let (tx, rx) = mpsc::channel::<Result<TlsConn, io::Error>>(64);
        let acceptor = self.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, peer) = tokio::select! {
                    _ = tx.closed() => return,
                    accepted = listener.accept() => match accepted {
                        Ok(accepted) => accepted,
                        Err(e) => {
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                };
                let _ = tcp.set_nodelay(true);
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let local = tcp.local_addr().ok();
                    match acceptor.accept(tcp).await {
                        Ok(tls) => {
                            let _ = tx
                                .send(Ok(TlsConn {
                                    inner: tls,
                                    local,
                                    peer,
                                }))
                                .await;
                        }
                        Err(refused) => log_refused(peer, &refused),
                    }
                });
            }
        });
        futures::stream::unfold(rx, |mut rx| async move {
            let next = rx.recv().await?;
            Some((next, rx))
        })
    }
}

/// Logs a refused connection (debug: a port scanner or a misdirected client is no incident;
/// `docs/tls.md` says how to see them).
/// Counted in `statehouse_tls_refused_total` (`crate::metrics::TLS_REFUSED`), except a caller
/// that left without a byte (a TCP probe).
pub fn log_refused(peer: SocketAddr, refused: &Refused) {
    let reason = match refused {
        Refused::Closed => {
            tracing::trace!(%peer, "connection closed before the TLS handshake");
            return;
        }
        Refused::Plaintext => "plaintext",
        Refused::Handshake(_) => "handshake",
        Refused::TimedOut => "timeout",
    };
    ::metrics::counter!(crate::metrics::TLS_REFUSED, "reason" => reason).increment(1);
    tracing::debug!(%peer, reason = %refused, "connection refused on a TLS port");
}

async fn answer_plaintext(tcp: &mut TcpStream) {
    if tcp.write_all(PLAINTEXT_ANSWER).await.is_err() {
        return;
    }
    let _ = tcp.shutdown().await;
    // Read what the caller sent until it closes (bounded): closing with unread bytes would
    // reset the connection and could destroy the answer before the caller read it.
    let mut sink = [0u8; 4096];
    let mut left = 64 * 1024usize;
    let drain = async {
        while left > 0 {
            match tcp.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
}

/// One accepted TLS connection of [`Acceptor::incoming`].
pub struct TlsConn {
    inner: TlsStream<TcpStream>,
    local: Option<SocketAddr>,
    peer: SocketAddr,
}

impl TlsConn {
    /// The caller's certificate chain (leaf first), if it presented one.
    pub fn peer_certificates(&self) -> Option<&[rustls_pki_types::CertificateDer<'static>]> {
        self.inner.get_ref().1.peer_certificates()
    }
}

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        tonic::transport::server::TcpConnectInfo {
            local_addr: self.local,
            remote_addr: Some(self.peer),
        }
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
