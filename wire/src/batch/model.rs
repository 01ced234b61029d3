//! The data model of a batch: its columns and their types, the values, the
//! header with the batch's identity, and the column fingerprint the cloud
//! uses to refuse a batch it cannot map. No bytes here: [`super::frame`]
//! writes and reads them.

/// Largest number of columns in a batch.
pub const MAX_COLUMNS: usize = 2000;
/// Default brotli quality: a good ratio at edge-box CPU cost.
pub const DEFAULT_BROTLI_QUALITY: u32 = 5;

/// The declared type of an edge column (its SQLite affinity). The cloud uses
/// it to check that it can map the column; values themselves carry their own
/// storage class, as in SQLite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ColumnType {
    Integer = 1,
    Real = 2,
    Text = 3,
    Blob = 4,
    Numeric = 5,
}

impl ColumnType {
    pub(super) fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            1 => ColumnType::Integer,
            2 => ColumnType::Real,
            3 => ColumnType::Text,
            4 => ColumnType::Blob,
            5 => ColumnType::Numeric,
            _ => return None,
        })
    }

    /// The affinity SQLite gives a declared column type (section 3.1 of
    /// <https://sqlite.org/datatype3.html>).
    pub fn from_declared(decl: &str) -> Self {
        let d = decl.to_ascii_uppercase();
        if d.contains("INT") {
            ColumnType::Integer
        } else if d.contains("CHAR") || d.contains("CLOB") || d.contains("TEXT") {
            ColumnType::Text
        } else if d.contains("BLOB") || d.is_empty() {
            ColumnType::Blob
        } else if d.contains("REAL") || d.contains("FLOA") || d.contains("DOUB") {
            ColumnType::Real
        } else {
            ColumnType::Numeric
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ColumnType::Integer => "integer",
            ColumnType::Real => "real",
            ColumnType::Text => "text",
            ColumnType::Blob => "blob",
            ColumnType::Numeric => "numeric",
        }
    }
}

/// One column of a batch.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Column {
    pub name: String,
    pub ty: ColumnType,
}

impl Column {
    pub fn new(name: impl Into<String>, ty: ColumnType) -> Self {
        Column {
            name: name.into(),
            ty,
        }
    }
}

/// One value, with SQLite's storage classes.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

impl Value {
    pub(super) fn tag(&self) -> u8 {
        match self {
            Value::Null => 0,
            Value::Integer(_) => 1,
            Value::Real(_) => 2,
            Value::Text(_) => 3,
            Value::Blob(_) => 4,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Integer(_) => "integer",
            Value::Real(_) => "real",
            Value::Text(_) => "text",
            Value::Blob(_) => "blob",
        }
    }
}

/// Everything about a batch except its rows. Readable without decompressing
/// the body ([`decode_header`]), which is what acknowledging a batch needs.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchHeader {
    /// The device (edge box) that produced the batch.
    pub device_id: String,
    /// Random id of the edge database the rows come from; a database that is
    /// recreated gets a new one, so its sequence numbers never collide with
    /// the old ones in the cloud's ledger.
    pub stream_id: u64,
    /// The edge table.
    pub table: String,
    /// Exclusive lower bound of the sequence range: the table's acknowledged
    /// watermark when the batch was cut.
    pub base_seq: i64,
    /// Inclusive upper bound of the sequence range.
    pub last_seq: i64,
    pub row_count: u32,
    /// The device's clock when the batch was cut, in ms since the Unix epoch;
    /// the cloud compares it with its own clock to measure skew.
    pub sent_at_ms: i64,
    pub columns: Vec<Column>,
    /// [`column_fingerprint`] of `columns`.
    pub fingerprint: u64,
    /// [`content_digest`] of the rows: what they are, whatever the send time.
    /// Recomputed by `encode` (like the fingerprint); `None` in a batch of
    /// format version 1, which did not carry it.
    pub digest: Option<u64>,
    /// Where the rows come from beyond the stream (format version 2; the
    /// default in a version 1 batch).
    pub origin: Origin,
    /// 0 for an ordinary batch. `n > 0`: the batch re-sends rows the cloud
    /// acknowledged before, for the table's `n`th re-send request (an
    /// operator's `sluice_resend`, or a quarantined row released). Part of
    /// the identity, so a re-send is never taken for a replay of the batch
    /// that first sent the rows; the cloud lets a re-sent row replace its
    /// copy with an equal (version, device) pair where the policy allows.
    /// Written only when non-zero (flag bit 3, format version 2).
    pub resend: u32,
    /// `Some`: the batch carries changes of a published cloud table down to
    /// one device (the cloud-to-edge direction; flag bit 4, format version
    /// 2). Such a batch is applied at the edge by `sluice_apply` and never
    /// ingested by the cloud; a batch without it is never applied at the
    /// edge.
    pub changes: Option<Changes>,
    /// `Some`: the edge table of this (up) batch is subscribed to a
    /// published cloud table, and this is how far the edge had applied its
    /// changes when the batch was cut (flag bit 5, format version 2). The
    /// cloud uses it to tell a row the edge wrote before it knew of a cloud
    /// delete (the delete wins) from one it wrote after (a new row). Never
    /// with `changes`.
    pub pulled: Option<Pulled>,
}

/// What an up batch of a subscribed edge table says about the cloud
/// changes the edge had applied when it was cut ([`BatchHeader::pulled`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pulled {
    /// The publication's stream id the checkpoint belongs to (0: the edge
    /// has applied no snapshot yet).
    pub stream_id: u64,
    /// The last cloud position applied (0: none).
    pub checkpoint: i64,
}

/// What a batch of cloud changes says beyond the common header. In such a
/// batch `device_id` is the device the changes are for, `stream_id` the
/// publication's random id, `table` the edge table, `base_seq` the checkpoint
/// the changes follow (exclusive) and `last_seq` the checkpoint they lead to
/// (inclusive); each row's version is the change's position in the cloud's
/// change order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Changes {
    /// 0: the changes after `base_seq` (an incremental batch). `n >= 1`: page
    /// `n` of a snapshot, a full copy of the device's share of the table as
    /// of checkpoint `last_seq` (`base_seq` is 0); the rows of the table that
    /// no page of the snapshot carried are deleted when its last page is
    /// applied.
    pub snapshot_page: u32,
    /// The last page of a snapshot. Always true in an incremental batch.
    pub last_page: bool,
}

/// What a batch says about the database and the clock its rows come from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Origin {
    /// A 64-bit hash of the identity of the machine the edge database ran on
    /// when the batch was cut (0: unknown). The cloud keeps it per stream, so
    /// that two databases sending under one device id can be told apart.
    pub machine: u64,
    /// The zone in which the device's zoneless timestamps are wall-clock time:
    /// an IANA name (`Europe/Berlin`) or a fixed offset (`+05:30`). Empty:
    /// UTC.
    pub zone: String,
    /// Set while the stream is young: the database continued an earlier
    /// stream (it was restored or copied), and rows up to a sequence number
    /// may already be in the cloud under that stream or its ancestors.
    pub fork: Option<Fork>,
}

/// The earlier stream a new epoch continues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fork {
    /// The stream the database used before (never 0).
    pub parent_stream: u64,
    /// Rows with a version up to this one existed when the new epoch began:
    /// they may be in the cloud under the parent stream already, with the
    /// same content.
    pub fork_seq: i64,
}

/// Largest length of [`Origin::zone`] in bytes.
pub const MAX_ZONE_BYTES: usize = 64;

impl BatchHeader {
    pub fn id(&self) -> BatchId {
        BatchId {
            device_id: self.device_id.clone(),
            stream_id: self.stream_id,
            table: self.table.clone(),
            base_seq: self.base_seq,
            last_seq: self.last_seq,
            resend: self.resend,
        }
    }
}

/// The identity of a batch: the cloud's ledger key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BatchId {
    pub device_id: String,
    pub stream_id: u64,
    pub table: String,
    pub base_seq: i64,
    pub last_seq: i64,
    /// [`BatchHeader::resend`]: 0 for an ordinary batch.
    pub resend: u32,
}

impl std::fmt::Display for BatchId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{}/{:016x} ({}, {}]",
            self.device_id, self.table, self.stream_id, self.base_seq, self.last_seq
        )?;
        if self.resend != 0 {
            write!(f, " re-send {}", self.resend)?;
        }
        Ok(())
    }
}

/// A decoded batch: the header and the rows, stored by column.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub header: BatchHeader,
    /// The version of each row (its sequence number at the edge): what
    /// "last writer wins" compares.
    pub versions: Vec<i64>,
    /// `deleted[r]`: row `r` is a delete (a tombstone carrying the key
    /// columns' values, NULL elsewhere). Empty when no row is a delete.
    pub deleted: Vec<bool>,
    /// `columns[c][r]` is the value of column `c` in row `r`.
    pub columns: Vec<Vec<Value>>,
    /// The CRC-32C stored at the end of the encoded batch.
    pub checksum: u32,
}

/// How to encode.
#[derive(Debug, Clone, Copy)]
pub struct EncodeOptions {
    /// Brotli quality 0..=11, or `None` to store the body uncompressed.
    pub brotli_quality: Option<u32>,
}

impl Default for EncodeOptions {
    fn default() -> Self {
        EncodeOptions {
            brotli_quality: Some(DEFAULT_BROTLI_QUALITY),
        }
    }
}

/// The digest of a batch's rows: FNV-1a 64 of the uncompressed body (the
/// versions and every value, in the format's deterministic coding). Two
/// batches with the same identity and the same digest carry the same rows;
/// the send time is not part of it.
pub fn content_digest(raw_body: &[u8]) -> u64 {
    use std::hash::Hasher;
    let mut h = fnv::FnvHasher::default();
    h.write(raw_body);
    h.finish()
}

/// A stable 64-bit fingerprint (FNV-1a) of column names and types, in order.
pub fn column_fingerprint(columns: &[Column]) -> u64 {
    use std::hash::Hasher;
    let mut h = fnv::FnvHasher::default();
    for c in columns {
        h.write(c.name.as_bytes());
        h.write(&[0, c.ty as u8]);
    }
    h.finish()
}
