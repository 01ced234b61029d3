//! `sluice migrate`: applies the cloud schema's migrations in order. Files
//! are `NNNN_name.sql` in one folder; each is applied in its own transaction
//! under an advisory lock (two installers never apply the same file) and
//! recorded in `public.sluice_schema_migrations` with a checksum, so a file
//! edited after it was applied is reported instead of silently ignored.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use crate::cloud::Cloud;
use crate::config::Config;

/// An arbitrary constant: the advisory lock key of migrations.
const MIGRATION_LOCK: i64 = 0x51ce_0001;

#[derive(Debug)]
pub struct Migration {
    pub version: String,
    pub path: PathBuf,
    pub sql: String,
    pub checksum: String,
}

/// The migrations of `dir`, in order; names must start with digits and `_`.
pub fn read_dir(dir: &Path) -> anyhow::Result<Vec<Migration>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)
        .with_context(|| format!("cannot read migrations folder {}", dir.display()))?
    {
        let path = entry?.path();
        if path.extension().is_none_or(|x| x != "sql") {
            continue;
        }
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_owned();
        let Some((version, _)) = name
            .split_once('_')
            .filter(|(v, _)| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
        else {
            bail!(
                "migration file {} is not named NNNN_name.sql",
                path.display()
            );
        };
        let sql = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        out.push(Migration {
            version: version.to_owned(),
            checksum: format!("{:08x}", crc32c::crc32c(sql.as_bytes())),
            path,
            sql,
        });
    }
    out.sort_by(|a, b| a.version.cmp(&b.version));
    for w in out.windows(2) {
        if w[0].version == w[1].version {
            bail!(
                "two migrations have version {}: {} and {}",
                w[0].version,
                w[0].path.display(),
                w[1].path.display()
            );
        }
    }
    Ok(out)
}

/// What `migrate` did with one file.
pub enum Applied {
    Applied(String),
    AlreadyApplied(String),
}

pub async fn migrate(
    cfg: &Config,
    dir: Option<&Path>,
    dry_run: bool,
) -> anyhow::Result<Vec<Applied>> {
    let dir = dir
        .map(Path::to_path_buf)
        .or_else(|| cfg.cloud.migrations.clone())
        .context("no migrations folder: pass --dir or set cloud.migrations")?;
    let migrations = read_dir(&dir)?;
    let mut cloud = Cloud::connect(&cfg.cloud).await?;
    let client = cloud.client_mut();
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS public.sluice_schema_migrations (
               version    text PRIMARY KEY,
               name       text NOT NULL,
               checksum   text NOT NULL,
               applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .await
        .context("cannot create public.sluice_schema_migrations")?;
    let mut out = Vec::new();
    for m in migrations {
        let name = m
            .path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await?;
        let row = tx
            .query_opt(
                "SELECT checksum FROM public.sluice_schema_migrations WHERE version = $1",
                &[&m.version],
            )
            .await?;
        if let Some(row) = row {
            let applied: String = row.get(0);
            if applied != m.checksum {
                bail!(
                    "migration {name} was changed after it was applied (checksum {applied} then, {} now); write a new migration instead",
                    m.checksum
                );
            }
            out.push(Applied::AlreadyApplied(name));
            continue;
        }
        if dry_run {
            out.push(Applied::Applied(name));
            continue;
        }
        tx.batch_execute(&m.sql).await.map_err(|e| {
            anyhow::anyhow!(
                "migration {name} failed, nothing of it was applied: {}",
                crate::cloud::describe(&e)
            )
        })?;
        tx.execute(
            "INSERT INTO public.sluice_schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
            &[&m.version, &name, &m.checksum],
        )
        .await?;
        tx.commit().await?;
        out.push(Applied::Applied(name));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_ordered_and_names_checked() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("0002_b.sql"), "SELECT 2;").unwrap();
        std::fs::write(dir.path().join("0001_a.sql"), "SELECT 1;").unwrap();
        std::fs::write(dir.path().join("README.md"), "not a migration").unwrap();
        let m = read_dir(dir.path()).unwrap();
        assert_eq!(
            m.iter().map(|m| m.version.as_str()).collect::<Vec<_>>(),
            ["0001", "0002"]
        );
        std::fs::write(dir.path().join("oops.sql"), "SELECT 3;").unwrap();
        let err = read_dir(dir.path()).unwrap_err().to_string();
        assert!(err.contains("NNNN_name.sql"), "{err}");
    }

    #[test]
    fn the_repository_migrations_read() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations");
        let m = read_dir(&dir).unwrap();
        assert_eq!(m[0].version, "0001");
    }
}
