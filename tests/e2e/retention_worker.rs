//! The retention worker (`pg_ext/src/worker.rs`) on a server of its own with
//! `shared_preload_libraries = 'sluice'`: it does nothing in a database
//! without the extension; it is idle by default (expired rows stay); once
//! `sluice.retention_interval` is set and the configuration reloaded (SIGHUP)
//! expired rows disappear without anyone calling `sluice.run_retention`, a
//! policy that fails is logged and does not stop the others; set back to 0
//! (SIGHUP again) it stops; SIGTERM ends it without taking the server down.
//!
//! The worker logs each change of its state; the test reads the server log
//! (written by the logging collector) to know when a reload has been taken
//! into account. Waits are bounded
//! polls (no timing is asserted).

use std::time::{Duration, Instant};

use postgres::{Client, NoTls};
use sluice_tests::*;

const WORKER: &str = "sluice retention worker";

/// The log of the restarted server (its logging collector writes it: the
/// restart sends the server's own output nowhere).
fn server_log(server: &OwnServer) -> String {
    // Where scripts/pg.sh put it: under $SLUICE_CACHE (scripts/env.sh).
    let cache = std::env::var_os("SLUICE_CACHE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".cache"));
    let path = cache
        .join("run")
        .join(&server.name)
        .join("data/log/retention-worker.log");
    std::fs::read_to_string(&path).unwrap_or_default()
}

fn occurrences(server: &OwnServer, needle: &str) -> usize {
    server_log(server).matches(needle).count()
}

/// Polls `ok` every 100 ms for up to 60 s.
fn wait_until(server: &OwnServer, what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ok() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; server log:\n{}",
            server_log(server)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until the log holds `needle` more than `before` times.
fn wait_for_log(server: &OwnServer, needle: &str, before: usize) {
    wait_until(server, &format!("the log line {needle:?}"), || {
        occurrences(server, needle) > before
    });
}

/// Runs every statement on its own (ALTER SYSTEM refuses a transaction block).
fn run_each(c: &mut Client, statements: &[&str]) {
    for s in statements {
        c.batch_execute(s)
            .unwrap_or_else(|e| panic!("{s}: {}", pg_error(&e)));
    }
}

fn worker_pid(c: &mut Client) -> Option<i32> {
    c.query_opt(
        "SELECT pid FROM pg_stat_activity WHERE backend_type = $1",
        &[&WORKER],
    )
    .unwrap()
    .map(|r| r.get(0))
}

fn count(c: &mut Client, sql: &str) -> i64 {
    c.query_one(sql, &[]).unwrap().get(0)
}

#[test]
fn the_retention_worker_runs_on_its_interval_follows_sighup_and_survives_errors() {
    let server = OwnServer::start("retention-worker");
    let url = server.database("wk"); // migrations: the extension is installed
    let mut admin = Client::connect(&server.url, NoTls).unwrap();
    run_each(
        &mut admin,
        &[
            "CREATE DATABASE bare",
            // Defines the settings in this session, so ALTER SYSTEM checks them.
            "LOAD 'sluice'",
            "ALTER SYSTEM SET shared_preload_libraries = 'sluice'",
            "ALTER SYSTEM SET sluice.retention_database = 'bare'",
            "ALTER SYSTEM SET sluice.retention_interval = '1s'",
            "ALTER SYSTEM SET logging_collector = on",
            "ALTER SYSTEM SET log_filename = 'retention-worker.log'",
        ],
    );
    drop(admin);

    // 1. A database without the extension: the worker runs its passes, says
    // once that there is nothing to do, and stays up.
    server.restart();
    let not_installed = "the extension sluice is not installed in database \"bare\"";
    wait_for_log(&server, not_installed, 0);
    let mut admin = Client::connect(&server.url, NoTls).unwrap();
    let first = worker_pid(&mut admin).expect("the worker runs");
    std::thread::sleep(Duration::from_secs(3)); // about three passes
    assert_eq!(
        worker_pid(&mut admin),
        Some(first),
        "the same worker, alive"
    );
    assert_eq!(occurrences(&server, not_installed), 1, "said once");

    // 2. The database with the extension, the interval at its default (0).
    run_each(
        &mut admin,
        &[
            "LOAD 'sluice'",
            "ALTER SYSTEM SET sluice.retention_database = 'wk'",
            "ALTER SYSTEM RESET sluice.retention_interval",
        ],
    );
    drop(admin);
    server.restart();
    let idle = "idle in database \"wk\" (sluice.retention_interval = 0)";
    wait_for_log(&server, idle, 0);
    let mut admin = Client::connect(&server.url, NoTls).unwrap();
    let pid = worker_pid(&mut admin).expect("the worker runs");

    let mut c = Client::connect(&url, NoTls).unwrap();
    c.batch_execute(
        "CREATE TABLE public.events (at timestamptz NOT NULL, note text);
         INSERT INTO public.events
         SELECT now() - interval '10 days' - g * interval '1 minute', 'old ' || g FROM generate_series(1, 5000) g;
         INSERT INTO public.events
         SELECT now() - g * interval '1 minute', 'new ' || g FROM generate_series(1, 100) g;
         SELECT sluice.set_retention('public.events', 'at', '7 days');
         -- A policy that fails at every run: its time column is gone. Its
         -- name sorts first, so the worker meets it before public.events.
         CREATE TABLE public.a_broken (at timestamptz, x int);
         SELECT sluice.set_retention('public.a_broken', 'at', '1 day');
         ALTER TABLE public.a_broken DROP COLUMN at;",
    )
    .unwrap();
    let expired = "SELECT count(*) FROM public.events WHERE note LIKE 'old %'";
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        count(&mut c, expired),
        5000,
        "off by default: nothing deleted"
    );
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM sluice.retention WHERE last_run_at IS NOT NULL"
        ),
        0,
        "no retention ran"
    );

    // A published table's change entries, which no device needs (none
    // subscribed): the worker's pass purges them too.
    c.batch_execute(
        "CREATE TABLE public.configs (id int PRIMARY KEY, v text);
         SELECT sluice.publish('public.configs');
         INSERT INTO public.configs SELECT g, 'x' FROM generate_series(1, 10) g;",
    )
    .unwrap();
    assert_eq!(count(&mut c, "SELECT count(*) FROM sluice.changes"), 10);

    // 3. An interval, taken on SIGHUP (pg_reload_conf): the expired rows go
    // without anyone calling run_retention; the broken policy is reported.
    run_each(
        &mut admin,
        &[
            "ALTER SYSTEM SET sluice.retention_interval = '1s'",
            "SELECT pg_reload_conf()",
        ],
    );
    wait_for_log(&server, "runs retention every 1 s in database \"wk\"", 0);
    wait_until(&server, "the expired rows to be deleted", || {
        count(&mut c, expired) == 0
    });
    assert_eq!(count(&mut c, "SELECT count(*) FROM public.events"), 100);
    wait_for_log(&server, ": events: deleted 5000 expired rows", 0);
    wait_for_log(
        &server,
        "purged 10 change entries every device has acknowledged",
        0,
    );
    assert_eq!(count(&mut c, "SELECT count(*) FROM sluice.changes"), 0);
    wait_for_log(&server, "retention of a_broken failed", 0);
    let log = server_log(&server);
    assert!(
        log.contains("WARNING:  sluice retention worker: retention of a_broken failed: sluice.run_retention: column \"at\" no longer exists in a_broken (SQLSTATE 42703)"),
        "{log}"
    );
    // A failing policy is tried again at every pass, the worker stays.
    let failures = occurrences(&server, "retention of a_broken failed");
    wait_for_log(&server, "retention of a_broken failed", failures);
    assert_eq!(worker_pid(&mut admin), Some(pid), "the same worker, alive");

    // 4. Back to 0 on SIGHUP: idle again, new expired rows stay.
    run_each(
        &mut admin,
        &[
            "ALTER SYSTEM RESET sluice.retention_interval",
            "SELECT pg_reload_conf()",
        ],
    );
    wait_for_log(&server, idle, 1);
    c.batch_execute(
        "INSERT INTO public.events
         SELECT now() - interval '10 days' - g * interval '1 minute', 'old ' || g FROM generate_series(1, 50) g",
    )
    .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(count(&mut c, expired), 50, "idle again: nothing deleted");

    // 5. SIGTERM ends the worker, and only the worker.
    admin
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .unwrap();
    wait_until(&server, "the worker to end", || {
        worker_pid(&mut admin).is_none()
    });
    assert_eq!(count(&mut c, "SELECT count(*) FROM public.events"), 150);
    let log = server_log(&server);
    for crash in [
        "terminated by signal",
        "terminating any other active server processes",
        "PANIC",
    ] {
        assert!(!log.contains(crash), "{crash:?} in the server log:\n{log}");
    }
}
