//! The seal policy that cleanup, the storage budget and the rollups share.
//!
//! A raw row of a rollup source may leave the source (deleted by
//! `sluice_cleanup` or dropped by `sluice_enforce_budget`) only once every
//! rollup of the source has processed it and every row of its window and
//! of older windows, and its window ended a late-data horizon ago
//! ([`RolledUp`]). The windows whose rows went are then *sealed*: a rollup
//! never recomputes a window that starts before the seal
//! ([`sealed_until`]), because it would compute it from what is left.
//!
//! A row whose time is from the future ([`crate::time::future_after`]: a
//! clock that jumped forward and was corrected since) may leave once every
//! rollup processed it, whatever its window: its window cannot end before
//! the clock reaches it, and the disk must not wait years for that. Its
//! window is not sealed (a seal there would stop the rollup of every window
//! of the present); if a row lands in it later, it is recomputed from the
//! rows left, which is all a window of a wrong clock can be.

use rusqlite::Connection;
use sluice_wire::names::quote_ident;

use crate::bookkeeping::{drops, meta, rollups};
use crate::glue::{now_ms, Fail, Res};
use crate::rollup_spec::{parse_rollup, Rollup};
use crate::schema::TableInfo;
use crate::time::{future_after, EpochSql};

/// Default late-data horizon: raw rows of a window are kept at least this
/// long after the window ends, so that a late row still finds its window's
/// rows (one hour, in seconds).
pub const DEFAULT_HORIZON_SECS: i64 = 3600;

/// Windows of `source` that start before this (unix seconds) had raw rows
/// dropped by the budget or deleted by cleanup.
pub fn sealed_until(conn: &Connection, source: &str) -> Res<Option<i64>> {
    Ok(drops::sealed_until(conn, source)?.max(meta::cleanup_seal(conn, source)?))
}

/// Records that cleanup deleted the raw rows of `source` before `until`
/// (unix seconds).
pub fn seal(conn: &Connection, source: &str, until: i64) -> Res<()> {
    meta::raise_cleanup_seal(conn, source, until)
}

/// One rollup source and the rollups that read it, with their watermarks.
pub struct Source {
    pub name: String,
    pub rollups: Vec<(Rollup, i64)>,
}

/// Every rollup source, in the order of their first rollup's name.
pub fn sources(conn: &Connection) -> Res<Vec<Source>> {
    let mut out: Vec<Source> = Vec::new();
    for s in rollups::list(conn, None)? {
        let (r, _) = parse_rollup(conn, &s.name, &s.options)
            .map_err(|Fail(m)| Fail(format!("rollup '{}': {m}", s.name)))?;
        match out.iter_mut().find(|o| o.name == r.source) {
            Some(o) => o.rollups.push((r, s.watermark)),
            None => out.push(Source {
                name: r.source.clone(),
                rollups: vec![(r, s.watermark)],
            }),
        }
    }
    Ok(out)
}

/// A window of a rollup: its time column and width.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    pub time: String,
    pub width: i64,
}

impl Window {
    /// SQL: the unix seconds of the start of a row's window.
    pub fn start_sql(&self) -> String {
        EpochSql(&format!(
            "sluice_bucket({}, {})",
            quote_ident(&self.time),
            self.width
        ))
        .to_string()
    }

    /// SQL: the unix seconds of a row's time.
    pub fn time_sql(&self) -> String {
        EpochSql(&quote_ident(&self.time)).to_string()
    }
}

/// What one rollup has processed: rows up to rowid `watermark` in windows
/// starting before `before` (unix seconds).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Cut {
    window: Window,
    watermark: i64,
    before: i64,
}

/// The rows of a rollup source that may leave it: those that every rollup
/// of the source has processed, with the whole of their window and of the
/// windows before, in windows that ended a horizon ago; and those that
/// every rollup processed whose time is from the future. Nothing when a
/// rollup never ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolledUp {
    cuts: Vec<Cut>,
    /// Unix seconds: a time after this is from the future.
    future_after: i64,
}

impl RolledUp {
    /// SQL condition over the source's rows (`rowid` and its columns): the
    /// rows that may leave the source, [`Self::condition`] or
    /// [`Self::future`].
    pub fn may_leave(&self) -> String {
        if self.cuts.is_empty() {
            return "0".into();
        }
        format!("(({}) OR ({}))", self.condition(), self.future())
    }

    /// SQL condition: the row was processed by every rollup and its time
    /// (by every rollup's time column) is from the future.
    pub fn future(&self) -> String {
        if self.cuts.is_empty() {
            return "0".into();
        }
        self.cuts
            .iter()
            .map(|c| {
                format!(
                    "rowid <= {} AND {} > {}",
                    c.watermark,
                    c.window.time_sql(),
                    self.future_after
                )
            })
            .collect::<Vec<_>>()
            .join(" AND ")
    }

    /// SQL: the unix seconds of a row's time by the widest window, when it
    /// is not from the future (NULL otherwise): what a seal is computed
    /// from, so that a row from the future never seals the present. NULL
    /// when no row may go.
    pub fn seal_time_sql(&self) -> String {
        match self.widest() {
            Some(w) => {
                let t = w.time_sql();
                format!("(CASE WHEN {t} <= {} THEN {t} END)", self.future_after)
            }
            None => "NULL".into(),
        }
    }

    /// SQL condition over the source's rows (`rowid` and its columns): the
    /// rows that every rollup processed, with the whole of their window and
    /// of the windows before, in windows that ended a horizon ago.
    pub fn condition(&self) -> String {
        if self.cuts.is_empty() {
            return "0".into();
        }
        self.cuts
            .iter()
            .map(|c| {
                format!(
                    "rowid <= {} AND {} < {}",
                    c.watermark,
                    c.window.start_sql(),
                    c.before
                )
            })
            .collect::<Vec<_>>()
            .join(" AND ")
    }

    /// The widest window of the rollups (the unit of dropping), when any
    /// row may go.
    pub fn widest(&self) -> Option<&Window> {
        self.cuts
            .iter()
            .map(|c| &c.window)
            .fold(None, |w: Option<&Window>, c| match w {
                Some(w) if w.width >= c.width => Some(w),
                _ => Some(c),
            })
    }
}

/// [`RolledUp`] of `source` read by `rollups`, for a late-data horizon of
/// `horizon` seconds before `now` (unix seconds).
pub fn rolled_up(
    conn: &Connection,
    source: &TableInfo,
    rollups: &[(Rollup, i64)],
    horizon: i64,
    now: i64,
) -> Res<RolledUp> {
    let mut cuts = Vec::with_capacity(rollups.len());
    for (r, wm) in rollups {
        if *wm <= 0 {
            // Never run: nothing of this source is rolled up yet.
            return Ok(RolledUp {
                cuts: Vec::new(),
                future_after: future_after(now),
            });
        }
        let window = Window {
            time: r.time.clone(),
            width: r.width,
        };
        // The oldest window that still has unprocessed (late or new) rows.
        let first_unprocessed: Option<i64> = conn.query_row(
            &format!(
                "SELECT min({}) FROM main.{} WHERE rowid > ?1",
                window.start_sql(),
                source.quoted()
            ),
            [wm],
            |row| row.get(0),
        )?;
        let by_horizon = now
            .saturating_sub(horizon)
            .saturating_sub(r.width)
            .saturating_add(1);
        let before = first_unprocessed.map_or(by_horizon, |f| f.min(by_horizon));
        cuts.push(Cut {
            window,
            watermark: *wm,
            before,
        });
    }
    Ok(RolledUp {
        cuts,
        future_after: future_after(now),
    })
}

/// For `sluice_cleanup` of a table: what of it may go when rollups read it
/// (with the default horizon), `None` when no rollup reads it.
pub fn cleanup_guard(conn: &Connection, info: &TableInfo) -> Res<Option<RolledUp>> {
    let Some(s) = sources(conn)?
        .into_iter()
        .find(|s| s.name.eq_ignore_ascii_case(&info.name))
    else {
        return Ok(None);
    };
    rolled_up(
        conn,
        info,
        &s.rollups,
        DEFAULT_HORIZON_SECS,
        now_ms() / 1000,
    )
    .map(Some)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn cut(time: &str, width: i64, watermark: i64, before: i64) -> Cut {
        Cut {
            window: Window {
                time: time.into(),
                width,
            },
            watermark,
            before,
        }
    }

    #[test]
    fn nothing_rolled_up_lets_nothing_go() {
        let r = RolledUp {
            cuts: Vec::new(),
            future_after: 0,
        };
        assert_eq!(r.condition(), "0");
        assert_eq!(r.widest(), None);
    }

    #[test]
    fn every_rollup_must_have_processed_a_row() {
        let r = RolledUp {
            cuts: vec![cut("ts", 300, 10, 600), cut("t\"s", 3600, 7, 0)],
            future_after: 0,
        };
        let c = r.condition();
        assert!(c.starts_with("rowid <= 10 AND "), "{c}");
        assert!(c.contains("sluice_bucket(\"ts\", 300)") && c.contains(" < 600 AND rowid <= 7"));
        assert!(
            c.contains("sluice_bucket(\"t\"\"s\", 3600)") && c.ends_with(" < 0"),
            "{c}"
        );
        assert_eq!(r.widest().map(|w| w.width), Some(3600));
        // The first of equally wide windows.
        let r = RolledUp {
            cuts: vec![cut("a", 60, 1, 0), cut("b", 60, 1, 0)],
            future_after: 0,
        };
        assert_eq!(r.widest().map(|w| w.time.as_str()), Some("a"));
    }

    #[test]
    fn rows_from_the_future_may_leave_once_every_rollup_processed_them() {
        let r = RolledUp {
            cuts: vec![cut("ts", 300, 10, 600), cut("t2", 60, 7, 0)],
            future_after: 5000,
        };
        let f = r.future();
        assert!(
            f.starts_with("rowid <= 10 AND ")
                && f.contains(" > 5000 AND rowid <= 7 AND ")
                && f.ends_with(" > 5000"),
            "{f}"
        );
        assert_eq!(r.may_leave(), format!("(({}) OR ({f}))", r.condition()));
        // The seal is computed from the present only (the widest window's time).
        let s = r.seal_time_sql();
        assert!(s.contains("\"ts\"") && s.contains(" <= 5000 THEN "), "{s}");
        let none = RolledUp {
            cuts: Vec::new(),
            future_after: 5000,
        };
        assert_eq!(
            (none.may_leave(), none.future(), none.seal_time_sql()),
            ("0".to_string(), "0".to_string(), "NULL".to_string())
        );
    }
}

#[cfg(test)]
mod clocks;
