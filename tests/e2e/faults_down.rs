//! The down direction of the fault trials (cloud to edge, issue 13): a
//! cloud writer changes the default schema's published `applied_configs`
//! (in the box's scope and out of it: inserts, updates of published
//! columns, deletes, key changes, rows moved to another box or location,
//! two transactions committing out of the order of their ids, a writing
//! transaction held open across an agent run), the box writes its own
//! columns (status, applied_at, error_message) at the edge, some rounds take
//! the box offline past the tombstone horizon (a tiny horizon and
//! `sluice.purge_changes()`: the next pull is a snapshot), and some kill the
//! agent in the middle of a snapshot (failpoint `after-snapshot-page:N`).
//! The agent's runs of the trial (with their kills, cuts, stalls and server
//! restarts) pull. At the end, after a final clean pull, the edge's table
//! must hold exactly the cloud's rows of its scope at their published
//! values, and the edge-owned values the trial wrote must be in the cloud.

use std::collections::{BTreeMap, BTreeSet};

use sluice_tests::Rng;

/// The pull section of a trial box's config: the tenant of the scope and
/// small pages, so that a snapshot has several.
pub fn pull_config(rng: &mut Rng) -> String {
    format!(
        "\n[pull]\ntenant = \"{TENANT}\"\nmax_rows = {}\n",
        rng.range(3, 8)
    )
}

/// The box's tenant (its `[pull] tenant`).
const TENANT: &str = "store-042";
const LOCATIONS: [&str; 2] = ["store-042", "store-043"];
const BASE_MS: i64 = 1_795_000_000_000;

/// Published columns, as one canonical line (cloud side).
const CLOUD_LINE: &str = "location_id || '|' || config_id AS k, \
    concat_ws('|', location_id, config_id, camera_id, coalesce(device_id, '<null>'), version::text, settings::text, \
      coalesce(to_char(deadline AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), '<null>'), \
      to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')) AS line";

/// The cloud's scope of the box `device`.
fn in_scope(device: &str) -> String {
    format!("location_id = '{TENANT}' AND (device_id = '{device}' OR device_id IS NULL)")
}

fn canon(line: String) -> String {
    // settings is JSON: jsonb's text at the cloud, the same text at the edge;
    // compared as JSON values.
    let parts: Vec<&str> = line.split('|').collect();
    if parts.len() != 8 {
        return line;
    }
    let json = serde_json::from_str::<serde_json::Value>(parts[5])
        .map(|v| v.to_string())
        .unwrap_or_else(|_| parts[5].to_owned());
    let mut out: Vec<String> = parts.iter().map(|p| (*p).to_owned()).collect();
    out[5] = json;
    out.join("|")
}

/// The edge's rows: key -> published line.
pub fn edge_lines(edge: &rusqlite::Connection) -> BTreeMap<String, String> {
    let mut s = edge
        .prepare(
            "SELECT location_id || '|' || config_id, \
             location_id || '|' || config_id || '|' || camera_id || '|' || coalesce(device_id, '<null>') || '|' || \
             version || '|' || settings || '|' || coalesce(deadline, '<null>') || '|' || created_at \
             FROM applied_configs",
        )
        .unwrap();
    let v: BTreeMap<String, String> = s
        .query_map([], |r| Ok((r.get(0)?, canon(r.get(1)?))))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    v
}

/// The cloud's rows matching `filter`: key -> published line.
fn cloud_lines(c: &mut postgres::Client, filter: &str) -> BTreeMap<String, String> {
    c.query(
        &format!("SELECT {CLOUD_LINE} FROM applied_configs WHERE {filter}"),
        &[],
    )
    .unwrap()
    .into_iter()
    .map(|r| (r.get(0), canon(r.get(1))))
    .collect()
}

/// Edge-owned values: key -> status|applied_at|error_message.
fn edge_owned_at_edge(edge: &rusqlite::Connection) -> BTreeMap<String, String> {
    let mut s = edge
        .prepare(
            "SELECT location_id || '|' || config_id, \
             status || '|' || coalesce(applied_at, '<null>') || '|' || coalesce(error_message, '<null>') \
             FROM applied_configs",
        )
        .unwrap();
    let v: BTreeMap<String, String> = s
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    v
}

fn edge_owned_in_cloud(c: &mut postgres::Client) -> BTreeMap<String, String> {
    c.query(
        "SELECT location_id || '|' || config_id, concat_ws('|', status, \
           coalesce(to_char(applied_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), '<null>'), \
           coalesce(error_message, '<null>')) FROM applied_configs",
        &[],
    )
    .unwrap()
    .into_iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

/// The down direction's figures of a trial.
#[derive(Default, Debug, Clone, Copy)]
pub struct DownTally {
    /// A cloud row of the box's scope missing at the edge.
    pub lost: u64,
    /// An edge row that is not (or no longer) in the box's scope.
    pub extra: u64,
    /// An edge row at a value the cloud row had before.
    pub reverted: u64,
    /// An edge row at a value the cloud row never had.
    pub different: u64,
    /// An edge-owned value the trial wrote at the edge that the cloud lacks.
    pub status_lost: u64,
    /// Rows the cloud deleted (or re-keyed away) that an edge status report
    /// inserted again (a failure: the report was cut before the box had
    /// pulled the delete, and the delete wins).
    pub reinserted: u64,
    /// Rows the cloud deleted that a database restored from a backup (or a
    /// copy of the box's database) brought back with its status report,
    /// where a purge past the horizon had dropped the delete: counted, as
    /// documented (docs/sync-protocol.md, "Tables both sides write").
    pub revived: u64,
    /// Snapshots the agent was killed in the middle of.
    pub killed_mid_snapshot: u64,
    /// Rounds offline past the horizon.
    pub past_horizon: u64,
}

impl DownTally {
    pub fn add(&mut self, t: &DownTally) {
        self.lost += t.lost;
        self.extra += t.extra;
        self.reverted += t.reverted;
        self.different += t.different;
        self.status_lost += t.status_lost;
        self.reinserted += t.reinserted;
        self.revived += t.revived;
        self.killed_mid_snapshot += t.killed_mid_snapshot;
        self.past_horizon += t.past_horizon;
    }
}

/// A writing transaction of the cloud, not committed yet, with the lines it
/// wrote (history once committed).
struct Open {
    client: postgres::Client,
    lines: Vec<(String, String)>,
    what: String,
}

/// The cloud writer and what it wrote.
pub struct CloudWriter {
    url: String,
    next: u64,
    /// Every published line each key had in the cloud, in order (committed).
    history: BTreeMap<String, Vec<String>>,
    /// Keys the writer deleted or re-keyed away, not inserted again since.
    gone: BTreeSet<String>,
    /// Of `gone`, the keys a purge past the horizon ran over since their
    /// delete, and those a restore or a copy of the first box's database
    /// happened to since: both, and the delete may be gone while a database
    /// that still holds the row sends its status.
    purged_since_delete: BTreeSet<String>,
    restored_since_delete: BTreeSet<String>,
    /// A copy of the first box's database sends under the same device id
    /// (from the clone on): the two share one subscription in the cloud, so
    /// one's pulls move the checkpoint the purge goes by past what the
    /// other has applied, and every later delete is as if restored.
    clone_alive: bool,
    /// The transaction held open across the agent's run.
    held: Option<Open>,
    /// Edge-owned values the trial wrote at the first box (key -> line),
    /// since the last restore of its database.
    written: BTreeMap<String, String>,
    /// Keys whose edge-owned values a clone held pending when copied: it
    /// sends them too, over the first box's.
    cloned_pending: BTreeSet<String>,
    statuses: u64,
    /// The version of each row the first box held when last observed
    /// (since its last restore): a row's version only grows in the cloud.
    seen: BTreeMap<String, i64>,
    pub tally: DownTally,
}

fn line_of(row: &postgres::Row) -> (String, String) {
    (row.get(0), canon(row.get(1)))
}

impl CloudWriter {
    pub fn new(url: &str) -> CloudWriter {
        CloudWriter {
            url: url.to_owned(),
            next: 0,
            history: BTreeMap::new(),
            gone: BTreeSet::new(),
            purged_since_delete: BTreeSet::new(),
            restored_since_delete: BTreeSet::new(),
            clone_alive: false,
            held: None,
            written: BTreeMap::new(),
            cloned_pending: BTreeSet::new(),
            statuses: 0,
            seen: BTreeMap::new(),
            tally: DownTally::default(),
        }
    }

    fn connect(&self) -> postgres::Client {
        postgres::Client::connect(&self.url, postgres::NoTls).unwrap()
    }

    fn commit(&mut self, lines: Vec<(String, String)>, deleted: Vec<String>) {
        for k in deleted {
            self.purged_since_delete.remove(&k);
            if self.clone_alive {
                self.restored_since_delete.insert(k.clone());
            } else {
                self.restored_since_delete.remove(&k);
            }
            self.gone.insert(k);
        }
        for (k, line) in lines {
            self.gone.remove(&k);
            self.purged_since_delete.remove(&k);
            self.restored_since_delete.remove(&k);
            let h = self.history.entry(k).or_default();
            if h.last() != Some(&line) {
                h.push(line);
            }
        }
    }

    /// An insert of a new configuration (in the scope or out of it).
    fn insert(&mut self, rng: &mut Rng, c: &mut impl postgres::GenericClient) -> (String, String) {
        self.next += 1;
        let n = self.next;
        let location = if rng.chance(75) { TENANT } else { LOCATIONS[1] };
        let device: Option<&str> = *rng.pick(&[None, Some(super_device()), Some("box-other")]);
        let deadline = rng
            .chance(30)
            .then(|| sluice_tests::iso_ms(BASE_MS + n as i64 * 1000 + 250));
        let row = c
            .query_one(
                &format!(
                    "INSERT INTO applied_configs (location_id, config_id, camera_id, device_id, version, settings, deadline, created_at) \
                     VALUES ($1, $2, $3, $4, 1, $5::text::jsonb, $6::text::timestamptz, $7::text::timestamptz) RETURNING {CLOUD_LINE}"
                ),
                &[
                    &location,
                    &format!("cfg-{n:04}"),
                    &format!("cam-{:02}", rng.below(4)),
                    &device,
                    &format!("{{\"fps\": {}, \"n\": {n}}}", rng.range(1, 30)),
                    &deadline,
                    &sluice_tests::iso_ms(BASE_MS + n as i64 * 1000 + 125),
                ],
            )
            .unwrap();
        line_of(&row)
    }

    /// The configurations there before the box's first pull (its snapshot).
    pub fn initial(&mut self, rng: &mut Rng) -> String {
        let mut c = self.connect();
        let mut tx = c.transaction().unwrap();
        let n = rng.range(8, 30);
        let lines: Vec<_> = (0..n).map(|_| self.insert(rng, &mut tx)).collect();
        tx.commit().unwrap();
        self.commit(lines, Vec::new());
        format!("cloud: {n} configurations")
    }

    /// The cloud's random work of a round: a few transactions; sometimes an
    /// insert in a transaction that took its id before another committed and
    /// commits after it, or is held open across the agent's run.
    pub fn work(&mut self, rng: &mut Rng) -> String {
        let mut done = Vec::new();
        let mut c = self.connect();
        // The older transaction first: its id is below everything after.
        let older = rng.chance(35).then(|| {
            let mut o = self.connect();
            o.batch_execute("BEGIN").unwrap();
            let mut lines = Vec::new();
            let mut inserted = 0;
            for _ in 0..rng.range(1, 3) {
                // (An explicit BEGIN on the client: held across calls.)
                lines.push(self.insert(rng, &mut o));
                inserted += 1;
            }
            Open {
                client: o,
                lines,
                what: format!("{inserted} inserts"),
            }
        });
        for _ in 0..rng.range(1, 3) {
            let mut tx = c.transaction().unwrap();
            let mut lines = Vec::new();
            let mut deleted = Vec::new();
            for _ in 0..rng.range(1, 4) {
                let keys: Vec<String> = tx
                    .query(
                        "SELECT location_id || '|' || config_id FROM applied_configs ORDER BY random() LIMIT 1",
                        &[],
                    )
                    .unwrap()
                    .into_iter()
                    .map(|r| r.get(0))
                    .collect();
                let op = if keys.is_empty() { 0 } else { rng.below(7) };
                let key = keys.first().cloned().unwrap_or_default();
                let (loc, id) = key.split_once('|').unwrap_or(("", ""));
                let (loc, id) = (loc.to_owned(), id.to_owned());
                let one = |tx: &mut postgres::Transaction, sql: &str| -> Option<(String, String)> {
                    tx.query(
                        &format!("{sql} WHERE location_id = $1 AND config_id = $2 RETURNING {CLOUD_LINE}"),
                        &[&loc, &id],
                    )
                    .unwrap()
                    .first()
                    .map(line_of)
                };
                match op {
                    0 | 1 => {
                        lines.push(self.insert(rng, &mut tx));
                        done.push("insert");
                    }
                    2 | 3 => {
                        self.statuses += 1;
                        let sql = format!(
                            "UPDATE applied_configs SET version = version + 1, settings = jsonb_build_object('fps', {}, 'v', {})",
                            rng.range(1, 30),
                            self.statuses
                        );
                        lines.extend(one(&mut tx, &sql));
                        done.push("update");
                    }
                    4 => {
                        tx.execute(
                            "DELETE FROM applied_configs WHERE location_id = $1 AND config_id = $2",
                            &[&loc, &id],
                        )
                        .unwrap();
                        deleted.push(key.clone());
                        done.push("delete");
                    }
                    5 => {
                        // To another box of the location, to every box, or to this one.
                        let to: Option<&str> =
                            *rng.pick(&[None, Some(super_device()), Some("box-other")]);
                        let sql = match to {
                            None => "UPDATE applied_configs SET version = version + 1, device_id = NULL".to_owned(),
                            Some(d) => format!("UPDATE applied_configs SET version = version + 1, device_id = '{d}'"),
                        };
                        lines.extend(one(&mut tx, &sql));
                        done.push("move to a box");
                    }
                    _ => {
                        // To the other location (the key changes), or a new config_id.
                        self.next += 1;
                        let sql = if rng.chance(50) {
                            "UPDATE applied_configs SET version = version + 1, location_id = CASE location_id WHEN 'store-042' THEN 'store-043' ELSE 'store-042' END".to_owned()
                        } else {
                            format!(
                                "UPDATE applied_configs SET version = version + 1, config_id = 'cfg-{:04}'",
                                self.next
                            )
                        };
                        let moved = one(&mut tx, &sql);
                        if moved.is_some() {
                            deleted.push(key.clone());
                        }
                        lines.extend(moved);
                        done.push("re-key");
                    }
                }
            }
            tx.commit().unwrap();
            self.commit(lines, deleted);
        }
        let mut label = format!("cloud: {}", done.join(", "));
        if let Some(mut o) = older {
            if rng.chance(50) {
                // Commits after the younger ones, before the agent runs.
                o.client.batch_execute("COMMIT").unwrap();
                let lines = std::mem::take(&mut o.lines);
                self.commit(lines, Vec::new());
                label += &format!("; an older transaction ({}) committed after them", o.what);
            } else {
                label += &format!(
                    "; an older transaction ({}) held open across the run",
                    o.what
                );
                self.held = Some(o);
            }
        }
        label
    }

    /// Commits the transaction held open across the run (a server restart
    /// may have ended it: then nothing of it happened).
    pub fn finish_held(&mut self) -> Option<String> {
        let mut o = self.held.take()?;
        Some(match o.client.batch_execute("COMMIT") {
            Ok(()) => {
                let lines = std::mem::take(&mut o.lines);
                self.commit(lines, Vec::new());
                format!("the held transaction ({}) committed", o.what)
            }
            Err(e) => format!("the held transaction ({}) was lost: {e}", o.what),
        })
    }

    /// The box was offline past the horizon: a tiny horizon, the purge
    /// (entries up to xmin - 1 when no subscription pulled within it), the
    /// horizon back. Returns the entries purged.
    pub fn past_horizon(&mut self) -> String {
        let mut c = self.connect();
        c.batch_execute(
            "UPDATE sluice.publications SET horizon = '1 millisecond' WHERE edge_table = 'applied_configs'",
        )
        .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(5));
        let purged: i64 = c
            .query_one("SELECT sluice.purge_changes()", &[])
            .unwrap()
            .get(0);
        c.batch_execute(
            "UPDATE sluice.publications SET horizon = '7 days' WHERE edge_table = 'applied_configs'",
        )
        .unwrap();
        self.tally.past_horizon += 1;
        self.purged_since_delete.extend(self.gone.iter().cloned());
        format!("offline past the horizon ({purged} changes purged)")
    }

    /// The box's pipeline writes its own columns of some configurations it
    /// holds (status, applied_at, error_message). `Err` at a full disk.
    pub fn edge_work(
        &mut self,
        rng: &mut Rng,
        edge: &rusqlite::Connection,
    ) -> Result<String, String> {
        let keys: Vec<(String, String)> = edge
            .prepare("SELECT location_id, config_id FROM applied_configs ORDER BY random() LIMIT 3")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        if keys.is_empty() {
            return Ok("edge: no configuration yet".into());
        }
        let mut wrote = Vec::new();
        edge.execute_batch("BEGIN IMMEDIATE")
            .map_err(|e| e.to_string())?;
        for (loc, id) in &keys {
            self.statuses += 1;
            let status = *rng.pick(&["in_progress", "success", "failed"]);
            let at = sluice_tests::iso_ms(BASE_MS + 86_400_000 + self.statuses as i64 * 1000 + 500);
            let error = format!("e{}", self.statuses);
            if let Err(e) = edge.execute(
                "UPDATE applied_configs SET status = ?1, applied_at = ?2, error_message = ?3 \
                 WHERE location_id = ?4 AND config_id = ?5",
                rusqlite::params![status, at, error, loc, id],
            ) {
                let _ = edge.execute_batch("ROLLBACK");
                return Err(e.to_string());
            }
            wrote.push((format!("{loc}|{id}"), format!("{status}|{at}|{error}")));
        }
        if let Err(e) = edge.execute_batch("COMMIT") {
            if !edge.is_autocommit() {
                let _ = edge.execute_batch("ROLLBACK");
            }
            return Err(e.to_string());
        }
        let n = wrote.len();
        self.written.extend(wrote);
        Ok(format!("edge: {n} statuses"))
    }

    /// The first box's database was restored from a backup: what it wrote
    /// of its own columns since is no longer its latest word.
    pub fn restored(&mut self) {
        self.written.clear();
        self.seen.clear();
        self.restored_since_delete.extend(self.gone.iter().cloned());
    }

    /// After each agent run of the first box: no edge row ever goes back
    /// to an older version of its cloud row (every change of a row gives it
    /// a higher `version`), and every edge row is a value the cloud
    /// committed.
    pub fn observe(&mut self, edge: &rusqlite::Connection, report: &mut Vec<String>) {
        for (k, line) in edge_lines(edge) {
            let version: i64 = line
                .split('|')
                .nth(4)
                .and_then(|v| v.parse().ok())
                .unwrap_or(-1);
            if let Some(prev) = self.seen.get(&k).filter(|p| **p > version) {
                self.tally.reverted += 1;
                report.push(format!(
                    "went back at the edge during the trial {k}: version {prev}, then {line}"
                ));
            }
            if !self.history.get(&k).is_some_and(|h| h.contains(&line)) {
                self.tally.different += 1;
                report.push(format!(
                    "at the edge during the trial, never committed in the cloud {k}: {line}"
                ));
            }
            self.seen.insert(k, version);
        }
    }

    /// A clone was copied from the first box: its pending edge-owned values.
    pub fn cloned(&mut self, clone: &rusqlite::Connection) {
        let mut s = clone
            .prepare(
                "SELECT location_id || '|' || config_id FROM applied_configs \
                 WHERE sluice_version > (SELECT json_extract(sluice_tracked('applied_configs'), '$.acked_seq'))",
            )
            .unwrap();
        let keys: Vec<String> = s
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        self.cloned_pending.extend(keys);
        self.restored_since_delete.extend(self.gone.iter().cloned());
        self.clone_alive = true;
    }

    /// The edge `edge` of box `name` against the cloud, after its final
    /// clean pull: exactly the cloud's rows of its scope, at their values.
    pub fn compare(
        &mut self,
        name: &str,
        edge: &rusqlite::Connection,
        c: &mut postgres::Client,
        device: &str,
        first_box: bool,
        report: &mut Vec<String>,
    ) -> usize {
        let want = cloud_lines(c, &in_scope(device));
        let got = edge_lines(edge);
        let t = &mut self.tally;
        for (k, line) in &want {
            match got.get(k) {
                None => {
                    t.lost += 1;
                    report.push(format!("{name}: lost at the edge {k}: {line}"));
                }
                Some(g) if g == line => {}
                Some(g) if self.history.get(k).is_some_and(|h| h.contains(g)) => {
                    t.reverted += 1;
                    report.push(format!(
                        "{name}: reverted at the edge {k}: edge {g}, cloud {line}"
                    ));
                }
                Some(g) => {
                    t.different += 1;
                    report.push(format!(
                        "{name}: different at the edge {k}: edge {g}, cloud {line}"
                    ));
                }
            }
        }
        for (k, g) in &got {
            if !want.contains_key(k) {
                t.extra += 1;
                report.push(format!(
                    "{name}: at the edge, not in its scope in the cloud {k}: {g}"
                ));
            }
        }
        if !first_box {
            return want.len();
        }
        // The up direction of the same table: the edge-owned values the box
        // wrote (and still holds) are in the cloud.
        let at_edge = edge_owned_at_edge(edge);
        let in_cloud = edge_owned_in_cloud(c);
        for (k, v) in &self.written {
            if at_edge.get(k) != Some(v) || self.cloned_pending.contains(k) {
                // Gone from the edge, or written over by a later pull
                // (deleted and received again), or a clone's too.
                continue;
            }
            if in_cloud.get(k) != Some(v) {
                t.status_lost += 1;
                report.push(format!(
                    "{name}: the edge's {v} of {k} is not in the cloud: {:?}",
                    in_cloud.get(k)
                ));
            }
        }
        // A row the cloud deleted (or re-keyed away) stays gone: the box's
        // status report of it, cut before the box had pulled the delete,
        // must not insert it again.
        let all = cloud_lines(c, "true");
        for k in self.gone.iter().filter(|k| all.contains_key(*k)) {
            if self.purged_since_delete.contains(k) && self.restored_since_delete.contains(k) {
                t.revived += 1;
                continue;
            }
            t.reinserted += 1;
            report.push(format!(
                "{name}: the cloud deleted {k}, an edge status inserted it again: {}",
                all[k]
            ));
        }
        want.len()
    }
}

fn super_device() -> &'static str {
    super::DEVICE
}
