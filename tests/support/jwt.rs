//! Test tokens for the bearer authentication: minted with `jsonwebtoken` (the
//! server's own crate) and the test keys of `tests/auth/` (test-only keys,
//! see its README), and the tokens no library makes (`alg: none`) written by
//! hand in base64url.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use pointlock::server::auth::{BearerAuth, JwtVerifier};
use serde_json::{json, Value};

/// The HS256 servers' shared secret.
pub const SECRET: &[u8] = b"pointlock test secret: never use it for a real server";
pub const RSA_PUBLIC: &str = include_str!("../auth/rsa-public.pem");
pub const RSA_PRIVATE: &str = include_str!("../auth/rsa-private.pem");
pub const RSA_OTHER_PRIVATE: &str = include_str!("../auth/rsa-other-private.pem");
pub const EC_PUBLIC: &str = include_str!("../auth/ec-public.pem");
pub const EC_PRIVATE: &str = include_str!("../auth/ec-private.pem");
pub const EC_OTHER_PRIVATE: &str = include_str!("../auth/ec-other-private.pem");

/// The three ways a server can be configured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// `--jwt-hs256-secret-file`
    Hs256,
    /// `--jwt-public-key-file` with an RSA key
    Rs256,
    /// `--jwt-public-key-file` with an EC P-256 key
    Es256,
}

impl Scheme {
    pub const ALL: [Scheme; 3] = [Scheme::Hs256, Scheme::Rs256, Scheme::Es256];

    /// The server's authentication for this scheme.
    pub fn auth(self) -> BearerAuth {
        let verifier = match self {
            Self::Hs256 => JwtVerifier::hs256(SECRET),
            Self::Rs256 => JwtVerifier::from_public_key_pem(RSA_PUBLIC.as_bytes()),
            Self::Es256 => JwtVerifier::from_public_key_pem(EC_PUBLIC.as_bytes()),
        };
        BearerAuth::new(verifier.expect("a test key"))
    }

    pub fn algorithm(self) -> Algorithm {
        match self {
            Self::Hs256 => Algorithm::HS256,
            Self::Rs256 => Algorithm::RS256,
            Self::Es256 => Algorithm::ES256,
        }
    }

    /// `claims` signed as this scheme's server expects.
    pub fn sign(self, claims: &Value) -> String {
        let key = match self {
            Self::Hs256 => EncodingKey::from_secret(SECRET),
            Self::Rs256 => EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap(),
            Self::Es256 => EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).unwrap(),
        };
        encode(self.algorithm(), claims, &key)
    }

    /// `claims` signed with this scheme's algorithm and another key.
    pub fn sign_with_another_key(self, claims: &Value) -> String {
        let key = match self {
            Self::Hs256 => {
                EncodingKey::from_secret(b"another secret, just as long as the test one")
            }
            Self::Rs256 => EncodingKey::from_rsa_pem(RSA_OTHER_PRIVATE.as_bytes()).unwrap(),
            Self::Es256 => EncodingKey::from_ec_pem(EC_OTHER_PRIVATE.as_bytes()).unwrap(),
        };
        encode(self.algorithm(), claims, &key)
    }

    /// `claims` in the algorithm confusion against this server: HS256 keyed
    /// with the server's public key file (which anyone may have) for RS256
    /// and ES256; for HS256, an RS256 token (a server that let the token's
    /// `alg` choose would look for a public key it does not have, or use the
    /// secret as one).
    pub fn sign_confused(self, claims: &Value) -> String {
        match self {
            Self::Hs256 => Self::Rs256.sign(claims),
            Self::Rs256 => encode(
                Algorithm::HS256,
                claims,
                &EncodingKey::from_secret(RSA_PUBLIC.as_bytes()),
            ),
            Self::Es256 => encode(
                Algorithm::HS256,
                claims,
                &EncodingKey::from_secret(EC_PUBLIC.as_bytes()),
            ),
        }
    }
}

fn encode(algorithm: Algorithm, claims: &Value, key: &EncodingKey) -> String {
    jsonwebtoken::encode(&Header::new(algorithm), claims, key).expect("a test token")
}

/// The current time in JWT seconds.
pub fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

/// Claims for `sub`, valid for an hour.
pub fn claims(sub: Value) -> Value {
    json!({ "sub": sub, "exp": now() + 3_600 })
}

/// Claims of an operator: no user, the admin scope.
pub fn admin_claims() -> Value {
    json!({ "sub": "back-office", "scope": "openid points:admin", "exp": now() + 3_600 })
}

/// `claims` as an unsigned token, `alg: none` (RFC 7519, section 6.1), by hand:
/// no good library makes one.
pub fn alg_none(claims: &Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    format!("{header}.{payload}.")
}

/// The `Authorization` value for `token`.
pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}
