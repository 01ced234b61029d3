//! The agent's configuration: one TOML file. The doc comments of these structs
//! are the reference for every field (`docs/agent.md` points here).
//!
//! ```toml
//! [device]
//! id = "store-042-box-1"          # this box's device id, sent with every batch
//!
//! [edge]
//! database = "/var/lib/sluice/edge.db"
//! extension = "/usr/lib/sluice/sluice0.so"
//!
//! [cloud]
//! url = "postgres://sluice_device@cloud.example.com:5432/sluice"
//! # the password comes from $SLUICE_CLOUD_PASSWORD or password_file, never the url
//!
//! [sync]
//! batch_rows = 1000
//! ```
//!
//! Relative paths are relative to the directory of the configuration file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Deserialize;

/// Rows per batch: large enough to amortise a round trip, small enough that a
/// batch (about 10-20 KB compressed for telemetry) is cheap to retry.
pub const DEFAULT_BATCH_ROWS: u32 = 1000;
/// Attempts per batch before the table is reported as failed for this run.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;
/// First retry waits up to this long (full jitter).
pub const DEFAULT_BACKOFF_INITIAL_MS: u64 = 200;
/// No retry waits longer than this.
pub const DEFAULT_BACKOFF_MAX_MS: u64 = 30_000;
/// The environment variable that holds the cloud password by default.
pub const DEFAULT_PASSWORD_ENV: &str = "SLUICE_CLOUD_PASSWORD";
/// Seconds to wait for a TCP connection to the cloud.
pub const DEFAULT_CONNECT_TIMEOUT_SECS: u64 = 10;

/// The whole configuration file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub device: DeviceConfig,
    pub edge: EdgeConfig,
    pub cloud: CloudConfig,
    #[serde(default)]
    pub sync: SyncConfig,
}

/// `[device]`: who this box is.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    /// The device id sent with every batch (1 to 200 characters). The cloud
    /// keeps its ledger, clock skew and statistics per device id.
    pub id: String,
}

/// `[edge]`: the local SQLite database.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeConfig {
    /// Path of the SQLite database file that the pipeline writes.
    pub database: PathBuf,
    /// Path of the sluice SQLite extension (`sluice0.so`). Default: the
    /// environment variable `SLUICE_SQLITE_EXT`, else `sluice0.so` next to the
    /// `sluice` binary.
    pub extension: Option<PathBuf>,
    /// Milliseconds to wait for a lock held by the pipeline's writer.
    #[serde(default = "default_busy_timeout_ms")]
    pub busy_timeout_ms: u64,
}

fn default_busy_timeout_ms() -> u64 {
    5_000
}

/// `[cloud]`: the PostgreSQL database with the `sluice` extension.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudConfig {
    /// A `postgres://user@host:port/db` URL or a `key=value` connection
    /// string, without a password.
    pub url: String,
    /// The environment variable that holds the password (default
    /// `SLUICE_CLOUD_PASSWORD`). Unset or empty: no password.
    pub password_env: Option<String>,
    /// A file whose first line is the password; takes precedence over the
    /// environment. Keep it readable by the agent's user only.
    pub password_file: Option<PathBuf>,
    /// Seconds to wait for a connection.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_secs: u64,
}

fn default_connect_timeout() -> u64 {
    DEFAULT_CONNECT_TIMEOUT_SECS
}

/// `[sync]`: how batches move.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncConfig {
    /// Rows per batch (1 to 100000).
    #[serde(default = "default_batch_rows")]
    pub batch_rows: u32,
    /// Tables to sync; default every table tracked with `sluice_track`.
    pub tables: Option<Vec<String>>,
    /// Attempts per batch before the table counts as failed for this run.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// The first retry waits a random time up to this many milliseconds; each
    /// further retry doubles the ceiling.
    #[serde(default = "default_backoff_initial_ms")]
    pub backoff_initial_ms: u64,
    /// The ceiling of any wait between retries, in milliseconds.
    #[serde(default = "default_backoff_max_ms")]
    pub backoff_max_ms: u64,
}

fn default_batch_rows() -> u32 {
    DEFAULT_BATCH_ROWS
}
fn default_max_attempts() -> u32 {
    DEFAULT_MAX_ATTEMPTS
}
fn default_backoff_initial_ms() -> u64 {
    DEFAULT_BACKOFF_INITIAL_MS
}
fn default_backoff_max_ms() -> u64 {
    DEFAULT_BACKOFF_MAX_MS
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig {
            batch_rows: DEFAULT_BATCH_ROWS,
            tables: None,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            backoff_initial_ms: DEFAULT_BACKOFF_INITIAL_MS,
            backoff_max_ms: DEFAULT_BACKOFF_MAX_MS,
        }
    }
}

impl SyncConfig {
    pub fn backoff(&self) -> crate::backoff::Backoff {
        crate::backoff::Backoff {
            initial: Duration::from_millis(self.backoff_initial_ms),
            cap: Duration::from_millis(self.backoff_max_ms),
        }
    }
}

impl Config {
    /// Reads, parses and validates the file; errors name the file and field.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        let mut cfg = Config::parse(&text)
            .with_context(|| format!("invalid config file {}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        cfg.edge.database = base.join(&cfg.edge.database);
        if let Some(ext) = &cfg.edge.extension {
            cfg.edge.extension = Some(base.join(ext));
        }
        if let Some(pw) = &cfg.cloud.password_file {
            cfg.cloud.password_file = Some(base.join(pw));
        }
        Ok(cfg)
    }

    pub fn parse(text: &str) -> anyhow::Result<Config> {
        let cfg: Config = toml::from_str(text)?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> anyhow::Result<()> {
        let id = &self.device.id;
        if id.is_empty() || id.chars().count() > 200 {
            bail!("device.id must be 1 to 200 characters, got {:?}", id);
        }
        if url_has_password(&self.cloud.url) {
            bail!(
                "cloud.url must not contain a password; put it in the environment variable {} or in cloud.password_file",
                self.cloud.password_env.as_deref().unwrap_or(DEFAULT_PASSWORD_ENV)
            );
        }
        if !(1..=100_000).contains(&self.sync.batch_rows) {
            bail!(
                "sync.batch_rows must be between 1 and 100000, got {}",
                self.sync.batch_rows
            );
        }
        if self.sync.max_attempts == 0 {
            bail!("sync.max_attempts must be at least 1");
        }
        if self.sync.backoff_initial_ms > self.sync.backoff_max_ms {
            bail!("sync.backoff_initial_ms must not exceed sync.backoff_max_ms");
        }
        Ok(())
    }

    /// The extension path: config, then `SLUICE_SQLITE_EXT`, then next to the binary.
    pub fn extension_path(&self) -> PathBuf {
        if let Some(p) = &self.edge.extension {
            return p.clone();
        }
        if let Some(p) = std::env::var_os("SLUICE_SQLITE_EXT") {
            return PathBuf::from(p);
        }
        std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(|d| d.join("sluice0.so")))
            .unwrap_or_else(|| PathBuf::from("sluice0.so"))
    }
}

/// True when a URL or key=value connection string carries a password.
fn url_has_password(url: &str) -> bool {
    if let Some(rest) = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
    {
        let authority = rest.split(['/', '?']).next().unwrap_or("");
        if let Some((userinfo, _)) = authority.rsplit_once('@') {
            if userinfo.contains(':') {
                return true;
            }
        }
        return rest.contains("password=");
    }
    url.split_whitespace().any(|kv| kv.starts_with("password="))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [device]
        id = "box-1"
        [edge]
        database = "edge.db"
        [cloud]
        url = "postgres://device@127.0.0.1:5432/cloud"
    "#;

    #[test]
    fn minimal_config_gets_defaults() {
        let cfg = Config::parse(MINIMAL).unwrap();
        assert_eq!(cfg.sync.batch_rows, DEFAULT_BATCH_ROWS);
        assert_eq!(cfg.sync.max_attempts, DEFAULT_MAX_ATTEMPTS);
        assert_eq!(cfg.edge.busy_timeout_ms, 5000);
    }

    #[test]
    fn a_password_in_the_url_is_refused() {
        for url in [
            "postgres://device:secret@host/db",
            "postgresql://device:secret@host:5432/db?sslmode=require",
            "postgres://device@host/db?password=secret",
            "host=h user=u password=secret",
        ] {
            let text = MINIMAL.replace("postgres://device@127.0.0.1:5432/cloud", url);
            let err = Config::parse(&text).unwrap_err().to_string();
            assert!(err.contains("must not contain a password"), "{url}: {err}");
            assert!(
                !err.contains("secret"),
                "the error must not echo the secret"
            );
        }
    }

    #[test]
    fn unknown_fields_and_bad_values_name_the_field() {
        let err = format!(
            "{:#}",
            Config::parse(&format!("{MINIMAL}\n[sync]\nbatch_rowz = 5")).unwrap_err()
        );
        assert!(err.contains("batch_rowz"), "{err}");
        let err = Config::parse(&format!("{MINIMAL}\n[sync]\nbatch_rows = 0"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("sync.batch_rows"), "{err}");
        let err = Config::parse(&MINIMAL.replace("box-1", ""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("device.id"), "{err}");
    }

    #[test]
    fn relative_paths_follow_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sluice.toml");
        std::fs::write(&path, MINIMAL).unwrap();
        let cfg = Config::load(&path).unwrap();
        assert_eq!(cfg.edge.database, dir.path().join("edge.db"));
    }
}
