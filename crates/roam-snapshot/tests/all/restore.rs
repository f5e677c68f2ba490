//! Restoring a memory: chunks are written and verified, absent chunks are zeroed only where
//! the fresh instance may hold data, and a damaged snapshot is refused.

use roam_snapshot::{ChunkBody, ChunkRef, RestoreMemoryError as E, Snapshot};

use crate::{memory, snapshot, state, CHUNK, PAGE};

const C: usize = CHUNK as usize;

#[test]
fn absent_chunks_in_the_given_ranges_are_zeroed_and_the_rest_is_left_alone() {
    let snap = snapshot(); // non-zero chunks: 0, 1, 4, 6, 31
    let mut fresh = vec![0u8; 2 * PAGE];
    // A fresh instance's data segments: bytes in chunks 2, 3 (absent) and 4 (present).
    fresh[2 * C + 100..2 * C + 200].fill(0xEE);
    fresh[3 * C..3 * C + 10].fill(0xEE);
    fresh[4 * C..4 * C + 10].fill(0xEE);
    // Bytes outside the ranges: restore must not touch them (the caller promised zero).
    fresh[10 * C..10 * C + 4].fill(0xBB);

    // The range ends inside chunk 3 and covers part of 4: chunk granularity applies.
    let ranges = [
        2 * C as u64 + 100..3 * C as u64 + 10,
        4 * C as u64..4 * C as u64 + 10,
    ];
    snap.restore_memory(&mut fresh, &ranges).unwrap();

    let expected = memory();
    assert_eq!(fresh[..10 * C], expected[..10 * C]);
    assert_eq!(fresh[10 * C..10 * C + 4], [0xBB; 4]);
    assert_eq!(fresh[10 * C + 4..], expected[10 * C + 4..]);
}

#[test]
fn ranges_past_the_end_are_clipped_and_empty_ranges_ignored() {
    let snap = snapshot();
    let mut fresh = vec![0u8; 2 * PAGE];
    fresh[30 * C] = 9; // chunk 30 is absent
    #[allow(
        clippy::reversed_empty_ranges,
        reason = "an empty range must be ignored"
    )]
    let ranges = [30 * C as u64..u64::MAX, 5..5, 100..50];
    snap.restore_memory(&mut fresh, &ranges).unwrap();
    assert_eq!(fresh, memory());
}

#[test]
fn the_memory_must_have_the_snapshot_size() {
    let snap = snapshot();
    let mut small = vec![0u8; PAGE];
    assert_eq!(
        snap.restore_memory(&mut small, &[]),
        Err(E::MemoryLength {
            len: PAGE as u64,
            memory_size: 2 * PAGE as u64
        })
    );
}

#[test]
fn a_body_whose_content_does_not_match_its_hash_is_refused() {
    let snap = snapshot();
    let (manifest, mut bodies) = snap.into_parts();
    // Swap one body's bytes for another content of the same size, keeping its hash.
    let victim = bodies[0].encode();
    let other = ChunkBody::compress(&[0x11; C]).unwrap().encode();
    let mut forged = victim[..16].to_vec();
    forged.extend_from_slice(&other[16..]);
    bodies[0] = ChunkBody::decode(&forged).unwrap();
    let snap = Snapshot::from_parts(manifest, bodies).unwrap();
    let mut fresh = vec![0u8; 2 * PAGE];
    assert!(matches!(
        snap.restore_memory(&mut fresh, &[]),
        Err(E::HashMismatch { .. })
    ));
}

#[test]
fn a_body_that_does_not_decompress_is_refused() {
    // A compressed body whose lz4 stream is cut short of its raw length.
    let chunk: Vec<u8> = (0..C).map(|i| (i % 97) as u8).collect();
    let body = ChunkBody::compress(&chunk).unwrap();
    let mut bytes = body.encode();
    let len = body.bytes().len() as u32;
    bytes.truncate(bytes.len() - 8);
    bytes[21..25].copy_from_slice(&(len - 8).to_le_bytes());
    let cut = ChunkBody::decode(&bytes).unwrap();
    let mut out = vec![0u8; C];
    assert_eq!(
        cut.decompress_into(&mut out),
        Err(E::Corrupt {
            hash: body.hash(),
            raw_len: CHUNK
        })
    );
}

#[test]
fn a_manifest_changed_after_decoding_is_still_checked() {
    // The manifest is a public field: restore does not trust it blindly.
    let mut snap = snapshot();
    snap.manifest.chunks.push(ChunkRef {
        index: 40,
        hash: snap.manifest.chunks[0].hash,
    });
    let mut fresh = vec![0u8; 2 * PAGE];
    assert_eq!(
        snap.restore_memory(&mut fresh, &[]),
        Err(E::ChunkOutsideMemory { index: 40 })
    );

    let mut snap = snapshot();
    snap.manifest.chunks[2].hash ^= 1;
    let hash = snap.manifest.chunks[2].hash;
    assert_eq!(
        snap.restore_memory(&mut fresh, &[]),
        Err(E::MissingBody { index: 4, hash })
    );

    // A memory size that is not whole pages (nor whole chunks) is refused, not sliced.
    let mut snap = snapshot();
    snap.manifest.memory_size = 2 * PAGE as u64 + 100;
    let mut odd = vec![0u8; 2 * PAGE + 100];
    assert_eq!(
        snap.restore_memory(&mut odd, &[0..u64::MAX]),
        Err(E::MemoryNotPageMultiple {
            memory_size: 2 * PAGE as u64 + 100
        })
    );

    let mut snap = snapshot();
    snap.manifest.chunk_size = 3;
    assert_eq!(
        snap.restore_memory(&mut fresh, &[]),
        Err(E::InvalidChunkSize { chunk_size: 3 })
    );
}

#[test]
fn restore_overwrites_stale_content_in_present_chunks() {
    // Restoring into a memory that held something else (a reused buffer) still yields
    // exactly the snapshot's content in every present chunk.
    let snap = Snapshot::capture(&memory(), CHUNK, state()).unwrap();
    let mut reused = vec![0xFFu8; 2 * PAGE];
    snap.restore_memory(&mut reused, &[0..2 * PAGE as u64])
        .unwrap();
    assert_eq!(reused, memory());
}
