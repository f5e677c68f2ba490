//! Messages for the example workers (formats in `docs/worker-abi.md`), for the demo, the
//! benchmarks and the tests.

/// The physics worker's init message: build a scene of `cubes` cubes placed from `seed`.
pub fn physics_init(cubes: u32, seed: u32) -> Vec<u8> {
    let mut m = vec![0u8];
    m.extend_from_slice(&cubes.to_le_bytes());
    m.extend_from_slice(&seed.to_le_bytes());
    m
}

/// The physics worker's step message: advance `steps` steps of 1/60 s.
pub fn physics_step(steps: u32) -> Vec<u8> {
    let mut m = vec![1u8];
    m.extend_from_slice(&steps.to_le_bytes());
    m
}

/// Reads the poses reply of the physics worker: (x, y, z) of every cube.
pub fn physics_positions(reply: &[u8]) -> Option<Vec<[f32; 3]>> {
    let n = u32::from_le_bytes(reply.get(..4)?.try_into().ok()?) as usize;
    let body = reply.get(4..4 + n * 28)?;
    Some(
        body.chunks_exact(28)
            .map(|c| {
                let f = |i: usize| f32::from_le_bytes(c[i * 4..i * 4 + 4].try_into().unwrap());
                [f(0), f(1), f(2)]
            })
            .collect(),
    )
}

/// A deterministic grey test picture of `w`×`h`: smooth gradients, a few bright discs and
/// some texture, so that detectors and filters have something to chew on.
pub fn test_picture_gray(w: u32, h: u32, seed: u32) -> Vec<u8> {
    let mut px = Vec::with_capacity((w * h) as usize);
    let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    for y in 0..h {
        for x in 0..w {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            let base = (x * 255 / w.max(1) + y * 128 / h.max(1)) as i32;
            let (cx, cy) = ((w / 2) as i32, (h / 3) as i32);
            let (dx, dy) = (x as i32 - cx, y as i32 - cy);
            let r = (w.min(h) / 6) as i32;
            let disc = if dx * dx + dy * dy < r * r { 60 } else { 0 };
            let noise = (state % 16) as i32 - 8;
            px.push((base / 2 + disc + noise).clamp(0, 255) as u8);
        }
    }
    px
}

/// The facedetect worker's message: a grey picture.
pub fn facedetect_message(w: u32, h: u32, seed: u32) -> Vec<u8> {
    let mut m = Vec::with_capacity(8 + (w * h) as usize);
    m.extend_from_slice(&w.to_le_bytes());
    m.extend_from_slice(&h.to_le_bytes());
    m.extend_from_slice(&test_picture_gray(w, h, seed));
    m
}

/// The blur worker's message: an RGBA picture and the blur's sigma.
pub fn blur_message(w: u32, h: u32, sigma: f32, seed: u32) -> Vec<u8> {
    let gray = test_picture_gray(w, h, seed);
    let mut m = Vec::with_capacity(12 + gray.len() * 4);
    m.extend_from_slice(&w.to_le_bytes());
    m.extend_from_slice(&h.to_le_bytes());
    m.extend_from_slice(&sigma.to_le_bytes());
    for (i, g) in gray.iter().enumerate() {
        m.extend_from_slice(&[*g, g.wrapping_add(i as u8 / 4), 255 - g, 255]);
    }
    m
}

/// Counter messages: `n` messages of varied lengths and contents.
pub fn counter_messages(n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let len = (i * 7) % 61;
            (0..len).map(|j| (i * 31 + j * 17) as u8).collect()
        })
        .collect()
}

/// What the counter worker must reply after seeing `messages`: count, then FNV-1a 64 of
/// every byte so far. The witness that nothing was lost or handled twice.
pub fn counter_expected(messages: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            for &b in m {
                hash ^= u64::from(b);
                hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
            }
            let mut r = Vec::with_capacity(16);
            r.extend_from_slice(&(i as u64 + 1).to_le_bytes());
            r.extend_from_slice(&hash.to_le_bytes());
            r
        })
        .collect()
}
