//! Window aggregation: `sluice_bucket` (time bucketing), the exact
//! `sluice_percentile` (aggregate and window function), and the quantile
//! sketch functions `sluice_sketch`, `sluice_sketch_merge`,
//! `sluice_sketch_quantile` over [`sluice_wire::sketch`].
//!
//! Everything here is pure: the same arguments give the same result.

use rusqlite::functions::{Aggregate, Context, WindowAggregate};
use rusqlite::types::{Value, ValueRef};
use sluice_wire::Sketch;

use crate::glue::{agg_err, arg_raw, describe_value, finish, Fail, Res};
use crate::time::{bucket_of, parse_width};

/// A numeric argument of an aggregate: `None` for NULL, an error for text,
/// blobs and (when `finite`) infinities.
fn number(name: &str, v: ValueRef<'_>, what: &str) -> rusqlite::Result<Option<f64>> {
    let x = match v {
        ValueRef::Null => return Ok(None),
        ValueRef::Integer(i) => i as f64,
        ValueRef::Real(r) => r,
        other => {
            return Err(agg_err(
                name,
                format!("{what} must be a number, got {}", describe_value(other)),
            ))
        }
    };
    if !x.is_finite() {
        return Err(agg_err(name, format!("{what} must be finite, got {x}")));
    }
    Ok(Some(x))
}

/// The fraction `p` of a quantile: a number in [0, 1].
fn fraction(v: ValueRef<'_>) -> Res<f64> {
    let p = match v {
        ValueRef::Integer(i) => i as f64,
        ValueRef::Real(r) => r,
        other => {
            return Err(Fail(format!(
                "p must be a number between 0 and 1, got {}",
                describe_value(other)
            )))
        }
    };
    if (0.0..=1.0).contains(&p) {
        Ok(p)
    } else {
        Err(Fail(format!(
            "p must be between 0 and 1 (0.95 for the 95th percentile), got {p}"
        )))
    }
}

// ---------------------------------------------------------------------------
// sluice_percentile(x, p)

/// `sluice_percentile(x, p)`: the exact `p`-quantile of the non-NULL `x`,
/// interpolated linearly between the two closest ranks (like PostgreSQL's
/// `percentile_cont`). An aggregate and a window function.
pub struct Percentile;

#[derive(Default)]
pub struct PercentileAcc {
    values: Vec<f64>,
    sorted: bool,
    p: Option<f64>,
}

const PERCENTILE: &str = "sluice_percentile";
/// Most values one `sluice_percentile` group or frame may hold (800 MB of
/// f64 would take the box down first).
pub const MAX_PERCENTILE_VALUES: usize = 50_000_000;

impl PercentileAcc {
    fn sort(&mut self) {
        if !self.sorted {
            // Stable sort: a sorted run plus a few new values is linear.
            self.values.sort_by(f64::total_cmp);
            self.sorted = true;
        }
    }

    fn result(&mut self) -> Value {
        let Some(p) = self.p else {
            return Value::Null;
        };
        if self.values.is_empty() {
            return Value::Null;
        }
        self.sort();
        let v = &self.values;
        let pos = p * (v.len() - 1) as f64;
        let lo = pos.floor() as usize;
        let hi = pos.ceil() as usize;
        let (a, b) = (v[lo], v[hi.min(v.len() - 1)]);
        Value::Real(interpolate(a, b, pos - lo as f64))
    }
}

/// The value a fraction `t` (0..1) of the way from `a` to `b` (`a <= b`),
/// never outside `[a, b]`: `b - a` overflows to infinity when the two are
/// far apart (`-1e308` and `1e308`), and rounding may step past `b`.
fn interpolate(a: f64, b: f64, t: f64) -> f64 {
    let d = b - a;
    let x = if d.is_finite() {
        a + d * t
    } else {
        a * (1.0 - t) + b * t
    };
    x.clamp(a, b)
}

fn percentile_args(ctx: &Context<'_>, acc: &mut PercentileAcc) -> rusqlite::Result<Option<f64>> {
    let x = number(PERCENTILE, ctx.get_raw(0), "x")?;
    let p = fraction(ctx.get_raw(1)).map_err(|Fail(m)| agg_err(PERCENTILE, m))?;
    match acc.p {
        Some(q) if q != p => {
            return Err(agg_err(
                PERCENTILE,
                format!("p must be the same for every row of a group, got {q} and {p}"),
            ))
        }
        _ => acc.p = Some(p),
    }
    Ok(x)
}

impl Aggregate<PercentileAcc, Value> for Percentile {
    fn init(&self, _ctx: &mut Context<'_>) -> rusqlite::Result<PercentileAcc> {
        Ok(PercentileAcc::default())
    }

    fn step(&self, ctx: &mut Context<'_>, acc: &mut PercentileAcc) -> rusqlite::Result<()> {
        if let Some(x) = percentile_args(ctx, acc)? {
            if acc.values.len() >= MAX_PERCENTILE_VALUES {
                return Err(agg_err(
                    PERCENTILE,
                    format!(
                        "more than {MAX_PERCENTILE_VALUES} values in one group; use sluice_sketch"
                    ),
                ));
            }
            if acc.sorted && acc.values.last().is_some_and(|&l| l > x) {
                acc.sorted = false;
            }
            acc.values.push(x);
        }
        Ok(())
    }

    fn finalize(
        &self,
        _ctx: &mut Context<'_>,
        acc: Option<PercentileAcc>,
    ) -> rusqlite::Result<Value> {
        Ok(acc.map_or(Value::Null, |mut a| a.result()))
    }
}

impl WindowAggregate<PercentileAcc, Value> for Percentile {
    fn value(&self, acc: Option<&mut PercentileAcc>) -> rusqlite::Result<Value> {
        Ok(acc.map_or(Value::Null, |a| a.result()))
    }

    fn inverse(&self, ctx: &mut Context<'_>, acc: &mut PercentileAcc) -> rusqlite::Result<()> {
        if let Some(x) = percentile_args(ctx, acc)? {
            acc.sort();
            let i = acc.values.partition_point(|v| v.total_cmp(&x).is_lt());
            if acc.values.get(i).is_some_and(|v| v.total_cmp(&x).is_eq()) {
                acc.values.remove(i);
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Sketches

/// `sluice_sketch(x)`: the quantile sketch (a BLOB, `docs/wire-format.md`)
/// of the non-NULL `x`; NULL when there are none.
pub struct SketchAgg;

const SKETCH: &str = "sluice_sketch";

impl Aggregate<Sketch, Value> for SketchAgg {
    fn init(&self, _ctx: &mut Context<'_>) -> rusqlite::Result<Sketch> {
        Ok(Sketch::new())
    }

    fn step(&self, ctx: &mut Context<'_>, acc: &mut Sketch) -> rusqlite::Result<()> {
        if let Some(x) = number(SKETCH, ctx.get_raw(0), "x")? {
            acc.add(x);
        }
        Ok(())
    }

    fn finalize(&self, _ctx: &mut Context<'_>, acc: Option<Sketch>) -> rusqlite::Result<Value> {
        Ok(match acc {
            Some(s) if s.count() > 0 => Value::Blob(s.encode()),
            _ => Value::Null,
        })
    }
}

/// `sluice_sketch_merge(sketch)`: one sketch of all the samples of the
/// non-NULL sketches; NULL when there are none.
pub struct SketchMerge;

const SKETCH_MERGE: &str = "sluice_sketch_merge";

/// Decodes a sketch argument; `None` for NULL.
fn sketch_arg(v: ValueRef<'_>) -> Res<Option<Sketch>> {
    match v {
        ValueRef::Null => Ok(None),
        ValueRef::Blob(b) => Sketch::decode(b).map(Some).map_err(|e| Fail(e.to_string())),
        other => Err(Fail(format!(
            "the sketch must be a blob made by sluice_sketch, got {}",
            describe_value(other)
        ))),
    }
}

impl Aggregate<Option<Sketch>, Value> for SketchMerge {
    fn init(&self, _ctx: &mut Context<'_>) -> rusqlite::Result<Option<Sketch>> {
        Ok(None)
    }

    fn step(&self, ctx: &mut Context<'_>, acc: &mut Option<Sketch>) -> rusqlite::Result<()> {
        let s = sketch_arg(ctx.get_raw(0)).map_err(|Fail(m)| agg_err(SKETCH_MERGE, m))?;
        if let Some(s) = s {
            match acc {
                Some(a) => a.merge(&s),
                None => *acc = Some(s),
            }
        }
        Ok(())
    }

    fn finalize(
        &self,
        _ctx: &mut Context<'_>,
        acc: Option<Option<Sketch>>,
    ) -> rusqlite::Result<Value> {
        Ok(match acc.flatten() {
            Some(s) => Value::Blob(s.encode()),
            None => Value::Null,
        })
    }
}

/// `sluice_sketch_quantile(sketch, p)`: the `p`-quantile (0..1) of a sketch,
/// within 1 % of the exact sample; NULL for a NULL sketch.
pub fn sluice_sketch_quantile(ctx: &Context<'_>) -> rusqlite::Result<Value> {
    finish("sluice_sketch_quantile", sketch_quantile(ctx))
}

fn sketch_quantile(ctx: &Context<'_>) -> Res<Value> {
    let p = fraction(arg_raw(ctx, 1)?)?;
    let Some(s) = sketch_arg(arg_raw(ctx, 0)?)? else {
        return Ok(Value::Null);
    };
    Ok(s.quantile(p).map_or(Value::Null, Value::Real))
}

// ---------------------------------------------------------------------------
// sluice_bucket(ts, width)

/// `sluice_bucket(ts, width)`: the start of the `width`-long window holding
/// `ts`, in the form of `ts` (unix seconds as integer or real, or ISO-8601
/// text). Windows are aligned to the Unix epoch.
pub fn sluice_bucket(ctx: &Context<'_>) -> rusqlite::Result<Value> {
    finish("sluice_bucket", bucket(ctx))
}

fn bucket(ctx: &Context<'_>) -> Res<Value> {
    let width = parse_width(arg_raw(ctx, 1)?)?;
    bucket_of(arg_raw(ctx, 0)?, width)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_stay_within_their_inputs() {
        assert_eq!(interpolate(-f64::MAX, f64::MAX, 0.5), 0.0);
        assert_eq!(interpolate(1.0, 2.0, 0.0), 1.0);
        assert_eq!(interpolate(1.0, 2.0, 1.0), 2.0);
        let mut acc = PercentileAcc {
            values: vec![-f64::MAX, f64::MAX],
            sorted: true,
            p: Some(0.3),
        };
        let Value::Real(r) = acc.result() else {
            panic!()
        };
        assert!(r.is_finite());
    }
}
