//! JSON Web Key Sets (RFC 7517) as public keys `ring` verifies with.
//!
//! Only signature keys of the three accepted algorithms are kept: RSA (`RS256`), EC P-256
//! (`ES256`) and OKP Ed25519 (`EdDSA`). A key's algorithm is fixed by its type and curve (and
//! its `alg`, if it names one); a token is checked only against keys of the algorithm its header
//! names, so an RSA key can never be used as an HMAC secret or for another algorithm. Symmetric
//! (`oct`) keys, encryption keys and other algorithms are skipped, never errors: a shared JWKS
//! may hold keys for other consumers.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use serde::Deserialize;

/// The signature algorithms accepted (`alg` of a JWS header). HMAC (`HS*`) and `none` are not
/// among them, on purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Alg {
    /// RSASSA-PKCS1-v1_5 with SHA-256, keys of 2048 to 8192 bits.
    Rs256,
    /// ECDSA on P-256 with SHA-256, the signature as `r || s`.
    Es256,
    /// Ed25519.
    EdDsa,
}

impl Alg {
    /// The algorithm named `name` in a JWS header or a JWK, if accepted.
    pub(crate) fn parse(name: &str) -> Option<Alg> {
        match name {
            "RS256" => Some(Alg::Rs256),
            "ES256" => Some(Alg::Es256),
            "EdDSA" => Some(Alg::EdDsa),
            _ => None,
        }
    }
}

/// One verification key.
#[derive(Clone)]
pub(crate) struct Key {
    pub(crate) kid: Option<String>,
    pub(crate) alg: Alg,
    /// RSA: `n` and `e` (big-endian); EC: the uncompressed point `0x04 || x || y`;
    /// Ed25519: the 32-byte public key.
    material: Material,
}

#[derive(Clone)]
enum Material {
    Rsa { n: Vec<u8>, e: Vec<u8> },
    Point(Vec<u8>),
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

impl Key {
    /// Whether `signature` is this key's signature of `message`.
    pub(crate) fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        match (&self.material, self.alg) {
            (Material::Rsa { n, e }, Alg::Rs256) => RsaPublicKeyComponents { n, e }
                .verify(&signature::RSA_PKCS1_2048_8192_SHA256, message, signature)
                .is_ok(),
            (Material::Point(point), Alg::Es256) => {
                UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                    .verify(message, signature)
                    .is_ok()
            }
            (Material::Point(point), Alg::EdDsa) => {
                UnparsedPublicKey::new(&signature::ED25519, point)
                    .verify(message, signature)
                    .is_ok()
            }
            _ => false,
        }
    }
}

/// A parsed key set.
#[derive(Debug, Clone, Default)]
pub(crate) struct KeySet {
    keys: Vec<Key>,
}

#[derive(Deserialize)]
struct Document {
    keys: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
struct Jwk {
    kty: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    alg: Option<String>,
    #[serde(default, rename = "use")]
    use_: Option<String>,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
}

impl KeySet {
    /// Parses a JWKS document (`{"keys": [...]}`). Fails only when the document itself is not
    /// a key set; unusable keys are skipped (their count is in [`KeySet::skipped`]'s result).
    pub(crate) fn parse(json: &[u8]) -> Result<(KeySet, usize), String> {
        let document: Document = serde_json::from_slice(json)
            .map_err(|e| format!("not a JWKS document ({{\"keys\": [...]}}): {e}"))?;
        let total = document.keys.len();
        let keys: Vec<Key> = document
            .keys
            .into_iter()
            .filter_map(|value| serde_json::from_value::<Jwk>(value).ok())
            .filter_map(key)
            .collect();
        let skipped = total - keys.len();
        Ok((KeySet { keys }, skipped))
    }

    /// How many keys it holds.
    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether a key has id `kid`.
    pub(crate) fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }

    /// The keys a token signed with `alg` (and naming `kid`, if it names one) may be checked
    /// against.
    pub(crate) fn candidates<'a>(
        &'a self,
        kid: Option<&'a str>,
        alg: Alg,
    ) -> impl Iterator<Item = &'a Key> + 'a {
        self.keys
            .iter()
            .filter(move |k| k.alg == alg && kid.is_none_or(|kid| k.kid.as_deref() == Some(kid)))
    }
}

fn b64(field: &Option<String>) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(field.as_deref()?).ok()
}

/// The key a JWK describes, if it is a signature key of an accepted algorithm.
fn key(jwk: Jwk) -> Option<Key> {
    if jwk.use_.as_deref().is_some_and(|u| u != "sig") {
        return None;
    }
    let (alg, material) = match (jwk.kty.as_str(), jwk.crv.as_deref()) {
        ("RSA", _) => {
            let mut n = b64(&jwk.n)?;
            let e = b64(&jwk.e)?;
            while n.first() == Some(&0) {
                n.remove(0);
            }
            // Below 2048 bits ring refuses to verify anyway; refuse the key up front.
            if n.len() < 256 || e.is_empty() {
                return None;
            }
            (Alg::Rs256, Material::Rsa { n, e })
        }
        ("EC", Some("P-256")) => {
            let (x, y) = (b64(&jwk.x)?, b64(&jwk.y)?);
            if x.len() != 32 || y.len() != 32 {
                return None;
            }
            let mut point = Vec::with_capacity(65);
            point.push(0x04);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            (Alg::Es256, Material::Point(point))
        }
        ("OKP", Some("Ed25519")) => {
            let x = b64(&jwk.x)?;
            if x.len() != 32 {
                return None;
            }
            (Alg::EdDsa, Material::Point(x))
        }
        // `oct` (HMAC secrets), other curves, other key types.
        _ => return None,
    };
    // A key that names its algorithm is used for that one only.
    if jwk
        .alg
        .as_deref()
        .is_some_and(|a| Alg::parse(a) != Some(alg))
    {
        return None;
    }
    Some(Key {
        kid: jwk.kid,
        alg,
        material,
    })
}
