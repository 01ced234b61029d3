//! What the cloud says when a batch shows that its edge database was
//! restored from a backup or copied (a **fork** of its stream): the ledger
//! knows the batch's identity with other content, or a row the batch would
//! skip has the batch's device, a version at least the incoming one and
//! other content. Either is raised with [`FORK_SQLSTATE`] (`55000`, which
//! `sluice.ingest` uses for nothing else), so that the agent can start a new
//! epoch (`sluice_new_epoch`) and send the rows again under it.

use sluice_wire::BatchId;

use crate::sqlstate::SqlState;

/// The SQLSTATE of a fork: `55000` object_not_in_prerequisite_state.
pub const FORK_SQLSTATE: SqlState = SqlState::ObjectNotInPrerequisiteState;

/// The hint of a fork error.
pub const FORK_HINT: &str = "the agent does this by itself (sluice_new_epoch); see docs/agent.md";

/// What showed the fork.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForkEvidence {
    /// The ledger holds the batch's identity with another content digest.
    Digest {
        /// The digest the ledger stored.
        stored: u64,
        /// The incoming batch's digest.
        incoming: u64,
    },
    /// A row of the batch collides with a row of the same device, at a
    /// version at least its own, with other content.
    Row {
        /// The target table, `schema.table`.
        target: String,
        /// The version of the first such row of the batch.
        version: i64,
    },
}

/// The message of a fork error (without the `sluice.ingest: ` prefix): the
/// device, the stream (hex, as in [`BatchId`]'s display), the table, what
/// differs, and what must happen.
pub fn fork_message(id: &BatchId, evidence: &ForkEvidence) -> String {
    let what = match evidence {
        ForkEvidence::Digest { stored, incoming } => format!(
            "the ledger holds this batch identity with other content (digest {stored:016x}, this batch {incoming:016x})"
        ),
        ForkEvidence::Row { target, version } => format!(
            "the row of version {version} has a key that {target} already holds from this device at a version at least {version}, with other content"
        ),
    };
    format!(
        "batch {id}: {what}: device '{}', stream {:016x}, table '{}' sent other rows under the same versions before; the edge database was restored from a backup or copied, and must continue under a new epoch",
        id.device_id, id.stream_id, id.table
    )
}

/// Whether the ledger's digest and the incoming one show a fork: both known
/// and different (a batch of format version 1, or a ledger row of sluice
/// 0.1, has none, and is taken for a replay as before).
pub fn digests_differ(stored: Option<i64>, incoming: Option<u64>) -> Option<ForkEvidence> {
    let (stored, incoming) = (stored? as u64, incoming?);
    (stored != incoming).then_some(ForkEvidence::Digest { stored, incoming })
}

/// A digest as the ledger stores it (`bigint`: the bits as they are).
pub fn digest_to_sql(digest: Option<u64>) -> Option<i64> {
    digest.map(|d| d as i64)
}

/// A machine hash as `sluice.streams.machine` stores it: `NULL` for 0
/// (unknown), the bits as they are otherwise.
pub fn machine_to_sql(machine: u64) -> Option<i64> {
    (machine != 0).then_some(machine as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> BatchId {
        BatchId {
            device_id: "box-1".into(),
            stream_id: 0xabc,
            table: "division_states".into(),
            base_seq: 10,
            last_seq: 20,
            resend: 0,
        }
    }

    #[test]
    fn a_digest_fork_needs_both_digests() {
        assert_eq!(digests_differ(Some(5), Some(5)), None);
        assert_eq!(digests_differ(None, Some(5)), None);
        assert_eq!(digests_differ(Some(5), None), None);
        assert_eq!(
            digests_differ(Some(-1), Some(7)),
            Some(ForkEvidence::Digest {
                stored: u64::MAX,
                incoming: 7
            })
        );
        // The bits round-trip through bigint.
        assert_eq!(
            digests_differ(digest_to_sql(Some(u64::MAX)), Some(u64::MAX)),
            None
        );
        assert_eq!(machine_to_sql(0), None);
        assert_eq!(machine_to_sql(u64::MAX), Some(-1));
    }

    #[test]
    fn messages_name_device_stream_table_and_version() {
        let m = fork_message(
            &id(),
            &ForkEvidence::Row {
                target: "public.division_states".into(),
                version: 12,
            },
        );
        assert_eq!(
            m,
            "batch box-1/division_states/0000000000000abc (10, 20]: the row of version 12 has a key that \
             public.division_states already holds from this device at a version at least 12, with other content: \
             device 'box-1', stream 0000000000000abc, table 'division_states' sent other rows under the same \
             versions before; the edge database was restored from a backup or copied, and must continue under a new epoch"
        );
        let m = fork_message(
            &id(),
            &ForkEvidence::Digest {
                stored: 1,
                incoming: 2,
            },
        );
        assert!(
            m.contains("digest 0000000000000001, this batch 0000000000000002"),
            "{m}"
        );
        assert_eq!(FORK_SQLSTATE.code(), "55000");
    }
}
