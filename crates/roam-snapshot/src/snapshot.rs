//! The whole snapshot: capturing it from a memory and a [`State`], the file encoding
//! (header, manifest, deduplicated chunk bodies, checksum), checking it against the module
//! about to receive it, and restoring its memory.

use std::ops::Range;

use crate::chunk::{
    check_memory, hash_chunk, is_zero, ChunkBody, HashSetOfChunks, BODY_HEADER_LEN,
};
use crate::manifest::{DecodeLimits, MANIFEST_MAGIC};
use crate::model::{ChunkHash, ChunkRef, GlobalValue, Layout, Manifest, State, WASM_PAGE_SIZE};
use crate::wire::{frame_end, frame_start, unframe, PutLe, Reader, CHECKSUM_LEN};
use crate::{
    CaptureSnapshotError, DecodeSnapshotError, IncompatibleSnapshotError, RestoreMemoryError,
};

/// Magic bytes that open an encoded snapshot.
pub(crate) const SNAPSHOT_MAGIC: &[u8; 8] = b"ROAMSNAP";

/// Bytes of a snapshot's frame and fixed fields: header, manifest length, body count,
/// checksum.
const SNAPSHOT_FIXED_LEN: usize = 8 + 2 + 2 + 8 + 4 + CHECKSUM_LEN;

// The manifest magic must differ from the snapshot's, so one is never read as the other.
const _: () = assert!(SNAPSHOT_MAGIC[4] != MANIFEST_MAGIC[4]);

/// Memory below this size is captured on one thread: spawning would cost more than it saves.
#[cfg(not(target_arch = "wasm32"))]
const PARALLEL_CAPTURE_MIN: usize = 4 << 20;

/// Large memories are captured in segments of this size, handed to threads one at a time:
/// a worker's heap sits in a few places, so fixed halves would leave one thread idle.
#[cfg(not(target_arch = "wasm32"))]
const CAPTURE_SEGMENT: usize = 256 << 10;

/// Hashes and compresses the non-zero chunks of `memory`; bodies are deduplicated within
/// each segment but not sorted. On native targets large memories are split into segments
/// that every core takes from in turn: compression is what bounds capture on dense memory
/// (lz4 runs at about 0.8 GB/s on one core here) and chunks are independent. In the
/// browser (wasm32) it is one thread.
fn capture_chunks(
    memory: &[u8],
    chunk_size: u32,
    known: &(dyn Fn(ChunkHash) -> bool + Sync),
) -> (Vec<ChunkRef>, Vec<ChunkBody>) {
    #[cfg(not(target_arch = "wasm32"))]
    {
        use std::sync::atomic::{AtomicUsize, Ordering};

        let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
        if threads > 1 && memory.len() >= PARALLEL_CAPTURE_MIN {
            // A segment is a whole number of chunks: chunk sizes divide the wasm page, and
            // the segment size is a multiple of it.
            let segments: Vec<&[u8]> = memory.chunks(CAPTURE_SEGMENT).collect();
            let next = AtomicUsize::new(0);
            let mut parts: Vec<_> = std::thread::scope(|scope| {
                let handles: Vec<_> = (0..threads)
                    .map(|_| {
                        scope.spawn(|| {
                            let mut done = Vec::new();
                            loop {
                                let i = next.fetch_add(1, Ordering::Relaxed);
                                let Some(segment) = segments.get(i) else {
                                    return done;
                                };
                                let first = (i * CAPTURE_SEGMENT / chunk_size as usize) as u32;
                                done.push((i, capture_segment(segment, chunk_size, first, known)));
                            }
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .flat_map(|h| h.join().expect("capture threads do not panic"))
                    .collect()
            });
            parts.sort_unstable_by_key(|(i, _)| *i);
            let mut chunks = Vec::new();
            let mut bodies = Vec::new();
            for (_, (c, b)) in parts {
                chunks.extend(c);
                bodies.extend(b);
            }
            return (chunks, bodies);
        }
    }
    capture_segment(memory, chunk_size, 0, known)
}

/// Captures one run of whole chunks whose first chunk has index `first`, compressing the
/// chunks whose hash `known` does not know.
fn capture_segment(
    segment: &[u8],
    chunk_size: u32,
    first: u32,
    known: &(dyn Fn(ChunkHash) -> bool + Sync),
) -> (Vec<ChunkRef>, Vec<ChunkBody>) {
    let mut chunks = Vec::new();
    let mut seen = HashSetOfChunks::default();
    let mut bodies = Vec::new();
    let mut scratch = Vec::new();
    // One pass: the chunk is still in cache when it is compressed right after hashing.
    for (i, chunk) in segment.chunks_exact(chunk_size as usize).enumerate() {
        if is_zero(chunk) {
            continue;
        }
        let hash = hash_chunk(chunk);
        // check_memory bounds the chunk count by u32::MAX.
        chunks.push(ChunkRef {
            index: first + i as u32,
            hash,
        });
        if seen.insert(hash) && !known(hash) {
            bodies.push(ChunkBody::compress_hashed(chunk, hash, &mut scratch));
        }
    }
    (chunks, bodies)
}

/// A capture that holds only the bodies of chunks the caller did not know
/// ([`Snapshot::capture_delta`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delta {
    /// The whole manifest.
    pub manifest: Manifest,
    /// One body per distinct chunk of the manifest that was not known, in ascending hash
    /// order.
    pub bodies: Vec<ChunkBody>,
}

/// A worker's state at an idle point: the [`Manifest`] and one compressed body per
/// distinct non-zero chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Everything but the chunk bodies.
    pub manifest: Manifest,
    /// One body per distinct chunk hash, in ascending hash order.
    bodies: Vec<ChunkBody>,
}

impl Snapshot {
    /// Captures `memory` (a whole number of 64 KiB pages) and `state`.
    ///
    /// Zero chunks are left out; every other chunk is hashed, and each distinct content is
    /// compressed once. Use [`DEFAULT_CHUNK_SIZE`](crate::DEFAULT_CHUNK_SIZE) unless there
    /// is a reason not to.
    pub fn capture(
        memory: &[u8],
        chunk_size: u32,
        state: State,
    ) -> Result<Snapshot, CaptureSnapshotError> {
        let delta = Snapshot::capture_delta(memory, chunk_size, state, &|_| false)?;
        Ok(Snapshot {
            manifest: delta.manifest,
            bodies: delta.bodies,
        })
    }

    /// Captures like [`capture`](Snapshot::capture), but compresses and returns only the
    /// bodies of chunks whose hash `known` does not know: the chunks that changed since an
    /// earlier capture whose bodies the caller (or the receiver of a move) already holds.
    /// Every chunk is still hashed, so the manifest is complete. Pre-copy rounds use it.
    pub fn capture_delta(
        memory: &[u8],
        chunk_size: u32,
        state: State,
        known: &(dyn Fn(ChunkHash) -> bool + Sync),
    ) -> Result<Delta, CaptureSnapshotError> {
        check_memory(memory.len(), chunk_size)?;
        check_state(&state)?;

        let (chunks, mut bodies) = capture_chunks(memory, chunk_size, known);
        bodies.sort_unstable_by_key(ChunkBody::hash);
        // Segments captured in parallel may each hold a body of the same content.
        bodies.dedup_by_key(|b| b.hash());

        Ok(Delta {
            manifest: Manifest {
                module_hash: state.module_hash,
                chunk_size,
                memory_size: memory.len() as u64,
                globals: state.globals,
                tables: state.tables,
                last_seq: state.last_seq,
                clock_ns: state.clock_ns,
                chunks,
            },
            bodies,
        })
    }

    /// Builds a snapshot from a manifest and bodies that arrived separately, checking that
    /// they fit together: the manifest's structure, every body's size against the chunk
    /// size, each body present once in ascending hash order, every chunk's body present
    /// and every body used.
    pub fn from_parts(
        manifest: Manifest,
        mut bodies: Vec<ChunkBody>,
    ) -> Result<Snapshot, DecodeSnapshotError> {
        manifest.check_shape()?;
        // Parts that arrive out of order are fine; duplicates are not.
        bodies.sort_unstable_by_key(ChunkBody::hash);
        check_bodies(&manifest, &bodies)?;
        Ok(Snapshot { manifest, bodies })
    }

    /// The chunk bodies, one per distinct chunk content, in ascending hash order.
    pub fn bodies(&self) -> &[ChunkBody] {
        &self.bodies
    }

    /// The body of the chunk content named `hash`, if the snapshot holds it.
    pub fn body(&self, hash: ChunkHash) -> Option<&ChunkBody> {
        self.body_position(hash).map(|i| &self.bodies[i])
    }

    fn body_position(&self, hash: ChunkHash) -> Option<usize> {
        self.bodies
            .binary_search_by_key(&hash, ChunkBody::hash)
            .ok()
    }

    /// Splits the snapshot into its manifest and bodies, to send them separately.
    pub fn into_parts(self) -> (Manifest, Vec<ChunkBody>) {
        (self.manifest, self.bodies)
    }

    /// Length of [`encode`](Snapshot::encode)'s output.
    pub fn encoded_len(&self) -> usize {
        SNAPSHOT_FIXED_LEN
            + self.manifest.encoded_len()
            + self
                .bodies
                .iter()
                .map(ChunkBody::encoded_len)
                .sum::<usize>()
    }

    /// Encodes the snapshot: header (magic, version, flags), the manifest as
    /// [`Manifest::encode`] writes it, the bodies as [`ChunkBody::encode`] writes them, and
    /// a checksum of all of it.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        frame_start(&mut out, SNAPSHOT_MAGIC);
        out.put_u64(self.manifest.encoded_len() as u64);
        self.manifest.encode_into(&mut out);
        out.put_u32(self.bodies.len() as u32);
        for body in &self.bodies {
            body.encode_into(&mut out);
        }
        frame_end(&mut out, 0);
        out
    }

    /// Decodes a snapshot encoded by [`encode`](Snapshot::encode).
    ///
    /// Checks, in order: the size cap, the checksum, the magic, the version; then decodes
    /// the manifest (with the same checks on its own frame) and the bodies, and checks that
    /// they fit together as [`from_parts`](Snapshot::from_parts) does, except that the
    /// bodies must already be in ascending hash order.
    pub fn decode(bytes: &[u8], limits: &DecodeLimits) -> Result<Snapshot, DecodeSnapshotError> {
        let content = unframe(bytes, limits.max_encoded_len, SNAPSHOT_MAGIC, "snapshot")?;
        let mut reader = Reader::new(content);
        let manifest_len = reader.u64("snapshot")?;
        let manifest_len = reader.check_room(manifest_len, 1, "manifest")?;
        let manifest = Manifest::decode(reader.take(manifest_len, "manifest")?, limits)?;

        let count = u64::from(reader.u32("chunk bodies")?);
        // Every body is named by at least one chunk, so there are no more bodies than chunks.
        let chunks = manifest.chunks.len() as u64;
        if count > chunks {
            return Err(DecodeSnapshotError::TooManyBodies { count, chunks });
        }
        let count = reader.check_room(count, BODY_HEADER_LEN as u64, "chunk bodies")?;
        let mut bodies = Vec::with_capacity(count);
        for _ in 0..count {
            bodies.push(ChunkBody::decode_from(&mut reader)?);
        }
        reader.finish("snapshot")?;
        check_bodies(&manifest, &bodies)?;
        Ok(Snapshot { manifest, bodies })
    }

    /// Checks that this snapshot can be restored into an instance of the module described
    /// by `layout`, with at most `max_memory` bytes of memory: same module, a memory within
    /// the cap and the module's limits, globals of the right count and types, tables of
    /// the right count and sizes whose entries name functions of the module.
    pub fn check_against(
        &self,
        layout: &Layout,
        max_memory: u64,
    ) -> Result<(), IncompatibleSnapshotError> {
        self.manifest.check_against(layout, max_memory)
    }

    /// Writes every chunk into `memory`, whose length must be the snapshot's memory size,
    /// and zeroes the absent (zero) chunks that intersect `maybe_nonzero`.
    ///
    /// `memory` is expected to be zero outside `maybe_nonzero`, as a fresh instance's
    /// memory is outside its data segments; ranges reaching past the end are clipped.
    /// Each chunk is checked against its hash after decompression. On error, `memory`
    /// holds a partial restore and must not be run.
    pub fn restore_memory(
        &self,
        memory: &mut [u8],
        maybe_nonzero: &[Range<u64>],
    ) -> Result<(), RestoreMemoryError> {
        let manifest = &self.manifest;
        if memory.len() as u64 != manifest.memory_size {
            return Err(RestoreMemoryError::MemoryLength {
                len: memory.len() as u64,
                memory_size: manifest.memory_size,
            });
        }
        let chunk_size = manifest.chunk_size;
        if !crate::model::valid_chunk_size(chunk_size) {
            return Err(RestoreMemoryError::InvalidChunkSize { chunk_size });
        }
        if !manifest
            .memory_size
            .is_multiple_of(u64::from(WASM_PAGE_SIZE))
        {
            return Err(RestoreMemoryError::MemoryNotPageMultiple {
                memory_size: manifest.memory_size,
            });
        }
        // Whole pages, and the chunk size divides a page: the memory is whole chunks.
        let size = chunk_size as usize;
        let chunk_count = memory.len() / size;

        // Zero first, then write: a chunk zeroed by mistake (a manifest edited out of
        // order defeats the binary search) is still overwritten with its content.
        for range in maybe_nonzero {
            let end = range.end.min(memory.len() as u64);
            if range.start >= end {
                continue;
            }
            let first = (range.start / u64::from(chunk_size)) as usize;
            let last = end.div_ceil(u64::from(chunk_size)) as usize;
            for index in first..last {
                let present = manifest
                    .chunks
                    .binary_search_by_key(&(index as u32), |c| c.index)
                    .is_ok();
                if !present {
                    memory[index * size..(index + 1) * size].fill(0);
                }
            }
        }

        // Where each body was first written, so a repeated chunk is a copy, not a second
        // decompression.
        let mut written: Vec<Option<usize>> = vec![None; self.bodies.len()];
        for chunk in &manifest.chunks {
            let index = chunk.index as usize;
            if index >= chunk_count {
                return Err(RestoreMemoryError::ChunkOutsideMemory { index: chunk.index });
            }
            let start = index * size;
            let position =
                self.body_position(chunk.hash)
                    .ok_or(RestoreMemoryError::MissingBody {
                        index: chunk.index,
                        hash: chunk.hash,
                    })?;
            match written[position] {
                Some(from) => memory.copy_within(from..from + size, start),
                None => {
                    self.bodies[position].decompress_into(&mut memory[start..start + size])?;
                    written[position] = Some(start);
                }
            }
        }
        Ok(())
    }
}

impl Manifest {
    /// Checks that a snapshot with this manifest can be restored into an instance of the
    /// module described by `layout`, as [`Snapshot::check_against`] does; for a restore
    /// that starts before the chunk bodies have all arrived (post-copy).
    pub fn check_against(
        &self,
        layout: &Layout,
        max_memory: u64,
    ) -> Result<(), IncompatibleSnapshotError> {
        let manifest = self;
        if manifest.module_hash != layout.module_hash {
            return Err(IncompatibleSnapshotError::ModuleMismatch {
                expected: layout.module_hash,
                found: manifest.module_hash,
            });
        }
        manifest.check_shape()?;
        if manifest.memory_size > max_memory {
            return Err(IncompatibleSnapshotError::MemoryTooLarge {
                memory_size: manifest.memory_size,
                max: max_memory,
            });
        }
        let pages = manifest.memory_size / u64::from(WASM_PAGE_SIZE);
        let limits = layout.memory;
        if pages < limits.min_pages || limits.max_pages.is_some_and(|max| pages > max) {
            return Err(IncompatibleSnapshotError::MemoryOutsideLimits {
                pages,
                min_pages: limits.min_pages,
                max_pages: limits.max_pages,
            });
        }

        if manifest.globals.len() != layout.globals.len() {
            return Err(IncompatibleSnapshotError::GlobalCount {
                found: manifest.globals.len(),
                expected: layout.globals.len(),
            });
        }
        for (index, (value, &expected)) in manifest.globals.iter().zip(&layout.globals).enumerate()
        {
            if value.ty() != expected {
                return Err(IncompatibleSnapshotError::GlobalType {
                    index,
                    found: value.ty(),
                    expected,
                });
            }
            if let GlobalValue::FuncRef(Some(func)) = *value {
                if func >= layout.func_count {
                    return Err(IncompatibleSnapshotError::GlobalFunction {
                        index,
                        func,
                        func_count: layout.func_count,
                    });
                }
            }
        }

        if manifest.tables.len() != layout.tables.len() {
            return Err(IncompatibleSnapshotError::TableCount {
                found: manifest.tables.len(),
                expected: layout.tables.len(),
            });
        }
        for (table, (state, limits)) in manifest.tables.iter().zip(&layout.tables).enumerate() {
            let size = state.elements.len() as u64;
            if size < limits.min || limits.max.is_some_and(|max| size > max) {
                return Err(IncompatibleSnapshotError::TableSize {
                    table,
                    size,
                    min: limits.min,
                    max: limits.max,
                });
            }
            let bad = state
                .elements
                .iter()
                .position(|e| e.is_some_and(|func| func >= layout.func_count));
            if let Some(slot) = bad {
                return Err(IncompatibleSnapshotError::TableFunction {
                    table,
                    slot,
                    func: state.elements[slot].unwrap_or_default(),
                    func_count: layout.func_count,
                });
            }
        }
        Ok(())
    }
}

/// Refuses a state the format cannot describe faithfully.
fn check_state(state: &State) -> Result<(), CaptureSnapshotError> {
    let too_many = |what, count: usize| {
        if count > u32::MAX as usize {
            Err(CaptureSnapshotError::TooMany { what, count })
        } else {
            Ok(())
        }
    };
    too_many("globals", state.globals.len())?;
    too_many("tables", state.tables.len())?;
    let reserved = |func: Option<u32>| match func {
        Some(u32::MAX) => Err(CaptureSnapshotError::ReservedFunctionIndex { func: u32::MAX }),
        _ => Ok(()),
    };
    for global in &state.globals {
        if let GlobalValue::FuncRef(func) = *global {
            reserved(func)?;
        }
    }
    for table in &state.tables {
        too_many("table elements", table.elements.len())?;
        for &element in &table.elements {
            reserved(element)?;
        }
    }
    Ok(())
}

/// Checks that `bodies` (sorted by the caller) and the manifest's chunks fit together.
fn check_bodies(manifest: &Manifest, bodies: &[ChunkBody]) -> Result<(), DecodeSnapshotError> {
    let mut previous: Option<ChunkHash> = None;
    for body in bodies {
        if body.raw_len() != manifest.chunk_size {
            return Err(DecodeSnapshotError::BodySizeMismatch {
                hash: body.hash(),
                raw_len: body.raw_len(),
                chunk_size: manifest.chunk_size,
            });
        }
        if let Some(previous) = previous {
            if body.hash() <= previous {
                return Err(DecodeSnapshotError::BodiesNotAscending {
                    hash: body.hash(),
                    previous,
                });
            }
        }
        previous = Some(body.hash());
    }
    let mut used = vec![false; bodies.len()];
    for chunk in &manifest.chunks {
        match bodies.binary_search_by_key(&chunk.hash, ChunkBody::hash) {
            Ok(i) => used[i] = true,
            Err(_) => return Err(DecodeSnapshotError::MissingBody { hash: chunk.hash }),
        }
    }
    if let Some(i) = used.iter().position(|&u| !u) {
        return Err(DecodeSnapshotError::UnreferencedBody {
            hash: bodies[i].hash(),
        });
    }
    Ok(())
}
