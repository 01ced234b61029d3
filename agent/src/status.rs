//! `sluice status`: what an operator asks first. Per tracked table: pending
//! rows and the last acknowledgement; from the sync log: the last sync, the
//! last success and the last error; an estimate of the time to catch up (the
//! pending rows at the throughput of recent syncs, or the bandwidth cap if it
//! is lower); from the cloud, when reachable: this device's clock skew. The
//! extension's own `sluice_status` view, where the loaded `sluice0.so` has
//! one, is included as it is (oldest pending age, rows dropped by the budget).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::cloud::Cloud;
use crate::config::Config;
use crate::edge::{Edge, EdgeConn, LogEntry, RunStatus, TableStatus};

#[derive(Debug, Serialize)]
pub struct Status {
    pub device: String,
    pub tables: Vec<TableStatus>,
    pub pending_rows: i64,
    /// Rows per second of recent syncs (rows over wall time), if any ran.
    pub recent_rows_per_sec: Option<f64>,
    /// Seconds to send what is pending at that rate (capped by the bandwidth limit).
    pub catch_up_secs: Option<f64>,
    pub last_sync: Option<LogEntry>,
    pub last_success_at: Option<String>,
    pub last_error: Option<LogEntry>,
    /// `sluice_status` of the extension, one JSON object per row.
    pub extension_status: Vec<serde_json::Value>,
    pub cloud: CloudView,
}

#[derive(Debug, Serialize)]
pub struct CloudView {
    pub reachable: bool,
    pub clock_skew_ms: Option<i64>,
    pub last_batch_at: Option<String>,
    pub error: Option<String>,
}

fn seconds(e: &LogEntry) -> Option<f64> {
    let start = DateTime::parse_from_rfc3339(&e.started_at).ok()?;
    let end = DateTime::parse_from_rfc3339(e.ended_at.as_deref()?).ok()?;
    Some((end - start).num_milliseconds().max(1) as f64 / 1000.0)
}

/// Rows per second and bytes per row over recent syncs that sent something.
fn throughput(log: &[LogEntry]) -> Option<(f64, f64)> {
    let runs: Vec<&LogEntry> = log
        .iter()
        .filter(|e| e.is_sync() && e.rows > 0)
        .take(10)
        .collect();
    let rows: i64 = runs.iter().map(|e| e.rows).sum();
    let bytes: i64 = runs.iter().map(|e| e.bytes).sum();
    let secs: f64 = runs.iter().filter_map(|e| seconds(e)).sum();
    (rows > 0 && secs > 0.0).then(|| (rows as f64 / secs, bytes as f64 / rows as f64))
}

/// Seconds to send `pending` rows at `rows_per_sec`, or at the bandwidth cap if lower.
pub fn catch_up_secs(
    pending: i64,
    rows_per_sec: f64,
    bytes_per_row: f64,
    cap_bytes_per_sec: u64,
) -> f64 {
    let mut rate = rows_per_sec;
    if cap_bytes_per_sec > 0 && bytes_per_row > 0.0 {
        rate = rate.min(cap_bytes_per_sec as f64 / bytes_per_row);
    }
    pending.max(0) as f64 / rate.max(f64::MIN_POSITIVE)
}

pub async fn collect(cfg: &Config, with_cloud: bool) -> anyhow::Result<Status> {
    let edge = Edge::open(cfg).await?;
    let (tables, log, extension_status) = edge
        .run(|e| {
            Ok((
                e.status()?,
                e.recent_log(200)?,
                extension_status(e).unwrap_or_default(),
            ))
        })
        .await?;
    let pending_rows: i64 = tables.iter().map(|t| t.pending_rows).sum();
    let tp = throughput(&log);
    let syncs = |e: &&LogEntry| e.is_sync();
    let cloud = if with_cloud {
        cloud_view(cfg).await
    } else {
        CloudView {
            reachable: false,
            clock_skew_ms: None,
            last_batch_at: None,
            error: Some("not asked (--offline)".into()),
        }
    };
    Ok(Status {
        device: cfg.device.id.clone(),
        pending_rows,
        recent_rows_per_sec: tp.map(|t| t.0),
        catch_up_secs: tp
            .map(|(r, b)| catch_up_secs(pending_rows, r, b, cfg.sync.bandwidth_bytes_per_sec)),
        last_sync: log.iter().find(syncs).cloned(),
        last_success_at: log
            .iter()
            .filter(syncs)
            .find(|e| e.status == RunStatus::Success)
            .and_then(|e| e.ended_at.clone()),
        last_error: log.iter().find(|e| e.status.is_error()).cloned(),
        extension_status,
        tables,
        cloud,
    })
}

fn extension_status(edge: &EdgeConn) -> anyhow::Result<Vec<serde_json::Value>> {
    let conn = edge.connection();
    let exists: bool = conn.query_row(
        "SELECT count(*) > 0 FROM sqlite_master WHERE name = 'sluice_status'",
        [],
        |r| r.get(0),
    )?;
    if !exists {
        return Ok(Vec::new());
    }
    let mut stmt = conn.prepare("SELECT * FROM sluice_status")?;
    let names: Vec<String> = stmt.column_names().into_iter().map(str::to_owned).collect();
    let rows = stmt.query_map([], |r| {
        let mut obj = serde_json::Map::new();
        for (i, n) in names.iter().enumerate() {
            let v = match r.get_ref(i)? {
                rusqlite::types::ValueRef::Null => serde_json::Value::Null,
                rusqlite::types::ValueRef::Integer(i) => i.into(),
                rusqlite::types::ValueRef::Real(f) => f.into(),
                rusqlite::types::ValueRef::Text(t) => {
                    String::from_utf8_lossy(t).into_owned().into()
                }
                rusqlite::types::ValueRef::Blob(b) => format!("<{} bytes>", b.len()).into(),
            };
            obj.insert(n.clone(), v);
        }
        Ok(serde_json::Value::Object(obj))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

async fn cloud_view(cfg: &Config) -> CloudView {
    let attempt = async {
        let cloud = Cloud::connect(&cfg.cloud).await?;
        cloud.device_view(&cfg.device.id).await
    };
    match tokio::time::timeout(
        Duration::from_secs(cfg.cloud.connect_timeout_secs.min(5)),
        attempt,
    )
    .await
    {
        Ok(Ok(view)) => CloudView {
            reachable: true,
            clock_skew_ms: view.as_ref().and_then(|v| v.0),
            last_batch_at: view.and_then(|v| v.1),
            error: None,
        },
        Ok(Err(e)) => CloudView {
            reachable: false,
            clock_skew_ms: None,
            last_batch_at: None,
            error: Some(format!("{e:#}")),
        },
        Err(_) => CloudView {
            reachable: false,
            clock_skew_ms: None,
            last_batch_at: None,
            error: Some("timed out".into()),
        },
    }
}

fn human_duration(secs: f64) -> String {
    let s = secs.round() as i64;
    match s {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        s => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

pub fn print(status: &Status) {
    let now = Utc::now().timestamp_millis();
    println!("device {}", status.device);
    println!(
        "{:<24} {:>12} {:>10} {:>12}  last ack",
        "table", "pending", "batches", "rows acked"
    );
    for s in &status.tables {
        let last = match s.last_ack_ms {
            Some(ms) => format!("{} ago", human_duration(((now - ms).max(0) / 1000) as f64)),
            None => "never".into(),
        };
        println!(
            "{:<24} {:>12} {:>10} {:>12}  {last}",
            s.table, s.pending_rows, s.acked_batches, s.acked_rows
        );
    }
    println!();
    match &status.last_sync {
        Some(e) => println!(
            "last sync:     {} {} ({} rows, {} batches, {} bytes)",
            e.started_at, e.status, e.rows, e.batches, e.bytes
        ),
        None => println!("last sync:     never"),
    }
    println!(
        "last success:  {}",
        status.last_success_at.as_deref().unwrap_or("never")
    );
    if let Some(e) = &status.last_error {
        println!(
            "last error:    {} {} {}: {}",
            e.started_at,
            e.kind,
            e.status,
            e.error.as_deref().unwrap_or("")
        );
    }
    match (status.catch_up_secs, status.recent_rows_per_sec) {
        (Some(c), Some(r)) => println!(
            "catch-up:      {} for {} pending rows at {:.0} rows/s",
            human_duration(c),
            status.pending_rows,
            r
        ),
        _ => println!(
            "catch-up:      unknown (no sync has sent rows yet); {} pending rows",
            status.pending_rows
        ),
    }
    let c = &status.cloud;
    if c.reachable {
        println!(
            "cloud:         reachable; clock skew {} ms; last batch {}",
            c.clock_skew_ms.map_or("unknown".into(), |s| s.to_string()),
            c.last_batch_at.as_deref().unwrap_or("never")
        );
    } else {
        println!(
            "cloud:         not reachable: {}",
            c.error.as_deref().unwrap_or("")
        );
    }
    if !status.extension_status.is_empty() {
        println!();
        println!("sluice_status:");
        for row in &status.extension_status {
            println!("  {row}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catch_up_uses_the_lower_of_throughput_and_cap() {
        assert_eq!(catch_up_secs(10_000, 1000.0, 10.0, 0), 10.0);
        // The cap allows 100 rows/s of 10 bytes.
        assert_eq!(catch_up_secs(10_000, 1000.0, 10.0, 1000), 100.0);
    }

    #[test]
    fn throughput_comes_from_recent_syncs_only() {
        let log = vec![
            LogEntry {
                kind: "cleanup".into(),
                rows: 999,
                started_at: "2026-11-22T03:00:00.000Z".into(),
                ended_at: Some("2026-11-22T03:00:01.000Z".into()),
                ..LogEntry::default()
            },
            LogEntry {
                kind: "sync".into(),
                rows: 2000,
                bytes: 20_000,
                started_at: "2026-11-22T03:00:00.000Z".into(),
                ended_at: Some("2026-11-22T03:00:02.000Z".into()),
                ..LogEntry::default()
            },
        ];
        let (rps, bpr) = throughput(&log).unwrap();
        assert_eq!(rps, 1000.0);
        assert_eq!(bpr, 10.0);
    }
}
