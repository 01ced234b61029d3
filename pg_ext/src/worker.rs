//! The retention worker: an optional background worker that runs
//! `CALL sluice.run_retention(table)` for every retention policy of one
//! database, every `sluice.retention_interval` seconds ([`crate::guc`]).
//!
//! It exists only when the library is in `shared_preload_libraries`
//! (`_PG_init` registers it then), connects to `sluice.retention_database`
//! at server start and stays idle while the interval is 0, the default. On
//! SIGHUP it reads the settings again (a new interval counts from the start
//! of the last pass); on SIGTERM it ends, aborting the transaction of a pass
//! under way (PostgreSQL's own `die` handler). A pass does nothing when the
//! extension is not installed in that database.
//!
//! Each policy runs as a top-level `CALL` through a portal, the way a client's
//! `CALL` runs, so that the procedure commits between chunks exactly as
//! `sluice.run_retention()` does when a DBA calls it (one short transaction
//! per chunk of `sluice.retention_chunk_rows` rows). An error in one policy
//! (a dropped column, a lock timeout, a cancel) is logged as a WARNING with its
//! message, its transaction aborted, and the worker goes on with the next
//! policy; the next pass tries again. Nothing it does can take the postmaster
//! down: an error never leaves the worker, and a FATAL (SIGTERM) is an
//! ordinary exit.

use std::ffi::{c_int, c_long, CString};
use std::panic::AssertUnwindSafe;
use std::ptr;
use std::time::{Duration, Instant};

use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, SignalWakeFlags};
use pgrx::pg_sys::panic::CaughtError;
use pgrx::pg_sys::PgTryBuilder;
use pgrx::prelude::*;

use crate::guc;

/// Its name in the server log and its `backend_type` in `pg_stat_activity`.
pub const WORKER_NAME: &str = "sluice retention worker";

/// Seconds the postmaster waits before starting the worker again after it
/// ended abnormally (for instance when its database does not exist).
const RESTART_SECONDS: u64 = 60;

/// Registers the worker; called by `_PG_init` while
/// `shared_preload_libraries` is being processed.
pub fn register() {
    BackgroundWorkerBuilder::new(WORKER_NAME)
        .set_type(WORKER_NAME)
        .set_library("sluice")
        .set_function("sluice_retention_worker_main")
        .enable_spi_access()
        .set_restart_time(Some(Duration::from_secs(RESTART_SECONDS)))
        .load();
}

unsafe extern "C-unwind" {
    /// PostgreSQL's SIGTERM handler of backends (`tcop/postgres.c`): it sets
    /// `ProcDiePending`, and the next `CHECK_FOR_INTERRUPTS` ends the process
    /// with a FATAL that aborts the open transaction cleanly.
    fn die(postgres_signal_arg: c_int);
}

/// The worker's entry point (`bgw_function_name`).
#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn sluice_retention_worker_main(_arg: pg_sys::Datum) {
    // SAFETY: installs a handler before signals are unblocked (just below).
    unsafe {
        pg_sys::pqsignal(pg_sys::SIGTERM as c_int, Some(die));
    }
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP);

    let database = guc::retention_database();
    if database.is_empty() {
        log!("{WORKER_NAME}: sluice.retention_database is empty; the worker stops");
        return;
    }
    BackgroundWorker::connect_worker_to_spi(Some(&database), None);

    // Parse trees and plans of a pass live here: the procedure's COMMITs
    // free every transaction's memory while its CALL is still running.
    // SAFETY: a child of TopMemoryContext, for the life of the process.
    let pass_memory = unsafe {
        pg_sys::AllocSetContextCreateExtended(
            pg_sys::TopMemoryContext,
            c"sluice retention pass".as_ptr(),
            pg_sys::ALLOCSET_DEFAULT_MINSIZE as usize,
            pg_sys::ALLOCSET_DEFAULT_INITSIZE as usize,
            pg_sys::ALLOCSET_DEFAULT_MAXSIZE as usize,
        )
    };
    let mut worker = Worker {
        database,
        pass_memory,
        interval: guc::retention_interval(),
        installed: None,
    };
    worker.log_interval();

    let mut last_pass: Option<Instant> = None;
    loop {
        if BackgroundWorker::sighup_received() {
            // SAFETY: what a backend does on SIGHUP, between two passes.
            unsafe {
                pg_sys::ConfigReloadPending = 0;
                pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP);
            }
            let interval = guc::retention_interval();
            if interval != worker.interval {
                worker.interval = interval;
                worker.log_interval();
            }
        }
        let timeout = match worker.interval {
            None => None,
            Some(every) => match last_pass.map(|t| t.elapsed()) {
                Some(elapsed) if elapsed < every => Some(every - elapsed),
                _ => {
                    last_pass = Some(Instant::now());
                    worker.pass();
                    continue;
                }
            },
        };
        if !BackgroundWorker::wait_latch(timeout) {
            // The postmaster died.
            break;
        }
    }
}

struct Worker {
    database: String,
    pass_memory: pg_sys::MemoryContext,
    /// `sluice.retention_interval`; `None` is off.
    interval: Option<Duration>,
    /// Whether the extension was installed at the last pass (logged on change).
    installed: Option<bool>,
}

impl Worker {
    fn log_interval(&self) {
        match self.interval {
            None => log!(
                "{WORKER_NAME}: idle in database \"{}\" (sluice.retention_interval = 0)",
                self.database
            ),
            Some(every) => log!(
                "{WORKER_NAME}: runs retention every {} s in database \"{}\"",
                every.as_secs(),
                self.database
            ),
        }
    }

    /// One pass: every policy of the database, each in its own `CALL`.
    fn pass(&mut self) {
        let targets = match self.guarded(|| in_transaction(policies)) {
            Ok(t) => t,
            Err(message) => {
                warning!(
                    "{WORKER_NAME}: cannot read the retention policies of database \"{}\": {message}",
                    self.database
                );
                return;
            }
        };
        let Some(targets) = targets else {
            if self.installed != Some(false) {
                log!(
                    "{WORKER_NAME}: the extension sluice is not installed in database \"{}\"; nothing to do until it is",
                    self.database
                );
            }
            self.installed = Some(false);
            return;
        };
        self.installed = Some(true);
        for (oid, name) in targets {
            let started = Instant::now();
            let sql = format!("CALL sluice.run_retention({oid}::oid::regclass)");
            let memory = self.pass_memory;
            let result = self.guarded(|| {
                // SAFETY: called between transactions, from the worker's loop.
                unsafe { run_top_level(memory, &sql) };
                in_transaction(|| last_run(oid))
            });
            match result {
                Ok((deleted, dropped)) if deleted > 0 || dropped > 0 => log!(
                    "{WORKER_NAME}: {name}: deleted {deleted} expired rows, dropped {dropped} partitions in {:.1} s",
                    started.elapsed().as_secs_f64()
                ),
                Ok(_) => debug1!("{WORKER_NAME}: {name}: nothing expired"),
                Err(message) => warning!(
                    "{WORKER_NAME}: retention of {name} failed: {message}; the next pass tries again"
                ),
            }
        }
        // The change entries of published tables that every device has
        // acknowledged (sluice.purge_changes; absent before 0.2.0).
        match self.guarded(|| in_transaction(purge_changes)) {
            Ok(0) => {}
            Ok(n) => log!("{WORKER_NAME}: purged {n} change entries every device has acknowledged"),
            Err(message) => warning!(
                "{WORKER_NAME}: sluice.purge_changes failed: {message}; the next pass tries again"
            ),
        }
    }

    /// Runs `f`; a PostgreSQL ERROR or a panic in it becomes `Err(message)`
    /// after the open transaction is aborted and the session is clean again
    /// (what `PostgresMain` does after an error).
    fn guarded<R>(&self, f: impl FnOnce() -> R) -> Result<R, String> {
        let memory = self.pass_memory;
        let result = PgTryBuilder::new(AssertUnwindSafe(|| Ok(f())))
            .catch_others(|e| Err(message(&e)))
            .execute();
        if result.is_err() {
            // SAFETY: the error state was flushed by the catch; this is the
            // recovery of PostgresMain's error branch, outside any transaction
            // we still use.
            unsafe {
                pg_sys::debug_query_string = ptr::null();
                pg_sys::AbortCurrentTransaction();
                // Cursor portals a procedure kept across its COMMITs.
                pg_sys::PortalErrorCleanup();
                pg_sys::MemoryContextSwitchTo(pg_sys::TopMemoryContext);
                pg_sys::pgstat_report_activity(pg_sys::BackendState::STATE_IDLE, ptr::null());
            }
        }
        // SAFETY: nothing of the pass is in use any more.
        unsafe { pg_sys::MemoryContextReset(memory) };
        result
    }
}

fn message(e: &CaughtError) -> String {
    let report = match e {
        CaughtError::PostgresError(r) | CaughtError::ErrorReport(r) => r,
        CaughtError::RustPanic { ereport, .. } => ereport,
    };
    format!(
        "{} (SQLSTATE {})",
        report.message(),
        sqlstate(report.sql_error_code())
    )
}

/// The five-character SQLSTATE of an error code.
fn sqlstate(code: PgSqlErrorCode) -> String {
    let mut v = code as i32;
    (0..5)
        .map(|_| {
            let c = ((v & 0x3f) as u8 + b'0') as char;
            v >>= 6;
            c
        })
        .collect()
}

/// `f` in its own transaction, with a snapshot for its queries.
fn in_transaction<R>(f: impl FnOnce() -> R) -> R {
    // SAFETY: called between transactions; an error unwinds to `guarded`,
    // which aborts the transaction.
    unsafe {
        pg_sys::SetCurrentStatementStartTimestamp();
        pg_sys::StartTransactionCommand();
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
    }
    let r = f();
    unsafe {
        pg_sys::PopActiveSnapshot();
        pg_sys::CommitTransactionCommand();
    }
    r
}

/// The tables that have a retention policy, by name; `None` when the
/// extension is not installed.
fn policies() -> Option<Vec<(u32, String)>> {
    let installed = Spi::get_one::<bool>(
        "SELECT EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname = 'sluice')",
    )
    .ok()
    .flatten()
    .unwrap_or(false);
    if !installed {
        return None;
    }
    let rows = Spi::connect(|client| {
        let table = client.select(
            "SELECT r.target::oid::int8, r.target::text FROM sluice.retention r ORDER BY 2",
            None,
            &[],
        )?;
        let mut out = Vec::new();
        for row in table {
            if let (Some(oid), Some(name)) = (row.get::<i64>(1)?, row.get::<String>(2)?) {
                out.push((oid as u32, name));
            }
        }
        Ok::<_, pgrx::spi::SpiError>(out)
    });
    match rows {
        Ok(rows) => Some(rows),
        Err(e) => pgrx::error!("reading sluice.retention: {e}"),
    }
}

/// `last_deleted` and `last_dropped` of a policy after its run.
fn last_run(oid: u32) -> (i64, i64) {
    match Spi::get_two::<i64, i64>(&format!(
        "SELECT coalesce(last_deleted, 0), coalesce(last_dropped, 0)::int8 FROM sluice.retention WHERE target = {oid}::oid"
    )) {
        Ok((deleted, dropped)) => (deleted.unwrap_or(0), dropped.unwrap_or(0)),
        Err(_) => (0, 0),
    }
}

/// `sluice.purge_changes()` when the installed version has it; the number
/// of entries deleted.
fn purge_changes() -> i64 {
    let present = Spi::get_one::<bool>(
        "SELECT pg_catalog.to_regprocedure('sluice.purge_changes()') IS NOT NULL",
    )
    .ok()
    .flatten()
    .unwrap_or(false);
    if !present {
        return 0;
    }
    Spi::get_one::<i64>("SELECT sluice.purge_changes()")
        .ok()
        .flatten()
        .unwrap_or(0)
}

/// Runs one statement as a client's top-level statement runs
/// (`exec_simple_query`): parsed, planned and run through an unnamed portal
/// in a transaction of its own, so that a procedure it calls may COMMIT.
///
/// # Safety
/// Called between transactions. Parse trees and plans go into `memory`,
/// which must outlive the statement (the procedure's COMMITs free
/// transaction memory); an error unwinds to the caller, which must abort
/// the transaction.
unsafe fn run_top_level(memory: pg_sys::MemoryContext, sql: &str) {
    let Ok(sql) = CString::new(sql) else {
        pgrx::error!("a statement with a NUL byte");
    };
    pg_sys::SetCurrentStatementStartTimestamp();
    pg_sys::StartTransactionCommand();
    let xact_memory = pg_sys::MemoryContextSwitchTo(memory);
    let text = pg_sys::pstrdup(sql.as_ptr());
    pg_sys::debug_query_string = text;
    pg_sys::pgstat_report_activity(pg_sys::BackendState::STATE_RUNNING, text);

    let parsed = pg_sys::pg_parse_query(text);
    if parsed.is_null() || (*parsed).length != 1 {
        pgrx::error!("expected one statement in {}", sql.to_string_lossy());
    }
    let raw = (*(*parsed).elements).ptr_value.cast::<pg_sys::RawStmt>();
    pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
    let queries =
        pg_sys::pg_analyze_and_rewrite_fixedparams(raw, text, ptr::null(), 0, ptr::null_mut());
    let plans = pg_sys::pg_plan_queries(
        queries,
        text,
        pg_sys::CURSOR_OPT_PARALLEL_OK as c_int,
        ptr::null_mut(),
    );
    // The portal takes its own snapshot; one left pushed here would outlive
    // the procedure's first COMMIT.
    pg_sys::PopActiveSnapshot();

    let portal = pg_sys::CreatePortal(c"".as_ptr(), true, true);
    (*portal).visible = false;
    pg_sys::PortalDefineQuery(
        portal,
        ptr::null(),
        text,
        pg_sys::CreateCommandTag((*raw).stmt),
        plans,
        ptr::null_mut(),
    );
    pg_sys::PortalStart(portal, ptr::null_mut(), 0, ptr::null_mut());
    pg_sys::MemoryContextSwitchTo(xact_memory);

    let dest = pg_sys::CreateDestReceiver(pg_sys::CommandDest::DestNone);
    let mut qc: pg_sys::QueryCompletion = std::mem::zeroed();
    // isTopLevel: the CALL runs in a non-atomic context and may COMMIT.
    pg_sys::PortalRun(portal, c_long::MAX, true, true, dest, dest, &mut qc);
    pg_sys::PortalDrop(portal, false);
    pg_sys::CommitTransactionCommand();

    pg_sys::debug_query_string = ptr::null();
    pg_sys::pgstat_report_activity(pg_sys::BackendState::STATE_IDLE, ptr::null());
}
