//! Chunks: cutting a memory into fixed-size chunks, finding the zero ones, naming the
//! others by content hash, and compressing one chunk into a self-verifying [`ChunkBody`]
//! that can travel on its own.

use std::collections::HashSet;
use std::hash::{BuildHasherDefault, Hasher};

use crate::model::{valid_chunk_size, ChunkHash, ChunkRef, MAX_CHUNK_SIZE, WASM_PAGE_SIZE};
use crate::wire::{PutLe, Reader};
use crate::{CaptureSnapshotError, DecodeSnapshotError, RestoreMemoryError};

/// The content hash of a chunk: xxh3-128 of its bytes.
pub fn hash_chunk(chunk: &[u8]) -> ChunkHash {
    xxhash_rust::xxh3::xxh3_128(chunk)
}

/// Whether every byte of `chunk` is zero.
///
/// OR-folds 256-byte blocks as `u64` words, which the compiler turns into vector ORs,
/// and stops at the first block that is not zero, so dense memory costs one block per
/// chunk. Measured in `examples/chunk_size.rs` against a byte-wise `all` (an order of
/// magnitude slower on zero memory) and a whole-chunk fold (reads all of a dense chunk).
pub(crate) fn is_zero(chunk: &[u8]) -> bool {
    const BLOCK: usize = 256;
    let mut blocks = chunk.chunks_exact(BLOCK);
    for block in &mut blocks {
        let mut acc = 0u64;
        for word in block.chunks_exact(8) {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(word);
            acc |= u64::from_ne_bytes(bytes);
        }
        if acc != 0 {
            return false;
        }
    }
    blocks.remainder().iter().all(|&b| b == 0)
}

/// Checks that `memory` can be cut into chunks of `chunk_size` that the format can index.
pub(crate) fn check_memory(memory_len: usize, chunk_size: u32) -> Result<(), CaptureSnapshotError> {
    if !valid_chunk_size(chunk_size) {
        return Err(CaptureSnapshotError::InvalidChunkSize { chunk_size });
    }
    let len = memory_len as u64;
    if !len.is_multiple_of(u64::from(WASM_PAGE_SIZE)) {
        return Err(CaptureSnapshotError::MemoryNotPageMultiple { len });
    }
    // Chunk indices and the chunk count are u32.
    let max = u64::from(u32::MAX) * u64::from(chunk_size);
    if len > max {
        return Err(CaptureSnapshotError::MemoryTooLarge { len, max });
    }
    Ok(())
}

/// Hashes every non-zero chunk of `memory` and returns them in ascending index order;
/// zero chunks are left out.
///
/// This is the chunk map a snapshot's manifest carries. Comparing two chunk maps of the
/// same memory taken at different times tells which chunks changed, which is how pre-copy
/// finds dirty memory without instrumenting stores.
///
/// `chunk_size` must be a power of two between 4 KiB and 64 KiB, and `memory` a whole
/// number of 64 KiB pages.
pub fn chunk_map(memory: &[u8], chunk_size: u32) -> Result<Vec<ChunkRef>, CaptureSnapshotError> {
    check_memory(memory.len(), chunk_size)?;
    let mut chunks = Vec::new();
    for (index, chunk) in memory.chunks_exact(chunk_size as usize).enumerate() {
        if !is_zero(chunk) {
            chunks.push(ChunkRef {
                // check_memory bounds the chunk count by u32::MAX.
                index: index as u32,
                hash: hash_chunk(chunk),
            });
        }
    }
    Ok(chunks)
}

/// A hasher for keys that already are good hashes: it keeps the low 64 bits.
#[derive(Default)]
pub(crate) struct PrehashedHasher(u64);

impl Hasher for PrehashedHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only reached for keys other than u128; fold them in so it stays correct.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u128(&mut self, v: u128) {
        self.0 = v as u64;
    }
}

/// A set of chunk hashes, hashed by their own low bits.
pub(crate) type HashSetOfChunks = HashSet<ChunkHash, BuildHasherDefault<PrehashedHasher>>;

/// How a chunk body's bytes are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChunkEncoding {
    /// The raw chunk bytes, for chunks that lz4 does not make smaller.
    Raw,
    /// An lz4 block (no frame, no size prefix).
    Lz4,
}

impl ChunkEncoding {
    fn tag(self) -> u8 {
        match self {
            ChunkEncoding::Raw => 0,
            ChunkEncoding::Lz4 => 1,
        }
    }
}

/// Encoded bytes of a chunk body besides its payload: hash, raw length, encoding, length.
pub(crate) const BODY_HEADER_LEN: usize = 16 + 4 + 1 + 4;

/// One chunk's content, compressed, named by the hash of its raw bytes.
///
/// A body verifies itself: [`decompress_into`](ChunkBody::decompress_into) checks the
/// hash, so bodies can be fetched one by one from anywhere that holds them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ChunkBody {
    hash: ChunkHash,
    raw_len: u32,
    encoding: ChunkEncoding,
    bytes: Vec<u8>,
}

impl ChunkBody {
    /// Compresses one chunk (up to 64 KiB), or keeps it raw when lz4 does not shrink it.
    pub fn compress(chunk: &[u8]) -> Result<ChunkBody, CaptureSnapshotError> {
        if chunk.is_empty() || chunk.len() > MAX_CHUNK_SIZE as usize {
            return Err(CaptureSnapshotError::ChunkLength {
                len: chunk.len(),
                max: MAX_CHUNK_SIZE,
            });
        }
        let mut scratch = Vec::new();
        Ok(Self::compress_hashed(
            chunk,
            hash_chunk(chunk),
            &mut scratch,
        ))
    }

    /// Compresses a chunk of at most `MAX_CHUNK_SIZE` bytes whose hash is known, using
    /// `scratch` as the compressor's output buffer so a capture allocates it once.
    pub(crate) fn compress_hashed(
        chunk: &[u8],
        hash: ChunkHash,
        scratch: &mut Vec<u8>,
    ) -> ChunkBody {
        debug_assert!(!chunk.is_empty() && chunk.len() <= MAX_CHUNK_SIZE as usize);
        let raw_len = chunk.len() as u32;
        let bound = lz4_flex::block::get_maximum_output_size(chunk.len());
        if scratch.len() < bound {
            scratch.resize(bound, 0);
        }
        match lz4_flex::block::compress_into(chunk, scratch) {
            Ok(len) if len < chunk.len() => ChunkBody {
                hash,
                raw_len,
                encoding: ChunkEncoding::Lz4,
                bytes: scratch[..len].to_vec(),
            },
            // Not smaller (or, never with a full-size buffer, did not fit): keep it raw.
            _ => ChunkBody {
                hash,
                raw_len,
                encoding: ChunkEncoding::Raw,
                bytes: chunk.to_vec(),
            },
        }
    }

    /// Hash of the chunk's raw bytes.
    pub fn hash(&self) -> ChunkHash {
        self.hash
    }

    /// Length of the chunk's raw bytes.
    pub fn raw_len(&self) -> u32 {
        self.raw_len
    }

    /// How the bytes are stored.
    pub fn encoding(&self) -> ChunkEncoding {
        self.encoding
    }

    /// The stored bytes (compressed unless the encoding is [`ChunkEncoding::Raw`]).
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Length of [`encode`](ChunkBody::encode)'s output.
    pub fn encoded_len(&self) -> usize {
        BODY_HEADER_LEN + self.bytes.len()
    }

    /// Encodes the body on its own: hash, raw length, encoding, length, bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.encode_into(&mut out);
        out
    }

    /// Appends the encoding of the body to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.put_u128(self.hash);
        out.put_u32(self.raw_len);
        out.put_u8(self.encoding.tag());
        // At most MAX_CHUNK_SIZE bytes, by construction.
        out.put_u32(self.bytes.len() as u32);
        out.extend_from_slice(&self.bytes);
    }

    /// Decodes one body encoded by [`encode`](ChunkBody::encode); `bytes` must hold exactly
    /// one body. The content is verified against the hash when it is decompressed.
    pub fn decode(bytes: &[u8]) -> Result<ChunkBody, DecodeSnapshotError> {
        let mut reader = Reader::new(bytes);
        let body = Self::decode_from(&mut reader)?;
        reader.finish("chunk body")?;
        Ok(body)
    }

    /// Decodes one body from the front of `reader`.
    pub(crate) fn decode_from(reader: &mut Reader<'_>) -> Result<ChunkBody, DecodeSnapshotError> {
        const WHAT: &str = "chunk body";
        let hash = reader.u128(WHAT)?;
        let raw_len = reader.u32(WHAT)?;
        if raw_len == 0 || raw_len > MAX_CHUNK_SIZE {
            return Err(DecodeSnapshotError::BodyTooLarge {
                raw_len,
                max: MAX_CHUNK_SIZE,
            });
        }
        let encoding = match reader.u8(WHAT)? {
            0 => ChunkEncoding::Raw,
            1 => ChunkEncoding::Lz4,
            tag => return Err(DecodeSnapshotError::UnknownBodyEncoding { tag }),
        };
        let len = reader.u32(WHAT)?;
        match encoding {
            ChunkEncoding::Raw if len != raw_len => {
                return Err(DecodeSnapshotError::RawBodyLength { len, raw_len });
            }
            ChunkEncoding::Lz4 if len >= raw_len => {
                return Err(DecodeSnapshotError::CompressedBodyTooLong { len, raw_len });
            }
            _ => {}
        }
        // len <= raw_len <= 64 KiB, and take() checks it against the input.
        let bytes = reader.take(len as usize, WHAT)?.to_vec();
        Ok(ChunkBody {
            hash,
            raw_len,
            encoding,
            bytes,
        })
    }

    /// Writes the chunk's raw bytes into `out`, which must be exactly
    /// [`raw_len`](ChunkBody::raw_len) bytes, and checks them against the hash.
    ///
    /// On error, `out` holds unspecified bytes.
    pub fn decompress_into(&self, out: &mut [u8]) -> Result<(), RestoreMemoryError> {
        if out.len() != self.raw_len as usize {
            return Err(RestoreMemoryError::DestinationLength {
                hash: self.hash,
                raw_len: self.raw_len,
                len: out.len(),
            });
        }
        match self.encoding {
            ChunkEncoding::Raw => out.copy_from_slice(&self.bytes),
            ChunkEncoding::Lz4 => match lz4_flex::block::decompress_into(&self.bytes, out) {
                Ok(len) if len == out.len() => {}
                _ => {
                    return Err(RestoreMemoryError::Corrupt {
                        hash: self.hash,
                        raw_len: self.raw_len,
                    })
                }
            },
        }
        let found = hash_chunk(out);
        if found != self.hash {
            return Err(RestoreMemoryError::HashMismatch {
                expected: self.hash,
                found,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_detection_sees_a_single_set_byte_anywhere() {
        let mut chunk = vec![0u8; 16_384];
        assert!(is_zero(&chunk));
        for pos in [0, 7, 255, 256, 8_000, 16_383] {
            chunk[pos] = 1;
            assert!(!is_zero(&chunk), "byte {pos}");
            chunk[pos] = 0;
        }
        // A length that is not a multiple of the block size still checks the tail.
        let mut odd = vec![0u8; 300];
        assert!(is_zero(&odd));
        odd[299] = 0x80;
        assert!(!is_zero(&odd));
    }

    #[test]
    fn incompressible_chunks_are_stored_raw() {
        // A xorshift sequence does not compress.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let chunk: Vec<u8> = (0..4096)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        let body = ChunkBody::compress(&chunk).unwrap();
        assert_eq!(body.encoding(), ChunkEncoding::Raw);
        assert_eq!(body.bytes(), &chunk[..]);

        let text = b"worker state ".repeat(400);
        let body = ChunkBody::compress(&text).unwrap();
        assert_eq!(body.encoding(), ChunkEncoding::Lz4);
        assert!(body.bytes().len() < text.len() / 4);
    }

    #[test]
    fn compress_refuses_empty_and_oversized_chunks() {
        assert!(matches!(
            ChunkBody::compress(&[]),
            Err(CaptureSnapshotError::ChunkLength { len: 0, .. })
        ));
        assert!(matches!(
            ChunkBody::compress(&vec![1u8; 65_537]),
            Err(CaptureSnapshotError::ChunkLength { len: 65_537, .. })
        ));
    }

    #[test]
    fn decompress_into_checks_the_destination_and_the_hash() {
        let chunk = b"abcd".repeat(1024);
        let body = ChunkBody::compress(&chunk).unwrap();
        let mut short = vec![0u8; 100];
        assert!(matches!(
            body.decompress_into(&mut short),
            Err(RestoreMemoryError::DestinationLength { len: 100, .. })
        ));
        let mut forged = body.clone();
        forged.hash ^= 1;
        let mut out = vec![0u8; chunk.len()];
        assert!(matches!(
            forged.decompress_into(&mut out),
            Err(RestoreMemoryError::HashMismatch { .. })
        ));
        body.decompress_into(&mut out).unwrap();
        assert_eq!(out, chunk);
    }
}
