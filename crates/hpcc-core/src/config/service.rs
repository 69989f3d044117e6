//! Configuration of the remote-compilation services: the scheduler (`SchedulerConfig`) and,
//! later in this module, the worker. TOML files with `deny_unknown_fields`, like `Config`.

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{ByteSize, RemoteConfig};

/// TLS of a gRPC server: its certificate chain and key (PEM files).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The certificate chain, PEM.
    pub cert: PathBuf,
    /// The private key, PEM.
    pub key: PathBuf,
}

/// One tenant: its identity provider and the images it may compile with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// The tenant id clients configure.
    pub id: String,
    /// The issuer (`iss`) of the tenant's tokens.
    pub issuer: String,
    /// Where the tenant's signing keys are published (JWKS, fetched over HTTPS).
    pub jwks_uri: String,
    /// A PEM file of the CA certificates the IdP's HTTPS certificate chains to, trusted for
    /// the JWKS fetch besides the system's roots (an IdP with a private CA). Clients set
    /// their own `idp_ca` in `[remote_compile]` for `hpcc login`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idp_ca: Option<PathBuf>,
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
    /// Paranoid mode is this tenant's policy: its clients keep no cache and hold no store
    /// credentials, every cache write happens on the workers, and a client that is not in
    /// paranoid mode is refused a route.
    #[serde(default)]
    pub paranoid: bool,
    /// This tenant's limits on each worker (`[tenants.quota]`).
    #[serde(default)]
    pub quota: TenantQuota,
}

/// A tenant's limits on each worker, sent to the workers in its routing tokens. An absent
/// key is no limit beyond the worker's own.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TenantQuota {
    /// Jobs running or waiting on one worker; more are refused (the client compiles
    /// locally).
    pub max_jobs: Option<u32>,
    /// Bytes of the tenant's sources a worker holds at once (received, waiting or compiling):
    /// the upload quota.
    pub max_source_bytes: Option<ByteSize>,
    /// Bytes of the tenant's namespace in a worker's local cache; its least recently used
    /// entries are evicted past it.
    pub max_cache_bytes: Option<ByteSize>,
    /// Bytes of the tenant's kept (audited) sources on a worker; its oldest are evicted past
    /// it.
    pub max_kept_source_bytes: Option<ByteSize>,
    /// Bytes of the tenant's session snapshots on a worker; its least recently used are
    /// deleted past it.
    pub max_snapshot_bytes: Option<ByteSize>,
}

/// Tenants that share one storage namespace (`[[sharing_groups]]`): their worker cache keys
/// are the group's, so one's compile is another's hit. Off unless configured; audit rows
/// still name the tenant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SharingGroup {
    /// The group's name (its namespace is `group-<name>`).
    pub name: String,
    /// The tenant ids in the group; a tenant is in at most one group.
    pub tenants: Vec<String>,
}

/// The longest tenant id or sharing group name.
pub const MAX_NAME_LEN: usize = 48;

/// Whether `name` can be a tenant id or a sharing group name: 1 to [`MAX_NAME_LEN`] of
/// `[A-Za-z0-9._-]`, not starting with a dot. Such names go into paths and object keys
/// (`cache/tenant-<id>/`), so nothing else is accepted.
pub fn is_safe_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The storage namespace of a tenant alone.
pub fn tenant_namespace(tenant: &str) -> String {
    format!("tenant-{tenant}")
}

/// The storage namespace of a sharing group.
pub fn group_namespace(group: &str) -> String {
    format!("group-{group}")
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
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
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
    /// Tenants that share a storage namespace; none by default.
    #[serde(default)]
    pub sharing_groups: Vec<SharingGroup>,
    /// `host:port` of the Prometheus endpoint (`GET /metrics`, plain HTTP: keep it on
    /// loopback or a monitoring network).
    #[serde(default = "default_scheduler_metrics")]
    pub metrics_listen: String,
}

fn default_scheduler_metrics() -> String {
    "127.0.0.1:9464".to_owned()
}

fn default_worker_metrics() -> String {
    "127.0.0.1:9465".to_owned()
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
            if !is_safe_name(&tenant.id) {
                return Err(file_error(format!(
                    "tenant id {:?}: expected 1 to {MAX_NAME_LEN} of A-Z a-z 0-9 . _ - \
                     (not starting with a dot)",
                    tenant.id
                )));
            }
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
        let mut groups = std::collections::BTreeSet::new();
        let mut grouped = std::collections::BTreeMap::new();
        for group in &config.sharing_groups {
            if !is_safe_name(&group.name) {
                return Err(file_error(format!(
                    "sharing group name {:?}: expected 1 to {MAX_NAME_LEN} of A-Z a-z 0-9 . _ - \
                     (not starting with a dot)",
                    group.name
                )));
            }
            if !groups.insert(group.name.as_str()) {
                return Err(file_error(format!(
                    "sharing group {:?} is listed twice",
                    group.name
                )));
            }
            for tenant in &group.tenants {
                if !ids.contains(tenant.as_str()) {
                    return Err(file_error(format!(
                        "sharing group {:?}: no tenant {tenant:?}",
                        group.name
                    )));
                }
                if let Some(other) = grouped.insert(tenant.as_str(), group.name.as_str()) {
                    return Err(file_error(format!(
                        "tenant {tenant:?} is in two sharing groups, {other:?} and {:?}",
                        group.name
                    )));
                }
            }
        }
        Ok(config)
    }

    /// The storage namespace of `tenant`: its sharing group's, or its own.
    pub fn namespace_of(&self, tenant: &str) -> String {
        self.sharing_groups
            .iter()
            .find(|group| group.tenants.iter().any(|member| member == tenant))
            .map_or_else(
                || tenant_namespace(tenant),
                |group| group_namespace(&group.name),
            )
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
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    /// This worker's id (routing tokens name it).
    pub id: String,
    /// `host:port` to listen on.
    pub listen: String,
    /// `host:port` clients dial (default: `listen`).
    #[serde(default)]
    pub advertise: Option<String>,
    /// `host:port` of the Prometheus endpoint (`GET /metrics`, plain HTTP: keep it on
    /// loopback or a monitoring network).
    #[serde(default = "default_worker_metrics")]
    pub metrics_listen: String,
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
    /// The worker's cache (`[cache]`): a local disk tier and the remote tiers the fleet
    /// shares, each tenant's objects in its own namespace.
    #[serde(default)]
    pub cache: WorkerCacheConfig,
    /// Bytes of zstd-compressed job sources kept in `<state_dir>/sources` so that audit rows
    /// can be re-run (`hpcc-worker audit-verify`); the oldest are evicted past it, and 0 keeps
    /// none. A deployment that must be able to re-run every audited job sizes this to its
    /// audit retention and mounts durable storage at `<state_dir>/sources`.
    #[serde(default = "default_audit_source_retention")]
    pub audit_source_retention: u64,
    /// The isolation runtime sessions run in; required, so that the boundary is a choice
    /// written in the file (`qemu` or `firecracker` in production).
    pub runtime: RuntimeKind,
    /// Sessions (guests) this worker runs at once, counting those starting and stopping.
    #[serde(default = "default_max_sessions")]
    pub max_sessions: usize,
    /// Sessions one tenant may hold at once (default: `max_sessions`). Whatever it is, a
    /// tenant gets no further guest while another tenant holding fewer waits for one.
    #[serde(default)]
    pub max_sessions_per_tenant: Option<usize>,
    /// Bytes of host memory all guests together may take (guest RAM plus each VMM's
    /// overhead); default: three quarters of the host's memory.
    #[serde(default)]
    pub guest_memory_budget: Option<u64>,
    /// Seconds a job waits for a session before its client is told to compile locally.
    #[serde(default = "default_session_wait")]
    pub session_wait_secs: u64,
    /// Snapshot idle sessions instead of stopping them, and restore them for the next job of
    /// the same tenant and image (when the runtime can snapshot).
    #[serde(default = "default_true")]
    pub snapshots: bool,
    /// Where snapshots are kept (default `<state_dir>/snapshots`); they hold tenants' guest
    /// memory, so this must be as private as the state directory.
    #[serde(default)]
    pub snapshot_dir: Option<PathBuf>,
    /// Seconds after which a snapshot is deleted.
    #[serde(default = "default_snapshot_ttl")]
    pub snapshot_ttl_secs: u64,
    /// Bytes all snapshots may take; the least recently used are deleted past it.
    #[serde(default = "default_snapshot_max_bytes")]
    pub snapshot_max_bytes: u64,
    /// The microVM guest (`runtime = "qemu"` or `"firecracker"`).
    #[serde(default)]
    pub vm: Option<VmConfig>,
}

/// The worker's cache (`[cache]`): every object lives in its tenant's (or sharing group's)
/// namespace, on local disk under `<state_dir>/cache/<namespace>` and in a bucket under
/// `cache/<namespace>/`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerCacheConfig {
    /// Bytes the local disk tier holds over all namespaces; least recently used entries are
    /// evicted past it (each namespace also within its tenant's `max_cache_bytes`).
    pub max_size: ByteSize,
    /// Remote tiers shared by the fleet, asked in order after the local disk
    /// (`[[cache.remote]]`, the same tables as a client's `[[remote]]`).
    pub remote: Vec<RemoteConfig>,
}

/// 10 GiB.
pub const DEFAULT_WORKER_CACHE_SIZE: u64 = 10 << 30;

impl Default for WorkerCacheConfig {
    fn default() -> WorkerCacheConfig {
        WorkerCacheConfig {
            max_size: ByteSize(DEFAULT_WORKER_CACHE_SIZE),
            remote: Vec::new(),
        }
    }
}

fn default_max_sessions() -> usize {
    8
}

fn default_session_wait() -> u64 {
    60
}

fn default_true() -> bool {
    true
}

fn default_snapshot_ttl() -> u64 {
    24 * 3_600
}

fn default_snapshot_max_bytes() -> u64 {
    16 << 30
}

/// What a worker config without `runtime` is told.
pub const RUNTIME_REQUIRED: &str =
    "`runtime` is required: runtime = \"qemu\" | \"firecracker\" | \"sandbox\" \
     (qemu and firecracker are kernel boundaries; sandbox is for developer machines)";

/// What a worker config that still sets `paranoid` is told.
pub const PARANOID_MOVED: &str =
    "`paranoid` is no longer a worker key: paranoid mode is a tenant's policy, set with \
     `paranoid = true` in the scheduler's [[tenants]] table";

/// Which isolation runtime a worker uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeKind {
    /// Linux namespaces, seccomp and a read-only root: not a kernel boundary (developer
    /// machines).
    Sandbox,
    /// A QEMU `microvm` guest with no NIC.
    Qemu,
    /// A Firecracker guest with no NIC.
    Firecracker,
}

impl RuntimeKind {
    /// The name written in configs, logs and audit rows.
    pub fn as_str(self) -> &'static str {
        match self {
            RuntimeKind::Sandbox => "sandbox",
            RuntimeKind::Qemu => "qemu",
            RuntimeKind::Firecracker => "firecracker",
        }
    }

    /// Whether a guest kernel separates a tenant's job from the host (a microVM).
    pub fn is_kernel_boundary(self) -> bool {
        !matches!(self, RuntimeKind::Sandbox)
    }
}

/// A microVM runtime's guest and VMM (the `[vm]` table).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
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
    /// `vhost-device-vsock`: no longer used (the `qemu` runtime reaches its agent over
    /// virtio-serial, which can migrate); accepted so that existing configs still parse.
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
    /// How the VMM processes are jailed (`[vm.jail]`).
    #[serde(default)]
    pub jail: JailSettings,
    /// Start Firecracker through its `jailer` (`runtime = "firecracker"` only): the
    /// `[vm.jailer]` table.
    #[serde(default)]
    pub jailer: Option<JailerSettings>,
}

/// Firecracker's `jailer` (the `[vm.jailer]` table): each session's Firecracker runs chrooted
/// in a jail of its own, as a uid of its own from a range, in a cgroup capping its memory,
/// CPU and pids.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JailerSettings {
    /// The `jailer` binary (of the same version as `firecracker`).
    #[serde(default = "default_jailer")]
    pub binary: PathBuf,
    /// `--chroot-base-dir`; default `<state_dir>/jail`, on the state directory's file system
    /// so that root disks are hard-linked into jails rather than copied.
    #[serde(default)]
    pub chroot_base_dir: Option<PathBuf>,
    /// The first uid (and gid) of the range sessions get one each from; no other user or
    /// group on the host may use the range.
    #[serde(default = "default_jailer_uid_base")]
    pub uid_base: u32,
    /// How many uids the range holds: at most this many jailed sessions at once.
    #[serde(default = "default_jail_uid_count")]
    pub uid_count: u32,
    /// `--cgroup-version`: 1 or 2. Absent: 2 where the host's unified hierarchy has the
    /// memory, cpu and pids controllers, 1 otherwise.
    #[serde(default)]
    pub cgroup_version: Option<u8>,
    /// `--parent-cgroup`: each session's cgroup is `<parent_cgroup>/<session>`.
    #[serde(default = "default_parent_cgroup")]
    pub parent_cgroup: String,
    /// Memory a session's cgroup allows beyond guest memory (Firecracker itself), MiB.
    #[serde(default = "default_jail_memory_overhead")]
    pub memory_overhead_mib: u32,
    /// Processes and threads a session's cgroup allows.
    #[serde(default = "default_jail_pids_max")]
    pub pids_max: u32,
    /// `--netns`: a network namespace file for jails to join. Absent: each jail gets a new
    /// network namespace with no interface.
    #[serde(default)]
    pub netns: Option<PathBuf>,
}

fn default_jailer() -> PathBuf {
    PathBuf::from("jailer")
}

fn default_jailer_uid_base() -> u32 {
    900_000
}

/// The VMM jail (the `[vm.jail]` table): a session's VMM (QEMU, or Firecracker run directly:
/// with `[vm.jailer]` Firecracker's own jailer confines it instead) runs in its own namespaces, `pivot_root`ed into a directory with
/// only its files, as an unprivileged uid of its own, with no capabilities, a seccomp
/// allow-list and a cgroup capping memory, CPU and pids. On by default; it needs root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JailSettings {
    /// Whether VMMs are jailed.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// The first uid (and gid) of the jails' range.
    #[serde(default = "default_jail_uid_base")]
    pub uid_base: u32,
    /// How many uids the range has (at most that many sessions at once).
    #[serde(default = "default_jail_uid_count")]
    pub uid_count: u32,
    /// `"auto"` (v2 when the unified hierarchy has the memory, cpu and pids controllers, else
    /// v1), `"1"` or `"2"`.
    #[serde(default = "default_cgroup_version")]
    pub cgroup_version: String,
    /// The parent cgroup of the sessions' cgroups.
    #[serde(default = "default_cgroup_parent")]
    pub cgroup_parent: String,
    /// A session's memory limit, MiB (default: the guest's memory plus 384 MiB for the VMM).
    #[serde(default)]
    pub memory_mib: Option<u64>,
    /// A session's CPU cap in thousandths of a CPU (default: 1000 per vCPU).
    #[serde(default)]
    pub cpu_millis: Option<u32>,
    /// A session's processes and threads.
    #[serde(default = "default_jail_pids")]
    pub pids_max: u64,
}

impl Default for JailSettings {
    fn default() -> JailSettings {
        JailSettings {
            enabled: true,
            uid_base: default_jail_uid_base(),
            uid_count: default_jail_uid_count(),
            cgroup_version: default_cgroup_version(),
            cgroup_parent: default_cgroup_parent(),
            memory_mib: None,
            cpu_millis: None,
            pids_max: default_jail_pids(),
        }
    }
}

fn default_jail_uid_base() -> u32 {
    100_000
}

fn default_jail_uid_count() -> u32 {
    1000
}

fn default_cgroup_version() -> String {
    "auto".to_owned()
}

fn default_cgroup_parent() -> String {
    "hpcc".to_owned()
}

fn default_jail_pids() -> u64 {
    512
}

impl JailSettings {
    /// Checks what types cannot: the messages name the key.
    fn validate(&self) -> Result<(), String> {
        if !matches!(self.cgroup_version.as_str(), "auto" | "1" | "2") {
            return Err(format!(
                "vm.jail.cgroup_version = {:?}: expected \"auto\", \"1\" or \"2\"",
                self.cgroup_version
            ));
        }
        if self.uid_base == 0 || self.uid_count == 0 {
            return Err("vm.jail.uid_base and vm.jail.uid_count must be above 0".into());
        }
        if self.uid_base.checked_add(self.uid_count).is_none() {
            return Err("vm.jail.uid_base + vm.jail.uid_count must stay below 2^32".into());
        }
        if self.cgroup_parent.is_empty()
            || self.cgroup_parent.starts_with('/')
            || self
                .cgroup_parent
                .split('/')
                .any(|part| part == ".." || part.is_empty())
        {
            return Err(format!(
                "vm.jail.cgroup_parent = {:?}: expected a relative cgroup path such as \"hpcc\"",
                self.cgroup_parent
            ));
        }
        if self.memory_mib.is_some_and(|mib| mib < 64) {
            return Err("vm.jail.memory_mib must be at least 64".into());
        }
        if self.cpu_millis == Some(0) {
            return Err("vm.jail.cpu_millis must be above 0".into());
        }
        if self.pids_max < 16 {
            return Err("vm.jail.pids_max must be at least 16".into());
        }
        Ok(())
    }
}

fn default_parent_cgroup() -> String {
    "hpcc".to_owned()
}

fn default_jail_memory_overhead() -> u32 {
    128
}

fn default_jail_pids_max() -> u32 {
    256
}

impl JailerSettings {
    /// What is wrong with these settings, if anything.
    fn problem(&self) -> Option<String> {
        if self.uid_base == 0
            || self.uid_count == 0
            || self.uid_base.checked_add(self.uid_count).is_none()
        {
            return Some(format!(
                "vm.jailer uid_base = {} and uid_count = {}: the range must start above 0, \
                 hold at least one uid and end below 2^32",
                self.uid_base, self.uid_count
            ));
        }
        if let Some(version) = self
            .cgroup_version
            .filter(|version| !matches!(version, 1 | 2))
        {
            return Some(format!(
                "vm.jailer.cgroup_version = {version}: expected 1 or 2"
            ));
        }
        let parent = std::path::Path::new(&self.parent_cgroup);
        if self.parent_cgroup.is_empty()
            || !parent
                .components()
                .all(|part| matches!(part, std::path::Component::Normal(_)))
        {
            return Some(format!(
                "vm.jailer.parent_cgroup = {:?}: expected a relative path without . or ..",
                self.parent_cgroup
            ));
        }
        if self.pids_max == 0 {
            return Some("vm.jailer.pids_max must be above 0".into());
        }
        None
    }
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
        // Checked first, so that a file without `runtime` gets the choices rather than
        // serde's "missing field".
        if let Ok(table) = toml::from_str::<toml::Table>(text) {
            if !table.contains_key("runtime") {
                return Err(file_error(RUNTIME_REQUIRED.into()));
            }
            if table.contains_key("paranoid") {
                return Err(file_error(PARANOID_MOVED.into()));
            }
        }
        let config: WorkerConfig =
            toml::from_str(text).map_err(|error| file_error(error.message().to_owned()))?;
        if config.tls.is_none() && !config.insecure_plaintext {
            return Err(file_error(
                "`tls` is required (or `insecure_plaintext = true`, for loopback tests only)"
                    .into(),
            ));
        }
        if config.max_sessions == 0 || config.max_sessions_per_tenant == Some(0) {
            return Err(file_error(
                "max_sessions and max_sessions_per_tenant must be above 0".into(),
            ));
        }
        if config.capacity == 0 {
            return Err(file_error("capacity must be above 0".into()));
        }
        if config.cache.max_size.0 == 0 {
            return Err(file_error(
                "cache.max_size must be above 0 (the worker's local cache needs a bound)".into(),
            ));
        }
        RemoteConfig::validate_all(&config.cache.remote)
            .map_err(|message| file_error(format!("[[cache.remote]]: {message}")))?;
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
                vm.jail.validate().map_err(file_error)?;
                if let Some(jailer) = &vm.jailer {
                    if config.runtime != RuntimeKind::Firecracker {
                        return Err(file_error(
                            "[vm.jailer] is for runtime = \"firecracker\" only".into(),
                        ));
                    }
                    if let Some(problem) = jailer.problem() {
                        return Err(file_error(problem));
                    }
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

    /// The README's tenant and worker cache examples, each completed into a whole file.
    fn readme_block(needle: &str) -> &'static str {
        include_str!("../../../../README.md")
            .split("```toml\n")
            .skip(1)
            .filter_map(|rest| rest.split("```").next())
            .find(|block| block.contains(needle))
            .expect("a README example")
    }

    #[test]
    fn tenants_policies_and_sharing_groups_parse_and_are_checked() {
        let tenants = readme_block("[[sharing_groups]]").replace("<64 hex>", &"0".repeat(64));
        let head = "listen = \"127.0.0.1:0\"\ninsecure_plaintext = true\nrouting_key = \"/k\"\n\
                    worker_secret_file = \"/s\"\n";
        let member = |id: &str| {
            format!(
                "[[tenants]]\nid = \"{id}\"\nissuer = \"i\"\njwks_uri = \"j\"\n\
                 token_endpoint = \"t\"\naudience = \"a\"\n"
            )
        };
        let text = format!(
            "{head}{}{}{tenants}",
            member("acme-web"),
            member("acme-backend")
        );
        let config = SchedulerConfig::parse(Path::new("s.toml"), &text).expect("the README's");
        let acme = &config.tenants[2];
        assert!(acme.paranoid);
        assert_eq!(acme.quota.max_jobs, Some(32));
        assert_eq!(acme.quota.max_source_bytes, Some(ByteSize(256 << 20)));
        assert_eq!(acme.quota.max_snapshot_bytes, Some(ByteSize(8 << 30)));
        assert_eq!(config.namespace_of("acme"), "tenant-acme");
        assert_eq!(config.namespace_of("acme-web"), "group-eng");
        assert_eq!(config.namespace_of("acme-backend"), "group-eng");
        for (change, needle) in [
            (
                text.replace("\"acme-backend\"]", "\"nobody\"]"),
                "no tenant \"nobody\"",
            ),
            (
                format!("{text}\n[[sharing_groups]]\nname = \"ops\"\ntenants = [\"acme-web\"]\n"),
                "two sharing groups",
            ),
            (
                format!("{text}\n[[sharing_groups]]\nname = \"eng\"\ntenants = []\n"),
                "listed twice",
            ),
            (
                text.replace("name = \"eng\"", "name = \"../eng\""),
                "sharing group name",
            ),
            (text.replace("id = \"acme\"", "id = \"ac/me\""), "tenant id"),
            (text.replace("max_jobs", "max_job"), "max_job"),
            (text.replace("\"256M\"", "\"lots\""), "lots"),
        ] {
            let error = SchedulerConfig::parse(Path::new("s.toml"), &change).expect_err(needle);
            assert!(error.to_string().contains(needle), "{needle}: {error}");
        }
        assert!(is_safe_name("a.b_c-9"));
        for bad in ["", ".a", "a/b", "a b", "é", &"a".repeat(MAX_NAME_LEN + 1)] {
            assert!(!is_safe_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn the_worker_cache_parses_and_paranoid_is_a_tenant_setting() {
        let base = "id = \"w1\"\nlisten = \"127.0.0.1:0\"\ninsecure_plaintext = true\n\
                    scheduler = \"http://127.0.0.1:1\"\nworker_secret_file = \"/s\"\n\
                    routing_public_key = \"AAAA\"\nstate_dir = \"/w\"\nagent = \"/a\"\n\
                    runtime = \"sandbox\"\n";
        let config = WorkerConfig::parse(Path::new("w.toml"), base).expect("valid");
        assert_eq!(config.cache.max_size, ByteSize(DEFAULT_WORKER_CACHE_SIZE));
        assert!(config.cache.remote.is_empty());
        let text = format!("{base}{}", readme_block("[[cache.remote]]"));
        let config = WorkerConfig::parse(Path::new("w.toml"), &text).expect("the README's");
        assert_eq!(config.cache.max_size, ByteSize(100 << 30));
        assert_eq!(config.cache.remote.len(), 2);
        for (change, needle) in [
            (
                format!("paranoid = true\n{base}"),
                "paranoid mode is a tenant's policy",
            ),
            (format!("{base}[cache]\nmax_size = 0\n"), "cache.max_size"),
            (format!("{base}[cache]\nmax_sise = \"1G\"\n"), "max_sise"),
            (
                format!("{base}[[cache.remote]]\ntype = \"redis\"\n"),
                "a redis store needs `endpoint`",
            ),
        ] {
            let error = WorkerConfig::parse(Path::new("w.toml"), &change).expect_err(needle);
            assert!(error.to_string().contains(needle), "{needle}: {error}");
        }
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
            runtime = "sandbox"
            "#;
        let config = WorkerConfig::parse(Path::new("w.toml"), text).expect("valid");
        assert_eq!(config.max_sessions, 8);
        assert!(config.snapshots);
        assert_eq!(config.snapshot_ttl_secs, 86_400);
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
        assert!(!config.runtime.is_kernel_boundary());
        let without = text.replace("runtime = \"sandbox\"", "");
        let error = WorkerConfig::parse(Path::new("w.toml"), &without).expect_err("no runtime");
        assert!(
            error
                .to_string()
                .contains(r#"runtime = "qemu" | "firecracker" | "sandbox""#),
            "{error}"
        );
        let qemu = format!(
            "{without}\nruntime = \"qemu\"\n[vm]\nkernel = \"/boot/vmlinuz\"\naccel = \"tcg\"\n"
        );
        let config = WorkerConfig::parse(Path::new("w.toml"), &qemu).expect("valid");
        assert_eq!(config.runtime, RuntimeKind::Qemu);
        let vm = config.vm.expect("a [vm] table");
        assert_eq!(
            (vm.vcpus, vm.memory_mib, vm.accel.as_str()),
            (2, 1024, "tcg")
        );
        assert_eq!(vm.jail, JailSettings::default(), "jailed by default");
        assert!(vm.jail.enabled);
        let jailed = format!(
            "{qemu}[vm.jail]\nuid_base = 200000\nuid_count = 10\ncgroup_version = \"1\"\n\
             cgroup_parent = \"hpcc/w1\"\nmemory_mib = 2048\ncpu_millis = 1500\npids_max = 64\n"
        );
        let config = WorkerConfig::parse(Path::new("w.toml"), &jailed).expect("valid");
        let jail = config.vm.expect("a [vm] table").jail;
        assert_eq!(
            jail,
            JailSettings {
                enabled: true,
                uid_base: 200_000,
                uid_count: 10,
                cgroup_version: "1".into(),
                cgroup_parent: "hpcc/w1".into(),
                memory_mib: Some(2048),
                cpu_millis: Some(1500),
                pids_max: 64,
            }
        );
        let unjailed = format!("{qemu}[vm.jail]\nenabled = false\n");
        let config = WorkerConfig::parse(Path::new("w.toml"), &unjailed).expect("valid");
        assert!(!config.vm.expect("a [vm] table").jail.enabled);
        for (change, needle) in [
            (format!("{without}\nruntime = \"qemu\"\n"), "[vm]"),
            (format!("{without}\nruntime = \"kvm\"\n"), "kvm"),
            (format!("{text}\nmax_sessions = 0\n"), "max_sessions"),
            (format!("{text}\nsnapshot = false\n"), "snapshot"),
            (qemu.replace("tcg", "hvf"), "hvf"),
            (format!("{qemu}memory_mib = 64\n"), "memory_mib"),
            (format!("{qemu}kernal = \"/x\"\n"), "kernal"),
            (
                format!("{qemu}[vm.jail]\ncgroup_version = \"3\"\n"),
                "vm.jail.cgroup_version",
            ),
            (
                format!("{qemu}[vm.jail]\nuid_count = 0\n"),
                "vm.jail.uid_count",
            ),
            (
                format!("{qemu}[vm.jail]\ncgroup_parent = \"../x\"\n"),
                "vm.jail.cgroup_parent",
            ),
            (
                format!("{qemu}[vm.jail]\npids_max = 1\n"),
                "vm.jail.pids_max",
            ),
            (format!("{qemu}[vm.jail]\nuid = 1\n"), "uid"),
        ] {
            let error = WorkerConfig::parse(Path::new("w.toml"), &change).expect_err(needle);
            assert!(error.to_string().contains(needle), "{needle}: {error}");
        }
        let firecracker = format!(
            "{without}\nruntime = \"firecracker\"\n[vm]\nkernel = \"/vmlinux\"\n[vm.jailer]\nbinary = \"/usr/bin/jailer\"\n"
        );
        let config = WorkerConfig::parse(Path::new("w.toml"), &firecracker).expect("valid");
        let jailer = config
            .vm
            .and_then(|vm| vm.jailer)
            .expect("a [vm.jailer] table");
        assert_eq!(
            (jailer.uid_base, jailer.uid_count, jailer.cgroup_version),
            (900_000, 1000, None)
        );
        assert_eq!(jailer.parent_cgroup, "hpcc");
        for (change, needle) in [
            (
                firecracker.replace("firecracker\"\n[vm]", "qemu\"\n[vm]"),
                "only",
            ),
            (format!("{firecracker}uid_base = 0\n"), "uid_base"),
            (format!("{firecracker}uid_base = 4294967295\n"), "uid_base"),
            (
                format!("{firecracker}cgroup_version = 3\n"),
                "cgroup_version = 3",
            ),
            (
                format!("{firecracker}parent_cgroup = \"../x\"\n"),
                "parent_cgroup",
            ),
            (format!("{firecracker}pids_max = 0\n"), "pids_max"),
            (format!("{firecracker}uid = 5\n"), "uid"),
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
