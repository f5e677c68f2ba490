//! Measures what the chunk size costs and buys, on memory images shaped like real
//! workers', and prints the table that `docs/snapshot-format.md` records.
//!
//! Run with `cargo run --release -p roam-snapshot --example chunk_size`. Pass `--quick`
//! for fewer repetitions, `--runs N` for more, `--wall` to time with the wall clock
//! instead of the process's CPU clock, `--codec` for only the codec and zero-detection lines.
//!
//! Images (all made by a seeded generator, so runs compare):
//! - sparse: 64 MiB, a 3 MiB dense heap at the bottom and 300 scattered dirty regions of
//!   0.5..32 KiB; the rest zero (a worker that grew its memory but uses little of it).
//! - dense: 64 MiB of heap-like content: structs with pointers and small integers, float
//!   arrays, text, incompressible blobs, and freed (zero) runs.
//! - delta: the dense image after 200 scattered 8-byte writes ("small write"), and after
//!   10% of its 4 KiB pages were rewritten ("10% pages"); the delta is what a destination
//!   and after one "handler run" (16 KiB of stack, allocator metadata, 30 objects of
//!   32..1024 bytes, a 4 KiB output buffer); the delta is what a destination
//!   that holds the base snapshot still needs: the changed chunk map entries and the
//!   bodies of contents it lacks.

use std::collections::HashSet;
use std::hint::black_box;
use std::time::{Duration, Instant};

use roam_snapshot::{chunk_map, ChunkBody, Snapshot, State};

const MIB: usize = 1 << 20;
const SIZES: [u32; 5] = [4_096, 8_192, 16_384, 32_768, 65_536];

/// xorshift64*: small, seeded, good enough for test images.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const WORDS: [&str; 16] = [
    "worker", "message", "cube", "frame", "face", "pixel", "edge", "cloud", "offload", "handoff",
    "\"id\":", "\"x\":", "true", "null", "{", "},",
];

/// Fills `out` with heap-like content.
fn heap_fill(rng: &mut Rng, out: &mut [u8]) {
    let mut pos = 0;
    while pos < out.len() {
        let len = (16 + rng.below(2_032)).min(out.len() - pos);
        let object = &mut out[pos..pos + len];
        match rng.below(100) {
            // Structs: a pointer into the heap, a small integer, a flag word.
            0..=29 => {
                for field in object.chunks_mut(12) {
                    let values = [
                        0x0010_0000u32 + (rng.below(0x0040_0000) as u32 & !7),
                        rng.below(1_000) as u32,
                        rng.below(4) as u32,
                    ];
                    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
                    field.copy_from_slice(&bytes[..field.len()]);
                }
            }
            // Float arrays: positions that change smoothly.
            30..=49 => {
                let mut x = rng.below(1_000) as f32 / 7.0;
                for value in object.chunks_mut(4) {
                    x += 0.016 * (rng.below(100) as f32 - 50.0) / 50.0;
                    value.copy_from_slice(&x.to_le_bytes()[..value.len()]);
                }
            }
            // Text.
            50..=69 => {
                let mut i = 0;
                while i < object.len() {
                    let word = WORDS[rng.below(WORDS.len())].as_bytes();
                    for &b in word.iter().chain(b" ") {
                        if i < object.len() {
                            object[i] = b;
                            i += 1;
                        }
                    }
                }
            }
            // Incompressible: hash tables, compressed images, random state.
            70..=84 => {
                for b in object.iter_mut() {
                    *b = rng.next() as u8;
                }
            }
            // Freed memory.
            _ => object.fill(0),
        }
        pos += len;
    }
}

fn sparse_image(rng: &mut Rng) -> Vec<u8> {
    let mut memory = vec![0u8; 64 * MIB];
    heap_fill(rng, &mut memory[..3 * MIB]);
    for _ in 0..300 {
        let len = 512 + rng.below(32 * 1024);
        let start = 3 * MIB + rng.below(61 * MIB - len);
        heap_fill(rng, &mut memory[start..start + len]);
    }
    memory
}

fn dense_image(rng: &mut Rng) -> Vec<u8> {
    let mut memory = vec![0u8; 64 * MIB];
    heap_fill(rng, &mut memory);
    memory
}

fn state() -> State {
    State {
        module_hash: [1; 32],
        globals: Vec::new(),
        tables: Vec::new(),
        last_seq: 0,
        clock_ns: 0,
    }
}

/// CPU time this process has used, all threads together. On a machine shared with other
/// builds, wall time mostly measures the scheduler; CPU time (user and system, so page
/// faults count) measures the work — including the threads a large capture spreads over, so
/// the throughputs below are per core.
fn process_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the call only writes into it.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_PROCESS_CPUTIME_ID) failed");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Whether to time with the wall clock (`--wall`) rather than the process's CPU clock.
static WALL: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

fn now() -> Duration {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    if *WALL.get().unwrap_or(&false) {
        START.get_or_init(Instant::now).elapsed()
    } else {
        process_cpu_time()
    }
}

/// Best of `runs` timings of `f`.
fn best<T>(runs: usize, mut f: impl FnMut() -> T) -> (Duration, T) {
    let mut best = Duration::MAX;
    let mut out = None;
    for _ in 0..runs {
        let start = now();
        let value = f();
        best = best.min(now() - start);
        out = Some(black_box(value));
    }
    (best, out.expect("runs > 0"))
}

fn gbps(bytes: usize, time: Duration) -> f64 {
    bytes as f64 / time.as_secs_f64() / 1e9
}

/// Bytes a destination holding `base` needs to reach `next`: the chunk map entries that
/// changed (20 bytes each) and the encoded bodies of contents it does not hold.
fn delta_bytes(base: &Snapshot, next: &Snapshot) -> usize {
    let held: HashSet<u128> = base.bodies().iter().map(|b| b.hash()).collect();
    let old: HashSet<(u32, u128)> = base
        .manifest
        .chunks
        .iter()
        .map(|c| (c.index, c.hash))
        .collect();
    let changed = next
        .manifest
        .chunks
        .iter()
        .filter(|c| !old.contains(&(c.index, c.hash)))
        .count();
    let bodies: usize = next
        .bodies()
        .iter()
        .filter(|b| !held.contains(&b.hash()))
        .map(ChunkBody::encoded_len)
        .sum();
    changed * 20 + bodies
}

fn kib(bytes: usize) -> String {
    format!("{:.0}", bytes as f64 / 1024.0)
}

fn zero_check_variants(dense: &[u8], runs: usize) {
    fn bytewise(chunk: &[u8]) -> bool {
        chunk.iter().all(|&b| b == 0)
    }
    fn fold_all(chunk: &[u8]) -> bool {
        chunk.iter().fold(0u8, |acc, &b| acc | b) == 0
    }
    fn blocks_u64(chunk: &[u8]) -> bool {
        // The crate's choice: 256-byte blocks OR-folded as u64 words, early exit.
        let mut blocks = chunk.chunks_exact(256);
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
    // Written, not fresh from calloc: untouched pages would all map the one zero page
    // and measure the cache instead of memory.
    let mut zero = vec![1u8; 64 * MIB];
    zero.fill(0);
    black_box(&mut zero);
    println!("\nzero detection over 64 MiB of zeros (16 KiB chunks):");
    type ZeroCheck = fn(&[u8]) -> bool;
    let variants: [(&str, ZeroCheck); 3] = [
        ("bytewise iter().all", bytewise),
        ("whole-chunk OR fold", fold_all),
        ("256 B blocks of u64 OR, early exit", blocks_u64),
    ];
    for (name, f) in variants {
        let (t, n) = best(runs, || zero.chunks_exact(16_384).filter(|c| f(c)).count());
        assert_eq!(n, 4096);
        let (t_dense, _) = best(runs, || dense.chunks_exact(16_384).filter(|c| f(c)).count());
        println!(
            "  {name:<36} {:>6.1} GB/s on zeros, {:>6.1} GB/s on dense memory",
            gbps(zero.len(), t),
            gbps(dense.len(), t_dense)
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    // Best-of-N hides the noise of a shared machine; raise N when it is busy.
    let runs = args
        .iter()
        .position(|a| a == "--runs")
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(if quick { 2 } else { 5 });
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let sparse = sparse_image(&mut rng);
    let dense = dense_image(&mut rng);

    let mut small_write = dense.clone();
    for _ in 0..200 {
        let at = rng.below(small_write.len() - 8);
        small_write[at..at + 8].copy_from_slice(&rng.next().to_le_bytes());
    }
    // One handler run: the stack, allocator metadata, a few objects, an output buffer.
    let mut handler = dense.clone();
    heap_fill(&mut rng, &mut handler[MIB - 16 * 1024..MIB]);
    for _ in 0..8 {
        let at = MIB + rng.below(4096);
        handler[at..at + 64].fill(0xA5);
    }
    for _ in 0..30 {
        let len = 32 + rng.below(992);
        let at = MIB + rng.below(handler.len() - MIB - len);
        heap_fill(&mut rng, &mut handler[at..at + len]);
    }
    let out = 40 * MIB + rng.below(MIB);
    heap_fill(&mut rng, &mut handler[out..out + 4096]);

    let mut rewritten = dense.clone();
    let pages = rewritten.len() / 4096;
    for _ in 0..pages / 10 {
        let page = rng.below(pages);
        heap_fill(&mut rng, &mut rewritten[page * 4096..(page + 1) * 4096]);
    }

    WALL.set(args.iter().any(|a| a == "--wall"))
        .expect("set once");
    println!(
        "timing: best of {runs}, {}",
        if *WALL.get().unwrap() {
            "wall clock"
        } else {
            "process CPU time (per core)"
        }
    );
    if args.iter().any(|a| a == "--codec") {
        codec_line(&dense, runs);
        zero_check_variants(&dense, runs);
        return;
    }
    println!(
        "images: sparse {:.1}% non-zero 4 KiB pages, dense {:.1}%",
        nonzero_share(&sparse),
        nonzero_share(&dense)
    );
    println!(
        "\n| chunk | capture sparse GB/s | capture dense GB/s | chunk_map dense GB/s | encoded sparse KiB | encoded dense KiB | manifest dense KiB | delta small write KiB | delta handler run KiB | delta 10% pages KiB | restore 16 MiB, 10% chunks, ms | restore dense 64 MiB ms |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for chunk_size in SIZES {
        let (t_sparse, snap_sparse) = best(runs, || {
            Snapshot::capture(&sparse, chunk_size, state()).unwrap()
        });
        let (t_dense, snap_dense) = best(runs, || {
            Snapshot::capture(&dense, chunk_size, state()).unwrap()
        });
        let (t_map, _) = best(runs, || chunk_map(&dense, chunk_size).unwrap());
        let snap_small = Snapshot::capture(&small_write, chunk_size, state()).unwrap();
        let snap_handler = Snapshot::capture(&handler, chunk_size, state()).unwrap();
        let snap_rewritten = Snapshot::capture(&rewritten, chunk_size, state()).unwrap();

        let restore_image = ten_percent_chunks(&dense[..16 * MIB], chunk_size, &mut Rng(7));
        let restore_snap = Snapshot::capture(&restore_image, chunk_size, state()).unwrap();
        let (t_restore, restored) = best(runs * 4, || {
            let mut memory = vec![0u8; restore_image.len()];
            restore_snap.restore_memory(&mut memory, &[]).unwrap();
            memory
        });
        assert!(restored == restore_image);
        let (t_restore_dense, _) = best(runs, || {
            let mut memory = vec![0u8; dense.len()];
            snap_dense.restore_memory(&mut memory, &[]).unwrap();
            memory
        });

        println!(
            "| {} KiB | {:.2} | {:.2} | {:.2} | {} | {} | {} | {} | {} | {} | {:.2} | {:.1} |",
            chunk_size / 1024,
            gbps(sparse.len(), t_sparse),
            gbps(dense.len(), t_dense),
            gbps(dense.len(), t_map),
            kib(snap_sparse.encoded_len()),
            kib(snap_dense.encoded_len()),
            kib(snap_dense.manifest.encoded_len()),
            kib(delta_bytes(&snap_dense, &snap_small)),
            kib(delta_bytes(&snap_dense, &snap_handler)),
            kib(delta_bytes(&snap_dense, &snap_rewritten)),
            t_restore.as_secs_f64() * 1e3,
            t_restore_dense.as_secs_f64() * 1e3,
        );
    }

    codec_line(&dense, runs);
    zero_check_variants(&dense, runs);
}

/// Where capture and restore time goes, at the default size, on the dense image.
fn codec_line(dense: &[u8], runs: usize) {
    let chunk = roam_snapshot::DEFAULT_CHUNK_SIZE as usize;
    let (t_hash, _) = best(runs, || {
        dense
            .chunks_exact(chunk)
            .map(roam_snapshot::hash_chunk)
            .fold(0u128, |a, h| a ^ h)
    });
    let (t_compress, bodies) = best(runs, || {
        dense
            .chunks_exact(chunk)
            .map(|c| ChunkBody::compress(c).unwrap())
            .collect::<Vec<_>>()
    });
    let (t_decompress, _) = best(runs, || {
        let mut out = vec![0u8; chunk];
        for body in &bodies {
            body.decompress_into(&mut out).unwrap();
        }
        out
    });
    let stored: usize = bodies.iter().map(|b| b.bytes().len()).sum();
    println!(
        "\ndense image, {} KiB chunks: xxh3-128 {:.1} GB/s; lz4 compress {:.2} GB/s (ratio {:.2}); decompress + verify {:.2} GB/s",
        chunk / 1024,
        gbps(dense.len(), t_hash),
        gbps(dense.len(), t_compress),
        dense.len() as f64 / stored as f64,
        gbps(dense.len(), t_decompress),
    );
}

fn nonzero_share(memory: &[u8]) -> f64 {
    let pages = memory.len() / 4096;
    let nonzero = memory
        .chunks_exact(4096)
        .filter(|p| p.iter().any(|&b| b != 0))
        .count();
    nonzero as f64 * 100.0 / pages as f64
}

/// A copy of `source` in which only 10% of the chunks (at `chunk_size`) keep content.
fn ten_percent_chunks(source: &[u8], chunk_size: u32, rng: &mut Rng) -> Vec<u8> {
    let size = chunk_size as usize;
    let mut memory = vec![0u8; source.len()];
    let chunks = source.len() / size;
    for _ in 0..chunks / 10 {
        let i = rng.below(chunks);
        memory[i * size..(i + 1) * size].copy_from_slice(&source[i * size..(i + 1) * size]);
    }
    memory
}
