use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::Error;

/// Cassandra / ScyllaDB options (`[cassandra]` in `statehouse.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct Options {
    /// Contact points, `host:port`.
    pub contact_points: Vec<String>,
    /// The keyspace holding every Statehouse table.
    pub keyspace: String,
    /// Replication of the keyspace when `admin migrate` creates it: `SimpleStrategy` with this
    /// factor, unless `datacenters` is set.
    pub replication_factor: u8,
    /// `NetworkTopologyStrategy` replication per datacenter, e.g. `{ dc1 = 3 }`.
    pub datacenters: BTreeMap<String, u8>,
    /// Prefer nodes of this datacenter (token-aware, DC-aware load balancing).
    pub local_datacenter: Option<String>,
    /// Username for password authentication (with `password`).
    pub username: Option<String>,
    /// Password for password authentication. Prefer `STATEHOUSE__CASSANDRA__PASSWORD` from a secret.
    pub password: Option<String>,
    /// Client TLS to the nodes (`[cassandra.tls]`).
    pub tls: TlsOptions,
    /// Per-request timeout, ms.
    pub request_timeout_ms: u64,
    /// Connection timeout, ms.
    pub connect_timeout_ms: u64,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            contact_points: vec!["127.0.0.1:9042".into()],
            keyspace: "statehouse".into(),
            replication_factor: 1,
            datacenters: BTreeMap::new(),
            local_datacenter: None,
            username: None,
            password: None,
            tls: TlsOptions::default(),
            request_timeout_ms: 10_000,
            connect_timeout_ms: 5_000,
        }
    }
}

/// Client TLS to Cassandra / ScyllaDB (`[cassandra.tls]`), through OpenSSL (the library the
/// Kafka client links too). The nodes' certificates are verified against `ca-file` and against
/// the IP address the driver connects to (the address each node advertises), so a node
/// certificate must carry that address as an IP subject alternative name.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct TlsOptions {
    /// Connect with TLS (the nodes' `client_encryption_options.enabled`).
    pub enabled: bool,
    /// PEM file of the CA(s) that signed the nodes' certificates; unset = the system's roots.
    pub ca_file: Option<PathBuf>,
    /// PEM certificate chain presented to the nodes (when they require client certificates),
    /// with `key-file`.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert-file`.
    pub key_file: Option<PathBuf>,
}

impl Options {
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |m: String| Err(Error::InvalidOption(m));
        if self.contact_points.is_empty() {
            return bad("cassandra.contact-points must list at least one host:port".into());
        }
        for cp in &self.contact_points {
            match cp.rsplit_once(':') {
                Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {}
                _ => {
                    return bad(format!(
                        "cassandra.contact-points entry {cp:?} is not host:port"
                    ));
                }
            }
        }
        let ks = &self.keyspace;
        if ks.is_empty()
            || ks.len() > 48
            || !ks.starts_with(|c: char| c.is_ascii_alphabetic())
            || !ks.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return bad(format!(
                "cassandra.keyspace {ks:?} must be 1-48 letters, digits or '_', starting with a letter"
            ));
        }
        if self.replication_factor == 0 {
            return bad("cassandra.replication-factor must be at least 1".into());
        }
        if self.datacenters.values().any(|&rf| rf == 0) {
            return bad("cassandra.datacenters replication factors must be at least 1".into());
        }
        if self.username.is_some() != self.password.is_some() {
            return bad("cassandra.username and cassandra.password go together".into());
        }
        let tls = &self.tls;
        if tls.cert_file.is_some() != tls.key_file.is_some() {
            return bad("cassandra.tls.cert-file and cassandra.tls.key-file go together".into());
        }
        if !tls.enabled
            && (tls.ca_file.is_some() || tls.cert_file.is_some() || tls.key_file.is_some())
        {
            return bad(
                "cassandra.tls files are set but cassandra.tls.enabled is false; set it to true"
                    .into(),
            );
        }
        if self.request_timeout_ms == 0 || self.connect_timeout_ms == 0 {
            return bad("cassandra timeouts must be positive".into());
        }
        Ok(())
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    /// The replication clause of `CREATE KEYSPACE`.
    pub fn replication_cql(&self) -> String {
        if self.datacenters.is_empty() {
            format!(
                "{{'class': 'SimpleStrategy', 'replication_factor': {}}}",
                self.replication_factor
            )
        } else {
            let dcs: Vec<String> = self
                .datacenters
                .iter()
                .map(|(dc, rf)| format!("'{}': {rf}", dc.replace('\'', "''")))
                .collect();
            format!("{{'class': 'NetworkTopologyStrategy', {}}}", dcs.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_and_replication() {
        let o = Options::default();
        o.validate().unwrap();
        assert_eq!(
            o.replication_cql(),
            "{'class': 'SimpleStrategy', 'replication_factor': 1}"
        );
        let mut o = Options::default();
        o.datacenters.insert("dc1".into(), 3);
        o.datacenters.insert("dc2".into(), 2);
        assert_eq!(
            o.replication_cql(),
            "{'class': 'NetworkTopologyStrategy', 'dc1': 3, 'dc2': 2}"
        );
        for bad in ["", "1abc", "a-b", "drop table"] {
            let o = Options {
                keyspace: bad.into(),
                ..Options::default()
            };
            assert!(o.validate().is_err(), "{bad:?} accepted");
        }
        let o = Options {
            username: Some("u".into()),
            ..Options::default()
        };
        assert!(o.validate().unwrap_err().to_string().contains("password"));
        let o = Options {
            contact_points: vec!["nohost".into()],
            ..Options::default()
        };
        assert!(o.validate().is_err());
        let mut o = Options::default();
        o.tls.ca_file = Some("/ca.pem".into());
        assert!(
            o.validate()
                .unwrap_err()
                .to_string()
                .contains("tls.enabled")
        );
        o.tls.enabled = true;
        o.validate().unwrap();
        o.tls.cert_file = Some("/c.pem".into());
        assert!(o.validate().unwrap_err().to_string().contains("key-file"));
    }
}
