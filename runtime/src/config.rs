//! Layered configuration.
//!
//! Precedence, lowest first: compiled defaults → the TOML file (`--config`, else
//! `STATEHOUSE_CONFIG`, else `./statehouse.toml` if present) → environment variables
//! `STATEHOUSE__<SECTION>__<KEY>` (e.g. `STATEHOUSE__KAFKA__BOOTSTRAP_SERVERS`; `_` in a key
//! stands for `-`; under `KAFKA__LIBRDKAFKA__` it stands for `.`, so
//! `STATEHOUSE__KAFKA__LIBRDKAFKA__SASL_PASSWORD` sets `sasl.password`) → `--set
//! section.key=value` flags. Unknown keys are errors, so a typo never goes unnoticed.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// Prefix of configuration environment variables.
pub const ENV_PREFIX: &str = "STATEHOUSE__";
/// Environment variable naming the config file.
pub const CONFIG_FILE_ENV: &str = "STATEHOUSE_CONFIG";
const LIBRDKAFKA_ENV_PREFIX: &str = "STATEHOUSE__KAFKA__LIBRDKAFKA__";

/// Room an internal call needs around a client's message (metadata, ids, trace context).
const INTERNAL_ENVELOPE_BYTES: usize = 1024 * 1024;

/// The roles of the `statehouse` binary; each validates the sections it uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Gateway,
    Processor,
    Projector,
    /// `statehouse admin …`: Kafka and Cassandra only.
    Admin,
    /// Everything in one process (`statehouse dev`).
    Dev,
}

/// Configuration errors: always say which key or file is wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("configuration file {path} does not exist")]
    MissingFile { path: PathBuf },
    #[error("invalid configuration: {0}")]
    Invalid(String),
    #[error("bad --set {0:?}: expected section.key=value")]
    BadOverride(String),
    #[error("configuration: {0}")]
    Load(#[from] Box<figment::Error>),
}

/// The whole configuration (`statehouse.toml`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct Config {
    pub kafka: statehouse_kafka::Options,
    pub cassandra: statehouse_store::Options,
    pub telemetry: TelemetryOptions,
    pub gateway: GatewayOptions,
    pub processor: ProcessorOptions,
    pub projector: ProjectorOptions,
    pub runtime: RuntimeOptions,
    /// `[internal-tls]`: TLS and mTLS on the processors' internal port and the router's
    /// channels (`docs/tls.md`).
    pub internal_tls: InternalTlsOptions,
}

/// `[runtime]`: the async runtime every role runs on.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct RuntimeOptions {
    /// Worker threads; 0 = one per CPU core. Kafka's client threads and the blocking pool
    /// come on top; on a machine shared with Kafka, Cassandra and the user function, fewer
    /// workers mean fewer cross-thread wake-ups per command (`docs/benchmarks.md`).
    pub worker_threads: usize,
}

/// `[telemetry]`: logs and traces.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct TelemetryOptions {
    /// `text` (for people) or `json` (for log pipelines).
    pub log_format: LogFormat,
    /// A `tracing` filter, e.g. `info` or `info,statehouse_kafka=debug`. `RUST_LOG` wins if set.
    pub log_filter: String,
    /// OTLP/gRPC endpoint for traces (e.g. `http://otel-collector:4317`); unset = no traces.
    pub otlp_endpoint: Option<String>,
    /// `service.name` of exported traces; defaults to `statehouse-<role>`.
    pub service_name: Option<String>,
    /// Share of new traces exported, 0.0–1.0. A call that arrives with a `traceparent`
    /// follows its caller's decision (parent-based sampling).
    pub sampling_ratio: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    Text,
    Json,
}

impl Default for TelemetryOptions {
    fn default() -> Self {
        Self {
            log_format: LogFormat::Text,
            log_filter: "info".into(),
            otlp_endpoint: None,
            service_name: None,
            sampling_ratio: 1.0,
        }
    }
}

/// `[gateway]`: the client front door.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct GatewayOptions {
    /// Client port: gRPC, gRPC-Web and HTTP/JSON (HTTP/1.1 and h2c).
    pub listen: SocketAddr,
    /// Metrics and health port.
    pub metrics_listen: SocketAddr,
    /// Deadline of a client call that sets none, ms.
    pub default_timeout_ms: u64,
    /// Longest deadline a client may set (`grpc-timeout`), ms: longer ones are cut to it.
    pub max_timeout_ms: u64,
    /// Largest accepted request message, bytes (RESOURCE_EXHAUSTED / 413 above it). A
    /// command's record is bounded separately by `kafka.max-record-bytes`.
    pub max_request_bytes: usize,
    /// Largest reply message sent to a client, bytes.
    pub max_response_bytes: usize,
    /// Longest entity id (a Kafka and Cassandra key), bytes.
    pub max_entity_id_bytes: usize,
    /// Most metadata entries (request headers) forwarded with a command.
    pub max_metadata_entries: usize,
    /// Most metadata bytes (keys + values) forwarded with a command.
    pub max_metadata_bytes: usize,
    /// Concurrent HTTP/2 streams per client connection.
    pub max_concurrent_streams: u32,
    /// Adaptive admission of unary calls (`docs/security.md`, "Load shedding").
    pub admission: crate::admission::Options,
    /// The web console on the metrics port (`/console`).
    pub console: ConsoleOptions,
    /// Bearer-token authentication and per-method access rules (`docs/security.md`).
    pub auth: AuthOptions,
    /// `[gateway.tls]`: TLS on the client port (`docs/tls.md`); off unless `cert-file` is set.
    pub tls: GatewayTlsOptions,
}

/// `[gateway.console]`: the web console served on `gateway.metrics-listen`
/// (`gateway/src/console/`): services, partitions, charts, lag, the entity inspector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct ConsoleOptions {
    /// Serve the console; false = only `/metrics`, `/healthz` and `/readyz` on that port.
    pub enabled: bool,
    /// A file holding the admin token; set = admin actions (erase an entity) are offered to
    /// whoever gives the token; unset = the console is read-only. The token is never logged.
    pub admin_token_file: Option<PathBuf>,
    /// How often the gateway samples its call counters for the charts, ms.
    pub sample_interval_ms: u64,
    /// How much chart history is kept in memory, s.
    pub history_s: u64,
}

impl Default for ConsoleOptions {
    fn default() -> Self {
        Self {
            enabled: true,
            admin_token_file: None,
            sample_interval_ms: 5_000,
            history_s: 900,
        }
    }
}

impl Default for GatewayOptions {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:9000".parse().expect("static address"),
            metrics_listen: "0.0.0.0:9090".parse().expect("static address"),
            default_timeout_ms: 30_000,
            max_timeout_ms: 300_000,
            max_request_bytes: 1024 * 1024,
            max_response_bytes: 4 * 1024 * 1024,
            max_entity_id_bytes: 1024,
            max_metadata_entries: 64,
            max_metadata_bytes: 16 * 1024,
            max_concurrent_streams: 256,
            admission: crate::admission::Options::default(),
            console: ConsoleOptions::default(),
            auth: AuthOptions::default(),
            tls: GatewayTlsOptions::default(),
        }
    }
}

// ---- [gateway.auth] (docs/security.md) -------------------------------------------------------

/// `[gateway.auth]`: JWT bearer tokens checked at the gateway and per-method access rules
/// (`docs/security.md`). Off by default: every call is let through as before.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct AuthOptions {
    /// Check bearer tokens and apply `rules`; false = no authentication at all.
    pub enabled: bool,
    /// A JWKS file (e.g. a mounted ConfigMap or Secret); re-read when it changes.
    pub jwks_file: Option<PathBuf>,
    /// A JWKS URL (`https://…`, or `http://` for a sidecar); fetched at start, every
    /// `jwks-refresh-s`, and when a token names a key id the set lacks (at most once per
    /// `jwks-min-refresh-s`).
    pub jwks_url: Option<String>,
    /// Periodic refresh of `jwks-url`, s.
    pub jwks_refresh_s: u64,
    /// Least time between two fetches of `jwks-url` caused by unknown key ids, s.
    pub jwks_min_refresh_s: u64,
    /// PEM bundle of the CAs trusted for an `https` `jwks-url`.
    pub ca_file: PathBuf,
    /// Accepted `iss` values (one must match exactly).
    pub issuers: Vec<String>,
    /// Accepted audiences: the token's `aud` must hold one of them.
    pub audiences: Vec<String>,
    /// Tolerated clock difference for `exp` and `nbf`, s.
    pub clock_skew_s: u64,
    /// Longest accepted token, bytes (longer ones are refused unread).
    pub max_token_bytes: usize,
    /// Also pass the client's `authorization` header to the user function (it is never
    /// logged, and the gateway never writes metadata to Kafka).
    pub forward_authorization: bool,
    /// Access of a method no rule matches.
    pub default_access: Access,
    /// Access rules, first match wins.
    pub rules: Vec<AccessRule>,
}

impl Default for AuthOptions {
    fn default() -> Self {
        Self {
            enabled: false,
            jwks_file: None,
            jwks_url: None,
            jwks_refresh_s: 300,
            jwks_min_refresh_s: 10,
            ca_file: PathBuf::from("/etc/ssl/certs/ca-certificates.crt"),
            issuers: Vec::new(),
            audiences: Vec::new(),
            clock_skew_s: 60,
            max_token_bytes: 8 * 1024,
            forward_authorization: false,
            default_access: Access::Authenticated,
            rules: Vec::new(),
        }
    }
}

/// Who may call a method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Access {
    /// Anyone; a token, if sent, is still checked (a bad one is refused) and its claims passed.
    Anonymous,
    /// A caller with a valid token.
    Authenticated,
    /// A caller with a valid token whose `claim` holds one of `any-of`.
    Claim,
    /// Nobody.
    Deny,
}

/// `[[gateway.auth.rules]]`: one access rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct AccessRule {
    /// The methods it covers: `pkg.Service/Method`, `pkg.Service/*`, or `*`.
    pub method: String,
    /// What it requires.
    pub access: Access,
    /// `access = "claim"`: the claim to look at (a top-level claim name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim: Option<String>,
    /// `access = "claim"`: the claim must hold one of these (a string claim equal to one, or
    /// holding it as a space-separated word like `scope`; an array claim with it as an element).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub any_of: Vec<String>,
}

impl AuthOptions {
    /// Checks `[gateway.auth]`, naming the key at fault.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |m: String| Err(Error::Invalid(format!("gateway.auth.{m}")));
        for (i, rule) in self.rules.iter().enumerate() {
            let m = rule.method.as_str();
            let well_formed = m == "*"
                || m.split_once('/').is_some_and(|(service, method)| {
                    !service.is_empty()
                        && !service.contains('*')
                        && !method.is_empty()
                        && !method.contains('/')
                        && (method == "*" || !method.contains('*'))
                });
            if !well_formed {
                return bad(format!(
                    "rules[{i}].method {m:?} must be \"pkg.Service/Method\", \"pkg.Service/*\" or \"*\""
                ));
            }
            match (rule.access, &rule.claim) {
                (Access::Claim, None) => {
                    return bad(format!("rules[{i}]: access = \"claim\" needs claim"));
                }
                (Access::Claim, Some(claim)) if claim.is_empty() || rule.any_of.is_empty() => {
                    return bad(format!(
                        "rules[{i}]: access = \"claim\" needs a claim name and a non-empty any-of"
                    ));
                }
                (Access::Claim, Some(_)) => {}
                (_, Some(_)) => {
                    return bad(format!("rules[{i}]: claim is only for access = \"claim\""));
                }
                (_, None) if !rule.any_of.is_empty() => {
                    return bad(format!("rules[{i}]: any-of is only for access = \"claim\""));
                }
                (_, None) => {}
            }
        }
        if self.default_access == Access::Claim {
            return bad(
                "default-access cannot be \"claim\" (write a rule with method = \"*\")".into(),
            );
        }
        if !self.enabled {
            return Ok(());
        }
        match (&self.jwks_file, &self.jwks_url) {
            (None, None) | (Some(_), Some(_)) => {
                return bad("enabled needs exactly one of jwks-file and jwks-url".into());
            }
            (None, Some(url)) if !(url.starts_with("https://") || url.starts_with("http://")) => {
                return bad(format!(
                    "jwks-url {url:?} must be an https:// or http:// URL"
                ));
            }
            _ => {}
        }
        if self.issuers.is_empty() || self.issuers.iter().any(String::is_empty) {
            return bad("issuers must list the accepted token issuers".into());
        }
        if self.audiences.is_empty() || self.audiences.iter().any(String::is_empty) {
            return bad("audiences must list the accepted audiences".into());
        }
        if self.jwks_refresh_s == 0 || self.jwks_min_refresh_s == 0 {
            return bad("jwks-refresh-s and jwks-min-refresh-s must be positive".into());
        }
        if self.clock_skew_s > 600 {
            return bad(format!(
                "clock-skew-s {} must be at most 600",
                self.clock_skew_s
            ));
        }
        if !(256..=65_536).contains(&self.max_token_bytes) {
            return bad(format!(
                "max-token-bytes {} must be between 256 and 65536",
                self.max_token_bytes
            ));
        }
        Ok(())
    }
}

// ---- end of [gateway.auth] -------------------------------------------------------------------

/// `[processor]`: the sidecar of one user function.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct ProcessorOptions {
    /// The service name; unset = `ServiceInfo.service_name` reported by the user function.
    pub service: Option<String>,
    /// Internal gRPC port (gateway → processor, processor → processor).
    pub listen: SocketAddr,
    /// The address other pods reach this processor at (e.g. the pod IP and port); unset =
    /// derived from `listen`.
    pub advertise_address: Option<String>,
    /// Metrics and health port.
    pub metrics_listen: SocketAddr,
    /// Where the user function listens (the sidecar model: localhost).
    pub user_function_host: String,
    pub user_function_port: u16,
    /// Partitions of the service's topics (fixed once the topics exist).
    pub partitions: u32,
    /// Idle time after which an entity is passivated, ms, when discovery gives none.
    pub passivation_timeout_ms: u64,
    /// Refuse user functions that speak a protocol older than 0.2 (legacy SDKs).
    pub strict_protocol_version: bool,
    /// How often committed events are backed up to Cassandra, ms.
    pub backup_interval_ms: u64,
    /// Most active entities held in memory; beyond it the idlest are passivated.
    pub max_active_entities: usize,
    /// Most commands waiting in one entity's mailbox; beyond it a command is refused with
    /// RESOURCE_EXHAUSTED naming this key (one hot entity cannot hold the processor's memory).
    pub max_commands_per_entity: usize,
    /// Adaptive admission of the commands the processor runs (`docs/security.md`, "Load
    /// shedding"): the processor's own guard, whatever the number of gateways; off by default.
    pub admission: crate::admission::Options,
    /// How often a processor tells the others it is alive (and how far it has read the CRDT
    /// topic), ms.
    pub crdt_heartbeat_interval_ms: u64,
    /// A processor not heard from for this long is no longer live: its vote stops counting and
    /// ALL writes stop waiting for it, ms.
    pub crdt_heartbeat_timeout_ms: u64,
    /// How long a MAJORITY or ALL CRDT write may take before the command fails, ms.
    pub crdt_write_timeout_ms: u64,
    /// A replica gone for this long is pruned from the CRDTs of the partitions this processor
    /// owns (counters keep what it counted), ms.
    pub crdt_prune_after_ms: u64,
}

impl Default for ProcessorOptions {
    fn default() -> Self {
        Self {
            service: None,
            listen: "0.0.0.0:9100".parse().expect("static address"),
            advertise_address: None,
            metrics_listen: "0.0.0.0:9091".parse().expect("static address"),
            user_function_host: "127.0.0.1".into(),
            user_function_port: 8080,
            partitions: 12,
            passivation_timeout_ms: 30_000,
            strict_protocol_version: false,
            backup_interval_ms: 1_000,
            max_active_entities: 100_000,
            max_commands_per_entity: 256,
            admission: crate::admission::Options {
                // Off by default: a processor's in-flight commands include writes stalled on
                // Kafka (a cut, a slow broker), and a limit they fill would also refuse the
                // reads its entities could answer from memory (the R5 lease reads were). The
                // gateways' limits shed first; turn this on when many gateways front one
                // processor.
                enabled: false,
                initial_limit: 256,
                max_limit: 16_384,
                ..crate::admission::Options::default()
            },
            crdt_heartbeat_interval_ms: 1_000,
            crdt_heartbeat_timeout_ms: 5_000,
            crdt_write_timeout_ms: 5_000,
            crdt_prune_after_ms: 3_600_000,
        }
    }
}

/// `[projector]`: the projections of one service, built from its journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct ProjectorOptions {
    /// The service whose journal feeds the projections (required for `statehouse projector`).
    pub service: Option<String>,
    /// Where the projection handler (`statehouse.projection.v1.ProjectionHandler`, e.g. the
    /// user function's own port) listens.
    pub handler_host: String,
    pub handler_port: u16,
    /// The query API (`statehouse.projection.v1.Projections`).
    pub listen: SocketAddr,
    /// Metrics and health port.
    pub metrics_listen: SocketAddr,
    /// Most events handed to the handler at once, per partition.
    pub batch_size: usize,
    /// How long a partition waits for more events before handing a smaller batch over.
    pub batch_linger_ms: u64,
    /// How often generations, parked events and lag are looked at.
    pub poll_interval_ms: u64,
}

impl Default for ProjectorOptions {
    fn default() -> Self {
        Self {
            service: None,
            handler_host: "127.0.0.1".into(),
            handler_port: 8080,
            listen: "0.0.0.0:9300".parse().expect("static address"),
            metrics_listen: "0.0.0.0:9092".parse().expect("static address"),
            batch_size: 500,
            batch_linger_ms: 20,
            poll_interval_ms: 1_000,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// TLS (`docs/tls.md`): `[gateway.tls]` and `[internal-tls]`, their defaults and validation. Kept
// in one block; the certificates are read (and reloaded) by `crate::tls`.
// ---------------------------------------------------------------------------------------------

/// Default of `reload-interval-ms`: how often certificate and key files are looked at.
pub const TLS_RELOAD_INTERVAL_MS: u64 = 5_000;

/// `[gateway.tls]`: TLS on the gateway's client port. Off while `cert-file` is unset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct GatewayTlsOptions {
    /// The server certificate chain (PEM, leaf first); set = the port speaks TLS only.
    pub cert_file: Option<PathBuf>,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
    /// CA certificates (PEM) that client certificates must chain to; set = clients are asked
    /// for a certificate.
    pub client_ca_file: Option<PathBuf>,
    /// With `client-ca-file`: refuse clients without a certificate (false: a client may come
    /// without one, but a certificate it presents must still chain to the CA).
    pub require_client_cert: bool,
    /// How often `cert-file` and `key-file` are looked at for a new certificate, ms.
    pub reload_interval_ms: u64,
}

impl Default for GatewayTlsOptions {
    fn default() -> Self {
        Self {
            cert_file: None,
            key_file: None,
            client_ca_file: None,
            require_client_cert: true,
            reload_interval_ms: TLS_RELOAD_INTERVAL_MS,
        }
    }
}

impl GatewayTlsOptions {
    /// Whether the client port speaks TLS.
    pub fn enabled(&self) -> bool {
        self.cert_file.is_some()
    }
}

/// `[internal-tls]`: TLS on the processors' internal port and on the router's channels (the
/// gateway's and the processors' own), optionally mutual with names checked both ways.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct InternalTlsOptions {
    /// Turn it on: processors serve TLS only and advertise `https://`; routers connect over TLS.
    pub enabled: bool,
    /// CA certificates (PEM) that processors' server certificates — and, with
    /// `require-client-cert`, every caller's client certificate — must chain to.
    pub ca_file: Option<PathBuf>,
    /// This component's certificate (PEM): the processor's server certificate, and the client
    /// certificate the router presents (gateway and processors).
    pub cert_file: Option<PathBuf>,
    /// Its private key (PEM).
    pub key_file: Option<PathBuf>,
    /// Processors refuse callers without a certificate chaining to `ca-file` (mTLS).
    pub require_client_cert: bool,
    /// Names (DNS) a peer's certificate must be valid for, one of them: checked by processors
    /// on callers' client certificates. Empty = any certificate of the CA.
    pub allowed_peer_names: Vec<String>,
    /// The name the router expects in processors' server certificates; unset = the host of the
    /// processor's advertised endpoint.
    pub server_name: Option<String>,
    /// How often `cert-file` and `key-file` are looked at for a new certificate, ms.
    pub reload_interval_ms: u64,
}

impl Default for InternalTlsOptions {
    fn default() -> Self {
        Self {
            enabled: false,
            ca_file: None,
            cert_file: None,
            key_file: None,
            require_client_cert: true,
            allowed_peer_names: Vec::new(),
            server_name: None,
            reload_interval_ms: TLS_RELOAD_INTERVAL_MS,
        }
    }
}

impl Config {
    /// `[gateway.tls]` and `[internal-tls]` for `role`. Files are read when the role starts (a
    /// rendered config is checked where they are not mounted).
    fn validate_tls(&self, role: Role) -> Result<(), Error> {
        let g = &self.gateway.tls;
        if matches!(role, Role::Gateway | Role::Dev) {
            if g.cert_file.is_some() != g.key_file.is_some() {
                return Err(Error::Invalid(
                    "gateway.tls.cert-file and gateway.tls.key-file must be set together".into(),
                ));
            }
            if !g.enabled() && g.client_ca_file.is_some() {
                return Err(Error::Invalid(
                    "gateway.tls.client-ca-file needs gateway.tls.cert-file and key-file".into(),
                ));
            }
            if g.reload_interval_ms < 100 {
                return Err(Error::Invalid(format!(
                    "gateway.tls.reload-interval-ms {} must be at least 100",
                    g.reload_interval_ms
                )));
            }
        }
        let t = &self.internal_tls;
        if !t.enabled {
            if let Some(address) = &self.processor.advertise_address
                && address.starts_with("https://")
                && matches!(role, Role::Processor | Role::Dev)
            {
                return Err(Error::Invalid(format!(
                    "processor.advertise-address {address:?} is https:// but internal-tls.enabled is false"
                )));
            }
            return Ok(());
        }
        if t.ca_file.is_none() {
            return Err(Error::Invalid(
                "internal-tls.ca-file must be set when internal-tls.enabled is true".into(),
            ));
        }
        if t.cert_file.is_some() != t.key_file.is_some() {
            return Err(Error::Invalid(
                "internal-tls.cert-file and internal-tls.key-file must be set together".into(),
            ));
        }
        if matches!(role, Role::Gateway) && t.require_client_cert && t.cert_file.is_none() {
            return Err(Error::Invalid(
                "internal-tls.cert-file and key-file must be set on the gateway while internal-tls.require-client-cert is true: processors refuse callers without a client certificate".into(),
            ));
        }
        if matches!(role, Role::Processor | Role::Dev) {
            if t.cert_file.is_none() {
                return Err(Error::Invalid(
                    "internal-tls.cert-file and key-file must be set on a processor: it serves its internal port with them".into(),
                ));
            }
            if let Some(address) = &self.processor.advertise_address
                && address.starts_with("http://")
            {
                return Err(Error::Invalid(format!(
                    "processor.advertise-address {address:?} is http:// but internal-tls.enabled is true: use https:// or no scheme"
                )));
            }
        }
        for name in t.allowed_peer_names.iter().chain(&t.server_name) {
            if rustls_pki_types::ServerName::try_from(name.as_str()).is_err() {
                return Err(Error::Invalid(format!(
                    "internal-tls: {name:?} (allowed-peer-names / server-name) is not a DNS name or IP address"
                )));
            }
        }
        if t.reload_interval_ms < 100 {
            return Err(Error::Invalid(format!(
                "internal-tls.reload-interval-ms {} must be at least 100",
                t.reload_interval_ms
            )));
        }
        Ok(())
    }
}

/// Where configuration comes from besides the defaults and the environment.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// `--config FILE`.
    pub file: Option<PathBuf>,
    /// `--set section.key=value`, in order.
    pub overrides: Vec<String>,
}

impl Config {
    /// Load the layers of [`Sources`] and the process environment.
    pub fn load(sources: &Sources) -> Result<Self, Error> {
        Self::load_with_env(sources, std::env::vars())
    }

    /// Like [`Config::load`], with an explicit environment (tests).
    pub fn load_with_env(
        sources: &Sources,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, Error> {
        let env: Vec<(String, String)> = env.into_iter().collect();
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        let file = sources.file.clone().or_else(|| {
            env.iter()
                .find(|(k, _)| k == CONFIG_FILE_ENV)
                .map(|(_, v)| PathBuf::from(v))
        });
        match file {
            Some(path) => {
                if !path.exists() {
                    return Err(Error::MissingFile { path });
                }
                figment = figment.merge(Toml::file_exact(path));
            }
            None if Path::new("statehouse.toml").exists() => {
                figment = figment.merge(Toml::file_exact("statehouse.toml"));
            }
            None => {}
        }
        // Environment: the general sections, then librdkafka passthrough keys (with dots).
        let mut rdkafka_env = BTreeMap::new();
        for (key, value) in &env {
            if let Some(rest) = key.strip_prefix(LIBRDKAFKA_ENV_PREFIX) {
                rdkafka_env.insert(rest.to_ascii_lowercase().replace('_', "."), value.clone());
            }
        }
        let general: Vec<(String, String)> = env
            .iter()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX) && !k.starts_with(LIBRDKAFKA_ENV_PREFIX))
            .cloned()
            .collect();
        // Each pair is fed as a serialized value (not figment's `Env`), so tests can pass an
        // explicit environment and librdkafka keys keep their dots.
        for (key, value) in general {
            let path = key[ENV_PREFIX.len()..]
                .to_ascii_lowercase()
                .replace("__", ".")
                .replace('_', "-");
            figment = figment.merge(Serialized::default(&path, parse_value(&value)));
        }
        for (key, value) in rdkafka_env {
            figment = figment.merge(Serialized::default(
                "kafka.librdkafka",
                BTreeMap::from([(key, value)]),
            ));
        }
        for item in &sources.overrides {
            let (key, value) = item
                .split_once('=')
                .filter(|(k, _)| !k.trim().is_empty())
                .ok_or_else(|| Error::BadOverride(item.clone()))?;
            let key = key.trim();
            if let Some(rd) = key.strip_prefix("kafka.librdkafka.") {
                figment = figment.merge(Serialized::default(
                    "kafka.librdkafka",
                    BTreeMap::from([(rd.to_string(), value.to_string())]),
                ));
            } else {
                figment = figment.merge(Serialized::default(key, parse_value(value)));
            }
        }
        figment.extract().map_err(|e| Error::Load(Box::new(e)))
    }

    /// Check the sections `role` uses; the error names the bad key.
    pub fn validate(&self, role: Role) -> Result<(), Error> {
        let invalid = |e: &dyn std::fmt::Display| Error::Invalid(e.to_string());
        self.kafka.validate().map_err(|e| invalid(&e))?;
        if matches!(
            role,
            Role::Processor | Role::Projector | Role::Admin | Role::Dev
        ) {
            self.cassandra.validate().map_err(|e| invalid(&e))?;
        }
        if let Some(endpoint) = &self.telemetry.otlp_endpoint
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            return Err(Error::Invalid(format!(
                "telemetry.otlp-endpoint {endpoint:?} must be an http:// or https:// URL"
            )));
        }
        if !(0.0..=1.0).contains(&self.telemetry.sampling_ratio) {
            return Err(Error::Invalid(format!(
                "telemetry.sampling-ratio {} must be between 0.0 and 1.0",
                self.telemetry.sampling_ratio
            )));
        }
        if self
            .telemetry
            .log_filter
            .parse::<tracing_subscriber::EnvFilter>()
            .is_err()
        {
            return Err(Error::Invalid(format!(
                "telemetry.log-filter {:?} is not a valid tracing filter",
                self.telemetry.log_filter
            )));
        }
        self.validate_tls(role)?;
        if matches!(role, Role::Gateway | Role::Dev) {
            let g = &self.gateway;
            for (key, value) in [
                ("default-timeout-ms", g.default_timeout_ms as usize),
                ("max-timeout-ms", g.max_timeout_ms as usize),
                ("max-request-bytes", g.max_request_bytes),
                ("max-response-bytes", g.max_response_bytes),
                ("max-entity-id-bytes", g.max_entity_id_bytes),
                ("max-metadata-entries", g.max_metadata_entries),
                ("max-metadata-bytes", g.max_metadata_bytes),
                ("max-concurrent-streams", g.max_concurrent_streams as usize),
            ] {
                if value == 0 {
                    return Err(Error::Invalid(format!("gateway.{key} must be positive")));
                }
            }
            g.admission
                .validate("gateway.admission")
                .map_err(Error::Invalid)?;
            if g.default_timeout_ms > g.max_timeout_ms {
                return Err(Error::Invalid(format!(
                    "gateway.default-timeout-ms {} is above gateway.max-timeout-ms {}",
                    g.default_timeout_ms, g.max_timeout_ms
                )));
            }
            // The gateway hands requests to processors and takes replies from them through the
            // router, whose channels accept at most `MAX_INTERNAL_MESSAGE_BYTES`.
            for (key, value) in [
                ("max-request-bytes", g.max_request_bytes),
                ("max-response-bytes", g.max_response_bytes),
            ] {
                if value > crate::router::MAX_INTERNAL_MESSAGE_BYTES - INTERNAL_ENVELOPE_BYTES {
                    return Err(Error::Invalid(format!(
                        "gateway.{key} {value} is above {}, the most the internal calls carry",
                        crate::router::MAX_INTERNAL_MESSAGE_BYTES - INTERNAL_ENVELOPE_BYTES
                    )));
                }
            }
            if g.listen == g.metrics_listen {
                return Err(Error::Invalid(
                    "gateway.listen and gateway.metrics-listen must differ".into(),
                ));
            }
            let c = &g.console;
            if c.sample_interval_ms == 0 || c.history_s * 1000 < c.sample_interval_ms {
                return Err(Error::Invalid(format!(
                    "gateway.console.sample-interval-ms {} must be positive and at most gateway.console.history-s ({} s)",
                    c.sample_interval_ms, c.history_s
                )));
            }
            if c.history_s * 1000 / c.sample_interval_ms > 100_000 {
                return Err(Error::Invalid(
                    "gateway.console.history-s / sample-interval-ms keeps more than 100000 samples"
                        .into(),
                ));
            }
        }
        if matches!(role, Role::Gateway | Role::Dev) {
            self.gateway.auth.validate()?;
        }
        if matches!(role, Role::Projector) {
            let p = &self.projector;
            let service = p.service.as_ref().ok_or_else(|| {
                Error::Invalid(
                    "projector.service must be set: the service whose journal the projections read"
                        .into(),
                )
            })?;
            statehouse_core::ServiceName::new(service.clone())
                .map_err(|e| Error::Invalid(format!("projector.service: {e}")))?;
            if p.handler_host.is_empty() || p.handler_port == 0 {
                return Err(Error::Invalid(
                    "projector.handler-host and handler-port must be set".into(),
                ));
            }
            if p.batch_size == 0 || p.batch_size > 100_000 {
                return Err(Error::Invalid(format!(
                    "projector.batch-size {} must be between 1 and 100000",
                    p.batch_size
                )));
            }
            if p.poll_interval_ms == 0 {
                return Err(Error::Invalid(
                    "projector.poll-interval-ms must be positive".into(),
                ));
            }
            if p.listen == p.metrics_listen {
                return Err(Error::Invalid(
                    "projector.listen and projector.metrics-listen must differ".into(),
                ));
            }
        }
        if matches!(role, Role::Processor | Role::Dev) {
            let p = &self.processor;
            if let Some(service) = &p.service {
                statehouse_core::ServiceName::new(service.clone())
                    .map_err(|e| Error::Invalid(format!("processor.service: {e}")))?;
            }
            if p.partitions == 0 || p.partitions > 10_000 {
                return Err(Error::Invalid(format!(
                    "processor.partitions {} must be between 1 and 10000",
                    p.partitions
                )));
            }
            if p.user_function_host.is_empty() || p.user_function_port == 0 {
                return Err(Error::Invalid(
                    "processor.user-function-host and user-function-port must be set".into(),
                ));
            }
            if p.passivation_timeout_ms == 0
                || p.backup_interval_ms == 0
                || p.max_active_entities == 0
                || p.max_commands_per_entity == 0
            {
                return Err(Error::Invalid(
                    "processor.passivation-timeout-ms, backup-interval-ms, max-active-entities and max-commands-per-entity must be positive"
                        .into(),
                ));
            }
            p.admission
                .validate("processor.admission")
                .map_err(Error::Invalid)?;
            if p.crdt_heartbeat_interval_ms == 0
                || p.crdt_write_timeout_ms == 0
                || p.crdt_heartbeat_timeout_ms <= p.crdt_heartbeat_interval_ms
                || p.crdt_prune_after_ms <= p.crdt_heartbeat_timeout_ms
            {
                return Err(Error::Invalid(
                    "processor.crdt-heartbeat-interval-ms and crdt-write-timeout-ms must be positive, and crdt-heartbeat-interval-ms < crdt-heartbeat-timeout-ms < crdt-prune-after-ms"
                        .into(),
                ));
            }
            if p.listen == p.metrics_listen {
                return Err(Error::Invalid(
                    "processor.listen and processor.metrics-listen must differ".into(),
                ));
            }
        }
        Ok(())
    }

    /// The effective configuration as TOML, with secrets masked — safe to log.
    pub fn masked_toml(&self) -> String {
        let mut value = toml::Value::try_from(self).expect("the config serializes to TOML");
        mask(&mut value, "");
        toml::to_string(&value).expect("a TOML value renders")
    }
}

/// Keys whose values are never logged.
fn is_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    [
        "password",
        "secret",
        "token",
        "credential",
        "private",
        "key.pem",
        "sasl.oauthbearer.config",
    ]
    .iter()
    .any(|s| key.contains(s))
}

fn mask(value: &mut toml::Value, key: &str) {
    match value {
        toml::Value::Table(table) => {
            for (k, v) in table.iter_mut() {
                mask(v, k);
            }
        }
        toml::Value::Array(items) => items.iter_mut().for_each(|v| mask(v, key)),
        other if is_secret(key) => *other = toml::Value::String("***".into()),
        _ => {}
    }
}

/// A `--set`/env value: a TOML literal if it parses as one (numbers, booleans, arrays, inline
/// tables), else the raw string.
fn parse_value(raw: &str) -> toml::Value {
    let doc = format!("v = {raw}");
    match doc.parse::<toml::Table>() {
        Ok(mut table) => table
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.into())),
        Err(_) => toml::Value::String(raw.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn layers_apply_in_order() {
        let dir = std::env::temp_dir().join(format!("statehouse-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("statehouse.toml");
        std::fs::write(
            &file,
            r#"
[kafka]
bootstrap-servers = "file:9092"
session-timeout-ms = 6000
[kafka.librdkafka]
"security.protocol" = "SASL_SSL"
[processor]
partitions = 24
user-function-port = 8081
"#,
        )
        .unwrap();
        let sources = Sources {
            file: Some(file),
            overrides: vec![
                "processor.partitions=48".into(),
                "kafka.librdkafka.sasl.mechanism=PLAIN".into(),
            ],
        };
        let config = Config::load_with_env(
            &sources,
            env(&[
                ("STATEHOUSE__KAFKA__BOOTSTRAP_SERVERS", "env:9092"),
                ("STATEHOUSE__PROCESSOR__PARTITIONS", "36"),
                ("STATEHOUSE__KAFKA__LIBRDKAFKA__SASL_PASSWORD", "hunter2"),
                (
                    "STATEHOUSE__CASSANDRA__CONTACT_POINTS",
                    "[\"c1:9042\", \"c2:9042\"]",
                ),
                ("UNRELATED", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(
            config.kafka.bootstrap_servers, "env:9092",
            "env beats the file"
        );
        assert_eq!(
            config.kafka.session_timeout_ms, 6000,
            "the file beats defaults"
        );
        assert_eq!(config.processor.partitions, 48, "--set beats env");
        assert_eq!(config.processor.user_function_port, 8081);
        assert_eq!(config.cassandra.contact_points, ["c1:9042", "c2:9042"]);
        assert_eq!(config.kafka.librdkafka["security.protocol"], "SASL_SSL");
        assert_eq!(config.kafka.librdkafka["sasl.mechanism"], "PLAIN");
        assert_eq!(config.kafka.librdkafka["sasl.password"], "hunter2");
        config.validate(Role::Processor).unwrap();

        let masked = config.masked_toml();
        assert!(!masked.contains("hunter2"), "{masked}");
        assert!(masked.contains("\"sasl.password\" = \"***\""), "{masked}");
        assert!(masked.contains("SASL_SSL"), "non-secrets stay visible");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let typo = Config::load_with_env(
            &Sources {
                file: None,
                overrides: vec!["processor.partiton=3".into()],
            },
            Vec::new(),
        )
        .unwrap_err()
        .to_string();
        assert!(typo.contains("partiton"), "{typo}");

        let missing = Config::load_with_env(
            &Sources {
                file: Some("/nonexistent/statehouse.toml".into()),
                overrides: vec![],
            },
            Vec::new(),
        )
        .unwrap_err();
        assert!(matches!(missing, Error::MissingFile { .. }));

        let bad = Config::load_with_env(
            &Sources {
                file: None,
                overrides: vec!["processor.partitions=0".into()],
            },
            Vec::new(),
        )
        .unwrap();
        let err = bad.validate(Role::Processor).unwrap_err().to_string();
        assert!(err.contains("processor.partitions"), "{err}");
        // The gateway does not care about processor settings.
        bad.validate(Role::Gateway).unwrap();

        assert!(matches!(
            Config::load_with_env(
                &Sources {
                    file: None,
                    overrides: vec!["novalue".into()]
                },
                Vec::new()
            ),
            Err(Error::BadOverride(_))
        ));
        let wrong_type = Config::load_with_env(
            &Sources {
                file: None,
                overrides: vec!["processor.partitions=many".into()],
            },
            Vec::new(),
        )
        .unwrap_err()
        .to_string();
        assert!(wrong_type.contains("partitions"), "{wrong_type}");
    }

    #[test]
    fn gateway_auth_is_off_by_default_and_checked_when_on() {
        let config = Config::default();
        assert!(!config.gateway.auth.enabled);
        config.validate(Role::Gateway).unwrap();

        let load = |sets: &[&str]| {
            Config::load_with_env(
                &Sources {
                    file: None,
                    overrides: sets.iter().map(|s| s.to_string()).collect(),
                },
                Vec::new(),
            )
        };
        let good = [
            "gateway.auth.enabled=true",
            "gateway.auth.jwks-file=\"/etc/statehouse/jwks.json\"",
            "gateway.auth.issuers=[\"https://issuer\"]",
            "gateway.auth.audiences=[\"shop\"]",
            "gateway.auth.rules=[{method=\"shop.Cart/*\", access=\"claim\", claim=\"role\", any-of=[\"admin\"]}, {method=\"*\", access=\"anonymous\"}]",
        ];
        let config = load(&good).unwrap();
        config.validate(Role::Gateway).unwrap();
        assert_eq!(config.gateway.auth.rules.len(), 2);
        assert_eq!(config.gateway.auth.rules[0].any_of, ["admin"]);
        assert_eq!(config.gateway.auth.default_access, Access::Authenticated);

        let refused = |extra: &str, key: &str| {
            let mut sets = good.to_vec();
            sets.push(extra);
            let err = match load(&sets) {
                Err(e) => e.to_string(),
                Ok(config) => config.validate(Role::Gateway).unwrap_err().to_string(),
            };
            assert!(err.contains(key), "{extra}: {err}");
        };
        refused(
            "gateway.auth.jwks-url=\"https://issuer/jwks\"",
            "exactly one of jwks-file",
        );
        refused("gateway.auth.issuers=[]", "gateway.auth.issuers");
        refused("gateway.auth.audiences=[]", "gateway.auth.audiences");
        refused(
            "gateway.auth.max-token-bytes=10",
            "gateway.auth.max-token-bytes",
        );
        refused(
            "gateway.auth.default-access=\"claim\"",
            "gateway.auth.default-access",
        );
        refused("gateway.auth.default-access=\"maybe\"", "maybe");
        refused("gateway.auth.unknown=1", "unknown");
        refused(
            "gateway.auth.rules=[{method=\"shop.*/Get\", access=\"deny\"}]",
            "gateway.auth.rules[0].method",
        );
        refused(
            "gateway.auth.rules=[{method=\"*\", access=\"claim\"}]",
            "gateway.auth.rules[0]",
        );
        refused(
            "gateway.auth.rules=[{method=\"*\", access=\"deny\", claim=\"role\"}]",
            "claim is only for",
        );
        refused(
            "gateway.auth.rules=[{method=\"*\", access=\"deny\", typo=1}]",
            "typo",
        );
    }

    #[test]
    fn tls_is_off_by_default_and_checked_when_on() {
        let load = |sets: &[&str]| {
            Config::load_with_env(
                &Sources {
                    file: None,
                    overrides: sets.iter().map(|s| s.to_string()).collect(),
                },
                Vec::new(),
            )
            .unwrap()
        };
        let plain = load(&[]);
        assert!(!plain.gateway.tls.enabled() && !plain.internal_tls.enabled);
        plain.validate(Role::Gateway).unwrap();
        plain.validate(Role::Processor).unwrap();

        let on = load(&[
            "gateway.tls.cert-file=/tls/server.pem",
            "gateway.tls.key-file=/tls/server.key",
            "gateway.tls.client-ca-file=/tls/ca.pem",
            "internal-tls.enabled=true",
            "internal-tls.ca-file=/tls/ca.pem",
            "internal-tls.cert-file=/tls/server.pem",
            "internal-tls.key-file=/tls/server.key",
            "internal-tls.allowed-peer-names=[\"statehouse.internal\"]",
            "internal-tls.server-name=statehouse.internal",
        ]);
        assert!(on.gateway.tls.enabled() && on.gateway.tls.require_client_cert);
        assert_eq!(on.gateway.tls.reload_interval_ms, TLS_RELOAD_INTERVAL_MS);
        on.validate(Role::Gateway).unwrap();
        on.validate(Role::Processor).unwrap();

        let error = |sets: &[&str], role| load(sets).validate(role).unwrap_err().to_string();
        let e = error(&["gateway.tls.cert-file=/c.pem"], Role::Gateway);
        assert!(e.contains("gateway.tls.key-file"), "{e}");
        let e = error(&["gateway.tls.client-ca-file=/ca.pem"], Role::Gateway);
        assert!(e.contains("client-ca-file"), "{e}");
        let e = error(&["internal-tls.enabled=true"], Role::Processor);
        assert!(e.contains("internal-tls.ca-file"), "{e}");
        let e = error(
            &["internal-tls.enabled=true", "internal-tls.ca-file=/ca.pem"],
            Role::Processor,
        );
        assert!(e.contains("internal-tls.cert-file"), "{e}");
        let e = error(
            &["internal-tls.enabled=true", "internal-tls.ca-file=/ca.pem"],
            Role::Gateway,
        );
        assert!(e.contains("require-client-cert"), "{e}");
        let e = error(
            &[
                "internal-tls.enabled=true",
                "internal-tls.ca-file=/ca.pem",
                "internal-tls.require-client-cert=false",
                "internal-tls.allowed-peer-names=[\"not a name\"]",
            ],
            Role::Gateway,
        );
        assert!(e.contains("not a name"), "{e}");
        let e = error(
            &["processor.advertise-address=https://p:9100"],
            Role::Processor,
        );
        assert!(e.contains("internal-tls.enabled is false"), "{e}");
        let typo = Config::load_with_env(
            &Sources {
                file: None,
                overrides: vec!["internal-tls.ca=/ca.pem".into()],
            },
            Vec::new(),
        )
        .unwrap_err()
        .to_string();
        assert!(typo.contains("ca"), "{typo}");
    }
}
