//! The cloud side: a `tokio-postgres` connection to the PostgreSQL database
//! with the `sluice` extension, with TLS through rustls (certificates always
//! verified; a private CA from `cloud.ca_file`). The password comes from a
//! file or the environment (see [`crate::config::CloudConfig`]) and is never
//! logged.

use std::time::Duration;

use anyhow::Context;
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
}

impl Cloud {
    pub async fn connect(cfg: &CloudConfig) -> anyhow::Result<Cloud> {
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
                spawn_connection(connection);
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
                spawn_connection(connection);
                client
            }
        };
        Ok(Cloud { client })
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

fn connect_error(e: tokio_postgres::Error) -> anyhow::Error {
    anyhow::anyhow!("cannot connect to the cloud database: {}", describe(&e))
}

fn spawn_connection<T>(connection: tokio_postgres::Connection<tokio_postgres::Socket, T>)
where
    T: tokio_postgres::tls::TlsStream + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %describe(&e), "cloud connection closed");
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
    let code = db.code();
    let class = &code.code()[..2];
    let transient = matches!(class, "08" | "40" | "53" | "57" | "58")
        || *code == SqlState::LOCK_NOT_AVAILABLE
        || *code == SqlState::QUERY_CANCELED;
    if transient {
        IngestError::Transient(msg)
    } else {
        IngestError::Rejected(msg)
    }
}
