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
        Ok(Edge { conn })
    }

    fn set_device(&self, id: &str) -> anyhow::Result<()> {
        let current: Option<String> = self
            .conn
            .query_row("SELECT sluice_device()", [], |r| r.get(0))?;
        if current.as_deref() != Some(id) {
            self.conn
                .query_row("SELECT sluice_device(?1)", [id], |_| Ok(()))
                .context("cannot set the device id")?;
        }
        Ok(())
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
    pub fn next_batch(&self, table: &str, max_rows: u32) -> anyhow::Result<Option<Vec<u8>>> {
        self.conn
            .query_row(
                "SELECT sluice_batch(?1, ?2)",
                rusqlite::params![table, max_rows],
                |r| r.get(0),
            )
            .optional()
            .map(Option::flatten)
            .with_context(|| format!("cannot cut a batch of table '{table}'"))
    }

    /// Records that the cloud applied `batch`; returns rows newly acknowledged.
    pub fn ack(&self, batch: &[u8]) -> anyhow::Result<i64> {
        self.conn
            .query_row("SELECT sluice_ack(?1)", [batch], |r| r.get(0))
            .context("cannot acknowledge the batch at the edge")
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
