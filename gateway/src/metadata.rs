//! Request headers to Cloudstate metadata, reply metadata to response headers, and the
//! per-request values the gateway reads from headers (the idempotency key; deadlines and the
//! metadata limits are `crate::limits`).

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};
use statehouse_schemas::cloudstate::{Metadata, MetadataEntry, metadata_entry};

use crate::auth::Principal;

/// The header that carries a client's idempotency key.
pub(crate) const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// Headers that describe the connection, not the call (RFC 9110 §7.6.1), plus the ones the
/// transport recomputes.
const SKIPPED: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "te",
    "trailer",
    "content-length",
    "http2-settings",
];

/// Reply metadata that must not become response headers (the gateway sets them, or they would
/// break the framing).
const RESERVED_REPLY: &[&str] = &[
    "content-type",
    "content-length",
    "content-encoding",
    "grpc-status",
    "grpc-message",
    "grpc-status-details-bin",
    "grpc-encoding",
    "grpc-accept-encoding",
];

/// Request headers as string metadata entries (binary `-bin` headers as bytes entries), in
/// the order received, then the caller's verified claims (`docs/security.md`, "Claims as
/// metadata"). Left out: pseudo and hop-by-hop headers, every client header starting with
/// `statehouse-jwt-` (only the gateway sets those, from a verified token), and
/// `authorization` when authentication is on and `gateway.auth.forward-authorization` is off.
pub(crate) fn from_headers(headers: &HeaderMap, principal: &Principal) -> Metadata {
    let claims = principal.metadata();
    let mut entries = Vec::with_capacity(headers.len() + claims.len());
    for (name, value) in headers {
        let key = name.as_str();
        if SKIPPED.contains(&key)
            || key.starts_with(':')
            || statehouse_core::metadata::is_jwt_entry(key)
            || (principal.drop_authorization && name == http::header::AUTHORIZATION)
        {
            continue;
        }
        let value = if key.ends_with("-bin") {
            let raw = value.as_bytes();
            match STANDARD_NO_PAD.decode(
                raw.strip_suffix(b"==")
                    .or(raw.strip_suffix(b"="))
                    .unwrap_or(raw),
            ) {
                Ok(bytes) => metadata_entry::Value::BytesValue(bytes.into()),
                Err(_) => continue,
            }
        } else {
            match value.to_str() {
                Ok(s) => metadata_entry::Value::StringValue(s.to_string()),
                // Not visible ASCII: pass the raw bytes on.
                Err(_) => metadata_entry::Value::BytesValue(value.as_bytes().to_vec().into()),
            }
        };
        entries.push(MetadataEntry {
            key: key.to_string(),
            value: Some(value),
        });
    }
    entries.extend(claims);
    Metadata { entries }
}

/// Reply metadata as response headers: string entries as they are, bytes entries with a
/// `-bin` key base64-encoded; anything that is not a valid header is dropped.
pub(crate) fn to_headers(metadata: Option<&Metadata>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    let Some(metadata) = metadata else {
        return headers;
    };
    for entry in &metadata.entries {
        let Ok(name) = HeaderName::from_bytes(entry.key.as_bytes()) else {
            continue;
        };
        if RESERVED_REPLY.contains(&name.as_str()) || SKIPPED.contains(&name.as_str()) {
            continue;
        }
        let value = match &entry.value {
            Some(metadata_entry::Value::StringValue(s)) => HeaderValue::from_str(s).ok(),
            Some(metadata_entry::Value::BytesValue(b)) if name.as_str().ends_with("-bin") => {
                HeaderValue::from_str(&STANDARD.encode(b)).ok()
            }
            _ => None,
        };
        if let Some(value) = value {
            headers.append(name, value);
        }
    }
    headers
}

/// The client's idempotency key (`""` = none).
pub(crate) fn idempotency_key(headers: &HeaderMap) -> &str {
    headers
        .get(IDEMPOTENCY_KEY)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_become_metadata_and_back() {
        let mut headers = HeaderMap::new();
        headers.insert("x-user", HeaderValue::from_static("alice"));
        headers.insert("connection", HeaderValue::from_static("keep-alive"));
        headers.insert("te", HeaderValue::from_static("trailers"));
        headers.insert("content-length", HeaderValue::from_static("12"));
        headers.insert("trace-bin", HeaderValue::from_static("AQI="));
        headers.insert(IDEMPOTENCY_KEY, HeaderValue::from_static("k-1"));
        let metadata = from_headers(&headers, &Principal::default());
        let keys: Vec<_> = metadata.entries.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["x-user", "trace-bin", IDEMPOTENCY_KEY]);
        assert_eq!(
            metadata.entries[1].value,
            Some(metadata_entry::Value::BytesValue(vec![1, 2].into()))
        );
        assert_eq!(idempotency_key(&headers), "k-1");

        let reply = Metadata {
            entries: vec![
                MetadataEntry {
                    key: "x-reply".into(),
                    value: Some(metadata_entry::Value::StringValue("yes".into())),
                },
                MetadataEntry {
                    key: "grpc-status".into(),
                    value: Some(metadata_entry::Value::StringValue("0".into())),
                },
                MetadataEntry {
                    key: "bad key".into(),
                    value: Some(metadata_entry::Value::StringValue("x".into())),
                },
                MetadataEntry {
                    key: "blob".into(),
                    value: Some(metadata_entry::Value::BytesValue(vec![1].into())),
                },
            ],
        };
        let headers = to_headers(Some(&reply));
        assert_eq!(headers.len(), 1, "{headers:?}");
        assert_eq!(headers["x-reply"], "yes");
    }
}
