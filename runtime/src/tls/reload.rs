//! A certificate and key from PEM files, reloaded when the files change.
//!
//! The files' modification times and lengths are polled (every `reload-interval-ms`, by a task
//! that ends when the key is dropped). On a change both files are read again and checked — the
//! certificate parses, the key parses and is one *ring* can sign with, and the two belong
//! together — before the new pair replaces the old one. A pair that fails the check is
//! refused with one error in the log (per change of the files, not per poll), and the previous
//! certificate keeps being served: a half-written rotation (new certificate, old key) waits for
//! the key to arrive. New handshakes get the new certificate; running connections are not
//! touched. Each certificate read sets the expiry gauge
//! (`statehouse_tls_certificate_expiry_timestamp_seconds{file}`, [`super::expiry`]).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, SystemTime};

use rustls::client::ResolvesClientCert;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{SignatureScheme, crypto::ring::sign::any_supported_type};

use super::{Error, read_certs, read_key};

/// What the files looked like when last read (modification time and length of each).
type Stamp = [Option<(SystemTime, u64)>; 2];

/// What [`ReloadingKey::check`] did.
#[derive(Debug)]
pub enum Reload {
    /// The files did not change.
    Unchanged,
    /// A new certificate is served.
    Reloaded,
    /// The files changed but are not usable; the previous certificate is kept.
    Refused(Error),
}

/// See the module docs. A [`ResolvesServerCert`] and a [`ResolvesClientCert`].
pub struct ReloadingKey {
    cert_file: PathBuf,
    key_file: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    /// The files as last looked at (whether their contents were taken or refused).
    seen: Mutex<Stamp>,
}

impl std::fmt::Debug for ReloadingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingKey")
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .finish_non_exhaustive()
    }
}

impl ReloadingKey {
    /// Reads the pair (a failure here is final: there is nothing to serve yet) and, inside a
    /// Tokio runtime, starts the poll every `interval`.
    pub fn load(cert_file: &Path, key_file: &Path, interval: Duration) -> Result<Arc<Self>, Error> {
        let key = Arc::new(Self::read_once(cert_file, key_file)?);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(poll(Arc::downgrade(&key), interval));
        }
        Ok(key)
    }

    /// Reads the pair without polling (tests call [`ReloadingKey::check`] themselves).
    pub fn read_once(cert_file: &Path, key_file: &Path) -> Result<Self, Error> {
        let seen = stamp(cert_file, key_file);
        let current = read_pair(cert_file, key_file)?;
        record_expiry(cert_file, &current);
        Ok(Self {
            cert_file: cert_file.to_path_buf(),
            key_file: key_file.to_path_buf(),
            current: RwLock::new(Arc::new(current)),
            seen: Mutex::new(seen),
        })
    }

    /// The certificate served now.
    pub fn current(&self) -> Arc<CertifiedKey> {
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Looks at the files once; takes a changed pair if it is usable (logging either way).
    pub fn check(&self) -> Reload {
        let now = stamp(&self.cert_file, &self.key_file);
        {
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            if *seen == now {
                return Reload::Unchanged;
            }
            *seen = now;
        }
        match read_pair(&self.cert_file, &self.key_file) {
            Ok(key) => {
                record_expiry(&self.cert_file, &key);
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(key);
                tracing::info!(cert_file = %self.cert_file.display(), "TLS certificate reloaded");
                Reload::Reloaded
            }
            Err(e) => {
                tracing::error!(
                    cert_file = %self.cert_file.display(),
                    key_file = %self.key_file.display(),
                    error = %e,
                    "the changed TLS certificate or key is not usable; still serving the previous certificate"
                );
                Reload::Refused(e)
            }
        }
    }
}

impl ResolvesServerCert for ReloadingKey {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

impl ResolvesClientCert for ReloadingKey {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

async fn poll(key: Weak<ReloadingKey>, interval: Duration) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let Some(key) = key.upgrade() else { return };
        // Reading two small files: off the async workers all the same.
        let _ = tokio::task::spawn_blocking(move || key.check()).await;
    }
}

fn stamp(cert_file: &Path, key_file: &Path) -> Stamp {
    let of = |path: &Path| {
        std::fs::metadata(path)
            .ok()
            .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()))
    };
    [of(cert_file), of(key_file)]
}

/// Sets the expiry gauge of `cert_file` to its end-entity certificate's `notAfter`.
fn record_expiry(cert_file: &Path, key: &CertifiedKey) {
    match key
        .cert
        .first()
        .and_then(|c| super::expiry::not_after(c.as_ref()))
    {
        Some(end) => ::metrics::gauge!(
            crate::metrics::TLS_CERT_EXPIRY,
            "file" => cert_file.display().to_string()
        )
        .set(end as f64),
        None => tracing::warn!(
            cert_file = %cert_file.display(),
            "cannot read the certificate's expiry; it is served, but not in the expiry gauge"
        ),
    }
}

fn read_pair(cert_file: &Path, key_file: &Path) -> Result<CertifiedKey, Error> {
    let certs = read_certs("certificate file", cert_file)?;
    let key = read_key(key_file)?;
    let signing = any_supported_type(&key).map_err(|e| Error::Invalid {
        what: "key file",
        path: key_file.to_path_buf(),
        reason: format!("not a key this build can sign with: {e}"),
    })?;
    let pair = CertifiedKey::new(certs, signing);
    pair.keys_match().map_err(|e| Error::Invalid {
        what: "key file",
        path: key_file.to_path_buf(),
        reason: format!(
            "does not belong to the certificate in {}: {e}",
            cert_file.display()
        ),
    })?;
    Ok(pair)
}
