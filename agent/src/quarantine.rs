//! `sluice quarantine`, `sluice quarantine release` and `sluice resend`: the
//! operator's side of rows that cannot be sent as they are, and of rows to
//! send again (issue 12, cases 7 and 8). The rows moved aside are the table
//! `sluice_quarantine` at the edge (moved there by the sync, when the cloud
//! refused a row for its value, or by `sluice_batch`, for a row over the
//! batch limit); the operator fixes a row (or deletes it) and releases its
//! entry (`sluice_release`), and the next sync sends it. `sluice_resend`
//! schedules acknowledged rows to be sent again (after a fix in the cloud, or
//! an `ALTER TABLE ... ADD COLUMN ... DEFAULT` at the edge); the next sync
//! sends them as re-send batches, before the table's new rows.

use std::process::ExitCode;

use crate::config::Config;
use crate::edge::{Edge, QuarantineEntry};
use crate::narrow::cut;

/// How much of a reason the listing shows (`--json` shows all of it).
const LIST_REASON_CHARS: usize = 200;

/// `sluice quarantine`: the rows moved aside, of `table` or of every table.
pub async fn list(cfg: &Config, table: Option<String>, json: bool) -> anyhow::Result<ExitCode> {
    let edge = Edge::open(cfg).await?;
    let entries = edge
        .run(move |e| e.quarantined(table.as_deref(), 0))
        .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&entries)?);
    } else {
        for line in list_lines(&entries) {
            println!("{line}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The lines of the listing.
pub fn list_lines(entries: &[QuarantineEntry]) -> Vec<String> {
    if entries.is_empty() {
        return vec!["no row is quarantined".into()];
    }
    let opt = |v: Option<i64>| v.map_or("-".to_owned(), |v| v.to_string());
    let width = entries
        .iter()
        .map(|e| e.table.len())
        .max()
        .unwrap_or(0)
        .max("table".len());
    let mut out = vec![format!(
        "{:<width$} {:>6} {:>10} {:>10} {:>10}  {:<8}  {:<24}  reason",
        "table", "id", "seq", "row id", "bytes", "sqlstate", "quarantined at"
    )];
    for e in entries {
        out.push(format!(
            "{:<width$} {:>6} {:>10} {:>10} {:>10}  {:<8}  {:<24}  {}",
            e.table,
            e.id,
            e.seq,
            opt(e.row_id),
            opt(e.bytes),
            e.sqlstate.as_deref().unwrap_or("-"),
            e.quarantined_at,
            one_line(&cut(&e.reason, LIST_REASON_CHARS))
        ));
    }
    out.push(format!(
        "{} row{} quarantined: fix the row at the edge (or delete it), then `sluice quarantine release TABLE [ID]`",
        entries.len(),
        if entries.len() == 1 { " is" } else { "s are" }
    ));
    out
}

/// `sluice quarantine release TABLE [ID]`. Exit status 1 when an entry was
/// named and there is no such entry.
pub async fn release(cfg: &Config, table: String, id: Option<i64>) -> anyhow::Result<ExitCode> {
    let edge = Edge::open(cfg).await?;
    let t = table.clone();
    let n = edge.run(move |e| e.release(&t, id)).await?;
    println!("{}", release_line(&table, id, n));
    Ok(if n == 0 && id.is_some() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// `text` with its line breaks and other control characters as spaces, for a
/// listing of one line per row.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// What `sluice quarantine release` prints.
pub fn release_line(table: &str, id: Option<i64>, released: i64) -> String {
    match (released, id) {
        (0, Some(id)) => format!("{table}: no quarantine entry {id}"),
        (0, None) => format!("{table}: no row is quarantined"),
        (n, _) => format!(
            "{table}: {n} entr{} released; the next sync sends the row{} as {} now",
            if n == 1 { "y" } else { "ies" },
            if n == 1 { "" } else { "s" },
            if n == 1 { "it is" } else { "they are" }
        ),
    }
}

/// What `sluice resend` asks for.
pub struct ResendOptions {
    pub table: String,
    pub from: Option<String>,
    pub to: Option<String>,
    pub reason: Option<String>,
}

impl ResendOptions {
    /// `sluice_resend`'s JSON options. A time of digits alone is Unix
    /// seconds, given as a number; any other is text the edge parses.
    pub fn json(&self) -> String {
        let time = |t: &str| match t.parse::<i64>() {
            Ok(secs) => serde_json::Value::from(secs),
            Err(_) => serde_json::Value::from(t),
        };
        let mut o = serde_json::Map::new();
        for (key, value) in [("from", &self.from), ("to", &self.to)] {
            if let Some(v) = value {
                o.insert(key.into(), time(v));
            }
        }
        if let Some(r) = &self.reason {
            o.insert("reason".into(), r.clone().into());
        }
        serde_json::Value::Object(o).to_string()
    }
}

/// `sluice resend TABLE [--from TIME] [--to TIME] [--reason TEXT]`.
pub async fn resend(cfg: &Config, opts: ResendOptions) -> anyhow::Result<ExitCode> {
    let edge = Edge::open(cfg).await?;
    let (t, o) = (opts.table.clone(), opts.json());
    let n = edge.run(move |e| e.resend(&t, &o)).await?;
    println!("{}", resend_line(&opts.table, n));
    Ok(ExitCode::SUCCESS)
}

/// What `sluice resend` prints.
pub fn resend_line(table: &str, rows: i64) -> String {
    if rows == 0 {
        format!("{table}: no acknowledged row in the range: nothing to send again")
    } else {
        format!(
            "{table}: {rows} row{} scheduled to be sent again; the next sync sends {}",
            if rows == 1 { "" } else { "s" },
            if rows == 1 { "it" } else { "them" }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(table: &str, id: i64, sqlstate: Option<&str>, bytes: Option<i64>) -> QuarantineEntry {
        QuarantineEntry {
            table: table.into(),
            id,
            seq: 151,
            row_id: Some(151),
            bytes,
            sqlstate: sqlstate.map(str::to_owned),
            reason: "x".repeat(300),
            quarantined_at: "2026-12-01T18:00:00.000Z".into(),
        }
    }

    #[test]
    fn the_listing_has_a_line_per_row_and_says_what_to_do() {
        assert_eq!(list_lines(&[]), ["no row is quarantined"]);
        let lines = list_lines(&[
            entry("division_states", 1, Some("22003"), None),
            entry("key_frames", 2, None, Some(73_400_320)),
        ]);
        assert_eq!(lines.len(), 4, "{lines:#?}");
        assert!(lines[0].starts_with("table           "), "{}", lines[0]);
        assert!(
            lines[1].starts_with("division_states      1        151        151          -  22003     2026-12-01T18:00:00.000Z  xxx"),
            "{}",
            lines[1]
        );
        assert!(lines[1].ends_with("... (300 bytes in all)"), "{}", lines[1]);
        assert!(lines[2].contains("  73400320  -         "), "{}", lines[2]);
        assert!(
            lines[3].starts_with("2 rows are quarantined"),
            "{}",
            lines[3]
        );
    }

    #[test]
    fn release_and_resend_say_what_the_next_sync_does() {
        assert_eq!(
            release_line("t", None, 1),
            "t: 1 entry released; the next sync sends the row as it is now"
        );
        assert_eq!(
            release_line("t", None, 3),
            "t: 3 entries released; the next sync sends the rows as they are now"
        );
        assert_eq!(release_line("t", Some(9), 0), "t: no quarantine entry 9");
        assert_eq!(release_line("t", None, 0), "t: no row is quarantined");
        assert_eq!(
            resend_line("t", 300),
            "t: 300 rows scheduled to be sent again; the next sync sends them"
        );
        assert_eq!(
            resend_line("t", 0),
            "t: no acknowledged row in the range: nothing to send again"
        );
    }

    #[test]
    fn resend_options_are_sluice_resends_json() {
        let mut o = ResendOptions {
            table: "t".into(),
            from: None,
            to: None,
            reason: None,
        };
        assert_eq!(o.json(), "{}");
        o.from = Some("2026-12-01T00:00:00Z".into());
        o.reason = Some("cloud column added".into());
        assert_eq!(
            o.json(),
            r#"{"from":"2026-12-01T00:00:00Z","reason":"cloud column added"}"#
        );
        o.to = Some("1796133600".into());
        assert_eq!(
            o.json(),
            r#"{"from":"2026-12-01T00:00:00Z","reason":"cloud column added","to":1796133600}"#
        );
    }
}
