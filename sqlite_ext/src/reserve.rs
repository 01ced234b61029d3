//! A full disk (issue 12, case 5): the filesystem's free space, and the
//! reserve, a file beside the database that sluice deletes when the
//! filesystem is full so that its own recovery can write.
//!
//! At 100 % full every write fails, sluice's too: the budget's drops, the
//! checkpoint that gives the WAL back, the acknowledgement of a batch the
//! cloud applied. The reserve, `<database file>-sluice-reserve`, holds
//! `reserve_bytes` of the disk while there is room (made by
//! `sluice_enforce_budget` with the option `"reserve_bytes"`, written out,
//! never sparse), and is deleted when the filesystem is full: by
//! `sluice_enforce_budget` before it drops rows, by `sluice_ack` before it
//! writes (and once more when its write failed for a full disk), and by
//! `sluice_reserve()` on demand. The budget makes it again when there is
//! room.
//!
//! Free space is statvfs's `f_bavail × f_frsize`: what an unprivileged
//! process may still write (ext4 keeps 5 % for root; the agent should not
//! count on it).

use std::io::Write;
use std::path::{Path, PathBuf};

use rusqlite::functions::Context;
use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension};

use crate::glue::{connection, finish, Fail, Res};

/// Below this many bytes free the filesystem counts as full: a checkpoint
/// or a commit may fail (256 KiB, 64 pages of 4 KiB).
pub const FULL_BYTES: i64 = 256 * 1024;

/// The largest reserve (1 GiB): a reserve is there to let sluice's own
/// recovery write, a few WAL-fulls of pages.
pub const MAX_RESERVE_BYTES: i64 = 1 << 30;

/// The suffix of the reserve's file name, after the database's.
pub const SUFFIX: &str = "-sluice-reserve";

/// SQLite's message for SQLITE_FULL.
const FULL_MESSAGE: &str = "database or disk is full";

/// The file of database `main`, or `None` for an in-memory or temporary
/// database.
pub fn db_file(conn: &Connection) -> Res<Option<PathBuf>> {
    let file: Option<String> = conn
        .query_row(
            "SELECT file FROM pragma_database_list WHERE name = 'main'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    Ok(file.filter(|f| !f.is_empty()).map(PathBuf::from))
}

/// The reserve of the database in file `db`.
pub fn reserve_path(db: &Path) -> PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push(SUFFIX);
    PathBuf::from(p)
}

/// The bytes an unprivileged process may still write on the filesystem
/// holding `file` (statvfs `f_bavail × f_frsize`).
pub fn free_bytes(file: &Path) -> Res<i64> {
    Ok(space(file)?.0)
}

/// The free bytes ([`free_bytes`]) and the size (`f_blocks × f_frsize`) of
/// the filesystem holding `file`.
pub fn space(file: &Path) -> Res<(i64, i64)> {
    let dir = file.parent().filter(|d| !d.as_os_str().is_empty());
    let at = dir.unwrap_or(Path::new("."));
    let s = rustix::fs::statvfs(at).map_err(|e| {
        Fail(format!(
            "cannot read the free space of the filesystem holding {} (statvfs): {e}",
            file.display()
        ))
    })?;
    let bytes = |blocks: u64| i64::try_from(blocks.saturating_mul(s.f_frsize)).unwrap_or(i64::MAX);
    Ok((bytes(s.f_bavail), bytes(s.f_blocks)))
}

/// The bytes the reserve of `db` holds (0 when there is none).
pub fn held(db: &Path) -> i64 {
    std::fs::metadata(reserve_path(db)).map_or(0, |m| i64::try_from(m.len()).unwrap_or(i64::MAX))
}

/// Deletes the reserve of `db`; returns the bytes it held (0 when there was
/// none).
pub fn release(db: &Path) -> Res<i64> {
    let path = reserve_path(db);
    let bytes = held(db);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(Fail(format!(
            "cannot delete the reserve {}: {e}",
            path.display()
        ))),
    }
}

/// Makes the reserve of `db` hold exactly `bytes` (0: deletes it), written
/// out so that the filesystem allocates it. A reserve that cannot be
/// written whole (the disk filled meanwhile) is deleted, so that it never
/// takes the last bytes; returns whether the reserve now holds `bytes`.
pub fn make(db: &Path, bytes: i64) -> Res<bool> {
    if bytes <= 0 {
        release(db)?;
        return Ok(true);
    }
    let path = reserve_path(db);
    let have = held(db);
    if have == bytes {
        return Ok(true);
    }
    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(&path)?;
        let want = u64::try_from(bytes).unwrap_or(0);
        let have = u64::try_from(have).unwrap_or(0);
        if have > want {
            f.set_len(want)?;
        } else {
            // Zeros written, not a hole made by set_len: a sparse file
            // would reserve nothing.
            use std::io::Seek;
            f.seek(std::io::SeekFrom::Start(have))?;
            let chunk = vec![0u8; 64 * 1024];
            let mut left = want - have;
            while left > 0 {
                let n = usize::try_from(left.min(chunk.len() as u64)).unwrap_or(chunk.len());
                f.write_all(&chunk[..n])?;
                left -= n as u64;
            }
        }
        f.sync_all()
    })();
    match result {
        Ok(()) => Ok(true),
        Err(e) if is_no_space(&e) => {
            release(db)?;
            Ok(false)
        }
        Err(e) => {
            let _ = release(db);
            Err(Fail(format!(
                "cannot write the reserve {}: {e}",
                path.display()
            )))
        }
    }
}

fn is_no_space(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::StorageFull || e.raw_os_error() == Some(28)
}

/// Whether a failure is SQLite's SQLITE_FULL (the disk, or the database's
/// `max_page_count`, is full).
pub fn is_full(e: &Fail) -> bool {
    e.0.contains(FULL_MESSAGE)
}

/// Releases the reserve of the database of `conn` when its filesystem is
/// full (under [`FULL_BYTES`] free); returns the bytes freed.
pub fn release_if_full(conn: &Connection) -> Res<i64> {
    let Some(db) = db_file(conn)? else {
        return Ok(0);
    };
    if held(&db) == 0 || free_bytes(&db)? >= FULL_BYTES {
        return Ok(0);
    }
    release(&db)
}

/// Runs `f`, a write of sluice's own recovery (an acknowledgement), so
/// that a full disk does not stop it: the reserve is released first when
/// the filesystem is full, and when `f` still fails with SQLITE_FULL the
/// reserve (if any is left) is released and `f` runs once more.
pub fn when_full<T>(conn: &Connection, mut f: impl FnMut() -> Res<T>) -> Res<T> {
    // Best effort: a statvfs that fails must not stop the write itself.
    let _ = release_if_full(conn);
    match f() {
        Err(e) if is_full(&e) => {
            let freed = match db_file(conn)? {
                Some(db) => release(&db)?,
                None => 0,
            };
            if freed == 0 {
                return Err(e);
            }
            f().map_err(|Fail(m)| {
                Fail(format!(
                    "{m} (tried again after releasing the reserve of {freed} bytes)"
                ))
            })
        }
        other => other,
    }
}

/// [`crate::glue::atomic`] under [`when_full`]: `f`'s writes, all or none,
/// once more after the reserve's release when the disk was full.
pub fn atomic<T>(conn: &Connection, name: &str, mut f: impl FnMut() -> Res<T>) -> Res<T> {
    when_full(conn, || crate::glue::atomic(conn, name, &mut f))
}

// ---------------------------------------------------------------------------
// sluice_reserve

/// `sluice_reserve()` → the bytes the reserve held, now free (0 if there was
/// none).
pub fn sluice_reserve(ctx: &Context<'_>) -> rusqlite::Result<Value> {
    finish("sluice_reserve", reserve(ctx))
}

fn reserve(ctx: &Context<'_>) -> Res<Value> {
    let conn = connection(ctx)?;
    let Some(db) = db_file(&conn)? else {
        return Ok(Value::Integer(0));
    };
    Ok(Value::Integer(release(&db)?))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("sluice-reserve-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn the_reserve_is_made_written_out_resized_and_released() {
        let d = dir("make");
        let db = d.join("edge.db");
        assert_eq!(reserve_path(&db), d.join("edge.db-sluice-reserve"));
        assert_eq!(held(&db), 0);
        assert_eq!(release(&db).unwrap(), 0);
        assert!(make(&db, 300_000).unwrap());
        let m = std::fs::metadata(reserve_path(&db)).unwrap();
        assert_eq!(m.len(), 300_000);
        // Allocated, not sparse.
        assert!(m.blocks() * 512 >= 300_000, "{} blocks", m.blocks());
        assert!(make(&db, 100_000).unwrap());
        assert_eq!(held(&db), 100_000);
        assert!(make(&db, 200_000).unwrap());
        assert_eq!(held(&db), 200_000);
        assert!(std::fs::metadata(reserve_path(&db)).unwrap().blocks() * 512 >= 200_000);
        assert_eq!(release(&db).unwrap(), 200_000);
        assert_eq!(held(&db), 0);
        assert!(make(&db, 0).unwrap());
        assert!(!reserve_path(&db).exists());
        assert!(free_bytes(&db).unwrap() > 0);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn sluice_reserve_releases_it_once() {
        let d = dir("fn");
        let db = d.join("edge.db");
        let conn = crate::testdb::open(db.to_str().unwrap());
        assert!(make(&db, 65_536).unwrap());
        let freed = |c: &Connection| -> i64 {
            c.query_row("SELECT sluice_reserve()", [], |r| r.get(0))
                .unwrap()
        };
        assert_eq!(freed(&conn), 65_536);
        assert_eq!(freed(&conn), 0);
        // In memory there is no file and nothing to release.
        assert_eq!(freed(&crate::testdb::memory()), 0);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_write_that_found_the_disk_full_runs_once_more_after_the_release() {
        let d = dir("retry");
        let db = d.join("edge.db");
        let conn = crate::testdb::open(db.to_str().unwrap());
        assert!(make(&db, 4096).unwrap());
        let mut calls = 0;
        let r = when_full(&conn, || {
            calls += 1;
            if calls == 1 {
                Err(Fail("database or disk is full".into()))
            } else {
                Ok(7)
            }
        });
        assert_eq!((r.unwrap(), calls), (7, 2));
        assert_eq!(held(&db), 0);
        // Without a reserve there is nothing to free: the error stays, one try.
        let mut calls = 0;
        let r: Res<i64> = when_full(&conn, || {
            calls += 1;
            Err(Fail("database or disk is full".into()))
        });
        assert!(is_full(&r.unwrap_err()));
        assert_eq!(calls, 1);
        // Other errors are not retried.
        assert!(make(&db, 4096).unwrap());
        let mut calls = 0;
        let r: Res<i64> = when_full(&conn, || {
            calls += 1;
            Err(Fail("no such table".into()))
        });
        assert!(r.is_err() && calls == 1 && held(&db) == 4096);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
