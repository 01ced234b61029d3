//! The optional Prometheus endpoint of `sluice run` (`[metrics] listen`):
//! `GET /metrics` in the text exposition format. Counters end in `_total`;
//! gauges: pending rows per table, the last success of each job, and the lag
//! since the last successful sync.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::edge::LogEntry;

#[derive(Default)]
struct State {
    /// (job, status) -> runs.
    runs: BTreeMap<(String, String), u64>,
    rows: BTreeMap<String, u64>,
    batches: BTreeMap<String, u64>,
    bytes: BTreeMap<String, u64>,
    /// job -> unix seconds of its last success.
    last_success: BTreeMap<String, f64>,
    pending: BTreeMap<String, i64>,
}

/// Shared between the jobs (which record) and the endpoint (which renders).
#[derive(Clone, Default)]
pub struct Metrics {
    state: Arc<Mutex<State>>,
}

fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl Metrics {
    /// Records one job run.
    pub fn record(&self, job: &str, e: &LogEntry) {
        let Ok(mut s) = self.state.lock() else { return };
        *s.runs.entry((job.into(), e.status.clone())).or_default() += 1;
        *s.rows.entry(job.into()).or_default() += e.rows.max(0) as u64;
        *s.batches.entry(job.into()).or_default() += e.batches.max(0) as u64;
        *s.bytes.entry(job.into()).or_default() += e.bytes.max(0) as u64;
        if e.status == "success" {
            s.last_success.insert(job.into(), now_secs());
        }
    }

    /// Replaces the pending-rows gauges.
    pub fn set_pending(&self, pending: impl IntoIterator<Item = (String, i64)>) {
        if let Ok(mut s) = self.state.lock() {
            s.pending = pending.into_iter().collect();
        }
    }

    pub fn render(&self) -> String {
        let Ok(s) = self.state.lock() else {
            return String::new();
        };
        let mut out = String::new();
        let esc = |v: &str| {
            v.replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n")
        };
        let _ = writeln!(out, "# HELP sluice_job_runs_total Job runs by job and status.\n# TYPE sluice_job_runs_total counter");
        for ((job, status), n) in &s.runs {
            let _ = writeln!(
                out,
                "sluice_job_runs_total{{job=\"{}\",status=\"{}\"}} {n}",
                esc(job),
                esc(status)
            );
        }
        let _ = writeln!(
            out,
            "# HELP sluice_job_errors_total Job runs that did not fully succeed.\n# TYPE sluice_job_errors_total counter"
        );
        let mut errors: BTreeMap<&str, u64> = BTreeMap::new();
        for ((job, status), n) in &s.runs {
            let e = errors.entry(job.as_str()).or_default();
            if status == "failed" || status == "partial" {
                *e += n;
            }
        }
        for (job, n) in errors {
            let _ = writeln!(out, "sluice_job_errors_total{{job=\"{}\"}} {n}", esc(job));
        }
        for (name, help, map) in [
            (
                "sluice_rows_total",
                "Rows handled (sent, rolled up, embedded, deleted) by job.",
                &s.rows,
            ),
            (
                "sluice_batches_total",
                "Batches sent (sync) or model calls (embed) by job.",
                &s.batches,
            ),
            (
                "sluice_bytes_total",
                "Bytes sent to the cloud (sync) or written (embed) by job.",
                &s.bytes,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (job, n) in map {
                let _ = writeln!(out, "{name}{{job=\"{}\"}} {n}", esc(job));
            }
        }
        let _ = writeln!(out, "# HELP sluice_pending_rows Rows not yet acknowledged by the cloud.\n# TYPE sluice_pending_rows gauge");
        for (table, n) in &s.pending {
            let _ = writeln!(out, "sluice_pending_rows{{table=\"{}\"}} {n}", esc(table));
        }
        let _ = writeln!(
            out,
            "# HELP sluice_last_success_timestamp_seconds When each job last succeeded.\n# TYPE sluice_last_success_timestamp_seconds gauge"
        );
        for (job, t) in &s.last_success {
            let _ = writeln!(
                out,
                "sluice_last_success_timestamp_seconds{{job=\"{}\"}} {t:.3}",
                esc(job)
            );
        }
        let last_sync = ["sync", "full_sync"]
            .iter()
            .filter_map(|j| s.last_success.get(*j))
            .fold(None, |a: Option<f64>, &t| Some(a.map_or(t, |a| a.max(t))));
        if let Some(t) = last_sync {
            let _ = writeln!(
                out,
                "# HELP sluice_sync_lag_seconds Seconds since the last successful sync.\n# TYPE sluice_sync_lag_seconds gauge\nsluice_sync_lag_seconds {:.3}",
                (now_secs() - t).max(0.0)
            );
        }
        out
    }

    /// Serves `GET /metrics` on `addr` until the process ends.
    pub async fn serve(self, addr: SocketAddr) -> anyhow::Result<()> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("metrics.listen: cannot listen on {addr}: {e}"))?;
        tracing::info!(%addr, "metrics endpoint listening");
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    continue;
                };
                let metrics = self.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 2048];
                    let n = match tokio::time::timeout(
                        std::time::Duration::from_secs(5),
                        sock.read(&mut buf),
                    )
                    .await
                    {
                        Ok(Ok(n)) => n,
                        _ => return,
                    };
                    let request = String::from_utf8_lossy(&buf[..n]);
                    let response = if request.starts_with("GET /metrics") {
                        let body = metrics.render();
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        )
                    } else {
                        "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                            .to_owned()
                    };
                    let _ = sock.write_all(response.as_bytes()).await;
                    let _ = sock.shutdown().await;
                });
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_gauges() {
        let m = Metrics::default();
        m.record(
            "sync",
            &LogEntry {
                status: "success".into(),
                rows: 1000,
                batches: 1,
                bytes: 10_000,
                ..LogEntry::default()
            },
        );
        m.record(
            "sync",
            &LogEntry {
                status: "partial".into(),
                rows: 5,
                ..LogEntry::default()
            },
        );
        m.set_pending([("metrics".into(), 42)]);
        let text = m.render();
        assert!(
            text.contains("sluice_job_runs_total{job=\"sync\",status=\"success\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("sluice_job_errors_total{job=\"sync\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("sluice_rows_total{job=\"sync\"} 1005"),
            "{text}"
        );
        assert!(
            text.contains("sluice_pending_rows{table=\"metrics\"} 42"),
            "{text}"
        );
        assert!(text.contains("sluice_sync_lag_seconds "), "{text}");
    }
}
