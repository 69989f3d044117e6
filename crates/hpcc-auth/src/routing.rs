//! Routing tokens: what the scheduler hands a client so that one worker runs one tenant's
//! compiles with one image, for a minute.
//!
//! A routing token is a JWT signed with EdDSA (Ed25519) by the scheduler's routing key. Its
//! claims name the tenant, the image digest and the worker; a worker accepts it only if the
//! signature verifies with the scheduler's public key, it has not expired, and all three
//! match the worker itself and the request. Ed25519 rather than a shared secret: workers hold
//! only the public key, so a compromised worker cannot mint tokens for others.

use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use serde::{Deserialize, Serialize};

use crate::{check_times, map_decode_error, signature_only, AuthError};

/// The `iss` of routing tokens.
pub const ROUTING_ISSUER: &str = "hpcc-scheduler";

/// What a routing token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutingClaims {
    /// Always [`ROUTING_ISSUER`].
    pub iss: String,
    /// The tenant.
    pub tenant: String,
    /// The image digest.
    pub image: String,
    /// The worker id.
    pub worker: String,
    /// The user (`sub` of their JWT), for audit.
    pub sub: String,
    /// Issued at, Unix seconds.
    pub iat: u64,
    /// Expires at, Unix seconds.
    pub exp: u64,
    /// What the tenant's config says the worker must apply (absent in tokens of a scheduler
    /// older than this field: see [`TenantPolicy::namespace_for`]).
    #[serde(default)]
    pub policy: TenantPolicy,
}

/// A tenant's storage and admission policy, as the scheduler's config declares it, carried in
/// each routing token so that workers need no copy of the tenant config and always apply the
/// current one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantPolicy {
    /// The storage namespace of the tenant's cache objects: `tenant-<id>`, or `group-<name>`
    /// for a sharing group. Empty in old tokens.
    #[serde(default)]
    pub namespace: String,
    /// Paranoid mode: the tenant's clients keep no cache; only workers write one.
    #[serde(default)]
    pub paranoid: bool,
    /// Limits on each worker; `None` is no limit beyond the worker's own.
    #[serde(default)]
    pub max_jobs: Option<u32>,
    /// Bytes of sources held at once (the upload quota).
    #[serde(default)]
    pub max_source_bytes: Option<u64>,
    /// Bytes of the namespace in the worker's local cache.
    #[serde(default)]
    pub max_cache_bytes: Option<u64>,
    /// Bytes of kept (audited) sources.
    #[serde(default)]
    pub max_kept_source_bytes: Option<u64>,
    /// Bytes of session snapshots.
    #[serde(default)]
    pub max_snapshot_bytes: Option<u64>,
}

impl TenantPolicy {
    /// The namespace to use for `tenant`: the policy's, or the tenant's own when the token
    /// names none. Never another tenant's: a namespace is only ever shared because the
    /// scheduler's config put both tenants in one sharing group.
    pub fn namespace_for(&self, tenant: &str) -> String {
        if self.namespace.is_empty() {
            hpcc_core::config::tenant_namespace(tenant)
        } else {
            self.namespace.clone()
        }
    }
}

/// What a worker expects a token to be for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoutingScope<'a> {
    /// This worker's id.
    pub worker: &'a str,
    /// The request's tenant.
    pub tenant: &'a str,
    /// The request's image.
    pub image: &'a str,
}

/// The scheduler's signing key (Ed25519, PKCS#8).
pub struct RoutingKey {
    pkcs8: Vec<u8>,
    public: Vec<u8>,
}

impl std::fmt::Debug for RoutingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoutingKey")
            .field("public", &self.public_base64())
            .finish_non_exhaustive()
    }
}

const PEM_LABEL: &str = "PRIVATE KEY";

impl RoutingKey {
    /// A new random key.
    pub fn generate() -> Result<RoutingKey, AuthError> {
        use aws_lc_rs::signature::Ed25519KeyPair;
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let document = Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(|_| AuthError::Key("cannot generate an Ed25519 key".into()))?;
        RoutingKey::from_pkcs8(document.as_ref())
    }

    /// A key from PKCS#8 DER, v1 (what `openssl genpkey -algorithm ED25519` writes) or v2
    /// (with the public key, which must match). It is kept, and written, as v1: the form
    /// every tool reads (OpenSSL 3.0 cannot read Ed25519 v2 documents).
    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<RoutingKey, AuthError> {
        use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8)
            .map_err(|_| AuthError::Key("not an Ed25519 PKCS#8 key".into()))?;
        let v1 = pair
            .to_pkcs8v1()
            .map_err(|_| AuthError::Key("cannot encode the key as PKCS#8".into()))?;
        Ok(RoutingKey {
            pkcs8: v1.as_ref().to_vec(),
            public: pair.public_key().as_ref().to_vec(),
        })
    }

    /// A key from its PEM file text (`-----BEGIN PRIVATE KEY-----`).
    pub fn from_pem(text: &str) -> Result<RoutingKey, AuthError> {
        let parsed =
            pem::parse(text).map_err(|error| AuthError::Key(format!("not a PEM file: {error}")))?;
        if parsed.tag() != PEM_LABEL {
            return Err(AuthError::Key(format!(
                "a PEM {:?} block, not {PEM_LABEL:?}",
                parsed.tag()
            )));
        }
        RoutingKey::from_pkcs8(parsed.contents())
    }

    /// The key as PEM text (PKCS#8 v1), for the key file.
    pub fn to_pem(&self) -> String {
        pem::encode_config(
            &pem::Pem::new(PEM_LABEL, self.pkcs8.clone()),
            pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
        )
    }

    /// The public key, base64 (standard alphabet), as workers are configured with it.
    pub fn public_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(&self.public)
    }

    /// Signs `claims`.
    pub fn sign(&self, claims: &RoutingClaims) -> Result<String, AuthError> {
        let key = EncodingKey::from_ed_der(&self.pkcs8);
        jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), claims, &key)
            .map_err(|error| AuthError::Key(format!("signing: {error}")))
    }
}

/// Verifies routing tokens with the scheduler's public key.
pub struct RoutingVerifier {
    key: DecodingKey,
}

impl RoutingVerifier {
    /// A verifier for the public key in base64 ([`RoutingKey::public_base64`]).
    pub fn from_public_base64(text: &str) -> Result<RoutingVerifier, AuthError> {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(text.trim().as_bytes())
            .map_err(|_| AuthError::Key("the routing public key is not base64".into()))?;
        if raw.len() != 32 {
            return Err(AuthError::Key(format!(
                "an Ed25519 public key has 32 bytes, not {}",
                raw.len()
            )));
        }
        Ok(RoutingVerifier {
            key: DecodingKey::from_ed_der(&raw),
        })
    }

    /// Checks `token` for `scope` at `now` (Unix seconds).
    pub fn verify(
        &self,
        token: &str,
        scope: RoutingScope<'_>,
        now: u64,
    ) -> Result<RoutingClaims, AuthError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|error| AuthError::Malformed(format!("{:?}", error.kind())))?;
        if header.alg != Algorithm::EdDSA {
            return Err(AuthError::Algorithm(format!("{:?}", header.alg)));
        }
        let data = jsonwebtoken::decode::<RoutingClaims>(
            token,
            &self.key,
            &signature_only(Algorithm::EdDSA),
        )
        .map_err(|error| map_decode_error(&error))?;
        let claims = data.claims;
        if claims.iss != ROUTING_ISSUER {
            return Err(AuthError::Issuer {
                found: claims.iss,
                expected: ROUTING_ISSUER.into(),
            });
        }
        check_times(claims.exp, Some(claims.iat), now)?;
        for (claim, found, expected) in [
            ("worker", &claims.worker, scope.worker),
            ("tenant", &claims.tenant, scope.tenant),
            ("image", &claims.image, scope.image),
        ] {
            if found != expected {
                return Err(AuthError::Scope {
                    claim,
                    found: found.clone(),
                    expected: expected.to_owned(),
                });
            }
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(now: u64) -> RoutingClaims {
        RoutingClaims {
            iss: ROUTING_ISSUER.into(),
            tenant: "a".into(),
            image: "sha256:1".into(),
            worker: "w1".into(),
            sub: "alice".into(),
            iat: now,
            exp: now + 60,
            policy: TenantPolicy::default(),
        }
    }

    const SCOPE: RoutingScope<'static> = RoutingScope {
        worker: "w1",
        tenant: "a",
        image: "sha256:1",
    };

    #[test]
    fn signed_tokens_verify_only_for_their_scope_and_time() {
        let key = RoutingKey::generate().expect("key");
        let verifier = RoutingVerifier::from_public_base64(&key.public_base64()).expect("verifier");
        let token = key.sign(&claims(1_000)).expect("signed");
        assert_eq!(verifier.verify(&token, SCOPE, 1_010), Ok(claims(1_000)));
        for (scope, claim) in [
            (
                RoutingScope {
                    worker: "w2",
                    ..SCOPE
                },
                "worker",
            ),
            (
                RoutingScope {
                    tenant: "b",
                    ..SCOPE
                },
                "tenant",
            ),
            (
                RoutingScope {
                    image: "sha256:2",
                    ..SCOPE
                },
                "image",
            ),
        ] {
            match verifier.verify(&token, scope, 1_010) {
                Err(AuthError::Scope { claim: found, .. }) => assert_eq!(found, claim),
                other => panic!("{claim}: {other:?}"),
            }
        }
        assert!(matches!(
            verifier.verify(&token, SCOPE, 1_000 + 60 + 31),
            Err(AuthError::Expired(_))
        ));
        assert!(matches!(
            verifier.verify(&token, SCOPE, 1_000 - 31),
            Err(AuthError::NotYetValid(_))
        ));
    }

    #[test]
    fn tampered_foreign_and_unsigned_tokens_are_refused() {
        let key = RoutingKey::generate().expect("key");
        let verifier = RoutingVerifier::from_public_base64(&key.public_base64()).expect("verifier");
        let token = key.sign(&claims(1_000)).expect("signed");
        // Another tenant's claims with the original signature.
        let mut parts: Vec<&str> = token.split('.').collect();
        let mut other = claims(1_000);
        other.tenant = "b".into();
        let forged_payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(serde_json::to_vec(&other).expect("json"));
        parts[1] = &forged_payload;
        let forged = parts.join(".");
        let scope_b = RoutingScope {
            tenant: "b",
            ..SCOPE
        };
        assert_eq!(
            verifier.verify(&forged, scope_b, 1_010),
            Err(AuthError::Signature)
        );
        // Signed by another key.
        let stranger = RoutingKey::generate().expect("key");
        let foreign = stranger.sign(&claims(1_000)).expect("signed");
        assert_eq!(
            verifier.verify(&foreign, SCOPE, 1_010),
            Err(AuthError::Signature)
        );
        // `alg: none`.
        let header = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(br#"{"alg":"none","typ":"JWT"}"#);
        let unsigned = format!("{header}.{}.", parts[1]);
        assert!(verifier.verify(&unsigned, SCOPE, 1_010).is_err());
        assert!(verifier.verify("garbage", SCOPE, 1_010).is_err());
    }

    #[test]
    fn keys_round_trip_through_pem() {
        let key = RoutingKey::generate().expect("key");
        let again = RoutingKey::from_pem(&key.to_pem()).expect("parses");
        assert_eq!(again.public_base64(), key.public_base64());
        assert!(RoutingKey::from_pem(
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
        )
        .is_err());
        assert!(RoutingVerifier::from_public_base64("AAAA").is_err());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_tokens_never_panic(token in ".{0,300}") {
            let key = RoutingKey::generate().expect("key");
            let verifier = RoutingVerifier::from_public_base64(&key.public_base64()).expect("verifier");
            let _ = verifier.verify(&token, SCOPE, 1_000);
        }
    }

    /// The key file is the RFC 8410 PKCS#8 v1 document every tool reads, and keys written by
    /// other tools (v1) or by earlier versions (v2, with the public key) still load.
    #[test]
    fn key_files_are_pkcs8_v1_and_both_versions_load() {
        let key = RoutingKey::generate().expect("a key");
        let pem = key.to_pem();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n") && !pem.contains('\r'));
        let der = pem::parse(&pem).expect("PEM").into_contents();
        // SEQUENCE { INTEGER 0, SEQUENCE { OID 1.3.101.112 }, OCTET STRING { OCTET STRING (32) } }
        assert_eq!(der.len(), 48);
        assert_eq!(
            &der[..16],
            &[
                0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
                0x04, 0x20
            ]
        );
        let again = RoutingKey::from_pem(&pem).expect("reads back");
        assert_eq!(again.public_base64(), key.public_base64());
        // A v2 document of an earlier version.
        use aws_lc_rs::signature::Ed25519KeyPair;
        let v2 = Ed25519KeyPair::generate_pkcs8(&aws_lc_rs::rand::SystemRandom::new()).expect("v2");
        assert_eq!(v2.as_ref()[4], 0x01, "a v2 document");
        let loaded = RoutingKey::from_pkcs8(v2.as_ref()).expect("v2 loads");
        assert_eq!(
            RoutingKey::from_pem(&loaded.to_pem())
                .expect("as v1")
                .public_base64(),
            loaded.public_base64()
        );
        // Not a key: refused, naming why.
        let certificate = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(RoutingKey::from_pem(certificate)
            .expect_err("a certificate")
            .to_string()
            .contains("CERTIFICATE"));
        assert!(RoutingKey::from_pem("no pem here").is_err());
    }
}
