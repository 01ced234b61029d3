//! Low-level byte readers and writers used by the batch format: fixed-width
//! little-endian integers, LEB128 varints, zigzag signed varints, and
//! length-prefixed strings. The [`Reader`] never panics: every read checks the
//! remaining length first and reports what it was reading when it ran out.

use crate::error::WireError;

/// A cursor over untrusted bytes.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    pub fn position(&self) -> usize {
        self.pos
    }

    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], WireError> {
        if n > self.remaining() {
            return Err(WireError::Truncated {
                what,
                needed: n,
                available: self.remaining(),
            });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    pub fn u8(&mut self, what: &'static str) -> Result<u8, WireError> {
        Ok(self.take(1, what)?[0])
    }

    pub fn u16(&mut self, what: &'static str) -> Result<u16, WireError> {
        let b = self.take(2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    pub fn u32(&mut self, what: &'static str) -> Result<u32, WireError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn u64(&mut self, what: &'static str) -> Result<u64, WireError> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    pub fn i64(&mut self, what: &'static str) -> Result<i64, WireError> {
        Ok(self.u64(what)? as i64)
    }

    /// An unsigned LEB128 varint of at most 10 bytes.
    pub fn varint(&mut self, what: &'static str) -> Result<u64, WireError> {
        let mut result: u64 = 0;
        for i in 0..10 {
            let byte = self.u8(what)?;
            if i == 9 && byte > 1 {
                return Err(WireError::malformed(format!(
                    "varint overflows 64 bits in {what}"
                )));
            }
            result |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(result);
            }
        }
        Err(WireError::malformed(format!(
            "varint longer than 10 bytes in {what}"
        )))
    }

    pub fn zigzag(&mut self, what: &'static str) -> Result<i64, WireError> {
        let v = self.varint(what)?;
        Ok(((v >> 1) as i64) ^ -((v & 1) as i64))
    }

    /// A string with a u16 length prefix (names: devices, tables, columns).
    pub fn str16(&mut self, what: &'static str) -> Result<String, WireError> {
        let n = self.u16(what)? as usize;
        let b = self.take(n, what)?;
        String::from_utf8(b.to_vec())
            .map_err(|_| WireError::malformed(format!("{what} is not valid UTF-8")))
    }

    /// Bytes with a varint length prefix (text and blob values).
    pub fn bytes_varint(&mut self, what: &'static str) -> Result<&'a [u8], WireError> {
        let n = self.varint(what)?;
        if n > self.remaining() as u64 {
            return Err(WireError::Truncated {
                what,
                needed: usize::try_from(n).unwrap_or(usize::MAX),
                available: self.remaining(),
            });
        }
        self.take(n as usize, what)
    }
}

pub fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_le_bytes());
}

pub fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

pub fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub fn put_zigzag(out: &mut Vec<u8>, v: i64) {
    put_varint(out, ((v << 1) ^ (v >> 63)) as u64);
}

/// Writes a u16-length-prefixed string; `what` names it in the error.
pub fn put_str16(out: &mut Vec<u8>, s: &str, what: &str) -> Result<(), WireError> {
    let n = u16::try_from(s.len()).map_err(|_| {
        WireError::invalid(format!("{what} is {} bytes, the limit is 65535", s.len()))
    })?;
    put_u16(out, n);
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

pub fn put_bytes_varint(out: &mut Vec<u8>, b: &[u8]) {
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip_at_the_edges() {
        for v in [0u64, 1, 127, 128, 300, u32::MAX as u64, u64::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(Reader::new(&out).varint("v").unwrap(), v);
        }
        for v in [0i64, -1, 1, i64::MIN, i64::MAX, -300] {
            let mut out = Vec::new();
            put_zigzag(&mut out, v);
            assert_eq!(Reader::new(&out).zigzag("v").unwrap(), v);
        }
    }

    #[test]
    fn overlong_varint_is_an_error() {
        let bytes = [0xffu8; 11];
        assert!(Reader::new(&bytes).varint("v").is_err());
        let bytes = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02];
        assert!(Reader::new(&bytes).varint("v").is_err());
    }

    #[test]
    fn truncation_names_the_field() {
        let err = Reader::new(&[1, 2]).u32("row count").unwrap_err();
        assert!(err.to_string().contains("row count"), "{err}");
    }
}
