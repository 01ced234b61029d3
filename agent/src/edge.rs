//! The edge side: the SQLite database the pipeline writes, with `sluice0.so`
//! loaded. Everything goes through the extension's public SQL surface
//! (`sluice_batch`, `sluice_ack`, `sluice_pending`, `sluice_tracked`, ...),
//! exactly as any other client would call it; the agent holds no sync state
//! of its own and reads no bookkeeping table of the extension, but for the
//! quarantine's listing, which is the documented table `sluice_quarantine`
//! itself (docs/sqlite.md). Its one table is its own sync log,
//! `sluice_sync_log`.
//!
//! SQLite calls block (a busy wait for the pipeline's lock can last
//! `edge.busy_timeout_ms`), so they never run on the async runtime: an
//! [`Edge`] is a handle whose [`Edge::run`] sends the work to tokio's
//! blocking pool, where [`EdgeConn`] (the blocking API) does it. Each sync
//! lane has its own `Edge`, so a lane waiting for a lock stalls neither the
//! other lanes nor the PostgreSQL connections.

use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use rusqlite::{Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::schedule::Job;

/// One tracked table, as `sluice status` shows it.
#[derive(Debug, Serialize)]
pub struct TableStatus {
    pub table: String,
    pub pending_rows: i64,
    pub acked_batches: i64,
    pub acked_rows: i64,
    /// Unix milliseconds of the last acknowledgement.
    pub last_ack_ms: Option<i64>,
    /// Rows moved aside (`sluice_quarantine`): not pending, never sent until
    /// released. `None` with an extension older than 0.2.
    pub quarantined_rows: Option<i64>,
    /// Rows of unfinished re-send requests still to send (counted in
    /// `pending_rows` too). `None` with an extension older than 0.2.
    pub resend_rows: Option<i64>,
}

/// One object of `sluice_tracked()`: a tracked table's registration and
/// acknowledged state (docs/sqlite.md).
#[derive(Debug, Clone, Deserialize)]
pub struct Tracked {
    pub table: String,
    pub mutable: bool,
    /// The columns that stay at the edge (never in a batch).
    #[serde(default)]
    pub local_only_columns: Vec<String>,
    pub time_column: Option<String>,
    /// Every sequence number at or below it is acknowledged.
    pub acked_seq: i64,
    /// Acknowledged ranges `(lo, hi]` above `acked_seq` (newest-first draining).
    #[serde(default)]
    pub acked_ranges: Vec<(i64, i64)>,
    pub acked_batches: i64,
    pub acked_rows: i64,
    /// Unix milliseconds of the last acknowledgement.
    pub acked_at: Option<i64>,
    /// The largest sequence number the database has handed out for the
    /// table (`None`: the table is gone, or an extension older than 0.2).
    #[serde(default)]
    pub high_water: Option<i64>,
    /// Rows moved aside in `sluice_quarantine` (`None`: an extension older
    /// than 0.2).
    #[serde(default)]
    pub quarantined_rows: Option<i64>,
    /// Rows of unfinished re-send requests still to send.
    #[serde(default)]
    pub resend_rows: Option<i64>,
}

impl Tracked {
    /// True when the cloud acknowledged sequence number (rowid or version) `seq`.
    pub fn acked(&self, seq: i64) -> bool {
        seq <= self.acked_seq
            || self
                .acked_ranges
                .iter()
                .any(|&(lo, hi)| seq > lo && seq <= hi)
    }
}

/// One row of `sluice_subscriptions`: a local table that receives a
/// published cloud table (docs/sqlite.md, "Cloud to edge").
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Subscription {
    pub table: String,
    /// The last cloud position applied; 0 before the first snapshot.
    pub checkpoint: i64,
    /// The publication's stream; 0 before the first snapshot.
    pub stream_id: i64,
    /// When a batch was last applied (ISO-8601 UTC).
    pub applied_at: Option<String>,
    pub batches: i64,
    pub upserted: i64,
    pub deleted: i64,
    pub snapshots: i64,
}

/// What `sluice_apply` reports for one batch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Applied {
    pub table: String,
    #[serde(default)]
    pub upserted: i64,
    #[serde(default)]
    pub deleted: i64,
    #[serde(default)]
    pub replay: bool,
    pub checkpoint: i64,
    #[serde(default)]
    pub snapshot_page: u32,
    /// The snapshot is complete (its last page), or the batch was incremental.
    #[serde(default)]
    pub complete: bool,
}

/// What `sluice_identity()` says about this edge database: its device, its
/// current stream and the history of its epochs (docs/sqlite.md).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Identity {
    pub device_id: Option<String>,
    /// The current stream (epoch).
    pub stream_id: i64,
    pub machine: Option<String>,
    #[serde(default)]
    pub zone: Option<String>,
    /// Oldest first; the last is the current one.
    #[serde(default)]
    pub epochs: Vec<Epoch>,
}

impl Identity {
    /// Every stream of this database: the epochs of its history, and the
    /// current stream (which is the last of them).
    pub fn streams(&self) -> Vec<i64> {
        let mut streams: Vec<i64> = self.epochs.iter().map(|e| e.stream_id).collect();
        if !streams.contains(&self.stream_id) {
            streams.push(self.stream_id);
        }
        streams
    }
}

/// One epoch of the edge database.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Epoch {
    pub stream_id: i64,
    pub parent_stream: Option<i64>,
    /// ISO-8601 UTC.
    pub started_at: Option<String>,
    pub reason: String,
    pub machine: Option<String>,
}

/// A stream id as the batch identities show it (`BatchId`'s Display): 16
/// hex digits.
pub fn stream_hex(stream: i64) -> String {
    format!("{:016x}", stream as u64)
}

/// Why the edge database began a new epoch: the label of
/// `sluice_epochs_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EpochReason {
    /// The cloud found the database's batches in conflict with what it
    /// already had from this stream (SQLSTATE 55000): it was restored from a
    /// backup or copied.
    RestoredOrCopied,
    /// `sluice_machine` found the database on another machine.
    MovedMachine,
}

impl EpochReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EpochReason::RestoredOrCopied => "restored_or_copied",
            EpochReason::MovedMachine => "moved_machine",
        }
    }
}

/// The database was found on another machine at open (`sluice_machine`
/// returned 1) and continues under a new epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineMove {
    pub from: Option<String>,
    pub to: String,
    pub new_stream: i64,
}

/// One row of `sluice_quarantine`: a row of a tracked table moved aside
/// because it cannot be sent as it is (docs/sqlite.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QuarantineEntry {
    pub table: String,
    pub id: i64,
    /// The row's sequence number (its version) when it was moved aside.
    pub seq: i64,
    /// Its rowid (`None` for a `WITHOUT ROWID` table).
    pub row_id: Option<i64>,
    /// Its encoded size, when that was the reason (over the batch limit).
    pub bytes: Option<i64>,
    /// The cloud's SQLSTATE, when the cloud refused it.
    pub sqlstate: Option<String>,
    pub reason: String,
    /// ISO-8601 UTC.
    pub quarantined_at: String,
}

/// How a job run ended, as the sync log and `sluice status` say it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    /// Started and not ended: still running, or killed while running.
    #[default]
    Running,
    Success,
    /// Some tables (or rows) done, some failed.
    Partial,
    Failed,
    /// Nothing to do here (no `[embed]`, no budget, an older extension).
    Skipped,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Success => "success",
            RunStatus::Partial => "partial",
            RunStatus::Failed => "failed",
            RunStatus::Skipped => "skipped",
        }
    }

    /// A run that did not fully succeed (what `sluice_job_errors_total` counts).
    pub fn is_error(self) -> bool {
        matches!(self, RunStatus::Partial | RunStatus::Failed)
    }
}

impl std::fmt::Display for RunStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RunStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "running" => RunStatus::Running,
            "success" => RunStatus::Success,
            "partial" => RunStatus::Partial,
            "failed" => RunStatus::Failed,
            "skipped" => RunStatus::Skipped,
            _ => return Err(format!("unknown run status {s:?}")),
        })
    }
}

impl ToSql for RunStatus {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.as_str()))
    }
}

impl FromSql for RunStatus {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        value
            .as_str()?
            .parse()
            .map_err(|e: String| FromSqlError::Other(e.into()))
    }
}

/// The agent's record of one job run, kept at the edge in `sluice_sync_log`:
/// the answer to "did last night's sync work?".
#[derive(Debug, Clone, Default, Serialize)]
pub struct LogEntry {
    pub id: i64,
    /// The job's name ([`Job::name`]): `sync`, `full_sync`, `cleanup`,
    /// `rollup`, `embed`, `budget`.
    pub kind: String,
    pub started_at: String,
    pub ended_at: Option<String>,
    pub batches: i64,
    pub rows: i64,
    pub bytes: i64,
    pub status: RunStatus,
    pub error: Option<String>,
}

impl LogEntry {
    /// True for the runs of the two sync jobs.
    pub fn is_sync(&self) -> bool {
        self.kind == Job::Sync.name() || self.kind == Job::FullSync.name()
    }
}

/// Rows of `sluice_sync_log` kept; older ones are pruned.
pub const SYNC_LOG_KEEP_ROWS: i64 = 10_000;

const SYNC_LOG_DDL: &str = "CREATE TABLE IF NOT EXISTS sluice_sync_log (
    id         INTEGER PRIMARY KEY,
    kind       TEXT NOT NULL,
    started_at TEXT NOT NULL,
    ended_at   TEXT,
    batches    INTEGER NOT NULL DEFAULT 0,
    rows       INTEGER NOT NULL DEFAULT 0,
    bytes      INTEGER NOT NULL DEFAULT 0,
    status     TEXT NOT NULL,
    error      TEXT
);
CREATE INDEX IF NOT EXISTS sluice_sync_log_kind ON sluice_sync_log (kind, started_at);";

/// Now, as ISO-8601 UTC text with milliseconds (what the log stores).
pub fn now_iso() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Opens the edge database the one way every part of the agent does: it
/// must exist, the sluice extension is loaded, a lock held by the pipeline
/// is waited for up to `busy_timeout_ms`, and in WAL mode commits skip the
/// fsync (`synchronous = NORMAL`).
pub fn open_connection(
    database: &Path,
    extension: &Path,
    busy_timeout_ms: u64,
) -> anyhow::Result<Connection> {
    if !database.exists() {
        anyhow::bail!("edge database {} does not exist", database.display());
    }
    let conn = Connection::open(database)
        .with_context(|| format!("cannot open edge database {}", database.display()))?;
    conn.busy_timeout(Duration::from_millis(busy_timeout_ms))?;
    // SAFETY: loading a SQLite extension runs its init code in this
    // process; the path is the operator's configured sluice0.so.
    unsafe {
        let _guard = rusqlite::LoadExtensionGuard::new(&conn)?;
        conn.load_extension(extension, None::<&str>).with_context(|| {
            format!(
                "cannot load the sluice SQLite extension from {} (set edge.extension or SLUICE_SQLITE_EXT)",
                extension.display()
            )
        })?;
    }
    // In WAL mode, synchronous=NORMAL (for this connection only) skips
    // the fsync at each commit and stays crash-safe; what a power cut may
    // lose is the agent's last acknowledgements (or embeddings), and a lost
    // acknowledgement only means the batch is sent again and recognised
    // as a replay. It makes an acknowledgement ~20x cheaper.
    let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
    if mode.eq_ignore_ascii_case("wal") {
        conn.execute_batch("PRAGMA synchronous = NORMAL")?;
    }
    Ok(conn)
}

/// The async handle of one edge connection: the work runs on tokio's
/// blocking pool, one call at a time. Cloning shares the connection.
#[derive(Clone)]
pub struct Edge {
    conn: Arc<Mutex<EdgeConn>>,
    moved: Option<MachineMove>,
}

impl Edge {
    /// Opens the database, loads the extension, sets the device id and the
    /// zone, and records the machine (a database found on another machine
    /// begins a new epoch: [`Edge::moved`]).
    pub async fn open(cfg: &Config) -> anyhow::Result<Edge> {
        let (db, ext, busy) = (
            cfg.edge.database.clone(),
            cfg.extension_path(),
            cfg.edge.busy_timeout_ms,
        );
        let device = cfg.device.id.clone();
        let zone = cfg.device.time_zone.clone();
        let configured_machine = cfg.device.machine_id.clone();
        let budget = cfg.budget.clone();
        let (conn, moved) = tokio::task::spawn_blocking(move || {
            let conn = EdgeConn {
                conn: open_connection(&db, &ext, busy)?,
            };
            let machine = crate::machine::resolve(configured_machine.as_deref());
            // A full disk: the budget job frees space, and these run once more.
            let moved = crate::budget::when_full(
                conn.connection(),
                &budget,
                "opening the edge database",
                || {
                    conn.set_device(&device)?;
                    conn.set_zone(&zone)?;
                    conn.set_machine(&device, machine.as_deref())
                },
            )?;
            anyhow::Ok((conn, moved))
        })
        .await
        .context("the edge task failed")??;
        Ok(Edge {
            conn: Arc::new(Mutex::new(conn)),
            moved,
        })
    }

    /// The database was found on another machine when this handle opened
    /// it, and began a new epoch.
    pub fn moved(&self) -> Option<&MachineMove> {
        self.moved.as_ref()
    }

    /// Runs `f` on the connection, off the async runtime.
    pub async fn run<T, F>(&self, f: F) -> anyhow::Result<T>
    where
        F: FnOnce(&EdgeConn) -> anyhow::Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            // A panic inside `f` poisons the lock; the connection itself is
            // still sound (SQLite rolls back what was not committed).
            let guard = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&guard)
        })
        .await
        .context("the edge task failed")?
    }
}

/// One edge connection and the agent's blocking calls on it.
pub struct EdgeConn {
    conn: Connection,
}

impl EdgeConn {
    fn set_device(&self, id: &str) -> anyhow::Result<()> {
        let current: Option<String> = self
            .conn
            .query_row("SELECT sluice_device()", [], |r| r.get(0))?;
        if current.as_deref() != Some(id) {
            self.write(|c| c.query_row("SELECT sluice_device(?1)", [id], |_| Ok(())))
                .context("cannot set the device id")?;
        }
        Ok(())
    }

    /// Sets the device's zone (`sluice_zone(?)`) when it is not the
    /// configured one. An extension without `sluice_zone` (older than 0.2)
    /// cannot carry a zone: only UTC is accepted then.
    fn set_zone(&self, zone: &str) -> anyhow::Result<()> {
        if !self.has_function("sluice_zone") {
            if zone != crate::config::DEFAULT_TIME_ZONE {
                anyhow::bail!(
                    "device.time_zone is {zone:?}, but the loaded sluice0.so has no sluice_zone (it is older than 0.2): update it, or leave the zone at UTC"
                );
            }
            return Ok(());
        }
        let current: Option<String> = self
            .conn
            .query_row("SELECT sluice_zone()", [], |r| r.get(0))?;
        if current.as_deref() != Some(zone) {
            self.write(|c| c.query_row("SELECT sluice_zone(?1)", [zone], |_| Ok(())))
                .with_context(|| format!("cannot set the zone {zone:?} (device.time_zone)"))?;
        }
        Ok(())
    }

    /// Records the machine (`sluice_machine(?)`). A database that was on
    /// another machine begins a new epoch: logged at WARN, and returned.
    fn set_machine(
        &self,
        device: &str,
        machine: Option<&str>,
    ) -> anyhow::Result<Option<MachineMove>> {
        // Every command, and every sync lane, opens the database: these say
        // the same each time, so once per process.
        static NO_FUNCTION: std::sync::Once = std::sync::Once::new();
        static NO_IDENTITY: std::sync::Once = std::sync::Once::new();
        if !self.has_function("sluice_machine") {
            NO_FUNCTION.call_once(|| {
                tracing::warn!(
                    "the loaded sluice0.so has no sluice_machine (it is older than 0.2): a copied database is not recognised at the edge"
                )
            });
            return Ok(None);
        }
        let Some(machine) = machine else {
            NO_IDENTITY.call_once(|| {
                tracing::warn!(
                    "no machine identity (no /etc/machine-id, no network hardware): set device.machine_id so that a copied database is recognised"
                )
            });
            return Ok(None);
        };
        let before: Option<String> = self
            .conn
            .query_row("SELECT sluice_machine()", [], |r| r.get(0))?;
        if before.as_deref() == Some(machine) {
            return Ok(None);
        }
        let moved: i64 = self
            .write(|c| c.query_row("SELECT sluice_machine(?1)", [machine], |r| r.get(0)))
            .context("cannot record the machine (sluice_machine)")?;
        if moved != 1 {
            return Ok(None);
        }
        let new_stream = self.identity()?.stream_id;
        tracing::warn!(
            device,
            from = before.as_deref().unwrap_or(""),
            to = machine,
            stream = %stream_hex(new_stream),
            "this database moved from machine {} to {machine}: continuing under a new epoch",
            before.as_deref().unwrap_or("(none)")
        );
        Ok(Some(MachineMove {
            from: before,
            to: machine.to_owned(),
            new_stream,
        }))
    }

    /// `sluice_identity()`: the device, the current stream, the epochs.
    pub fn identity(&self) -> anyhow::Result<Identity> {
        let json: String = self
            .conn
            .query_row("SELECT sluice_identity()", [], |r| r.get(0))
            .context("cannot read the edge database's identity (sluice_identity)")?;
        serde_json::from_str(&json).context("sluice_identity() returned unexpected JSON")
    }

    /// Begins a new epoch (`sluice_new_epoch(reason)`, in its own immediate
    /// transaction); returns the new stream.
    pub fn new_epoch(&self, reason: &str) -> anyhow::Result<i64> {
        self.write(|c| c.query_row("SELECT sluice_new_epoch(?1)", [reason], |r| r.get(0)))
            .context("cannot begin a new epoch at the edge (sluice_new_epoch)")
    }

    /// Runs `f` in a `BEGIN IMMEDIATE` transaction. The extension's writing
    /// functions are called through `SELECT`, which starts as a read; SQLite
    /// does not wait for a lock when a read upgrades to a write, so with the
    /// pipeline writing at the same time the call would fail at once with
    /// "database is locked". `BEGIN IMMEDIATE` takes the write lock first,
    /// waiting up to the busy timeout.
    pub fn write<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> anyhow::Result<T> {
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        match f(&self.conn) {
            Ok(v) => {
                self.conn.execute_batch("COMMIT")?;
                Ok(v)
            }
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                Err(e.into())
            }
        }
    }

    /// Every subscription of the edge (`sluice_subscriptions`, which
    /// docs/sqlite.md documents as the listing), by table; none with an
    /// extension older than the cloud-to-edge direction.
    pub fn subscriptions(&self) -> anyhow::Result<Vec<Subscription>> {
        let exists: bool = self.conn.query_row(
            "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'sluice_subscriptions'",
            [],
            |r| r.get(0),
        )?;
        if !exists {
            return Ok(Vec::new());
        }
        let mut stmt = self.conn.prepare(
            "SELECT tbl, checkpoint, stream_id, applied_at, batches, upserted, deleted, snapshots
               FROM sluice_subscriptions ORDER BY tbl",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(Subscription {
                table: r.get(0)?,
                checkpoint: r.get::<_, Option<i64>>(1)?.unwrap_or(0),
                stream_id: r.get::<_, Option<i64>>(2)?.unwrap_or(0),
                applied_at: r.get(3)?,
                batches: r.get::<_, Option<i64>>(4)?.unwrap_or(0),
                upserted: r.get::<_, Option<i64>>(5)?.unwrap_or(0),
                deleted: r.get::<_, Option<i64>>(6)?.unwrap_or(0),
                snapshots: r.get::<_, Option<i64>>(7)?.unwrap_or(0),
            })
        })?;
        rows.collect::<Result<_, _>>()
            .context("cannot list the subscriptions (sluice_subscriptions)")
    }

    /// Applies a batch of cloud changes (`sluice_apply(?)`), in the
    /// transaction that is open (a snapshot's) or else in its own immediate
    /// one. The function is atomic: refused, it applied nothing.
    pub fn apply(&self, batch: &[u8]) -> anyhow::Result<Applied> {
        let call = |c: &Connection| {
            c.query_row("SELECT sluice_apply(?1)", [batch], |r| {
                r.get::<_, String>(0)
            })
        };
        let json = if self.conn.is_autocommit() {
            self.write(call)?
        } else {
            call(&self.conn)?
        };
        serde_json::from_str(&json)
            .with_context(|| format!("sluice_apply returned unexpected JSON: {json}"))
    }

    /// Begins the transaction a snapshot's pages are applied in (`BEGIN
    /// IMMEDIATE`: the write lock first, waiting up to the busy timeout).
    pub fn begin(&self) -> anyhow::Result<()> {
        self.conn
            .execute_batch("BEGIN IMMEDIATE")
            .context("cannot begin the edge transaction of a snapshot")
    }

    pub fn commit(&self) -> anyhow::Result<()> {
        self.conn
            .execute_batch("COMMIT")
            .context("cannot commit the edge transaction of a snapshot")
    }

    /// Rolls back the open transaction, if any.
    pub fn rollback(&self) {
        if !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }

    /// Every tracked table, by name (`sluice_tracked()`).
    pub fn tracked(&self) -> anyhow::Result<Vec<Tracked>> {
        let json: String = self
            .conn
            .query_row("SELECT sluice_tracked()", [], |r| r.get(0))
            .context("cannot list the tracked tables (sluice_tracked)")?;
        serde_json::from_str(&json).context("sluice_tracked() returned unexpected JSON")
    }

    /// One tracked table (`sluice_tracked(table)`), or `None` when it is not tracked.
    pub fn tracked_table(&self, table: &str) -> anyhow::Result<Option<Tracked>> {
        let json: Option<String> = self
            .conn
            .query_row("SELECT sluice_tracked(?1)", [table], |r| r.get(0))
            .with_context(|| format!("cannot read the registration of table '{table}'"))?;
        json.map(|j| serde_json::from_str(&j))
            .transpose()
            .context("sluice_tracked(table) returned unexpected JSON")
    }

    /// The names of the tracked tables, sorted.
    pub fn tracked_tables(&self) -> anyhow::Result<Vec<String>> {
        Ok(self.tracked()?.into_iter().map(|t| t.table).collect())
    }

    /// The next pending batch of `table`, or `None` when nothing is pending.
    /// `options` is `sluice_batch`'s JSON (`order`, `since`).
    pub fn next_batch(
        &self,
        table: &str,
        max_rows: u32,
        options: &str,
    ) -> anyhow::Result<Option<Vec<u8>>> {
        self.conn
            .query_row(
                "SELECT sluice_batch(?1, ?2, ?3)",
                rusqlite::params![table, max_rows, options],
                |r| r.get(0),
            )
            .optional()
            .map(Option::flatten)
            .with_context(|| format!("cannot cut a batch of table '{table}'"))
    }

    /// Records that the cloud applied `batch`; returns rows newly acknowledged.
    pub fn ack(&self, batch: &[u8]) -> anyhow::Result<i64> {
        self.write(|c| c.query_row("SELECT sluice_ack(?1)", [batch], |r| r.get(0)))
            .context("cannot acknowledge the batch at the edge")
    }

    /// Whether the loaded extension has SQL function `name` (newer functions
    /// such as `sluice_rollup_run` are used only where present).
    pub fn has_function(&self, name: &str) -> bool {
        self.conn
            .query_row(
                "SELECT count(*) > 0 FROM pragma_function_list WHERE name = ?1",
                [name],
                |r| r.get(0),
            )
            .unwrap_or(false)
    }

    /// Runs a writing statement that returns one integer
    /// (`SELECT sluice_cleanup(...)`), in its own immediate transaction.
    pub fn write_i64(&self, sql: &str, params: impl rusqlite::Params) -> anyhow::Result<i64> {
        self.write(|c| c.query_row(sql, params, |r| r.get::<_, Option<i64>>(0)))
            .map(Option::unwrap_or_default)
            .with_context(|| format!("{sql} failed"))
    }

    /// The underlying connection, for jobs that run their own SQL.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    pub fn ensure_log(&self) -> anyhow::Result<()> {
        self.conn
            .execute_batch(SYNC_LOG_DDL)
            .context("cannot create sluice_sync_log in the edge database")
    }

    /// Records the start of a run of `job`; returns its log id.
    pub fn log_start(&self, job: Job) -> anyhow::Result<i64> {
        self.ensure_log()?;
        self.conn.execute(
            "INSERT INTO sluice_sync_log (kind, started_at, status) VALUES (?1, ?2, ?3)",
            rusqlite::params![job.name(), now_iso(), RunStatus::Running],
        )?;
        let id = self.conn.last_insert_rowid();
        self.conn.execute(
            "DELETE FROM sluice_sync_log WHERE id <= ?1 - ?2",
            rusqlite::params![id, SYNC_LOG_KEEP_ROWS],
        )?;
        Ok(id)
    }

    /// Records the end of a job run.
    pub fn log_end(&self, id: i64, e: &LogEntry) -> anyhow::Result<()> {
        self.conn.execute(
            "UPDATE sluice_sync_log SET ended_at = ?2, batches = ?3, rows = ?4, bytes = ?5, status = ?6, error = ?7 WHERE id = ?1",
            rusqlite::params![id, now_iso(), e.batches, e.rows, e.bytes, e.status, e.error],
        )?;
        Ok(())
    }

    /// Records a run that has ended already (started at `started_at`), in
    /// one statement: for the pull task, which logs only the runs that did
    /// something.
    pub fn log_finished(&self, job: Job, started_at: &str, e: &LogEntry) -> anyhow::Result<()> {
        self.ensure_log()?;
        self.conn.execute(
            "INSERT INTO sluice_sync_log (kind, started_at, ended_at, batches, rows, bytes, status, error)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            rusqlite::params![job.name(), started_at, now_iso(), e.batches, e.rows, e.bytes, e.status, e.error],
        )?;
        Ok(())
    }

    /// When `job` last started, if ever.
    pub fn last_run(&self, job: Job) -> anyhow::Result<Option<chrono::DateTime<chrono::Utc>>> {
        self.ensure_log()?;
        let t: Option<String> = self.conn.query_row(
            "SELECT max(started_at) FROM sluice_sync_log WHERE kind = ?1",
            [job.name()],
            |r| r.get(0),
        )?;
        Ok(
            t.and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok())
                .map(|t| t.with_timezone(&chrono::Utc)),
        )
    }

    /// The most recent log entries, newest first.
    pub fn recent_log(&self, limit: i64) -> anyhow::Result<Vec<LogEntry>> {
        self.ensure_log()?;
        let mut stmt = self.conn.prepare(
            "SELECT id, kind, started_at, ended_at, batches, rows, bytes, status, error
             FROM sluice_sync_log ORDER BY id DESC LIMIT ?1",
        )?;
        let rows = stmt.query_map([limit], |r| {
            Ok(LogEntry {
                id: r.get(0)?,
                kind: r.get(1)?,
                started_at: r.get(2)?,
                ended_at: r.get(3)?,
                batches: r.get(4)?,
                rows: r.get(5)?,
                bytes: r.get(6)?,
                status: r.get(7)?,
                error: r.get(8)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Moves a pending row aside (`sluice_quarantine(table, seq, reason,
    /// sqlstate)`) after the cloud refused it for its value; 1, or 0 when it
    /// was moved aside already.
    pub fn quarantine(
        &self,
        table: &str,
        seq: i64,
        reason: &str,
        sqlstate: &str,
    ) -> anyhow::Result<i64> {
        self.write(|c| {
            c.query_row(
                "SELECT sluice_quarantine(?1, ?2, ?3, ?4)",
                rusqlite::params![table, seq, reason, sqlstate],
                |r| r.get(0),
            )
        })
        .with_context(|| {
            format!("cannot move row {seq} of table '{table}' aside (sluice_quarantine)")
        })
    }

    /// The rows moved aside (the table `sluice_quarantine`), of one table or
    /// of all, above entry `after_id`, by table and id. Empty with an
    /// extension older than 0.2 (no such table).
    pub fn quarantined(
        &self,
        table: Option<&str>,
        after_id: i64,
    ) -> anyhow::Result<Vec<QuarantineEntry>> {
        if !self.has_quarantine()? {
            return Ok(Vec::new());
        }
        let mut stmt = self.conn.prepare(
            "SELECT tbl, id, seq, row_id, bytes, sqlstate, reason, quarantined_at
               FROM sluice_quarantine
              WHERE (?1 IS NULL OR tbl = ?1) AND id > ?2
              ORDER BY tbl, id",
        )?;
        let rows = stmt.query_map(rusqlite::params![table, after_id], |r| {
            Ok(QuarantineEntry {
                table: r.get(0)?,
                id: r.get(1)?,
                seq: r.get(2)?,
                row_id: r.get(3)?,
                bytes: r.get(4)?,
                sqlstate: r.get(5)?,
                reason: r.get(6)?,
                quarantined_at: r.get(7)?,
            })
        })?;
        rows.collect::<Result<_, _>>()
            .context("cannot list the quarantined rows (sluice_quarantine)")
    }

    /// The largest entry id of `sluice_quarantine` for `table` (0: none, or
    /// an extension older than 0.2).
    pub fn last_quarantine_id(&self, table: &str) -> anyhow::Result<i64> {
        if !self.has_quarantine()? {
            return Ok(0);
        }
        Ok(self.conn.query_row(
            "SELECT coalesce(max(id), 0) FROM sluice_quarantine WHERE tbl = ?1",
            [table],
            |r| r.get(0),
        )?)
    }

    fn has_quarantine(&self) -> anyhow::Result<bool> {
        Ok(self.conn.query_row(
            "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'sluice_quarantine'",
            [],
            |r| r.get(0),
        )?)
    }

    /// Releases quarantine entries (`sluice_release(table [, id])`): the
    /// operator fixed the rows (or deleted them). Returns the entries released.
    pub fn release(&self, table: &str, id: Option<i64>) -> anyhow::Result<i64> {
        self.write(|c| match id {
            Some(id) => c.query_row(
                "SELECT sluice_release(?1, ?2)",
                rusqlite::params![table, id],
                |r| r.get(0),
            ),
            None => c.query_row("SELECT sluice_release(?1)", [table], |r| r.get(0)),
        })
        .with_context(|| {
            format!("cannot release the quarantined rows of table '{table}' (sluice_release)")
        })
    }

    /// Schedules acknowledged rows of `table` to be sent again
    /// (`sluice_resend(table, options)`); returns the rows scheduled.
    pub fn resend(&self, table: &str, options: &str) -> anyhow::Result<i64> {
        self.write(|c| {
            c.query_row(
                "SELECT sluice_resend(?1, ?2)",
                rusqlite::params![table, options],
                |r| r.get(0),
            )
        })
        .with_context(|| format!("cannot schedule a re-send of table '{table}' (sluice_resend)"))
    }

    pub fn pending(&self, table: &str) -> anyhow::Result<i64> {
        self.conn
            .query_row("SELECT sluice_pending(?1)", [table], |r| r.get(0))
            .with_context(|| format!("cannot count pending rows of table '{table}'"))
    }

    pub fn status(&self) -> anyhow::Result<Vec<TableStatus>> {
        let mut out = Vec::new();
        for t in self.tracked()? {
            out.push(TableStatus {
                pending_rows: self.pending(&t.table)?,
                table: t.table,
                acked_batches: t.acked_batches,
                acked_rows: t.acked_rows,
                last_ack_ms: t.acked_at,
                quarantined_rows: t.quarantined_rows,
                resend_rows: t.resend_rows,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::extension;

    /// A config for an edge database with the default schema in `dir`;
    /// `device_extra` goes into `[device]`.
    fn config(dir: &Path, device_extra: &str) -> Config {
        let db = dir.join("edge.db");
        if !db.exists() {
            let conn = Connection::open(&db).unwrap();
            // SAFETY: loads the extension under test.
            unsafe {
                let _guard = rusqlite::LoadExtensionGuard::new(&conn).unwrap();
                conn.load_extension(extension(), None::<&str>).unwrap();
            }
            conn.execute_batch(include_str!("../../sql/edge_schema.sql"))
                .unwrap();
        }
        Config::parse(&format!(
            "[device]\nid = \"box-1\"\n{device_extra}\n[edge]\ndatabase = {:?}\nextension = {:?}\n[cloud]\nurl = \"postgres://device@127.0.0.1:1/cloud\"\n",
            db.display().to_string(),
            extension().display().to_string()
        ))
        .unwrap()
    }

    #[tokio::test]
    async fn open_records_the_zone_and_the_machine_and_a_move_begins_an_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(
            dir.path(),
            "machine_id = \"machine-a\"\ntime_zone = \"Europe/Berlin\"",
        );
        let edge = Edge::open(&cfg).await.unwrap();
        assert_eq!(
            edge.moved(),
            None,
            "the first machine is recorded, no epoch"
        );
        let first = edge.run(|e| e.identity()).await.unwrap();
        assert_eq!(first.machine.as_deref(), Some("machine-a"));
        assert_eq!(first.zone.as_deref(), Some("Europe/Berlin"));
        assert_eq!(first.device_id.as_deref(), Some("box-1"));
        assert_eq!(first.epochs.len(), 1);
        drop(edge);

        // The same machine again: nothing happens.
        let edge = Edge::open(&cfg).await.unwrap();
        assert_eq!(edge.moved(), None);
        drop(edge);

        // The file on another machine: a new epoch, before anything is sent.
        let moved_cfg = config(dir.path(), "machine_id = \"machine-b\"");
        let edge = Edge::open(&moved_cfg).await.unwrap();
        let moved = edge.moved().cloned().expect("a move");
        assert_eq!(moved.from.as_deref(), Some("machine-a"));
        assert_eq!(moved.to, "machine-b");
        let now = edge.run(|e| e.identity()).await.unwrap();
        assert_eq!(now.stream_id, moved.new_stream);
        assert_ne!(now.stream_id, first.stream_id);
        assert_eq!(now.epochs.len(), 2);
        assert_eq!(now.epochs[1].parent_stream, Some(first.stream_id));
        assert_eq!(
            now.epochs[1].reason,
            "moved from machine 'machine-a' to 'machine-b'"
        );
        // The default zone is set back to UTC by a config without one.
        assert_eq!(now.zone.as_deref(), Some("UTC"));
    }

    #[tokio::test]
    async fn new_epoch_returns_the_new_stream_and_records_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), "machine_id = \"machine-a\"");
        let edge = Edge::open(&cfg).await.unwrap();
        let before = edge.run(|e| e.identity()).await.unwrap();
        let reason = "sluice.ingest: batch box-1/t/... the edge database was restored";
        let new = edge.run(move |e| e.new_epoch(reason)).await.unwrap();
        let after = edge.run(|e| e.identity()).await.unwrap();
        assert_eq!(after.stream_id, new);
        assert_ne!(new, before.stream_id);
        let last = after.epochs.last().unwrap();
        assert_eq!(
            (last.stream_id, last.parent_stream, last.reason.as_str()),
            (new, Some(before.stream_id), reason)
        );
        assert!(stream_hex(new).len() == 16, "{}", stream_hex(new));
    }

    #[test]
    fn run_status_round_trips_through_its_name() {
        for s in [
            RunStatus::Running,
            RunStatus::Success,
            RunStatus::Partial,
            RunStatus::Failed,
            RunStatus::Skipped,
        ] {
            assert_eq!(s.as_str().parse::<RunStatus>(), Ok(s));
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        assert!("done".parse::<RunStatus>().is_err());
    }

    #[test]
    fn the_streams_of_an_identity_are_every_epoch() {
        let identity = |json: &str| serde_json::from_str::<Identity>(json).map(|i| i.streams());
        let json = r#"{"device_id": "box-1", "stream_id": 9, "epochs": [
            {"stream_id": 7, "parent_stream": null}, {"stream_id": 9, "parent_stream": 7}]}"#;
        assert_eq!(identity(json).unwrap(), [7, 9]);
        assert_eq!(identity(r#"{"stream_id": 5}"#).unwrap(), [5]);
        assert!(identity("{}").is_err());
        assert!(identity("not json").is_err());
    }

    #[test]
    fn the_json_of_sluice_tracked_reads() {
        let t: Vec<Tracked> = serde_json::from_str(
            r#"[{"table": "a", "mutable": true, "local_only": true, "local_only_columns": ["x"],
                 "key_columns": null, "time_column": "at", "acked_seq": 10,
                 "acked_batches": 2, "acked_rows": 10, "acked_at": null,
                 "acked_ranges": [[20, 30]]}]"#,
        )
        .unwrap();
        assert_eq!(t[0].local_only_columns, ["x"]);
        assert!(t[0].acked(10) && !t[0].acked(11) && !t[0].acked(20) && t[0].acked(25));
    }
}
