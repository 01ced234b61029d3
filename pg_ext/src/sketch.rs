//! Sketch merge in the cloud: the edge's 5-minute quantile sketches
//! (`sluice_wire::Sketch`, the same bytes as `sluice_sketch()` in SQLite)
//! merged by an aggregate into hours and days, and read with a quantile
//! function, without the raw samples. The aggregate's state is the encoded
//! sketch itself, so it needs no custom type.

use pgrx::prelude::*;
use sluice_wire::Sketch;

use crate::error::SluiceError;

fn decode(bytes: &[u8], function: &'static str) -> Sketch {
    match Sketch::decode(bytes) {
        Ok(s) => s,
        Err(e) => SluiceError::new(
            PgSqlErrorCode::ERRCODE_INVALID_BINARY_REPRESENTATION,
            format!("sluice.{function}: {e}"),
        )
        .raise(function),
    }
}

/// State function of `sluice.sketch_merge(bytea)`: the merge of `state` and
/// `sketch`; NULL inputs are skipped, every input is validated.
#[pg_extern(immutable, parallel_safe, name = "_internal_sketch_merge_step")]
fn sketch_merge_step(state: Option<&[u8]>, sketch: Option<&[u8]>) -> Option<Vec<u8>> {
    match (state, sketch) {
        (None, None) => None,
        (Some(s), None) => Some(s.to_vec()),
        (None, Some(x)) => Some(decode(x, "sketch_merge").encode()),
        (Some(s), Some(x)) => {
            let mut merged = decode(s, "sketch_merge");
            merged.merge(&decode(x, "sketch_merge"));
            Some(merged.encode())
        }
    }
}

/// `sluice.sketch_quantile(sketch bytea, p float8)`: the `p`-quantile
/// (0 ≤ p ≤ 1) within the sketch's relative accuracy; NULL for an empty
/// sketch.
#[pg_extern(immutable, strict, parallel_safe)]
fn sketch_quantile(sketch: &[u8], p: f64) -> Option<f64> {
    if !(0.0..=1.0).contains(&p) {
        SluiceError::new(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("sluice.sketch_quantile: p must be between 0 and 1, not {p}"),
        )
        .raise("sketch_quantile")
    }
    decode(sketch, "sketch_quantile").quantile(p)
}

/// `sluice.sketch_count(sketch bytea)`: how many samples the sketch holds.
#[pg_extern(immutable, strict, parallel_safe)]
fn sketch_count(sketch: &[u8]) -> i64 {
    i64::try_from(decode(sketch, "sketch_count").count()).unwrap_or(i64::MAX)
}

extension_sql!(
    r#"
CREATE AGGREGATE sluice.sketch_merge(bytea) (
    SFUNC = sluice._internal_sketch_merge_step,
    STYPE = bytea,
    COMBINEFUNC = sluice._internal_sketch_merge_step,
    PARALLEL = SAFE
);
"#,
    name = "sketch_merge",
    requires = [sketch_merge_step]
);
