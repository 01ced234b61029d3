//! The storage budget: `sluice_enforce_budget` keeps the database under a
//! byte budget during a long outage.
//!
//! It drops, first, raw rows of rollup sources that every rollup of the
//! source has already processed, in windows that ended more than a
//! late-data horizon ago, oldest window first ([`crate::seal`]); then
//! (unless told `rolled_up_only`) the oldest rows of the other tracked
//! tables that have a time column, oldest hour first. Never a rollup target
//! (the aggregates), never a row a rollup has not processed, never a table
//! without a time column. Every drop is a row of `sluice_drops`, and the
//! rollup never recomputes a window that starts before the newest dropped
//! row of its source (it would compute it from partial data).
//!
//! Within each tier, rows whose time is from the future (a clock that
//! jumped forward and was corrected since, [`crate::time::future_after`])
//! are taken for the oldest and go first: their time cannot be right, they
//! were written before the clock was corrected, and waiting for their time
//! would let the disk fill. Rolled-up ones go once every rollup processed
//! them, and they seal nothing ([`crate::seal`]).

use std::path::PathBuf;

use rusqlite::functions::Context;
use rusqlite::types::{Value, ValueRef};
use rusqlite::{params, Connection, OptionalExtension};
use serde_json::Value as Json;
use sluice_wire::names::quote_ident;

use crate::bookkeeping::budget::BudgetState;
use crate::bookkeeping::{self, drops, rollups, tables};
use crate::glue::{arg_int, arg_opt_text, arg_raw, atomic, connection, finish, now_ms, Fail, Res};
use crate::options::parse_duration;
use crate::reserve;
use crate::schema::{table_info, TableInfo};
use crate::seal::{rolled_up, sources, Source, Window, DEFAULT_HORIZON_SECS};
use crate::sequence::seq_column;
use crate::time::{epoch_of, future_after, EpochSql};

/// The bytes the database needs: `(page_count − freelist_count) × page_size`
/// of `main`, and the whole file (`page_count × page_size`).
pub fn used_bytes(conn: &Connection) -> Res<(i64, i64)> {
    let (pages, free, size): (i64, i64, i64) = conn.query_row(
        "SELECT (SELECT page_count FROM pragma_page_count), \
                (SELECT freelist_count FROM pragma_freelist_count), \
                (SELECT page_size FROM pragma_page_size)",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    Ok(((pages - free) * size, pages * size))
}

/// The sizes on disk of the main file and the WAL file of `main` (0 for
/// a database that is not a file, and for a WAL file when not in WAL mode).
pub fn disk_bytes(conn: &Connection) -> Res<(i64, i64)> {
    let file: Option<String> = conn
        .query_row(
            "SELECT file FROM pragma_database_list WHERE name = 'main'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    let Some(file) = file.filter(|f| !f.is_empty()) else {
        return Ok((0, 0));
    };
    let size = |p: &str| std::fs::metadata(p).map_or(0, |m| m.len() as i64);
    let mode: String = conn.query_row("PRAGMA main.journal_mode", [], |r| r.get(0))?;
    let wal = if mode.eq_ignore_ascii_case("wal") {
        size(&format!("{file}-wal"))
    } else {
        0
    };
    Ok((size(&file), wal))
}

/// What the budget compares with `max_bytes`: the data pages of `main`
/// plus its WAL file. SQLite reuses the WAL from its start after a
/// checkpoint but does not shrink it (unless `journal_size_limit` says so),
/// so it takes that much disk whatever it holds.
fn budget_bytes(conn: &Connection) -> Res<i64> {
    Ok(used_bytes(conn)?.0 + disk_bytes(conn)?.1)
}

// ---------------------------------------------------------------------------
// sluice_enforce_budget

struct BudgetOptions {
    horizon: i64,
    now: i64,
    /// Only raw rows that are rolled up may go (no second tier).
    rolled_up_only: bool,
    /// Bytes the filesystem holding the database must have free.
    min_free: Option<i64>,
    /// The reserve to keep beside the database ([`crate::reserve`]).
    reserve: Option<i64>,
}

const BUDGET_OPTIONS: &str = "horizon, now, rolled_up_only, min_free_bytes, reserve_bytes";

/// A byte count of the options: a whole number from 0 to `most`.
fn bytes_option(name: &str, v: &Json, most: i64) -> Res<i64> {
    let what = match v {
        Json::Number(n) => match n.as_i64() {
            Some(b) if (0..=most).contains(&b) => return Ok(b),
            Some(b) if b < 0 => format!("got {b}"),
            _ if n.as_u64().is_some() || n.as_f64().is_some_and(|f| f >= most as f64) => {
                return Err(Fail(format!(
                    "option '{name}' is {n} bytes, more than the most, {most}"
                )))
            }
            _ => format!("got {n}"),
        },
        Json::Null => "got null".into(),
        Json::Bool(_) => "got a boolean".into(),
        Json::String(_) => "got text".into(),
        Json::Array(_) | Json::Object(_) => "got JSON that is not a number".into(),
    };
    Err(Fail(format!(
        "option '{name}' must be a whole number of bytes from 0 to {most}, {what}"
    )))
}

fn parse_budget_options(text: Option<&str>) -> Res<BudgetOptions> {
    let mut o = BudgetOptions {
        horizon: DEFAULT_HORIZON_SECS,
        now: now_ms() / 1000,
        rolled_up_only: false,
        min_free: None,
        reserve: None,
    };
    let Some(text) = text else { return Ok(o) };
    let v: Json =
        serde_json::from_str(text).map_err(|e| Fail(format!("options are not valid JSON: {e}")))?;
    let Json::Object(map) = v else {
        return Err(Fail(
            "options must be a JSON object like {\"horizon\": \"1 hour\"}".into(),
        ));
    };
    for (k, v) in &map {
        match (k.as_str(), v) {
            ("horizon", Json::String(s)) => o.horizon = parse_duration(s).map_err(Fail)?,
            ("horizon", Json::Number(n)) => {
                o.horizon = n
                    .as_i64()
                    .filter(|h| *h >= 0)
                    .ok_or_else(|| Fail("option 'horizon' must be whole seconds >= 0".into()))?
            }
            ("now", Json::Number(n)) => {
                o.now = n
                    .as_i64()
                    .ok_or_else(|| Fail("option 'now' must be whole unix seconds".into()))?
            }
            ("now", Json::String(s)) => {
                o.now = epoch_of(ValueRef::Text(s.as_bytes()))
                    .ok_or_else(|| Fail(format!("option 'now': '{s}' is not an ISO-8601 time")))?
            }
            ("rolled_up_only", Json::Bool(b)) => o.rolled_up_only = *b,
            ("min_free_bytes", v) => {
                o.min_free = Some(bytes_option("min_free_bytes", v, MAX_MIN_FREE_BYTES)?)
            }
            ("reserve_bytes", v) => {
                o.reserve = Some(bytes_option(
                    "reserve_bytes",
                    v,
                    reserve::MAX_RESERVE_BYTES,
                )?)
            }
            ("horizon", _) => {
                return Err(Fail(
                    "option 'horizon' must be seconds or text like '1 hour'".into(),
                ))
            }
            ("now", _) => {
                return Err(Fail(
                    "option 'now' must be unix seconds or ISO-8601 text".into(),
                ))
            }
            ("rolled_up_only", _) => {
                return Err(Fail("option 'rolled_up_only' must be true or false".into()))
            }
            (other, _) => {
                return Err(Fail(format!(
                    "unknown option '{other}' (known options: {BUDGET_OPTIONS})"
                )))
            }
        }
    }
    Ok(o)
}

/// Free space the budget wants beyond `min_free_bytes` and the reserve:
/// its own records and the checkpoint write after it measured (64 KiB).
pub const SLACK_BYTES: i64 = 64 * 1024;

/// The largest `min_free_bytes` (1 PiB); the filesystem's own size is
/// checked at the call.
pub const MAX_MIN_FREE_BYTES: i64 = 1 << 50;

/// `sluice_enforce_budget(max_bytes [, options])` → raw rows dropped.
pub fn sluice_enforce_budget(ctx: &Context<'_>) -> rusqlite::Result<Value> {
    finish("sluice_enforce_budget", enforce(ctx))
}

fn enforce(ctx: &Context<'_>) -> Res<Value> {
    let opts = parse_budget_options(arg_opt_text(ctx, 1, "options")?)?;
    let max = match arg_raw(ctx, 0)? {
        // NULL: no byte budget, only the filesystem's free space.
        ValueRef::Null if opts.min_free.is_some() => None,
        _ => Some(arg_int(ctx, 0, "max_bytes")?),
    };
    if let Some(max) = max.filter(|m| *m < 1) {
        return Err(Fail(format!("max_bytes must be positive, got {max}")));
    }
    let conn = connection(ctx)?;
    Ok(Value::Integer(enforce_on(&conn, max, &opts)?))
}

/// The filesystem holding the database, as one call of the budget sees it.
struct Disk {
    file: PathBuf,
    /// Free below [`reserve::FULL_BYTES`] when the call began.
    full: bool,
    /// Bytes the reserve held that the call released.
    released: i64,
    /// Under min_free_bytes (or full) when the call began: the WAL is
    /// checkpointed before the drops too.
    short: bool,
}

/// What the drops of one transaction aim for.
struct Goal {
    max: Option<i64>,
    /// Free bytes wanted (min_free_bytes, room for the reserve), 0: none.
    want_free: i64,
    /// Free bytes below which the last resort may run: min_free_bytes, or
    /// [`reserve::FULL_BYTES`] on a full filesystem.
    need_free: i64,
    /// The filesystem's free bytes and the data bytes of `main` when the
    /// transaction began: data pages freed since count as free space (given
    /// back by the incremental vacuum and the checkpoint, or reused by
    /// SQLite before the file grows).
    free_base: i64,
    data_base: i64,
    /// A transaction of a full disk frees at most this many data bytes
    /// (and at least one chunk), so that its own WAL frames fit.
    step: Option<i64>,
}

impl Goal {
    fn free_now(&self, conn: &Connection) -> Res<i64> {
        Ok(self
            .free_base
            .saturating_add(self.data_base - used_bytes(conn)?.0))
    }

    fn over_max(&self, conn: &Connection) -> Res<bool> {
        match self.max {
            Some(m) => Ok(budget_bytes(conn)? > m),
            None => Ok(false),
        }
    }

    /// More should go: over `max_bytes`, or less free than wanted.
    fn unmet(&self, conn: &Connection) -> Res<bool> {
        Ok(self.over_max(conn)? || (self.want_free > 0 && self.free_now(conn)? < self.want_free))
    }

    /// The last resort may run: the filesystem is full or under
    /// min_free_bytes.
    fn short(&self, conn: &Connection) -> Res<bool> {
        Ok(self.need_free > 0 && self.free_now(conn)? < self.need_free)
    }

    /// This transaction has freed its share.
    fn step_done(&self, conn: &Connection) -> Res<bool> {
        match self.step {
            Some(s) => Ok(self.data_base - used_bytes(conn)?.0 >= s),
            None => Ok(false),
        }
    }
}

fn enforce_on(conn: &Connection, max: Option<i64>, o: &BudgetOptions) -> Res<i64> {
    let file = reserve::db_file(conn)?;
    if file.is_none() && (o.min_free.is_some() || o.reserve.is_some()) {
        return Err(Fail(
            "the options min_free_bytes and reserve_bytes need a database file; this one is \
             in memory or temporary"
                .into(),
        ));
    }
    let mut disk = None;
    if let Some(file) = file {
        let (free, size) = reserve::space(&file)?;
        let asked = o
            .min_free
            .unwrap_or(0)
            .saturating_add(o.reserve.unwrap_or(0));
        if asked > size {
            return Err(Fail(format!(
                "min_free_bytes + reserve_bytes ({asked}) is more than the size of the \
                 filesystem holding {} ({size} bytes)",
                file.display()
            )));
        }
        // At 100 %: the reserve goes first, so that the drops can write.
        let full = free < reserve::FULL_BYTES;
        let released = if full { reserve::release(&file)? } else { 0 };
        let short = full || free < o.min_free.unwrap_or(0);
        disk = Some(Disk {
            file,
            full,
            released,
            short,
        });
    }
    // Called outside a transaction, in WAL mode, the call commits as it
    // goes and checkpoints: what a full disk needs (a checkpoint cannot run
    // inside a transaction, and one transaction dropping much may not fit).
    let stepwise = conn.is_autocommit() && disk.is_some() && wal_mode(conn)?;
    let mut notes = Vec::new();
    if stepwise && disk.as_ref().is_some_and(|d| d.short) {
        checkpoint_if_it_fits(conn, disk.as_ref(), &mut notes)?;
    }
    let mut total = 0i64;
    let mut step_limit: Option<i64> = None;
    loop {
        let goal = goal(conn, max, o, disk.as_ref(), stepwise, step_limit)?;
        let run = || -> Res<(i64, bool)> {
            bookkeeping::ensure(conn)?;
            enforce_in(conn, &goal, o, total, disk.as_ref(), &notes)
        };
        let step = if stepwise {
            immediate(conn, run)
        } else {
            atomic(conn, "sluice_enforce_budget", run)
        };
        let (n, more) = match step {
            // A step of a full disk that did not fit: once more, one chunk.
            Err(e) if stepwise && reserve::is_full(&e) && step_limit != Some(0) => {
                step_limit = Some(0);
                continue;
            }
            other => other?,
        };
        total += n;
        if stepwise && n > 0 {
            checkpoint(conn, &mut notes);
        }
        if !(stepwise && more && n > 0) {
            break;
        }
        step_limit = None;
    }
    if let Some(d) = &disk {
        finish_disk(conn, d, o, stepwise)?;
    }
    Ok(total)
}

/// The goal of the next transaction.
fn goal(
    conn: &Connection,
    max: Option<i64>,
    o: &BudgetOptions,
    disk: Option<&Disk>,
    stepwise: bool,
    step_limit: Option<i64>,
) -> Res<Goal> {
    let data_base = used_bytes(conn)?.0;
    let Some(d) = disk else {
        return Ok(Goal {
            max,
            want_free: 0,
            need_free: 0,
            free_base: 0,
            data_base,
            step: None,
        });
    };
    let free_base = reserve::free_bytes(&d.file)?;
    let min_free = o.min_free.unwrap_or(0);
    // Room for the reserve too, when it is asked for and missing.
    let missing = o.reserve.map_or(0, |r| (r - reserve::held(&d.file)).max(0));
    let floor = if d.full {
        min_free.max(reserve::FULL_BYTES)
    } else {
        min_free
    };
    let want_free = if floor > 0 || missing > 0 {
        floor.saturating_add(missing).saturating_add(SLACK_BYTES)
    } else {
        0
    };
    // On a disk that was full, the reserve released is a loan: the last
    // resort may run until it can be made again, so that the next full
    // disk finds one.
    let need_free = if d.full { want_free } else { min_free };
    Ok(Goal {
        max,
        want_free,
        need_free,
        free_base,
        data_base,
        step: stepwise.then(|| step_limit.unwrap_or((free_base / 2).max(1))),
    })
}

/// After the drops: the checkpoint's figures and the reserve. The reserve
/// is made (or resized) when the filesystem keeps at least min_free_bytes
/// (and [`reserve::FULL_BYTES`]) free beside it; not inside a caller's
/// transaction that began on a full disk, whose commit needs the room.
fn finish_disk(conn: &Connection, d: &Disk, o: &BudgetOptions, stepwise: bool) -> Res<()> {
    let mut reserve_note = None;
    if let Some(want) = o.reserve {
        let have = reserve::held(&d.file);
        let free = reserve::free_bytes(&d.file)?;
        let keep = o.min_free.unwrap_or(0).max(reserve::FULL_BYTES);
        if want == 0 {
            reserve::release(&d.file)?;
        } else if have != want {
            if (stepwise || !d.full) && free - (want - have) >= keep {
                if !reserve::make(&d.file, want)? {
                    reserve_note = Some("the reserve could not be written: the disk filled");
                }
            } else {
                reserve_note = Some("no room for the reserve yet");
            }
        }
    }
    let free = reserve::free_bytes(&d.file)?;
    let held = reserve::held(&d.file);
    // A WAL larger than the reserve: at the next full disk the checkpoint
    // may need more room than the reserve gives back.
    let wal = disk_bytes(conn)?.1;
    let wal_note = format!(
        "the WAL ({wal} bytes) is larger than the reserve ({held} bytes): a full disk may not \
         be recoverable from inside; raise reserve_bytes or lower PRAGMA wal_autocheckpoint"
    );
    let reserve_note = match reserve_note.filter(|_| o.reserve.is_some_and(|r| held < r)) {
        Some(n) => Some(n.to_string()),
        None => (o.reserve.is_some_and(|r| r > 0) && held > 0 && wal > held).then_some(wal_note),
    };
    let wrote =
        bookkeeping::budget::record_disk(conn, free, o.min_free, held, reserve_note.as_deref());
    match wrote {
        // The state is what the transaction measured; the drops stand.
        Err(e) if reserve::is_full(&e) => Ok(()),
        other => other,
    }
}

/// Runs `f` in a transaction of its own (`BEGIN IMMEDIATE`: the writer's
/// lock is taken at once, waiting the busy timeout, as the agent does).
fn immediate<T>(conn: &Connection, f: impl FnOnce() -> Res<T>) -> Res<T> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let out = f().and_then(|v| {
        conn.execute_batch("COMMIT")?;
        Ok(v)
    });
    if out.is_err() && !conn.is_autocommit() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    out
}

fn wal_mode(conn: &Connection) -> Res<bool> {
    let mode: String = conn.query_row("PRAGMA main.journal_mode", [], |r| r.get(0))?;
    Ok(mode.eq_ignore_ascii_case("wal"))
}

/// `PRAGMA wal_checkpoint(TRUNCATE)`; a checkpoint that did not complete
/// (readers, a full disk) is noted, not an error: the drops stand, and the
/// next checkpoint gives the space back.
fn checkpoint(conn: &Connection, notes: &mut Vec<String>) {
    match conn.query_row("PRAGMA main.wal_checkpoint(TRUNCATE)", [], |r| {
        r.get::<_, i64>(0)
    }) {
        Ok(0) => {}
        Ok(_) => notes.push("the checkpoint was blocked by a reader".into()),
        Err(e) => notes.push(format!(
            "the checkpoint failed: {}",
            crate::glue::sqlite_message(&e)
        )),
    }
}

/// The checkpoint before the drops, when the main file has room to take
/// the WAL's pages: a checkpoint that fails half way on a full disk keeps
/// the space it grew the file by, and the drops would then find none.
fn checkpoint_if_it_fits(
    conn: &Connection,
    disk: Option<&Disk>,
    notes: &mut Vec<String>,
) -> Res<()> {
    let Some(d) = disk else { return Ok(()) };
    let (_, file_pages_bytes) = used_bytes(conn)?;
    let (main_on_disk, wal) = disk_bytes(conn)?;
    if wal == 0 {
        return Ok(());
    }
    let growth = (file_pages_bytes - main_on_disk).max(0);
    if growth < reserve::free_bytes(&d.file)? {
        checkpoint(conn, notes);
    } else {
        notes.push(format!(
            "no checkpoint before the drops: the main file would grow by {growth} bytes"
        ));
    }
    Ok(())
}

/// One transaction of the budget: drops until the goal is met (or this
/// step's share is freed); returns the rows dropped and whether it stopped
/// for the step (more may go in the next one). `before`: rows dropped by
/// the call's earlier steps.
fn enforce_in(
    conn: &Connection,
    goal: &Goal,
    o: &BudgetOptions,
    before: i64,
    disk: Option<&Disk>,
    notes: &[String],
) -> Res<(i64, bool)> {
    let mut dropped = 0i64;
    let mut more = false;
    let mut note = String::new();
    if goal.unmet(conn)? {
        let srcs = sources(conn)?;
        if srcs.is_empty() && o.rolled_up_only {
            note = "no rollup is registered, so no raw row may be dropped".into();
        }
        // Dropped to make room at the edge; the cloud keeps the rows.
        (dropped, more) =
            bookkeeping::tombstones::quietly(conn, || drop_rows(conn, goal, o, &srcs))?;
        if dropped > 0 && auto_vacuum_incremental(conn)? {
            // Each step frees pages; run it to the end.
            let mut stmt = conn.prepare("PRAGMA main.incremental_vacuum")?;
            let mut rows = stmt.query([])?;
            while rows.next()?.is_some() {}
        }
    }
    let (data, file) = used_bytes(conn)?;
    let wal = disk_bytes(conn)?.1;
    let after = data + wal;
    let within = goal.max.is_none_or(|m| after <= m);
    let free = disk.map(|_| goal.free_now(conn)).transpose()?;
    let free_short = disk.is_some() && goal.want_free > 0 && free.unwrap_or(0) < goal.want_free;
    if !more && (!within || free_short) && note.is_empty() {
        note = if o.rolled_up_only {
            "over budget: no more raw rows that are rolled up and older than the horizon; \
             with rolled_up_only nothing else is dropped"
                .into()
        } else if !within {
            "over budget: what is left may not be dropped (rollup targets, raw rows not yet \
             rolled up or within the horizon, tables without a time column, each table's \
             newest row)"
                .into()
        } else {
            "short of free space: what is left may not be dropped (rollup targets, tables \
             without a time column, each table's newest row)"
                .into()
        };
    }
    let mut all_notes: Vec<String> = Vec::new();
    if let Some(d) = disk.filter(|d| d.released > 0) {
        all_notes.push(format!(
            "the filesystem was full: released the reserve of {} bytes",
            d.released
        ));
    }
    all_notes.extend(notes.iter().cloned());
    if !note.is_empty() {
        all_notes.push(note);
    }
    bookkeeping::budget::write(
        conn,
        &BudgetState {
            // NULL max_bytes (only min_free_bytes): 0 in the state.
            max_bytes: goal.max.unwrap_or(0),
            used_bytes: after,
            file_bytes: file + wal,
            wal_bytes: wal,
            within_budget: within && !free_short,
            dropped_rows: before + dropped,
            checked_at: iso_now(conn)?,
            note: (!all_notes.is_empty()).then(|| all_notes.join("; ")),
            free_bytes: free,
            min_free_bytes: o.min_free,
            reserve_bytes: disk.map(|d| reserve::held(&d.file)),
        },
    )?;
    Ok((dropped, more))
}

fn auto_vacuum_incremental(conn: &Connection) -> Res<bool> {
    let mode: i64 = conn.query_row("PRAGMA main.auto_vacuum", [], |r| r.get(0))?;
    Ok(mode == 2)
}

fn iso_now(conn: &Connection) -> Res<String> {
    Ok(
        conn.query_row("SELECT strftime('%Y-%m-%dT%H:%M:%fZ', 'now')", [], |r| {
            r.get(0)
        })?,
    )
}

/// The rows of the other tracked tables go an hour (of their time column)
/// at a time, oldest hour first across the tables.
pub const RAW_CHUNK_SECS: i64 = 3600;

/// A table the budget may drop rows of, and what it dropped.
struct Droppable {
    name: String,
    /// The watermark when tracked: rows above it are counted as unsynced.
    acked_seq: Option<i64>,
    /// SQL over `sq`: the row is in an acknowledged range above the
    /// watermark (newest-first draining), so it is synced after all.
    in_acked_range: String,
    rows: i64,
    unsynced: i64,
    /// Rows dropped before every rollup of the table had processed them
    /// (the last resort); `None` when no rollup reads the table.
    unrolled: Option<i64>,
    first: i64,
    last: i64,
    /// The seal: the newest dropped time not from the future, + 1.
    sealed_until: i64,
    /// Its row of `sluice_drops` for this call, once it dropped a row.
    record: Option<i64>,
}

impl Droppable {
    fn new(conn: &Connection, name: &str, source: bool) -> Res<Droppable> {
        let acked_seq = tables::get(conn, name)?.map(|t| t.acked_seq);
        let ranges = match acked_seq {
            Some(a) => bookkeeping::ranges::above(conn, name, a)?,
            None => Vec::new(),
        };
        let in_acked_range = if ranges.is_empty() {
            "0".to_string()
        } else {
            ranges
                .iter()
                .map(|(lo, hi)| format!("(sq > {lo} AND sq <= {hi})"))
                .collect::<Vec<_>>()
                .join(" OR ")
        };
        Ok(Droppable {
            name: name.to_string(),
            acked_seq,
            in_acked_range,
            rows: 0,
            unsynced: 0,
            unrolled: source.then_some(0),
            first: i64::MAX,
            last: i64::MIN,
            sealed_until: i64::MIN,
            record: None,
        })
    }

    /// Writes what was dropped so far into `sluice_drops` (one row per table
    /// and call), so that the size measured next includes the record.
    fn record(&mut self, conn: &Connection, now: &str) -> Res<()> {
        let d = drops::Drop {
            tbl: &self.name,
            rows: self.rows,
            unsynced: self.acked_seq.map(|_| self.unsynced),
            unrolled: self.unrolled,
            first: self.first,
            last: self.last,
            sealed_until: self.sealed_until,
            dropped_at: now,
        };
        match self.record {
            None => self.record = Some(drops::insert(conn, &d)?),
            Some(id) => drops::update(conn, id, &d)?,
        }
        Ok(())
    }
}

/// SQL for the sequence number of a row of `name` (what the watermark
/// compares): the rowid alias or `sluice_version`; NULL when untracked.
fn seq_sql(conn: &Connection, info: &TableInfo) -> Res<String> {
    match tables::get(conn, &info.name)? {
        Some(t) => Ok(seq_column(info, &t)?.to_string()),
        None => Ok("NULL".into()),
    }
}

/// Drops candidate rows until the goal is met: first the raw rows that
/// are rolled up (oldest window first), then, unless `rolled_up_only`, the
/// oldest rows of the other tracked tables that have a time column (oldest
/// hour first), and last, only while the filesystem is full or under
/// min_free_bytes, the raw rows of rollup sources that a rollup has not
/// processed (oldest window first); in each tier, rows from the future
/// first. Records each table's drop in `sluice_drops` as it goes. Returns
/// the rows dropped and whether it stopped at the step's share.
fn drop_rows(
    conn: &Connection,
    goal: &Goal,
    o: &BudgetOptions,
    srcs: &[Source],
) -> Res<(i64, bool)> {
    // `fut` is 1 for a row whose time is from the future, `ur` for a row
    // some rollup has not processed.
    conn.execute_batch(
        "DROP TABLE IF EXISTS temp.sluice_budget_rows;
         CREATE TEMP TABLE sluice_budget_rows
             (tier INTEGER, src INTEGER, fut INTEGER, ws INTEGER, ep INTEGER, rid INTEGER,
              sq INTEGER, ur INTEGER NOT NULL DEFAULT 0);",
    )?;
    let mut tables: Vec<Droppable> = Vec::new();
    for s in srcs {
        let idx = tables.len();
        tables.push(Droppable::new(conn, &s.name, true)?);
        collect_candidates(conn, idx, s, o)?;
    }
    conn.execute_batch(
        "CREATE INDEX temp.sluice_budget_rows_ws ON sluice_budget_rows (tier, fut, ws, src)",
    )?;
    let now = iso_now(conn)?;
    let (mut total, mut more) = drop_chunks(conn, goal, 1, &mut tables, &now)?;
    if !more && !o.rolled_up_only && goal.unmet(conn)? {
        for (name, time) in raw_tables(conn, srcs)? {
            let idx = tables.len();
            tables.push(Droppable::new(conn, &name, false)?);
            collect_raw(conn, idx, &name, &time, o.now)?;
        }
        let (n, m) = drop_chunks(conn, goal, 2, &mut tables, &now)?;
        (total, more) = (total + n, m);
    }
    // The last resort, never for max_bytes alone: a full disk stops the
    // pipeline, the rollup and sync; rows lost this way are counted.
    if !more && !o.rolled_up_only && goal.short(conn)? {
        for (idx, s) in srcs.iter().enumerate() {
            collect_unrolled(conn, idx, s, o.now)?;
        }
        let (n, m) = drop_chunks(conn, goal, 3, &mut tables, &now)?;
        (total, more) = (total + n, m);
    }
    conn.execute_batch("DROP TABLE IF EXISTS temp.sluice_budget_rows")?;
    Ok((total, more))
}

/// Drops the collected rows of one tier a chunk at a time, rows from the
/// future first, then oldest chunk first, measuring after each; stops as
/// soon as the goal is met (or the step's share is freed: then `true`).
fn drop_chunks(
    conn: &Connection,
    goal: &Goal,
    tier: i64,
    tables: &mut [Droppable],
    now: &str,
) -> Res<(i64, bool)> {
    if !goal.unmet(conn)? {
        return Ok((0, false));
    }
    let quarantine = bookkeeping::Table::Quarantine.exists(conn)?;
    let chunks: Vec<(i64, i64, i64)> = {
        let mut stmt = conn.prepare(
            "SELECT DISTINCT fut, ws, src FROM temp.sluice_budget_rows WHERE tier = ?1 \
             ORDER BY fut DESC, ws, src",
        )?;
        let rows = stmt
            .query_map([tier], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<Result<Vec<_>, _>>()?;
        rows
    };
    let mut total = 0i64;
    for (fut, ws, src) in chunks {
        let Some(d) = usize::try_from(src).ok().and_then(|i| tables.get_mut(i)) else {
            continue;
        };
        // A quarantined row counts as unsynced even inside an acknowledged
        // range: the cloud never got it.
        let quarantined = if quarantine {
            "EXISTS (SELECT 1 FROM main.sluice_quarantine q WHERE q.tbl = ?6 AND q.seq = sq)"
        } else {
            "0"
        };
        let (n, unsynced, unrolled, lo, hi): (i64, i64, i64, Option<i64>, Option<i64>) = conn
            .query_row(
                &format!(
                    "SELECT count(*), \
                            coalesce(sum((sq > ?5 AND NOT ({})) OR {quarantined}), 0), \
                            coalesce(sum(ur), 0), min(ep), max(ep) \
                     FROM temp.sluice_budget_rows \
                     WHERE tier = ?1 AND fut = ?2 AND ws = ?3 AND src = ?4",
                    d.in_acked_range
                ),
                params![tier, fut, ws, src, d.acked_seq.unwrap_or(i64::MAX), d.name],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )?;
        conn.execute(
            &format!(
                "DELETE FROM main.{} WHERE rowid IN (SELECT rid FROM temp.sluice_budget_rows \
                 WHERE tier = ?1 AND fut = ?2 AND ws = ?3 AND src = ?4)",
                quote_ident(&d.name)
            ),
            params![tier, fut, ws, src],
        )?;
        d.rows += n;
        d.unsynced += unsynced;
        if let Some(u) = &mut d.unrolled {
            *u += unrolled;
        }
        d.first = d.first.min(lo.unwrap_or(i64::MAX));
        d.last = d.last.max(hi.unwrap_or(i64::MIN));
        if fut == 0 {
            // Rows from the future seal nothing (crate::seal).
            if let Some(hi) = hi {
                d.sealed_until = d.sealed_until.max(hi.saturating_add(1));
            }
        }
        d.record(conn, now)?;
        total += n;
        if !goal.unmet(conn)? {
            break;
        }
        if goal.step_done(conn)? {
            return Ok((total, true));
        }
    }
    Ok((total, false))
}

/// Puts the droppable rows of one source into `temp.sluice_budget_rows`
/// (tier 1): the rows of [`crate::seal::RolledUp`] (rows from the future
/// among them), except the source's newest row (the rowid high-water mark
/// of sync, see sluice_cleanup).
fn collect_candidates(conn: &Connection, idx: usize, s: &Source, o: &BudgetOptions) -> Res<()> {
    let info = table_info(conn, &s.name)?;
    let src = info.quoted();
    let rolled = rolled_up(conn, &info, &s.rollups, o.horizon, o.now)?;
    let Some(w) = rolled.widest() else {
        return Ok(());
    };
    conn.execute(
        &format!(
            "INSERT INTO temp.sluice_budget_rows (tier, src, fut, ws, ep, rid, sq) \
             SELECT 1, ?1, ({fut}), {chunk}, {ep}, rowid, {sq} FROM main.{src} \
             WHERE {cond} AND rowid < (SELECT max(rowid) FROM main.{src})",
            fut = rolled.future(),
            chunk = w.start_sql(),
            ep = w.time_sql(),
            cond = rolled.may_leave(),
            sq = seq_sql(conn, &info)?,
        ),
        [idx as i64],
    )?;
    Ok(())
}

/// Puts the rows of one rollup source that tier 1 may not drop into
/// `temp.sluice_budget_rows` (tier 3, the last resort of a full disk): rows
/// some rollup has not processed (`ur`), and processed rows whose window is
/// within the horizon; a window of the source's widest rollup at a time,
/// except the source's newest row (the rowid high-water mark of sync).
fn collect_unrolled(conn: &Connection, idx: usize, s: &Source, now: i64) -> Res<()> {
    let Some((widest, _)) = s.rollups.iter().max_by_key(|(r, _)| r.width) else {
        return Ok(());
    };
    let w = Window {
        time: widest.time.clone(),
        width: widest.width,
    };
    let processed = s.rollups.iter().map(|(_, wm)| *wm).min().unwrap_or(0);
    let info = table_info(conn, &s.name)?;
    let src = info.quoted();
    conn.execute(
        &format!(
            "INSERT INTO temp.sluice_budget_rows (tier, src, fut, ws, ep, rid, sq, ur)              SELECT 3, ?1, coalesce({ep} > {fa}, 0), coalesce({chunk}, 0), {ep}, rowid, {sq},                     rowid > ?2 FROM main.{src}              WHERE rowid < (SELECT max(rowid) FROM main.{src})",
            ep = w.time_sql(),
            chunk = w.start_sql(),
            fa = future_after(now),
            sq = seq_sql(conn, &info)?,
        ),
        params![idx as i64, processed],
    )?;
    Ok(())
}

/// The tables of the second tier: tracked tables with a time column
/// (`sluice_track`'s `"time"` option) that are neither a rollup's source nor
/// its target, with that column.
fn raw_tables(conn: &Connection, srcs: &[Source]) -> Res<Vec<(String, String)>> {
    let targets = rollups::targets(conn)?;
    let listed = tables::with_time_column(conn)?;
    let mut out = Vec::new();
    for (tbl, time) in listed {
        let is = |n: &String| n.eq_ignore_ascii_case(&tbl);
        if targets.iter().any(is) || srcs.iter().any(|s| is(&s.name)) {
            continue;
        }
        // A table dropped or changed since it was tracked is left alone.
        let Ok(info) = table_info(conn, &tbl) else {
            continue;
        };
        if info.without_rowid {
            continue;
        }
        if let Some((_, c)) = info.column(&time) {
            out.push((info.name.clone(), c.name.clone()));
        }
    }
    Ok(out)
}

/// Puts every row of a second-tier table into `temp.sluice_budget_rows`
/// (tier 2), chunked by the hour of its time, except rows without a time
/// and, for an append-only table, its newest row (the rowid high-water
/// mark, as in sluice_cleanup). Rows whose time is from the future when the
/// clock reads `now` are marked so (`fut`).
fn collect_raw(conn: &Connection, idx: usize, name: &str, time: &str, now: i64) -> Res<()> {
    let info = table_info(conn, name)?;
    let table = info.quoted();
    let append_only = tables::get(conn, &info.name)?.is_some_and(|t| !t.mutable);
    let keep_newest = if append_only {
        format!("WHERE rowid < (SELECT max(rowid) FROM main.{table})")
    } else {
        String::new()
    };
    let c = RAW_CHUNK_SECS;
    conn.execute(
        &format!(
            "INSERT INTO temp.sluice_budget_rows (tier, src, fut, ws, ep, rid, sq) \
             SELECT 2, ?1, ep > {fa}, ep - ((ep % {c}) + {c}) % {c}, ep, rid, sq FROM \
             (SELECT {ep} AS ep, rowid AS rid, {sq} AS sq FROM main.{table} {keep_newest}) \
             WHERE ep IS NOT NULL",
            ep = EpochSql(&quote_ident(time)),
            sq = seq_sql(conn, &info)?,
            fa = future_after(now),
        ),
        [idx as i64],
    )?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn options() {
        let o = parse_budget_options(Some(r#"{"horizon": "2 hours", "now": 100}"#)).unwrap();
        assert_eq!((o.horizon, o.now, o.rolled_up_only), (7200, 100, false));
        let o = parse_budget_options(Some(r#"{"rolled_up_only": true}"#)).unwrap();
        assert!(o.rolled_up_only);
        assert!(parse_budget_options(Some(r#"{"rolled_up_only": 1}"#)).is_err());
        let o = parse_budget_options(Some(r#"{"now": "1970-01-01T00:01:00Z"}"#)).unwrap();
        assert_eq!((o.horizon, o.now), (DEFAULT_HORIZON_SECS, 60));
        assert!(parse_budget_options(Some(r#"{"horizn": 1}"#))
            .err()
            .unwrap()
            .0
            .contains("known options: horizon, now, rolled_up_only"));
        assert!(parse_budget_options(Some("[]")).is_err());
        assert!(parse_budget_options(Some(r#"{"horizon": -1}"#)).is_err());
    }
}

#[cfg(test)]
mod full_disk;
