//! TLS and mTLS (`docs/tls.md`), shared by the roles: the gateway's client port
//! (`[gateway.tls]`), the processors' internal port and the router's channels
//! (`[internal-tls]`). rustls with the *ring* provider only, so no other crypto library enters
//! the build.
//!
//! * [`reload::ReloadingKey`] — a certificate and key read from PEM files and re-read when their
//!   modification times change (a background poll every `reload-interval-ms`); a broken new
//!   pair is refused with one error in the log and the previous certificate keeps being
//!   served. It is the resolver of both server and client configs, so the router's client
//!   certificate rotates the same way.
//! * [`peer`] — client certificates checked against `internal-tls.allowed-peer-names` inside
//!   the handshake (a refused peer gets a TLS alert, never a request through).
//! * [`accept`] — the server side: plaintext callers get a short HTTP/1.1 400 "this port
//!   requires TLS" instead of a silent reset, then the handshake (bounded); an incoming stream
//!   of TLS connections for tonic's server.
//! * [`connect`] — the client side: a connector for tonic channels (`https://` endpoints), the
//!   server's name checked against `internal-tls.server-name` or the endpoint's host.
//! * [`dev`] — a local CA with server and client certificates (`statehouse admin certs dev`).
//!
//! Why files and polling: Kubernetes and cert-manager rotate certificates by replacing mounted
//! secret files; polling two `stat`s every few seconds needs no watcher and catches symlink
//! swaps, and the running connections keep their negotiated keys.

pub mod accept;
pub mod connect;
pub mod dev;
mod expiry;
pub mod peer;
pub mod reload;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::config::{GatewayTlsOptions, InternalTlsOptions};

pub use accept::{Acceptor, Refused, TlsConn};
pub use connect::{ClientTls, Connector};
pub use reload::ReloadingKey;

/// ALPN of the gateway's client port: HTTP/2 (gRPC) first, HTTP/1.1 (gRPC-Web, JSON).
pub const ALPN_CLIENT_PORT: [&[u8]; 2] = [b"h2", b"http/1.1"];
/// ALPN of the internal port and the router's channels: gRPC over HTTP/2 only.
pub const ALPN_INTERNAL: [&[u8]; 1] = [b"h2"];

/// Why TLS could not be set up. Every case names the file or key at fault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read.
    #[error("{what} {path}: {source}")]
    Read {
        /// What the file should hold (e.g. `certificate file`).
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file was read but holds nothing usable.
    #[error("{what} {path}: {reason}")]
    Invalid {
        /// What the file should hold.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A setting is missing or wrong (the config key is named).
    #[error("{0}")]
    Config(String),
    /// rustls refused the configuration.
    #[error("TLS: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The only crypto provider used: *ring*. rustls deprecated it for lacking post-quantum key
/// exchange (which comes with aws-lc-rs); the build keeps aws-lc-rs and its C toolchain out
/// on purpose (`docs/tls.md`), so classical key exchange it is.
pub fn provider() -> Arc<CryptoProvider> {
    #[allow(deprecated)]
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificates of a PEM file (at least one).
pub fn read_certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let bytes = std::fs::read(path).map_err(|source| Error::Read {
        what,
        path: path.to_path_buf(),
        source,
    })?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Invalid {
            what,
            path: path.to_path_buf(),
            reason: format!("not PEM certificates: {e}"),
        })?;
    if certs.is_empty() {
        return Err(Error::Invalid {
            what,
            path: path.to_path_buf(),
            reason: "no CERTIFICATE block".into(),
        });
    }
    Ok(certs)
}

/// The private key of a PEM file.
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, Error> {
    let what = "key file";
    let bytes = std::fs::read(path).map_err(|source| Error::Read {
        what,
        path: path.to_path_buf(),
        source,
    })?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| Error::Invalid {
        what,
        path: path.to_path_buf(),
        reason: format!("no usable private key (PKCS#8, PKCS#1 or SEC1 PEM): {e}"),
    })
}

/// A root store of the CA certificates in `path`.
pub fn read_roots(what: &'static str, path: &Path) -> Result<Arc<RootCertStore>, Error> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(what, path)? {
        roots.add(cert).map_err(|e| Error::Invalid {
            what,
            path: path.to_path_buf(),
            reason: format!("not a usable CA certificate: {e}"),
        })?;
    }
    Ok(Arc::new(roots))
}

/// Names from the configuration as TLS names.
pub fn server_names(key: &str, names: &[String]) -> Result<Vec<ServerName<'static>>, Error> {
    names
        .iter()
        .map(|name| {
            ServerName::try_from(name.clone()).map_err(|e| {
                Error::Config(format!(
                    "{key}: {name:?} is not a DNS name or IP address: {e}"
                ))
            })
        })
        .collect()
}

fn required<'a>(key: &str, value: &'a Option<PathBuf>) -> Result<&'a Path, Error> {
    value
        .as_deref()
        .ok_or_else(|| Error::Config(format!("{key} must be set")))
}

/// The acceptor of the gateway's client port, `None` while `[gateway.tls]` is off. Starts the
/// certificate's reload poll (call it inside a Tokio runtime).
pub fn gateway_acceptor(options: &GatewayTlsOptions) -> Result<Option<Acceptor>, Error> {
    if !options.enabled() {
        return Ok(None);
    }
    let key = ReloadingKey::load(
        required("gateway.tls.cert-file", &options.cert_file)?,
        required("gateway.tls.key-file", &options.key_file)?,
        Duration::from_millis(options.reload_interval_ms),
    )?;
    let verifier: Option<Arc<dyn ClientCertVerifier>> = match &options.client_ca_file {
        None => None,
        Some(ca) => {
            let roots = read_roots("gateway.tls.client-ca-file", ca)?;
            let builder = WebPkiClientVerifier::builder_with_provider(roots, provider());
            let builder = if options.require_client_cert {
                builder
            } else {
                builder.allow_unauthenticated()
            };
            Some(
                builder
                    .build()
                    .map_err(|e| Error::Config(format!("gateway.tls.client-ca-file: {e}")))?,
            )
        }
    };
    Acceptor::new(key, verifier, &ALPN_CLIENT_PORT).map(Some)
}

/// The acceptor of a processor's internal port, `None` while `[internal-tls]` is off.
pub fn internal_acceptor(options: &InternalTlsOptions) -> Result<Option<Acceptor>, Error> {
    if !options.enabled {
        return Ok(None);
    }
    let key = ReloadingKey::load(
        required("internal-tls.cert-file", &options.cert_file)?,
        required("internal-tls.key-file", &options.key_file)?,
        Duration::from_millis(options.reload_interval_ms),
    )?;
    let roots = read_roots(
        "internal-tls.ca-file",
        required("internal-tls.ca-file", &options.ca_file)?,
    )?;
    let verifier = if options.require_client_cert {
        let inner = WebPkiClientVerifier::builder_with_provider(roots, provider())
            .build()
            .map_err(|e| Error::Config(format!("internal-tls.ca-file: {e}")))?;
        let allowed = server_names(
            "internal-tls.allowed-peer-names",
            &options.allowed_peer_names,
        )?;
        Some(peer::NamedPeers::wrap(inner, allowed))
    } else {
        None
    };
    Acceptor::new(key, verifier, &ALPN_INTERNAL).map(Some)
}

/// The router's client side, `None` while `[internal-tls]` is off.
pub fn internal_client(options: &InternalTlsOptions) -> Result<Option<Arc<ClientTls>>, Error> {
    if !options.enabled {
        return Ok(None);
    }
    let roots = read_roots(
        "internal-tls.ca-file",
        required("internal-tls.ca-file", &options.ca_file)?,
    )?;
    let key = match (&options.cert_file, &options.key_file) {
        (Some(cert), Some(key)) => Some(ReloadingKey::load(
            cert,
            key,
            Duration::from_millis(options.reload_interval_ms),
        )?),
        _ => None,
    };
    let server_name = match &options.server_name {
        Some(name) => {
            Some(server_names("internal-tls.server-name", std::slice::from_ref(name))?.remove(0))
        }
        None => None,
    };
    ClientTls::new(roots, key, server_name, &ALPN_INTERNAL).map(|c| Some(Arc::new(c)))
}

#[cfg(test)]
mod tests;
