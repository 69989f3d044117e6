//! Configuration of the remote-compilation services: the scheduler (`SchedulerConfig`) and,
//! later in this module, the worker. TOML files with `deny_unknown_fields`, like `Config`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// TLS of a gRPC server: its certificate chain and key (PEM files).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The certificate chain, PEM.
    pub cert: PathBuf,
    /// The private key, PEM.
    pub key: PathBuf,
}

/// One tenant: its identity provider and the images it may compile with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// The tenant id clients configure.
    pub id: String,
    /// The issuer (`iss`) of the tenant's tokens.
    pub issuer: String,
    /// Where the tenant's signing keys are published (JWKS, fetched over HTTPS).
    pub jwks_uri: String,
    /// The OAuth2 token endpoint `hpcc login` uses.
    pub token_endpoint: String,
    /// The audience (`aud`) tokens must carry.
    pub audience: String,
    /// The OAuth2 client id of hpcc at this IdP.
    #[serde(default)]
    pub client_id: String,
    /// The image digests (`sha256:<hex>`) this tenant may use; empty: none.
    #[serde(default)]
    pub allowed_images: Vec<String>,
}

fn default_routing_ttl() -> u64 {
    60
}

fn default_heartbeat_ms() -> u64 {
    2_000
}

fn default_worker_expiry() -> u64 {
    10
}

/// The scheduler's file (`hpcc-scheduler --config FILE`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchedulerConfig {
    /// `host:port` to listen on.
    pub listen: String,
    /// The server's certificate; required unless `insecure_plaintext`.
    #[serde(default)]
    pub tls: Option<TlsFiles>,
    /// Serve without TLS (tests and loopback only).
    #[serde(default)]
    pub insecure_plaintext: bool,
    /// The Ed25519 routing key (PKCS#8 PEM; `hpcc-scheduler keygen FILE` makes one).
    pub routing_key: PathBuf,
    /// Lifetime of routing tokens, in seconds.
    #[serde(default = "default_routing_ttl")]
    pub routing_ttl_secs: u64,
    /// A file holding the secret workers present to register.
    pub worker_secret_file: PathBuf,
    /// How often workers heartbeat, in milliseconds.
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_interval_ms: u64,
    /// Seconds without a heartbeat after which a worker is no longer routed to.
    #[serde(default = "default_worker_expiry")]
    pub worker_expiry_secs: u64,
    /// The tenants.
    #[serde(default)]
    pub tenants: Vec<TenantConfig>,
}

impl SchedulerConfig {
    /// Parses a scheduler file, then checks what the types cannot: TLS or the explicit
    /// insecure flag, unique tenant ids, well-formed image digests. Errors name the key.
    pub fn parse(
        path: &std::path::Path,
        text: &str,
    ) -> Result<SchedulerConfig, super::ConfigError> {
        let file_error = |message: String| super::ConfigError::File {
            path: path.to_path_buf(),
            message,
        };
        let config: SchedulerConfig =
            toml::from_str(text).map_err(|error| file_error(error.message().to_owned()))?;
        if config.tls.is_none() && !config.insecure_plaintext {
            return Err(file_error(
                "`tls` is required (or `insecure_plaintext = true`, for loopback tests only)"
                    .into(),
            ));
        }
        let mut ids = std::collections::BTreeSet::new();
        for tenant in &config.tenants {
            if !ids.insert(tenant.id.as_str()) {
                return Err(file_error(format!(
                    "tenant {:?} is listed twice",
                    tenant.id
                )));
            }
            if let Some(bad) = tenant
                .allowed_images
                .iter()
                .find(|digest| !is_image_digest(digest))
            {
                return Err(file_error(format!(
                    "tenant {:?}: {bad:?} is not an image digest (sha256:<64 hex>)",
                    tenant.id
                )));
            }
        }
        Ok(config)
    }
}

fn default_capacity() -> u32 {
    2
}

fn default_idle_ttl() -> u64 {
    300
}

fn default_max_ttl() -> u64 {
    3_600
}

/// 4 GiB of compressed sources: at the usual tenfold compression of preprocessed C++, tens of
/// thousands of jobs.
pub const DEFAULT_AUDIT_SOURCE_RETENTION: u64 = 4 << 30;

fn default_audit_source_retention() -> u64 {
    DEFAULT_AUDIT_SOURCE_RETENTION
}

/// The worker's file (`hpcc-worker --config FILE`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    /// This worker's id (routing tokens name it).
    pub id: String,
    /// `host:port` to listen on.
    pub listen: String,
    /// `host:port` clients dial (default: `listen`).
    #[serde(default)]
    pub advertise: Option<String>,
    /// The server's certificate; required unless `insecure_plaintext`.
    #[serde(default)]
    pub tls: Option<TlsFiles>,
    /// The CA clients should trust for this worker's certificate (sent to the scheduler).
    #[serde(default)]
    pub tls_ca: Option<PathBuf>,
    /// The name in the certificate.
    #[serde(default)]
    pub tls_server_name: Option<String>,
    /// Serve, and talk to the scheduler, without TLS (tests and loopback only).
    #[serde(default)]
    pub insecure_plaintext: bool,
    /// The scheduler's URL (`https://host:port`).
    pub scheduler: String,
    /// The CA of the scheduler's certificate.
    #[serde(default)]
    pub scheduler_ca: Option<PathBuf>,
    /// The secret shared with the scheduler for registering.
    pub worker_secret_file: PathBuf,
    /// The scheduler's routing public key, base64 (`hpcc-scheduler keygen` prints it).
    pub routing_public_key: String,
    /// Compiles at once.
    #[serde(default = "default_capacity")]
    pub capacity: u32,
    /// Where images, flattened root file systems, the cache, the audit log (`audit.tsv`) and
    /// the retained sources (`sources/`) live.
    pub state_dir: PathBuf,
    /// The `hpcc-agent` binary run as PID 1 of each session.
    pub agent: PathBuf,
    /// Images available without a registry: OCI layout directories or docker-archive
    /// tarballs, imported at start.
    #[serde(default)]
    pub images: Vec<PathBuf>,
    /// Images pulled from an OCI registry at start, by digest
    /// (`registry/repository@sha256:<hex>`); every blob is verified against its digest.
    /// Loopback registries are spoken to over plain HTTP, others over HTTPS.
    #[serde(default)]
    pub pull: Vec<String>,
    /// Seconds a session may sit idle before it is stopped.
    #[serde(default = "default_idle_ttl")]
    pub session_idle_secs: u64,
    /// Seconds after which a session is stopped however busy it was.
    #[serde(default = "default_max_ttl")]
    pub session_max_secs: u64,
    /// Only workers read and write the cache; clients are told to hold no store credentials.
    #[serde(default)]
    pub paranoid: bool,
    /// Bytes of zstd-compressed job sources kept in `<state_dir>/sources` so that audit rows
    /// can be re-run (`hpcc-worker audit-verify`); the oldest are evicted past it, and 0 keeps
    /// none. A deployment that must be able to re-run every audited job sizes this to its
    /// audit retention and mounts durable storage at `<state_dir>/sources`.
    #[serde(default = "default_audit_source_retention")]
    pub audit_source_retention: u64,
    /// The isolation runtime sessions run in.
    #[serde(default)]
    pub runtime: RuntimeKind,
    /// The microVM guest (`runtime = "qemu"` or `"firecracker"`).
    #[serde(default)]
    pub vm: Option<VmConfig>,
}

/// Which isolation runtime a worker uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeKind {
    /// Linux namespaces, seccomp and a read-only root (developer machines).
    #[default]
    Sandbox,
    /// A QEMU `microvm` guest with no NIC.
    Qemu,
    /// A Firecracker guest with no NIC.
    Firecracker,
}

/// A microVM runtime's guest and VMM (the `[vm]` table).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// The guest kernel.
    pub kernel: PathBuf,
    /// Kernel modules the guest kernel lacks, in load order (virtio-mmio, virtio-blk, vsock).
    #[serde(default)]
    pub modules: Vec<PathBuf>,
    /// Virtual CPUs per guest.
    #[serde(default = "default_vcpus")]
    pub vcpus: u32,
    /// Guest memory, MiB.
    #[serde(default = "default_memory_mib")]
    pub memory_mib: u32,
    /// Seconds a guest may take to boot until its agent answers.
    #[serde(default = "default_boot_timeout")]
    pub boot_timeout_secs: u64,
    /// `qemu-system-x86_64` (QEMU).
    #[serde(default = "default_qemu")]
    pub qemu: PathBuf,
    /// `vhost-device-vsock` (QEMU's vsock device backend).
    #[serde(default = "default_vhost_vsock")]
    pub vhost_vsock: PathBuf,
    /// QEMU's accelerator: `kvm`, or `tcg` (software emulation, slow, runs anywhere).
    #[serde(default = "default_accel")]
    pub accel: String,
    /// The `firecracker` binary.
    #[serde(default = "default_firecracker")]
    pub firecracker: PathBuf,
    /// Kernel arguments Firecracker guests get besides hpcc's own (QEMU adds what TCG needs
    /// by itself).
    #[serde(default)]
    pub kernel_args: String,
}

fn default_vcpus() -> u32 {
    2
}

fn default_memory_mib() -> u32 {
    1024
}

fn default_boot_timeout() -> u64 {
    60
}

fn default_qemu() -> PathBuf {
    PathBuf::from("qemu-system-x86_64")
}

fn default_vhost_vsock() -> PathBuf {
    PathBuf::from("vhost-device-vsock")
}

fn default_accel() -> String {
    "kvm".to_owned()
}

fn default_firecracker() -> PathBuf {
    PathBuf::from("firecracker")
}

impl WorkerConfig {
    /// Parses a worker file and checks TLS or the explicit insecure flag.
    pub fn parse(path: &std::path::Path, text: &str) -> Result<WorkerConfig, super::ConfigError> {
        let file_error = |message: String| super::ConfigError::File {
            path: path.to_path_buf(),
            message,
        };
        let config: WorkerConfig =
            toml::from_str(text).map_err(|error| file_error(error.message().to_owned()))?;
        if config.tls.is_none() && !config.insecure_plaintext {
            return Err(file_error(
                "`tls` is required (or `insecure_plaintext = true`, for loopback tests only)"
                    .into(),
            ));
        }
        if config.capacity == 0 {
            return Err(file_error("capacity must be above 0".into()));
        }
        match (&config.runtime, &config.vm) {
            (RuntimeKind::Sandbox, _) => {}
            (_, None) => {
                return Err(file_error(
                    "runtime = \"qemu\" or \"firecracker\" needs a [vm] table with `kernel`".into(),
                ))
            }
            (_, Some(vm)) => {
                if !matches!(vm.accel.as_str(), "kvm" | "tcg") {
                    return Err(file_error(format!(
                        "vm.accel = {:?}: expected \"kvm\" or \"tcg\"",
                        vm.accel
                    )));
                }
                if vm.vcpus == 0 || vm.memory_mib < 128 {
                    return Err(file_error(
                        "vm.vcpus must be above 0 and vm.memory_mib at least 128".into(),
                    ));
                }
            }
        }
        Ok(config)
    }
}

/// Whether `text` is `sha256:` and 64 lowercase hex digits.
pub fn is_image_digest(text: &str) -> bool {
    text.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const IMAGE: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

    #[test]
    fn scheduler_files_parse_and_are_checked() {
        let text = format!(
            r#"
            listen = "127.0.0.1:0"
            insecure_plaintext = true
            routing_key = "/k.pem"
            worker_secret_file = "/s"
            [[tenants]]
            id = "a"
            issuer = "https://idp-a"
            jwks_uri = "https://idp-a/jwks"
            token_endpoint = "https://idp-a/token"
            audience = "hpcc"
            allowed_images = ["{IMAGE}"]
            "#
        );
        let config = SchedulerConfig::parse(Path::new("s.toml"), &text).expect("valid");
        assert_eq!(config.routing_ttl_secs, 60);
        assert_eq!(config.tenants[0].allowed_images, [IMAGE]);
        for (change, needle) in [
            (text.replace("insecure_plaintext = true", ""), "tls"),
            (text.replace(IMAGE, "latest"), "not an image digest"),
            (text.replace("audience", "audiences"), "audiences"),
            (format!("{text}\n[[tenants]]\nid = \"a\"\nissuer = \"i\"\njwks_uri = \"j\"\ntoken_endpoint = \"t\"\naudience = \"a\"\n"), "twice"),
        ] {
            let error = SchedulerConfig::parse(Path::new("s.toml"), &change).expect_err(needle);
            assert!(error.to_string().contains(needle), "{needle}: {error}");
        }
        assert!(is_image_digest(IMAGE));
    }

    #[test]
    fn worker_files_parse_with_a_source_retention() {
        let text = r#"
            id = "w1"
            listen = "127.0.0.1:0"
            insecure_plaintext = true
            scheduler = "http://127.0.0.1:1"
            worker_secret_file = "/s"
            routing_public_key = "AAAA"
            state_dir = "/var/lib/hpcc-worker"
            agent = "/usr/lib/hpcc/hpcc-agent"
            "#;
        let config = WorkerConfig::parse(Path::new("w.toml"), text).expect("valid");
        assert_eq!(
            config.audit_source_retention,
            DEFAULT_AUDIT_SOURCE_RETENTION
        );
        let sized = format!("{text}\naudit_source_retention = 1048576\n");
        let config = WorkerConfig::parse(Path::new("w.toml"), &sized).expect("valid");
        assert_eq!(config.audit_source_retention, 1 << 20);
        let negative = format!("{text}\naudit_source_retention = -1\n");
        let error = WorkerConfig::parse(Path::new("w.toml"), &negative).expect_err("negative");
        assert!(error.to_string().contains("w.toml"), "{error}");
        assert_eq!(config.runtime, RuntimeKind::Sandbox);
        let qemu = format!(
            "{text}\nruntime = \"qemu\"\n[vm]\nkernel = \"/boot/vmlinuz\"\naccel = \"tcg\"\n"
        );
        let config = WorkerConfig::parse(Path::new("w.toml"), &qemu).expect("valid");
        assert_eq!(config.runtime, RuntimeKind::Qemu);
        let vm = config.vm.expect("a [vm] table");
        assert_eq!(
            (vm.vcpus, vm.memory_mib, vm.accel.as_str()),
            (2, 1024, "tcg")
        );
        for (change, needle) in [
            (format!("{text}\nruntime = \"qemu\"\n"), "[vm]"),
            (format!("{text}\nruntime = \"kvm\"\n"), "kvm"),
            (qemu.replace("tcg", "hvf"), "hvf"),
            (format!("{qemu}memory_mib = 64\n"), "memory_mib"),
            (format!("{qemu}kernal = \"/x\"\n"), "kernal"),
        ] {
            let error = WorkerConfig::parse(Path::new("w.toml"), &change).expect_err(needle);
            assert!(error.to_string().contains(needle), "{needle}: {error}");
        }
        let misspelt = format!("{text}\naudit_source_retain = 1\n");
        let error = WorkerConfig::parse(Path::new("w.toml"), &misspelt).expect_err("unknown");
        assert!(error.to_string().contains("audit_source_retain"), "{error}");
        assert!(!is_image_digest("sha256:ABC"));
    }
}
