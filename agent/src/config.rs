//! The agent's configuration: one TOML file. The doc comments of these structs
//! are the reference for every field (`docs/agent.md` points here).
//!
//! ```toml
//! [device]
//! id = "store-042-box-1"          # this box's device id, sent with every batch
//! time_zone = "Europe/Berlin"     # the zone of zoneless timestamps (default UTC)
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
//!
//! [pull]
//! listen = true                   # LISTEN for cloud commits; false: poll
//! ```
//!
//! Relative paths are relative to the directory of the configuration file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Deserialize;
pub use sluice_wire::DrainOrder;

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
    #[serde(default)]
    pub schedule: ScheduleConfig,
    #[serde(default)]
    pub cleanup: CleanupConfig,
    #[serde(default)]
    pub budget: BudgetConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub pull: PullConfig,
    /// `[embed]`: the key-frame embedding job (see `docs/inference.md`);
    /// without it the `embed` job is skipped.
    pub embed: Option<crate::embed_config::EmbedJobConfig>,
}

/// `[schedule]`: when `sluice run` runs each job. Cron expressions with a
/// seconds field (`sec min hour day month weekday`), in UTC; `"off"` disables
/// a job. A job never runs twice at once (jobs run one after another), and a
/// run missed while the agent was down runs once at start.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScheduleConfig {
    /// Rollups (`sluice_rollup_run`): [`DEFAULT_ROLLUP_CRON`].
    pub rollup: String,
    /// Embeddings of key-frame descriptions: [`DEFAULT_EMBED_CRON`].
    pub embed: String,
    /// Incremental (hourly) sync, bandwidth-capped and time-limited: [`DEFAULT_SYNC_CRON`].
    pub sync: String,
    /// Full sync (uncapped, until nothing is pending): [`DEFAULT_FULL_SYNC_CRON`].
    pub full_sync: String,
    /// Local cleanup of acknowledged rows: [`DEFAULT_CLEANUP_CRON`].
    pub cleanup: String,
    /// Storage budget enforcement (only with `budget.max_bytes` or
    /// `budget.min_free_bytes`): [`DEFAULT_BUDGET_CRON`].
    pub budget: String,
}

/// Every 5 minutes.
pub const DEFAULT_ROLLUP_CRON: &str = "0 */5 * * * *";
/// Every minute, at second 30.
pub const DEFAULT_EMBED_CRON: &str = "30 * * * * *";
/// Hourly, on the hour.
pub const DEFAULT_SYNC_CRON: &str = "0 0 * * * *";
/// 03:00 every day.
pub const DEFAULT_FULL_SYNC_CRON: &str = "0 0 3 * * *";
/// Hourly, at half past.
pub const DEFAULT_CLEANUP_CRON: &str = "0 30 * * * *";
/// Every 10 minutes.
pub const DEFAULT_BUDGET_CRON: &str = "0 */10 * * * *";

impl Default for ScheduleConfig {
    fn default() -> Self {
        ScheduleConfig {
            rollup: DEFAULT_ROLLUP_CRON.into(),
            embed: DEFAULT_EMBED_CRON.into(),
            sync: DEFAULT_SYNC_CRON.into(),
            full_sync: DEFAULT_FULL_SYNC_CRON.into(),
            cleanup: DEFAULT_CLEANUP_CRON.into(),
            budget: DEFAULT_BUDGET_CRON.into(),
        }
    }
}

impl ScheduleConfig {
    /// The parsed entries of the jobs that are on.
    pub fn entries(&self) -> anyhow::Result<Vec<crate::schedule::Entry>> {
        use crate::schedule::{parse, Job};
        let mut out = Vec::new();
        for (job, expr) in [
            (Job::Rollup, &self.rollup),
            (Job::Embed, &self.embed),
            (Job::Sync, &self.sync),
            (Job::FullSync, &self.full_sync),
            (Job::Cleanup, &self.cleanup),
            (Job::Budget, &self.budget),
        ] {
            out.extend(parse(job, expr)?);
        }
        Ok(out)
    }
}

/// `[cleanup]`: local cleanup of rows the cloud has acknowledged.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CleanupConfig {
    /// Keep acknowledged rows this long after their acknowledgement
    /// (`sluice_cleanup`'s `keep`: "24 hours", "90 minutes", "7 days",
    /// seconds); default [`DEFAULT_CLEANUP_KEEP`].
    pub keep: String,
    /// Tables to clean; default every tracked table.
    pub tables: Option<Vec<String>>,
}

pub const DEFAULT_CLEANUP_KEEP: &str = "24 hours";

impl Default for CleanupConfig {
    fn default() -> Self {
        CleanupConfig {
            keep: DEFAULT_CLEANUP_KEEP.into(),
            tables: None,
        }
    }
}

/// `[pull]`: the cloud-to-edge direction (docs/agent.md, "Pull: cloud to
/// edge"). Every table subscribed at the edge (`sluice_subscribe`, listed in
/// `sluice_subscriptions`) receives the changes of the cloud table published
/// under its name (`sluice.publish`): `sluice sync` pulls after it pushes,
/// and `sluice run` pulls on [`PullConfig::schedule`], at once when the cloud
/// notifies a commit ([`PullConfig::listen`]), or every
/// [`PullConfig::poll_interval`] where it cannot listen.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PullConfig {
    /// Pull at all; default true (nothing happens without a subscription).
    pub enabled: bool,
    /// When `sluice run` pulls every subscription, whatever it heard: a cron
    /// expression with a seconds field, or `"off"`; default
    /// [`DEFAULT_PULL_CRON`]. Scheduled pulls that applied nothing are not
    /// written to the sync log (they would push the other jobs' runs out).
    pub schedule: String,
    /// Keep a dedicated cloud connection that runs `LISTEN sluice_changes`:
    /// a commit to a published table pulls that table within a second.
    /// Default true. Set false where LISTEN cannot work (behind a pgbouncer
    /// in transaction mode, which accepts LISTEN and never delivers a
    /// notification): the agent polls every `poll_interval` instead.
    pub listen: bool,
    /// How often `sluice run` pulls every subscription when it does not
    /// listen (`listen = false`, or the listening connection is down and
    /// reconnecting): `"500ms"`, `"2s"`, `"1m"`, from [`MIN_POLL_INTERVAL`]
    /// to [`MAX_POLL_INTERVAL`]; default [`DEFAULT_POLL_INTERVAL`].
    pub poll_interval: String,
    /// Rows per batch asked of `sluice.pull` (1 to 100000); default
    /// [`DEFAULT_PULL_MAX_ROWS`]. A cloud transaction larger than this comes
    /// in one batch whole.
    pub max_rows: u32,
    /// The tenant to pull for (`sluice.pull`'s `tenant`). Unset: the tenant of
    /// the device's grant (`sluice.grant_device`), which is what a device
    /// role must use; set it for a role without such a grant.
    pub tenant: Option<String>,
}

/// Every 30 seconds: the safety net under `listen` and polling.
pub const DEFAULT_PULL_CRON: &str = "*/30 * * * * *";
/// Two seconds: a poll costs the cloud one call per subscription.
pub const DEFAULT_POLL_INTERVAL: &str = "2s";
/// The rows of one batch of cloud changes (as `sluice.pull`'s default).
pub const DEFAULT_PULL_MAX_ROWS: u32 = 10_000;
/// The shortest `pull.poll_interval`.
pub const MIN_POLL_INTERVAL: Duration = Duration::from_millis(100);
/// The longest `pull.poll_interval`.
pub const MAX_POLL_INTERVAL: Duration = Duration::from_secs(3600);

impl Default for PullConfig {
    fn default() -> Self {
        PullConfig {
            enabled: true,
            schedule: DEFAULT_PULL_CRON.into(),
            listen: true,
            poll_interval: DEFAULT_POLL_INTERVAL.into(),
            max_rows: DEFAULT_PULL_MAX_ROWS,
            tenant: None,
        }
    }
}

impl PullConfig {
    /// `poll_interval` as a duration (checked at start).
    pub fn poll(&self) -> Duration {
        parse_interval(&self.poll_interval).unwrap_or(Duration::from_secs(2))
    }

    /// The scheduled pull, or `None` when it is off (or pulling is).
    pub fn entry(&self) -> anyhow::Result<Option<crate::schedule::Entry>> {
        if !self.enabled {
            return Ok(None);
        }
        crate::schedule::parse(crate::schedule::Job::Pull, &self.schedule)
    }

    fn validate(&self) -> anyhow::Result<()> {
        self.entry()?;
        match parse_interval(&self.poll_interval) {
            Err(why) => bail!("pull.poll_interval {:?}: {why}", self.poll_interval),
            Ok(d) if d < MIN_POLL_INTERVAL || d > MAX_POLL_INTERVAL => bail!(
                "pull.poll_interval {:?} must be between 100ms and 1h",
                self.poll_interval
            ),
            Ok(_) => {}
        }
        if !(1..=100_000).contains(&self.max_rows) {
            bail!(
                "pull.max_rows must be between 1 and 100000, got {}",
                self.max_rows
            );
        }
        if let Some(t) = &self.tenant {
            if t.is_empty() || t.chars().any(char::is_control) {
                bail!("pull.tenant {t:?} must be non-empty text without control characters; leave it out for the tenant of the device's grant");
            }
        }
        Ok(())
    }
}

/// A duration as `humantime` writes it (`"500ms"`, `"2s"`, `"1m 30s"`).
pub fn parse_interval(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("{e}; write it like \"500ms\", \"2s\" or \"1m\""))
}

/// `[metrics]`: the optional Prometheus endpoint of `sluice run`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address to serve `GET /metrics` on, e.g. `"127.0.0.1:9464"`. Unset:
    /// no endpoint. It has no authentication: keep it on 127.0.0.1.
    pub listen: Option<std::net::SocketAddr>,
}

/// `[budget]`: the bounded local buffer, and what the agent does at a full
/// disk (docs/agent.md, "Full disk" in "Recovering from common failures").
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetConfig {
    /// The most bytes the edge database may use. When a long outage outgrows
    /// it, raw rows that are already rolled up are dropped first, oldest
    /// first, each drop counted (`sluice status`). Unset: no budget.
    pub max_bytes: Option<u64>,
    /// The bytes the filesystem holding the edge database must keep free
    /// (statvfs, what an unprivileged process may write). Under it the budget
    /// drops rows like for `max_bytes`, and as the last resort raw rows a
    /// rollup has not processed, each drop counted. At most
    /// [`MAX_MIN_FREE_BYTES`]. Unset: the filesystem is watched only for
    /// being full.
    pub min_free_bytes: Option<u64>,
    /// The reserve, a file beside the edge database (`<database>-sluice-reserve`)
    /// that sluice deletes when the disk is full so that its own recovery can
    /// write: larger than the WAL grows (4 MB with SQLite's default
    /// checkpoints). Default [`DEFAULT_RESERVE_BYTES`] when `max_bytes` or
    /// `min_free_bytes` is set; 0: none. At most [`MAX_RESERVE_BYTES`].
    pub reserve_bytes: Option<u64>,
}

/// 8 MiB: twice the WAL of SQLite's default checkpoints (1,000 pages of 4 KiB).
pub const DEFAULT_RESERVE_BYTES: u64 = 8 << 20;
/// The extension's limit of `reserve_bytes` (1 GiB).
pub const MAX_RESERVE_BYTES: u64 = 1 << 30;
/// The extension's limit of `min_free_bytes` (1 PiB).
pub const MAX_MIN_FREE_BYTES: u64 = 1 << 50;

impl BudgetConfig {
    /// Whether the budget job has work: a byte budget or a free-space floor.
    pub fn enabled(&self) -> bool {
        self.max_bytes.is_some() || self.min_free_bytes.is_some()
    }

    /// The reserve the budget job keeps (None: the budget is off).
    pub fn reserve(&self) -> Option<u64> {
        self.enabled()
            .then(|| self.reserve_bytes.unwrap_or(DEFAULT_RESERVE_BYTES))
    }

    /// `sluice_enforce_budget`'s options: `min_free_bytes`, `reserve_bytes`.
    pub fn options_json(&self) -> String {
        let mut o = serde_json::Map::new();
        if let Some(m) = self.min_free_bytes {
            o.insert("min_free_bytes".into(), m.into());
        }
        if let Some(r) = self.reserve() {
            o.insert("reserve_bytes".into(), r.into());
        }
        serde_json::Value::Object(o).to_string()
    }

    fn validate(&self) -> anyhow::Result<()> {
        if self.max_bytes == Some(0) {
            bail!("budget.max_bytes must be positive; leave it out for no budget");
        }
        if let Some(m) = self.min_free_bytes.filter(|m| *m > MAX_MIN_FREE_BYTES) {
            bail!("budget.min_free_bytes must be at most {MAX_MIN_FREE_BYTES} (1 PiB), got {m}");
        }
        if let Some(r) = self.reserve_bytes {
            if r > MAX_RESERVE_BYTES {
                bail!("budget.reserve_bytes must be at most {MAX_RESERVE_BYTES} (1 GiB), got {r}");
            }
            if !self.enabled() {
                bail!(
                    "budget.reserve_bytes needs budget.max_bytes or budget.min_free_bytes: the \
                     budget job keeps the reserve"
                );
            }
        }
        Ok(())
    }
}

/// `[device]`: who this box is.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    /// The device id sent with every batch: 1 to
    /// [`sluice_wire::MAX_DEVICE_ID_CHARS`] characters, no control
    /// characters ([`sluice_wire::check_device_id`], the rule of
    /// `sluice_device()` too). The cloud keeps its ledger, clock skew and
    /// statistics per device id. Give every box its own: two edge
    /// databases sending under one id are told apart by their streams, and
    /// `sluice status` warns about them (docs/agent.md, "Replacing,
    /// restoring and cloning boxes").
    pub id: String,
    /// The identity of the machine the edge database runs on, recorded in
    /// the database (`sluice_machine`) whenever a command opens it (`run`,
    /// `sync`, `status`, ...): a database that finds
    /// itself on another machine (a copied file, a cloned image) continues
    /// under a new epoch by itself. 1 to [`crate::machine::MAX_MACHINE_ID_CHARS`]
    /// characters, no control characters. Unset (the default): a hash of
    /// `/etc/machine-id` and the MAC addresses of the box's network hardware
    /// ([`crate::machine::derive`]). Set it where those are not stable or not
    /// there (containers).
    pub machine_id: Option<String>,
    /// The zone of the box's wall clock: zoneless timestamp text the pipeline
    /// writes (`'2025-12-13 14:35:00'`) is read in this zone by the cloud. An
    /// IANA name (`"Europe/Berlin"`, `"America/Argentina/Buenos_Aires"`),
    /// `"UTC"`, or a fixed offset east of UTC (`"+05:30"`, `"-03:00"`); set
    /// whenever a command opens the database, with `sluice_zone`. Default [`DEFAULT_TIME_ZONE`].
    #[serde(default = "DeviceConfig::default_time_zone")]
    pub time_zone: String,
}

/// Zoneless timestamps are UTC unless the box says otherwise.
pub const DEFAULT_TIME_ZONE: &str = "UTC";

/// The longest zone name, in bytes (the batch header's limit).
pub const MAX_ZONE_BYTES: usize = sluice_wire::MAX_ZONE_BYTES;

impl DeviceConfig {
    // As for `EdgeConfig`: a required field, so a function for the default.
    fn default_time_zone() -> String {
        DEFAULT_TIME_ZONE.into()
    }
}

/// Checks a zone by the rule of `sluice_zone` (sqlite_ext's `origin.rs`),
/// so that the agent refuses at start what the edge would refuse at open:
/// an IANA-style name (ASCII letters, digits and `/ _ + -`, starting with a
/// letter, no empty part between slashes, at most [`MAX_ZONE_BYTES`]
/// bytes), or a fixed offset `+HH:MM` / `-HH:MM` east of UTC, at most
/// 14:00. Whether the cloud knows the name is the cloud's to say
/// (`sluice.ingest` refuses an unknown zone, 22023).
pub fn check_zone(zone: &str) -> Result<(), String> {
    const EXAMPLES: &str = "e.g. \"Europe/Berlin\", \"UTC\" or \"+05:30\"";
    if zone.is_empty() {
        return Err(format!("the zone must not be empty ({EXAMPLES})"));
    }
    if zone.len() > MAX_ZONE_BYTES {
        return Err(format!(
            "the zone is {} bytes long, the limit is {MAX_ZONE_BYTES}",
            zone.len()
        ));
    }
    let b = zone.as_bytes();
    if matches!(b[0], b'+' | b'-') {
        let two = |s: &str| {
            (s.len() == 2 && s.bytes().all(|c| c.is_ascii_digit()))
                .then(|| s.parse::<u32>().ok())
                .flatten()
        };
        let ok = b.len() == 6
            && b[3] == b':'
            && match (two(&zone[1..3]), two(&zone[4..6])) {
                (Some(h), Some(m)) => m <= 59 && (h < 14 || (h == 14 && m == 0)),
                _ => false,
            };
        return if ok {
            Ok(())
        } else {
            Err(format!(
                "a fixed offset is written +HH:MM or -HH:MM, at most 14:00 ({EXAMPLES})"
            ))
        };
    }
    if let Some(c) = zone
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '/' | '_' | '+' | '-')))
    {
        return Err(format!(
            "a zone name has only ASCII letters, digits and / _ + - (found {c:?}; {EXAMPLES})"
        ));
    }
    if !b[0].is_ascii_alphabetic() {
        return Err(format!("a zone name starts with a letter ({EXAMPLES})"));
    }
    if zone.split('/').any(str::is_empty) {
        return Err(format!(
            "a zone name has no empty part between slashes ({EXAMPLES})"
        ));
    }
    Ok(())
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
    /// Milliseconds to wait for a lock held by the pipeline's writer;
    /// default [`DEFAULT_BUSY_TIMEOUT_MS`].
    #[serde(default = "EdgeConfig::default_busy_timeout_ms")]
    pub busy_timeout_ms: u64,
}

/// Five seconds: the pipeline's writer commits far more often than that.
pub const DEFAULT_BUSY_TIMEOUT_MS: u64 = 5_000;

impl EdgeConfig {
    // The struct has required fields, so its one defaulted field takes its
    // default from a function (serde's only way) that returns the constant.
    fn default_busy_timeout_ms() -> u64 {
        DEFAULT_BUSY_TIMEOUT_MS
    }
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
    /// Seconds to wait for a connection; default [`DEFAULT_CONNECT_TIMEOUT_SECS`].
    #[serde(default = "CloudConfig::default_connect_timeout_secs")]
    pub connect_timeout_secs: u64,
    /// TLS to the cloud: `"prefer"` (the default: TLS with a verified
    /// certificate when the server offers TLS, plain otherwise), `"require"`
    /// (TLS with a verified certificate, or no connection), `"disable"`.
    /// A certificate that does not verify is always an error, never a
    /// fallback to plain text.
    #[serde(default)]
    pub tls: TlsMode,
    /// PEM file of the CA certificates to trust for the server's certificate
    /// (a private CA). Default: the Mozilla root certificates.
    pub ca_file: Option<PathBuf>,
    /// Folder of the cloud schema's migrations (`NNNN_name.sql`), applied in
    /// order by `sluice migrate`.
    pub migrations: Option<PathBuf>,
}

impl CloudConfig {
    // As for `EdgeConfig`: required fields, so a function for the default.
    fn default_connect_timeout_secs() -> u64 {
        DEFAULT_CONNECT_TIMEOUT_SECS
    }
}

/// How the agent uses TLS to reach the cloud.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    Disable,
    #[default]
    Prefer,
    Require,
}

/// `[sync]`: how batches move.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SyncConfig {
    /// Rows per batch (1 to 100000); default [`DEFAULT_BATCH_ROWS`].
    pub batch_rows: u32,
    /// Tables to sync; default every table tracked with `sluice_track`.
    pub tables: Option<Vec<String>>,
    /// Attempts per batch before the table counts as failed for this run;
    /// default [`DEFAULT_MAX_ATTEMPTS`].
    pub max_attempts: u32,
    /// The first retry waits a random time up to this many milliseconds; each
    /// further retry doubles the ceiling. Default [`DEFAULT_BACKOFF_INITIAL_MS`].
    pub backoff_initial_ms: u64,
    /// The ceiling of any wait between retries, in milliseconds; default
    /// [`DEFAULT_BACKOFF_MAX_MS`].
    pub backoff_max_ms: u64,
    /// Uplink cap for the hourly sync, in bytes per second of batches
    /// sent (0, the default: uncapped). The full sync and `sluice sync --mode
    /// full` ignore it.
    pub bandwidth_bytes_per_sec: u64,
    /// The hourly sync stops starting new batches after this many
    /// seconds (0: no limit); what is left goes at the next run. Default
    /// [`DEFAULT_MAX_RUN_SECS`].
    pub max_run_secs: u64,
    /// Tables synced at once (1 to 16), each with its own edge and cloud
    /// connection; the bandwidth cap is shared. Tables are independent (each
    /// has its own watermark), so any number is safe. Default
    /// [`DEFAULT_CONCURRENCY`].
    pub concurrency: u32,
    /// Which pending rows go first: `"oldest"` (the default; the backlog
    /// drains in the order it was written) or `"newest"` (after a long
    /// outage the freshest data reaches the cloud first, and the backlog
    /// follows behind it). Both send every pending row exactly once.
    pub order: DrainOrder,
    /// The hourly sync sends the pending rows of the last this
    /// many seconds, by each table's time column (`sluice_track`'s `"time"`;
    /// a table without one sends every pending row); older rows wait for the
    /// full sync. 0: every pending row. Default [`DEFAULT_HOURLY_WINDOW_SECS`].
    pub hourly_window_secs: u64,
}

/// Two hours: the window of the hourly sync, as the field syncs today.
pub const DEFAULT_HOURLY_WINDOW_SECS: u64 = 7200;

/// Two tables at once: the edge box has two cores or more.
pub const DEFAULT_CONCURRENCY: u32 = 2;

/// An hourly sync that has not finished after 50 minutes leaves the rest to
/// the next one instead of overlapping it.
pub const DEFAULT_MAX_RUN_SECS: u64 = 3000;

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig {
            batch_rows: DEFAULT_BATCH_ROWS,
            tables: None,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            backoff_initial_ms: DEFAULT_BACKOFF_INITIAL_MS,
            backoff_max_ms: DEFAULT_BACKOFF_MAX_MS,
            bandwidth_bytes_per_sec: 0,
            max_run_secs: DEFAULT_MAX_RUN_SECS,
            concurrency: DEFAULT_CONCURRENCY,
            order: DrainOrder::default(),
            hourly_window_secs: DEFAULT_HOURLY_WINDOW_SECS,
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
        if let Some(ca) = &cfg.cloud.ca_file {
            cfg.cloud.ca_file = Some(base.join(ca));
        }
        if let Some(e) = &mut cfg.embed {
            e.model.model = base.join(&e.model.model);
            if let Some(t) = &e.model.tokenizer {
                e.model.tokenizer = Some(base.join(t));
            }
            if let Some(o) = &e.model.onnxruntime {
                e.model.onnxruntime = Some(base.join(o));
            }
        }
        if let Some(m) = &cfg.cloud.migrations {
            cfg.cloud.migrations = Some(base.join(m));
        }
        Ok(cfg)
    }

    pub fn parse(text: &str) -> anyhow::Result<Config> {
        let cfg: Config = toml::from_str(text)?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> anyhow::Result<()> {
        if let Err(why) = sluice_wire::check_device_id(&self.device.id) {
            bail!("device.id {:?}: {why}", self.device.id);
        }
        if let Some(m) = &self.device.machine_id {
            if let Err(why) = crate::machine::check_machine_id(m) {
                bail!("device.machine_id {m:?}: {why}");
            }
        }
        if let Err(why) = check_zone(&self.device.time_zone) {
            bail!("device.time_zone {:?}: {why}", self.device.time_zone);
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
        if !(1..=16).contains(&self.sync.concurrency) {
            bail!(
                "sync.concurrency must be between 1 and 16, got {}",
                self.sync.concurrency
            );
        }
        if self.sync.hourly_window_secs > 100 * 366 * 86_400 {
            bail!(
                "sync.hourly_window_secs must be at most 100 years of seconds, got {}",
                self.sync.hourly_window_secs
            );
        }
        if self.sync.backoff_initial_ms > self.sync.backoff_max_ms {
            bail!("sync.backoff_initial_ms must not exceed sync.backoff_max_ms");
        }
        self.schedule.entries()?;
        if self.cleanup.keep.trim().is_empty() {
            bail!("cleanup.keep must not be empty (e.g. \"24 hours\")");
        }
        self.budget.validate()?;
        self.pull.validate()?;
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
mod tests;
