//! Authentication of callers and per-method access rules at the gateway
//! (`docs/security.md`).
//!
//! Why here: the gateway is the only door clients reach, and refusing at the door means a
//! refused call costs no body read, no routing and no processor work — nothing of it reaches
//! a processor, a user function or Kafka. The check runs on the request head alone, before
//! the body is read, on every path to a user method (gRPC, gRPC-Web, HTTP/JSON, unary and
//! streamed) and on reflection; `grpc.health.v1.Health` and `GET /` stay open (probes carry no
//! tokens).
//!
//! * [`jwt`] — a token taken apart and checked (signature with `ring`, `iss`, `aud`, `exp`,
//!   `nbf`); [`jwks`] — the keys; [`keys`] — where they come from (file or URL) and keeping
//!   them current; [`fetch`] — the JWKS URL's HTTP(S) GET; [`rules`] — which access a method
//!   needs.
//! * [`Auth::check`] — the one decision per call: `Ok(Principal)` or
//!   [`Error::Unauthenticated`] / [`Error::PermissionDenied`].
//! * [`Principal::metadata`] — the verified claims as metadata entries for the user function
//!   (`statehouse-jwt-*`). Client headers with that prefix are always dropped
//!   ([`crate::metadata`]), so the entries can only come from a verified token.
//!
//! The token itself is never logged: refusals log their [`Refusal`] label only.

mod fetch;
pub(crate) mod jwks;
pub(crate) mod jwt;
mod keys;
mod rules;

use std::time::{SystemTime, UNIX_EPOCH};

use http::HeaderMap;
use serde_json::{Map, Value};
use statehouse_runtime::config::{Access, AuthOptions};
use statehouse_schemas::cloudstate::{MetadataEntry, metadata_entry};
use tokio_util::sync::CancellationToken;

use crate::Error;
pub use jwt::Refusal;
pub(crate) use keys::Keys;

pub use statehouse_core::metadata::{
    JWT_CLAIM_PREFIX as CLAIM_PREFIX, JWT_ISSUER as ISSUER, JWT_PREFIX as METADATA_PREFIX,
    JWT_SUBJECT as SUBJECT,
};
/// Longest claim value passed as metadata, bytes (longer ones are left out).
const MAX_CLAIM_VALUE: usize = 4096;

/// Who is calling, as the gateway established it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Principal {
    /// The verified claims; `None` for an anonymous caller (or with auth off).
    claims: Option<Map<String, Value>>,
    /// Drop the client's `authorization` header from the metadata.
    pub(crate) drop_authorization: bool,
}

impl Principal {
    /// The metadata entries for the user function: `statehouse-jwt-subject`,
    /// `statehouse-jwt-issuer`, and `statehouse-jwt-claim-<name>` for every top-level claim
    /// whose value is a string, number or boolean (its text) or an array of those (joined with
    /// spaces). Names are lowercased; claims whose names are not `[a-z0-9_.-]` after that are
    /// left out (metadata keys are header names).
    pub(crate) fn metadata(&self) -> Vec<MetadataEntry> {
        let Some(claims) = &self.claims else {
            return Vec::new();
        };
        let entry = |key: String, value: String| MetadataEntry {
            key,
            value: Some(metadata_entry::Value::StringValue(value)),
        };
        let mut entries = Vec::with_capacity(claims.len() + 2);
        if let Some(sub) = claims.get("sub").and_then(Value::as_str) {
            entries.push(entry(SUBJECT.into(), sub.into()));
        }
        if let Some(iss) = claims.get("iss").and_then(Value::as_str) {
            entries.push(entry(ISSUER.into(), iss.into()));
        }
        for (name, value) in claims {
            let name = name.to_ascii_lowercase();
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
            {
                continue;
            }
            let text = match value {
                Value::Array(items) => {
                    let items: Option<Vec<String>> = items.iter().map(scalar).collect();
                    items.map(|items| items.join(" "))
                }
                other => scalar(other),
            };
            if let Some(text) = text.filter(|t| t.len() <= MAX_CLAIM_VALUE) {
                entries.push(entry(format!("{CLAIM_PREFIX}{name}"), text));
            }
        }
        entries
    }
}

fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The gateway's authentication: keys, claim checks and access rules.
pub(crate) struct Auth {
    keys: Keys,
    checks: jwt::Rules,
    rules: rules::Rules,
    max_token_bytes: usize,
    forward_authorization: bool,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth").finish_non_exhaustive()
    }
}

impl Auth {
    /// The authentication `options` describe (`None` when it is off); loads the keys.
    pub(crate) async fn start(
        options: &AuthOptions,
        shutdown: CancellationToken,
    ) -> Result<Option<Auth>, Error> {
        if !options.enabled {
            return Ok(None);
        }
        options
            .validate()
            .map_err(|e| Error::AuthSetup(e.to_string()))?;
        let keys = Keys::start(options, shutdown)
            .await
            .map_err(Error::AuthSetup)?;
        Ok(Some(Self::with_keys(options, keys)))
    }

    pub(crate) fn with_keys(options: &AuthOptions, keys: Keys) -> Auth {
        Auth {
            keys,
            checks: jwt::Rules {
                issuers: options.issuers.clone(),
                audiences: options.audiences.clone(),
                skew_s: options.clock_skew_s,
            },
            rules: rules::Rules::new(options.rules.clone(), options.default_access),
            max_token_bytes: options.max_token_bytes,
            forward_authorization: options.forward_authorization,
        }
    }

    /// Decides a call of `service`/`method` from its request headers.
    pub(crate) async fn check(
        &self,
        service: &str,
        method: &str,
        headers: &HeaderMap,
    ) -> Result<Principal, Error> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.check_at(service, method, headers, now).await
    }

    async fn check_at(
        &self,
        service: &str,
        method: &str,
        headers: &HeaderMap,
        now: u64,
    ) -> Result<Principal, Error> {
        let rule = self.rules.find(service, method);
        let access = self.rules.access(service, method);
        let denied = || Error::PermissionDenied {
            method: format!("{service}/{method}"),
        };
        if access == Access::Deny {
            return Err(denied());
        }
        let unauthenticated = |refusal: Refusal| {
            tracing::debug!(%service, %method, reason = refusal.label(), "call refused");
            Error::Unauthenticated(refusal)
        };
        let token = match bearer(headers) {
            Ok(token) => token,
            Err(refusal) => return Err(unauthenticated(refusal)),
        };
        let claims = match token {
            None if access == Access::Anonymous => None,
            None => return Err(unauthenticated(Refusal::Missing)),
            Some(token) => Some(self.verify(token, now).await.map_err(unauthenticated)?),
        };
        if access == Access::Claim {
            let holds = rule.zip(claims.as_ref()).is_some_and(|(rule, claims)| {
                rule.claim
                    .as_deref()
                    .is_some_and(|name| rules::claim_holds(claims, name, &rule.any_of))
            });
            if !holds {
                tracing::debug!(%service, %method, "call refused: claim rule not met");
                return Err(denied());
            }
        }
        Ok(Principal {
            claims,
            drop_authorization: !self.forward_authorization,
        })
    }

    async fn verify(&self, token: &str, now: u64) -> Result<Map<String, Value>, Refusal> {
        let parsed = jwt::parse(token, self.max_token_bytes)?;
        let mut keys = self.keys.current();
        if let Some(kid) = &parsed.kid
            && !keys.has_kid(kid)
        {
            keys = self.keys.refresh_for(kid).await;
        }
        jwt::verify(&parsed, &keys, &self.checks, now)
    }
}

/// The bearer token of `authorization` (`None`: no such header).
fn bearer(headers: &HeaderMap) -> Result<Option<&str>, Refusal> {
    let Some(value) = headers.get(http::header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value.to_str().map_err(|_| Refusal::Malformed)?;
    let (scheme, token) = value.split_once(' ').ok_or(Refusal::Malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(Refusal::Malformed);
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(Refusal::Malformed);
    }
    Ok(Some(token))
}

/// The `www-authenticate` value of a refusal (RFC 6750 §3): no error code when no token was
/// sent, `invalid_token` for a bad one, `insufficient_scope` for a valid one the rules refuse.
pub(crate) fn challenge(error: &Error) -> Option<&'static str> {
    match error {
        Error::Unauthenticated(Refusal::Missing) => Some("Bearer"),
        Error::Unauthenticated(_) => Some("Bearer error=\"invalid_token\""),
        Error::PermissionDenied { .. } => Some("Bearer error=\"insufficient_scope\""),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
