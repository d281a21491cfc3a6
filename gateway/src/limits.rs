//! The limits of one client call, checked at the front door before anything reaches a
//! processor (`docs/security.md`, "Limits"). Each is a `[gateway]` key; a call over one gets
//! an error that names the key, and nothing of it runs:
//!
//! | key                      | default   | over it                                           |
//! |--------------------------|-----------|---------------------------------------------------|
//! | `max-request-bytes`      | 1 MiB     | RESOURCE_EXHAUSTED / 413 (read with a bound)      |
//! | `max-response-bytes`     | 4 MiB     | RESOURCE_EXHAUSTED / 500 (the command did run)    |
//! | `max-entity-id-bytes`    | 1024      | INVALID_ARGUMENT / 400                            |
//! | `max-metadata-entries`   | 64        | INVALID_ARGUMENT / 400                            |
//! | `max-metadata-bytes`     | 16 KiB    | INVALID_ARGUMENT / 400                            |
//! | `max-timeout-ms`         | 5 min     | the deadline is cut to it (no error)              |
//! | `max-concurrent-streams` | 256       | HTTP/2 refuses the stream (`REFUSED_STREAM`)      |
//!
//! The request limit comes first because the body is read with it as a bound (a client cannot
//! make the gateway buffer more). The entity id is bounded because it is a Kafka key and a
//! Cassandra partition key, stored with every event. Metadata goes to the user function with
//! every command, so its count and size are bounded as well (HTTP/2's header list limit bounds
//! the bytes a connection may send, not what a call forwards). The record a command writes is
//! bounded by `kafka.max-record-bytes`, checked by the processor before its transaction.

use std::time::Duration;

use http::HeaderMap;
use statehouse_runtime::config::GatewayOptions;
use statehouse_schemas::cloudstate::{Metadata, metadata_entry};
use tokio::time::Instant;

use crate::auth::Principal;
use crate::{Error, grpc, metadata};

/// The per-call limits of a gateway, from `[gateway]`.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    pub(crate) max_response_bytes: usize,
    pub(crate) max_entity_id_bytes: usize,
    pub(crate) max_metadata_entries: usize,
    pub(crate) max_metadata_bytes: usize,
    pub(crate) default_timeout: Duration,
    pub(crate) max_timeout: Duration,
}

impl Limits {
    pub(crate) fn new(options: &GatewayOptions) -> Self {
        Self {
            max_response_bytes: options.max_response_bytes,
            max_entity_id_bytes: options.max_entity_id_bytes,
            max_metadata_entries: options.max_metadata_entries,
            max_metadata_bytes: options.max_metadata_bytes,
            default_timeout: Duration::from_millis(options.default_timeout_ms),
            max_timeout: Duration::from_millis(options.max_timeout_ms),
        }
    }

    /// The request's headers (and the caller's verified claims) as the command's metadata,
    /// within the metadata limits.
    pub(crate) fn metadata(
        &self,
        headers: &HeaderMap,
        principal: &Principal,
    ) -> Result<Metadata, Error> {
        let metadata = metadata::from_headers(headers, principal);
        let entries = metadata.entries.len();
        if entries > self.max_metadata_entries {
            return Err(Error::OverLimit {
                what: "metadata entries",
                key: "gateway.max-metadata-entries",
                size: entries,
                limit: self.max_metadata_entries,
            });
        }
        let bytes: usize = metadata
            .entries
            .iter()
            .map(|e| {
                e.key.len()
                    + match &e.value {
                        Some(metadata_entry::Value::StringValue(s)) => s.len(),
                        Some(metadata_entry::Value::BytesValue(b)) => b.len(),
                        None => 0,
                    }
            })
            .sum();
        if bytes > self.max_metadata_bytes {
            return Err(Error::OverLimit {
                what: "metadata bytes",
                key: "gateway.max-metadata-bytes",
                size: bytes,
                limit: self.max_metadata_bytes,
            });
        }
        Ok(metadata)
    }

    /// Refuses an entity id above `gateway.max-entity-id-bytes`.
    pub(crate) fn entity_id(&self, entity_id: &str) -> Result<(), Error> {
        if entity_id.len() > self.max_entity_id_bytes {
            return Err(Error::OverLimit {
                what: "entity id bytes",
                key: "gateway.max-entity-id-bytes",
                size: entity_id.len(),
                limit: self.max_entity_id_bytes,
            });
        }
        Ok(())
    }

    /// Refuses a reply message above `gateway.max-response-bytes`.
    pub(crate) fn response(&self, bytes: usize) -> Result<(), Error> {
        if bytes > self.max_response_bytes {
            return Err(Error::ResponseTooLarge {
                size: bytes,
                limit: self.max_response_bytes,
            });
        }
        Ok(())
    }

    /// The client's `grpc-timeout`, cut to `gateway.max-timeout-ms`.
    pub(crate) fn client_timeout(&self, headers: &HeaderMap) -> Option<Duration> {
        grpc::timeout(headers).map(|t| t.min(self.max_timeout))
    }

    /// The deadline of a call: the client's (at most `max-timeout-ms`), else the default.
    pub(crate) fn deadline(&self, headers: &HeaderMap) -> Instant {
        Instant::now() + self.client_timeout(headers).unwrap_or(self.default_timeout)
    }

    /// The deadline the client set (cut to `max-timeout-ms`), if any.
    pub(crate) fn client_deadline(&self, headers: &HeaderMap) -> Option<Instant> {
        self.client_timeout(headers)
            .map(|timeout| Instant::now() + timeout)
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn limits() -> Limits {
        Limits::new(&GatewayOptions {
            max_metadata_entries: 3,
            max_metadata_bytes: 40,
            max_entity_id_bytes: 8,
            max_response_bytes: 100,
            max_timeout_ms: 2_000,
            ..GatewayOptions::default()
        })
    }

    #[test]
    fn each_limit_refuses_what_is_over_it_and_names_its_key() {
        let l = limits();
        l.entity_id("12345678").unwrap();
        let err = l.entity_id("123456789").unwrap_err();
        assert!(
            err.to_string().contains("gateway.max-entity-id-bytes")
                && err.to_string().contains('9'),
            "{err}"
        );
        assert_eq!(
            tonic::Status::from(err).code(),
            tonic::Code::InvalidArgument
        );

        l.response(100).unwrap();
        let err = l.response(101).unwrap_err();
        assert!(
            err.to_string().contains("gateway.max-response-bytes"),
            "{err}"
        );

        let mut headers = HeaderMap::new();
        for (k, v) in [("a", "1"), ("b", "2"), ("c", "3")] {
            headers.insert(k, HeaderValue::from_static(v));
        }
        let anonymous = Principal::default();
        assert_eq!(l.metadata(&headers, &anonymous).unwrap().entries.len(), 3);
        headers.insert("d", HeaderValue::from_static("4"));
        let err = l.metadata(&headers, &anonymous).unwrap_err();
        assert!(
            err.to_string().contains("gateway.max-metadata-entries"),
            "{err}"
        );
        assert_eq!(err.http_status(), http::StatusCode::BAD_REQUEST);

        let mut headers = HeaderMap::new();
        headers.insert("x-big", HeaderValue::from_str(&"v".repeat(40)).unwrap());
        let err = l.metadata(&headers, &anonymous).unwrap_err();
        assert!(
            err.to_string().contains("gateway.max-metadata-bytes"),
            "{err}"
        );
    }

    #[test]
    fn client_timeouts_are_cut_to_the_maximum() {
        let l = limits();
        let mut headers = HeaderMap::new();
        assert_eq!(l.client_timeout(&headers), None);
        headers.insert("grpc-timeout", HeaderValue::from_static("1H"));
        assert_eq!(l.client_timeout(&headers), Some(Duration::from_secs(2)));
        headers.insert("grpc-timeout", HeaderValue::from_static("500m"));
        assert_eq!(l.client_timeout(&headers), Some(Duration::from_millis(500)));
    }
}
