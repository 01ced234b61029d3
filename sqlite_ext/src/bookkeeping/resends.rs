//! `sluice_resends`: ranges of a table that are sent again (issue 12, case
//! 8): an operator's `sluice_resend` after a fix in the cloud or an edge-side
//! `ALTER TABLE ... ADD COLUMN ... DEFAULT`, or a quarantined row released
//! after the range around it was acknowledged. Request `n` of a table sends
//! the rows whose sequence number is in `(lo, hi]` (and, with a time filter,
//! whose time is in `[from_time, to_time)`) in batches whose header carries
//! re-send number `n` (`BatchHeader::resend`), so the cloud never takes
//! them for replays; `done_seq` is how far the acknowledged re-sent batches
//! reached; the request is finished when it reaches `hi`.

/// The DDL of the table (bookkeeping version 5).
pub(super) const CREATE: &str = "CREATE TABLE IF NOT EXISTS main.sluice_resends (
     tbl TEXT NOT NULL,
     n INTEGER NOT NULL,
     lo INTEGER NOT NULL,
     hi INTEGER NOT NULL,
     done_seq INTEGER NOT NULL,
     from_time TEXT,
     to_time TEXT,
     reason TEXT NOT NULL,
     requested_at TEXT NOT NULL,
     finished_at TEXT,
     PRIMARY KEY (tbl, n)
 ) WITHOUT ROWID;";
