//! Window aggregation: `sluice_bucket` (time bucketing), the exact
//! `sluice_percentile` (aggregate and window function), and the quantile
//! sketch functions `sluice_sketch`, `sluice_sketch_merge`,
//! `sluice_sketch_quantile` over [`sluice_wire::sketch`].
//!
//! Everything here is pure: the same arguments give the same result.

use rusqlite::functions::{Aggregate, Context, WindowAggregate};
use rusqlite::types::{Value, ValueRef};
use sluice_wire::Sketch;

use crate::options::parse_duration;
use crate::{arg_raw, describe_value, finish, Fail, Res};

/// An aggregate's error: `name: message`, as SQLite shows it.
pub(crate) fn agg_err(name: &str, m: impl Into<String>) -> rusqlite::Error {
    let m: String = m.into();
    rusqlite::Error::UserFunctionError(Box::new(Fail(format!(
        "{name}: {}",
        m.replace('\0', "\\0")
    ))))
}

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

/// Largest magnitude of a real time: 2^53 seconds (285 million years);
/// beyond it reals are further apart than a second, and a window start
/// below the time cannot be written.
const MAX_REAL_SECONDS: f64 = 9_007_199_254_740_992.0;

/// Largest width: 100 years.
const MAX_WIDTH: i64 = crate::options::MAX_KEEP_SECONDS;

/// Parses a window width: seconds as a positive number, or text like
/// `'5 minutes'`.
pub fn parse_width(v: ValueRef<'_>) -> Res<i64> {
    let w = match v {
        ValueRef::Integer(i) => i,
        ValueRef::Real(r) if r.fract() == 0.0 && r.abs() < 9.0e15 => r as i64,
        ValueRef::Text(t) => {
            let s = std::str::from_utf8(t).map_err(|_| Fail("width is not valid UTF-8".into()))?;
            parse_duration(s).map_err(|_| {
                Fail(format!(
                    "width '{s}' is not a duration; write seconds, or a number and a unit, \
                     e.g. '5 minutes'"
                ))
            })?
        }
        other => {
            return Err(Fail(format!(
                "width must be seconds or a duration like '5 minutes', got {}",
                describe_value(other)
            )))
        }
    };
    if w <= 0 || w > MAX_WIDTH {
        return Err(Fail(format!(
            "width must be between 1 second and 100 years, got {w} seconds"
        )));
    }
    Ok(w)
}

fn bucket(ctx: &Context<'_>) -> Res<Value> {
    let width = parse_width(arg_raw(ctx, 1)?)?;
    bucket_of(arg_raw(ctx, 0)?, width)
}

/// The start of the window of `width` seconds that holds time `ts`: what
/// `sluice_bucket(ts, width)` returns, or why `ts` is not a time.
pub fn bucket_of(ts: ValueRef<'_>, width: i64) -> Res<Value> {
    match ts {
        ValueRef::Null => Ok(Value::Null),
        ValueRef::Integer(t) => t
            .div_euclid(width)
            .checked_mul(width)
            .map(Value::Integer)
            .ok_or_else(|| {
                Fail(format!(
                    "ts {t} is too far from 1970: the start of its window of {width} seconds \
                     is not a 64-bit integer"
                ))
            }),
        ValueRef::Real(t) if t.is_finite() && t.abs() < MAX_REAL_SECONDS => {
            // Below 2^53 every whole number is a real, so the start is exact;
            // the division may round to the next whole number, which the
            // steps after it correct.
            let w = width as f64;
            let mut b = (t / w).floor() * w;
            if b > t {
                b -= w;
            } else if t - b >= w {
                b += w;
            }
            Ok(Value::Real(b))
        }
        ValueRef::Real(t) if t.is_finite() => Err(Fail(format!(
            "ts {t} is too far from 1970: a real time must be within ±{MAX_REAL_SECONDS} seconds"
        ))),
        ValueRef::Real(t) => Err(Fail(format!("ts must be finite, got {t}"))),
        ValueRef::Text(b) => {
            let s = std::str::from_utf8(b).map_err(|_| Fail("ts is not valid UTF-8".into()))?;
            let ts = IsoTime::parse(s)?;
            Ok(Value::Text(ts.bucket(width)?))
        }
        ValueRef::Blob(b) => Err(Fail(format!(
            "ts must be unix seconds or ISO-8601 text, got a blob of {} bytes",
            b.len()
        ))),
    }
}

/// An ISO-8601 timestamp and the shape it was written in, so a bucket can be
/// written back the same way (and compare correctly with the input as text).
#[derive(Debug, Clone, PartialEq)]
pub struct IsoTime {
    /// Seconds since the epoch of the written wall-clock time (the offset is
    /// kept aside, not applied).
    pub secs: i64,
    /// `'T'` or `' '`; `None` for a date alone.
    pub sep: Option<char>,
    pub has_seconds: bool,
    /// Digits of the fractional second as written.
    pub frac_digits: usize,
    /// `Z`, `+02:00`, ... as written, or empty.
    pub suffix: String,
}

/// Julian day number of 1970-01-01.
const UNIX_EPOCH_JULIAN_DAY: i64 = 2_440_588;

/// The day of `y-m-d` counted from 1970-01-01, or `None` when there is no
/// such date (the `time` crate's calendar, years -9999 to 9999).
fn days_from_civil(y: i64, m: i64, d: i64) -> Option<i64> {
    let month = time::Month::try_from(u8::try_from(m).ok()?).ok()?;
    let date =
        time::Date::from_calendar_date(i32::try_from(y).ok()?, month, u8::try_from(d).ok()?)
            .ok()?;
    Some(i64::from(date.to_julian_day()) - UNIX_EPOCH_JULIAN_DAY)
}

/// The date of day `z` counted from 1970-01-01, or `None` outside the
/// years -9999 to 9999.
fn civil_from_days(z: i64) -> Option<(i32, u8, u8)> {
    let jd = i32::try_from(z.checked_add(UNIX_EPOCH_JULIAN_DAY)?).ok()?;
    let date = time::Date::from_julian_day(jd).ok()?;
    Some((date.year(), u8::from(date.month()), date.day()))
}

impl IsoTime {
    /// Parses `YYYY-MM-DD`, `YYYY-MM-DD HH:MM`, `YYYY-MM-DDTHH:MM:SS`,
    /// with an optional fraction and `Z` or `±HH:MM` suffix.
    pub fn parse(s: &str) -> Res<IsoTime> {
        let bad = || {
            Fail(format!(
                "ts '{}' is not an ISO-8601 time like '2024-05-01 12:34:56' or \
                 '2024-05-01T12:34:56Z'",
                s.chars().take(60).collect::<String>()
            ))
        };
        let b = s.as_bytes();
        let num = |from: usize, len: usize| -> Res<i64> {
            let part = b.get(from..from + len).ok_or_else(bad)?;
            if !part.iter().all(u8::is_ascii_digit) {
                return Err(bad());
            }
            Ok(part.iter().fold(0i64, |a, d| a * 10 + i64::from(d - b'0')))
        };
        let (y, mo, d) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
        if b.get(4) != Some(&b'-') || b.get(7) != Some(&b'-') || !(1..=12).contains(&mo) {
            return Err(bad());
        }
        let days = days_from_civil(y, mo, d).ok_or_else(bad)?;
        let mut t = IsoTime {
            secs: days * 86_400,
            sep: None,
            has_seconds: false,
            frac_digits: 0,
            suffix: String::new(),
        };
        if b.len() == 10 {
            return Ok(t);
        }
        let sep = match b[10] {
            b'T' => 'T',
            b' ' => ' ',
            _ => return Err(bad()),
        };
        t.sep = Some(sep);
        let (h, mi) = (num(11, 2)?, num(14, 2)?);
        if b.get(13) != Some(&b':') || h > 23 || mi > 59 {
            return Err(bad());
        }
        let mut pos = 16;
        let mut sec = 0;
        if b.get(pos) == Some(&b':') {
            sec = num(17, 2)?;
            if sec > 59 {
                return Err(bad());
            }
            t.has_seconds = true;
            pos = 19;
            if b.get(pos) == Some(&b'.') {
                let n = b[pos + 1..]
                    .iter()
                    .take_while(|c| c.is_ascii_digit())
                    .count();
                if n == 0 || n > 9 {
                    return Err(bad());
                }
                t.frac_digits = n;
                pos += 1 + n;
            }
        }
        let rest = &s[pos..];
        let ok_suffix = rest.is_empty()
            || rest == "Z"
            || (rest.len() == 6
                && (rest.starts_with('+') || rest.starts_with('-'))
                && num(pos + 1, 2).is_ok_and(|h| h <= 23)
                && b[pos + 3] == b':'
                && num(pos + 4, 2).is_ok_and(|m| m <= 59));
        if !ok_suffix {
            return Err(bad());
        }
        t.suffix = rest.to_string();
        t.secs += h * 3600 + mi * 60 + sec;
        Ok(t)
    }

    /// The start of the window of `width` seconds, written like `self`; an
    /// error when it falls outside the years -9999 to 9999.
    pub fn bucket(&self, width: i64) -> Res<String> {
        let start = self
            .secs
            .div_euclid(width)
            .checked_mul(width)
            .ok_or_else(|| Fail(format!("the window of {width} seconds is out of range")))?;
        let (y, m, d) = civil_from_days(start.div_euclid(86_400)).ok_or_else(|| {
            Fail(format!(
                "the window of {width} seconds holding this time starts outside the years \
                 -9999 to 9999"
            ))
        })?;
        let tod = start.rem_euclid(86_400);
        let date = format!("{y:04}-{m:02}-{d:02}");
        let Some(sep) = self.sep else {
            if tod == 0 {
                return Ok(date);
            }
            return Ok(format!(
                "{date} {:02}:{:02}:{:02}",
                tod / 3600,
                tod / 60 % 60,
                tod % 60
            ));
        };
        let mut out = format!("{date}{sep}{:02}:{:02}", tod / 3600, tod / 60 % 60);
        if self.has_seconds || tod % 60 != 0 {
            out.push_str(&format!(":{:02}", tod % 60));
        }
        if self.frac_digits > 0 {
            out.push('.');
            out.push_str(&"0".repeat(self.frac_digits));
        }
        out.push_str(&self.suffix);
        Ok(out)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn b(s: &str, w: i64) -> String {
        IsoTime::parse(s).unwrap().bucket(w).unwrap()
    }

    #[test]
    fn iso_buckets_keep_the_input_form() {
        assert_eq!(b("2024-05-01 12:34:56", 300), "2024-05-01 12:30:00");
        assert_eq!(
            b("2024-05-01T12:34:56.789Z", 300),
            "2024-05-01T12:30:00.000Z"
        );
        assert_eq!(
            b("2024-05-01T12:34:56+02:00", 3600),
            "2024-05-01T12:00:00+02:00"
        );
        assert_eq!(b("2024-05-01 12:34", 900), "2024-05-01 12:30");
        assert_eq!(b("2024-05-01", 86_400), "2024-05-01");
        assert_eq!(b("2024-02-29 23:59:59", 86_400), "2024-02-29 00:00:00");
        assert_eq!(b("1969-12-31 23:59:59", 300), "1969-12-31 23:55:00");
        assert_eq!(b("2024-03-01 00:00:00", 7 * 86_400), "2024-02-29 00:00:00");
    }

    #[test]
    fn iso_garbage_is_an_error() {
        for s in [
            "",
            "2024",
            "2024-13-01",
            "2024-02-30",
            "2023-02-29 00:00",
            "2024-05-01X12:00",
            "2024-05-01 25:00",
            "2024-05-01 12:00:61",
            "2024-05-01 12:00:00.",
            "2024-05-01 12:00 ",
            "2024-05-01 12:00:00+2",
            "２０２４-05-01",
            "2024-05-01 12:00:00.1234567890",
        ] {
            assert!(IsoTime::parse(s).is_err(), "{s}");
        }
    }

    #[test]
    fn civil_round_trip() {
        for z in [-800_000i64, -1, 0, 1, 19_000, 2_932_896] {
            let (y, m, d) = civil_from_days(z).unwrap();
            assert_eq!(
                days_from_civil(i64::from(y), i64::from(m), i64::from(d)),
                Some(z)
            );
        }
        assert_eq!(days_from_civil(1970, 1, 1), Some(0));
        assert_eq!(days_from_civil(2024, 2, 30), None);
        assert_eq!(civil_from_days(i64::MIN), None);
    }

    #[test]
    fn buckets_never_lie_after_their_time() {
        use rusqlite::types::ValueRef::Integer;
        for w in [1, 7, 300, 86_400, MAX_WIDTH] {
            for t in [i64::MIN, i64::MIN + 1, -1, 0, 1, i64::MAX - 1, i64::MAX] {
                match bucket_of(Integer(t), w) {
                    Ok(Value::Integer(b)) => {
                        assert!(b <= t && i128::from(t) - i128::from(b) < i128::from(w), "{t} {w}")
                    }
                    Ok(other) => panic!("{other:?}"),
                    Err(Fail(m)) => assert!(m.contains("too far"), "{m}"),
                }
            }
        }
        use rusqlite::types::ValueRef::Real;
        for w in [1, 7, 60, 300, 86_400, MAX_WIDTH] {
            for t in [-1e300, -9.0e15, -1.5, -0.0, 0.5, 1e15 + 0.5, 9.0e15, 1e300, f64::MAX] {
                match bucket_of(Real(t), w) {
                    Ok(Value::Real(b)) => assert!(b <= t && t - b < w as f64, "{t} {w} {b}"),
                    Ok(other) => panic!("{other:?}"),
                    Err(Fail(m)) => assert!(m.contains("too far") && t.abs() > 9.0e15, "{m}"),
                }
            }
        }
        assert!(bucket_of(Integer(i64::MIN), 300).is_err());
        assert_eq!(
            bucket_of(Integer(i64::MAX), 300),
            Ok(Value::Integer(i64::MAX - i64::MAX % 300))
        );
    }

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
