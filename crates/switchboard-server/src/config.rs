//! The hub's configuration: a TOML file, then environment variables, then
//! flags, each overriding the one before.
//!
//! The file is optional and every setting has a default, so `switchboard
//! serve` runs with none. Unknown keys in the file are errors: a typo must
//! not silently fall back to a default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use switchboard_api::ApiConfig;
use switchboard_auth::{AclTemplate, AuthConfig, Quota, Role};
use switchboard_bus::BusConfig;
use switchboard_core::FieldError;
use switchboard_registry::RegistryConfig;
use switchboard_store::{SqliteConfig, Synchronous};
use switchboard_tasks::TasksConfig;
use switchboard_vault::{KeySource, VaultConfig};

use crate::ServerError;
use crate::tls::{TlsConfig, TlsMode};

/// The default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7878";
/// The default data directory, relative to the working directory.
pub const DEFAULT_DATA_DIR: &str = "switchboard-data";

/// The most threads `http.threads` may ask for.
const MAX_HTTP_THREADS: usize = 1024;

/// Everything the hub is configured with.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Where the store keeps its files.
    pub data_dir: PathBuf,
    /// How long in-flight work may take to finish after a shutdown signal.
    pub shutdown_grace: Duration,
    /// HTTP settings.
    pub http: ApiConfig,
    /// Threads that serve connections, each owning the connections it
    /// accepted (at least 1; one per core by default).
    pub http_threads: usize,
    /// Registry liveness settings.
    pub registry: RegistryConfig,
    /// Event bus settings.
    pub bus: BusConfig,
    /// Task queue settings.
    pub tasks: TasksConfig,
    /// Durability of the embedded store.
    pub synchronous: Synchronous,
    /// Identity, access, rate limits.
    pub auth: AuthConfig,
    /// Serve plain HTTP on a non-loopback address (without TLS).
    pub allow_plain_http: bool,
    /// TLS, and client certificates.
    pub tls: TlsConfig,
    /// The vault (its master keys).
    pub vault: VaultConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN
                .parse()
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 7878))),
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            shutdown_grace: Duration::from_secs(30),
            http: ApiConfig::default(),
            http_threads: std::thread::available_parallelism().map_or(1, usize::from),
            registry: RegistryConfig::default(),
            bus: BusConfig::default(),
            tasks: TasksConfig::default(),
            synchronous: Synchronous::Normal,
            auth: AuthConfig::default(),
            allow_plain_http: false,
            tls: TlsConfig::default(),
            vault: VaultConfig::default(),
        }
    }
}

/// Settings given by environment variables or flags; each one given
/// replaces the file's.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--listen` / `SWITCHBOARD_LISTEN`.
    pub listen: Option<String>,
    /// `--data-dir` / `SWITCHBOARD_DATA_DIR`.
    pub data_dir: Option<PathBuf>,
    /// `--heartbeat-interval` / `SWITCHBOARD_HEARTBEAT_INTERVAL`.
    pub heartbeat_interval: Option<String>,
    /// `--max-body-bytes` / `SWITCHBOARD_MAX_BODY_BYTES`.
    pub max_body_bytes: Option<usize>,
    /// `SWITCHBOARD_ADMIN_TOKEN`.
    pub admin_token: Option<String>,
    /// `--insecure-plain-http`.
    pub allow_plain_http: bool,
    /// `--tls-cert` / `SWITCHBOARD_TLS_CERT`.
    pub tls_cert: Option<PathBuf>,
    /// `--tls-key` / `SWITCHBOARD_TLS_KEY`.
    pub tls_key: Option<PathBuf>,
    /// `--tls-self-signed`.
    pub tls_self_signed: bool,
    /// `--tls-client-ca` / `SWITCHBOARD_TLS_CLIENT_CA`.
    pub tls_client_ca: Option<PathBuf>,
    /// `--master-key-file` / `SWITCHBOARD_MASTER_KEY_FILE`, or
    /// `SWITCHBOARD_MASTER_KEY` (the keys themselves).
    pub master_key: Option<KeySource>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    #[serde(default, with = "humantime_serde")]
    shutdown_grace: Option<Duration>,
    #[serde(default)]
    http: FileHttp,
    #[serde(default)]
    registry: FileRegistry,
    #[serde(default)]
    store: FileStore,
    #[serde(default)]
    bus: FileBus,
    #[serde(default)]
    tasks: FileTasks,
    #[serde(default)]
    auth: FileAuth,
    #[serde(default)]
    rate_limit: FileRateLimit,
    #[serde(default)]
    audit: FileAudit,
    #[serde(default)]
    tls: FileTls,
    #[serde(default)]
    vault: FileVault,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileVault {
    master_key_file: Option<PathBuf>,
    max_value_bytes: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTls {
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    self_signed: Option<bool>,
    client_ca_file: Option<PathBuf>,
    require_client_cert: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAuth {
    enabled: Option<bool>,
    issuer: Option<String>,
    audience: Option<String>,
    #[serde(default, with = "humantime_serde")]
    token_ttl: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    leeway: Option<Duration>,
    signing_algorithm: Option<String>,
    admin_token: Option<String>,
    #[serde(default, with = "humantime_serde")]
    secret_grace: Option<Duration>,
    failure_threshold: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    failure_window: Option<Duration>,
    agent_acl: Option<FileAcl>,
    #[serde(default, with = "humantime_serde")]
    seal_window: Option<Duration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAcl {
    #[serde(default)]
    publish: Vec<String>,
    #[serde(default)]
    subscribe: Vec<String>,
}

/// A quota, or the word `unlimited`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum FileQuota {
    Word(String),
    Rate { per_second: f64, burst: Option<u32> },
}

impl FileQuota {
    fn quota(&self, field: &str, errs: &mut Vec<FieldError>) -> Option<Quota> {
        match self {
            FileQuota::Word(w) if w == "unlimited" => None,
            FileQuota::Word(w) => {
                errs.push(FieldError::new(
                    field,
                    format!("{w:?} is not a limit; give {{ per_second = N, burst = M }} or \"unlimited\""),
                ));
                None
            }
            FileQuota::Rate { per_second, burst } => {
                if !(per_second.is_finite() && *per_second > 0.0) {
                    errs.push(FieldError::new(field, "per_second must be more than 0"));
                    return None;
                }
                // A burst of one second's worth unless given.
                let burst = burst.unwrap_or_else(|| per_second.ceil().max(1.0) as u32);
                if burst == 0 {
                    errs.push(FieldError::new(field, "burst must be at least 1"));
                }
                Some(Quota {
                    per_second: *per_second,
                    burst,
                })
            }
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRateLimit {
    enabled: Option<bool>,
    anonymous: Option<FileQuota>,
    #[serde(default)]
    roles: std::collections::BTreeMap<String, FileQuota>,
    #[serde(default)]
    principals: std::collections::BTreeMap<String, FileQuota>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAudit {
    data_plane: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTasks {
    #[serde(default, with = "humantime_serde")]
    lease: Option<Duration>,
    default_agent_capacity: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileBus {
    subscriber_buffer: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    dedup_window: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    retention_max_age: Option<Duration>,
    retention_max_bytes: Option<u64>,
    compact_topics: Option<Vec<String>>,
    #[serde(default, with = "humantime_serde")]
    retention_interval: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileHttp {
    threads: Option<usize>,
    max_body_bytes: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    request_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    ws_heartbeat_interval: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRegistry {
    #[serde(default, with = "humantime_serde")]
    heartbeat_interval: Option<Duration>,
    stale_after_missed: Option<u32>,
    offline_after_missed: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    sweep_interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    flush_interval: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileStore {
    synchronous: Option<String>,
}

impl Config {
    /// Reads `file` (if given), applies `overrides`, and checks the result.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Self, ServerError> {
        let parsed = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    ServerError::Config(vec![FieldError::new(
                        "config",
                        format!("cannot read {}: {e}", path.display()),
                    )])
                })?;
                toml::from_str::<FileConfig>(&text).map_err(|e| {
                    ServerError::Config(vec![FieldError::new(
                        path.display().to_string(),
                        e.to_string().trim_end().to_owned(),
                    )])
                })?
            }
            None => FileConfig::default(),
        };
        Self::build(parsed, overrides)
    }

    /// Parses TOML text (no file) and applies `overrides`.
    pub fn from_toml(text: &str, overrides: &Overrides) -> Result<Self, ServerError> {
        let parsed = toml::from_str::<FileConfig>(text).map_err(|e| {
            ServerError::Config(vec![FieldError::new(
                "config",
                e.to_string().trim_end().to_owned(),
            )])
        })?;
        Self::build(parsed, overrides)
    }

    fn build(f: FileConfig, o: &Overrides) -> Result<Self, ServerError> {
        let mut c = Config::default();
        let mut errs = Vec::new();
        if let Some(listen) = o.listen.as_deref().or(f.listen.as_deref()) {
            match listen.parse() {
                Ok(a) => c.listen = a,
                Err(_) => errs.push(FieldError::new(
                    "listen",
                    format!("{listen:?} is not an ADDRESS:PORT like 127.0.0.1:7878"),
                )),
            }
        }
        if let Some(d) = o.data_dir.clone().or(f.data_dir) {
            c.data_dir = d;
        }
        if let Some(g) = f.shutdown_grace {
            c.shutdown_grace = g;
        }
        if let Some(n) = o.max_body_bytes.or(f.http.max_body_bytes) {
            if n < 1024 {
                errs.push(FieldError::new(
                    "http.max_body_bytes",
                    "must be at least 1024",
                ));
            }
            c.http.max_body_bytes = n;
        }
        if let Some(n) = f.http.threads {
            if !(1..=MAX_HTTP_THREADS).contains(&n) {
                errs.push(FieldError::new(
                    "http.threads",
                    format!("must be between 1 and {MAX_HTTP_THREADS}"),
                ));
            }
            c.http_threads = n;
        }
        if let Some(t) = f.http.request_timeout {
            c.http.request_timeout = t;
        }
        if let Some(t) = f.http.ws_heartbeat_interval {
            if t < Duration::from_millis(10) {
                errs.push(FieldError::new(
                    "http.ws_heartbeat_interval",
                    "must be at least 10ms",
                ));
            }
            c.http.ws_heartbeat_interval = t;
        }
        if let Some(h) = &o.heartbeat_interval {
            match humantime::parse_duration(h) {
                Ok(d) => c.registry.heartbeat_interval = d,
                Err(e) => errs.push(FieldError::new(
                    "registry.heartbeat_interval",
                    format!("{h:?} is not a duration like 30s ({e})"),
                )),
            }
        } else if let Some(d) = f.registry.heartbeat_interval {
            c.registry.heartbeat_interval = d;
        }
        if let Some(n) = f.registry.stale_after_missed {
            c.registry.stale_after_missed = n;
        }
        if let Some(n) = f.registry.offline_after_missed {
            c.registry.offline_after_missed = n;
        }
        if let Some(d) = f.registry.flush_interval {
            c.registry.flush_interval = d;
        }
        if f.registry.sweep_interval.is_some() {
            c.registry.sweep_interval = f.registry.sweep_interval;
        }
        if let Some(n) = f.bus.subscriber_buffer {
            if n == 0 {
                errs.push(FieldError::new(
                    "bus.subscriber_buffer",
                    "must be at least 1",
                ));
            }
            c.bus.subscriber_buffer = n;
        }
        if let Some(d) = f.bus.dedup_window {
            c.bus.dedup_window = d;
        }
        let r = &mut c.bus.retention;
        if let Some(age) = f.bus.retention_max_age {
            if age < Duration::from_secs(1) {
                errs.push(FieldError::new(
                    "bus.retention_max_age",
                    "must be at least 1s",
                ));
            }
            r.max_age = Some(age);
        }
        if let Some(bytes) = f.bus.retention_max_bytes {
            if bytes == 0 {
                errs.push(FieldError::new(
                    "bus.retention_max_bytes",
                    "must be at least 1",
                ));
            }
            r.max_bytes = Some(bytes);
        }
        for (i, t) in f.bus.compact_topics.iter().flatten().enumerate() {
            match switchboard_bus::Pattern::parse(t) {
                Ok(p) => r.compact.push(p),
                Err(reason) => {
                    errs.push(FieldError::new(format!("bus.compact_topics[{i}]"), reason))
                }
            }
        }
        if let Some(every) = f.bus.retention_interval {
            if every < Duration::from_millis(10) {
                errs.push(FieldError::new(
                    "bus.retention_interval",
                    "must be at least 10ms",
                ));
            }
            r.interval = every;
        }
        if let Some(s) = f.store.synchronous {
            match s.parse() {
                Ok(v) => c.synchronous = v,
                Err(reason) => errs.push(FieldError::new("store.synchronous", reason)),
            }
        }
        if let Some(l) = f.tasks.lease {
            c.tasks.lease = l;
        }
        if let Some(n) = f.tasks.default_agent_capacity {
            c.tasks.default_agent_capacity = n;
        }
        c.build_auth(f.auth, f.rate_limit, o, &mut errs);
        if let Some(d) = f.audit.data_plane {
            c.http.audit_data_plane = d;
        }
        c.allow_plain_http = o.allow_plain_http;
        c.build_tls(f.tls, o, &mut errs);
        c.build_vault(f.vault, o, &mut errs);
        if !c.listen.ip().is_loopback() && !c.allow_plain_http && !c.tls.enabled() {
            errs.push(FieldError::new(
                "listen",
                format!(
                    "{} is not a loopback address: serving plain HTTP there would expose credentials; \
                     configure TLS (--tls-cert/--tls-key), or pass --insecure-plain-http to do it anyway",
                    c.listen
                ),
            ));
        }
        if !c.auth.enabled && !c.listen.ip().is_loopback() {
            errs.push(FieldError::new(
                "auth.enabled",
                "authentication may be turned off only on a loopback address",
            ));
        }
        if let Err(mut e) = c.auth.validate() {
            errs.append(&mut e);
        }
        if let Err(mut e) = c.registry.validate() {
            errs.append(&mut e);
        }
        if let Err(mut e) = c.tasks.validate() {
            errs.append(&mut e);
        }
        if errs.is_empty() {
            Ok(c)
        } else {
            Err(ServerError::Config(errs))
        }
    }

    fn build_vault(&mut self, f: FileVault, o: &Overrides, errs: &mut Vec<FieldError>) {
        self.vault.source = o
            .master_key
            .clone()
            .or(f.master_key_file.map(KeySource::File));
        if let Some(n) = f.max_value_bytes {
            if n == 0 || n > 1024 * 1024 {
                errs.push(FieldError::new(
                    "vault.max_value_bytes",
                    "must be 1 to 1048576",
                ));
            }
            self.vault.max_value_bytes = n;
        }
        // The master key protects the data: a copy of the data directory
        // must not carry it.
        if let Some(KeySource::File(file)) = &self.vault.source {
            let abs = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
            if abs(file).starts_with(abs(&self.data_dir)) {
                errs.push(FieldError::new(
                    "vault.master_key_file",
                    format!(
                        "{} is inside the data directory {}: keep the master key apart from the data it protects",
                        file.display(),
                        self.data_dir.display()
                    ),
                ));
            }
        }
    }

    fn build_tls(&mut self, f: FileTls, o: &Overrides, errs: &mut Vec<FieldError>) {
        let cert = o.tls_cert.clone().or(f.cert_file);
        let key = o.tls_key.clone().or(f.key_file);
        let self_signed = o.tls_self_signed || f.self_signed.unwrap_or(false);
        self.tls.mode = match (cert, key, self_signed) {
            (None, None, false) => TlsMode::Off,
            (None, None, true) => TlsMode::SelfSigned,
            (Some(cert), Some(key), false) => TlsMode::Files { cert, key },
            (Some(_), Some(_), true) => {
                errs.push(FieldError::new(
                    "tls.self_signed",
                    "give a certificate and key, or self_signed, not both",
                ));
                TlsMode::Off
            }
            (Some(_), None, _) | (None, Some(_), _) => {
                errs.push(FieldError::new(
                    "tls.cert_file",
                    "give both tls.cert_file and tls.key_file (--tls-cert, --tls-key)",
                ));
                TlsMode::Off
            }
        };
        self.tls.client_ca = o.tls_client_ca.clone().or(f.client_ca_file);
        self.tls.require_client_cert = f.require_client_cert.unwrap_or(false);
        if self.tls.client_ca.is_some() && !self.tls.enabled() {
            errs.push(FieldError::new(
                "tls.client_ca_file",
                "client certificates need TLS: give a certificate and key too",
            ));
        }
        if self.tls.require_client_cert && self.tls.client_ca.is_none() {
            errs.push(FieldError::new(
                "tls.require_client_cert",
                "needs tls.client_ca_file to check client certificates with",
            ));
        }
    }

    fn build_auth(
        &mut self,
        f: FileAuth,
        r: FileRateLimit,
        o: &Overrides,
        errs: &mut Vec<FieldError>,
    ) {
        let a = &mut self.auth;
        if let Some(e) = f.enabled {
            a.enabled = e;
        }
        if let Some(i) = f.issuer {
            a.issuer = i;
        }
        if let Some(au) = f.audience {
            a.audience = au;
        }
        if let Some(t) = f.token_ttl {
            a.token_ttl = t;
        }
        if let Some(l) = f.leeway {
            a.leeway = l;
        }
        if let Some(alg) = f.signing_algorithm {
            match alg.parse() {
                Ok(v) => a.signing_algorithm = v,
                Err(reason) => errs.push(FieldError::new("auth.signing_algorithm", reason)),
            }
        }
        a.admin_token = o.admin_token.clone().or(f.admin_token);
        if let Some(g) = f.secret_grace {
            a.secret_grace = g;
        }
        if let Some(n) = f.failure_threshold {
            a.failure_threshold = n;
        }
        if let Some(w) = f.failure_window {
            a.failure_window = w;
        }
        if let Some(w) = f.seal_window {
            a.seal_window = w;
        }
        if let Some(acl) = f.agent_acl {
            a.agent_acl = AclTemplate {
                publish: acl.publish,
                subscribe: acl.subscribe,
            };
        }
        let limits = &mut a.rate_limits;
        if let Some(e) = r.enabled {
            limits.enabled = e;
        }
        if let Some(q) = r.anonymous {
            limits.anonymous = q.quota("rate_limit.anonymous", errs);
        }
        for (name, q) in r.roles {
            let field = format!("rate_limit.roles.{name}");
            match name.parse::<Role>() {
                Ok(role) => {
                    let quota = q.quota(&field, errs);
                    limits.roles.insert(role, quota);
                }
                Err(reason) => errs.push(FieldError::new(field, reason)),
            }
        }
        for (name, q) in r.principals {
            let field = format!("rate_limit.principals.{name}");
            let quota = q.quota(&field, errs);
            limits.principals.insert(name, quota);
        }
    }

    /// The store settings this configuration implies.
    pub fn store(&self) -> SqliteConfig {
        let mut s = SqliteConfig::new(&self.data_dir);
        s.synchronous = self.synchronous;
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_beat_file() {
        let text = r#"
            listen = "127.0.0.1:9000"
            data_dir = "/from/file"
            [registry]
            heartbeat_interval = "5s"
            stale_after_missed = 2
            offline_after_missed = 4
        "#;
        let c = Config::from_toml(text, &Overrides::default()).expect("valid");
        assert_eq!(c.listen.port(), 9000);
        assert!(
            c.http_threads >= 1,
            "one serving thread per core by default"
        );
        let c3 = Config::from_toml("[http]\nthreads = 3\n", &Overrides::default()).expect("valid");
        assert_eq!(c3.http_threads, 3);
        assert_eq!(c.registry.heartbeat_interval, Duration::from_secs(5));
        let o = Overrides {
            listen: Some("127.0.0.1:0".into()),
            heartbeat_interval: Some("250ms".into()),
            ..Default::default()
        };
        let c = Config::from_toml(text, &o).expect("valid");
        assert_eq!(c.listen.port(), 0);
        assert_eq!(c.data_dir, PathBuf::from("/from/file"));
        assert_eq!(c.registry.heartbeat_interval, Duration::from_millis(250));
    }

    #[test]
    fn names_bad_settings() {
        let Err(ServerError::Config(errs)) = Config::from_toml(
            "listen = \"nowhere\"\n[http]\nthreads = 0\n[registry]\nstale_after_missed = 5\noffline_after_missed = 5\n",
            &Overrides::default(),
        ) else {
            panic!("expected a config error");
        };
        let fields: Vec<_> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            ["listen", "http.threads", "registry.offline_after_missed"]
        );
        assert!(Config::from_toml("lisen = 1", &Overrides::default()).is_err());
    }
}
