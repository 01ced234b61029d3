//! The edge side: the SQLite database the pipeline writes, with `sluice0.so`
//! loaded. Everything goes through the extension's SQL functions, exactly as
//! any other client would call them; the agent holds no sync state of its own.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use rusqlite::{Connection, OptionalExtension};

use crate::config::Config;

pub struct Edge {
    conn: Connection,
}

/// One tracked table, as `sluice status` shows it.
#[derive(Debug, serde::Serialize)]
pub struct TableStatus {
    pub table: String,
    pub pending_rows: i64,
    pub acked_batches: i64,
    pub acked_rows: i64,
    /// Unix milliseconds of the last acknowledgement.
    pub last_ack_ms: Option<i64>,
}

/// The agent's record of one job run, kept at the edge in `sluice_sync_log`:
/// the answer to "did last night's sync work?".
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct LogEntry {
    pub id: i64,
    /// `sync`, `full_sync`, `cleanup`, `rollup`, `embed`, `budget`.
    pub kind: String,
    pub started_at: String,
    pub ended_at: Option<String>,
    pub batches: i64,
    pub rows: i64,
    pub bytes: i64,
    /// `running` (or killed while running), `success`, `partial`, `failed`, `skipped`.
    pub status: String,
    pub error: Option<String>,
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

impl Edge {
    /// Opens the database, loads the extension and sets the device id.
    pub fn open(cfg: &Config) -> anyhow::Result<Edge> {
        let edge = Edge::open_path(
            &cfg.edge.database,
            &cfg.extension_path(),
            cfg.edge.busy_timeout_ms,
        )?;
        edge.set_device(&cfg.device.id)?;
        Ok(edge)
    }

    pub fn open_path(
        database: &Path,
        extension: &Path,
        busy_timeout_ms: u64,
    ) -> anyhow::Result<Edge> {
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
        // lose is the agent's last acknowledgements, and a lost
        // acknowledgement only means the batch is sent again and recognised
        // as a replay. It makes an acknowledgement ~20x cheaper.
        let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
        if mode.eq_ignore_ascii_case("wal") {
            conn.execute_batch("PRAGMA synchronous = NORMAL")?;
        }
        Ok(Edge { conn })
    }

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

    /// The tables registered with `sluice_track`, by name.
    pub fn tracked_tables(&self) -> anyhow::Result<Vec<String>> {
        let exists: bool = self.conn.query_row(
            "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'sluice_tables'",
            [],
            |r| r.get(0),
        )?;
        if !exists {
            return Ok(Vec::new());
        }
        let mut stmt = self
            .conn
            .prepare("SELECT tbl FROM sluice_tables ORDER BY tbl")?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
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

    /// The time column declared for a tracked table (`sluice_track`'s
    /// `"time"` option), if any.
    pub fn time_column(&self, table: &str) -> anyhow::Result<Option<String>> {
        self.conn
            .query_row(
                "SELECT time_column FROM sluice_tables WHERE tbl = ?1",
                [table],
                |r| r.get::<_, Option<String>>(0),
            )
            .optional()
            .map(Option::flatten)
            .with_context(|| format!("cannot read the registration of table '{table}'"))
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

    /// Records the start of a job run; returns its log id.
    pub fn log_start(&self, kind: &str) -> anyhow::Result<i64> {
        self.ensure_log()?;
        self.conn.execute(
            "INSERT INTO sluice_sync_log (kind, started_at, status) VALUES (?1, ?2, 'running')",
            rusqlite::params![kind, now_iso()],
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

    /// When `kind` last started, if ever.
    pub fn last_run(&self, kind: &str) -> anyhow::Result<Option<chrono::DateTime<chrono::Utc>>> {
        self.ensure_log()?;
        let t: Option<String> = self.conn.query_row(
            "SELECT max(started_at) FROM sluice_sync_log WHERE kind = ?1",
            [kind],
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

    pub fn pending(&self, table: &str) -> anyhow::Result<i64> {
        self.conn
            .query_row("SELECT sluice_pending(?1)", [table], |r| r.get(0))
            .with_context(|| format!("cannot count pending rows of table '{table}'"))
    }

    pub fn status(&self) -> anyhow::Result<Vec<TableStatus>> {
        let mut out = Vec::new();
        for table in self.tracked_tables()? {
            let (acked_batches, acked_rows, last_ack_ms) = self.conn.query_row(
                "SELECT coalesce(acked_batches, 0), coalesce(acked_rows, 0), acked_at FROM sluice_tables WHERE tbl = ?1",
                [&table],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )?;
            out.push(TableStatus {
                pending_rows: self.pending(&table)?,
                table,
                acked_batches,
                acked_rows,
                last_ack_ms,
            });
        }
        Ok(out)
    }
}
