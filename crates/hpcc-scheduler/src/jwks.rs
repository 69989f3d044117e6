//! One tenant's signing keys: fetched from its `jwks_uri`, kept for [`JWKS_TTL`], and fetched
//! again early (at most every [`REFETCH_MIN`]) when a token names a key not in the set, which
//! is how an IdP's key rotation shows up.
//!
//! The fetch has a deadline and a body cap, like every outbound call; a failed fetch keeps
//! the old set if there is one.

use std::time::Duration;

use hpcc_auth::{validate_user_token, AuthError, UserClaims};
use jsonwebtoken::jwk::JwkSet;
use tokio::sync::Mutex;

/// How long a fetched key set is trusted.
pub const JWKS_TTL: Duration = Duration::from_secs(300);
/// The least time between two fetches caused by unknown keys.
pub const REFETCH_MIN: Duration = Duration::from_secs(30);
/// Deadline of a fetch.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest JWKS document accepted.
const MAX_JWKS_BYTES: usize = 1 << 20;

/// A failed fetch of a key set.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JwksError {
    /// The request failed or timed out.
    #[error("fetching {uri}: {message}")]
    Fetch {
        /// The JWKS URI.
        uri: String,
        /// What happened.
        message: String,
    },
    /// The document is not a JWKS.
    #[error("{uri} is not a JWKS: {message}")]
    Parse {
        /// The JWKS URI.
        uri: String,
        /// The parser's message.
        message: String,
    },
}

/// A validation that failed for the token or for its keys.
#[derive(Debug)]
pub enum ValidateError {
    /// The token was refused.
    Token(AuthError),
    /// The keys could not be had.
    Fetch(JwksError),
}

struct Cached {
    keys: JwkSet,
    fetched: u64,
}

/// The key set of one tenant.
pub struct JwksCache {
    uri: String,
    client: reqwest::Client,
    cached: Mutex<Option<Cached>>,
}

impl JwksCache {
    /// A cache for the keys at `uri` (nothing fetched yet).
    pub fn new(uri: String) -> JwksCache {
        JwksCache {
            uri,
            client: reqwest::Client::builder()
                .timeout(FETCH_TIMEOUT)
                .build()
                .unwrap_or_default(),
            cached: Mutex::new(None),
        }
    }

    async fn fetch(&self) -> Result<JwkSet, JwksError> {
        let failed = |message: String| JwksError::Fetch {
            uri: self.uri.clone(),
            message,
        };
        let mut response = self
            .client
            .get(&self.uri)
            .send()
            .await
            .map_err(|error| failed(error.to_string()))?;
        if !response.status().is_success() {
            return Err(failed(format!("HTTP {}", response.status())));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|error| failed(error.to_string()))?
        {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(failed(format!("longer than {MAX_JWKS_BYTES} bytes")));
            }
            body.extend_from_slice(&chunk);
        }
        serde_json::from_slice(&body).map_err(|error| JwksError::Parse {
            uri: self.uri.clone(),
            message: error.to_string(),
        })
    }

    /// Validates `token` with this tenant's keys, fetching them if needed.
    pub async fn validate(
        &self,
        token: &str,
        issuer: &str,
        audience: &str,
        now: u64,
    ) -> Result<UserClaims, ValidateError> {
        // Held across the fetch on purpose: concurrent requests wait for one fetch rather
        // than each sending their own.
        let mut cached = self.cached.lock().await;
        let stale = cached
            .as_ref()
            .is_none_or(|cached| now.saturating_sub(cached.fetched) >= JWKS_TTL.as_secs());
        if stale {
            match self.fetch().await {
                Ok(keys) => *cached = Some(Cached { keys, fetched: now }),
                Err(error) if cached.is_none() => return Err(ValidateError::Fetch(error)),
                Err(error) => tracing::warn!(%error, "keeping the previous key set"),
            }
        }
        let Some(current) = cached.as_ref() else {
            return Err(ValidateError::Fetch(JwksError::Fetch {
                uri: self.uri.clone(),
                message: "no keys".into(),
            }));
        };
        match validate_user_token(token, issuer, audience, &current.keys, now) {
            Err(AuthError::UnknownKey(kid))
                if now.saturating_sub(current.fetched) >= REFETCH_MIN.as_secs() =>
            {
                // Perhaps the IdP rotated its keys: look once more.
                let keys = self.fetch().await.map_err(ValidateError::Fetch)?;
                let result = validate_user_token(token, issuer, audience, &keys, now);
                *cached = Some(Cached { keys, fetched: now });
                tracing::debug!(kid, "fetched the key set again for an unknown key");
                result.map_err(ValidateError::Token)
            }
            result => result.map_err(ValidateError::Token),
        }
    }
}
