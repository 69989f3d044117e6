//! `[remote_compile]`: the client's side of remote compilation. It names only the tenant, the
//! scheduler and the toolchain image; the tenant's identity provider is asked of the
//! scheduler (`hpcc login`), never configured here.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::service::is_image_digest;

fn default_timeout() -> u64 {
    300
}

fn default_route_patience() -> u64 {
    2
}

/// Where compiles go when they miss the cache.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RemoteCompileConfig {
    /// The tenant this user belongs to.
    pub tenant_id: String,
    /// The scheduler's URL (`https://host:port`; `http://` only with `insecure_plaintext`).
    pub scheduler: String,
    /// A PEM file with the CA of the scheduler (and of the workers it routes to); without it,
    /// the system's roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduler_ca: Option<std::path::PathBuf>,
    /// A PEM file of the CA certificates the tenant's IdP's HTTPS certificate chains to,
    /// trusted by `hpcc login` (and token refreshes) besides the system's roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idp_ca: Option<std::path::PathBuf>,
    /// Plaintext to the scheduler and the workers: loopback tests only.
    #[serde(default)]
    pub insecure_plaintext: bool,
    /// The toolchain: an OCI image digest (`sha256:<64 hex>`).
    pub image: String,
    /// Deadline of one remote compile, in seconds; past it the compile runs locally.
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    /// How long to wait for a free worker when all are busy, in seconds.
    #[serde(default = "default_route_patience")]
    pub route_patience_secs: u64,
    /// Cache only on the workers: this client reads and writes no cache entry of its own,
    /// local or remote, for any compile.
    #[serde(default)]
    pub paranoid: bool,
}

impl RemoteCompileConfig {
    /// Checks what serde cannot: the digest, the URL, and that paranoid mode has no stores.
    pub fn validate(&self, remote_stores: usize) -> Result<(), String> {
        if self.tenant_id.is_empty() {
            return Err("remote_compile.tenant_id is empty".into());
        }
        if !is_image_digest(&self.image) {
            return Err(format!(
                "remote_compile.image {:?} is not an image digest (sha256:<64 hex>)",
                self.image
            ));
        }
        match self.scheduler.split_once("://") {
            Some(("https", rest)) if !rest.is_empty() => {}
            Some(("http", rest)) if !rest.is_empty() => {
                if !self.insecure_plaintext {
                    return Err(format!(
                        "remote_compile.scheduler {:?} is plaintext; use https or set \
                         insecure_plaintext = true",
                        self.scheduler
                    ));
                }
            }
            _ => {
                return Err(format!(
                    "remote_compile.scheduler {:?} is no http(s) URL",
                    self.scheduler
                ))
            }
        }
        if self.timeout_secs == 0 {
            return Err("remote_compile.timeout_secs must be at least 1".into());
        }
        if self.paranoid && remote_stores > 0 {
            return Err(
                "remote_compile.paranoid = true: only workers touch the cache, so this \
                 client may not have [[remote]] stores"
                    .into(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> RemoteCompileConfig {
        RemoteCompileConfig {
            tenant_id: "acme".into(),
            scheduler: "https://scheduler.example:7000".into(),
            scheduler_ca: None,
            idp_ca: None,
            insecure_plaintext: false,
            image: format!("sha256:{}", "a".repeat(64)),
            timeout_secs: 300,
            route_patience_secs: 2,
            paranoid: false,
        }
    }

    #[test]
    fn checks_name_the_key() {
        assert_eq!(config().validate(0), Ok(()));
        let mut bad = config();
        bad.image = "gcc:12".into();
        assert!(bad
            .validate(0)
            .unwrap_err()
            .contains("remote_compile.image"));
        let mut bad = config();
        bad.scheduler = "http://127.0.0.1:1".into();
        assert!(bad.validate(0).unwrap_err().contains("insecure_plaintext"));
        bad.insecure_plaintext = true;
        assert_eq!(bad.validate(0), Ok(()));
        let mut bad = config();
        bad.paranoid = true;
        assert!(bad.validate(1).unwrap_err().contains("paranoid"));
        assert_eq!(bad.validate(0), Ok(()));
    }
}
