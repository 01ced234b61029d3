//! The cloud-to-edge direction (issue 13) end to end: a published cloud
//! table (`sluice.publish`), an edge table subscribed (`sluice_subscribe`),
//! the real agent between them. `sluice sync` delivers the cloud's inserts,
//! updates and deletes, and only the rows addressed to the device; `sluice
//! run` applies a cloud commit within seconds by LISTEN and by polling; an
//! agent killed in the middle of a snapshot leaves the edge table as it was,
//! and the next run completes it.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use rusqlite::Connection;
use sluice_tests::*;

mod agent_docs;
use agent_docs::Story;

const TENANT: &str = "acme";

/// The cloud table: configurations per camera, for one device (`device`) or
/// every device of the tenant (NULL), published with tenant and device
/// columns.
fn published_cloud(test: &str) -> CloudDb {
    let cloud = CloudDb::create(test);
    cloud
        .client()
        .batch_execute(
            "CREATE TABLE camera_config (
                 camera_id text PRIMARY KEY,
                 tenant    text NOT NULL,
                 device    text,
                 setting   text);
             SELECT sluice.publish('camera_config'::regclass,
                                   tenant_column => 'tenant', device_column => 'device');",
        )
        .unwrap_or_else(|e| panic!("publish failed: {}", pg_error(&e)));
    cloud
}

/// An edge of `device` in its own folder with `camera_config` subscribed;
/// `pull` goes into the config's `[pull]` (after the tenant), `extra` after it.
struct EdgeBox {
    _dir: tempfile::TempDir,
    conn: Connection,
    config: PathBuf,
}

fn edge_box(cloud: &CloudDb, device: &str, pull: &str, extra: &str, rows: &[&str]) -> EdgeBox {
    edge_box_at(&cloud.url, device, pull, extra, rows)
}

/// [`edge_box`] with the cloud at `url` (a pooler's).
fn edge_box_at(url: &str, device: &str, pull: &str, extra: &str, rows: &[&str]) -> EdgeBox {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("edge.db");
    let conn = edge_db(&path, false);
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         CREATE TABLE camera_config (
             camera_id TEXT PRIMARY KEY,
             tenant    TEXT,
             device    TEXT,
             setting   TEXT,
             status    TEXT DEFAULT 'pending');",
    )
    .unwrap();
    for r in rows {
        conn.execute(
            "INSERT INTO camera_config (camera_id, tenant, device, setting) VALUES (?1, 'acme', NULL, 'local')",
            [r],
        )
        .unwrap();
    }
    conn.query_row("SELECT sluice_subscribe('camera_config')", [], |_| Ok(()))
        .unwrap();
    let config = write_config_with(
        dir.path(),
        &path,
        url,
        device,
        1000,
        &format!("\n[pull]\ntenant = \"{TENANT}\"\n{pull}\n{extra}"),
    );
    EdgeBox {
        _dir: dir,
        conn,
        config,
    }
}

/// The edge's rows: `camera_id=setting`, by key.
fn edge_rows(conn: &Connection) -> Vec<String> {
    let mut stmt = conn
        .prepare(
            "SELECT camera_id, coalesce(setting, 'NULL') FROM camera_config ORDER BY camera_id",
        )
        .unwrap();
    stmt.query_map([], |r| {
        Ok(format!(
            "{}={}",
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?
        ))
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

fn sync(config: &Path) -> String {
    run_ok(&["sync", "--config", config.to_str().unwrap(), "--quiet"])
}

fn checkpoint(conn: &Connection) -> i64 {
    conn.query_row(
        "SELECT checkpoint FROM sluice_subscriptions WHERE tbl = 'camera_config'",
        [],
        |r| r.get(0),
    )
    .unwrap()
}

#[test]
fn sync_delivers_inserts_updates_and_deletes_and_only_the_devices_rows() {
    let cloud = published_cloud("down_sync");
    let mut c = cloud.client();
    c.batch_execute(
        "INSERT INTO camera_config VALUES
             ('cam-1', 'acme', 'box-1', 'fps=10'),
             ('cam-2', 'acme', NULL,    'fps=12'),
             ('cam-3', 'acme', 'box-2', 'fps=15'),
             ('cam-4', 'other', NULL,   'fps=30'),
             ('cam-9', 'other', 'box-1', 'fps=30');",
    )
    .unwrap();
    let one = edge_box(&cloud, "box-1", "", "", &[]);
    let two = edge_box(&cloud, "box-2", "", "", &[]);

    let out = sync(&one.config);
    assert!(out.contains("pull camera_config"), "{out}");
    assert!(out.contains("(1 snapshot)"), "{out}");
    assert_eq!(edge_rows(&one.conn), ["cam-1=fps=10", "cam-2=fps=12"]);
    sync(&two.config);
    assert_eq!(edge_rows(&two.conn), ["cam-2=fps=12", "cam-3=fps=15"]);
    // The edge's own column keeps its default: the cloud owns the others.
    let status: String = one
        .conn
        .query_row(
            "SELECT status FROM camera_config WHERE camera_id = 'cam-1'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(status, "pending");
    one.conn
        .execute_batch("UPDATE camera_config SET status = 'success' WHERE camera_id = 'cam-1'")
        .unwrap();

    // Inserts, updates, deletes, and a row that moves from one device to the other.
    c.batch_execute(
        "UPDATE camera_config SET setting = 'fps=11' WHERE camera_id = 'cam-1';
         INSERT INTO camera_config VALUES ('cam-5', 'acme', 'box-1', 'fps=5'),
                                          ('cam-6', 'other', 'box-1', 'fps=6');
         DELETE FROM camera_config WHERE camera_id = 'cam-2';
         UPDATE camera_config SET device = 'box-1' WHERE camera_id = 'cam-3';",
    )
    .unwrap();
    let before = checkpoint(&one.conn);
    let out = sync(&one.config);
    assert!(out.contains("pull camera_config"), "{out}");
    assert_eq!(
        edge_rows(&one.conn),
        ["cam-1=fps=11", "cam-3=fps=15", "cam-5=fps=5"]
    );
    assert!(checkpoint(&one.conn) > before);
    let status: String = one
        .conn
        .query_row(
            "SELECT status FROM camera_config WHERE camera_id = 'cam-1'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        status, "success",
        "an update of the cloud's columns keeps the edge's"
    );
    sync(&two.config);
    assert_eq!(edge_rows(&two.conn), Vec::<String>::new());

    // Again: nothing new, nothing changes.
    let out = sync(&one.config);
    assert!(out.contains("0 upserted, 0 deleted"), "{out}");
    assert_eq!(
        edge_rows(&one.conn),
        ["cam-1=fps=11", "cam-3=fps=15", "cam-5=fps=5"]
    );

    // `sluice status` has the subscription's line, with nothing pending.
    let status = run_ok(&["status", "--config", one.config.to_str().unwrap()]);
    let line = status
        .lines()
        .find(|l| l.starts_with("camera_config "))
        .unwrap_or_else(|| panic!("no subscription line in\n{status}"));
    assert!(line.contains(&checkpoint(&one.conn).to_string()), "{line}");
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(fields[3], "0", "pending: {line}");
    assert_eq!(fields[4], "-", "{line}");
    let json = run_ok(&["status", "--config", one.config.to_str().unwrap(), "--json"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["subscriptions"][0]["table"], "camera_config");
    assert_eq!(v["subscriptions"][0]["pending"], 0);
}

/// Starts `sluice run` with its log on a channel.
fn daemon(config: &Path) -> (Child, std::sync::mpsc::Receiver<String>) {
    let mut child = agent(&["run", "--config", config.to_str().unwrap()])
        .env("SLUICE_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            if tx.send(line.unwrap_or_default()).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

/// Waits until the edge has `want`, up to `limit`; the agent's log in the panic.
fn wait_for_rows(
    conn: &Connection,
    want: &[&str],
    limit: Duration,
    child: &mut Child,
    log: &std::sync::mpsc::Receiver<String>,
) -> Duration {
    let t0 = Instant::now();
    loop {
        if edge_rows(conn) == want {
            return t0.elapsed();
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            let lines: Vec<String> = log.try_iter().collect();
            panic!(
                "the edge has {:?}, not {want:?}, after {limit:?}; agent log:\n{}",
                edge_rows(conn),
                lines.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

const QUIET_JOBS: &str = "[schedule]\nrollup = \"off\"\nembed = \"off\"\nsync = \"off\"\nfull_sync = \"off\"\ncleanup = \"off\"\nbudget = \"off\"\n";

fn daemon_applies_cloud_commits(test: &str, pull: &str, what: &str, bouncer: Option<&Pgbouncer>) {
    let cloud = published_cloud(test);
    let url = match bouncer {
        Some(b) => b.url(&cloud.name),
        None => cloud.url.clone(),
    };
    let mut c = cloud.client();
    c.batch_execute("INSERT INTO camera_config VALUES ('cam-1', 'acme', 'box-1', 'fps=10')")
        .unwrap();
    let port = free_port();
    let b = edge_box_at(
        &url,
        "box-1",
        pull,
        &format!("{QUIET_JOBS}\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n"),
        &[],
    );
    let (mut child, log) = daemon(&b.config);
    // The first pull at start: the snapshot.
    wait_for_rows(
        &b.conn,
        &["cam-1=fps=10"],
        Duration::from_secs(30),
        &mut child,
        &log,
    );

    let mut latencies = Vec::new();
    let mut want = vec!["cam-1=fps=10".to_owned()];
    for i in 2..=6 {
        let id = format!("cam-{i}");
        c.execute(
            "INSERT INTO camera_config VALUES ($1, 'acme', 'box-1', 'fps=1')",
            &[&id],
        )
        .unwrap();
        want.push(format!("{id}=fps=1"));
        let w: Vec<&str> = want.iter().map(String::as_str).collect();
        latencies.push(wait_for_rows(
            &b.conn,
            &w,
            Duration::from_secs(30),
            &mut child,
            &log,
        ));
    }
    // An update and a delete too.
    c.batch_execute(
        "UPDATE camera_config SET setting = 'fps=2' WHERE camera_id = 'cam-2';
         DELETE FROM camera_config WHERE camera_id = 'cam-3';",
    )
    .unwrap();
    latencies.push(wait_for_rows(
        &b.conn,
        &[
            "cam-1=fps=10",
            "cam-2=fps=2",
            "cam-4=fps=1",
            "cam-5=fps=1",
            "cam-6=fps=1",
        ],
        Duration::from_secs(30),
        &mut child,
        &log,
    ));
    eprintln!("cloud-to-edge latencies {what}: {latencies:?}");

    // The metrics have the table's rows and checkpoint.
    let deadline = Instant::now() + Duration::from_secs(20);
    let metrics = loop {
        let m = http_get(port, "/metrics");
        if m.contains("sluice_pull_rows_total{table=\"camera_config\"} 8")
            || Instant::now() > deadline
        {
            break m;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // 1 (snapshot) + 5 inserts + 1 update + 1 delete.
    assert!(
        metrics.contains("sluice_pull_rows_total{table=\"camera_config\"} 8"),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "sluice_pull_checkpoint{{table=\"camera_config\"}} {}",
            checkpoint(&b.conn)
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains("sluice_pull_lag_seconds{table=\"camera_config\"} 0"),
        "{metrics}"
    );

    // SIGTERM: a clean stop.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
}

#[test]
fn the_daemon_listening_applies_a_cloud_commit_within_seconds() {
    // No schedule and an hour between polls: only the notifications deliver.
    daemon_applies_cloud_commits(
        "down_listen",
        "schedule = \"off\"\nlisten = true\npoll_interval = \"1h\"",
        "with LISTEN",
        None,
    );
}

#[test]
fn the_daemon_polling_applies_a_cloud_commit_within_seconds() {
    daemon_applies_cloud_commits(
        "down_poll",
        "schedule = \"off\"\nlisten = false\npoll_interval = \"500ms\"",
        "polling every 500 ms",
        None,
    );
}

#[test]
fn the_daemon_polls_through_a_transaction_mode_pgbouncer() {
    // Where LISTEN cannot work: pgbouncer in transaction mode.
    let bouncer = Pgbouncer::start();
    daemon_applies_cloud_commits(
        "down_bouncer",
        "schedule = \"off\"\nlisten = false\npoll_interval = \"500ms\"",
        "polling every 500 ms through pgbouncer",
        Some(&bouncer),
    );
}

#[test]
fn an_agent_killed_in_the_middle_of_a_snapshot_leaves_the_edge_table_as_it_was() {
    let cloud = published_cloud("down_kill");
    let mut c = cloud.client();
    c.batch_execute(
        "INSERT INTO camera_config
         SELECT 'cam-' || lpad(i::text, 3, '0'), 'acme', 'box-1', 'fps=' || i
           FROM generate_series(1, 50) i",
    )
    .unwrap();
    // The edge has rows of its own before the first pull: the snapshot
    // replaces them (the last page deletes what no page carried).
    let b = edge_box(
        &cloud,
        "box-1",
        "max_rows = 10",
        "",
        &["cam-001", "old-1", "old-2"],
    );
    let before = edge_rows(&b.conn);
    assert_eq!(before, ["cam-001=local", "old-1=local", "old-2=local"]);

    let mut child = agent(&["sync", "--config", b.config.to_str().unwrap(), "--quiet"])
        .env("SLUICE_FAILPOINT", "after-snapshot-page:3")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut seen = Vec::new();
    let mut reached = false;
    for line in std::io::BufReader::new(stderr).lines() {
        let line = line.unwrap_or_default();
        reached = line.contains("failpoint after-snapshot-page:3 reached");
        seen.push(line);
        if reached {
            break;
        }
    }
    assert!(
        reached,
        "the failpoint was not reached:\n{}",
        seen.join("\n")
    );
    // Three pages applied, in the open transaction: the table is as it was.
    assert_eq!(edge_rows(&b.conn), before);
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(edge_rows(&b.conn), before);
    assert_eq!(checkpoint(&b.conn), 0);

    // The next run completes it: the cloud's 50 rows, nothing else.
    let out = sync(&b.config);
    assert!(out.contains("(1 snapshot)"), "{out}");
    let rows = edge_rows(&b.conn);
    assert_eq!(rows.len(), 50, "{rows:?}");
    assert_eq!(rows[0], "cam-001=fps=1");
    assert_eq!(rows[49], "cam-050=fps=50");
    assert!(checkpoint(&b.conn) > 0);
}

fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut sock = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(sock, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut out = String::new();
    sock.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn the_pull_examples_of_docs_agent_md_run_as_written() {
    let cloud = CloudDb::create("down_docs");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("edge.db");
    let edge = edge_db(&path, false);
    edge.execute_batch("PRAGMA journal_mode = WAL").unwrap();
    let config = write_config_with(
        dir.path(),
        &path,
        &cloud.url,
        "box-1",
        1000,
        &format!("\n[pull]\ntenant = \"{TENANT}\"\n"),
    );
    let mut story = Story::new(&["### Pull, step by step"], &config, &edge, &cloud);
    story.step("psql cloud");
    story.step("sqlite3 edge.db");
    assert!(story.step("sluice sync").success);
    assert_eq!(edge_rows(&edge), ["cam-1=fps=10", "cam-2=fps=12"]);
    story.step("psql cloud");
    assert!(story.step("sluice sync").success);
    assert_eq!(edge_rows(&edge), ["cam-1=fps=11"]);
    assert!(story.step("sluice status").success);
    story.finish();
}

#[test]
fn the_daemon_listens_again_after_its_connection_is_killed() {
    let cloud = published_cloud("down_relisten");
    let mut c = cloud.client();
    c.batch_execute("INSERT INTO camera_config VALUES ('cam-1', 'acme', 'box-1', 'fps=10')")
        .unwrap();
    let b = edge_box(
        &cloud,
        "box-1",
        "schedule = \"off\"\nlisten = true\npoll_interval = \"1h\"",
        QUIET_JOBS,
        &[],
    );
    let (mut child, log) = daemon(&b.config);
    wait_for_rows(
        &b.conn,
        &["cam-1=fps=10"],
        Duration::from_secs(30),
        &mut child,
        &log,
    );
    // The listening session: the one whose last statement was LISTEN (or
    // its horizon query, or its ping).
    let mut listener = || -> Vec<i32> {
        c.query(
            "SELECT pid FROM pg_stat_activity
              WHERE datname = current_database() AND application_name = 'sluice-agent'
                AND (query LIKE 'LISTEN%' OR query LIKE '%pg_snapshot_xmax%' OR query = 'SELECT 1')",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let pids = loop {
        let p = listener();
        if !p.is_empty() {
            break p;
        }
        assert!(Instant::now() < deadline, "no listening session");
        std::thread::sleep(Duration::from_millis(50));
    };
    for pid in &pids {
        c.execute("SELECT pg_terminate_backend($1)", &[pid])
            .unwrap();
    }
    // The agent reconnects (polling meanwhile) and listens again: a commit
    // after that arrives.
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match log.recv_timeout(Duration::from_millis(100)) {
            Ok(line) => {
                let again = line.contains("listening for cloud changes again");
                seen.push(line);
                if again {
                    break;
                }
            }
            Err(_) => assert!(
                Instant::now() < deadline,
                "the agent did not listen again:\n{}",
                seen.join("\n")
            ),
        }
    }
    c.batch_execute("INSERT INTO camera_config VALUES ('cam-2', 'acme', NULL, 'fps=12')")
        .unwrap();
    wait_for_rows(
        &b.conn,
        &["cam-1=fps=10", "cam-2=fps=12"],
        Duration::from_secs(30),
        &mut child,
        &log,
    );
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    assert!(child.wait().unwrap().success());
}

#[test]
fn a_batch_the_edge_refuses_stops_its_table_and_names_it_and_the_others_go_on() {
    let cloud = published_cloud("down_refused");
    let mut c = cloud.client();
    // A second published table with a column the edge's table lacks.
    c.batch_execute(
        "INSERT INTO camera_config VALUES ('cam-1', 'acme', 'box-1', 'fps=10');
         CREATE TABLE zones (zone_id text PRIMARY KEY, tenant text NOT NULL, name text, polygon text);
         SELECT sluice.publish('zones'::regclass, tenant_column => 'tenant');
         INSERT INTO zones VALUES ('z-1', 'acme', 'bar', '0,0 1,1');",
    )
    .unwrap();
    let b = edge_box(&cloud, "box-1", "", "", &[]);
    b.conn
        .execute_batch(
            "CREATE TABLE zones (zone_id TEXT PRIMARY KEY, tenant TEXT, name TEXT);
             INSERT INTO zones VALUES ('z-0', 'acme', 'kept');",
        )
        .unwrap();
    b.conn
        .query_row("SELECT sluice_subscribe('zones')", [], |_| Ok(()))
        .unwrap();
    let out = agent(&["sync", "--config", b.config.to_str().unwrap(), "--quiet"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    let line = stdout
        .lines()
        .find(|l| l.starts_with("pull zones"))
        .unwrap_or_else(|| panic!("no line of zones in\n{stdout}"));
    assert!(line.contains("FAILED"), "{line}");
    assert!(line.contains("'zones'"), "{line}");
    assert!(line.contains("at checkpoint 0"), "{line}");
    assert!(line.contains("nothing of it was applied"), "{line}");
    assert!(
        line.contains("polygon"),
        "the edge's reason names the column: {line}"
    );
    // Nothing of the snapshot was applied; the other table got its rows.
    let zones: Vec<String> = b
        .conn
        .prepare("SELECT zone_id || '=' || name FROM zones ORDER BY zone_id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(zones, ["z-0=kept"]);
    assert_eq!(edge_rows(&b.conn), ["cam-1=fps=10"]);
    // The sync log says which table failed (and the run was recorded at all:
    // a refused first page once left the snapshot's transaction open, and
    // the log's end with it, uncommitted).
    let (status, error): (String, String) = b
        .conn
        .query_row(
            "SELECT status, error FROM sluice_sync_log ORDER BY id DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(status, "partial");
    assert!(error.starts_with("pull zones: "), "{error}");
}

#[test]
fn a_device_role_pulls_its_own_rows_without_naming_the_tenant_and_no_others() {
    let cloud = published_cloud("down_role");
    let mut c = cloud.client();
    c.batch_execute(
        "INSERT INTO camera_config VALUES
             ('cam-1', 'acme', 'box-1', 'fps=10'),
             ('cam-2', 'acme', NULL,    'fps=12'),
             ('cam-3', 'acme', 'box-2', 'fps=15'),
             ('cam-4', 'other', NULL,   'fps=30');
         DO $$ BEGIN
             IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'down_box_1') THEN
                 CREATE ROLE down_box_1 LOGIN;
             END IF;
         END $$;
         SELECT sluice.grant_device('down_box_1', 'acme', 'box-1');",
    )
    .unwrap_or_else(|e| panic!("{}", pg_error(&e)));
    let url = cloud.url.replacen("postgres@", "down_box_1@", 1);
    assert_ne!(
        url, cloud.url,
        "the test server's URL names the user postgres"
    );
    // No [pull] tenant: the grant's (an empty [pull] section keeps the
    // harness from naming its own).
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("edge.db");
    let conn = edge_db(&path, false);
    conn.execute_batch(
        "CREATE TABLE camera_config (camera_id TEXT PRIMARY KEY, tenant TEXT, device TEXT, setting TEXT);
         SELECT sluice_subscribe('camera_config');",
    )
    .unwrap();
    let config = write_config_with(dir.path(), &path, &url, "box-1", 1000, "\n[pull]\n");
    let out = sync(&config);
    assert!(out.contains("pull camera_config"), "{out}");
    assert_eq!(edge_rows(&conn), ["cam-1=fps=10", "cam-2=fps=12"]);

    // The same role as another device: refused, nothing applied.
    let other = tempfile::tempdir().unwrap();
    let path2 = other.path().join("edge.db");
    let conn2 = edge_db(&path2, false);
    conn2
        .execute_batch(
            "CREATE TABLE camera_config (camera_id TEXT PRIMARY KEY, tenant TEXT, device TEXT, setting TEXT);
             SELECT sluice_subscribe('camera_config');",
        )
        .unwrap();
    let config2 = write_config_with(other.path(), &path2, &url, "box-2", 1000, "\n[pull]\n");
    let out = agent(&["sync", "--config", config2.to_str().unwrap(), "--quiet"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    let line = stdout
        .lines()
        .find(|l| l.starts_with("pull camera_config"))
        .unwrap_or_else(|| panic!("no pull line in\n{stdout}"));
    assert!(line.contains("FAILED") && line.contains("42501"), "{line}");
    assert!(line.contains("at checkpoint 0"), "{line}");
    assert_eq!(edge_rows(&conn2), Vec::<String>::new());
}

#[test]
fn the_scheduled_pull_applies_changes_and_logs_only_the_runs_that_did_something() {
    let cloud = published_cloud("down_schedule");
    let mut c = cloud.client();
    c.batch_execute("INSERT INTO camera_config VALUES ('cam-1', 'acme', 'box-1', 'fps=10')")
        .unwrap();
    // Neither listening nor polling: only the schedule (every second) pulls.
    let b = edge_box(
        &cloud,
        "box-1",
        "schedule = \"* * * * * *\"\nlisten = false\npoll_interval = \"1h\"",
        QUIET_JOBS,
        &[],
    );
    let (mut child, log) = daemon(&b.config);
    wait_for_rows(
        &b.conn,
        &["cam-1=fps=10"],
        Duration::from_secs(30),
        &mut child,
        &log,
    );
    c.batch_execute("INSERT INTO camera_config VALUES ('cam-2', 'acme', 'box-1', 'fps=12')")
        .unwrap();
    wait_for_rows(
        &b.conn,
        &["cam-1=fps=10", "cam-2=fps=12"],
        Duration::from_secs(30),
        &mut child,
        &log,
    );
    let pull_runs = |conn: &Connection| -> (i64, i64) {
        conn.query_row(
            "SELECT count(*), coalesce(sum(rows), 0) FROM sluice_sync_log WHERE kind = 'pull'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap_or((0, 0))
    };
    // The run that brought cam-2 is in the log (written when it ended).
    let deadline = Instant::now() + Duration::from_secs(30);
    let (runs, rows) = loop {
        let (runs, rows) = pull_runs(&b.conn);
        if rows >= 1 || Instant::now() > deadline {
            break (runs, rows);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(rows >= 1 && runs >= 1, "{runs} runs, {rows} rows");
    // Runs that applied nothing are not written: three idle seconds (three
    // scheduled runs) add no row.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(pull_runs(&b.conn), (runs, rows));
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    assert!(child.wait().unwrap().success());
}
