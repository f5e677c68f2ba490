//! Message and reply files: a sequence of records, each a u32 little-endian length followed
//! by that many bytes. The format of `roam exec --messages` and `--out`.

use std::io::{self, Read, Write};

/// The largest record a reader accepts (1 GiB), so a corrupt length cannot make it allocate
/// without bound.
pub const MAX_RECORD: u32 = 1 << 30;

/// A record file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadRecordError {
    /// record {index} at byte {offset} claims {len} bytes, more than the 1 GiB a record may hold
    #[error(
        "record {index} at byte {offset} claims {len} bytes, more than the 1 GiB a record may hold"
    )]
    TooLarge {
        /// Which record (from 0).
        index: u64,
        /// Where its length starts.
        offset: u64,
        /// The length it claims.
        len: u32,
    },
    /// record {index} at byte {offset} is cut short: the file ends inside it
    #[error("record {index} at byte {offset} is cut short: the file ends inside it")]
    Truncated {
        /// Which record (from 0).
        index: u64,
        /// Where it starts.
        offset: u64,
    },
    /// reading records failed: {0}
    #[error("reading records failed: {0}")]
    Io(#[from] io::Error),
}

/// Reads records one at a time.
pub struct RecordReader<R> {
    inner: R,
    index: u64,
    offset: u64,
}

impl<R: Read> RecordReader<R> {
    /// Reads records from `inner` (wrap files in a `BufReader`).
    pub fn new(inner: R) -> Self {
        RecordReader {
            inner,
            index: 0,
            offset: 0,
        }
    }

    /// The next record, `None` at a clean end of input.
    pub fn next_record(&mut self) -> Result<Option<Vec<u8>>, ReadRecordError> {
        let mut len = [0u8; 4];
        let got = read_full(&mut self.inner, &mut len)?;
        if got == 0 {
            return Ok(None);
        }
        let truncated = ReadRecordError::Truncated {
            index: self.index,
            offset: self.offset,
        };
        if got < 4 {
            return Err(truncated);
        }
        let len = u32::from_le_bytes(len);
        if len > MAX_RECORD {
            return Err(ReadRecordError::TooLarge {
                index: self.index,
                offset: self.offset,
                len,
            });
        }
        let mut body = Vec::new();
        let got = (&mut self.inner)
            .take(u64::from(len))
            .read_to_end(&mut body)?;
        if got < len as usize {
            return Err(truncated);
        }
        self.index += 1;
        self.offset += 4 + u64::from(len);
        Ok(Some(body))
    }
}

impl<R: Read> Iterator for RecordReader<R> {
    type Item = Result<Vec<u8>, ReadRecordError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_record().transpose()
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Writes one record.
pub fn write_record(w: &mut impl Write, body: &[u8]) -> io::Result<()> {
    let len = u32::try_from(body.len())
        .ok()
        .filter(|&l| l <= MAX_RECORD)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "record over 1 GiB"))?;
    w.write_all(&len.to_le_bytes())?;
    w.write_all(body)
}

/// Encodes records into one buffer (for tests and generated inputs).
pub fn encode_records<'a>(records: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    for r in records {
        write_record(&mut out, r).expect("writing to a Vec cannot fail for records under 1 GiB");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let bytes = encode_records([&b"one"[..], b"", b"three"]);
        let back: Vec<Vec<u8>> = RecordReader::new(&bytes[..]).map(Result::unwrap).collect();
        assert_eq!(back, vec![b"one".to_vec(), vec![], b"three".to_vec()]);
    }

    #[test]
    fn truncated_length_and_body_are_refused() {
        let bytes = encode_records([&b"hello"[..]]);
        for cut in 1..bytes.len() {
            let err = RecordReader::new(&bytes[..cut]).next_record().unwrap_err();
            assert!(
                matches!(
                    err,
                    ReadRecordError::Truncated {
                        index: 0,
                        offset: 0
                    }
                ),
                "{err}"
            );
        }
    }

    #[test]
    fn oversize_length_is_refused_before_allocating() {
        let bytes = u32::MAX.to_le_bytes();
        let err = RecordReader::new(&bytes[..]).next_record().unwrap_err();
        assert!(matches!(
            err,
            ReadRecordError::TooLarge { len: u32::MAX, .. }
        ));
    }
}
