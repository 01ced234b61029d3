//! `sluice-wire` is the one definition of the bytes that travel between an
//! edge SQLite database and the cloud PostgreSQL: the sluice batch format.
//! The SQLite extension encodes batches, the PostgreSQL extension decodes
//! them, and the agent only moves them (it reads the header to log and
//! acknowledge), so the two ends can never disagree about the format.
//!
//! - [`batch`]: the data model ([`Batch`], [`BatchHeader`], [`Column`],
//!   [`Value`]) and [`encode`] (or [`encode_with_deletes`]) / [`decode`] /
//!   [`decode_header`].
//! - [`codec`]: the low-level readers and writers (varints, strings) that
//!   never panic and never allocate more than the input can justify.
//! - [`error`]: [`WireError`], whose messages say what is wrong and where.
//! - [`names`]: identifier quoting, the device-id rule and [`DrainOrder`],
//!   shared by every part so that none accepts a name another refuses.
//! - [`sketch`]: the mergeable quantile sketch ([`Sketch`], DDSketch-style,
//!   1 % relative accuracy) and its bytes, so the edge's window sketches and
//!   the cloud's merges agree.
//!
//! The format is documented for people in `docs/wire-format.md`.

pub mod batch;
pub mod codec;
pub mod error;
pub mod names;
pub mod sketch;

pub use batch::{
    column_fingerprint, content_digest, decode, decode_header, encode, encode_with_deletes, Batch,
    BatchHeader, BatchId, Changes, Column, ColumnType, EncodeOptions, Fork, Origin, Pulled, Value,
    FORMAT_VERSION, MAGIC, MAX_BODY_BYTES, MAX_COLUMNS, MAX_ZONE_BYTES, OLDEST_READABLE_VERSION,
};
pub use error::WireError;
pub use names::{check_device_id, quote_ident, DrainOrder, MAX_DEVICE_ID_CHARS};
pub use sketch::{Sketch, SketchError, RELATIVE_ACCURACY};
