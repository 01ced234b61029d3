//! `sluice_quarantine`: rows of tracked tables moved aside because they can
//! never be sent as they are (issue 12, case 7): a row over the batch limit
//! (found by `sluice_batch`), or a row the cloud refused for its value
//! (reported by the agent with `sluice_quarantine`). A quarantined row stays
//! in its table; it is not pending, no batch carries it, cleanup and the
//! budget keep it, and the rows behind it flow on. The operator lists the
//! table, fixes the row, and releases it (`sluice_release`): it is then sent
//! again (a re-send of its sequence number when the range around it was
//! acknowledged meanwhile, [`super::resends`]).

/// The DDL of the table (bookkeeping version 5). `seq` is the row's
/// sequence number (its version) when it was moved aside; `row_id` its
/// rowid, to find it (`SELECT * FROM t WHERE rowid = ...`); `bytes` its
/// encoded size when that was the reason; `sqlstate` the cloud's code when
/// the cloud refused it.
pub(super) const CREATE: &str = "CREATE TABLE IF NOT EXISTS main.sluice_quarantine (
     id INTEGER PRIMARY KEY,
     tbl TEXT NOT NULL,
     seq INTEGER NOT NULL,
     row_id INTEGER,
     bytes INTEGER,
     reason TEXT NOT NULL,
     sqlstate TEXT,
     quarantined_at TEXT NOT NULL,
     UNIQUE (tbl, seq)
 );";
