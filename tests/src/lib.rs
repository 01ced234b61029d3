//! The harness of sluice's end-to-end tests: the real `sluice0.so` loaded
//! into SQLite, the real `sluice` agent binary, and a real PostgreSQL 17 with
//! the `sluice` extension, started by `scripts/test.sh` (through
//! `scripts/pg.sh`). Each test gets its own cloud database, so tests run in
//! parallel. Nothing here skips: a missing server or binary is a failure that
//! says how to get it.

pub mod fault;

use std::path::{Path, PathBuf};
use std::process::Command;

use rusqlite::Connection;

/// Root of the repository.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn required_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the end-to-end tests through scripts/test.sh, which builds everything and starts PostgreSQL")
    })
}

/// URL of the test server's `postgres` database.
pub fn server_url() -> String {
    required_env("SLUICE_TEST_PG_URL")
}

/// Path of the built `sluice0.so`.
pub fn sqlite_extension() -> PathBuf {
    PathBuf::from(required_env("SLUICE_SQLITE_EXT"))
}

/// Path of the built `sluice` binary.
pub fn agent_binary() -> PathBuf {
    PathBuf::from(required_env("SLUICE_AGENT_BIN"))
}

/// A fresh cloud database with the default schema (`migrations/`) applied,
/// dropped when the value is dropped.
pub struct CloudDb {
    pub name: String,
    pub url: String,
}

impl CloudDb {
    pub fn create(test: &str) -> CloudDb {
        let name = format!("t_{}_{}", test, std::process::id());
        let mut admin =
            postgres::Client::connect(&server_url(), postgres::NoTls).unwrap_or_else(|e| {
                panic!(
                    "cannot connect to the test PostgreSQL at {}: {e}",
                    server_url()
                )
            });
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name}"))
            .unwrap();
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .unwrap();
        let url = replace_db(&server_url(), &name);
        let db = CloudDb { name, url };
        let mut c = db.client();
        let mut files: Vec<_> = std::fs::read_dir(repo_root().join("migrations"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "sql"))
            .collect();
        files.sort();
        for f in files {
            let sql = std::fs::read_to_string(&f).unwrap();
            c.batch_execute(&sql)
                .unwrap_or_else(|e| panic!("migration {} failed: {}", f.display(), pg_error(&e)));
        }
        db
    }

    pub fn client(&self) -> postgres::Client {
        postgres::Client::connect(&self.url, postgres::NoTls).unwrap()
    }

    pub fn count(&self, table: &str) -> i64 {
        self.client()
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .unwrap()
            .get(0)
    }
}

impl Drop for CloudDb {
    fn drop(&mut self) {
        if let Ok(mut admin) = postgres::Client::connect(&server_url(), postgres::NoTls) {
            let _ = admin.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ));
        }
    }
}

fn replace_db(url: &str, db: &str) -> String {
    match url.rfind('/') {
        Some(i) if i > "postgres://".len() => format!("{}/{db}", &url[..i]),
        _ => format!("{url}/{db}"),
    }
}

/// The server's message of a PostgreSQL error (what a user would read).
pub fn pg_error(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

/// Opens (creating) an edge database with `sluice0.so` loaded and, when
/// `schema` is true, the default schema of `sql/edge_schema.sql` applied.
pub fn edge_db(path: &Path, schema: bool) -> Connection {
    let conn = Connection::open(path).unwrap();
    // SAFETY: loads the extension under test.
    unsafe {
        let _guard = rusqlite::LoadExtensionGuard::new(&conn).unwrap();
        conn.load_extension(sqlite_extension(), None::<&str>)
            .unwrap_or_else(|e| panic!("cannot load {}: {e}", sqlite_extension().display()));
    }
    if schema {
        let sql = std::fs::read_to_string(repo_root().join("sql/edge_schema.sql")).unwrap();
        conn.execute_batch(&sql).unwrap();
    }
    conn
}

/// An edge database `edge.db` in `dir` with the default schema and `n`
/// pending `division_states` rows (of [`division_states`]`(0, n, seed)`).
pub fn edge_with_division_states(dir: &Path, n: u64, seed: u64) -> (PathBuf, Connection) {
    let path = dir.join("edge.db");
    let edge = edge_db(&path, true);
    insert_rows(&edge, "division_states", &division_states(0, n, seed), 1000);
    (path, edge)
}

/// Writes an agent config for `edge` and `cloud_url` into `dir`.
pub fn write_config(
    dir: &Path,
    edge: &Path,
    cloud_url: &str,
    device: &str,
    batch_rows: u32,
) -> PathBuf {
    write_config_with(dir, edge, cloud_url, device, batch_rows, "")
}

/// The test data is dated days before today, so the hourly sync's two-hour
/// window (`sync.hourly_window_secs`) would leave it for the full sync:
/// the harness turns the window off. `tests/e2e/agent.rs` tests the window
/// (replace this line in the written file).
pub const WINDOW_LINE: &str = "hourly_window_secs = 0\n";

/// The location of the test data, and the tenant the agent names when it
/// pulls the default schema's published tables (`applied_configs`) as the
/// superuser the harness connects as (a device role's grant names its own).
pub const TEST_TENANT: &str = "store-042";

/// [`write_config`] with more TOML appended (e.g. a `[schedule]` section).
/// Without a `[pull]` section in `extra`, the config gets one naming
/// [`TEST_TENANT`].
pub fn write_config_with(
    dir: &Path,
    edge: &Path,
    cloud_url: &str,
    device: &str,
    batch_rows: u32,
    extra: &str,
) -> PathBuf {
    let path = dir.join("sluice.toml");
    let text = format!(
        "[device]\nid = \"{device}\"\n\n[edge]\ndatabase = \"{}\"\nextension = \"{}\"\n\n[cloud]\nurl = \"{cloud_url}\"\n\n[sync]\nbatch_rows = {batch_rows}\nbackoff_initial_ms = 50\nbackoff_max_ms = 500\n{WINDOW_LINE}",
        edge.display(),
        sqlite_extension().display()
    ) + extra
        + if extra.contains("[pull]") {
            String::new()
        } else {
            format!("\n[pull]\ntenant = \"{TEST_TENANT}\"\n")
        }
        .as_str();
    std::fs::write(&path, text).unwrap();
    path
}

/// A `sluice` command with the given arguments and quiet logs.
pub fn agent(args: &[&str]) -> Command {
    let mut cmd = Command::new(agent_binary());
    cmd.args(args).env("SLUICE_LOG", "warn");
    cmd
}

/// Runs `sluice ARGS`, asserts it succeeded (showing its output if not), and
/// returns its standard output.
pub fn run_ok(args: &[&str]) -> String {
    let out = agent(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "sluice {args:?} failed ({}): {stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// `sluice_pending(table)` at the edge.
pub fn pending(conn: &Connection, table: &str) -> i64 {
    conn.query_row("SELECT sluice_pending(?1)", [table], |r| r.get(0))
        .unwrap()
}

/// ISO-8601 UTC text with milliseconds for a Unix time in milliseconds.
pub fn iso_ms(ms: i64) -> String {
    const ISO_MS: &[time::format_description::FormatItem<'static>] = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap()
        .format(ISO_MS)
        .unwrap()
}

/// `n` simulated `division_states` rows (JSON objects), deterministic in
/// `seed`, starting at row number `from`.
pub fn division_states(from: u64, n: u64, seed: u64) -> Vec<serde_json::Value> {
    let states = ["RED", "YELLOW", "GREEN"];
    let base_ms: i64 = 1_795_000_000_000;
    (from..from + n)
        .map(|i| {
            let r = splitmix(seed ^ i);
            let cam = r % 12;
            serde_json::json!({
                "session_id": format!("s-{cam}-{}", i / 5000),
                "camera_id": format!("cam-{cam:02}"),
                "location_id": "store-042",
                "frame_number": i * 5,
                "video_ts": i as f64 * 0.2 + (r % 1000) as f64 / 7.0,
                "recorded_at": iso_ms(base_ms + i as i64 * 200 + (r % 200) as i64),
                "state": states[(r >> 8) as usize % 3],
                "walking_waiters": (r >> 16) % 4,
                "service_waiters": (r >> 20) % 3,
                "total_staff": 3 + (r >> 24) % 5,
                "screenshot_path": format!("/var/lib/pipeline/shots/{i}.jpg"),
            })
        })
        .collect()
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A cloud database with nothing in it (no extension, no schema).
pub fn empty_cloud_db(test: &str) -> CloudDb {
    let name = format!("t_{}_{}", test, std::process::id());
    let mut admin = postgres::Client::connect(&server_url(), postgres::NoTls).unwrap();
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name}"))
        .unwrap();
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .unwrap();
    CloudDb {
        url: replace_db(&server_url(), &name),
        name,
    }
}

/// Inserts rows through `sluice_insert`, `chunk` rows per call.
pub fn insert_rows(conn: &Connection, table: &str, rows: &[serde_json::Value], chunk: usize) {
    for part in rows.chunks(chunk) {
        let json = serde_json::Value::Array(part.to_vec()).to_string();
        // BEGIN IMMEDIATE: wait for the write lock instead of failing when
        // another connection (the agent) writes at the same time.
        conn.execute_batch("BEGIN IMMEDIATE").unwrap();
        let n: i64 = conn
            .query_row(
                "SELECT sluice_insert(?1, ?2)",
                rusqlite::params![table, json],
                |r| r.get(0),
            )
            .unwrap();
        conn.execute_batch("COMMIT").unwrap();
        assert_eq!(n as usize, part.len());
    }
}

/// The synced content of `division_states`, one canonical line per row, by id:
/// what both sides must agree on.
pub fn edge_division_states(conn: &Connection) -> Vec<String> {
    let mut stmt = conn
        .prepare(
            "SELECT id, session_id, camera_id, location_id, frame_number, video_ts, recorded_at, \
             state, walking_waiters, service_waiters, total_staff FROM division_states ORDER BY id",
        )
        .unwrap();
    stmt.query_map([], |r| {
        Ok(format!(
            "{}|{}|{}|{}|{}|{:?}|{}|{}|{}|{}|{}",
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, i64>(4)?,
            r.get::<_, f64>(5)?,
            r.get::<_, String>(6)?,
            r.get::<_, String>(7)?,
            r.get::<_, i64>(8)?,
            r.get::<_, i64>(9)?,
            r.get::<_, i64>(10)?,
        ))
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

/// The same canonical lines from the cloud, for one device.
pub fn cloud_division_states(client: &mut postgres::Client, device: &str) -> Vec<String> {
    client
        .query(
            "SELECT id, session_id, camera_id, location_id, frame_number, video_ts, \
             to_char(recorded_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), \
             state, walking_waiters, service_waiters, total_staff \
             FROM division_states WHERE sluice_device = $1 ORDER BY id",
            &[&device],
        )
        .unwrap()
        .iter()
        .map(|r| {
            format!(
                "{}|{}|{}|{}|{}|{:?}|{}|{}|{}|{}|{}",
                r.get::<_, i64>(0),
                r.get::<_, String>(1),
                r.get::<_, String>(2),
                r.get::<_, String>(3),
                r.get::<_, i64>(4),
                r.get::<_, f64>(5),
                r.get::<_, String>(6),
                r.get::<_, String>(7),
                r.get::<_, i32>(8),
                r.get::<_, i32>(9),
                r.get::<_, i32>(10),
            )
        })
        .collect()
}

/// An order-dependent 64-bit checksum (FNV-1a) over canonical row lines.
pub fn checksum(lines: &[String]) -> u64 {
    use std::hash::Hasher;
    let mut h = fnv::FnvHasher::default();
    for l in lines {
        h.write(l.as_bytes());
        h.write(b"\n");
    }
    h.finish()
}

/// Asserts both sides hold exactly the same rows; on a difference, names the
/// first differing row.
pub fn assert_same_rows(edge: &[String], cloud: &[String]) {
    if checksum(edge) == checksum(cloud) && edge.len() == cloud.len() {
        return;
    }
    let first = edge
        .iter()
        .zip(cloud)
        .position(|(a, b)| a != b)
        .unwrap_or(edge.len().min(cloud.len()));
    panic!(
        "edge has {} rows (checksum {:016x}), cloud has {} (checksum {:016x}); first difference at position {first}:\n edge:  {:?}\n cloud: {:?}",
        edge.len(),
        checksum(edge),
        cloud.len(),
        checksum(cloud),
        edge.get(first),
        cloud.get(first)
    );
}

#[cfg(test)]
mod tests {
    #[test]
    fn iso_dates_are_right() {
        assert_eq!(super::iso_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(super::iso_ms(1_795_000_000_123), "2026-11-18T11:06:40.123Z");
        assert_eq!(super::iso_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }
}

/// A pgbouncer in transaction pooling mode in front of the test server,
/// stopped when dropped. It runs as the PostgreSQL OS user when the tests run
/// as root (pgbouncer refuses root).
pub struct Pgbouncer {
    pub port: u16,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Pgbouncer {
    pub fn start() -> Pgbouncer {
        Pgbouncer::start_with_tls(None)
    }

    /// With `tls = Some((cert_pem, key_pem))`, clients must use TLS
    /// (`client_tls_sslmode = require`) with that certificate.
    pub fn start_with_tls(tls: Option<(&Path, &Path)>) -> Pgbouncer {
        let server: url_parts::Parts = url_parts::parse(&server_url());
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let ini = dir.path().join("pgbouncer.ini");
        std::fs::write(
            &ini,
            format!(
                "[databases]\n* = host=127.0.0.1 port={} user={}\n\n[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\nauth_type = any\npool_mode = transaction\nmax_client_conn = 500\ndefault_pool_size = 20\nlogfile = {}\n",
                server.port,
                server.user,
                dir.path().join("pgbouncer.log").display()
            ) + &match tls {
                Some((cert, key)) => {
                    for (from, to) in [(cert, "server.pem"), (key, "server.key")] {
                        std::fs::copy(from, dir.path().join(to)).unwrap();
                    }
                    format!(
                        "client_tls_sslmode = require\nclient_tls_cert_file = {0}/server.pem\nclient_tls_key_file = {0}/server.key\n",
                        dir.path().display()
                    )
                }
                None => String::new(),
            },
        )
        .unwrap();
        let root = unsafe { libc::geteuid() } == 0;
        let mut cmd = if root {
            let user = std::env::var("SLUICE_PG_USER").unwrap_or_else(|_| "sluicepg".into());
            let status = Command::new("chown")
                .args(["-R", &user])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(status.success());
            let mut c = Command::new("runuser");
            c.args(["-u", &user, "--", "/usr/sbin/pgbouncer"]);
            c
        } else {
            Command::new("/usr/sbin/pgbouncer")
        };
        let child = cmd
            .arg(&ini)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start /usr/sbin/pgbouncer (scripts/setup.sh installs it): {e}")
            });
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "pgbouncer did not listen on {port}"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Pgbouncer {
            port,
            child,
            _dir: dir,
        }
    }

    /// The URL of `db` through the pooler.
    pub fn url(&self, db: &str) -> String {
        let server = url_parts::parse(&server_url());
        format!("postgres://{}@127.0.0.1:{}/{db}", server.user, self.port)
    }
}

impl Drop for Pgbouncer {
    fn drop(&mut self) {
        // runuser forwards the signal to pgbouncer.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// A TCP port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

mod url_parts {
    /// User and port of a `postgres://user@host:port/db` URL.
    pub struct Parts {
        pub user: String,
        pub port: u16,
    }

    pub fn parse(url: &str) -> Parts {
        let rest = url.trim_start_matches("postgres://");
        let (user, rest) = rest.split_once('@').unwrap_or(("postgres", rest));
        let hostport = rest.split('/').next().unwrap_or("");
        let port = hostport
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .unwrap_or(5432);
        Parts {
            user: user.into(),
            port,
        }
    }
}

/// A PostgreSQL server of one test's own (through `scripts/pg.sh`), for
/// tests that restart or stop it; stopped when dropped.
pub struct OwnServer {
    pub name: String,
    pub url: String,
}

impl OwnServer {
    pub fn start(name: &str) -> OwnServer {
        let name = format!("{name}-{}", std::process::id());
        let out = Command::new("bash")
            .arg(repo_root().join("scripts/pg.sh"))
            .args(["start", &name])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg.sh start {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let env = String::from_utf8_lossy(&out.stdout);
        let url = env
            .lines()
            .find_map(|l| l.strip_prefix("export SLUICE_TEST_PG_URL="))
            .expect("pg.sh prints the URL")
            .to_owned();
        OwnServer { name, url }
    }

    /// Restarts the server (fast shutdown: sessions are cut), waiting until it serves again.
    pub fn restart(&self) {
        // Where scripts/pg.sh put it: under $SLUICE_CACHE (scripts/env.sh).
        let cache = std::env::var_os("SLUICE_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo_root().join(".cache"));
        let data = cache.join("run").join(&self.name).join("data");
        let pg_ctl = cache.join("pg17/bin/pg_ctl");
        let mut cmd = if unsafe { libc::geteuid() } == 0 {
            let user = std::env::var("SLUICE_PG_USER").unwrap_or_else(|_| "sluicepg".into());
            let mut c = Command::new("runuser");
            c.args(["-u", &user, "--"]).arg(&pg_ctl);
            c
        } else {
            Command::new(&pg_ctl)
        };
        let status = cmd
            .arg("-D")
            .arg(&data)
            .args(["-m", "fast", "-w", "restart"])
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "pg_ctl restart failed");
    }

    /// A fresh database on this server with the migrations applied.
    pub fn database(&self, db: &str) -> String {
        let mut admin = postgres::Client::connect(&self.url, postgres::NoTls).unwrap();
        admin
            .batch_execute(&format!("CREATE DATABASE {db}"))
            .unwrap();
        let url = replace_db(&self.url, db);
        let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        let mut files: Vec<_> = std::fs::read_dir(repo_root().join("migrations"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for f in files
            .iter()
            .filter(|p| p.extension().is_some_and(|x| x == "sql"))
        {
            c.batch_execute(&std::fs::read_to_string(f).unwrap())
                .unwrap();
        }
        url
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(repo_root().join("scripts/pg.sh"))
            .args(["stop", &self.name])
            .status();
    }
}

/// The seeded generator of the randomized tests (splitmix64): the same seed
/// gives the same run, so a failure prints its seed and reproduces.
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits (not an iterator: the stream never ends).
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        splitmix(self.0)
    }
    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    /// A number in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
    /// True `percent` times in 100.
    pub fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
    pub fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len())]
    }
}

/// Random text of up to `max_len` characters that are likely to trip a
/// parser or an identifier: quotes, escapes, brackets, control characters,
/// multi-byte and bidi characters, and NUL when `nul`.
pub fn random_text(rng: &mut Rng, max_len: usize, nul: bool) -> String {
    const CHARS: &[char] = &[
        'a',
        'Z',
        '0',
        '9',
        ' ',
        '\'',
        '"',
        '\\',
        '%',
        '_',
        '-',
        ':',
        '.',
        ',',
        '[',
        ']',
        '{',
        '}',
        '\n',
        '\t',
        '\u{7f}',
        'é',
        '€',
        '\u{1F600}',
        '\u{FEFF}',
        '\u{202E}',
        '(',
        ')',
        '&',
        '|',
        '!',
    ];
    let n = rng.below(max_len + 1);
    (0..n)
        .map(|_| {
            if nul && rng.chance(1) {
                '\0'
            } else {
                *rng.pick(CHARS)
            }
        })
        .collect()
}

/// The environment variable `name` as a number, or `default` when it is
/// unset or not a number.
pub fn env_number<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A seed: the environment variable `name`, or the clock.
pub fn env_seed(name: &str) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_millis() as u64)
        })
}
