//! Time values as the extension reads them, pure: ISO-8601 text
//! ([`IsoTime`], the calendar of the `time` crate), unix seconds as integers
//! and reals, window widths, the window that holds a time ([`bucket_of`],
//! what `sluice_bucket` returns), and [`EpochSql`], the same reading of a
//! time column inside SQL.

use std::fmt;

use rusqlite::types::{Value, ValueRef};

use crate::glue::{describe_value, Fail, Res};
use crate::options::parse_duration;

/// An SQL expression (a quoted column, or an expression over one) read as
/// a time: displayed, it is the SQL for whole unix seconds of that value
/// (ISO-8601 text or unix seconds), NULL for anything else.
#[derive(Debug, Clone, Copy)]
pub struct EpochSql<'a>(pub &'a str);

impl fmt::Display for EpochSql<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let x = self.0;
        write!(
            f,
            "(CASE typeof({x}) WHEN 'text' THEN unixepoch({x}) WHEN 'integer' THEN {x} \
             WHEN 'real' THEN CAST({x} AS INTEGER) END)"
        )
    }
}

/// A time value as unix seconds: integers and reals are seconds, text is
/// ISO-8601 (a `±HH:MM` offset is applied; no suffix means UTC).
pub fn epoch_of(v: ValueRef<'_>) -> Option<i64> {
    match v {
        ValueRef::Integer(i) => Some(i),
        ValueRef::Real(r) if r.is_finite() && r.abs() < 9.0e15 => Some(r.floor() as i64),
        ValueRef::Text(t) => {
            let s = std::str::from_utf8(t).ok()?;
            let it = IsoTime::parse(s).ok()?;
            let suffix = it.suffix.as_bytes();
            let offset = if suffix.len() == 6 {
                let n =
                    |a: usize| i64::from(suffix[a] - b'0') * 10 + i64::from(suffix[a + 1] - b'0');
                let o = n(1) * 3600 + n(4) * 60;
                if suffix[0] == b'-' {
                    -o
                } else {
                    o
                }
            } else {
                0
            };
            Some(it.secs - offset)
        }
        _ => None,
    }
}

/// How far ahead of the clock a row's time may be and still be taken as
/// the present: one day, more than any zone's offset (a device that writes
/// zoneless local time reads up to 14 hours ahead) and any honest skew. A
/// time beyond it was written by a clock that was wrong (it jumped forward
/// and was corrected since): cleanup, the storage budget and the hourly
/// window never wait for it ([`future_after`]).
pub const FUTURE_TOLERANCE_SECS: i64 = 86_400;

/// Unix seconds after which a row's time is from the future when the clock
/// reads `now`.
pub fn future_after(now: i64) -> i64 {
    now.saturating_add(FUTURE_TOLERANCE_SECS)
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
            } else if b + w <= t {
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
    let date = time::Date::from_calendar_date(i32::try_from(y).ok()?, month, u8::try_from(d).ok()?)
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

    #[test]
    fn epochs() {
        assert_eq!(epoch_of(ValueRef::Integer(5)), Some(5));
        assert_eq!(epoch_of(ValueRef::Real(5.7)), Some(5));
        assert_eq!(
            epoch_of(ValueRef::Text(b"1970-01-01T00:01:00.500Z")),
            Some(60)
        );
        assert_eq!(
            epoch_of(ValueRef::Text(b"1970-01-01T02:00:00+02:00")),
            Some(0)
        );
        assert_eq!(
            epoch_of(ValueRef::Text(b"1970-01-01T00:00:00-01:30")),
            Some(5400)
        );
        assert_eq!(epoch_of(ValueRef::Text(b"soon")), None);
        assert_eq!(epoch_of(ValueRef::Null), None);
    }

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
                        assert!(
                            b <= t && i128::from(t) - i128::from(b) < i128::from(w),
                            "{t} {w}"
                        )
                    }
                    Ok(other) => panic!("{other:?}"),
                    Err(Fail(m)) => assert!(m.contains("too far"), "{m}"),
                }
            }
        }
        use rusqlite::types::ValueRef::Real;
        for w in [1, 7, 60, 300, 86_400, MAX_WIDTH] {
            for t in [
                -1e300,
                -9.0e15,
                -1.5,
                -5.3e-245,
                -0.0,
                0.5,
                1e15 + 0.5,
                9.0e15,
                1e300,
                f64::MAX,
            ] {
                match bucket_of(Real(t), w) {
                    Ok(Value::Real(b)) => assert!(b <= t && b + w as f64 > t, "{t} {w} {b}"),
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
}
