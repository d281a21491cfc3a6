//! The web console, served on the gateway's metrics port (`gateway.metrics-listen`, next to
//! `/metrics`, `/healthz` and `/readyz`; `statehouse_runtime::admin_server::serve_with`).
//!
//! Pages (HTML, each with a JSON twin under `/console/api/…`):
//! * `/console` — the services the registry knows: gRPC services, entity types, processors.
//! * `/console/partitions` — per service, each partition's owner and epoch (the routing
//!   table), with the journal end, the backup checkpoint and the backup lag.
//! * `/console/charts` — the gateway's calls per second and latency, sampled from its own
//!   counters into a bounded ring ([`sampler`]) and drawn as inline SVG ([`chart`]).
//! * `/console/lag` — backup lag and projection lag of every service.
//! * `/console/entity` — the entity inspector: a service and an entity key → its events as
//!   JSON, its snapshots and state.
//!
//! Rules it keeps: everything is rendered on the server from embedded assets (no script, no
//! external URL; a strict Content-Security-Policy says so to the browser); every piece of data
//! is escaped ([`html`]); the console only reads unless `gateway.console.admin-token-file` is
//! set, and an admin action (erase an entity) runs only for a request carrying that token.
//! `gateway.console.enabled = false` leaves the port with the health and metrics routes alone.

mod chart;
mod html;
mod inspection;
mod pages;
mod ring;
mod sampler;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use statehouse_runtime::config::{Config, ConsoleOptions};
use statehouse_runtime::router::Registry;
use tokio_util::sync::CancellationToken;

use ring::Ring;
use sampler::History;

/// Why the console cannot start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `gateway.console.admin-token-file` cannot be read.
    #[error("gateway.console.admin-token-file {path}: {source}")]
    TokenFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `gateway.console.admin-token-file` holds no token (only whitespace).
    #[error("gateway.console.admin-token-file {path} is empty")]
    EmptyToken { path: PathBuf },
}

/// The admin token. Never printed: its `Debug` is masked and it has no `Display`.
#[derive(Clone)]
pub(crate) struct Token(Arc<str>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(***)")
    }
}

impl Token {
    /// The token in `path`, without surrounding whitespace (a trailing newline is common).
    fn read(path: &std::path::Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::TokenFile {
            path: path.to_path_buf(),
            source,
        })?;
        let token = text.trim();
        if token.is_empty() {
            return Err(Error::EmptyToken {
                path: path.to_path_buf(),
            });
        }
        Ok(Self(token.into()))
    }

    /// Whether `given` is the token, in time independent of where they differ.
    pub(crate) fn matches(&self, given: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), given.as_bytes());
        let mut diff = u8::from(a.len() != b.len());
        for i in 0..a.len().max(b.len()) {
            diff |= a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0);
        }
        diff == 0
    }
}

/// What the pages share.
pub(crate) struct State {
    pub registry: Registry,
    pub history: History,
    /// The charts' window (`gateway.console.history-s`).
    pub window: Duration,
    pub interval: Duration,
    pub token: Option<Token>,
    pub inspector: pages::Inspection,
}

/// The console's routes (to merge into the metrics port) and its sampling task, or `None` when
/// `gateway.console.enabled` is false. The task ends with `shutdown`.
pub fn start(
    config: &Config,
    registry: Registry,
    shutdown: CancellationToken,
) -> Result<Option<(axum::Router, tokio::task::JoinHandle<()>)>, Error> {
    let options: &ConsoleOptions = &config.gateway.console;
    if !options.enabled {
        return Ok(None);
    }
    let token = options
        .admin_token_file
        .as_deref()
        .map(Token::read)
        .transpose()?;
    let interval = Duration::from_millis(options.sample_interval_ms.max(1));
    let window = Duration::from_secs(options.history_s);
    let capacity = (window.as_millis() / interval.as_millis()).max(1) as usize;
    let history: History = Arc::new(Mutex::new(Ring::new(capacity)));
    tracing::info!(
        admin = token.is_some(),
        "web console on the metrics port at /console"
    );
    let state = Arc::new(State {
        registry,
        history: history.clone(),
        window,
        interval,
        token,
        inspector: pages::Inspection::new(config),
    });
    let task = tokio::spawn(sampler::run(history, interval, shutdown));
    Ok(Some((pages::router(state), task)))
}

/// The wall clock, unix ms.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_read_trimmed_compared_and_never_shown() {
        let dir = std::env::temp_dir().join(format!("console-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, "s3cret-value\n").unwrap();
        let token = Token::read(&file).unwrap();
        assert!(token.matches("s3cret-value"));
        assert!(!token.matches("s3cret-valu"));
        assert!(!token.matches("s3cret-value2"));
        assert!(!token.matches(""));
        assert_eq!(format!("{token:?}"), "Token(***)");

        std::fs::write(&file, " \n").unwrap();
        assert!(matches!(Token::read(&file), Err(Error::EmptyToken { .. })));
        let missing = dir.join("missing");
        let error = Token::read(&missing).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("gateway.console.admin-token-file"),
            "{error}"
        );

        // `statehouse config` prints the configuration masked: the token file's path too.
        let mut config = Config::default();
        config.gateway.console.admin_token_file = Some(file.clone());
        let masked = config.masked_toml();
        assert!(!masked.contains(file.to_str().unwrap()), "{masked}");
        assert!(masked.contains("admin-token-file = \"***\""), "{masked}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_console_settings_fail_with_the_key_named() {
        let mut config = Config::default();
        config.gateway.console.sample_interval_ms = 0;
        let error = config
            .validate(statehouse_runtime::Role::Gateway)
            .unwrap_err();
        assert!(
            error
                .to_string()
                .contains("gateway.console.sample-interval-ms"),
            "{error}"
        );
        config.gateway.console.sample_interval_ms = 5_000;
        config.gateway.console.history_s = 1;
        assert!(config.validate(statehouse_runtime::Role::Gateway).is_err());
        config.gateway.console.history_s = 900;
        config.validate(statehouse_runtime::Role::Gateway).unwrap();
    }
}
