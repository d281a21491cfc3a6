//! A bounds-checked big-endian reader shared by the Kafka and CQL decoders.

use anyhow::{Result, bail};

/// Reads big-endian primitives from a byte slice, failing (never panicking) on truncation.
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|end| *end <= self.buf.len());
        let Some(end) = end else {
            bail!(
                "truncated message: wanted {n} bytes at offset {}, have {}",
                self.pos,
                self.buf.len() - self.pos
            );
        };
        let bytes = &self.buf[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    pub(crate) fn i16(&mut self) -> Result<i16> {
        Ok(i16::from_be_bytes(self.array()?))
    }

    pub(crate) fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    pub(crate) fn i32(&mut self) -> Result<i32> {
        Ok(i32::from_be_bytes(self.array()?))
    }

    /// `n` bytes as (lossy) UTF-8.
    pub(crate) fn utf8(&mut self, n: usize) -> Result<String> {
        Ok(String::from_utf8_lossy(self.take(n)?).into_owned())
    }

    /// A length read as a signed number; negative means "null".
    pub(crate) fn len_or_null(len: i64) -> Option<usize> {
        usize::try_from(len).ok()
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
}

/// Appends a big-endian u16 length followed by `s`.
pub(crate) fn put_short_string(out: &mut Vec<u8>, s: &str) {
    let len = u16::try_from(s.len()).expect("short string longer than 65535 bytes");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_rejects_truncation() {
        let mut r = Reader::new(&[0, 1, 0xff, 0xfe, 0, 0, 0, 7, b'a']);
        assert_eq!(r.u16().unwrap(), 1);
        assert_eq!(r.i16().unwrap(), -2);
        assert_eq!(r.i32().unwrap(), 7);
        assert_eq!(r.remaining(), 1);
        assert!(r.i16().is_err());
        assert_eq!(r.utf8(1).unwrap(), "a");
        assert_eq!(Reader::len_or_null(-1), None);
        assert_eq!(Reader::len_or_null(3), Some(3));
    }
}
