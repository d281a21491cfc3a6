//! Signed JSON Web Tokens and the JWKS that verifies them, for the tests of the gateway's
//! authentication (`docs/security.md`): keys generated per test with `ring`.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _,
};
use serde_json::{Value, json};

/// An Ed25519 key (`kid` "ed1") and a P-256 key (`kid` "ec1"), fresh for a test.
pub struct Keys {
    ed: Ed25519KeyPair,
    ec: EcdsaKeyPair,
}

impl Keys {
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        let rng = SystemRandom::new();
        let ed = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let ec = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        Self {
            ed: Ed25519KeyPair::from_pkcs8(ed.as_ref()).unwrap(),
            ec: EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, ec.as_ref(), &rng)
                .unwrap(),
        }
    }

    /// The Ed25519 public key (for the tests that misuse it as an HMAC secret).
    pub fn ed_public_key(&self) -> &[u8] {
        self.ed.public_key().as_ref()
    }

    /// The JWKS document publishing both public keys.
    pub fn jwks(&self) -> String {
        let point = self.ec.public_key().as_ref();
        json!({"keys": [
            {"kty": "OKP", "crv": "Ed25519", "kid": "ed1", "x": b64(self.ed.public_key().as_ref())},
            {"kty": "EC", "crv": "P-256", "kid": "ec1", "x": b64(&point[1..33]), "y": b64(&point[33..])},
        ]})
        .to_string()
    }

    /// A token signed with the Ed25519 key, naming `kid`.
    pub fn ed_token(&self, kid: &str, claims: &Value) -> String {
        mint(&json!({"alg": "EdDSA", "kid": kid}), claims, |m| {
            self.ed.sign(m).as_ref().to_vec()
        })
    }

    /// A token signed with the P-256 key (ES256).
    pub fn ec_token(&self, claims: &Value) -> String {
        mint(&json!({"alg": "ES256", "kid": "ec1"}), claims, |m| {
            self.ec
                .sign(&SystemRandom::new(), m)
                .unwrap()
                .as_ref()
                .to_vec()
        })
    }
}

/// Unpadded base64url, as in JWTs.
pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A compact JWT: `header.claims.signature`, signed by `sign` over the first two.
pub fn mint(header: &Value, claims: &Value, sign: impl Fn(&[u8]) -> Vec<u8>) -> String {
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let signature = sign(input.as_bytes());
    format!("{input}.{}", b64(&signature))
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}
