//! The TOML configuration file of API.md section 7, parsed strictly and validated once.
//!
//! Every section is parsed and checked at start, even those whose features come later,
//! so an operator learns about a typo before traffic does. Unknown keys are rejected with
//! their name. The config is read-only after start and shared by reference with every core.

mod messages;

use crate::outbound::HttpUrl;
use crate::webhooks::signing::WebhookKey;
use serde::{Deserialize, Serialize, Serializer};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Absolute ceilings on the tunable limits: a config can lower them, not exceed them.
pub const MAX_HEADER_BYTES_CEILING: usize = 64 * 1024;
pub const MAX_BODY_BYTES_CEILING: usize = 1024 * 1024;
pub const MAX_CONNECTIONS_PER_CORE_CEILING: usize = 1_000_000;
pub const SHARDS_MAX: u16 = 4096;
/// Ten years: a longer retention is a typo, and it keeps the milliseconds within a u64.
pub const RETENTION_HOURS_MAX: f64 = 87_600.0;
/// Expiry runs this often by default: cheap (it touches only what expires) and frequent
/// enough that memory follows the retention closely.
pub const RETENTION_CHECK_INTERVAL_MS_DEFAULT: u64 = 10_000;
/// A check at most once a day: retention must keep up with the load.
pub const RETENTION_CHECK_INTERVAL_MS_MAX: u64 = 86_400_000;
/// A merchant secret shorter than this is refused: HMAC-SHA256 keys should carry at least
/// 256 bits, and 32 bytes is what `openssl rand -hex 16` (or the demo merchant's 64 hex
/// digits) comfortably exceeds.
pub const SECRET_BYTES_MIN: usize = 32;
/// What `check-config` prints in place of a literal secret. payd refuses it as a secret,
/// so a printed config cannot go live with a known placeholder as a merchant's key.
pub const REDACTED_SECRET: &str = "<redacted>";

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub limits: LimitsConfig,
    pub security: SecurityConfig,
    pub storage: StorageConfig,
    pub acquirer: AcquirerConfig,
    pub webhooks: WebhooksConfig,
    pub log: LogConfig,
    pub websocket: WebSocketConfig,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub merchants: Vec<MerchantConfig>,
    /// Outbound TLS: the acquirer and webhook receivers.
    pub tls: OutboundTlsConfig,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub cores: Cores,
    pub max_connections_per_core: usize,
    /// How long shutdown waits for in-flight requests before it exits anyway.
    pub shutdown_timeout_ms: u64,
    /// Commands waiting in one shard's inbox before creates get 503 `overloaded`.
    pub shard_inbox_capacity: usize,
    /// `[server.tls]`: when present, every core's listener speaks HTTPS only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<ServerTlsConfig>,
}

/// The listener's certificate chain and private key, both PEM files. Only their paths
/// live in the config: the key is read where it is used and never printed.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// `[tls]`: certificates trusted for outbound calls besides the system's roots.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboundTlsConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extra_ca_file: Option<PathBuf>,
}

/// `cores = [0, 1]` or `cores = "all"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cores {
    All,
    List(Vec<usize>),
}

impl<'de> Deserialize<'de> for Cores {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Cores, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Word(String),
            List(Vec<usize>),
        }
        // The message names the forms, never the word that was given.
        let expected = || serde::de::Error::custom(CORES_FORM);
        match Raw::deserialize(deserializer).map_err(|_| expected())? {
            Raw::Word(word) if word == "all" => Ok(Cores::All),
            Raw::Word(_) => Err(expected()),
            Raw::List(list) => Ok(Cores::List(list)),
        }
    }
}

const CORES_FORM: &str = "expected \"all\" or a list of CPU ids such as [0, 1]";

impl Serialize for Cores {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Cores::All => serializer.serialize_str("all"),
            Cores::List(list) => list.serialize(serializer),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    pub max_header_bytes: usize,
    pub max_body_bytes: usize,
    pub request_timeout_ms: u64,
    pub idle_timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityConfig {
    pub timestamp_tolerance_secs: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    Fsync,
    None,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    pub data_dir: PathBuf,
    pub durability: Durability,
    /// Fractional hours are allowed (tests use seconds); integers parse too.
    pub retention_hours: f64,
    /// How often each shard expires old payments and deletes dead segments.
    pub retention_check_interval_ms: u64,
    /// A log segment rolls over at this size; retention deletes whole segments.
    pub segment_bytes: u64,
    /// Shard count used when the data directory is created; 0 means one per core.
    /// Afterwards the manifest's count wins.
    pub shards: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AcquirerMode {
    Simulated,
    Http,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AcquirerConfig {
    pub mode: AcquirerMode,
    pub url: String,
    pub response_timeout_ms: u64,
    pub attempt_timeout_ms: u64,
    pub max_attempts: u32,
    /// Simulated acquirer: base latency and uniform jitter added to every answer.
    pub latency_ms: u64,
    pub jitter_ms: u64,
    /// HTTP acquirer: keep-alive connections per core.
    pub pool_size: usize,
}

/// Events one shard holds in memory by default (`webhooks.max_backlog_per_shard`); the
/// rest wait in its log for a reload. An event
/// in memory is its payment object (a few hundred bytes, usually), so this bounds a
/// shard's outbox to a few MiB at most.
pub const BACKLOG_EVENTS_PER_SHARD_MAX: usize = 4096;
/// The highest `webhooks.max_backlog_per_shard` the config accepts: about 1 GiB of
/// typical events per shard, far past any sensible setting.
pub const BACKLOG_EVENTS_PER_SHARD_CEILING: usize = 1 << 20;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhooksConfig {
    pub retry_schedule_secs: Vec<u64>,
    pub timeout_ms: u64,
    /// Events each shard holds in memory; the rest wait in its log and are loaded as the
    /// backlog drains.
    pub max_backlog_per_shard: usize,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// One line per request, buffered per core, written to `dir/access-core<N>.log`.
    pub access_log: bool,
    /// Where access logs go; empty means `<data_dir>/logs`.
    pub dir: PathBuf,
}

/// `GET /v1/ws`: requests as WebSocket messages.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebSocketConfig {
    /// A message (after reassembly of its fragments) over this closes with 1009.
    pub max_message_bytes: usize,
    /// Requests of one connection whose answers are not yet written; the extra get 429.
    pub max_in_flight_per_connection: usize,
    /// payd pings this often, and drops a connection silent for two intervals.
    pub ping_interval_ms: u64,
}

/// Bounds of the `[websocket]` keys.
pub const WEBSOCKET_MESSAGE_BYTES_MIN: usize = 1024;
pub const WEBSOCKET_MESSAGE_BYTES_CEILING: usize = 1024 * 1024;
pub const WEBSOCKET_IN_FLIGHT_CEILING: usize = 4096;
pub const WEBSOCKET_PING_INTERVAL_MS_MIN: u64 = 100;
pub const WEBSOCKET_PING_INTERVAL_MS_MAX: u64 = 3_600_000;

impl Default for WebSocketConfig {
    fn default() -> WebSocketConfig {
        WebSocketConfig {
            max_message_bytes: 20_480,
            max_in_flight_per_connection: 64,
            ping_interval_ms: 30_000,
        }
    }
}

/// Serialized (by `check-config`) with literal secrets redacted; `env:` and `file:`
/// sources are shown, since they name where a secret lives, not the secret.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MerchantConfig {
    pub id: String,
    /// Each a literal, `env:NAME` or `file:PATH`.
    #[serde(serialize_with = "serialize_redacted_list")]
    pub secrets: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_url: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "serialize_redacted_option"
    )]
    pub webhook_secret: Option<String>,
}

fn serialize_redacted_list<S: Serializer>(
    sources: &[String],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    let shown: Vec<String> = sources.iter().map(|source| redact(source)).collect();
    shown.serialize(serializer)
}

fn serialize_redacted_option<S: Serializer>(
    source: &Option<String>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    source.as_deref().map(redact).serialize(serializer)
}

impl fmt::Debug for MerchantConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MerchantConfig")
            .field("id", &self.id)
            .field(
                "secrets",
                &self.secrets.iter().map(|s| redact(s)).collect::<Vec<_>>(),
            )
            .field("webhook_url", &self.webhook_url)
            .field(
                "webhook_secret",
                &self.webhook_secret.as_deref().map(redact),
            )
            .finish()
    }
}

/// Reads a secret from its source: a literal, `env:NAME` or `file:PATH` (one trailing
/// newline of a file is ignored). Errors name the source, never the secret.
pub fn resolve_secret(source: &str) -> Result<Vec<u8>, String> {
    if let Some(name) = source.strip_prefix("env:") {
        return std::env::var(name)
            .map(String::into_bytes)
            .map_err(|_| format!("environment variable {name} is not set or not UTF-8"));
    }
    if let Some(path) = source.strip_prefix("file:") {
        let mut bytes =
            std::fs::read(path).map_err(|e| format!("cannot read secret file {path}: {e}"))?;
        if bytes.last() == Some(&b'\n') {
            bytes.pop();
            if bytes.last() == Some(&b'\r') {
                bytes.pop();
            }
        }
        return Ok(bytes);
    }
    Ok(source.as_bytes().to_vec())
}

/// Shows where a secret comes from, never the secret itself.
pub fn redact(source: &str) -> String {
    if source.starts_with("env:") || source.starts_with("file:") {
        source.to_string()
    } else {
        REDACTED_SECRET.to_string()
    }
}

impl Default for ServerConfig {
    fn default() -> ServerConfig {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            cores: Cores::All,
            max_connections_per_core: 10_000,
            shutdown_timeout_ms: 10_000,
            shard_inbox_capacity: 4096,
            tls: None,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> LimitsConfig {
        LimitsConfig {
            max_header_bytes: 8192,
            max_body_bytes: 16384,
            request_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
        }
    }
}

impl Default for SecurityConfig {
    fn default() -> SecurityConfig {
        SecurityConfig {
            timestamp_tolerance_secs: 300,
        }
    }
}

impl Default for StorageConfig {
    fn default() -> StorageConfig {
        StorageConfig {
            data_dir: PathBuf::from("./payd-data"),
            durability: Durability::Fsync,
            retention_hours: 168.0,
            retention_check_interval_ms: RETENTION_CHECK_INTERVAL_MS_DEFAULT,
            segment_bytes: crate::wal::SEGMENT_BYTES_DEFAULT,
            shards: 0,
        }
    }
}

impl Default for AcquirerConfig {
    fn default() -> AcquirerConfig {
        AcquirerConfig {
            mode: AcquirerMode::Simulated,
            url: "http://127.0.0.1:9100".to_string(),
            response_timeout_ms: 2000,
            attempt_timeout_ms: 5000,
            max_attempts: 5,
            latency_ms: 0,
            jitter_ms: 0,
            pool_size: 256,
        }
    }
}

impl Default for WebhooksConfig {
    fn default() -> WebhooksConfig {
        WebhooksConfig {
            retry_schedule_secs: vec![5, 300, 1800, 7200, 18000, 36000, 36000],
            timeout_ms: 15_000,
            max_backlog_per_shard: BACKLOG_EVENTS_PER_SHARD_MAX,
        }
    }
}

impl Default for LogConfig {
    fn default() -> LogConfig {
        LogConfig {
            access_log: true,
            dir: PathBuf::new(),
        }
    }
}

/// A config error names the key at fault; an error of the file as a whole (unreadable,
/// not TOML) has an empty key and says where in the file instead.
#[derive(Debug)]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "config file: {}", self.message)
        } else {
            write!(f, "config key `{}`: {}", self.key, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

fn error(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.to_string(),
        message: message.into(),
    }
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            error(
                "",
                format!("cannot read {}: {}", path.display(), io_reason(&e)),
            )
        })?;
        Config::parse(&text).map_err(|mut e| {
            if e.key.is_empty() {
                e.message = format!("{}: {}", path.display(), e.message);
            }
            e
        })
    }

    /// Parses and validates config text. Errors name the key (`server.cores`, ...), or
    /// the line and column when the text is not TOML at all.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        check_syntax(text)?;
        let config: Config = serde_path_to_error(text)?;
        config.validate()?;
        Ok(config)
    }

    /// The effective config as TOML that `parse` accepts again: every key with its value
    /// or default, `log.dir` resolved, literal secrets shown as `REDACTED_SECRET`.
    pub fn to_toml_redacted(&self) -> Result<String, String> {
        let mut shown = self.clone();
        shown.log.dir = self.log_dir();
        toml::to_string(&shown).map_err(|e| format!("cannot print the config as TOML: {e}"))
    }

    /// The CPU ids this process will run an executor on, checked against the machine.
    pub fn core_ids(&self) -> Result<Vec<usize>, ConfigError> {
        let available = available_cpus();
        let cores = match &self.server.cores {
            Cores::All => available,
            Cores::List(list) => {
                for cpu in list {
                    if !available.contains(cpu) {
                        return Err(error(
                            "server.cores",
                            format!("CPU {cpu} does not exist or is not available to this process (available: {available:?})"),
                        ));
                    }
                }
                list.clone()
            }
        };
        Ok(cores)
    }

    pub fn log_dir(&self) -> PathBuf {
        if self.log.dir.as_os_str().is_empty() {
            self.storage.data_dir.join("logs")
        } else {
            self.log.dir.clone()
        }
    }

    /// `storage.retention_hours` in milliseconds (validated: finite, positive, bounded).
    pub fn retention_ms(&self) -> u64 {
        (self.storage.retention_hours * 3_600_000.0)
            .round()
            .max(1.0) as u64
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.validate_server()?;
        self.validate_limits()?;
        self.validate_storage()?;
        self.validate_acquirer()?;
        self.validate_webhooks()?;
        self.validate_websocket()?;
        self.validate_merchants()?;
        self.validate_tls()?;
        Ok(())
    }

    /// Whether any outbound call goes over TLS (then the system's roots are loaded).
    pub fn calls_https(&self) -> bool {
        let https = |url: &str| HttpUrl::parse(url).is_ok_and(|url| url.tls);
        (self.acquirer.mode == AcquirerMode::Http && https(&self.acquirer.url))
            || self
                .merchants
                .iter()
                .filter_map(|merchant| merchant.webhook_url.as_deref())
                .any(https)
    }

    /// Reads the TLS files as `serve` will: the listener's chain and key must parse and
    /// belong together, and the extra roots must be CA certificates.
    fn validate_tls(&self) -> Result<(), ConfigError> {
        if let Some(tls) = &self.server.tls {
            let provider = crate::tls::provider();
            crate::tls::load_identity(&tls.cert_file, &tls.key_file, &provider).map_err(
                |e| match e {
                    crate::tls::IdentityError::Certificate(message) => {
                        error("server.tls.cert_file", message)
                    }
                    crate::tls::IdentityError::Key(message) => {
                        error("server.tls.key_file", message)
                    }
                },
            )?;
        }
        if let Some(path) = &self.tls.extra_ca_file {
            crate::tls::check_extra_roots(path).map_err(|e| error("tls.extra_ca_file", e))?;
        }
        Ok(())
    }

    fn validate_server(&self) -> Result<(), ConfigError> {
        if let Cores::List(list) = &self.server.cores {
            if list.is_empty() {
                return Err(error("server.cores", "must name at least one CPU"));
            }
            let mut sorted = list.clone();
            sorted.sort_unstable();
            sorted.dedup();
            if sorted.len() != list.len() {
                return Err(error("server.cores", "lists a CPU twice"));
            }
        }
        self.core_ids()?;
        let connections = self.server.max_connections_per_core;
        if connections == 0 || connections > MAX_CONNECTIONS_PER_CORE_CEILING {
            return Err(error(
                "server.max_connections_per_core",
                format!("must be 1..={MAX_CONNECTIONS_PER_CORE_CEILING}"),
            ));
        }
        if self.server.shard_inbox_capacity == 0 || self.server.shard_inbox_capacity > 1 << 20 {
            return Err(error("server.shard_inbox_capacity", "must be 1..=1048576"));
        }
        Ok(())
    }

    fn validate_limits(&self) -> Result<(), ConfigError> {
        let limits = &self.limits;
        if limits.max_header_bytes < 256 || limits.max_header_bytes > MAX_HEADER_BYTES_CEILING {
            return Err(error(
                "limits.max_header_bytes",
                format!("must be 256..={MAX_HEADER_BYTES_CEILING}"),
            ));
        }
        if limits.max_body_bytes == 0 || limits.max_body_bytes > MAX_BODY_BYTES_CEILING {
            return Err(error(
                "limits.max_body_bytes",
                format!("must be 1..={MAX_BODY_BYTES_CEILING}"),
            ));
        }
        if limits.request_timeout_ms == 0 {
            return Err(error("limits.request_timeout_ms", "must be above 0"));
        }
        if limits.idle_timeout_ms == 0 {
            return Err(error("limits.idle_timeout_ms", "must be above 0"));
        }
        Ok(())
    }

    fn validate_storage(&self) -> Result<(), ConfigError> {
        if self.storage.data_dir.as_os_str().is_empty() {
            return Err(error("storage.data_dir", "must not be empty"));
        }
        let hours = self.storage.retention_hours;
        if !(hours.is_finite() && hours > 0.0 && hours <= RETENTION_HOURS_MAX) {
            return Err(error(
                "storage.retention_hours",
                format!("must be above 0 and at most {RETENTION_HOURS_MAX}"),
            ));
        }
        let interval = self.storage.retention_check_interval_ms;
        if !(1..=RETENTION_CHECK_INTERVAL_MS_MAX).contains(&interval) {
            return Err(error(
                "storage.retention_check_interval_ms",
                format!("must be 1..={RETENTION_CHECK_INTERVAL_MS_MAX}"),
            ));
        }
        let segment = self.storage.segment_bytes;
        let segment_range = crate::wal::SEGMENT_BYTES_MIN..=crate::wal::SEGMENT_BYTES_CEILING;
        if !segment_range.contains(&segment) {
            return Err(error(
                "storage.segment_bytes",
                format!(
                    "must be {}..={}",
                    segment_range.start(),
                    segment_range.end()
                ),
            ));
        }
        if self.storage.shards > SHARDS_MAX {
            return Err(error("storage.shards", format!("must be 0..={SHARDS_MAX}")));
        }
        Ok(())
    }

    fn validate_acquirer(&self) -> Result<(), ConfigError> {
        let acquirer = &self.acquirer;
        if let Err(problem) = crate::outbound::HttpUrl::parse(&acquirer.url) {
            return Err(error("acquirer.url", problem.to_string()));
        }
        if acquirer.response_timeout_ms == 0 {
            return Err(error("acquirer.response_timeout_ms", "must be above 0"));
        }
        if acquirer.attempt_timeout_ms == 0 {
            return Err(error("acquirer.attempt_timeout_ms", "must be above 0"));
        }
        if acquirer.max_attempts == 0 || acquirer.max_attempts > 20 {
            return Err(error("acquirer.max_attempts", "must be 1..=20"));
        }
        if acquirer.pool_size == 0 || acquirer.pool_size > 4096 {
            return Err(error("acquirer.pool_size", "must be 1..=4096"));
        }
        Ok(())
    }

    fn validate_webhooks(&self) -> Result<(), ConfigError> {
        if self.webhooks.retry_schedule_secs.len() > 32 {
            return Err(error("webhooks.retry_schedule_secs", "at most 32 retries"));
        }
        if self.webhooks.timeout_ms == 0 {
            return Err(error("webhooks.timeout_ms", "must be above 0"));
        }
        let backlog = self.webhooks.max_backlog_per_shard;
        if backlog == 0 || backlog > BACKLOG_EVENTS_PER_SHARD_CEILING {
            return Err(error(
                "webhooks.max_backlog_per_shard",
                "must be 1..=1048576",
            ));
        }
        Ok(())
    }

    fn validate_websocket(&self) -> Result<(), ConfigError> {
        let websocket = &self.websocket;
        let bytes = WEBSOCKET_MESSAGE_BYTES_MIN..=WEBSOCKET_MESSAGE_BYTES_CEILING;
        if !bytes.contains(&websocket.max_message_bytes) {
            return Err(error(
                "websocket.max_message_bytes",
                format!("must be {}..={}", bytes.start(), bytes.end()),
            ));
        }
        let in_flight = websocket.max_in_flight_per_connection;
        if !(1..=WEBSOCKET_IN_FLIGHT_CEILING).contains(&in_flight) {
            return Err(error(
                "websocket.max_in_flight_per_connection",
                format!("must be 1..={WEBSOCKET_IN_FLIGHT_CEILING}"),
            ));
        }
        let ping = WEBSOCKET_PING_INTERVAL_MS_MIN..=WEBSOCKET_PING_INTERVAL_MS_MAX;
        if !ping.contains(&websocket.ping_interval_ms) {
            return Err(error(
                "websocket.ping_interval_ms",
                format!("must be {}..={}", ping.start(), ping.end()),
            ));
        }
        Ok(())
    }

    fn validate_merchants(&self) -> Result<(), ConfigError> {
        for (index, merchant) in self.merchants.iter().enumerate() {
            let key = |field: &str| format!("merchants[{index}].{field}");
            let id_ok = !merchant.id.is_empty()
                && merchant.id.len() <= 64
                && merchant
                    .id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !id_ok {
                return Err(error(&key("id"), "1-64 chars of A-Z a-z 0-9 _ -"));
            }
            if self.merchants[..index].iter().any(|m| m.id == merchant.id) {
                return Err(error(
                    &key("id"),
                    format!("merchant \"{}\" is listed twice", merchant.id),
                ));
            }
            if merchant.secrets.is_empty() {
                return Err(error(&key("secrets"), "at least one secret is required"));
            }
            for (position, source) in merchant.secrets.iter().enumerate() {
                check_secret(&key(&format!("secrets[{position}]")), source)?;
            }
            if let Some(source) = &merchant.webhook_secret {
                if source == REDACTED_SECRET {
                    return Err(placeholder_error(&key("webhook_secret")));
                }
                let secret = resolve_secret(source)
                    .map_err(|message| error(&key("webhook_secret"), message))?;
                // The key's own error names the rule broken, never the secret.
                WebhookKey::parse(&secret)
                    .map_err(|e| error(&key("webhook_secret"), e.to_string()))?;
            }
            if let Some(url) = &merchant.webhook_url {
                HttpUrl::parse(url).map_err(|e| error(&key("webhook_url"), e.to_string()))?;
                if merchant.webhook_secret.is_none() {
                    return Err(error(
                        &key("webhook_secret"),
                        "is required when webhook_url is set (events are signed)",
                    ));
                }
            }
        }
        Ok(())
    }
}

/// One merchant secret source: readable, and long enough to be a key. The message names
/// the source (`env:NAME`, `file:PATH` or "a literal"), never the secret.
fn check_secret(key: &str, source: &str) -> Result<(), ConfigError> {
    if source == REDACTED_SECRET {
        return Err(placeholder_error(key));
    }
    let secret = resolve_secret(source).map_err(|message| error(key, message))?;
    if secret.len() < SECRET_BYTES_MIN {
        let what = match redact(source) {
            shown if shown == REDACTED_SECRET => "this literal secret".to_string(),
            shown => format!("the secret from {shown}"),
        };
        return Err(error(
            key,
            format!(
                "a merchant secret must be at least {SECRET_BYTES_MIN} bytes and {what} is \
                 shorter (make one with `openssl rand -hex 32`)"
            ),
        ));
    }
    Ok(())
}

fn placeholder_error(key: &str) -> ConfigError {
    error(
        key,
        format!(
            "is {REDACTED_SECRET}, the placeholder check-config prints for a literal secret: \
             put the secret back, or give it as \"env:NAME\" or \"file:PATH\""
        ),
    )
}

/// An I/O error's reason without Rust's `(os error N)` suffix.
fn io_reason(error: &std::io::Error) -> String {
    let text = error.to_string();
    match text.find(" (os error") {
        Some(at) => text[..at].to_string(),
        None => text,
    }
}

/// Parses the text as TOML alone, so that a syntax error is reported as one, with its
/// line and column, before any key is looked at.
fn check_syntax(text: &str) -> Result<(), ConfigError> {
    let Err(e) = text.parse::<toml::Table>() else {
        return Ok(());
    };
    let position = e
        .span()
        .map(|span| {
            let (line, column) = messages::line_and_column(text, span.start);
            format!(" at line {line}, column {column}")
        })
        .unwrap_or_default();
    Err(error(
        "",
        format!(
            "not valid TOML{position}: {}",
            messages::plain_syntax_message(e.message())
        ),
    ))
}

/// Deserializes with the dotted path of the failing key in the error, and its message in
/// plain words (`messages`). Never a snippet of the file: a snippet could show a secret.
fn serde_path_to_error(text: &str) -> Result<Config, ConfigError> {
    let deserializer = toml::Deserializer::new(text);
    serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let raw = inner.message();
        let mut key = if path == "." { String::new() } else { path };
        if let Some(field) = unknown_field_name(raw) {
            if key.is_empty() {
                key = field;
            } else if !key.ends_with(&format!(".{field}")) && key != field {
                key = format!("{key}.{field}");
            }
        }
        let message = messages::plain_field_message(&key, raw).unwrap_or_else(|| {
            // Our own messages (and the parser's) state the expected form and quote no
            // value; anything else has its quoted parts blanked out.
            if raw.starts_with("expected ") {
                raw.to_string()
            } else {
                without_quoted_values(raw)
            }
        });
        let line = inner
            .span()
            .map(|span| format!(" (line {})", messages::line_and_column(text, span.start).0))
            .unwrap_or_default();
        ConfigError {
            key,
            message: format!("{message}{line}"),
        }
    })
}

/// serde quotes the offending value in its messages (`invalid type: string "..."`); a
/// value might be a secret, so every double-quoted string is blanked out.
fn without_quoted_values(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut quoted = false;
    for c in message.chars() {
        match (c, quoted) {
            ('"', false) => {
                quoted = true;
                out.push_str("(value hidden)");
            }
            ('"', true) => quoted = false,
            (_, false) => out.push(c),
            (_, true) => {}
        }
    }
    out
}

/// Pulls the offending key out of serde's messages (`unknown field `x``, `missing field `y``).
fn unknown_field_name(message: &str) -> Option<String> {
    for prefix in ["unknown field `", "missing field `"] {
        if let Some(rest) = message.strip_prefix(prefix) {
            return rest.split('`').next().map(str::to_string);
        }
    }
    None
}

/// CPUs this process may run on (its affinity mask), in ascending order.
pub fn available_cpus() -> Vec<usize> {
    let mut cpus: Vec<usize> = core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .map(|core| core.id)
        .collect();
    cpus.sort_unstable();
    cpus
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_key_and_hide_values() {
        let error = Config::parse("[server]\nbogus = 1\n").unwrap_err();
        assert_eq!(error.key, "server.bogus");
        let error =
            Config::parse("[[merchants]]\nid = \"m\"\nsecrets = \"sk_live_1\"\n").unwrap_err();
        assert_eq!(error.key, "merchants[0].secrets");
        assert!(!error.to_string().contains("sk_live_1"), "{error}");
        let error = Config::parse("[limits]\nmax_body_bytes = 0\n").unwrap_err();
        assert_eq!(error.key, "limits.max_body_bytes");
    }

    #[test]
    fn a_webhook_url_needs_a_valid_whsec_secret_and_errors_hide_it() {
        let merchant = |extra: &str| {
            Config::parse(&format!(
                "[[merchants]]\nid = \"m\"\nsecrets = [\"test-only-secret-0123456789abcdef\"]\n{extra}\n"
            ))
        };
        let url = "webhook_url = \"http://127.0.0.1:9200/hooks\"";
        let error = merchant(url).unwrap_err();
        assert_eq!(error.key, "merchants[0].webhook_secret");
        for bad in [
            "whsec_not-base64!",
            "sk_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "whsec_AAAA",
        ] {
            let error = merchant(&format!("{url}\nwebhook_secret = \"{bad}\"")).unwrap_err();
            assert_eq!(error.key, "merchants[0].webhook_secret", "{bad}");
            assert!(!error.to_string().contains(bad), "{error}");
        }
        let good = "webhook_secret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"";
        assert!(merchant(&format!("{url}\n{good}")).is_ok());
        let error = merchant(&format!("webhook_url = \"http://\"\n{good}")).unwrap_err();
        assert_eq!(error.key, "merchants[0].webhook_url");
    }

    #[test]
    fn the_webhook_backlog_bound_is_checked_by_its_key() {
        for bad in ["0", "1048577"] {
            let text = format!("[webhooks]\nmax_backlog_per_shard = {bad}\n");
            let error = Config::parse(&text).unwrap_err();
            assert_eq!(error.key, "webhooks.max_backlog_per_shard", "{bad}");
        }
        let config = Config::parse("[webhooks]\nmax_backlog_per_shard = 3\n").unwrap();
        assert_eq!(config.webhooks.max_backlog_per_shard, 3);
        let default = Config::parse("").unwrap();
        assert_eq!(default.webhooks.max_backlog_per_shard, 4096);
    }

    #[test]
    fn retention_hours_take_integers_and_fractions_above_zero() {
        let parse = |text: &str| Config::parse(&format!("[storage]\n{text}\n"));
        let whole = parse("retention_hours = 2").unwrap();
        assert_eq!(whole.retention_ms(), 7_200_000);
        let second = parse("retention_hours = 0.000277777777").unwrap();
        assert_eq!(second.retention_ms(), 1_000);
        for bad in ["0", "-1", "0.0", "87601", "nan", "inf"] {
            let error = parse(&format!("retention_hours = {bad}")).unwrap_err();
            assert_eq!(error.key, "storage.retention_hours", "{bad}");
        }
        let error = parse("retention_check_interval_ms = 0").unwrap_err();
        assert_eq!(error.key, "storage.retention_check_interval_ms");
        let error = parse("segment_bytes = 1024").unwrap_err();
        assert_eq!(error.key, "storage.segment_bytes");
        assert_eq!(
            Config::default().storage.retention_check_interval_ms,
            RETENTION_CHECK_INTERVAL_MS_DEFAULT
        );
    }

    #[test]
    fn websocket_keys_have_the_contract_defaults_and_bounds() {
        let default = Config::parse("").unwrap();
        assert_eq!(default.websocket.max_message_bytes, 20_480);
        assert_eq!(default.websocket.max_in_flight_per_connection, 64);
        assert_eq!(default.websocket.ping_interval_ms, 30_000);
        for (key, bad) in [
            ("max_message_bytes", "1023"),
            ("max_message_bytes", "1048577"),
            ("max_in_flight_per_connection", "0"),
            ("max_in_flight_per_connection", "4097"),
            ("ping_interval_ms", "99"),
            ("ping_interval_ms", "3600001"),
        ] {
            let error = Config::parse(&format!("[websocket]\n{key} = {bad}\n")).unwrap_err();
            assert_eq!(error.key, format!("websocket.{key}"), "{bad}");
        }
        let error = Config::parse("[websocket]\nbogus = 1\n").unwrap_err();
        assert_eq!(error.key, "websocket.bogus");
    }

    #[test]
    fn secrets_resolve_from_literal_env_and_file() {
        assert_eq!(resolve_secret("literal").unwrap(), b"literal");
        std::env::set_var("PAYD_CONFIG_TEST_SECRET", "from-env");
        assert_eq!(
            resolve_secret("env:PAYD_CONFIG_TEST_SECRET").unwrap(),
            b"from-env"
        );
        let error = resolve_secret("env:PAYD_CONFIG_TEST_UNSET").unwrap_err();
        assert!(error.contains("PAYD_CONFIG_TEST_UNSET"));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "from-file\n").unwrap();
        assert_eq!(
            resolve_secret(&format!("file:{}", path.display())).unwrap(),
            b"from-file"
        );
        assert!(resolve_secret("file:/nonexistent/secret")
            .unwrap_err()
            .contains("/nonexistent/secret"));
    }

    #[test]
    fn secrets_shorter_than_the_minimum_are_refused_by_position() {
        let merchant = |secrets: &str| {
            Config::parse(&format!("[[merchants]]\nid = \"m\"\nsecrets = {secrets}\n"))
        };
        let short = "s".repeat(SECRET_BYTES_MIN - 1);
        let long = "s".repeat(SECRET_BYTES_MIN);
        assert!(merchant(&format!("[\"{long}\"]")).is_ok());
        let error = merchant(&format!("[\"{long}\", \"{short}\"]")).unwrap_err();
        assert_eq!(error.key, "merchants[0].secrets[1]");
        assert!(error.message.contains("at least 32 bytes"), "{error}");
        assert!(!error.to_string().contains(&short), "{error}");
        let error = merchant(&format!("[\"{REDACTED_SECRET}\"]")).unwrap_err();
        assert_eq!(error.key, "merchants[0].secrets[0]");
        assert!(error.message.contains("placeholder"), "{error}");
    }

    #[test]
    fn the_printed_config_parses_back_to_the_same_config() {
        std::env::set_var("PAYD_CONFIG_TEST_LONG_SECRET", "e".repeat(40));
        let text = "[server]\ncores = [0]\n[storage]\nretention_hours = 0.5\n\
                    [webhooks]\nretry_schedule_secs = []\n\
                    [[merchants]]\nid = \"m\"\nsecrets = [\"env:PAYD_CONFIG_TEST_LONG_SECRET\"]\n";
        let config = Config::parse(text).unwrap();
        let printed = config.to_toml_redacted().unwrap();
        let again = Config::parse(&printed).unwrap_or_else(|e| panic!("{e}\n{printed}"));
        assert_eq!(
            format!("{again:?}"),
            format!(
                "{:?}",
                Config {
                    log: LogConfig {
                        dir: config.log_dir(),
                        ..config.log.clone()
                    },
                    ..config.clone()
                }
            )
        );
        assert!(printed.contains("dir = \"./payd-data/logs\""), "{printed}");
        assert_eq!(again.to_toml_redacted().unwrap(), printed);
    }

    #[test]
    fn syntax_errors_name_line_and_column_not_a_key() {
        let error = Config::parse("[server]\nlisten = \"127.0.0.1:1\"\n[limits\n").unwrap_err();
        assert_eq!(error.key, "");
        assert!(error.message.contains("line 3, column 8"), "{error}");
        assert!(
            error.to_string().starts_with("config file: not valid TOML"),
            "{error}"
        );
    }

    #[test]
    fn an_unreadable_secret_file_is_a_config_error() {
        let text = "[[merchants]]\nid = \"m\"\nsecrets = [\"file:/nonexistent/s\"]\n";
        assert_eq!(
            Config::parse(text).unwrap_err().key,
            "merchants[0].secrets[0]"
        );
    }
}
