//! JSON Web Tokens (RFC 7519) in compact JWS form: parsed, their signature checked against a
//! [`KeySet`], their registered claims checked (`iss`, `aud`, `exp`, `nbf`).
//!
//! Order matters: the header is read only to pick the algorithm and key; nothing from the
//! payload is trusted before the signature is verified. `alg` must be one of the accepted
//! algorithms ([`Alg`]) and must match the key's type, so `alg=none`, HMAC with a public key as
//! the secret, and key confusion between RSA, EC and Ed25519 are all refused. Tokens with `crit`
//! header parameters are refused (none is understood).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};

use super::jwks::{Alg, KeySet};

/// Why a token was refused. The text goes to the client; it never includes the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No `authorization` header on a method that needs a caller.
    #[error("a bearer token is required")]
    Missing,
    /// Not `Bearer <token>`, not three base64url parts, or not JSON.
    #[error("the bearer token is malformed")]
    Malformed,
    /// Longer than `gateway.auth.max-token-bytes`.
    #[error("the bearer token is too large")]
    TooLarge,
    /// `alg` is not RS256, ES256 or EdDSA (e.g. `none`, `HS256`), or `crit` is set.
    #[error("the token's algorithm is not accepted")]
    Algorithm,
    /// No key of the set has the token's `kid` (and algorithm).
    #[error("the token's signing key is unknown")]
    UnknownKey,
    /// The signature does not verify.
    #[error("the token's signature is invalid")]
    Signature,
    /// `exp` is missing or passed (beyond the clock skew).
    #[error("the token has expired")]
    Expired,
    /// `nbf` is in the future (beyond the clock skew).
    #[error("the token is not valid yet")]
    NotYetValid,
    /// `iss` is missing or not an accepted issuer.
    #[error("the token's issuer is not accepted")]
    Issuer,
    /// `aud` holds no accepted audience.
    #[error("the token's audience is not accepted")]
    Audience,
}

impl Refusal {
    /// A short, fixed label (logs, metrics).
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Missing => "missing",
            Refusal::Malformed => "malformed",
            Refusal::TooLarge => "too_large",
            Refusal::Algorithm => "algorithm",
            Refusal::UnknownKey => "unknown_key",
            Refusal::Signature => "signature",
            Refusal::Expired => "expired",
            Refusal::NotYetValid => "not_yet_valid",
            Refusal::Issuer => "issuer",
            Refusal::Audience => "audience",
        }
    }
}

/// A token taken apart, its signature not checked yet.
#[derive(Debug)]
pub(crate) struct Parsed<'t> {
    pub(crate) alg: Alg,
    pub(crate) kid: Option<String>,
    signing_input: &'t str,
    signature: Vec<u8>,
    payload: Vec<u8>,
}

/// Takes a compact JWS apart.
pub(crate) fn parse(token: &str, max_bytes: usize) -> Result<Parsed<'_>, Refusal> {
    if token.len() > max_bytes {
        return Err(Refusal::TooLarge);
    }
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Refusal::Malformed);
    };
    let decode = |part: &str| URL_SAFE_NO_PAD.decode(part).map_err(|_| Refusal::Malformed);
    let header: Map<String, Value> =
        serde_json::from_slice(&decode(header)?).map_err(|_| Refusal::Malformed)?;
    let alg = header
        .get("alg")
        .and_then(Value::as_str)
        .ok_or(Refusal::Malformed)?;
    let alg = Alg::parse(alg).ok_or(Refusal::Algorithm)?;
    if header.contains_key("crit") {
        return Err(Refusal::Algorithm);
    }
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(kid)) => Some(kid.clone()),
        Some(_) => return Err(Refusal::Malformed),
    };
    let signature = decode(signature)?;
    if signature.is_empty() {
        return Err(Refusal::Signature);
    }
    let signing_input = token.rfind('.').map_or(token, |dot| &token[..dot]);
    Ok(Parsed {
        alg,
        kid,
        signing_input,
        signature,
        payload: decode(payload)?,
    })
}

/// What a token's claims must satisfy.
#[derive(Debug, Clone)]
pub(crate) struct Rules {
    pub(crate) issuers: Vec<String>,
    pub(crate) audiences: Vec<String>,
    pub(crate) skew_s: u64,
}

/// Checks a parsed token's signature against `keys` and its claims against `rules` at `now`
/// (seconds since the epoch); the verified claims.
pub(crate) fn verify(
    token: &Parsed<'_>,
    keys: &KeySet,
    rules: &Rules,
    now: u64,
) -> Result<Map<String, Value>, Refusal> {
    let mut candidates = keys.candidates(token.kid.as_deref(), token.alg).peekable();
    if candidates.peek().is_none() {
        return Err(Refusal::UnknownKey);
    }
    if !candidates.any(|key| key.verify(token.signing_input.as_bytes(), &token.signature)) {
        return Err(Refusal::Signature);
    }
    let claims: Map<String, Value> =
        serde_json::from_slice(&token.payload).map_err(|_| Refusal::Malformed)?;
    let time = |name: &str| match claims.get(name) {
        None => Ok(None),
        // NumericDate: seconds, maybe fractional.
        Some(Value::Number(n)) => n
            .as_f64()
            .filter(|t| t.is_finite())
            .map(|t| Some(t.max(0.0) as u64))
            .ok_or(Refusal::Malformed),
        Some(_) => Err(Refusal::Malformed),
    };
    match time("exp")? {
        Some(exp) if now <= exp.saturating_add(rules.skew_s) => {}
        _ => return Err(Refusal::Expired),
    }
    if let Some(nbf) = time("nbf")?
        && now.saturating_add(rules.skew_s) < nbf
    {
        return Err(Refusal::NotYetValid);
    }
    let issuer = claims.get("iss").and_then(Value::as_str);
    if !issuer.is_some_and(|iss| rules.issuers.iter().any(|i| i == iss)) {
        return Err(Refusal::Issuer);
    }
    let accepted = |aud: &Value| {
        aud.as_str()
            .is_some_and(|aud| rules.audiences.iter().any(|a| a == aud))
    };
    let audience_ok = match claims.get("aud") {
        Some(Value::Array(auds)) => auds.iter().any(accepted),
        Some(aud) => accepted(aud),
        None => false,
    };
    if !audience_ok {
        return Err(Refusal::Audience);
    }
    Ok(claims)
}
