//! Statehouse runtime: what every role (gateway, processor, projector) needs to run.
//!
//! * [`config`] — layered configuration: compiled defaults → `statehouse.toml` →
//!   `STATEHOUSE__SECTION__KEY` environment variables → `--set section.key=value` flags;
//!   validated at start with errors that name the bad value; logged with secrets masked.
//! * [`telemetry`] — `tracing` set up once (text or JSON logs, optional OTLP traces).
//! * [`trace`] — W3C trace context handed across hops (client → gateway → processor → user
//!   function → Kafka record → readers, as links); a no-op while traces are off.
//! * [`shutdown`] — the cancellation token threaded through every `run`, cancelled on
//!   SIGINT/SIGTERM.
//! * [`method_index`] — a user function's validated methods by gRPC path: descriptors, entity
//!   key fields, HTTP rules; shared by the gateway and the processor.
//! * [`router`] — the service registry (services and partition owners, fed from Kafka) and
//!   the router that delivers a command to the processor that may run it, with retries;
//!   shared by the gateway (client calls) and processors (forwards and side effects).
//! * [`inspect`] — what `statehouse admin` and the web console show (services, partitions, one
//!   entity's journal, snapshots and state) and the erasure of an entity through its owner.
//! * [`tls`] — TLS and mTLS for the gateway's client port, the processors' internal port and
//!   the router's channels: certificates from PEM files reloaded on change, client
//!   certificates and peer names checked, plaintext callers told the port needs TLS, and the
//!   development CA of `statehouse admin certs dev` (`docs/tls.md`).
//! * [`admin_server`] — the metrics and health port: Prometheus `/metrics`, `/healthz`
//!   (liveness) and `/readyz` (readiness: only after discovery and recovery).

pub mod admin_server;
pub mod admission;
pub mod config;
#[doc(hidden)]
pub mod fuzzing;
pub mod inspect;
pub mod method_index;
pub mod metrics;
pub mod router;
pub mod shutdown;
pub mod telemetry;
pub mod tls;
pub mod trace;

pub use admin_server::Health;
pub use config::{Config, Role};
