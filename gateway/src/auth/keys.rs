//! Where the verification keys come from, and keeping them current.
//!
//! * **File** (`gateway.auth.jwks-file`): read at start (a missing or unreadable file fails the
//!   start), then re-read every 2 s; a changed document that parses replaces the set (a
//!   Kubernetes ConfigMap or Secret update, rotation), a broken one is logged and the old set
//!   kept.
//! * **URL** (`gateway.auth.jwks-url`): fetched at start (a failure is logged: tokens are
//!   refused as "unknown key" until a fetch succeeds), every `jwks-refresh-s`, and when a token
//!   names a `kid` the set lacks — at most once per `jwks-min-refresh-s`, so tokens with made-up
//!   key ids cannot make the gateway hammer the issuer.
//!
//! A new set replaces the old one whole: a key removed from the document stops verifying.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::fetch::Fetcher;
use super::jwks::KeySet;

/// How often a JWKS file is re-read.
const FILE_POLL: Duration = Duration::from_secs(2);

enum Source {
    File(PathBuf),
    Url(Fetcher),
}

impl Source {
    async fn read(&self) -> Result<Bytes, String> {
        match self {
            Source::File(path) => {
                let path = path.clone();
                tokio::task::spawn_blocking(move || {
                    std::fs::read(&path)
                        .map(Bytes::from)
                        .map_err(|e| format!("{}: {e}", path.display()))
                })
                .await
                .map_err(|e| format!("reading the JWKS file: {e}"))?
            }
            Source::Url(fetcher) => fetcher.get().await,
        }
    }

    fn describe(&self) -> String {
        match self {
            Source::File(path) => path.display().to_string(),
            Source::Url(fetcher) => format!("{fetcher:?}"),
        }
    }
}

struct Inner {
    source: Source,
    set: RwLock<Arc<KeySet>>,
    /// The document the set was parsed from (unchanged documents are not parsed again), and
    /// when the source was last read on behalf of an unknown key id.
    state: tokio::sync::Mutex<(Bytes, Option<Instant>)>,
    min_refresh: Duration,
}

/// The current key set, kept fresh by a background task.
#[derive(Clone)]
pub(crate) struct Keys {
    inner: Arc<Inner>,
}

impl Keys {
    /// Loads the keys from the file, or from the URL, and starts keeping them current until
    /// `shutdown`.
    pub(crate) async fn start(
        options: &statehouse_runtime::config::AuthOptions,
        shutdown: CancellationToken,
    ) -> Result<Keys, String> {
        let (source, every) = match (&options.jwks_file, &options.jwks_url) {
            (Some(path), _) => (Source::File(path.clone()), FILE_POLL),
            (None, Some(url)) => (
                Source::Url(Fetcher::new(url, &options.ca_file)?),
                Duration::from_secs(options.jwks_refresh_s),
            ),
            (None, None) => return Err("no jwks-file or jwks-url".into()),
        };
        let keys = Keys {
            inner: Arc::new(Inner {
                source,
                set: RwLock::new(Arc::default()),
                state: tokio::sync::Mutex::new((Bytes::new(), None)),
                min_refresh: Duration::from_secs(options.jwks_min_refresh_s),
            }),
        };
        match (&keys.inner.source, keys.reload().await) {
            (Source::File(_), Err(e)) => return Err(format!("gateway.auth.jwks-file: {e}")),
            (Source::Url(_), Err(e)) => {
                tracing::warn!(error = %e, "JWKS not fetched; tokens are refused until it is")
            }
            (_, Ok(())) => {}
        }
        let task = keys.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(every) => {}
                }
                if let Err(e) = task.reload().await {
                    tracing::warn!(error = %e, "JWKS refresh failed; keeping the previous keys");
                }
            }
        });
        Ok(keys)
    }

    /// Keys from a document (tests).
    #[cfg(test)]
    pub(crate) fn fixed(set: KeySet) -> Keys {
        Keys {
            inner: Arc::new(Inner {
                source: Source::File(PathBuf::new()),
                set: RwLock::new(Arc::new(set)),
                state: tokio::sync::Mutex::new((Bytes::new(), Some(Instant::now()))),
                min_refresh: Duration::from_secs(3600),
            }),
        }
    }

    /// The current set.
    pub(crate) fn current(&self) -> Arc<KeySet> {
        Arc::clone(&self.inner.set.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// A token named key `kid`, which the set lacks: read the source again, unless that was
    /// done less than `jwks-min-refresh-s` ago. The set afterwards.
    pub(crate) async fn refresh_for(&self, kid: &str) -> Arc<KeySet> {
        {
            let mut state = self.inner.state.lock().await;
            // Another call may have refreshed while this one waited.
            if self.current().has_kid(kid) {
                return self.current();
            }
            if state
                .1
                .is_some_and(|at| at.elapsed() < self.inner.min_refresh)
            {
                return self.current();
            }
            state.1 = Some(Instant::now());
        }
        if let Err(e) = self.reload().await {
            tracing::warn!(error = %e, "JWKS refresh for an unknown key id failed");
        }
        self.current()
    }

    /// Reads the source; a changed document replaces the set.
    async fn reload(&self) -> Result<(), String> {
        let document = self.inner.source.read().await?;
        let mut state = self.inner.state.lock().await;
        if document == state.0 {
            return Ok(());
        }
        let (set, skipped) = KeySet::parse(&document)
            .map_err(|e| format!("{}: {e}", self.inner.source.describe()))?;
        tracing::info!(
            source = %self.inner.source.describe(),
            keys = set.len(),
            skipped,
            "JWKS loaded"
        );
        *self.inner.set.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(set);
        state.0 = document;
        Ok(())
    }
}
