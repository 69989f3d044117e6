//! Token formats of remote compilation, with no I/O (the caller fetches keys and passes the
//! time), so that the scheduler and the worker, which never import each other, check tokens
//! with the same code.
//!
//! - [`user`]: a user's JWT from the tenant's identity provider, checked against that
//!   tenant's JWKS, issuer and audience.
//! - [`routing`]: the short-lived token the scheduler signs (Ed25519) for one tenant, image
//!   and worker, which the worker verifies with the scheduler's public key.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]
#![deny(missing_docs)]

pub mod routing;
pub mod user;

pub use routing::{RoutingClaims, RoutingKey, RoutingScope, RoutingVerifier, TenantPolicy};
pub use user::{unverified_expiry, validate_user_token, UserClaims};

/// Clock skew tolerated on `exp` and `nbf`, in seconds.
pub const LEEWAY_SECS: u64 = 30;

/// A token that was refused, and why; messages name the claim at fault, never the token.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthError {
    /// The token is not a well-formed JWT.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// The signature algorithm is not allowed (`none`, HMAC, or not the key's).
    #[error("signature algorithm {0} is not accepted")]
    Algorithm(String),
    /// No key of the JWKS has the token's `kid`.
    #[error("no key {0:?} in the tenant's JWKS")]
    UnknownKey(String),
    /// The signature does not verify.
    #[error("bad signature")]
    Signature,
    /// `iss` is not the tenant's issuer.
    #[error("issuer {found:?} is not the tenant's ({expected:?})")]
    Issuer {
        /// The token's.
        found: String,
        /// The tenant's.
        expected: String,
    },
    /// `aud` does not contain the tenant's audience.
    #[error("audience is not {0:?}")]
    Audience(String),
    /// The token has expired.
    #[error("token expired {0} s ago")]
    Expired(u64),
    /// The token is not valid yet (`nbf`).
    #[error("token not valid for another {0} s")]
    NotYetValid(u64),
    /// A routing token for another worker, tenant or image.
    #[error("routing token is for {claim} {found:?}, not {expected:?}")]
    Scope {
        /// `worker`, `tenant` or `image`.
        claim: &'static str,
        /// The token's.
        found: String,
        /// This request's.
        expected: String,
    },
    /// A key that cannot be used.
    #[error("bad key: {0}")]
    Key(String),
}

/// Checks `exp` and `nbf` against `now` with [`LEEWAY_SECS`].
fn check_times(exp: u64, nbf: Option<u64>, now: u64) -> Result<(), AuthError> {
    if now > exp.saturating_add(LEEWAY_SECS) {
        return Err(AuthError::Expired(now - exp));
    }
    if let Some(nbf) = nbf {
        if nbf > now.saturating_add(LEEWAY_SECS) {
            return Err(AuthError::NotYetValid(nbf - now));
        }
    }
    Ok(())
}

/// A `Validation` that checks the signature only; claims are checked by hand against the
/// caller's clock.
fn signature_only(algorithm: jsonwebtoken::Algorithm) -> jsonwebtoken::Validation {
    let mut validation = jsonwebtoken::Validation::new(algorithm);
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    validation
}

fn map_decode_error(error: &jsonwebtoken::errors::Error) -> AuthError {
    use jsonwebtoken::errors::ErrorKind;
    match error.kind() {
        ErrorKind::InvalidSignature => AuthError::Signature,
        ErrorKind::InvalidAlgorithm => AuthError::Algorithm("not the key's".into()),
        other => AuthError::Malformed(format!("{other:?}")),
    }
}
