//! The optional Prometheus endpoint of `sluice run` (`[metrics] listen`):
//! `GET /metrics` in the text exposition format (OpenMetrics), encoded by
//! the `prometheus-client` crate and served by `hyper`. Counters end in
//! `_total`; gauges: pending rows per table, the last success of each job,
//! and the lag since the last successful sync. `sluice_epochs_total{reason}`
//! counts the new epochs the edge database began (restored or copied, found
//! on another machine); `sluice_quarantined_rows_total{table}` the rows the
//! sync moved aside (refused by the cloud for their values, or over the
//! batch limit). The pull (cloud to edge): `sluice_pull_rows_total{table}`
//! the rows applied, `sluice_pull_checkpoint{table}` the position applied,
//! `sluice_pull_lag_seconds{table}` the age of the oldest change not yet
//! applied (the cloud's `sluice.subscription_lag`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::edge::{EpochReason, LogEntry};
use crate::schedule::Job;
use crate::shutdown::Shutdown;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobStatusLabels {
    job: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    job: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TableLabels {
    table: String,
}

/// A label set with no label, for a gauge that appears only once it has a value.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NoLabels {}

type FloatGauge = Gauge<f64, AtomicU64>;

struct Inner {
    registry: Registry,
    runs: Family<JobStatusLabels, Counter>,
    errors: Family<JobLabels, Counter>,
    rows: Family<JobLabels, Counter>,
    batches: Family<JobLabels, Counter>,
    bytes: Family<JobLabels, Counter>,
    pending: Family<TableLabels, Gauge>,
    epochs: Family<ReasonLabels, Counter>,
    quarantined: Family<TableLabels, Counter>,
    last_success: Family<JobLabels, FloatGauge>,
    sync_lag: Family<NoLabels, FloatGauge>,
    pull_rows: Family<TableLabels, Counter>,
    pull_checkpoint: Family<TableLabels, Gauge>,
    pull_lag: Family<TableLabels, FloatGauge>,
    /// Unix seconds of the last successful sync or full sync.
    last_sync: Mutex<Option<f64>>,
}

/// Shared between the jobs (which record) and the endpoint (which renders).
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let inner = Inner {
            runs: Family::default(),
            errors: Family::default(),
            rows: Family::default(),
            batches: Family::default(),
            bytes: Family::default(),
            pending: Family::default(),
            epochs: Family::default(),
            quarantined: Family::default(),
            last_success: Family::default(),
            sync_lag: Family::default(),
            pull_rows: Family::default(),
            pull_checkpoint: Family::default(),
            pull_lag: Family::default(),
            last_sync: Mutex::new(None),
            registry: Registry::default(),
        };
        // Counters are registered without `_total`: the encoder adds it.
        registry.register(
            "sluice_job_runs",
            "Job runs by job and status",
            inner.runs.clone(),
        );
        registry.register(
            "sluice_job_errors",
            "Job runs that did not fully succeed",
            inner.errors.clone(),
        );
        for (name, help, family) in [
            (
                "sluice_rows",
                "Rows handled (sent, rolled up, embedded, deleted) by job",
                &inner.rows,
            ),
            (
                "sluice_batches",
                "Batches sent (sync) or model calls (embed) by job",
                &inner.batches,
            ),
            (
                "sluice_bytes",
                "Bytes sent to the cloud (sync) or written (embed) by job",
                &inner.bytes,
            ),
        ] {
            registry.register(name, help, family.clone());
        }
        registry.register(
            "sluice_epochs",
            "New epochs the edge database began, by reason (restored_or_copied, moved_machine)",
            inner.epochs.clone(),
        );
        registry.register(
            "sluice_quarantined_rows",
            "Rows moved aside (quarantined) by table: refused by the cloud for their values, or over the batch limit",
            inner.quarantined.clone(),
        );
        registry.register(
            "sluice_pending_rows",
            "Rows not yet acknowledged by the cloud",
            inner.pending.clone(),
        );
        registry.register(
            "sluice_last_success_timestamp_seconds",
            "When each job last succeeded",
            inner.last_success.clone(),
        );
        registry.register(
            "sluice_sync_lag_seconds",
            "Seconds since the last successful sync",
            inner.sync_lag.clone(),
        );
        registry.register(
            "sluice_pull_rows",
            "Rows of cloud changes applied at the edge (upserted and deleted), by subscribed table",
            inner.pull_rows.clone(),
        );
        registry.register(
            "sluice_pull_checkpoint",
            "The cloud position each subscribed table has applied",
            inner.pull_checkpoint.clone(),
        );
        registry.register(
            "sluice_pull_lag_seconds",
            "Age of the oldest cloud change not yet applied at the edge (0: none), by subscribed table, from sluice.subscription_lag",
            inner.pull_lag.clone(),
        );
        // Both reasons from the start, at 0, so that a rate is defined
        // before the first epoch.
        for reason in [EpochReason::RestoredOrCopied, EpochReason::MovedMachine] {
            inner
                .epochs
                .get_or_create(&ReasonLabels {
                    reason: reason.as_str().to_owned(),
                })
                .inc_by(0);
        }
        Metrics {
            inner: Arc::new(Inner { registry, ..inner }),
        }
    }
}

impl Metrics {
    /// Records one job run.
    pub fn record(&self, job: Job, e: &LogEntry) {
        let m = &self.inner;
        let labels = JobLabels {
            job: job.name().to_owned(),
        };
        m.runs
            .get_or_create(&JobStatusLabels {
                job: job.name().to_owned(),
                status: e.status.as_str().to_owned(),
            })
            .inc();
        let errors = m.errors.get_or_create(&labels);
        if e.status.is_error() {
            errors.inc();
        }
        m.rows.get_or_create(&labels).inc_by(e.rows.max(0) as u64);
        m.batches
            .get_or_create(&labels)
            .inc_by(e.batches.max(0) as u64);
        m.bytes.get_or_create(&labels).inc_by(e.bytes.max(0) as u64);
        if e.status == crate::edge::RunStatus::Success {
            let now = now_secs();
            m.last_success.get_or_create(&labels).set(now);
            if matches!(job, Job::Sync | Job::FullSync) {
                if let Ok(mut t) = m.last_sync.lock() {
                    *t = Some(now);
                }
            }
        }
    }

    /// Counts `n` new epochs for `reason`.
    pub fn epochs(&self, reason: EpochReason, n: u64) {
        self.inner
            .epochs
            .get_or_create(&ReasonLabels {
                reason: reason.as_str().to_owned(),
            })
            .inc_by(n);
    }

    /// Counts `n` rows of `table` moved aside (a table synced with none is
    /// shown at 0, so that a rate is defined before the first).
    pub fn quarantined(&self, table: &str, n: u64) {
        self.inner
            .quarantined
            .get_or_create(&TableLabels {
                table: table.to_owned(),
            })
            .inc_by(n);
    }

    /// Counts `n` rows of cloud changes applied to `table` (a table pulled
    /// with none is shown at 0).
    pub fn pulled(&self, table: &str, n: u64) {
        self.inner
            .pull_rows
            .get_or_create(&TableLabels {
                table: table.to_owned(),
            })
            .inc_by(n);
    }

    /// The checkpoint `table` has applied.
    pub fn pull_checkpoint(&self, table: &str, checkpoint: i64) {
        self.inner
            .pull_checkpoint
            .get_or_create(&TableLabels {
                table: table.to_owned(),
            })
            .set(checkpoint);
    }

    /// The age of the oldest change of `table` the edge has not applied.
    pub fn pull_lag(&self, table: &str, secs: f64) {
        self.inner
            .pull_lag
            .get_or_create(&TableLabels {
                table: table.to_owned(),
            })
            .set(secs);
    }

    /// Replaces the pending-rows gauges.
    pub fn set_pending(&self, pending: impl IntoIterator<Item = (String, i64)>) {
        self.inner.pending.clear();
        for (table, n) in pending {
            self.inner
                .pending
                .get_or_create(&TableLabels { table })
                .set(n);
        }
    }

    /// The exposition text, as of now.
    pub fn render(&self) -> String {
        let m = &self.inner;
        if let Some(t) = m.last_sync.lock().ok().and_then(|t| *t) {
            m.sync_lag
                .get_or_create(&NoLabels {})
                .set((now_secs() - t).max(0.0));
        }
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &m.registry).is_err() {
            return String::new();
        }
        out
    }

    /// Serves `GET /metrics` on `addr` until shutdown.
    pub async fn serve(self, addr: SocketAddr, shutdown: Shutdown) -> anyhow::Result<()> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("metrics.listen: cannot listen on {addr}: {e}"))?;
        tracing::info!(%addr, "metrics endpoint listening");
        tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => stream,
                        Err(_) => continue,
                    },
                    _ = shutdown.cancelled() => return,
                };
                let metrics = self.clone();
                let shutdown = shutdown.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let metrics = metrics.clone();
                        async move { Ok::<_, Infallible>(metrics.respond(&req)) }
                    });
                    // One request per connection, as Prometheus scrapes.
                    let conn = hyper::server::conn::http1::Builder::new()
                        .keep_alive(false)
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                    tokio::select! {
                        _ = conn => {}
                        _ = shutdown.cancelled() => {}
                    }
                });
            }
        });
        Ok(())
    }

    fn respond(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        let (status, content_type, body) =
            if req.method() == hyper::Method::GET && req.uri().path() == "/metrics" {
                (
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    self.render(),
                )
            } else {
                (
                    StatusCode::NOT_FOUND,
                    "text/plain",
                    "not found\n".to_owned(),
                )
            };
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        response.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static(content_type),
        );
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edge::RunStatus;

    #[test]
    fn renders_counters_and_gauges() {
        let m = Metrics::default();
        m.record(
            Job::Sync,
            &LogEntry {
                status: RunStatus::Success,
                rows: 1000,
                batches: 1,
                bytes: 10_000,
                ..LogEntry::default()
            },
        );
        m.record(
            Job::Sync,
            &LogEntry {
                status: RunStatus::Partial,
                rows: 5,
                ..LogEntry::default()
            },
        );
        m.set_pending([("metrics".into(), 42)]);
        m.epochs(EpochReason::RestoredOrCopied, 1);
        m.epochs(EpochReason::MovedMachine, 1);
        m.epochs(EpochReason::RestoredOrCopied, 2);
        m.quarantined("division_states", 1);
        m.quarantined("division_states", 2);
        m.quarantined("metrics", 0);
        m.pulled("cameras", 3);
        m.pulled("cameras", 2);
        m.pulled("zones", 0);
        m.pull_checkpoint("cameras", 7_351_244);
        m.pull_lag("cameras", 1.5);
        let text = m.render();
        for line in [
            "sluice_pull_rows_total{table=\"cameras\"} 5",
            "sluice_pull_rows_total{table=\"zones\"} 0",
            "sluice_pull_checkpoint{table=\"cameras\"} 7351244",
            "sluice_pull_lag_seconds{table=\"cameras\"} 1.5",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
        assert!(
            text.contains("sluice_quarantined_rows_total{table=\"division_states\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("sluice_quarantined_rows_total{table=\"metrics\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("sluice_epochs_total{reason=\"restored_or_copied\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("sluice_epochs_total{reason=\"moved_machine\"} 1"),
            "{text}"
        );
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
        assert!(
            text.contains("sluice_last_success_timestamp_seconds{job=\"sync\"} "),
            "{text}"
        );
    }

    #[test]
    fn no_lag_before_the_first_successful_sync() {
        let m = Metrics::default();
        m.record(
            Job::Cleanup,
            &LogEntry {
                status: RunStatus::Success,
                ..LogEntry::default()
            },
        );
        let text = m.render();
        assert!(!text.contains("sluice_sync_lag_seconds "), "{text}");
        assert!(
            text.contains("sluice_epochs_total{reason=\"moved_machine\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("sluice_job_errors_total{job=\"cleanup\"} 0"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn the_endpoint_serves_get_metrics_over_http_and_404_otherwise() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let m = Metrics::default();
        m.set_pending([("t".into(), 7)]);
        let shutdown = Shutdown::default();
        m.serve(addr, shutdown.clone()).await.unwrap();
        let get = |path: &'static str| async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(
                // No `Connection: close`: the server closes after one response.
                format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
            )
            .await
            .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        let ok = get("/metrics").await;
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        assert!(ok.contains("sluice_pending_rows{table=\"t\"} 7"), "{ok}");
        let missing = get("/other").await;
        assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
        shutdown.request();
    }
}
