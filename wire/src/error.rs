//! Errors of the wire format. Every message names what is wrong and where, so
//! that a user reading a PostgreSQL ERROR or a SQLite error knows what to do.

use thiserror::Error;

/// Why a byte string is not a valid sluice batch, or why a batch cannot be
/// encoded.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum WireError {
    #[error("not a sluice batch: it is {len} bytes, shorter than the smallest possible batch ({min} bytes)")]
    TooShort { len: usize, min: usize },
    #[error("not a sluice batch: it does not start with the magic bytes \"SLB\"")]
    BadMagic,
    #[error(
        "unsupported sluice batch format version {found} (this build reads versions 1 to {supported})"
    )]
    UnsupportedVersion { found: u8, supported: u8 },
    #[error("corrupt sluice batch: checksum mismatch (stored {stored:#010x}, computed {computed:#010x}); the batch was damaged in transit or storage")]
    ChecksumMismatch { stored: u32, computed: u32 },
    #[error("corrupt sluice batch: truncated while reading {what} (needed {needed} more bytes, {available} left)")]
    Truncated {
        what: &'static str,
        needed: usize,
        available: usize,
    },
    #[error("corrupt sluice batch: {what}")]
    Malformed { what: String },
    #[error("sluice batch too large: {what} is {size}, the limit is {limit}")]
    TooLarge {
        what: &'static str,
        size: u64,
        limit: u64,
    },
    #[error("cannot encode batch: {what}")]
    Invalid { what: String },
}

impl WireError {
    pub(crate) fn malformed(what: impl Into<String>) -> Self {
        WireError::Malformed { what: what.into() }
    }
    pub(crate) fn invalid(what: impl Into<String>) -> Self {
        WireError::Invalid { what: what.into() }
    }
}
