//! Test-only failpoints. `SLUICE_FAILPOINT=after-ingest:N` makes the agent
//! stop after its N-th committed ingest, before acknowledging that batch at
//! the edge: it prints `sluice: failpoint after-ingest:N reached` on stderr and
//! waits to be killed. The end-to-end tests use this to SIGKILL the agent at
//! exactly the moment the protocol must survive. Unset in production.
//!
//! `SLUICE_FAILPOINT=after-ingest:N:wait-for=PATH` waits instead until the
//! file PATH exists, then goes on with the acknowledgement (prints `sluice:
//! failpoint after-ingest:N released`): tests/e2e/disk_full.rs fills the
//! edge's disk between an ingest and its acknowledgement.
//!
//! `SLUICE_FAILPOINT=after-snapshot-page:N` (same forms) stops after the
//! N-th page of a snapshot applied at the edge, inside the snapshot's open
//! transaction: tests/e2e/down.rs kills the agent in the middle of a
//! snapshot.

use std::sync::atomic::{AtomicU64, Ordering};

static INGESTS: AtomicU64 = AtomicU64::new(0);
static SNAPSHOT_PAGES: AtomicU64 = AtomicU64::new(0);

/// Called after every committed ingest.
pub fn after_ingest() {
    hit("after-ingest", &INGESTS);
}

/// Called after every snapshot page applied at the edge (not committed yet).
pub fn after_snapshot_page() {
    hit("after-snapshot-page", &SNAPSHOT_PAGES);
}

fn hit(name: &str, counter: &AtomicU64) {
    let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
    let Ok(spec) = std::env::var("SLUICE_FAILPOINT") else {
        return;
    };
    if let Some(rest) = spec.strip_prefix(name).and_then(|r| r.strip_prefix(':')) {
        let (target, wait_for) = match rest.split_once(":wait-for=") {
            Some((t, p)) => (t, Some(std::path::PathBuf::from(p))),
            None => (rest, None),
        };
        if target.parse::<u64>().ok() == Some(n) {
            eprintln!("sluice: failpoint {name}:{n} reached");
            while let Some(p) = &wait_for {
                if p.exists() {
                    eprintln!("sluice: failpoint {name}:{n} released");
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            loop {
                std::thread::sleep(std::time::Duration::from_secs(3600));
            }
        }
    }
}
