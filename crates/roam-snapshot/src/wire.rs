//! Little-endian primitives for the encoders and a bounds-checked reader for the
//! decoders. The reader never hands out more bytes than remain, and checks every count
//! against the remaining input before a caller sizes an allocation by it.

use crate::DecodeSnapshotError;

/// Appends little-endian integers to a buffer.
pub(crate) trait PutLe {
    fn put_u8(&mut self, v: u8);
    fn put_u16(&mut self, v: u16);
    fn put_u32(&mut self, v: u32);
    fn put_u64(&mut self, v: u64);
    fn put_u128(&mut self, v: u128);
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
}

/// Reads from a byte slice, refusing to read past its end.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes }
    }

    /// Takes the next `len` bytes; `what` names the structure for the error.
    pub(crate) fn take(
        &mut self,
        len: usize,
        what: &'static str,
    ) -> Result<&'a [u8], DecodeSnapshotError> {
        if len > self.bytes.len() {
            return Err(DecodeSnapshotError::Truncated { what });
        }
        let (head, tail) = self.bytes.split_at(len);
        self.bytes = tail;
        Ok(head)
    }

    fn array<const N: usize>(
        &mut self,
        what: &'static str,
    ) -> Result<[u8; N], DecodeSnapshotError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, DecodeSnapshotError> {
        Ok(self.array::<1>(what)?[0])
    }

    pub(crate) fn u16(&mut self, what: &'static str) -> Result<u16, DecodeSnapshotError> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }

    pub(crate) fn u32(&mut self, what: &'static str) -> Result<u32, DecodeSnapshotError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    pub(crate) fn u64(&mut self, what: &'static str) -> Result<u64, DecodeSnapshotError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    pub(crate) fn u128(&mut self, what: &'static str) -> Result<u128, DecodeSnapshotError> {
        Ok(u128::from_le_bytes(self.array(what)?))
    }

    pub(crate) fn bytes32(&mut self, what: &'static str) -> Result<[u8; 32], DecodeSnapshotError> {
        self.array(what)
    }

    /// Checks that `count` items of at least `min_item_len` bytes each can still be in the
    /// input, so that a capacity sized by `count` is bounded by the input's length.
    pub(crate) fn check_room(
        &self,
        count: u64,
        min_item_len: u64,
        what: &'static str,
    ) -> Result<usize, DecodeSnapshotError> {
        match count.checked_mul(min_item_len) {
            Some(need) if need <= self.bytes.len() as u64 => {
                // Fits in the remaining input, so it fits in usize.
                Ok(count as usize)
            }
            _ => Err(DecodeSnapshotError::Truncated { what }),
        }
    }

    /// Succeeds only when every byte has been read.
    pub(crate) fn finish(self, what: &'static str) -> Result<(), DecodeSnapshotError> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(DecodeSnapshotError::TrailingBytes {
                what,
                count: self.bytes.len(),
            })
        }
    }
}

/// Checks an input's size cap, trailing checksum, magic and version, in that order and
/// before anything else is read, and returns the bytes between the header and the checksum.
///
/// Every framed structure has the same header: `magic`, a `u16` version, `u16` flags
/// (reserved, zero), and ends with the xxh3-64 of all the bytes before the checksum.
pub(crate) fn unframe<'a>(
    bytes: &'a [u8],
    max_len: u64,
    magic: &[u8],
    what: &'static str,
) -> Result<&'a [u8], DecodeSnapshotError> {
    let len = bytes.len() as u64;
    if len > max_len {
        return Err(DecodeSnapshotError::TooLarge { len, max: max_len });
    }
    let header_len = magic.len() + 4;
    if bytes.len() < header_len + CHECKSUM_LEN {
        return Err(DecodeSnapshotError::Truncated { what });
    }
    let (covered, stored) = bytes.split_at(bytes.len() - CHECKSUM_LEN);
    let mut stored_bytes = [0u8; CHECKSUM_LEN];
    stored_bytes.copy_from_slice(stored);
    let stored = u64::from_le_bytes(stored_bytes);
    let computed = checksum(covered);
    if stored != computed {
        return Err(DecodeSnapshotError::ChecksumMismatch {
            what,
            stored,
            computed,
        });
    }
    let mut reader = Reader::new(covered);
    if reader.take(magic.len(), what)? != magic {
        return Err(DecodeSnapshotError::BadMagic { what });
    }
    let version = reader.u16(what)?;
    if !(crate::MIN_READ_VERSION..=crate::FORMAT_VERSION).contains(&version) {
        return Err(DecodeSnapshotError::UnsupportedVersion {
            what,
            version,
            min: crate::MIN_READ_VERSION,
            max: crate::FORMAT_VERSION,
        });
    }
    let flags = reader.u16(what)?;
    if flags != 0 {
        return Err(DecodeSnapshotError::ReservedFlags { what, flags });
    }
    Ok(reader.bytes)
}

/// Starts a framed structure: magic, version, flags.
pub(crate) fn frame_start(out: &mut Vec<u8>, magic: &[u8]) {
    out.extend_from_slice(magic);
    out.put_u16(crate::FORMAT_VERSION);
    out.put_u16(0);
}

/// Ends a framed structure that started at `start`: appends the checksum of its bytes.
pub(crate) fn frame_end(out: &mut Vec<u8>, start: usize) {
    let sum = checksum(&out[start..]);
    out.put_u64(sum);
}

/// Bytes of the trailing checksum.
pub(crate) const CHECKSUM_LEN: usize = 8;

/// The integrity checksum: xxh3-64, which runs at memory speed where a CRC would not on
/// every target (wasm32 has no carry-less multiply).
pub(crate) fn checksum(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_checks_do_not_overflow() {
        let reader = Reader::new(&[0u8; 16]);
        assert_eq!(reader.check_room(4, 4, "x"), Ok(4));
        assert!(reader.check_room(5, 4, "x").is_err());
        // count * size overflows u64: refused, not wrapped around to something small.
        assert!(reader.check_room(u64::MAX, 2, "x").is_err());
        assert!(reader.check_room(1 << 62, 4, "x").is_err());
    }

    #[test]
    fn frames_are_checked_in_order() {
        let mut framed = Vec::new();
        frame_start(&mut framed, b"MAGC");
        framed.extend_from_slice(b"body");
        frame_end(&mut framed, 0);
        assert_eq!(unframe(&framed, 100, b"MAGC", "t"), Ok(&b"body"[..]));
        assert!(matches!(
            unframe(&framed, 10, b"MAGC", "t"),
            Err(DecodeSnapshotError::TooLarge { .. })
        ));
        assert!(matches!(
            unframe(&framed, 100, b"OTHR", "t"),
            Err(DecodeSnapshotError::BadMagic { what: "t" })
        ));
    }
}
