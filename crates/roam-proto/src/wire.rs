//! Little-endian primitives for the encoder and a bounds-checked reader for the decoder.
//! The reader never hands out more bytes than remain, and checks every length and count
//! against the remaining input (and the caps) before a caller sizes an allocation by it.

use crate::DecodeFrameError;

/// Longest string a frame carries, in bytes of UTF-8.
pub const MAX_STRING_LEN: usize = 4096;

/// Appends little-endian values to a buffer.
pub(crate) trait PutLe {
    fn put_u8(&mut self, v: u8);
    fn put_u16(&mut self, v: u16);
    fn put_u32(&mut self, v: u32);
    fn put_u64(&mut self, v: u64);
    fn put_u128(&mut self, v: u128);
    fn put_bool(&mut self, v: bool);
    fn put_str(&mut self, s: &str);
    fn put_blob(&mut self, b: &[u8]);
    fn put_count(&mut self, n: usize);
}

impl PutLe for Vec<u8> {
    fn put_u8(&mut self, v: u8) {
        self.push(v);
    }
    fn put_u16(&mut self, v: u16) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    fn put_u32(&mut self, v: u32) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    fn put_u64(&mut self, v: u64) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    fn put_u128(&mut self, v: u128) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    fn put_bool(&mut self, v: bool) {
        self.push(u8::from(v));
    }
    /// Writes a string, cut to [`MAX_STRING_LEN`] bytes at a character boundary: text on
    /// the wire is for people and addresses, and a frame that its receiver refuses would
    /// lose more than the tail of an over-long message.
    fn put_str(&mut self, s: &str) {
        let s = truncate(s);
        // MAX_STRING_LEN fits in u16.
        self.put_u16(s.len() as u16);
        self.extend_from_slice(s.as_bytes());
    }
    fn put_blob(&mut self, b: &[u8]) {
        self.put_count(b.len());
        self.extend_from_slice(b);
    }
    fn put_count(&mut self, n: usize) {
        let n = u32::try_from(n).expect("a frame field holds fewer than 2^32 bytes or items");
        self.put_u32(n);
    }
}

/// `s` cut to at most [`MAX_STRING_LEN`] bytes, at a character boundary.
pub(crate) fn truncate(s: &str) -> &str {
    if s.len() <= MAX_STRING_LEN {
        return s;
    }
    let mut end = MAX_STRING_LEN;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Reads from a byte slice, refusing to read past its end.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    /// The frame being read, for error messages.
    frame: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8], frame: &'static str) -> Self {
        Reader { bytes, frame }
    }

    pub(crate) fn take(&mut self, len: usize) -> Result<&'a [u8], DecodeFrameError> {
        if len > self.bytes.len() {
            return Err(DecodeFrameError::Truncated { frame: self.frame });
        }
        let (head, tail) = self.bytes.split_at(len);
        self.bytes = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeFrameError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeFrameError> {
        Ok(self.array::<1>()?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16, DecodeFrameError> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, DecodeFrameError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, DecodeFrameError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    pub(crate) fn u128(&mut self) -> Result<u128, DecodeFrameError> {
        Ok(u128::from_le_bytes(self.array()?))
    }

    pub(crate) fn bytes32(&mut self) -> Result<[u8; 32], DecodeFrameError> {
        self.array()
    }

    /// A one-byte tag that must be one of `0..count`; `field` names it for the error.
    pub(crate) fn tag(&mut self, field: &'static str, count: u8) -> Result<u8, DecodeFrameError> {
        let tag = self.u8()?;
        if tag < count {
            Ok(tag)
        } else {
            Err(DecodeFrameError::InvalidTag {
                frame: self.frame,
                field,
                tag,
            })
        }
    }

    pub(crate) fn bool(&mut self, field: &'static str) -> Result<bool, DecodeFrameError> {
        Ok(self.tag(field, 2)? == 1)
    }

    /// A `u16`-length UTF-8 string of at most [`MAX_STRING_LEN`] bytes.
    pub(crate) fn string(&mut self, field: &'static str) -> Result<String, DecodeFrameError> {
        let len = usize::from(self.u16()?);
        if len > MAX_STRING_LEN {
            return Err(DecodeFrameError::StringTooLong {
                frame: self.frame,
                field,
                len,
                max: MAX_STRING_LEN,
            });
        }
        let bytes = self.take(len)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_owned()),
            Err(_) => Err(DecodeFrameError::InvalidUtf8 {
                frame: self.frame,
                field,
            }),
        }
    }

    /// A `u32`-length blob; the bytes are taken (so bounded by the input) before they are
    /// copied.
    pub(crate) fn blob(&mut self) -> Result<Vec<u8>, DecodeFrameError> {
        let len = self.u32()?;
        let len =
            usize::try_from(len).map_err(|_| DecodeFrameError::Truncated { frame: self.frame })?;
        Ok(self.take(len)?.to_vec())
    }

    /// A `u32` count of at most `max_items` items of at least `min_item_len` bytes each,
    /// checked against the remaining input so that a capacity sized by it is bounded by the input's length.
    pub(crate) fn count(
        &mut self,
        min_item_len: u64,
        max_items: u32,
    ) -> Result<usize, DecodeFrameError> {
        let count = self.u32()?;
        if count > max_items {
            return Err(DecodeFrameError::TooManyItems {
                frame: self.frame,
                count,
                max: max_items,
            });
        }
        let count = u64::from(count);
        match count.checked_mul(min_item_len) {
            // Fits in the remaining input, so it fits in usize.
            Some(need) if need <= self.bytes.len() as u64 => Ok(count as usize),
            _ => Err(DecodeFrameError::Truncated { frame: self.frame }),
        }
    }

    /// Succeeds only when every byte has been read.
    pub(crate) fn finish(self) -> Result<(), DecodeFrameError> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(DecodeFrameError::TrailingBytes {
                frame: self.frame,
                count: self.bytes.len(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_strings_are_cut_at_a_character_boundary() {
        let s = "é".repeat(MAX_STRING_LEN); // two bytes each
        let cut = truncate(&s);
        assert_eq!(cut.len(), MAX_STRING_LEN);
        let s = format!("a{}", "é".repeat(MAX_STRING_LEN));
        assert_eq!(truncate(&s).len(), MAX_STRING_LEN - 1);
    }

    #[test]
    fn counts_do_not_overflow() {
        let mut bytes = Vec::new();
        bytes.put_u32(u32::MAX);
        bytes.extend_from_slice(&[0; 16]);
        assert!(Reader::new(&bytes, "x").count(1 << 40, u32::MAX).is_err());
        assert!(Reader::new(&bytes, "x").count(1, u32::MAX).is_err());
        let mut bytes = Vec::new();
        bytes.put_u32(2);
        bytes.extend_from_slice(&[0; 16]);
        assert_eq!(Reader::new(&bytes, "x").count(8, 2), Ok(2));
        assert!(Reader::new(&bytes, "x").count(9, 2).is_err());
        assert!(Reader::new(&bytes, "x").count(8, 1).is_err());
    }
}
