//! `sluice status`: what an operator asks first. Per tracked table: pending
//! rows and the last acknowledgement; from the sync log: the last sync, the
//! last success and the last error; an estimate of the time to catch up (the
//! pending rows at the throughput of recent syncs, or the bandwidth cap if it
//! is lower); from the cloud, when reachable: this device's clock skew. The
//! extension's own `sluice_status` view, where the loaded `sluice0.so` has
//! one, is included as it is (oldest pending age, rows dropped by the budget).
//!
//! Rows held back: per table, the rows moved aside (`sluice_quarantine`,
//! listed by `sluice quarantine`) and the rows of re-send requests still to
//! send (`sluice_resend`), from `sluice_tracked()`.
//!
//! Subscriptions (cloud to edge): per subscribed table, the checkpoint
//! applied and when a batch was last applied (`sluice_subscriptions`), and,
//! when the cloud is reachable, the changes pending for this device and the
//! oldest of them (`sluice.subscription_lag`).
//!
//! Epochs: the edge database's history of streams (`sluice_identity()`),
//! and the cloud's streams of this device id (`sluice.device_streams`).
//! When another database sends as this device (a stream that is live in the
//! cloud and is not this database's), it says so.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::cloud::{Cloud, CloudStream, StreamsError, SubscriptionLag};
use crate::config::Config;
use crate::edge::{stream_hex, Edge, EdgeConn, Identity, LogEntry, RunStatus, TableStatus};

/// How long after this database's next epoch reached the cloud the cloud
/// may still receive a batch of the stream before it from this same
/// database: a batch another sync lane had in flight when the epoch began.
pub const EPOCH_OVERLAP_MS: i64 = 60 * 1000;

/// The same when the cloud has no batch of the next epoch yet and the
/// boundary is the edge's clock: the clocks may differ by this much more
/// when the skew is unknown.
pub const UNKNOWN_SKEW_MS: i64 = 5 * 60 * 1000;

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
    /// `sluice_identity()`: the current stream and the epochs (absent with
    /// an extension older than 0.2).
    pub identity: Option<Identity>,
    /// The subscribed tables (cloud to edge).
    pub subscriptions: Vec<SubscriptionStatus>,
    pub cloud: CloudView,
}

/// One subscribed table, as `sluice status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct SubscriptionStatus {
    pub table: String,
    /// The cloud position the edge has applied (0: no snapshot yet).
    pub checkpoint: i64,
    pub stream_id: i64,
    /// When a batch was last applied (ISO-8601 UTC).
    pub applied_at: Option<String>,
    pub batches: i64,
    pub upserted: i64,
    pub deleted: i64,
    pub snapshots: i64,
    /// From the cloud (`sluice.subscription_lag`), when reachable: the
    /// changes not yet applied, and the oldest one's time.
    pub pending: Option<i64>,
    pub oldest_pending: Option<String>,
    pub oldest_pending_age_secs: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct CloudView {
    pub reachable: bool,
    pub clock_skew_ms: Option<i64>,
    pub last_batch_at: Option<String>,
    /// Why the cloud was not reached, or (reachable) why the device's row
    /// of `sluice.devices` was not read.
    pub error: Option<String>,
    /// The cloud's streams of this device id (`sluice.device_streams`).
    pub streams: Option<Vec<CloudStream>>,
    /// Why the streams are not listed (no permission, an older cloud).
    pub streams_error: Option<String>,
    /// Live streams of other databases sending as this device id.
    pub other_live_streams: Vec<String>,
    /// `sluice.subscription_lag` of this device (none asked without subscriptions).
    #[serde(skip)]
    pub subscription_lag: Option<Vec<SubscriptionLag>>,
    /// Why it was not read (no permission, an older cloud).
    pub subscription_lag_error: Option<String>,
}

impl CloudView {
    fn unreachable(error: String) -> CloudView {
        CloudView {
            reachable: false,
            clock_skew_ms: None,
            last_batch_at: None,
            error: Some(error),
            streams: None,
            streams_error: None,
            other_live_streams: Vec::new(),
            subscription_lag: None,
            subscription_lag_error: None,
        }
    }
}

/// The streams live in the cloud that are not this database's: neither its
/// current stream nor one of its earlier epochs. An earlier epoch is this
/// database's own when the cloud last saw it before the next epoch began:
/// before the cloud's first batch of the next epoch (the cloud's own
/// clock), or, while the next epoch has sent nothing, before its start at
/// the edge (corrected by the clock skew), give or take
/// [`EPOCH_OVERLAP_MS`]. Seen later, a copy of the database goes on
/// sending under it (the original of a clone).
pub fn other_live_streams(
    identity: &Identity,
    streams: &[CloudStream],
    clock_skew_ms: Option<i64>,
) -> Vec<i64> {
    let parse_ms = |t: &Option<String>| {
        t.as_deref()
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.timestamp_millis())
    };
    // When the epoch after stream `i` of the history began, on the cloud's clock.
    let left_at = |i: usize| -> Option<i64> {
        let next = identity.epochs.get(i + 1)?;
        let seen = streams
            .iter()
            .find(|s| s.stream_id == next.stream_id)
            .and_then(|s| s.first_seen_ms);
        match seen {
            Some(first) => Some(first.saturating_add(EPOCH_OVERLAP_MS)),
            None => {
                // clock_skew_ms is the server's clock minus the edge's.
                let started = parse_ms(&next.started_at)?;
                let slack = match clock_skew_ms {
                    Some(skew) => skew.saturating_add(EPOCH_OVERLAP_MS),
                    None => UNKNOWN_SKEW_MS.saturating_add(EPOCH_OVERLAP_MS),
                };
                Some(started.saturating_add(slack))
            }
        }
    };
    streams
        .iter()
        .filter(|s| s.live && s.stream_id != identity.stream_id)
        .filter(|s| {
            let Some(i) = identity
                .epochs
                .iter()
                .position(|e| e.stream_id == s.stream_id)
            else {
                return true;
            };
            match (left_at(i), s.last_seen_ms) {
                (Some(left), Some(seen)) => seen > left,
                _ => false,
            }
        })
        .map(|s| s.stream_id)
        .collect()
}

/// The warning of `sluice status` when other databases send as this device.
pub fn shared_device_warning(
    device: &str,
    current: Option<i64>,
    others: &[String],
) -> Option<String> {
    if others.is_empty() {
        return None;
    }
    let mut streams: Vec<String> = current.map(stream_hex).into_iter().collect();
    streams.extend(others.iter().cloned());
    Some(format!(
        "{} databases are sending as device {device} (streams {}): give each box its own device id (docs/agent.md, 'Replacing, restoring and cloning boxes')",
        others.len() + 1,
        streams.join(", ")
    ))
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
    let (tables, log, extension_status, identity, subs) = edge
        .run(|e| {
            let identity = if e.has_function("sluice_identity") {
                Some(e.identity()?)
            } else {
                None
            };
            Ok((
                e.status()?,
                e.recent_log(200)?,
                extension_status(e).unwrap_or_default(),
                identity,
                e.subscriptions()?,
            ))
        })
        .await?;
    let mut tables = tables;
    quarantined_from_view(&mut tables, &extension_status);
    let pending_rows: i64 = tables.iter().map(|t| t.pending_rows).sum();
    let tp = throughput(&log);
    let syncs = |e: &&LogEntry| e.is_sync();
    let mut cloud = if with_cloud {
        cloud_view(cfg, identity.as_ref(), !subs.is_empty()).await
    } else {
        CloudView::unreachable("not asked (--offline)".into())
    };
    let subscriptions = subscription_status(subs, cloud.subscription_lag.take().as_deref());
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
        identity,
        subscriptions,
        tables,
        cloud,
    })
}

/// The edge's subscriptions with the cloud's lag where it has one.
pub fn subscription_status(
    subs: Vec<crate::edge::Subscription>,
    lag: Option<&[SubscriptionLag]>,
) -> Vec<SubscriptionStatus> {
    subs.into_iter()
        .map(|s| {
            let l = lag.and_then(|l| l.iter().find(|l| l.table.eq_ignore_ascii_case(&s.table)));
            SubscriptionStatus {
                pending: match (lag, l) {
                    (Some(_), Some(l)) => Some(l.pending),
                    // The cloud has no record of it yet: nothing pulled.
                    _ => None,
                },
                oldest_pending: l.and_then(|l| l.oldest_pending.clone()),
                oldest_pending_age_secs: l.and_then(|l| l.oldest_pending_age_secs),
                table: s.table,
                checkpoint: s.checkpoint,
                stream_id: s.stream_id,
                applied_at: s.applied_at,
                batches: s.batches,
                upserted: s.upserted,
                deleted: s.deleted,
                snapshots: s.snapshots,
            }
        })
        .collect()
}

/// The lines about the subscriptions (none without one).
pub fn subscription_lines(subs: &[SubscriptionStatus], cloud: &CloudView) -> Vec<String> {
    if subs.is_empty() {
        return Vec::new();
    }
    let mut out = vec![format!(
        "{:<24} {:>20}  {:<24}  {:>8}  oldest pending",
        "subscription", "checkpoint", "last applied", "pending"
    )];
    for s in subs {
        let (pending, oldest) = match (s.pending, cloud.reachable) {
            (Some(n), _) => (
                n.to_string(),
                match (&s.oldest_pending, s.oldest_pending_age_secs) {
                    (Some(t), Some(age)) if n > 0 => {
                        format!("{t} ({} ago)", human_duration(age.max(0.0)))
                    }
                    (Some(t), None) if n > 0 => t.clone(),
                    _ => "-".into(),
                },
            ),
            (None, true) if cloud.subscription_lag_error.is_none() => {
                ("?".into(), "not pulled yet".into())
            }
            (None, _) => ("?".into(), "cloud not asked".into()),
        };
        out.push(format!(
            "{:<24} {:>20}  {:<24}  {:>8}  {oldest}",
            s.table,
            s.checkpoint,
            s.applied_at.as_deref().unwrap_or("never"),
            pending
        ));
    }
    if let Some(e) = &cloud.subscription_lag_error {
        out.push(format!("subscription lag not read: {e}"));
    }
    out
}

/// Where `sluice_tracked()` does not say how many rows are quarantined (an
/// extension between the bookkeeping's version 5 and its accessors), the
/// view `sluice_status` may.
fn quarantined_from_view(tables: &mut [TableStatus], view: &[serde_json::Value]) {
    for t in tables.iter_mut().filter(|t| t.quarantined_rows.is_none()) {
        t.quarantined_rows = view
            .iter()
            .find(|row| row.get("table").and_then(|v| v.as_str()) == Some(t.table.as_str()))
            .and_then(|row| row.get("quarantined_rows"))
            .and_then(serde_json::Value::as_i64);
    }
}

/// The lines about rows held back: per table, the rows moved aside and the
/// rows being sent again.
pub fn held_lines(tables: &[TableStatus]) -> Vec<String> {
    let rows = |n: i64| format!("{n} row{}", if n == 1 { "" } else { "s" });
    let mut out = Vec::new();
    for t in tables {
        if let Some(n) = t.quarantined_rows.filter(|&n| n > 0) {
            out.push(format!(
                "quarantined:   {} {} (moved aside, not sent; list: sluice quarantine --table {}; after fixing: sluice quarantine release {})",
                t.table,
                rows(n),
                t.table,
                t.table
            ));
        }
    }
    for t in tables {
        if let Some(n) = t.resend_rows.filter(|&n| n > 0) {
            out.push(format!(
                "re-sending:    {} {} (sluice resend; the next sync sends them)",
                t.table,
                rows(n)
            ));
        }
    }
    out
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

async fn cloud_view(cfg: &Config, identity: Option<&Identity>, subscribed: bool) -> CloudView {
    let attempt = async {
        let cloud = Cloud::connect(&cfg.cloud).await?;
        // Each view on its own: a role that may not read one (issue 15)
        // still gets the other.
        let view = cloud.device_view(&cfg.device.id).await;
        let streams = cloud.device_streams(&cfg.device.id).await;
        let lag = if subscribed {
            Some(cloud.subscription_lag(&cfg.device.id).await)
        } else {
            None
        };
        anyhow::Ok((view, streams, lag))
    };
    match tokio::time::timeout(
        Duration::from_secs(cfg.cloud.connect_timeout_secs.min(5)),
        attempt,
    )
    .await
    {
        Ok(Ok((view, streams, lag))) => {
            let (view, error) = match view {
                Ok(v) => (v, None),
                Err(e) => (None, Some(format!("{e:#}"))),
            };
            let clock_skew_ms = view.as_ref().and_then(|v| v.0);
            let (streams, streams_error) = match streams {
                Ok(s) => (Some(s), None),
                Err(StreamsError::NotPermitted(e)) => (
                    None,
                    Some(format!(
                        "this role may not list the device's streams ({e}); run `sluice status` with a role that may, or see issue 15"
                    )),
                ),
                Err(StreamsError::Missing(e)) => (
                    None,
                    Some(format!(
                        "the cloud's sluice extension has no device_streams (older than 0.2; {e})"
                    )),
                ),
                Err(StreamsError::Other(e)) => (None, Some(format!("{e:#}"))),
            };
            let other_live_streams = match (identity, &streams) {
                (Some(i), Some(s)) => other_live_streams(i, s, clock_skew_ms)
                    .into_iter()
                    .map(stream_hex)
                    .collect(),
                _ => Vec::new(),
            };
            CloudView {
                reachable: true,
                clock_skew_ms,
                last_batch_at: view.and_then(|v| v.1),
                error,
                streams,
                streams_error,
                other_live_streams,
                subscription_lag_error: match &lag {
                    Some(Err(e)) => Some(format!("{e:#}")),
                    _ => None,
                },
                subscription_lag: lag.and_then(Result::ok),
            }
        }
        Ok(Err(e)) => CloudView::unreachable(format!("{e:#}")),
        Err(_) => CloudView::unreachable("timed out".into()),
    }
}

/// A time further ahead than this is "in the future": the edge clock was
/// ahead when it was recorded, or is behind now.
const FUTURE_TOLERANCE_MS: i64 = 60_000;

/// When a table was last acknowledged, as `status` prints it: `5m ago`, or
/// `in the future (+2y ...)` when it lies ahead of the clock.
fn ack_age(now_ms: i64, ms: i64) -> String {
    if ms > now_ms.saturating_add(FUTURE_TOLERANCE_MS) {
        format!(
            "in the future (+{})",
            human_duration((ms.saturating_sub(now_ms) / 1000) as f64)
        )
    } else {
        format!(
            "{} ago",
            human_duration((now_ms.saturating_sub(ms).max(0) / 1000) as f64)
        )
    }
}

/// Warnings about times from the future (issue 12, a clock that jumped):
/// acknowledgements recorded ahead of the clock, and tables whose oldest
/// pending row is stamped ahead of it (`sluice_status`'s
/// `oldest_pending_age_secs` below zero).
fn future_time_warnings(
    now_ms: i64,
    acks: &[(&str, Option<i64>)],
    extension_status: &[serde_json::Value],
) -> Vec<String> {
    let mut out = Vec::new();
    let ahead: Vec<&str> = acks
        .iter()
        .filter(|(_, ms)| ms.is_some_and(|ms| ms > now_ms.saturating_add(FUTURE_TOLERANCE_MS)))
        .map(|(t, _)| *t)
        .collect();
    if !ahead.is_empty() {
        out.push(format!(
            "the last acknowledgement of {} lies in the future: the edge clock was ahead then, or is behind now (cleanup counts such times from now)",
            ahead.join(", ")
        ));
    }
    for row in extension_status {
        let age = row
            .get("oldest_pending_age_secs")
            .and_then(serde_json::Value::as_f64);
        if let (Some(age), Some(table)) = (age, row.get("table").and_then(|t| t.as_str())) {
            if age < -(FUTURE_TOLERANCE_MS as f64 / 1000.0) {
                out.push(format!(
                    "the oldest pending row of {table} is stamped {} in the future: check the clock of the box and of the pipeline that writes it",
                    human_duration(-age)
                ));
            }
        }
    }
    out
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

/// The lines about the epochs: the current stream, how many epochs, the
/// last one's start and reason.
pub fn epoch_lines(identity: &Identity) -> Vec<String> {
    let mut out = Vec::new();
    let n = identity.epochs.len();
    let since = identity
        .epochs
        .last()
        .and_then(|e| e.started_at.as_deref())
        .unwrap_or("an unknown time");
    out.push(format!(
        "stream:        {} (epoch {n} of {n}, since {since})",
        stream_hex(identity.stream_id)
    ));
    if let Some(last) = identity.epochs.last() {
        out.push(format!("epoch reason:  {}", last.reason));
    }
    out.push(format!(
        "machine:       {}; zone {}",
        identity.machine.as_deref().unwrap_or("not recorded"),
        identity.zone.as_deref().unwrap_or("UTC")
    ));
    out
}

/// The lines about the cloud's streams of this device.
pub fn cloud_stream_lines(status: &Status) -> Vec<String> {
    let c = &status.cloud;
    let mut out = Vec::new();
    if let Some(e) = &c.streams_error {
        out.push(format!("cloud streams: not listed: {e}"));
    }
    if let Some(streams) = &c.streams {
        let current = status.identity.as_ref().map(|i| i.stream_id);
        let live = streams.iter().filter(|s| s.live).count();
        out.push(format!(
            "cloud streams: {} of device {} ({live} live)",
            streams.len(),
            status.device
        ));
        for s in streams {
            let mine = if Some(s.stream_id) == current {
                " (this database)"
            } else if status
                .identity
                .as_ref()
                .is_some_and(|i| i.epochs.iter().any(|e| e.stream_id == s.stream_id))
            {
                " (an earlier epoch of this database)"
            } else {
                ""
            };
            out.push(format!(
                "  {} {}: {} batches, {} rows, last seen {}{mine}",
                stream_hex(s.stream_id),
                if s.live { "live" } else { "idle" },
                s.batches,
                s.rows,
                s.last_seen.as_deref().unwrap_or("never")
            ));
        }
    }
    if let Some(w) = shared_device_warning(
        &status.device,
        status.identity.as_ref().map(|i| i.stream_id),
        &c.other_live_streams,
    ) {
        out.push(format!("WARNING: {w}"));
    }
    out
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
            Some(ms) => ack_age(now, ms),
            None => "never".into(),
        };
        println!(
            "{:<24} {:>12} {:>10} {:>12}  {last}",
            s.table, s.pending_rows, s.acked_batches, s.acked_rows
        );
    }
    for line in future_time_warnings(
        now,
        &status
            .tables
            .iter()
            .map(|t| (t.table.as_str(), t.last_ack_ms))
            .collect::<Vec<_>>(),
        &status.extension_status,
    ) {
        println!("WARNING: {line}");
    }
    for line in held_lines(&status.tables) {
        println!("{line}");
    }
    let subs = subscription_lines(&status.subscriptions, &status.cloud);
    if !subs.is_empty() {
        println!();
        for line in subs {
            println!("{line}");
        }
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
    if let (true, Some(e)) = (c.reachable, &c.error) {
        println!(
            "cloud:         reachable; the device's row in sluice.devices is not readable: {e}"
        );
    } else if c.reachable {
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
    if let Some(identity) = &status.identity {
        for line in epoch_lines(identity) {
            println!("{line}");
        }
    }
    for line in cloud_stream_lines(status) {
        println!("{line}");
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

    use crate::edge::Epoch;

    #[test]
    fn times_from_the_future_are_flagged_not_shown_as_0s_ago() {
        let now = 1_800_000_000_000;
        assert_eq!(ack_age(now, now - 300_000), "5m ago");
        assert_eq!(ack_age(now, now + 30_000), "0s ago");
        assert!(ack_age(now, now + 2 * 365 * 86_400_000).starts_with("in the future (+"));
        let status = [
            serde_json::json!({"table": "metrics", "oldest_pending_age_secs": -86400.0}),
            serde_json::json!({"table": "health", "oldest_pending_age_secs": 30.0}),
        ];
        let w = future_time_warnings(
            now,
            &[
                ("metrics", Some(now + 3_600_000)),
                ("cameras", Some(now - 5)),
            ],
            &status,
        );
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(
            w[0].starts_with("the last acknowledgement of metrics lies in the future"),
            "{w:?}"
        );
        assert!(
            w[1].starts_with("the oldest pending row of metrics is stamped"),
            "{w:?}"
        );
        assert!(future_time_warnings(now, &[("a", Some(now))], &status[1..]).is_empty());
    }

    fn epoch(stream_id: i64, parent: Option<i64>, started_at: &str, reason: &str) -> Epoch {
        Epoch {
            stream_id,
            parent_stream: parent,
            started_at: Some(started_at.into()),
            reason: reason.into(),
            machine: None,
        }
    }

    fn ms(t: &str) -> i64 {
        DateTime::parse_from_rfc3339(t).unwrap().timestamp_millis()
    }

    fn stream(
        stream_id: i64,
        first_seen: Option<&str>,
        last_seen: &str,
        live: bool,
    ) -> CloudStream {
        CloudStream {
            stream_id,
            parent_stream: None,
            machine: None,
            first_seen: first_seen.map(str::to_owned),
            last_seen: Some(last_seen.into()),
            first_seen_ms: first_seen.map(ms),
            last_seen_ms: Some(ms(last_seen)),
            batches: 1,
            rows: 100,
            live,
        }
    }

    /// A database restored (or cloned) at 12:00: stream 1 before, 2 after.
    fn restored() -> Identity {
        Identity {
            device_id: Some("box-1".into()),
            stream_id: 2,
            epochs: vec![
                epoch(1, None, "2026-12-01T09:00:00.000Z", "created"),
                epoch(2, Some(1), "2026-12-01T12:00:00.000Z", "restored"),
            ],
            ..Identity::default()
        }
    }

    #[test]
    fn a_restored_box_is_one_database_though_its_old_stream_is_still_live() {
        // The old stream was last seen before the epoch began, or a few
        // seconds after its first batch (another lane's batch in flight).
        for seen in ["2026-12-01T11:59:00Z", "2026-12-01T12:00:40Z"] {
            let streams = [
                stream(1, None, seen, true),
                stream(
                    2,
                    Some("2026-12-01T12:00:05Z"),
                    "2026-12-01T12:02:00Z",
                    true,
                ),
            ];
            assert!(other_live_streams(&restored(), &streams, Some(0)).is_empty());
        }
        // The new epoch has not reached the cloud yet: the edge's clock, with
        // the skew, says when it began.
        let streams = [stream(1, None, "2026-12-01T12:00:30Z", true)];
        assert!(other_live_streams(&restored(), &streams, Some(0)).is_empty());
        // An edge clock ten minutes behind the cloud's (skew: cloud minus
        // edge): the old stream's last batch, at 12:08 by the cloud, was
        // sent at 11:58 by the edge, before the epoch began.
        let streams = [stream(1, None, "2026-12-01T12:08:00Z", true)];
        assert!(other_live_streams(&restored(), &streams, Some(600_000)).is_empty());
        assert_eq!(other_live_streams(&restored(), &streams, Some(0)), [1]);
    }

    #[test]
    fn a_clone_or_a_second_box_under_the_same_id_is_another_database() {
        // The original goes on sending under the stream this clone left.
        let streams = [
            stream(1, None, "2026-12-01T12:30:00Z", true),
            stream(
                2,
                Some("2026-12-01T12:00:05Z"),
                "2026-12-01T12:31:00Z",
                true,
            ),
            stream(7, None, "2026-12-01T12:29:00Z", true),
            // Not live: a box replaced long ago.
            stream(9, None, "2026-11-01T12:00:00Z", false),
        ];
        assert_eq!(other_live_streams(&restored(), &streams, None), [1, 7]);
        let others: Vec<String> = [1, 7].into_iter().map(stream_hex).collect();
        assert_eq!(
            shared_device_warning("box-1", Some(2), &others).unwrap(),
            "3 databases are sending as device box-1 (streams 0000000000000002, \
             0000000000000001, 0000000000000007): give each box its own device id \
             (docs/agent.md, 'Replacing, restoring and cloning boxes')"
        );
        assert_eq!(shared_device_warning("box-1", Some(2), &[]), None);
        // The clone's new epoch has sent nothing yet; the original sent
        // after the clone's epoch began (edge clock, no skew known).
        let streams = [stream(1, None, "2026-12-01T12:07:00Z", true)];
        assert_eq!(other_live_streams(&restored(), &streams, None), [1]);
    }

    #[test]
    fn the_epoch_lines_name_the_stream_the_count_and_the_last_reason() {
        assert_eq!(
            epoch_lines(&restored()),
            [
                "stream:        0000000000000002 (epoch 2 of 2, since 2026-12-01T12:00:00.000Z)",
                "epoch reason:  restored",
                "machine:       not recorded; zone UTC",
            ]
        );
        let json = r#"{"device_id": "box-1", "stream_id": -1, "machine": "m1", "zone": "Europe/Berlin",
            "epochs": [{"stream_id": -1, "parent_stream": null, "started_at": "2026-12-01T09:00:00.000Z",
                        "reason": "created", "machine": "m1"}]}"#;
        let identity: Identity = serde_json::from_str(json).unwrap();
        assert_eq!(
            epoch_lines(&identity),
            [
                "stream:        ffffffffffffffff (epoch 1 of 1, since 2026-12-01T09:00:00.000Z)",
                "epoch reason:  created",
                "machine:       m1; zone Europe/Berlin",
            ]
        );
    }

    fn table(name: &str, quarantined: Option<i64>, resend: Option<i64>) -> TableStatus {
        TableStatus {
            table: name.into(),
            pending_rows: 0,
            acked_batches: 0,
            acked_rows: 0,
            last_ack_ms: None,
            quarantined_rows: quarantined,
            resend_rows: resend,
        }
    }

    #[test]
    fn rows_held_back_are_shown_per_table_with_the_command_to_list_them() {
        let mut tables = [
            table("division_states", Some(1), Some(0)),
            table("metrics", None, Some(2400)),
            table("cameras", None, None),
        ];
        // An extension whose sluice_tracked() does not count them yet: the view does.
        quarantined_from_view(
            &mut tables,
            &[
                serde_json::json!({"table": "division_states", "quarantined_rows": 7}),
                serde_json::json!({"table": "cameras", "quarantined_rows": 2}),
            ],
        );
        assert_eq!(tables[0].quarantined_rows, Some(1), "sluice_tracked() wins");
        assert_eq!(tables[1].quarantined_rows, None);
        assert_eq!(
            held_lines(&tables),
            [
                "quarantined:   division_states 1 row (moved aside, not sent; list: sluice quarantine --table division_states; after fixing: sluice quarantine release division_states)",
                "quarantined:   cameras 2 rows (moved aside, not sent; list: sluice quarantine --table cameras; after fixing: sluice quarantine release cameras)",
                "re-sending:    metrics 2400 rows (sluice resend; the next sync sends them)",
            ]
        );
        assert!(held_lines(&[table("t", Some(0), None)]).is_empty());
    }

    fn sub(table: &str, checkpoint: i64, applied_at: Option<&str>) -> crate::edge::Subscription {
        crate::edge::Subscription {
            table: table.into(),
            checkpoint,
            stream_id: 9,
            applied_at: applied_at.map(str::to_owned),
            ..crate::edge::Subscription::default()
        }
    }

    fn lag(table: &str, pending: i64, oldest: Option<&str>, age: Option<f64>) -> SubscriptionLag {
        SubscriptionLag {
            table: table.into(),
            checkpoint: Some(1),
            pending,
            oldest_pending: oldest.map(str::to_owned),
            oldest_pending_age_secs: age,
            last_pulled: None,
        }
    }

    #[test]
    fn each_subscription_has_a_line_with_the_clouds_pending_changes() {
        let subs = || {
            vec![
                sub("camera_config", 7531, Some("2026-12-01T21:40:03.250Z")),
                sub("zones", 0, None),
                sub("thresholds", 12, Some("2026-12-01T21:00:00.000Z")),
            ]
        };
        let lags = [
            lag("camera_config", 0, None, None),
            lag(
                "Thresholds",
                3,
                Some("2026-12-01T21:39:00.000Z"),
                Some(64.0),
            ),
        ];
        let reachable = CloudView {
            reachable: true,
            ..CloudView::unreachable(String::new())
        };
        let status = subscription_status(subs(), Some(&lags));
        assert_eq!(status[0].pending, Some(0));
        assert_eq!(status[1].pending, None, "the cloud has no record of it yet");
        assert_eq!(status[2].pending, Some(3));
        let reachable = CloudView {
            error: None,
            ..reachable
        };
        assert_eq!(
            subscription_lines(&status, &reachable),
            [
                "subscription                       checkpoint  last applied               pending  oldest pending",
                "camera_config                            7531  2026-12-01T21:40:03.250Z         0  -",
                "zones                                       0  never                            ?  not pulled yet",
                "thresholds                                 12  2026-12-01T21:00:00.000Z         3  2026-12-01T21:39:00.000Z (64s ago)",
            ]
        );
        // Offline: no pending figures; the cloud's refusal is said.
        let offline = CloudView::unreachable("not asked (--offline)".into());
        let lines = subscription_lines(&subscription_status(subs(), None), &offline);
        assert!(lines[1].ends_with("?  cloud not asked"), "{lines:?}");
        let refused = CloudView {
            reachable: true,
            subscription_lag_error: Some(
                "sluice.subscription_lag: permission denied (42501)".into(),
            ),
            ..CloudView::unreachable(String::new())
        };
        let lines = subscription_lines(&subscription_status(subs(), None), &refused);
        assert!(lines[1].ends_with("?  cloud not asked"), "{lines:?}");
        assert_eq!(
            lines.last().unwrap(),
            "subscription lag not read: sluice.subscription_lag: permission denied (42501)"
        );
        assert!(subscription_lines(&[], &reachable).is_empty());
    }

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
