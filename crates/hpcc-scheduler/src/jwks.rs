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
    /// The tenant's `idp_ca` file could not be read or holds no certificate.
    #[error("idp_ca {}: {message}", path.display())]
    Ca {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong with it.
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
    /// A cache for the keys at `uri` fetched over HTTPS trusting the system's roots and the
    /// CA certificates of the PEM file `idp_ca` (nothing fetched yet).
    pub fn with_ca(uri: String, idp_ca: Option<&std::path::Path>) -> Result<JwksCache, JwksError> {
        let Some(path) = idp_ca else {
            return Ok(JwksCache::new(uri));
        };
        let failed = |message: String| JwksError::Ca {
            path: path.to_owned(),
            message,
        };
        let pem = std::fs::read(path).map_err(|error| failed(error.to_string()))?;
        let certificates = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|error| failed(error.to_string()))?;
        if certificates.is_empty() {
            return Err(failed("no PEM certificate in it".into()));
        }
        let client = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .tls_certs_merge(certificates)
            .build()
            .map_err(|error| failed(hpcc_core::report::chain(&error)))?;
        Ok(JwksCache {
            uri,
            client,
            cached: Mutex::new(None),
        })
    }

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
            .map_err(|error| failed(hpcc_core::report::chain(&error)))?;
        if !response.status().is_success() {
            return Err(failed(format!("HTTP {}", response.status())));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|error| failed(hpcc_core::report::chain(&error)))?
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

    /// Fetches the keys once, as a deployment check: how many there are, or why they cannot
    /// be had (the same fetch, limits and errors as validation's). Nothing is cached.
    pub async fn check(&self) -> Result<usize, JwksError> {
        self.fetch().await.map(|set| set.keys.len())
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use hpcc_auth::RoutingKey;
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const ISSUER: &str = "https://idp.test";
    const AUDIENCE: &str = "hpcc";
    const NOW: u64 = 1_800_000_000;

    /// An Ed25519 signing key and its JWK.
    struct Key {
        kid: &'static str,
        private: EncodingKey,
        jwk: serde_json::Value,
    }

    fn key(kid: &'static str) -> Key {
        let routing = RoutingKey::generate().expect("a key");
        let x = routing
            .public_base64()
            .replace('+', "-")
            .replace('/', "_")
            .trim_end_matches('=')
            .to_owned();
        Key {
            kid,
            private: EncodingKey::from_ed_pem(routing.to_pem().as_bytes()).expect("its PEM"),
            jwk: serde_json::json!({"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "kid": kid, "x": x}),
        }
    }

    fn token(key: &Key, exp: u64) -> String {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(key.kid.to_owned());
        let claims =
            serde_json::json!({"sub": "alice", "iss": ISSUER, "aud": AUDIENCE, "exp": exp});
        jsonwebtoken::encode(&header, &claims, &key.private).expect("signed")
    }

    /// An IdP's JWKS endpoint on loopback: serves whatever `body` holds, counting requests.
    struct Idp {
        uri: String,
        body: Arc<std::sync::Mutex<Vec<u8>>>,
        requests: Arc<AtomicUsize>,
    }

    async fn idp(keys: &[&Key]) -> Idp {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port");
        let uri = format!("http://{}/jwks", listener.local_addr().expect("address"));
        let body = Arc::new(std::sync::Mutex::new(Vec::new()));
        let requests = Arc::new(AtomicUsize::new(0));
        let (serving, counting) = (Arc::clone(&body), Arc::clone(&requests));
        #[allow(clippy::disallowed_methods)] // a test's server
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                counting.fetch_add(1, Ordering::SeqCst);
                let mut request = Vec::new();
                let mut buffer = [0; 1024];
                while !request.windows(4).any(|window| window == b"\r\n\r\n") {
                    match stream.read(&mut buffer).await {
                        Ok(0) | Err(_) => break,
                        Ok(read) => request.extend_from_slice(&buffer[..read]),
                    }
                }
                let body = serving.lock().expect("body").clone();
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(&body).await;
            }
        });
        let idp = Idp {
            uri,
            body,
            requests,
        };
        idp.serve(keys);
        idp
    }

    impl Idp {
        fn serve(&self, keys: &[&Key]) {
            let set = serde_json::json!({"keys": keys.iter().map(|key| key.jwk.clone()).collect::<Vec<_>>()});
            *self.body.lock().expect("body") = set.to_string().into_bytes();
        }

        fn requests(&self) -> usize {
            self.requests.load(Ordering::SeqCst)
        }
    }

    #[tokio::test]
    async fn keys_are_cached_refetched_for_rotation_at_most_so_often_and_kept_on_failure() {
        let (first, second) = (key("k1"), key("k2"));
        let idp = idp(&[&first]).await;
        let cache = JwksCache::new(idp.uri.clone());
        let claims = cache
            .validate(&token(&first, NOW + 600), ISSUER, AUDIENCE, NOW)
            .await
            .expect("a good token");
        assert_eq!(claims.sub, "alice");
        cache
            .validate(&token(&first, NOW + 600), ISSUER, AUDIENCE, NOW + 10)
            .await
            .expect("again");
        assert_eq!(idp.requests(), 1, "cached within the TTL");

        // The IdP rotates to k2: within REFETCH_MIN the unknown key is refused unfetched...
        idp.serve(&[&first, &second]);
        let early = cache
            .validate(&token(&second, NOW + 600), ISSUER, AUDIENCE, NOW + 20)
            .await;
        assert!(matches!(
            early,
            Err(ValidateError::Token(AuthError::UnknownKey(_)))
        ));
        assert_eq!(idp.requests(), 1);
        // ...and fetched once it has passed.
        let later = NOW + REFETCH_MIN.as_secs();
        cache
            .validate(&token(&second, NOW + 600), ISSUER, AUDIENCE, later)
            .await
            .expect("the rotated key");
        assert_eq!(idp.requests(), 2);

        // Past the TTL a failed fetch keeps the keys there are.
        *idp.body.lock().expect("body") = b"not a key set".to_vec();
        let stale = later + JWKS_TTL.as_secs();
        cache
            .validate(&token(&first, stale + 600), ISSUER, AUDIENCE, stale)
            .await
            .expect("the previous set still validates");
        assert_eq!(idp.requests(), 3);
        // A token of another issuer or audience, or expired, is refused whatever the keys.
        for (issuer, audience, exp) in [
            ("https://other", AUDIENCE, stale + 600),
            (ISSUER, "other", stale + 600),
            (ISSUER, AUDIENCE, stale - 600),
        ] {
            let refused = cache
                .validate(&token(&first, exp), issuer, audience, stale)
                .await;
            assert!(
                matches!(refused, Err(ValidateError::Token(_))),
                "{issuer} {audience} {exp}"
            );
        }
    }

    #[tokio::test]
    async fn a_first_fetch_that_fails_says_why() {
        let first = key("k1");
        let idp = idp(&[&first]).await;
        *idp.body.lock().expect("body") = b"<html>".to_vec();
        let cache = JwksCache::new(idp.uri.clone());
        match cache
            .validate(&token(&first, NOW + 600), ISSUER, AUDIENCE, NOW)
            .await
        {
            Err(ValidateError::Fetch(error @ JwksError::Parse { .. })) => {
                assert!(error.to_string().contains("is not a JWKS"), "{error}")
            }
            other => panic!("a body that is not a JWKS: {other:?}"),
        }
        *idp.body.lock().expect("body") = vec![b' '; MAX_JWKS_BYTES + 1];
        let cache = JwksCache::new(idp.uri.clone());
        match cache
            .validate(&token(&first, NOW + 600), ISSUER, AUDIENCE, NOW)
            .await
        {
            Err(ValidateError::Fetch(error)) => {
                assert!(error.to_string().contains("longer than"), "{error}")
            }
            other => panic!("an oversized body: {other:?}"),
        }
        let nobody = JwksCache::new("http://127.0.0.1:1/jwks".into());
        match nobody
            .validate(&token(&first, NOW + 600), ISSUER, AUDIENCE, NOW)
            .await
        {
            Err(ValidateError::Fetch(error)) => {
                assert!(error.to_string().contains("127.0.0.1:1"), "{error}")
            }
            other => panic!("an IdP that is down: {other:?}"),
        }
    }
}
