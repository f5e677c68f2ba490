//! A snapshot survives encode and decode unchanged, zero chunks cost nothing, identical
//! chunks are stored once, and the parts travel on their own.

use roam_snapshot::{
    chunk_map, hash_chunk, CaptureSnapshotError, ChunkBody, ChunkEncoding, DecodeLimits,
    GlobalValue, Manifest, Snapshot, State, DEFAULT_CHUNK_SIZE, FORMAT_VERSION,
};

use crate::{layout, memory, snapshot, state, CHUNK, MODULE, PAGE};

#[test]
fn round_trip_keeps_every_global_kind_table_and_byte() {
    let original = snapshot();
    let bytes = original.encode();
    assert_eq!(bytes.len(), original.encoded_len());

    let decoded = Snapshot::decode(&bytes, &DecodeLimits::default()).unwrap();
    assert_eq!(decoded, original);
    assert_eq!(decoded.manifest.globals, state().globals);
    assert_eq!(decoded.manifest.tables, state().tables);
    assert_eq!(decoded.manifest.last_seq, 99);
    assert_eq!(decoded.manifest.clock_ns, 123_456_789);
    // The NaN payload and the sign of zero survive.
    assert_eq!(decoded.manifest.globals[2], GlobalValue::F32(0x7fc0_0123));
    assert_eq!(
        decoded.manifest.globals[3],
        GlobalValue::F64(f64::to_bits(-0.0))
    );

    decoded.check_against(&layout(), 1 << 30).unwrap();
    let mut restored = vec![0u8; 2 * PAGE];
    decoded.restore_memory(&mut restored, &[]).unwrap();
    assert_eq!(restored, memory());
}

#[test]
fn encoding_is_deterministic() {
    assert_eq!(snapshot().encode(), snapshot().encode());
}

#[test]
fn zero_chunks_are_left_out() {
    let snap = snapshot();
    let indices: Vec<u32> = snap.manifest.chunks.iter().map(|c| c.index).collect();
    // Text covers chunks 0 and 1 (5,000 bytes), the pattern 4 and 6, the lone byte 31.
    assert_eq!(indices, vec![0, 1, 4, 6, 31]);

    let empty = Snapshot::capture(&vec![0u8; 4 * PAGE], CHUNK, state()).unwrap();
    assert!(empty.manifest.chunks.is_empty());
    assert!(empty.bodies().is_empty());
    assert_eq!(empty.manifest.memory_size, 4 * PAGE as u64);
    // A 256 KiB empty memory encodes in well under a kilobyte.
    assert!(empty.encode().len() < 512, "{}", empty.encode().len());
    let mut restored = vec![0u8; 4 * PAGE];
    empty.restore_memory(&mut restored, &[]).unwrap();
    assert!(restored.iter().all(|&b| b == 0));
}

#[test]
fn identical_chunks_are_stored_once() {
    let mut memory = vec![0u8; 4 * PAGE];
    for chunk in memory.chunks_mut(CHUNK as usize) {
        chunk.copy_from_slice(&[0xC3; CHUNK as usize]);
    }
    let snap = Snapshot::capture(&memory, CHUNK, state()).unwrap();
    let stats = snap.stats();
    assert_eq!(stats.chunks, 64);
    assert_eq!(stats.unique_chunks, 1);
    assert_eq!(snap.bodies().len(), 1);
    assert!(snap
        .manifest
        .chunks
        .iter()
        .all(|c| c.hash == snap.bodies()[0].hash()));
    // 64 chunks of content cost one small body plus 64 map entries.
    assert!(snap.encoded_len() < 2_000, "{}", snap.encoded_len());

    let decoded = Snapshot::decode(&snap.encode(), &DecodeLimits::default()).unwrap();
    let mut restored = vec![0u8; memory.len()];
    decoded.restore_memory(&mut restored, &[]).unwrap();
    assert_eq!(restored, memory);
}

#[test]
fn chunk_map_matches_the_manifest_and_finds_dirty_chunks() {
    let mut memory = memory();
    let before = chunk_map(&memory, CHUNK).unwrap();
    assert_eq!(before, snapshot().manifest.chunks);

    // Pre-copy: a write changes exactly one chunk's hash; zeroing a chunk removes it.
    memory[4 * 4096 + 10] = 0;
    memory[2 * PAGE - 1] = 0;
    let after = chunk_map(&memory, CHUNK).unwrap();
    let changed: Vec<u32> = after
        .iter()
        .filter(|c| !before.contains(c))
        .map(|c| c.index)
        .collect();
    assert_eq!(changed, vec![4]);
    assert!(!after.iter().any(|c| c.index == 31));
    assert_eq!(
        after.iter().find(|c| c.index == 4).unwrap().hash,
        hash_chunk(&memory[4 * 4096..5 * 4096])
    );
}

#[test]
fn chunk_map_and_capture_refuse_bad_geometry() {
    for chunk_size in [0, 1_000, 2_048, 4_097, 131_072] {
        assert_eq!(
            chunk_map(&[0u8; PAGE], chunk_size),
            Err(CaptureSnapshotError::InvalidChunkSize { chunk_size })
        );
    }
    assert_eq!(
        chunk_map(&vec![0u8; PAGE + 4096], 4096),
        Err(CaptureSnapshotError::MemoryNotPageMultiple {
            len: (PAGE + 4096) as u64
        })
    );
    assert!(matches!(
        Snapshot::capture(&[0u8; 100], DEFAULT_CHUNK_SIZE, state()),
        Err(CaptureSnapshotError::MemoryNotPageMultiple { len: 100 })
    ));
}

#[test]
fn capture_refuses_the_reserved_function_index() {
    let mut bad = state();
    bad.tables[0].elements[1] = Some(u32::MAX);
    assert_eq!(
        Snapshot::capture(&memory(), CHUNK, bad).unwrap_err(),
        CaptureSnapshotError::ReservedFunctionIndex { func: u32::MAX }
    );
    let mut bad = state();
    bad.globals.push(GlobalValue::FuncRef(Some(u32::MAX)));
    assert!(Snapshot::capture(&memory(), CHUNK, bad).is_err());
}

#[test]
fn every_chunk_size_round_trips() {
    for chunk_size in [4_096, 8_192, 16_384, 32_768, 65_536] {
        let snap = Snapshot::capture(&memory(), chunk_size, state()).unwrap();
        let decoded = Snapshot::decode(&snap.encode(), &DecodeLimits::default()).unwrap();
        let mut restored = vec![0u8; 2 * PAGE];
        decoded.restore_memory(&mut restored, &[]).unwrap();
        assert_eq!(restored, memory(), "chunk size {chunk_size}");
    }
}

#[test]
fn manifest_and_bodies_travel_separately_and_reassemble() {
    let snap = snapshot();
    let manifest_bytes = snap.manifest.encode();
    assert_eq!(manifest_bytes.len(), snap.manifest.encoded_len());
    let manifest = Manifest::decode(&manifest_bytes, &DecodeLimits::default()).unwrap();
    assert_eq!(manifest, snap.manifest);

    // Bodies arrive one by one, in any order.
    let mut bodies: Vec<ChunkBody> = snap
        .bodies()
        .iter()
        .rev()
        .map(|b| ChunkBody::decode(&b.encode()).unwrap())
        .collect();
    assert_eq!(bodies.len(), 4); // chunks 0, 1, 4 (= 6), 31
    let one = bodies.pop().unwrap();
    assert!(matches!(
        Snapshot::from_parts(manifest.clone(), bodies.clone()),
        Err(roam_snapshot::DecodeSnapshotError::MissingBody { hash }) if hash == one.hash()
    ));
    bodies.push(one);
    let rebuilt = Snapshot::from_parts(manifest, bodies).unwrap();
    assert_eq!(rebuilt, snap);

    let (manifest, bodies) = rebuilt.into_parts();
    assert_eq!(manifest, snap.manifest);
    assert_eq!(bodies, snap.bodies());
}

#[test]
fn a_single_chunk_compresses_and_restores_on_its_own() {
    let chunk = b"pixel ".repeat(16_384 / 6 + 1)[..16_384].to_vec();
    let body = ChunkBody::compress(&chunk).unwrap();
    assert_eq!(body.encoding(), ChunkEncoding::Lz4);
    assert_eq!(body.hash(), hash_chunk(&chunk));
    assert_eq!(body.raw_len(), 16_384);
    let decoded = ChunkBody::decode(&body.encode()).unwrap();
    let mut out = vec![0u8; 16_384];
    decoded.decompress_into(&mut out).unwrap();
    assert_eq!(out, chunk);
}

#[test]
fn stats_and_summary_describe_the_snapshot() {
    let snap = snapshot();
    let stats = snap.stats();
    assert_eq!(stats.memory_size, 2 * PAGE as u64);
    assert_eq!(stats.chunk_size, CHUNK);
    assert_eq!(stats.chunks, 5);
    assert_eq!(stats.nonzero_bytes, 5 * 4096);
    assert_eq!(stats.unique_chunks, 4);
    assert_eq!(stats.encoded_size, snap.encode().len() as u64);
    assert_eq!(stats.manifest_size, snap.manifest.encode().len() as u64);
    assert!(stats.compressed_bytes < stats.nonzero_bytes);

    let summary = snap.summary();
    assert_eq!(summary.format_version, FORMAT_VERSION);
    assert_eq!(summary.module_hash, "42".repeat(32));
    assert_eq!(summary.memory_pages, 2);
    assert_eq!(summary.table_sizes, vec![4, 0]);
    let text = summary.to_string();
    assert!(text.contains("2 pages"), "{text}");
    assert!(text.contains("5 of 4.0 KiB, 4 unique"), "{text}");
    let json = serde_json::to_value(&summary).unwrap();
    assert_eq!(json["stats"]["unique_chunks"], 4);
    assert_eq!(json["last_seq"], 99);
}

#[test]
fn hand_built_manifest_with_no_chunks_reassembles() {
    let manifest = Manifest {
        module_hash: MODULE,
        chunk_size: CHUNK,
        memory_size: PAGE as u64,
        globals: Vec::new(),
        tables: Vec::new(),
        last_seq: 0,
        clock_ns: 0,
        chunks: Vec::new(),
    };
    let snap = Snapshot::from_parts(manifest, Vec::new()).unwrap();
    let s = State {
        module_hash: MODULE,
        globals: Vec::new(),
        tables: Vec::new(),
        last_seq: 0,
        clock_ns: 0,
    };
    assert_eq!(snap, Snapshot::capture(&vec![0u8; PAGE], CHUNK, s).unwrap());
}

#[test]
fn large_memories_capture_alike_whatever_the_split() {
    // 24 MiB: captured in segments on several threads on native targets. The same content
    // in both halves must be stored once, and every index must name its own chunk.
    let chunk = DEFAULT_CHUNK_SIZE as usize;
    let mut memory = vec![0u8; 24 << 20];
    let half = memory.len() / 2;
    for (i, c) in memory[..half].chunks_exact_mut(chunk).enumerate() {
        if i % 3 != 0 {
            c[..8].copy_from_slice(&(i as u64).to_le_bytes());
            c[chunk - 1] = 0x5a;
        }
    }
    let (first, second) = memory.split_at_mut(half);
    second.copy_from_slice(first);
    let snapshot = Snapshot::capture(&memory, DEFAULT_CHUNK_SIZE, state()).unwrap();
    let stats = snapshot.stats();
    assert_eq!(stats.chunks, 2 * stats.unique_chunks, "each content twice");
    let indices: Vec<u32> = snapshot.manifest.chunks.iter().map(|c| c.index).collect();
    assert!(
        indices.windows(2).all(|w| w[0] < w[1]),
        "ascending and unique"
    );
    let bytes = snapshot.encode();
    let decoded = Snapshot::decode(&bytes, &DecodeLimits::default()).unwrap();
    let mut restored = vec![0u8; memory.len()];
    decoded.restore_memory(&mut restored, &[]).unwrap();
    assert!(restored == memory, "restored memory differs");
}
