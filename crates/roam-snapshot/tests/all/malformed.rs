//! Every class of malformed input is refused with the error that names it, and no length
//! read from the input sizes an allocation before it is checked.

use roam_snapshot::{
    ChunkBody, ChunkRef, DecodeLimits, DecodeSnapshotError as E, Manifest, Snapshot,
};

use crate::{assemble, assemble_raw, reseal, snapshot, CHUNK, PAGE};

/// Offset of the manifest inside an encoded snapshot: magic, version, flags, length.
const MANIFEST_AT: usize = 8 + 2 + 2 + 8;
/// Offsets inside an encoded manifest.
const GLOBAL_COUNT_AT: usize = 8 + 2 + 2 + 32 + 4 + 8 + 8 + 8;
const FIRST_GLOBAL_AT: usize = GLOBAL_COUNT_AT + 4;

fn decode(bytes: &[u8]) -> Result<Snapshot, E> {
    Snapshot::decode(bytes, &DecodeLimits::default())
}

fn decode_manifest(manifest: &Manifest) -> Result<Manifest, E> {
    Manifest::decode(&manifest.encode(), &DecodeLimits::default())
}

/// A one-page manifest (16 chunks of 4 KiB) without globals, tables or chunks.
fn bare_manifest() -> Manifest {
    Manifest {
        module_hash: [1; 32],
        chunk_size: CHUNK,
        memory_size: PAGE as u64,
        globals: Vec::new(),
        tables: Vec::new(),
        last_seq: 0,
        clock_ns: 0,
        chunks: Vec::new(),
    }
}

/// Encodes `manifest`, lets `patch` change the bytes, and reseals the checksum.
fn patched(manifest: &Manifest, patch: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut bytes = manifest.encode();
    patch(&mut bytes);
    reseal(&mut bytes);
    bytes
}

fn chunks(indices: &[u32]) -> Vec<ChunkRef> {
    indices
        .iter()
        .map(|&index| ChunkRef {
            index,
            hash: u128::from(index) + 1,
        })
        .collect()
}

#[test]
fn the_size_cap_is_checked_first() {
    let mut bytes = snapshot().encode();
    let limits = DecodeLimits {
        max_encoded_len: bytes.len() as u64 - 1,
        ..DecodeLimits::default()
    };
    // Even a corrupt input over the cap is refused for its size, before its checksum.
    bytes[0] ^= 0xFF;
    assert_eq!(
        Snapshot::decode(&bytes, &limits),
        Err(E::TooLarge {
            len: bytes.len() as u64,
            max: bytes.len() as u64 - 1
        })
    );
    let manifest = snapshot().manifest.encode();
    let limits = DecodeLimits {
        max_encoded_len: 10,
        ..DecodeLimits::default()
    };
    assert!(matches!(
        Manifest::decode(&manifest, &limits),
        Err(E::TooLarge { max: 10, .. })
    ));
}

#[test]
fn then_the_checksum_then_the_magic_then_the_version() {
    assert!(matches!(decode(&[]), Err(E::Truncated { .. })));
    assert!(matches!(decode(b"ROAMSNAP"), Err(E::Truncated { .. })));

    let good = snapshot().encode();
    let mut corrupt = good.clone();
    let middle = corrupt.len() / 2;
    corrupt[middle] ^= 0x10;
    assert!(matches!(
        decode(&corrupt),
        Err(E::ChecksumMismatch {
            what: "snapshot",
            ..
        })
    ));

    // A wrong magic with a valid checksum: not a snapshot.
    let mut magic = good.clone();
    magic[0] = b'X';
    // A bad version too: the magic is reported, because it is checked first.
    magic[8] = 9;
    reseal(&mut magic);
    assert_eq!(decode(&magic), Err(E::BadMagic { what: "snapshot" }));

    for version in [0u16, 2, u16::MAX] {
        let mut bytes = good.clone();
        bytes[8..10].copy_from_slice(&version.to_le_bytes());
        reseal(&mut bytes);
        assert_eq!(
            decode(&bytes),
            Err(E::UnsupportedVersion {
                what: "snapshot",
                version,
                min: 1,
                max: 1
            })
        );
    }

    let mut flags = good.clone();
    flags[10] = 0x80;
    reseal(&mut flags);
    assert_eq!(
        decode(&flags),
        Err(E::ReservedFlags {
            what: "snapshot",
            flags: 0x80
        })
    );

    // A manifest is not a snapshot, nor the other way round.
    let manifest = snapshot().manifest.encode();
    assert_eq!(decode(&manifest), Err(E::BadMagic { what: "snapshot" }));
    assert_eq!(
        Manifest::decode(&good, &DecodeLimits::default()),
        Err(E::BadMagic { what: "manifest" })
    );
}

#[test]
fn the_embedded_manifest_is_checked_like_a_standalone_one() {
    let snap = snapshot();
    let manifest = patched(&snap.manifest, |b| b[8] = 2);
    assert!(matches!(
        decode(&assemble_raw(&manifest, snap.bodies())),
        Err(E::UnsupportedVersion {
            what: "manifest",
            version: 2,
            ..
        })
    ));
    let mut corrupt = snap.manifest.encode();
    corrupt[40] ^= 1;
    assert!(matches!(
        decode(&assemble_raw(&corrupt, snap.bodies())),
        Err(E::ChecksumMismatch {
            what: "manifest",
            ..
        })
    ));
}

#[test]
fn chunks_outside_the_memory_are_refused() {
    let mut m = bare_manifest();
    m.chunks = chunks(&[3, 16]);
    assert_eq!(
        decode_manifest(&m),
        Err(E::ChunkOutsideMemory {
            index: 16,
            chunk_count: 16
        })
    );
    m.chunks = chunks(&[u32::MAX]);
    assert!(matches!(
        decode_manifest(&m),
        Err(E::ChunkOutsideMemory {
            index: u32::MAX,
            ..
        })
    ));
    // More chunks than the memory has is refused before they are read.
    m.chunks = chunks(&(0..17).collect::<Vec<_>>());
    assert_eq!(
        decode_manifest(&m),
        Err(E::TooManyChunks {
            count: 17,
            chunk_count: 16
        })
    );
}

#[test]
fn unsorted_and_duplicate_chunk_indices_are_refused() {
    let mut m = bare_manifest();
    m.chunks = chunks(&[1, 5, 3]);
    assert_eq!(
        decode_manifest(&m),
        Err(E::ChunksNotAscending {
            index: 3,
            previous: 5
        })
    );
    m.chunks = chunks(&[2, 2]);
    assert_eq!(
        decode_manifest(&m),
        Err(E::ChunksNotAscending {
            index: 2,
            previous: 2
        })
    );
}

#[test]
fn bad_memory_and_chunk_sizes_are_refused() {
    let mut m = bare_manifest();
    m.memory_size = PAGE as u64 + 4096;
    assert_eq!(
        decode_manifest(&m),
        Err(E::MemoryNotPageMultiple {
            memory_size: PAGE as u64 + 4096
        })
    );

    let mut m = bare_manifest();
    m.memory_size = 8 * PAGE as u64;
    let limits = DecodeLimits {
        max_memory_size: 4 * PAGE as u64,
        ..DecodeLimits::default()
    };
    assert_eq!(
        Manifest::decode(&m.encode(), &limits),
        Err(E::MemoryTooLarge {
            memory_size: 8 * PAGE as u64,
            max: 4 * PAGE as u64
        })
    );
    // The default cap is the wasm32 maximum, 4 GiB.
    m.memory_size = (4 << 30) + PAGE as u64;
    assert!(matches!(decode_manifest(&m), Err(E::MemoryTooLarge { .. })));

    for chunk_size in [0, 2_048, 3_000, 131_072] {
        let mut m = bare_manifest();
        m.chunk_size = chunk_size;
        assert_eq!(decode_manifest(&m), Err(E::InvalidChunkSize { chunk_size }));
    }
}

#[test]
fn caps_on_globals_tables_and_elements_are_enforced() {
    let m = snapshot().manifest; // 7 globals, tables of 4 and 0 elements
    let limits = DecodeLimits {
        max_globals: 6,
        ..DecodeLimits::default()
    };
    assert_eq!(
        Manifest::decode(&m.encode(), &limits),
        Err(E::TooManyGlobals { count: 7, max: 6 })
    );
    let limits = DecodeLimits {
        max_tables: 1,
        ..DecodeLimits::default()
    };
    assert_eq!(
        Manifest::decode(&m.encode(), &limits),
        Err(E::TooManyTables { count: 2, max: 1 })
    );
    let limits = DecodeLimits {
        max_table_elements: 3,
        ..DecodeLimits::default()
    };
    assert_eq!(
        Manifest::decode(&m.encode(), &limits),
        Err(E::TooManyTableElements { count: 4, max: 3 })
    );
}

#[test]
fn unknown_global_types_are_refused() {
    let m = snapshot().manifest;
    let bytes = patched(&m, |b| b[FIRST_GLOBAL_AT] = 6);
    assert_eq!(
        Manifest::decode(&bytes, &DecodeLimits::default()),
        Err(E::UnknownGlobalType { index: 0, tag: 6 })
    );
}

#[test]
fn huge_counts_in_a_small_input_are_refused_without_allocating() {
    let unlimited = DecodeLimits {
        max_encoded_len: u64::MAX,
        max_memory_size: u64::MAX,
        max_globals: u32::MAX,
        max_tables: u32::MAX,
        max_table_elements: u64::MAX,
    };
    let m = bare_manifest();

    // Four billion globals claimed by a 100-byte manifest.
    let bytes = patched(&m, |b| {
        b[GLOBAL_COUNT_AT..GLOBAL_COUNT_AT + 4].copy_from_slice(&u32::MAX.to_le_bytes())
    });
    assert_eq!(
        Manifest::decode(&bytes, &unlimited),
        Err(E::Truncated { what: "globals" })
    );
    // With the default caps, the cap speaks first.
    assert!(matches!(
        Manifest::decode(&bytes, &DecodeLimits::default()),
        Err(E::TooManyGlobals { .. })
    ));

    // A table of four billion elements.
    let mut with_table = m.clone();
    with_table.tables = vec![roam_snapshot::TableState {
        elements: vec![None],
    }];
    // No globals, so the table count sits where the first global would; its first
    // table's length follows.
    let at = FIRST_GLOBAL_AT + 4;
    let bytes = patched(&with_table, |b| {
        b[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes())
    });
    assert_eq!(
        Manifest::decode(&bytes, &unlimited),
        Err(E::Truncated {
            what: "table elements"
        })
    );

    // A billion chunk refs in a 4 GiB memory, claimed by a tiny manifest.
    let mut big = m.clone();
    big.memory_size = 4 << 30;
    // No globals, no tables: the chunk count follows the (zero) table count.
    let at = FIRST_GLOBAL_AT + 4;
    let bytes = patched(&big, |b| {
        b[at..at + 4].copy_from_slice(&1_000_000u32.to_le_bytes())
    });
    assert_eq!(
        Manifest::decode(&bytes, &unlimited),
        Err(E::Truncated { what: "chunk map" })
    );

    // A snapshot whose manifest length is 2^64 - 1.
    let mut bytes = snapshot().encode();
    bytes[12..20].copy_from_slice(&u64::MAX.to_le_bytes());
    reseal(&mut bytes);
    assert_eq!(decode(&bytes), Err(E::Truncated { what: "manifest" }));

    // A body count larger than the chunk count.
    let snap = snapshot();
    let mut bytes = snap.encode();
    let count_at = MANIFEST_AT + snap.manifest.encoded_len();
    bytes[count_at..count_at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    reseal(&mut bytes);
    assert_eq!(
        decode(&bytes),
        Err(E::TooManyBodies {
            count: u64::from(u32::MAX),
            chunks: 5
        })
    );
}

#[test]
fn bodies_must_match_the_chunk_map() {
    let snap = snapshot();
    let bodies = snap.bodies().to_vec();

    // One body left out.
    assert!(matches!(
        decode(&assemble(&snap.manifest, &bodies[1..])),
        Err(E::MissingBody { hash }) if hash == bodies[0].hash()
    ));

    // A body no chunk names.
    let stray = ChunkBody::compress(&[0x77; CHUNK as usize]).unwrap();
    let mut extra = bodies.clone();
    extra.push(stray.clone());
    extra.sort_by_key(ChunkBody::hash);
    assert_eq!(
        decode(&assemble(&snap.manifest, &extra)),
        Err(E::UnreferencedBody { hash: stray.hash() })
    );

    // Out of order, and stored twice.
    let mut reversed = bodies.clone();
    reversed.reverse();
    assert!(matches!(
        decode(&assemble(&snap.manifest, &reversed)),
        Err(E::BodiesNotAscending { .. })
    ));
    let twice = vec![bodies[0].clone(), bodies[0].clone()];
    assert_eq!(
        decode(&assemble(&snap.manifest, &twice)),
        Err(E::BodiesNotAscending {
            hash: bodies[0].hash(),
            previous: bodies[0].hash()
        })
    );

    // A body of the wrong size for the chunk size.
    let big = ChunkBody::compress(&[0x33; 8_192]).unwrap();
    let mut m = snap.manifest.clone();
    m.chunks = vec![ChunkRef {
        index: 0,
        hash: big.hash(),
    }];
    assert_eq!(
        decode(&assemble(&m, std::slice::from_ref(&big))),
        Err(E::BodySizeMismatch {
            hash: big.hash(),
            raw_len: 8_192,
            chunk_size: CHUNK
        })
    );
    assert!(matches!(
        Snapshot::from_parts(m, vec![big]),
        Err(E::BodySizeMismatch { .. })
    ));
}

#[test]
fn malformed_chunk_bodies_are_refused() {
    let raw = ChunkBody::compress(
        &(0..4096u32)
            .map(|i| (i * 7919 % 251) as u8)
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let good = raw.encode();
    // hash (16), raw_len (4), encoding (1), len (4), bytes
    let mut bad = good.clone();
    bad[20] = 7;
    assert_eq!(
        ChunkBody::decode(&bad),
        Err(E::UnknownBodyEncoding { tag: 7 })
    );
    for raw_len in [0u32, 65_537, u32::MAX] {
        let mut bad = good.clone();
        bad[16..20].copy_from_slice(&raw_len.to_le_bytes());
        assert_eq!(
            ChunkBody::decode(&bad),
            Err(E::BodyTooLarge {
                raw_len,
                max: 65_536
            })
        );
    }
    // A raw body must hold exactly raw_len bytes, a compressed one fewer.
    let mut bad = good.clone();
    bad[20] = 0;
    bad[21..25].copy_from_slice(&100u32.to_le_bytes());
    assert_eq!(
        ChunkBody::decode(&bad),
        Err(E::RawBodyLength {
            len: 100,
            raw_len: 4096
        })
    );
    let mut bad = good.clone();
    bad[20] = 1;
    bad[21..25].copy_from_slice(&4096u32.to_le_bytes());
    assert_eq!(
        ChunkBody::decode(&bad),
        Err(E::CompressedBodyTooLong {
            len: 4096,
            raw_len: 4096
        })
    );
    // A length that runs past the input.
    let mut bad = good.clone();
    bad[20] = 1;
    bad[21..25].copy_from_slice(&4000u32.to_le_bytes());
    assert!(matches!(ChunkBody::decode(&bad), Err(E::Truncated { .. })));
    let mut long = good.clone();
    long.push(0);
    assert_eq!(
        ChunkBody::decode(&long),
        Err(E::TrailingBytes {
            what: "chunk body",
            count: 1
        })
    );
}

#[test]
fn trailing_bytes_are_refused() {
    let snap = snapshot();
    let mut bytes = snap.encode();
    let end = bytes.len() - 8;
    bytes.splice(end..end, [0u8; 3]);
    reseal(&mut bytes);
    assert_eq!(
        decode(&bytes),
        Err(E::TrailingBytes {
            what: "snapshot",
            count: 3
        })
    );
}

#[test]
fn errors_read_as_sentences() {
    let mut m = bare_manifest();
    m.chunks = chunks(&[16]);
    let err = decode_manifest(&m).unwrap_err();
    assert_eq!(
        err.to_string(),
        "chunk 16 lies outside the memory, which has 16 chunks"
    );
    let err = decode(b"not a snapshot at all, just text").unwrap_err();
    assert!(err.to_string().starts_with("checksum mismatch"), "{err}");
}
