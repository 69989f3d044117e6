//! Users' JWTs: checked against the JWKS of the tenant the request names, and only that one.
//!
//! The algorithm must be an asymmetric one that matches the key (`RS*`, `PS*`, `ES*`,
//! `EdDSA`); `none` and HMAC are refused, so a public key can never be used as an HMAC secret.
//! The key is chosen by `kid` (a JWKS with a single key is used for tokens without one). `iss`
//! must equal the tenant's issuer, `aud` must contain its audience, and `exp`/`nbf` hold at
//! the caller's `now` within [`crate::LEEWAY_SECS`].

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;

use crate::{check_times, map_decode_error, signature_only, AuthError};

/// The claims hpcc uses from a user's token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserClaims {
    /// The user.
    pub sub: String,
    /// The issuer.
    pub iss: String,
    /// Expiry, Unix seconds.
    pub exp: u64,
}

#[derive(Deserialize)]
struct RawClaims {
    #[serde(default)]
    sub: String,
    #[serde(default)]
    iss: String,
    #[serde(default)]
    aud: Audience,
    exp: Option<u64>,
    nbf: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(untagged)]
enum Audience {
    #[default]
    None,
    One(String),
    Many(Vec<String>),
}

impl Audience {
    fn contains(&self, wanted: &str) -> bool {
        match self {
            Audience::None => false,
            Audience::One(one) => one == wanted,
            Audience::Many(many) => many.iter().any(|one| one == wanted),
        }
    }
}

fn asymmetric(algorithm: Algorithm) -> bool {
    !matches!(
        algorithm,
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
    )
}

/// Validates a user's `token` for the tenant whose IdP has `issuer`, `audience` and `jwks`.
pub fn validate_user_token(
    token: &str,
    issuer: &str,
    audience: &str,
    jwks: &JwkSet,
    now: u64,
) -> Result<UserClaims, AuthError> {
    let header = jsonwebtoken::decode_header(token)
        .map_err(|error| AuthError::Malformed(format!("{:?}", error.kind())))?;
    if !asymmetric(header.alg) {
        return Err(AuthError::Algorithm(format!("{:?}", header.alg)));
    }
    let jwk = match &header.kid {
        Some(kid) => jwks
            .find(kid)
            .ok_or_else(|| AuthError::UnknownKey(kid.clone()))?,
        None if jwks.keys.len() == 1 => &jwks.keys[0],
        None => return Err(AuthError::UnknownKey(String::new())),
    };
    let key = DecodingKey::from_jwk(jwk).map_err(|error| AuthError::Key(format!("{error}")))?;
    let data = jsonwebtoken::decode::<RawClaims>(token, &key, &signature_only(header.alg))
        .map_err(|error| map_decode_error(&error))?;
    let claims = data.claims;
    if claims.iss != issuer {
        return Err(AuthError::Issuer {
            found: claims.iss,
            expected: issuer.to_owned(),
        });
    }
    if !claims.aud.contains(audience) {
        return Err(AuthError::Audience(audience.to_owned()));
    }
    let exp = claims
        .exp
        .ok_or_else(|| AuthError::Malformed("no exp claim".into()))?;
    check_times(exp, claims.nbf, now)?;
    Ok(UserClaims {
        sub: claims.sub,
        iss: claims.iss,
        exp,
    })
}

/// Test IdP keys: an Ed25519 key pair as a JWKS entry, and token minting. Public so that the
/// test harnesses of other crates (the scheduler's, the end-to-end tests) mint real tokens
/// with it; nothing in production calls it.
pub mod testing {
    use base64::Engine;
    use jsonwebtoken::jwk::JwkSet;
    use jsonwebtoken::{Algorithm, EncodingKey, Header};

    use crate::AuthError;

    /// An IdP signing key with a `kid`.
    pub struct IdpKey {
        kid: String,
        pkcs8: Vec<u8>,
        public: Vec<u8>,
    }

    impl IdpKey {
        /// A new random key named `kid`.
        pub fn generate(kid: &str) -> Result<IdpKey, AuthError> {
            use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
            let rng = aws_lc_rs::rand::SystemRandom::new();
            let document = Ed25519KeyPair::generate_pkcs8(&rng)
                .map_err(|_| AuthError::Key("cannot generate a key".into()))?;
            let pair = Ed25519KeyPair::from_pkcs8(document.as_ref())
                .map_err(|_| AuthError::Key("cannot read the key".into()))?;
            Ok(IdpKey {
                kid: kid.to_owned(),
                pkcs8: document.as_ref().to_vec(),
                public: pair.public_key().as_ref().to_vec(),
            })
        }

        /// The JWKS document (JSON) publishing this key.
        pub fn jwks_json(&self) -> String {
            let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&self.public);
            format!(
                r#"{{"keys":[{{"kty":"OKP","crv":"Ed25519","alg":"EdDSA","use":"sig","kid":"{}","x":"{x}"}}]}}"#,
                self.kid
            )
        }

        /// The JWKS, parsed.
        pub fn jwks(&self) -> Result<JwkSet, AuthError> {
            serde_json::from_str(&self.jwks_json())
                .map_err(|error| AuthError::Key(error.to_string()))
        }

        /// A token with these claims (a JSON object), signed with this key.
        pub fn mint(&self, claims: &serde_json::Value) -> Result<String, AuthError> {
            let mut header = Header::new(Algorithm::EdDSA);
            header.kid = Some(self.kid.clone());
            jsonwebtoken::encode(&header, claims, &EncodingKey::from_ed_der(&self.pkcs8))
                .map_err(|error| AuthError::Key(error.to_string()))
        }
    }
}

/// The largest token [`unverified_expiry`] reads.
const MAX_UNVERIFIED_BYTES: usize = 64 << 10;

/// The `exp` claim of a JWT, read WITHOUT verifying anything: only for a client to know when
/// to stop using a token its IdP gave without `expires_in` (the scheduler verifies it).
/// `None` for anything that is not a JWT with a numeric `exp`.
pub fn unverified_expiry(token: &str) -> Option<u64> {
    #[derive(Deserialize)]
    struct Expiry {
        exp: u64,
    }
    if token.len() > MAX_UNVERIFIED_BYTES {
        return None;
    }
    jsonwebtoken::dangerous::insecure_decode_claims::<Expiry>(token)
        .ok()
        .map(|claims| claims.exp)
}

#[cfg(test)]
mod tests {
    use super::testing::IdpKey;
    use super::*;
    use base64::Engine;

    fn claims(iss: &str, aud: serde_json::Value, exp: u64) -> serde_json::Value {
        serde_json::json!({"sub": "alice", "iss": iss, "aud": aud, "exp": exp, "nbf": 900})
    }

    #[test]
    fn valid_tokens_pass_and_every_claim_is_checked() {
        let idp = IdpKey::generate("k1").expect("key");
        let jwks = idp.jwks().expect("jwks");
        let good = idp
            .mint(&claims(
                "https://idp-a",
                serde_json::json!(["hpcc", "x"]),
                2_000,
            ))
            .expect("token");
        let checked =
            validate_user_token(&good, "https://idp-a", "hpcc", &jwks, 1_000).expect("valid");
        assert_eq!(checked.sub, "alice");
        let cases = [
            (
                claims("https://idp-b", serde_json::json!("hpcc"), 2_000),
                "issuer",
            ),
            (
                claims("https://idp-a", serde_json::json!("other"), 2_000),
                "audience",
            ),
            (
                claims("https://idp-a", serde_json::json!("hpcc"), 900),
                "expired",
            ),
        ];
        for (claims, what) in cases {
            let token = idp.mint(&claims).expect("token");
            let error =
                validate_user_token(&token, "https://idp-a", "hpcc", &jwks, 1_000).expect_err(what);
            assert!(error.to_string().contains(what), "{what}: {error}");
        }
        // Not yet valid.
        let early = idp
            .mint(&serde_json::json!({"sub": "a", "iss": "https://idp-a", "aud": "hpcc", "exp": 9_000, "nbf": 5_000}))
            .expect("token");
        assert!(matches!(
            validate_user_token(&early, "https://idp-a", "hpcc", &jwks, 1_000),
            Err(AuthError::NotYetValid(_))
        ));
    }

    #[test]
    fn another_tenants_keys_tampering_and_hmac_are_refused() {
        let idp_a = IdpKey::generate("k1").expect("key");
        let idp_b = IdpKey::generate("k1").expect("key");
        let token_b = idp_b
            .mint(&claims("https://idp-a", serde_json::json!("hpcc"), 2_000))
            .expect("token");
        // Same kid, same claims, but B's key: A's JWKS refuses it.
        assert_eq!(
            validate_user_token(
                &token_b,
                "https://idp-a",
                "hpcc",
                &idp_a.jwks().expect("jwks"),
                1_000
            ),
            Err(AuthError::Signature)
        );
        let other_kid = IdpKey::generate("k2").expect("key");
        let token = other_kid
            .mint(&claims("https://idp-a", serde_json::json!("hpcc"), 2_000))
            .expect("token");
        assert!(matches!(
            validate_user_token(
                &token,
                "https://idp-a",
                "hpcc",
                &idp_a.jwks().expect("jwks"),
                1_000
            ),
            Err(AuthError::UnknownKey(_))
        ));
        // An HS256 token (the "public key as HMAC secret" attack) is refused outright.
        let hmac = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::HS256),
            &claims("https://idp-a", serde_json::json!("hpcc"), 2_000),
            &jsonwebtoken::EncodingKey::from_secret(b"secret").expect("key"),
        )
        .expect("token");
        assert!(matches!(
            validate_user_token(
                &hmac,
                "https://idp-a",
                "hpcc",
                &idp_a.jwks().expect("jwks"),
                1_000
            ),
            Err(AuthError::Algorithm(_))
        ));
        // A payload swapped under a valid signature.
        let good = idp_a
            .mint(&claims("https://idp-a", serde_json::json!("hpcc"), 2_000))
            .expect("token");
        let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
        parts[1] = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(
            serde_json::to_vec(&serde_json::json!({"sub": "mallory", "iss": "https://idp-a", "aud": "hpcc", "exp": 2_000})).expect("json"),
        );
        assert_eq!(
            validate_user_token(
                &parts.join("."),
                "https://idp-a",
                "hpcc",
                &idp_a.jwks().expect("jwks"),
                1_000
            ),
            Err(AuthError::Signature)
        );
    }
}
