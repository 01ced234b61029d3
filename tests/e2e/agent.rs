//! The agent as an operator runs it: the daemon on a schedule, SIGTERM,
//! `migrate`, `status`, the sync log, failures that must not stop the rest.

use std::process::Stdio;
use std::time::{Duration, Instant};

use sluice_tests::*;

const DEVICE: &str = "box-7";

#[test]
fn migrate_applies_each_migration_once_in_order() {
    let cloud = empty_cloud_db("migrate");
    let dir = tempfile::tempdir().unwrap();
    let edge_path = dir.path().join("edge.db");
    drop(edge_db(&edge_path, true));
    let config = write_config(dir.path(), &edge_path, &cloud.url, DEVICE, 1000);
    let migrations = repo_root().join("migrations");
    let m = migrations.to_str().unwrap();
    let c = config.to_str().unwrap();

    let out = run_ok(&["migrate", "--config", c, "--dir", m, "--dry-run"]);
    assert!(out.contains("would apply 0001_default_schema.sql"), "{out}");
    let out = run_ok(&["migrate", "--config", c, "--dir", m]);
    assert!(out.contains("applied 0001_default_schema.sql"), "{out}");
    let out = run_ok(&["migrate", "--config", c, "--dir", m]);
    assert!(
        out.contains("already applied 0001_default_schema.sql"),
        "{out}"
    );
    assert!(!out.contains("\napplied"), "{out}");
    let mut client = cloud.client();
    let n: i64 = client
        .query_one("SELECT count(*) FROM sluice.tables", &[])
        .unwrap()
        .get(0);
    assert!(n >= 7, "the default tables are registered");

    // A migration that fails applies nothing of itself and is not recorded.
    let bad = dir.path().join("bad");
    std::fs::create_dir(&bad).unwrap();
    std::fs::write(bad.join("0101_ok.sql"), "CREATE TABLE t_ok (x int);").unwrap();
    std::fs::write(
        bad.join("0102_broken.sql"),
        "CREATE TABLE t_half (x int); SELECT no_such_function();",
    )
    .unwrap();
    let out = agent(&["migrate", "--config", c, "--dir", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("0102_broken.sql failed, nothing of it was applied"),
        "{err}"
    );
    let half: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_class WHERE relname = 't_half'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(half, 0);
    let ok: i64 = client
        .query_one("SELECT count(*) FROM pg_class WHERE relname = 't_ok'", &[])
        .unwrap()
        .get(0);
    assert_eq!(ok, 1, "the migration before the broken one stays applied");
    // An applied migration edited afterwards is reported, not ignored.
    std::fs::write(bad.join("0101_ok.sql"), "CREATE TABLE t_ok (x int, y int);").unwrap();
    let out = agent(&["migrate", "--config", c, "--dir", bad.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("0101_ok.sql was changed after it was applied"),
        "{err}"
    );
}

#[test]
fn a_refused_table_does_not_stop_the_others_and_the_log_says_partial() {
    let cloud = CloudDb::create("partial");
    let dir = tempfile::tempdir().unwrap();
    let edge_path = dir.path().join("edge.db");
    let edge = edge_db(&edge_path, true);
    edge.execute_batch("CREATE TABLE local_extra (id INTEGER PRIMARY KEY, v TEXT); SELECT sluice_track('local_extra'); INSERT INTO local_extra (v) VALUES ('x');").unwrap();
    insert_rows(&edge, "division_states", &division_states(0, 1_500, 9), 500);
    let config = write_config(dir.path(), &edge_path, &cloud.url, DEVICE, 1000);

    let out = agent(&["sync", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success(), "a refused table makes the run fail");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("local_extra")
            && stdout.contains("FAILED")
            && stdout.contains("not registered"),
        "{stdout}"
    );
    assert!(
        stdout.contains("division_states      sent 2 batches, 1500 rows"),
        "{stdout}"
    );
    assert_eq!(pending(&edge, "division_states"), 0);
    assert_eq!(
        pending(&edge, "local_extra"),
        1,
        "refused rows stay pending"
    );

    let (status, error): (String, String) = edge
        .query_row(
            "SELECT status, error FROM sluice_sync_log ORDER BY id DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(status, "partial");
    assert!(error.contains("local_extra"), "{error}");

    let json = run_ok(&["status", "--config", config.to_str().unwrap(), "--json"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["pending_rows"], 1);
    assert_eq!(v["last_error"]["status"], "partial");
    assert_eq!(v["cloud"]["reachable"], true);
    assert!(v["cloud"]["clock_skew_ms"].is_i64(), "{json}");
    assert!(v["catch_up_secs"].is_number(), "{json}");
}

#[test]
fn an_unreachable_cloud_leaves_every_row_pending_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let edge_path = dir.path().join("edge.db");
    let edge = edge_db(&edge_path, true);
    insert_rows(
        &edge,
        "metrics",
        &[
            serde_json::json!({"camera_id": "c", "location_id": "l", "recorded_at": "2026-11-22T00:00:00.000Z", "people_count": 1, "processing_ms": 2.5}),
        ],
        1,
    );
    // Nothing listens on port 1.
    let config = write_config(
        dir.path(),
        &edge_path,
        "postgres://postgres@127.0.0.1:1/postgres",
        DEVICE,
        1000,
    );
    let started = Instant::now();
    let out = agent(&[
        "sync",
        "--config",
        config.to_str().unwrap(),
        "--table",
        "metrics",
    ])
    .output()
    .unwrap();
    assert!(!out.status.success());
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "retries are capped"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("not applied after 5 attempts; it stays pending"),
        "{stdout}"
    );
    assert_eq!(pending(&edge, "metrics"), 1);
    let status: String = edge
        .query_row(
            "SELECT status FROM sluice_sync_log ORDER BY id DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(status, "failed");
    // The same error is logged once, not once per attempt.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.matches("cloud unreachable; will retry").count(),
        1,
        "{stderr}"
    );
}

#[test]
fn the_daemon_delivers_within_seconds_and_stops_cleanly_on_sigterm() {
    let cloud = CloudDb::create("daemon");
    let metrics_port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let edge_path = dir.path().join("edge.db");
    let edge = edge_db(&edge_path, true);
    let config = write_config_with(
        dir.path(),
        &edge_path,
        &cloud.url,
        DEVICE,
        1000,
        &format!("\n[schedule]\nsync = \"*/2 * * * * *\"\nfull_sync = \"off\"\nembed = \"off\"\ncleanup = \"*/5 * * * * *\"\n\n[cleanup]\nkeep = \"1 hour\"\n\n[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n"),
    );
    let mut child = agent(&["run", "--config", config.to_str().unwrap()])
        .env("SLUICE_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // Rows written at the edge arrive without anyone calling sync.
    let mut latencies = Vec::new();
    for round in 0..3u64 {
        insert_rows(
            &edge,
            "division_states",
            &division_states(round * 100, 100, 11),
            100,
        );
        let written = Instant::now();
        let expected = (round as i64 + 1) * 100;
        while cloud.count("division_states") < expected {
            if written.elapsed() > Duration::from_secs(20) {
                child.kill().unwrap();
                let mut stderr = String::new();
                std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr)
                    .unwrap();
                panic!("rows not in the cloud after 20 s; agent log:\n{stderr}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        latencies.push(written.elapsed());
    }
    assert!(
        latencies.iter().all(|l| *l < Duration::from_secs(10)),
        "latencies {latencies:?}"
    );
    eprintln!("edge-to-cloud latencies with a 2 s schedule: {latencies:?}");

    // The Prometheus endpoint counts what was sent. A run's rows are counted
    // when the run ends, after its last acknowledgement: the rows can be in
    // the cloud a moment before the counter has them.
    let sent = |metrics: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("sluice_rows_total{job=\"sync\"} "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no sync rows counter in {metrics}"))
    };
    let counted_by = Instant::now() + Duration::from_secs(20);
    let metrics = loop {
        let metrics = http_get(metrics_port, "/metrics");
        assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
        if sent(&metrics) >= 300 || Instant::now() > counted_by {
            break metrics;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(sent(&metrics) >= 300, "{metrics}");
    assert!(
        metrics.contains("sluice_pending_rows{table=\"division_states\"} "),
        "{metrics}"
    );
    assert!(metrics.contains("sluice_sync_lag_seconds "), "{metrics}");

    // SIGTERM: the daemon finishes what it does and exits 0.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the agent did not stop after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit status after SIGTERM: {status}");
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(stderr.contains("sluice agent stopped"), "{stderr}");

    // Every run is in the sync log, none left 'running', nothing lost.
    let running: i64 = edge
        .query_row(
            "SELECT count(*) FROM sluice_sync_log WHERE status = 'running'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(running, 0);
    let syncs: i64 = edge
        .query_row(
            "SELECT count(*) FROM sluice_sync_log WHERE kind = 'sync'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(syncs >= 3, "{syncs} sync runs logged");
    let mut c = cloud.client();
    assert_same_rows(
        &edge_division_states(&edge),
        &cloud_division_states(&mut c, DEVICE),
    );
}

#[test]
fn a_missed_full_sync_runs_once_at_start() {
    let cloud = CloudDb::create("missed");
    let dir = tempfile::tempdir().unwrap();
    let edge_path = dir.path().join("edge.db");
    let edge = edge_db(&edge_path, true);
    insert_rows(&edge, "division_states", &division_states(0, 300, 12), 300);
    // Everything off but a full sync at 03:00 that was last run two days ago.
    let config = write_config_with(
        dir.path(),
        &edge_path,
        &cloud.url,
        DEVICE,
        1000,
        "\n[schedule]\nsync = \"off\"\nfull_sync = \"0 0 3 * * *\"\nembed = \"off\"\ncleanup = \"off\"\nrollup = \"off\"\nbudget = \"off\"\n",
    );
    edge.execute_batch(
        "CREATE TABLE IF NOT EXISTS sluice_sync_log (id INTEGER PRIMARY KEY, kind TEXT NOT NULL, started_at TEXT NOT NULL, ended_at TEXT, batches INTEGER NOT NULL DEFAULT 0, rows INTEGER NOT NULL DEFAULT 0, bytes INTEGER NOT NULL DEFAULT 0, status TEXT NOT NULL, error TEXT);
         INSERT INTO sluice_sync_log (kind, started_at, ended_at, status) VALUES ('full_sync', strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-2 days'), strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-2 days'), 'success');",
    )
    .unwrap();
    let mut child = agent(&["run", "--config", config.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while cloud.count("division_states") < 300 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the missed full sync did not run at start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
    let runs: i64 = edge
        .query_row(
            "SELECT count(*) FROM sluice_sync_log WHERE kind = 'full_sync'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(runs, 2, "one old run and one catch-up run");
}

#[test]
fn sync_works_through_a_transaction_mode_pgbouncer() {
    let cloud = CloudDb::create("bouncer");
    let bouncer = Pgbouncer::start();
    let dir = tempfile::tempdir().unwrap();
    let (edge_path, edge) = edge_with_division_states(dir.path(), 20_000, 13);
    let config = write_config(
        dir.path(),
        &edge_path,
        &bouncer.url(&cloud.name),
        DEVICE,
        1000,
    );
    let out = run_ok(&["sync", "--config", config.to_str().unwrap()]);
    assert!(out.contains("20 batches, 20000 rows"), "{out}");
    // A second agent run re-sends nothing; replays through the pooler work too.
    let out = run_ok(&["sync", "--config", config.to_str().unwrap()]);
    assert!(out.contains("0 batches"), "{out}");
    let mut c = cloud.client();
    assert_same_rows(
        &edge_division_states(&edge),
        &cloud_division_states(&mut c, DEVICE),
    );
}

#[test]
fn every_command_has_a_section_in_docs_agent_md() {
    let help = run_ok(&["--help"]);
    let docs = std::fs::read_to_string(repo_root().join("docs/agent.md")).unwrap();
    let commands: Vec<&str> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .collect();
    assert!(commands.len() >= 6, "{help}");
    for c in commands {
        assert!(
            docs.contains(&format!("### `sluice {c} ")),
            "docs/agent.md has no section for `sluice {c}`"
        );
    }
}

/// A fresh CA, a server certificate for 127.0.0.1 signed by it, and an
/// unrelated second CA: (dir, ca.pem, other-ca.pem).
fn make_certificates() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let sh = |script: &str| {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(script)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    sh("openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 -subj '/CN=sluice test CA' 2>/dev/null");
    sh("openssl req -x509 -newkey rsa:2048 -nodes -keyout other.key -out other-ca.pem -days 2 -subj '/CN=some other CA' 2>/dev/null");
    sh("openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj '/CN=127.0.0.1' 2>/dev/null");
    std::fs::write(
        dir.path().join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    sh("openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 -extfile ext.cnf 2>/dev/null");
    let (ca, other) = (dir.path().join("ca.pem"), dir.path().join("other-ca.pem"));
    (dir, ca, other)
}

/// The agent's TLS, verified against a private CA. The PostgreSQL of this
/// project's tests is built without SSL, so TLS is terminated by pgbouncer
/// (built with OpenSSL) in front of it: the same PostgreSQL SSLRequest
/// handshake a TLS-enabled server performs.
#[test]
fn tls_with_a_private_ca_is_verified() {
    let (certs, ca, other_ca) = make_certificates();
    let bouncer = Pgbouncer::start_with_tls(Some((
        &certs.path().join("server.pem"),
        &certs.path().join("server.key"),
    )));
    let cloud = CloudDb::create("tls");
    let dir = tempfile::tempdir().unwrap();
    let (edge_path, edge) = edge_with_division_states(dir.path(), 2_000, 14);
    let config = write_config(
        dir.path(),
        &edge_path,
        &bouncer.url(&cloud.name),
        DEVICE,
        1000,
    );
    let with_tls = |mode: &str, ca: &std::path::Path| {
        let text = std::fs::read_to_string(&config)
            .unwrap()
            .replace(
                "[cloud]\n",
                &format!(
                    "[cloud]\ntls = \"{mode}\"\nca_file = \"{}\"\n",
                    ca.display()
                ),
            )
            .replace("[sync]\n", "[sync]\nmax_attempts = 2\n");
        let path = dir.path().join("tls.toml");
        std::fs::write(&path, text).unwrap();
        path
    };

    // Without TLS the pooler refuses the connection.
    let out = agent(&[
        "sync",
        "--config",
        with_tls("disable", &ca).to_str().unwrap(),
    ])
    .output()
    .unwrap();
    assert!(!out.status.success());
    assert_eq!(pending(&edge, "division_states"), 2_000);

    // The wrong CA: the certificate does not verify, nothing is sent.
    let out = agent(&[
        "sync",
        "--config",
        with_tls("require", &other_ca).to_str().unwrap(),
    ])
    .output()
    .unwrap();
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.to_lowercase().contains("certificate"), "{stdout}");
    assert_eq!(pending(&edge, "division_states"), 2_000);

    // The right CA, with "prefer" and with "require": verified TLS, everything arrives once.
    let out = run_ok(&[
        "sync",
        "--config",
        with_tls("prefer", &ca).to_str().unwrap(),
        "--table",
        "cameras",
    ]);
    assert!(out.contains("cameras"), "{out}");
    let out = run_ok(&[
        "sync",
        "--config",
        with_tls("require", &ca).to_str().unwrap(),
    ]);
    assert!(
        out.contains("division_states      sent 2 batches, 2000 rows"),
        "{out}"
    );
    let mut c = cloud.client();
    assert_same_rows(
        &edge_division_states(&edge),
        &cloud_division_states(&mut c, DEVICE),
    );
}

#[test]
fn sigterm_during_a_capped_sync_leaves_nothing_half_recorded() {
    let cloud = CloudDb::create("sigterm_sync");
    let dir = tempfile::tempdir().unwrap();
    let (edge_path, edge) = edge_with_division_states(dir.path(), 20_000, 15);
    // 100 rows a batch at 4 KB/s: a batch every ~0.3 s, far from done in 1.5 s.
    let config = write_config_with(
        dir.path(),
        &edge_path,
        &cloud.url,
        DEVICE,
        100,
        "bandwidth_bytes_per_sec = 4000\n",
    );
    let child = agent(&[
        "sync",
        "--config",
        config.to_str().unwrap(),
        "--mode",
        "hourly",
        "--table",
        "division_states",
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let started = Instant::now();
    let out = child.wait_with_output().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the agent took {:?} to stop",
        started.elapsed()
    );
    assert!(!out.status.success(), "an interrupted run exits non-zero");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("interrupted"), "{stdout}");

    // Every acknowledged row is in the cloud, every other row is pending, none twice.
    let left = pending(&edge, "division_states");
    let in_cloud = cloud.count("division_states");
    assert!(
        left > 0 && in_cloud > 0,
        "pending {left}, in the cloud {in_cloud}"
    );
    assert_eq!(in_cloud + left, 20_000);
    let (status, error): (String, String) = edge
        .query_row(
            "SELECT status, error FROM sluice_sync_log ORDER BY id DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(status, "partial");
    assert!(error.contains("interrupted"), "{error}");
}

#[test]
fn the_agent_reconnects_after_postgresql_restarts_mid_sync() {
    let server = OwnServer::start("restart");
    let url = server.database("cloud");
    let dir = tempfile::tempdir().unwrap();
    let (edge_path, edge) = edge_with_division_states(dir.path(), 6_000, 16);
    // Slow (100-row batches at 20 KB/s: about 5 s) and patient (20 attempts, up to 0.5 s apart).
    let config = write_config_with(
        dir.path(),
        &edge_path,
        &url,
        DEVICE,
        100,
        "bandwidth_bytes_per_sec = 20000\nmax_attempts = 20\n",
    );
    let child = agent(&[
        "sync",
        "--config",
        config.to_str().unwrap(),
        "--mode",
        "hourly",
        "--table",
        "division_states",
    ])
    .env("SLUICE_LOG", "info")
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    server.restart();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("reconnected to the cloud"),
        "the restart was noticed: {stderr}"
    );
    assert_eq!(pending(&edge, "division_states"), 0);
    let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    assert_same_rows(
        &edge_division_states(&edge),
        &cloud_division_states(&mut c, DEVICE),
    );
}

fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut sock = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(sock, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut out = String::new();
    sock.read_to_string(&mut out).unwrap();
    out
}

/// The highest-base batches first: the order in which the cloud's ledger got
/// the batches of `table` (by transaction id).
fn ledger_ranges(cloud: &CloudDb, table: &str) -> Vec<(i64, i64)> {
    cloud
        .client()
        .query(
            "SELECT base_seq, last_seq FROM sluice.batches WHERE device_id = $1 AND edge_table = $2 \
             ORDER BY xmin::text::bigint",
            &[&DEVICE, &table],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[test]
fn newest_first_drains_the_backlog_from_the_top_exactly_once() {
    let cloud = CloudDb::create("newest_first");
    let dir = tempfile::tempdir().unwrap();
    let (edge_path, edge) = edge_with_division_states(dir.path(), 3_000, 21);
    let config = write_config_with(
        dir.path(),
        &edge_path,
        &cloud.url,
        DEVICE,
        1000,
        "order = \"newest\"\n",
    );
    let c = config.to_str().unwrap();
    run_ok(&[
        "sync",
        "--config",
        c,
        "--mode",
        "full",
        "--table",
        "division_states",
    ]);
    assert_eq!(
        ledger_ranges(&cloud, "division_states"),
        vec![(2000, 3000), (1000, 2000), (0, 1000)],
        "the newest batch first, and the last one reaches the watermark"
    );
    assert_eq!(pending(&edge, "division_states"), 0);
    let (acked, ranges): (i64, i64) = edge
        .query_row(
            "SELECT acked_seq, (SELECT count(*) FROM sluice_acked_ranges) FROM sluice_tables \
             WHERE tbl = 'division_states'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((acked, ranges), (3000, 0));
    assert_same_rows(
        &edge_division_states(&edge),
        &cloud_division_states(&mut cloud.client(), DEVICE),
    );

    // New rows during a newest-first drain: each run sends the top first.
    insert_rows(
        &edge,
        "division_states",
        &division_states(3_000, 1_500, 21),
        500,
    );
    run_ok(&[
        "sync",
        "--config",
        c,
        "--mode",
        "full",
        "--table",
        "division_states",
    ]);
    assert_eq!(
        ledger_ranges(&cloud, "division_states")[3..],
        [(3500, 4500), (3000, 3500)]
    );
    assert_eq!(pending(&edge, "division_states"), 0);
    assert_same_rows(
        &edge_division_states(&edge),
        &cloud_division_states(&mut cloud.client(), DEVICE),
    );
    let out = run_ok(&["verify", "--config", c, "--table", "division_states"]);
    assert!(
        out.contains("missing in the cloud: 0") && out.contains("extra in the cloud: 0"),
        "{out}"
    );
}

#[test]
fn the_hourly_sync_sends_the_last_two_hours_and_the_full_sync_the_rest() {
    let cloud = CloudDb::create("hourly_window");
    let dir = tempfile::tempdir().unwrap();
    let edge_path = dir.path().join("edge.db");
    let edge = edge_db(&edge_path, true);
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    // 1,000 rows from five hours ago (an outage), then 500 from the last ten minutes.
    let mut rows = division_states(0, 1_500, 22);
    for (i, r) in rows.iter_mut().enumerate() {
        let at = if i < 1_000 {
            now_ms - 5 * 3_600_000 + i as i64 * 1000
        } else {
            now_ms - 600_000 + (i as i64 - 1000) * 1000
        };
        r["recorded_at"] = iso_ms(at).into();
    }
    insert_rows(&edge, "division_states", &rows, 500);
    let config = write_config(dir.path(), &edge_path, &cloud.url, DEVICE, 200);
    // The default window: two hours.
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace(WINDOW_LINE, "");
    std::fs::write(&config, text).unwrap();
    let c = config.to_str().unwrap();

    run_ok(&[
        "sync",
        "--config",
        c,
        "--mode",
        "hourly",
        "--table",
        "division_states",
    ]);
    assert_eq!(cloud.count("division_states"), 500);
    assert_eq!(pending(&edge, "division_states"), 1_000);
    let out = run_ok(&[
        "sync",
        "--config",
        c,
        "--mode",
        "hourly",
        "--table",
        "division_states",
    ]);
    assert!(
        out.contains("sent 0 batches"),
        "nothing new in the window: {out}"
    );
    assert_eq!(cloud.count("division_states"), 500);

    run_ok(&[
        "sync",
        "--config",
        c,
        "--mode",
        "full",
        "--table",
        "division_states",
    ]);
    assert_eq!(pending(&edge, "division_states"), 0);
    assert_same_rows(
        &edge_division_states(&edge),
        &cloud_division_states(&mut cloud.client(), DEVICE),
    );
}

#[test]
fn tables_sync_concurrently_and_each_exactly_once() {
    let cloud = CloudDb::create("concurrent_tables");
    let dir = tempfile::tempdir().unwrap();
    let (_, edge) = edge_with_division_states(dir.path(), 3_000, 23);
    let tables: Vec<serde_json::Value> = (0..3_000i64)
        .map(|i| {
            let state = ["IDLE", "BUSY", "CLEANING"][i as usize % 3];
            serde_json::json!({
                "session_id": "s-1", "camera_id": "cam-01", "location_id": "store-042",
                "table_id": format!("t-{}", i % 20), "recorded_at": iso_ms(1_795_000_000_000 + i * 1000),
                "state": state, "customers": i % 5, "waiters": i % 2,
            })
        })
        .collect();
    insert_rows(&edge, "table_states", &tables, 1000);
    let order = |concurrency: u32, name: &str| {
        let cloud = CloudDb::create(name);
        let edge_path = dir.path().join(format!("{name}.db"));
        std::fs::copy(dir.path().join("edge.db"), &edge_path).unwrap();
        let config = write_config_with(
            dir.path(),
            &edge_path,
            &cloud.url,
            DEVICE,
            500,
            &format!("concurrency = {concurrency}\n"),
        );
        let c = config.to_str().unwrap();
        run_ok(&[
            "sync",
            "--config",
            c,
            "--mode",
            "full",
            "--table",
            "division_states",
            "--table",
            "table_states",
        ]);
        let firsts: Vec<String> = cloud
            .client()
            .query(
                "SELECT edge_table FROM sluice.batches ORDER BY xmin::text::bigint",
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(firsts.len(), 12, "{firsts:?}");
        assert_eq!(cloud.count("division_states"), 3_000);
        assert_eq!(cloud.count("table_states"), 3_000);
        firsts
    };
    drop(edge);
    drop(cloud);
    // One at a time: every batch of the first table, then the second's.
    let one = order(1, "concurrent_one");
    assert!(one[..6].iter().all(|t| t == "division_states"), "{one:?}");
    // Two at once: the second table's batches do not wait for the first's.
    let two = order(2, "concurrent_two");
    assert!(
        two[..6].iter().any(|t| t == "table_states"),
        "the tables were synced one after the other: {two:?}"
    );
}

/// Every edge call runs off the async runtime: a sync lane that waits for
/// the edge's write lock (held here by another connection, as a pipeline's
/// long transaction would) does not stall the other lane. With two tables
/// in two lanes and the edge locked, both batches are applied in the cloud
/// (the second ingest reaches the failpoint) while the lock is still held
/// and nothing has been acknowledged. Before, the first lane's busy wait
/// blocked the one runtime thread, and the other lane's ingest could not
/// complete until the lock was released.
#[test]
fn a_lane_waiting_for_the_edge_lock_does_not_stall_the_other_lane() {
    use std::io::BufRead;

    let cloud = CloudDb::create("lane_lock");
    let dir = tempfile::tempdir().unwrap();
    let (edge_path, edge) = edge_with_division_states(dir.path(), 1_000, 31);
    let tables: Vec<serde_json::Value> = (0..1_000i64)
        .map(|i| {
            serde_json::json!({
                "session_id": "s-1", "camera_id": "cam-01", "location_id": "store-042",
                "table_id": format!("t-{}", i % 20), "recorded_at": iso_ms(1_795_000_000_000 + i * 1000),
                "state": "IDLE", "customers": i % 5, "waiters": i % 2,
            })
        })
        .collect();
    insert_rows(&edge, "table_states", &tables, 1000);
    let config = write_config_with(
        dir.path(),
        &edge_path,
        &cloud.url,
        DEVICE,
        1000,
        "concurrency = 2\n",
    );
    // A lane waits for the edge lock far longer than this test runs.
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("\n[cloud]", "busy_timeout_ms = 600000\n\n[cloud]");
    std::fs::write(&config, text).unwrap();
    let c = config.to_str().unwrap();

    // Hold both ingests in the cloud until the edge is locked.
    let mut pg = cloud.client();
    let mut cloud_lock = pg.transaction().unwrap();
    cloud_lock
        .batch_execute("LOCK TABLE division_states, table_states IN ACCESS EXCLUSIVE MODE")
        .unwrap();
    let mut child = agent(&[
        "sync",
        "--config",
        c,
        "--mode",
        "full",
        "--quiet",
        "--table",
        "division_states",
        "--table",
        "table_states",
    ])
    .env("SLUICE_FAILPOINT", "after-ingest:2")
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
    // The run has started (its log entry is written): from here on, the
    // agent writes to the edge only to acknowledge.
    let running = || -> i64 {
        edge.query_row(
            "SELECT count(*) FROM sqlite_master m, sluice_sync_log l
              WHERE m.name = 'sluice_sync_log' AND l.status = 'running'",
            [],
            |r| r.get(0),
        )
        .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while running() == 0 {
        assert!(Instant::now() < deadline, "the sync never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    edge.execute_batch("BEGIN IMMEDIATE").unwrap();
    cloud_lock.rollback().unwrap();

    // Both ingests complete while the edge stays locked.
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    let reached = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let done = line.contains("failpoint after-ingest:2 reached");
                seen.push(line);
                if done {
                    break true;
                }
            }
            Err(_) => break false,
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    let log = seen.join("\n");
    assert!(
        reached,
        "the second lane's batch was not applied while the first lane waited for the edge lock:\n{log}"
    );
    assert!(!log.contains("table sync failed"), "{log}");
    // Nothing was acknowledged: the edge was locked the whole time.
    assert_eq!(pending(&edge, "division_states"), 1_000);
    assert_eq!(pending(&edge, "table_states"), 1_000);
    edge.execute_batch("ROLLBACK").unwrap();

    // The next run sends both again; the cloud recognises the replays.
    let out = run_ok(&[
        "sync",
        "--config",
        c,
        "--mode",
        "full",
        "--table",
        "division_states",
        "--table",
        "table_states",
    ]);
    assert!(out.contains("1 replays"), "{out}");
    assert_eq!(pending(&edge, "division_states"), 0);
    assert_eq!(pending(&edge, "table_states"), 0);
    assert_eq!(cloud.count("division_states"), 1_000);
    assert_eq!(cloud.count("table_states"), 1_000);
}

/// `sluice embed --json` (docs/agent.md): the run's report and the model's
/// loading time apart, recorded in the sync log like any run.
#[test]
fn embed_json_reports_the_run_and_the_loading_apart() {
    let dir_model = std::env::var("SLUICE_MODEL_DIR")
        .expect("SLUICE_MODEL_DIR is not set: run the tests through scripts/test.sh");
    let ort = std::env::var("SLUICE_ORT_LIB")
        .expect("SLUICE_ORT_LIB is not set: run the tests through scripts/test.sh");
    let dir = tempfile::tempdir().unwrap();
    let edge_path = dir.path().join("edge.db");
    let edge = edge_db(&edge_path, true);
    let rows: Vec<serde_json::Value> = ["a waiter carries plates", "an empty parking lot", "   "]
        .iter()
        .enumerate()
        .map(|(i, d)| {
            serde_json::json!({"camera_id": "cam-01", "location_id": "store-042",
                "captured_at": iso_ms(1_795_000_000_000 + i as i64 * 60_000), "description": d})
        })
        .collect();
    insert_rows(&edge, "key_frames", &rows, 100);
    let config = write_config_with(
        dir.path(),
        &edge_path,
        "postgres://nobody@127.0.0.1:1/none",
        DEVICE,
        1000,
        &format!("\n[embed]\n[embed.model]\nmodel = \"{dir_model}/model.onnx\"\nonnxruntime = \"{ort}\"\n"),
    );
    let c = config.to_str().unwrap();
    let first: serde_json::Value =
        serde_json::from_str(&run_ok(&["embed", "--config", c, "--json"])).unwrap();
    assert_eq!(first["status"], "success", "{first}");
    assert_eq!(first["report"]["embedded"], 2, "{first}");
    assert_eq!(first["report"]["bytes"], 2 * 1536, "{first}");
    assert!(first["load_ms"].is_u64(), "{first}");
    assert!(first["report"]["elapsed_ms"].is_u64(), "{first}");
    let second: serde_json::Value =
        serde_json::from_str(&run_ok(&["embed", "--config", c, "--json"])).unwrap();
    assert_eq!(second["report"]["embedded"], 0, "{second}");
    let runs: i64 = edge
        .query_row(
            "SELECT count(*) FROM sluice_sync_log WHERE kind = 'embed' AND status = 'success'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(runs, 2);
}
