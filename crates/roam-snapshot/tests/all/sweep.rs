//! Exhaustive damage to a small encoded snapshot: every truncation and every single-bit
//! flip is refused, and none of them panics, even when the checksums are recomputed so
//! that the damage reaches the parser.

use roam_snapshot::{ChunkBody, DecodeLimits, Manifest, Snapshot};

use crate::{layout, memory, reseal, snapshot};

const MANIFEST_AT: usize = 20;

fn limits() -> DecodeLimits {
    DecodeLimits {
        max_memory_size: 16 << 20,
        ..DecodeLimits::default()
    }
}

#[test]
fn every_truncation_is_refused() {
    let snap = snapshot();
    let bytes = snap.encode();
    for len in 0..bytes.len() {
        assert!(
            Snapshot::decode(&bytes[..len], &limits()).is_err(),
            "snapshot cut to {len} bytes decoded"
        );
    }
    let manifest = snap.manifest.encode();
    for len in 0..manifest.len() {
        assert!(Manifest::decode(&manifest[..len], &limits()).is_err());
    }
    for body in snap.bodies() {
        let bytes = body.encode();
        for len in 0..bytes.len() {
            assert!(ChunkBody::decode(&bytes[..len]).is_err());
        }
    }
}

#[test]
fn every_bit_flip_is_refused_by_the_checksum() {
    let bytes = snapshot().encode();
    let mut damaged = bytes.clone();
    for bit in 0..bytes.len() * 8 {
        damaged[bit / 8] ^= 1 << (bit % 8);
        assert!(
            Snapshot::decode(&damaged, &limits()).is_err(),
            "bit {bit} flipped decoded"
        );
        damaged[bit / 8] ^= 1 << (bit % 8);
    }
}

/// Flips every bit, recomputes the checksums (the manifest's too when the flip is inside
/// it) so the parser and the checks behind it see the damage, and runs decode, check and
/// restore. Nothing may panic, whatever decodes must re-encode to the same bytes, and a
/// flip in the chunk bodies must never restore a memory different from the original: the
/// content hashes catch it.
#[test]
fn every_bit_flip_behind_a_valid_checksum_is_handled() {
    let snap = snapshot();
    let original = memory();
    let bytes = snap.encode();
    let manifest_end = MANIFEST_AT + snap.manifest.encoded_len();
    let mut decoded = 0;
    for bit in 0..(bytes.len() - 8) * 8 {
        let mut damaged = bytes.clone();
        let at = bit / 8;
        damaged[at] ^= 1 << (bit % 8);
        if (MANIFEST_AT..manifest_end).contains(&at) {
            reseal(&mut damaged[MANIFEST_AT..manifest_end]);
        }
        reseal(&mut damaged);
        let Ok(snapshot) = Snapshot::decode(&damaged, &limits()) else {
            continue;
        };
        decoded += 1;
        // One encoding per snapshot: what decodes re-encodes to the same bytes.
        assert_eq!(snapshot.encode(), damaged, "bit {bit}: re-encoding differs");
        let _ = snapshot.check_against(&layout(), 1 << 30);
        let size = snapshot.manifest.memory_size as usize;
        let mut restored = vec![0u8; size];
        let result = snapshot.restore_memory(&mut restored, &[0..4096]);
        if at >= manifest_end && result.is_ok() {
            assert_eq!(
                restored, original,
                "bit {bit} in the bodies restored wrong memory"
            );
        }
        let _ = snapshot.stats();
        let _ = snapshot.summary().to_string();
    }
    // Flips in values the format cannot judge (a clock, a sequence number, a global's
    // value) decode; the sweep must have reached past the parser.
    assert!(decoded > 100, "only {decoded} damaged snapshots decoded");
}

#[test]
fn arbitrary_short_inputs_never_panic() {
    // Every prefix of a valid header followed by every byte value.
    let bytes = snapshot().encode();
    for len in 0..64 {
        for fill in [0x00u8, 0x7F, 0xFF] {
            let mut input = bytes[..len].to_vec();
            input.resize(64, fill);
            let _ = Snapshot::decode(&input, &limits());
            reseal(&mut input);
            let _ = Snapshot::decode(&input, &limits());
            let _ = Manifest::decode(&input, &limits());
            let _ = ChunkBody::decode(&input);
        }
    }
}
