//! [`JwtVerifier`]: checks a bearer token's signature and registered claims
//! with the one algorithm and key of the configuration, and remembers the
//! tokens that passed.

use std::fmt;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use super::cache::{Entry, TokenCache};
use super::claims::Claims;
use super::policy::Principal;
use crate::error::TokenRejection;

/// The clock leeway, in seconds, of `exp` and `nbf`: a token is accepted up to
/// this long after its `exp` and from this long before its `nbf`. Small next to
/// any token's lifetime, large enough for clocks kept by NTP.
pub const LEEWAY_SECS: u64 = 30;

/// The shortest HS256 secret accepted: 32 bytes, the hash's size (RFC 7518,
/// section 3.2).
pub const HS256_SECRET_BYTES_MIN: usize = 32;

/// The default bound on verified tokens remembered ([`JwtVerifier::cache_max`]):
/// a token and its verdict take under 1 KiB (RS256; HS256 about half), so at
/// most ~16 MiB. With more clients than this reusing tokens at once, the cache
/// empties and refills, and the extra ones pay for their checks again.
pub const CACHE_MAX_DEFAULT: usize = 16_384;

/// Verifies bearer tokens with the algorithm and key of the configuration,
/// remembering the tokens that passed (see [`cache_max`](Self::cache_max)).
pub struct JwtVerifier {
    key: DecodingKey,
    validation: Validation,
    pub(super) cache: Option<TokenCache>,
}

impl fmt::Debug for JwtVerifier {
    /// The algorithm and the checked claims; never the key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("algorithm", &self.algorithm())
            .field("audience", &self.validation.aud)
            .field("issuer", &self.validation.iss)
            .field("cached", &self.cached())
            .finish_non_exhaustive()
    }
}

impl JwtVerifier {
    /// HS256 with a shared `secret` of at least [`HS256_SECRET_BYTES_MIN`] bytes.
    pub fn hs256(secret: &[u8]) -> Result<Self, String> {
        if secret.len() < HS256_SECRET_BYTES_MIN {
            return Err(format!(
                "the HS256 secret has {} bytes; it needs at least {HS256_SECRET_BYTES_MIN} \
                 (for example: openssl rand -base64 48)",
                secret.len()
            ));
        }
        Self::checked(DecodingKey::from_secret(secret), Algorithm::HS256)
    }

    /// RS256 for an RSA public key, ES256 for an EC P-256 public key, in PEM
    /// (`-----BEGIN PUBLIC KEY-----`, or `RSA PUBLIC KEY`). Refuses private
    /// keys, other curves and other kinds of key.
    pub fn from_public_key_pem(pem: &[u8]) -> Result<Self, String> {
        if pem.windows(11).any(|w| w == b"PRIVATE KEY") {
            return Err(
                "this is a private key: give the server the public key only \
                 (openssl pkey -in private.pem -pubout)"
                    .into(),
            );
        }
        if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
            return Self::checked(key, Algorithm::RS256);
        }
        match DecodingKey::from_ec_pem(pem) {
            Ok(key) => Self::checked(key, Algorithm::ES256),
            Err(_) => Err("not an RSA or EC (P-256) public key in PEM".into()),
        }
    }

    /// The verifier of `key` for `algorithm`, once the key is known to make a
    /// verifier for it (an EC key of another curve than P-256, or an RSA key
    /// that does not parse, is refused here rather than at the first request).
    fn checked(key: DecodingKey, algorithm: Algorithm) -> Result<Self, String> {
        jsonwebtoken::crypto::verify("", b"", &key, algorithm)
            .map_err(|error| format!("the key cannot verify {algorithm:?} tokens: {error}"))?;
        let mut validation = Validation::new(algorithm);
        validation.leeway = LEEWAY_SECS;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        Ok(Self {
            key,
            validation,
            cache: Some(TokenCache::new(CACHE_MAX_DEFAULT)),
        })
    }

    /// Remember at most `tokens` verified tokens (default
    /// [`CACHE_MAX_DEFAULT`]; 0: none, every request pays for a signature
    /// check). A remembered token answers a later request with a lookup while
    /// it is within its `exp` and `nbf`; refused tokens are never remembered.
    pub fn cache_max(mut self, tokens: usize) -> Self {
        self.cache = (tokens > 0).then(|| TokenCache::new(tokens));
        self
    }

    /// Verified tokens remembered now.
    pub fn cached(&self) -> usize {
        self.cache.as_ref().map_or(0, TokenCache::len)
    }

    /// Also require this `aud` (a token without it, or for another, is refused).
    pub fn audience(mut self, audience: &str) -> Self {
        self.validation.set_audience(&[audience]);
        self.validation.required_spec_claims.insert("aud".into());
        self
    }

    /// Also require this `iss` (a token without it, or from another, is refused).
    pub fn issuer(mut self, issuer: &str) -> Self {
        self.validation.set_issuer(&[issuer]);
        self.validation.required_spec_claims.insert("iss".into());
        self
    }

    /// The one algorithm tokens must be signed with.
    pub fn algorithm(&self) -> Algorithm {
        self.validation.algorithms[0]
    }

    /// Who `token` speaks for, or why it is refused.
    pub fn verify(&self, token: &str) -> Result<Principal, TokenRejection> {
        let now = jsonwebtoken::get_current_timestamp();
        if let Some(principal) = self
            .cache
            .as_ref()
            .and_then(|cache| cache.get(token, now, LEEWAY_SECS))
        {
            return Ok(principal);
        }
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|error| rejection(error.kind()))?;
        let (principal, times) = data.claims.read()?;
        if let (Some(cache), Some((exp, nbf))) = (&self.cache, times) {
            cache.insert(
                token,
                Entry {
                    principal,
                    exp,
                    nbf,
                },
            );
        }
        Ok(principal)
    }
}

/// The rejection a `jsonwebtoken` error stands for.
fn rejection(kind: &ErrorKind) -> TokenRejection {
    match kind {
        ErrorKind::ExpiredSignature => TokenRejection::Expired,
        ErrorKind::ImmatureSignature => TokenRejection::NotYetValid,
        ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => TokenRejection::Algorithm,
        ErrorKind::InvalidSignature
        | ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidKeyFormat => TokenRejection::Signature,
        ErrorKind::MissingRequiredClaim(claim) if claim == "aud" || claim == "iss" => {
            TokenRejection::Audience
        }
        ErrorKind::MissingRequiredClaim(_)
        | ErrorKind::InvalidClaimFormat(_)
        | ErrorKind::InvalidSubject => TokenRejection::Claims,
        ErrorKind::InvalidAudience | ErrorKind::InvalidIssuer => TokenRejection::Audience,
        // Not three base64url parts, not JSON, an unknown `alg` (`none`).
        _ => TokenRejection::Malformed,
    }
}
