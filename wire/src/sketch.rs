//! A mergeable quantile sketch (DDSketch-style) and its byte format.
//!
//! The edge summarises each time window of a metric into a [`Sketch`]; the
//! cloud merges the windows of an hour, a day or a month and asks for
//! quantiles with a known error bound. Both ends use this module, so they can
//! never disagree about the bytes.
//!
//! How it works: a positive value `x` goes into bin `i = ceil(log_γ(x))` with
//! `γ = (1 + α) / (1 − α)`, so bin `i` holds the values in `(γ^(i−1), γ^i]`.
//! Answering a quantile with the bin's representative `2γ^i / (γ + 1)` is off
//! by at most the relative accuracy `α` ([`RELATIVE_ACCURACY`], 1 %) from any
//! value in the bin. Negative values go into a second set of bins by their
//! magnitude; zero (and subnormal magnitudes) into a zero count. Bins are
//! sparse: only bins that hold a value exist. Each side keeps at most
//! [`MAX_BINS`] bins; beyond that the bins of smallest magnitude are collapsed
//! into one (their quantiles lose the bound, the upper quantiles keep it; with
//! 1 % accuracy 2048 bins cover a ratio of about 10^17 between the smallest and
//! the largest magnitude, so real telemetry never gets there). Count, sum, min
//! and max are kept exactly (the sum up to floating-point rounding).
//!
//! **Bound.** For `0 ≤ p ≤ 1`, [`Sketch::quantile`] returns a value within
//! relative error `α` of the sample of 0-based rank `floor(p · (n − 1))` in
//! sorted order (when no bin was collapsed), clamped to `[min, max]`.
//! Merging is exact: the merge of sketches equals the sketch of all samples.
//!
//! Byte format (version 1, all integers little-endian, see
//! `docs/wire-format.md`):
//!
//! ```text
//! magic "SLS" | version u8 = 1 | flags u8 = 0 | alpha f64 | count varint
//! zero_count varint | sum f64 | min f64 | max f64
//! positive bins: nbins varint, nbins × (index delta zigzag varint, count varint)
//! negative bins: the same | crc32c u32 of every byte before it
//! ```

use std::collections::BTreeMap;

use thiserror::Error;

use crate::codec::{self, Reader};

/// The relative accuracy α of every sluice sketch: a quantile is within 1 %
/// of the exact sample value.
pub const RELATIVE_ACCURACY: f64 = 0.01;
/// The most bins kept for positive values, and again for negative values.
pub const MAX_BINS: usize = 2048;
/// The first three bytes of an encoded sketch.
pub const SKETCH_MAGIC: &[u8; 3] = b"SLS";
/// The sketch format version this build writes and reads.
pub const SKETCH_FORMAT_VERSION: u8 = 1;

/// No finite value's index is outside `±KEY_LIMIT` (about ±35,500 in fact).
const KEY_LIMIT: i64 = 40_000;
/// magic + version + flags + alpha + count + zero + sum + min + max + 2 nbins + crc.
const MIN_SKETCH_BYTES: usize = 3 + 1 + 1 + 8 + 1 + 1 + 8 + 8 + 8 + 1 + 1 + 4;

/// Why bytes are not a valid sluice sketch.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum SketchError {
    #[error("not a sluice sketch: it is {len} bytes, shorter than the smallest possible sketch ({min} bytes)")]
    TooShort { len: usize, min: usize },
    #[error("not a sluice sketch: it does not start with the magic bytes \"SLS\"")]
    BadMagic,
    #[error(
        "unsupported sluice sketch format version {found} (this build reads version {supported})"
    )]
    UnsupportedVersion { found: u8, supported: u8 },
    #[error("corrupt sluice sketch: checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    ChecksumMismatch { stored: u32, computed: u32 },
    #[error("corrupt sluice sketch: {0}")]
    Malformed(String),
}

impl From<crate::error::WireError> for SketchError {
    fn from(e: crate::error::WireError) -> Self {
        // Reader errors say "sluice batch"; keep the detail, not the noun.
        let msg = e.to_string();
        let detail = msg
            .strip_prefix("corrupt sluice batch: ")
            .unwrap_or(&msg)
            .to_string();
        SketchError::Malformed(detail)
    }
}

/// A mergeable quantile sketch with relative accuracy [`RELATIVE_ACCURACY`].
#[derive(Debug, Clone, PartialEq)]
pub struct Sketch {
    positive: BTreeMap<i32, u64>,
    negative: BTreeMap<i32, u64>,
    zero_count: u64,
    count: u64,
    sum: f64,
    min: f64,
    max: f64,
}

impl Default for Sketch {
    fn default() -> Self {
        Sketch::new()
    }
}

fn gamma() -> f64 {
    (1.0 + RELATIVE_ACCURACY) / (1.0 - RELATIVE_ACCURACY)
}

fn ln_gamma() -> f64 {
    gamma().ln()
}

/// The bin of a magnitude `m >= f64::MIN_POSITIVE`.
fn key(m: f64) -> i32 {
    (m.ln() / ln_gamma()).ceil() as i32
}

/// The representative value of bin `k`: at most α from anything in it.
fn value(k: i32) -> f64 {
    let g = gamma();
    (f64::from(k) * ln_gamma()).exp() * 2.0 / (g + 1.0)
}

fn add_bin(bins: &mut BTreeMap<i32, u64>, k: i32, n: u64) {
    let c = bins.entry(k).or_insert(0);
    *c = c.saturating_add(n);
}

/// Keeps at most [`MAX_BINS`] bins by folding the lowest ones into the next.
fn collapse(bins: &mut BTreeMap<i32, u64>) {
    while bins.len() > MAX_BINS {
        if let Some((_, n)) = bins.pop_first() {
            if let Some(mut e) = bins.first_entry() {
                let c = e.get_mut();
                *c = c.saturating_add(n);
            }
        }
    }
}

impl Sketch {
    /// An empty sketch.
    pub fn new() -> Self {
        Sketch {
            positive: BTreeMap::new(),
            negative: BTreeMap::new(),
            zero_count: 0,
            count: 0,
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
        }
    }

    /// Adds one sample. NaN and infinities are not samples: they are ignored
    /// and `false` is returned (callers that must refuse them check first).
    pub fn add(&mut self, x: f64) -> bool {
        if !x.is_finite() {
            return false;
        }
        let m = x.abs();
        if m < f64::MIN_POSITIVE {
            self.zero_count += 1;
        } else if x > 0.0 {
            add_bin(&mut self.positive, key(m), 1);
            if self.positive.len() > MAX_BINS {
                collapse(&mut self.positive);
            }
        } else {
            add_bin(&mut self.negative, key(m), 1);
            if self.negative.len() > MAX_BINS {
                collapse(&mut self.negative);
            }
        }
        self.count += 1;
        self.sum += x;
        self.min = self.min.min(x);
        self.max = self.max.max(x);
        true
    }

    /// Adds every sample of `other` to `self`.
    pub fn merge(&mut self, other: &Sketch) {
        for (&k, &n) in &other.positive {
            add_bin(&mut self.positive, k, n);
        }
        for (&k, &n) in &other.negative {
            add_bin(&mut self.negative, k, n);
        }
        collapse(&mut self.positive);
        collapse(&mut self.negative);
        self.zero_count = self.zero_count.saturating_add(other.zero_count);
        self.count = self.count.saturating_add(other.count);
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    /// Number of samples.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Sum of the samples (0 when empty).
    pub fn sum(&self) -> f64 {
        self.sum
    }

    /// Smallest sample, exact; `None` when empty.
    pub fn min(&self) -> Option<f64> {
        (self.count > 0).then_some(self.min)
    }

    /// Largest sample, exact; `None` when empty.
    pub fn max(&self) -> Option<f64> {
        (self.count > 0).then_some(self.max)
    }

    /// Mean of the samples; `None` when empty.
    pub fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum / self.count as f64)
    }

    /// Number of bins in use (positive and negative), a measure of size.
    pub fn bin_count(&self) -> usize {
        self.positive.len() + self.negative.len()
    }

    /// The `p`-quantile (`0 ≤ p ≤ 1`): within [`RELATIVE_ACCURACY`] of the
    /// sample of rank `floor(p · (n − 1))`. `None` when the sketch is empty or
    /// `p` is outside `[0, 1]` or NaN.
    pub fn quantile(&self, p: f64) -> Option<f64> {
        if self.count == 0 || !(0.0..=1.0).contains(&p) {
            return None;
        }
        if p == 0.0 {
            return Some(self.min);
        }
        if p == 1.0 {
            return Some(self.max);
        }
        let rank = (p * (self.count - 1) as f64).floor() as u64;
        let mut seen: u64 = 0;
        // Negative values, most negative first.
        for (&k, &n) in self.negative.iter().rev() {
            seen = seen.saturating_add(n);
            if seen > rank {
                return Some(self.clamp(-value(k)));
            }
        }
        seen = seen.saturating_add(self.zero_count);
        if seen > rank {
            return Some(self.clamp(0.0));
        }
        for (&k, &n) in &self.positive {
            seen = seen.saturating_add(n);
            if seen > rank {
                return Some(self.clamp(value(k)));
            }
        }
        Some(self.max)
    }

    fn clamp(&self, v: f64) -> f64 {
        v.max(self.min).min(self.max)
    }

    /// The sketch's bytes (format version 1).
    pub fn encode(&self) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(MIN_SKETCH_BYTES + 4 * (self.positive.len() + self.negative.len()));
        out.extend_from_slice(SKETCH_MAGIC);
        out.push(SKETCH_FORMAT_VERSION);
        out.push(0);
        codec::put_u64(&mut out, RELATIVE_ACCURACY.to_bits());
        codec::put_varint(&mut out, self.count);
        codec::put_varint(&mut out, self.zero_count);
        codec::put_u64(&mut out, self.sum.to_bits());
        codec::put_u64(&mut out, self.min.to_bits());
        codec::put_u64(&mut out, self.max.to_bits());
        for bins in [&self.positive, &self.negative] {
            codec::put_varint(&mut out, bins.len() as u64);
            let mut prev: i64 = 0;
            for (&k, &n) in bins {
                codec::put_zigzag(&mut out, i64::from(k) - prev);
                codec::put_varint(&mut out, n);
                prev = i64::from(k);
            }
        }
        let crc = crc32c::crc32c(&out);
        codec::put_u32(&mut out, crc);
        out
    }

    /// Reads a sketch written by [`Sketch::encode`]. Any damage is an error
    /// that says what is wrong; nothing is allocated beyond what the input
    /// can justify.
    pub fn decode(bytes: &[u8]) -> Result<Sketch, SketchError> {
        if bytes.len() < MIN_SKETCH_BYTES {
            if bytes.len() >= 3 && &bytes[..3] != SKETCH_MAGIC {
                return Err(SketchError::BadMagic);
            }
            return Err(SketchError::TooShort {
                len: bytes.len(),
                min: MIN_SKETCH_BYTES,
            });
        }
        if &bytes[..3] != SKETCH_MAGIC {
            return Err(SketchError::BadMagic);
        }
        if bytes[3] != SKETCH_FORMAT_VERSION {
            return Err(SketchError::UnsupportedVersion {
                found: bytes[3],
                supported: SKETCH_FORMAT_VERSION,
            });
        }
        let (payload, crc_bytes) = bytes.split_at(bytes.len() - 4);
        let stored = u32::from_le_bytes([crc_bytes[0], crc_bytes[1], crc_bytes[2], crc_bytes[3]]);
        let computed = crc32c::crc32c(payload);
        if stored != computed {
            return Err(SketchError::ChecksumMismatch { stored, computed });
        }
        let bad = |s: &str| SketchError::Malformed(s.to_string());
        let mut r = Reader::new(&payload[4..]);
        if r.u8("flags")? != 0 {
            return Err(bad("unknown flags set"));
        }
        let alpha = f64::from_bits(r.u64("relative accuracy")?);
        if alpha.to_bits() != RELATIVE_ACCURACY.to_bits() {
            return Err(SketchError::Malformed(format!(
                "relative accuracy {alpha} is not supported (this build uses {RELATIVE_ACCURACY})"
            )));
        }
        let count = r.varint("count")?;
        let zero_count = r.varint("zero count")?;
        let sum = f64::from_bits(r.u64("sum")?);
        let min = f64::from_bits(r.u64("min")?);
        let max = f64::from_bits(r.u64("max")?);
        let mut total = zero_count;
        let mut stores = [BTreeMap::new(), BTreeMap::new()];
        for bins in stores.iter_mut() {
            let n = r.varint("bin count")?;
            // Every bin takes at least two bytes.
            if n > MAX_BINS as u64 || n > (r.remaining() / 2) as u64 {
                return Err(SketchError::Malformed(format!(
                    "{n} bins claimed, more than the limit ({MAX_BINS}) or the bytes present"
                )));
            }
            let mut prev: i64 = 0;
            for i in 0..n {
                let delta = r.zigzag("bin index")?;
                let k = prev
                    .checked_add(delta)
                    .filter(|k| k.abs() <= KEY_LIMIT)
                    .ok_or_else(|| bad("bin index out of range"))?;
                if i > 0 && delta <= 0 {
                    return Err(bad("bin indexes are not increasing"));
                }
                let c = r.varint("bin count")?;
                if c == 0 {
                    return Err(bad("empty bin"));
                }
                total = total
                    .checked_add(c)
                    .ok_or_else(|| bad("bin counts overflow"))?;
                bins.insert(k as i32, c);
                prev = k;
            }
        }
        if r.remaining() != 0 {
            return Err(SketchError::Malformed(format!(
                "{} trailing bytes",
                r.remaining()
            )));
        }
        if total != count {
            return Err(SketchError::Malformed(format!(
                "count {count} differs from the sum of the bins {total}"
            )));
        }
        if sum.is_nan() {
            return Err(bad("sum is NaN"));
        }
        if count == 0 {
            if min != f64::INFINITY || max != f64::NEG_INFINITY || sum != 0.0 {
                return Err(bad("an empty sketch with a min, max or sum"));
            }
        } else if !min.is_finite() || !max.is_finite() || min > max {
            return Err(bad("min and max are not finite or out of order"));
        }
        let [positive, negative] = stores;
        Ok(Sketch {
            positive,
            negative,
            zero_count,
            count,
            sum,
            min,
            max,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// splitmix64: a small deterministic generator, so tests need no `rand`.
    struct Rng(u64);
    impl Rng {
        fn next_u64(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
        /// Uniform in (0, 1].
        fn unit(&mut self) -> f64 {
            ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
        }
        fn normal(&mut self) -> f64 {
            let (u, v) = (self.unit(), self.unit());
            (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
        }
    }

    fn exact(sorted: &[f64], p: f64) -> f64 {
        sorted[(p * (sorted.len() - 1) as f64).floor() as usize]
    }

    fn within(est: f64, exact: f64) -> bool {
        (est - exact).abs() <= RELATIVE_ACCURACY * exact.abs() * (1.0 + 1e-9)
    }

    fn check(samples: &mut [f64], s: &Sketch, what: &str) {
        samples.sort_by(|a, b| a.total_cmp(b));
        for p in [0.0, 0.01, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 1.0] {
            let est = s.quantile(p).unwrap();
            let ex = exact(samples, p);
            assert!(within(est, ex), "{what} p{p}: sketch {est}, exact {ex}");
        }
    }

    #[test]
    fn empty_sketch_has_no_quantile() {
        let s = Sketch::new();
        assert_eq!(s.quantile(0.5), None);
        assert_eq!(s.encode().len(), 45);
        assert_eq!(s.count(), 0);
        assert_eq!(s.min(), None);
        assert_eq!(Sketch::decode(&s.encode()).unwrap(), s);
    }

    #[test]
    fn bad_p_and_non_finite_samples() {
        let mut s = Sketch::new();
        assert!(!s.add(f64::NAN));
        assert!(!s.add(f64::INFINITY));
        assert!(s.add(3.0));
        assert_eq!(s.count(), 1);
        assert_eq!(s.quantile(-0.1), None);
        assert_eq!(s.quantile(1.1), None);
        assert_eq!(s.quantile(f64::NAN), None);
        assert_eq!(s.quantile(0.5), Some(3.0));
    }

    #[test]
    fn zero_negative_and_extreme_values() {
        let mut v = vec![
            0.0,
            -0.0,
            1e-310,
            -5.0,
            -1e300,
            7.5,
            f64::MAX,
            f64::MIN_POSITIVE,
            -f64::MIN_POSITIVE,
            1.0,
        ];
        let mut s = Sketch::new();
        for &x in &v {
            s.add(x);
        }
        assert_eq!(s.min(), Some(-1e300));
        assert_eq!(s.max(), Some(f64::MAX));
        let d = Sketch::decode(&s.encode()).unwrap();
        assert_eq!(d, s);
        // Subnormals count as zero: compare against the data with them zeroed.
        for x in v.iter_mut() {
            if x.abs() < f64::MIN_POSITIVE {
                *x = 0.0;
            }
        }
        check(&mut v, &d, "extremes");
    }

    #[test]
    fn one_million_skewed_samples_and_288_merged_windows() {
        let n: usize = 1_000_000;
        let mut rng = Rng(42);
        type Dist = Box<dyn Fn(&mut Rng) -> f64>;
        let dists: [(&str, Dist); 3] = [
            (
                "lognormal",
                Box::new(|r: &mut Rng| (1.0 + 1.5 * r.normal()).exp()),
            ),
            (
                "pareto",
                Box::new(|r: &mut Rng| 2.0 / r.unit().powf(1.0 / 1.2)),
            ),
            ("exponential", Box::new(|r: &mut Rng| -r.unit().ln() * 40.0)),
        ];
        for (name, f) in dists.iter() {
            let mut samples: Vec<f64> = (0..n).map(|_| f(&mut rng)).collect();
            let mut whole = Sketch::new();
            for &x in &samples {
                whole.add(x);
            }
            // A day of five-minute windows, each through its bytes.
            let mut day = Sketch::new();
            for chunk in samples.chunks(n.div_ceil(288)) {
                let mut w = Sketch::new();
                for &x in chunk {
                    w.add(x);
                }
                day.merge(&Sketch::decode(&w.encode()).unwrap());
            }
            assert_eq!(day.count(), n as u64);
            check(&mut samples, &whole, name);
            check(&mut samples, &day, &format!("{name}, 288 merged"));
            assert!(whole.bin_count() < 2048, "{name}: {}", whole.bin_count());
        }
    }

    #[test]
    fn collapsing_keeps_the_upper_quantiles() {
        let mut s = Sketch::new();
        let mut v = Vec::new();
        // 1e-300 .. 1e300 spans far more than MAX_BINS bins.
        let mut x = 1e-300;
        while x < 1e300 {
            s.add(x);
            v.push(x);
            x *= 1.05;
        }
        assert!(s.bin_count() <= MAX_BINS);
        v.sort_by(|a, b| a.total_cmp(b));
        // About 28,000 values one per bin: the top 2048 keep their own bins.
        for p in [0.95, 0.99, 0.999] {
            assert!(within(s.quantile(p).unwrap(), exact(&v, p)));
        }
        assert_eq!(Sketch::decode(&s.encode()).unwrap(), s);
    }

    #[test]
    fn decode_errors_say_what_is_wrong() {
        let mut s = Sketch::new();
        s.add(1.0);
        let good = s.encode();
        assert!(matches!(
            Sketch::decode(b"nope"),
            Err(SketchError::BadMagic) | Err(SketchError::TooShort { .. })
        ));
        assert!(matches!(
            Sketch::decode(&[0u8; 64]),
            Err(SketchError::BadMagic)
        ));
        let mut v = good.clone();
        v[3] = 9;
        assert!(matches!(
            Sketch::decode(&v),
            Err(SketchError::UnsupportedVersion { found: 9, .. })
        ));
        let mut v = good.clone();
        v[20] ^= 1;
        let e = Sketch::decode(&v).unwrap_err();
        assert!(e.to_string().contains("checksum"), "{e}");
        assert!(matches!(
            Sketch::decode(&good[..good.len() - 1]),
            Err(SketchError::ChecksumMismatch { .. }) | Err(SketchError::TooShort { .. })
        ));
    }

    /// Re-frames a payload with a correct CRC, to reach the parser's checks.
    fn framed(mut payload: Vec<u8>) -> Vec<u8> {
        let crc = crc32c::crc32c(&payload);
        payload.extend_from_slice(&crc.to_le_bytes());
        payload
    }

    #[test]
    fn hostile_bin_counts_are_refused_without_allocation() {
        let mut p = Vec::new();
        p.extend_from_slice(SKETCH_MAGIC);
        p.push(1);
        p.push(0);
        codec::put_u64(&mut p, RELATIVE_ACCURACY.to_bits());
        codec::put_varint(&mut p, 5);
        codec::put_varint(&mut p, 0);
        for _ in 0..3 {
            codec::put_u64(&mut p, 1.0f64.to_bits());
        }
        codec::put_varint(&mut p, u64::MAX);
        codec::put_varint(&mut p, 0);
        let e = Sketch::decode(&framed(p)).unwrap_err();
        assert!(e.to_string().contains("bins claimed"), "{e}");
    }

    proptest! {
        #[test]
        fn round_trip_and_merge_equals_union(
            a in proptest::collection::vec(-1e6f64..1e6, 0..200),
            b in proptest::collection::vec(prop_oneof![Just(0.0), 1e-12f64..1e12], 0..200),
        ) {
            let (mut sa, mut sb, mut all) = (Sketch::new(), Sketch::new(), Sketch::new());
            for &x in &a { sa.add(x); all.add(x); }
            for &x in &b { sb.add(x); all.add(x); }
            prop_assert_eq!(&Sketch::decode(&sa.encode()).unwrap(), &sa);
            sa.merge(&sb);
            prop_assert_eq!(sa.count(), all.count());
            prop_assert_eq!(&sa.positive, &all.positive);
            prop_assert_eq!(&sa.negative, &all.negative);
            prop_assert_eq!(sa.min(), all.min());
            prop_assert_eq!(sa.max(), all.max());
            for p in [0.0, 0.1, 0.5, 0.95, 1.0] {
                prop_assert_eq!(sa.quantile(p), all.quantile(p));
            }
        }

        #[test]
        fn quantiles_within_bound(v in proptest::collection::vec(
            prop_oneof![-1e9f64..-1e-9, Just(0.0), 1e-9f64..1e9], 1..300), p in 0.0f64..=1.0) {
            let mut s = Sketch::new();
            for &x in &v { s.add(x); }
            let mut sorted = v.clone();
            sorted.sort_by(|a, b| a.total_cmp(b));
            let est = s.quantile(p).unwrap();
            let ex = exact(&sorted, p);
            prop_assert!(within(est, ex), "p{} sketch {} exact {}", p, est, ex);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Sketch::decode(&bytes);
            let mut with_magic = SKETCH_MAGIC.to_vec();
            with_magic.push(1);
            with_magic.extend_from_slice(&bytes);
            let _ = Sketch::decode(&framed(with_magic));
        }

        #[test]
        fn any_flipped_bit_is_detected(v in proptest::collection::vec(-1e3f64..1e3, 1..50),
                                        pos in any::<prop::sample::Index>(), bit in 0u8..8) {
            let mut s = Sketch::new();
            for &x in &v { s.add(x); }
            let mut bytes = s.encode();
            let i = pos.index(bytes.len());
            bytes[i] ^= 1 << bit;
            prop_assert!(Sketch::decode(&bytes).is_err());
        }
    }
}
