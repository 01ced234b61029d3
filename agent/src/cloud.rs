//! The cloud side: a `tokio-postgres` connection to the PostgreSQL database
//! with the `sluice` extension, with TLS through rustls (certificates always
//! verified; a private CA from `cloud.ca_file`). The password comes from a
//! file or the environment (see [`crate::config::CloudConfig`]) and is never
//! logged.

use std::time::Duration;

use anyhow::Context;
use tokio::sync::mpsc;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, NoTls};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::config::{CloudConfig, TlsMode, DEFAULT_PASSWORD_ENV};

pub struct Cloud {
    client: Client,
}

/// What `sluice.ingest` reported for one batch.
#[derive(Debug, Clone, Copy, Default)]
pub struct IngestOutcome {
    pub inserted: i64,
    pub updated: i64,
    pub skipped: i64,
    pub replay: bool,
}

/// Why an ingest failed, and whether trying again can help.
#[derive(Debug)]
pub enum IngestError {
    /// The connection or the server's state: retry, after reconnecting.
    Transient(anyhow::Error),
    /// The batch itself was refused (corrupt, unregistered table, unknown
    /// column, constraint): retrying the same bytes gives the same answer.
    Rejected(anyhow::Error),
    /// SQLSTATE 55000: the batch contradicts what the cloud already has from
    /// this stream, so the edge database was restored from a backup or
    /// copied; it must continue under a new epoch (`sluice_new_epoch`).
    /// `message` is the server's message alone (the new epoch's reason),
    /// `error` the whole of it (with detail and hint).
    RestoredOrCopied {
        message: String,
        error: anyhow::Error,
    },
    /// A refusal of the batch for a value of one of its rows
    /// ([`refuses_a_value`]: a value out of range or not of the column's
    /// type, a NULL where the cloud wants one, a unique or check constraint,
    /// a value over a limit of the server): the batch's other rows may well
    /// be fine, so the sync cuts smaller batches to find the row and moves it
    /// aside (`sluice_quarantine`). `message` is the server's message alone,
    /// `detail` its detail (which may hold the row's values), `error` the
    /// whole of it.
    RowValue {
        sqlstate: String,
        message: String,
        detail: Option<String>,
        error: anyhow::Error,
    },
}

/// Whether a refusal with this SQLSTATE is one of a row's values rather
/// than of the batch, its table or the connection: data exceptions (class
/// 22), `23502` not_null_violation, `23505` unique_violation, `23514`
/// check_violation, `54000` program_limit_exceeded (a value too large for an
/// index, ...). Nothing else is: an unknown column (42703), an unregistered
/// table (42P01), a permission (42501) or a fork (55000) refuses every row
/// alike.
pub fn refuses_a_value(code: &SqlState) -> bool {
    code.code().starts_with("22")
        || *code == SqlState::NOT_NULL_VIOLATION
        || *code == SqlState::UNIQUE_VIOLATION
        || *code == SqlState::CHECK_VIOLATION
        || *code == SqlState::PROGRAM_LIMIT_EXCEEDED
}

/// What an SQLSTATE of `sluice.ingest` means for the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngestErrorKind {
    Transient,
    Rejected,
    RestoredOrCopied,
}

impl IngestErrorKind {
    /// Classifies by SQLSTATE: connection (08), transaction rollback (40),
    /// resources (53), operator intervention (57), system (58), lock not
    /// available and query canceled are transient; 55000
    /// (object_not_in_prerequisite_state, which `sluice.ingest` raises for
    /// nothing but a restored or copied edge database) is its own kind;
    /// everything else is a refusal of the batch.
    pub fn of(code: &SqlState) -> IngestErrorKind {
        let class = &code.code()[..2];
        if *code == SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE {
            IngestErrorKind::RestoredOrCopied
        } else if matches!(class, "08" | "40" | "53" | "57" | "58")
            || *code == SqlState::LOCK_NOT_AVAILABLE
            || *code == SqlState::QUERY_CANCELED
        {
            IngestErrorKind::Transient
        } else {
            IngestErrorKind::Rejected
        }
    }
}

/// One stream of this device as the cloud knows it
/// (`sluice.device_streams`): one edge database's epoch.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CloudStream {
    pub stream_id: i64,
    pub parent_stream: Option<i64>,
    /// The hash of the machine the batches came from (0: unknown).
    pub machine: Option<i64>,
    /// ISO-8601 UTC.
    pub first_seen: Option<String>,
    pub last_seen: Option<String>,
    /// `first_seen` in Unix milliseconds (the cloud's clock).
    #[serde(skip)]
    pub first_seen_ms: Option<i64>,
    /// `last_seen` in Unix milliseconds (the cloud's clock).
    #[serde(skip)]
    pub last_seen_ms: Option<i64>,
    pub batches: i64,
    pub rows: i64,
    /// A batch of it arrived in the last 15 minutes.
    pub live: bool,
}

/// Why the cloud did not list the streams.
#[derive(Debug)]
pub enum StreamsError {
    /// 42501: the role may not see them (issue 15 sorts out the roles).
    NotPermitted(String),
    /// The cloud's extension has no `sluice.device_streams` (older than 0.2).
    Missing(String),
    Other(anyhow::Error),
}

/// A failure of `sluice.device_streams` or `sluice.stream_high_water`, by
/// SQLSTATE.
fn streams_error(e: &tokio_postgres::Error) -> StreamsError {
    let code = e.code().cloned();
    let msg = describe(e);
    match code {
        Some(c) if c == SqlState::INSUFFICIENT_PRIVILEGE => StreamsError::NotPermitted(msg),
        Some(c) if c == SqlState::UNDEFINED_FUNCTION || c == SqlState::INVALID_SCHEMA_NAME => {
            StreamsError::Missing(msg)
        }
        _ => StreamsError::Other(anyhow::anyhow!(msg)),
    }
}

impl Cloud {
    pub async fn connect(cfg: &CloudConfig) -> anyhow::Result<Cloud> {
        let client = open(cfg, None).await?;
        Ok(Cloud { client })
    }

    /// The next batch of changes of a published table for this device
    /// (`sluice.pull`, one row). An unnamed statement, like `ingest`.
    pub async fn pull(&self, req: &PullRequest<'_>) -> Result<PullReply, PullError> {
        let max_rows = i32::try_from(req.max_rows).unwrap_or(i32::MAX);
        let row = self
            .client
            .query_typed_one(
                "SELECT batch, checkpoint, cursor, more, rows \
                   FROM sluice.pull($1, $2, $3, $4, $5, $6, $7)",
                &[
                    (&req.table, Type::TEXT),
                    (&req.device, Type::TEXT),
                    (&req.checkpoint, Type::INT8),
                    (&req.stream_id, Type::INT8),
                    (&max_rows, Type::INT4),
                    (&req.cursor, Type::TEXT),
                    (&req.tenant, Type::TEXT),
                ],
            )
            .await
            .map_err(|e| {
                let transient = match e.as_db_error() {
                    None => true,
                    Some(db) => IngestErrorKind::of(db.code()) == IngestErrorKind::Transient,
                };
                let msg = anyhow::anyhow!(describe(&e));
                if transient {
                    PullError::Transient(msg)
                } else {
                    PullError::Refused(msg)
                }
            })?;
        Ok(PullReply {
            batch: row.get(0),
            checkpoint: row.get::<_, Option<i64>>(1).unwrap_or(req.checkpoint),
            cursor: row.get(2),
            more: row.get::<_, Option<bool>>(3).unwrap_or(false),
            rows: row.get::<_, Option<i32>>(4).unwrap_or(0),
        })
    }

    /// What the cloud has not delivered yet to `device`, per subscription
    /// (`sluice.subscription_lag`).
    pub async fn subscription_lag(&self, device: &str) -> anyhow::Result<Vec<SubscriptionLag>> {
        let rows = self
            .client
            .query_typed(
                "SELECT edge_table, checkpoint, pending, \
                        to_char(oldest_pending AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), \
                        extract(epoch FROM now() - oldest_pending)::float8, \
                        to_char(last_pulled AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') \
                   FROM sluice.subscription_lag($1) ORDER BY edge_table",
                &[(&device, Type::TEXT)],
            )
            .await
            .map_err(|e| anyhow::anyhow!("sluice.subscription_lag: {}", describe(&e)))?;
        Ok(rows
            .iter()
            .map(|r| SubscriptionLag {
                table: r.get(0),
                checkpoint: r.get(1),
                pending: r.get::<_, Option<i64>>(2).unwrap_or(0),
                oldest_pending: r.get(3),
                oldest_pending_age_secs: r.get(4),
                last_pulled: r.get(5),
            })
            .collect())
    }

    /// The streams of `device` (`sluice.device_streams`), oldest first.
    pub async fn device_streams(&self, device: &str) -> Result<Vec<CloudStream>, StreamsError> {
        let iso =
            |c: &str| format!("to_char({c} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')");
        let sql = format!(
            "SELECT stream_id, parent_stream, machine, {}, {}, \
                    (extract(epoch FROM first_seen) * 1000)::bigint, \
                    (extract(epoch FROM last_seen) * 1000)::bigint, batches, rows, live \
               FROM sluice.device_streams($1) ORDER BY first_seen, stream_id",
            iso("first_seen"),
            iso("last_seen")
        );
        let rows = self
            .client
            .query_typed(&sql, &[(&device, Type::TEXT)])
            .await
            .map_err(|e| streams_error(&e))?;
        Ok(rows
            .iter()
            .map(|r| CloudStream {
                stream_id: r.get(0),
                parent_stream: r.get(1),
                machine: r.get(2),
                first_seen: r.get(3),
                last_seen: r.get(4),
                first_seen_ms: r.get(5),
                last_seen_ms: r.get(6),
                batches: r.get::<_, Option<i64>>(7).unwrap_or(0),
                rows: r.get::<_, Option<i64>>(8).unwrap_or(0),
                live: r.get::<_, Option<bool>>(9).unwrap_or(false),
            })
            .collect())
    }

    /// Per edge table, the largest sequence number the cloud's ledger holds
    /// of `stream` of `device` (`sluice.stream_high_water`).
    pub async fn stream_high_water(
        &self,
        device: &str,
        stream: i64,
    ) -> Result<Vec<(String, i64)>, StreamsError> {
        let rows = self
            .client
            .query_typed(
                "SELECT edge_table, last_seq FROM sluice.stream_high_water($1, $2)",
                &[(&device, Type::TEXT), (&stream, Type::INT8)],
            )
            .await
            .map_err(|e| streams_error(&e))?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    pub fn client_mut(&mut self) -> &mut Client {
        &mut self.client
    }

    /// The cloud's view of `device`: clock skew (ms) and last batch time.
    pub async fn device_view(
        &self,
        device: &str,
    ) -> anyhow::Result<Option<(Option<i64>, Option<String>)>> {
        let row = self
            .client
            .query_typed_opt(
                "SELECT clock_skew_ms, to_char(last_batch_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') FROM sluice.devices WHERE device_id = $1",
                &[(&device, Type::TEXT)],
            )
            .await
            .map_err(|e| anyhow::anyhow!(describe(&e)))?;
        Ok(row.map(|r| (r.get(0), r.get(1))))
    }

    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// Applies one batch with `sluice.ingest` in its own transaction.
    pub async fn ingest(&self, batch: &[u8]) -> Result<IngestOutcome, IngestError> {
        // An unnamed statement (query_typed): no prepared statement outlives
        // the call, so this works through a transaction-mode pooler.
        let row = self
            .client
            .query_typed_one(
                "SELECT inserted, updated, skipped, replay FROM sluice.ingest($1)",
                &[(&batch, Type::BYTEA)],
            )
            .await
            .map_err(classify)?;
        Ok(IngestOutcome {
            inserted: row.get(0),
            updated: row.get(1),
            skipped: row.get(2),
            replay: row.get(3),
        })
    }
}

/// Opens a connection by the config (TLS as configured, the password from
/// the file or the environment) and sets the session's TimeZone to UTC.
/// With `notify`, the connection's notifications go there (the listener);
/// the sender is dropped when the connection ends.
async fn open(
    cfg: &CloudConfig,
    notify: Option<mpsc::UnboundedSender<String>>,
) -> anyhow::Result<Client> {
    let mut pg: tokio_postgres::Config = cfg
        .url
        .parse()
        .context("cloud.url is not a valid PostgreSQL connection string")?;
    pg.connect_timeout(Duration::from_secs(cfg.connect_timeout_secs));
    pg.application_name("sluice-agent");
    if let Some(password) = read_password(cfg)? {
        pg.password(password);
    }
    let client = match cfg.tls {
        TlsMode::Disable => {
            pg.ssl_mode(SslMode::Disable);
            let (client, connection) = pg.connect(NoTls).await.map_err(connect_error)?;
            spawn_connection(connection, notify);
            client
        }
        mode => {
            pg.ssl_mode(if mode == TlsMode::Require {
                SslMode::Require
            } else {
                SslMode::Prefer
            });
            let tls = MakeRustlsConnect::new(tls_config(cfg)?);
            let (client, connection) = pg.connect(tls).await.map_err(connect_error)?;
            spawn_connection(connection, notify);
            client
        }
    };
    // `status` and `verify` compare timestamps as text; they must not
    // depend on the server's or the database's default zone. A
    // transaction-mode pooler keeps it too (pgbouncer tracks TimeZone
    // per client).
    client
        .batch_execute("SET TimeZone = 'UTC'")
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot set the cloud session's TimeZone to UTC: {}",
                describe(&e)
            )
        })?;
    Ok(client)
}

/// The channel the cloud notifies on a commit to a published table; the
/// payload is the edge table.
pub const CHANGES_CHANNEL: &str = "sluice_changes";

/// A dedicated cloud connection that listens on [`CHANGES_CHANNEL`].
pub struct Listener {
    client: Client,
    /// The payloads of the notifications; closed when the connection ends.
    pub notifications: mpsc::UnboundedReceiver<String>,
}

impl Listener {
    pub async fn connect(cfg: &CloudConfig) -> anyhow::Result<Listener> {
        let (tx, rx) = mpsc::unbounded_channel();
        let client = open(cfg, Some(tx)).await?;
        client
            .batch_execute(&format!("LISTEN {CHANGES_CHANNEL}"))
            .await
            .map_err(|e| anyhow::anyhow!("LISTEN {CHANGES_CHANNEL} failed: {}", describe(&e)))?;
        Ok(Listener {
            client,
            notifications: rx,
        })
    }

    /// The cloud's next transaction id to be assigned, minus one
    /// (`pg_snapshot_xmax` of the current snapshot): every transaction that
    /// had committed when this is asked has a position at or below it, so a
    /// checkpoint at or above it has delivered them.
    pub async fn horizon(&self) -> anyhow::Result<i64> {
        let row = self
            .client
            .query_typed_one(
                "SELECT (pg_snapshot_xmax(pg_current_snapshot())::text)::bigint - 1",
                &[],
            )
            .await
            .map_err(|e| anyhow::anyhow!(describe(&e)))?;
        Ok(row.get(0))
    }

    /// A round trip, to find a connection that died without a word.
    pub async fn ping(&self) -> anyhow::Result<()> {
        self.client
            .batch_execute("SELECT 1")
            .await
            .map_err(|e| anyhow::anyhow!(describe(&e)))
    }

    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }
}

/// One call of `sluice.pull`.
#[derive(Debug, Clone)]
pub struct PullRequest<'a> {
    pub table: &'a str,
    pub device: &'a str,
    pub checkpoint: i64,
    pub stream_id: i64,
    pub max_rows: u32,
    pub cursor: Option<&'a str>,
    pub tenant: Option<&'a str>,
}

/// The row `sluice.pull` returns.
#[derive(Debug, Clone, Default)]
pub struct PullReply {
    /// `None`: nothing moved at all.
    pub batch: Option<Vec<u8>>,
    pub checkpoint: i64,
    /// Continues a snapshot.
    pub cursor: Option<String>,
    pub more: bool,
    pub rows: i32,
}

/// Why `sluice.pull` failed.
#[derive(Debug)]
pub enum PullError {
    /// The connection or the server's state: retry, after reconnecting.
    Transient(anyhow::Error),
    /// Refused (no publication, no permission, an older cloud): the same
    /// call gives the same answer.
    Refused(anyhow::Error),
}

/// One row of `sluice.subscription_lag`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SubscriptionLag {
    pub table: String,
    /// What the cloud recorded as applied (the device's last acknowledgement).
    pub checkpoint: Option<i64>,
    pub pending: i64,
    /// ISO-8601 UTC.
    pub oldest_pending: Option<String>,
    /// Seconds since then, by the cloud's clock.
    pub oldest_pending_age_secs: Option<f64>,
    pub last_pulled: Option<String>,
}

fn connect_error(e: tokio_postgres::Error) -> anyhow::Error {
    anyhow::anyhow!("cannot connect to the cloud database: {}", describe(&e))
}

fn spawn_connection<T>(
    connection: tokio_postgres::Connection<tokio_postgres::Socket, T>,
    notify: Option<mpsc::UnboundedSender<String>>,
) where
    T: tokio_postgres::tls::TlsStream + Unpin + Send + 'static,
{
    let Some(notify) = notify else {
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(error = %describe(&e), "cloud connection closed");
            }
        });
        return;
    };
    tokio::spawn(async move {
        let mut connection = connection;
        loop {
            let message = std::future::poll_fn(|cx| connection.poll_message(cx)).await;
            match message {
                Some(Ok(tokio_postgres::AsyncMessage::Notification(n))) => {
                    if notify.send(n.payload().to_owned()).is_err() {
                        return;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::warn!(error = %describe(&e), "the cloud listening connection closed");
                    return;
                }
                None => return,
            }
        }
    });
}

/// The rustls client configuration: the configured CA file, or the Mozilla
/// roots.
fn tls_config(cfg: &CloudConfig) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    match &cfg.ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .with_context(|| format!("cannot read cloud.ca_file {}", path.display()))?;
            let mut n = 0;
            for cert in certs {
                let cert = cert.with_context(|| {
                    format!(
                        "cloud.ca_file {} holds a malformed certificate",
                        path.display()
                    )
                })?;
                roots.add(cert).with_context(|| {
                    format!(
                        "cloud.ca_file {}: a certificate is not a usable CA",
                        path.display()
                    )
                })?;
                n += 1;
            }
            if n == 0 {
                anyhow::bail!("cloud.ca_file {} holds no PEM certificate", path.display());
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("no TLS protocol version is available")?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

fn read_password(cfg: &CloudConfig) -> anyhow::Result<Option<String>> {
    if let Some(path) = &cfg.password_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read cloud.password_file {}", path.display()))?;
        return Ok(text
            .lines()
            .next()
            .map(str::to_owned)
            .filter(|s| !s.is_empty()));
    }
    let var = cfg.password_env.as_deref().unwrap_or(DEFAULT_PASSWORD_ENV);
    Ok(std::env::var(var).ok().filter(|s| !s.is_empty()))
}

/// The server's message (with detail and hint) when there is one.
pub fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut s = format!("{} ({})", db.message(), db.code().code());
            if let Some(d) = db.detail() {
                s.push_str(&format!("; detail: {d}"));
            }
            if let Some(h) = db.hint() {
                s.push_str(&format!("; hint: {h}"));
            }
            s
        }
        None => {
            // The cause (a refused certificate, a reset connection) is in the
            // source chain; the top message alone says too little.
            let mut s = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(cause) = source {
                s.push_str(": ");
                s.push_str(&cause.to_string());
                source = cause.source();
            }
            s
        }
    }
}

fn classify(e: tokio_postgres::Error) -> IngestError {
    let msg = anyhow::anyhow!(describe(&e));
    let Some(db) = e.as_db_error() else {
        return IngestError::Transient(msg);
    };
    match IngestErrorKind::of(db.code()) {
        IngestErrorKind::Transient => IngestError::Transient(msg),
        IngestErrorKind::Rejected if refuses_a_value(db.code()) => IngestError::RowValue {
            sqlstate: db.code().code().to_owned(),
            message: db.message().to_owned(),
            detail: db.detail().map(str::to_owned),
            error: msg,
        },
        IngestErrorKind::Rejected => IngestError::Rejected(msg),
        IngestErrorKind::RestoredOrCopied => IngestError::RestoredOrCopied {
            message: db.message().to_owned(),
            error: msg,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ingest_errors_are_classified_by_sqlstate() {
        use IngestErrorKind::*;
        for (code, kind) in [
            ("55000", RestoredOrCopied),
            ("08006", Transient),
            ("40001", Transient),
            ("40P01", Transient),
            ("53100", Transient),
            ("57P01", Transient),
            ("55P03", Transient),
            ("57014", Transient),
            ("58030", Transient),
            ("22023", Rejected),
            ("XX000", Rejected),
            ("42703", Rejected),
            ("23505", Rejected),
            // Class 55 beside 55000 and 55P03: not a fork.
            ("55006", Rejected),
        ] {
            assert_eq!(
                IngestErrorKind::of(&SqlState::from_code(code)),
                kind,
                "{code}"
            );
        }
    }

    #[test]
    fn a_refusal_of_a_rows_value_is_told_from_a_refusal_of_the_batch() {
        for code in [
            "22003", "22007", "22008", "22P02", "22001", "22023", "22P05", "23502", "23505",
            "23514", "54000",
        ] {
            assert!(refuses_a_value(&SqlState::from_code(code)), "{code}");
        }
        for code in [
            "42703", "42P01", "42501", "55000", "08006", "40001", "XX000", "XX001", "23503",
            "23P01", "54001", "21000",
        ] {
            assert!(!refuses_a_value(&SqlState::from_code(code)), "{code}");
        }
    }
}
