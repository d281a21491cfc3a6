//! Names of the metadata entries Statehouse itself puts on commands (`docs/security.md`,
//! "Claims as metadata"): the gateway sets them from a verified JWT and drops client headers
//! with the prefix; the processor passes them to entities too, which otherwise get no request
//! metadata (`docs/protocol.md`, "Entity keys and routing").

/// Prefix of every entry derived from a verified token.
pub const JWT_PREFIX: &str = "statehouse-jwt-";
/// The token's `sub`.
pub const JWT_SUBJECT: &str = "statehouse-jwt-subject";
/// The token's `iss`.
pub const JWT_ISSUER: &str = "statehouse-jwt-issuer";
/// Prefix of one entry per claim: `statehouse-jwt-claim-<name>`.
pub const JWT_CLAIM_PREFIX: &str = "statehouse-jwt-claim-";

/// Whether a metadata key is one of the verified-claim entries.
pub fn is_jwt_entry(key: &str) -> bool {
    key.len() >= JWT_PREFIX.len() && key[..JWT_PREFIX.len()].eq_ignore_ascii_case(JWT_PREFIX)
}
